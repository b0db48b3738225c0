"""The scenario clock: one mission time for every process.

Every process is given the same epoch (UTC), rate and wall-clock start, so simulated time can run
faster than real time (hours of orbit in a minute) while processing latency is still measured in
wall time (time.perf_counter). Flight code asks this clock for mission time; it never calls
time.time() for it directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True)
class ScenarioClock:
    epoch: datetime  # scenario time 0, timezone-aware UTC
    rate: float = 1.0  # scenario seconds per wall second
    wall_start: float = 0.0  # time.time() at scenario time 0

    def now_s(self) -> float:
        """Scenario seconds since the epoch."""
        return (time.time() - self.wall_start) * self.rate

    def wall_time_of(self, t_s: float) -> float:
        """The wall-clock time (time.time() scale) at which scenario time t_s occurs."""
        return self.wall_start + t_s / self.rate

    def utc(self, t_s: float) -> datetime:
        return self.epoch + timedelta(seconds=t_s)


def parse_epoch(text: str) -> datetime:
    """ISO-8601 UTC epoch such as 2026-11-28T06:00:00Z; raises ValueError otherwise."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"epoch {text!r} must carry a timezone (use Z for UTC)")
    return dt.astimezone(UTC)
