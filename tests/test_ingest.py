"""Ingest rejects every kind of bad frame with a reason naming the problem, and accepts good ones."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flight.frames import BANDS, Footprint, FrameMeta
from flight.ingest import FrameIngest, FrameRejected

FP = Footprint((40.0, 40.0, 39.9, 39.9), (49.0, 49.1, 49.1, 49.0))


def header(**kw) -> bytes:
    meta = dict(frame_id=7, capture_time_s=12.0, height=128, width=128, bands=list(BANDS), dtype="uint16",
                gsd_m=10.0, footprint={"lat_deg": FP.lat_deg, "lon_deg": FP.lon_deg})
    meta.update(kw)
    return json.dumps(meta).encode()


def strip(rows=64, width=128, value=100) -> bytes:
    return np.full((6, rows, width), value, dtype="<u2").tobytes()


def test_a_good_frame_passes():
    ing = FrameIngest(64)
    meta = ing.begin(header())
    assert isinstance(meta, FrameMeta) and meta.footprint == FP
    a = ing.strip(7, 0, 64, strip())
    assert a.shape == (6, 64, 128) and not ing.complete
    ing.strip(7, 64, 64, strip())
    assert ing.complete


@pytest.mark.parametrize("kw, reason", [
    (dict(bands=["red", "green"]), "bands"),
    (dict(dtype="uint8"), "dtype"),
    (dict(height=100), "multiple"),
    (dict(height=0), "size"),
    (dict(gsd_m=-1.0), "contradictory"),
    (dict(footprint={"lat_deg": [95, 0, 0, 0], "lon_deg": [0, 0, 0, 0]}), "footprint"),
    (dict(frame_id="seven"), "malformed"),
])
def test_bad_headers_are_rejected_with_the_reason(kw, reason):
    with pytest.raises(FrameRejected, match=reason):
        FrameIngest(64).begin(header(**kw))


@pytest.mark.parametrize("args, reason", [
    ((7, 64, 64, strip()), "expected 0"),  # missing first strip
    ((8, 0, 64, strip()), "inside frame 7"),
    ((7, 0, 64, strip()[:-2]), "truncated"),
    ((7, 0, 32, strip(rows=32)), "whole tiles"),
    ((7, 0, 64, strip(value=4096)), "above 12 bits"),
])
def test_bad_strips_are_rejected_with_the_reason(args, reason):
    ing = FrameIngest(64)
    ing.begin(header())
    with pytest.raises(FrameRejected, match=reason):
        ing.strip(*args)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400))
def test_random_header_bytes_are_rejected_not_crashing(data):
    try:
        FrameIngest(64).begin(data)
    except FrameRejected as exc:
        assert exc.reason


@settings(max_examples=200, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(["frame_id", "capture_time_s", "height", "width", "bands", "dtype",
                                                "gsd_m", "footprint"]),
                              st.one_of(st.none(), st.integers(-5, 5000), st.floats(), st.text(max_size=5),
                                        st.lists(st.integers(-200, 200), max_size=6))))
def test_random_metadata_is_rejected_or_consistent(fields):
    ing = FrameIngest(64)
    try:
        meta = ing.begin(header(**fields))
    except FrameRejected:
        return
    assert meta.height % 64 == 0 and meta.width % 64 == 0 and meta.bands == BANDS and meta.gsd_m > 0


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, 6 * 64 * 128 * 2 - 1), flip=st.integers(0, 6 * 64 * 128 - 1))
def test_truncated_or_out_of_range_strips_are_rejected(cut, flip):
    ing = FrameIngest(64)
    ing.begin(header())
    with pytest.raises(FrameRejected):
        ing.strip(7, 0, 64, strip()[:cut])
    a = np.frombuffer(strip(), dtype="<u2").copy()
    a[flip] = 0xF000
    with pytest.raises(FrameRejected, match="12 bits"):
        ing.strip(7, 0, 64, a.tobytes())
