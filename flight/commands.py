"""Telecommands: encoding (ground), decoding and authentication (flight).

A command is a PUS TC packet on Apid.COMMAND (service 8, subtype 1) whose application data is

    counter u64 | issued_s u32 | opcode u16 | arguments | [tail] | HMAC-SHA256 (32 bytes)

The MAC is HMAC-SHA256 with the mission key over every byte of the packet before the MAC: the
primary header (APID, sequence count, length), the PUS secondary header (service, subtype, ack
flags, source id) and the body. The CRC-16 after the MAC only catches bit errors; the MAC catches
forgery and alteration. The flight accepts a command only if

1. the packet decodes (CRC) and is a command packet,
2. the MAC is right (constant-time compare),
3. its counter is above the last accepted one and at most `counter_window` ahead (replays and
   wild counters are refused; a lost command is re-sent with a new counter),
4. its issue time is within `command_time_window_s` of the flight's mission time,
5. its opcode is in the dictionary and its arguments fit their layout and ranges.

Steps 2-4 are authentication: refused commands are counted and reported, never executed, and do
not move the counter. A command that passes 2-4 moves the counter even when its arguments are
bad (it is authentic; executing it again would be a replay).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import struct
from dataclasses import dataclass, field

from spacepackets.ecss.tc import PusTc

from flight.dictionary import (
    COMMAND_SERVICE,
    COMMAND_SUBTYPE,
    COMMANDS,
    COMMANDS_BY_OPCODE,
    MODEL_NAME,
    MODEL_NAME_PATTERN,
    PARAMS,
    AckFlag,
    Apid,
    CommandDef,
    Reason,
)

HEADER = struct.Struct(">QIH")  # counter, issued_s, opcode
MAC_BYTES = 32
CRC_BYTES = 2
MAX_PACKET_BYTES = 2048
_NAME_RE = re.compile(MODEL_NAME_PATTERN)
DEFAULT_ACKS = AckFlag.ACCEPTANCE | AckFlag.COMPLETION


class CommandError(ValueError):
    """A command refused: the reason code (dictionary.Reason), a text, and what is known of it."""

    def __init__(self, code: Reason, reason: str, counter: int = 0, opcode: int = 0):
        super().__init__(f"{code.name}: {reason}")
        self.code, self.reason, self.counter, self.opcode = code, reason, counter, opcode

    @property
    def is_auth(self) -> bool:
        return self.code in (Reason.BAD_MAC, Reason.REPLAY, Reason.COUNTER_WINDOW, Reason.TIME_WINDOW, Reason.NO_KEY)


@dataclass(frozen=True)
class Command:
    counter: int
    issued_s: int
    opcode: int
    name: str
    args: dict = field(default_factory=dict)
    ack_flags: int = DEFAULT_ACKS

    def wants(self, flag: AckFlag) -> bool:
        return bool(self.ack_flags & flag)


# --- arguments ----------------------------------------------------------------------------------------


def _pack_args(cdef: CommandDef, args: dict) -> bytes:
    names = [a.name for a in cdef.args] + ([cdef.tail] if cdef.tail else [])
    unknown = set(args) - set(names)
    missing = set(names) - set(args)
    if unknown or missing:
        raise CommandError(Reason.BAD_ARGUMENT, f"{cdef.name} takes {names}; unknown {sorted(unknown)}, missing {sorted(missing)}")
    values = []
    for a in cdef.args:
        v = args[a.name]
        if a.code.endswith("s"):
            # struct pads or cuts an Ns field silently, and bytes(32) is 32 zero bytes: a 17-character
            # model name, a hex digest given as text or an int would go up as another value
            if not isinstance(v, str | bytes | bytearray):
                raise CommandError(Reason.BAD_ARGUMENT, f"{a.name} must be bytes, not {type(v).__name__}")
            v = v.encode() if isinstance(v, str) else bytes(v)
            n = int(a.code[:-1])
            if len(v) > n or (a is not MODEL_NAME and len(v) != n):
                raise CommandError(Reason.BAD_ARGUMENT, f"{a.name} is {len(v)} bytes, "
                                   + (f"at most {n}" if a is MODEL_NAME else f"must be {n}"))
        elif isinstance(v, bool):  # struct takes True as 1
            raise CommandError(Reason.BAD_ARGUMENT, f"{a.name} must be a number, not {v}")
        values.append(v)
    body = struct.pack(cdef.layout, *values)
    if cdef.tail:
        raw = args[cdef.tail]
        if not isinstance(raw, bytes | bytearray):  # bytes(n) of an int n is n zero bytes (or MemoryError)
            raise CommandError(Reason.BAD_ARGUMENT, f"{cdef.tail} must be bytes, not {type(raw).__name__}")
        tail = bytes(raw)
        if len(tail) > cdef.tail_max:
            raise CommandError(Reason.BAD_ARGUMENT, f"{cdef.tail} is {len(tail)} bytes, at most {cdef.tail_max}")
        body += tail
    return body


def _check_arg(cdef: CommandDef, a, v):
    if a.code == "16s":  # a model name, NUL-padded
        try:
            text = v.rstrip(b"\0").decode("ascii")
        except UnicodeDecodeError:
            raise CommandError(Reason.BAD_ARGUMENT, f"{a.name} is not ASCII") from None
        if not _NAME_RE.fullmatch(text):  # match() would take a trailing newline
            raise CommandError(Reason.BAD_ARGUMENT, f"{a.name} {text!r} is not a model name")
        return text
    if a.code.endswith("s"):
        return bytes(v)
    if a.code == "d" and not math.isfinite(v):
        raise CommandError(Reason.BAD_ARGUMENT, f"{a.name} = {v} is not finite")
    if (a.lo is not None and v < a.lo) or (a.hi is not None and v > a.hi):
        raise CommandError(Reason.BAD_ARGUMENT, f"{a.name} = {v} outside [{a.lo}, {a.hi}]")
    return v


def _unpack_args(cdef: CommandDef, body: bytes) -> dict:
    size = struct.calcsize(cdef.layout)
    if len(body) < size or (cdef.tail is None and len(body) != size):
        raise CommandError(Reason.BAD_ARGUMENT, f"{cdef.name} arguments are {len(body)} bytes, layout needs {size}")
    values = struct.unpack_from(cdef.layout, body)
    args = {a.name: _check_arg(cdef, a, v) for a, v in zip(cdef.args, values, strict=True)}
    if cdef.tail:
        tail = bytes(body[size:])
        if not 0 < len(tail) <= cdef.tail_max:
            raise CommandError(Reason.BAD_ARGUMENT, f"{cdef.tail} is {len(tail)} bytes, need 1..{cdef.tail_max}")
        args[cdef.tail] = tail
    if cdef.name == "SET_PARAM":  # the value's range depends on the parameter
        p = PARAMS.get(args["param"])
        if p is None:
            raise CommandError(Reason.BAD_ARGUMENT, f"unknown parameter id {args['param']}; known {sorted(PARAMS)}")
        v = args["value"]
        if not p.lo <= v <= p.hi or (p.type is int and v != int(v)):
            raise CommandError(Reason.BAD_ARGUMENT, f"{p.name} = {v} outside [{p.lo}, {p.hi}]" + (" or not whole" if p.type is int else ""))
    return args


# --- packets -----------------------------------------------------------------------------------------


def encode_command(key: bytes, counter: int, issued_s: int, name: str, args: dict | None = None,
                   ack_flags: int = DEFAULT_ACKS) -> bytes:
    """A signed command packet (the ground's side). Arguments are checked as the flight will."""
    cdef = COMMANDS.get(name)
    if cdef is None:
        raise CommandError(Reason.UNKNOWN_OPCODE, f"unknown command {name!r}")
    # 4 bits in the PUS secondary header: a wider value spills into the PUS version field (a packet
    # the flight refuses) or makes spacepackets raise a plain ValueError
    if isinstance(ack_flags, bool) or not isinstance(ack_flags, int) or not 0 <= ack_flags <= 0xF:
        raise CommandError(Reason.BAD_ARGUMENT, f"ack_flags = {ack_flags!r}: must be an int in 0..15")
    try:
        body = HEADER.pack(counter, issued_s, cdef.opcode) + _pack_args(cdef, args or {})
    except CommandError:
        raise
    except (struct.error, TypeError, ValueError) as exc:
        raise CommandError(Reason.BAD_ARGUMENT, f"{name}: {exc}") from None
    _unpack_args(cdef, body[HEADER.size:])  # refuse on the ground what the flight would refuse
    def tc(app_data: bytes) -> bytes:
        return PusTc(service=COMMAND_SERVICE, message_subtype=COMMAND_SUBTYPE, apid=Apid.COMMAND, app_data=app_data,
                     seq_count=counter & 0x3FFF, ack_flags=ack_flags).pack()

    # the MAC's own length is in the header it covers: sign a packet with a zero MAC, then fill it in
    signed = tc(body + bytes(MAC_BYTES))[: -MAC_BYTES - CRC_BYTES]
    return tc(body + hmac.new(key, signed, hashlib.sha256).digest())


@dataclass(frozen=True)
class SignedCommand:
    """A command packet parsed but not yet authenticated."""

    counter: int
    issued_s: int
    opcode: int
    ack_flags: int
    body: bytes  # the arguments
    signed: bytes  # the bytes the MAC covers
    mac: bytes


def parse_command(packet: bytes) -> SignedCommand:
    """Decode the packet's structure (CRC, APID, service, sizes). Nothing here is trusted yet."""
    if len(packet) > MAX_PACKET_BYTES:
        raise CommandError(Reason.BAD_PACKET, f"{len(packet)} bytes, at most {MAX_PACKET_BYTES}")
    try:
        tc = PusTc.unpack(packet)
    except Exception as exc:  # spacepackets raises several types (CRC, length, version)
        raise CommandError(Reason.BAD_PACKET, f"{type(exc).__name__}: {exc}") from None
    if tc.apid != Apid.COMMAND or tc.service != COMMAND_SERVICE or tc.message_subtype != COMMAND_SUBTYPE:
        raise CommandError(Reason.BAD_PACKET, f"apid {tc.apid:#x} service {tc.service}/{tc.message_subtype} is not a command")
    data = bytes(tc.app_data)
    if len(data) < HEADER.size + MAC_BYTES:
        raise CommandError(Reason.BAD_PACKET, f"application data is {len(data)} bytes, at least {HEADER.size + MAC_BYTES}")
    counter, issued_s, opcode = HEADER.unpack_from(data)
    total = tc.packet_len
    signed_len = total - MAC_BYTES - CRC_BYTES
    raw = bytes(packet[:total])
    return SignedCommand(counter, issued_s, opcode, tc.pus_tc_sec_header.ack_flags, data[HEADER.size : -MAC_BYTES],
                         raw[:signed_len], raw[signed_len : signed_len + MAC_BYTES])


class CommandAuth:
    """Authenticates commands and keeps the last accepted counter (persisted by the caller)."""

    def __init__(self, key: bytes, last_counter: int, counter_window: int, time_window_s: float):
        self.key, self.last_counter = key, last_counter
        self.counter_window, self.time_window_s = counter_window, time_window_s

    def check(self, sc: SignedCommand, now_s: float) -> None:
        """Raise CommandError (BAD_MAC, REPLAY, COUNTER_WINDOW, TIME_WINDOW) unless authentic and fresh."""
        want = hmac.new(self.key, sc.signed, hashlib.sha256).digest()
        if not hmac.compare_digest(want, sc.mac):
            raise CommandError(Reason.BAD_MAC, "MAC does not match (forged or altered)", sc.counter, sc.opcode)
        if sc.counter <= self.last_counter:
            raise CommandError(Reason.REPLAY, f"counter {sc.counter} <= last accepted {self.last_counter}", sc.counter, sc.opcode)
        if sc.counter > self.last_counter + self.counter_window:
            raise CommandError(Reason.COUNTER_WINDOW, f"counter {sc.counter} > last accepted {self.last_counter} + window "
                               f"{self.counter_window}", sc.counter, sc.opcode)
        if self.time_window_s and abs(now_s - sc.issued_s) > self.time_window_s:
            raise CommandError(Reason.TIME_WINDOW, f"issued at {sc.issued_s} s, now {now_s:.0f} s: outside "
                               f"{self.time_window_s:.0f} s", sc.counter, sc.opcode)

    def accept(self, sc: SignedCommand) -> Command:
        """Move the counter (the caller persists it before executing), then decode the arguments."""
        self.last_counter = sc.counter
        cdef = COMMANDS_BY_OPCODE.get(sc.opcode)
        if cdef is None:
            raise CommandError(Reason.UNKNOWN_OPCODE, f"opcode {sc.opcode} is not in the dictionary", sc.counter, sc.opcode)
        try:
            args = _unpack_args(cdef, sc.body)
        except CommandError as exc:
            raise CommandError(exc.code, exc.reason, sc.counter, sc.opcode) from None
        return Command(sc.counter, sc.issued_s, sc.opcode, cdef.name, args, sc.ack_flags)


def decode_command(packet: bytes, auth: CommandAuth, now_s: float) -> Command:
    """parse + check + accept: the whole flight-side path, for tests and tools."""
    sc = parse_command(packet)
    auth.check(sc, now_s)
    return auth.accept(sc)


def command_name(opcode: int) -> str:
    c = COMMANDS_BY_OPCODE.get(opcode)
    return c.name if c else f"opcode{opcode}"
