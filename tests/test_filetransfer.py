"""File transfer (CFDP class 2 with cfdp-py, flight/filetransfer.py) through a simulated lossy link,
in process: what cfdp-py does on its own with lost, late, repeated and corrupted PDUs, and the
repairs around it; and the commander's uplink pacing (ground_link/commander.py UplinkPacer)."""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

import pytest
import zmq
from spacepackets.cfdp import PduType
from spacepackets.cfdp.pdu import DirectiveType

from flight.dictionary import Apid
from flight.filetransfer import (
    ConfinedFilestore,
    FileReceiver,
    FileSender,
    Timers,
    parse_pdu,
    unwrap,
    wrap,
)

FAST = Timers(ack_s=0.3, nak_s=0.3, prompt_s=0.6, ack_limit=50)


def directive_of(packet: bytes, apid: int):
    pdu = parse_pdu(unwrap(packet, apid))
    return None if pdu.pdu_type == PduType.FILE_DATA else DirectiveType(pdu.directive_type).name


class Link:
    """Two queues with a delay, a rate, independent loss each way, a contact gap (wall seconds
    from the start) and hooks to drop, repeat or alter chosen packets."""

    def __init__(self, loss_up=0.0, loss_down=0.0, gap=None, rate_Bps=400_000.0, seed=1, drop=None, alter=None,
                 repeat=False):
        self.rng, self.t0 = random.Random(seed), time.time()
        self.loss = {"up": loss_up, "down": loss_down}
        self.gap, self.rate, self.drop, self.alter, self.repeat = gap, rate_Bps, drop, alter, repeat
        self.q = {"up": [], "down": []}
        self.free_at = {"up": 0.0, "down": 0.0}
        self.seq = 0
        self.sent = {"up": 0, "down": 0}

    def up_now(self, now=None) -> bool:
        t = (now or time.time()) - self.t0
        return self.gap is None or not self.gap[0] <= t < self.gap[1]

    def put(self, way: str, packet: bytes) -> None:
        now = time.time()
        self.sent[way] += 1
        self.free_at[way] = max(now, self.free_at[way]) + len(packet) / self.rate
        self.q[way].append((self.free_at[way] + 0.002, packet))

    def backlog(self, way: str) -> float:
        return max(0.0, self.free_at[way] - time.time())

    def deliver(self, way: str, to) -> None:
        now, keep = time.time(), []
        for at, p in self.q[way]:
            if at > now:
                keep.append((at, p))
                continue
            if not self.up_now(at) or self.rng.random() < self.loss[way] or (self.drop and self.drop(way, p)):
                continue
            if self.alter:
                p = self.alter(way, p)
            for _ in range(2 if self.repeat else 1):
                to(p)
        self.q[way] = keep


def transfer(tmp_path: Path, data: bytes, link: Link, seq: int = 7, receiver: FileReceiver | None = None,
             max_bytes: int = 10**7, timeout_s: float = 30.0, swap_receiver_at: float | None = None,
             sender: FileSender | None = None, stop_at: float | None = None):
    """Run one transfer to the end (sender done and receiver idle, or the timeout)."""
    down_seq = [0]

    def reply(pdu: bytes) -> None:
        down_seq[0] += 1
        link.put("down", wrap(pdu, Apid.FILE_REPLY, down_seq[0]))

    rx = receiver or FileReceiver(tmp_path / "files", max_bytes, FAST, reply, scenario_now=time.time, inactivity_s=60)
    rx.send = reply
    tx = sender or FileSender(data, "bundle.mdlpkg", seq, FAST, segment_bytes=256)
    up_seq, last_tick, swapped = 0, 0.0, False
    t_end = time.time() + timeout_s
    while time.time() < t_end:
        now = time.time()
        if link.up_now():  # the ground freezes the transaction over a gap
            tx.pump(want_data=link.backlog("up") < 0.01)
            while (n := tx.next_packet()) is not None:
                up_seq += 1
                link.put("up", wrap(n[0], Apid.FILE_DATA, up_seq))
                if link.backlog("up") > 0.01:
                    break
        link.deliver("up", rx.on_packet)
        link.deliver("down", tx.on_packet)
        if now - last_tick > 0.05:
            rx.tick()
            last_tick = now
        if swap_receiver_at is not None and not swapped and tx.progress >= swap_receiver_at * len(data):
            swapped = True  # the flight restarts: a new receiver on the same folder
            rx = FileReceiver(tmp_path / "files", max_bytes, FAST, reply, scenario_now=time.time, inactivity_s=60)
        if tx.done and not rx.busy and not link.q["up"] and not link.q["down"]:
            break
        if stop_at is not None and tx.progress >= stop_at * len(data):
            break  # the ground stops here (a commander killed)
        time.sleep(0.0005)
    return tx, rx


def received(rx: FileReceiver, data: bytes) -> bool:
    path = rx.received_file(hashlib.sha256(data).hexdigest())
    return path is not None and path.read_bytes() == data


@pytest.mark.parametrize("loss", [0.1, 0.3])
def test_a_file_arrives_whole_through_loss_both_ways_and_only_what_was_lost_is_sent_again(tmp_path, loss):
    data = random.Random(2).randbytes(60_000)
    tx, rx = transfer(tmp_path, data, Link(loss_up=loss, loss_down=loss, seed=3))
    assert tx.ok and received(rx, data) and not rx.busy, (tx.describe(), tx.counts, rx.counts)
    # selective repeat: the bytes sent again are about what the loss took (first sends and repeats)
    assert tx.counts["resent_bytes"] < 2.5 * loss / (1 - loss) * len(data) + 2000, tx.counts
    assert rx.events[-1][0] == "FILE_RECEIVED" and rx.counts["files_received"] == 1


def test_a_contact_gap_freezes_the_transfer_and_it_resumes_after(tmp_path):
    data = random.Random(4).randbytes(80_000)
    link = Link(loss_up=0.1, gap=(0.15, 0.9), rate_Bps=100_000.0, seed=5)  # 0.8 s of airtime, a 0.75 s gap in it
    tx, rx = transfer(tmp_path, data, link)
    assert tx.ok and received(rx, data), (tx.describe(), tx.counts)
    assert time.time() - link.t0 > 0.9 and link.sent["up"] > 100  # it went on after the gap


def test_a_lost_ack_of_the_finished_pdu_is_recovered(tmp_path):
    """cfdp-py's source is idle once it sent the ACK of Finished: a repeated Finished raised there,
    and the flight kept re-sending it. The ground answers it again; the flight ends idle."""
    lost = []

    def drop(way, p):
        if way == "up" and directive_of(p, Apid.FILE_DATA) == "ACK_PDU" and len(lost) < 3:
            lost.append(p)
            return True
        return False

    finished = []
    data = random.Random(6).randbytes(20_000)
    link = Link(drop=drop, alter=lambda way, p: (finished.append(p) if way == "down" and directive_of(p, Apid.FILE_REPLY)
                                                 == "FINISHED_PDU" else None) or p)
    tx, rx = transfer(tmp_path, data, link)
    assert tx.ok and received(rx, data) and len(lost) == 3
    assert len(finished) >= 4 and not rx.busy  # Finished again each time its ACK was lost, then heard


def test_a_finished_pdu_whose_eof_ack_was_lost_still_completes(tmp_path):
    """Every ACK of EOF is lost: the Finished PDU proves the EOF arrived (cfdp-py alone dropped
    the Finished while waiting for that ACK, then cancelled at the positive-ACK limit)."""
    data = random.Random(7).randbytes(20_000)
    link = Link(drop=lambda way, p: way == "down" and directive_of(p, Apid.FILE_REPLY) == "ACK_PDU")
    tx, rx = transfer(tmp_path, data, link)
    assert tx.ok and received(rx, data) and not rx.busy, tx.describe()


def test_repeated_and_late_pdus_change_nothing(tmp_path):
    """Every packet twice; then a second transaction, during which File Data and EOF PDUs of the
    first arrive late: cfdp-py alone would write the late data into the second file (it does not
    check the transaction once busy). The late EOF is acknowledged again, with its Finished."""
    first = random.Random(8).randbytes(30_000)
    late: list[bytes] = []
    link = Link(repeat=True, alter=lambda way, p: (late.append(p) if way == "up" else None) or p)
    tx, rx = transfer(tmp_path, first, link, seq=1)
    assert tx.ok and received(rx, first) and rx.counts["pdus_late"] > 0
    second = random.Random(9).randbytes(30_000)
    old = [p for p in late if directive_of(p, Apid.FILE_DATA) is None][::5]
    old += [p for p in late if directive_of(p, Apid.FILE_DATA) == "EOF_PDU"]
    replies: list[bytes] = []
    injected = iter(old)

    def alter(way, p):
        if way == "up" and (x := next(injected, None)) is not None:
            rx.on_packet(x)  # a late PDU of transaction 1 just before each of transaction 2's first ones
        if way == "down":
            replies.append(p)
        return p

    tx2, rx = transfer(tmp_path, second, Link(alter=alter, seed=2), seq=2, receiver=rx)
    assert tx2.ok and received(rx, second) and received(rx, first) and next(injected, None) is None, tx2.describe()
    answers = [parse_pdu(unwrap(p, Apid.FILE_REPLY)) for p in replies]
    assert any(int(a.transaction_seq_num.value) == 1 and a.directive_type == DirectiveType.FINISHED_PDU for a in answers)


def test_a_flight_restart_mid_transfer_resumes_where_it_was(tmp_path):
    """cfdp-py keeps the receiving state in memory and truncates the file when the Metadata PDU
    comes again (measured: a restarted flight asked for the whole file again). The receiver's
    open-transaction record rebuilds that state from what is on disk: only the rest is sent."""
    data = random.Random(10).randbytes(50_000)
    tx, rx = transfer(tmp_path, data, Link(loss_up=0.1, seed=11), swap_receiver_at=0.5)
    assert tx.ok and received(rx, data), (tx.describe(), tx.counts)
    assert rx.counts["resumed"] == 1 and tx.counts["resent_bytes"] < 0.25 * len(data), tx.counts
    assert not list((tmp_path / "files" / "open").iterdir())  # nothing left open


def test_a_commander_restart_resumes_the_same_transaction(tmp_path):
    """A second commander sending the same file takes the same transaction (transaction_for) and
    jumps to EOF: the flight's NAK says what it lacks, and only that goes up."""
    from flight.filetransfer import transaction_for, transaction_over

    state = tmp_path / "cfdp.json"
    data = random.Random(16).randbytes(60_000)
    sha = hashlib.sha256(data).hexdigest()
    seq, resumed = transaction_for(state, sha)
    assert not resumed
    first = FileSender(data, "bundle.mdlpkg", seq, FAST, segment_bytes=256)
    _, rx = transfer(tmp_path, data, Link(seed=17), seq=seq, sender=first, stop_at=0.5)  # stopped half way
    assert not first.done and 0 < first.progress < len(data)
    again, resumed = transaction_for(state, sha)
    assert (again, resumed) == (seq, True)
    second = FileSender(data, "bundle.mdlpkg", seq, FAST, segment_bytes=256, resume=True)
    tx, rx = transfer(tmp_path, data, Link(seed=18), seq=seq, sender=second, receiver=rx)
    assert tx.ok and received(rx, data)
    assert tx.counts["file_data_out"] * 256 < len(data) - first.progress + 0.2 * len(data)  # about the rest only
    transaction_over(state, sha)
    later, resumed = transaction_for(state, sha)
    assert later > seq and not resumed
    # the same file again after the flight has it: the resumed EOF gets Finished at once
    third = FileSender(data, "bundle.mdlpkg", seq, FAST, segment_bytes=256, resume=True)
    tx, rx = transfer(tmp_path, data, Link(seed=19), seq=seq, sender=third, receiver=rx)
    assert tx.ok and tx.counts["file_data_out"] == 0


def test_names_from_the_link_are_confined_and_a_file_too_big_is_refused(tmp_path):
    fs = ConfinedFilestore(tmp_path / "in", 1000)
    for name in ("../../etc/passwd", "/abs/x.bin", "a/b/../../..", "..", "ok-name_1.bin"):
        assert fs.local(Path(name)).parent == tmp_path / "in"
    data = random.Random(12).randbytes(20_000)
    tx, rx = transfer(tmp_path, data, Link(), max_bytes=10_000)
    assert tx.done and not tx.ok and "FILESTORE_REJECTION" in tx.describe()
    assert tx.progress < len(data)  # the flight's early Finished stopped the sending
    assert not list((tmp_path / "files" / "received").iterdir()) and rx.events[-1][0] == "FILE_TRANSFER_FAILED"


def test_corrupted_pdus_are_refused_by_their_crc(tmp_path):
    rng = random.Random(13)
    flipped = []

    def alter(way, p):
        if rng.random() < 0.1:
            b = bytearray(p)
            b[rng.randrange(6, len(b))] ^= 1 << rng.randrange(8)
            flipped.append(way)
            return bytes(b)
        return p

    data = random.Random(14).randbytes(30_000)
    tx, rx = transfer(tmp_path, data, Link(alter=alter))
    assert tx.ok and received(rx, data) and len(flipped) > 5
    assert rx.counts["pdus_rejected"] + tx.counts["pdus_rejected"] >= len(flipped) - 1


def test_a_lost_metadata_pdu_costs_little(tmp_path):
    """Both copies of the Metadata PDU lost: cfdp-py NAKs the whole file so far on every File Data
    PDU until it comes; the flight passes one per NAK interval, so little is sent twice."""
    gone = []

    def drop(way, p):
        if way == "up" and directive_of(p, Apid.FILE_DATA) == "METADATA_PDU" and len(gone) < 2:
            gone.append(p)
            return True
        return False

    data = random.Random(15).randbytes(60_000)
    tx, rx = transfer(tmp_path, data, Link(drop=drop, rate_Bps=200_000.0))
    assert tx.ok and received(rx, data) and len(gone) == 2
    assert tx.counts["resent_bytes"] < 0.5 * len(data), tx.counts


def test_junk_on_the_file_apid_is_counted_not_fatal(tmp_path):
    rx = FileReceiver(tmp_path, 10**6, FAST, lambda _p: None, scenario_now=time.time)
    for junk in (b"", b"\x01", wrap(b"\x00" * 20, Apid.FILE_DATA, 1), wrap(b"\xff" * 40, Apid.FILE_DATA, 2),
                 wrap(b"x", Apid.COMMAND, 3)[:8], bytes(range(256))):
        rx.on_packet(junk)
    assert rx.counts["pdus_rejected"] == 6 and not rx.busy


# --- the commander's uplink pacing ---------------------------------------------------------------------


def pacer(tmp_path, schedule=None, now_s=0.0, rate=8000.0, queue_s=1.0):
    from flight.clock import ScenarioClock, parse_epoch
    from flight.config import load_scenario
    from ground_link.commander import UplinkPacer
    from ground_link.linkmodel import make_contacts

    over = [] if schedule is None else ['link.contacts="schedule"', f"link.schedule={json.dumps(schedule)}"]
    sc = load_scenario(None, over)
    clock = ScenarioClock(parse_epoch(sc.scenario.epoch), 1.0, time.time() - now_s)
    return UplinkPacer(rate, make_contacts(sc), clock, queue_s, tmp_path / "channel.status.json"), clock


def test_the_pacer_keeps_at_most_queue_s_of_airtime_queued(tmp_path):
    p, _ = pacer(tmp_path)  # 100 bytes = 0.1 s at 8 kbit/s; at most 1 s queued
    now = time.time()
    n = 0
    while p.ready(100, now):
        p.sent(100, now)
        n += 1
    assert n == 10 and not p.ready(100, now + 0.05) and p.ready(100, now + 0.15)
    assert p.ready(5000, now + 1.1)  # a packet longer than the budget still goes once the queue is empty


def test_the_pacer_holds_bulk_over_a_gap_and_before_los(tmp_path):
    p, clock = pacer(tmp_path, [[0.0, 10.0], [20.0, 1e6]], now_s=9.5)
    now = time.time()
    assert p.ready(100, now)  # 0.1 s of airtime, LOS in 0.5 s
    assert not p.ready(1000, now)  # 1 s of airtime would still be on the air at LOS
    assert not p.ready(10, now + 1.0) and "AOS in" in p.describe(now + 1.0)
    assert p.ready(1000, clock.wall_time_of(20.01))


def test_the_pacer_counts_what_the_channel_has_queued(tmp_path):
    p, clock = pacer(tmp_path)
    (tmp_path / "channel.status.json").write_text(json.dumps({"up_backlog_s": 3.0, "scenario_s": clock.now_s()}))
    now = time.time()
    assert not p.ready(100, now)  # the station's acks fill the transmitter: wait
    p._status_read = 0.0
    (tmp_path / "channel.status.json").write_text(json.dumps({"up_backlog_s": 3.0, "scenario_s": clock.now_s() - 2.5}))
    assert p.ready(100, time.time())  # written 2.5 s ago: 0.5 s of it left


def test_a_held_command_is_stamped_when_it_goes_not_when_it_was_asked_for(tmp_path):
    from flight.clock import ScenarioClock, parse_epoch
    from flight.commands import parse_command
    from flight.config import load_scenario
    from ground_link.commander import Commander

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    sc = load_scenario(None, ["security.curve=false", f'network.ground_in="tcp://127.0.0.1:{port}"', "scenario.clock_rate=10.0",
                              'link.contacts="schedule"', "link.schedule=[[0.0, 5.0], [8.0, 1e6]]"])
    clock = ScenarioClock(parse_epoch(sc.scenario.epoch), 10.0, time.time() - 0.55)  # t = 5.5 s: in the gap
    c = Commander(sc, clock, tmp_path, key=bytes(32))
    try:
        asked = clock.now_s()
        c.send_paced("NOOP", time.monotonic() + 5)
        assert pull.poll(2000)
        cmd = parse_command(pull.recv())
        assert asked < 6.0 and cmd.issued_s >= 8  # held over the gap, stamped at AOS
    finally:
        c.close()
        pull.close(0)
        ctx.term()
