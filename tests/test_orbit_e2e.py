"""An hour and more of orbit in seconds: the whole system on the scenario clock, downlinking only in the
contact windows computed from the orbit, store-and-forward across the gap between passes."""

import json
import sqlite3
import subprocess
import sys

from e2e_util import REPO, kill_leftovers

from flight.clock import parse_epoch
from payload_sim.orbit import DEFAULT_STATIONS, DEFAULT_TLE, Orbit, contact_windows

SCENARIO = REPO / "payload_sim" / "scenarios" / "orbit_passes.toml"


def test_products_wait_for_the_next_pass_and_all_arrive_once(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "payload_sim.hil", str(SCENARIO), "--run-dir", str(run_dir), "--quiet"]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=200)
    finally:
        left = kill_leftovers(run_dir)
    assert not left
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["frames_processed"] == summary["frames_captured"] == 14
    launch = json.loads((run_dir / "launch.json").read_text())
    clock_start, rate = launch["clock_start"], 200.0

    windows = contact_windows(Orbit(*DEFAULT_TLE, parse_epoch("2026-11-28T06:00:00Z")), DEFAULT_STATIONS, 0, 12000)
    db = sqlite3.connect(run_dir / "archive.sqlite")
    rows = db.execute("SELECT frame_id, time_s, received_wall FROM products WHERE kind = 'FrameSummary'").fetchall()
    assert sorted(r[0] for r in rows) == list(range(14))  # every frame once
    waited = 0
    for _, captured_s, received_wall in rows:
        received_s = (received_wall - clock_start) * rate
        in_window = any(w.aos_s - 1 <= received_s <= w.los_s + 30 for w in windows)
        assert in_window, f"summary received at {received_s:.0f} s, outside every contact window"
        if not any(w.aos_s <= captured_s <= w.los_s for w in windows):
            nxt = min(w.aos_s for w in windows if w.los_s > captured_s)
            assert received_s >= nxt - 1  # stored until the next AOS
            waited += 1
    assert waited == 14  # all captured before the first AOS
