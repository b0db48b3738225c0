"""The link emulator's timing, and the station's handling of good, bad and repeated packets."""

import pytest

from flight.acks import MAX_ACK_IDS, MAX_ACK_PACKET_BYTES, open_ack
from flight.clock import parse_epoch
from flight.config import LinkSection, load_scenario
from flight.dictionary import Apid, DetectionClass
from flight.products import Detection, FrameSummary, encode_tm
from flight.service import Service
from ground_link.channel import UPLINK_CLASSES, Direction, make_link
from ground_link.station import Station

EPOCH = parse_epoch("2026-11-28T06:00:00Z")
KEY = bytes(range(32))  # the mission key the station signs its acks with


def test_packets_come_out_at_the_bit_rate_after_the_delay():
    d = Direction("down", rate_bps=8000.0, delay_s=0.5, queue_max=10)
    for _ in range(3):
        d.offer(b"x" * 100, now=10.0)  # 100 bytes = 0.1 s each at 8 kbit/s
    assert d.due(10.59) == []
    assert len(d.due(10.61)) == 1
    assert len(d.due(10.79)) == 1
    assert len(d.due(10.81)) == 1


def test_a_full_queue_drops_and_counts():
    d = Direction("down", rate_bps=8000.0, delay_s=0.0, queue_max=2)
    for _ in range(3):
        d.offer(b"x", now=0.0)
    assert d.dropped_queue_full == 1 and d.queued == 2


# --- priority classes (issue #13: uploads must not starve acks or commands) -------------------------


def pkt(apid: int, size: int = 100, tag: int = 0) -> bytes:
    """A packet with a space-packet APID in its first two bytes (all the channel looks at)."""
    return bytes([(apid >> 8) & 0x07, apid & 0xFF, tag]) + b"x" * (size - 3)


def uplink(rate_bps: float = 8000.0) -> Direction:
    return Direction("up", rate_bps=rate_bps, delay_s=0.0, queue_max=100, classes=dict(UPLINK_CLASSES), default_class=2)


def test_uplink_sends_acks_then_commands_then_file_data_without_preempting():
    d = uplink()  # 100 bytes = 0.1 s on the air
    for i in range(4):
        d.offer(pkt(Apid.FILE_DATA, tag=i), now=0.0)  # the first goes on the air at once
    d.offer(pkt(Apid.COMMAND, tag=10), now=0.05)
    d.offer(pkt(Apid.GROUND_ACK, tag=20), now=0.06)
    d.offer(pkt(0x7FF, tag=30), now=0.07)  # an unknown APID waits with the bulk
    got = [p[2] for p in d.due(10.0)]
    assert got == [0, 20, 10, 1, 2, 3, 30]


def test_priority_is_decided_when_the_transmitter_comes_free_not_later():
    d = uplink()
    d.offer(pkt(Apid.FILE_DATA, tag=0), now=0.0)  # on the air 0..0.1
    d.offer(pkt(Apid.FILE_DATA, tag=1), now=0.01)  # waiting: goes on the air at 0.1
    d.offer(pkt(Apid.GROUND_ACK, tag=2), now=0.15)  # arrives while 1 is on the air (nothing ran in between)
    got = d.due(0.205)
    assert [p[2] for p in got] == [0, 1]  # 1 went on the air at 0.1, before the ack existed
    assert [p[2] for p in d.due(0.31)] == [2]


def test_within_a_class_the_oldest_goes_first_and_timing_matches_a_fifo():
    d = uplink()
    for i in range(5):
        d.offer(pkt(Apid.COMMAND, tag=i), now=0.0)
    assert d.next_event() == pytest.approx(0.1)
    assert [p[2] for p in d.due(0.25)] == [0, 1]
    assert [p[2] for p in d.due(0.5)] == [2, 3, 4]
    assert d.next_event() is None and d.queued == 0


def test_make_link_gives_the_uplink_its_classes_and_its_own_loss():
    cfg = LinkSection(loss_model="none", uplink_loss_rate=0.5, delay_ms=0.0, seed=3)
    down, up = make_link(cfg)
    assert up.classes[Apid.GROUND_ACK] < up.classes[Apid.COMMAND] < up.classes[Apid.FILE_DATA]
    assert down.classes[Apid.FILE_REPLY] < down.default_class
    for i in range(400):
        down.offer(pkt(Apid.EVENT, 20), float(i))
        up.offer(pkt(Apid.COMMAND, 20), float(i))
    assert len(down.due(1e9)) == 400 and down.lost == 0
    got = up.due(1e9)
    assert 150 < up.lost < 250 and len(got) + up.lost == 400 and up.queued == 0


@pytest.fixture
def station(tmp_path, capsys):
    sc = load_scenario(None)
    return Station(sc, tmp_path / "archive.sqlite", as_json=False, svc=Service("station-test", None), key=KEY)


def test_station_archives_once_alerts_and_acks_repeats(station, capsys):
    fire = Detection(11, 3, 30.0, DetectionClass.FIRE, 240, 100.0, 200.0, 40.5, 49.8, 6)
    packet = encode_tm(fire, 0, EPOCH, 30.0)
    station.on_packet(packet)
    station.on_packet(packet)  # a retransmission whose ack was lost
    assert station.counts["products_archived"] == 1 and station.counts["duplicates"] == 1
    assert station.counts["alerts"] == 1
    out = capsys.readouterr().out
    assert "ALERT CRITICAL" in out and "fire" in out and "frame     3" in out
    assert station.to_ack == [11, 11]  # both copies acknowledged so the flight frees it


def test_station_counts_bad_packets_and_goes_on(station):
    good = encode_tm(FrameSummary(5, 1, 1.0, 16, 2, 0.1, 0, 0, 0, 12.0, 40.0, 49.0), 0, EPOCH, 1.0)
    bad = bytearray(good)
    bad[-5] ^= 0xFF
    for pkt in (bytes(bad), b"", b"\x00" * 3, good):
        station.on_packet(pkt)
    assert station.counts["packets_bad"] == 3
    assert station.counts["products_archived"] == 1
    rows = station.archive.db.execute("SELECT ok, error FROM packets ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [0, 0, 0, 1] and "Crc" in rows[0][1]


def test_low_confidence_detection_raises_no_alert(station):
    ship = Detection(12, 4, 40.0, DetectionClass.SHIP, 50, 1.0, 2.0, 40.0, 49.0, 3)
    station.on_packet(encode_tm(ship, 0, EPOCH, 40.0))
    assert station.counts["alerts"] == 0 and station.counts["products_archived"] == 1


def test_acks_are_sent_in_bounded_packets(station):
    import zmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    # 600 consecutive ids (twice, as repeats come) and 300 scattered 64-bit ones (another store epoch)
    scattered = [(3 << 32) | (7 * i) for i in range(300)]
    station.to_ack = list(range(600)) * 2 + scattered
    station.send_acks(push)
    got, counters = [], []
    while pull.poll(1000) and len(got) < 900:
        packet = pull.recv()
        ack = open_ack(packet, KEY)
        assert len(packet) <= MAX_ACK_PACKET_BYTES and len(ack.ids) <= MAX_ACK_IDS and ack.source == 1
        got += ack.ids
        counters.append(ack.counter)
    assert got == list(range(600)) + scattered and station.to_ack == []
    assert counters == sorted(set(counters))  # strictly increasing
    assert station.counts["acks_sent"] == len(counters) == 3 + 3  # 250-id runs, then 100 ranges of one id each
    push.close(0)
    pull.close(0)
    ctx.term()


def test_station_deduplicates_on_the_whole_64_bit_product_id(station):
    """A flight that lost its store counts n from 1 again in a new epoch: (epoch << 32) | n. The
    ground must take those for new products, not for repeats of the old epoch's n."""
    old, new = 5, (1 << 32) | 5
    for pid in (old, new, new, (2**63) - 1):
        station.on_packet(encode_tm(FrameSummary(pid, 1, 1.0, 16, 2, 0.1, 0, 0, 0, 12.0, 40.0, 49.0), 0, EPOCH, 1.0))
    assert station.counts["products_archived"] == 3 and station.counts["duplicates"] == 1
    rows = station.archive.db.execute("SELECT product_id FROM products ORDER BY product_id").fetchall()
    assert [r[0] for r in rows] == [old, new, 2**63 - 1]
    assert station.to_ack == [old, new, new, 2**63 - 1]
