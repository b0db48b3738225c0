"""Running the launcher as a real process for end-to-end tests, and checking nothing is left behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "payload_sim" / "scenarios" / "demo.toml"
SMALL = ["scenario.frames=4", "sensor.height=512", "sensor.width=512", "scenario.clock_rate=100.0",
         "scenario.max_wall_s=120"]


def hil_command(run_dir: Path, overrides: list[str], scenario: Path = DEMO, expect: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The launcher's command line: `overrides` as --set, `expect` as --expect (what ok requires)."""
    cmd = [sys.executable, "-m", "payload_sim.hil", str(scenario), "--run-dir", str(run_dir), "--quiet"]
    for o in overrides:
        cmd += ["--set", o]
    for e in expect:
        cmd += ["--expect", e]
    return cmd


def processes_of(run_dir: Path) -> list[psutil.Process]:
    """Live processes whose command line names this run folder (the launcher's children)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(run_dir) in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def kill_leftovers(run_dir: Path) -> list[psutil.Process]:
    left = processes_of(run_dir)
    for p in left:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    return left


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


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
