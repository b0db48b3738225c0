"""Link audit: the retransmission timer, the link emulator's transmit queue and its counters, under
hostile values and realistic link parameters (9.6 kbit/s downlink, the demo's 64 kbit/s uplink).

Each test here failed before the fix it names (see the comments in flight/retransmit.py and
ground_link/channel.py)."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from flight.acks import encode_ack
from flight.dictionary import Apid
from flight.retransmit import LinkTimer
from flight.store import ProductStore
from ground_link.channel import DOWNLINK_CLASSES, MAX_PACKET_BYTES, UPLINK_CLASSES, Direction
from ground_link.ports import free_port

REPO = Path(__file__).resolve().parents[1]
KEY = bytes(range(32))
T0 = 1_000_000.0  # wall seconds (the store reads sent_wall = 0 as "never sent")


def timer(rate_bps: float = 9600.0) -> LinkTimer:
    """The defaults: retransmit_s 2, rto_min_s 1, rto_max_s 60, radio_queue_max_s 0.5."""
    return LinkTimer(2.0, 1.0, 60.0, rate_bps, 0.5)


# -- the retransmission timer (flight/retransmit.py) ---------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_round_trip_does_not_freeze_retransmission(tmp_path, bad):
    """A NaN sample made the RTO NaN for good: the store never found a packet expired again
    (left_wall + NaN <= now is NULL in SQLite), silent() was never true (no probing), back-off
    kept it NaN. inf pinned SRTT at inf. A lost packet was then never re-sent."""
    t = timer()
    t.on_samples([0.12] * 10)  # a healthy 9.6 kbit/s link: the RTO sits at its 1 s floor
    assert t.rto_s == 1.0
    t.on_sample(bad)
    assert math.isfinite(t.rto_s) and t.rto_s == 1.0 and t.srtt_s == pytest.approx(0.12)
    store = ProductStore(tmp_path / "s.db", 10**6)
    pid = store.put(1, Apid.FRAME_SUMMARY, 0.0, lambda pid, seq: bytes(60))[0]
    store.mark_sent([pid], T0, left_wall=[T0 + 0.05])  # lost on the link: no ack ever comes
    due = store.due(T0 + 10.0, t.rto_s, 64)
    assert [row[0] for row in due] == [pid]  # its timer ran out: it goes again
    assert t.silent(T0 + 10.0)  # and with nothing acknowledged the link is found silent
    t.on_timeout(T0 + 10.0)
    assert t.rto_s == 2.0  # back-off still doubles


@pytest.mark.parametrize("outlier_s", [86_400.0, 1e300])
def test_one_enormous_round_trip_does_not_pin_the_timeout_at_its_ceiling(outlier_s):
    """A ground that stalled for a day (or a broken sample) gave one huge round trip; unbounded, it
    kept the RTO at rto_max_s (60 s: a lost packet waits a minute) for hundreds (86,400 s) or
    thousands (1e300) of samples after the link was back to 0.12 s round trips."""
    t = timer()
    t.on_samples([0.12] * 10)
    t.on_sample(outlier_s)
    assert t.rto_s == 60.0  # the outlier itself does hit the ceiling, as it should
    t.on_samples([0.12] * 60)  # 60 acks' worth of healthy round trips (a few seconds of a pass)
    assert t.rto_s == 1.0, (t.srtt_s, t.rttvar_s)


# -- the link emulator's transmit queue (ground_link/channel.py) ---------------------------------


def test_a_long_propagation_delay_does_not_fill_the_transmit_queue():
    """Packets already sent and propagating were counted against queue_max_packets: with a long
    delay (link.delay_ms allows 600 s; here 2 s) the link dropped packets at an idle transmitter."""
    d = Direction("up", rate_bps=64_000.0, delay_s=2.0, queue_max=8)  # the demo's uplink
    for i in range(50):  # a 100-byte packet (12.5 ms of airtime) every 50 ms: the transmitter idles
        d.offer(bytes([0, 0, i]) + bytes(97), now=T0 + i * 0.05)
        assert d.backlog_s(T0 + i * 0.05) <= 0.0125 + 1e-9
    got = d.due(T0 + 10.0)
    assert d.dropped_queue_full == 0 and [p[2] for p in got] == list(range(50))
    # the limit still holds for packets really waiting for the transmitter
    d2 = Direction("up", rate_bps=64_000.0, delay_s=2.0, queue_max=8)
    for _ in range(12):
        d2.offer(bytes(100), now=T0)
    assert d2.dropped_queue_full == 4 and d2.queued == 8


def ack(ids_first: int, count: int, counter: int) -> bytes:
    return encode_ack(KEY, 1, counter, 100, [(ids_first, count)])


def test_a_full_uplink_queue_drops_bulk_file_data_not_acks():
    """When bulk file data filled the uplink queue the newcomer was dropped, whatever its class: the
    station's ack went and the file PDU it could have displaced stayed. Now the newest packet of a
    less urgent class makes room; and an ack the queue does drop counts in lost_ack_ids."""
    up = Direction("up", rate_bps=64_000.0, delay_s=0.005, queue_max=10, classes=dict(UPLINK_CLASSES),
                   default_class=2)
    pdu = [bytes([(Apid.FILE_DATA >> 8) & 7, Apid.FILE_DATA & 0xFF, i]) + bytes(533) for i in range(12)]
    for p in pdu:  # 536-byte CFDP file PDUs, 67 ms each on the air: the queue fills up
        up.offer(p, now=T0)
    assert up.dropped_queue_full == 2 and up.queued == 10
    a = ack(5 << 32 | 1, 40, counter=1)
    up.offer(a, now=T0 + 0.001)
    assert up.dropped_queue_full == 3 and up.lost_ack_ids == 0
    got = up.due(T0 + 10.0)
    assert got[1] == a  # right after the PDU that was on the air: acks first, as the classes say
    assert [p[2] for p in got if p != a] == list(range(9))  # the newest waiting PDU (9) made room
    # a queue full of acks: the newcomer is dropped, and its ids are counted as lost
    up2 = Direction("up", rate_bps=64_000.0, delay_s=0.005, queue_max=3, classes=dict(UPLINK_CLASSES),
                    default_class=2)
    for c in range(1, 5):
        up2.offer(ack(100 * c, 7, counter=c), now=T0)
    assert up2.dropped_queue_full == 1 and up2.lost_ack_ids == 7


def test_a_cfdp_reply_is_not_dropped_behind_queued_products():
    """The downlink's classes: a CFDP reply (0x107) before products, also when the queue is full."""
    down = Direction("down", rate_bps=9600.0, delay_s=0.005, queue_max=4, classes=dict(DOWNLINK_CLASSES),
                     default_class=1)
    for i in range(4):  # products of 294 bytes (housekeeping): 0.245 s each at 9.6 kbit/s
        down.offer(bytes([0x01, 0x04, i]) + bytes(291), now=T0)
    reply = bytes([(Apid.FILE_REPLY >> 8) & 7, Apid.FILE_REPLY & 0xFF, 99]) + bytes(27)
    down.offer(reply, now=T0 + 0.01)
    got = down.due(T0 + 10.0)
    assert reply in got and got.index(reply) == 1 and down.dropped_queue_full == 1


def test_a_message_longer_than_any_space_packet_does_not_hold_the_transmitter():
    """One 1 MiB message on the uplink was put on the air whole (131 s at 64 kbit/s, 15 min at
    9.6 kbit/s; never interrupted): every ack and command waited behind it. It is no space packet
    (6 + 65,536 bytes at most): dropped and counted; the longest real one still goes."""
    up = Direction("up", rate_bps=64_000.0, delay_s=0.005, queue_max=100, classes=dict(UPLINK_CLASSES),
                   default_class=2)
    up.offer(bytes([(Apid.GROUND_ACK >> 8) & 7, Apid.GROUND_ACK & 0xFF]) + bytes(2**20), now=T0)
    a = ack(3 << 32 | 1, 10, counter=1)
    up.offer(a, now=T0)
    assert up.due(T0 + 0.1) == [a]
    assert up.dropped_too_long == 1 and up.stats()["up_dropped_too_long"] == 1
    longest = bytes([(Apid.FILE_DATA >> 8) & 7, Apid.FILE_DATA & 0xFF]) + bytes(MAX_PACKET_BYTES - 2)
    up.offer(longest, now=T0 + 1.0)
    assert up.due(T0 + 10.0) == [longest] and up.dropped_too_long == 1


# -- the channel process: acks it cannot deliver ------------------------------------------------


def test_an_ack_dropped_because_the_flight_is_not_connected_counts_in_lost_ack_ids(tmp_path):
    """The real channel process with no flight connected (a flight being restarted): the ack it
    cannot hand over was counted in up_dropped_no_listener but not in up_lost_ack_ids, the
    counter tests use to tell re-sends the link caused from a retransmission storm."""
    ports = {k: free_port() for k in ("space_in", "space_out", "ground_out", "ground_in")}
    sets = [f'network.{k}="tcp://127.0.0.1:{p}"' for k, p in ports.items()]
    sets += ["security.curve=false", 'link.contacts="always"', "link.uplink_rate_bps=64000.0",
             "link.downlink_rate_bps=9600.0"]
    cmd = [sys.executable, "-m", "ground_link.channel", "--run-dir", str(tmp_path)]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=os.environ | {"PYTHONPATH": str(REPO)})
    ctx = zmq.Context()
    station = ctx.socket(zmq.PUSH)
    station.setsockopt(zmq.LINGER, 0)
    status_path = tmp_path / "channel.status.json"
    try:
        station.connect(f"tcp://127.0.0.1:{ports['ground_in']}")
        deadline = time.monotonic() + 20.0
        while not status_path.exists():  # the channel is up once it writes its status
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-2000:] \
                if proc.poll() is not None else "channel did not start"
            time.sleep(0.05)
        station.send(encode_ack(KEY, 1, 1, 100, [(7 << 32 | 1, 5), (7 << 32 | 10, 3)]))
        status: dict = {}
        while time.monotonic() < deadline:
            status = json.loads(status_path.read_text())
            if status["up_dropped_no_listener"] >= 1:
                break
            time.sleep(0.05)
        assert status["up_packets_in"] == 1 and status["up_dropped_no_listener"] == 1, status
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        status = json.loads(status_path.read_text())  # the final status, written at exit
        assert status["up_lost_ack_ids"] == 8, status
    finally:
        station.close(0)
        ctx.term()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
