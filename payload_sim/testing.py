"""A test API for hardware-in-the-loop users, in the spirit of F Prime's integration test API.

Start a scenario through the real launcher (real processes, real sockets), command it, wait for
events and telemetry by name, and collect the summary:

    from payload_sim.testing import HilRun

    with HilRun(tmp_path / "run", ["scenario.frames=6"], expect=["frames_rejected=0"]) as run:
        run.wait_frames(2)
        run.send_and_assert("SET_MODE", mode="SAFE")           # its COMPLETED report, or AssertionError
        run.assert_event("MODE_CHANGED", contains="SAFE")        # in the ground archive, by name
        run.assert_telemetry("mode", lambda v: v == 2)           # a housekeeping channel, by name
        summary = run.finish(60)                                 # the launcher's summary; ok checked

The pytest plugin (`payload_sim.pytest_plugin`, registered as `onboard_hil`) gives a `hil_run`
fixture that makes such runs in the test's tmp_path and stops each one (no process left behind).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "payload_sim" / "scenarios" / "demo.toml"


def hil_command(run_dir: Path, overrides: list[str], scenario: Path = DEMO,
                expect: tuple[str, ...] | list[str] = ()) -> list[str]:
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


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def query(run_dir: Path, sql: str, args: tuple = ()) -> list:
    """Rows from the run's ground archive (read-only); [] while it does not exist yet."""
    path = run_dir / "archive.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.Error:
        return []
    finally:
        db.close()


class HilRun:
    """A scenario running through the launcher, for a test to command while it goes on; stopped
    with SIGTERM (or left to finish) and checked that nothing is left behind."""

    def __init__(self, run_dir: Path, overrides: list[str], expect: tuple[str, ...] | list[str] = (),
                 scenario: Path = DEMO):
        """`expect`: what the launcher's ok requires besides its defaults (hil --expect)."""
        self.run_dir = run_dir
        self.proc = subprocess.Popen(hil_command(run_dir, overrides, scenario, expect), cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out = self.err = ""
        self._cmd = None

    def __enter__(self) -> HilRun:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- commanding ----------------------------------------------------------------------------------

    @property
    def commander(self):
        from ground_link.commander import Commander

        if self._cmd is None:
            wait_for(lambda: (self.run_dir / "launch.json").exists(), 30, "the launch record")
            self._cmd = Commander.from_run_dir(self.run_dir)
        return self._cmd

    def send_and_assert(self, command: str, timeout_s: float = 20.0, **args) -> dict:
        """Send a command by name (arguments by name: `mode="SAFE"`, `param="chip_px"`) and
        return its COMPLETED report; AssertionError with the report otherwise."""
        from ground_link.commander import command_def, parse_args_for

        name = command_def(command).name  # any case, as the commander's command line takes it
        items = [f"{k}={v.hex() if isinstance(v, bytes) else v}" for k, v in args.items()]
        report = self.commander.run(name, timeout_s=timeout_s, **parse_args_for(name, items))
        assert report.get("kind") == "COMPLETED", f"{name} {args}: {report}"
        return report

    # -- what the ground has -------------------------------------------------------------------------

    def status(self, name: str = "flight") -> dict:
        try:
            return json.loads((self.run_dir / f"{name}.status.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait_status(self, pred: Callable[[dict], object], timeout_s: float, what: str, name: str = "flight") -> dict:
        wait_for(lambda: pred(self.status(name)), timeout_s, what)
        return self.status(name)

    def wait_frames(self, n: int, timeout_s: float = 60.0) -> dict:
        return self.wait_status(lambda s: s.get("frames_processed", 0) >= n, timeout_s, f"{n} frames processed")

    def events(self) -> list[tuple[int, str]]:
        return query(self.run_dir, "SELECT event_id, message FROM events ORDER BY product_id")

    def wait_event(self, event_id: int, timeout_s: float, contains: str = "") -> str:
        found: list[str] = []

        def seen() -> bool:
            found[:] = [m for e, m in self.events() if e == event_id and contains in m]
            return bool(found)

        wait_for(seen, timeout_s, f"event {event_id} {contains!r} in the archive")
        return found[0]

    def assert_event(self, name: str, timeout_s: float = 30.0, contains: str = "") -> str:
        """Wait until an event of this dictionary name (text containing `contains`) is archived."""
        from flight.dictionary import EVENTS

        return self.wait_event(EVENTS[name].id, timeout_s, contains)

    def telemetry(self, channel: int | str) -> list[float]:
        """Every archived value of a housekeeping channel (id or dictionary name), oldest first."""
        from flight.dictionary import TELEMETRY_BY_NAME

        cid = TELEMETRY_BY_NAME[channel].id if isinstance(channel, str) else channel
        return [r[0] for r in query(self.run_dir, "SELECT value FROM telemetry WHERE channel = ? ORDER BY product_id", (cid,))]

    def assert_telemetry(self, name: str, pred: Callable[[float], object], timeout_s: float = 30.0) -> float:
        """Wait until the newest archived value of a channel satisfies `pred`; returns it."""
        def ok() -> bool:
            values = self.telemetry(name)
            return bool(values) and bool(pred(values[-1]))

        wait_for(ok, timeout_s, f"telemetry {name} to satisfy the condition (last {self.telemetry(name)[-1:]})")
        return self.telemetry(name)[-1]

    # -- ending ------------------------------------------------------------------------------------

    def stop(self, timeout_s: float = 10.0) -> int:
        if self._cmd is not None:
            self._cmd.close()
            self._cmd = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.out, self.err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.out, self.err = self.proc.communicate()
        wait_for(lambda: not processes_of(self.run_dir), 5, "every process to stop")
        left = kill_leftovers(self.run_dir)
        assert not left, f"processes left behind: {left}"
        return self.proc.returncode

    def finish(self, timeout_s: float) -> int:
        """Let the scenario end by itself (every frame processed and acknowledged)."""
        try:
            self.out, self.err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"run did not finish within {timeout_s} s: {self.err[-2000:]}") from None
        return self.stop()

    def summary(self) -> dict:
        """The launcher's summary.json (after finish or stop)."""
        return json.loads((self.run_dir / "summary.json").read_text())
