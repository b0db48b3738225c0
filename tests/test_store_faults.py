"""The product store under storage faults (issue #12): corrupt or lost store files, a full disk,
read-only storage, writes refused mid-run, a crash while products are held in RAM. Real files and
real SQLite throughout; the tmpfs tests mount a real file system and skip where mounting is not
permitted, each with a variant that always runs and injects the same SQLite error."""

import os
import random
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flight.dictionary import EVENTS
from flight.store import ProductStore, StoreFull

MiB = 1024 * 1024


def put(store, priority=1, size=500, apid=0x101):
    return store.put(priority, apid, 0.0, lambda pid, seq: bytes([pid % 251]) * size)[0]


def waiting(store) -> list[int]:
    """Ids of every waiting product, disk and RAM, as readers of store.db see them."""
    return sorted(r[0] for r in store.db.execute("SELECT id FROM products"))


def on_disk(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return sorted(r[0] for r in db.execute("SELECT id FROM products"))
    finally:
        db.close()


def names(events) -> list[str]:
    for name, kw in events:  # exactly the dictionary's format arguments (FlightApp.emit formats them)
        EVENTS[name].fmt.format(frame_id=-1, **kw)
    return [name for name, _ in events]


def refuse_disk_writes(store, on: bool) -> None:
    """Every write to the store file fails (SQLITE_AUTH). Stands for a disk that went read-only or
    returns I/O errors mid-run: a tmpfs cannot be remounted read-only while the store has its files
    open for writing ("mount point is busy"). Reads still work, as on a read-only disk."""
    writes = (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE)

    def deny(action, arg1, arg2, dbname, source):
        return sqlite3.SQLITE_DENY if dbname == "disk" and action in writes else sqlite3.SQLITE_OK

    store.db.set_authorizer(deny if on else None)


def cap_disk_pages(store, on: bool) -> None:
    """The store file may not grow: SQLite fails with SQLITE_FULL "database or disk is full", the
    same error as a full file system (ENOSPC). Stands for a full disk without mounting one."""
    store.db.execute(f"PRAGMA disk.max_page_count = {1 if on else 1073741823}")  # 1: clamped to the current size


# -- a tmpfs: a real file system that can be filled and made read-only ------------------------------

def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True)


@pytest.fixture
def tmpfs(tmp_path):
    d = tmp_path / "mnt"
    d.mkdir()
    try:
        r = _run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d))
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (needs root or CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield d
    finally:
        if _run("umount", str(d)).returncode != 0:
            _run("umount", "-l", str(d))


def fill(d: Path) -> Path:
    """Fill the file system with one filler file until ENOSPC."""
    filler = d / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def remount(d: Path, mode: str) -> None:
    r = _run("mount", "-o", f"remount,{mode}", str(d))
    assert r.returncode == 0, r.stderr


# -- corrupt and lost stores ------------------------------------------------------------------------

def _garbage(p: Path) -> None:
    p.write_bytes(random.Random(1).randbytes(8192))


def _truncated(p: Path) -> None:
    os.truncate(p, p.stat().st_size // 2)


def _zero_length(p: Path) -> None:
    p.write_bytes(b"")


def _foreign(p: Path) -> None:
    p.unlink()
    db = sqlite3.connect(p)
    db.execute("CREATE TABLE something_else (x)")
    db.commit()
    db.close()


@pytest.mark.parametrize("corrupt", [_garbage, _truncated, _zero_length, _foreign],
                         ids=["garbage", "truncated_to_half", "zero_length", "sqlite_without_our_tables"])
def test_a_corrupt_store_is_quarantined_and_a_fresh_one_never_repeats_its_ids(tmp_path, corrupt):
    path = tmp_path / "s.db"
    s = ProductStore(path, MiB)
    old = [put(s, size=1500) for _ in range(20)]
    s.close()
    corrupt(path)
    before = path.read_bytes()
    s = ProductStore(path, MiB)  # before issue #12: a raw sqlite traceback, the flight did not start
    events = s.take_events()
    assert names(events) == ["STORE_QUARANTINED"]
    kw = events[0][1]
    assert (tmp_path / kw["moved"]).read_bytes() == before  # kept, byte for byte, for analysis
    assert kw["moved"].startswith("s.db.corrupt-") and kw["epoch"] == 1 == s.epoch
    assert s.state == 0 and s.pending() == 0
    new = [put(s) for _ in range(5)]
    assert min(new) > max(old) and new[0] == (1 << 32) + 1
    s.close()
    assert on_disk(path) == new


def test_a_store_quarantined_twice_in_one_second_keeps_both_copies(tmp_path):
    path = tmp_path / "s.db"
    for _ in range(2):
        _garbage(path)
        ProductStore(path, MiB).close()
    assert len(list(tmp_path.glob("s.db.corrupt-*"))) == 2


def test_a_store_corrupted_mid_run_is_quarantined_when_reopened(tmp_path):
    path = tmp_path / "s.db"
    s = ProductStore(path, MiB)
    put(s)
    s.db.execute("DROP TABLE disk.counters")  # the store damaged under the running flight
    a = put(s)  # the write fails (no such table): the disk is taken out, the product held in RAM
    assert s.state == 2 and s.ram_products == 1
    assert s.maintain(10.0) is True  # reopened: not a product store any more, quarantined, fresh store
    assert names(s.take_events()) == ["STORE_DEGRADED", "STORE_QUARANTINED", "STORE_RECOVERED"]
    assert waiting(s) == [a] and s.state == 0
    s.close()
    assert on_disk(path) == [a]


# -- a full disk ------------------------------------------------------------------------------------

def test_disk_full_on_a_tmpfs_holds_products_in_ram_and_moves_them_back(tmp_path, tmpfs):
    path = tmpfs / "s.db"
    s = ProductStore(path, 64 * MiB, epoch_path=tmp_path / "store_epoch")
    first = [put(s, size=2000) for _ in range(5)]
    filler = fill(tmpfs)
    later = [put(s, size=2000) for _ in range(100)]  # before issue #12: a crash on the first one
    held = s.ram_products
    assert s.state == 1 and held >= 90  # a few may still fit into pages SQLite already had
    assert s.pending() == 105 and waiting(s) == first + later  # nothing lost, each once
    assert later == sorted(later) and len(set(later)) == 100
    assert names(s.take_events()) == ["STORE_DEGRADED"]  # once per episode
    sent = [r[0] for r in s.due(100.0, 5.0, 200)]
    s.mark_sent(sent, 100.0)
    assert s.ack(sent[:10]) == 10  # acks work while the disk is full
    assert s.maintain(200.0) is False and s.state == 1  # still full
    filler.unlink()
    assert s.maintain(200.5) is False  # rate-limited: retry_s after the last try
    assert s.maintain(202.0) is True and s.state == 0 and s.ram_products == 0
    events = s.take_events()
    assert names(events) == ["STORE_RECOVERED"] and events[0][1]["moved"] == held - len(set(sent[:10]) & set(later))
    s.close()
    assert on_disk(path) == sorted(set(first + later) - set(sent[:10]))
    print(f"\ntmpfs disk full: {held} of 100 products held in RAM, {events[0][1]['moved']} moved back "
          f"to the store after the filler was deleted, 0 lost")  # shown with -s


def test_disk_full_injected_holds_products_in_ram_and_moves_them_back(tmp_path):
    """The variant that always runs: SQLite's max_page_count stands for the full file system."""
    path = tmp_path / "s.db"
    s = ProductStore(path, 64 * MiB)
    first = [put(s, size=2000) for _ in range(5)]
    cap_disk_pages(s, True)
    later = [put(s, size=2000) for _ in range(50)]
    assert s.state == 1 and s.ram_products >= 45 and s.pending() == 55
    assert waiting(s) == first + later
    assert names(s.take_events()) == ["STORE_DEGRADED"]
    assert s.maintain(10.0) is False
    cap_disk_pages(s, False)
    assert s.maintain(20.0) is True and s.state == 0
    assert names(s.take_events()) == ["STORE_RECOVERED"]
    s.close()
    assert on_disk(path) == first + later


def test_when_ram_is_full_too_products_are_evicted_by_priority_then_lost(tmp_path):
    s = ProductStore(tmp_path / "s.db", MiB, ram_max_bytes=4096)
    refuse_disk_writes(s, True)
    low = [put(s, priority=4, size=1000) for _ in range(4)]
    assert s.ram_products == 4
    pid, evicted = s.put(0, 0x101, 0.0, lambda pid, seq: b"a" * 1000)
    assert [e.product_id for e in evicted] == [low[0]]  # the oldest least important makes room
    for _ in range(3):
        put(s, priority=0, size=1000)
    with pytest.raises(StoreFull) as exc:
        put(s, priority=1, size=1000)  # nothing of priority >= 1 left in RAM: kept nowhere
    assert exc.value.lost and "RAM" in str(exc.value)
    assert s.pending() == 4


def test_moving_ram_products_to_a_bounded_store_evicts_by_the_same_rule(tmp_path):
    s = ProductStore(tmp_path / "s.db", 3000)
    d0 = put(s, priority=0, size=1000)
    tm = put(s, priority=4, size=1000)
    refuse_disk_writes(s, True)
    alert = put(s, priority=0, size=1000)
    big = put(s, priority=4, size=1500)
    refuse_disk_writes(s, False)
    assert s.maintain(10.0)
    events = s.take_events()
    # the alert fits; the big one would need 1500 bytes where only 1000 (the older telemetry) may be
    # evicted: it goes itself, and nothing is evicted for it
    assert names(events) == ["STORE_DEGRADED", "STORE_EVICTED", "STORE_RECOVERED"]
    assert [kw for _, kw in events[1:]] == [{"product_id": big, "priority": 4}, {"moved": 1}]
    assert waiting(s) == [d0, tm, alert]


# -- read-only storage --------------------------------------------------------------------------------

def test_a_read_only_store_folder_runs_ram_only_and_resumes_on_disk(tmp_path, tmpfs):
    path = tmpfs / "s.db"
    s = ProductStore(path, MiB, epoch_path=tmp_path / "store_epoch")
    old = [put(s) for _ in range(3)]
    s.close()
    remount(tmpfs, "ro")
    s = ProductStore(path, MiB, epoch_path=tmp_path / "store_epoch")  # before issue #12: did not start
    assert s.state == 2 and names(s.take_events()) == ["STORE_DEGRADED"]
    new = [put(s) for _ in range(4)]
    assert s.epoch == 1 and min(new) > max(old)  # the epoch file (elsewhere) was writable
    assert waiting(s) == new  # the disk's products wait on the disk
    assert s.maintain(10.0) is False and s.state == 2
    remount(tmpfs, "rw")
    assert s.maintain(20.0) is True and s.state == 0
    assert names(s.take_events()) == ["STORE_RECOVERED"] and waiting(s) == old + new
    s.close()
    assert on_disk(path) == old + new


def test_a_corrupt_store_that_cannot_be_renamed_runs_ram_only_until_it_can(tmp_path, tmpfs):
    path = tmpfs / "s.db"
    _garbage(path)
    remount(tmpfs, "ro")
    s = ProductStore(path, MiB, epoch_path=tmp_path / "store_epoch")
    assert s.state == 2 and names(s.take_events()) == ["STORE_DEGRADED"]
    a = put(s)
    remount(tmpfs, "rw")
    assert s.maintain(10.0) is True
    assert names(s.take_events()) == ["STORE_QUARANTINED", "STORE_RECOVERED"]
    assert len(list(tmpfs.glob("s.db.corrupt-*"))) == 1
    s.close()
    assert on_disk(path) == [a]


def test_a_missing_store_folder_runs_ram_only_until_it_appears(tmp_path):
    s = ProductStore(tmp_path / "not_mounted" / "s.db", MiB)  # epoch file beside it cannot be written either
    assert s.state == 2
    a = put(s)
    (tmp_path / "not_mounted").mkdir()
    assert s.maintain(10.0) and waiting(s) == [a]
    s.close()
    assert on_disk(tmp_path / "not_mounted" / "s.db") == [a]


def test_writes_refused_mid_run_keep_acks_and_priorities_and_apply_them_later(tmp_path):
    path = tmp_path / "s.db"
    s = ProductStore(path, MiB)
    d1, d2, d3 = (put(s, priority=2, apid=0x102) for _ in range(3))
    s.mark_sent([d1, d2], 10.0)
    refuse_disk_writes(s, True)
    assert s.ack([d1]) == 1 and s.state == 1  # the delete failed: hidden now, deleted later
    assert s.ack([d1]) == 0 and d1 not in waiting(s)
    r1 = put(s, priority=3, apid=0x101)
    assert s.ram_products == 1 and r1 >> 32 == 1
    assert s.reprioritize(0x102, 4) == 2  # the disk ones move when it writes again
    assert [r[0] for r in s.due(100.0, 1.0, 10)] == [d2, d3, r1]  # merged by priority then id
    s.mark_sent([r1], 100.0)
    assert [r[2] for r in s.due(200.0, 1.0, 10) if r[0] == r1] == [1]
    assert s.clear(4) == 0  # nothing of priority 4 yet on disk (deferred) nor in RAM
    refuse_disk_writes(s, False)
    assert s.maintain(10.0) and s.state == 0
    assert names(s.take_events()) == ["STORE_DEGRADED", "STORE_RECOVERED"]
    assert [r[0] for r in s.due(300.0, 1.0, 10)] == [r1, d2, d3]  # priorities 3, 4, 4 now
    s.close()
    assert on_disk(path) == [d2, d3, r1]


def test_a_crash_while_products_are_held_in_ram_never_repeats_their_ids(tmp_path):
    """Products held in RAM may have reached the ground before the flight died: the restarted
    flight's ids must differ, or the ground would drop its new products as duplicates."""
    path = tmp_path / "s.db"
    s = ProductStore(path, MiB)
    put(s)
    refuse_disk_writes(s, True)
    downlinked = [put(s) for _ in range(3)]
    s.db.close()  # SIGKILL: RAM is gone, the disk never saw those ids
    s = ProductStore(path, MiB)
    new = [put(s) for _ in range(3)]
    assert s.epoch == 2 and not set(new) & set(downlinked) and min(new) > max(downlinked)
    s.close()


def test_close_saves_ram_products_or_says_how_many_it_could_not(tmp_path):
    s = ProductStore(tmp_path / "s.db", MiB)
    refuse_disk_writes(s, True)
    put(s)
    put(s)
    assert s.close() == 2
    s = ProductStore(tmp_path / "s.db", MiB)
    cap_disk_pages(s, True)
    a = put(s, size=5000)
    cap_disk_pages(s, False)
    assert s.close() == 0
    assert on_disk(tmp_path / "s.db") == [a]


# -- property: nothing accepted is lost, nothing is pending twice, ids only grow ------------------------

OPS = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 4)),
    st.tuples(st.just("send"), st.integers(1, 5)),
    st.tuples(st.just("ack"), st.integers(0, 7)),
    st.tuples(st.just("full"), st.booleans()),
    st.tuples(st.just("refuse"), st.booleans()),
    st.tuples(st.just("maintain"), st.just(0)),
    st.tuples(st.just("restart"), st.just(0)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, max_size=40))
def test_any_interleaving_keeps_every_product_pending_exactly_once(ops):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.db"
        s = ProductStore(path, 64 * MiB, retry_s=1.0)
        model: set[int] = set()  # put and not acknowledged
        ids: list[int] = []
        now = 0.0
        for op, arg in ops:
            now += 1.0
            if op == "put":
                ids.append(put(s, priority=arg, size=300))
                model.add(ids[-1])
            elif op == "send":
                sent = [r[0] for r in s.due(now, 2.5, arg)]
                s.mark_sent(sent, now)
            elif op == "ack" and ids:
                pick = ids[arg % len(ids)]  # maybe acknowledged already: repeats are harmless
                assert s.ack([pick]) == (pick in model)
                model.discard(pick)
            elif op == "full":
                cap_disk_pages(s, arg)
            elif op == "refuse":
                refuse_disk_writes(s, arg)
            elif op == "maintain":
                s.maintain(now)
            elif op == "restart":  # a clean restart: the disk works again, close saves RAM
                refuse_disk_writes(s, False)
                cap_disk_pages(s, False)
                assert s.close() == 0
                s = ProductStore(path, 64 * MiB, retry_s=1.0)
            seen = [r[0] for r in s.db.execute("SELECT id FROM products")]
            assert len(seen) == len(set(seen)) and set(seen) == model
            assert s.pending() == len(model) and s.ram_products <= len(model)
            due = [r[0] for r in s.due(1e12, 0.0, 10**6)]  # everything timed out: all due, once
            assert sorted(due) == sorted(model)
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        refuse_disk_writes(s, False)
        cap_disk_pages(s, False)
        assert s.maintain(now + 10.0) and s.close() == 0
        assert on_disk(path) == sorted(model)


# -- the flight application ---------------------------------------------------------------------------

@pytest.fixture
def flight(tmp_path, monkeypatch):
    from ops_util import flight_apps

    with flight_apps(tmp_path, monkeypatch, [], 1000.0) as (make, _key):
        yield make


def _event_ids(app) -> list[int]:
    from flight.products import Event, decode_tm

    return [p.event_id for p in (decode_tm(r[0])[1] for r in app.store.db.execute(
        "SELECT packet FROM products WHERE apid = 0x105 ORDER BY id")) if isinstance(p, Event)]


def test_the_flight_starts_on_a_corrupt_store_degrades_and_reports_store_faults(tmp_path, flight):
    from flight.dictionary import Mode

    _garbage(tmp_path / "flight_store.sqlite")
    app, _ = flight()  # before issue #12: sqlite3.DatabaseError, the flight did not start
    app.store_maintenance()
    assert app.modes.mode == Mode.DEGRADED
    assert EVENTS["STORE_QUARANTINED"].id in _event_ids(app)
    tm = app.telemetry()
    assert tm["store_state"] == 0 and tm["store_epoch"] == 1 and tm["products_created"] >= 1
    refuse_disk_writes(app.store, True)
    app.emit("STARTED", profile="test")  # the write fails: held in RAM
    app.store_maintenance()
    tm = app.telemetry()
    assert tm["store_state"] == 1 and tm["store_ram_products"] == 2  # STARTED and STORE_DEGRADED
    assert EVENTS["STORE_DEGRADED"].id in _event_ids(app)
    app.store.ram_max_bytes = 4096  # RAM full of events (each evicts the oldest one of its priority)
    for _ in range(30):
        app.emit("STARTED", profile="x" * 100)
    app.housekeeping(force=True)  # less important than every event held: kept nowhere, counted
    assert app.counts["products_lost"] == 1 and app.counts["products_refused"] == 0
    assert app.telemetry()["products_lost"] == 1
    refuse_disk_writes(app.store, False)
    app.store._next_try_wall = 0.0  # do not wait for the retry period
    app.store_maintenance()
    assert app.telemetry()["store_state"] == 0 and EVENTS["STORE_RECOVERED"].id in _event_ids(app)
