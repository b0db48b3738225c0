"""Exports of the ground archive in the formats fire and maritime services read.

    python -m ground_link.query RUN_DIR --kind alerts --format geojson|kml|csv|cap [--out PATH]
    python -m ground_link.query RUN_DIR --kind chips --format png --out DIR      # chips and quicklooks

- **GeoJSON** (RFC 7946): a FeatureCollection of Point features, coordinates [lon, lat] in WGS 84,
  no `crs` member; times as UTC ISO 8601 (`2026-11-28T06:01:10Z`). An alert without a position
  is a Feature with a null geometry.
- **KML 2.2**: one Placemark per alert with a TimeStamp, a style per severity and the fields as
  ExtendedData (Google Earth, QGIS, FIRMS users).
- **CSV**: one row per alert, FIRMS-like columns first (latitude, longitude, acq_datetime_utc,
  confidence), then ours.
- **CAP 1.2** (OASIS Common Alerting Protocol): one `<alert>` per alert with an `<area>` circle
  around the detection. Written as an Atom 1.0 feed whose entries carry each CAP alert inline
  (content type application/cap+xml), or with `--out DIR` (an existing folder) one CAP file per
  alert. CAP times use `-00:00` for UTC as CAP 1.2 requires.
- **PNG**: every image chip and quicklook as a file named
  `frame<frame>_<epoch>-<n>_<class>.png` (class fire, ship, requested or quicklook).

A constellation's archive (issue #18: several satellites, several stations, docs/ground.md) holds
products of several satellites whose product ids collide, so everything here is keyed by
(satellite id, product id): chips are read by both, and each alert, feature, row and CAP info says
which satellite and which station (`satellite_id`, `station`). An archive of one station (rows
without a station) exports exactly as before.

Scenario seconds become UTC through the scenario epoch: `run_context` reads RUN_DIR/launch.json
(the scenario file and its overrides, written by the launcher); without it the default epoch of
flight.config is used and a note goes to stderr.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flight.clock import parse_epoch
from flight.config import ConfigError, Scenario, ScenarioSection, load_scenario
from flight.products import product_label

FORMATS = ("geojson", "kml", "csv", "cap", "png")
CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
ATOM_NS = "http://www.w3.org/2005/Atom"
KML_NS = "http://www.opengis.net/kml/2.2"
CAP_SENDER = "ground-station@onboard-payload.invalid"
SEVERITY_CAP = {"critical": "Severe", "warning": "Moderate", "info": "Minor"}
URGENCY_CAP = {"critical": "Immediate", "warning": "Expected", "info": "Future"}
CATEGORY_CAP = {"fire": "Fire", "ship": "Transport"}
EVENT_TEXT = {"fire": "Active fire detected from orbit", "ship": "Vessel detected from orbit"}
KML_COLOUR = {"critical": "ff0000ff", "warning": "ff00a5ff", "info": "ffff9933"}  # aabbggrr
CHIP_CLASS = {1: "ship", 2: "fire", 0: "requested", 255: "quicklook"}


# --- time --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunContext:
    """What exports and the console know about the run an archive came from."""

    archive: Path | str  # an SQLite file, or a postgresql:// URL (a constellation's shared archive)
    run_dir: Path
    scenario: Scenario | None
    epoch: datetime
    clock_start: float | None = None  # wall time of scenario t = 0 (launch.json)
    note: str = ""  # why the scenario could not be loaded, when it could not
    constellation: dict | None = None  # RUN_DIR/constellation.json of a constellation's run (issue #18)
    follow: bool = False  # read the archive constellation.json names each time (see target())

    @property
    def rate(self) -> float:
        if self.constellation is not None:
            return float(self.constellation.get("clock_rate", 1.0))
        return self.scenario.scenario.clock_rate if self.scenario else 1.0

    def target(self) -> Path | str:
        """The archive to read now. A constellation's launcher points constellation.json at the
        SQLite copy when its throwaway PostgreSQL server is deleted at the end of the run, so a
        reader that follows the run folder looks again each time."""
        if not self.follow:
            return self.archive
        from ground_link.archive import archive_target

        return archive_target(self.run_dir)

    def now_s(self, wall: float) -> float | None:
        """Scenario seconds at this wall time (None without the run's clock)."""
        return None if self.clock_start is None else (wall - self.clock_start) * self.rate

    def utc(self, t_s: float | None) -> str | None:
        return utc_text(self.epoch, t_s)


def run_context(path: str | Path) -> RunContext:
    """From a run folder or its archive.sqlite: the scenario (launch.json) and its epoch. A
    constellation's run folder: its constellation.json (issue #18). A postgresql:// URL alone: the
    default epoch (give the run folder, or query's --epoch)."""
    from ground_link.archive import is_postgres

    default = parse_epoch(ScenarioSection().epoch)
    if is_postgres(path):
        return RunContext(str(path), Path("."), None, default,
                          note=f"an archive URL without its run folder: times use the default epoch {ScenarioSection().epoch}")
    path = Path(path)
    run_dir, archive = (path, path / "archive.sqlite") if path.is_dir() else (path.parent, path)
    launch = run_dir / "launch.json"
    if not launch.exists() and (run_dir / "constellation.json").exists():
        return constellation_context(run_dir, None if path.is_dir() else archive)
    if not launch.exists():
        return RunContext(archive, run_dir, None, default,
                          note=f"no {launch.name} beside the archive: times use the default epoch {ScenarioSection().epoch}")
    try:
        record = json.loads(launch.read_text())
        scenario = load_scenario(record["scenario"], record.get("overrides", []))
    except (OSError, ValueError, KeyError, ConfigError) as exc:
        return RunContext(archive, run_dir, None, default, record_clock(launch),
                          note=f"{launch}: {exc}: times use the default epoch {ScenarioSection().epoch}")
    return RunContext(archive, run_dir, scenario, parse_epoch(scenario.scenario.epoch), record_clock(launch))


def constellation_context(run_dir: Path, archive: Path | None = None) -> RunContext:
    """A constellation's run folder: archive, epoch, clock and scenario from its constellation.json
    (payload_sim.constellation writes it). `archive` given: that file, else the one the run folder
    names, followed as it moves from the PostgreSQL server to the copy."""
    from ground_link.archive import archive_target

    path = run_dir / "constellation.json"
    try:  # a malformed file (not an object, an epoch that is not a time) is a ValueError saying so, not a traceback
        info = json.loads(path.read_text())
        if not isinstance(info, dict):
            raise ValueError(f"a JSON object expected, not {type(info).__name__}")
        epoch = parse_epoch(str(info.get("epoch", ScenarioSection().epoch)))
        clock = info.get("clock_start")
        clock = None if clock is None else float(clock)
        if clock is not None and not math.isfinite(clock):
            raise ValueError(f"clock_start {clock}: not a time")
        for key in ("satellites", "stations"):
            if not isinstance(info.get(key, []), list):
                raise ValueError(f"{key}: a list expected")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    scenario, note = None, ""
    try:
        scenario = load_scenario(info["scenario"], info.get("overrides", []))
    except (OSError, ValueError, KeyError, ConfigError) as exc:
        note = f"{path}: scenario not loaded ({exc}): no sensor, contact plan or partners file from it"
    return RunContext(archive if archive is not None else archive_target(run_dir), run_dir, scenario, epoch,
                      clock, note, constellation=info, follow=archive is None)


def record_clock(launch: Path) -> float | None:
    try:
        return float(json.loads(launch.read_text())["clock_start"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _iso(dt: datetime, zulu: bool = True) -> str:
    text = dt.astimezone(UTC).isoformat(timespec="milliseconds" if dt.microsecond else "seconds")
    return text.replace("+00:00", "Z") if zulu else text.replace("+00:00", "-00:00")


def utc_text(epoch: datetime, t_s: float | None) -> str | None:
    """Scenario seconds -> `2026-11-28T06:01:10Z` (milliseconds when not whole)."""
    if t_s is None or not math.isfinite(t_s):
        return None
    try:
        return _iso(epoch + timedelta(milliseconds=round(t_s * 1000)))
    except (OverflowError, ValueError):  # finite but past what a date holds (a product's 1e300 s): no time,
        return None  # not an exception that fails every export and empties the console's lists


def wall_text(wall: float | None) -> str | None:
    """A wall-clock time (time.time()) as UTC ISO 8601."""
    if wall is None or not math.isfinite(wall):
        return None
    try:
        return _iso(datetime.fromtimestamp(round(wall, 3), UTC))
    except (OverflowError, OSError, ValueError):  # past what a date holds
        return None


def _cap_time(epoch: datetime, t_s: float) -> str | None:
    """CAP 1.2 dateTime: whole seconds, explicit offset, UTC as -00:00 (None past what a date holds)."""
    try:
        return _iso((epoch + timedelta(seconds=round(t_s))).replace(microsecond=0), zulu=False)
    except (OverflowError, ValueError):
        return None


# --- alerts ----------------------------------------------------------------------------------------


def _pos(rec: dict) -> tuple[float, float] | None:
    lat, lon = rec.get("lat_deg"), rec.get("lon_deg")
    if lat is None or lon is None or not (math.isfinite(lat) and math.isfinite(lon)):
        return None
    return float(lat), float(lon)


def alert_properties(rec: dict, epoch: datetime) -> dict:
    """The fields every export carries for one alert (a row of ground_link.query's alerts). A row of
    a constellation's archive (it has a station) adds which satellite and which station."""
    pid = rec.get("product_id")
    props = {
        "id": rec.get("id"),
        "product_id": pid,
        "product": product_label(pid) if isinstance(pid, int) else None,
        "severity": rec.get("severity"),
        "class": rec.get("class"),
        "confidence": rec.get("confidence"),
        "frame_id": rec.get("frame_id"),
        "capture_time": utc_text(epoch, rec.get("capture_time_s")),
        # mission time of reception when the station knew it (received_s), else the wall clock
        "received_time": (utc_text(epoch, rec["received_s"]) if rec.get("received_s") is not None
                          else wall_text(rec.get("received_wall"))),
        "capture_time_s": rec.get("capture_time_s"),
        "latency_s": rec.get("latency_s"),
        "area_px": rec.get("area_px"),
        "rule": rec.get("rule"),
        "throttled": bool(rec.get("throttled")),
        "message": rec.get("message"),
    }
    if rec.get("station"):  # product ids repeat across satellites: the satellite makes it one product
        props |= {"satellite_id": rec.get("satellite_id"), "station": rec["station"]}
    return props


def _constellation(rows: list[dict]) -> bool:
    return any(r.get("station") for r in rows)


def alerts_geojson(rows: list[dict], epoch: datetime) -> dict:
    """RFC 7946 FeatureCollection (positions rounded to 1e-6 deg, about 0.1 m)."""
    features = []
    for rec in rows:
        pos = _pos(rec)
        geometry = None if pos is None else {"type": "Point", "coordinates": [round(pos[1], 6), round(pos[0], 6)]}
        props = alert_properties(rec, epoch)
        feature = {"type": "Feature", "geometry": geometry, "properties": props}
        if props["id"] is not None:
            feature["id"] = props["id"]
        features.append(feature)
    return {"type": "FeatureCollection", "features": features}


def alerts_csv(rows: list[dict], epoch: datetime) -> str:
    cols = ["latitude", "longitude", "acq_datetime_utc", "confidence", "class", "severity", "frame_id", "product",
            "product_id", "area_px", "received_utc", "capture_time_s", "alert_id"]
    multi = _constellation(rows)  # a constellation's archive: two more columns (one station's: as before)
    if multi:
        cols += ["satellite_id", "station"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for rec in rows:
        p = alert_properties(rec, epoch)
        pos = _pos(rec)
        w.writerow([f"{pos[0]:.6f}" if pos else "", f"{pos[1]:.6f}" if pos else "", p["capture_time"] or "",
                    p["confidence"], p["class"], p["severity"], p["frame_id"], p["product"], p["product_id"],
                    p["area_px"], p["received_time"] or "", p["capture_time_s"], p["id"]]
                   + ([p.get("satellite_id", ""), p.get("station", "")] if multi else []))
    return buf.getvalue()


def alerts_kml(rows: list[dict], epoch: datetime, name: str = "Onboard payload alerts") -> str:
    ET.register_namespace("", KML_NS)
    k = lambda tag: f"{{{KML_NS}}}{tag}"  # noqa: E731
    root = ET.Element(k("kml"))
    doc = ET.SubElement(root, k("Document"))
    ET.SubElement(doc, k("name")).text = name
    for sev, colour in KML_COLOUR.items():
        style = ET.SubElement(doc, k("Style"), id=f"severity-{sev}")
        icon = ET.SubElement(style, k("IconStyle"))
        ET.SubElement(icon, k("color")).text = colour
        ET.SubElement(icon, k("scale")).text = "1.1" if sev == "critical" else "0.9"
    for rec in rows:
        p = alert_properties(rec, epoch)
        pm = ET.SubElement(doc, k("Placemark"), {"id": f"alert-{p['id']}"} if p["id"] is not None else {})
        ET.SubElement(pm, k("name")).text = f"{(p['severity'] or '').upper()} {p['class']} {p['confidence']:.2f}"
        ET.SubElement(pm, k("description")).text = rec.get("message") or ""
        if p["capture_time"]:
            ts = ET.SubElement(pm, k("TimeStamp"))
            ET.SubElement(ts, k("when")).text = p["capture_time"]
        ET.SubElement(pm, k("styleUrl")).text = f"#severity-{p['severity']}"
        ext = ET.SubElement(pm, k("ExtendedData"))
        for key, v in p.items():
            if v is None or key == "message":
                continue
            d = ET.SubElement(ext, k("Data"), name=key)
            ET.SubElement(d, k("value")).text = str(v)
        pos = _pos(rec)
        if pos is not None:
            pt = ET.SubElement(pm, k("Point"))
            ET.SubElement(pt, k("coordinates")).text = f"{pos[1]:.6f},{pos[0]:.6f},0"
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def cap_identifier(rec: dict, sender: str = CAP_SENDER) -> str:
    pid = rec.get("product_id")
    label = product_label(pid).replace(":", "-") if isinstance(pid, int) else f"alert-{rec.get('id')}"
    if rec.get("station") and rec.get("satellite_id") is not None:  # ids repeat across satellites
        label = f"sat{rec['satellite_id']}.{label}"
    return f"{sender.split('@')[-1]}.alert.{label}"


def cap_alert(rec: dict, epoch: datetime, sender: str = CAP_SENDER, scope: str = "Public",
              restriction: str | None = None, gsd_m: float = 10.0, sent_wall: float | None = None) -> ET.Element:
    """One CAP 1.2 <alert> element for an alert row. The area is a circle around the detection:
    the equivalent circle of its pixel area at the sensor's GSD plus 0.5 km for geolocation and
    pixel size, written as `lat,lon radius_km` (CAP 1.2 3.3.2.3). `sent` is when the ground
    archived it; onset and effective are the capture time."""
    c = lambda tag: f"{{{CAP_NS}}}{tag}"  # noqa: E731
    p = alert_properties(rec, epoch)
    sev, cls = p["severity"] or "info", p["class"] or "fire"
    alert = ET.Element(c("alert"))
    ET.SubElement(alert, c("identifier")).text = cap_identifier(rec, sender)
    ET.SubElement(alert, c("sender")).text = sender
    wall = sent_wall if sent_wall is not None else rec.get("received_wall")
    try:
        sent = (datetime.fromtimestamp(round(wall), UTC) if wall is not None
                else epoch + timedelta(seconds=round(rec.get("capture_time_s") or 0.0)))
    except (OverflowError, OSError, ValueError):  # a time past what a date holds (or NaN): sent is required
        sent = epoch
    ET.SubElement(alert, c("sent")).text = _iso(sent.replace(microsecond=0), zulu=False)
    ET.SubElement(alert, c("status")).text = "Actual"
    ET.SubElement(alert, c("msgType")).text = "Alert"
    ET.SubElement(alert, c("scope")).text = scope
    if scope == "Restricted":
        ET.SubElement(alert, c("restriction")).text = restriction or "partner agencies only"
    info = ET.SubElement(alert, c("info"))
    ET.SubElement(info, c("language")).text = "en-GB"
    ET.SubElement(info, c("category")).text = CATEGORY_CAP.get(cls, "Other")
    ET.SubElement(info, c("event")).text = EVENT_TEXT.get(cls, f"{cls} detected from orbit")
    ET.SubElement(info, c("urgency")).text = URGENCY_CAP.get(sev, "Unknown")
    ET.SubElement(info, c("severity")).text = SEVERITY_CAP.get(sev, "Unknown")
    conf = float(p["confidence"] or 0.0)
    ET.SubElement(info, c("certainty")).text = "Likely" if conf > 0.5 else "Possible"
    t = rec.get("capture_time_s")
    when = _cap_time(epoch, t) if t is not None and math.isfinite(t) else None
    if when is not None:
        ET.SubElement(info, c("effective")).text = when
        ET.SubElement(info, c("onset")).text = when
    ET.SubElement(info, c("senderName")).text = "Onboard payload ground station"
    pos = _pos(rec)
    where = f"{pos[0]:.5f}, {pos[1]:.5f}" if pos else "position unknown"
    ET.SubElement(info, c("headline")).text = f"{EVENT_TEXT.get(cls, cls)} ({sev}), confidence {conf:.2f}"
    via = f" of satellite {p['satellite_id']}, received via {p['station']}" if "station" in p else ""
    ET.SubElement(info, c("description")).text = (
        f"{EVENT_TEXT.get(cls, cls)} at {where} in frame {p['frame_id']}{via} captured {p['capture_time'] or 'unknown'}, "
        f"confidence {conf:.2f}, {p['area_px']} pixels. Product {p['product']}.")
    for name in ("confidence", "frame_id", "product", "area_px", "capture_time", "satellite_id", "station"):
        if name not in p:  # satellite and station: a constellation's alerts only
            continue
        if p[name] is not None:
            par = ET.SubElement(info, c("parameter"))
            ET.SubElement(par, c("valueName")).text = name
            ET.SubElement(par, c("value")).text = str(p[name])
    area = ET.SubElement(info, c("area"))
    ET.SubElement(area, c("areaDesc")).text = f"{cls} detection at {where}"
    if pos is not None:
        radius_km = 0.5 + math.sqrt(max(p["area_px"] or 0, 0) / math.pi) * gsd_m / 1000.0
        ET.SubElement(area, c("circle")).text = f"{pos[0]:.5f},{pos[1]:.5f} {radius_km:.3f}"
    return alert


def cap_document(rec: dict, epoch: datetime, **kw) -> str:
    ET.register_namespace("", CAP_NS)
    el = cap_alert(rec, epoch, **kw)
    ET.indent(el)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(el, encoding="unicode") + "\n"


def alerts_cap_feed(rows: list[dict], epoch: datetime, title: str = "Onboard payload alerts (CAP 1.2)",
                    feed_id: str = "urn:onboard-payload:alerts", **kw) -> str:
    """An Atom 1.0 feed, one entry per alert, each entry's content the CAP 1.2 alert itself."""
    ET.register_namespace("", ATOM_NS)
    ET.register_namespace("cap", CAP_NS)
    a = lambda tag: f"{{{ATOM_NS}}}{tag}"  # noqa: E731
    feed = ET.Element(a("feed"))
    ET.SubElement(feed, a("title")).text = title
    ET.SubElement(feed, a("id")).text = feed_id
    walls = [r["received_wall"] for r in rows if r.get("received_wall") is not None]
    ET.SubElement(feed, a("updated")).text = wall_text(max(walls)) if walls else _iso(epoch)
    author = ET.SubElement(feed, a("author"))
    ET.SubElement(author, a("name")).text = "Onboard payload ground station"
    for rec in rows:
        cap = cap_alert(rec, epoch, **kw)
        entry = ET.SubElement(feed, a("entry"))
        ET.SubElement(entry, a("id")).text = "urn:onboard-payload:" + cap_identifier(rec, kw.get("sender", CAP_SENDER))
        ET.SubElement(entry, a("title")).text = rec.get("message") or cap_identifier(rec)
        ET.SubElement(entry, a("updated")).text = wall_text(rec.get("received_wall")) or _iso(epoch)
        content = ET.SubElement(entry, a("content"), type="application/cap+xml")
        content.append(cap)
    ET.indent(feed)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(feed, encoding="unicode") + "\n"


def render_alerts(rows: list[dict], fmt: str, epoch: datetime, **cap_kw) -> str:
    if fmt == "geojson":
        return json.dumps(alerts_geojson(rows, epoch), indent=1) + "\n"
    if fmt == "kml":
        return alerts_kml(rows, epoch)
    if fmt == "csv":
        return alerts_csv(rows, epoch)
    if fmt == "cap":
        return alerts_cap_feed(rows, epoch, **cap_kw)
    raise ValueError(f"alerts cannot be exported as {fmt!r}: one of geojson, kml, csv, cap")


# --- chips -------------------------------------------------------------------------------------------


def chip_filename(rec: dict) -> str:
    pid = rec["product_id"]
    label = CHIP_CLASS.get(int(rec.get("class_id", -1)), "chip")
    # a constellation's chip: frame and product ids repeat across satellites, the prefix keeps them apart
    sat = f"sat{rec.get('satellite_id', 1)}_" if rec.get("station") else ""
    return f"{sat}frame{rec.get('frame_id', 0):05d}_{product_label(pid).replace(':', '-')}_{label}.png"


def chip_png(archive: str | Path, product_id: int, satellite_id: int = 1) -> bytes | None:
    """The PNG of one chip, by (satellite id, product id); `archive` a file or a postgresql:// URL."""
    from ground_link.archive import reader

    db = reader(archive)  # (an archive from before issue #18 reads as satellite 1)
    try:
        row = db.execute("SELECT png FROM chips WHERE satellite_id = ? AND product_id = ?",
                         (satellite_id, product_id)).fetchone()
    finally:
        db.close()
    return bytes(row["png"]) if row else None


def export_pngs(archive: str | Path, rows: list[dict], out_dir: Path) -> list[Path]:
    """Write the PNG of each chip row (ground_link.query chips rows) into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for rec in rows:
        # query() rows of a one-station archive carry no satellite id: satellite 1
        data = chip_png(archive, rec["product_id"], rec.get("satellite_id", 1))
        if data is None:
            continue
        path = out_dir / chip_filename(rec)
        path.write_bytes(data)
        written.append(path)
    return written


# --- the query CLI's entry --------------------------------------------------------------------------


def write_export(archive: Path | str, kind: str, fmt: str, rows: list[dict], out: Path | None,
                 partner: str | None = None, partners_file: Path | None = None, epoch: datetime | None = None,
                 ctx: RunContext | None = None) -> int:
    """`python -m ground_link.query ... --format FMT [--out PATH] [--partner NAME]`: rows are what
    query() returned for the other filters. With a partner, only what its rule allows is kept
    (ground_link.partners). `epoch` (query's --epoch) overrides the run's. `archive`: a file or a
    postgresql:// URL; `ctx`: the run it belongs to when not beside it (query --db). Returns the
    exit status."""
    try:
        ctx = run_context(archive) if ctx is None else dataclasses.replace(ctx, archive=archive, follow=False)
    except (OSError, ValueError) as exc:  # a malformed constellation.json beside the archive
        print(f"query: {exc}", file=sys.stderr)
        return 2
    if epoch is not None:
        ctx = dataclasses.replace(ctx, epoch=epoch, note="")
    if ctx.note:
        print(f"query: {ctx.note}", file=sys.stderr)
    if partner is not None:
        from ground_link.console.data import ArchiveView, partners_for

        try:
            who = partners_for(partners_file, ctx.scenario)[partner]
        except KeyError:
            print(f"query: no partner {partner!r} in {partners_file or 'the demo partners'}", file=sys.stderr)
            return 2
        rows = ArchiveView(ctx).keep_for(who, kind, rows)
    try:
        return _write(archive, kind, fmt, rows, out, partner, ctx)
    except BrokenPipeError:  # `| head` closed stdout: not an error (stdout pointed away so exit is quiet)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # --out a folder, in a folder that is not there, not writable: one line, not a traceback
        print(f"query: cannot write the export: {exc.filename or out}: {exc.strerror or exc}", file=sys.stderr)
        return 2


def _write(archive: Path | str, kind: str, fmt: str, rows: list[dict], out: Path | None, partner: str | None,
           ctx: RunContext) -> int:
    if fmt == "png":
        if kind != "chips":
            print("query: --format png exports chips and quicklooks: use --kind chips", file=sys.stderr)
            return 2
        if out is None:
            print("query: --format png needs --out DIR", file=sys.stderr)
            return 2
        written = export_pngs(archive, rows, out)
        print(f"{len(written)} PNG files in {out}", file=sys.stderr)
        return 0
    if kind != "alerts":
        print(f"query: --format {fmt} exports alerts: use --kind alerts", file=sys.stderr)
        return 2
    gsd = ctx.scenario.sensor.gsd_m if ctx.scenario else 10.0
    scope = {} if partner is None else {"scope": "Restricted", "restriction": f"shared with partner {partner} only"}
    if fmt == "cap" and out is not None and out.is_dir():
        for rec in rows:
            (out / f"{cap_identifier(rec)}.xml").write_text(cap_document(rec, ctx.epoch, gsd_m=gsd, **scope))
        print(f"{len(rows)} CAP 1.2 alerts in {out}", file=sys.stderr)
        return 0
    text = render_alerts(rows, fmt, ctx.epoch, gsd_m=gsd, **scope)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
    print(f"{len(rows)} alerts as {fmt}" + (f" in {out}" if out else ""), file=sys.stderr)
    return 0
