"""Persistent store-and-forward of products waiting for a ground acknowledgement.

SQLite in WAL mode with synchronous=FULL: a committed product survives SIGKILL and power loss.
A product leaves only when the ground acknowledges its id. Downlink order is priority then age.
The store is bounded in bytes; when a new product does not fit, products of the lowest priority
(highest number) that is not more important than the new one are evicted, oldest first, each
eviction reported to the caller (which emits an event). If nothing may be evicted, the new
product is refused.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    id INTEGER PRIMARY KEY,
    priority INTEGER NOT NULL,
    apid INTEGER NOT NULL,
    created_s REAL NOT NULL,
    packet BLOB NOT NULL,
    sent_wall REAL NOT NULL DEFAULT 0,
    sends INTEGER NOT NULL DEFAULT 0,
    left_wall REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS by_order ON products (priority, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Evicted:
    product_id: int
    priority: int
    nbytes: int


class StoreFull(Exception):
    pass


class ProductStore:
    def __init__(self, path: str | Path, max_bytes: int):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.db.execute("PRAGMA integrity_check").fetchone()  # fail fast on a corrupt store
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(products)")}
        if "left_wall" not in columns:  # a store written before adaptive retransmission
            self.db.execute("ALTER TABLE products ADD COLUMN left_wall REAL NOT NULL DEFAULT 0")
        # sent_wall is this process's wall clock: after a restart everything is due again
        self.db.execute("UPDATE products SET sent_wall = 0, left_wall = 0")

    def counter(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def put(self, priority: int, apid: int, created_s: float, build: Callable[[int, int], bytes]) -> tuple[int, list[Evicted]]:
        """Allocate a product id and an APID sequence count, build the packet with
        `build(product_id, seq_count)` and store it, all in one transaction."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            pid = self.counter("product_id") + 1
            seq = self.counter(f"seq_{apid}")
            packet = build(pid, seq)
            evicted = self._make_room(priority, len(packet))
            self.db.execute(
                "INSERT INTO products (id, priority, apid, created_s, packet) VALUES (?, ?, ?, ?, ?)",
                (pid, priority, apid, created_s, packet),
            )
            self.db.executemany(
                "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                [("product_id", pid), (f"seq_{apid}", (seq + 1) & 0x3FFF)],
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return pid, evicted

    def _make_room(self, priority: int, nbytes: int) -> list[Evicted]:
        used = self.bytes()
        evicted: list[Evicted] = []
        while used + nbytes > self.max_bytes:
            row = self.db.execute(
                "SELECT id, priority, length(packet) FROM products WHERE priority >= ? ORDER BY priority DESC, id ASC LIMIT 1",
                (priority,),
            ).fetchone()
            if row is None:
                raise StoreFull(f"store full ({used} of {self.max_bytes} bytes) and nothing of priority >= {priority} to evict")
            self.db.execute("DELETE FROM products WHERE id = ?", (row[0],))
            evicted.append(Evicted(*row))
            used -= row[2]
        return evicted

    def due(self, now_wall: float, rto_s: float, window: int) -> list[tuple[int, bytes, int, float]]:
        """Packets to send now as (id, packet, sends, sent_wall): never sent, or unacknowledged
        `rto_s` after they left the radio (`left_wall`, given by mark_sent: a packet still queued
        in the transmitter is not timed out), most important first, keeping at most `window`
        packets unacknowledged in flight. sent_wall > 0 on a row means its timer ran out; 0 means
        never sent, or made due at once by an acknowledgement (see ack)."""
        in_flight = self.db.execute(
            "SELECT count(*) FROM products WHERE sent_wall > 0 AND left_wall + ? > ?", (rto_s, now_wall)
        ).fetchone()[0]
        room = window - in_flight
        if room <= 0:
            return []
        return self.db.execute(
            "SELECT id, packet, sends, sent_wall FROM products WHERE sent_wall = 0 OR left_wall + ? <= ? "
            "ORDER BY priority, id LIMIT ?",
            (rto_s, now_wall, room),
        ).fetchall()

    def mark_sent(self, ids: list[int], now_wall: float, left_wall: list[float] | None = None) -> None:
        """Record a send; `left_wall[i]`: when packet i is expected to have left the radio (default now)."""
        lefts = left_wall if left_wall is not None else [now_wall] * len(ids)
        self.db.executemany("UPDATE products SET sent_wall = ?, left_wall = ?, sends = sends + 1 WHERE id = ?",
                            [(now_wall, lw, i) for i, lw in zip(ids, lefts, strict=True)])

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
        rows = self.db.execute(
            f"SELECT sent_wall, left_wall, sends FROM products WHERE sent_wall > 0 AND id IN ({marks})", ids
        ).fetchall()
        oldest = min((r[0] for r in rows), default=None)
        samples = [now_wall - r[1] for r in rows if r[2] == 1]
        before = self.db.total_changes
        self.db.executemany("DELETE FROM products WHERE id = ?", [(i,) for i in ids])
        removed = self.db.total_changes - before
        if oldest is not None:
            self.db.execute("UPDATE products SET sent_wall = 0 WHERE sent_wall > 0 AND sent_wall < ?", (oldest,))
        return removed, samples

    def pending(self) -> int:
        return self.db.execute("SELECT count(*) FROM products").fetchone()[0]

    def bytes(self) -> int:
        return self.db.execute("SELECT coalesce(sum(length(packet)), 0) FROM products").fetchone()[0]

    def clear(self, min_priority: int = 0) -> int:
        cur = self.db.execute("DELETE FROM products WHERE priority >= ?", (min_priority,))
        return cur.rowcount

    def reprioritize(self, apid: int, priority: int) -> int:
        """Move every waiting product of one APID to a new priority; returns how many moved."""
        return self.db.execute("UPDATE products SET priority = ? WHERE apid = ?", (priority, apid)).rowcount

    def close(self) -> None:
        self.db.close()
