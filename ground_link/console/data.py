"""The console's view of the ground archive: every product as the console shows it, already cut
down to what one partner may see (ground_link.partners.Partner.allows). The web routes, the live
feed and the partner exports all read through `ArchiveView`, so no route can see more than its
rule. Nothing here imports the web framework (the query CLI uses it for `--partner` exports).

Archive times are scenario seconds (capture) and wall seconds (`received_wall`, when the ground
archived a product); records carry both and their UTC text. The live feed follows the archive
with a cursor `(last alert id, last product received_wall)`: the station archives one product at
a time, so received_wall grows with the order products become visible, and a partner's delay
(`received_wall <= now - delay_s`) releases products in that same order.

A constellation's archive (issue #18, docs/ground.md) holds several satellites, on SQLite or
PostgreSQL (read through ground_link.archive.reader, rows by column name on both). Product ids
and frame ids repeat across satellites, so every product is keyed by (satellite id, product id)
and every frame by (satellite id, frame id): records carry `satellite_id`, `station` (None for a
one-station archive), `key` ("sat:product") and `frame_key` ("sat:frame"); a chip is matched to
detections and frames of its own satellite only; the feed's cursor remembers (satellite, product).
"""

from __future__ import annotations

import bisect
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flight.config import Scenario
from flight.dictionary import EVENTS_BY_ID, TELEMETRY_BY_ID, DetectionClass, Mode, Severity
from flight.products import product_label
from ground_link.alerts import finite_or_none
from ground_link.archive import reader
from ground_link.export import CHIP_CLASS, RunContext, wall_text
from ground_link.partners import DEMO_FILE, Partner, load_partners

CHIP_MATCH_PX = 32.0  # a chip belongs to the detection of its class nearest its centre, within this
STATUS_FRESH_S = 3.0  # a status file older than this: the process is not running (the run ended)
LIMIT = 5000  # newest rows per kind in a snapshot
PRODUCT_COLS = "kind, product_id, frame_id, time_s, received_wall, fields, satellite_id, station"


def partners_for(path: str | Path | None, scenario: Scenario | None) -> dict[str, Partner]:
    """The partners file given, else the scenario's ground.partners_file, else the demo's."""
    chosen = path or (scenario.ground.partners_file if scenario is not None and scenario.ground.partners_file else None)
    return load_partners(chosen or DEMO_FILE)


def class_of(class_id: int | None) -> str | None:
    try:
        return DetectionClass(class_id).name.lower() if class_id is not None else None
    except ValueError:
        return None


def chip_url(sat: int, pid: int) -> str:
    """`/api/chips/<pid>.png` is satellite 1 (a one-station archive's only one); others name theirs."""
    return f"/api/chips/{pid}.png" if sat == 1 else f"/api/chips/{sat}/{pid}.png"


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between ranks, as numpy's default (the run's summary uses numpy)."""
    if not values:
        return None
    v = sorted(values)
    x = (len(v) - 1) * q / 100.0
    lo = math.floor(x)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (x - lo)


# --- housekeeping display ------------------------------------------------------------------------

UNITS = (("_ms_last", "ms"), ("_ms", "ms"), ("_mib", "MiB"), ("_percent", "%"), ("_bytes", "B"), ("_age_s", "s"),
         ("_s", "s"))
ENUMS = {"mode": {m.value: m.name for m in Mode},
         "store_state": {0: "ON DISK", 1: "DISK FAILING", 2: "RAM ONLY"}}


def channel_unit(name: str) -> str:
    return next((u for suffix, u in UNITS if name.endswith(suffix)), "")


def channel_text(name: str, value: float) -> str:
    if name in ENUMS:
        return ENUMS[name].get(int(value), str(int(value)))
    if name.endswith("_version"):
        v = int(value)
        return "none" if v < 0 else f"{v // 10000}.{v // 100 % 100}.{v % 100}"
    if name.endswith("_sha24"):
        return f"{int(value) & 0xFFFFFF:06x}"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}"


def channel_state(cid: int, value: float) -> str:
    """ok, warn or alarm from the dictionary's limits (flight.dictionary.Channel.warn/alarm)."""
    ch = TELEMETRY_BY_ID.get(cid)
    if ch is None:
        return "ok"

    def outside(lim) -> bool:
        if lim is None:
            return False
        lo, hi = lim
        return (lo is not None and value < lo) or (hi is not None and value > hi)

    return "alarm" if outside(ch.alarm) else "warn" if outside(ch.warn) else "ok"


TELEMETRY_ROW = ("SELECT t.channel, t.value, t.time_s, t.satellite_id, p.received_wall FROM telemetry t "
                 # CROSS JOIN: SQLite keeps this order (telemetry by its index first); it chose to scan
                 # every product up to the horizon instead. PostgreSQL plans it as an ordinary join.
                 "CROSS JOIN products p WHERE p.product_id = t.product_id AND p.satellite_id = t.satellite_id "
                 "AND t.satellite_id = ? AND t.channel = ? AND p.received_wall <= ? AND ")


def latest_value(db, sat: int, cid: int, horizon: float):
    """The row of a satellite's channel with the latest time released by `horizon` (archive
    time), the latest archived of equal times; rows without a time only when it has no other.
    Index lookups (telemetry_latest): one ORDER BY over both keys made the database sort every
    row of the channel."""
    args = (sat, cid, horizon)
    top = db.execute(TELEMETRY_ROW + "t.time_s IS NOT NULL ORDER BY t.time_s DESC LIMIT 1", args).fetchone()
    if top is None:
        return db.execute(TELEMETRY_ROW + "t.time_s IS NULL ORDER BY p.received_wall DESC LIMIT 1", args).fetchone()
    return db.execute(TELEMETRY_ROW + "t.time_s = ? ORDER BY p.received_wall DESC LIMIT 1",
                      (*args, top["time_s"])).fetchone()


ARRIVAL_OVERLAP_S = 60.0  # archive seconds read again at each step: a station's product committed late still counts


@dataclass
class StationArrivals:
    count: int = 0
    by_satellite: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # capture to archive, scenario seconds, kept sorted
    _summary: dict | None = None  # percentiles of `latencies`, until more come

    def latency_summary(self) -> dict[str, float | None]:
        if self._summary is None:
            self._summary = {k: None if (v := percentile(self.latencies, q)) is None else round(v, 1)
                             for k, q in (("p50", 50), ("p99", 99), ("max", 100))}
        return self._summary


@dataclass
class Arrivals:
    """What each station archived, read step by step: only the products archived since the last
    step (plus ARRIVAL_OVERLAP_S, deduplicated), through the products_arrival index. Reading every
    product each second made the constellation view's cost grow with the archive."""

    target: str = ""
    wall: float = -math.inf  # the latest received_wall read
    recent: dict[tuple[int, int], float] = field(default_factory=dict)  # (satellite, product) read within the overlap
    stations: dict[str, StationArrivals] = field(default_factory=dict)

    def read(self, db, clock_start: float | None, rate: float) -> None:
        rows = db.execute("SELECT station, satellite_id, product_id, time_s, received_wall FROM products "
                          "WHERE received_wall >= ? ORDER BY received_wall", (self.wall - ARRIVAL_OVERLAP_S,)).fetchall()
        for r in rows:
            key = (r["satellite_id"], r["product_id"])
            if key in self.recent:
                continue
            wall = r["received_wall"]
            self.recent[key] = wall
            self.wall = max(self.wall, wall)
            s = self.stations.setdefault(r["station"], StationArrivals())
            s.count += 1
            s.by_satellite[r["satellite_id"]] = s.by_satellite.get(r["satellite_id"], 0) + 1
            if clock_start is not None and finite_or_none(r["time_s"]) is not None:  # NaN (an old archive's): no latency
                bisect.insort(s.latencies, (wall - clock_start) * rate - r["time_s"])  # percentiles: a linear sort
                s._summary = None
        cut = self.wall - ARRIVAL_OVERLAP_S
        self.recent = {k: w for k, w in self.recent.items() if w >= cut}


# --- the feed's cursor -------------------------------------------------------------------------


@dataclass
class Cursor:
    alert_id: int = 0
    wall: float = 0.0
    seen: set[tuple[int, int]] = field(default_factory=set)  # (satellite, product) at exactly `wall` already sent

    def text(self) -> str:
        return f"{self.alert_id}:{self.wall!r}"

    @classmethod
    def parse(cls, text: str | None) -> Cursor | None:
        try:
            a, w = (text or "").split(":")
            alert_id, wall = int(a), float(w)
        except ValueError:
            return None
        # compared in SQL with 64-bit ids and with wall times: anything else starts a fresh feed
        if not (0 <= alert_id < 2**63 and math.isfinite(wall) and wall >= 0):
            return None
        return cls(alert_id, wall)

    def advance(self, rows: list[tuple[tuple[int, int], float]]) -> None:
        """rows: ((satellite_id, product_id), received_wall) read since the cursor, in received_wall order."""
        for key, wall in rows:
            if wall > self.wall:
                self.wall, self.seen = wall, set()
            self.seen.add(key)


class ArchiveView:
    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self._passes: list | None = None
        self._passes_lock = threading.Lock()
        self._arrivals = Arrivals()
        self._arrivals_lock = threading.Lock()

    # --- reading -------------------------------------------------------------------------------

    @property
    def multi(self) -> bool:
        """A constellation's run (several satellites and stations)."""
        return self.ctx.constellation is not None

    def _connect(self):
        target = self.ctx.target()  # a constellation's: PostgreSQL during the run, the SQLite copy after
        if not isinstance(target, str) and not target.exists():
            return None
        return reader(target)

    def _read(self, fn, default):
        """fn(db) on a fresh read-only connection (SQLite or PostgreSQL); `default` while there is
        no archive, its tables are being created, or its server is gone (a constellation's, at the
        end of the run, until constellation.json names the copy)."""
        try:
            db = self._connect()
        except Exception:  # noqa: BLE001 (sqlite3 or psycopg: no archive to read yet, or any more)
            return default
        if db is None:
            return default
        try:
            return fn(db)
        except (db.Error, OverflowError):  # OverflowError: an id from a URL past SQLite's 64-bit integers
            return default
        finally:
            db.close()

    # --- records -------------------------------------------------------------------------------

    def received_utc(self, wall: float | None) -> str | None:
        """When the ground archived it, in mission time (UTC of the scenario clock) when the run's
        clock is known, else the wall clock's UTC."""
        if wall is None:
            return None
        now_s = self.ctx.now_s(wall)
        return self.ctx.utc(now_s) if now_s is not None else wall_text(wall)

    def alert_record(self, row) -> dict:
        pid, sat = row["product_id"], row["satellite_id"]
        return {"id": row["id"], "product_id": pid, "product": product_label(pid), "satellite_id": sat,
                "station": row["station"], "key": f"{sat}:{pid}", "frame_key": f"{sat}:{row['frame_id']}",
                "severity": row["severity"],
                "class": row["class"], "confidence": row["confidence"], "lat": finite_or_none(row["lat_deg"]),
                "lon": finite_or_none(row["lon_deg"]), "frame_id": row["frame_id"], "capture_time_s": finite_or_none(row["time_s"]),
                "capture_utc": self.ctx.utc(row["time_s"]), "received_wall": row["received_wall"],
                "received_utc": (self.ctx.utc(row["received_s"]) if row["received_s"] is not None
                                 else self.received_utc(row["received_wall"])), "latency_s": finite_or_none(row["latency_s"]),
                "area_px": row["area_px"], "rule": row["rule"], "throttled": bool(row["throttled"]),
                "message": row["message"]}

    def product_record(self, row) -> dict | None:
        """A products row (kind, product_id, frame_id, time_s, received_wall, fields) as shown."""
        f = json.loads(row["fields"])
        pid, wall, sat = row["product_id"], row["received_wall"], row["satellite_id"]
        base = {"product_id": pid, "product": product_label(pid), "received_wall": wall,
                "received_utc": self.received_utc(wall), "satellite_id": sat, "station": row["station"],
                "key": f"{sat}:{pid}"}
        if f.get("frame_id") is not None:
            base["frame_key"] = f"{sat}:{f['frame_id']}"
        kind = row["kind"]
        if kind == "Detection":
            return base | {"kind": "detection", "frame_id": f["frame_id"], "class": class_of(f["class_id"]),
                           "confidence": round(f["confidence_q"] / 255.0, 3), "lat": finite_or_none(f["lat_deg"]),
                           "lon": finite_or_none(f["lon_deg"]), "row_px": f["row_px"], "col_px": f["col_px"],
                           "area_px": f["area_px"], "capture_time_s": f["capture_time_s"],
                           "capture_utc": self.ctx.utc(f["capture_time_s"])}
        if kind == "FrameSummary":
            return base | {"kind": "frame", "frame_id": f["frame_id"], "cloud_fraction": f["cloud_fraction"],
                           "discarded": bool(f["discarded"]), "ships": f["ships"], "fires": f["fires"],
                           "tiles": f["tiles"], "cloudy_tiles": f["cloudy_tiles"],
                           "processing_ms": f["processing_ms"], "lat": finite_or_none(f["center_lat_deg"]),
                           "lon": finite_or_none(f["center_lon_deg"]), "capture_time_s": f["capture_time_s"],
                           "capture_utc": self.ctx.utc(f["capture_time_s"])}
        if kind == "ImageChip":
            label = CHIP_CLASS.get(f["class_id"], "chip")
            return base | {"kind": "quicklook" if label == "quicklook" else "chip", "frame_id": f["frame_id"],
                           "class_id": f["class_id"], "class": class_of(f["class_id"]), "label": label,
                           "row_px": f["row_px"], "col_px": f["col_px"], "height_px": f["height_px"],
                           "width_px": f["width_px"], "capture_time_s": f["capture_time_s"],
                           "capture_utc": self.ctx.utc(f["capture_time_s"]), "url": chip_url(sat, pid),
                           "detection_id": None, "detection_key": None, "lat": None, "lon": None}
        if kind == "Housekeeping":
            return base | {"kind": "housekeeping", "time_s": f["time_s"], "time_utc": self.ctx.utc(f["time_s"])}
        if kind == "Event":
            ev = EVENTS_BY_ID.get(f["event_id"])
            try:
                sev = Severity(f["severity"]).name
            except ValueError:
                sev = str(f["severity"])
            return base | {"kind": "event", "time_s": f["time_s"], "time_utc": self.ctx.utc(f["time_s"]),
                           "event_id": f["event_id"], "name": ev.name if ev else f"EVENT_{f['event_id']}",
                           "severity": sev, "frame_id": f["frame_id"], "message": f["message"]}
        return None

    def _resolve_chips(self, db, chips: list[dict]) -> list[dict]:
        """Give each chip the position (and detection) it is judged by: the detection of its class
        nearest its centre in the same frame, else (quicklooks, requested chips) the frame's
        centre. Mutates and returns the records."""
        wanted = {c["frame_key"] for c in chips}  # frames of the chips' own satellites only
        frames = sorted({c["frame_id"] for c in chips})
        if not frames:
            return chips
        dets: dict[str, list[dict]] = {}
        centres: dict[str, dict] = {}
        for i in range(0, len(frames), 500):
            part = frames[i:i + 500]
            sql = (f"SELECT {PRODUCT_COLS} FROM products "
                   f"WHERE kind IN ('Detection', 'FrameSummary') AND frame_id IN ({', '.join('?' * len(part))})")
            for row in db.execute(sql, part):
                rec = self.product_record(row)
                if rec is None or rec["frame_key"] not in wanted:
                    continue
                if rec["kind"] == "detection":
                    dets.setdefault(rec["frame_key"], []).append(rec)
                else:
                    centres[rec["frame_key"]] = rec
        for c in chips:
            best = None
            # pixel positions are None when the product's were not numbers (NaN): such a chip or
            # detection matches nothing (it used to raise TypeError and fail the whole read)
            if c["class"] is not None and c["row_px"] is not None and c["col_px"] is not None:
                cands = [(math.hypot(d["row_px"] - c["row_px"], d["col_px"] - c["col_px"]), d)
                         for d in dets.get(c["frame_key"], []) if d["class"] == c["class"]
                         and d["row_px"] is not None and d["col_px"] is not None]
                cands = [x for x in cands if x[0] <= CHIP_MATCH_PX]
                if cands:
                    best = min(cands, key=lambda x: x[0])[1]
            if best is not None:
                c.update(detection_id=best["product_id"], detection_key=best["key"], lat=best["lat"], lon=best["lon"],
                         judged_wall=max(c["received_wall"], best["received_wall"]))
            elif c["frame_key"] in centres:
                fr = centres[c["frame_key"]]
                c.update(lat=fr["lat"], lon=fr["lon"], judged_wall=max(c["received_wall"], fr["received_wall"]))
            else:
                c["judged_wall"] = c["received_wall"]
        return chips

    # --- the one filter -------------------------------------------------------------------------

    @staticmethod
    def allows(p: Partner, rec: dict, now: float) -> bool:
        kind = rec.get("kind", "alert")
        if kind == "alert":
            return p.allows("alert", rec["class"], rec["lat"], rec["lon"], rec["received_wall"], now)
        if kind in ("chip", "quicklook"):
            # a chip of a detection is judged as that detection; a quicklook or requested chip by
            # the frame's centre (class None)
            return p.allows(kind, rec["class"], rec["lat"], rec["lon"], rec.get("judged_wall", rec["received_wall"]),
                            now)
        return p.allows(kind, rec.get("class"), rec.get("lat"), rec.get("lon"), rec["received_wall"], now)

    @staticmethod
    def redact(p: Partner, rec: dict) -> dict:
        """What a partner sees of a visible record: a frame's counts only for its classes."""
        if p.operator or rec.get("kind") != "frame":
            return rec
        out = dict(rec)
        for cls, key in (("ship", "ships"), ("fire", "fires")):
            if cls not in p.classes:
                out[key] = None
        return out

    def _visible(self, p: Partner, recs: list[dict], now: float) -> list[dict]:
        return [self.redact(p, r) for r in recs if self.allows(p, r, now)]

    # --- what routes ask ------------------------------------------------------------------------

    def horizon(self, p: Partner, now: float) -> float:
        return math.inf if p.operator or p.delay_s <= 0 else now - p.delay_s

    def alerts(self, p: Partner, now: float | None = None, limit: int = LIMIT) -> list[dict]:
        now = time.time() if now is None else now

        def read(db):
            rows = db.execute("SELECT * FROM alerts WHERE throttled = 0 AND received_wall <= ? ORDER BY id DESC LIMIT ?",
                              (self.horizon(p, now), limit)).fetchall()
            return [self.alert_record(r) for r in reversed(rows)]

        return self._visible(p, self._read(read, []), now)

    def alert(self, p: Partner, alert_id: int, now: float | None = None) -> dict | None:
        now = time.time() if now is None else now
        row = self._read(lambda db: db.execute("SELECT * FROM alerts WHERE id = ? AND throttled = 0",
                                               (alert_id,)).fetchone(), None)
        if row is None:
            return None
        rec = self.alert_record(row)
        return rec if self.allows(p, rec, now) else None

    def products(self, p: Partner, kinds: tuple[str, ...], now: float | None = None, limit: int = LIMIT) -> list[dict]:
        """Visible products of these archive kinds (Detection, FrameSummary, ImageChip, Event,
        Housekeeping), oldest first."""
        now = time.time() if now is None else now

        def read(db):
            sql = (f"SELECT {PRODUCT_COLS} FROM products WHERE kind IN ({', '.join('?' * len(kinds))}) AND "
                   "received_wall <= ? ORDER BY time_s DESC, satellite_id DESC, product_id DESC LIMIT ?")
            recs = [r for r in (self.product_record(row) for row in db.execute(sql, (*kinds, self.horizon(p, now), limit)))
                    if r is not None]
            recs.reverse()
            chips = [r for r in recs if r["kind"] in ("chip", "quicklook")]
            self._resolve_chips(db, chips)
            return recs

        return self._visible(p, self._read(read, []), now)

    def chip(self, p: Partner, product_id: int, now: float | None = None,
             satellite_id: int = 1) -> tuple[dict, bytes] | None:
        """(record, PNG) of a chip or quicklook this partner may see, by (satellite, product); None
        for anything else, whether it exists or not (a guessed id tells nothing)."""
        now = time.time() if now is None else now

        def read(db):
            key = (satellite_id, product_id)
            row = db.execute(f"SELECT {PRODUCT_COLS} FROM products "
                             "WHERE satellite_id = ? AND product_id = ? AND kind = 'ImageChip'", key).fetchone()
            png = db.execute("SELECT png FROM chips WHERE satellite_id = ? AND product_id = ?", key).fetchone()
            if row is None or png is None:
                return None
            rec = self.product_record(row)
            self._resolve_chips(db, [rec])
            return rec, bytes(png["png"])

        got = self._read(read, None)
        if got is None or not self.allows(p, got[0], now):
            return None
        return got

    def housekeeping(self, p: Partner, now: float | None = None) -> list[dict] | None:
        """The latest value of every channel of every satellite, with name, unit, text and limit
        state; None when the partner may not see housekeeping."""
        now = time.time() if now is None else now
        if not p.allows("housekeeping", None, None, None, 0.0, math.inf):  # the flag; delay applies below
            return None

        def read(db):
            # Each (satellite, channel) present, then its latest value released to this partner, by
            # index lookups (telemetry_latest): reading the whole table and keeping the last row of
            # each took 3.3 s per page and per second of a constellation's link view once the
            # archive held 10 days of the default housekeeping (1.5 M rows). Each satellite's own
            # telemetry: the join is on (satellite, product).
            horizon = self.horizon(p, now)
            latest: dict[tuple[int, int], Any] = {}
            sat = db.execute("SELECT min(satellite_id) AS v FROM telemetry").fetchone()["v"]
            while sat is not None:
                cid = db.execute("SELECT min(channel) AS v FROM telemetry WHERE satellite_id = ?", (sat,)).fetchone()["v"]
                while cid is not None:
                    row = latest_value(db, sat, cid, horizon)
                    if row is not None:
                        latest[(sat, cid)] = row
                    cid = db.execute("SELECT min(channel) AS v FROM telemetry WHERE satellite_id = ? AND channel > ?",
                                     (sat, cid)).fetchone()["v"]
                sat = db.execute("SELECT min(satellite_id) AS v FROM telemetry WHERE satellite_id > ?", (sat,)).fetchone()["v"]
            return latest

        out = []
        for (sat, cid), r in sorted(self._read(read, {}).items(), key=lambda kv: (kv[0][1], kv[0][0])):
            ch = TELEMETRY_BY_ID.get(cid)
            name = ch.name if ch else f"channel_{cid}"
            # a value that is not a finite number (NaN: NULL in SQLite; inf) has no text or limit
            # check, and is no JSON: None, shown as such and in alarm (it used to fail the snapshot)
            value = finite_or_none(r["value"])
            out.append({"id": cid, "satellite_id": sat, "name": name, "description": ch.description if ch else "",
                        "unit": channel_unit(name), "value": value,
                        "text": "not a number" if value is None else channel_text(name, value),
                        "state": "alarm" if value is None else channel_state(cid, value), "time_s": finite_or_none(r["time_s"]),
                        "time_utc": self.ctx.utc(r["time_s"]),
                        "warn": list(ch.warn) if ch and ch.warn else None,
                        "alarm": list(ch.alarm) if ch and ch.alarm else None})
        return out

    def snapshot(self, p: Partner, now: float | None = None) -> dict:
        """Everything the console page starts from, and the feed cursor to follow it with."""
        now = time.time() if now is None else now
        cursor = self._read(lambda db: self._start_cursor(db, p, now), Cursor())
        prods = self.products(p, ("Detection", "FrameSummary", "ImageChip", "Event"), now)
        return {
            "me": p.public(),
            "epoch": self.ctx.utc(0.0),
            "sensor": None if self.ctx.scenario is None else {
                "height_px": self.ctx.scenario.sensor.height, "width_px": self.ctx.scenario.sensor.width,
                "gsd_m": self.ctx.scenario.sensor.gsd_m},
            "alerts": self.alerts(p, now),
            "detections": [r for r in prods if r["kind"] == "detection"],
            "frames": [r for r in prods if r["kind"] == "frame"],
            "chips": [r for r in prods if r["kind"] in ("chip", "quicklook")],
            "events": [r for r in prods if r["kind"] == "event"][-200:],
            "housekeeping": self.housekeeping(p, now),
            "cursor": cursor.text(),
            # which satellites and stations (a constellation's run), else None: the page adds columns
            "constellation": None if not self.multi else {
                "satellites": list((self.ctx.constellation or {}).get("satellites", [])),
                "stations": list((self.ctx.constellation or {}).get("stations", []))},
        }

    def _start_cursor(self, db, p: Partner, now: float) -> Cursor:
        """Read before the snapshot's rows: whatever the snapshot misses after it, the feed sends
        (the client drops what it already has)."""
        h = self.horizon(p, now)
        # newest first, stopping at the first released: max(id) with this WHERE read every alert
        last = db.execute("SELECT id FROM alerts WHERE received_wall <= ? ORDER BY id DESC LIMIT 1", (h,)).fetchone()
        a = last["id"] if last is not None else 0
        rows = db.execute("SELECT satellite_id, product_id, received_wall FROM products WHERE received_wall = "
                          "(SELECT max(received_wall) FROM products WHERE received_wall <= ?)", (h,)).fetchall()
        c = Cursor(a, 0.0)
        c.advance([((r["satellite_id"], r["product_id"]), r["received_wall"]) for r in rows])
        return c

    def poll(self, p: Partner, cursor: Cursor, now: float | None = None) -> list[tuple[str, dict]]:
        """What was archived (and released to this partner) since the cursor, as (event, record)
        pairs; advances the cursor. Chips whose detection or frame arrives now are sent again
        (their position is known only then); the client keeps one copy of each."""
        now = time.time() if now is None else now
        h = self.horizon(p, now)

        def read(db):
            out: list[tuple[str, dict]] = []
            rows = db.execute("SELECT * FROM alerts WHERE id > ? AND received_wall <= ? ORDER BY id",
                              (cursor.alert_id, h)).fetchall()
            for r in rows:
                cursor.alert_id = max(cursor.alert_id, r["id"])
                if not r["throttled"]:
                    out.append(("alert", self.alert_record(r)))
            prows = db.execute(f"SELECT {PRODUCT_COLS} FROM products WHERE received_wall >= ? AND received_wall <= ? "
                               "ORDER BY received_wall, satellite_id, product_id", (cursor.wall, h)).fetchall()
            key = lambda r: (r["satellite_id"], r["product_id"])  # noqa: E731 (ids repeat across satellites)
            prows = [r for r in prows if not (r["received_wall"] == cursor.wall and key(r) in cursor.seen)]
            cursor.advance([(key(r), r["received_wall"]) for r in prows])
            recs = [rec for rec in (self.product_record(r) for r in prows) if rec is not None]
            touched = {r["frame_key"] for r in recs if r["kind"] in ("detection", "frame", "chip", "quicklook")}
            chips: dict[str, dict] = {}
            if touched:
                part = sorted({int(k.split(":")[1]) for k in touched})[:500]
                sql = (f"SELECT {PRODUCT_COLS} FROM products WHERE "
                       f"kind = 'ImageChip' AND received_wall <= ? AND frame_id IN ({', '.join('?' * len(part))})")
                for r in db.execute(sql, (h, *part)):
                    rec = self.product_record(r)
                    if rec["frame_key"] in touched:  # the same frame id of another satellite is another frame
                        chips[rec["key"]] = rec
                self._resolve_chips(db, list(chips.values()))
            for rec in recs:
                if rec["kind"] in ("chip", "quicklook", "housekeeping"):
                    continue
                out.append((rec["kind"], rec))
            out += [(c["kind"], c) for c in sorted(chips.values(), key=lambda c: c["received_wall"])]
            if p.allows("housekeeping", None, None, None, 0.0, math.inf) and any(r["kind"] == "housekeeping" for r in recs):
                out.append(("housekeeping", {"kind": "housekeeping", "channels": None, "received_wall": now}))
            return out

        events = self._read(read, [])
        visible = []
        for name, rec in events:
            if name == "housekeeping" and rec.get("channels") is None:
                visible.append((name, {"kind": "housekeeping", "channels": self.housekeeping(p, now)}))
            elif self.allows(p, rec, now):
                visible.append((name, self.redact(p, rec)))
        return visible

    # --- link state -------------------------------------------------------------------------------

    def _passes_once(self, compute) -> list:
        """The run's contact windows, computed on first use and kept (sgp4 over the whole run is
        slow, and every open feed asks once a second). A failure (a bad orbit table) leaves none:
        it must not stop the console."""
        with self._passes_lock:
            if self._passes is None:
                try:
                    self._passes = compute()
                except Exception as exc:  # noqa: BLE001 - see above
                    self._passes = []
                    print(f"console: no contact plan: {exc}", flush=True)
            return self._passes

    def next_passes(self, now_s: float | None) -> list[dict]:
        """The next contact window per station (the scenario's contact plan; with an always-up link
        model, the orbit's passes over the scenario's ground stations, for information)."""
        sc = self.ctx.scenario
        if sc is None or now_s is None:
            return []

        def windows() -> list:
            from ground_link.linkmodel import make_contacts, orbit_windows, scenario_horizon_s

            plan = make_contacts(sc)
            return plan.windows if plan.windows is not None else orbit_windows(sc, scenario_horizon_s(sc))

        nxt: dict[str, Any] = {}
        for w in self._passes_once(windows):
            if w.los_s > now_s and w.station not in nxt:
                nxt[w.station] = w
        return [{"station": w.station, "aos_s": w.aos_s, "los_s": w.los_s, "aos_utc": self.ctx.utc(w.aos_s),
                 "los_utc": self.ctx.utc(w.los_s), "in_progress": w.aos_s <= now_s}
                for w in sorted(nxt.values(), key=lambda w: w.aos_s)]

    def _status(self, name: str) -> tuple[dict, float | None]:
        path = self.ctx.run_dir / f"{name}.status.json"
        try:
            return json.loads(path.read_text()), time.time() - os.path.getmtime(path)
        except (OSError, ValueError):
            return {}, None

    def link(self, p: Partner, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        if self.multi:
            return self.constellation_link(p, now)
        chan, chan_age = self._status("channel")
        station, _ = self._status("station")
        active = chan_age is not None and chan_age < STATUS_FRESH_S
        now_s = self.ctx.now_s(now)
        if now_s is None and chan.get("scenario_s") is not None:
            now_s = chan["scenario_s"] + (chan_age or 0.0) * self.ctx.rate
        contacts = self.ctx.scenario.link.contacts if self.ctx.scenario else None
        out = {"run_active": active, "status_age_s": None if chan_age is None else round(chan_age, 1),
               "scenario_s": None if now_s is None else round(now_s, 1), "scenario_utc": self.ctx.utc(now_s),
               "contacts": contacts, "link_up": chan.get("link_up") if active else None,
               "station": chan.get("station") if active else None,
               "los_utc": self.ctx.utc(chan.get("los_s")) if active else None,
               "next_aos_utc": self.ctx.utc(chan.get("next_aos_s")) if active else None,
               "next_station": chan.get("next_station") if active else None,
               "passes": self.next_passes(now_s), "queue": None}
        if p.operator:
            out["counts"] = {k: chan.get(k) for k in ("down_packets_out", "down_lost", "down_corrupted",
                                                       "down_dropped_outside_contact", "up_packets_out")} | {
                k: station.get(k) for k in ("products_archived", "duplicates", "packets_bad", "alerts")}
        hk = self.housekeeping(p, now)
        if hk is not None:  # the onboard queue as the flight last reported it (housekeeping)
            q = next((c for c in hk if c["name"] == "store_products"), None)
            if q is not None:
                out["queue"] = {"products": None if q["value"] is None else int(q["value"]), "time_utc": q["time_utc"]}
        return out

    # --- link state of a constellation (issue #18) ----------------------------------------------------

    def constellation_passes(self, now_s: float | None) -> list[dict]:
        """The next pass of each (satellite, station) pair: the same sgp4 windows the launcher gives
        each satellite's radio and flight (payload_sim.constellation.pair_contacts)."""
        sc = self.ctx.scenario
        if sc is None or now_s is None:
            return []

        def pair_windows() -> list:
            from payload_sim.constellation import pair_contacts

            orbit = sc.extra.get("orbit", {})
            cons = self.ctx.constellation or {}
            names = list(cons.get("stations", []))
            passes = []
            for sat in sc.constellation.satellites:
                if sat.id not in cons.get("satellites", [sat.id]):
                    continue  # a run of fewer satellites than the scenario file lists
                tle1, tle2 = sat.tle1 or orbit.get("tle1", ""), sat.tle2 or orbit.get("tle2", "")
                for plan in pair_contacts(sc, names, (tle1, tle2) if tle1 and tle2 else None).values():
                    passes += [(sat.id, w) for w in plan.windows or []]  # None: always in contact
            return sorted(passes, key=lambda x: x[1].aos_s)

        nxt: dict[tuple[int, str], Any] = {}
        for sat, w in self._passes_once(pair_windows):
            if w.los_s > now_s and (sat, w.station) not in nxt:
                nxt[(sat, w.station)] = w
        return [{"satellite_id": sat, "station": w.station, "aos_s": w.aos_s, "los_s": w.los_s,
                 "aos_utc": self.ctx.utc(w.aos_s), "los_utc": self.ctx.utc(w.los_s), "in_progress": w.aos_s <= now_s}
                for (sat, _), w in sorted(nxt.items(), key=lambda kv: (kv[1].aos_s, kv[0]))]

    def station_stats(self, now: float) -> list[dict]:
        """Per station, from the shared archive: products archived (by satellite) and the latency
        from capture to archive in scenario seconds (its received_wall on the run's clock less the
        capture time; the wait for a pass included), as ground_link.watch and the run's summary
        count it; with the station's own counts from its status file. Cached for a second: every
        open feed asks once a second."""
        cached = getattr(self, "_stations_cache", None)
        if cached is not None and now - cached[0] < 1.0:
            return cached[1]
        info = self.ctx.constellation or {}
        sats = list(info.get("satellites", []))
        with self._arrivals_lock:
            # the run's PostgreSQL archive, then its SQLite copy, or the run's clock learnt: read anew
            target = f"{self.ctx.target()} {self.ctx.clock_start!r} {self.ctx.rate!r}"
            if self._arrivals.target != target:
                self._arrivals = Arrivals(target)
            self._read(lambda db: self._arrivals.read(db, self.ctx.clock_start, self.ctx.rate), None)
            per = {name: (s.count, dict(s.by_satellite), s.latency_summary()) for name, s in self._arrivals.stations.items()}
        out = []
        for name in info.get("stations", []):
            st, age = self._status(f"{name}/station")
            count, by_sat, lat = per.get(name, (0, {}, {"p50": None, "p99": None, "max": None}))
            out.append({"station": name, "running": age is not None and age < STATUS_FRESH_S,
                        "products_archived": count,
                        "by_satellite": {str(s): by_sat.get(s, 0) for s in sats},
                        "duplicates": st.get("duplicates"), "acks_shared": st.get("acks_shared"),
                        "alerts": st.get("alerts"),
                        **{f"latency_s_{k}": v for k, v in lat.items()}})
        self._stations_cache = (now, out)
        return out

    def constellation_link(self, p: Partner, now: float) -> dict:
        """Each satellite's link (stations in view, LOS, next AOS: its radio's status file while the
        run goes on), the next pass of each pair, each satellite's onboard queue as last reported,
        and (operators) each station's counts and capture-to-archive latency."""
        info = self.ctx.constellation or {}
        now_s = self.ctx.now_s(now)
        hk = self.housekeeping(p, now)
        queues = {c["satellite_id"]: c for c in hk or [] if c["name"] == "store_products"}
        sats, active = [], False
        for sat in info.get("satellites", []):
            chan, age = self._status(f"sat{sat}/channel")
            fresh = age is not None and age < STATUS_FRESH_S
            active |= fresh
            per = chan.get("stations", {}) if fresh else {}
            in_view = [n for n, v in per.items() if v.get("link_up")]
            los = [per[n]["los_s"] for n in in_view if per[n].get("los_s") is not None]
            nxt = sorted((v["next_aos_s"], n) for n, v in per.items() if v.get("next_aos_s") is not None)
            q = queues.get(sat)
            sats.append({"satellite_id": sat, "link_up": bool(in_view) if fresh else None, "stations_in_view": in_view,
                         "los_utc": self.ctx.utc(max(los)) if los else None,
                         "next_aos_utc": self.ctx.utc(nxt[0][0]) if nxt else None,
                         "next_station": nxt[0][1] if nxt else None,
                         "queue": None if q is None else {"products": None if q["value"] is None else int(q["value"]), "time_utc": q["time_utc"]}})
        contacts = self.ctx.scenario.link.contacts if self.ctx.scenario else None
        out = {"run_active": active, "scenario_s": None if now_s is None else round(now_s, 1),
               "scenario_utc": self.ctx.utc(now_s), "contacts": contacts,
               "link_up": any(s["link_up"] for s in sats) if active else None,
               "satellites": sats, "passes": self.constellation_passes(now_s), "queue": None}
        if p.operator:  # a station's counts cover every product, whatever a partner's rule
            out["stations"] = self.station_stats(now)
        return out

    # --- the query CLI's --partner ------------------------------------------------------------------

    def keep_for(self, p: Partner, kind: str, rows: list[dict], now: float | None = None) -> list[dict]:
        """Rows of ground_link.query.query() that this partner may see (exports for a partner)."""
        now = time.time() if now is None else now
        if p.operator:
            return rows
        kept = []
        if kind == "alerts":
            for r in rows:
                rec = {"kind": "alert", "class": r.get("class"), "lat": finite_or_none(r.get("lat_deg")),
                       "lon": finite_or_none(r.get("lon_deg")), "received_wall": r.get("received_wall")}
                if self.allows(p, rec, now):
                    kept.append(r)
            return kept
        # query() rows of a one-station archive carry no satellite id: satellite 1
        keys = {f"{r.get('satellite_id', 1)}:{r['product_id']}" for r in rows if isinstance(r.get("product_id"), int)}
        pids = sorted({int(k.split(":")[1]) for k in keys})

        def read(db):
            ok = set()
            for i in range(0, len(pids), 500):
                part = pids[i:i + 500]
                sql = (f"SELECT {PRODUCT_COLS} FROM products "
                       f"WHERE product_id IN ({', '.join('?' * len(part))})")
                recs = [r for r in (self.product_record(row) for row in db.execute(sql, part))
                        if r is not None and r["key"] in keys]  # the same id of another satellite: another product
                self._resolve_chips(db, [r for r in recs if r["kind"] in ("chip", "quicklook")])
                ok |= {r["key"] for r in recs if self.allows(p, r, now)}
            return ok

        ok = self._read(read, set())
        return [r for r in rows if f"{r.get('satellite_id', 1)}:{r.get('product_id')}" in ok]
