"""The ground station: decode, check, de-duplicate, archive, alert, acknowledge.

    python -m ground_link.station SCENARIO.toml [--json] [--archive PATH]

Every packet from the link is CRC-checked; a bad one is counted, kept in the archive's packet
table with the reason, and dropped (never a crash). Each product is archived once; every product
received, new or repeated, is acknowledged so the flight can free it. Detections matching an
alert rule print one line each for the operator (or one JSON object per line with --json).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import zmq

from flight.config import AlertRule, Scenario
from flight.dictionary import DetectionClass
from flight.products import Detection, PacketError, decode_tm, encode_ack, MAX_ACK_IDS
from flight.service import Service, common_args, setup
from ground_link.archive import Archive


def match_rule(rules: tuple[AlertRule, ...], d: Detection) -> AlertRule | None:
    try:
        cls = DetectionClass(d.class_id).name.lower()
    except ValueError:
        return None
    return next((r for r in rules if r.class_name == cls and d.confidence >= r.min_confidence), None)


def format_alert(d: Detection, rule: AlertRule) -> str:
    where = "position unknown" if math.isnan(d.lat_deg) else f"{d.lat_deg:+.5f} {d.lon_deg:+.5f}"
    return (f"ALERT {rule.severity.upper():8s} {rule.class_name:5s} frame {d.frame_id:5d} conf {d.confidence:.2f} "
            f"at {where} (px {d.row_px:.1f},{d.col_px:.1f}) t+{d.capture_time_s:.1f}s")


class Station:
    def __init__(self, scenario: Scenario, archive: Path, as_json: bool, svc: Service):
        self.sc, self.svc, self.as_json = scenario, svc, as_json
        self.archive = Archive(archive)
        self.counts = dict(packets_received=0, packets_bad=0, products_archived=0, duplicates=0, alerts=0,
                           acks_sent=0, bytes_received=0)
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
            rule = match_rule(self.sc.ground.alerts, product)
            if rule is not None:
                self.raise_alert(product, rule, now)

    def raise_alert(self, d: Detection, rule: AlertRule, now: float) -> None:
        line = format_alert(d, rule)
        self.archive.alert(d, rule.severity, rule.class_name, now, line)
        self.counts["alerts"] += 1
        if self.as_json:
            print(json.dumps({"severity": rule.severity, "class": rule.class_name, "frame_id": d.frame_id,
                              "confidence": round(d.confidence, 3), "lat_deg": None if math.isnan(d.lat_deg) else d.lat_deg,
                              "lon_deg": None if math.isnan(d.lon_deg) else d.lon_deg, "row_px": d.row_px,
                              "col_px": d.col_px, "capture_time_s": d.capture_time_s, "product_id": d.product_id}),
                  flush=True)
        else:
            print(line, flush=True)

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


def main(argv: list[str] | None = None) -> int:
    p = common_args("Ground station: decode, archive, alert")
    p.add_argument("--json", action="store_true", help="alerts as JSON lines")
    p.add_argument("--archive", type=Path, default=None, help="SQLite archive (default RUN_DIR/archive.sqlite)")
    args = p.parse_args(argv)
    scenario, _clock = setup(args)
    run_dir = args.run_dir or Path("runs/station")
    run_dir.mkdir(parents=True, exist_ok=True)
    svc = Service("station", run_dir)
    station = Station(scenario, args.archive or run_dir / "archive.sqlite", args.json, svc)
    ctx = zmq.Context()
    rx = ctx.socket(zmq.PULL)
    rx.connect(scenario.network.ground_out)
    tx = ctx.socket(zmq.PUSH)
    tx.setsockopt(zmq.SNDHWM, 100)
    tx.connect(scenario.network.ground_in)
    next_ack = 0.0
    try:
        while svc.running:
            if rx.poll(50):
                while rx.poll(0):
                    station.on_packet(rx.recv())
            if time.monotonic() >= next_ack:
                station.send_acks(tx)
                next_ack = time.monotonic() + scenario.ground.ack_period_s
            svc.write_status(station.counts)
        svc.write_status(station.counts, force=True)
    finally:
        rx.close(linger=0)
        tx.close(linger=0)
        ctx.term()
        station.archive.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
