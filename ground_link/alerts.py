"""Alert rules: which detections the operator is told about, how loudly, and how often.

A detection matches a rule when its class, confidence, area and position all fit; the first
matching rule (in configuration order) gives the severity. A repeat (same class within
`throttle_km` and `throttle_s` scenario seconds of an alert already shown) is throttled: archived
and counted, not shown, not published.
"""

from __future__ import annotations

import math
from collections import defaultdict

from flight.config import AlertRule
from flight.dictionary import DetectionClass
from flight.geolocate import ground_distance_m
from flight.products import Detection

KEEP_SHOWN = 1000  # alerts remembered per class for throttling


def class_name(class_id: int) -> str | None:
    try:
        return DetectionClass(class_id).name.lower()
    except ValueError:
        return None


def in_region(region: tuple[float, ...], lat: float, lon: float) -> bool:
    """Inside [lat0, lon0, lat1, lon1] (edges included); lon0 > lon1 wraps across 180 deg."""
    if not region:
        return True
    if math.isnan(lat) or math.isnan(lon):
        return False  # a region rule needs a position
    lat0, lon0, lat1, lon1 = region
    if not lat0 <= lat <= lat1:
        return False
    return lon0 <= lon <= lon1 if lon0 <= lon1 else (lon >= lon0 or lon <= lon1)


def rule_matches(rule: AlertRule, d: Detection) -> bool:
    return (rule.class_name == class_name(d.class_id) and d.confidence >= rule.min_confidence
            and rule.area_px_min <= d.area_px <= rule.area_px_max and in_region(rule.region, d.lat_deg, d.lon_deg))


def match_rule(rules: tuple[AlertRule, ...], d: Detection) -> tuple[int, AlertRule] | None:
    """(index, rule) of the first rule the detection matches, None when no rule does."""
    return next(((i, r) for i, r in enumerate(rules) if rule_matches(r, d)), None)


def is_repeat_of(rule: AlertRule, d: Detection, shown) -> bool:
    """Is the detection a repeat of one of the alerts `shown` ((capture time s, lat, lon) of the
    rule's class): within throttle_s and throttle_km of it?"""
    if rule.throttle_km <= 0 or rule.throttle_s <= 0 or _position(d.lat_deg, d.lon_deg)[0] is None:
        return False  # no position (NaN, inf, off the globe): cannot tell it is the same place, so it is shown
    for t, lat, lon in shown:
        if lat is None or lon is None:  # an alert shown without a position (archive rows): not a place
            continue
        # abs(): a retransmitted older detection may arrive after a newer one
        if abs(d.capture_time_s - t) <= rule.throttle_s and \
                float(ground_distance_m(lat, lon, d.lat_deg, d.lon_deg)) <= rule.throttle_km * 1e3:
            return True
    return False


class Throttle:
    """Remembers the alerts shown, per class, to recognise repeats of the same thing."""

    def __init__(self):
        self.shown: dict[str, list[tuple[float, float | None, float | None]]] = defaultdict(list)

    def is_repeat(self, rule: AlertRule, d: Detection) -> bool:
        return is_repeat_of(rule, d, self.shown[rule.class_name])

    def remember(self, rule: AlertRule, d: Detection) -> None:
        shown = self.shown[rule.class_name]
        shown.append((d.capture_time_s, *_position(d.lat_deg, d.lon_deg)))  # off the globe: no place (skipped)
        del shown[:-KEEP_SHOWN]


def finite_or_none(v):
    """None for a float that is not finite, else the value as it is: what the ground writes (alert
    lines, the feed, the archive, the console's and query's JSON) holds no NaN or Infinity, which
    no strict JSON reader (a browser's JSON.parse) takes and which PostgreSQL, unlike SQLite, keeps."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _position(lat: float, lon: float) -> tuple[float | None, float | None]:
    """(lat, lon) when both are finite and on the globe, else unknown: a latitude of 500 deg is
    no place to send anyone (exports would write it as a coordinate)."""
    if math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180:
        return lat, lon
    return None, None


def alert_record(d: Detection, rule_index: int, rule: AlertRule, received_wall: float,
                 received_s: float | None, throttled: bool) -> dict:
    """One alert as archived, printed as JSON and published (one flat dict); a value that is not
    a finite number (NaN, inf from a malformed product) is None, a position off the globe unknown."""
    latency = None if received_s is None else finite_or_none(round(received_s - d.capture_time_s, 3))
    lat, lon = _position(d.lat_deg, d.lon_deg)
    rec = {"severity": rule.severity, "class": rule.class_name, "frame_id": d.frame_id, "product_id": d.product_id,
           "confidence": round(d.confidence, 3), "lat_deg": lat, "lon_deg": lon,
           "row_px": finite_or_none(d.row_px), "col_px": finite_or_none(d.col_px), "area_px": d.area_px,
           "capture_time_s": finite_or_none(d.capture_time_s),
           "received_s": None if received_s is None else round(received_s, 3), "latency_s": latency,
           "received_wall": round(received_wall, 3), "rule": rule_index, "throttled": throttled}
    rec["message"] = format_alert(rec)
    return rec


def format_alert(rec: dict) -> str:
    where = "position unknown" if rec["lat_deg"] is None else f"{rec['lat_deg']:+.5f} {rec['lon_deg']:+.5f}"
    px = lambda v: "?" if v is None else f"{v:.1f}"  # noqa: E731 (None: not a number in the product)
    t = "t unknown" if rec["capture_time_s"] is None else f"t+{rec['capture_time_s']:.1f}s"
    line = (f"ALERT {rec['severity'].upper():8s} {rec['class']:5s} frame {rec['frame_id']:5d} conf {rec['confidence']:.2f} "
            f"at {where} (px {px(rec['row_px'])},{px(rec['col_px'])}) {t}")
    if rec.get("latency_s") is not None:
        line += f" seen +{rec['latency_s']:.1f}s"
    return line
