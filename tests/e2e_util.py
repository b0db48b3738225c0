"""Running the launcher as a real process for end-to-end tests, and checking nothing is left behind."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from payload_sim.testing import DEMO, REPO, hil_command, kill_leftovers, processes_of, wait_for  # noqa: F401

SMALL = ["scenario.frames=4", "sensor.height=512", "sensor.width=512", "scenario.clock_rate=100.0",
         "scenario.max_wall_s=120"]


def run_hil(run_dir: Path, overrides: list[str], timeout_s: float = 180,
            expect: tuple[str, ...] | list[str] = ()) -> tuple[int, dict, str]:
    try:
        proc = subprocess.run(hil_command(run_dir, overrides, expect=expect), cwd=REPO, capture_output=True, text=True,
                              timeout=timeout_s)
    finally:
        left = kill_leftovers(run_dir)
    assert not left, f"processes left behind: {left}"
    summary = json.loads((run_dir / "summary.json").read_text())
    return proc.returncode, summary, proc.stderr


def wait_console(base: str, proc: subprocess.Popen, timeout_s: float, what: str) -> None:
    """Until the operator console at `base` serves its login page; fails at once, with the
    output of `proc` (the console or the launcher that started it), if that process exits."""
    import urllib.request

    def up() -> bool:
        try:
            with urllib.request.urlopen(base + "/login", timeout=1) as r:
                return r.status == 200
        except OSError:
            assert proc.poll() is None, (proc.stderr or proc.stdout).read()
            return False

    wait_for(up, timeout_s, what)
