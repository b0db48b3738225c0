"""What the radio does to packets: loss (random or bursty), bit errors and contact windows.

Everything is seeded so a scenario replays the same way. The channel process (ground_link.channel)
asks these objects, per packet, whether it is lost and which bits flip, and asks the contact plan
whether the link is up at a scenario time. ZeroMQ over TCP never loses anything, so this is the
only place where loss happens.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from flight.config import LinkSection, Scenario

MAX_HORIZON_S = 14 * 86400.0  # passes are computed this far ahead at most (a few seconds of start-up)


class RandomLoss:
    """Each packet lost independently with probability `rate`."""

    def __init__(self, rate: float, rng: np.random.Generator):
        self.rate, self.rng = rate, rng

    def lost(self) -> bool:
        return self.rate > 0 and self.rng.random() < self.rate


class GilbertElliottLoss:
    """Two-state Markov chain stepped once per packet: loss probability `loss_good` in the good state
    and `loss_bad` in the bad one. Bad states last 1 / p_bad_to_good packets on average, so losses
    come in bursts (fades) rather than one at a time."""

    def __init__(self, p_good_to_bad: float, p_bad_to_good: float, loss_good: float, loss_bad: float,
                 rng: np.random.Generator):
        self.p_gb, self.p_bg, self.loss_good, self.loss_bad, self.rng = (
            p_good_to_bad, p_bad_to_good, loss_good, loss_bad, rng)
        self.bad = False

    def lost(self) -> bool:
        lost = self.rng.random() < (self.loss_bad if self.bad else self.loss_good)
        self.bad = self.rng.random() >= self.p_bg if self.bad else self.rng.random() < self.p_gb
        return lost

    def steady_state_loss(self) -> float:
        total = self.p_gb + self.p_bg
        p_bad = self.p_gb / total if total else 0.0
        return p_bad * self.loss_bad + (1 - p_bad) * self.loss_good


class NoLoss:
    def lost(self) -> bool:
        return False


def make_loss(cfg: LinkSection, rng: np.random.Generator):
    if cfg.loss_model == "random":
        return RandomLoss(cfg.loss_rate, rng)
    if cfg.loss_model == "gilbert_elliott":
        return GilbertElliottLoss(cfg.ge_p_good_to_bad, cfg.ge_p_bad_to_good, cfg.ge_loss_good, cfg.ge_loss_bad, rng)
    return NoLoss()


class BitErrors:
    """Flips each bit independently with probability `ber` (drawn as a binomial count, then positions)."""

    def __init__(self, ber: float, rng: np.random.Generator):
        self.ber, self.rng = ber, rng

    def apply(self, packet: bytes) -> tuple[bytes, int]:
        """The packet as received and the number of bits flipped."""
        if self.ber <= 0 or not packet:
            return packet, 0
        nbits = 8 * len(packet)
        flips = int(self.rng.binomial(nbits, self.ber))
        if flips == 0:
            return packet, 0
        out = bytearray(packet)
        for bit in self.rng.choice(nbits, size=flips, replace=False):
            out[bit // 8] ^= 0x80 >> (bit % 8)
        return bytes(out), flips


@dataclass(frozen=True)
class Window:
    station: str
    aos_s: float
    los_s: float


class ContactPlan:
    """When the link is up, in scenario seconds. `windows=None` means always up."""

    def __init__(self, windows: list[Window] | None):
        self.windows = None if windows is None else sorted(windows, key=lambda w: w.aos_s)
        self._aos = [w.aos_s for w in self.windows or []]

    def window_at(self, t_s: float) -> Window | None:
        """The window open at t_s (AOS inclusive, LOS exclusive), None when the link is down."""
        if self.windows is None:
            return Window("always", float("-inf"), float("inf"))
        i = bisect.bisect_right(self._aos, t_s) - 1
        # windows of two stations may overlap: look back over every one that began before t_s
        while i >= 0:
            w = self.windows[i]
            if w.aos_s <= t_s < w.los_s:
                return w
            i -= 1
        return None

    def up(self, t_s: float) -> bool:
        return self.window_at(t_s) is not None

    def next_aos(self, t_s: float) -> Window | None:
        """The first window that opens after t_s (None: always up, or no more contacts)."""
        if self.windows is None:
            return None
        i = bisect.bisect_right(self._aos, t_s)
        return self.windows[i] if i < len(self.windows) else None

    def state(self, t_s: float) -> dict:
        """Link state for status files and operator tools."""
        w, nxt = self.window_at(t_s), self.next_aos(t_s)
        return {"link_up": w is not None, "station": w.station if w else None,
                "los_s": w.los_s if w and self.windows is not None else None,
                "next_aos_s": nxt.aos_s if nxt else None, "next_station": nxt.station if nxt else None,
                "scenario_s": round(t_s, 3)}


def orbit_windows(scenario: Scenario, horizon_s: float) -> list[Window]:
    """Passes over the scenario's ground stations from t = 0 to horizon_s (payload_sim.orbit)."""
    from flight.clock import parse_epoch
    from payload_sim.orbit import (
        DEFAULT_STATIONS,
        DEFAULT_TLE,
        GroundStation,
        Orbit,
        contact_windows,
    )

    orbit_cfg = scenario.extra.get("orbit", {})
    orbit = Orbit(orbit_cfg.get("tle1", DEFAULT_TLE[0]), orbit_cfg.get("tle2", DEFAULT_TLE[1]),
                  parse_epoch(scenario.scenario.epoch))
    tables = scenario.extra.get("ground_stations")
    stations = tuple(GroundStation(**t) for t in tables) if tables else DEFAULT_STATIONS
    return [Window(c.station, c.aos_s, c.los_s) for c in contact_windows(orbit, stations, 0.0, horizon_s)]


def scenario_horizon_s(scenario: Scenario) -> float:
    """Scenario seconds a run can last: the captures, or what the launcher's wall limit allows."""
    s = scenario.scenario
    horizon = max(s.start_s + s.frames * s.capture_interval_s, s.max_wall_s * s.clock_rate) + 3600.0
    return min(horizon, MAX_HORIZON_S)


def make_contacts(scenario: Scenario) -> ContactPlan:
    cfg = scenario.link
    if cfg.contacts == "always":
        return ContactPlan(None)
    if cfg.contacts == "schedule":
        return ContactPlan([Window(f"pass{i}", float(a), float(b)) for i, (a, b) in enumerate(cfg.schedule)])
    return ContactPlan(orbit_windows(scenario, scenario_horizon_s(scenario)))


def make_rngs(seed: int) -> tuple[np.random.Generator, ...]:
    """Independent streams: (down loss, down bit errors, up loss, up bit errors)."""
    return tuple(np.random.default_rng([seed, k]) for k in range(4))
