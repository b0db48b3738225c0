"""Retransmission that adapts to the link (issue #12).

A fixed timer shorter than the radio's own queueing time re-sends packets that are still waiting
in the transmitter: at 4 kbit/s a 2 s timer filled the link with copies (34 of 116 products
archived, 1,282 sends). Two things fix it:

- A model of the transmitter queue. The flight commands its own radio, so it knows the bit rate:
  each packet leaves the radio at `tx_free_at = max(now, tx_free_at) + bits / rate`, and its timer
  runs from then (the store's `left_wall`), not from when it was handed to the radio. At most
  `queue_max_s` of airtime is queued at once; the rest waits in the store, so a later, more
  important product (an alert) is never stuck behind minutes of queued chips.
- An RFC 6298 timeout from the round trips the store measures (`now - left_wall` at the ack, only
  for packets sent once: Karn's rule), clamped to [rto_min_s, rto_max_s], doubled on a timer
  expiry (at most once per RTO, so a burst of expiries is one back-off) and recomputed from the
  estimate at the next fresh sample.
- While the link is silent (nothing acknowledged for a whole timeout: a contact gap the flight
  is not told about), at most one re-send per timeout probes it, instead of every expired packet
  being sent into the gap again. New products still go out at once (one of them, or the probe,
  is the first to reach the ground after AOS, and its ack releases the backlog by fast
  retransmission). Loss while acks still arrive is not silence: re-sends go as before.

All times are link seconds (time.monotonic(), given by the caller), like the store's send state:
a wall clock stepped back would otherwise hold every timer and the queue model for the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flight.config import FlightSection, LinkSection

ALPHA = 1 / 8  # RFC 6298 gains
BETA = 1 / 4
K = 4
RTT_CAP = 4  # a round trip counts as at most RTT_CAP x rto_max_s (see on_sample)


@dataclass
class LinkTimer:
    initial_rto_s: float
    rto_min_s: float
    rto_max_s: float
    rate_bps: float  # the transmitter's bit rate
    queue_max_s: float  # airtime allowed to wait in the transmitter at once
    srtt_s: float | None = None
    rttvar_s: float = 0.0
    rto_s: float = 0.0
    tx_free_at: float = 0.0  # wall time the modelled transmitter finishes what it was given
    next_backoff_wall: float = 0.0  # no second doubling before this
    probe_when_silent: bool = True
    last_ack_wall: float = 0.0  # when the ground last acknowledged anything
    next_probe_wall: float = 0.0  # while silent, no re-send before this

    def __post_init__(self) -> None:
        self.rto_s = self._clamp(self.initial_rto_s)

    @classmethod
    def from_config(cls, flight: FlightSection, link: LinkSection) -> LinkTimer:
        """From a FlightSection and a LinkSection: the radio's rate is the link's downlink rate
        unless `flight.radio_rate_bps` (> 0) says otherwise."""
        rate = flight.radio_rate_bps if flight.radio_rate_bps > 0 else link.downlink_rate_bps
        return cls(flight.retransmit_s, flight.rto_min_s, flight.rto_max_s, rate, flight.radio_queue_max_s,
                   probe_when_silent=flight.probe_when_silent)

    def _clamp(self, rto_s: float) -> float:
        return min(max(rto_s, self.rto_min_s), self.rto_max_s)

    # -- round trips -------------------------------------------------------------------------------

    def on_sample(self, rtt_s: float) -> None:
        """A round trip of a packet sent once (RFC 6298 section 2); ends any back-off."""
        if not math.isfinite(rtt_s):
            # NaN made SRTT and the RTO NaN for good: no timer ever expired again (left_wall + NaN
            # <= now is false; SQLite reads NaN as NULL) and silent() was never true; inf pinned
            # SRTT at inf. Not a round trip: ignored.
            return
        # the queue model can run a little late: never a negative round trip. Any round trip
        # past rto_max_s already puts the RTO at its ceiling; unbounded, one outlier (a ground
        # stalled for a day, 1e300) kept it there for hundreds to thousands of samples after
        r = min(max(rtt_s, 0.0), RTT_CAP * self.rto_max_s)
        if self.srtt_s is None:
            self.srtt_s, self.rttvar_s = r, r / 2
        else:
            self.rttvar_s = (1 - BETA) * self.rttvar_s + BETA * abs(self.srtt_s - r)
            self.srtt_s = (1 - ALPHA) * self.srtt_s + ALPHA * r
        self.rto_s = self._clamp(self.srtt_s + K * self.rttvar_s)

    def on_samples(self, rtts_s: list[float]) -> None:
        for r in rtts_s:
            self.on_sample(r)

    def on_acked(self, now_wall: float) -> None:
        """The ground acknowledged something: the link carries."""
        self.last_ack_wall = now_wall

    def silent(self, now_wall: float) -> bool:
        """Nothing acknowledged for a whole timeout: the link is down (or the ground is)."""
        return now_wall - self.last_ack_wall > self.rto_s

    def resends_allowed(self, now_wall: float) -> int | None:
        """How many expired packets may be sent again now: any number (None) while acks arrive;
        while the link is silent one probe per timeout, else none."""
        if not self.probe_when_silent or not self.silent(now_wall):
            return None
        if now_wall < self.next_probe_wall:
            return 0
        return 1

    def on_probe(self, now_wall: float) -> None:
        self.next_probe_wall = now_wall + self.rto_s

    def on_timeout(self, now_wall: float) -> None:
        """A packet's timer ran out: double the timeout, once per timeout period at most."""
        if now_wall < self.next_backoff_wall:
            return
        self.rto_s = self._clamp(2 * self.rto_s)
        self.next_backoff_wall = now_wall + self.rto_s

    # -- transmitter queue -----------------------------------------------------------------------

    def queued_s(self, now_wall: float) -> float:
        """Airtime still waiting in the transmitter."""
        return max(0.0, self.tx_free_at - now_wall)

    def has_room(self, now_wall: float) -> bool:
        """May another packet go to the radio now? (A packet longer than the cap still goes once
        the queue is below it, so nothing is blocked forever.)"""
        return self.queued_s(now_wall) < self.queue_max_s

    def leaves_at(self, nbytes: int, now_wall: float) -> float:
        """When a packet of nbytes handed to the radio now would have left it."""
        return max(now_wall, self.tx_free_at) + nbytes * 8 / self.rate_bps

    def enqueue(self, nbytes: int, now_wall: float) -> float:
        """A packet handed to the radio now; returns when it will have left it (its left_wall)."""
        self.tx_free_at = self.leaves_at(nbytes, now_wall)
        return self.tx_free_at
