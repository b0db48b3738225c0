"""The onboard contact plan (issue #13): when a ground station will hear the satellite.

Mission planning on the ground knows the passes (sgp4, or a schedule); without them the flight
learns of a gap only by silence and keeps sending into it: new products and timed-out ones, each
of which must be sent again after AOS (10-11 % of packets in the 10 %-loss upload runs). With the
plan on board the flight hands nothing to the radio outside a window, and near LOS nothing whose
acknowledgement could not come back before LOS (one round trip), so products wait in the store
instead of going into the gap.

The plan is a small JSON file in UTC, the way operators write times:

    {"windows": [{"station": "baku", "aos": "2026-11-28T06:16:04Z", "los": "2026-11-28T06:24:43Z"}, ...]}

It is loaded before launch into the flight's state folder (`contact_plan.json`) and replaced in
flight by file transfer plus the authenticated LOAD_CONTACT_PLAN command; the file is kept, so a
restarted flight has it. Safety rules:
- A plan is a hint, never a gag: after the last window's LOS (a plan not refreshed in time) the
  flight sends as if it had none (silence probing, flight/retransmit.py). An unplanned outage
  inside a window is handled the same way.
- Bad plans (not JSON, wrong types, unordered or overlapping nonsense, times outside the scenario
  clock's range, too many windows) are refused with a one-line reason and the old plan stays.
"""

from __future__ import annotations

import bisect
import json
import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from flight.clock import ScenarioClock, parse_epoch

PLAN_FILE = "contact_plan.json"
MAX_PLAN_BYTES = 256 * 1024  # a day of passes for a dozen stations is ~10 KB
MAX_WINDOWS = 2000
MAX_STATION_CHARS = 32


class ContactPlanError(ValueError):
    """A plan the flight will not use; the message is one line for an event or a command report."""


@dataclass(frozen=True)
class PlannedWindow:
    station: str
    aos_s: float  # scenario seconds
    los_s: float


def _utc_s(text: object, clock: ScenarioClock, where: str) -> float:
    if not isinstance(text, str) or len(text) > 40:
        raise ContactPlanError(f"{where}: expected an ISO-8601 UTC time string")
    try:
        t = (parse_epoch(text) - clock.epoch).total_seconds()
    except (ValueError, OverflowError) as exc:
        raise ContactPlanError(f"{where}: {exc}") from None
    if not math.isfinite(t) or abs(t) > 2**31:  # ~68 years either side of the epoch: a CDS time code's reach
        raise ContactPlanError(f"{where}: {text} is too far from the scenario epoch")
    return t


def parse_plan(data: bytes, clock: ScenarioClock) -> list[PlannedWindow]:
    """Windows sorted by AOS, or ContactPlanError naming the first problem."""
    if len(data) > MAX_PLAN_BYTES:
        raise ContactPlanError(f"plan is {len(data)} bytes (at most {MAX_PLAN_BYTES})")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ContactPlanError(f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("windows"), list):
        raise ContactPlanError('expected {"windows": [...]}')
    raw = doc["windows"]
    if len(raw) > MAX_WINDOWS:
        raise ContactPlanError(f"{len(raw)} windows (at most {MAX_WINDOWS})")
    windows = []
    for i, w in enumerate(raw):
        if not isinstance(w, dict):
            raise ContactPlanError(f"windows[{i}]: expected an object with station, aos, los")
        station = w.get("station", "")
        if not isinstance(station, str) or len(station) > MAX_STATION_CHARS:
            raise ContactPlanError(f"windows[{i}].station: a name of at most {MAX_STATION_CHARS} characters")
        aos, los = _utc_s(w.get("aos"), clock, f"windows[{i}].aos"), _utc_s(w.get("los"), clock, f"windows[{i}].los")
        if not aos < los:
            raise ContactPlanError(f"windows[{i}]: aos must be before los")
        windows.append(PlannedWindow(station, aos, los))
    return sorted(windows, key=lambda w: w.aos_s)


def plan_json(windows: list[tuple[str, float, float]], epoch: datetime) -> bytes:
    """The file for (station, aos_s, los_s) windows in scenario seconds (the ground's side)."""
    from datetime import timedelta

    def utc(t_s: float) -> str:
        return (epoch + timedelta(seconds=t_s)).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    return json.dumps({"windows": [{"station": s, "aos": utc(a), "los": utc(b)} for s, a, b in windows]},
                      indent=1).encode() + b"\n"


class ContactPlan:
    """The plan in use. `windows` empty: no plan (send as if always in contact)."""

    def __init__(self, windows: list[PlannedWindow] | None = None):
        self.windows = windows or []
        self._aos = [w.aos_s for w in self.windows]
        # windows of two stations may overlap: a window's effective end is the latest LOS so far
        self._reach = []
        reach = -math.inf
        for w in self.windows:
            reach = max(reach, w.los_s)
            self._reach.append(reach)

    @property
    def ends_s(self) -> float | None:
        return self._reach[-1] if self.windows else None

    def governs(self, t_s: float) -> bool:
        """Is there a plan that still covers t_s? (After its last LOS it is ignored.)"""
        return bool(self.windows) and t_s < self._reach[-1]

    def contact_at(self, t_s: float) -> tuple[float, float] | None:
        """(AOS, LOS) of the contact open at t_s, overlapping windows joined (AOS: of the last
        window opened before t_s, so never earlier than the contact's start); None outside contact."""
        i = bisect.bisect_right(self._aos, t_s) - 1
        if i < 0 or self._reach[i] <= t_s:
            return None
        los = self._reach[i]
        j = i + 1  # windows that open before this contact ends extend it
        while j < len(self.windows) and self.windows[j].aos_s <= los:
            los = max(los, self.windows[j].los_s)
            j += 1
        return self.windows[i].aos_s, los

    def los_after(self, t_s: float) -> float | None:
        """The LOS of the contact open at t_s, None outside contact."""
        c = self.contact_at(t_s)
        return c[1] if c else None

    def next_aos(self, t_s: float) -> float | None:
        i = bisect.bisect_right(self._aos, t_s)
        return self.windows[i].aos_s if i < len(self.windows) else None


def load_plan_file(state_dir: Path, clock: ScenarioClock) -> ContactPlan:
    """The kept plan, or an empty one (ContactPlanError if the file is there but bad)."""
    path = state_dir / PLAN_FILE
    if not path.exists():
        return ContactPlan()
    return ContactPlan(parse_plan(path.read_bytes()[:MAX_PLAN_BYTES + 1], clock))


def keep_plan_file(state_dir: Path, data: bytes) -> None:
    """Atomically replace the kept plan (a restarted flight uses it)."""
    tmp = state_dir / (PLAN_FILE + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(state_dir / PLAN_FILE)
