"""Persistent store-and-forward of products waiting for a ground acknowledgement.

SQLite in WAL mode with synchronous=FULL: a committed product survives SIGKILL and power loss.
A product leaves only when the ground acknowledges its id. Downlink order is priority then age.
The store is bounded in bytes; when a new product does not fit, products of the lowest priority
(highest number) that is not more important than the new one are evicted, oldest first, each
eviction reported to the caller (which emits an event). If nothing may be evicted, the new
product is refused.

Storage faults (issue #12) never stop the flight:

- Product id = (epoch << 32) | n, n = 1, 2, ... The epoch is kept in a small file outside the
  store (fsync + atomic rename, written before any id of the epoch is handed out) and in the
  store's counters. A healthy store keeps its epoch; a fresh one (first boot, lost, quarantined)
  takes epoch file + 1, so its ids never repeat the ones the ground already archived. Ids are at
  most 63 bits: a SQLite INTEGER.
- A corrupt store (not a database, malformed, quick_check not "ok", our tables missing) is
  renamed to `<name>.corrupt-<UTC time>` (kept for analysis) and a fresh one opened
  (STORE_QUARANTINED). The newest `quarantine_keep` (3) such copies are kept, older ones deleted
  with a log line: a store corrupted at every restart must not fill the mass memory.
- When the disk cannot write (full, read-only, I/O error, cannot open), new products go to a RAM
  buffer: an in-memory SQLite database with the same schema and eviction rules, bounded by
  `ram_max_bytes` (STORE_DEGRADED, once per episode). Ids of products held only in RAM come from
  a fresh epoch: if the flight dies before they reach the disk, the restarted flight's ids (from
  the disk's last epoch, or epoch file + 1) cannot repeat them. `maintain()` retries every
  `retry_s`, moves the RAM products to the disk in one transaction (STORE_RECOVERED).
- The connection's main database IS the RAM buffer; the store file is ATTACHed as `disk` (an
  empty in-memory stand-in while it cannot be opened: state 2), so SQL reads both, and a flush is
  INSERT ... SELECT from RAM to disk in one transaction. A TEMP VIEW named `products` shows every
  waiting product (disk and RAM) to readers that query `store.db` directly.
- Send state (sent_wall, left_wall, sends) lives in RAM: it was reset at every open anyway, and
  a failing disk must not stop the downlink timers. Its times (`*_wall`, the names kept from when
  they were wall seconds) are the caller's link clock, time.monotonic() in the flight, so a wall
  clock stepped back does not hold every timer for the step. `sends` is also written to the disk while it
  works, so a retransmission after a restart is still counted as one. Measured here (5,000
  products of 2 KB): due + mark_sent + ack of a 64-packet window 1.6 ms, was 9.9 ms (one
  committed UPDATE per packet); due with the window full 0.01 ms, was 4 ms (a full scan).
- Acknowledged or cleared products that the failing disk cannot delete are hidden (tombstones
  in RAM) and deleted when the disk writes again; a reprioritization is applied to the disk then.
- A put's room check and eviction cost the same whatever the store holds: the waiting bytes per
  priority are kept by TEMP triggers (SIZES), and the product to evict is found by two index
  lookups. Measured here (64 MiB of 2 KB products, every put evicting one): 0.28 ms per put, was
  63 ms (a sum over every packet, then a sort of the whole store); filling it took 7.5 s, was 510 s.
- A failing ROLLBACK never hides the first error (after SQLITE_FULL the transaction may already
  be gone).

Space on the mass memory is returned after a pass (the files kept their high-water size before:
a store filled during a long gap and then drained stayed at its worst case for good, -wal included):

- A new store is made with auto_vacuum=INCREMENTAL (it must be set before the first table), and
  every attach sets journal_size_limit (WAL_LIMIT_BYTES): a WAL blown up by one large transaction
  (clear(), a flush of the RAM buffer, a VACUUM) is cut back when SQLite next restarts it.
- `maintain()`, while the store is on disk, runs a reclaim tick at most every RECLAIM_INTERVAL_S:
  once RECLAIM_START_BYTES of pages are free, or any are free and the store is quiet (no row
  changed for RECLAIM_QUIET_S: after a pass), it returns them RECLAIM_STEP_BYTES per tick
  (`incremental_vacuum`, one committed transaction) until a tick finds none free, each step
  followed by a checkpoint, so the database file shrinks: PASSIVE while the store is busy (the WAL
  keeps its blocks for the next writes, at most WAL_LIMIT_BYTES), TRUNCATE when it is quiet or the
  WAL is above WAL_LIMIT_BYTES. With nothing to reclaim, a quiet store's WAL is checkpointed
  (TRUNCATE) to 0 bytes too: a store at rest is its live pages and no WAL. A tick's work is bounded
  by the step plus the WAL since the last checkpoint (at most SQLite's 1000-page autocheckpoint
  plus the last transaction: what a put's own autocheckpoint may already pay). Every step is an
  ordinary SQLite transaction or checkpoint: a kill anywhere in it loses nothing committed.
- A store made before this (auto_vacuum=NONE) keeps working as it did; it is converted
  (auto_vacuum=INCREMENTAL and one VACUUM: one atomic transaction that rewrites the file through the
  WAL) at open or at a reclaim tick, once its live pages fit in LEGACY_VACUUM_MAX_BYTES, so the
  rewrite stays short and needs little space (a VACUUM needs the live pages again in the WAL and,
  temp_store=MEMORY, in RAM). A conversion that fails (a full disk) is logged and
  not tried again until the flight restarts; until converted, such a store keeps its high-water size.
- Returned space is no longer reserved: another file on a shared mass memory may take it, and the
  store then meets a full disk before its byte budget (RAM buffer, STORE_DEGRADED, as for any full
  disk).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SCHEMA_TEMPLATE = """
CREATE TABLE IF NOT EXISTS {s}.products (
    id INTEGER PRIMARY KEY,
    priority INTEGER NOT NULL,
    apid INTEGER NOT NULL,
    created_s REAL NOT NULL,
    packet BLOB NOT NULL,
    sent_wall REAL NOT NULL DEFAULT 0,
    sends INTEGER NOT NULL DEFAULT 0,
    left_wall REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS {s}.by_order ON products (priority, id);
CREATE TABLE IF NOT EXISTS {s}.counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
SCHEMA = SCHEMA_TEMPLATE.replace("{s}.", "")  # the on-disk schema

# RAM only: send state of every product, disk deletions waiting for a writable disk, and the view
VOLATILE = """
CREATE TABLE main.sendstate (id INTEGER PRIMARY KEY, sent_wall REAL NOT NULL, left_wall REAL NOT NULL,
                             sends INTEGER NOT NULL);
CREATE TABLE main.tombstones (id INTEGER PRIMARY KEY);
"""
VIEW = """
CREATE TEMP VIEW IF NOT EXISTS products AS
SELECT p.id, p.priority, p.apid, p.created_s, p.packet, coalesce(s.sent_wall, 0) AS sent_wall,
       coalesce(s.sends, p.sends) AS sends, coalesce(s.left_wall, 0) AS left_wall, 0 AS in_ram
  FROM disk.products p LEFT JOIN main.sendstate s ON s.id = p.id
 WHERE p.id NOT IN (SELECT id FROM main.tombstones)
UNION ALL
SELECT p.id, p.priority, p.apid, p.created_s, p.packet, coalesce(s.sent_wall, 0), coalesce(s.sends, 0),
       coalesce(s.left_wall, 0), 1
  FROM main.products p LEFT JOIN main.sendstate s ON s.id = p.id;
"""
# Bytes and count of the waiting products per schema (disk, main = RAM buffer) and priority, kept by
# TEMP triggers on every insert, delete and priority change, so a put's room check reads a few rows
# (it summed every stored packet). Triggers and rows are remade at each attach of `disk` and dropped
# before each detach (a TEMP trigger on a detached database's table stops firing, and breaks the
# next attach: "malformed database schema").
SIZES = """
CREATE TEMP TABLE IF NOT EXISTS sizes (db TEXT NOT NULL, priority, bytes INTEGER NOT NULL, n INTEGER NOT NULL,
                                       PRIMARY KEY (db, priority));
"""
SIZE_TRIGGERS = """
DROP TRIGGER IF EXISTS temp.{s}_sizes_in;
DROP TRIGGER IF EXISTS temp.{s}_sizes_out;
DROP TRIGGER IF EXISTS temp.{s}_sizes_move;
CREATE TEMP TRIGGER {s}_sizes_in AFTER INSERT ON {s}.products BEGIN
    INSERT INTO sizes VALUES ('{s}', new.priority, length(new.packet), 1)
        ON CONFLICT (db, priority) DO UPDATE SET bytes = bytes + excluded.bytes, n = n + 1;
END;
CREATE TEMP TRIGGER {s}_sizes_out AFTER DELETE ON {s}.products BEGIN
    UPDATE sizes SET bytes = bytes - length(old.packet), n = n - 1 WHERE db = '{s}' AND priority IS old.priority;
END;
CREATE TEMP TRIGGER {s}_sizes_move AFTER UPDATE OF priority, packet ON {s}.products BEGIN
    UPDATE sizes SET bytes = bytes - length(old.packet), n = n - 1 WHERE db = '{s}' AND priority IS old.priority;
    INSERT INTO sizes VALUES ('{s}', new.priority, length(new.packet), 1)
        ON CONFLICT (db, priority) DO UPDATE SET bytes = bytes + excluded.bytes, n = n + 1;
END;
DELETE FROM temp.sizes WHERE db = '{s}';
INSERT INTO temp.sizes SELECT '{s}', priority, sum(length(packet)), count(*) FROM {s}.products GROUP BY priority;
"""
N_BITS = 32
N_MAX = (1 << N_BITS) - 1
EPOCH_MAX = (1 << 31) - 1  # ids stay below 2**63
ON_DISK, DISK_FAILING, RAM_ONLY = 0, 1, 2

# Returning space to the file system (module docstring). Sizes in bytes, divided by the store's page size.
AUTO_VACUUM_NONE, AUTO_VACUUM_INCREMENTAL = 0, 2  # PRAGMA auto_vacuum values
WAL_LIMIT_BYTES = 4 * 1024 * 1024  # journal_size_limit: ~SQLite's 1000-page autocheckpoint, so its cycle is never cut
RECLAIM_INTERVAL_S = 0.5  # at most one reclaim tick per interval (caller's link clock)
RECLAIM_START_BYTES = 1024 * 1024  # free pages worth reclaiming while the store is busy; then down to none
RECLAIM_QUIET_S = 10.0  # no row changed for this long: any free page is reclaimed, the WAL truncated
RECLAIM_STEP_BYTES = 1024 * 1024  # pages returned per tick (256 of 4 KiB; ~1-2 ms measured, see docs/operations.md)
LEGACY_VACUUM_MAX_BYTES = 1024 * 1024  # an old store is converted (one VACUUM) when its live pages fit in this


@dataclass(frozen=True)
class Evicted:
    product_id: int
    priority: int
    nbytes: int


class StoreFull(Exception):
    """No room for a product. `lost`: the disk could not write and the RAM buffer was full too."""

    def __init__(self, message: str, lost: bool = False):
        super().__init__(message)
        self.lost = lost


class StoreCorrupt(sqlite3.DatabaseError):
    pass


def _corrupt(exc: BaseException) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return isinstance(exc, StoreCorrupt) or name == "SQLITE_NOTADB" or name.startswith("SQLITE_CORRUPT")


def _damaged(exc: BaseException) -> bool:
    """Corrupt, or one of our fixed statements failed on the store's schema (a table dropped): the
    disk is taken out and reopened, where the open checks decide on quarantine."""
    return _corrupt(exc) or getattr(exc, "sqlite_errorname", "") == "SQLITE_ERROR"


def _disk_fault(exc: BaseException) -> bool:
    """A storage failure (full, read-only, I/O, cannot open, corrupt), not a bug in a statement."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError)


class ProductStore:
    def __init__(self, path: str | Path, max_bytes: int, epoch_path: str | Path | None = None,
                 ram_max_bytes: int = 4 * 1024 * 1024, log: Callable[[str], None] | None = None,
                 retry_s: float = 2.0, quarantine_keep: int = 3):
        self.path = Path(path)
        self.quarantine_keep = max(1, quarantine_keep)  # quarantined copies kept (`*.corrupt-*`), newest first
        self.max_bytes = max_bytes
        self.ram_max_bytes = ram_max_bytes
        self.epoch_path = Path(epoch_path) if epoch_path else self.path.with_name("store_epoch")
        self.log = log or (lambda msg: None)
        self.retry_s = retry_s
        self.state = ON_DISK
        self.last_id = 0  # the last product id handed out: (epoch << 32) | n
        self.seq: dict[int, int] = {}  # next CCSDS sequence count per APID
        self._created_unsaved = 0  # products created that the disk's counter does not count yet
        self._epoch_on_disk = False  # the disk records ids of the current epoch: RAM ids need a new one
        self._reprioritize_later: list[tuple[int, int]] = []
        self._events: list[tuple[str, dict]] = []
        self._episode = False  # STORE_DEGRADED said for this episode
        self._next_try_wall = 0.0
        self._next_reclaim_wall = 0.0  # the next reclaim tick (maintain)
        self._reclaiming = False  # returning free pages, until none are left
        self._changes_seen = -1  # db.total_changes at the last reclaim tick that saw it change
        self._changed_wall = 0.0  # ... and when (quiet: RECLAIM_QUIET_S after it)
        self._reclaim_failing = False  # a reclaim failure was logged (once per episode)
        self._legacy_failed = False  # converting an old store failed: not tried again by this process
        self._closed = False
        self.db = sqlite3.connect(":memory:", isolation_level=None)
        self.db.execute("PRAGMA temp_store=MEMORY")
        self.db.executescript(SCHEMA_TEMPLATE.format(s="main") + VOLATILE + SIZES + SIZE_TRIGGERS.format(s="main"))
        file_epoch, file_seen = self._read_epoch_file()
        existed = self._store_files_exist()
        counters = self._attach()
        self.db.executescript(VIEW)
        stored_epoch = counters.get("epoch", 0) if counters else 0
        if counters is not None and self._counters_bad:
            # the store's record of the ids it handed out is damaged: an epoch above every one recorded
            # anywhere, so no new id repeats a stored or archived one (was: TypeError at start, or an
            # IntegrityError on every put when the id counter fell behind the stored products)
            known = max(stored_epoch, counters.get("product_id", 0) >> N_BITS, self._top_id >> N_BITS)
            try:
                self._start_epoch(max(known, file_epoch if file_epoch is not None else 0) + 1)
            except StoreFull as exc:  # a stored id in the last epoch: no new id can be unique; every put says so
                self.log(f"store: {exc}")
                self.last_id = (EPOCH_MAX << N_BITS) | N_MAX
        elif counters is not None and not self._fresh and (file_epoch is None or file_epoch <= stored_epoch):
            self.last_id = max(counters.get("product_id", 0), stored_epoch << N_BITS)
            self._epoch_on_disk = True
            if file_epoch != stored_epoch:  # missing (first run of this software) or behind
                self._write_epoch_file(stored_epoch)
        else:
            self._start_epoch(file_epoch + 1 if file_epoch is not None else int(existed or file_seen))
        if counters is not None:
            self.seq = {int(k[4:]): v for k, v in counters.items() if k.startswith("seq_")}
            # a store written before epochs counted products by their ids (all of epoch 0)
            legacy = counters.get("product_id", 0) & N_MAX if "products_created" not in counters else 0
            self._record_epoch_at_open(legacy)
        self._queue_quarantine()

    # -- public state -------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self.last_id >> N_BITS

    @property
    def ram_products(self) -> int:
        return self.db.execute("SELECT count(*) FROM main.products").fetchone()[0]

    def take_events(self) -> list[tuple[str, dict]]:
        """Events to emit (STORE_QUARANTINED, STORE_DEGRADED, STORE_RECOVERED, STORE_EVICTED) as
        (name, format arguments); each is returned once."""
        events, self._events = self._events, []
        return events

    def counter(self, name: str) -> int:
        if name == "product_id":
            return self.last_id
        if name == "epoch":
            return self.epoch
        if name.startswith("seq_"):
            return self.seq.get(int(name[4:]), 0)
        row = self._read(lambda: self.db.execute("SELECT value FROM disk.counters WHERE name = ?", (name,)).fetchone())
        value = row[0] if row and isinstance(row[0], int) else 0  # a damaged value reads as 0, never a TypeError
        return value + self._created_unsaved if name == "products_created" else value

    # -- products ----------------------------------------------------------------------------------

    def put(self, priority: int, apid: int, created_s: float, build: Callable[[int, int], bytes]) -> tuple[int, list[Evicted]]:
        """Allocate a product id and an APID sequence count, build the packet with
        `build(product_id, seq_count)` and store it, all in one transaction: on the disk, or in
        the RAM buffer while the disk cannot write. Raises StoreFull when neither may keep it."""
        if self.state == ON_DISK:
            try:
                return self._put(priority, apid, created_s, build, ram=False)
            except sqlite3.DatabaseError as exc:
                if not _disk_fault(exc):
                    raise
                self._fault(exc)
        return self._put(priority, apid, created_s, build, ram=True)

    def _put(self, priority: int, apid: int, created_s: float, build, ram: bool) -> tuple[int, list[Evicted]]:
        if ram and self._epoch_on_disk:
            self._start_epoch(self.epoch + 1)  # see the module docstring: RAM ids never repeat after a crash
        pid = self._next_id()
        seq = self.seq.get(int(apid), 0)
        packet = build(pid, seq)
        schema, limit = ("main", min(self.ram_max_bytes, self.max_bytes)) if ram else ("disk", self.max_bytes)
        self.db.execute("BEGIN" if ram else "BEGIN IMMEDIATE")
        try:
            evicted = self._make_room(schema, limit, priority, len(packet), lost=ram)
            self.db.execute(f"INSERT INTO {schema}.products (id, priority, apid, created_s, packet) VALUES (?, ?, ?, ?, ?)",
                            (pid, priority, int(apid), created_s, packet))
            if not ram:
                self._write_counters(pid, {int(apid): (seq + 1) & 0x3FFF}, 1 + self._created_unsaved)
            self.db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self.last_id = pid
        self.seq[int(apid)] = (seq + 1) & 0x3FFF
        if ram:
            self._created_unsaved += 1
        else:
            self._created_unsaved = 0
            self._epoch_on_disk = True
        self._forget([e.product_id for e in evicted])
        return pid, evicted

    def _next_id(self) -> int:
        if self.last_id & N_MAX == N_MAX:  # n exhausted: the next epoch
            self._start_epoch(self.epoch + 1)
        return self.last_id + 1

    def _make_room(self, schema: str, limit: int, priority: int, nbytes: int, lost: bool = False) -> list[Evicted]:
        used, evictable = self.db.execute(
            "SELECT coalesce(sum(bytes), 0), coalesce(sum(bytes) FILTER (WHERE priority >= ?), 0) FROM temp.sizes "
            "WHERE db = ?", (priority, schema)).fetchone()
        if used - evictable + nbytes > limit:  # checked first: nothing is evicted for a product then refused
            where = "RAM buffer (the store cannot write)" if lost else "store"
            raise StoreFull(f"{where} full ({used} of {limit} bytes) and not enough of priority >= {priority} to evict",
                            lost=lost)
        evicted: list[Evicted] = []
        while used + nbytes > limit:
            # the least important priority first, then its oldest: two index lookups (by_order). One
            # ORDER BY priority DESC, id ASC cannot use that index and sorted the whole store (12 ms
            # per eviction at 8 MiB of 2 KB products, 36 ms at 64 MiB)
            row = self.db.execute(f"SELECT id, priority, length(packet) FROM {schema}.products WHERE priority = "
                                  f"(SELECT max(priority) FROM {schema}.products WHERE priority >= ?) ORDER BY id LIMIT 1",
                                  (priority,)).fetchone()
            self.db.execute(f"DELETE FROM {schema}.products WHERE id = ?", (row[0],))
            evicted.append(Evicted(*row))
            used -= row[2]
        return evicted

    def due(self, now_wall: float, rto_s: float, window: int, expired: bool = True) -> list[tuple[int, bytes, int, float]]:
        """Packets to send now as (id, packet, sends, sent_wall): never sent, or unacknowledged
        `rto_s` after they left the radio (`left_wall`, given by mark_sent: a packet still queued
        in the transmitter is not timed out), most important first, keeping at most `window`
        packets unacknowledged in flight. sent_wall > 0 on a row means its timer ran out; 0 means
        never sent, or made due at once by an acknowledgement (see ack). `expired=False` leaves
        out the rows whose timer ran out. Disk and RAM together."""
        return self._read(lambda: self._due(now_wall, rto_s, window, expired))

    def _due(self, now_wall: float, rto_s: float, window: int, expired: bool = True) -> list[tuple[int, bytes, int, float]]:
        in_flight = self.db.execute("SELECT count(*) FROM main.sendstate WHERE sent_wall > 0 AND left_wall + ? > ?",
                                    (rto_s, now_wall)).fetchone()[0]
        room = window - in_flight
        if room <= 0:
            return []
        rows = []
        for schema, live in (("disk", "AND p.id NOT IN (SELECT id FROM main.tombstones)"), ("main", "")):
            rows += self.db.execute(
                f"SELECT p.priority, p.id, p.packet, coalesce(s.sends, p.sends), coalesce(s.sent_wall, 0) "
                f"FROM {schema}.products p LEFT JOIN main.sendstate s ON s.id = p.id "
                f"WHERE (s.id IS NULL OR s.sent_wall = 0 OR (? AND s.left_wall + ? <= ?)) {live} "
                f"ORDER BY p.priority, p.id LIMIT ?",
                (expired, rto_s, now_wall, room)).fetchall()
        rows.sort(key=lambda r: (r[0], r[1]))
        return [r[1:] for r in rows[:room]]

    def mark_sent(self, ids: list[int], now_wall: float, left_wall: list[float] | None = None) -> None:
        """Record a send; `left_wall[i]`: when packet i is expected to have left the radio (default now)."""
        lefts = left_wall if left_wall is not None else [now_wall] * len(ids)
        self.db.executemany(
            "INSERT INTO main.sendstate (id, sent_wall, left_wall, sends) SELECT id, ?, ?, sends + 1 FROM products "
            "WHERE id = ? ON CONFLICT (id) DO UPDATE SET sent_wall = excluded.sent_wall, left_wall = excluded.left_wall, "
            "sends = sends + 1", [(now_wall, lw, i) for i, lw in zip(ids, lefts, strict=True)])
        if self.state == ON_DISK and ids:  # so that a re-send after a restart still counts as one
            try:
                self.db.execute(f"UPDATE disk.products SET sends = sends + 1 WHERE id IN ({','.join('?' * len(ids))})", ids)
            except sqlite3.DatabaseError as exc:
                if not _disk_fault(exc):
                    raise
                self._fault(exc)

    def ack(self, ids: list[int]) -> int:
        """Remove acknowledged products; returns how many were still here (repeats are harmless)."""
        return self.ack_with_samples(ids, 0.0)[0]

    def ack_with_samples(self, ids: list[int], now_wall: float) -> tuple[int, list[float]]:
        """Remove acknowledged products. Returns how many were still here (repeats are harmless)
        and round-trip samples `now_wall - left_wall` of the products sent exactly once (Karn's
        rule: an ack of a re-sent packet does not say which send it answers).

        Fast retransmission: the link delivers in order, so a product still unacknowledged that
        was sent before the oldest one this ack covers was lost (typically sent into a contact
        gap): it is due again now instead of when its timer runs out."""
        if not ids:
            return 0, []
        marks = ",".join("?" * len(ids))
        here = self._read(lambda: self.db.execute(f"SELECT id, in_ram FROM products WHERE id IN ({marks})", ids).fetchall())
        rows = self.db.execute(
            f"SELECT sent_wall, left_wall, sends FROM main.sendstate WHERE sent_wall > 0 AND id IN ({marks})", ids
        ).fetchall()
        oldest = min((r[0] for r in rows), default=None)
        samples = [now_wall - r[1] for r in rows if r[2] == 1]
        self.db.executemany("DELETE FROM main.products WHERE id = ?", [(i,) for i, in_ram in here if in_ram])
        self._remove_from_disk([i for i, in_ram in here if not in_ram])
        self._forget([i for i, _ in here])
        if oldest is not None:
            self.db.execute("UPDATE main.sendstate SET sent_wall = 0 WHERE sent_wall > 0 AND sent_wall < ?", (oldest,))
        return len(here), samples

    def pending(self) -> int:
        return self._read(lambda: sum(self._totals()[0]))

    def bytes(self) -> int:
        return self._read(lambda: sum(self._totals()[1]))

    def _totals(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((disk count, RAM count), (disk bytes, RAM bytes)) of waiting products."""
        d, r = ({db: (n, b) for db, n, b in self.db.execute(
            "SELECT db, coalesce(sum(n), 0), coalesce(sum(bytes), 0) FROM temp.sizes GROUP BY db")}.get(s, (0, 0))
            for s in ("disk", "main"))
        hidden = self.db.execute("SELECT count(*), coalesce(sum(length(packet)), 0) FROM disk.products "
                                 "WHERE id IN (SELECT id FROM main.tombstones)").fetchone()  # deleted, for the ground
        return (d[0] - hidden[0], r[0]), (d[1] - hidden[1], r[1])

    def clear(self, min_priority: int = 0) -> int:
        gone = self._read(lambda: [r[0] for r in self.db.execute(
            "SELECT id FROM disk.products WHERE priority >= ? AND id NOT IN (SELECT id FROM main.tombstones)",
            (min_priority,))])
        n = self.db.execute("DELETE FROM main.products WHERE priority >= ?", (min_priority,)).rowcount
        self._remove_from_disk(gone)
        self.db.execute("DELETE FROM main.sendstate WHERE id NOT IN (SELECT id FROM products)")
        return n + len(gone)

    def reprioritize(self, apid: int, priority: int) -> int:
        """Move every waiting product of one APID to a new priority; returns how many moved. While
        the disk cannot write, its products move when it writes again."""
        n = self.db.execute("UPDATE main.products SET priority = ? WHERE apid = ?", (priority, apid)).rowcount
        if self.state == ON_DISK:
            try:
                return n + self.db.execute("UPDATE disk.products SET priority = ? WHERE apid = ? AND id NOT IN "
                                           "(SELECT id FROM main.tombstones)", (priority, apid)).rowcount
            except sqlite3.DatabaseError as exc:
                if not _disk_fault(exc):
                    raise
                self._fault(exc)
        self._reprioritize_later.append((apid, priority))
        return n + self._read(lambda: self.db.execute(
            "SELECT count(*) FROM disk.products WHERE apid = ? AND id NOT IN (SELECT id FROM main.tombstones)",
            (apid,)).fetchone()[0])

    def close(self) -> int:
        """Last try to move RAM products to the disk; returns how many could not be saved. Idempotent."""
        if self._closed:
            return 0
        self._closed = True
        if self.state != ON_DISK:
            self._next_try_wall = 0.0
            self.maintain(0.0)
        left = self.ram_products
        if left:
            self.log(f"store: {left} products held in RAM could not be saved at close ({self.path})")
        self.db.close()
        return left

    # -- faults ------------------------------------------------------------------------------------

    def maintain(self, now_wall: float) -> bool:
        """Rate-limited (every `retry_s`) retry while the disk cannot write: reopen the store if
        needed, apply the deletions and reprioritizations held back, and move the RAM products to
        the disk. Returns True when the store is on disk again (or was). While it is on disk: a
        reclaim tick (`reclaim`)."""
        if self.state == ON_DISK:
            self.reclaim(now_wall)
            return True
        if now_wall < self._next_try_wall:
            return False
        self._next_try_wall = now_wall + self.retry_s
        if self.state == RAM_ONLY and not self._reopen():
            return False
        try:
            # deletions first, committed alone: on a full disk they free the pages the RAM products need
            self.db.execute("BEGIN IMMEDIATE")
            self._delete_tombstoned()
            for apid, priority in self._reprioritize_later:
                self.db.execute("UPDATE disk.products SET priority = ? WHERE apid = ?", (priority, apid))
            self.db.execute("COMMIT")
            self.db.execute("DELETE FROM main.tombstones")
            self._reprioritize_later.clear()
            moved, evicted = self._flush()
        except sqlite3.DatabaseError as exc:
            self._rollback()
            if not _disk_fault(exc):
                raise
            self.log(f"store: still cannot write ({exc})")
            if _damaged(exc):
                self._lose_disk(exc)
            return False
        self.state = ON_DISK
        self._episode = False
        self._events += [("STORE_EVICTED", dict(product_id=e.product_id, priority=e.priority)) for e in evicted]
        self._events.append(("STORE_RECOVERED", dict(moved=moved)))
        self.log(f"store: writable again, {moved} products moved from RAM, {len(evicted)} evicted")
        return True

    # -- returning space ---------------------------------------------------------------------------

    def reclaim(self, now_wall: float) -> bool:
        """One bounded step of returning the store's free space (module docstring), at most every
        RECLAIM_INTERVAL_S; returns True when it wrote (a vacuum step, a conversion or a checkpoint).
        A storage fault is logged once and the next tick tries again; a damaged store is taken out
        as by any write."""
        if self.state != ON_DISK or now_wall < self._next_reclaim_wall or self.db.in_transaction:
            return False
        self._next_reclaim_wall = now_wall + RECLAIM_INTERVAL_S
        if self.db.total_changes != self._changes_seen:  # rows written (RAM or disk) since the last look
            self._changes_seen, self._changed_wall = self.db.total_changes, now_wall
        quiet = now_wall - self._changed_wall >= RECLAIM_QUIET_S
        try:
            page, pages, free, mode = self._disk_pragmas("page_size", "page_count", "freelist_count", "auto_vacuum")
            wrote = False
            if mode == AUTO_VACUUM_NONE:
                wrote = self._convert_legacy((pages - free) * page)
            elif mode == AUTO_VACUUM_INCREMENTAL:
                self._reclaiming = free > 0 and (self._reclaiming or quiet or free * page >= RECLAIM_START_BYTES)
                if self._reclaiming:
                    # executescript: Python's execute() steps a statement that returns no rows once,
                    # and incremental_vacuum returns one page per step
                    self.db.executescript(f"PRAGMA disk.incremental_vacuum({max(1, RECLAIM_STEP_BYTES // page)})")
                    wrote = True
            wal = self._wal_bytes()
            if wrote or (quiet and wal > 0):
                # PASSIVE while busy: the database file shrinks, the WAL's blocks are kept for the next
                # writes (a WAL made anew at every step: +0.3 ms per 64-product ack here); TRUNCATE when quiet
                # or when the WAL is above its limit
                how = "TRUNCATE" if quiet or wal > WAL_LIMIT_BYTES else "PASSIVE"
                self.db.execute(f"PRAGMA disk.wal_checkpoint({how})").fetchone()
                wrote = True
        except sqlite3.DatabaseError as exc:
            self._rollback()
            if not _disk_fault(exc):
                raise
            if _damaged(exc):
                self._fault(exc)
            elif not self._reclaim_failing:
                self._reclaim_failing = True
                self.log(f"store: cannot return free space ({exc}): tried again every {RECLAIM_INTERVAL_S} s")
            return False
        self._reclaim_failing = False
        return wrote

    def _convert_legacy(self, live_bytes: int) -> bool:
        """A store made before auto_vacuum (it never shrinks): switch it to INCREMENTAL with one VACUUM
        (atomic; rewrites the live pages through the WAL) when they fit in LEGACY_VACUUM_MAX_BYTES.
        Returns True when converted. A failure is logged and not retried until the flight restarts."""
        if self._legacy_failed or live_bytes > LEGACY_VACUUM_MAX_BYTES:
            return False
        # VACUUM re-runs the schema's CREATE INDEX ... ON products, which would find the TEMP VIEW of
        # that name first ("views may not be indexed"): the view is dropped meanwhile
        view = self.db.execute("SELECT 1 FROM temp.sqlite_master WHERE type = 'view' AND name = 'products'").fetchone()
        try:
            self.db.execute(f"PRAGMA disk.auto_vacuum={AUTO_VACUUM_INCREMENTAL}")
            self.db.execute("DROP VIEW IF EXISTS temp.products")
            try:
                self.db.execute("VACUUM disk")
            finally:
                if view:
                    self.db.executescript(VIEW)
        except sqlite3.DatabaseError as exc:
            self._rollback()
            if _corrupt(exc) or not _disk_fault(exc):
                raise
            self._legacy_failed = True
            self.log(f"store: made without auto_vacuum; converting it failed ({exc}): it keeps its size until the flight restarts")
            return False
        self.log(f"store: made without auto_vacuum: converted ({live_bytes} bytes of pages rewritten), free space is now returned")
        return True

    def _disk_pragmas(self, *names: str) -> list:
        """The on-disk store's values of these read-only PRAGMAs (page_size, freelist_count, ...)."""
        return [self.db.execute(f"PRAGMA disk.{name}").fetchone()[0] for name in names]

    def _wal_bytes(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def _flush(self) -> tuple[int, list[Evicted]]:
        """Move every RAM product to the disk in one transaction, by the disk's eviction rules."""
        rows = self.db.execute("SELECT id, priority, length(packet) FROM main.products ORDER BY priority, id").fetchall()
        evicted: list[Evicted] = []
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for pid, priority, nbytes in rows:
                try:
                    evicted += self._make_room("disk", self.max_bytes, priority, nbytes)
                except StoreFull:  # what the disk could not have taken either: evicted by the same rule
                    evicted.append(Evicted(pid, priority, nbytes))
                    continue
                self.db.execute(
                    "INSERT INTO disk.products (id, priority, apid, created_s, packet, sends) SELECT p.id, p.priority, "
                    "p.apid, p.created_s, p.packet, coalesce(s.sends, 0) FROM main.products p "
                    "LEFT JOIN main.sendstate s ON s.id = p.id WHERE p.id = ?", (pid,))
            self._write_counters(self.last_id, self.seq, self._created_unsaved)
            self.db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self.db.execute("DELETE FROM main.products")
        self._forget([e.product_id for e in evicted])
        self._created_unsaved = 0
        self._epoch_on_disk = True
        return len({r[0] for r in rows} - {e.product_id for e in evicted}), evicted

    def _fault(self, exc: BaseException) -> None:
        """A write failed: a corrupt disk is taken out (reopened and quarantined by maintain), any
        other fault degrades to RAM."""
        if _damaged(exc) and self.state != RAM_ONLY:
            self._lose_disk(exc)
        else:
            self._degrade(exc)

    def _degrade(self, exc: BaseException) -> None:
        self._rollback()
        if self.state == ON_DISK:
            self.state = DISK_FAILING
        self.log(f"store: cannot write ({exc}): products held in RAM")
        if not self._episode:
            self._episode = True
            self._events.append(("STORE_DEGRADED", dict(reason=str(exc)[:100],
                                                        limit_bytes=min(self.ram_max_bytes, self.max_bytes))))

    def _lose_disk(self, exc: BaseException) -> None:
        """The disk cannot even be read: RAM only until maintain() reopens it."""
        self._degrade(exc)
        self._detach()
        self._attach_stand_in()
        self.state = RAM_ONLY

    def _read(self, fn):
        """Run a read; a storage fault takes the disk out (RAM only) and the read is retried."""
        try:
            return fn()
        except sqlite3.DatabaseError as exc:
            if self.state == RAM_ONLY or not _disk_fault(exc):
                raise
            self._lose_disk(exc)
            return fn()

    def _rollback(self) -> None:
        # after SQLITE_FULL the transaction may already be gone: a failing ROLLBACK must not hide the first error
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                self.log(f"store: rollback failed ({exc})")

    def _remove_from_disk(self, ids: list[int]) -> None:
        """Delete acknowledged or cleared disk products; while the disk cannot write they are hidden
        (tombstones) and deleted when it writes again."""
        if not ids:
            return
        self.db.executemany("INSERT OR IGNORE INTO main.tombstones (id) VALUES (?)", [(i,) for i in ids])
        if self.state != ON_DISK:
            return
        try:
            self._delete_tombstoned()
        except sqlite3.DatabaseError as exc:
            if not _disk_fault(exc):
                raise
            self._fault(exc)
            return
        self.db.execute("DELETE FROM main.tombstones")

    def _delete_tombstoned(self) -> None:
        self.db.execute("DELETE FROM disk.products WHERE id IN (SELECT id FROM main.tombstones)")

    def _forget(self, ids: list[int]) -> None:
        if ids:
            self.db.executemany("DELETE FROM main.sendstate WHERE id = ?", [(i,) for i in ids])

    def _write_counters(self, last_id: int, seq: dict[int, int], created: int) -> None:
        rows = [("product_id", last_id), ("epoch", last_id >> N_BITS)] + [(f"seq_{a}", s) for a, s in seq.items()]
        self.db.executemany("INSERT INTO disk.counters (name, value) VALUES (?, ?) "
                            "ON CONFLICT(name) DO UPDATE SET value = excluded.value", rows)
        self.db.execute("INSERT INTO disk.counters (name, value) VALUES ('products_created', ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (created,))

    def _record_epoch_at_open(self, created: int) -> None:
        """Write the epoch into the store just opened: records it, and tests that the disk writes."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self._write_counters(self.last_id, self.seq, created)
            self.db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self._rollback()
            if not _disk_fault(exc):
                raise
            self._fault(exc)
            return
        self._epoch_on_disk = True

    # -- opening, quarantine -----------------------------------------------------------------------

    def _store_files_exist(self) -> bool:
        return any(Path(f"{self.path}{sfx}").exists() for sfx in ("", "-wal"))

    def _attach(self) -> dict[str, int] | None:
        """Attach the store file as `disk` and return its counters; a corrupt one is quarantined and
        a fresh one made (self._fresh). When it cannot be opened (read-only, missing mount, even the
        quarantine failed): an empty stand-in is attached, state RAM_ONLY, and None is returned."""
        self._fresh, self._quarantined = False, None
        self._top_id, self._counters_bad = 0, False
        try:
            try:
                return self._attach_file()
            except sqlite3.DatabaseError as exc:
                if not _corrupt(exc):
                    raise
                self._detach()
                reason = str(exc)[:80]
                moved = self._quarantine()
                self._quarantined = (reason, moved)
                self.log(f"store: corrupt ({reason}): kept as {moved}, a fresh store made")
                return self._attach_file()
        except (sqlite3.DatabaseError, OSError) as exc:
            self._detach()
            self._attach_stand_in()
            self.state = RAM_ONLY
            self._degrade(exc)
            return None

    def _attach_file(self) -> dict[str, int]:
        existed = self._store_files_exist()
        self.db.execute("ATTACH DATABASE ? AS disk", (str(self.path),))
        tables = {r[0] for r in self.db.execute("SELECT name FROM disk.sqlite_master WHERE type = 'table'")}
        if existed:
            if not {"products", "counters"} <= tables:
                raise StoreCorrupt(f"not a product store (tables {sorted(tables)})")
            check = self.db.execute("PRAGMA disk.quick_check").fetchone()[0]
            if check != "ok":
                raise StoreCorrupt(f"quick_check: {check}")
        self._fresh = not existed
        if not existed:  # before the first table, or it takes a VACUUM: freed pages can be returned (reclaim)
            self.db.execute(f"PRAGMA disk.auto_vacuum={AUTO_VACUUM_INCREMENTAL}")
        self.db.execute("PRAGMA disk.journal_mode=WAL").fetchone()
        self.db.execute("PRAGMA disk.synchronous=FULL")
        # deleted rows are zeroed in their own pages only, not whole freed pages as well (this SQLite
        # is built with secure delete on): draining a 16 MiB store wrote 29.7 MB instead of 46.7 (flash wear)
        self.db.execute("PRAGMA disk.secure_delete=FAST")
        self.db.execute(f"PRAGMA disk.journal_size_limit={WAL_LIMIT_BYTES}").fetchone()
        self.db.executescript(SCHEMA_TEMPLATE.format(s="disk"))
        columns = {r[1] for r in self.db.execute("PRAGMA disk.table_info(products)")}
        if "left_wall" not in columns:  # a store written before adaptive retransmission
            self.db.execute("ALTER TABLE disk.products ADD COLUMN left_wall REAL NOT NULL DEFAULT 0")
        if existed and self._disk_pragmas("auto_vacuum")[0] == AUTO_VACUUM_NONE:
            page, pages, free = self._disk_pragmas("page_size", "page_count", "freelist_count")
            if self._convert_legacy((pages - free) * page):  # an old store, small enough now: converted at open
                self.db.execute("PRAGMA disk.wal_checkpoint(TRUNCATE)").fetchone()
        self.db.executescript(SIZE_TRIGGERS.format(s="disk"))
        top = self.db.execute("SELECT max(id) FROM disk.products").fetchone()[0]
        self._top_id = top if isinstance(top, int) and top > 0 else 0
        return self._checked_counters(self.db.execute("SELECT name, value FROM disk.counters").fetchall())

    def _checked_counters(self, rows: list[tuple]) -> dict[str, int]:
        """The counters that hold what they must: a damaged value (a bit flip, a torn page that still
        passes quick_check, another program's write) is logged and left out, never a crash at open.
        A damaged id counter, or one behind the stored products, sets _counters_bad."""
        out: dict[str, int] = {}
        for name, value in rows:
            ok = isinstance(name, str) and isinstance(value, int)
            if ok and name == "product_id":  # the last epoch is never reached but by damage (2**31 store losses)
                ok = 0 <= value < EPOCH_MAX << N_BITS
            elif ok and name == "epoch":
                ok = 0 <= value < EPOCH_MAX
            elif ok and name.startswith("seq_"):
                ok = name[4:].isdigit() and int(name[4:]) <= 0x7FF and 0 <= value <= 0x3FFF  # 11-bit APID, 14-bit count
            elif ok and name == "products_created":
                ok = value >= 0
            if ok:
                out[name] = value
            else:
                self.log(f"store: counter {str(name)[:40]!r} holds {str(value)[:40]!r}: damaged, left out")
                if name in ("product_id", "epoch"):
                    self._counters_bad = True
                elif name == "products_created":
                    out[name] = 0  # present: not a store from before epochs
        if self._top_id > out.get("product_id", 0):  # (a store from before epochs has no epoch counter: fine)
            self.log(f"store: id counters {out.get('product_id')}, epoch {out.get('epoch')} do not cover the stored "
                     f"products (highest id {self._top_id}): a new epoch")
            self._counters_bad = True
        if self._counters_bad:
            out.setdefault("product_id", 0)
            out.setdefault("epoch", 0)
        return out

    def _attach_stand_in(self) -> None:
        self.db.execute("ATTACH DATABASE ':memory:' AS disk")
        self.db.executescript(SCHEMA_TEMPLATE.format(s="disk") + SIZE_TRIGGERS.format(s="disk"))

    def _detach(self) -> None:
        self._rollback()
        if any(r[1] == "disk" for r in self.db.execute("PRAGMA database_list")):
            for name in ("in", "out", "move"):  # left behind, a TEMP trigger breaks the next attach's schema
                self.db.execute(f"DROP TRIGGER IF EXISTS temp.disk_sizes_{name}")
            self.db.execute("DETACH DATABASE disk")

    def _quarantine(self) -> str:
        """Rename the store and its -wal/-shm to `<name>.corrupt-<UTC time>`; returns the new db name."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        name, k = f"{self.path.name}.corrupt-{stamp}", 1
        while any(self.path.with_name(name + sfx).exists() for sfx in ("", "-wal", "-shm")):
            name, k = f"{self.path.name}.corrupt-{stamp}-{k}", k + 1
        for sfx in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{sfx}")
            if src.exists():
                src.rename(self.path.with_name(name + sfx))
        self._prune_quarantined(name)
        return name

    def _prune_quarantined(self, keep_name: str) -> None:
        """Keep the newest `quarantine_keep` quarantined copies (the one just made always): a store
        corrupted at every restart, or again at every reopen (each `retry_s`), left one more copy
        of up to the store's size each time, until the mass memory was full."""
        prefix = f"{self.path.name}.corrupt-"

        def order(base: str) -> tuple[str, int]:  # <stamp> or <stamp>-<k>: k counts up within a second
            stamp, _, k = base[len(prefix):].partition("-")
            return stamp, int(k) if k.isdigit() else 0

        bases = {p.name.removesuffix("-wal").removesuffix("-shm") for p in self.path.parent.glob(prefix + "*")}
        older = sorted((b for b in bases if b != keep_name), key=order)
        drop = older[: max(0, len(older) - (self.quarantine_keep - 1))]
        for base in drop:
            for sfx in ("", "-wal", "-shm"):
                try:
                    self.path.with_name(base + sfx).unlink(missing_ok=True)
                except OSError as exc:
                    self.log(f"store: quarantined copy {base + sfx} not deleted ({exc})")
        if drop:
            self.log(f"store: {len(drop)} older quarantined cop{'y' if len(drop) == 1 else 'ies'} deleted "
                     f"({', '.join(drop)[:200]}): the newest {self.quarantine_keep} are kept")

    def _queue_quarantine(self) -> None:
        if self._quarantined:
            reason, moved = self._quarantined
            self._events.append(("STORE_QUARANTINED", dict(reason=reason, moved=moved, epoch=self.epoch)))

    def _reopen(self) -> bool:
        """RAM only: try to open the store again. Ids continue from the higher of RAM and disk."""
        self._detach()
        counters = self._attach()
        if counters is None:
            return False
        stored = max(counters.get("product_id", 0), self._top_id)  # ids on the disk, even if its counter lags
        if not self._fresh and (stored >> N_BITS >= self.epoch or self._counters_bad):
            # the epoch file was lost or behind: RAM ids may repeat the disk's; no new ones will
            self.log(f"store: reopened store epoch {stored >> N_BITS} >= RAM epoch {self.epoch}")
            try:
                self._start_epoch(max(stored >> N_BITS, self.epoch) + 1)
            except StoreFull as exc:  # as at open: every put says so, maintain() goes on
                self.log(f"store: {exc}")
                self.last_id = (EPOCH_MAX << N_BITS) | N_MAX
        self.last_id = max(self.last_id, stored)
        self.state = DISK_FAILING
        self._queue_quarantine()
        return True

    # -- the epoch file ----------------------------------------------------------------------------

    def _start_epoch(self, epoch: int) -> None:
        """Hand out ids of a new epoch, after the epoch file says so."""
        if epoch > EPOCH_MAX:
            # StoreFull (lost): the caller counts it and goes on (a RuntimeError stopped the flight)
            raise StoreFull(f"store epoch {epoch} exhausted: no product id left", lost=True)
        if not self._write_epoch_file(epoch):
            self.log(f"store: epoch {epoch} not saved in {self.epoch_path}: ids may repeat after a reboot")
        self.last_id = epoch << N_BITS
        self._epoch_on_disk = False

    def _read_epoch_file(self) -> tuple[int | None, bool]:
        """(epoch, the file exists): epoch None when missing or unreadable."""
        try:
            epoch = int(self.epoch_path.read_text().strip())
            if not 0 <= epoch < EPOCH_MAX:  # a flipped digit: was a RuntimeError ("exhausted") at start
                raise ValueError(f"epoch {epoch} outside 0..{EPOCH_MAX - 1}")
            return epoch, True
        except FileNotFoundError:
            return None, False
        except (OSError, ValueError) as exc:
            self.log(f"store: epoch file {self.epoch_path} unreadable ({exc})")
            return None, True

    def _write_epoch_file(self, epoch: int) -> bool:
        data = f"{epoch:020d}\n".encode()  # fixed width: an in-place rewrite never leaves a tail
        tmp = self.epoch_path.with_name(self.epoch_path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.epoch_path)
            dfd = os.open(self.epoch_path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            return True
        except OSError as exc:
            first = exc
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        # a full disk has no block for a new file, but the existing one can be overwritten in place
        try:
            if self.epoch_path.stat().st_size != len(data):
                raise first
            fd = os.open(self.epoch_path, os.O_WRONLY)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        except OSError as exc:
            self.log(f"store: cannot write the epoch file ({exc})")
            return False
