"""Products that cross the link, and their CCSDS packets.

Every product is a small immutable dataclass with `pack()` / `unpack()` of its payload (big-endian,
fixed layout declared once in `LAYOUT`, an optional variable-length tail last). `encode_tm` wraps
a payload in an ECSS PUS-C TM space packet (spacepackets: CDS short time code, CRC-16) on the
product's APID; `decode_tm` checks the CRC and gives the product back. Uplink acknowledgements are
signed PUS TC packets: `flight.acks`.

Every product starts with its `product_id`, a u64 (struct 'Q'): the flight store makes it
`(store_epoch << 32) | n`, unique across store losses, at most PRODUCT_ID_MAX (63 bits, what a
SQLite INTEGER holds). Operator tools show it as `epoch:n` (`product_label`).
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from spacepackets.ccsds.time import CdsShortTimestamp
from spacepackets.ecss.tm import PusTm

from flight.dictionary import (
    EVENT_SERVICE,
    HOUSEKEEPING_SERVICE,
    HOUSEKEEPING_SUBTYPE,
    PRODUCT_SERVICE,
    TIMESTAMP_LEN,
    Apid,
)

CCSDS_EPOCH = datetime(1958, 1, 1, tzinfo=UTC)
PRODUCT_ID_MAX = 2**63 - 1  # ids are u64 on the wire; above this no store or archive (SQLite INTEGER) holds them
EPOCH_SHIFT = 32  # product_id = (store epoch << 32) | n


def product_label(product_id: int) -> str:
    """A product id as operators read it: `epoch:n` (store epoch, then the count within it)."""
    return f"{product_id >> EPOCH_SHIFT}:{product_id & (2**EPOCH_SHIFT - 1)}"


class PacketError(ValueError):
    """A packet could not be decoded: carries the reason and the APID when known."""

    def __init__(self, reason: str, apid: int | None = None):
        super().__init__(f"apid {apid:#x}: {reason}" if apid is not None else reason)
        self.reason, self.apid = reason, apid


class _Product:
    APID: ClassVar[Apid]
    SERVICE: ClassVar[int] = PRODUCT_SERVICE
    SUBTYPE: ClassVar[int]
    LAYOUT: ClassVar[str]  # struct format of the fixed fields, in dataclass field order
    TAIL: ClassVar[str | None] = None  # name of a trailing bytes/str field, if any
    if TYPE_CHECKING:  # set by @dataclass on every concrete product; lets type[_Product] go to dataclasses.fields
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    product_id: int

    def pack(self) -> bytes:
        names = [f.name for f in dataclasses.fields(self)]
        fixed = [getattr(self, n) for n in names if n != self.TAIL]
        head = struct.pack(self.LAYOUT, *fixed)
        if self.TAIL is None:
            return head
        tail = getattr(self, self.TAIL)
        return head + (tail.encode() if isinstance(tail, str) else bytes(tail))

    @classmethod
    def unpack(cls, data: bytes):
        size = struct.calcsize(cls.LAYOUT)
        if len(data) < size or (cls.TAIL is None and len(data) != size):
            raise PacketError(f"{cls.__name__} payload is {len(data)} bytes, layout needs {size}", cls.APID)
        values = list(struct.unpack_from(cls.LAYOUT, data))
        if cls.TAIL is not None:
            tail_field = next(f for f in dataclasses.fields(cls) if f.name == cls.TAIL)
            tail = bytes(data[size:])
            if tail_field.type in (str, "str"):
                try:
                    tail = tail.decode()  # type: ignore[assignment]
                except UnicodeDecodeError as exc:
                    raise PacketError(f"{cls.__name__} text is not UTF-8", cls.APID) from exc
            names = [f.name for f in dataclasses.fields(cls)]
            values.insert(names.index(cls.TAIL), tail)
        if values[0] > PRODUCT_ID_MAX:  # product_id leads every layout
            raise PacketError(f"{cls.__name__} product id {values[0]:#x} is above {PRODUCT_ID_MAX:#x}", cls.APID)
        return cls(*values)


@dataclass(frozen=True)
class FrameSummary(_Product):
    APID = Apid.FRAME_SUMMARY
    SUBTYPE = 1
    LAYOUT = ">QIdHHfBHHfff"
    product_id: int
    frame_id: int
    capture_time_s: float
    tiles: int
    cloudy_tiles: int
    cloud_fraction: float
    discarded: int  # 1 when the frame's cloud fraction reached the discard level
    ships: int
    fires: int
    processing_ms: float
    center_lat_deg: float
    center_lon_deg: float


@dataclass(frozen=True)
class Detection(_Product):
    APID = Apid.DETECTION
    SUBTYPE = 2
    LAYOUT = ">QIdBBffffH"
    product_id: int
    frame_id: int
    capture_time_s: float
    class_id: int  # dictionary.DetectionClass
    confidence_q: int  # confidence * 255, rounded
    row_px: float
    col_px: float
    lat_deg: float
    lon_deg: float
    area_px: int

    @property
    def confidence(self) -> float:
        return self.confidence_q / 255.0


@dataclass(frozen=True)
class ImageChip(_Product):
    APID = Apid.IMAGE_CHIP
    SUBTYPE = 3
    LAYOUT = ">QIdBffHHB"
    TAIL = "png"
    product_id: int
    frame_id: int
    capture_time_s: float
    class_id: int
    row_px: float  # chip centre in the frame
    col_px: float
    height_px: int
    width_px: int
    bands: int  # 3 = true colour, 1 = a single band
    png: bytes


@dataclass(frozen=True)
class Housekeeping(_Product):
    APID = Apid.HOUSEKEEPING
    SERVICE = HOUSEKEEPING_SERVICE
    SUBTYPE = HOUSEKEEPING_SUBTYPE
    LAYOUT = ">QdH"
    TAIL = "values"
    product_id: int
    time_s: float
    count: int
    values: bytes  # count x (channel id u16, value f32), see `housekeeping()`

    def channels(self) -> dict[int, float]:
        if len(self.values) != 6 * self.count:
            raise PacketError(f"housekeeping holds {len(self.values)} bytes for {self.count} channels", self.APID)
        return {cid: val for cid, val in struct.iter_unpack(">Hf", self.values)}


def _f32(v: float) -> float:
    """A channel value as its f32 field holds it: beyond the f32 range (a float like 1e39, an int too
    large even for a float) saturates to +-inf instead of raising OverflowError in struct.pack,
    which lost the whole housekeeping packet. NaN stays NaN."""
    try:
        x = float(v)
        struct.pack(">f", x)
        return x
    except OverflowError:
        return float("inf") if v > 0 else float("-inf")


def housekeeping(product_id: int, time_s: float, channels: dict[int, float]) -> Housekeeping:
    body = b"".join(struct.pack(">Hf", cid, _f32(v)) for cid, v in sorted(channels.items()))
    return Housekeeping(product_id, time_s, len(channels), body)


@dataclass(frozen=True)
class Event(_Product):
    APID = Apid.EVENT
    SERVICE = EVENT_SERVICE
    SUBTYPE = 0  # replaced by the severity when encoded
    LAYOUT = ">QdHBi"
    TAIL = "message"
    product_id: int
    time_s: float
    event_id: int
    severity: int
    frame_id: int  # -1 when the event is not about a frame
    message: str


PRODUCT_TYPES: dict[int, type[_Product]] = {
    cls.APID: cls for cls in (FrameSummary, Detection, ImageChip, Housekeeping, Event)
}
Product = FrameSummary | Detection | ImageChip | Housekeeping | Event


# --- packets ------------------------------------------------------------------------------------


def cds_timestamp(epoch: datetime, t_s: float) -> bytes:
    # Integer day and millisecond from the CCSDS epoch: from_datetime() goes through floats and
    # can lose a millisecond.
    dt = epoch + timedelta(milliseconds=round(t_s * 1000))
    since = dt - CCSDS_EPOCH
    ms_of_day = since.seconds * 1000 + since.microseconds // 1000
    return CdsShortTimestamp(since.days, ms_of_day, init_dt_unix_stamp=False).pack()


def encode_tm(product: _Product, seq_count: int, epoch: datetime, time_s: float) -> bytes:
    """One PUS TM packet: APID of the product type, 14-bit sequence count, CDS time, CRC-16."""
    subtype = product.severity if isinstance(product, Event) else product.SUBTYPE
    tm = PusTm(
        service=product.SERVICE,
        message_subtype=subtype,
        timestamp=cds_timestamp(epoch, time_s),
        source_data=product.pack(),
        apid=product.APID,
        seq_count=seq_count & 0x3FFF,
    )
    return tm.pack()


def decode_tm(packet: bytes) -> tuple[PusTm, _Product]:
    """Decode and CRC-check one TM packet; raises PacketError with the reason."""
    try:
        tm = PusTm.unpack(packet, timestamp_len=TIMESTAMP_LEN)
    except Exception as exc:  # spacepackets raises several types (CRC, length, version)
        raise PacketError(f"{type(exc).__name__}: {exc}") from exc
    cls = PRODUCT_TYPES.get(tm.apid)
    if cls is None:
        raise PacketError("unknown APID", tm.apid)
    try:
        product = cls.unpack(tm.source_data)
    except struct.error as exc:
        raise PacketError(str(exc), tm.apid) from exc
    return tm, product


def packet_time(tm: PusTm, epoch: datetime) -> float:
    """Scenario seconds of a TM packet's time code."""
    stamp = CdsShortTimestamp.unpack(tm.timestamp)
    t = CCSDS_EPOCH + timedelta(days=stamp.ccsds_days, milliseconds=stamp.ms_of_day)
    return (t - epoch).total_seconds()


# --- command verification reports (appended, issue #7) -------------------------------------------


@dataclass(frozen=True)
class CommandReport(_Product):
    """PUS service 1 verification report of one telecommand: accepted / rejected, completed / failed.
    The report kind is also the packet's message subtype (dictionary.ReportKind)."""

    APID = Apid.COMMAND_REPORT
    SERVICE = 1  # dictionary.VERIFICATION_SERVICE
    LAYOUT = ">QdQHBH"
    TAIL = "message"
    product_id: int
    time_s: float
    counter: int  # the command's authentication counter: its unique id
    opcode: int
    report: int  # dictionary.ReportKind
    code: int  # dictionary.Reason (0 on success)
    message: str

    @property
    def SUBTYPE(self) -> int:  # type: ignore[override]  # noqa: N802 (per-instance: the report kind; read-only)
        return self.report


PRODUCT_TYPES[CommandReport.APID] = CommandReport
