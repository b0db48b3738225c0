"""What every process of the system shares: clean stop on SIGINT/SIGTERM, exit when the parent
launcher disappears if the launcher asks for it (so nothing is orphaned), an atomic status file,
and one-line logs through ``logging``.

Logs (issue #15): every line goes through the standard ``logging`` module (logger
``onboard.<process>``) to stderr in one of three formats, chosen by ``--log-format`` /
``$ONBOARD_LOG_FORMAT`` or, when neither is given, by the environment:

- ``text``: ``[flight] EVENT INFO STARTED: ...`` (the format every tool and test reads);
- ``journal``: the same line with a syslog priority prefix, ``<6>[flight] ...``, which journald
  stores as the entry's PRIORITY (the default when ``$JOURNAL_STREAM`` is set, i.e. under systemd);
- ``json``: one JSON object a line: ``{"ts", "level", "priority", "service", "msg"}``.

Priorities: flight events by severity (INFO 6 info, LOW 5 notice, MEDIUM 4 warning, HIGH 3 err),
software faults and one-line errors 3, everything else 6.

Parent exit: a process stops by itself when its parent changes only when the launcher asks for it
(``$ONBOARD_STOP_WITH_PARENT=1``, which payload_sim.hil sets for its children). Under systemd,
nohup or any other supervisor the parent is irrelevant and the process keeps running."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from flight.clock import ScenarioClock, parse_epoch
from flight.config import ConfigError, Scenario, load_scenario

LOG_FORMATS = ("text", "journal", "json")
STOP_WITH_PARENT_ENV = "ONBOARD_STOP_WITH_PARENT"
LOG_FORMAT_ENV = "ONBOARD_LOG_FORMAT"
# syslog priorities (journald's PRIORITY): 3 err, 4 warning, 5 notice, 6 info
_EVENT_PRIORITY = {"HIGH": 3, "MEDIUM": 4, "LOW": 5, "INFO": 6}
_PRIORITY_LEVEL = {2: logging.CRITICAL, 3: logging.ERROR, 4: logging.WARNING, 5: logging.INFO + 5, 6: logging.INFO,
                   7: logging.DEBUG}
_LEVEL_PRIORITY = [(logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO + 5, 5),
                   (logging.INFO, 6), (0, 7)]
_EVENT_RE = re.compile(r"^EVENT (\w+) ")
logging.addLevelName(logging.INFO + 5, "NOTICE")


def priority_of(msg: str) -> int:
    """The syslog priority of one of our log lines, from its text (the lines keep their wording)."""
    m = _EVENT_RE.match(msg)
    if m:
        return _EVENT_PRIORITY.get(m.group(1), 6)
    if msg.startswith(("software fault", "error:", "could not report")):
        return 3
    return 6


def _priority_of_level(levelno: int) -> int:
    return next(p for lvl, p in _LEVEL_PRIORITY if levelno >= lvl)


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str):
        super().__init__()
        self.fmt = fmt

    def format(self, record: logging.LogRecord) -> str:
        service = record.name.split(".", 1)[1] if record.name.startswith("onboard.") else record.name
        msg = record.getMessage()
        prio = getattr(record, "priority", None) or _priority_of_level(record.levelno)
        if self.fmt == "json":
            return json.dumps({"ts": round(record.created, 3), "level": record.levelname, "priority": prio,
                               "service": service, "msg": msg})
        line = f"[{service}] {msg}"
        if self.fmt == "journal":  # one prefix per line: journald reads each line as an entry
            return "\n".join(f"<{prio}>{part}" for part in line.split("\n"))
        return line


class _StderrHandler(logging.Handler):
    """Writes to the *current* sys.stderr (so pytest's capture and redirections see it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging must never raise into the flight
            self.handleError(record)


def default_log_format(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    fmt = env.get(LOG_FORMAT_ENV, "")
    if fmt in LOG_FORMATS:
        return fmt
    return "journal" if env.get("JOURNAL_STREAM") else "text"


def configure_logging(fmt: str | None = None) -> str:
    """Install (or replace) the stderr handler of the ``onboard`` logger; returns the format used."""
    fmt = fmt or default_log_format()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, not {fmt!r}")
    logger = logging.getLogger("onboard")
    for h in list(logger.handlers):
        if isinstance(h, _StderrHandler):
            logger.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(_Formatter(fmt))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.onboard_format = fmt  # type: ignore[attr-defined]
    return fmt


def log_format_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                   help="stderr log lines: text, journal (syslog <N> priority prefixes for journald; the default "
                        "when $JOURNAL_STREAM is set) or json (one object a line); default $ONBOARD_LOG_FORMAT or auto")


class Service:
    def __init__(self, name: str, run_dir: Path | None, stop_with_parent: bool | None = None):
        self.name = name
        self.run_dir = run_dir
        self.stop_reason: str | None = None
        self.parent = os.getppid()
        # only when the launcher asks (payload_sim.hil does): under systemd/nohup the parent is irrelevant
        self.stop_with_parent = (os.environ.get(STOP_WITH_PARENT_ENV) == "1") if stop_with_parent is None else stop_with_parent
        self.logger = logging.getLogger(f"onboard.{name}")
        if not hasattr(logging.getLogger("onboard"), "onboard_format"):
            configure_logging()
        self._last_status = 0.0
        self.status_errors = 0  # status writes that failed (a full or failing disk)
        self._status_failing = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        self.stop_reason = signal.Signals(signum).name

    @property
    def running(self) -> bool:
        if self.stop_with_parent and self.stop_reason is None and os.getppid() != self.parent:
            self.stop_reason = "parent exited"
        return self.stop_reason is None

    def log(self, msg: str, priority: int | None = None) -> None:
        """One log line; its syslog priority from the text (flight events by severity) unless given."""
        prio = priority or priority_of(msg)
        self.logger.log(_PRIORITY_LEVEL.get(prio, logging.INFO), msg, extra={"priority": prio})

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
        try:
            tmp.write_text(json.dumps(status))
            os.replace(tmp, path)
        except OSError as exc:
            # A full or failing disk: the status file is for monitoring. Raised, it was a software
            # fault on every write (4 a second), and the flight went to SAFE within a second of
            # its disk filling up. Counted, said once per episode; the process goes on.
            self.status_errors += 1
            if not self._status_failing:
                self._status_failing = True
                self.log(f"status file {path} not written: {exc} (said once until a write works again)")
            with contextlib.suppress(OSError):
                tmp.unlink()
            return
        if self._status_failing:
            self._status_failing = False
            self.log(f"status file {path} written again ({self.status_errors} failed writes so far)")


def common_args(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("scenario", nargs="?", help="scenario TOML (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a scenario value (repeatable)")
    p.add_argument("--run-dir", type=Path, default=None, help="folder for status files, store, archive")
    p.add_argument("--clock-start", type=float, default=None,
                   help="wall time (time.time()) of scenario time 0; default: now")
    log_format_arg(p)
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
    configure_logging(getattr(args, "log_format", None))
    try:
        scenario = load_scenario(args.scenario, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.run_dir is not None:
        args.run_dir.mkdir(parents=True, exist_ok=True)
    if args.clock_start is not None:
        start = args.clock_start
    elif scenario.scenario.clock_anchor == "epoch":  # on-board time: real seconds since the mission epoch
        start = parse_epoch(scenario.scenario.epoch).timestamp()
    else:
        start = time.time()
    # scenario time now must be a number a CDS time code holds (|t| <= 2**31 s): --clock-start nan,
    # inf or 0 (1970) was taken and the first packet failed to pack, far from the cause
    now_s = (time.time() - start) * scenario.scenario.clock_rate
    if not math.isfinite(now_s) or abs(now_s) > 2**31:
        given = f"--clock-start {args.clock_start!r}" if args.clock_start is not None else f"the clock start {start!r}"
        print(f"error: {given} puts scenario time now at {now_s:.6g} s; "
              "it must be a wall time (time.time()) within 2**31 scenario seconds of now", file=sys.stderr)
        sys.exit(2)
    clock = ScenarioClock(parse_epoch(scenario.scenario.epoch), scenario.scenario.clock_rate, start)
    return scenario, clock


def read_status(run_dir: Path, name: str) -> dict:
    try:
        return json.loads((run_dir / f"{name}.status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
