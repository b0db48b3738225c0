"""The ground archive on both back ends (issue #18): the same schema and the same queries on
SQLite (one station) and PostgreSQL (a ground of several stations). Every test runs on both."""

from __future__ import annotations

import threading

import pytest
from pg_util import pg_cluster, pg_dsn  # noqa: F401 (fixtures)

from flight.config import AlertRule
from flight.dictionary import DetectionClass
from flight.products import Detection, Event, FrameSummary, ImageChip
from ground_link.alerts import alert_record
from ground_link.archive import Archive, Db, schema_sql

FIRE = int(DetectionClass.FIRE)


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "archive.sqlite")
    return request.getfixturevalue("pg_dsn")


def summary(pid: int, frame: int = 1) -> FrameSummary:
    return FrameSummary(pid, frame, 1.0, 16, 2, 0.1, 0, 0, 0, 12.0, 40.0, 49.0)


def test_schema_is_the_same_text_on_both_but_for_type_names():
    lite, pg = schema_sql("sqlite"), schema_sql("postgresql")
    assert len(lite) == len(pg)
    for a, b in zip(lite, pg, strict=True):
        assert a.split("(")[0] == b.split("(")[0]  # same statements, same tables and indexes
    assert "DOUBLE PRECISION" in pg[0] and "BYTEA" in pg[0] and "REAL" in lite[0]


def test_products_are_archived_once_per_satellite_and_product_id(target):
    a = Archive(target, station="baku")
    assert a.product(summary(5), 1.0, satellite_id=1)
    assert not a.product(summary(5), 2.0, satellite_id=1)  # a re-send
    assert a.product(summary(5), 3.0, satellite_id=2)  # the same id from another satellite is another product
    big = (1 << 32) | 5  # another store epoch
    assert a.product(summary(big), 4.0, satellite_id=1) and a.product(summary(2**63 - 1), 4.0, satellite_id=1)
    rows = a.db.execute("SELECT satellite_id, product_id, station FROM products ORDER BY satellite_id, product_id").fetchall()
    assert [tuple(r) for r in rows] == [(1, 5, "baku"), (1, big, "baku"), (1, 2**63 - 1, "baku"), (2, 5, "baku")]
    a.close()


def test_two_stations_share_one_truth(target):
    """What Baku archived is a duplicate at Astana, and Astana can tell what the ground has."""
    baku, astana = Archive(target, "baku"), Archive(target, "astana")
    assert baku.product(summary(7), 100.0, 1, raw=b"\x01")
    assert not astana.product(summary(7), 101.0, 1, raw=b"\x01")
    assert astana.archived_since(1, 0.0) == [(7, 100.0)]  # archived via another station
    assert baku.archived_since(1, 0.0) == [] and astana.archived_since(1, 100.0) == []
    assert astana.product(summary(8), 102.0, 1)
    assert [pid for pid, _ in baku.archived_since(1, 0.0)] == [8]
    n = baku.db.execute("SELECT count(*) FROM packets WHERE ok = 1").fetchone()[0]
    assert n == 2  # both receptions logged, one product
    baku.close()
    astana.close()


def test_children_alerts_and_blobs_round_trip(target):
    a = Archive(target, "astana")
    chip = ImageChip(9, 3, 30.0, FIRE, 40.5, 49.8, 32, 32, 3, b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    ev = Event(10, 31.0, 2, 1, 3, "frame 3 81% cloud: discarded")
    det = Detection(11, 3, 30.0, FIRE, 240, 100.0, 200.0, 40.5, 49.8, 6)
    for p in (chip, ev, det):
        assert a.product(p, 1000.0, satellite_id=3)
    assert not a.product(chip, 1001.0, satellite_id=3)
    png = a.db.execute("SELECT png FROM chips WHERE satellite_id = ? AND product_id = ?", (3, 9)).fetchone()[0]
    assert bytes(png) == chip.png
    assert a.db.execute("SELECT message, satellite_id FROM events").fetchone()[0] == ev.message
    rec = alert_record(det, 0, AlertRule("fire", 0.5, "critical"), 1000.0, 31.5, False)
    a.alert(rec | {"satellite_id": 3})
    row = a.db.execute("SELECT class, satellite_id, station, received_wall, latency_s FROM alerts").fetchone()
    assert tuple(row)[:3] == ("fire", 3, "astana") and row[3] == 1000.0  # a double on both (not PG's 4-byte REAL)
    a.close()


def test_bad_packets_are_kept_with_their_reason(target):
    a = Archive(target)
    a.packet(b"\x00\x01", 5.5, None, "CrcError: bad", satellite_id=2)
    row = a.db.execute("SELECT ok, error, raw, satellite_id, station FROM packets").fetchone()
    assert row[0] == 0 and row[1].startswith("Crc") and bytes(row[2]) == b"\x00\x01" and row[3] == 2 and row[4] is None
    a.close()


def test_read_only_reader_cannot_write(target):
    Archive(target).close()
    db = Db(target, read_only=True)
    assert db.execute("SELECT count(*) FROM products").fetchone()[0] == 0
    with pytest.raises(db.Error):
        db.execute("INSERT INTO products (product_id, satellite_id) VALUES (1, 1)")
    db.close()


def test_concurrent_stations_archive_each_product_exactly_once(target):
    """Four stations (threads, one connection each) race to archive the same 300 products of
    three satellites: each (satellite, product) is new for exactly one of them."""
    ids = [(sat, pid) for sat in (1, 2, 3) for pid in range(1, 101)]
    Archive(target).close()  # the schema, before the race
    won: list[list[tuple[int, int]]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def station(i: int) -> None:
        try:
            archive = Archive(target, f"st{i}")  # its own connection, in its own thread
            order = ids if i % 2 == 0 else ids[::-1]
            for sat, pid in order:
                if archive.product(summary(pid), float(i), satellite_id=sat):
                    won[i].append((sat, pid))
            archive.close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=station, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    all_won = [x for w in won for x in w]
    assert sorted(all_won) == sorted(ids)  # each exactly once, none lost
    a = Archive(target)
    per_station = a.db.execute("SELECT station, count(*) FROM products GROUP BY station ORDER BY station").fetchall()
    assert {r[0]: r[1] for r in per_station} == {f"st{i}": len(w) for i, w in enumerate(won) if w}
    a.close()


def test_stations_opening_one_new_sqlite_file_at_once_both_start(tmp_path):
    """The launcher's SQLite fallback starts every station at once on one new file: switching it
    to WAL failed at once ("database is locked", no busy wait) in about 15 % of such starts."""
    errors: list[BaseException] = []
    for i in range(60):
        target = tmp_path / f"a{i}.sqlite"
        start = threading.Barrier(3)

        def open_it(name: str, target=target, start=start) -> None:
            try:
                start.wait(10)
                Archive(target, name).close()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=open_it, args=(n,)) for n in ("baku", "astana", "third")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors[:3]
