"""Measure the downlink through the real launcher: bytes per frame and capture-to-operator latency.

    python -m ground_link.measure [--rates 9600,1000000] [--frames 8] [--size 256] [--json OUT]

For each downlink rate it runs `payload_sim.hil` (camera, flight, channel, station as processes)
on the demo scenario with a contact plan of one window, a gap, and the next window, then reads
the run folder:

- raw bytes per frame (camera) against the bytes of the products that describe it (each product
  counted once, as archived) and against all bytes sent over the air (retransmissions,
  housekeeping and events included);
- capture-to-ground latency of alerts (detections that raised one) and of frame summaries, split
  by whether the frame was captured inside a contact window or in the gap before the next one.
  Latency inside a window is wall time (processing + queueing + link); across a gap it is
  dominated by the wait for AOS, so it is given in scenario seconds too.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from flight.products import decode_tm

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "payload_sim" / "scenarios" / "demo.toml"
INTERVAL_S = 10.0


def plan(frames: int) -> list[list[float]]:
    """First window covers the first half of the captures, then a gap of 9 capture intervals."""
    first_los = (frames // 2) * INTERVAL_S
    return [[0.0, first_los], [first_los + 9 * INTERVAL_S + frames // 2 * INTERVAL_S, 1e6]]


def overrides(rate_bps: float, frames: int, size: int, rate: float) -> list[str]:
    # longer than two 4 KiB chips take on the air, so a slow link does not resend what is still queued
    retransmit = max(2.0, 2 * 8 * 4096 / rate_bps)
    return [f"scenario.frames={frames}", f"sensor.height={size}", f"sensor.width={size}",
            f"scenario.clock_rate={rate}", "scenario.max_wall_s=400", f"link.downlink_rate_bps={rate_bps}",
            'link.contacts="schedule"', f"link.schedule={json.dumps(plan(frames))}",
            f"flight.retransmit_s={retransmit}"]


def run(run_dir: Path, sets: list[str]) -> dict:
    cmd = [sys.executable, "-m", "payload_sim.hil", str(DEMO), "--run-dir", str(run_dir), "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"hil failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads((run_dir / "summary.json").read_text())


def stats(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"n": len(values), "median": round(float(np.median(values)), 2), "max": round(float(np.max(values)), 2)}


def analyse(run_dir: Path, frames: int) -> dict:
    st = json.loads((run_dir / "station.status.json").read_text())
    chan = json.loads((run_dir / "channel.status.json").read_text())
    cam = json.loads((run_dir / "camera.status.json").read_text())
    start, rate = st["clock_start"], st["clock_rate"]
    windows = plan(frames)
    in_contact = lambda t: any(a <= t < b for a, b in windows)  # noqa: E731
    db = sqlite3.connect(run_dir / "archive.sqlite")
    first_good: dict[int, tuple[str, int]] = {}
    for (raw,) in db.execute("SELECT raw FROM packets WHERE ok = 1 ORDER BY id"):
        _, product = decode_tm(raw)
        first_good.setdefault(product.product_id, (type(product).__name__, len(raw)))
    bytes_by_kind: dict[str, int] = {}
    for kind, n in first_good.values():
        bytes_by_kind[kind] = bytes_by_kind.get(kind, 0) + n
    lat: dict[str, list[float]] = {k: [] for k in ("alert_in", "alert_gap", "summary_in", "summary_gap")}
    after_aos: dict[str, list[float]] = {"alert_gap": [], "summary_gap": []}
    next_aos = windows[1][0]
    for kind, t, wall in db.execute(
            "SELECT 'alert', time_s, received_wall FROM alerts WHERE throttled = 0 UNION ALL "
            "SELECT 'summary', time_s, received_wall FROM products WHERE kind = 'FrameSummary'"):
        key = f"{kind}_{'in' if in_contact(t) else 'gap'}"
        lat[key].append(wall - (start + t / rate))
        if key in after_aos:  # how long after AOS the backlog arrived: retransmission timer + queue
            after_aos[key].append(wall - (start + next_aos / rate))
    db.close()
    raw_per_frame = cam["raw_bytes"] / frames
    frame_bytes = sum(n for k, n in bytes_by_kind.items() if k in ("FrameSummary", "Detection", "ImageChip"))
    return {
        "raw_bytes_per_frame": int(raw_per_frame),
        "frame_product_bytes_per_frame": round(frame_bytes / frames, 1),  # summary, detections, chips
        "product_bytes_by_kind": bytes_by_kind,  # housekeeping and events depend on run length
        "air_bytes_per_frame": round(chan["down_bytes_out"] / frames, 1),  # everything, repeats included
        "reduction_ratio_frame_products": round(raw_per_frame * frames / frame_bytes, 1),
        "reduction_ratio_air": round(raw_per_frame * frames / chan["down_bytes_out"], 1),
        "latency_wall_s": {k: stats(v) for k, v in lat.items()},
        "latency_scenario_s": {k: stats([x * rate for x in v]) for k, v in lat.items()},
        "gap_arrival_after_aos_wall_s": {k: stats(v) for k, v in after_aos.items()},
        "contact_plan_s": windows,
        "clock_rate": rate,
        "channel": {k: chan[k] for k in ("down_packets_in", "down_packets_out", "down_dropped_outside_contact",
                                         "up_packets_out")},
    }


def _rates(text: str) -> list[float]:
    """Comma-separated downlink rates: each a finite number of bit/s >= 1 (it names a run folder
    as a whole number, so NaN or inf used to end the tool in a traceback)."""
    try:
        rates = [float(r) for r in text.split(",")]
    except ValueError:
        rates = []
    if not rates or not all(math.isfinite(r) and 1 <= r <= 1e12 for r in rates):
        raise argparse.ArgumentTypeError(f"{text[:60]!r}: expected rates in bit/s, 1..1e12, comma-separated")
    return rates


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = low - 1
        if n < low:
            raise argparse.ArgumentTypeError(f"{text[:40]!r}: expected a whole number >= {low}")
        return n
    return parse


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: expected a finite number > 0")
    return v


def main(argv: list[str] | None = None) -> int:
    from ground_link.query import CliParser  # one-line errors, as every operator tool

    p = CliParser(prog="python -m ground_link.measure",
                  description="Bytes per frame and capture-to-alert latency through payload_sim.hil")
    # checked before any run is launched (a bad value used to fail after, or during, the first run)
    p.add_argument("--rates", type=_rates, default=[9600.0, 1e6], help="downlink rates, bit/s, comma-separated")
    p.add_argument("--frames", type=_at_least(1), default=8)
    p.add_argument("--size", type=_at_least(1), default=256, help="frame height and width, px")
    p.add_argument("--clock-rate", type=_positive, default=10.0, help="scenario seconds per wall second")
    p.add_argument("--run-root", type=Path, default=None, help="keep the run folders here")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="further scenario overrides (repeatable)")
    args = p.parse_args(argv)
    root = args.run_root or Path(tempfile.mkdtemp(prefix="link-measure-"))
    results = {}
    for rate_bps in args.rates:
        run_dir = root / f"rate-{int(rate_bps)}"
        sets = overrides(rate_bps, args.frames, args.size, args.clock_rate) + args.extra
        summary = run(run_dir, sets)
        results[f"{int(rate_bps)}"] = analyse(run_dir, args.frames) | {
            "wall_s": summary["wall_s"], "alerts": summary["alerts"],
            "packets_retransmitted": summary["packets_retransmitted"],
            "command": "python -m payload_sim.hil payload_sim/scenarios/demo.toml " + " ".join(f"--set '{s}'" for s in sets)}
        print(f"{int(rate_bps)} bit/s: {json.dumps(results[f'{int(rate_bps)}'], indent=1)}", file=sys.stderr)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
