"""Operating modes and the protections that change them: error budget, stage watchdog, memory.

    NOMINAL --fault--> DEGRADED --errors > budget in window, or memory >= safe limit--> SAFE
       ^                  |                                                              |
       +---- SET_MODE ----+------------------------ SET_MODE (recovery) -----------------+

NOMINAL: everything runs. DEGRADED: a model or stage failed; what failed is switched off, the rest
goes on. SAFE: no frame processing; telemetry, downlink and commanding only. Faults only ever move
towards SAFE; only a command moves back (and clears the error window).
"""

from __future__ import annotations

import bisect
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

from flight.dictionary import Mode


class ModeManager:
    """The mode and the error window. `persist(mode, error_times)` is called on every change, so
    a restarted flight comes back in the mode it left, with the errors it had counted."""

    def __init__(self, error_budget: int, error_window_s: float, emit: Callable[..., None],
                 persist: Callable[[Mode, list[float]], None] | None = None):
        self.mode = Mode.NOMINAL
        self.budget, self.window_s, self.emit = error_budget, error_window_s, emit
        self.errors: deque[float] = deque()  # scenario times of errors in the window
        self.persist = persist or (lambda mode, errors: None)

    def restore(self, mode: Mode, error_times: list[float], now_s: float) -> None:
        """Mode and errors as saved before a restart (no events: the caller reports the restore)."""
        self.mode = Mode(mode)
        # an error time later than now (the wall clock stepped back, or the clock restarted from
        # another start) is clamped to now: it still counts, and leaves the window one window from
        # now instead of staying in it for the size of the step
        self.errors = deque(sorted(min(t, now_s) for t in error_times
                                   if math.isfinite(t) and t >= now_s - self.window_s))

    def errors_in_window(self, now_s: float) -> int:
        while self.errors and self.errors[0] < now_s - self.window_s:
            self.errors.popleft()
        return len(self.errors)

    def set(self, mode: Mode, reason: str) -> bool:
        if mode == self.mode:
            return False
        old, self.mode = self.mode, Mode(mode)
        self.persist(self.mode, list(self.errors))
        self.emit("MODE_CHANGED", old=old.name, new=self.mode.name, reason=reason[:120])
        return True

    def fault(self, now_s: float, reason: str, count: bool = True) -> None:
        """A fault: at least DEGRADED; counted against the error budget (SAFE when exceeded)."""
        if count:
            # sorted insert, not append: after the wall clock stepped back an append behind later
            # times hid the old errors from errors_in_window (it pops from the left): over-counted
            bisect.insort(self.errors, now_s)
            n = self.errors_in_window(now_s)
            self.persist(self.mode, list(self.errors))
            if n > self.budget and self.mode != Mode.SAFE:
                self.emit("ERROR_BUDGET_EXCEEDED", errors=n, window_s=self.window_s, budget=self.budget)
                self.set(Mode.SAFE, f"error budget exceeded after: {reason}")
                return
        if self.mode == Mode.NOMINAL:
            self.set(Mode.DEGRADED, reason)

    def command(self, mode: Mode) -> None:
        """Commanded change; going back to NOMINAL or DEGRADED clears the error window (recovery)."""
        if mode != Mode.SAFE:
            self.errors.clear()
        if not self.set(mode, "commanded"):
            self.persist(self.mode, list(self.errors))

    def memory(self, rss_mib: float, degraded_mib: float, safe_mib: float) -> str | None:
        """Memory pressure: the level reached ('safe', 'degraded') or None."""
        if rss_mib >= safe_mib:
            if self.mode != Mode.SAFE:
                self.emit("MEMORY_PRESSURE", rss_mib=rss_mib, limit_mib=safe_mib, level="SAFE")
                self.set(Mode.SAFE, f"memory {rss_mib:.0f} MiB")
            return "safe"
        if rss_mib >= degraded_mib:
            if self.mode == Mode.NOMINAL:
                self.emit("MEMORY_PRESSURE", rss_mib=rss_mib, limit_mib=degraded_mib, level="DEGRADED")
                self.set(Mode.DEGRADED, f"memory {rss_mib:.0f} MiB")
            return "degraded"
        return None


class EventLimiter:
    """At most `burst` events of one input-driven type per `window_s` (scenario seconds): a
    stream of hostile input must not turn into a stream of event packets that fills the store
    and the downlink. Suppressed events are counted by the caller; other event types pass."""

    # SOFTWARE_FAULT too: a main-loop step that fails on every turn (a full disk under the status
    # file) made 20 event packets a second, evicting products; software_faults still counts each
    LIMITED = frozenset({"FRAME_REJECTED", "INPUT_REJECTED", "BAD_UPLINK_PACKET", "ACK_REJECTED",
                         "COMMAND_AUTH_FAILED", "COMMAND_REJECTED", "SOFTWARE_FAULT"})

    def __init__(self, burst: int, window_s: float):
        self.burst, self.window_s = burst, window_s
        self.sent: dict[str, deque[float]] = {}

    def allow(self, event: str, now_s: float) -> bool:
        if event not in self.LIMITED:
            return True
        q = self.sent.setdefault(event, deque())
        if q and q[-1] > now_s:  # the clock stepped back: else the type stayed muted for the whole step
            q = self.sent[event] = deque(min(t, now_s) for t in q)
        while q and q[0] <= now_s - self.window_s:
            q.popleft()
        if len(q) >= self.burst:
            return False
        q.append(now_s)
        return True


class StageStuck(Exception):
    """Raised in the main thread by the watchdog when a stage overran its limit."""

    def __init__(self, stage: str, elapsed_s: float, limit_s: float):
        super().__init__(f"stage {stage} stuck {elapsed_s:.2f} s > {limit_s:.2f} s")
        self.stage, self.elapsed_s, self.limit_s = stage, elapsed_s, limit_s


class StageWatchdog:
    """Aborts a stage call that runs longer than its limit.

    The main thread marks the stage it is in (`with watchdog.stage("screen"):`); a daemon thread
    checks it every limit/5 and, once the limit has passed, sends SIGUSR1 to the main thread,
    whose handler raises StageStuck there. Python code (a sleep, a loop) is interrupted at once;
    a call inside C (onnxruntime) is interrupted when it returns. Stages nest: the inner one is
    watched, then the outer one resumes with its own start time."""

    def __init__(self, limit_s: float, signum: int = signal.SIGUSR1):
        self.limit_s = limit_s
        self.current: tuple[str, float] | None = None
        self.fired_for: tuple[str, float] | None = None
        self.trips = 0
        self._main = cast(int, threading.main_thread().ident)  # the main thread is always started
        self._signum = signum
        signal.signal(signum, self._on_signal)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stage-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        outer = self.current
        self.current = (name, time.perf_counter())
        try:
            yield
        finally:
            self.current = outer

    def _watch(self) -> None:
        while not self._stop.wait(max(self.limit_s / 5, 0.005)):
            cur = self.current
            if cur is not None and cur is not self.fired_for and time.perf_counter() - cur[1] > self.limit_s:
                self.fired_for = cur
                signal.pthread_kill(self._main, self._signum)

    def _on_signal(self, _signum, _frame) -> None:
        cur = self.current
        if cur is not None and cur is self.fired_for:  # not a stale signal for a stage already left
            self.trips += 1
            self.current = None  # the abort unwinds every nested stage
            raise StageStuck(cur[0], time.perf_counter() - cur[1], self.limit_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        signal.signal(self._signum, signal.SIG_DFL)
