"""The radio link emulator: a process between flight and ground that forwards packets both ways.

    python -m ground_link.channel SCENARIO.toml

Each direction is a queue served at the configured bit rate after a one-way delay, so a burst of
products takes as long to come down as it would over the real radio. Packets waiting to go on the
air are picked by priority class (by APID), then age: on the uplink product acknowledgements first,
then telecommands, then bulk file data (CFDP), so an upload never starves the acks or an urgent
command; on the downlink the flight's CFDP replies go before products. A packet already on the air
is never interrupted. The link model
(ground_link.linkmodel) decides each packet's fate, seeded: outside a contact window nothing
passes either way (offered packets are dropped, as a radio with nobody listening would); inside,
packets are lost (random or Gilbert-Elliott bursts) or arrive with flipped bits for the ground's
CRC check to catch. ZeroMQ over TCP itself never loses, so all loss happens here.

The status file (RUN_DIR/channel.status.json) reports per direction packets in/out/lost/corrupted/
dropped outside contact, and the link state (up/down, current station, next AOS) for the station
and the operator tools. CFDP replies (Apid.FILE_REPLY) that reach the ground are not the
station's: they go to the ground's file-transfer entity (ground_link.commander) on a socket of
their own, a PUB bound on a free port and named in the status file as `file_out`, as a ground
station's front end routes file-delivery packets apart from telemetry.

Two clocks: the queues (serialisation, propagation delay, when the transmitter comes free) run on
link time, time.monotonic(), as the flight's link timers do: on the wall clock, a clock stepped
back (NTP, a GPS fix) by 990 s held every packet behind the transmitter's `free_at` for 990 s,
and one stepped forward let the whole queue out at once. The contact plan stays in scenario
time, which every process derives from the wall clock (flight.clock.ScenarioClock: the shared
`clock_start` in RUN/launch.json), so the flight, the commander and the channel agree on AOS and
LOS; link times are turned into it with the clocks' offset at that moment (`wall_of_monotonic`).
"""

from __future__ import annotations

import functools
import heapq
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypedDict

import zmq

from flight.config import LinkSection, Scenario
from flight.dictionary import Apid
from flight.security import SecureContext
from flight.service import Service, common_args, setup
from ground_link.linkmodel import (
    BitErrors,
    ContactPlan,
    NoLoss,
    RandomLoss,
    make_contacts,
    make_loss,
    make_rngs,
)

COUNTERS = ("packets_in", "packets_out", "bytes_out", "dropped_queue_full", "lost", "corrupted",
            "bits_flipped", "dropped_outside_contact", "dropped_no_listener", "dropped_too_long", "queued",
            "lost_ack_ids")

# Priority classes by APID (0 goes first); a packet of an APID not listed is in the last class.
# Uplink: acks free the flight's store and stop its retransmissions, so they go first; commands
# next (an operator's command never waits behind an upload); bulk file data last.
UPLINK_CLASSES = {int(Apid.GROUND_ACK): 0, int(Apid.COMMAND): 1, int(Apid.FILE_DATA): 2}
# Downlink: the flight's CFDP replies (ACK, NAK, Finished: tens of bytes) before products, so an
# upload's control loop does not wait behind the seconds of products the flight keeps queued.
DOWNLINK_CLASSES = {int(Apid.FILE_REPLY): 0}
# The longest CCSDS space packet: 6 header bytes + 65,536 (a u16 length field). Anything longer is
# no packet of ours; taken, one 1 MiB message held a 9.6 kbit/s transmitter for 15 minutes (the
# packet on the air is never interrupted) while acks and commands waited behind it.
MAX_PACKET_BYTES = 6 + 65536


def apid_of(packet: bytes) -> int | None:
    """The APID of a CCSDS space packet (None for a packet too short to have one)."""
    return ((packet[0] & 0x07) << 8 | packet[1]) if len(packet) >= 2 else None


def wall_of_monotonic(t: float) -> float:
    """The wall-clock time (time.time() scale) of link time `t` (time.monotonic() scale), by the
    two clocks' offset now: intervals are measured on the monotonic clock, and only what must
    agree with other processes (scenario time, the contact plan) is read through this."""
    return time.time() + (t - time.monotonic())


def ack_ids_in(packet: bytes) -> int:
    """How many product ids an acknowledgement acknowledges (0 for any other packet): counted for
    the acks the link loses, so a test can tell retransmissions the link caused from a storm."""
    if apid_of(packet) != Apid.GROUND_ACK:
        return 0
    from flight.acks import parse_ack  # the structure only; the MAC is the flight's business

    try:
        return sum(count for _, count in parse_ack(packet).ranges)
    except Exception:  # noqa: BLE001 (not a well-formed ack: nothing to count)
        return 0


class LossModel(Protocol):
    """What Direction needs of a loss model (linkmodel.NoLoss, RandomLoss, GilbertElliottLoss)."""

    def lost(self) -> bool: ...


class _DirectionExtra(TypedDict, total=False):
    contacts: ContactPlan
    scenario_s: Callable[[float], float]


@dataclass
class Direction:
    """One way of the link: serialisation at rate_bps, then a fixed propagation delay, then the
    link model (contact window, loss, bit errors) decides what comes out.

    Packets wait in one FIFO per priority class (`classes`: APID -> class, 0 most urgent; other
    APIDs in `default_class`). Whenever the transmitter is free, the oldest packet of the most
    urgent class that has arrived by then goes on the air; the packet on the air is never
    pre-empted. Without classes it is one FIFO, as before.

    Every `now` and every time kept here is the caller's link time (time.monotonic() in the
    channel process); `scenario_s` turns a link time into scenario seconds for the contact plan."""

    name: str
    rate_bps: float
    delay_s: float
    queue_max: int
    loss: LossModel = field(default_factory=NoLoss)  # .lost() -> bool, called once per packet on air
    bit_errors: BitErrors | None = None
    contacts: ContactPlan = field(default_factory=lambda: ContactPlan(None))
    scenario_s: Callable[[float], float] = lambda t: t  # link time -> scenario seconds
    classes: dict[int, int] = field(default_factory=dict)  # APID -> priority class (0 first)
    default_class: int = 0
    free_at: float = 0.0  # link time the transmitter finishes its current packet
    queue: list = field(default_factory=list)  # on the air or propagating: heap of (deliver_at, seq, packet, sent_end)
    waiting: dict[int, deque] = field(default_factory=dict)  # class -> FIFO of (arrived, seq, packet)
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
    dropped_too_long: int = 0  # offered, longer than any space packet (MAX_PACKET_BYTES): never sent
    lost_ack_ids: int = 0  # product ids in the acks this direction lost or dropped (contact, queue full, no listener)

    @property
    def queued(self) -> int:
        """Packets waiting for the transmitter or on their way (status; occupancy() is what
        queue_max bounds)."""
        return len(self.queue) + sum(len(q) for q in self.waiting.values())

    def class_of(self, packet: bytes) -> int:
        apid = apid_of(packet)
        return self.default_class if apid is None else self.classes.get(apid, self.default_class)

    def offer(self, packet: bytes, now: float) -> None:
        self.packets_in += 1
        if len(packet) > MAX_PACKET_BYTES:
            self.dropped_too_long += 1
            return
        if not self.contacts.up(self.scenario_s(now)):
            self.dropped_outside_contact += 1  # transmitter has nobody to talk to: no airtime used
            self.lost_ack_ids += ack_ids_in(packet)
            return
        self._serve(now)
        cls = self.class_of(packet)
        if self.occupancy(now) >= self.queue_max:
            # Full: the packet dropped is the newest of the least urgent class waiting, when that
            # is less urgent than this one. Dropping the newcomer always let bulk file data that
            # filled the queue make the link drop acks and commands, the classes' whole point.
            victim = self._push_out(cls)
            self.dropped_queue_full += 1
            self.lost_ack_ids += ack_ids_in(packet if victim is None else victim)  # costs a re-send too
            if victim is None:
                return
        self.seq += 1
        self.waiting.setdefault(cls, deque()).append((now, self.seq, packet))
        self._serve(now)

    def occupancy(self, now: float) -> int:
        """What queue_max bounds: packets waiting for the transmitter and the one on the air.
        Packets already sent and propagating hold no place in the transmitter (counting them
        made a long delay_ms drop packets at an idle transmitter)."""
        return sum(len(q) for q in self.waiting.values()) + (1 if self.free_at > now else 0)

    def _push_out(self, cls: int) -> bytes | None:
        """Remove and return the newest waiting packet of the least urgent class less urgent than
        `cls` (None when there is none)."""
        worst = max((c for c, q in self.waiting.items() if q and c > cls), default=None)
        return None if worst is None else self.waiting[worst].pop()[2]

    def _serve(self, now: float) -> None:
        """Put on the air every packet whose transmission begins by `now`: each time the
        transmitter comes free, the most urgent class's oldest packet that had arrived by then."""
        while True:
            heads = [(q[0][0], c) for c, q in self.waiting.items() if q]
            if not heads:
                return
            start = max(self.free_at, min(arrived for arrived, _ in heads))
            if start > now:
                return
            cls = min(c for arrived, c in heads if arrived <= start)
            _, seq, packet = self.waiting[cls].popleft()
            self.free_at = start + len(packet) * 8 / self.rate_bps
            heapq.heappush(self.queue, (self.free_at + self.delay_s, seq, packet, self.free_at))

    def backlog_s(self, now: float) -> float:
        """Airtime still to go before a packet offered now would start (of everything waiting and
        the packet on the air): what a sender pacing itself to this transmitter needs to know."""
        self._serve(now)
        waiting = sum(len(p) for q in self.waiting.values() for _, _, p in q)
        return max(0.0, self.free_at - now) + waiting * 8 / self.rate_bps

    def next_event(self) -> float | None:
        """The link time something next happens here (a delivery, or the transmitter coming free
        for a waiting packet); None when idle."""
        times = [self.queue[0][0]] if self.queue else []
        if any(self.waiting.values()):
            times.append(self.free_at)
        return min(times) if times else None

    def due(self, now: float) -> list[bytes]:
        """Packets arriving by `now`, after the link model took its share (counted)."""
        self._serve(now)
        out = []
        while self.queue and self.queue[0][0] <= now:
            _, _, packet, sent_end = heapq.heappop(self.queue)
            if not self.contacts.up(self.scenario_s(sent_end)):
                self.dropped_outside_contact += 1  # LOS came while it was on the air
                self.lost_ack_ids += ack_ids_in(packet)
                continue
            if self.loss.lost():
                self.lost += 1
                self.lost_ack_ids += ack_ids_in(packet)
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
    if cfg.uplink_loss_rate is None:
        uplink_loss = make_loss(cfg, up_loss)
    else:  # link.uplink_loss_rate: independent loss on the uplink only
        uplink_loss = RandomLoss(cfg.uplink_loss_rate, up_loss) if cfg.uplink_loss_rate > 0 else NoLoss()
    return (Direction("down", cfg.downlink_rate_bps, cfg.delay_ms / 1e3, cfg.queue_max_packets,
                      loss=make_loss(cfg, down_loss), bit_errors=BitErrors(cfg.bit_error_rate, down_bits),
                      classes=dict(DOWNLINK_CLASSES), default_class=1, **extra),
            Direction("up", cfg.uplink_rate_bps, cfg.delay_ms / 1e3, cfg.queue_max_packets,
                      loss=uplink_loss, bit_errors=BitErrors(cfg.bit_error_rate, up_bits),
                      classes=dict(UPLINK_CLASSES), default_class=2, **extra))


def link_status(down: Direction, up: Direction, contacts: ContactPlan, t_s: float, now: float | None = None) -> dict:
    """`now`: link time, the directions' own clock (default time.monotonic(), the channel's)."""
    now = time.monotonic() if now is None else now
    backlog = {f"{d.name}_backlog_s": round(d.backlog_s(now), 3) for d in (down, up)}
    return down.stats() | up.stats() | backlog | contacts.state(t_s)


def describe(scenario: Scenario, contacts: ContactPlan) -> str:
    cfg = scenario.link
    loss = {"none": "no loss", "random": f"random loss {cfg.loss_rate:.3g}",
            "gilbert_elliott": f"Gilbert-Elliott loss (good->bad {cfg.ge_p_good_to_bad:g}, bad->good "
                               f"{cfg.ge_p_bad_to_good:g}, loss {cfg.ge_loss_good:g}/{cfg.ge_loss_bad:g})"}[cfg.loss_model]
    passes = "always in contact" if contacts.windows is None else (
        f"{len(contacts.windows)} contact windows: " + ", ".join(
            f"{w.station} {w.aos_s:.0f}-{w.los_s:.0f} s" for w in contacts.windows[:4])
        + (" ..." if len(contacts.windows) > 4 else ""))
    if cfg.uplink_loss_rate is not None:
        loss += f" (uplink: random loss {cfg.uplink_loss_rate:.3g})"
    return (f"link: down {cfg.downlink_rate_bps:.0f} bit/s, up {cfg.uplink_rate_bps:.0f} bit/s, delay "
            f"{cfg.delay_ms:.1f} ms, {loss}, BER {cfg.bit_error_rate:g}, seed {cfg.seed}; {passes}")


def file_endpoint(ground_out: str) -> str:
    """Where the channel binds the ground's file-transfer output: a free port on the host of
    network.ground_out (tcp), else beside it."""
    if ground_out.startswith("tcp://"):
        return "tcp://" + ground_out[len("tcp://"):].rsplit(":", 1)[0]
    return ground_out + "-files"


def main(argv: list[str] | None = None) -> int:
    args = common_args("Radio link emulator between flight and ground").parse_args(argv)
    scenario, clock = setup(args)
    svc = Service("channel", args.run_dir)
    net = scenario.network
    contacts = make_contacts(scenario)  # fails fast on a bad orbit or station table

    def scenario_s(wall: float) -> float:
        return (wall - clock.wall_start) * clock.rate

    def scenario_at(t: float) -> float:  # link time (monotonic) -> scenario seconds (wall-based, shared)
        return scenario_s(wall_of_monotonic(t))

    down, up = make_link(scenario.link, contacts, scenario_at)

    def status(t_s: float) -> dict:
        return link_status(down, up, contacts, t_s) | {"file_out": file_out}
    ctx = SecureContext(scenario.security, "channel", args.run_dir)  # CURVE server when security.curve
    socks = {}
    for name, kind, addr in (("space_in", zmq.PULL, net.space_in), ("space_out", zmq.PUSH, net.space_out),
                             ("ground_out", zmq.PUSH, net.ground_out), ("ground_in", zmq.PULL, net.ground_in)):
        s = ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        ctx.serve(s)
        s.bind(addr)
        socks[name] = s
    files = ctx.socket(zmq.PUB)  # CFDP replies to the ground's file-transfer entity (commander)
    files.setsockopt(zmq.LINGER, 0)
    files.setsockopt(zmq.SNDHWM, 10000)
    ctx.serve(files)
    base = file_endpoint(net.ground_out)
    if base.startswith("tcp://"):
        file_out = f"{base}:{files.bind_to_random_port(base)}"
    else:
        files.bind(base)
        file_out = base
    socks["file_out"] = files
    poller = zmq.Poller()
    poller.register(socks["space_in"], zmq.POLLIN)
    poller.register(socks["ground_in"], zmq.POLLIN)
    svc.log(describe(scenario, contacts))
    routes = ((down, socks["ground_out"]), (up, socks["space_out"]))
    was_up = None
    try:
        while svc.running:
            now = time.monotonic()  # link time: the queues' clock (the module docstring)
            wait_s = min([t - now for t in (d.next_event() for d, _ in routes) if t is not None] + [0.05])
            events = dict(poller.poll(max(0, int(wait_s * 1e3))))
            now = time.monotonic()
            while socks["space_in"] in events and socks["space_in"].poll(0):
                down.offer(socks["space_in"].recv(), now)
            while socks["ground_in"] in events and socks["ground_in"].poll(0):
                up.offer(socks["ground_in"].recv(), now)
            for d, out in routes:
                for packet in d.due(now):
                    if d is down and apid_of(packet) == Apid.FILE_REPLY:
                        files.send(packet, zmq.NOBLOCK)  # PUB: never blocks; nobody subscribed = nobody listening
                        d.packets_out += 1
                        d.bytes_out += len(packet)
                        continue
                    try:
                        out.send(packet, zmq.NOBLOCK)
                    except zmq.Again:  # nobody listening on that side: the packet is lost, as on a radio
                        d.dropped_no_listener += 1
                        d.lost_ack_ids += ack_ids_in(packet)  # a lost ack costs the flight re-sends
                        continue
                    d.packets_out += 1
                    d.bytes_out += len(packet)
            t_s = scenario_at(now)
            state = contacts.state(t_s)
            if state["link_up"] != was_up:
                first, was_up = was_up is None, state["link_up"]
                up_word, down_word = ("link up", "link down") if first else ("AOS", "LOS")
                svc.log(f"t={t_s:.1f} s: " + (f"{up_word} {state['station']}" if was_up else
                        down_word + (f", next AOS {state['next_station']} at {state['next_aos_s']:.1f} s"
                                     if state["next_aos_s"] is not None else ", no more contacts")))
            svc.write_status(functools.partial(status, t_s))
        svc.write_status(status(scenario_s(time.time())), force=True)  # a timestamp: scenario time now
    finally:
        for s in socks.values():
            s.close(linger=0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
