"""Every packet type round-trips through pack/unpack and its CCSDS packet; bad bytes never crash."""

import struct
from dataclasses import replace as dataclasses_replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flight.clock import parse_epoch
from flight.dictionary import TELEMETRY
from flight.products import (
    PRODUCT_ID_MAX,
    PRODUCT_TYPES,
    CommandReport,
    Detection,
    Event,
    FrameSummary,
    ImageChip,
    PacketError,
    decode_tm,
    encode_tm,
    housekeeping,
    packet_time,
    product_label,
)

EPOCH = parse_epoch("2026-11-28T06:00:00Z")
u32 = st.integers(0, 2**32 - 1)
# product ids: (store epoch << 32) | n, the whole 63-bit range, boundaries drawn often
pid = st.one_of(st.sampled_from([0, 1, 2**32 - 1, 2**32, 2**32 + 1, 2**62, PRODUCT_ID_MAX]), st.integers(0, PRODUCT_ID_MAX))
u16 = st.integers(0, 2**16 - 1)
u8 = st.integers(0, 255)
f32 = st.floats(width=32, allow_nan=False)
f64 = st.floats(allow_nan=False, allow_infinity=False)
time_s = st.integers(0, 10**8).map(lambda ms: ms / 1000)  # the CDS short code has ms resolution

summaries = st.builds(FrameSummary, pid, u32, f64, u16, u16, f32, st.integers(0, 1), u16, u16, f32, f32, f32)
detections = st.builds(Detection, pid, u32, f64, u8, u8, f32, f32, f32, f32, u16)
chips = st.builds(ImageChip, pid, u32, f64, u8, f32, f32, u16, u16, u8, st.binary(max_size=2000))
events = st.builds(Event, pid, f64, u16, st.integers(1, 4), st.integers(-(2**31), 2**31 - 1), st.text(max_size=100))
hks = st.builds(housekeeping, pid, f64, st.dictionaries(st.sampled_from([c.id for c in TELEMETRY]), f32, max_size=13))
reports = st.builds(CommandReport, pid, f64, st.integers(0, 2**64 - 1), u16, st.sampled_from([1, 2, 7, 8]), u16,
                    st.text(max_size=100))


@settings(max_examples=200, deadline=None)
@given(product=st.one_of(summaries, detections, chips, events, hks, reports), seq=st.integers(0, 2**14 - 1), t=time_s)
def test_every_product_round_trips_through_its_packet(product, seq, t):
    assert type(product).unpack(product.pack()) == product
    packet = encode_tm(product, seq, EPOCH, t)
    tm, back = decode_tm(packet)
    assert back == product
    assert tm.apid == product.APID and tm.seq_count == seq
    assert packet_time(tm, EPOCH) == pytest.approx(t, abs=1e-3)


def test_a_detection_packet_is_at_most_64_bytes():
    d = Detection(1, 2, 3.0, 2, 255, 1.0, 2.0, 40.0, 49.0, 12)
    assert len(encode_tm(d, 0, EPOCH, 3.0)) <= 64


@settings(max_examples=300, deadline=None)
@given(product=st.one_of(summaries, detections, events), pos=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_any_flipped_bit_is_caught(product, pos, bit):
    packet = bytearray(encode_tm(product, 1, EPOCH, 1.0))
    packet[pos % len(packet)] ^= 1 << bit
    with pytest.raises(PacketError):
        decode_tm(bytes(packet))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_raise_packet_error_only(data):
    try:
        decode_tm(data)
    except PacketError:
        pass


@pytest.mark.parametrize("cls", sorted(PRODUCT_TYPES.values(), key=lambda c: c.APID), ids=lambda c: c.__name__)
def test_every_product_id_is_a_u64_and_above_63_bits_is_refused(cls):
    """Every layout starts with the 64-bit product id; an id no store or archive can hold (above
    PRODUCT_ID_MAX, e.g. from a hostile or corrupted packet whose CRC was fixed up) is a
    PacketError, never an OverflowError further on."""
    assert cls.LAYOUT.startswith(">Q")
    sample = {FrameSummary: FrameSummary(1, 2, 3.0, 4, 5, 0.5, 0, 0, 0, 1.0, 0.0, 0.0),
              Detection: Detection(1, 2, 3.0, 1, 200, 1.0, 2.0, 3.0, 4.0, 5),
              ImageChip: ImageChip(1, 2, 3.0, 1, 1.0, 2.0, 8, 8, 3, b"png"),
              Event: Event(1, 2.0, 3, 1, -1, "text"),
              CommandReport: CommandReport(1, 2.0, 3, 4, 7, 0, "ok")}.get(cls) or housekeeping(1, 2.0, {1: 3.0})
    big = bytearray(encode_tm(dataclasses_replace(sample, product_id=PRODUCT_ID_MAX), 0, EPOCH, 1.0))
    _, back = decode_tm(bytes(big))
    assert back.product_id == PRODUCT_ID_MAX
    over = encode_tm(dataclasses_replace(sample, product_id=PRODUCT_ID_MAX + 1), 0, EPOCH, 1.0)
    with pytest.raises(PacketError, match="product id"):
        decode_tm(over)


def test_product_label_is_epoch_and_count():
    assert product_label(5) == "0:5"
    assert product_label((3 << 32) | 17) == "3:17"
    assert product_label(PRODUCT_ID_MAX) == f"{2**31 - 1}:{2**32 - 1}"


def test_payload_of_the_wrong_length_is_refused():
    good = FrameSummary(1, 2, 3.0, 4, 5, 0.5, 0, 0, 0, 1.0, 0.0, 0.0).pack()
    with pytest.raises(PacketError, match="layout needs"):
        FrameSummary.unpack(good[:-1])
    with pytest.raises(PacketError):
        Event.unpack(struct.pack(">QdHBi", 1, 0.0, 1, 1, -1) + b"\xff\xfe")


def test_one_apid_per_product_type():
    assert len(PRODUCT_TYPES) == len({cls.APID for cls in PRODUCT_TYPES.values()})
