"""The HIL test API a user gets with the package (payload_sim.testing, the `hil_run` fixture):
start a scenario, command it by names, wait for events and telemetry by name, read the summary."""

from __future__ import annotations

import pytest
from ops_util import OPS_BASE


def test_command_event_telemetry_and_summary_through_the_fixture(hil_run):
    # frames arriving while SAFE are rejected by design; one quicklook of an unknown frame fails
    run = hil_run(OPS_BASE + ["scenario.frames=8"], expect=["frames_rejected>=0", "commands_refused=1"])
    run.wait_frames(1)
    report = run.send_and_assert("set_mode", mode="safe")  # names, any case, as an operator types them
    assert report["message"] == "mode SAFE"
    assert "SAFE" in run.assert_event("MODE_CHANGED", contains="SAFE")
    run.send_and_assert("DUMP_TELEMETRY")
    assert run.assert_telemetry("mode", lambda v: v == 2) == 2
    with pytest.raises(AssertionError, match="FAILED"):
        run.send_and_assert("REQUEST_QUICKLOOK", frame_id=999)  # not a recent frame: its FAILED report
    run.send_and_assert("SET_MODE", mode="NOMINAL")
    assert run.finish(60) == 0, run.err[-2000:]
    summary = run.summary()
    assert summary["ok"] and summary["frames_processed"] + summary["frames_rejected"] == 8
    assert {c["key"] for c in summary["checks"]} >= {"products_lost", "commands_refused", "frames_rejected"}
