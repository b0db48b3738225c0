"""A live terminal view for the operator: link state, counters and the latest alerts.

    python -m ground_link.watch RUN_DIR_OR_ARCHIVE [--once] [--interval S] [--rows N]

Given a run folder it reads the archive (archive.sqlite) and the status files the channel and
the station write there; given an archive file, the status files beside it. It redraws every
`--interval` seconds until Ctrl-C; `--once` prints one screen and exits.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

from flight.service import read_status
from ground_link.query import CliParser, format_row, positive_int, query

CLEAR = "\x1b[H\x1b[2J"


def locate(path: Path) -> tuple[Path, Path]:
    """(run folder, archive) from either."""
    return (path, path / "archive.sqlite") if path.is_dir() else (path.parent, path)


def link_line(chan: dict) -> str:
    if not chan:
        return "link: no channel status (is the channel running?)"
    t = chan.get("scenario_s")
    if chan.get("link_up"):
        until = "" if chan.get("los_s") is None else f" until t={chan['los_s']:.1f} s (LOS in {chan['los_s'] - t:.0f} s)"
        state = f"UP via {chan.get('station')}{until}"
    else:
        nxt = chan.get("next_aos_s")
        state = "DOWN, " + (f"next AOS {chan.get('next_station')} at t={nxt:.1f} s (in {nxt - t:.0f} s)"
                            if nxt is not None else "no further contact planned")
    return f"link: {state}   [scenario t={t:.1f} s]" if t is not None else f"link: {state}"


def direction_line(chan: dict, d: str) -> str:
    g = lambda k: chan.get(f"{d}_{k}", 0)  # noqa: E731
    return (f"  {d + 'link':8s} in {g('packets_in'):6d}  out {g('packets_out'):6d}  lost {g('lost'):5d}  "
            f"corrupted {g('corrupted'):5d}  outside contact {g('dropped_outside_contact'):5d}")


def screen(path: Path, rows: int = 10) -> str:
    run_dir, archive = locate(path)
    chan, st = read_status(run_dir, "channel"), read_status(run_dir, "station")
    lines = [f"ground watch  {path}  {time.strftime('%H:%M:%S')}", link_line(chan)]
    if chan:
        lines += [direction_line(chan, "down"), direction_line(chan, "up")]
    if st:
        lines.append(f"station: packets {st.get('packets_received', 0)}  bad {st.get('packets_bad', 0)}  "
                     f"archived {st.get('products_archived', 0)}  duplicates {st.get('duplicates', 0)}  "
                     f"alerts {st.get('alerts', 0)} (throttled {st.get('alerts_throttled', 0)})  "
                     f"acks {st.get('acks_sent', 0)}")
    lines.append(f"latest alerts (of {archive.name}):")
    try:
        alerts = query(archive, "alerts", limit=rows) if archive.exists() else None
    except sqlite3.Error as exc:  # the station may be creating it right now
        alerts, lines[-1] = None, lines[-1] + f" unreadable ({exc})"
    if alerts is None:
        lines.append("  (no archive yet)")
    elif not alerts:
        lines.append("  (none)")
    else:
        lines += ["  " + format_row(a) for a in reversed(alerts)]
    return "\n".join(lines)


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = 0.0
    if not 0.01 <= v <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds in [0.01, 3600]")
    return v


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m ground_link.watch", description="Live view of alerts and link state")
    p.add_argument("path", type=Path, help="run folder or archive.sqlite")
    p.add_argument("--once", action="store_true", help="print one screen and exit")
    p.add_argument("--interval", type=_seconds, default=1.0, help="seconds between redraws")
    p.add_argument("--rows", type=positive_int, default=10, help="alerts shown")
    args = p.parse_args(argv)
    if not args.path.exists():
        print(f"watch: {args.path} does not exist", file=sys.stderr)
        return 2
    if args.once:
        print(screen(args.path, args.rows))
        return 0
    clear = CLEAR if sys.stdout.isatty() else "\n"
    try:
        while True:
            print(clear + screen(args.path, args.rows), flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        print()
        return 0


if __name__ == "__main__":
    sys.exit(main())
