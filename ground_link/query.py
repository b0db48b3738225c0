"""Ask the ground archive what came down, in names and UTC.

    python -m ground_link.query ARCHIVE_OR_RUN_DIR [--kind detections|alerts|summaries|events|chips|housekeeping|all]
        [--since T] [--until T] [--class fire] [--region LAT0,LON0,LAT1,LON1] [--frame N]
        [--throttled] [--limit N] [--epoch ISO-8601] [--json]

Each row is shown with its UTC time (of capture; events, housekeeping and command reports: of
the report), its scenario time, and names instead of codes: detection class and confidence,
event name and severity, housekeeping channels by name, command name, report kind and reason.
The UTC time needs the scenario's epoch: from `--epoch`, else from the run's launch.json beside
the archive (it names the scenario); without either, times are scenario seconds (and a note says
so). `--since` / `--until` take scenario seconds or a UTC time (2026-11-28T06:05:00Z). `--class`
and `--region` apply to what has a class or a position (detections, alerts, chips; region also to
frame summaries by their centre); `--region=-30,-60,-10,-40` and `--region -30,-60,-10,-40` both
work. Alerts hide throttled repeats unless `--throttled`. One line per row, or one JSON object per
line with --json (the archived fields, plus the decoded names and `utc`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sqlite3
import sys
from datetime import datetime, timedelta
from pathlib import Path

from flight.clock import parse_epoch
from flight.dictionary import (
    COMMANDS_BY_OPCODE,
    EVENTS_BY_ID,
    TELEMETRY_BY_ID,
    DetectionClass,
    Mode,
    Reason,
    ReportKind,
    Severity,
)
from flight.products import product_label
from ground_link.alerts import class_name, finite_or_none, in_region

KINDS = {"detections": "Detection", "summaries": "FrameSummary", "events": "Event", "chips": "ImageChip",
         "housekeeping": "Housekeeping", "all": None}
CHIP_CLASSES = {0: "requested chip", 255: "quicklook"}  # ImageChip.class_id besides detection classes (flight.app)
_NEGATIVE = re.compile(r"^-[\d.]")


class CliParser(argparse.ArgumentParser):
    """argparse whose errors are one line (`prog: message (--help shows the usage)`), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (--help shows the usage)\n")


def join_negative(argv: list[str], options: set[str]) -> list[str]:
    """`--region -30,-60,-10,-40` -> `--region=-30,-60,-10,-40`: argparse takes a value starting
    with '-' (and not a plain number) for an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in options and i + 1 < len(argv) and _NEGATIVE.match(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def region_of(text: str) -> tuple[float, float, float, float]:
    """LAT0,LON0,LAT1,LON1 in degrees: four finite numbers, -90 <= LAT0 <= LAT1 <= 90, longitudes
    in [-180, 180] (LON0 > LON1 crosses 180). ValueError says what is wrong (the console's filter
    and this tool's --region share it)."""
    try:
        region = tuple(float(v) for v in text.split(","))
    except ValueError:
        region = ()
    if len(region) != 4:
        raise ValueError(f"region {text[:60]!r}: expected LAT0,LON0,LAT1,LON1 in degrees")
    lat0, lon0, lat1, lon1 = region
    if not -90 <= lat0 <= lat1 <= 90:  # also false for nan
        raise ValueError(f"region {text[:60]!r}: latitudes must satisfy -90 <= LAT0 <= LAT1 <= 90")
    if not (-180 <= lon0 <= 180 and -180 <= lon1 <= 180):
        raise ValueError(f"region {text[:60]!r}: longitudes must be in [-180, 180] (LON0 > LON1 crosses 180)")
    return lat0, lon0, lat1, lon1


def parse_region(text: str) -> tuple[float, ...]:
    try:
        return region_of(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_time(text: str) -> float | datetime:
    """Scenario seconds, or a UTC time (ISO-8601 with a zone)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not math.isfinite(seconds):  # nan would keep every record, inf none
            raise argparse.ArgumentTypeError(f"{text!r}: a time must be finite")
        return seconds
    try:
        return parse_epoch(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected scenario seconds or a UTC time such as "
                                         "2026-11-28T06:05:00Z") from None


def parse_epoch_arg(text: str) -> datetime:
    try:
        return parse_epoch(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an ISO-8601 UTC time such as 2026-11-28T06:00:00Z") from None


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return n


def natural_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 0")
    return n


FRAME_ID_MAX = 2**32 - 1  # frame ids are u32 on the wire (flight.products LAYOUTs)


def frame_int(text: str) -> int:
    """A frame id: 0..2**32-1. A larger number used to reach SQL and fail there (OverflowError past
    64 bits: a traceback); it cannot match any frame, so it is refused as the mistake it is."""
    n = natural_int(text)
    if n > FRAME_ID_MAX:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: a frame id is 0..{FRAME_ID_MAX}")
    return n


def run_epoch(run_dir: Path) -> tuple[datetime | None, str]:
    """The scenario epoch of the run in this folder (from launch.json and its scenario), or None
    and why not."""
    from flight.config import load_scenario

    path = Path(run_dir) / "launch.json"
    constellation = Path(run_dir) / "constellation.json"
    if not path.exists() and constellation.exists():  # a constellation's run folder (issue #18)
        try:
            return parse_epoch(str(json.loads(constellation.read_text())["epoch"])), ""  # str(): a number is no epoch (was AttributeError)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, f"{constellation}: no epoch ({exc})"
    try:
        rec = json.loads(path.read_text())
    except OSError:
        return None, f"no launch.json in {run_dir}"
    except ValueError as exc:
        return None, f"{path} unreadable ({exc})"
    try:
        return parse_epoch(load_scenario(rec["scenario"], rec.get("overrides", [])).scenario.epoch), ""
    except (KeyError, TypeError, ValueError) as exc:  # ConfigError is a ValueError
        return None, f"{path}: cannot read its scenario ({exc})"


def utc(epoch: datetime, t_s: float) -> str:
    try:
        dt = epoch + timedelta(seconds=t_s)
    except (OverflowError, ValueError):  # not a time (NaN, absurd)
        return "-"
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _position(rec: dict) -> tuple[float, float] | None:
    for lat, lon in (("lat_deg", "lon_deg"), ("center_lat_deg", "center_lon_deg")):
        if lat in rec:
            return (float("nan"), float("nan")) if rec[lat] is None else (rec[lat], rec[lon])
    return None


def _keep(rec: dict, cls: str | None, region: tuple[float, ...] | None) -> bool:
    if cls is not None:
        name = rec.get("class") or (class_name(rec["class_id"]) if "class_id" in rec else None)
        if name != cls:
            return False
    if region:
        pos = _position(rec)
        if pos is None or not in_region(region, *pos):
            return False
    return True


def query(archive: str | Path, kind: str = "detections", since: float | None = None, until: float | None = None,
          cls: str | None = None, region: tuple[float, ...] | None = None, frame: int | None = None,
          throttled: bool = False, limit: int | None = None) -> list[dict]:
    """Rows matching every filter given, oldest capture first (alerts: in the order raised).
    Housekeeping rows carry their channels by name (`channels`). `archive`: an SQLite file or a
    postgresql:// URL (a constellation's shared archive, issue #18); rows of an archive written by
    named stations carry `satellite_id` and `station`."""
    from ground_link.archive import Db

    db = Db(archive if isinstance(archive, str) and archive.startswith("postgres") else Path(archive),
            read_only=True)  # never create or change an archive
    try:
        where: list[str]
        args: list[float | str | None]  # SQL parameters
        where, args = [], []
        if since is not None:
            where.append("time_s >= ?")
            args.append(since)
        if until is not None:
            where.append("time_s <= ?")
            args.append(until)
        if frame is not None:
            where.append("frame_id = ?")
            args.append(frame)
        if kind == "alerts":
            if not throttled:
                where.append("throttled = 0")
            sql = "SELECT * FROM alerts" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
            cur = db.execute(sql, args)
            cols = [c[0] for c in cur.description]
            rows = []
            for r in cur:
                rec = dict(zip(cols, r, strict=True))
                rec["capture_time_s"] = rec.pop("time_s")
                if rec.get("station") is None:  # a single-station archive: rows as before issue #18
                    rec.pop("station", None)
                    rec.pop("satellite_id", None)
                rows.append(rec)
        else:
            if KINDS[kind] is not None:
                where.append("kind = ?")
                args.append(KINDS[kind])
            sql = ("SELECT kind, received_wall, fields FROM products" + (" WHERE " + " AND ".join(where) if where else "")
                   + " ORDER BY time_s, product_id")
            try:
                cur = db.execute(sql.replace("SELECT kind, received_wall, fields",
                                             "SELECT kind, received_wall, fields, satellite_id, station"), args)
            except db.Error:  # an archive written before issue #18: no satellite or station columns
                cur = (r + (1, None) for r in db.execute(sql, args))
            rows = [{"kind": k, **json.loads(f), "received_wall": w} | ({"satellite_id": sat, "station": st} if st else {})
                    for k, w, f, sat, st in cur]
            for rec in rows:
                if rec["kind"] == "Housekeeping":
                    try:
                        cur = db.execute("SELECT channel, value FROM telemetry WHERE product_id = ? AND satellite_id = ? "
                                         "ORDER BY channel", (rec["product_id"], rec.get("satellite_id", 1)))
                    except db.Error:  # before issue #18
                        cur = db.execute("SELECT channel, value FROM telemetry WHERE product_id = ? ORDER BY channel",
                                         (rec["product_id"],))
                    # NaN is NULL in SQLite, kept by PostgreSQL; inf by both: None, as JSON can hold
                    rec["channels"] = {channel_name(c): finite_or_none(v)
                                       for c, v in cur}
    finally:
        db.close()
    rows = [r for r in rows if _keep(r, cls, region)]
    return rows[-limit:] if limit else rows


def channel_name(channel_id: int) -> str:
    c = TELEMETRY_BY_ID.get(channel_id)
    return c.name if c is not None else f"channel_{channel_id}"


def _name(enum, value, default: str | None = None) -> str:
    try:
        return enum(value).name
    except ValueError:
        return default if default is not None else str(value)


def row_time(rec: dict) -> float | None:
    return rec.get("capture_time_s", rec.get("time_s"))


def decode(rec: dict, epoch: datetime | None = None) -> dict:
    """The row with names for its codes (and `utc` when the epoch is known); raw fields kept."""
    out = dict(rec)
    if "product_id" in rec:
        out["product"] = product_label(rec["product_id"])
    t = row_time(rec)
    if epoch is not None and t is not None:
        out["utc"] = utc(epoch, t)
    kind = rec.get("kind")
    if "class_id" in rec and "class" not in rec:
        out["class"] = CHIP_CLASSES.get(rec["class_id"]) if kind == "ImageChip" and rec["class_id"] in CHIP_CLASSES \
            else _name(DetectionClass, rec["class_id"]).lower()
    if "confidence_q" in rec:
        out["confidence"] = round(rec["confidence_q"] / 255.0, 3)
    if kind == "Event":
        e = EVENTS_BY_ID.get(rec["event_id"])
        out["event"] = e.name if e is not None else f"event_{rec['event_id']}"
        out["severity_name"] = _name(Severity, rec["severity"])
    if kind == "CommandReport":
        c = COMMANDS_BY_OPCODE.get(rec["opcode"])
        out["command"] = c.name if c is not None else f"opcode_{rec['opcode']}"
        out["report_kind"] = _name(ReportKind, rec["report"])
        out["reason"] = _name(Reason, rec["code"])
    return out


def _shown(text: str) -> str:
    """Text from the flight (an event's or a report's message) as one line of the operator's
    terminal: control and format characters escaped (\\n, \\x1b, \\u202e). Printed as they came, a
    newline let a message forge whole rows of its own (a 'Detection class=fire' line that was
    never archived) and an escape sequence could clear or recolour the screen."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.5g}" if isinstance(v, float) else _shown(str(v))


def _when(rec: dict, epoch: datetime | None) -> str:
    t = row_time(rec)
    if t is None:
        return "-"
    return f"{utc(epoch, t)} (t={t:.1f}s)" if epoch is not None else f"t={t:.1f}s"


# fields shown by their decoded names instead (or not at all: they are in the time, or blobs' sizes)
_RAW = {"product_id", "received_wall", "capture_time_s", "time_s", "class_id", "confidence_q", "event_id", "severity", "opcode",
        "report", "code", "count", "values", "channels", "kind", "utc", "class", "confidence", "event",
        "severity_name", "command", "report_kind", "reason", "satellite_id", "station"}


def format_row(rec: dict, epoch: datetime | None = None) -> str:
    """One line for the operator: time (UTC when the epoch is known), kind, names, fields."""
    if "message" in rec and "severity" in rec and isinstance(rec["severity"], str):  # an alert
        line = rec["message"] + ("  [throttled]" if rec.get("throttled") else "")
        return f"{utc(epoch, rec['capture_time_s'])}  {line}" if epoch is not None and \
            rec.get("capture_time_s") is not None else line
    d = decode(rec)
    head = [_when(rec, epoch), str(d.get("kind", "?"))]
    names = []
    if "class" in d:
        names.append(f"class={d['class']}")
    if "confidence" in d:
        names.append(f"confidence={d['confidence']:.2f}")
    if "event" in d:
        names += [f"event={d['event']}", f"severity={d['severity_name']}"]
    if "command" in d:
        names += [f"command={d['command']}", f"report={d['report_kind']}", f"reason={d['reason']}"]
    fields = [f"product={d['product']}"] if "product" in d else []
    if rec.get("station"):  # a constellation's archive (issue #18): which satellite, via which station
        fields.append(f"sat={rec.get('satellite_id')} via={rec['station']}")
    fields += [f"{k}={_fmt(v)}" for k, v in rec.items() if k not in _RAW]
    if "channels" in rec:
        fields += [f"{k}={_fmt(Mode(int(v)).name if k == 'mode' and v is not None and int(v) in Mode._value2member_map_ else v)}"
                   for k, v in rec["channels"].items()]
    return "  ".join(head + names + fields)


def _export(args, target: str, epoch: datetime | None) -> int:
    """Export from a shared PostgreSQL archive (--db, or a live constellation run folder's): rows by
    query() as for a file, the run's epoch and scenario from the run folder when one is given."""
    from ground_link.export import run_context, write_export

    try:
        ctx = run_context(args.archive if args.archive is not None else target)
    except (OSError, ValueError) as exc:  # a malformed constellation.json
        print(f"query: {exc}", file=sys.stderr)
        return 2
    known = epoch is not None or ctx.scenario is not None or ctx.constellation is not None
    if not known and any(isinstance(v, datetime) for v in (args.since, args.until)):
        print("query: --since/--until as a UTC time needs the scenario epoch (--epoch)", file=sys.stderr)
        return 2
    ref = epoch or ctx.epoch
    window = [(v - ref).total_seconds() if isinstance(v, datetime) else v for v in (args.since, args.until)]
    try:
        rows = query(target, args.kind, window[0], window[1], args.cls, args.region, args.frame, args.throttled,
                     args.limit)
    except Exception as exc:  # noqa: BLE001 (psycopg's errors, an unreachable server)
        print(f"query: {target}: not a readable archive ({exc})", file=sys.stderr)
        return 2
    return write_export(target, args.kind, args.format, rows, args.out, args.partner, args.partners, epoch, ctx=ctx)


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m ground_link.query", description="Query the ground archive (names and UTC times)",
                  epilog="Times: UTC needs the scenario epoch, from --epoch or the run's launch.json beside the "
                         "archive; else scenario seconds.")
    p.add_argument("archive", type=Path, nargs="?", help="archive.sqlite (or the run folder holding it)")
    p.add_argument("--db", help="a shared PostgreSQL archive (postgresql://...; a constellation's, docs/ground.md) "
                                "instead of an archive file")
    p.add_argument("--kind", type=str.lower, choices=["alerts", *KINDS], default="detections")
    p.add_argument("--since", type=parse_time, help="scenario seconds or a UTC time, inclusive")
    p.add_argument("--until", type=parse_time, help="scenario seconds or a UTC time, inclusive")
    p.add_argument("--class", dest="cls", type=str.lower, choices=[c.name.lower() for c in DetectionClass])
    p.add_argument("--region", type=parse_region, help="LAT0,LON0,LAT1,LON1 (deg; LON0 > LON1 crosses 180)")
    p.add_argument("--frame", type=frame_int)
    p.add_argument("--throttled", action="store_true", help="alerts: include throttled repeats")
    p.add_argument("--limit", type=positive_int, help="only the last N rows")
    p.add_argument("--epoch", type=parse_epoch_arg, help="scenario epoch (UTC of t=0), if launch.json is not beside "
                                                           "the archive")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    # exports (issue #14, ground_link/export.py): alerts as files for other systems, chips as PNG
    p.add_argument("--format", choices=("geojson", "kml", "csv", "cap", "png"),
                   help="export instead of listing: --kind alerts as geojson|kml|csv|cap, --kind chips as png")
    p.add_argument("--out", type=Path, help="export to this file (stdout if none); png: a folder; cap: a folder "
                                            "gives one CAP file per alert")
    p.add_argument("--partner", help="export only what this partner's access rule allows (ground_link/partners.py)")
    p.add_argument("--partners", type=Path, help="partners file for --partner (default: the scenario's, else the demo's)")
    args = p.parse_args(join_negative(sys.argv[1:] if argv is None else list(argv), {"--region"}))
    if args.db and args.format:  # a shared archive exported (issue #18); the run folder, if given, for its epoch
        return _export(args, args.db, args.epoch)
    if args.db:  # issue #18: a constellation's shared archive
        try:
            rows = query(args.db, args.kind, args.since if not isinstance(args.since, datetime) else None,
                         args.until if not isinstance(args.until, datetime) else None, args.cls, args.region,
                         args.frame, args.throttled, args.limit)
        except Exception as exc:  # noqa: BLE001 (psycopg's errors, an unreachable server)
            print(f"query: {args.db}: not a readable archive ({exc})", file=sys.stderr)
            return 2
        for r in rows:
            print(json.dumps(decode(r, args.epoch)) if args.json else format_row(r, args.epoch))
        print(f"{len(rows)} {args.kind}", file=sys.stderr)
        return 0
    if args.archive is None:
        print("query: the following arguments are required: archive (a run folder or its archive.sqlite), "
              "or --db postgresql://...", file=sys.stderr)
        return 2
    from ground_link.archive import archive_target

    # a constellation's run folder: the archive its constellation.json names (its PostgreSQL
    # server while the run goes on, the copy RUN/archive.sqlite after)
    target = archive_target(args.archive)
    if isinstance(target, str) and args.format:
        return _export(args, target, args.epoch)
    archive = args.archive / "archive.sqlite" if args.archive.is_dir() else args.archive
    if not archive.exists():
        where = f"{args.archive} holds no archive.sqlite" if args.archive.is_dir() else f"no archive at {archive}"
        print(f"query: {where} (give a run folder or its archive.sqlite)", file=sys.stderr)
        return 2
    epoch, why = (args.epoch, "") if args.epoch is not None else run_epoch(archive.parent)
    window = []
    for name in ("since", "until"):
        v = getattr(args, name)
        if isinstance(v, datetime):
            if epoch is None:
                print(f"query: --{name} as a UTC time needs the scenario epoch (--epoch)", file=sys.stderr)
                return 2
            v = (v - epoch).total_seconds()
        window.append(v)
    try:
        rows = query(archive, args.kind, window[0], window[1], args.cls, args.region, args.frame, args.throttled,
                     args.limit)
    except sqlite3.Error as exc:
        print(f"query: {archive}: not a readable archive ({exc})", file=sys.stderr)
        return 2
    if args.format:  # exports (issue #14): ground_link/export.py
        from ground_link.export import write_export

        return write_export(archive, args.kind, args.format, rows, args.out, args.partner, args.partners, epoch)
    if epoch is None:
        print(f"query: {why}: times are scenario seconds (--epoch gives UTC)", file=sys.stderr)
    try:
        for r in rows:
            print(json.dumps(decode(r, epoch)) if args.json else format_row(r, epoch))
    except BrokenPipeError:  # `| head` closed the pipe: not an error (stdout pointed away so exit is quiet)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    print(f"{len(rows)} {args.kind}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
