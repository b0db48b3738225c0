"""The ground archive: every packet as received, every product once, alerts, telemetry, events.

SQLite, one file per station. Products are keyed by the flight's product id, so a packet the
flight sent again (its acknowledgement was lost) is recognised and not archived twice. The id is
the whole 64-bit `(store epoch << 32) | n` (an INTEGER PRIMARY KEY holds 63 bits, and the decoder
refuses more: flight.products.PRODUCT_ID_MAX), so a flight that lost its store and counts n again
from 1 in a new epoch is never taken for a duplicate. Alerts
keep the throttled ones too (throttled = 1): archived and counted, but not shown to the operator.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from pathlib import Path

from flight.products import Event, Housekeeping, ImageChip

SCHEMA = """
PRAGMA journal_mode=WAL;
CREATE TABLE IF NOT EXISTS packets (
    id INTEGER PRIMARY KEY, received_wall REAL, apid INTEGER, ok INTEGER, error TEXT, raw BLOB);
CREATE TABLE IF NOT EXISTS products (
    product_id INTEGER PRIMARY KEY, apid INTEGER, kind TEXT, frame_id INTEGER, time_s REAL,
    received_wall REAL, fields TEXT);
CREATE INDEX IF NOT EXISTS products_frame ON products (frame_id);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY, product_id INTEGER, severity TEXT, class TEXT, confidence REAL,
    lat_deg REAL, lon_deg REAL, frame_id INTEGER, time_s REAL, received_wall REAL, message TEXT,
    area_px INTEGER, received_s REAL, latency_s REAL, throttled INTEGER NOT NULL DEFAULT 0, rule INTEGER);
CREATE TABLE IF NOT EXISTS telemetry (product_id INTEGER, time_s REAL, channel INTEGER, value REAL);
CREATE TABLE IF NOT EXISTS events (
    product_id INTEGER, time_s REAL, event_id INTEGER, severity INTEGER, frame_id INTEGER, message TEXT);
CREATE TABLE IF NOT EXISTS chips (product_id INTEGER PRIMARY KEY, frame_id INTEGER, png BLOB);
"""

ALERT_COLUMNS = ("product_id", "severity", "class", "confidence", "lat_deg", "lon_deg", "frame_id", "time_s",
                 "received_wall", "message", "area_px", "received_s", "latency_s", "throttled", "rule")


def _jsonable(product) -> dict:
    out = {}
    for f in dataclasses.fields(product):
        v = getattr(product, f.name)
        if isinstance(v, bytes):
            v = len(v)  # blobs live in their own table
        elif isinstance(v, float) and not math.isfinite(v):
            v = None
        out[f.name] = v
    return out


class Archive:
    def __init__(self, path: str | Path):
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.executescript(SCHEMA)

    def packet(self, raw: bytes, received_wall: float, apid: int | None, error: str | None) -> None:
        self.db.execute("INSERT INTO packets (received_wall, apid, ok, error, raw) VALUES (?, ?, ?, ?, ?)",
                        (received_wall, apid, error is None, error, raw))

    def product(self, product, received_wall: float) -> bool:
        """Archive a product once; False when this product id is already archived (a duplicate)."""
        kind = type(product).__name__
        frame_id = getattr(product, "frame_id", None)
        time_s = getattr(product, "capture_time_s", getattr(product, "time_s", None))
        self.db.execute("BEGIN")
        cur = self.db.execute(
            "INSERT OR IGNORE INTO products VALUES (?, ?, ?, ?, ?, ?, ?)",
            (product.product_id, product.APID, kind, frame_id, time_s, received_wall, json.dumps(_jsonable(product))))
        if cur.rowcount == 0:
            self.db.execute("COMMIT")
            return False
        if isinstance(product, Housekeeping):
            self.db.executemany("INSERT INTO telemetry VALUES (?, ?, ?, ?)",
                                [(product.product_id, product.time_s, c, v) for c, v in product.channels().items()])
        elif isinstance(product, Event):
            self.db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
                            (product.product_id, product.time_s, product.event_id, product.severity,
                             product.frame_id, product.message))
        elif isinstance(product, ImageChip):
            self.db.execute("INSERT INTO chips VALUES (?, ?, ?)", (product.product_id, product.frame_id, product.png))
        self.db.execute("COMMIT")
        return True

    def alert(self, record: dict) -> None:
        """One alert (see station.alert_record); lat/lon None when the position is unknown."""
        row = dict(record, time_s=record["capture_time_s"], throttled=int(record["throttled"]))
        self.db.execute(f"INSERT INTO alerts ({', '.join(ALERT_COLUMNS)}) VALUES ({', '.join('?' * len(ALERT_COLUMNS))})",
                        [row.get(c) for c in ALERT_COLUMNS])

    def close(self) -> None:
        self.db.close()
