"""pytest plugin for hardware-in-the-loop tests (registered as `onboard_hil` when the package is
installed; the project's own tests load it from tests/conftest.py).

    def test_safe_mode(hil_run):
        run = hil_run(["scenario.frames=6"])
        run.wait_frames(1)
        run.send_and_assert("set_mode", mode="safe")
        run.assert_event("MODE_CHANGED", contains="SAFE")

`hil_run(overrides, expect=(), scenario=DEMO)` starts the scenario through the real launcher in
the test's own folder; every run is stopped at the end of the test and nothing is left behind.
"""

from __future__ import annotations

import pytest

from payload_sim.testing import DEMO, HilRun


@pytest.fixture
def hil_run(tmp_path):
    runs: list[HilRun] = []

    def start(overrides: list[str] | tuple[str, ...] = (), expect: list[str] | tuple[str, ...] = (),
              scenario=DEMO) -> HilRun:
        run = HilRun(tmp_path / f"run{len(runs)}", list(overrides), expect, scenario)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.stop()
