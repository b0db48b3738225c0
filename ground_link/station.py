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

A constellation (issue #18, docs/ground.md): `[station] name`, `links` (one per satellite: the
channel's endpoints and that satellite's mission key) and `archive` (a postgresql:// URL shared by
every station). The satellite a packet came from is the link it came down (the channel of that
(satellite, station) pair), as a real front end knows it from the transfer frame's spacecraft id;
products are archived once per (satellite id, product id) across all stations. Each satellite's
acks are signed with its own key, and carry, besides every product this station received, the
products of that satellite the other stations archived in the last `station.shared_ack_s` wall
seconds (while this station hears it): a product archived via Baku is acknowledged by Astana too,
so the satellite does not send it again. Only the station whose insert created the product raises
its alert, and a named station judges repeats (throttling) against the alerts every station has
shown, read from the shared archive in the same transaction as its own alert's insert.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Protocol

import zmq

from flight.acks import batches, encode_ack, range_ids
from flight.clock import ScenarioClock
from flight.config import Scenario
from flight.products import Detection, Housekeeping, PacketError, decode_tm
from flight.security import KeyMaterialError, SecureContext, load_mission_key
from flight.service import Service, common_args, setup
from ground_link.alerts import Throttle, alert_record, is_repeat_of, match_rule
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


HEARD_S = 2.0  # wall seconds: a satellite heard this recently is in contact (shared acks go to it)
RECONNECT_S = 5.0  # after an archive failure, at most one new connection per this many seconds
SAT_COUNTS = ("packets_received", "packets_bad", "products_archived", "duplicates", "acks_shared")


class Station:
    def __init__(self, scenario: Scenario, archive: Path | str, as_json: bool, svc: Log,
                 clock: ScenarioClock | None = None, alerts_file: Path | None = None, feed: zmq.Socket | None = None,
                 key: bytes | None = None, keys: dict[int, bytes] | None = None):
        """`key`: the mission key acks are signed with (satellite `station.satellite_id`); `keys`:
        one per satellite id (a constellation). The station process (main) does not start without
        them; a Station made without (decoding campaigns) archives but cannot acknowledge.
        `archive`: an SQLite path or a postgresql:// URL (shared by the stations of a ground)."""
        self.sc, self.svc, self.as_json, self.clock, self.feed = scenario, svc, as_json, clock, feed
        self.name = scenario.station.name
        self.default_sat = scenario.station.satellite_id
        keys = dict(keys or {})
        if key is not None:
            keys.setdefault(self.default_sat, key)
        self.signers = {sid: AckSigner(k, scenario.security.ack_source_id, clock) for sid, k in keys.items()}
        self.signer = self.signers.get(self.default_sat)
        self.archive_target = archive
        self.archive = Archive(archive, station=self.name)
        self.reconnect_after = 0.0  # monotonic time before which no new archive connection is tried
        self.alerts_path = alerts_file
        self.alerts_file = open(alerts_file, "a") if alerts_file else None
        self.throttle = Throttle()
        self.counts = dict(packets_received=0, packets_bad=0, products_archived=0, duplicates=0, alerts=0,
                           alerts_throttled=0, acks_sent=0, ack_bytes_sent=0, bytes_received=0)
        self.acks: dict[int, list[int]] = {self.default_sat: []}  # per satellite: ids to acknowledge, repeats included
        # per satellite: the ids of the last ack sent, acknowledged once more in the next one, so one
        # lost ack costs no re-send (consecutive ids merge into the same ranges: almost no bytes)
        self.repeat: dict[int, list[int]] = {}
        self.per_sat: dict[int, dict[int | str, int]] = {}
        self.heard: dict[int, float] = {}  # satellite id -> monotonic time of its last packet here
        self.shared_sent: dict[int, dict[int, float]] = {}  # satellite id -> {id: received_wall} acked for the ground

    @property
    def to_ack(self) -> list[int]:
        """Product ids to acknowledge to the default satellite (a single-satellite ground's only one)."""
        return self.acks.setdefault(self.default_sat, [])

    @to_ack.setter
    def to_ack(self, ids: list[int]) -> None:
        self.acks[self.default_sat] = ids

    def _sat(self, sid: int) -> dict:
        return self.per_sat.setdefault(sid, dict.fromkeys(SAT_COUNTS, 0))

    def on_packet(self, raw: bytes, satellite_id: int | None = None) -> None:
        """A packet as it came down the link of `satellite_id` (None: the default satellite)."""
        sid = self.default_sat if satellite_id is None else satellite_id
        now = time.time()  # a timestamp (received_wall in the archive, the alert's time): wall clock
        sat = self._sat(sid)
        self.counts["packets_received"] += 1
        sat["packets_received"] += 1
        self.counts["bytes_received"] += len(raw)
        try:
            tm, product = decode_tm(raw)
            if isinstance(product, Housekeeping):
                # a channel count that does not match its values decodes, but cannot be archived:
                # checked here so it is a bad packet (counted, kept, not acked), not a crash of the loop
                product.channels()
        except PacketError as exc:
            self.counts["packets_bad"] += 1
            sat["packets_bad"] += 1
            self.archive.packet(raw, now, exc.apid, exc.reason, sid)
            self.svc.log(f"bad packet dropped: {exc}")
            return
        self.heard[sid] = time.monotonic()
        archived = self.archive.product(product, now, sid, raw=raw)  # the packet is logged in the same transaction
        # acknowledged only once it is in the archive: if the archive write raised (an outage), the
        # flight keeps the product and sends it again
        self.acks.setdefault(sid, []).append(product.product_id)
        if not archived:
            self.counts["duplicates"] += 1
            sat["duplicates"] += 1
            return
        self.counts["products_archived"] += 1
        sat["products_archived"] += 1
        if isinstance(product, Detection):
            match = match_rule(self.sc.ground.alerts, product)
            if match is not None:
                self.raise_alert(product, *match, now, sid)

    def receive(self, raw: bytes, satellite_id: int | None = None) -> None:
        """on_packet with the main loop's last resort: an archive outage (disk full, a lost database
        connection) or any other error costs this packet only. It is counted and logged, not
        acknowledged (the flight sends it again), and the station goes on with the next one."""
        try:
            self.on_packet(raw, satellite_id)
        except Exception as exc:  # noqa: BLE001 (database drivers raise their own types; nothing may stop the loop)
            self.counts["packets_failed"] = self.counts.get("packets_failed", 0) + 1
            self.svc.log(f"packet not archived (not acknowledged: the flight sends it again): {exc!r}"[:300])
            self._reconnect_archive()

    def _reconnect_archive(self) -> None:
        """A connection lost with its server stays lost: open a new one, at most every RECONNECT_S."""
        now = time.monotonic()
        if now < self.reconnect_after:
            return
        self.reconnect_after = now + RECONNECT_S
        try:
            fresh = Archive(self.archive_target, station=self.name)
        except Exception as exc:  # noqa: BLE001 (still out: the next failure tries again)
            self.svc.log(f"archive not reachable: {exc!r}"[:300])
            return
        try:
            self.archive.close()
        except Exception:  # noqa: BLE001 (the old connection is gone anyway)
            pass
        self.archive = fresh
        self.counts["archive_reconnects"] = self.counts.get("archive_reconnects", 0) + 1

    def _alert_not_archived(self, exc: Exception) -> None:
        self.counts["alerts_not_archived"] = self.counts.get("alerts_not_archived", 0) + 1
        self.svc.log(f"alert shown but not archived: {exc!r}"[:300])

    def raise_alert(self, d: Detection, rule_index: int, rule, now: float, satellite_id: int | None = None) -> None:
        """Show, file and publish one alert, and archive it. The product is archived already, so an
        alert lost here would never come again (a re-sent product is a duplicate): when its archive
        write fails it is still shown, as not a repeat (better twice than never)."""
        received_s = self.clock.now_s() if self.clock else None
        if self.name:  # a constellation's alert says which satellite and which station
            rec = alert_record(d, rule_index, rule, now, received_s, False)
            sid = self.default_sat if satellite_id is None else satellite_id
            rec["satellite_id"], rec["station"] = sid, self.name
            rec["message"] += f"  sat {sid} via {self.name}"
            # a repeat is judged against what every station has shown (the shared archive), not
            # only this one: the same fire seen by two satellites via two stations is shown once
            try:
                throttled = rec["throttled"] = self.archive.alert_unless_repeat(
                    rec, rule.throttle_s, lambda shown: is_repeat_of(rule, d, shown))
            except Exception as exc:  # noqa: BLE001 (the shared archive is out)
                throttled = rec["throttled"] = False
                self._alert_not_archived(exc)
        else:
            throttled = self.throttle.is_repeat(rule, d)
            rec = alert_record(d, rule_index, rule, now, received_s, throttled)
            try:
                self.archive.alert(rec)
            except Exception as exc:  # noqa: BLE001
                self._alert_not_archived(exc)
        if throttled:
            self.counts["alerts_throttled"] += 1
            return
        self.throttle.remember(rule, d)
        self.counts["alerts"] += 1
        text = json.dumps(rec)
        print(text if self.as_json else rec["message"], flush=True)
        if self.alerts_path and self.alerts_file is None:  # could not be reopened last time: try again
            self._reopen_alerts_file()
        if self.alerts_file:
            try:
                self.alerts_file.write(text + "\n")
                self.alerts_file.flush()
            except OSError as exc:  # a full disk: the alert is still printed, archived and published
                self.counts["alerts_file_errors"] = self.counts.get("alerts_file_errors", 0) + 1
                self.svc.log(f"alerts file: {exc!r}"[:300])
                self._reopen_alerts_file()
        if self.feed is not None:
            try:
                self.feed.send_multipart([FEED_TOPIC, text.encode()], zmq.NOBLOCK)
            except zmq.Again:  # a slow subscriber must never stall the station
                pass

    def add_ground_acks(self) -> None:
        """Queue, for each satellite heard in the last HEARD_S, the ids of its products the other
        stations archived in the last `station.shared_ack_s` wall seconds that this station has not
        acknowledged yet: the satellite learns what the whole ground has, not only this station."""
        window = self.sc.station.shared_ack_s
        if window <= 0:
            return
        # `heard` is an interval (monotonic); the window is compared with the archive's received_wall,
        # which every station writes from its wall clock, so it stays on the wall clock
        mono, wall = time.monotonic(), time.time()
        for sid, heard in self.heard.items():
            if mono - heard > HEARD_S or sid not in self.signers:
                continue
            sent = self.shared_sent.setdefault(sid, {})
            for old in [i for i, w in sent.items() if w < wall - window]:
                del sent[old]
            new = [(pid, w) for pid, w in self.archive.archived_since(sid, wall - window) if pid not in sent]
            if new:
                self.acks.setdefault(sid, []).extend(pid for pid, _ in new)
                sent.update(new)
                self.counts["acks_shared"] = self.counts.get("acks_shared", 0) + len(new)
                self._sat(sid)["acks_shared"] += len(new)

    def send_acks(self, sock: zmq.Socket | dict[int, zmq.Socket]) -> None:
        """Every id waiting, as signed acks of id ranges (flight.acks.batches: bounded packets).
        `sock`: the uplink of the default satellite, or {satellite id: its uplink}."""
        socks = sock if isinstance(sock, dict) else {self.default_sat: sock}
        if self.name and len(self.signers) > 0:
            self.add_ground_acks()
        for sid in set(self.acks) | set(self.repeat):
            new, again = self.acks.get(sid, []), self.repeat.pop(sid, [])
            if not (new or again) or sid not in socks:
                continue
            signer = self.signers.get(sid)
            if signer is None:
                raise KeyMaterialError(f"none given for satellite {sid}: this Station cannot sign its acknowledgements",
                                       "Station(key=None)")
            pending = batches(sorted(set(new) | set(again)))
            self.acks[sid] = []
            if new:
                self.repeat[sid] = list(new)
            for i, ranges in enumerate(pending):
                packet = signer.sign(ranges)
                try:
                    socks[sid].send(packet, zmq.NOBLOCK)
                except zmq.Again:  # the link is not taking more now; the rest next period (with new counters)
                    self.acks[sid] = [pid for r in pending[i:] for pid in range_ids(r)]
                    break
                self.counts["acks_sent"] += 1
                self.counts["ack_bytes_sent"] += len(packet)

    def status(self) -> dict:
        """The counts for the status file; a named station (a constellation's) adds its name and
        per-satellite counts."""
        if not self.name:
            return dict(self.counts)
        return self.counts | {"station": self.name, "archive_dialect": self.archive.dialect,
                              "satellites": {str(k): v for k, v in sorted(self.per_sat.items())}}

    def _reopen_alerts_file(self) -> None:
        """After a failed write: drop what the file object still buffers (else every later flush
        fails on it and it grows), and append again from the next alert."""
        old, self.alerts_file = self.alerts_file, None
        try:
            if old is not None:
                old.close()
        except OSError:
            pass
        try:
            self.alerts_file = open(self.alerts_path, "a") if self.alerts_path else None
        except OSError as exc:
            self.svc.log(f"alerts file not reopened: {exc!r}"[:300])

    def close(self) -> None:
        self.archive.close()
        if self.alerts_file:
            try:
                self.alerts_file.close()
            except OSError as exc:  # its last lines could not be written (full disk): said, not raised
                self.svc.log(f"alerts file: {exc!r}"[:300])


def _default_link():
    from flight.config import StationLink

    return StationLink(satellite_id=1)


def main(argv: list[str] | None = None) -> int:
    p = common_args("Ground station: decode, archive, alert")
    p.add_argument("--json", action="store_true", help="alerts as JSON lines")
    p.add_argument("--archive", default=None,
                   help="SQLite archive path or postgresql:// URL (default: station.archive, else RUN_DIR/archive.sqlite)")
    p.add_argument("--alerts-file", type=Path, default=None,
                   help="append alerts as JSON lines here (default: ground.alerts_file, relative to RUN_DIR)")
    args = p.parse_args(argv)
    scenario, clock = setup(args)
    run_dir = args.run_dir or Path("runs/station")
    run_dir.mkdir(parents=True, exist_ok=True)
    svc = Service("station", run_dir)
    links = scenario.station.links or (dataclasses.replace(
        _default_link(), satellite_id=scenario.station.satellite_id, ground_out=scenario.network.ground_out,
        ground_in=scenario.network.ground_in),)
    keys: dict[int, bytes] = {}
    try:
        for link in links:
            sec = (dataclasses.replace(scenario.security, command_key_file=link.command_key_file)
                   if link.command_key_file else scenario.security)
            keys[link.satellite_id] = load_mission_key(sec, run_dir)
    except KeyMaterialError as exc:
        svc.log(f"cannot start: acknowledgements are signed with the mission key: {exc} "
                "(the launcher, python -m payload_sim.hil, makes one per run)")
        return 2
    alerts_file = args.alerts_file or (run_dir / scenario.ground.alerts_file if scenario.ground.alerts_file else None)
    ctx = SecureContext(scenario.security, "station", run_dir)  # CURVE client when security.curve
    rxs: dict[int, zmq.Socket] = {}  # satellite id -> its downlink (the channel of that pair)
    txs: dict[int, zmq.Socket] = {}
    for link in links:
        rxs[link.satellite_id], txs[link.satellite_id] = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        for sock in (*rxs.values(), *txs.values()):
            ctx.client(sock, "channel")
    except KeyMaterialError as exc:
        svc.log(f"cannot start: security.curve is on (the default) and the {exc.reason}. Run through the launcher "
                "(python -m payload_sim.hil), which makes the certificates, point security.curve_dir at them, "
                "or set security.curve=false for a lab run on a plain link")
        for s in (*rxs.values(), *txs.values()):
            s.close(linger=0)
        ctx.term()
        return 2
    for link in links:
        rxs[link.satellite_id].connect(link.ground_out)
        txs[link.satellite_id].setsockopt(zmq.SNDHWM, 100)
        txs[link.satellite_id].connect(link.ground_in)
    poller = zmq.Poller()
    for sock in rxs.values():
        poller.register(sock, zmq.POLLIN)
    feed = None
    if scenario.network.feed:
        feed = ctx.socket(zmq.PUB)
        feed.setsockopt(zmq.SNDHWM, 1000)
        feed.bind(scenario.network.feed)
        svc.log(f"alert feed on {scenario.network.feed} (topic {FEED_TOPIC.decode()})")
    archive = args.archive or scenario.station.archive or run_dir / "archive.sqlite"
    station = Station(scenario, archive, args.json, svc, clock, alerts_file, feed, keys=keys)
    next_ack = 0.0
    # lets tools turn capture times (scenario s) into wall times, for latency measurements
    clock_info = {"clock_start": clock.wall_start, "clock_rate": clock.rate}
    try:
        while svc.running:
            if poller.poll(50):
                for sid, rx in rxs.items():
                    while rx.poll(0):
                        station.receive(rx.recv(), sid)
            if time.monotonic() >= next_ack:
                next_ack = time.monotonic() + scenario.ground.ack_period_s
                try:
                    station.send_acks(txs)
                except Exception as exc:  # noqa: BLE001 (the shared archive read for ground acks: retried next period)
                    svc.log(f"acks not sent this period: {exc!r}"[:300])
            svc.write_status(lambda: station.status() | clock_info)
        svc.write_status(station.status() | clock_info, force=True)
    finally:
        for closing in (*rxs.values(), *txs.values(), feed):
            if closing is not None:
                closing.close(linger=0)
        ctx.term()
        station.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
