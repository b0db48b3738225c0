"""The link emulator's timing, and the station's handling of good, bad and repeated packets."""

import pytest

from flight.clock import parse_epoch
from flight.config import load_scenario
from flight.dictionary import DetectionClass
from flight.products import Detection, FrameSummary, decode_ack, encode_tm
from flight.service import Service
from ground_link.channel import Direction
from ground_link.station import Station

EPOCH = parse_epoch("2026-11-28T06:00:00Z")


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
    assert d.dropped_queue_full == 1 and len(d.queue) == 2


@pytest.fixture
def station(tmp_path, capsys):
    sc = load_scenario(None)
    return Station(sc, tmp_path / "archive.sqlite", as_json=False, svc=Service("station-test", None))


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
    station.to_ack = list(range(600))
    station.send_acks(push)
    got = []
    while pull.poll(1000) and len(got) < 600:
        got += decode_ack(pull.recv())
    assert got == list(range(600)) and station.to_ack == []
    push.close(0)
    pull.close(0)
    ctx.term()
