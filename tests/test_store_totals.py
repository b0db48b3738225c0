"""The product store's running totals (bytes and count per priority, disk and RAM buffer), kept by
TEMP triggers so that a put's room check no longer sums every stored packet (11 ms per put at a
full 64 MiB store, and a frame puts one product per detection). Real files, real SQLite; the disk
faults are injected as in tests/test_store_faults.py."""

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_store_faults import cap_disk_pages, refuse_disk_writes

from flight.store import ProductStore, StoreFull

APIDS = (0x101, 0x102, 0x103)


def put(store, priority: int, size: int, apid: int = 0x101):
    return store.put(priority, apid, 0.0, lambda pid, seq: bytes([pid % 251]) * size)


def scanned(s: ProductStore) -> tuple[tuple[int, int], tuple[int, int]]:
    """What _totals() must say, by summing every packet (the old way)."""
    d = s.db.execute("SELECT count(*), coalesce(sum(length(packet)), 0) FROM disk.products "
                     "WHERE id NOT IN (SELECT id FROM main.tombstones)").fetchone()
    r = s.db.execute("SELECT count(*), coalesce(sum(length(packet)), 0) FROM main.products").fetchone()
    return (d[0], r[0]), (d[1], r[1])


def per_priority(s: ProductStore, db: str) -> tuple[dict, dict]:
    """(kept by the triggers, summed from the rows): {priority: (count, bytes)}, empty ones left out."""
    kept = {p: (n, b) for p, b, n in s.db.execute("SELECT priority, bytes, n FROM temp.sizes WHERE db = ?", (db,))
            if n or b}
    rows = {p: (n, b) for p, n, b in s.db.execute(
        f"SELECT priority, count(*), sum(length(packet)) FROM {db}.products GROUP BY priority")}
    return kept, rows


def check(s: ProductStore) -> None:
    assert s._totals() == scanned(s)
    for db in ("disk", "main"):
        kept, rows = per_priority(s, db)
        assert kept == rows, db
    (nd, nr), (bd, br) = scanned(s)
    assert s.pending() == nd + nr and s.bytes() == bd + br


OPS = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 4), st.integers(1, 6000)),
    st.tuples(st.just("ack"), st.integers(0, 50), st.just(0)),
    st.tuples(st.just("clear"), st.integers(0, 5), st.just(0)),
    st.tuples(st.just("reprioritize"), st.integers(0, 2), st.integers(0, 4)),
    st.tuples(st.just("full"), st.booleans(), st.just(0)),
    st.tuples(st.just("refuse"), st.booleans(), st.just(0)),
    st.tuples(st.just("maintain"), st.just(0), st.just(0)),
    st.tuples(st.just("restart"), st.booleans(), st.just(0)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, max_size=50))
def test_totals_match_the_stored_rows_through_any_interleaving(ops):
    """Puts that evict or are refused, acks, clears, reprioritizations, a full or read-only disk
    (RAM buffer, tombstones, the flush back), reclaim ticks, clean and unclean restarts: after every
    step the kept totals equal the rows' sums, per priority, on the disk and in RAM."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.db"

        def open_store():
            return ProductStore(path, 40_000, ram_max_bytes=15_000, retry_s=1.0)

        s = open_store()
        ids: list[int] = []
        now = 0.0
        for op, a, b in ops:
            now += 1.0
            if op == "put":
                try:
                    ids.append(put(s, a, b, APIDS[b % 3])[0])
                except StoreFull:
                    pass
            elif op == "ack" and ids:
                s.ack([ids[a % len(ids)]])
            elif op == "clear":
                s.clear(a)
            elif op == "reprioritize":
                s.reprioritize(APIDS[a], b)
            elif op == "full":
                cap_disk_pages(s, a)
            elif op == "refuse":
                refuse_disk_writes(s, a)
            elif op == "maintain":
                s.maintain(now)
            elif op == "restart":
                refuse_disk_writes(s, False)
                cap_disk_pages(s, False)
                if a:
                    s.close()
                else:  # a kill: the connection dropped without close (RAM products lost, as in a crash)
                    s.db.close()
                s = open_store()
            check(s)
        refuse_disk_writes(s, False)
        cap_disk_pages(s, False)
        s.maintain(now + 10.0)
        check(s)
        s.close()


def vm_steps(s: ProductStore, fn) -> int:
    """SQLite virtual-machine instructions that `fn` runs on the store's connection: the work of
    its statements, counted instead of timed (deterministic)."""
    steps = [0]

    def count():
        steps[0] += 1
        return 0

    s.db.set_progress_handler(count, 1)
    try:
        fn()
    finally:
        s.db.set_progress_handler(None, 1)
    return steps[0]


def test_a_put_costs_the_same_in_a_store_holding_ten_times_as_many_products(tmp_path):
    """The room check reads the kept totals: the work of a put does not grow with what is stored
    (summing every packet, it did: about 10x here)."""
    s = ProductStore(tmp_path / "s.db", 256 * 1024 * 1024)
    for _ in range(300):
        put(s, 2, 2000)
    small = vm_steps(s, lambda: put(s, 2, 2000))
    for _ in range(2700):
        put(s, 2, 2000)
    large = vm_steps(s, lambda: put(s, 2, 2000))
    assert s.pending() == 3002
    assert large < 1.5 * small, (small, large)
    s.close()


def test_totals_survive_a_reopen_and_a_store_written_by_an_older_version(tmp_path):
    """The totals are rebuilt from the rows at every attach: a store file from before them (no
    triggers, nothing kept on disk) opens with the right figures, and eviction decides by them."""
    path = tmp_path / "s.db"
    s = ProductStore(path, 10_000)
    a = put(s, 3, 4000)[0]
    put(s, 1, 4000)
    s.close()
    s = ProductStore(path, 10_000)
    check(s)
    assert s.bytes() == 8000
    pid, evicted = put(s, 2, 3000)  # 11,000 > 10,000: the priority-3 product goes
    assert [e.product_id for e in evicted] == [a]
    check(s)
    assert s.bytes() == 7000
    s.close()


def test_the_store_file_zeroes_deleted_rows_in_their_pages_only(tmp_path):
    """secure_delete=FAST on the store file (this SQLite is built with it on: freed pages were
    zeroed as well): draining a 16 MiB store wrote 29.7 MB instead of 46.7 here (flash wear).
    Set at every attach, a reopen after a fault included."""
    s = ProductStore(tmp_path / "s.db", 1024 * 1024)
    assert s.db.execute("PRAGMA disk.secure_delete").fetchone()[0] == 2  # FAST
    put(s, 1, 3000)
    s.close()
    s = ProductStore(tmp_path / "s.db", 1024 * 1024)
    assert s.db.execute("PRAGMA disk.secure_delete").fetchone()[0] == 2
    s.close()
