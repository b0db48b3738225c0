"""File transfer over the radio link: CCSDS File Delivery Protocol (CFDP), acknowledged mode (class 2).

Model bundles go up this way (docs/operations.md, "Model upload"); any file could. cfdp-py
(`cfdppy`, by the authors of spacepackets) runs the protocol: its SourceHandler on the ground
(`FileSender`, driven by ground_link.commander) and its DestHandler on board (`FileReceiver`,
driven by `FileService`, which flight.app owns). This module is what cfdp-py leaves to its user,
plus the repairs for what it does wrong when PDUs are lost, late or repeated (each one measured in
tests/test_filetransfer.py):

- **Envelope.** Each PDU travels in a CCSDS space packet without secondary header: up (ground to
  flight: Metadata, File Data, EOF, ACK of Finished) on `Apid.FILE_DATA`, down (flight to ground:
  ACK of EOF, NAK, Finished) on `Apid.FILE_REPLY`. PDUs carry their own CRC-16 (bit errors), the
  file its CRC-32 (EOF) and, at activation, its SHA-256.
- **On board filestore.** Whatever name the ground sends, the file is written to one confined
  folder (`STATE/files/incoming/`, a sanitized base name, never a path from the link), at most
  `max_bytes` long (a write beyond it is a filestore rejection: the transaction is cancelled), and
  fsynced per segment. A complete file (CRC-32 of the EOF checked here too, as cfdp-py skips it
  when nothing was lost) is moved to `STATE/files/received/<sha256>.bin`; at most `keep` files are
  kept. Nothing in that folder runs: activating a bundle is an authenticated telecommand naming
  its SHA-256 (UPLOAD_ACTIVATE_FILE), and the bundle is verified before activation
  (flight.model_update).
- **Transaction history** (persisted, `STATE/files/history.json`): a late EOF of a finished
  transaction is acknowledged again and its Finished PDU re-sent (CFDP 4.7.2; cfdp-py has no
  history: it would start a new transaction on it); every other late PDU of a finished or
  abandoned transaction is dropped (cfdp-py would write a late File Data PDU of an old transaction
  into the current file: it does not check transaction ids once busy). A PDU of a newer
  transaction pre-empts an unfinished older one; one of an older unknown transaction is dropped.
- **Lost ACKs.** The ground re-acknowledges a repeated Finished PDU (cfdp-py's source is idle by
  then and raises); a Finished arriving while the ground still waits for the ACK of its EOF (that
  ACK was lost) implies the EOF arrived (cfdp-py would drop the Finished and cancel); an EOF
  arriving while the flight waits for the ACK of its Finished is acknowledged (cfdp-py ignores it
  and the ground would cancel). The flight re-sends Finished on its positive-ACK timer; the ground
  re-sends EOF when it hears nothing while waiting for Finished (`Timers.prompt_s`).
- **Lost metadata.** cfdp-py answers every File Data PDU that arrives before the Metadata PDU with
  a NAK of the whole file so far (each one re-sending a growing prefix): the flight lets one such
  PDU through per NAK interval, and the ground sends the Metadata PDU twice.
- **cfdp-py's shared lost-segment tracker** (a dataclass default instance shared by every
  transaction) is cleared before a new transaction starts.
- Every exception cfdp-py raises on an unexpected PDU is caught and counted.

Resumption: a transaction survives lost PDUs, contact gaps (the ground freezes its timers while
the link is down; the flight's NAK and Finished timers re-fire into the gap harmlessly, their
limits are bounded by `inactivity_s` of scenario time instead) and restarts of the commander
within the same transaction sequence. It does not survive a flight restart mid-transfer:
cfdp-py keeps the receiving state in memory and truncates the file when the Metadata PDU comes
again, so the restarted flight asks for the whole file again (measured, docs/operations.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import cfdppy.handler.dest as _cfdp_dest
import cfdppy.handler.source as _cfdp_source
from cfdppy import (
    CfdpState,
    CfdpUserBase,
    IndicationConfig,
    LocalEntityConfig,
    PutRequest,
    RemoteEntityConfig,
    RemoteEntityConfigTable,
)
from cfdppy.filestore import NativeFilestore
from cfdppy.handler.common import PacketDestination, get_packet_destination
from cfdppy.handler.dest import DestHandler
from cfdppy.handler.dest import TransactionStep as DestStep
from cfdppy.handler.source import SourceHandler
from cfdppy.handler.source import TransactionStep as SourceStep
from cfdppy.mib import CheckTimerProvider, DefaultFaultHandlerBase
from spacepackets.ccsds.spacepacket import PacketType, SpacePacketHeader
from spacepackets.cfdp import (
    ChecksumType,
    ConditionCode,
    CrcFlag,
    Direction,
    FaultHandlerCode,
    PduType,
    TransmissionMode,
)
from spacepackets.cfdp.pdu import (
    AckPdu,
    DirectiveType,
    FileDataPdu,
    FinishedPdu,
    NakPdu,
    TransactionStatus,
)
from spacepackets.cfdp.pdu.file_data import FileDataParams
from spacepackets.cfdp.pdu.finished import DeliveryCode, FileStatus, FinishedParams
from spacepackets.cfdp.pdu.helper import PduFactory
from spacepackets.countdown import Countdown
from spacepackets.util import ByteFieldU16

from flight.dictionary import Apid

GROUND_ENTITY = ByteFieldU16(1)  # the ground's CFDP entity id
FLIGHT_ENTITY = ByteFieldU16(2)  # the flight's
SEGMENT_BYTES = 512  # file data per PDU by default: 0.45 s on the air at 9.6 kbit/s
MAX_PDU_BYTES = 1100  # largest PDU either side accepts (segments up to 1024 bytes + headers)
PRIMARY_HEADER = 6
HISTORY_KEEP = 64
MAX_SEQ = 0xFFFFFFFF  # the ground's transaction sequence numbers are 32 bits (_FixedSeq)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class FileTransferError(ValueError):
    """A packet that is not a usable CFDP PDU (bad envelope, APID, length, PDU CRC or layout)."""


# --- envelope -----------------------------------------------------------------------------------


def wrap(pdu: bytes, apid: int, seq: int) -> bytes:
    """A PDU in a space packet: TC type up (Apid.FILE_DATA), TM type down (Apid.FILE_REPLY)."""
    ptype = PacketType.TC if apid == Apid.FILE_DATA else PacketType.TM
    header = SpacePacketHeader(packet_type=ptype, apid=int(apid), seq_count=seq & 0x3FFF, data_len=len(pdu) - 1)
    return header.pack() + bytes(pdu)


def unwrap(packet: bytes, apid: int) -> bytes:
    """The PDU inside a space packet of `apid`; FileTransferError when it is not one."""
    if len(packet) < PRIMARY_HEADER + 4:
        raise FileTransferError(f"{len(packet)} bytes: too short for a CFDP packet")
    got = (packet[0] & 0x07) << 8 | packet[1]
    if got != apid:
        raise FileTransferError(f"apid {got:#x}, expected {int(apid):#x}")
    if packet[0] & 0x08:
        raise FileTransferError("secondary header flag set: not a CFDP packet")
    length = struct.unpack_from(">H", packet, 4)[0] + 1
    if length != len(packet) - PRIMARY_HEADER:
        raise FileTransferError(f"packet length field says {length} bytes of data, {len(packet) - PRIMARY_HEADER} came")
    return packet[PRIMARY_HEADER:]


def parse_pdu(data: bytes):
    """A CFDP PDU object (spacepackets) from its bytes; FileTransferError on anything malformed,
    a PDU CRC that does not match included."""
    if len(data) > MAX_PDU_BYTES:
        raise FileTransferError(f"PDU of {len(data)} bytes > {MAX_PDU_BYTES}")
    try:
        pdu = PduFactory.from_raw(data)
    except Exception as exc:  # spacepackets raises several types (CRC, lengths, enum values)
        raise FileTransferError(f"bad PDU: {type(exc).__name__}: {exc}") from None
    if pdu is None:
        raise FileTransferError("not a PDU")
    if pdu.pdu_header.crc_flag != CrcFlag.WITH_CRC:
        # both ends always send the CRC-16: one flipped header bit would otherwise make the CRC
        # two bytes of file data, and the rest of the PDU unchecked
        raise FileTransferError("PDU without its CRC-16")
    return pdu


def tid_of(pdu) -> tuple[int, int]:
    """(source entity id, transaction sequence number): a transaction's identity."""
    return int(pdu.source_entity_id.value), int(pdu.transaction_seq_num.value)


# --- timers ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timers:
    """Protocol timers, wall seconds. Both ends derive them from the link (`timers_for`)."""

    ack_s: float  # positive-ACK timer: EOF (ground), Finished (flight)
    nak_s: float  # re-issue of NAKs for data still missing (flight)
    prompt_s: float  # ground: re-send EOF after this long without a word while waiting for Finished
    ack_limit: int = 20  # ground: EOF re-sends (counted only while the link is up) before it gives up
    flight_limit: int = 1_000_000  # flight: NAK and Finished re-sends are bounded by inactivity instead


def timers_for(uplink_bps: float, downlink_bps: float, delay_s: float, queue_s: float = 1.5,
               segment_bytes: int = SEGMENT_BYTES) -> Timers:
    """Timers from the link: a round trip is the bulk the ground keeps queued on the uplink plus
    one segment, the propagation both ways, a reply on the downlink, and the ground's reaction."""
    rtt = queue_s + (segment_bytes + 40) * 8 / uplink_bps + 2 * delay_s + 200 * 8 / downlink_bps + 0.3
    return Timers(ack_s=max(3.0, 2.5 * rtt), nak_s=max(3.0, 2.5 * rtt), prompt_s=max(6.0, 4 * rtt))


def _monotonic_ms() -> int:
    return round(time.monotonic() * 1000)


class MonotonicCountdown(Countdown):
    """spacepackets' Countdown on time.monotonic(). Its own runs on time.time(), so a wall clock
    stepped back (NTP, a GPS fix) held cfdp-py's NAK, ACK and check timers for the whole step: an
    upload in progress stopped asking for its missing data. `time_out()` (start 0 = expired on the
    wall clock) becomes "started one timeout ago"."""

    def __init__(self, init_timeout):
        super().__init__(init_timeout)
        if init_timeout is not None:
            self._start_time_ms = _monotonic_ms()

    def start(self) -> None:
        self._start_time_ms = _monotonic_ms()

    def time_out(self) -> None:
        self._start_time_ms = _monotonic_ms() - self._timeout_ms

    def timed_out(self) -> bool:
        return _monotonic_ms() - self._start_time_ms >= self._timeout_ms

    def remaining_time(self) -> timedelta:
        return timedelta(milliseconds=max(0, self._start_time_ms + self._timeout_ms - _monotonic_ms()))


# cfdp-py makes its procedure and ACK timers with the Countdown its handler modules imported
_cfdp_dest.Countdown = MonotonicCountdown  # type: ignore[misc]
_cfdp_source.Countdown = MonotonicCountdown  # type: ignore[misc]


class _CheckTimers(CheckTimerProvider):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def provide_check_timer(self, local_entity_id, remote_entity_id, entity_type) -> Countdown:
        return MonotonicCountdown.from_seconds(self.seconds)


class _FixedSeq:
    """cfdp-py's sequence-count provider for one transaction whose number the caller chose."""

    max_bit_width = 32

    def __init__(self, seq: int):
        self.seq = seq

    def get_and_increment(self) -> int:
        return self.seq


class _Faults(DefaultFaultHandlerBase):
    """Fault indications are recorded (the wrappers turn them into counts, events and results)."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def _note(self, what: str, cond) -> None:
        self.seen.append((what, ConditionCode(cond).name))

    def notice_of_suspension_cb(self, transaction_id, cond, progress) -> None:
        self._note("suspended", cond)

    def notice_of_cancellation_cb(self, transaction_id, cond, progress) -> None:
        self._note("cancelled", cond)

    def abandoned_cb(self, transaction_id, cond, progress) -> None:
        self._note("abandoned", cond)

    def ignore_cb(self, transaction_id, cond, progress) -> None:
        self._note("ignored", cond)


class _User(CfdpUserBase):
    """cfdp-py's user: records what the wrappers need; its default indications print."""

    def __init__(self, vfs):
        super().__init__(vfs)
        self.finished: list = []  # TransactionFinishedParams, in order (the wrappers pop them)

    def transaction_indication(self, transaction_indication_params) -> None:
        pass

    def eof_sent_indication(self, transaction_id) -> None:
        pass

    def transaction_finished_indication(self, params) -> None:
        self.finished.append(params)

    def metadata_recv_indication(self, params) -> None:
        pass  # nothing reads them: kept, they were one more entry per transaction for ever

    def file_segment_recv_indication(self, params) -> None:
        pass

    def report_indication(self, transaction_id, status_report) -> None:
        pass

    def suspended_indication(self, transaction_id, cond_code) -> None:
        pass

    def resumed_indication(self, transaction_id, progress) -> None:
        pass

    def fault_indication(self, transaction_id, cond_code, progress) -> None:
        pass

    def abandoned_indication(self, transaction_id, cond_code, progress) -> None:
        pass

    def eof_recv_indication(self, transaction_id) -> None:
        pass


# --- filestores ----------------------------------------------------------------------------------------


class ConfinedFilestore(NativeFilestore):
    """The flight's filestore: every path from the link maps to `folder/<sanitized base name>`
    (no directories, nothing outside), files are at most `max_bytes`, every write is fsynced."""

    def __init__(self, folder: Path, max_bytes: int):
        super().__init__()
        self.folder, self.max_bytes = Path(folder), max_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self.on_write: Callable[[Path, int, int], None] | None = None  # told after each durable write

    def local(self, path) -> Path:
        name = _SAFE_NAME.sub("_", Path(str(path)).name)[:64].lstrip(".") or "file"
        return self.folder / name

    def read_data(self, file, offset, read_len=None) -> bytes:
        return super().read_data(self.local(file), offset, read_len)

    def file_size(self, file) -> int:
        return super().file_size(self.local(file))

    def file_exists(self, path) -> bool:
        return self.local(path).is_file()

    def is_directory(self, path) -> bool:
        return False

    def truncate_file(self, file) -> None:
        super().truncate_file(self.local(file))

    def write_data(self, file, data: bytes, offset) -> None:
        if (offset or 0) + len(data) > self.max_bytes:
            raise PermissionError(f"a file over {self.max_bytes} bytes is refused")
        path = self.local(file)
        if not path.exists():
            raise FileNotFoundError(path)
        with open(path, "r+b") as f:
            f.seek(offset or 0)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if self.on_write is not None:
            self.on_write(path, offset or 0, len(data))

    def create_file(self, file):
        return super().create_file(self.local(file))

    def delete_file(self, file):
        return super().delete_file(self.local(file))

    def rename_file(self, old_file, new_file):
        return super().rename_file(self.local(old_file), self.local(new_file))

    def replace_file(self, replaced_file, source_file):
        return super().replace_file(self.local(replaced_file), self.local(source_file))

    def create_directory(self, dir_name):
        raise PermissionError("no directories on board")

    def remove_directory(self, dir_name, recursive: bool = False):
        raise PermissionError("no directories on board")

    def list_directory(self, dir_name, target_file, recursive: bool = False):
        raise PermissionError("no listing on board")

    def calculate_checksum(self, checksum_type, file_path, size_to_verify: int, segment_len: int = 4096) -> bytes:
        return super().calculate_checksum(checksum_type, self.local(file_path), size_to_verify, segment_len)


class BytesFilestore(NativeFilestore):
    """The ground's filestore for one file held in memory (read only)."""

    def __init__(self, path: Path, data: bytes):
        super().__init__()
        self.path, self.data = Path(path), bytes(data)

    def _check(self, file) -> None:
        if Path(file) != self.path:
            raise FileNotFoundError(file)

    def read_data(self, file, offset, read_len=None) -> bytes:
        self._check(file)
        offset = offset or 0
        return self.data[offset : offset + (len(self.data) if read_len is None else read_len)]

    def file_size(self, file) -> int:
        self._check(file)
        return len(self.data)

    def file_exists(self, path) -> bool:
        return Path(path) == self.path

    def calculate_checksum(self, checksum_type, file_path, size_to_verify: int, segment_len: int = 4096) -> bytes:
        self._check(file_path)
        if checksum_type != ChecksumType.CRC_32:
            raise ValueError(f"only CRC_32 here, not {checksum_type!r}")
        return struct.pack("!I", zlib.crc32(self.data[:size_to_verify]))  # CRC-32/ISO-HDLC, as cfdp-py's


def crc32_of(path: Path, size: int) -> bytes:
    """The CFDP CRC-32 (ISO-HDLC, what zlib computes) of a file's first `size` bytes."""
    with open(path, "rb") as f:
        return struct.pack("!I", zlib.crc32(f.read(size)))


def _ack(pdu_conf, directive: DirectiveType, cond: ConditionCode, status: TransactionStatus,
         direction: Direction) -> AckPdu:
    conf = pdu_conf.__class__(**{**pdu_conf.__dict__, "direction": direction})
    return AckPdu(conf, directive, cond, status)


def _remote(entity, timers: Timers, segment_bytes: int | None, limit: int) -> RemoteEntityConfig:
    return RemoteEntityConfig(
        entity_id=entity, max_file_segment_len=segment_bytes, max_packet_len=MAX_PDU_BYTES,
        closure_requested=True, crc_on_transmission=True, default_transmission_mode=TransmissionMode.ACKNOWLEDGED,
        crc_type=ChecksumType.CRC_32, positive_ack_timer_interval_seconds=timers.ack_s,
        positive_ack_timer_expiration_limit=limit, check_limit=2, immediate_nak_mode=True,
        nak_timer_interval_seconds=timers.nak_s, nak_timer_expiration_limit=limit)


def _atomic_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- flight: the receiving entity ----------------------------------------------------------------------


class FileReceiver:
    """The flight's CFDP entity: receives files into `root` (see the module docstring).

    `send(pdu_bytes)` puts a reply PDU on the downlink. `scenario_now()` gives mission time (the
    inactivity limit is in scenario seconds, like contact gaps). Not thread-safe: FileService
    serialises calls. Events for the operator (FILE_RECEIVED, FILE_TRANSFER_FAILED) collect in
    `events` as (name, kwargs) for the owner to emit."""

    def __init__(self, root: Path, max_bytes: int, timers: Timers, send: Callable[[bytes], None],
                 scenario_now: Callable[[], float] = time.time, inactivity_s: float = 7200.0, keep: int = 4,
                 log: Callable[[str], None] = lambda _m: None):
        self.root = Path(root)
        self.received_dir = self.root / "received"
        self.received_dir.mkdir(parents=True, exist_ok=True)
        self.vfs = ConfinedFilestore(self.root / "incoming", max_bytes)
        self.timers, self.send, self.scenario_now, self.log = timers, send, scenario_now, log
        self.inactivity_s, self.keep = inactivity_s, keep
        self.user = _User(self.vfs)
        self.faults = _Faults()
        self.faults.set_handler(ConditionCode.POSITIVE_ACK_LIMIT_REACHED, FaultHandlerCode.ABANDON_TRANSACTION)
        cfg = LocalEntityConfig(FLIGHT_ENTITY, IndicationConfig(), self.faults)
        remote = _remote(GROUND_ENTITY, timers, None, timers.flight_limit)
        self.dest = DestHandler(cfg, self.user, RemoteEntityConfigTable([remote]), _CheckTimers(timers.nak_s))
        self.history_path = self.root / "history.json"
        self.history: dict[tuple[int, int], dict] = {}
        try:
            for e in json.loads(self.history_path.read_text()):
                self.history[(int(e["source"]), int(e["seq"]))] = e
        except (OSError, ValueError, KeyError, TypeError):
            self.history = {}
        self.events: list[tuple[str, dict]] = []
        self.counts = dict(pdus_in=0, pdus_rejected=0, pdus_ignored=0, pdus_late=0, pdus_out=0, naks_out=0,
                           files_received=0, transfers_failed=0, protocol_errors=0, resumed=0, seq_reused=0,
                           orphans_removed=0)
        self.eof_crc: dict[tuple[int, int], tuple[bytes, int]] = {}  # the EOF's CRC-32 and size, per transaction
        self.names: dict[tuple[int, int], str] = {}  # the file name the ground gave, per transaction
        self.sizes: dict[tuple[int, int], int] = {}  # the file size its Metadata PDU gave, per transaction
        self.started_s: dict[tuple[int, int], float] = {}
        self.last_activity_s = 0.0
        self._meta_nak_wall = 0.0
        self._refused_logged = 0.0
        self.open_dir = self.root / "open"  # per open transaction: its Metadata PDU and the ranges on disk
        self.open_dir.mkdir(exist_ok=True)
        self._have_tid: tuple[int, int] | None = None  # the transaction whose .have record _have_ranges mirrors
        self._have_ranges: set[tuple[int, int]] = set()  # (offset, length) already in that record
        self.vfs.on_write = self._on_write

    # -- state -------------------------------------------------------------------------------------

    @property
    def active(self) -> tuple[int, int] | None:
        t = self.dest.transaction_id
        return None if self.dest.state == CfdpState.IDLE or t is None else (int(t.source_id.value), int(t.seq_num.value))

    @property
    def busy(self) -> bool:
        return self.dest.state != CfdpState.IDLE

    def received_file(self, sha256_hex: str) -> Path | None:
        """The received file with this SHA-256 (hex), if it is on board."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256_hex):
            return None
        path = self.received_dir / f"{sha256_hex}.bin"
        return path if path.is_file() else None

    def consume(self, sha256_hex: str) -> None:
        """The file was used (activated) or refused: delete it, and stop waiting for the ACK of
        its Finished PDU (the ground has moved on)."""
        path = self.received_file(sha256_hex)
        if path is not None:
            path.unlink()
        for tid, e in self.history.items():
            if e.get("sha256") == sha256_hex and self.active == tid:
                self.dest.reset()
                self._record(tid, e | {"closed": True})

    def status(self) -> dict:
        a = self.active
        return dict(self.counts, active=None if a is None else f"{a[0]}:{a[1]}",
                    step=self.dest.step.name, progress=self.dest.progress,
                    size=self.dest.file_size, received=sorted(p.stem[:16] for p in self.received_dir.glob("*.bin")))

    # -- packets in ---------------------------------------------------------------------------------

    def on_packet(self, packet: bytes, now: float | None = None) -> None:
        """One uplink packet on Apid.FILE_DATA."""
        now = time.monotonic() if now is None else now  # rate limits only: immune to wall clock steps
        try:
            pdu = parse_pdu(unwrap(packet, Apid.FILE_DATA))
            if pdu.direction != Direction.TOWARDS_RECEIVER or pdu.dest_entity_id.value != FLIGHT_ENTITY.value:
                raise FileTransferError("not addressed to the flight's receiving entity")
            if pdu.source_entity_id.value != GROUND_ENTITY.value:
                raise FileTransferError(f"unknown source entity {pdu.source_entity_id.value}")
            if pdu.transmission_mode != TransmissionMode.ACKNOWLEDGED:
                raise FileTransferError("only acknowledged mode is accepted")
            if get_packet_destination(pdu) != PacketDestination.DEST_HANDLER:
                raise FileTransferError("a PDU for a sending entity")
            if int(pdu.transaction_seq_num.value) > MAX_SEQ:
                # the ground numbers transactions in 32 bits; a wider one (2**63) would pre-empt the
                # transfer in progress and make every real one look older ("late") until inactivity
                raise FileTransferError(f"transaction sequence number {pdu.transaction_seq_num.value} over 32 bits")
            if pdu.pdu_type == PduType.FILE_DATA and pdu.offset + len(pdu.file_data) > self.vfs.max_bytes:
                # never part of a file the flight accepts: cfdp-py would NAK everything up to it (a
                # NAK of 2**63 bytes) or swallow it silently once the file exists
                raise FileTransferError(f"file data at {pdu.offset}+{len(pdu.file_data)} beyond {self.vfs.max_bytes} bytes")
        except (FileTransferError, ValueError) as exc:
            self.counts["pdus_rejected"] += 1
            if now - self._refused_logged >= 10.0:  # bit errors or junk can come in floods: a line per 10 s
                self._refused_logged = now
                self.log(f"file PDU refused: {exc} ({self.counts['pdus_rejected']} refused so far)")
            return
        self.counts["pdus_in"] += 1
        self._dispatch(pdu, now)

    def _dispatch(self, pdu, now: float) -> None:
        tid = tid_of(pdu)
        directive = None if pdu.pdu_type == PduType.FILE_DATA else pdu.directive_type
        active = self.active
        if tid != active and tid in self.history and self._reused(pdu, self.history[tid]):
            # the same number for another file: a new ground run (its RUN_DIR/cfdp.json starts again)
            # against a flight whose state folder survived. Answering from the history would hand
            # the ground the old transaction's Finished (ok) for a file never received.
            self.counts["seq_reused"] += 1
            self.log(f"file transaction {tid[0]}:{tid[1]}: the number is used again for another file; a new transfer")
            del self.history[tid]
        if tid != active and tid in self.history:  # finished, failed or abandoned: only an EOF gets an answer
            self.counts["pdus_late"] += 1
            if directive == DirectiveType.EOF_PDU:
                self._answer_late_eof(pdu, self.history[tid])
            return
        if active is not None and tid != active:
            if tid[1] > active[1]:  # the ground has started a newer transaction: give the old one up
                self._abandon(active, "a newer transaction began")
            else:
                self.counts["pdus_late"] += 1
                return
        step = self.dest.step
        if active == tid and step == DestStep.WAITING_FOR_FINISHED_ACK:
            if directive == DirectiveType.EOF_PDU:  # our ACK of its EOF was lost: acknowledge again
                self._send(_ack(pdu.pdu_header.pdu_conf, DirectiveType.EOF_PDU, pdu.condition_code,
                                TransactionStatus.ACTIVE, Direction.TOWARDS_SENDER))
            elif directive != DirectiveType.ACK_PDU:
                self.counts["pdus_late"] += 1
                return
        if active == tid and step == DestStep.WAITING_FOR_METADATA and pdu.pdu_type == PduType.FILE_DATA:
            if now - self._meta_nak_wall < self.timers.nak_s:  # one whole-file NAK per interval is enough
                self.counts["pdus_ignored"] += 1
                return
            self._meta_nak_wall = now
        if not self.busy and directive not in (None, DirectiveType.METADATA_PDU, DirectiveType.EOF_PDU):
            # an ACK, Prompt or Keep Alive of a transaction unknown here starts nothing (cfdp-py
            # refuses it); "starting" it left a started_s entry per PDU for ever, and two log lines
            self.counts["pdus_ignored"] += 1
            return
        if not self.busy:
            self._start(tid, now)
            self._drop_orphans(tid)
            if not self._resume(tid, pdu) and pdu.pdu_type == PduType.FILE_DATA:
                self._meta_nak_wall = now
        if directive == DirectiveType.EOF_PDU and pdu.condition_code == ConditionCode.NO_ERROR:
            self.eof_crc[tid] = (bytes(pdu.file_checksum), int(pdu.file_size))
        if directive == DirectiveType.METADATA_PDU and pdu.dest_file_name and tid not in self.names:
            self.names[tid] = pdu.dest_file_name
            self.sizes[tid] = int(pdu.file_size)
            self._save_open(tid, pdu)
        self.last_activity_s = self.scenario_now()
        self._feed(pdu)

    # -- resumption across a flight restart ------------------------------------------------------------
    # cfdp-py keeps a transaction's state in memory only. The receiver keeps, per open transaction,
    # its Metadata PDU (open/<src>-<seq>.meta) and the ranges already on disk (open/<src>-<seq>.have,
    # a record appended after each write's fsync, so a range is never claimed before its data is
    # durable). After a restart, the first PDU of that transaction rebuilds cfdp-py's state: the
    # Metadata PDU again (the partial file put aside while cfdp-py truncates it), then the ranges on
    # disk fed back as File Data PDUs read from the file. Only what was missing is asked for.

    def _open_path(self, tid: tuple[int, int], ext: str) -> Path:
        return self.open_dir / f"{tid[0]}-{tid[1]}.{ext}"

    def _save_open(self, tid: tuple[int, int], metadata) -> None:
        try:
            path = self._open_path(tid, "meta")
            if not path.exists():
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_bytes(bytes(metadata.pack()))
                os.replace(tmp, path)
                self._open_path(tid, "have").unlink(missing_ok=True)
                self._have_tid = None
        except OSError as exc:
            self.log(f"file transaction {tid[0]}:{tid[1]}: not resumable after a restart ({exc})")

    def _on_write(self, path: Path, offset: int, length: int) -> None:
        tid = self.active
        if tid is None or self._restoring or self.vfs.local(self.names.get(tid, "file")) != path:
            return
        if self._have_tid != tid:
            self._have_tid, self._have_ranges = tid, set()
        if (offset, length) in self._have_ranges:  # a repeated segment: 12 more bytes for each, for the transfer's life
            return
        try:
            with open(self._open_path(tid, "have"), "ab") as f:
                f.write(struct.pack(">QI", offset, length))
            self._have_ranges.add((offset, length))
        except OSError:
            pass  # those bytes are asked for again after a restart

    def _forget_open(self, tid: tuple[int, int]) -> None:
        self._have_tid = None
        for ext in ("meta", "have"):
            self._open_path(tid, ext).unlink(missing_ok=True)

    _restoring = False

    def _drop_orphans(self, tid: tuple[int, int]) -> None:
        """Open transactions older than `tid` that this process never ran (the flight restarted
        during them): the newer transaction pre-empts them as it would a running one. Without
        this, each such transfer left its partial file (up to max_bytes) and records for ever."""
        own = self._open_path(tid, "meta")
        for meta_path in sorted(self.open_dir.glob("*.meta")):
            try:
                src, seq = (int(x) for x in meta_path.stem.split("-"))
            except ValueError:
                continue
            old = (src, seq)
            if src != tid[0] or seq >= tid[1] or old in self.history:
                continue
            try:
                name = parse_pdu(meta_path.read_bytes()).dest_file_name or "file"
            except (OSError, FileTransferError):
                name = "file"
            path = self.vfs.local(name)
            try:  # keep the file when it is the one the new transaction resumes (same name)
                mine = own.exists() and self.vfs.local(parse_pdu(own.read_bytes()).dest_file_name) == path
            except (OSError, FileTransferError):
                mine = False
            if not mine:
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".resume").unlink(missing_ok=True)
            self.names[old] = name
            self.counts["orphans_removed"] += 1
            self.counts["transfers_failed"] += 1
            reason = f"abandoned: a newer transaction began (after a restart, {tid[0]}:{tid[1]})"
            self.events.append(("FILE_TRANSFER_FAILED", dict(seq=seq, reason=reason[:120])))
            self.log(f"file transaction {src}:{seq} {reason}")
            self._record(old, {"source": src, "seq": seq, "failed": reason,
                               "condition": int(ConditionCode.CANCEL_REQUEST_RECEIVED),
                               "delivery": int(DeliveryCode.DATA_INCOMPLETE),
                               "file_status": int(FileStatus.DISCARDED_DELIBERATELY), "at_s": round(self.scenario_now(), 1)})

    def _resume(self, tid: tuple[int, int], first=None) -> bool:
        """Rebuild an open transaction after a restart; False when there is nothing to resume.
        `first`: the PDU that starts it here."""
        try:
            meta = parse_pdu(self._open_path(tid, "meta").read_bytes())
            raw = self._open_path(tid, "have").read_bytes() if self._open_path(tid, "have").exists() else b""
        except (OSError, FileTransferError):
            return False
        if (first is not None and first.pdu_type == PduType.FILE_DIRECTIVE
                and first.directive_type == DirectiveType.METADATA_PDU
                and (first.dest_file_name, int(first.file_size)) != (meta.dest_file_name, int(meta.file_size))):
            # the same number for another file (a new ground run): the bytes on board are not
            # this file's; resuming would mix the two (and report the old name)
            self.counts["seq_reused"] += 1
            self.log(f"file transaction {tid[0]}:{tid[1]}: the number is used again for another file; not resumed")
            self.vfs.local(meta.dest_file_name).unlink(missing_ok=True)
            self._forget_open(tid)
            return False
        ranges = sorted(struct.unpack_from(">QI", raw, i) for i in range(0, len(raw) - len(raw) % 12, 12))
        path = self.vfs.local(meta.dest_file_name)
        kept = path.with_name(path.name + ".resume")
        self._restoring = True
        try:
            if path.exists():
                os.replace(path, kept)
            self.names[tid] = meta.dest_file_name
            self.sizes[tid] = int(meta.file_size)
            self.dest.state_machine(meta)  # creates an empty file ...
            self._after()
            if kept.exists():
                os.replace(kept, path)  # ... and the bytes on disk come back under it
            conf = meta.pdu_header.pdu_conf
            size = path.stat().st_size if path.exists() else 0
            fed = 0
            for offset, length in ranges:
                if offset + length > size:
                    continue
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read(length)
                self.dest.state_machine(FileDataPdu(conf, FileDataParams(file_data=data, offset=offset, segment_metadata=None)))
                self._after()
                fed += length
            self.log(f"file transaction {tid[0]}:{tid[1]} resumed after a restart: {fed} bytes already on board")
            self.counts["resumed"] += 1
            return True
        except Exception as exc:  # noqa: BLE001 (a resume that fails starts the file again)
            self.log(f"file transaction {tid[0]}:{tid[1]}: resume failed ({type(exc).__name__}: {exc}); starting again")
            self.dest.reset()
            self._start(tid, time.monotonic())
            return False
        finally:
            self._restoring = False

    def _start(self, tid: tuple[int, int], now: float) -> None:
        self.dest.reset()
        # cfdp-py 0.7's _AckedModeParams has a LostSegmentTracker *instance* as its dataclass
        # default: one tracker shared by every transaction. Clear it before a new one begins.
        self.dest._params.acked_params.lost_seg_tracker.reset()
        self.started_s[tid] = self.scenario_now()
        self.log(f"file transaction {tid[0]}:{tid[1]} begins")

    def _feed(self, pdu) -> None:
        try:
            self.dest.state_machine(pdu)
            size = self.dest.file_size
            if (size is not None and size > self.vfs.max_bytes and self.busy
                    and self.dest.step in (DestStep.RECEIVING_FILE_DATA, DestStep.WAITING_FOR_MISSING_DATA)):
                # cfdp-py swallows a write the filestore refuses once the file exists (and asks
                # for it again for ever): refuse an oversized file as soon as its size is known,
                # with the standard's condition (Finished: FILESTORE_REJECTION)
                self._after()
                self.dest._declare_fault(ConditionCode.FILESTORE_REJECTION)
                self.dest.state_machine()
        except Exception as exc:  # noqa: BLE001 (cfdp-py raises on unexpected PDUs; the link must not stop us)
            self.counts["protocol_errors"] += 1
            self.log(f"file PDU not taken ({type(exc).__name__}: {exc})")
        self._after()

    def tick(self, now: float | None = None) -> None:
        """Run the timers (NAK re-issue, Finished re-send) and the inactivity limit."""
        if not self.busy:
            return
        active = self.active
        if active is not None and self.scenario_now() - self.last_activity_s > self.inactivity_s:
            self._abandon(active, f"nothing heard for {self.inactivity_s:.0f} s")
            return
        try:
            self.dest.state_machine()
        except Exception as exc:  # noqa: BLE001
            self.counts["protocol_errors"] += 1
            self.log(f"file transfer timer step failed ({type(exc).__name__}: {exc})")
        self._after()

    # -- after each step: replies out, finished transactions filed --------------------------------------

    def _after(self) -> None:
        # finished transactions are filed before the replies go: a Finished PDU of a file that
        # failed the checks here (EOF size, CRC-32, filing) is sent as the failure it is (_send)
        while self.user.finished:
            params = self.user.finished.pop(0)
            try:
                self._finished(params)
            except OSError as exc:  # the storage failed while filing: the ground sends the file again
                t = params.transaction_id
                tid = (int(t.source_id.value), int(t.seq_num.value))
                self.counts["transfers_failed"] += 1
                self.events.append(("FILE_TRANSFER_FAILED", dict(seq=tid[1], reason=f"filing the file failed: {exc}"[:120])))
                self._record(tid, {"source": tid[0], "seq": tid[1], "failed": f"filing failed: {exc}"[:120],
                                   "condition": int(ConditionCode.FILESTORE_REJECTION),
                                   "delivery": int(DeliveryCode.DATA_INCOMPLETE),
                                   "file_status": int(FileStatus.DISCARDED_DELIBERATELY), "at_s": round(self.scenario_now(), 1)})
        while self.dest.packets_ready:
            holder = self.dest.get_next_packet()
            if holder is not None and holder.pdu is not None:
                self._send(holder.pdu)
        self.faults.seen.clear()

    def _send(self, pdu) -> None:
        if isinstance(pdu, FinishedPdu) and pdu.condition_code == ConditionCode.NO_ERROR:
            entry = self.history.get(tid_of(pdu), {})
            if "failed" in entry:  # cfdp-py's "complete", but the file was discarded here: the ground must not read ok
                conf = pdu.pdu_header.pdu_conf
                pdu = FinishedPdu(params=FinishedParams(condition_code=ConditionCode(entry["condition"]),
                                                        delivery_code=DeliveryCode(entry["delivery"]),
                                                        file_status=FileStatus(entry["file_status"])), pdu_conf=conf)
        self.counts["pdus_out"] += 1
        self.counts["naks_out"] += getattr(pdu, "directive_type", None) == DirectiveType.NAK_PDU
        try:
            self.send(bytes(pdu.pack()))
        except Exception as exc:  # noqa: BLE001 (a reply that cannot go now is recovered by the timers)
            self.log(f"file reply not sent: {exc!r}")

    def _finished(self, params) -> None:
        t = params.transaction_id
        tid = (int(t.source_id.value), int(t.seq_num.value))
        fp = params.finished_params
        entry: dict = {"source": tid[0], "seq": tid[1], "condition": int(fp.condition_code),
                 "delivery": int(fp.delivery_code), "file_status": int(fp.file_status),
                 "name": self.names.get(tid, ""), "at_s": round(self.scenario_now(), 1)}
        incoming = self.vfs.local(self.names.get(tid, "file"))
        ok = fp.condition_code == ConditionCode.NO_ERROR and fp.delivery_code == DeliveryCode.DATA_COMPLETE
        reason = ConditionCode(fp.condition_code).name
        if ok:
            crc = self.eof_crc.get(tid)
            try:
                if crc is None or not incoming.is_file() or incoming.stat().st_size != crc[1]:
                    ok, reason = False, "file size differs from the EOF"
                elif crc32_of(incoming, crc[1]) != crc[0]:
                    ok, reason = False, "CRC-32 differs from the EOF"
            except OSError as exc:
                ok, reason = False, f"file unreadable: {exc}"
        if ok:
            digest = hashlib.sha256(incoming.read_bytes()).hexdigest()
            final = self.received_dir / f"{digest}.bin"
            os.replace(incoming, final)
            fd = os.open(self.received_dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            entry |= {"sha256": digest, "size": final.stat().st_size}
            self.counts["files_received"] += 1
            self._prune()
            took = self.scenario_now() - self.started_s.get(tid, self.scenario_now())
            self.events.append(("FILE_RECEIVED", dict(name=entry["name"][:60], size=entry["size"], sha8=digest[:8],
                                                      seq=tid[1], took_s=took)))
            self.log(f"file transaction {tid[0]}:{tid[1]}: {entry['size']} bytes received, sha256 {digest[:16]}")
        else:
            incoming.unlink(missing_ok=True)
            entry["failed"] = reason
            if fp.condition_code == ConditionCode.NO_ERROR:  # cfdp-py said complete; the checks here did not
                entry |= {"condition": int(ConditionCode.FILE_SIZE_ERROR if "size" in reason
                                           else ConditionCode.FILE_CHECKSUM_FAILURE if "CRC" in reason
                                           else ConditionCode.FILESTORE_REJECTION),
                          "delivery": int(DeliveryCode.DATA_INCOMPLETE),
                          "file_status": int(FileStatus.DISCARDED_DELIBERATELY)}
            self.counts["transfers_failed"] += 1
            self.events.append(("FILE_TRANSFER_FAILED", dict(seq=tid[1], reason=reason[:120])))
            self.log(f"file transaction {tid[0]}:{tid[1]} failed: {reason}")
        self._record(tid, entry)

    def _record(self, tid: tuple[int, int], entry: dict) -> None:
        # what the transaction was about (name, Metadata size, EOF), so that the same number used
        # again for another file is told from a late PDU of this one (_reused)
        entry = entry.copy()
        if "name" not in entry and tid in self.names:
            entry["name"] = self.names[tid]
        if tid in self.sizes:
            entry.setdefault("file_size", self.sizes[tid])
        if tid in self.eof_crc:
            entry.setdefault("eof_crc", self.eof_crc[tid][0].hex())
            entry.setdefault("eof_size", self.eof_crc[tid][1])
        self.history[tid] = entry
        self._forget_open(tid)
        for old in list(self.history)[:-HISTORY_KEEP]:
            del self.history[old]
        for d in (self.eof_crc, self.names, self.sizes, self.started_s):
            d.pop(tid, None)
        try:
            _atomic_json(self.history_path, list(self.history.values()))
        except OSError as exc:  # kept in memory
            self.log(f"file transfer history not written: {exc}")

    def _prune(self) -> None:
        files = sorted(self.received_dir.glob("*.bin"), key=lambda p: p.stat().st_mtime)
        for p in files[: max(0, len(files) - self.keep)]:
            p.unlink(missing_ok=True)

    def _abandon(self, tid: tuple[int, int], reason: str) -> None:
        self.dest.reset()
        if tid in self.history:  # the file was filed already; only the ACK of its Finished never came
            self.log(f"file transaction {tid[0]}:{tid[1]} closed without the ACK of its Finished PDU ({reason})")
            return
        name = self.names.get(tid)
        if name:
            self.vfs.local(name).unlink(missing_ok=True)
        self.counts["transfers_failed"] += 1
        self.events.append(("FILE_TRANSFER_FAILED", dict(seq=tid[1], reason=f"abandoned: {reason}"[:120])))
        self.log(f"file transaction {tid[0]}:{tid[1]} abandoned: {reason}")
        self._record(tid, {"source": tid[0], "seq": tid[1], "failed": f"abandoned: {reason}",
                           "condition": int(ConditionCode.INACTIVITY_DETECTED if "heard" in reason
                                            else ConditionCode.CANCEL_REQUEST_RECEIVED),
                           "delivery": int(DeliveryCode.DATA_INCOMPLETE),
                           "file_status": int(FileStatus.DISCARDED_DELIBERATELY), "at_s": round(self.scenario_now(), 1)})

    @staticmethod
    def _reused(pdu, entry: dict) -> bool:
        """Whether a Metadata or EOF PDU of a transaction in the history describes another file
        (name, size or CRC-32 differ from what was recorded): the number was used again."""
        directive = None if pdu.pdu_type == PduType.FILE_DATA else pdu.directive_type
        size = entry.get("file_size", entry.get("size"))
        if directive == DirectiveType.METADATA_PDU:
            return entry.get("name") != pdu.dest_file_name or (size is not None and size != int(pdu.file_size))
        if directive == DirectiveType.EOF_PDU and pdu.condition_code == ConditionCode.NO_ERROR:
            if "eof_crc" in entry:
                return entry["eof_crc"] != bytes(pdu.file_checksum).hex() or entry.get("eof_size") != int(pdu.file_size)
            return "size" in entry and entry["size"] != int(pdu.file_size)
        return False

    def _answer_late_eof(self, eof, entry: dict) -> None:
        """CFDP 4.7.2: every EOF is acknowledged, even of a transaction no longer active; the
        Finished PDU goes again too (the ground may not have it)."""
        self._send(_ack(eof.pdu_header.pdu_conf, DirectiveType.EOF_PDU, eof.condition_code,
                        TransactionStatus.TERMINATED, Direction.TOWARDS_SENDER))
        if "condition" in entry:
            conf = eof.pdu_header.pdu_conf
            conf = conf.__class__(**{**conf.__dict__, "direction": Direction.TOWARDS_SENDER})
            params = FinishedParams(condition_code=ConditionCode(entry["condition"]),
                                    delivery_code=DeliveryCode(entry["delivery"]),
                                    file_status=FileStatus(entry["file_status"]))
            self._send(FinishedPdu(params=params, pdu_conf=conf))


class FileService:
    """The flight's file transfers as flight.app sees them: packets in (`on_packet`, main thread),
    replies out on the downlink on the flight's own socket to the radio (Apid.FILE_REPLY), the
    protocol timers on a small daemon thread while a transaction is open, and the receiver's
    events emitted from the main thread (the product store is not shared across threads).

    Why replies bypass the product store: CFDP has its own recovery (a lost NAK is re-issued, a
    lost Finished re-sent, a lost ACK answered again), so store-and-retransmit would only add
    copies; and they must not wait behind products. They are a few tens of bytes each, and the
    radio channel sends Apid.FILE_REPLY ahead of products (ground_link.channel)."""

    def __init__(self, app):
        from flight.security import SecureContext  # zmq only when the flight has a radio

        self.app = app
        sc = app.sc
        link = sc.link
        self.timers = timers_for(link.uplink_rate_bps, link.downlink_rate_bps, link.delay_ms / 1e3, link.uplink_bulk_queue_s)
        self.lock = threading.RLock()
        self.receiver = FileReceiver(app.state_dir / "files", sc.ops.upload_max_bytes, self.timers, self._send,
                                     scenario_now=app.clock.now_s, inactivity_s=sc.ops.file_inactivity_s,
                                     keep=sc.ops.files_kept, log=app.svc.log)
        self._secure = SecureContext
        self._ctx = None
        self._sock = None
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._status_at = 0.0

    def _socket(self):
        if self._sock is None:
            import zmq

            ctx = self._secure(self.app.sc.security, "flight", self.app.run_dir)
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 1000)
            ctx.client(sock, "channel")
            sock.connect(self.app.sc.network.space_in)
            self._ctx, self._sock = ctx, sock
        return self._sock

    def _send(self, pdu: bytes) -> None:
        import zmq

        self._seq += 1
        packet = wrap(pdu, Apid.FILE_REPLY, self._seq)
        try:
            self._socket().send(packet, zmq.NOBLOCK)
        except zmq.Again:  # the radio is not taking more: CFDP's timers recover the reply
            pass

    def on_packet(self, packet: bytes) -> None:
        """One uplink packet on Apid.FILE_DATA; never raises (a file transfer's trouble is not a
        software fault of the flight: it is counted, logged and reported as events)."""
        with self.lock:
            before = self.receiver.counts["pdus_in"]
            try:
                self.receiver.on_packet(packet)
            except Exception as exc:  # noqa: BLE001 (storage errors while abandoning or pruning)
                self.receiver.counts["protocol_errors"] += 1
                self.app.svc.log(f"file transfer: {type(exc).__name__}: {exc}")
            if self.receiver.counts["pdus_in"] > before:
                self.app.last_uplink = time.monotonic()
            self._ensure_thread()
            self._write_status()
        self.flush_events()

    def _write_status(self, every_s: float = 0.5) -> None:
        """RUN_DIR/files.status.json: the receiver's counts and the transaction in progress."""
        now = time.monotonic()
        if now - self._status_at < every_s:
            return
        self._status_at = now
        try:
            _atomic_json(self.app.run_dir / "files.status.json", self.receiver.status())
        except OSError:
            pass

    def flush_events(self) -> None:
        """Emit what the receiver reported (main thread only)."""
        with self.lock:
            events, self.receiver.events = self.receiver.events, []
        for name, kw in events:
            self.app.emit(name, **kw)

    def _ensure_thread(self) -> None:
        if self.receiver.busy and (self._thread is None or not self._thread.is_alive()):
            self._thread = threading.Thread(target=self._timers, name="cfdp-timers", daemon=True)
            self._thread.start()

    def _timers(self) -> None:
        while True:
            time.sleep(0.2)
            with self.lock:
                if not self.receiver.busy:
                    self._thread = None
                    return
                try:
                    self.receiver.tick()
                except Exception as exc:  # noqa: BLE001 (a timer step must never kill the thread silently)
                    self.app.svc.log(f"file transfer timers: {exc!r}")

    def received_file(self, sha256_hex: str) -> Path | None:
        with self.lock:
            return self.receiver.received_file(sha256_hex)

    def consume(self, sha256_hex: str) -> None:
        with self.lock:
            self.receiver.consume(sha256_hex)
        self.flush_events()


# --- ground: the sending entity -------------------------------------------------------------------------


class FileSender:
    """The ground's CFDP entity for one file (one transaction, sequence number `seq`).

    Drive it with `pump()` (lets cfdp-py make the next PDUs and run its timers; call it only while
    the link is up: the ground freezes the transaction over a gap), `on_packet()` for each downlink
    packet on Apid.FILE_REPLY, and take what to send with `next_packet()` (directives first, then
    file data). `done` once the flight's Finished PDU came (or the transaction was cancelled);
    `ok` says whether the file arrived whole."""

    SOURCE_PATH = Path("/ground/outgoing.bin")  # the name inside BytesFilestore

    def __init__(self, data: bytes, dest_name: str, seq: int, timers: Timers, segment_bytes: int = SEGMENT_BYTES,
                 now: Callable[[], float] = time.monotonic, resume: bool = False):
        self.size, self.timers, self.now = len(data), timers, now
        self.user = _User(BytesFilestore(self.SOURCE_PATH, data))
        self.faults = _Faults()
        cfg = LocalEntityConfig(GROUND_ENTITY, IndicationConfig(), self.faults)
        remote = _remote(FLIGHT_ENTITY, timers, segment_bytes, timers.ack_limit)
        self.src = SourceHandler(cfg, self.user, RemoteEntityConfigTable([remote]), _CheckTimers(timers.ack_s), _FixedSeq(seq))
        self.src.put_request(PutRequest(destination_id=FLIGHT_ENTITY, source_file=self.SOURCE_PATH,
                                        dest_file=Path(dest_name), trans_mode=TransmissionMode.ACKNOWLEDGED,
                                        closure_requested=True))
        self.seq = seq
        self.directives: deque[bytes] = deque()
        self.bulk: deque[bytes] = deque()
        self.result = None  # FinishedParams once done
        self.failure: str | None = None
        self.finished_ack: bytes | None = None
        self.eof: bytes | None = None
        self.metadata: bytes | None = None
        self.metadata_repeats = 1  # the Metadata PDU goes once more after a few file data PDUs
        self.fd_made = 0
        self.last_heard = now()
        self.took_s = 0.0  # set by the driver when done
        self.counts = dict(pdus_out=0, file_data_out=0, resent_bytes=0, naks_in=0, pdus_in=0, pdus_rejected=0,
                           protocol_errors=0, prompts=0, naks_out_of_range=0)
        self.resumed = resume
        if resume:
            # the same transaction as an earlier commander's: Metadata again, then straight to EOF;
            # the flight answers with a NAK of what it lacks (or, if it has the file, Finished)
            self._step(None)
            self.src._params.fp.progress = self.size

    @property
    def done(self) -> bool:
        return self.result is not None or self.failure is not None

    @property
    def ok(self) -> bool:
        r = self.result
        return (r is not None and r.condition_code == ConditionCode.NO_ERROR
                and r.delivery_code == DeliveryCode.DATA_COMPLETE)

    @property
    def progress(self) -> int:
        """File bytes handed out so far (first sends)."""
        return self.size if self.done and self.ok else self.src.progress

    @property
    def step(self) -> str:
        return "DONE" if self.done else self.src.step.name

    def pump(self, want_data: bool = True) -> None:
        """Let cfdp-py run its timers and, when `want_data` and no file data waits here, make the
        next file data PDU."""
        if self.done:
            return
        if self.src.step == SourceStep.SENDING_FILE_DATA and (not want_data or self.bulk):
            return
        self._step(None)
        if (self.src.step == SourceStep.WAITING_FOR_FINISHED and self.eof is not None
                and self.now() - self.last_heard > self.timers.prompt_s):
            # no word from the flight while waiting for Finished: EOF again (the flight answers
            # a repeated EOF with an ACK, and with Finished again once it has the file)
            self.last_heard = self.now()
            self.counts["prompts"] += 1
            self.directives.append(self.eof)

    def _nak_within_file(self, nak):
        """The NAK with its segment requests cut to the file (None: nothing left to send). cfdp-py
        makes a File Data PDU for every segment of a requested range even past the end of the
        file: a NAK of (0, 2**63) (a hostile File Data PDU makes the flight send one) would
        queue about 2**54 PDUs here and never return."""
        reqs = []
        for start, end in nak.segment_requests:
            if (start, end) == (0, 0):  # the Metadata PDU
                reqs.append((0, 0))
            elif start < min(end, self.size):
                reqs.append((start, min(end, self.size)))
        if reqs == list(nak.segment_requests):
            return nak
        self.counts["naks_out_of_range"] += 1
        if not reqs:
            return None
        return NakPdu(nak.pdu_header.pdu_conf, min(nak.start_of_scope, self.size), min(nak.end_of_scope, self.size), reqs)

    def _effective_step(self) -> SourceStep:
        """cfdp-py's step, looking through RETRANSMITTING to the step it returns to."""
        step = self.src.step
        if step == SourceStep.RETRANSMITTING:
            return self.src._params.ack_params.step_before_retransmission or step
        return step

    def on_packet(self, packet: bytes) -> None:
        try:
            pdu = parse_pdu(unwrap(packet, Apid.FILE_REPLY))
            if pdu.direction != Direction.TOWARDS_SENDER or pdu.source_entity_id.value != GROUND_ENTITY.value:
                raise FileTransferError("not addressed to the ground's sending entity")
        except (FileTransferError, ValueError):
            self.counts["pdus_rejected"] += 1
            return
        if int(pdu.transaction_seq_num.value) != self.seq:
            return  # another transaction's (an earlier commander's)
        self.counts["pdus_in"] += 1
        self.last_heard = self.now()
        directive = pdu.directive_type if pdu.pdu_type == PduType.FILE_DIRECTIVE else None
        if self.done:
            if directive == DirectiveType.FINISHED_PDU and self.finished_ack is not None:
                self.directives.append(self.finished_ack)  # our ACK was lost: the flight asks again
            return
        if directive == DirectiveType.NAK_PDU:
            self.counts["naks_in"] += 1
            pdu = self._nak_within_file(pdu)
            if pdu is None:
                return
        if (directive == DirectiveType.FINISHED_PDU and pdu.condition_code != ConditionCode.NO_ERROR
                and self._effective_step() in (SourceStep.SENDING_METADATA, SourceStep.SENDING_FILE_DATA)):
            # the flight gave up early (e.g. a file over its limit): cfdp-py would ignore this until
            # its EOF; stop now, and acknowledge
            self.result = pdu.finished_params
            self.finished_ack = bytes(_ack(self.src.pdu_conf, DirectiveType.FINISHED_PDU, pdu.condition_code,
                                           TransactionStatus.TERMINATED, Direction.TOWARDS_RECEIVER).pack())
            self.directives.append(self.finished_ack)
            self.bulk.clear()
            self.src.reset()
            return
        if directive == DirectiveType.FINISHED_PDU and self._effective_step() == SourceStep.WAITING_FOR_EOF_ACK:
            # the flight finished, so it had our EOF: its ACK was lost. Take it as acknowledged.
            self._step(_ack(self.src.pdu_conf, DirectiveType.EOF_PDU, ConditionCode.NO_ERROR,
                            TransactionStatus.ACTIVE, Direction.TOWARDS_SENDER))
        if directive == DirectiveType.ACK_PDU and self._effective_step() != SourceStep.WAITING_FOR_EOF_ACK:
            return  # a repeated ACK of our EOF
        self._step(pdu)

    def _step(self, pdu) -> None:
        try:
            self.src.state_machine(pdu)
        except Exception as exc:  # noqa: BLE001 (cfdp-py raises on late and unexpected PDUs)
            self.counts["protocol_errors"] += 1
            if self.src.state == CfdpState.IDLE and self.result is None and not self.user.finished:
                self.failure = f"{type(exc).__name__}: {exc}"
        self._drain()

    def _drain(self) -> None:
        while self.src.packets_ready:
            holder = self.src.get_next_packet()
            if holder is None or holder.pdu is None:
                continue
            raw = bytes(holder.pdu.pack())
            if holder.pdu_type == PduType.FILE_DATA:
                self.fd_made += 1
                if self.src.step == SourceStep.RETRANSMITTING:  # asked for again by a NAK
                    self.counts["resent_bytes"] += len(holder.pdu.file_data)
                self.bulk.append(raw)
                if self.metadata is not None and self.metadata_repeats and self.fd_made == 3:
                    self.metadata_repeats -= 1
                    self.bulk.append(self.metadata)
                continue
            d = holder.pdu_directive_type
            if d == DirectiveType.METADATA_PDU:
                self.metadata = raw
            elif d == DirectiveType.EOF_PDU:
                self.eof = raw
            elif d == DirectiveType.ACK_PDU:
                self.finished_ack = raw
            self.directives.append(raw)
        while self.user.finished:
            p = self.user.finished.pop(0)
            self.result = p.finished_params
        for what, cond in self.faults.seen:
            if what in ("cancelled", "abandoned") and self.failure is None and self.result is None:
                self.failure = f"{what}: {cond}"
        self.faults.seen.clear()

    def next_packet(self) -> tuple[bytes, bool] | None:
        """The next PDU to send and whether it is file data (bulk); None when nothing waits."""
        if self.directives:
            self.counts["pdus_out"] += 1
            return self.directives.popleft(), False
        if self.bulk:
            self.counts["pdus_out"] += 1
            self.counts["file_data_out"] += 1
            return self.bulk.popleft(), True
        return None

    def next_size(self) -> int:
        """Bytes of the PDU `next_packet` would give (0: nothing waits)."""
        return len(self.directives[0]) if self.directives else len(self.bulk[0]) if self.bulk else 0

    def describe(self) -> str:
        r = self.result
        if r is not None:
            return (f"finished: {ConditionCode(r.condition_code).name}, {DeliveryCode(r.delivery_code).name}, "
                    f"{FileStatus(r.file_status).name}")
        return self.failure or self.step


def _ground_state(path: Path, change: Callable[[dict], object]):
    """Read, change and write the ground entity's state file under an exclusive lock."""
    import fcntl

    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        try:
            state = json.loads(f.read() or "{}")
            state = state if isinstance(state, dict) else {}
        except ValueError:
            state = {}
        result = change(state)
        f.seek(0)
        f.truncate()
        f.write(json.dumps(state))
        f.flush()
    return result


SEQ_EPOCH_UNIX_S = 1_577_836_800  # 2020-01-01T00:00:00Z


def transaction_for(path: Path, sha256_hex: str) -> tuple[int, bool]:
    """The CFDP transaction sequence number for sending the file with this SHA-256, and whether it
    resumes an unfinished one (a commander stopped mid-transfer). Kept in `path` (JSON) under a
    lock: two commanders never reuse a number, and the flight tells a newer transaction from a late
    PDU of an older one because numbers only grow."""
    def change(state: dict):
        open_ = state.setdefault("open", {})
        if sha256_hex in open_:
            return int(open_[sha256_hex]), True
        # never below the seconds since SEQ_EPOCH: a new ground run (a fresh cfdp.json) numbers above
        # every earlier run's transactions, so the flight does not take its PDUs for late ones of
        # an unfinished older transaction (dropped until ops.file_inactivity_s); 32 bits until 2156
        n = max(int(state.get("next_seq", 1)), int(time.time()) - SEQ_EPOCH_UNIX_S)
        state["next_seq"] = n + 1
        open_[sha256_hex] = n & 0xFFFFFFFF
        return n & 0xFFFFFFFF, False

    return _ground_state(path, change)


def transaction_over(path: Path, sha256_hex: str) -> None:
    """The transaction for this file ended (delivered or failed): a new send starts afresh."""
    _ground_state(path, lambda state: state.setdefault("open", {}).pop(sha256_hex, None))
