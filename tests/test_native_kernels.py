"""The native calibration kernel (flight/native, issue #16): the same results as the numpy/OpenCV
path bit for bit, over the whole 16-bit range; checked arguments; the fallback and its reasons.

The library is built by `make native` (make test does it first); where it is not built (no C
compiler) the tests that need it skip and say so, and the flight runs its numpy/OpenCV path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flight.calibrate import Calibrator, calibrate_rows_reference, native_differs
from flight.native import MAX_SCALE, NativeKernels, NativeUnavailable, library_path, load
from payload_sim.sensor import Sensor, SensorConfig

HAVE_LIB = library_path().exists()
needs_lib = pytest.mark.skipif(not HAVE_LIB, reason=f"{library_path().name} not built (make native; needs a C compiler)")


@pytest.fixture(scope="module")
def kernels():
    if not HAVE_LIB:
        pytest.skip(f"{library_path().name} not built (make native; needs a C compiler)")
    return NativeKernels()


def both(kernels, raw, offset, flat, base, scale):
    want = np.empty(raw.shape, np.uint16)
    calibrate_rows_reference(raw, offset, flat, base, scale, want, np.empty_like(want))
    got = np.full(raw.shape, 12345, np.uint16)
    kernels.calibrate_rows(raw, offset, flat, got, base, scale)
    return want, got


# the demo sensor's bands (dn_per_reflectance 2600-3600 -> scale ~0.003), the kernel's limit and
# values in between: every signal 0 .. 65535 against every flat value
SCALES = [10000 / 3400 / 1024, 10000 / 2600 / 1024, 0.0123456, MAX_SCALE]


@pytest.mark.parametrize("scale", SCALES)
def test_every_signal_and_flat_value_gives_the_reference_s_result(kernels, scale):
    signal = np.arange(65536, dtype=np.uint16)
    for f0 in range(0, 256, 32):  # 32 flat values at a time: 2 M values, 4 MB per array
        flat = np.repeat(np.arange(f0, f0 + 32, dtype=np.uint8)[:, None], 65536, axis=1)
        raw = np.ascontiguousarray(np.broadcast_to(signal, flat.shape))
        want, got = both(kernels, raw, np.zeros_like(flat), flat, 0, scale)
        bad = np.flatnonzero(want != got)
        assert bad.size == 0, f"scale {scale}: {bad.size} differ, first at signal {raw.flat[bad[0]]} flat {flat.flat[bad[0]]}"
    if scale == MAX_SCALE:  # the kernel's largest product saturates at the top of the range
        assert got.max() == 65535


def test_dark_above_the_signal_gives_zero_and_any_base_and_offset_agree(kernels):
    rng = np.random.default_rng(20261204)
    for base in (0, 1, 255, 4000, 65280):
        raw = rng.integers(0, 65536, (64, 999), dtype=np.uint16)  # odd width: no vector-width multiple
        raw[:, :50] = rng.integers(0, base + 256, (64, 50), dtype=np.uint16) if base < 65280 else 65535
        offset = rng.integers(0, 256, raw.shape, dtype=np.uint8)
        flat = rng.integers(0, 256, raw.shape, dtype=np.uint8)
        for scale in (1e-6, 0.0033, MAX_SCALE):
            want, got = both(kernels, raw, offset, flat, base, scale)
            assert np.array_equal(want, got), (base, scale)
        assert (want[raw.astype(np.int64) <= base + offset.astype(np.int64)] == 0).all()


@pytest.mark.parametrize("tables", ["memory", "stream"])
def test_a_calibrator_with_the_kernel_gives_the_same_frame_bit_for_bit(kernels, tables):
    """A real sensor's products (dark, flat, bad pixels repaired after), a width that is no
    multiple of 64, strips of several heights: the same output as the numpy/OpenCV path."""
    h, w = 192, 200
    sensor = Sensor(SensorConfig(), h, w)
    products = sensor.calibration_products("test")
    assert products.bad_pixels.size > 0  # the repair runs after the kernel, on its output
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 4096, (6, h, w), dtype=np.uint16)
    native = Calibrator(products, strip_rows=48, tables=tables, kernels=kernels)
    plain = Calibrator(products, strip_rows=48, tables=tables)
    assert native.kernels is kernels and native.kernel_note == "native"
    assert plain.kernels is None
    assert np.array_equal(native(raw), plain(raw))
    for rows in (1, 37, 64):
        for r0 in range(0, h - rows + 1, 61):
            assert np.array_equal(native.calibrate_strip(raw[:, r0:r0 + rows], r0),
                                  plain.calibrate_strip(raw[:, r0:r0 + rows], r0))
    native.close()
    plain.close()


class OffByOne:
    """The real kernel with one result changed: what a miscompiled library would give."""

    def __init__(self, kernels, signal: int):
        self.kernels, self.signal = kernels, signal

    def calibrate_rows(self, raw, offset, flat, out, base, scale):
        self.kernels.calibrate_rows(raw, offset, flat, out, base, scale)
        out[(raw == self.signal) & (flat == 255)] += 1


def test_a_kernel_that_differs_anywhere_is_not_used_and_the_note_says_where(kernels):
    products = Sensor(SensorConfig(), 64, 64).calibration_products("test")
    assert native_differs(kernels, 100, 0.003) == ""
    for signal in (0, 4095, 65535):
        why = native_differs(OffByOne(kernels, signal), 100, 0.003)
        assert f"raw {signal} " in why and "flat 255" in why
    cal = Calibrator(products, kernels=OffByOne(kernels, 2000))
    assert cal.kernels is None and cal.kernel_note.startswith("numpy/OpenCV: the native kernel is not used: band blue")
    assert "raw 2000 " in cal.kernel_note


def test_a_scale_beyond_the_kernel_s_range_keeps_the_numpy_path(kernels):
    assert "outside the kernel's" in native_differs(kernels, 0, MAX_SCALE * 1.01)
    with pytest.raises(ValueError, match="scale"):
        kernels.calibrate_rows(*[np.zeros((2, 2), t) for t in (np.uint16, np.uint8, np.uint8, np.uint16)], 0, MAX_SCALE * 2)


@pytest.mark.parametrize("bad", ["raw dtype", "offset shape", "flat strided", "out read-only", "base", "out list"])
def test_wrong_arguments_are_refused_before_c_touches_them(kernels, bad):
    raw, out = np.zeros((8, 16), np.uint16), np.zeros((8, 16), np.uint16)
    offset, flat = np.zeros((8, 16), np.uint8), np.zeros((8, 16), np.uint8)
    base, scale = 0, 0.003
    if bad == "raw dtype":
        raw = raw.astype(np.int32)
    elif bad == "offset shape":
        offset = np.zeros((8, 17), np.uint8)
    elif bad == "flat strided":
        flat = np.zeros((8, 32), np.uint8)[:, ::2]
    elif bad == "out read-only":
        out.flags.writeable = False
    elif bad == "base":
        base = 65536
    else:
        out = out.tolist()
    with pytest.raises(ValueError, match="calibrate_rows"):
        kernels.calibrate_rows(raw, offset, flat, out, base, scale)


def test_modes_and_a_library_that_is_missing_or_not_a_library(tmp_path):
    assert load("off") == (None, "numpy/OpenCV (flight.native_kernels = off)")
    with pytest.raises(ValueError, match="allowed auto, required, off"):
        load("fast")
    missing = tmp_path / "libflight_kernels.x.so"
    k, note = load("auto", missing)
    assert k is None and note.startswith("numpy/OpenCV: libflight_kernels.x.so: cannot load")
    with pytest.raises(NativeUnavailable, match="cannot load"):
        load("required", missing)
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"\x7fELF not really" * 64)
    with pytest.raises(NativeUnavailable, match="junk.so: cannot load"):
        load("required", junk)
    if HAVE_LIB:
        k, note = load("required")
        assert isinstance(k, NativeKernels) and note == f"native ({library_path().name})"


def _flight_event_texts(app) -> list[str]:
    from flight.products import Event, decode_tm

    return [p.message for (pkt,) in app.store.db.execute("SELECT packet FROM products WHERE apid = 0x105 ORDER BY id")
            if isinstance(p := decode_tm(pkt)[1], Event)]


def test_the_flight_says_which_calibration_runs_and_its_products_do_not_depend_on_it(tmp_path, monkeypatch):
    """flight.native_kernels: "auto" with the library runs it, "off" and "auto" without it run
    numpy/OpenCV, each with a NATIVE_KERNELS event; the frames' products are the same; "required"
    without the library fails start-up with the key in the error."""
    from ops_util import flight_apps
    from test_modes import feed_frame

    from flight.config import ConfigError

    cascade = ('flight.cascade=[{model="cloud_screen"}, {model="ship_detect", when="clear_water", contrast_band="nir", min_contrast=150.0},'
               ' {model="fire_detect", when="clear_land"}]')
    results, notes = {}, {}
    with flight_apps(tmp_path, monkeypatch, ["scenario.clock_rate=1.0", cascade], 500.0) as (make, _):
        modes = ["auto", "off"] if HAVE_LIB else ["off"]
        for mode in modes:
            app, sc = make([f'flight.native_kernels="{mode}"'])
            assert (app.calibrator.kernels is not None) == (mode == "auto")
            got = []
            finish = app.pipeline.finish  # a spy on the results, the real call underneath
            app.pipeline.finish = lambda finish=finish, got=got: got.append(finish()) or got[-1]
            for fid in range(2):
                feed_frame(app, sc, fid)
            assert app.counts["frames_processed"] == 2 and app.counts["errors"] == 0
            results[mode] = [json.dumps([r.tile_cloud.tolist(), [(d.class_id, d.row_px, d.col_px, d.confidence)
                                                                 for d in r.detections]]) for r in got]
            notes[mode] = [t for t in _flight_event_texts(app) if t.startswith("calibration kernel: ")]
        monkeypatch.setattr("flight.native.library_path", lambda machine=None: tmp_path / "gone.so")
        app, _ = make(['flight.native_kernels="auto"'])
        assert app.calibrator.kernels is None
        notes["auto, no library"] = [t for t in _flight_event_texts(app) if t.startswith("calibration kernel: ")]
        with pytest.raises(ConfigError, match=r"flight.native_kernels = 'required': gone.so: cannot load"):
            make(['flight.native_kernels="required"'])
    assert notes["off"][-1] == "calibration kernel: numpy/OpenCV (flight.native_kernels = off)"
    assert notes["auto, no library"][-1].startswith("calibration kernel: numpy/OpenCV: gone.so: cannot load")
    if HAVE_LIB:
        assert notes["auto"][-1] == f"calibration kernel: native ({library_path().name})"
        assert results["auto"] == results["off"]
