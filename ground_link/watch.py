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
from ground_link.console.data import Arrivals, percentile
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


def screen(path: Path, rows: int = 10, problems: list[str] | None = None) -> str:
    """One screen. `problems` (when given) gets what could not be read, for --once's exit status."""
    problems = [] if problems is None else problems
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
        problems.append(f"{archive}: unreadable ({exc})")
    if alerts is None:
        if not problems:  # an archive that exists but cannot be read is not "no archive yet"
            lines.append("  (no archive yet)")
    elif not alerts:
        lines.append("  (none)")
    else:
        lines += ["  " + format_row(a) for a in reversed(alerts)]
    return "\n".join(lines)


def constellation_screen(run_dir: Path, db: str | None, rows: int = 10, problems: list[str] | None = None) -> str:
    """A constellation's run folder (issue #18, payload_sim.constellation): each satellite's links
    (stations in view, next AOS), each station's counts, and the latest alerts of the shared
    archive with which satellite and which station."""
    import json

    try:  # rewritten by the launcher as the run goes: a malformed one is said, and the next redraw reads it again
        info = json.loads((run_dir / "constellation.json").read_text())
        if not isinstance(info, dict) or not all(isinstance(info.get(k), list) for k in ("satellites", "stations")) \
                or not all(isinstance(n, str) for n in info["stations"]):
            raise ValueError("not an object with satellites and stations (names) lists")
    except (OSError, ValueError) as exc:
        if problems is not None:
            problems.append(f"{run_dir / 'constellation.json'}: unreadable ({exc})")
        return f"ground watch  {run_dir}  {time.strftime('%H:%M:%S')}\n  constellation.json unreadable ({exc})"
    db = db or info.get("archive") or ""  # none named: reads fail below, said as unreadable
    lines = [f"ground watch  {run_dir}  {time.strftime('%H:%M:%S')}  ({len(info['satellites'])} satellites x "
             f"{len(info['stations'])} stations, archive {info.get('dialect', '?')})"]
    for sat in info["satellites"]:
        chan = read_status(run_dir / f"sat{sat}", "channel")
        per = chan.get("stations", {})
        view = ", ".join(chan.get("stations_in_view", [])) or "none"
        nxt = [(v["next_aos_s"], n) for n, v in per.items() if v.get("next_aos_s") is not None]
        when = f"; next AOS {min(nxt)[1]} at t={min(nxt)[0]:.0f} s" if nxt else ""
        lines.append(f"sat {sat}: in view of {view}{when}  down out {chan.get('down_packets_out', 0)}  "
                     f"lost {chan.get('down_lost', 0)}")
    try:
        per = station_latency(db, info)
    except Exception:  # noqa: BLE001 (not created yet, or the server gone after the run)
        per = {}
    for name in info["stations"]:
        st = read_status(run_dir / name, "station")
        lines.append(f"station {name}: packets {st.get('packets_received', 0)}  archived {st.get('products_archived', 0)}  "
                     f"duplicates {st.get('duplicates', 0)}  acks {st.get('acks_sent', 0)} (ground-wide "
                     f"{st.get('acks_shared', 0)})  alerts {st.get('alerts', 0)}")
        if name in per:
            lines.append("  " + per[name])
    lines.append("latest alerts (shared archive):")
    from ground_link.archive import is_postgres

    try:
        if db and not is_postgres(db) and not Path(db).exists():  # a shared SQLite file its stations have not made yet
            alerts, lines[-1] = None, lines[-1] + " (no archive yet)"
        else:
            alerts = query(db, "alerts", limit=rows)
    except Exception as exc:  # noqa: BLE001 (not created yet, or the server gone after the run)
        alerts, lines[-1] = None, lines[-1] + f" unreadable ({exc})"
        if problems is not None:
            problems.append(f"shared archive {db or '(none named)'}: unreadable ({exc})")
    if alerts is not None:
        lines += ["  " + format_row(a) for a in reversed(alerts)] or ["  (none)"]
    return "\n".join(lines)


_ARRIVALS: dict[str, Arrivals] = {}  # shared archive -> what its stations archived, read step by step across redraws


def station_latency(db: str, info: dict) -> dict[str, str]:
    """Per station, from the shared archive: products archived by satellite, and the latency from
    capture to archive (scenario seconds: the station's received_wall on the run's clock, less the
    capture time) as median and maximum. The station's own counts restart with it; these do not.
    Each redraw reads only what was archived since the last one (the console's Arrivals: reading
    every product made a redraw's cost grow with the archive)."""
    from ground_link.archive import reader

    rate, t0 = info["clock_rate"], info["clock_start"]
    key = f"{db} {t0!r} {rate!r}"
    arrivals = _ARRIVALS.setdefault(key, Arrivals(key))
    conn = reader(db)
    try:
        arrivals.read(conn, t0, rate)
    finally:
        conn.close()
    out = {}
    for name in info["stations"]:
        s = arrivals.stations.get(name)
        count = s.count if s else 0
        by_sat = "  ".join(f"sat {sat} {s.by_satellite.get(sat, 0) if s else 0}" for sat in info["satellites"])
        text = f"archive: {count} products ({by_sat})"
        if s and s.latencies:
            text += (f"  capture to archive: median {percentile(s.latencies, 50):.0f} s, "
                     f"max {s.latencies[-1]:.0f} s (scenario)")  # kept sorted
        out[name] = text
    return out


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
    p.add_argument("--db", help="the shared PostgreSQL archive (postgresql://...) of a constellation's run folder; "
                                "default: the one its constellation.json names")
    args = p.parse_args(argv)
    draw = screen
    if args.path.is_dir() and (args.path / "constellation.json").exists():  # issue #18
        def draw(path: Path, rows: int = 10, problems: list[str] | None = None) -> str:
            return constellation_screen(path, args.db, rows, problems)
    if not args.path.exists():
        print(f"watch: {args.path} does not exist", file=sys.stderr)
        return 2
    if args.once:
        # a screen that says the archive is unreadable is no success: --once exited 0 with
        # "unreadable (file is not a database)" on it, so a script could not tell. Not yet created
        # (a run starting) stays 0.
        problems: list[str] = []
        print(draw(args.path, args.rows, problems))
        if problems:
            print(f"watch: {problems[0]}", file=sys.stderr)
            return 1
        return 0
    clear = CLEAR if sys.stdout.isatty() else "\n"
    try:
        while True:
            print(clear + draw(args.path, args.rows), flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        print()
        return 0


if __name__ == "__main__":
    sys.exit(main())
