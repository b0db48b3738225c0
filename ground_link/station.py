"""The ground station: decode, check, de-duplicate, archive, alert, acknowledge.

    python -m ground_link.station SCENARIO.toml [--json] [--archive PATH] [--alerts-file PATH]

Every packet from the link is CRC-checked; a bad one is counted, kept in the archive's packet
table with the reason, and dropped (never a crash). Each product is archived once (keyed by its
64-bit product id); every product received, new or repeated, is acknowledged so the flight can
free it. Acknowledgements are signed with a key derived from the mission key (flight.acks:
counter, issue time, id ranges, HMAC-SHA256): the station does not start without a mission key.
Detections matching an alert rule (ground_link.alerts) print one line each for the operator (or
one JSON object per line with --json), are appended as JSON lines to the alerts file when one is
set, and are published on the ZeroMQ feed (network.feed, topic b"alert") when one is set. Repeats
are throttled: archived and counted, not shown.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Protocol

import zmq

from flight.acks import batches, encode_ack, range_ids
from flight.clock import ScenarioClock
from flight.config import Scenario
from flight.products import Detection, PacketError, decode_tm
from flight.security import KeyMaterialError, SecureContext, load_mission_key
from flight.service import Service, common_args, setup
from ground_link.alerts import Throttle, alert_record, match_rule
from ground_link.archive import Archive

FEED_TOPIC = b"alert"


class Log(Protocol):
    """What Station needs of its service: a log line (flight.service.Service, or a quiet stand-in)."""

    def log(self, msg: str, /) -> None: ...


class AckSigner:
    """Signs this station's acknowledgements (flight.acks) as source `source_id`.

    The counter is the wall clock in microseconds, and strictly increasing within the process, so
    it needs no state file to stay above what the flight accepted before a station restart. That
    assumes the station's clock does not step back across a restart (docs/operations.md says what
    an operator does when it has). The issue time is scenario seconds of the same clock reading,
    so a clock far ahead gives acks the flight refuses for their time before it would ever take
    their counter."""

    def __init__(self, mission_key: bytes, source_id: int, clock: ScenarioClock | None):
        self.key, self.source, self.clock = mission_key, source_id, clock
        self.last_counter = 0
        self.seq = 0  # the packets' 14-bit sequence count

    def sign(self, ranges: list[tuple[int, int]]) -> bytes:
        wall = time.time()
        counter = max(self.last_counter + 1, int(wall * 1e6))
        # without a clock (tests) the issue time is 0: a flight checking the time window refuses it
        issued = (wall - self.clock.wall_start) * self.clock.rate if self.clock is not None else 0.0
        packet = encode_ack(self.key, self.source, counter, int(min(max(issued, 0.0), 2**32 - 1)), ranges, self.seq)
        self.last_counter, self.seq = counter, (self.seq + 1) & 0x3FFF
        return packet


class Station:
    def __init__(self, scenario: Scenario, archive: Path, as_json: bool, svc: Log,
                 clock: ScenarioClock | None = None, alerts_file: Path | None = None, feed: zmq.Socket | None = None,
                 key: bytes | None = None):
        """`key`: the mission key acks are signed with. The station process (main) does not start
        without one; a Station made without one (decoding campaigns) archives but cannot acknowledge."""
        self.sc, self.svc, self.as_json, self.clock, self.feed = scenario, svc, as_json, clock, feed
        self.signer = AckSigner(key, scenario.security.ack_source_id, clock) if key is not None else None
        self.archive = Archive(archive)
        self.alerts_file = open(alerts_file, "a") if alerts_file else None
        self.throttle = Throttle()
        self.counts = dict(packets_received=0, packets_bad=0, products_archived=0, duplicates=0, alerts=0,
                           alerts_throttled=0, acks_sent=0, ack_bytes_sent=0, bytes_received=0)
        self.to_ack: list[int] = []  # product ids to acknowledge, repeats included

    def on_packet(self, raw: bytes) -> None:
        now = time.time()
        self.counts["packets_received"] += 1
        self.counts["bytes_received"] += len(raw)
        try:
            tm, product = decode_tm(raw)
        except PacketError as exc:
            self.counts["packets_bad"] += 1
            self.archive.packet(raw, now, exc.apid, exc.reason)
            self.svc.log(f"bad packet dropped: {exc}")
            return
        self.archive.packet(raw, now, tm.apid, None)
        self.to_ack.append(product.product_id)
        if not self.archive.product(product, now):
            self.counts["duplicates"] += 1
            return
        self.counts["products_archived"] += 1
        if isinstance(product, Detection):
            match = match_rule(self.sc.ground.alerts, product)
            if match is not None:
                self.raise_alert(product, *match, now)

    def raise_alert(self, d: Detection, rule_index: int, rule, now: float) -> None:
        throttled = self.throttle.is_repeat(rule, d)
        received_s = self.clock.now_s() if self.clock else None
        rec = alert_record(d, rule_index, rule, now, received_s, throttled)
        self.archive.alert(rec)
        if throttled:
            self.counts["alerts_throttled"] += 1
            return
        self.throttle.remember(rule, d)
        self.counts["alerts"] += 1
        text = json.dumps(rec)
        print(text if self.as_json else rec["message"], flush=True)
        if self.alerts_file:
            self.alerts_file.write(text + "\n")
            self.alerts_file.flush()
        if self.feed is not None:
            try:
                self.feed.send_multipart([FEED_TOPIC, text.encode()], zmq.NOBLOCK)
            except zmq.Again:  # a slow subscriber must never stall the station
                pass

    def send_acks(self, sock: zmq.Socket) -> None:
        """Every id waiting, as signed acks of id ranges (flight.acks.batches: bounded packets)."""
        if not self.to_ack:
            return
        if self.signer is None:
            raise KeyMaterialError("none given: this Station cannot sign acknowledgements", "Station(key=None)")
        pending = batches(self.to_ack)
        for i, ranges in enumerate(pending):
            packet = self.signer.sign(ranges)
            try:
                sock.send(packet, zmq.NOBLOCK)
            except zmq.Again:  # the link is not taking more now; the rest next period (with new counters)
                self.to_ack = [pid for r in pending[i:] for pid in range_ids(r)]
                return
            self.counts["acks_sent"] += 1
            self.counts["ack_bytes_sent"] += len(packet)
        self.to_ack = []

    def close(self) -> None:
        self.archive.close()
        if self.alerts_file:
            self.alerts_file.close()


def main(argv: list[str] | None = None) -> int:
    p = common_args("Ground station: decode, archive, alert")
    p.add_argument("--json", action="store_true", help="alerts as JSON lines")
    p.add_argument("--archive", type=Path, default=None, help="SQLite archive (default RUN_DIR/archive.sqlite)")
    p.add_argument("--alerts-file", type=Path, default=None,
                   help="append alerts as JSON lines here (default: ground.alerts_file, relative to RUN_DIR)")
    args = p.parse_args(argv)
    scenario, clock = setup(args)
    run_dir = args.run_dir or Path("runs/station")
    run_dir.mkdir(parents=True, exist_ok=True)
    svc = Service("station", run_dir)
    try:
        key = load_mission_key(scenario.security, run_dir)
    except KeyMaterialError as exc:
        svc.log(f"cannot start: acknowledgements are signed with the mission key: {exc} "
                "(the launcher, python -m payload_sim.hil, makes one per run)")
        return 2
    alerts_file = args.alerts_file or (run_dir / scenario.ground.alerts_file if scenario.ground.alerts_file else None)
    ctx = SecureContext(scenario.security, "station", run_dir)  # CURVE client when security.curve
    rx = ctx.socket(zmq.PULL)
    tx = ctx.socket(zmq.PUSH)
    try:
        ctx.client(rx, "channel")
        ctx.client(tx, "channel")
    except KeyMaterialError as exc:
        svc.log(f"cannot start: security.curve is on (the default) and the {exc.reason}. Run through the launcher "
                "(python -m payload_sim.hil), which makes the certificates, point security.curve_dir at them, "
                "or set security.curve=false for a lab run on a plain link")
        for s in (rx, tx):
            s.close(linger=0)
        ctx.term()
        return 2
    rx.connect(scenario.network.ground_out)
    tx.setsockopt(zmq.SNDHWM, 100)
    tx.connect(scenario.network.ground_in)
    feed = None
    if scenario.network.feed:
        feed = ctx.socket(zmq.PUB)
        feed.setsockopt(zmq.SNDHWM, 1000)
        feed.bind(scenario.network.feed)
        svc.log(f"alert feed on {scenario.network.feed} (topic {FEED_TOPIC.decode()})")
    station = Station(scenario, args.archive or run_dir / "archive.sqlite", args.json, svc, clock, alerts_file, feed,
                      key=key)
    next_ack = 0.0
    # lets tools turn capture times (scenario s) into wall times, for latency measurements
    clock_info = {"clock_start": clock.wall_start, "clock_rate": clock.rate}
    try:
        while svc.running:
            if rx.poll(50):
                while rx.poll(0):
                    station.on_packet(rx.recv())
            if time.monotonic() >= next_ack:
                station.send_acks(tx)
                next_ack = time.monotonic() + scenario.ground.ack_period_s
            svc.write_status(station.counts | clock_info)
        svc.write_status(station.counts | clock_info, force=True)
    finally:
        for s in (rx, tx, feed):
            if s is not None:
                s.close(linger=0)
        ctx.term()
        station.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
