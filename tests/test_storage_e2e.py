"""Storage faults end to end (issue #12): real processes through the launcher, the flight's store
on its own file system (`ops.store_dir`): corrupt at start, full mid-run, read-only at start. The
flight keeps running, reports the condition, loses nothing, and writes to disk again when it can."""

from __future__ import annotations

import random

from ops_util import OPS_BASE, Run
from test_faults_e2e import EV, summaries, truth
from test_store_faults import fill, remount, tmpfs  # noqa: F401 (tmpfs: a fixture)


def test_a_corrupt_store_at_start_is_quarantined_and_the_flight_goes_on(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "flight_store.sqlite").write_bytes(random.Random(3).randbytes(16384))  # not a database
    with Run(run_dir, OPS_BASE + ["scenario.frames=6"]) as run:
        msg = run.wait_event(EV["STORE_QUARANTINED"], 40)
        assert "corrupt-" in msg
        code = run.finish(60)
    assert code == 0, run.err[-2000:]
    summary = run.summary()
    assert summary["ok"] and summary["products_lost"] == 0 and summary["mode"] == "DEGRADED"
    kept = list(run_dir.glob("flight_store.sqlite.corrupt-*"))
    assert kept and kept[0].read_bytes() == random.Random(3).randbytes(16384)  # kept for analysis, unchanged
    assert summaries(run_dir) == truth(run_dir)


def test_disk_full_mid_run_holds_products_in_ram_and_writes_them_when_space_returns(tmp_path, tmpfs):  # noqa: F811
    run_dir = tmp_path / "run"
    with Run(run_dir, OPS_BASE + ["scenario.frames=12", f'ops.store_dir="{tmpfs}"']) as run:
        run.wait_frames(2, 40)
        filler = fill(tmpfs)
        run.wait_event(EV["STORE_DEGRADED"], 30)
        state = run.wait_status(lambda s: s.get("frames_processed", 0) >= 5, 30, "frames while the disk is full")
        assert state["mode"] == "DEGRADED"
        filler.unlink()
        run.wait_event(EV["STORE_RECOVERED"], 30)
        assert run.commander.run("SET_MODE", mode=0)["kind"] == "COMPLETED"
        code = run.finish(60)
    assert code == 0, run.err[-2000:]
    summary = run.summary()
    assert summary["ok"] and summary["products_lost"] == 0 and summary["software_faults"] == 0
    assert summaries(run_dir) == truth(run_dir)  # every frame's summary reached the ground, once


def test_a_read_only_store_folder_at_start_runs_from_ram_then_resumes_on_disk(tmp_path, tmpfs):  # noqa: F811
    run_dir = tmp_path / "run"
    remount(tmpfs, "ro")
    with Run(run_dir, OPS_BASE + ["scenario.frames=10", f'ops.store_dir="{tmpfs}"']) as run:
        run.wait_event(EV["STORE_DEGRADED"], 40)
        run.wait_frames(3, 30)
        assert not (tmpfs / "flight_store.sqlite").exists()
        remount(tmpfs, "rw")
        run.wait_event(EV["STORE_RECOVERED"], 30)
        assert (tmpfs / "flight_store.sqlite").exists()
        code = run.finish(60)
    assert code == 0, run.err[-2000:]
    summary = run.summary()
    assert summary["ok"] and summary["products_lost"] == 0
    assert summaries(run_dir) == truth(run_dir)
