"""The product store gives its space back: after products are acknowledged the database file
shrinks to what is still waiting and the -wal goes back to 0 bytes (it kept its high-water size for
good before), in bounded steps, without losing anything across a kill, and a store made by the old
code (without auto_vacuum) still opens and is converted once it is small. Real SQLite files in
tmp_path, real ProductStore objects, a real subprocess killed with SIGKILL."""

import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import flight.store as fs
from flight.store import ProductStore

REPO = Path(__file__).resolve().parents[1]
KiB, MiB = 1024, 1024 * 1024
BUDGET = 3 * MiB // 2  # of packet bytes: enough to leave more than RECLAIM_START_BYTES free once drained
WINDOW = 64  # products acknowledged together, as the flight's downlink window


def size_of(pid: int) -> int:
    """Realistic product sizes: 40 % image chips of 1-4 KiB (chip_max_bytes 4096), the rest summaries,
    detections, events and housekeeping of 80-300 bytes. A function of the id, so any process can check."""
    rng = random.Random(pid)
    return rng.randint(1024, 4096) if rng.random() < 0.4 else rng.randint(80, 300)


def packet(pid: int) -> bytes:
    return pid.to_bytes(8, "big") + bytes([pid % 251]) * (size_of(pid) - 8)


def put(store: ProductStore, priority: int = 1) -> int:
    return store.put(priority, 0x101, 0.0, lambda pid, seq: packet(pid))[0]


def fill(store: ProductStore, budget: int = BUDGET) -> list[int]:
    ids = []
    while store.bytes() + 4096 <= budget:
        ids.append(put(store))
    return ids


def files(path: Path) -> dict[str, int]:
    out = {}
    for sfx in ("", "-wal"):
        try:
            out[sfx or "db"] = os.stat(f"{path}{sfx}").st_size
        except FileNotFoundError:
            out[sfx or "db"] = 0
    return out


def pragma(store: ProductStore, name: str) -> int:
    return store.db.execute(f"PRAGMA disk.{name}").fetchone()[0]


def ack_all_but(store: ProductStore, ids: list[int], keep: set[int], now: float) -> float:
    """Acknowledge in windows, the flight's maintain() after each (its loop turn); returns the clock."""
    gone = [i for i in ids if i not in keep]
    for k in range(0, len(gone), WINDOW):
        assert store.ack(gone[k:k + WINDOW]) == len(gone[k:k + WINDOW])
        now += fs.RECLAIM_INTERVAL_S / 4
        store.maintain(now)
    return now


def tick_until_reclaimed(store: ProductStore, now: float, high_water: int) -> tuple[float, int]:
    """maintain() once per reclaim interval until no page is free and the WAL is empty; at most the
    ticks the step size allows, after the store has been quiet for RECLAIM_QUIET_S."""
    bound = math.ceil(fs.RECLAIM_QUIET_S / fs.RECLAIM_INTERVAL_S) + math.ceil(high_water / fs.RECLAIM_STEP_BYTES) + 2
    for n in range(1, bound + 1):
        now += fs.RECLAIM_INTERVAL_S
        store.maintain(now)
        if pragma(store, "freelist_count") == 0 and files(store.path)["-wal"] == 0:
            return now, n
    raise AssertionError(f"free pages left after {bound} ticks: {pragma(store, 'freelist_count')}, files {files(store.path)}")


def stored(path: Path) -> dict[int, bytes]:
    """Every product in the store file, read by another connection."""
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        return {pid: bytes(p) for pid, p in db.execute("SELECT id, packet FROM products")}
    finally:
        db.close()


def make_old_store(path: Path, n_products: int, drop_every: int, epoch: int = 3) -> tuple[list[int], int]:
    """A store as the code before this change made it: WAL, synchronous=FULL, no auto_vacuum (set
    to NONE explicitly: a build's default must not decide the test), its products and counters as
    put() wrote them; then every product but each `drop_every`-th deleted, as acks did: the file
    keeps its high-water size. Returns the ids kept and the last id handed out."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA auto_vacuum=NONE")
    db.execute("PRAGMA journal_mode=WAL").fetchone()
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(fs.SCHEMA)
    ids = [(epoch << 32) | n for n in range(1, n_products + 1)]
    db.execute("BEGIN")
    db.executemany("INSERT INTO products (id, priority, apid, created_s, packet) VALUES (?, 1, 257, 0.0, ?)",
                   [(i, packet(i)) for i in ids])
    db.executemany("INSERT INTO counters (name, value) VALUES (?, ?)",
                   [("product_id", ids[-1]), ("epoch", epoch), ("products_created", len(ids)), ("seq_257", len(ids))])
    db.execute("COMMIT")
    kept = ids[::drop_every]
    db.executemany("DELETE FROM products WHERE id = ?", [(i,) for i in ids if i not in set(kept)])
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    db.close()
    return kept, ids[-1]


def test_a_drained_store_gives_its_space_back_and_keeps_what_waits(tmp_path):
    """Filled to its byte budget (a long gap without contact), then 9 in 10 products acknowledged:
    the file shrinks to the products still waiting and the WAL to 0 bytes. Before: both kept their
    high-water size (here about 2 MB of database and 1-4 MB of WAL) for good."""
    path = tmp_path / "flight_store.sqlite"
    s = ProductStore(path, BUDGET)
    ids = fill(s)
    high = files(path)
    assert high["db"] > BUDGET
    keep = set(ids[::10])
    now = ack_all_but(s, ids, keep, 0.0)
    now, n_ticks = tick_until_reclaimed(s, now, high["db"])
    after = files(path)
    live = s.bytes()
    assert after["-wal"] == 0
    assert after["db"] <= 2 * live + 64 * KiB, (high, after, live)  # the waiting products' pages, not the high water
    assert after["db"] < high["db"] / 3
    # what waits is intact and still goes down in order
    assert sorted(r[0] for r in s.due(now, 10.0, 10_000)) == sorted(keep)
    assert stored(path) == {i: packet(i) for i in keep}
    # the store still works up to its budget: eviction as before, ids continue
    more = fill(s)
    assert min(more) > max(ids)
    evicted = [e.product_id for _ in range(3) for e in s.put(0, 0x101, 0.0, lambda pid, seq: b"\0" * 4096)[1]]
    assert evicted and s.bytes() <= BUDGET
    s.close()
    assert set(stored(path)) == (keep | set(more)) - set(evicted) | {max(more) + 1, max(more) + 2, max(more) + 3}


def test_the_wal_is_cut_back_after_one_large_transaction(tmp_path):
    """A flush of the RAM buffer (the disk could not write for a while) is one transaction of up
    to `ram_max_bytes`: the WAL grew to that and stayed (6 MB here). Now journal_size_limit cuts it
    to WAL_LIMIT_BYTES at the next write, and the next quiet reclaim tick to 0 bytes."""
    path = tmp_path / "flight_store.sqlite"
    s = ProductStore(path, 64 * MiB, ram_max_bytes=8 * MiB)
    put(s)
    writes = (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE)
    s.db.set_authorizer(lambda action, a1, a2, dbname, src:  # the disk refuses writes, as in test_store_faults
                        sqlite3.SQLITE_DENY if dbname == "disk" and action in writes else sqlite3.SQLITE_OK)
    held = [s.put(1, 0x101, 0.0, lambda pid, seq: bytes([pid % 251]) * 4000)[0] for _ in range(1500)]
    assert s.state != fs.ON_DISK and s.ram_products == 1500
    s.db.set_authorizer(None)
    assert s.maintain(100.0) and s.state == fs.ON_DISK
    assert files(path)["-wal"] > 5 * MiB  # the flush: one transaction
    put(s)  # the WAL restarts after the flush's checkpoint: cut to the limit
    assert files(path)["-wal"] <= fs.WAL_LIMIT_BYTES
    s.maintain(100.0 + fs.RECLAIM_INTERVAL_S)  # this tick sees the put's change
    assert files(path)["-wal"] > 0
    s.maintain(100.0 + fs.RECLAIM_INTERVAL_S + fs.RECLAIM_QUIET_S)  # quiet since: truncated
    assert files(path)["-wal"] == 0
    assert set(held) <= set(stored(path))
    s.close()


def test_a_small_old_store_is_converted_when_opened(tmp_path):
    """A store made by the old code (auto_vacuum NONE) whose products fit in
    LEGACY_VACUUM_MAX_BYTES: converted at open by one VACUUM, so it shrinks to its products, keeps
    them and their ids' epoch. Before: opened as it was, high-water size for good."""
    path = tmp_path / "flight_store.sqlite"
    kept, last = make_old_store(path, 1200, 10)  # ~1.4 MB of products, 1 in 10 left
    before = files(path)["db"]
    lines: list[str] = []
    s = ProductStore(path, 64 * MiB, log=lines.append)
    after = files(path)
    assert after["db"] <= 2 * s.bytes() + 64 * KiB and after["db"] < before / 3, (before, after)
    assert after["-wal"] == 0
    assert pragma(s, "auto_vacuum") == fs.AUTO_VACUUM_INCREMENTAL
    assert any("converted" in line for line in lines), lines
    assert s.epoch == 3 and put(s) == last + 1
    assert sorted(r[0] for r in s.due(0.0, 10.0, 10_000)) == sorted(kept) + [last + 1]
    s.close()
    assert stored(path) == {i: packet(i) for i in kept + [last + 1]}


def test_a_large_old_store_works_as_before_and_is_converted_once_drained(tmp_path):
    """An old store holding more than LEGACY_VACUUM_MAX_BYTES is left as it is at open (a VACUUM
    rewrites every live page: too long and too much space on a full store); it works, and the first
    reclaim tick after the ground has acknowledged enough converts it and gives the space back."""
    path = tmp_path / "flight_store.sqlite"
    kept, last = make_old_store(path, 1500, 1)  # nothing deleted: ~1.7 MB of products
    before = files(path)["db"]
    s = ProductStore(path, 64 * MiB)
    assert pragma(s, "auto_vacuum") == fs.AUTO_VACUUM_NONE  # left as it was: documented
    now = 0.0
    for _ in range(3):
        now += fs.RECLAIM_INTERVAL_S
        s.maintain(now)
    assert pragma(s, "auto_vacuum") == fs.AUTO_VACUUM_NONE and files(path)["db"] >= before
    new = put(s)
    assert new == last + 1
    keep = set(kept[::20]) | {new}
    now = ack_all_but(s, kept + [new], keep, now)  # the pass: acks; a tick converts when small enough
    now, _ = tick_until_reclaimed(s, now, before)
    assert pragma(s, "auto_vacuum") == fs.AUTO_VACUUM_INCREMENTAL
    after = files(path)
    assert after["db"] <= 2 * s.bytes() + 64 * KiB and after["db"] < before / 3, (before, after)
    s.close()
    assert stored(path) == {i: packet(i) for i in keep}


def test_each_reclaim_step_is_bounded(tmp_path):
    """Each maintain() returns at most RECLAIM_STEP_BYTES of pages and runs at most once per
    RECLAIM_INTERVAL_S, leaving the WAL within WAL_LIMIT_BYTES (0 once quiet); a drained store is
    back within the ticks the step size allows. Times are printed (pytest -s); the assertion on them only catches a step
    that is not bounded at all (a whole-file VACUUM), not the machine's speed."""
    path = tmp_path / "flight_store.sqlite"
    s = ProductStore(path, BUDGET)
    ids = fill(s)
    assert s.ack(ids) == len(ids)
    page = pragma(s, "page_size")
    step_pages = fs.RECLAIM_STEP_BYTES // page
    free = pragma(s, "freelist_count")
    assert free * page >= fs.RECLAIM_START_BYTES
    times, now, ticks = [], 1000.0, 0
    while pragma(s, "freelist_count") > 0:
        ticks += 1
        assert ticks <= math.ceil(free / step_pages) + 1
        db_before, free_before = files(path)["db"], pragma(s, "freelist_count")
        t = time.perf_counter()
        s.maintain(now)
        times.append(time.perf_counter() - t)
        freed = free_before - pragma(s, "freelist_count")
        assert 0 < freed <= step_pages
        assert 0 <= db_before - files(path)["db"] <= fs.RECLAIM_STEP_BYTES + page
        assert files(path)["-wal"] <= fs.WAL_LIMIT_BYTES  # kept for the next writes while not quiet
        shrunk = files(path)["db"]
        s.maintain(now + fs.RECLAIM_INTERVAL_S / 2)  # within the interval: nothing
        assert files(path)["db"] == shrunk
        now += fs.RECLAIM_INTERVAL_S
    times.sort()
    print(f"\n{ticks} reclaim ticks of up to {step_pages} pages: median {times[len(times) // 2] * 1e3:.2f} ms, "
          f"max {times[-1] * 1e3:.2f} ms")
    assert times[-1] < 0.5
    assert files(path)["db"] <= 64 * KiB
    s.maintain(now + fs.RECLAIM_QUIET_S)
    assert files(path)["-wal"] == 0
    s.close()


CHILD = r"""
import sys
sys.path.insert(0, sys.argv[3])
import flight.store as fs
from flight.store import ProductStore
from tests.test_store_size import fill, packet, put, WINDOW

fs.RECLAIM_STEP_BYTES = 1  # one page per tick: the reclaim lasts long enough to be killed inside it
path, first = sys.argv[1], sys.argv[2] == "fill"
s = ProductStore(path, int(sys.argv[4]))
if first:
    ids = fill(s)
    keep = ids[::7]
    gone = [i for i in ids if i not in set(keep)]
    for k in range(0, len(gone), WINDOW):
        s.ack(gone[k:k + WINDOW])
    print("kept", *keep, flush=True)
print("ready", s.db.execute("PRAGMA disk.freelist_count").fetchone()[0], flush=True)
now, i, mine = 0.0, 0, []
while True:  # every 5th tick comes after a quiet spell: its checkpoint is a TRUNCATE, the others PASSIVE
    now += fs.RECLAIM_QUIET_S if i % 5 == 4 else fs.RECLAIM_INTERVAL_S
    s.maintain(now)
    i += 1
    if i == 1:
        print("ticking", flush=True)
    if i % 16 == 0:
        mine.append(put(s))
        print("put", mine[-1], flush=True)
    if i % 16 == 8 and len(mine) > 1:
        print("acking", mine[0], flush=True)
        s.ack([mine[0]])
        print("acked", mine.pop(0), flush=True)
"""


def test_a_kill_during_the_reclaim_loses_nothing(tmp_path):
    """A real flight-like process returns free pages one at a time (each step a transaction and a
    PASSIVE or TRUNCATE checkpoint) while it stores and acknowledges products, and is SIGKILLed at
    three moments. After each kill every product accepted and not acknowledged is there, byte for byte,
    the store passes quick_check and the reclaim goes on from where it was."""
    path = tmp_path / "flight_store.sqlite"
    expected: set[int] = set()
    maybe_gone: set[int] = set()  # an ack cut by the kill
    for round_, delay in enumerate((0.05, 0.15, 0.3)):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "fill" if round_ == 0 else "go", str(REPO),
                                 str(BUDGET)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            if round_ == 0:
                assert line.startswith("kept"), (line, proc.stderr.read() if not line else "")
                expected = {int(x) for x in line.split()[1:]}
                line = proc.stdout.readline()
            assert line.startswith("ready"), (line, proc.stderr.read() if not line else "")
            free_at_start = int(line.split()[1])
            assert proc.stdout.readline() == "ticking\n"  # its first reclaim tick is done: the delay starts
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            rest = proc.stdout.read().split("\n")
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        cut: set[int] = set()
        for entry in rest:
            what, _, pid = entry.partition(" ")
            if what == "put":
                expected.add(int(pid))
            elif what == "acking":
                cut = {int(pid)}
            elif what == "acked":
                expected.discard(int(pid))
                cut = set()
        maybe_gone = cut
        products = stored(path)
        known = max(expected | maybe_gone)
        extra = {pid for pid in products if pid not in expected | maybe_gone}
        lost = expected - maybe_gone - set(products)
        assert not lost, f"round {round_}: lost {sorted(lost)[:10]} (last lines {rest[-6:]})"
        assert len(extra) <= 1 and all(pid > known for pid in extra), extra  # a put cut after its commit
        assert all(products[pid] == packet(pid) for pid in products)
        expected |= extra
        expected -= maybe_gone - set(products)
        if round_ == 0:
            db = sqlite3.connect(path)
            left = db.execute("PRAGMA freelist_count").fetchone()[0]
            db.close()
            assert 0 < left < free_at_start, "the kill did not come during the reclaim"
    s = ProductStore(path, BUDGET)
    tick_until_reclaimed(s, 0.0, files(path)["db"])
    assert files(path)["db"] <= 2 * s.bytes() + 64 * KiB
    s.close()
    assert set(stored(path)) == expected
