"""The ground station: decode, check, de-duplicate, archive, alert, acknowledge.

    python -m ground_link.station SCENARIO.toml [--json] [--archive PATH] [--alerts-file PATH]

Every packet from the link is CRC-checked; a bad one is counted, kept in the archive's packet
table with the reason, and dropped (never a crash). Each product is archived once; every product
received, new or repeated, is acknowledged so the flight can free it. Detections matching an
alert rule (ground_link.alerts) print one line each for the operator (or one JSON object per line
with --json), are appended as JSON lines to the alerts file when one is set, and are published on
the ZeroMQ feed (network.feed, topic b"alert") when one is set. Repeats are throttled: archived
and counted, not shown.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Protocol

import zmq

from flight.clock import ScenarioClock
from flight.config import Scenario
from flight.products import MAX_ACK_IDS, Detection, PacketError, decode_tm, encode_ack
from flight.security import SecureContext
from flight.service import Service, common_args, setup
from ground_link.alerts import Throttle, alert_record, match_rule
from ground_link.archive import Archive

FEED_TOPIC = b"alert"


class Log(Protocol):
    """What Station needs of its service: a log line (flight.service.Service, or a quiet stand-in)."""

    def log(self, msg: str, /) -> None: ...


class Station:
    def __init__(self, scenario: Scenario, archive: Path, as_json: bool, svc: Log,
                 clock: ScenarioClock | None = None, alerts_file: Path | None = None, feed: zmq.Socket | None = None):
        self.sc, self.svc, self.as_json, self.clock, self.feed = scenario, svc, as_json, clock, feed
        self.archive = Archive(archive)
        self.alerts_file = open(alerts_file, "a") if alerts_file else None
        self.throttle = Throttle()
        self.counts = dict(packets_received=0, packets_bad=0, products_archived=0, duplicates=0, alerts=0,
                           alerts_throttled=0, acks_sent=0, bytes_received=0)
        self.to_ack: list[int] = []
        self.ack_seq = 0

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
        while self.to_ack:
            ids, rest = self.to_ack[:MAX_ACK_IDS], self.to_ack[MAX_ACK_IDS:]
            try:
                sock.send(encode_ack(ids, self.ack_seq), zmq.NOBLOCK)
            except zmq.Again:
                return  # the link is not taking more now; try next period
            self.ack_seq += 1
            self.counts["acks_sent"] += 1
            self.to_ack = rest

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
    alerts_file = args.alerts_file or (run_dir / scenario.ground.alerts_file if scenario.ground.alerts_file else None)
    ctx = SecureContext(scenario.security, "station", run_dir)  # CURVE client when security.curve
    feed = None
    if scenario.network.feed:
        feed = ctx.socket(zmq.PUB)
        feed.setsockopt(zmq.SNDHWM, 1000)
        feed.bind(scenario.network.feed)
        svc.log(f"alert feed on {scenario.network.feed} (topic {FEED_TOPIC.decode()})")
    station = Station(scenario, args.archive or run_dir / "archive.sqlite", args.json, svc, clock, alerts_file, feed)
    rx = ctx.socket(zmq.PULL)
    ctx.client(rx, "channel")
    rx.connect(scenario.network.ground_out)
    tx = ctx.socket(zmq.PUSH)
    tx.setsockopt(zmq.SNDHWM, 100)
    ctx.client(tx, "channel")
    tx.connect(scenario.network.ground_in)
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
