"""Export the mission dictionary as XTCE (CCSDS 660.1 / OMG XTCE 1.2): telemetry and telecommands.

    python -m ground_link.xtce > mission.xtce.xml
    python -m ground_link.xtce --output mission.xtce.xml

Everything comes from `flight.dictionary` and the products' `LAYOUT` strings in
`flight.products`, never from a copy, so a field, channel, event or command added there is in the
next export (tests/test_xtce.py compares the two both ways).

Telemetry. Every TM product packet becomes a SequenceContainer: the CCSDS primary header, the
PUS-C TM secondary header (CDS short time code as day + millisecond of day), the product's fixed
fields in `LAYOUT` order with units taken from the name (`capture_time_s` -> s, `rss_mib` -> MiB,
`stage_calibrate_ms_last` -> ms), the variable tail (if any) as binary sized from the packet
length, and the CRC-16. Containers are chosen by a restriction on the APID, so another ground
system (Yamcs, space_packet_parser, ...) decodes our packets from this file alone. Parameter names
are `<APID name>__<field>` (`DETECTION__lat_deg`), because XTCE names may not contain dots. Coded
fields are enumerations: detection class, event id and severity, verification report kind and
reason.

Housekeeping. A report is `count` x (channel id u16, value f32) in channel id order. A report
holding every dictionary channel (count = number of channels) decodes as `HousekeepingReport`:
one named parameter per channel, `HOUSEKEEPING__<channel>` with its unit and alarm ranges (the
dictionary's `warn` / `alarm` limits; `mode` is an enumeration with DEGRADED a warning and SAFE
critical), each after its id (`HOUSEKEEPING__<channel>__id`, an enumeration of channel names, so a
decoder shows which channel it read). A report with any other count decodes as
`HousekeepingValues`, the pairs as one binary field (XTCE can say "these pairs, keyed" only with
IncludeCondition/RepeatEntry, which space_packet_parser does not implement).

Telecommands. An abstract MetaCommand `PayloadCommand` holds the PUS-C TC headers on APID 0x182
(service 8/1), the authentication counter, issue time and opcode; each dictionary command is a
MetaCommand based on it (opcode assigned) with its arguments, typed and ranged from the dictionary
(`SET_PARAM.param` and `SET_MODE.mode` are enumerations of the parameter and mode names, model
names strings of 16 NUL-padded ASCII bytes), followed by the HMAC-SHA256 and the CRC-16, both
computed by the sender (see flight.commands). Product acknowledgements (APID 0x181) are sent by
the station itself, not by operators, and are not exported.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from enum import IntEnum
from pathlib import Path

from flight.dictionary import (
    COMMAND_SERVICE,
    COMMAND_SUBTYPE,
    COMMANDS,
    EVENTS,
    PARAMS,
    TELEMETRY,
    TIMESTAMP_LEN,
    Apid,
    Channel,
    CommandDef,
    DetectionClass,
    Mode,
    Reason,
    ReportKind,
    Severity,
)
from flight.products import PRODUCT_TYPES, Housekeeping, _Product

NS = "http://www.omg.org/spec/XTCE/20180204"
XSD = "https://www.omg.org/spec/XTCE/20180204/SpaceSystem.xsd"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
SPACE_SYSTEM = "onboard-payload"
PRIMARY_HEADER = (  # (name, bits, description): CCSDS 133.0-B-2
    ("VERSION", 3, "CCSDS packet version number (0)"),
    ("TYPE", 1, "packet type: 0 telemetry, 1 telecommand"),
    ("SEC_HDR_FLG", 1, "secondary header flag"),
    ("PKT_APID", 11, "application process identifier"),
    ("SEQ_FLGS", 2, "sequence flags (3: unsegmented)"),
    ("SRC_SEQ_CTR", 14, "source sequence count, per APID"),
    ("PKT_LEN", 16, "packet data length minus one, bytes"),
)
SECONDARY_HEADER = (  # ECSS-E-ST-70-41C (PUS-C) TM secondary header with a CDS short time code
# (P-field + T-field, TIMESTAMP_LEN bytes)
    ("PUS_VERSION", 4, "PUS version (2: PUS-C)", None),
    ("SC_TIME_REF", 4, "spacecraft time reference status", None),
    ("SERVICE", 8, "PUS service type", None),
    ("SUBTYPE", 8, "PUS message subtype", None),
    ("MSG_COUNTER", 16, "message type counter", None),
    ("DEST_ID", 16, "destination id", None),
    ("CDS_PFIELD", 8, "CDS time code preamble (P-field, 0x40: CDS, 16-bit days, ms)", None),
    ("CDS_DAYS", 16, "CDS short time code: days since 1958-01-01", "day"),
    ("CDS_MS_OF_DAY", 32, "CDS short time code: milliseconds of day", "ms"),
)
PRIMARY_BYTES = 6
SECONDARY_BYTES = 7 + TIMESTAMP_LEN
CRC_BYTES = 2
STRUCT_TYPES = {"B": ("u", 8), "H": ("u", 16), "I": ("u", 32), "Q": ("u", 64), "b": ("s", 8), "h": ("s", 16),
                "i": ("s", 32), "q": ("s", 64), "f": ("f", 32), "d": ("f", 64)}
UNITS = {"s": "s", "ms": "ms", "deg": "deg", "px": "px", "m": "m", "km": "km", "mib": "MiB", "bps": "bit/s",
         "percent": "%", "bytes": "byte"}
UNIT_QUALIFIERS = {"last"}  # `stage_tile_ms_last`: the unit is the word before

# coded product fields, by (APID, field): raw value -> label
REQUESTED_CHIP_CLASS, QUICKLOOK_CLASS = 0, 255  # ImageChip.class_id besides the detection classes (flight.app)


def _labels(enum: type[IntEnum]) -> dict[int, str]:
    return {int(m): m.name for m in enum}


FIELD_ENUMS: dict[tuple[int, str], dict[int, str]] = {
    (Apid.DETECTION, "class_id"): _labels(DetectionClass),
    (Apid.IMAGE_CHIP, "class_id"): {REQUESTED_CHIP_CLASS: "REQUESTED_CHIP", **_labels(DetectionClass),
                                    QUICKLOOK_CLASS: "QUICKLOOK"},
    (Apid.EVENT, "event_id"): {e.id: e.name for e in EVENTS.values()},
    (Apid.EVENT, "severity"): _labels(Severity),
    (Apid.COMMAND_REPORT, "report"): _labels(ReportKind),
    (Apid.COMMAND_REPORT, "code"): _labels(Reason),
}
LABEL_NOTES = {e.name: f"{e.severity.name}: {e.fmt}" for e in EVENTS.values()}  # what an event id label says
CHANNEL_ENUMS: dict[str, dict[int, str]] = {"mode": _labels(Mode)}  # housekeeping channels that carry a code
ARG_ENUMS: dict[tuple[str, str], dict[int, str]] = {  # (command, argument): value -> label
    ("SET_PARAM", "param"): {p.id: p.name for p in PARAMS.values()},
    ("SET_MODE", "mode"): _labels(Mode),
}

# telecommands (flight.commands): PUS-C TC secondary header, then counter u64 | issued_s u32 | opcode u16
TC_BASE = "PayloadCommand"
TC_SECONDARY_BYTES = 5
TC_HEADER_BYTES = 14
MAC_BYTES = 32
DEFAULT_ACK_FLAGS = 0b1001  # flight.commands.DEFAULT_ACKS: acceptance and completion reports
MODEL_NAME_PATTERN = "[a-z][a-z0-9_]{0,15}"  # flight.commands._NAME_RE
MODEL_NAME_BYTES = 16  # dictionary.MODEL_NAME: NUL-padded


def parameter_name(cls: type[_Product], field: str) -> str:
    return f"{Apid(cls.APID).name}__{field}"


def channel_parameter(channel: Channel) -> str:
    return f"{Apid.HOUSEKEEPING.name}__{channel.name}"


def unit_of(field: str) -> str | None:
    """Units live in names: the last `_word` when it is a unit (or the one before `_last`)."""
    words = field.split("_")[1:]  # the first word names the thing, never a unit
    while words and words[-1] in UNIT_QUALIFIERS:
        words.pop()
    return UNITS.get(words[-1]) if words else None


def fixed_fields(cls: type[_Product]) -> list[tuple[str, str]]:
    """(field name, struct code) of the fixed part, in packing order."""
    names = [f.name for f in dataclasses.fields(cls) if f.name != cls.TAIL]
    codes = [c for c in cls.LAYOUT.lstrip("<>!=@") if not c.isdigit()]
    if len(codes) != len(names) or cls.LAYOUT[0] not in ">!":
        raise ValueError(f"{cls.__name__}: LAYOUT {cls.LAYOUT!r} does not map one big-endian code per field")
    return list(zip(names, codes, strict=True))


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class _Doc:
    def __init__(self):
        ET.register_namespace("xtce", NS)
        ET.register_namespace("xsi", XSI)
        self.root = ET.Element(self.q("SpaceSystem"), {f"{{{XSI}}}schemaLocation": f"{NS} {XSD}"}, name=SPACE_SYSTEM)
        # no date: the export of one dictionary is byte-for-byte the same every time
        ET.SubElement(self.root, self.q("Header"), version="1", validationStatus="Working")
        tm = ET.SubElement(self.root, self.q("TelemetryMetaData"))
        self.types = ET.SubElement(tm, self.q("ParameterTypeSet"))
        self.params = ET.SubElement(tm, self.q("ParameterSet"))
        self.containers = ET.SubElement(tm, self.q("ContainerSet"))
        tc = ET.SubElement(self.root, self.q("CommandMetaData"))
        self.arg_types = ET.SubElement(tc, self.q("ArgumentTypeSet"))
        self.commands = ET.SubElement(tc, self.q("MetaCommandSet"))

    @staticmethod
    def q(tag: str) -> str:
        return f"{{{NS}}}{tag}"

    def sub(self, parent: ET.Element, tag: str, **attrs) -> ET.Element:
        return ET.SubElement(parent, self.q(tag), {k: v for k, v in attrs.items() if v is not None})

    def _units(self, parent: ET.Element, unit: str | None) -> None:
        units = self.sub(parent, "UnitSet")
        if unit:
            self.sub(units, "Unit").text = unit

    def _encoding(self, parent: ET.Element, kind: str, bits: int) -> None:
        if kind == "f":
            self.sub(parent, "FloatDataEncoding", sizeInBits=str(bits), encoding="IEEE754_1985")
        else:
            self.sub(parent, "IntegerDataEncoding", sizeInBits=str(bits),
                     encoding="twosComplement" if kind == "s" else "unsigned")

    def _ranges(self, parent: ET.Element, warn, alarm) -> None:
        """Static alarm ranges (rangeForm outside: a value outside the range is in that alarm)."""
        if warn is None and alarm is None:
            return
        ranges = self.sub(self.sub(parent, "DefaultAlarm"), "StaticAlarmRanges")
        for tag, lim in (("WarningRange", warn), ("CriticalRange", alarm)):
            if lim is not None:
                lo, hi = lim
                self.sub(ranges, tag, minInclusive=None if lo is None else _num(lo),
                         maxInclusive=None if hi is None else _num(hi))

    # -- telemetry ---------------------------------------------------------------------------------

    def number(self, name: str, kind: str, bits: int, unit: str | None, description: str,
               warn=None, alarm=None) -> str:
        type_name = f"{name}_Type"
        if kind == "f":
            t = self.sub(self.types, "FloatParameterType", name=type_name, sizeInBits=str(bits))
        else:
            t = self.sub(self.types, "IntegerParameterType", name=type_name, signed=str(kind == "s").lower(),
                         sizeInBits=str(bits))
        self._units(t, unit)
        self._encoding(t, kind, bits)
        self._ranges(t, warn, alarm)
        return self.parameter(name, type_name, description)

    def enumerated(self, name: str, kind: str, bits: int, labels: Mapping[int, str], description: str,
                   levels: Mapping[str, str] | None = None, type_name: str | None = None) -> str:
        """An enumerated parameter; `levels`: label -> alarm level. A shared `type_name` is made once."""
        type_name = type_name or f"{name}_Type"
        if self.types.find(f"{self.q('EnumeratedParameterType')}[@name='{type_name}']") is None:
            t = self.sub(self.types, "EnumeratedParameterType", name=type_name)
            self._units(t, None)
            self._encoding(t, kind, bits)
            self._enumeration_list(t, labels)
            if levels:
                alarms = self.sub(self.sub(t, "DefaultAlarm"), "EnumerationAlarmList")
                for label, level in levels.items():
                    self.sub(alarms, "EnumerationAlarm", alarmLevel=level, enumerationLabel=label)
        return self.parameter(name, type_name, description)

    def _enumeration_list(self, parent: ET.Element, labels: Mapping[int, str]) -> None:
        values = self.sub(parent, "EnumerationList")
        for value, label in sorted(labels.items()):
            note = LABEL_NOTES.get(label)
            self.sub(values, "Enumeration", value=str(value), label=label, shortDescription=note and note[:80])

    def binary_tail(self, name: str, fixed_bytes: int, description: str) -> str:
        """Binary field filling the packet up to the CRC: size = 8 * (PKT_LEN + 1 - everything else)."""
        type_name = f"{name}_Type"
        t = self.sub(self.types, "BinaryParameterType", name=type_name)
        self._units(t, None)
        enc = self.sub(t, "BinaryDataEncoding")
        dyn = self.sub(self.sub(enc, "SizeInBits"), "DynamicValue")
        self.sub(dyn, "ParameterInstanceRef", parameterRef="PKT_LEN", useCalibratedValue="false")
        other = SECONDARY_BYTES + fixed_bytes + CRC_BYTES
        self.sub(dyn, "LinearAdjustment", slope="8", intercept=str(8 * (1 - other)))
        return self.parameter(name, type_name, description)

    def parameter(self, name: str, type_name: str, description: str) -> str:
        if self.params.find(f"{self.q('Parameter')}[@name='{name}']") is None:
            par = self.sub(self.params, "Parameter", name=name, parameterTypeRef=type_name,
                           shortDescription=description[:80])
            if len(description) > 80:
                self.sub(par, "LongDescription").text = description
        return name

    def container(self, name: str, entries: list[str], description: str, abstract: bool = False,
                  base: str | None = None, restrictions: tuple[tuple[str, int, str], ...] = ()) -> None:
        c = self.sub(self.containers, "SequenceContainer", name=name, shortDescription=description[:80])
        if abstract:
            c.set("abstract", "true")
        entry_list = self.sub(c, "EntryList")
        for e in entries:
            self.sub(entry_list, "ParameterRefEntry", parameterRef=e)
        if base:
            b = self.sub(c, "BaseContainer", containerRef=base)
            if restrictions:
                crit = self.sub(self.sub(b, "RestrictionCriteria"), "ComparisonList")
                for ref, value, op in restrictions:
                    self.sub(crit, "Comparison", parameterRef=ref, value=str(value),
                             comparisonOperator=None if op == "==" else op, useCalibratedValue="false")

    # -- telecommands ------------------------------------------------------------------------------

    def arg_type(self, name: str, code: str, description: str, unit: str | None = None,
                 labels: Mapping[int, str] | None = None, lo: float | None = None, hi: float | None = None,
                 bits: int | None = None, initial: int | None = None) -> str:
        """An argument type from a struct code (B H I Q d: numbers, `bits` narrower than the code;
        Ns: N bytes) or `model` (a model name, 16 NUL-padded ASCII bytes); `labels`: an enumeration."""
        type_name = f"{name}_ArgType"
        short = description[:80]
        if code in STRUCT_TYPES:
            sign, size = STRUCT_TYPES[code]
            size = bits or size
            if labels:
                t = self.sub(self.arg_types, "EnumeratedArgumentType", name=type_name, shortDescription=short)
            elif sign == "f":
                t = self.sub(self.arg_types, "FloatArgumentType", name=type_name, sizeInBits=str(size),
                             shortDescription=short)
            else:
                t = self.sub(self.arg_types, "IntegerArgumentType", name=type_name, sizeInBits=str(size),
                             signed=str(sign == "s").lower(), initialValue=None if initial is None else str(initial),
                             shortDescription=short)
            self._units(t, unit)
            self._encoding(t, sign, size)
            if labels:
                self._enumeration_list(t, labels)
            elif lo is not None or hi is not None:
                fmt = _num if sign == "f" else (lambda v: str(int(v)))
                self.sub(self.sub(t, "ValidRangeSet"), "ValidRange", minInclusive=None if lo is None else fmt(lo),
                         maxInclusive=None if hi is None else fmt(hi))
        elif code == "model":
            t = self.sub(self.arg_types, "StringArgumentType", name=type_name, restrictionPattern=MODEL_NAME_PATTERN,
                         shortDescription=short)
            self._units(t, unit)
            enc = self.sub(t, "StringDataEncoding", encoding="US-ASCII")
            self.sub(self.sub(self.sub(enc, "SizeInBits"), "Fixed"), "FixedValue").text = str(8 * MODEL_NAME_BYTES)
            self.sub(t, "SizeRangeInCharacters", minInclusive="1", maxInclusive=str(MODEL_NAME_BYTES))
        else:  # Ns: N bytes
            t = self.sub(self.arg_types, "BinaryArgumentType", name=type_name, shortDescription=short)
            self._units(t, unit)
            size_bits = self.sub(self.sub(t, "BinaryDataEncoding"), "SizeInBits")
            self.sub(size_bits, "FixedValue").text = str(8 * struct.calcsize(code))
        return type_name

    def tail_type(self, cdef: CommandDef) -> str:
        """The trailing bytes of a command, up to the MAC: size = 8 * (PKT_LEN + 1 - everything else)."""
        type_name = f"{cdef.name}__{cdef.tail}_ArgType"
        t = self.sub(self.arg_types, "BinaryArgumentType", name=type_name,
                     shortDescription=f"{cdef.tail}: 1..{cdef.tail_max} bytes, up to the MAC")
        self._units(t, None)
        dyn = self.sub(self.sub(self.sub(t, "BinaryDataEncoding"), "SizeInBits"), "DynamicValue")
        self.sub(dyn, "ArgumentInstanceRef", argumentRef="PKT_LEN", useCalibratedValue="false")
        other = TC_SECONDARY_BYTES + TC_HEADER_BYTES + struct.calcsize(cdef.layout) + MAC_BYTES + CRC_BYTES
        self.sub(dyn, "LinearAdjustment", slope="8", intercept=str(8 * (1 - other)))
        return type_name

    def meta_command(self, name: str, description: str, args: list[tuple[str, str, str]], entries: list,
                     abstract: bool = False, base: str | None = None, assign: dict[str, int | str] | None = None,
                     long_description: str | None = None) -> None:
        """args: (name, type, description); entries: argument names, or (name, hex value, bits) fixed values."""
        mc = self.sub(self.commands, "MetaCommand", name=name, shortDescription=description[:80],
                      abstract="true" if abstract else None)
        if long_description or len(description) > 80:
            self.sub(mc, "LongDescription").text = long_description or description
        if base:
            b = self.sub(mc, "BaseMetaCommand", metaCommandRef=base)
            if assign:
                al = self.sub(b, "ArgumentAssignmentList")
                for k, v in assign.items():
                    self.sub(al, "ArgumentAssignment", argumentName=k, argumentValue=str(v))
        if args:
            al = self.sub(mc, "ArgumentList")
            for arg_name, type_name, desc in args:
                self.sub(al, "Argument", name=arg_name, argumentTypeRef=type_name, shortDescription=desc[:80])
        cc = self.sub(mc, "CommandContainer", name=name)
        el = self.sub(cc, "EntryList")
        for e in entries:
            if isinstance(e, tuple):
                fixed_name, value, bits = e
                self.sub(el, "FixedValueEntry", name=fixed_name, binaryValue=f"{value:0{2 * -(-bits // 8)}x}",
                         sizeInBits=str(bits))
            else:
                self.sub(el, "ArgumentRefEntry", argumentRef=e)
        if base:
            self.sub(cc, "BaseContainer", containerRef=base)


def _levels(labels: Mapping[int, str], channel: Channel) -> dict[str, str]:
    """Alarm level of each label of an enumerated channel, from the channel's numeric limits."""
    out = {}
    for value, label in labels.items():
        for level, lim in (("critical", channel.alarm), ("warning", channel.warn)):
            if lim is not None and ((lim[0] is not None and value < lim[0]) or (lim[1] is not None and value > lim[1])):
                out[label] = level
                break
    return out


def _telemetry(doc: _Doc) -> None:
    header = [doc.number(n, "u", bits, None, d) for n, bits, d in PRIMARY_HEADER]
    doc.container("CCSDSPacket", header, "CCSDS space packet primary header", abstract=True)
    secondary = [doc.number(n, "u", bits, unit, d) for n, bits, d, unit in SECONDARY_HEADER]
    doc.container("PusTmPacket", secondary, "ECSS PUS-C telemetry packet with CDS short time", abstract=True,
                  base="CCSDSPacket", restrictions=(("TYPE", 0, "=="), ("SEC_HDR_FLG", 1, "==")))
    for apid, cls in sorted(PRODUCT_TYPES.items()):
        summary = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
        entries = []
        for field, code in fixed_fields(cls):
            kind, bits = STRUCT_TYPES[code]
            name, desc = parameter_name(cls, field), f"{cls.__name__}.{field}"
            labels = FIELD_ENUMS.get((int(apid), field))
            entries.append(doc.enumerated(name, kind, bits, labels, desc) if labels else
                           doc.number(name, kind, bits, unit_of(field), desc))
        crc = doc.number(parameter_name(cls, "crc16"), "u", 16, None, "CRC-16/CCITT-FALSE of the packet")
        if cls is Housekeeping:
            _housekeeping(doc, cls, entries, crc, f"APID {apid:#x}: {summary}")
            continue
        if cls.TAIL is not None:
            entries.append(doc.binary_tail(parameter_name(cls, cls.TAIL), struct.calcsize(cls.LAYOUT),
                                           f"{cls.__name__}.{cls.TAIL}: variable length, to the CRC"))
        doc.container(cls.__name__, [*entries, crc], f"APID {apid:#x}: {summary}", base="PusTmPacket",
                      restrictions=(("PKT_APID", int(apid), "=="),))


def _housekeeping(doc: _Doc, cls: type[_Product], entries: list[str], crc: str, description: str) -> None:
    """Housekeeping: the fixed fields, then the channels by name (a full report) or as binary."""
    fixed = dict(fixed_fields(cls))
    if cls.TAIL != "values" or "count" not in fixed:
        raise ValueError(f"{cls.__name__}: expected a `count` field and a `values` tail, LAYOUT {cls.LAYOUT!r}")
    count = parameter_name(cls, "count")
    doc.container(cls.__name__, entries, description, abstract=True, base="PusTmPacket",
                  restrictions=(("PKT_APID", int(cls.APID), "=="),))
    ids = {c.id: c.name for c in TELEMETRY}
    full: list[str] = []
    for c in sorted(TELEMETRY, key=lambda c: c.id):
        full.append(doc.enumerated(f"{channel_parameter(c)}__id", "u", 16, ids, f"channel id: {c.name} in a full report",
                                   type_name="HousekeepingChannel_Type"))
        labels = CHANNEL_ENUMS.get(c.name)
        if labels:
            full.append(doc.enumerated(channel_parameter(c), "f", 32, labels, c.description, levels=_levels(labels, c)))
        else:
            full.append(doc.number(channel_parameter(c), "f", 32, unit_of(c.name), c.description, c.warn, c.alarm))
    doc.container("HousekeepingReport", [*full, crc], f"every channel ({len(TELEMETRY)}), by name",
                  base=cls.__name__, restrictions=((count, len(TELEMETRY), "=="),))
    tail = doc.binary_tail(parameter_name(cls, cls.TAIL), struct.calcsize(cls.LAYOUT),
                           f"{cls.__name__}.{cls.TAIL}: count x (channel id u16, value f32)")
    doc.container("HousekeepingValues", [tail, crc], "some channels: (id u16, value f32) pairs as binary",
                  base=cls.__name__, restrictions=((count, len(TELEMETRY), "!="),))


def _telecommands(doc: _Doc) -> None:
    t = doc.arg_type
    header_args = [  # (name, type, description)
        ("SRC_SEQ_CTR", t("TC_SRC_SEQ_CTR", "H", "sequence count", bits=14), "sequence count (the counter's low 14 bits)"),
        ("PKT_LEN", t("TC_PKT_LEN", "H", "packet data length minus one"),
         "packet data length minus one, bytes (computed by the sender)"),
        ("ACK_FLAGS", t("TC_ACK_FLAGS", "B", "wanted success reports", bits=4, initial=DEFAULT_ACK_FLAGS),
         "wanted success reports: 0b1000 acceptance, 0b0001 completion (failures always)"),
        ("SOURCE_ID", t("TC_SOURCE_ID", "H", "source id", initial=0), "source id (0)"),
        ("COUNTER", t("TC_COUNTER", "Q", "authentication counter"),
         "authentication counter: above the last accepted one, within the counter window"),
        ("ISSUED_S", t("TC_ISSUED_S", "I", "issue time", unit="s"),
         "issue time, scenario seconds (within the flight's time window)"),
        ("OPCODE", t("TC_OPCODE", "H", "command opcode", labels={c.opcode: c.name for c in COMMANDS.values()}),
         "command opcode (assigned by each command)"),
    ]
    entries = [("VERSION", 0, 3), ("TYPE", 1, 1), ("SEC_HDR_FLG", 1, 1), ("PKT_APID", int(Apid.COMMAND), 11),
               ("SEQ_FLGS", 3, 2), "SRC_SEQ_CTR", "PKT_LEN", ("PUS_VERSION", 2, 4), "ACK_FLAGS",
               ("SERVICE", COMMAND_SERVICE, 8), ("SUBTYPE", COMMAND_SUBTYPE, 8), "SOURCE_ID", "COUNTER", "ISSUED_S",
               "OPCODE"]
    doc.meta_command(TC_BASE, f"authenticated PUS-C TC on APID {int(Apid.COMMAND):#x}, service "
                     f"{COMMAND_SERVICE}/{COMMAND_SUBTYPE}", header_args, entries, abstract=True,
                     long_description="CCSDS primary header | PUS-C TC secondary header (ack flags, service, subtype, "
                     "source id) | counter u64 | issued_s u32 | opcode u16 | arguments | HMAC-SHA256 (32 bytes, "
                     "over every byte before it) | CRC-16/CCITT-FALSE. See docs/operations.md.")
    mac = t("TC_MAC", f"{MAC_BYTES}s", "HMAC-SHA256 with the mission key over the packet before it")
    crc = t("TC_CRC16", "H", "CRC-16/CCITT-FALSE of the packet")
    for cdef in sorted(COMMANDS.values(), key=lambda c: c.opcode):
        args = []
        for a in cdef.args:
            desc = f"{cdef.name}.{a.name}"
            code = "model" if a.code == f"{MODEL_NAME_BYTES}s" else a.code
            args.append((a.name, t(f"{cdef.name}__{a.name}", code, desc, unit_of(a.name),
                                   ARG_ENUMS.get((cdef.name, a.name)), a.lo, a.hi), desc))
        if cdef.tail:
            args.append((cdef.tail, doc.tail_type(cdef), f"{cdef.name}.{cdef.tail}: 1..{cdef.tail_max} bytes"))
        args += [("MAC", mac, "HMAC-SHA256 (computed by the sender)"), ("CRC16", crc, "CRC-16 (computed by the sender)")]
        doc.meta_command(cdef.name, cdef.description, args, [a for a, _, _ in args], base=TC_BASE,
                         assign={"OPCODE": cdef.name})  # an enumerated argument: assigned by label


def export() -> bytes:
    """The XTCE document (UTF-8 bytes with an XML declaration)."""
    doc = _Doc()
    _telemetry(doc)
    _telecommands(doc)
    ET.indent(doc.root)
    return ET.tostring(doc.root, encoding="utf-8", xml_declaration=True) + b"\n"


def main(argv: list[str] | None = None) -> int:
    from ground_link.query import CliParser  # one-line errors, as every operator tool

    p = CliParser(prog="python -m ground_link.xtce", description=__doc__.split("\n\n")[0],
                                epilog="Telemetry containers, housekeeping channels by name with units and alarm "
                                       "ranges, and every telecommand as a MetaCommand; see the module docstring.")
    p.add_argument("-o", "--output", type=Path, help="write here instead of standard output")
    args = p.parse_args(argv)
    data = export()
    if args.output is None:
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        except BrokenPipeError:  # `| head`: not an error (stdout pointed away so exit is quiet)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    try:
        args.output.write_bytes(data)
    except OSError as exc:
        print(f"xtce: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"xtce: {args.output}: {len(data)} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
