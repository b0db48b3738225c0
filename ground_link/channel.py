"""The radio link emulator: a process between flight and ground that forwards packets both ways.

    python -m ground_link.channel SCENARIO.toml

Each direction is a queue served at the configured bit rate after a one-way delay, so a burst of
products takes as long to come down as it would over the real radio. The link model
(ground_link.linkmodel) decides each packet's fate, seeded: outside a contact window nothing
passes either way (offered packets are dropped, as a radio with nobody listening would); inside,
packets are lost (random or Gilbert-Elliott bursts) or arrive with flipped bits for the ground's
CRC check to catch. ZeroMQ over TCP itself never loses, so all loss happens here.

The status file (RUN_DIR/channel.status.json) reports per direction packets in/out/lost/corrupted/
dropped outside contact, and the link state (up/down, current station, next AOS) for the station
and the operator tools.
"""

from __future__ import annotations

import heapq
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypedDict

import zmq

from flight.config import LinkSection, Scenario
from flight.security import SecureContext
from flight.service import Service, common_args, setup
from ground_link.linkmodel import (
    BitErrors,
    ContactPlan,
    NoLoss,
    make_contacts,
    make_loss,
    make_rngs,
)

COUNTERS = ("packets_in", "packets_out", "bytes_out", "dropped_queue_full", "lost", "corrupted",
            "bits_flipped", "dropped_outside_contact", "dropped_no_listener")


class LossModel(Protocol):
    """What Direction needs of a loss model (linkmodel.NoLoss, RandomLoss, GilbertElliottLoss)."""

    def lost(self) -> bool: ...


class _DirectionExtra(TypedDict, total=False):
    contacts: ContactPlan
    scenario_s: Callable[[float], float]


@dataclass
class Direction:
    """One way of the link: serialisation at rate_bps, then a fixed propagation delay, then the
    link model (contact window, loss, bit errors) decides what comes out."""

    name: str
    rate_bps: float
    delay_s: float
    queue_max: int
    loss: LossModel = field(default_factory=NoLoss)  # .lost() -> bool, called once per packet on air
    bit_errors: BitErrors | None = None
    contacts: ContactPlan = field(default_factory=lambda: ContactPlan(None))
    scenario_s: Callable[[float], float] = lambda wall: wall  # wall time -> scenario seconds
    free_at: float = 0.0  # wall time the transmitter finishes its current packet
    queue: list = field(default_factory=list)  # heap of (deliver_at, seq, packet, sent_end_wall)
    seq: int = 0
    packets_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    dropped_queue_full: int = 0
    lost: int = 0
    corrupted: int = 0
    bits_flipped: int = 0
    dropped_outside_contact: int = 0
    dropped_no_listener: int = 0  # arrived, but the far end's process was not connected

    def offer(self, packet: bytes, now: float) -> None:
        self.packets_in += 1
        if not self.contacts.up(self.scenario_s(now)):
            self.dropped_outside_contact += 1  # transmitter has nobody to talk to: no airtime used
            return
        if len(self.queue) >= self.queue_max:
            self.dropped_queue_full += 1
            return
        start = max(now, self.free_at)
        self.free_at = start + len(packet) * 8 / self.rate_bps
        self.seq += 1
        heapq.heappush(self.queue, (self.free_at + self.delay_s, self.seq, packet, self.free_at))

    def due(self, now: float) -> list[bytes]:
        """Packets arriving by `now`, after the link model took its share (counted)."""
        out = []
        while self.queue and self.queue[0][0] <= now:
            _, _, packet, sent_end = heapq.heappop(self.queue)
            if not self.contacts.up(self.scenario_s(sent_end)):
                self.dropped_outside_contact += 1  # LOS came while it was on the air
                continue
            if self.loss.lost():
                self.lost += 1
                continue
            if self.bit_errors is not None:
                packet, flips = self.bit_errors.apply(packet)
                if flips:
                    self.corrupted += 1
                    self.bits_flipped += flips
            out.append(packet)
        return out

    def stats(self) -> dict:
        return {f"{self.name}_{k}": getattr(self, k) for k in COUNTERS}


def make_link(cfg: LinkSection, contacts: ContactPlan | None = None,
              scenario_s: Callable[[float], float] | None = None) -> tuple[Direction, Direction]:
    """Downlink and uplink with the configured model; each direction has its own seeded streams."""
    down_loss, down_bits, up_loss, up_bits = make_rngs(cfg.seed)
    contacts = contacts or ContactPlan(None)
    extra: _DirectionExtra = ({"contacts": contacts, "scenario_s": scenario_s} if scenario_s else {"contacts": contacts})
    return (Direction("down", cfg.downlink_rate_bps, cfg.delay_ms / 1e3, cfg.queue_max_packets,
                      loss=make_loss(cfg, down_loss), bit_errors=BitErrors(cfg.bit_error_rate, down_bits), **extra),
            Direction("up", cfg.uplink_rate_bps, cfg.delay_ms / 1e3, cfg.queue_max_packets,
                      loss=make_loss(cfg, up_loss), bit_errors=BitErrors(cfg.bit_error_rate, up_bits), **extra))


def link_status(down: Direction, up: Direction, contacts: ContactPlan, t_s: float) -> dict:
    return down.stats() | up.stats() | contacts.state(t_s)


def describe(scenario: Scenario, contacts: ContactPlan) -> str:
    cfg = scenario.link
    loss = {"none": "no loss", "random": f"random loss {cfg.loss_rate:.3g}",
            "gilbert_elliott": f"Gilbert-Elliott loss (good->bad {cfg.ge_p_good_to_bad:g}, bad->good "
                               f"{cfg.ge_p_bad_to_good:g}, loss {cfg.ge_loss_good:g}/{cfg.ge_loss_bad:g})"}[cfg.loss_model]
    passes = "always in contact" if contacts.windows is None else (
        f"{len(contacts.windows)} contact windows: " + ", ".join(
            f"{w.station} {w.aos_s:.0f}-{w.los_s:.0f} s" for w in contacts.windows[:4])
        + (" ..." if len(contacts.windows) > 4 else ""))
    return (f"link: down {cfg.downlink_rate_bps:.0f} bit/s, up {cfg.uplink_rate_bps:.0f} bit/s, delay "
            f"{cfg.delay_ms:.1f} ms, {loss}, BER {cfg.bit_error_rate:g}, seed {cfg.seed}; {passes}")


def main(argv: list[str] | None = None) -> int:
    args = common_args("Radio link emulator between flight and ground").parse_args(argv)
    scenario, clock = setup(args)
    svc = Service("channel", args.run_dir)
    net = scenario.network
    contacts = make_contacts(scenario)  # fails fast on a bad orbit or station table

    def scenario_s(wall: float) -> float:
        return (wall - clock.wall_start) * clock.rate

    down, up = make_link(scenario.link, contacts, scenario_s)
    ctx = SecureContext(scenario.security, "channel", args.run_dir)  # CURVE server when security.curve
    socks = {}
    for name, kind, addr in (("space_in", zmq.PULL, net.space_in), ("space_out", zmq.PUSH, net.space_out),
                             ("ground_out", zmq.PUSH, net.ground_out), ("ground_in", zmq.PULL, net.ground_in)):
        s = ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        ctx.serve(s)
        s.bind(addr)
        socks[name] = s
    poller = zmq.Poller()
    poller.register(socks["space_in"], zmq.POLLIN)
    poller.register(socks["ground_in"], zmq.POLLIN)
    svc.log(describe(scenario, contacts))
    routes = ((down, socks["ground_out"]), (up, socks["space_out"]))
    was_up = None
    try:
        while svc.running:
            now = time.time()
            wait_s = min([d.queue[0][0] - now for d, _ in routes if d.queue] + [0.05])
            events = dict(poller.poll(max(0, int(wait_s * 1e3))))
            now = time.time()
            while socks["space_in"] in events and socks["space_in"].poll(0):
                down.offer(socks["space_in"].recv(), now)
            while socks["ground_in"] in events and socks["ground_in"].poll(0):
                up.offer(socks["ground_in"].recv(), now)
            for d, out in routes:
                for packet in d.due(now):
                    try:
                        out.send(packet, zmq.NOBLOCK)
                    except zmq.Again:  # nobody listening on that side: the packet is lost, as on a radio
                        d.dropped_no_listener += 1
                        continue
                    d.packets_out += 1
                    d.bytes_out += len(packet)
            t_s = scenario_s(now)
            state = contacts.state(t_s)
            if state["link_up"] != was_up:
                first, was_up = was_up is None, state["link_up"]
                up_word, down_word = ("link up", "link down") if first else ("AOS", "LOS")
                svc.log(f"t={t_s:.1f} s: " + (f"{up_word} {state['station']}" if was_up else
                        down_word + (f", next AOS {state['next_station']} at {state['next_aos_s']:.1f} s"
                                     if state["next_aos_s"] is not None else ", no more contacts")))
            svc.write_status(link_status(down, up, contacts, t_s))
        svc.write_status(link_status(down, up, contacts, scenario_s(time.time())), force=True)
    finally:
        for s in socks.values():
            s.close(linger=0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
