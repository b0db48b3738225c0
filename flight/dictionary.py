"""The mission dictionary: every packet type, event and telemetry channel, declared once.

Flight builds packets from it and the ground decodes with it; `ground_link.xtce` exports it for
other ground systems. Numeric ids are stable: never renumber, only append.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

# --- packets --------------------------------------------------------------------------------
# Telemetry (flight -> ground): ECSS PUS-C TM packets with a CDS short time code and CRC-16.
# One APID per product type, so a ground system can route and count them without decoding.


class Apid(IntEnum):
    FRAME_SUMMARY = 0x101
    DETECTION = 0x102
    IMAGE_CHIP = 0x103
    HOUSEKEEPING = 0x104
    EVENT = 0x105
    # Telecommand (ground -> flight)
    GROUND_ACK = 0x181


PRODUCT_SERVICE = 200  # mission-specific PUS service for payload products
ACK_SERVICE = 201  # mission-specific PUS service for product acknowledgements
HOUSEKEEPING_SERVICE = 3  # PUS housekeeping
HOUSEKEEPING_SUBTYPE = 25  # housekeeping parameter report
EVENT_SERVICE = 5  # PUS event reporting; subtype = severity (1 info .. 4 high)
TIMESTAMP_LEN = 7  # CDS short: 2 bytes day, 4 bytes ms of day


class Priority(IntEnum):
    """Downlink order (lower goes first); the store evicts the highest number first."""

    ALERT = 0
    EVENT = 1
    SUMMARY = 2
    CHIP = 3
    TELEMETRY = 4


APID_PRIORITY = {
    Apid.DETECTION: Priority.ALERT,
    Apid.EVENT: Priority.EVENT,
    Apid.FRAME_SUMMARY: Priority.SUMMARY,
    Apid.IMAGE_CHIP: Priority.CHIP,
    Apid.HOUSEKEEPING: Priority.TELEMETRY,
}


class DetectionClass(IntEnum):
    SHIP = 1
    FIRE = 2


# --- events -----------------------------------------------------------------------------------


class Severity(IntEnum):
    INFO = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4


@dataclass(frozen=True)
class EventDef:
    id: int
    name: str
    severity: Severity
    fmt: str  # str.format template over the event's keyword arguments


EVENTS: dict[str, EventDef] = {
    e.name: e
    for e in (
        EventDef(1, "FRAME_REJECTED", Severity.MEDIUM, "frame {frame_id} rejected: {reason}"),
        EventDef(2, "FRAME_DISCARDED_CLOUDY", Severity.INFO, "frame {frame_id} {cloud_pct:.0f}% cloud >= {limit_pct:.0f}%: discarded"),
        EventDef(3, "MODEL_LOADED", Severity.INFO, "model {model} {version} loaded (sha256 {sha8})"),
        EventDef(4, "MODEL_REFUSED", Severity.HIGH, "model {model} refused: {reason}"),
        EventDef(5, "STAGE_ERROR", Severity.HIGH, "stage {stage} failed on frame {frame_id}: {reason}"),
        EventDef(6, "STORE_EVICTED", Severity.MEDIUM, "store full: evicted product {product_id} (priority {priority})"),
        EventDef(7, "BAD_UPLINK_PACKET", Severity.LOW, "uplink packet dropped: {reason}"),
        EventDef(8, "STARTED", Severity.INFO, "flight software started, profile {profile}"),
        EventDef(9, "STOPPING", Severity.INFO, "flight software stopping: {reason}"),
    )
}
EVENTS_BY_ID = {e.id: e for e in EVENTS.values()}


# --- telemetry channels ---------------------------------------------------------------------


@dataclass(frozen=True)
class Channel:
    id: int
    name: str  # units live in the name
    description: str


TELEMETRY: tuple[Channel, ...] = (
    Channel(1, "frames_captured", "frames announced by the camera"),
    Channel(2, "frames_processed", "frames that went through the whole pipeline"),
    Channel(3, "frames_rejected", "frames rejected at ingest or by a stage"),
    Channel(4, "frame_latency_ms_last", "ingest-to-packets wall time of the last frame"),
    Channel(5, "rss_mib", "resident memory of the flight process"),
    Channel(6, "cpu_percent", "CPU use of the flight process since the last report"),
    Channel(7, "store_products", "products waiting for a ground acknowledgement"),
    Channel(8, "store_bytes", "bytes of products waiting in the store"),
    Channel(9, "packets_sent", "packets handed to the radio, retransmissions included"),
    Channel(10, "packets_retransmitted", "packets sent again after no acknowledgement"),
    Channel(11, "products_acked", "products acknowledged by the ground"),
    Channel(12, "errors", "stage errors counted against the error budget"),
    Channel(13, "uplink_rejected", "uplink packets dropped as malformed"),
)
TELEMETRY_BY_ID = {c.id: c for c in TELEMETRY}
TELEMETRY_BY_NAME = {c.name: c for c in TELEMETRY}
