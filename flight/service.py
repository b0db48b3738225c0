"""What every process of the system shares: clean stop on SIGINT/SIGTERM, exit when the parent
launcher disappears (so nothing is orphaned), an atomic status file, and one-line logs."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from flight.clock import ScenarioClock, parse_epoch
from flight.config import ConfigError, Scenario, load_scenario


class Service:
    def __init__(self, name: str, run_dir: Path | None):
        self.name = name
        self.run_dir = run_dir
        self.stop_reason: str | None = None
        self.parent = os.getppid()
        self._last_status = 0.0
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        self.stop_reason = signal.Signals(signum).name

    @property
    def running(self) -> bool:
        if self.stop_reason is None and os.getppid() != self.parent:
            self.stop_reason = "parent exited"
        return self.stop_reason is None

    def log(self, msg: str) -> None:
        print(f"[{self.name}] {msg}", file=sys.stderr, flush=True)

    def write_status(self, status: dict | Callable[[], dict], every_s: float = 0.25, force: bool = False) -> None:
        """Atomically replace <run_dir>/<name>.status.json (rate-limited unless forced). A callable
        is only called when a write is due, so a costly status is not built on every loop turn."""
        now = time.monotonic()
        if self.run_dir is None or (not force and now - self._last_status < every_s):
            return
        self._last_status = now
        if callable(status):
            status = status()
        path = self.run_dir / f"{self.name}.status.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, path)


def common_args(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("scenario", nargs="?", help="scenario TOML (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a scenario value (repeatable)")
    p.add_argument("--run-dir", type=Path, default=None, help="folder for status files, store, archive")
    p.add_argument("--clock-start", type=float, default=None,
                   help="wall time (time.time()) of scenario time 0; default: now")
    return p


def _one_line_errors(kind, exc, tb) -> None:
    """Configuration and key-material mistakes end a process with one line, not a traceback."""
    from flight.security import KeyMaterialError

    if isinstance(exc, ConfigError | KeyMaterialError):
        print(f"error: {exc}", file=sys.stderr)
        return
    sys.__excepthook__(kind, exc, tb)


def setup(args: argparse.Namespace) -> tuple[Scenario, ScenarioClock]:
    """Scenario and clock for a process; a bad scenario or override ends it with one line, exit 2."""
    sys.excepthook = _one_line_errors
    try:
        scenario = load_scenario(args.scenario, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.run_dir is not None:
        args.run_dir.mkdir(parents=True, exist_ok=True)
    start = args.clock_start if args.clock_start is not None else time.time()
    clock = ScenarioClock(parse_epoch(scenario.scenario.epoch), scenario.scenario.clock_rate, start)
    return scenario, clock


def read_status(run_dir: Path, name: str) -> dict:
    try:
        return json.loads((run_dir / f"{name}.status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
