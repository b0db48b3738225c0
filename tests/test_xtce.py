"""The XTCE export of the dictionary decodes our real packets in another tool (space_packet_parser)."""

import dataclasses
import subprocess
import sys
import typing
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from space_packet_parser import XtcePacketDefinition, validate_xtce
from space_packet_parser.exceptions import UnrecognizedPacketTypeError

from flight.clock import parse_epoch
from flight.dictionary import Apid, DetectionClass
from flight.products import (
    PRODUCT_TYPES,
    Detection,
    Event,
    FrameSummary,
    ImageChip,
    cds_timestamp,
    encode_tm,
    housekeeping,
)
from ground_link.xtce import parameter_name

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
EPOCH = parse_epoch("2026-11-28T06:00:00Z")


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
        value = got[parameter_name(cls, f.name)]
        want = getattr(expect, f.name)
        if isinstance(want, str):
            want = want.encode()
        assert value == want or (value != value and want != want), f"{cls.__name__}.{f.name}: {value!r} != {want!r}"


def sample(cls):
    """An instance with every field set: 1 for integers, 1.25 for floats, a short tail."""
    hints = typing.get_type_hints(cls)
    values = {int: 1, float: 1.25, str: "sample text", bytes: b"\x00\x01sample"}
    return cls(*(values[hints[f.name]] for f in dataclasses.fields(cls)))


def test_export_is_schema_valid_and_names_units(xtce_file, definition):
    result = validate_xtce(xtce_file, level="all", raise_on_error=False, print_results=False,
                           allow_schema_download=False)  # the bundled XTCE 1.2 XSD
    assert result.valid, result
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
@given(pid=st.integers(0, 2**32 - 1), fid=st.integers(0, 2**32 - 1), t=st.floats(0, 1e6),
       cls_id=st.sampled_from(list(DetectionClass)), conf=st.integers(0, 255),
       xy=st.tuples(*[st.floats(-1e4, 1e4, width=32)] * 4), area=st.integers(0, 65535),
       tail=st.binary(max_size=300))
def test_random_detections_and_chips_decode(definition, pid, fid, t, cls_id, conf, xy, area, tail):
    check_packet(definition, Detection(pid, fid, t, cls_id, conf, *xy, area), seq=pid, time_s=round(t, 3))
    check_packet(definition, ImageChip(pid, fid, t, cls_id, xy[0], xy[1], 32, 32, 3, tail), seq=fid, time_s=1.0)


def test_an_unknown_apid_is_refused(definition):
    packet = bytearray(encode_tm(FrameSummary(5, 1, 1.0, 16, 2, 0.1, 0, 0, 0, 12.0, 40.0, 49.0), 0, EPOCH, 1.0))
    packet[1] = (Apid.HOUSEKEEPING + 0x10) & 0xFF  # an APID the dictionary does not have
    with pytest.raises(UnrecognizedPacketTypeError):
        decode(definition, bytes(packet))
