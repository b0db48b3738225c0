"""The ground commander: authenticated telecommands up the link, verification reports back.

    python -m ground_link.commander --run-dir RUN list
    python -m ground_link.commander --run-dir RUN send NOOP
    python -m ground_link.commander --run-dir RUN send SET_PARAM param=cloud_discard_fraction value=0.8
    python -m ground_link.commander --run-dir RUN send SET_MODE mode=NOMINAL
    python -m ground_link.commander --run-dir RUN upload models/cloud_screen.card.json [--timeout-s 900]
    python -m ground_link.commander --run-dir RUN reports [--counter N]
    python -m ground_link.commander pack-model models/cloud_screen.card.json OUT.mdlpkg

Command, parameter, mode and model names may be typed in any case (`send set_mode mode=safe`);
arguments are checked as the flight checks them before anything is sent, and `send` / `upload`
refuse at once a folder where no run is live (no launch.json, summary.json written, or a link
channel status older than LIVE_STATUS_S).

It finds the endpoints, the scenario clock and the key paths in RUN/launch.json (written by the
launcher), signs each command with the mission key (HMAC-SHA256) and the next counter (kept in
RUN/commander.json under a file lock, so two commanders never reuse one), pushes it into the
link's uplink input (network.ground_in, as the station does its acks; CURVE client when the
scenario turns CURVE on) and reads the PUS service 1 reports the flight sends down from the
station's archive (RUN/archive.sqlite). docs/operations.md describes the protocol.

`upload` sends the bundle by file transfer (CFDP class 2, flight.filetransfer: resumable over
losses and contact gaps), paced to the uplink rate and the contact plan (UplinkPacer), with a
progress line every few seconds, then activates it with the authenticated UPLOAD_ACTIVATE_FILE
naming its SHA-256; `--chunks` uses the older command-based upload, paced the same way.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import sqlite3
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import zmq

from flight.clock import ScenarioClock, parse_epoch
from flight.commands import DEFAULT_ACKS, CommandError, encode_command
from flight.config import Scenario, load_scenario
from flight.dictionary import (
    COMMANDS,
    PARAMS,
    PARAMS_BY_NAME,
    Apid,
    CommandDef,
    Mode,
    Reason,
    ReportKind,
)
from flight.filetransfer import (
    SEGMENT_BYTES,
    FileSender,
    timers_for,
    transaction_for,
    transaction_over,
    wrap,
)
from flight.inference import ModelError
from flight.model_update import (
    ModelUpdateError,
    bundle_name,
    pack_bundle,
    parse_ranges,
    upload_id_of,
)
from flight.products import product_label
from flight.security import SecureContext, load_mission_key
from ground_link.channel import wall_of_monotonic
from ground_link.linkmodel import ContactPlan, make_contacts

FINAL = {ReportKind.REJECTED, ReportKind.COMPLETED, ReportKind.FAILED}
# A command's reports are looked for in what was archived from this long before it was sent on:
# they are archived after it, by a station whose wall clock may differ from the commander's.
REPORT_LOOKBACK_S = 600.0


class CommanderError(RuntimeError):
    pass


class UplinkPacer:
    """Flow control of what the ground hands to the uplink (issue #13).

    The link channel serialises the uplink at `link.uplink_rate_bps`, acknowledgements first, then
    telecommands, then bulk file data (ground_link.channel), so what the commander sends never
    delays an ack or a command by more than the packet on the air. The pacer keeps the queue short
    as well, so a command's issue time is still fresh when it arrives and a file transfer's timers
    measure the link, not a queue:

    - bulk data is handed over only while the transmitter's backlog is under `queue_s` of airtime
      (the larger of the pacer's own count of what it sent and the channel's `up_backlog_s`
      status, which includes the station's acks, less the status file's age);
    - only while the contact plan (the channel's own, `make_contacts`) says the link is up, and
      only what will be off the air before LOS; over a gap bulk data is held, not thrown away.

    Every `now` (and every time it returns) is link time: the Commander gives time.monotonic(),
    so a wall clock stepped back (NTP, a GPS fix) does not hold bulk data behind `busy_until` for
    the whole step, nor a step forward let a burst out. `wall_of` turns a link time into the wall
    clock, which scenario time (the contact plan, the channel status's `scenario_s`) is shared in
    between processes (flight.clock.ScenarioClock); without it `now` is the wall time itself.
    """

    def __init__(self, rate_bps: float, contacts: ContactPlan, clock: ScenarioClock, queue_s: float = 1.5,
                 status_path: Path | None = None, wall_of: Callable[[float], float] | None = None):
        self.rate_bps, self.contacts, self.clock, self.queue_s = rate_bps, contacts, clock, queue_s
        self.status_path = status_path
        self.wall_of: Callable[[float], float] = wall_of or (lambda t: t)
        self.busy_until = 0.0  # link time our own packets are off the air, by our count
        self._status: tuple[float, float] = (0.0, 0.0)  # (link time the channel wrote it, its backlog then)
        self._status_read = float("-inf")  # link time of the last read

    def airtime(self, nbytes: int) -> float:
        return nbytes * 8 / self.rate_bps

    def _channel_backlog(self, now: float) -> float:
        if self.status_path is None:
            return 0.0
        if now - self._status_read >= 0.1:
            self._status_read = now
            try:
                st = json.loads(self.status_path.read_text())
                # the channel stamps its status in (wall-based) scenario time: its age is taken once,
                # here, and the backlog then drains on link time. A stamp ahead of our wall clock (it
                # stepped back since the write) counts as just written.
                age = max(0.0, self.wall_of(now) - self.clock.wall_time_of(float(st["scenario_s"])))
                self._status = (now - age, float(st.get("up_backlog_s", 0.0)))
            except (OSError, ValueError, KeyError, TypeError):
                pass
        written, backlog = self._status
        return max(0.0, backlog - max(0.0, now - written))

    def backlog_s(self, now: float) -> float:
        return max(self.busy_until - now, self._channel_backlog(now), 0.0)

    def link(self, now: float) -> tuple[bool, float | None, float | None]:
        """(link up, link time of LOS or None, link time of the next AOS or None)."""
        wall = self.wall_of(now)  # the contact plan is in scenario time, which runs on the wall clock
        t_s = (wall - self.clock.wall_start) * self.clock.rate
        w = self.contacts.window_at(t_s)
        if w is not None:
            los = None if w.los_s == float("inf") else now + (self.clock.wall_time_of(w.los_s) - wall)
            return True, los, None
        nxt = self.contacts.next_aos(t_s)
        return False, None, None if nxt is None else now + (self.clock.wall_time_of(nxt.aos_s) - wall)

    def ready(self, nbytes: int, now: float) -> bool:
        """May a bulk packet of `nbytes` go to the link now?"""
        up, los, _ = self.link(now)
        if not up:
            return False
        backlog, air = self.backlog_s(now), self.airtime(nbytes)
        if backlog > 0 and backlog + air > self.queue_s:
            return False
        return los is None or now + backlog + air < los

    def sent(self, nbytes: int, now: float) -> None:
        self.busy_until = max(self.busy_until, now) + self.airtime(nbytes)

    def describe(self, now: float) -> str:
        up, los, aos = self.link(now)
        if up:
            return "link up" + (f", LOS in {los - now:.0f} s" if los is not None else "")
        return "link down" + (f", AOS in {aos - now:.0f} s" if aos is not None else ", no more contacts")


def settle(final: dict[int, dict], counters: list[int], since_failure_s: float | None, try_s: float) -> dict | None:
    """run_reliably's answer from the final reports heard so far (by counter), or None to wait on.
    A COMPLETED copy wins at once. Otherwise the earliest copy's final report (the one that
    executed first; later copies of a command that executed fail harmlessly), once every copy has
    reported or `try_s` of link-up time has passed since the first failure was heard: a copy lost
    on the uplink never reports, and must not keep the answer back for ever."""
    done = next((r for r in final.values() if r["kind"] == "COMPLETED"), None)
    if done is None and final and (len(final) == len(counters) or (since_failure_s or 0.0) >= try_s):
        done = final[min(final)]
    return done


class Commander:
    def __init__(self, scenario: Scenario, clock: ScenarioClock, run_dir: Path, key: bytes | None = None,
                 route: dict | None = None):
        """`route`: a constellation satellite's (payload_sim.constellation writes it into
        RUN/sat<ID>/launch.json): {"satellite_id", "uplinks": {station: endpoint}, "archive"}.
        Each command goes up through a station the satellite's radio has in view, and the reports
        are read from the shared archive, this satellite's only."""
        self.sc, self.clock, self.run_dir = scenario, clock, Path(run_dir)
        self.route = route
        # the pacer runs on time.monotonic() (its `now` below), like the flight's link timers
        self.pacer = UplinkPacer(scenario.link.uplink_rate_bps, make_contacts(scenario), clock,
                                 scenario.link.uplink_bulk_queue_s, self.run_dir / "channel.status.json",
                                 wall_of=wall_of_monotonic)
        self._file_sock: zmq.Socket | None = None
        self._senders: list[FileSender] = []  # file transfers still answering the flight
        self._space_seq = 0  # sequence count of our file-transfer space packets
        self.key = key if key is not None else load_mission_key(scenario.security, self.run_dir)
        self.archive: Path | str = route["archive"] if route else self.run_dir / "archive.sqlite"
        self.ctx = SecureContext(scenario.security, "commander", self.run_dir)
        endpoints = route["uplinks"] if route else {"": scenario.network.ground_in}
        self.uplinks = {name: self._push(url) for name, url in endpoints.items()}  # station -> its uplink
        self.sock = next(iter(self.uplinks.values()))
        self.sent: dict[int, bytes] = {}  # counter -> packet, for tools and tests (replays)
        self.sent_wall: dict[int, float] = {}  # counter -> wall time it was handed to the link (report lookups)

    def _push(self, endpoint: str) -> zmq.Socket:
        sock = self.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 2000)  # what is queued at close still goes out
        sock.setsockopt(zmq.SNDHWM, 10000)
        self.ctx.client(sock, "channel")
        sock.connect(endpoint)
        return sock

    def station_in_view(self) -> str:
        """A constellation satellite's uplink: the first station its radio has in view now (its
        RUN/sat<ID>/channel.status.json), else the first station (the pacer holds bulk data for AOS;
        a command sent out of view is lost and `run_reliably` sends it again)."""
        try:
            seen = json.loads((self.run_dir / "channel.status.json").read_text()).get("stations_in_view") or []
        except (OSError, ValueError):
            seen = []
        return next((n for n in seen if n in self.uplinks), next(iter(self.uplinks)))

    @staticmethod
    def from_run_dir(run_dir: Path, key: bytes | None = None) -> Commander:
        try:
            rec = json.loads((Path(run_dir) / "launch.json").read_text())
        except (OSError, ValueError) as exc:
            raise CommanderError(f"{run_dir}/launch.json unreadable ({exc}): is a run going there?") from None
        sc = load_scenario(rec["scenario"], rec["overrides"])
        clock = ScenarioClock(parse_epoch(sc.scenario.epoch), sc.scenario.clock_rate, rec["clock_start"])
        return Commander(sc, clock, Path(run_dir), key, rec.get("route"))

    def close(self) -> None:
        if self._file_sock is not None:
            self._file_sock.close(linger=0)
        for sock in self.uplinks.values():
            sock.close()
        self.ctx.term()

    # -- sending -----------------------------------------------------------------------------------

    def next_counter(self) -> int:
        """The next command counter, persisted under an exclusive lock."""
        path = self.run_dir / "commander.json"
        with open(path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            try:
                n = int(json.loads(f.read() or "{}").get("next_counter", 1))
            except ValueError:
                n = 1
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"next_counter": n + 1}))
            f.flush()
        return n

    def issued_s(self) -> int:
        return max(0, int(self.clock.now_s()))

    def _writable(self, timeout_s: float = 5.0) -> None:
        if not self.sock.poll(int(timeout_s * 1000), zmq.POLLOUT):
            raise CommanderError(f"uplink socket {self.sc.network.ground_in} not ready within {timeout_s} s")

    def send_raw(self, packet: bytes, timeout_s: float = 5.0) -> None:
        if self.route:
            self.sock = self.uplinks[self.station_in_view()]
        self._writable(timeout_s)
        self.sock.send(packet)
        self.pacer.sent(len(packet), time.monotonic())

    def send(self, name: str, ack_flags: int = DEFAULT_ACKS, **args) -> int:
        """Sign and send one command now; returns its counter. The counter and the issue time are
        taken when the packet is handed to the link, never earlier (the flight refuses a command
        issued more than security.command_time_window_s from its mission time)."""
        self._writable()
        counter = self.next_counter()
        packet = encode_command(self.key, counter, self.issued_s(), name, args, ack_flags)
        self.sent[counter] = packet
        self.sent_wall[counter] = time.time()
        self.send_raw(packet)
        return counter

    def wait_for_contact(self, deadline: float, bulk_bytes: int = 0) -> None:
        """Until the link is up (and, with `bulk_bytes`, until the pacer takes that much bulk);
        CommanderError at `deadline` (time.monotonic())."""
        while True:
            now = time.monotonic()
            if self.pacer.ready(bulk_bytes, now) if bulk_bytes else self.pacer.link(now)[0]:
                return
            if now >= deadline:
                raise CommanderError(f"uplink not available in time ({self.pacer.describe(now)})")
            time.sleep(0.02)

    def send_paced(self, name: str, deadline: float, ack_flags: int = DEFAULT_ACKS, **args) -> int:
        """Send a command as bulk data: held while the link is down or the uplink queue is full
        (UPLOAD_CHUNK of the command-based upload)."""
        size = len(encode_command(bytes(32), 0, 0, name, args, ack_flags))
        self.wait_for_contact(deadline, bulk_bytes=size)
        return self.send(name, ack_flags, **args)

    def run_reliably(self, name: str, timeout_s: float = 60.0, try_s: float | None = None, log=None, **args) -> dict:
        """Send a command when the link is up and wait for its final report; a command (or its
        report) not heard of within `try_s` of link-up time is sent again with a new counter. The
        first COMPLETED report of any copy wins. Else, once some copy has failed, no copy is sent
        again: the earliest copy's final report is the answer, after one more `try_s` of link-up
        time for a COMPLETED of an earlier copy still on its way (a copy lost on the uplink never
        reports; a repeat of a command that did execute fails harmlessly: "no such upload")."""
        log = log or (lambda _m: None)
        deadline = time.monotonic() + timeout_s
        try_s = try_s or max(6.0, 4 * self.pacer.queue_s + 3.0)
        counters: list[int] = []
        up_s, next_copy_s = 0.0, 0.0  # link-up time waited so far; when the next copy is due
        failed_s: float | None = None  # link-up time when the first failure was heard
        last = time.monotonic()
        while True:
            if failed_s is None and up_s >= next_copy_s:
                if counters:
                    log(f"{name}: no report for counter {counters[-1]} after {try_s:.0f} s of contact: sending it again")
                self.wait_for_contact(deadline)
                counters.append(self.send(name, **args))
                next_copy_s, last = up_s + try_s, time.monotonic()
            final = {r["counter"]: r for r in self.reports(since_wall=self.reports_since(counters)) if r["counter"] in counters
                     and r["report"] in FINAL}
            if final and failed_s is None:
                failed_s = up_s
            done = settle(final, counters, None if failed_s is None else up_s - failed_s, try_s)
            if done is not None:
                return done
            if time.monotonic() >= deadline:
                raise CommanderError(f"no final report for {name} (counters {counters}) within {timeout_s:.0f} s")
            self.service_files()
            time.sleep(0.1)
            now_m = time.monotonic()
            if self.pacer.link(now_m)[0]:  # only link-up time counts towards a re-send
                up_s += now_m - last
            last = now_m

    # -- reports -----------------------------------------------------------------------------------

    def reports_since(self, counters: list[int]) -> float | None:
        """Archive time from which reports of these commands are looked for: REPORT_LOOKBACK_S
        before the first was sent (None: one not sent by this commander, so every report)."""
        walls = [self.sent_wall.get(c) for c in counters]
        return None if not walls or None in walls else min(w for w in walls if w is not None) - REPORT_LOOKBACK_S

    def reports(self, counter: int | None = None, since_wall: float | None = None) -> list[dict]:
        """Verification reports archived so far (all, or one command's), oldest first; with
        `since_wall`, only those archived since (the products_arrival index: waiting for a report,
        ten times a second, read every product of the archive)."""
        route = getattr(self, "route", None)
        where, params = "kind = 'CommandReport'", []
        if since_wall is not None:
            where, params = where + " AND received_wall >= ?", [since_wall]
        if route:  # a constellation's shared archive (SQLite or PostgreSQL): this satellite's reports
            from ground_link.archive import Db

            try:
                db = Db(self.archive, read_only=True)
            except Exception:  # noqa: BLE001 (not created yet, or its server not up yet: no reports yet)
                return []
            try:
                rows = db.execute(f"SELECT fields FROM products WHERE {where} AND satellite_id = ? ORDER BY product_id",
                                  (*params, route["satellite_id"])).fetchall()
            except db.Error:
                rows = []
            finally:
                db.close()
            return Commander._decode_reports(rows, counter)
        if not Path(self.archive).exists():
            return []
        lite = sqlite3.connect(f"file:{self.archive}?mode=ro", uri=True, timeout=5)
        try:
            rows = lite.execute(f"SELECT fields FROM products WHERE {where} ORDER BY product_id", params).fetchall()
        except sqlite3.Error:
            rows = []
        finally:
            lite.close()
        return Commander._decode_reports(rows, counter)

    @staticmethod
    def _decode_reports(rows, counter: int | None) -> list[dict]:
        out = []
        for (fields,) in rows:
            r = json.loads(fields)
            if counter is None or r["counter"] == counter:
                # a report kind the dictionary does not know (a malformed or foreign report) is shown
                # by its number: it used to raise ValueError and hide every other report
                r["kind"] = (ReportKind(r["report"]).name if r["report"] in ReportKind._value2member_map_
                             else str(r["report"]))
                r["product"] = product_label(r["product_id"])  # epoch:n, as operators read product ids
                r["reason"] = Reason(r["code"]).name if r["code"] in Reason._value2member_map_ else str(r["code"])
                out.append(r)
        return out

    def wait(self, counter: int, timeout_s: float = 20.0, kinds=FINAL) -> dict:
        """The first report of the given kinds for this command (by default its final one)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for r in self.reports(counter, self.reports_since([counter])):
                if r["report"] in kinds:  # an IntEnum set: an unknown number is simply not in it
                    return r
            time.sleep(0.1)
        raise CommanderError(f"no {sorted(k.name for k in kinds)} report for command {counter} within {timeout_s} s")

    def run(self, name: str, timeout_s: float = 20.0, **args) -> dict:
        """Send and wait for the final report."""
        return self.wait(self.send(name, **args), timeout_s)

    # -- model upload: file transfer (CFDP) ---------------------------------------------------------

    def _file_replies(self, timeout_s: float = 10.0) -> zmq.Socket:
        """Our subscription to the CFDP replies the channel routes to the ground's file-transfer
        entity (`file_out` in RUN/channel.status.json, a PUB of the channel)."""
        if self._file_sock is None:
            deadline = time.monotonic() + timeout_s
            endpoint = None
            while endpoint is None:
                try:
                    endpoint = json.loads((self.run_dir / "channel.status.json").read_text()).get("file_out")
                except (OSError, ValueError):
                    endpoint = None
                if endpoint is None:
                    if time.monotonic() > deadline:
                        raise CommanderError(f"the link channel names no file_out endpoint in {self.run_dir}/channel.status.json")
                    time.sleep(0.1)
            sub = self.ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, 10000)
            self.ctx.client(sub, "channel")
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(endpoint)
            self._file_sock = sub
            time.sleep(0.3)  # the subscription (and its CURVE handshake) settles before the first PDU goes up
        return self._file_sock

    def service_files(self) -> None:
        """Feed downlink CFDP replies to the transfers still listening (a repeated Finished PDU
        gets its ACK again even after the transfer is over here)."""
        sock, senders = self._file_sock, self._senders
        if sock is None:
            return
        while sock.poll(0):
            packet = sock.recv()
            for sender in senders:
                sender.on_packet(packet)
        for sender in senders:
            while (nxt := sender.next_packet()) is not None:
                self._send_file_pdu(nxt[0])

    def _send_file_pdu(self, pdu: bytes) -> None:
        self._space_seq += 1
        self.send_raw(wrap(pdu, Apid.FILE_DATA, self._space_seq))

    def _check_live(self, doing: str) -> None:
        """CommanderError when the run has ended (the link channel stopped writing its status):
        sending on would only fill a socket nobody reads."""
        try:  # wall clock on purpose: a file's mtime is wall time
            age = time.time() - (self.run_dir / "channel.status.json").stat().st_mtime
        except OSError:
            return
        if age > 10.0:
            raise CommanderError(f"{doing}: the link channel stopped {age:.0f} s ago (the run ended?)")

    def put_file(self, data: bytes, name: str, timeout_s: float = 600.0, segment_bytes: int = SEGMENT_BYTES,
                 log=None, progress_every_s: float = 5.0) -> FileSender:
        """Send a file to the flight (CFDP, acknowledged mode) and return its finished FileSender.

        Paced by UplinkPacer: frozen over contact gaps (no PDU sent, no CFDP timer run), resumed
        at AOS; lost PDUs are asked for again by the flight (NAK) and re-sent selectively.
        CommanderError when the flight reports the file incomplete, or at `timeout_s`."""
        log = log or (lambda _m: None)
        if not data:  # nothing for the flight to check or keep (and no rate to report)
            raise CommanderError(f"file {name}: empty, nothing to send")
        if self.route:  # the constellation's radio does not route CFDP replies to the ground yet
            raise CommanderError("file transfer to a constellation satellite is not supported yet; "
                                 "upload with --chunks (the command-based upload)")
        link = self.sc.link
        timers = timers_for(link.uplink_rate_bps, link.downlink_rate_bps, link.delay_ms / 1e3, self.pacer.queue_s,
                            segment_bytes)
        sock = self._file_replies()
        state, sha = self.run_dir / "cfdp.json", hashlib.sha256(data).hexdigest()
        seq, resume = transaction_for(state, sha)
        sender = FileSender(data, name, seq, timers, segment_bytes, resume=resume)
        self._senders = [sender]
        t0 = time.monotonic()  # the transfer's time and the pacer's `now`: link time, immune to wall clock steps
        deadline = t0 + timeout_s
        next_log = t0
        was_up: bool | None = None
        log(f"file {name}: {len(data)} bytes to send as CFDP transaction {seq}"
            f"{' (resumed: the flight asks for what it lacks)' if resume else ''}, {segment_bytes}-byte segments, "
            f"ideal {len(data) * 8 / link.uplink_rate_bps:.1f} s at {link.uplink_rate_bps:.0f} bit/s; {self.pacer.describe(t0)}")
        while not sender.done:
            if time.monotonic() > deadline:
                raise CommanderError(f"file {name}: not delivered within {timeout_s:.0f} s ({sender.describe()}, "
                                     f"{sender.progress}/{len(data)} bytes sent)")
            if time.monotonic() >= next_log:
                self._check_live(f"file {name}: {sender.progress}/{len(data)} bytes sent")
            while sock.poll(0):
                sender.on_packet(sock.recv())
            now = time.monotonic()
            up = self.pacer.link(now)[0]
            if up != was_up:  # say so at once: holding over a gap, resuming at AOS
                if was_up is not None:
                    next_log = time.monotonic()
                was_up = up
            while up:  # over a gap the transaction is frozen: nothing sent, no timer run
                sender.pump(want_data=self.pacer.ready(segment_bytes + 40, time.monotonic()))
                sent = 0
                while (size := sender.next_size()) and self.pacer.ready(size, time.monotonic()):
                    nxt = sender.next_packet()
                    if nxt is not None:
                        self._send_file_pdu(nxt[0])
                        sent += 1
                if not sent:
                    break
            if time.monotonic() >= next_log:
                next_log = time.monotonic() + progress_every_s
                c = sender.counts
                log(f"file {name}: {sender.progress}/{len(data)} bytes sent ({100 * sender.progress / max(1, len(data)):.0f} %), "
                    f"{c['resent_bytes']} re-sent after {c['naks_in']} NAKs, {sender.step}, {time.monotonic() - t0:.0f} s; "
                    f"{self.pacer.describe(now)}")
            sock.poll(5 if up else 50)
        took = time.monotonic() - t0
        sender.took_s = took
        transaction_over(state, sha)
        if not sender.ok:
            raise CommanderError(f"file {name}: {sender.describe()}"
                                 + (" (a resumed transaction; sending again starts a new one)" if resume else ""))
        c = sender.counts
        log(f"file {name}: delivered in {took:.1f} s ({len(data) * 8 / max(took, 1e-6) / 1e3:.1f} kbit/s of file data; ideal "
            f"{len(data) * 8 / link.uplink_rate_bps:.1f} s), {c['pdus_out']} PDUs up, {c['resent_bytes']} bytes re-sent "
            f"after {c['naks_in']} NAKs")
        return sender

    def upload_model(self, bundle: bytes, model: str | None = None, activate: bool = True, timeout_s: float = 600.0,
                     segment_bytes: int = SEGMENT_BYTES, log=None) -> dict:
        """Upload a model bundle by file transfer, then activate it with the authenticated
        UPLOAD_ACTIVATE_FILE command naming its SHA-256 (the flight verifies hash, card and golden
        vectors before anything changes). Returns the activation report (or, without activation,
        a transfer record), with the transfer's figures under "transfer"."""
        log = log or (lambda _m: None)
        t0 = time.monotonic()
        sha = hashlib.sha256(bundle).digest()
        name = model or bundle_name(bundle)
        try:
            sender = self.put_file(bundle, f"{sha.hex()[:32]}.mdlpkg", timeout_s, segment_bytes, log)
        except CommanderError as exc:
            if "resumed transaction" not in str(exc):
                raise
            log(f"{exc}: sending it again as a new transaction")
            sender = self.put_file(bundle, f"{sha.hex()[:32]}.mdlpkg", max(30.0, timeout_s - (time.monotonic() - t0)),
                                   segment_bytes, log)
        ideal = len(bundle) * 8 / self.sc.link.uplink_rate_bps
        figures = {"bytes": len(bundle), "seconds": round(sender.took_s, 2), "ideal_s": round(ideal, 2),
                   "ratio": round(sender.took_s / max(ideal, 1e-9), 2), "sha256": sha.hex(), "seq": sender.seq} | {
                       k: sender.counts[k] for k in ("pdus_out", "file_data_out", "resent_bytes", "naks_in", "prompts")}
        if not activate:
            return {"kind": "COMPLETED", "message": f"{name} bundle on board, not activated", "transfer": figures}
        left = max(30.0, timeout_s - (time.monotonic() - t0))
        rep = self.run_reliably("UPLOAD_ACTIVATE_FILE", left, log=log, model=name, sha256=sha)
        return rep | {"transfer": figures}

    def upload_contact_plan(self, plan: bytes, timeout_s: float = 300.0, log=None) -> dict:
        """Send a contact plan (flight/contacts.py: JSON, UTC windows) by file transfer and make the
        flight use it with the authenticated LOAD_CONTACT_PLAN (it checks the whole plan first; a
        bad one is refused and the plan in use stays)."""
        t0 = time.monotonic()
        sha = hashlib.sha256(plan).digest()
        self.put_file(plan, f"{sha.hex()[:32]}.plan.json", timeout_s, log=log)
        left = max(30.0, timeout_s - (time.monotonic() - t0))
        return self.run_reliably("LOAD_CONTACT_PLAN", left, log=log, sha256=sha)

    # -- model upload: the command-based protocol (UPLOAD_BEGIN / CHUNK / STATUS / ACTIVATE) ------------

    def upload(self, bundle: bytes, chunk_bytes: int = 512, rounds: int = 6, timeout_s: float = 30.0,
               model: str | None = None, activate: bool = True, chunk_gap_s: float = 0.0, log=None,
               deadline_s: float = 600.0) -> dict:
        """Upload a model bundle as telecommands: begin (or resume), send the chunks the flight
        lacks, ask again, until it holds all of them; then activate. Chunks are paced like bulk
        data (UplinkPacer: held over a gap, never more than link.uplink_bulk_queue_s queued), each
        stamped when it goes. `timeout_s`: per report; `deadline_s`: the whole upload. Returns the
        final activation report (or the status report when activate is False). File transfer
        (`upload_model`) is the default for operators; this stays for flights without it."""
        log = log or (lambda _m: None)
        deadline = time.monotonic() + deadline_s
        sha = hashlib.sha256(bundle).digest()
        uid = upload_id_of(sha)
        name = model or bundle_name(bundle)
        r = self.run_reliably("UPLOAD_BEGIN", timeout_s, model=name, size_bytes=len(bundle), chunk_bytes=chunk_bytes, sha256=sha)
        if r["kind"] != "COMPLETED":
            raise CommanderError(f"UPLOAD_BEGIN: {r['kind']} {r['message']}")
        chunks = -(-len(bundle) // chunk_bytes)
        missing = list(range(chunks))
        if not r["message"].startswith(f"upload {uid:08x}: 0/"):
            missing = self.missing(uid, timeout_s)  # resuming: ask what is there
        for k in range(rounds):
            log(f"upload {uid:08x}: round {k + 1}, sending {len(missing)} of {chunks} chunks")
            for i in missing:
                self.send_paced("UPLOAD_CHUNK", deadline, ack_flags=0, upload_id=uid, index=i,
                                data=bundle[i * chunk_bytes : (i + 1) * chunk_bytes])
                if chunk_gap_s:
                    time.sleep(chunk_gap_s)
            missing = self.missing(uid, timeout_s)
            if not missing:
                break
        else:
            raise CommanderError(f"upload {uid:08x}: {len(missing)} chunks still missing after {rounds} rounds")
        if not activate:
            return {"upload_id": uid, "chunks": chunks}
        return self.run_reliably("UPLOAD_ACTIVATE", timeout_s, upload_id=uid)

    def missing(self, upload_id: int, timeout_s: float = 30.0) -> list[int]:
        r = self.run_reliably("UPLOAD_STATUS", timeout_s, upload_id=upload_id)
        if r["kind"] != "COMPLETED":
            raise CommanderError(f"UPLOAD_STATUS: {r['kind']} {r['message']}")
        return parse_ranges(r["message"].rsplit("missing=", 1)[1])


# --- command line -------------------------------------------------------------------------------------

LIVE_STATUS_S = 10.0  # the link channel rewrites its status every 0.25 s while it runs


def command_def(name: str) -> CommandDef:
    """The dictionary command of a name typed in any case."""
    cdef = COMMANDS.get(name.upper())
    if cdef is None:
        raise CommanderError(f"unknown command {name!r}; known: {', '.join(COMMANDS)}")
    return cdef


def parse_args_for(name: str, items: list[str]) -> dict:
    """k=v pairs typed by the dictionary (names for params and modes, any case; hex for bytes)."""
    cdef = command_def(name)
    name = cdef.name
    codes = {a.name: a.code for a in cdef.args} | ({cdef.tail: "tail"} if cdef.tail else {})
    takes = " ".join(f"{a}=" for a in codes) or "no arguments"
    out: dict = {}
    for item in items:
        k, sep, v = item.partition("=")
        k = k.strip().lower()
        if not sep:
            raise CommanderError(f"{item!r} is not KEY=VALUE; {name} takes {takes}")
        if k not in codes:
            raise CommanderError(f"{name} has no argument {k!r}; it takes {takes}")
        if k in out:
            raise CommanderError(f"{name}: {k}= given twice")
        code = codes[k]
        try:
            if name == "SET_PARAM" and k == "param":
                out[k] = _param_id(v)
            elif name == "SET_MODE" and k == "mode":
                out[k] = _mode(v)
            elif code == "16s":
                out[k] = v.strip().lower()  # model names are lower case
            elif code in ("32s", "tail"):
                out[k] = bytes.fromhex(v.removeprefix("0x"))
            elif code == "d":
                out[k] = float(v)
            else:
                out[k] = int(v, 0)
                top = 2 ** (8 * struct.calcsize(code)) - 1
                if not 0 <= out[k] <= top:
                    raise CommanderError(f"{name}: {k}={v} is outside 0..{top}")
        except ValueError:
            kind = {"d": "a number", "16s": "a name"}.get(code, "hex bytes" if code in ("32s", "tail") else
                                                             "a whole number (decimal or 0x hex)")
            raise CommanderError(f"{name}: {k}={v!r} is not {kind}") from None
    missing = [a for a in codes if a not in out]
    if missing:
        raise CommanderError(f"{name} needs {' '.join(f'{a}=' for a in missing)} (it takes {takes})")
    try:  # the flight's own checks (ranges, sizes), before anything is sent
        encode_command(bytes(32), 1, 0, name, out)
    except CommandError as exc:
        raise CommanderError(f"{name}: {exc.reason.removeprefix(name + ': ')}") from None
    return out


def _param_id(v: str) -> int:
    p = PARAMS_BY_NAME.get(v.strip().lower())
    if p is None:
        try:
            n = int(v, 0)
        except ValueError:
            n = None
        if n not in PARAMS:
            raise CommanderError(f"unknown parameter {v!r}; known: {', '.join(PARAMS_BY_NAME)}")
        return n
    return p.id


def _mode(v: str) -> int:
    if v.strip().upper() in Mode.__members__:
        return int(Mode[v.strip().upper()])
    try:
        return int(Mode(int(v, 0)))
    except ValueError:
        raise CommanderError(f"unknown mode {v!r}; known: {', '.join(Mode.__members__)}") from None


def check_run_dir(run_dir: Path | None, cmd: str, live: bool) -> None:
    """A clear refusal when the folder is not a run folder, or (live) when no run is going there."""
    if run_dir is None:
        raise CommanderError(f"{cmd} needs --run-dir RUN (the run folder the launcher writes)")
    if not run_dir.is_dir():
        raise CommanderError(f"no run folder at {run_dir}")
    launch = run_dir / "launch.json"
    if not launch.is_file():
        raise CommanderError(f"{run_dir} is not a run folder (no launch.json; python -m payload_sim.hil SCENARIO "
                             f"--run-dir {run_dir} starts one)")
    if not live:
        return
    summary = run_dir / "summary.json"
    if summary.is_file() and summary.stat().st_mtime >= launch.stat().st_mtime:
        raise CommanderError(f"no live run in {run_dir}: the run ended at "
                             f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(summary.stat().st_mtime))} "
                             "(summary.json); start a new one to command it")
    status = run_dir / "channel.status.json"
    age = time.time() - status.stat().st_mtime if status.is_file() else None  # wall clock: mtimes are wall time
    if age is None or age > LIVE_STATUS_S:
        said = "never wrote its status" if age is None else f"last wrote its status {age:.0f} s ago"
        raise CommanderError(f"no live run in {run_dir}: the link channel {said} (is the launcher running?)")


def main(argv: list[str] | None = None) -> int:
    from ground_link.query import CliParser  # one-line errors, as every operator tool

    ap = CliParser(prog="python -m ground_link.commander", description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, default=None, help="the run folder (launch.json, archive)")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for a final report")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="{list,send,upload,contact-plan,reports,pack-model}")
    sub.add_parser("list", help="the commands of the dictionary")
    s = sub.add_parser("send", help="send one command and wait for its final report")
    s.add_argument("name", help="command name (any case); `list` shows them")
    s.add_argument("args", nargs="*", metavar="KEY=VALUE")
    s.add_argument("--no-wait", action="store_true")
    u = sub.add_parser("upload", help="upload a model (card path or bundle) and activate it")
    u.add_argument("model", type=Path, help="<name>.card.json (bundled with its ONNX and golden vectors) or a bundle")
    u.add_argument("--timeout-s", type=float, default=900.0,
                   help="give up after this many wall seconds for the whole upload and activation (default 900)")
    u.add_argument("--segment-bytes", type=int, default=SEGMENT_BYTES,
                   help=f"file data per CFDP PDU, 64..1024 (default {SEGMENT_BYTES})")
    u.add_argument("--chunks", action="store_true",
                   help="use the command-based upload (UPLOAD_BEGIN/CHUNK/STATUS/ACTIVATE) instead of file transfer")
    u.add_argument("--chunk-bytes", type=int, default=512, help="chunk size of --chunks")
    u.add_argument("--no-activate", action="store_true")
    cp = sub.add_parser("contact-plan", help="send the flight a contact plan (nothing is sent outside its windows)")
    cp.add_argument("plan", type=Path, nargs="?", default=None,
                    help='a plan file ({"windows": [{"station", "aos", "los"}, ...]}, UTC); default: the '
                         "run's own passes (its scenario's schedule or sgp4 contacts)")
    cp.add_argument("--timeout-s", type=float, default=300.0, help="give up after this many wall seconds (default 300)")
    r = sub.add_parser("reports", help="verification reports in the archive")
    r.add_argument("--counter", type=int, default=None)
    pk = sub.add_parser("pack-model", help="write the upload bundle of a model")
    pk.add_argument("card", type=Path)
    pk.add_argument("out", type=Path)
    a = ap.parse_args(argv)
    try:
        return _run(a)
    except BrokenPipeError:  # `| head` closed the pipe: not an error (stdout pointed away so exit is quiet)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (CommanderError, CommandError, ModelError, ModelUpdateError, OSError, ValueError, zmq.ZMQError) as exc:
        print(f"commander: {_reason(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("commander: interrupted", file=sys.stderr)
        return 130


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _run(a: argparse.Namespace) -> int:
    if a.cmd == "list":
        for c in COMMANDS.values():
            args = " ".join(f"{x.name}:{x.code}" + (f"[{x.lo:g}..{x.hi:g}]" if x.lo is not None else "") for x in c.args)
            print(f"{c.opcode:3d} {c.name:20s} {args}{' ' + c.tail + ':bytes' if c.tail else ''}  -- {c.description}")
        return 0
    if a.cmd == "pack-model":
        data = pack_bundle(a.card)
        a.out.write_bytes(data)
        print(f"{a.out}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
        return 0
    if not a.timeout > 0:  # also NaN, which `<= 0` let through: the command went, then no wait at all
        raise CommanderError(f"--timeout {a.timeout:g}: must be > 0 seconds")
    name, cmd_args = "", {}
    if a.cmd == "send":  # the command first: it needs no run to be checked
        name = command_def(a.name).name
        cmd_args = parse_args_for(name, a.args)
    elif a.cmd == "upload" and not a.model.is_file():
        raise CommanderError(f"no model file at {a.model}")
    elif a.cmd == "contact-plan" and a.plan is not None and not a.plan.is_file():
        raise CommanderError(f"no contact plan file at {a.plan}")
    check_run_dir(a.run_dir, a.cmd, live=a.cmd in ("send", "upload", "contact-plan"))
    if a.cmd == "reports":  # reads the archive only: no key, no link
        route = json.loads((a.run_dir / "launch.json").read_text()).get("route")  # a constellation satellite's
        archive = route["archive"] if route else a.run_dir / "archive.sqlite"
        if not route and not archive.exists():
            print(f"commander: no archive in {a.run_dir} yet", file=sys.stderr)
        for rep in Commander.reports(SimpleNamespace(archive=archive, route=route), a.counter):  # type: ignore[arg-type]
            print(json.dumps(rep))
        return 0
    cmd = Commander.from_run_dir(a.run_dir)
    try:
        if a.cmd == "send":
            counter = cmd.send(name, **cmd_args)
            print(f"sent {name} counter {counter}", file=sys.stderr)
            if a.no_wait:
                return 0
            rep = cmd.wait(counter, a.timeout)
        elif a.cmd == "contact-plan":
            if a.plan is not None:
                plan = a.plan.read_bytes()
            else:  # the run's own passes, as the launcher preloaded them
                from payload_sim.ops_support import contact_plan_bytes

                plan = contact_plan_bytes(cmd.sc)
                if plan is None:
                    raise CommanderError("this run's link is always up (link.contacts = \"always\"): no plan to "
                                         "send; give a plan file")
            rep = cmd.upload_contact_plan(plan, a.timeout_s, log=lambda m: print(m, file=sys.stderr))
        else:
            data = a.model.read_bytes() if not a.model.name.endswith(".card.json") else pack_bundle(a.model)
            say = lambda m: print(m, file=sys.stderr)  # noqa: E731
            if not a.timeout_s > 0 or not 64 <= a.segment_bytes <= 1024:  # NaN too
                raise CommanderError("--timeout-s must be > 0 and --segment-bytes in 64..1024")
            if a.chunks:
                rep = cmd.upload(data, a.chunk_bytes, timeout_s=a.timeout, activate=not a.no_activate, log=say,
                                 deadline_s=a.timeout_s)
            else:
                rep = cmd.upload_model(data, activate=not a.no_activate, timeout_s=a.timeout_s,
                                       segment_bytes=a.segment_bytes, log=say)
        print(json.dumps(rep))
        return 0 if rep.get("kind", "COMPLETED") == "COMPLETED" else 1
    finally:
        cmd.close()


if __name__ == "__main__":
    sys.exit(main())
