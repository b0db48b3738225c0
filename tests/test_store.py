"""The product store: priorities, acknowledgement, the retransmission window, eviction, persistence."""

import sqlite3

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


# -- product identity across store loss (issue #12) -------------------------------------------------


def test_first_boot_is_epoch_0_and_the_epoch_file_is_written_before_any_id(tmp_path):
    s = ProductStore(tmp_path / "s.db", 10_000)
    assert int((tmp_path / "store_epoch").read_text()) == 0
    assert s.epoch == 0 and [put(s, 1)[0] for _ in range(3)] == [1, 2, 3]  # epoch 0: ids as before
    assert s.counter("products_created") == 3


def test_a_lost_store_is_replaced_by_one_whose_ids_never_repeat(tmp_path):
    s = ProductStore(tmp_path / "s.db", 10_000)
    old = [put(s, 1)[0] for _ in range(5)]
    s.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"s.db{suffix}").unlink(missing_ok=True)
    s = ProductStore(tmp_path / "s.db", 10_000)  # the epoch file outlived the store
    new = [put(s, 1)[0] for _ in range(5)]
    assert s.epoch == 1 and new[0] == (1 << 32) + 1
    assert not set(old) & set(new) and min(new) > max(old)
    assert int((tmp_path / "store_epoch").read_text()) == 1


def test_a_healthy_store_keeps_its_epoch_and_rewrites_a_missing_epoch_file(tmp_path):
    s = ProductStore(tmp_path / "s.db", 10_000)
    a, _ = put(s, 1)
    s.close()
    (tmp_path / "store_epoch").unlink()
    s = ProductStore(tmp_path / "s.db", 10_000)
    b, _ = put(s, 1)
    assert s.epoch == 0 and b == a + 1
    assert int((tmp_path / "store_epoch").read_text()) == 0


def test_an_epoch_file_ahead_of_the_store_starts_the_next_epoch(tmp_path):
    """The file is ahead when ids of a later epoch were handed out that this store never recorded
    (products held in RAM when the flight died): those may be at the ground already."""
    s = ProductStore(tmp_path / "s.db", 10_000)
    a, _ = put(s, 1)
    s.close()
    (tmp_path / "store_epoch").write_text("7\n")
    s = ProductStore(tmp_path / "s.db", 10_000)
    b, _ = put(s, 1)
    assert s.epoch == 8 and b == (8 << 32) + 1
    assert [r[0] for r in s.due(0, 1, 10)] == [a, b]  # the old product is still there


def test_when_n_is_exhausted_ids_move_to_the_next_epoch(tmp_path):
    s = ProductStore(tmp_path / "s.db", 10_000)
    put(s, 1)
    s.close()
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute("UPDATE counters SET value = ? WHERE name = 'product_id'", ((1 << 32) - 2,))
    db.commit()
    db.close()
    s = ProductStore(tmp_path / "s.db", 10_000)
    ids = [put(s, 1)[0] for _ in range(2)]
    assert ids == [(1 << 32) - 1, (1 << 32) + 1]
    assert int((tmp_path / "store_epoch").read_text()) == 1


def test_a_store_written_before_epochs_keeps_its_products_and_ids(tmp_path):
    db = sqlite3.connect(tmp_path / "s.db")  # the schema before left_wall and epochs
    db.executescript("""
        CREATE TABLE products (id INTEGER PRIMARY KEY, priority INTEGER NOT NULL, apid INTEGER NOT NULL,
            created_s REAL NOT NULL, packet BLOB NOT NULL, sent_wall REAL NOT NULL DEFAULT 0,
            sends INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO products (id, priority, apid, created_s, packet, sends) VALUES (4, 1, 257, 0.0, x'01', 2);
        INSERT INTO counters VALUES ('product_id', 4), ('seq_257', 9);""")
    db.commit()
    db.close()
    s = ProductStore(tmp_path / "s.db", 10_000)
    assert s.epoch == 0 and s.counter("products_created") == 4
    assert s.due(0, 1, 10) == [(4, b"\x01", 2, 0)]
    seen = []
    pid, _ = s.put(1, 257, 0.0, lambda pid, seq: seen.append(seq) or b"x")
    assert pid == 5 and seen == [9]


def test_the_products_view_shows_every_waiting_product(tmp_path):
    """Readers that query store.db directly (ops_report, tests) see one `products` table."""
    s = ProductStore(tmp_path / "s.db", 10_000)
    a, _ = put(s, 1)
    s.mark_sent([a], 5.0)
    assert s.db.execute("SELECT id, sends, sent_wall FROM products").fetchall() == [(a, 1, 5.0)]
