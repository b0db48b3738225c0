"""Ask the ground archive what came down.

    python -m ground_link.query ARCHIVE [--kind detections|alerts|summaries|events|chips|all]
        [--since S] [--until S] [--class fire] [--region LAT0,LON0,LAT1,LON1] [--frame N]
        [--throttled] [--limit N] [--json]

Times are scenario seconds of capture (events: of the event). `--class` and `--region` apply to
what has a class or a position (detections, alerts, chips; region also to frame summaries by
their centre). Alerts hide throttled repeats unless `--throttled`. One line per row, or one JSON
object per line with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from pathlib import Path

from ground_link.alerts import class_name, in_region

KINDS = {"detections": "Detection", "summaries": "FrameSummary", "events": "Event", "chips": "ImageChip",
         "housekeeping": "Housekeeping", "all": None}


def parse_region(text: str) -> tuple[float, ...]:
    try:
        region = tuple(float(v) for v in text.split(","))
    except ValueError:
        region = ()
    if len(region) != 4:
        raise argparse.ArgumentTypeError(f"region {text!r}: expected LAT0,LON0,LAT1,LON1 in degrees")
    return region


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
    """Rows matching every filter given, oldest capture first (alerts: in the order raised)."""
    db = sqlite3.connect(f"file:{archive}?mode=ro", uri=True)  # never create or change an archive
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
                rows.append(rec)
        else:
            if KINDS[kind] is not None:
                where.append("kind = ?")
                args.append(KINDS[kind])
            sql = ("SELECT kind, received_wall, fields FROM products" + (" WHERE " + " AND ".join(where) if where else "")
                   + " ORDER BY time_s, product_id")
            rows = [{"kind": k, **json.loads(f), "received_wall": w} for k, w, f in db.execute(sql, args)]
    finally:
        db.close()
    rows = [r for r in rows if _keep(r, cls, region)]
    return rows[-limit:] if limit else rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.5g}" if isinstance(v, float) else str(v)


def format_row(rec: dict) -> str:
    if "message" in rec and "severity" in rec and isinstance(rec["severity"], str):  # an alert
        return rec["message"] + ("  [throttled]" if rec.get("throttled") else "")
    skip = {"received_wall"}
    return "  ".join(f"{k}={_fmt(v)}" for k, v in rec.items() if k not in skip)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ground_link.query", description="Query the ground archive")
    p.add_argument("archive", type=Path, help="archive.sqlite (or the run folder holding it)")
    p.add_argument("--kind", choices=["alerts", *KINDS], default="detections")
    p.add_argument("--since", type=float, help="scenario seconds, inclusive")
    p.add_argument("--until", type=float, help="scenario seconds, inclusive")
    p.add_argument("--class", dest="cls", choices=("ship", "fire"))
    p.add_argument("--region", type=parse_region, help="LAT0,LON0,LAT1,LON1 (deg; LON0 > LON1 crosses 180)")
    p.add_argument("--frame", type=int)
    p.add_argument("--throttled", action="store_true", help="alerts: include throttled repeats")
    p.add_argument("--limit", type=int, help="only the last N rows")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    args = p.parse_args(argv)
    archive = args.archive / "archive.sqlite" if args.archive.is_dir() else args.archive
    if not archive.exists():
        print(f"query: no archive at {archive}", file=sys.stderr)
        return 2
    try:
        rows = query(archive, args.kind, args.since, args.until, args.cls, args.region, args.frame, args.throttled,
                     args.limit)
    except sqlite3.Error as exc:
        print(f"query: {archive}: {exc}", file=sys.stderr)
        return 2
    try:
        for r in rows:
            print(json.dumps(r) if args.json else format_row(r))
    except BrokenPipeError:  # `| head` closed the pipe: not an error (stdout pointed away so exit is quiet)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    print(f"{len(rows)} {args.kind}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
