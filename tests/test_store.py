"""The product store: priorities, acknowledgement, the retransmission window, eviction, persistence."""

import pytest

from flight.store import ProductStore, StoreFull


def put(store, priority, size=100, apid=0x101):
    pid, evicted = store.put(priority, apid, 0.0, lambda pid, seq: bytes([pid % 256]) * size)
    return pid, evicted


def test_downlink_order_is_priority_then_age(tmp_path):
    s = ProductStore(tmp_path / "s.db", 10_000)
    a, _ = put(s, 2)
    b, _ = put(s, 0)
    c, _ = put(s, 2)
    assert [r[0] for r in s.due(100.0, 1.0, 10)] == [b, a, c]


def test_window_and_retransmission(tmp_path):
    s = ProductStore(tmp_path / "s.db", 10_000)
    ids = [put(s, 1)[0] for _ in range(5)]
    first = s.due(100.0, 2.0, 3)
    assert [r[0] for r in first] == ids[:3]
    s.mark_sent([r[0] for r in first], 100.0)
    assert s.due(100.5, 2.0, 3) == []  # window full until acks or timeout
    assert s.ack(ids[:2]) == 2
    assert [r[0] for r in s.due(100.5, 2.0, 3)] == ids[3:5]
    again = s.due(102.5, 2.0, 10)  # id 3 timed out: sent again with its send count
    assert (ids[2], 1) in [(r[0], r[2]) for r in again]
    assert s.ack(ids[:2]) == 0  # repeated acks are harmless


def test_eviction_lowest_priority_oldest_first(tmp_path):
    s = ProductStore(tmp_path / "s.db", 350)
    t1, _ = put(s, 4)
    t2, _ = put(s, 4)
    a1, _ = put(s, 0)
    a2, evicted = put(s, 0)
    assert [e.product_id for e in evicted] == [t1]
    a3, evicted = put(s, 0)
    assert [e.product_id for e in evicted] == [t2]
    with pytest.raises(StoreFull):
        put(s, 4)  # nothing less important than telemetry to make room
    assert s.pending() == 3 and {r[0] for r in s.due(0, 1, 10)} == {a1, a2, a3}


def test_store_survives_reopen_and_ids_never_repeat(tmp_path):
    s = ProductStore(tmp_path / "s.db", 10_000)
    a, _ = put(s, 1)
    s.mark_sent([a], 50.0)
    s.close()
    s = ProductStore(tmp_path / "s.db", 10_000)
    assert [r[0] for r in s.due(50.1, 10.0, 10)] == [a]  # due again at once after a restart
    s.ack([a])
    b, _ = put(s, 1)
    assert b > a


def test_sequence_counts_are_per_apid(tmp_path):
    s = ProductStore(tmp_path / "s.db", 10_000)
    seen = []
    for apid in (0x101, 0x102, 0x101):
        s.put(1, apid, 0.0, lambda pid, seq: seen.append(seq) or b"x")
    assert seen == [0, 0, 1]


def test_an_ack_makes_older_unacknowledged_products_due_at_once(tmp_path):
    s = ProductStore(tmp_path / "s.db", 10_000)
    lost, got, in_flight = (put(s, 1)[0] for _ in range(3))
    s.mark_sent([lost], 100.0)  # sent into a contact gap
    s.mark_sent([got], 105.0)  # after AOS: arrives
    s.mark_sent([in_flight], 105.5)  # not acknowledged yet, may still arrive
    assert s.due(105.6, 10.0, 10) == []
    s.ack([got])
    assert [r[0] for r in s.due(105.6, 10.0, 10)] == [lost]  # before its 10 s timer
