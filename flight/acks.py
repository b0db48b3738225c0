"""Product acknowledgements (ground -> flight), authenticated like telecommands.

An acknowledgement tells the flight it may delete products: forging one loses data, so it is signed
and checked like a command (docs/operations.md, "Acknowledgements"). It is a PUS TC packet on
Apid.GROUND_ACK, service ACK_SERVICE subtype ACK_SUBTYPE, whose PUS source id is the sending
station's id (`security.ack_source_id`), with application data

    counter u64 | issued_s u32 | n u16 | n x (first_id u64, count u16) | HMAC-SHA256 (32 bytes)

acknowledging the ids first_id .. first_id + count - 1 of each range (ranges ascending, disjoint;
acks of consecutive ids cost 10 bytes per run of ids, which matters on a 9.6 kbit/s uplink). The
MAC covers every byte of the packet before it, headers included, as for commands; the CRC-16 after
it only catches bit errors. Its key is derived from the mission key with a label of its own,
HMAC-SHA256(mission_key, b"ground-ack-v1"), so an ack MAC is never a valid command MAC and the
reverse.

The flight accepts an ack only if (AckAuth.accept, in this order)

1. it decodes (CRC, exact length, APID, service, subtype, 1..MAX_ACK_RANGES ranges): else BAD_PACKET,
2. the MAC is right (constant-time compare): else BAD_MAC,
3. every range is valid: count 1..65535, ascending and disjoint, at most MAX_ACK_IDS ids in all,
   no id above PRODUCT_ID_MAX: else BAD_PACKET (only a broken station can sign such an ack),
4. its counter is above the last counter accepted from that source id: else REPLAY,
5. its issue time is within `security.command_time_window_s` of mission time: else TIME_WINDOW.

Only then does the counter of that source move and the ids come out. The station's counter is
its wall clock in microseconds (strictly increasing within a process), so it survives a station
restart without a state file; the flight keeps the last counter per source in its ops state.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

from spacepackets.ecss.tc import PusTc

from flight.commands import CRC_BYTES, MAC_BYTES
from flight.dictionary import ACK_SERVICE, Apid
from flight.products import PRODUCT_ID_MAX, PacketError

ACK_SUBTYPE = 1
KEY_LABEL = b"ground-ack-v1"  # domain separation: the ack key is not the command key
HEADER = struct.Struct(">QIH")  # counter, issued_s, number of ranges
RANGE = struct.Struct(">QH")  # first id, count
U64_MAX = 2**64 - 1
COUNT_MAX = 2**16 - 1
MAX_ACK_RANGES = 100  # worst case (ids all apart) a 1059-byte packet, like the old 250-id ack
MAX_ACK_IDS = 250  # ids per ack: bounds the flight's work (one store delete each) per packet
PRIMARY_AND_SECONDARY = 6 + 5  # CCSDS primary header, PUS-C TC secondary header
MAX_ACK_PACKET_BYTES = PRIMARY_AND_SECONDARY + HEADER.size + MAX_ACK_RANGES * RANGE.size + MAC_BYTES + CRC_BYTES
SOURCE_MAX = 2**16 - 1  # PUS TC source id: 16 bits
KINDS = ("BAD_PACKET", "BAD_MAC", "REPLAY", "TIME_WINDOW")


class AckError(PacketError):
    """An acknowledgement refused. `kind` is one of KINDS; `parsed` is True when the packet was a
    well-formed ack (refused for its MAC, ranges, counter or time), False when it was not an ack at
    all (bit errors, junk, another packet type)."""

    def __init__(self, kind: str, reason: str, parsed: bool = False, source: int | None = None,
                 counter: int | None = None):
        super().__init__(f"{kind}: {reason}", Apid.GROUND_ACK if parsed else None)
        self.kind, self.reason, self.parsed, self.source, self.counter = kind, reason, parsed, source, counter


def ack_key(mission_key: bytes) -> bytes:
    """The acknowledgement key: HMAC-SHA256(mission key, "ground-ack-v1")."""
    return hmac.new(mission_key, KEY_LABEL, hashlib.sha256).digest()


# --- ranges -------------------------------------------------------------------------------------


def to_ranges(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, de-duplicated ids as (first, count) runs, each at most COUNT_MAX long."""
    out: list[tuple[int, int]] = []
    for i in sorted(set(ids)):
        if out and out[-1][0] + out[-1][1] == i and out[-1][1] < COUNT_MAX:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out


def batches(ids: Iterable[int], max_ranges: int = MAX_ACK_RANGES, max_ids: int = MAX_ACK_IDS) -> list[list[tuple[int, int]]]:
    """The ranges of `ids` split into acks of at most `max_ranges` ranges and `max_ids` ids each."""
    out: list[list[tuple[int, int]]] = []
    cur: list[tuple[int, int]] = []
    n = 0
    for first, count in to_ranges(ids):
        while count:
            if len(cur) == max_ranges or n == max_ids:
                out.append(cur)
                cur, n = [], 0
            take = min(count, max_ids - n)
            cur.append((first, take))
            n += take
            first, count = first + take, count - take
    if cur:
        out.append(cur)
    return out


def range_ids(ranges: Iterable[tuple[int, int]]) -> list[int]:
    return [i for first, count in ranges for i in range(first, first + count)]


def check_ranges(ranges: list[tuple[int, int]], max_id: int = U64_MAX, max_ids: int = MAX_ACK_IDS) -> None:
    """Raise ValueError unless the ranges are 1..MAX_ACK_RANGES valid, ascending, disjoint runs of
    at most `max_ids` ids in all, none above `max_id`."""
    if not 1 <= len(ranges) <= MAX_ACK_RANGES:
        raise ValueError(f"{len(ranges)} ranges, need 1..{MAX_ACK_RANGES}")
    total, end = 0, -1  # end: the last id of the previous range
    for first, count in ranges:
        if not 1 <= count <= COUNT_MAX:
            raise ValueError(f"range at {first} counts {count} ids, need 1..{COUNT_MAX}")
        if not 0 <= first <= max_id or first + count - 1 > max_id:
            raise ValueError(f"range {first}+{count} goes outside 0..{max_id}")
        if first <= end:
            raise ValueError(f"range at {first} is not above the previous one (ends at {end})")
        end = first + count - 1
        total += count
    if total > max_ids:
        raise ValueError(f"{total} ids, at most {max_ids}")


# --- packets ------------------------------------------------------------------------------------


def encode_ack(mission_key: bytes, source: int, counter: int, issued_s: int, ranges: list[tuple[int, int]],
               seq_count: int = 0) -> bytes:
    """A signed acknowledgement packet (the ground's side). Refuses what the flight would refuse
    as malformed (ValueError); ids may use the whole u64 range here (the flight refuses ids above
    PRODUCT_ID_MAX)."""
    check_ranges(ranges)
    if not 0 <= source <= SOURCE_MAX or not 0 <= counter <= U64_MAX or not 0 <= issued_s <= 2**32 - 1:
        raise ValueError(f"source {source}, counter {counter} or issued_s {issued_s} out of range")
    body = HEADER.pack(counter, issued_s, len(ranges)) + b"".join(RANGE.pack(f, c) for f, c in ranges)

    def tc(app_data: bytes) -> bytes:
        return PusTc(service=ACK_SERVICE, message_subtype=ACK_SUBTYPE, apid=Apid.GROUND_ACK, app_data=app_data,
                     seq_count=seq_count & 0x3FFF, source_id=source).pack()

    # as flight.commands.encode_command: sign the packet with a zero MAC (its length is in the header)
    signed = tc(body + bytes(MAC_BYTES))[: -MAC_BYTES - CRC_BYTES]
    return tc(body + hmac.new(ack_key(mission_key), signed, hashlib.sha256).digest())


@dataclass(frozen=True)
class Ack:
    source: int  # the station (PUS source id)
    counter: int
    issued_s: int  # scenario seconds
    ranges: tuple[tuple[int, int], ...]

    @property
    def ids(self) -> list[int]:
        return range_ids(self.ranges)


@dataclass(frozen=True)
class SignedAck:
    """An ack packet whose structure decoded; nothing in it is trusted yet."""

    source: int
    counter: int
    issued_s: int
    ranges: tuple[tuple[int, int], ...]
    signed: bytes  # the bytes the MAC covers
    mac: bytes


def parse_ack(packet: bytes) -> SignedAck:
    """Decode the structure (CRC, exact length, APID, service, number of ranges). AckError BAD_PACKET."""
    if len(packet) > MAX_ACK_PACKET_BYTES:
        raise AckError("BAD_PACKET", f"{len(packet)} bytes, an ack has at most {MAX_ACK_PACKET_BYTES}")
    try:
        tc = PusTc.unpack(packet)
    except Exception as exc:  # spacepackets raises several types (CRC, length, version)
        raise AckError("BAD_PACKET", f"{type(exc).__name__}: {exc}"[:160]) from None
    if tc.apid != Apid.GROUND_ACK or tc.service != ACK_SERVICE or tc.message_subtype != ACK_SUBTYPE:
        raise AckError("BAD_PACKET", f"apid {tc.apid:#x} service {tc.service}/{tc.message_subtype} is not an ack")
    if tc.packet_len != len(packet):
        raise AckError("BAD_PACKET", f"{len(packet)} bytes, the header says {tc.packet_len}")
    data = bytes(tc.app_data)
    if len(data) < HEADER.size + MAC_BYTES:
        raise AckError("BAD_PACKET", f"application data is {len(data)} bytes, at least {HEADER.size + MAC_BYTES}")
    counter, issued_s, n = HEADER.unpack_from(data)
    want = HEADER.size + n * RANGE.size + MAC_BYTES
    if not 1 <= n <= MAX_ACK_RANGES or len(data) != want:
        raise AckError("BAD_PACKET", f"{n} ranges in {len(data)} bytes of application data "
                       f"(need 1..{MAX_ACK_RANGES} ranges, {want} bytes)")
    ranges = tuple(RANGE.unpack_from(data, HEADER.size + i * RANGE.size) for i in range(n))
    signed_len = len(packet) - MAC_BYTES - CRC_BYTES
    source = tc.pus_tc_sec_header.source_id
    return SignedAck(source, counter, issued_s, ranges, bytes(packet[:signed_len]),
                     bytes(packet[signed_len : signed_len + MAC_BYTES]))


def _verified(sa: SignedAck, key: bytes, max_id: int) -> Ack:
    """MAC, then the ranges (a well-formed ack from here on: errors are `parsed`)."""
    if not hmac.compare_digest(hmac.new(key, sa.signed, hashlib.sha256).digest(), sa.mac):
        raise AckError("BAD_MAC", f"source {sa.source} counter {sa.counter}: MAC does not match (forged or altered)",
                       True, sa.source, sa.counter)
    try:
        check_ranges(list(sa.ranges), max_id)
    except ValueError as exc:
        raise AckError("BAD_PACKET", f"source {sa.source} counter {sa.counter}: {exc}", True, sa.source,
                       sa.counter) from None
    return Ack(sa.source, sa.counter, sa.issued_s, sa.ranges)


def open_ack(packet: bytes, mission_key: bytes) -> Ack:
    """Decode and authenticate an ack without replay or time checks (tools and tests): every id of
    the u64 range is allowed here."""
    return _verified(parse_ack(packet), ack_key(mission_key), U64_MAX)


class AckAuth:
    """The flight's side: authenticates acks and keeps the last accepted counter per source id in
    `counters` (a dict the caller persists: flight.app.OpsState.ack_counters).

    `persist_due()` says when that dict should be written: at most once per `persist_period_s`
    after a change (docs/operations.md says why a replay inside that second after a crash is
    harmless)."""

    def __init__(self, mission_key: bytes, counters: dict[int, int], time_window_s: float,
                 persist_period_s: float = 1.0):
        self.key, self.counters, self.time_window_s = ack_key(mission_key), counters, time_window_s
        self.persist_period_s = persist_period_s
        self.dirty = False
        self._last_persist = -float("inf")

    def accept(self, packet: bytes, now_s: float) -> list[int]:
        """The acknowledged ids of an authentic, fresh ack; moves its source's counter. Raises
        AckError (BAD_PACKET, BAD_MAC, REPLAY, TIME_WINDOW) and moves nothing otherwise."""
        ack = _verified(parse_ack(packet), self.key, PRODUCT_ID_MAX)
        last = self.counters.get(ack.source, 0)
        if ack.counter <= last:
            raise AckError("REPLAY", f"source {ack.source} counter {ack.counter} <= last accepted {last}", True,
                           ack.source, ack.counter)
        if self.time_window_s and abs(now_s - ack.issued_s) > self.time_window_s:
            raise AckError("TIME_WINDOW", f"source {ack.source} counter {ack.counter} issued at {ack.issued_s} s, now "
                           f"{now_s:.0f} s: outside {self.time_window_s:.0f} s", True, ack.source, ack.counter)
        self.counters[ack.source] = ack.counter
        self.dirty = True
        return ack.ids

    def persist_due(self, now: float | None = None) -> bool:
        """True (once) when the counters changed and were not written for persist_period_s."""
        now = time.monotonic() if now is None else now
        if not self.dirty or now - self._last_persist < self.persist_period_s:
            return False
        self.dirty, self._last_persist = False, now
        return True
