"""The XTCE export of the dictionary: schema-valid (two validators, the XTCE 1.2 XSD that
space_packet_parser ships), decodes our real TM packets in another tool (space_packet_parser), lays
out every telecommand byte for byte as flight.commands encodes it (an encoder written here from the
XTCE alone), and holds exactly the dictionary: every command, argument range, channel, unit, alarm
range and enumeration, so nothing can be added to one and not the other."""

import binascii
import dataclasses
import hashlib
import hmac
import struct
import subprocess
import sys
import typing
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import space_packet_parser
import xmlschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree as lxml_etree
from space_packet_parser import XtcePacketDefinition, validate_xtce
from space_packet_parser.exceptions import UnrecognizedPacketTypeError

import ground_link.xtce as xtce
from flight.clock import parse_epoch
from flight.commands import encode_command
from flight.dictionary import (
    COMMANDS,
    EVENTS,
    PARAMS,
    TELEMETRY,
    Apid,
    Arg,
    Channel,
    CommandDef,
    DetectionClass,
    Mode,
    Severity,
)
from flight.products import (
    PRODUCT_TYPES,
    Detection,
    Event,
    FrameSummary,
    Housekeeping,
    ImageChip,
    cds_timestamp,
    encode_tm,
    housekeeping,
)
from ground_link.xtce import FIELD_ENUMS, NS, channel_parameter, export, parameter_name, unit_of

REPO = Path(__file__).resolve().parents[1]
EPOCH = parse_epoch("2026-11-28T06:00:00Z")
XSD_FILE = Path(space_packet_parser.__file__).parent / "xtce" / "schemas" / "SpaceSystem.xsd"  # XTCE 1.2
KEY = bytes(range(32))


@pytest.fixture(scope="module")
def xtce_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("xtce") / "mission.xtce.xml"
    out = subprocess.run([sys.executable, "-m", "ground_link.xtce"], cwd=REPO, capture_output=True, check=True)
    path.write_bytes(out.stdout)
    return path


@pytest.fixture(scope="module")
def definition(xtce_file):
    with open(xtce_file, "rb") as f:
        return XtcePacketDefinition.from_xtce(f)


def decode(definition, packet: bytes) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a length mismatch is a failure, not a warning
        return dict(definition.parse_bytes(packet))


def check_packet(definition, product, seq: int, time_s: float) -> None:
    packet = encode_tm(product, seq, EPOCH, time_s)
    got = decode(definition, packet)
    cls = type(product)
    # headers
    assert got["PKT_APID"] == cls.APID and got["SRC_SEQ_CTR"] == seq & 0x3FFF and got["PKT_LEN"] == len(packet) - 7
    assert (got["VERSION"], got["TYPE"], got["SEC_HDR_FLG"], got["SEQ_FLGS"], got["PUS_VERSION"]) == (0, 0, 1, 3, 2)
    assert got["SERVICE"] == cls.SERVICE
    stamp = cds_timestamp(EPOCH, time_s)
    assert (got["CDS_PFIELD"], got["CDS_DAYS"], got["CDS_MS_OF_DAY"]) == (
        stamp[0], int.from_bytes(stamp[1:3], "big"), int.from_bytes(stamp[3:7], "big"))
    assert got[parameter_name(cls, "crc16")] == int.from_bytes(packet[-2:], "big")
    # every field, as the flight packed it (float32 fields compared after their own rounding)
    expect = cls.unpack(product.pack())
    for f in dataclasses.fields(cls):
        value = got.get(parameter_name(cls, f.name))
        want = getattr(expect, f.name)
        if cls is Housekeeping and f.name == "values" and value is None:  # a full report: channels by name
            assert want == b"".join(struct.pack(">Hf", c.id, got[channel_parameter(c)].raw_value)
                                    for c in sorted(TELEMETRY, key=lambda c: c.id))
            continue
        labels = FIELD_ENUMS.get((cls.APID, f.name))
        if labels is not None:  # enumerated: the label, and the raw value as packed
            assert value == labels[want], f"{cls.__name__}.{f.name}: {value!r} is not the label of {want}"
            value = value.raw_value
        if isinstance(want, str):
            want = want.encode()
        assert value == want or (value != value and want != want), f"{cls.__name__}.{f.name}: {value!r} != {want!r}"


def sample(cls):
    """An instance with every field set: 1 for integers, 1.25 for floats, a short tail."""
    hints = typing.get_type_hints(cls)
    values = {int: 1, float: 1.25, str: "sample text", bytes: b"\x00\x01sample"}
    return cls(*(values[hints[f.name]] for f in dataclasses.fields(cls)))


def test_export_is_schema_valid_and_names_units(xtce_file, definition):
    # the XTCE 1.2 XSD bundled with space_packet_parser (no download), checked by lxml (through
    # space_packet_parser) and by xmlschema (a second, pure-Python implementation)
    result = validate_xtce(xtce_file, level="schema", raise_on_error=False, print_results=False,
                           allow_schema_download=False)
    assert result.valid, result
    assert XSD_FILE.exists()
    errors = [f"{e.path}: {e.reason}" for e in xmlschema.XMLSchema(str(XSD_FILE)).iter_errors(str(xtce_file))]
    assert not errors, errors[:5]
    # space_packet_parser's structure checks know telemetry only (a CommandContainer's BaseContainer
    # names another CommandContainer, which it does not look for): run them on the telemetry part,
    # and check the command part's references here
    tree = lxml_etree.parse(str(xtce_file))
    tree.getroot().remove(tree.getroot().find(f"{{{NS}}}CommandMetaData"))
    result = validate_xtce(tree, level="all", raise_on_error=False, print_results=False, allow_schema_download=False)
    assert result.valid, result
    cmds = XtceCommands(xtce_file)
    for name in cmds.commands:
        assert set(cmds.layout_args(name)) == set(cmds.arguments(name)), name  # every argument placed, once
        assert all(cmds.arguments(name)[a] in cmds.types for a in cmds.arguments(name)), name
    assert {c for c in definition.containers} >= {cls.__name__ for cls in PRODUCT_TYPES.values()}
    unit = lambda cls, f: definition.parameters[parameter_name(cls, f)].parameter_type.unit  # noqa: E731
    assert unit(Detection, "capture_time_s") == "s" and unit(Detection, "lat_deg") == "deg"
    assert unit(Detection, "area_px") == "px" and unit(FrameSummary, "processing_ms") == "ms"
    assert unit(Detection, "confidence_q") is None


def test_every_product_type_decodes_with_the_same_values(definition):
    products = [
        FrameSummary(5, 1, 12.5, 16, 2, 0.125, 0, 1, 2, 12.25, 40.4, 49.9),
        FrameSummary(6, 2, 13.0, 16, 16, 1.0, 1, 0, 0, 3.5, float("nan"), float("nan")),
        Detection(11, 3, 30.0, DetectionClass.FIRE, 240, 100.0, 200.0, 40.5, 49.8, 6),
        ImageChip(12, 3, 30.0, DetectionClass.FIRE, 100.0, 200.0, 32, 32, 3, b"\x89PNG\r\n\x1a\n" + bytes(range(200))),
        housekeeping(13, 40.0, {1: 3.0, 7: 12.0, 9: 1e6}),
        Event(14, 41.0, 2, 1, 3, "frame 3 81% cloud >= 70%: discarded"),
        Event(15, 42.0, 8, 1, -1, ""),  # empty tail
    ]
    # product types added to the dictionary later get a generic sample, so the export is always checked
    products += [sample(cls) for apid, cls in PRODUCT_TYPES.items() if apid not in {type(p).APID for p in products}]
    assert {type(p).APID for p in products} == set(PRODUCT_TYPES)
    for i, p in enumerate(products):
        check_packet(definition, p, seq=16380 + i, time_s=30.0 + i * 0.001)  # sequence count wraps at 14 bits


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pid=st.one_of(st.sampled_from([0, 2**32 - 1, 2**32, 2**63 - 1]), st.integers(0, 2**63 - 1)), fid=st.integers(0, 2**32 - 1), t=st.floats(0, 1e6),
       cls_id=st.sampled_from(list(DetectionClass)), conf=st.integers(0, 255),
       xy=st.tuples(*[st.floats(-1e4, 1e4, width=32)] * 4), area=st.integers(0, 65535),
       tail=st.binary(max_size=300))
def test_random_detections_and_chips_decode(definition, pid, fid, t, cls_id, conf, xy, area, tail):
    check_packet(definition, Detection(pid, fid, t, cls_id, conf, *xy, area), seq=pid, time_s=round(t, 3))
    check_packet(definition, ImageChip(pid, fid, t, cls_id, xy[0], xy[1], 32, 32, 3, tail), seq=fid, time_s=1.0)


def test_product_ids_are_exported_as_64_bit_unsigned(definition):
    """Product ids are (store epoch << 32) | n: another ground system must read all 64 bits."""
    for cls in PRODUCT_TYPES.values():
        t = definition.parameters[parameter_name(cls, "product_id")].parameter_type
        assert (t.encoding.size_in_bits, t.encoding.encoding) == (64, "unsigned"), cls.__name__
    got = decode(definition, encode_tm(Detection((7 << 32) | 5, 1, 1.0, 1, 9, 1.0, 2.0, 3.0, 4.0, 5), 0, EPOCH, 1.0))
    assert got[parameter_name(Detection, "product_id")] == (7 << 32) | 5


def test_an_unknown_apid_is_refused(definition):
    packet = bytearray(encode_tm(FrameSummary(5, 1, 1.0, 16, 2, 0.1, 0, 0, 0, 12.0, 40.0, 49.0), 0, EPOCH, 1.0))
    packet[1] = (Apid.HOUSEKEEPING + 0x10) & 0xFF  # an APID the dictionary does not have
    with pytest.raises(UnrecognizedPacketTypeError):
        decode(definition, bytes(packet))


# --- telecommands, read back from the XTCE alone ---------------------------------------------------


def q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


class XtceCommands:
    """The command part of an XTCE file read with ElementTree, and an encoder that lays a command
    out from it alone: fixed values, argument encodings, dynamic sizes, most significant bit first."""

    def __init__(self, path):
        meta = ET.parse(path).getroot().find(q("CommandMetaData"))
        self.types = {t.get("name"): t for t in meta.find(q("ArgumentTypeSet"))}
        self.commands = {m.get("name"): m for m in meta.find(q("MetaCommandSet")).findall(q("MetaCommand"))}
        self.by_container = {m.find(q("CommandContainer")).get("name"): n for n, m in self.commands.items()}

    def base(self, name: str) -> str | None:
        b = self.commands[name].find(q("BaseMetaCommand"))
        return None if b is None else b.get("metaCommandRef")

    def own_arguments(self, name: str) -> dict[str, str]:
        arg_list = self.commands[name].find(q("ArgumentList"))
        return {a.get("name"): a.get("argumentTypeRef") for a in (arg_list if arg_list is not None else [])}

    def arguments(self, name: str) -> dict[str, str]:
        """Argument name -> type name, the base command's included."""
        base = self.base(name)
        inherited = self.arguments(base) if base else {}
        own = self.own_arguments(name)
        assert not set(inherited) & set(own), f"{name} repeats {set(inherited) & set(own)}"
        return inherited | own

    def assigned(self, name: str) -> dict[str, str]:
        b = self.commands[name].find(q("BaseMetaCommand"))
        return {} if b is None else {a.get("argumentName"): a.get("argumentValue") for a in b.iter(q("ArgumentAssignment"))}

    def entries(self, name: str) -> list:
        cc = self.commands[name].find(q("CommandContainer"))
        base = cc.find(q("BaseContainer"))
        head = self.entries(self.by_container[base.get("containerRef")]) if base is not None else []
        return head + list(cc.find(q("EntryList")))

    def layout_args(self, name: str) -> list[str]:
        return [e.get("argumentRef") for e in self.entries(name) if e.tag == q("ArgumentRefEntry")]

    @staticmethod
    def kind(t) -> str:
        return t.tag.split("}")[1]

    @staticmethod
    def labels(t) -> dict[int, str]:
        return {int(e.get("value")): e.get("label") for e in t.iter(q("Enumeration"))}

    @staticmethod
    def valid_range(t) -> tuple[float | None, float | None]:
        r = t.find(f"{q('ValidRangeSet')}/{q('ValidRange')}")
        if r is None:
            return None, None
        return tuple(None if r.get(k) is None else float(r.get(k)) for k in ("minInclusive", "maxInclusive"))

    @staticmethod
    def unit(t) -> str | None:
        u = t.find(f"{q('UnitSet')}/{q('Unit')}")
        return None if u is None else u.text

    def field(self, t, value, args: dict, sized: bool) -> tuple[int, int]:
        """(value as an integer, size in bits) of one argument."""
        kind = self.kind(t)
        if kind in ("IntegerArgumentType", "EnumeratedArgumentType"):
            enc = t.find(q("IntegerDataEncoding"))
            n = int(enc.get("sizeInBits"))
            if kind == "EnumeratedArgumentType":
                value = {label: v for v, label in self.labels(t).items()}[value]  # engineering value: a label
            value = int(value)
            if enc.get("encoding") == "twosComplement":
                value &= (1 << n) - 1
            assert 0 <= value < 1 << n
            return value, n
        if kind == "FloatArgumentType":
            n = int(t.find(q("FloatDataEncoding")).get("sizeInBits"))
            return int.from_bytes(struct.pack(">d" if n == 64 else ">f", value), "big"), n
        if kind == "StringArgumentType":
            n = int(t.find(f"{q('StringDataEncoding')}/{q('SizeInBits')}/{q('Fixed')}/{q('FixedValue')}").text)
            data = value.encode(t.find(q("StringDataEncoding")).get("encoding").lower())
            assert len(data) <= n // 8
            return int.from_bytes(data.ljust(n // 8, b"\0"), "big"), n
        assert kind == "BinaryArgumentType", kind
        size = t.find(f"{q('BinaryDataEncoding')}/{q('SizeInBits')}")
        n = 8 * len(value)
        if size.find(q("FixedValue")) is not None:
            assert n == int(size.find(q("FixedValue")).text)
        elif sized:  # the size the XTCE gives from the packet length
            dyn = size.find(q("DynamicValue"))
            adj = dyn.find(q("LinearAdjustment"))
            ref = args[dyn.find(q("ArgumentInstanceRef")).get("argumentRef")]
            assert n == int(adj.get("slope")) * ref + int(adj.get("intercept"))
        return int.from_bytes(value, "big"), n

    def encode(self, name: str, values: dict) -> bytes:
        """The command packet; values: argument name -> engineering value (labels for
        enumerations). PKT_LEN is computed; initial values fill what is not given."""
        args = dict(self.assigned(name))
        for a, type_name in self.arguments(name).items():
            if self.types[type_name].get("initialValue") is not None:
                args.setdefault(a, self.types[type_name].get("initialValue"))
        args |= values
        args["PKT_LEN"] = 0
        for sized in (False, True):  # the second pass knows the packet length
            bits = value = 0
            for e in self.entries(name):
                if e.tag == q("FixedValueEntry"):
                    v, n = int(e.get("binaryValue"), 16), int(e.get("sizeInBits"))
                else:
                    ref = e.get("argumentRef")
                    v, n = self.field(self.types[self.arguments(name)[ref]], args[ref], args, sized)
                assert 0 <= v < 1 << n
                value, bits = value << n | v, bits + n
            assert bits % 8 == 0
            args["PKT_LEN"] = bits // 8 - 7
        return value.to_bytes(bits // 8, "big")


@pytest.fixture(scope="module")
def cmds(xtce_file):
    return XtceCommands(xtce_file)


MODEL_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)


def args_strategy(cdef: CommandDef):
    """Valid arguments of a command, from the dictionary's codes and ranges."""
    if cdef.name == "SET_PARAM":  # the value's range depends on the parameter
        def value(p):
            v = st.integers(int(p.lo), int(p.hi)) if p.type is int else st.floats(p.lo, p.hi)
            return v.map(lambda x: {"param": p.id, "value": float(x)})
        return st.sampled_from(list(PARAMS.values())).flatmap(value)
    parts = {}
    for a in cdef.args:
        if a.code == "16s":
            parts[a.name] = MODEL_NAMES
        elif a.code.endswith("s"):
            parts[a.name] = st.binary(min_size=struct.calcsize(a.code), max_size=struct.calcsize(a.code))
        elif a.code in "fd":
            parts[a.name] = st.floats(a.lo, a.hi, allow_nan=False, allow_infinity=False)
        else:
            top = 2 ** (8 * struct.calcsize(a.code)) - 1
            parts[a.name] = st.integers(int(a.lo) if a.lo is not None else 0, int(a.hi) if a.hi is not None else top)
    if cdef.tail:
        parts[cdef.tail] = st.binary(min_size=1, max_size=cdef.tail_max)
    return st.fixed_dictionaries(parts)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_command_is_laid_out_by_the_xtce_as_the_flight_encodes_it(cmds, data):
    """Each dictionary command, with random valid arguments, counter, issue time and ack flags:
    the packet laid out from the XTCE alone is byte for byte the one flight.commands encodes."""
    for cdef in sorted(COMMANDS.values(), key=lambda c: c.opcode):
        args = data.draw(args_strategy(cdef), label=cdef.name)
        counter, issued = data.draw(st.integers(1, 2**64 - 1)), data.draw(st.integers(0, 2**32 - 1))
        acks = data.draw(st.integers(0, 15))
        packet = encode_command(KEY, counter, issued, cdef.name, args, acks)
        values = dict(args)
        if cdef.name == "SET_PARAM":
            values["param"] = PARAMS[args["param"]].name  # enumerations take names
        if cdef.name == "SET_MODE":
            values["mode"] = Mode(args["mode"]).name
        values |= {"SRC_SEQ_CTR": counter & 0x3FFF, "ACK_FLAGS": acks, "COUNTER": counter, "ISSUED_S": issued,
                   "MAC": packet[-34:-2], "CRC16": int.from_bytes(packet[-2:], "big")}
        assert cmds.encode(cdef.name, values) == packet, cdef.name
        # what the XTCE says the sender computes: CRC-16/CCITT-FALSE, HMAC-SHA256 over the rest
        assert binascii.crc_hqx(packet[:-2], 0xFFFF) == values["CRC16"]
        assert hmac.new(KEY, packet[:-34], hashlib.sha256).digest() == values["MAC"]


def telemetry_type(root, parameter: str):
    tm = root.find(q("TelemetryMetaData"))
    ref = tm.find(f"{q('ParameterSet')}/{q('Parameter')}[@name='{parameter}']").get("parameterTypeRef")
    return next(t for t in tm.find(q("ParameterTypeSet")) if t.get("name") == ref)


def alarm_limits(t) -> tuple:
    """(warn, alarm) as the dictionary writes them, from a type's static alarm ranges."""
    ranges = t.find(f"{q('DefaultAlarm')}/{q('StaticAlarmRanges')}")
    out = []
    for tag in ("WarningRange", "CriticalRange"):
        r = None if ranges is None else ranges.find(q(tag))
        out.append(None if r is None else tuple(None if r.get(k) is None else float(r.get(k))
                                                for k in ("minInclusive", "maxInclusive")))
    return tuple(out)


def test_the_export_holds_the_whole_dictionary(xtce_file, definition, cmds):
    root = ET.parse(xtce_file).getroot()
    # telecommands: exactly the dictionary's, with opcode, arguments in order, sizes, ranges, units
    assert {n for n, m in cmds.commands.items() if m.get("abstract") != "true"} == set(COMMANDS)
    header = cmds.arguments(xtce.TC_BASE)
    assert cmds.labels(cmds.types[header["OPCODE"]]) == {c.opcode: c.name for c in COMMANDS.values()}
    for cdef in COMMANDS.values():
        assert cmds.base(cdef.name) == xtce.TC_BASE and cmds.assigned(cdef.name) == {"OPCODE": cdef.name}
        own = [a for a in cmds.layout_args(cdef.name) if a not in header]
        assert own == [a.name for a in cdef.args] + ([cdef.tail] if cdef.tail else []) + ["MAC", "CRC16"]
        for a in cdef.args:
            t = cmds.types[cmds.arguments(cdef.name)[a.name]]
            assert cmds.unit(t) == unit_of(a.name)
            labels = cmds.labels(t)
            if labels:  # an enumeration: every value inside the dictionary's range
                want = {p.id: p.name for p in PARAMS.values()} if a.name == "param" else {int(m): m.name for m in Mode}
                assert labels == want and all(a.lo <= v <= a.hi for v in labels), (cdef.name, a.name)
            elif not a.code.endswith("s"):
                assert cmds.valid_range(t) == (a.lo, a.hi), (cdef.name, a.name)
    # housekeeping: every channel by name, in id order, with its unit and alarm ranges
    report = [p.name for p in definition.containers["HousekeepingReport"].entry_list]
    channels = sorted(TELEMETRY, key=lambda c: c.id)
    assert report == [n for c in channels for n in (f"{channel_parameter(c)}__id", channel_parameter(c))] + [
        parameter_name(Housekeeping, "crc16")]
    assert definition.parameters[f"{channel_parameter(channels[0])}__id"].parameter_type.enumeration == {
        c.id: c.name for c in TELEMETRY}
    for c in TELEMETRY:
        t = telemetry_type(root, channel_parameter(c))
        assert definition.parameters[channel_parameter(c)].parameter_type.unit == unit_of(c.name), c.name
        if c.name == "mode":  # an enumeration whose labels carry the alarm levels
            levels = {a.get("enumerationLabel"): a.get("alarmLevel") for a in t.iter(q("EnumerationAlarm"))}
            assert levels == {"DEGRADED": "warning", "SAFE": "critical"}
        else:
            assert alarm_limits(t) == (c.warn, c.alarm), c.name
    units = {c.name: unit_of(c.name) for c in TELEMETRY}
    assert (units["rss_mib"], units["cpu_percent"], units["frame_latency_ms_last"], units["uplink_age_s"],
            units["store_bytes"], units["frames_captured"]) == ("MiB", "%", "ms", "s", "byte", None)
    assert sum(c.warn is not None or c.alarm is not None for c in TELEMETRY) >= 20
    # enumerations: detection class, event ids, severity, mode, report kind and reason
    enum = lambda p: definition.parameters[p].parameter_type.enumeration  # noqa: E731
    assert enum("DETECTION__class_id") == {int(c): c.name for c in DetectionClass}
    assert enum("EVENT__event_id") == {e.id: e.name for e in EVENTS.values()}
    assert enum("EVENT__severity") == {int(s): s.name for s in Severity}
    assert enum("HOUSEKEEPING__mode") == {int(m): m.name for m in Mode}
    from flight.app import QUICKLOOK_CLASS, REQUESTED_CHIP_CLASS
    assert {QUICKLOOK_CLASS, REQUESTED_CHIP_CLASS} <= set(enum("IMAGE_CHIP__class_id"))


def test_a_full_housekeeping_report_decodes_channel_by_channel(definition):
    values = {c.id: (float(Mode.SAFE) if c.name == "mode" else c.id * 1.5 + 0.1) for c in TELEMETRY}
    got = decode(definition, encode_tm(housekeeping(21, 60.0, values), 7, EPOCH, 60.0))
    for c in TELEMETRY:
        ident = got[f"{channel_parameter(c)}__id"]
        assert ident == c.name and ident.raw_value == c.id  # the positions are the channels they say
        want = struct.unpack(">f", struct.pack(">f", values[c.id]))[0]
        assert got[channel_parameter(c)] == ("SAFE" if c.name == "mode" else want), c.name
    # a report with only some channels keeps its pairs as binary
    partial = housekeeping(22, 61.0, {1: 3.0, 14: 0.0})
    got = decode(definition, encode_tm(partial, 8, EPOCH, 61.0))
    assert got[parameter_name(Housekeeping, "values")] == partial.values and channel_parameter(TELEMETRY[0]) not in got


def test_the_export_follows_the_dictionary(monkeypatch, tmp_path):
    """A channel and a command added to the dictionary are in the next export, decoded and typed."""
    added = Channel(999, "test_wait_ms_last", "a channel added later", warn=(None, 5.0), alarm=(-1.0, 9.5))
    command = CommandDef(99, "TEST_LEVEL", (Arg("level", "H", 1, 9),), "a command added later")
    monkeypatch.setattr(xtce, "TELEMETRY", (*TELEMETRY, added))
    monkeypatch.setattr(xtce, "COMMANDS", {**COMMANDS, command.name: command})
    path = tmp_path / "later.xtce.xml"
    path.write_bytes(export())
    definition = XtcePacketDefinition.from_xtce(path)
    channels = {c.id: 1.0 for c in TELEMETRY} | {999: 4.5}
    got = decode(definition, encode_tm(housekeeping(1, 1.0, channels), 1, EPOCH, 1.0))
    assert got["HOUSEKEEPING__test_wait_ms_last"] == 4.5
    assert definition.parameters["HOUSEKEEPING__test_wait_ms_last"].parameter_type.unit == "ms"
    assert alarm_limits(telemetry_type(ET.parse(path).getroot(), "HOUSEKEEPING__test_wait_ms_last")) == (
        (None, 5.0), (-1.0, 9.5))
    later = XtceCommands(path)
    assert later.valid_range(later.types[later.arguments("TEST_LEVEL")["level"]]) == (1, 9)
    assert later.labels(later.types[later.arguments(xtce.TC_BASE)["OPCODE"]])[99] == "TEST_LEVEL"


def test_cli_help_output_file_and_errors(tmp_path, xtce_file):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "ground_link.xtce", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=60)

    helped = run("--help")
    assert helped.returncode == 0 and "usage:" in helped.stdout and "<?xml" not in helped.stdout
    out = tmp_path / "mission.xtce.xml"
    assert run("--output", str(out)).returncode == 0 and out.read_bytes() == xtce_file.read_bytes()
    for args in (["--output", str(tmp_path / "no-such-folder" / "m.xml")], ["--frobnicate"]):
        bad = run(*args)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
