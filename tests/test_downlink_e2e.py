"""A downlink that loses nothing: the whole system as real processes over a lossy, bursty link with
bit errors and a contact gap, and with the flight process SIGKILLed mid-pass and restarted.

Every product the flight created reaches the archive exactly once; what is left in the flight's
store at the end is only what was created while the launcher was stopping the run."""

import json
import sqlite3
from pathlib import Path

from e2e_util import run_hil

from flight.dictionary import Apid

FRAMES = 24
# Small frames every 2 s of scenario time (10 scenario s per wall s): enough products to make the
# link statistics bite, quick to process.
BASE = [f"scenario.frames={FRAMES}", "scenario.capture_interval_s=2.0", "sensor.height=256", "sensor.width=256",
        "scenario.clock_rate=10.0", "scenario.max_wall_s=90"]
# Bursty loss (about 20 % of packets, in bursts of ~3), bit errors (6e-5: a 2 KiB chip arrives whole
# about 1 time in 3, and 11-19 packets of a run are hit; at 3e-5 only 1-3 were, and a run with none
# failed the check below that the link corrupted something (CI, 2026-12-03); at 2e-4 a chip would
# almost never arrive whole, as on a real link without FEC), and a contact gap from t = 25 s to
# 70 s: frames 13..24 are captured with nobody listening.
# The flight is not told of the gap (flight.use_contact_plan=false: an unplanned outage), so it
# sends into it and must find it by silence; the planned case is tests/test_upload_e2e.py.
LOSSY = ['link.loss_model="gilbert_elliott"', "link.ge_p_good_to_bad=0.1", "link.ge_p_bad_to_good=0.3",
         "link.ge_loss_good=0.02", "link.ge_loss_bad=0.8", "link.bit_error_rate=6e-5", "link.seed=3",
         'link.contacts="schedule"', "link.schedule=[[0.0, 25.0], [70.0, 1000000.0]]", "flight.retransmit_s=0.5",
         "flight.use_contact_plan=false"]


def archived(run_dir: Path) -> dict[int, str]:
    db = sqlite3.connect(run_dir / "archive.sqlite")
    try:
        rows = db.execute("SELECT product_id, kind FROM products").fetchall()
        alert_ids = [r[0] for r in db.execute("SELECT product_id FROM alerts")]
    finally:
        db.close()
    assert len(alert_ids) == len(set(alert_ids)), "an alert was raised twice for one product"
    return dict(rows)


def store_state(store: Path) -> tuple[int, dict[int, int]]:
    """(products ever created, {product id: apid} still waiting) of a flight store."""
    db = sqlite3.connect(store)
    try:
        created = db.execute("SELECT value FROM counters WHERE name = 'product_id'").fetchone()[0]
        left = dict(db.execute("SELECT id, apid FROM products").fetchall())
    finally:
        db.close()
    return created, left


def frame_summaries(run_dir: Path) -> list[int]:
    db = sqlite3.connect(run_dir / "archive.sqlite")
    try:
        return sorted(r[0] for r in db.execute("SELECT frame_id FROM products WHERE kind = 'FrameSummary'"))
    finally:
        db.close()


def check_exactly_once(run_dir: Path, store: Path) -> tuple[int, dict[int, str]]:
    created, left = store_state(store)
    got = archived(run_dir)
    missing = set(range(1, created + 1)) - set(got) - set(left)
    assert not missing, f"products never archived: {sorted(missing)}"
    assert set(got) <= set(range(1, created + 1))
    # what is still in the store was made while the run was being stopped (events, housekeeping)
    assert set(left.values()) <= {Apid.EVENT, Apid.HOUSEKEEPING}, left
    truth = [json.loads(line)["frame_id"] for line in (run_dir / "truth.jsonl").read_text().splitlines()]
    assert frame_summaries(run_dir) == sorted(truth)  # one summary per frame, none twice
    return created, got


def test_lossy_bursty_link_with_a_contact_gap_loses_nothing(tmp_path):
    run_dir = tmp_path / "run"
    code, summary, err = run_hil(run_dir, BASE + LOSSY, timeout_s=150)
    assert code == 0, err[-3000:]
    assert summary["frames_processed"] == FRAMES and summary["frames_rejected"] == 0
    chan = json.loads((run_dir / "channel.status.json").read_text())
    station = json.loads((run_dir / "station.status.json").read_text())
    # the link really was hostile: losses, corruption caught by the CRC, a gap, retransmissions
    assert chan["down_lost"] > 0 and chan["down_corrupted"] > 0 and chan["down_dropped_outside_contact"] > 0
    assert station["packets_bad"] >= chan["down_corrupted"] * 0.9  # (a flip could in theory pass the CRC)
    assert summary["packets_retransmitted"] > 0
    created, got = check_exactly_once(run_dir, run_dir / "flight_store.sqlite")
    print(f"\nlossy e2e: {created} products, {len(got)} archived once, down lost {chan['down_lost']}, "
          f"corrupted {chan['down_corrupted']}, outside contact {chan['down_dropped_outside_contact']}, "
          f"retransmitted {summary['packets_retransmitted']}, duplicates at ground {station['duplicates']}, "
          f"up lost {chan['up_lost']}, wall {summary['wall_s']} s")


def test_flight_sigkilled_mid_pass_restarts_and_loses_nothing(tmp_path):
    run_dir = tmp_path / "run"
    # everything is captured during a gap; the pass opens at t = 50 s on a slow link, and the flight
    # is killed 2 s into it with most products still waiting in its store
    overrides = BASE + ['link.contacts="schedule"', "link.schedule=[[0.0, 5.0], [50.0, 1000000.0]]",
                        "link.downlink_rate_bps=20000.0", "link.loss_model=\"random\"", "link.loss_rate=0.05",
                        "link.seed=5", "flight.retransmit_s=1.0", "faults.kill_flight_at_s=52.0"]
    # the restarted flight sends again what was waiting at the kill: re-sends by design
    code, summary, err = run_hil(run_dir, overrides, timeout_s=90, expect=["retransmit_fraction<=1"])
    assert code == 0, err[-3000:]
    fault = json.loads((run_dir / "faults.json").read_text())
    assert fault["products_pending_at_kill"], "nothing was waiting at the kill: the test would prove nothing"
    created, got = check_exactly_once(run_dir, run_dir / "flight-restart" / "flight_store.sqlite")
    before = set(range(1, fault["products_created_before_kill"] + 1))
    assert before <= set(got), f"lost at the kill: {sorted(before - set(got))}"
    assert summary["frames_processed"] == FRAMES
    station = json.loads((run_dir / "station.status.json").read_text())
    print(f"\nkill e2e: killed at t={fault['flight_killed_at_s']} s with {len(fault['products_pending_at_kill'])} of "
          f"{len(before)} products unacknowledged; {created} products in all, {len(got)} archived once, "
          f"duplicates at ground {station['duplicates']}, wall {summary['wall_s']} s")
