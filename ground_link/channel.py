"""The radio link emulator: a process between flight and ground that forwards packets both ways.

    python -m ground_link.channel SCENARIO.toml

Each direction is a queue served at the configured bit rate after a one-way delay, so a burst of
products takes as long to come down as it would over the real radio. (Loss, bit errors and contact
windows are emulated here too as the link model grows; ZeroMQ over TCP itself never loses.)
"""

from __future__ import annotations

import heapq
import sys
import time
from dataclasses import dataclass, field

import zmq

from flight.config import LinkSection
from flight.service import Service, common_args, setup


@dataclass
class Direction:
    """One way of the link: serialisation at rate_bps, then a fixed propagation delay."""

    name: str
    rate_bps: float
    delay_s: float
    queue_max: int
    free_at: float = 0.0  # wall time the transmitter finishes its current packet
    queue: list = field(default_factory=list)  # heap of (deliver_at, seq, packet)
    seq: int = 0
    packets_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    dropped_queue_full: int = 0

    def offer(self, packet: bytes, now: float) -> None:
        self.packets_in += 1
        if len(self.queue) >= self.queue_max:
            self.dropped_queue_full += 1
            return
        start = max(now, self.free_at)
        self.free_at = start + len(packet) * 8 / self.rate_bps
        self.seq += 1
        heapq.heappush(self.queue, (self.free_at + self.delay_s, self.seq, packet))

    def due(self, now: float) -> list[bytes]:
        out = []
        while self.queue and self.queue[0][0] <= now:
            out.append(heapq.heappop(self.queue)[2])
        return out

    def stats(self) -> dict:
        return {f"{self.name}_{k}": getattr(self, k) for k in ("packets_in", "packets_out", "bytes_out", "dropped_queue_full")}


def make_link(cfg: LinkSection) -> tuple[Direction, Direction]:
    return (Direction("down", cfg.downlink_rate_bps, cfg.delay_ms / 1e3, cfg.queue_max_packets),
            Direction("up", cfg.uplink_rate_bps, cfg.delay_ms / 1e3, cfg.queue_max_packets))


def main(argv: list[str] | None = None) -> int:
    args = common_args("Radio link emulator between flight and ground").parse_args(argv)
    scenario, _clock = setup(args)
    svc = Service("channel", args.run_dir)
    net = scenario.network
    down, up = make_link(scenario.link)
    ctx = zmq.Context()
    socks = {}
    for name, kind, addr in (("space_in", zmq.PULL, net.space_in), ("space_out", zmq.PUSH, net.space_out),
                             ("ground_out", zmq.PUSH, net.ground_out), ("ground_in", zmq.PULL, net.ground_in)):
        s = ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        s.bind(addr)
        socks[name] = s
    poller = zmq.Poller()
    poller.register(socks["space_in"], zmq.POLLIN)
    poller.register(socks["ground_in"], zmq.POLLIN)
    svc.log(f"link up: down {down.rate_bps:.0f} bit/s, up {up.rate_bps:.0f} bit/s, delay {down.delay_s * 1e3:.1f} ms")
    routes = ((down, socks["ground_out"]), (up, socks["space_out"]))
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
                        continue
                    d.packets_out += 1
                    d.bytes_out += len(packet)
            svc.write_status(down.stats() | up.stats())
        svc.write_status(down.stats() | up.stats(), force=True)
    finally:
        for s in socks.values():
            s.close(linger=0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
