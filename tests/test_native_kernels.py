"""The native calibration kernel (flight/native, issue #16): the same results as the numpy/OpenCV
path bit for bit, over the whole 16-bit range; checked arguments; the fallback and its reasons.

The library is built by `make native` (make test does it first); where it is not built (no C
compiler) the tests that need it skip and say so, and the flight runs its numpy/OpenCV path."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
            notes[mode] = [t for t in _flight_event_texts(app) if t.startswith("native kernels: ")]
        monkeypatch.setattr("flight.native.library_path", lambda machine=None: tmp_path / "gone.so")
        app, _ = make(['flight.native_kernels="auto"'])
        assert app.calibrator.kernels is None
        notes["auto, no library"] = [t for t in _flight_event_texts(app) if t.startswith("native kernels: ")]
        with pytest.raises(ConfigError, match=r"flight.native_kernels = 'required': gone.so: cannot load"):
            make(['flight.native_kernels="required"'])
    assert notes["off"][-1] == ("native kernels: model input numpy/OpenCV; "
                                "calibration numpy/OpenCV (flight.native_kernels = off)")
    assert notes["auto, no library"][-1].startswith("native kernels: model input numpy/OpenCV; "
                                                    "calibration numpy/OpenCV: gone.so: cannot load")
    if HAVE_LIB:
        assert notes["auto"][-1] == f"native kernels: model input native; calibration native ({library_path().name})"
        assert results["auto"] == results["off"]


# -- the models' input cut and quantized in one pass (tiles_u8, pipeline.BlockTiles) ----------------

CARD_QUANT = [(1e-4 / 0.00546980369836092, 0.0), (1e-4 / 0.003574901958927512, 0.0), (1e-4 / 0.005571764428168535, 0.0)]


def _reference_tiles(block, cols, alpha, beta):
    import cv2

    from flight.pipeline import tiles_of

    t = tiles_of(block, 64)[cols]
    if not len(cols):
        return np.zeros(t.shape, np.uint8)
    return cv2.convertScaleAbs(t.reshape(len(cols), -1), alpha=alpha, beta=beta).reshape(t.shape)


@pytest.mark.parametrize(("alpha", "beta"), CARD_QUANT + [(0.5, 0.0), (1e-3, 17.0)])
def test_tiles_u8_gives_quantize_tiles_of_tiles_of_bit_for_bit(kernels, alpha, beta):
    """Every uint16 value, random blocks that are views into wider strips (a block of a wide
    frame), any order of tile columns with repeats, as flight.inference.quantize_tiles does on
    flight.pipeline.tiles_of's tiles; where the kernel cannot match (tiles_u8_matches false) it is
    never used, and this test says so instead of passing silently."""
    if not kernels.tiles_u8_matches(alpha, beta):
        pytest.skip(f"the kernel does not match OpenCV for alpha {alpha} beta {beta}: BlockTiles uses the numpy path")
    rng = np.random.default_rng(11)
    strip = rng.integers(0, 65536, (6, 128, 64 * 40), dtype=np.uint16)
    block = strip[:, 64:128, 64 * 3: 64 * 35]  # rows and columns of a wider strip: strided, not contiguous
    for cols in (np.arange(32), np.array([31, 0, 5, 5, 17]), np.array([], np.int64)):
        cols = cols.astype(np.int32)
        out = np.full((cols.size, 64, 64, 6), 7, np.uint8)
        kernels.tiles_u8(block, 64, cols, alpha, beta, out)
        assert np.array_equal(out, _reference_tiles(block, cols, alpha, beta))
    every = np.ascontiguousarray(np.broadcast_to(np.arange(65536, dtype=np.uint16).reshape(64, 1024), (6, 64, 1024)))
    cols = np.arange(16, dtype=np.int32)
    out = np.empty((16, 64, 64, 6), np.uint8)
    assert np.array_equal(kernels.tiles_u8(every, 64, cols, alpha, beta, out), _reference_tiles(every, cols, alpha, beta))


@pytest.mark.parametrize("cell", [2, 4, 8])
def test_tiles_u8_in_cells_gives_to_cells_of_the_plain_tiles(kernels, cell):
    """The layout of an INT8 file whose stem runs over cells (card int8_input_cell): the same values
    as the plain tiles, each cell x cell block of pixels together, as inference.to_cells lays them
    out; from a strided block of a wider strip, columns in any order with repeats."""
    from flight.inference import to_cells

    alpha, beta = CARD_QUANT[0]
    rng = np.random.default_rng(12)
    strip = rng.integers(0, 65536, (6, 128, 64 * 40), dtype=np.uint16)
    block = strip[:, :64, 64 * 5: 64 * 37]
    for cols in (np.arange(32), np.array([31, 0, 5, 5, 17]), np.array([], np.int64)):
        cols = cols.astype(np.int32)
        side = 64 // cell
        out = np.full((cols.size, side, side, 6 * cell * cell), 7, np.uint8)
        kernels.tiles_u8(block, 64, cols, alpha, beta, out, cell)
        plain = kernels.tiles_u8(block, 64, cols, alpha, beta, np.empty((cols.size, 64, 64, 6), np.uint8))
        assert np.array_equal(out, to_cells(plain, cell))


@pytest.mark.parametrize("cell", [0, 3, 16, -4, 2**63, 4.0, True, "4", None])
def test_tiles_u8_refuses_a_cell_it_has_no_layout_for(kernels, cell):
    out = np.zeros((1, 16, 16, 96), np.uint8)
    with pytest.raises(ValueError, match="cell"):
        kernels.tiles_u8(np.zeros((6, 64, 64), np.uint16), 64, np.zeros(1, np.int32), 0.02, 0.0, out, cell)
    with pytest.raises(ValueError, match="cell"):  # a cell that does not divide the tile
        kernels.tiles_u8(np.zeros((6, 6, 6), np.uint16), 6, np.zeros(1, np.int32), 0.02, 0.0, np.zeros((1, 1, 1, 96), np.uint8), 4)


def test_tiles_u8_matches_is_false_where_opencv_rounds_otherwise_and_the_tiles_then_come_the_numpy_way(kernels):
    """OpenCV's convertScaleAbs fuses the multiply and the add on this machine for some constants
    (a zero point not 0); the kernel does not, so those constants keep the numpy path."""
    from flight.pipeline import BlockTiles, tiles_of

    scale, zp = 0.005571764428168535, 3
    mismatch = not kernels.tiles_u8_matches(1e-4 / scale, float(zp))
    rng = np.random.default_rng(3)
    block = rng.integers(0, 40000, (6, 64, 640), dtype=np.uint16)
    got = BlockTiles(block, 64, kernels).quantized(1e-4, scale, zp)
    from flight.inference import quantize_tiles

    assert np.array_equal(got, quantize_tiles(tiles_of(block, 64), scale, zp, 1e-4))
    if not mismatch:
        pytest.skip("OpenCV and the kernel agree for these constants on this machine: the fallback is not exercised")


@pytest.mark.parametrize("bad", ["block dtype", "block layout", "block reversed rows", "tile_px", "cols dtype",
                                 "cols range", "out shape", "alpha"])
def test_tiles_u8_refuses_wrong_arguments_before_c_touches_them(kernels, bad):
    block = np.zeros((6, 64, 256), np.uint16)
    cols, out, alpha, tp = np.arange(4, dtype=np.int32), np.zeros((4, 64, 64, 6), np.uint8), 0.02, 64
    if bad == "block dtype":
        block = block.astype(np.int16)
    elif bad == "block layout":
        block = np.zeros((6, 64, 512), np.uint16)[:, :, ::2]
    elif bad == "block reversed rows":  # a negative stride: size_t in C would wrap round
        block = block[:, ::-1]
    elif bad == "tile_px":
        tp = 300
    elif bad == "cols dtype":
        cols = cols.astype(np.int64)
    elif bad == "cols range":
        cols = np.array([0, 4], np.int32)
        out = np.zeros((2, 64, 64, 6), np.uint8)
    elif bad == "out shape":
        out = np.zeros((4, 64, 64, 5), np.uint8)
    else:
        alpha = 100.0
    with pytest.raises(ValueError, match="tiles_u8"):
        kernels.tiles_u8(block, tp, cols, alpha, 0.0, out)


def test_the_pipeline_with_the_kernels_gives_every_frame_s_products_bit_for_bit(kernels):
    """FramePipeline with the native kernels (calibration and BlockTiles) against the numpy/OpenCV
    path: frames of a wide sensor (40 tiles a row: blocks of 32 and 8), clear land with fires and
    sea with ships, strips of two heights; cloud per tile, detections and chips identical."""
    from flight.config import load_scenario
    from flight.frames import BANDS
    from flight.inference import TileModel, model_path
    from flight.pipeline import FramePipeline
    from payload_sim.scenes import synthetic_scene

    h, w = 256, 64 * 40
    sensor = Sensor(SensorConfig(), h, w)
    products = sensor.calibration_products("test")
    cfg = load_scenario(None, ['flight.cascade=[{model="cloud_screen"}, {model="ship_detect", when="clear_water",'
                               ' contrast_band="nir", min_contrast=150.0}, {model="fire_detect", when="clear_land"}]',
                               'flight.chip_classes=["ship", "fire"]']).flight
    models = {s.model: TileModel(model_path(s.model)) for s in cfg.cascade}
    pipes = {"numpy": FramePipeline(cfg, Calibrator(products, tables="stream"), models),
             "native": FramePipeline(cfg, Calibrator(products, tables="stream", kernels=kernels), models,
                                     reuse_buffers=True, kernels=kernels)}
    found = 0
    for k, scene_kw in enumerate([dict(cloud_cover=0.0, water_fraction=1.0, ships=40),
                                  dict(cloud_cover=0.3, water_fraction=0.0, fires=12)]):
        scene = synthetic_scene(5, k, h, w, **scene_kw)
        raw = sensor.expose(scene.reflectance, np.random.default_rng(k))
        for strip_rows in (64, 128):
            out = {}
            for name, pipe in pipes.items():
                pipe.begin(json.dumps({"frame_id": k, "capture_time_s": 1.0, "height": h, "width": w,
                                       "bands": list(BANDS)}).encode())
                for r in range(0, h, strip_rows):
                    pipe.strip(k, r, strip_rows, np.ascontiguousarray(raw[:, r:r + strip_rows]).tobytes())
                res = pipe.finish()
                out[name] = (res.tile_cloud.tolist(), [(d.class_id, d.confidence, d.row_px, d.col_px, d.area_px)
                                                       for d in res.detections],
                             [(c.class_id, c.row_px, c.col_px, c.png) for c in res.chips])
            assert out["native"] == out["numpy"]
            found += len(out["native"][1])
    assert found > 10  # ships and fires were found: the detectors' inputs were compared, not only the screen's


def test_tile_sums_give_tile_means_and_tile_contrast_bit_for_bit(kernels):
    """The water index's means and the prescreen's contrast from the kernel's exact sums and
    maxima, against the OpenCV reductions, on random and extreme blocks (every value 65535 too)."""
    from flight.pipeline import TileStats, tile_contrast, tile_means

    rng = np.random.default_rng(5)
    strip = rng.integers(0, 65536, (6, 128, 64 * 40), dtype=np.uint16)
    strip[2] = 65535
    strip[4, :, :640] = 0
    for block in (strip[:, :64], strip[:, 64:128, 64 * 3: 64 * 35]):
        native, plain = TileStats(block, 64, kernels), TileStats(block, 64, None)
        for band in range(6):
            assert np.array_equal(native.mean(band), tile_means(block, 64, band))
            assert np.array_equal(native.contrast(band), tile_contrast(block, 64, band))
            assert np.array_equal(native.contrast(band), plain.contrast(band))
            assert native.mean(band).dtype == plain.mean(band).dtype == np.float32
    sums, top = kernels.tile_sums(strip[2, :64], 64, with_max=True)
    assert (sums == 64 * 64 * 65535).all() and (top == 65535).all()
    sums, top = kernels.tile_sums(strip[4, :64, :640], 64, with_max=False)
    assert top is None and (sums == 0).all() and sums.size == 10


@pytest.mark.parametrize("bad", ["dtype", "3-d", "strided columns", "reversed rows", "tile_px"])
def test_tile_sums_refuses_wrong_arguments(kernels, bad):
    band, tp = np.zeros((64, 256), np.uint16), 64
    if bad == "dtype":
        band = band.astype(np.uint32)
    elif bad == "3-d":
        band = np.zeros((6, 64, 256), np.uint16)
    elif bad == "strided columns":
        band = np.zeros((64, 512), np.uint16)[:, ::2]
    elif bad == "reversed rows":
        band = band[::-1]
    else:
        tp = 65
    with pytest.raises(ValueError, match="tile_sums"):
        kernels.tile_sums(band, tp, with_max=True)


# -- a detector's peaks (heatmap_peaks) -------------------------------------------------------------


def _hostile_heatmaps(rng, kind, n, rows, cols):
    if kind == "random":
        h = rng.random((n, rows, cols)) ** 3
    elif kind == "plateaus":  # ties everywhere: the raster-order rule and the stable sort decide
        h = rng.integers(0, 4, (n, rows, cols)) / 4.0
    elif kind == "signed":
        h = rng.normal(0.3, 0.6, (n, rows, cols))
    else:  # odd values: NaN, infinities, signed zeros, huge and tiny
        h = rng.choice(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, 3e38, -3e38, 0.5, 0.5, 1.0]),
                       size=(n, rows, cols))
    return np.ascontiguousarray(h, dtype=np.float32)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["random", "plateaus", "signed", "odd"]),
       st.sampled_from([0.4, -0.5, 0.0, 1.0, float("nan"), float("-inf"), float("inf"), 0.1000001]),
       st.integers(1, 64), st.integers(0, 4), st.integers(1, 17), st.integers(1, 17))
def test_the_peaks_kernel_gives_heatmap_peaks_list_bit_for_bit(kernels, seed, kind, thr, stride, n, rows, cols):
    from flight.inference import heatmap_peaks

    h = _hostile_heatmaps(np.random.default_rng(seed), kind, n, rows, cols)
    with np.errstate(invalid="ignore"):  # infinite weights make NaN centroids: the same NaN both ways
        want = heatmap_peaks(h, thr, stride)
    got = kernels.heatmap_peaks(h, thr, stride)
    assert [(t, r.hex(), c.hex(), s.hex()) for t, r, c, s in got] == [(t, r.hex(), c.hex(), s.hex()) for t, r, c, s in want]


def test_the_peaks_kernel_on_the_detectors_real_output_and_its_argument_checks(kernels):
    """Heatmaps ship_detect really made on a scene with ships (hundreds of peaks), then what the
    wrapper refuses before C reads a byte."""
    from flight.inference import TileModel, heatmap_peaks, model_path, quantize_tiles  # noqa: F401
    from flight.pipeline import tiles_of
    from payload_sim.scenes import synthetic_scene

    sensor = Sensor(SensorConfig(), 128, 1024)
    scene = synthetic_scene(3, 1, 128, 1024, cloud_cover=0.0, water_fraction=1.0, ships=60)
    cal = Calibrator(sensor.calibration_products("test"))(sensor.expose(scene.reflectance, np.random.default_rng(1)))
    model = TileModel(model_path("ship_detect"))
    heat = model.run(tiles_of(cal, 64))
    card = model.card
    want = heatmap_peaks(heat, card.threshold, card.stride)
    assert len(want) > 20 and kernels.heatmap_peaks(heat, card.threshold, card.stride) == want
    for bad in (heat.astype(np.float64), heat[:, ::2], heat[0], [[[0.5]]]):
        with pytest.raises(ValueError, match="heatmap_peaks"):
            kernels.heatmap_peaks(bad, 0.5, 4)
    with pytest.raises(ValueError, match="stride"):
        kernels.heatmap_peaks(heat, 0.5, 0)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) to build the stand-in libraries")
def test_a_library_of_another_abi_version_or_lacking_a_kernel_is_refused(tmp_path):
    """Built here with cc: a library that says another ABI version, and one that says this
    version but lacks a kernel (a half-built file): both refused with the reason; "auto" then runs
    numpy/OpenCV."""
    from flight.native import ABI_VERSION

    stub = "void fk_calibrate_rows(void) {}\nvoid fk_tiles_u8(void) {}\nvoid fk_tile_sums(void) {}\n"
    cases = {"other.so": f"int fk_abi_version(void) {{ return {ABI_VERSION + 1}; }}\n{stub}void fk_heatmap_peaks(void) {{}}\n",
             "half.so": f"int fk_abi_version(void) {{ return {ABI_VERSION}; }}\n{stub}"}
    for name, source in cases.items():
        (tmp_path / "k.c").write_text(source)
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(tmp_path / name), str(tmp_path / "k.c")], check=True)
    with pytest.raises(NativeUnavailable, match=f"other.so: ABI version {ABI_VERSION + 1}, the flight needs {ABI_VERSION}"):
        NativeKernels(tmp_path / "other.so")
    with pytest.raises(NativeUnavailable, match="half.so: cannot load .*fk_heatmap_peaks"):
        NativeKernels(tmp_path / "half.so")
    k, note = load("auto", tmp_path / "half.so")
    assert k is None and note.startswith("numpy/OpenCV: half.so: cannot load")


def test_a_model_swapped_in_whose_quantization_the_kernel_does_not_reproduce_is_reported(tmp_path, monkeypatch, kernels):
    """NATIVE_KERNELS again when a model swapped in (an activation, a rollback) changes what the
    kernels do: here fire_detect with another zero point, which OpenCV rounds with a fused
    multiply-add on this machine (its input then comes the numpy/OpenCV way), then the original
    back. Frames go on without errors throughout."""
    import dataclasses

    from ops_util import flight_apps
    from test_modes import feed_frame

    from flight.inference import TileModel, model_path

    cascade = ('flight.cascade=[{model="cloud_screen"}, {model="fire_detect", when="clear_land"}]')
    with flight_apps(tmp_path, monkeypatch, ["scenario.clock_rate=1.0", cascade], 500.0) as (make, _):
        app, sc = make()
        notes = lambda: [t for t in _flight_event_texts(app) if t.startswith("native kernels: ")]  # noqa: E731
        assert notes() == [f"native kernels: model input native; calibration native ({library_path().name})"]
        other = TileModel(model_path("fire_detect"))
        other.card = dataclasses.replace(other.card, quant_zero_point=3)
        c = other.card
        reproduced = kernels.tiles_u8_matches(c.input_scale / c.quant_scale, 3.0)
        app.swap_model("fire_detect", other)
        feed_frame(app, sc, 0)
        if reproduced:  # nothing changed for the kernels: nothing to report
            assert len(notes()) == 1
        else:
            assert notes()[-1].startswith("native kernels: model input numpy/OpenCV for fire_detect "
                                          "(quantization not reproduced), native for the rest;")
        app.swap_model("fire_detect", TileModel(model_path("fire_detect")))
        feed_frame(app, sc, 1)
        assert notes()[-1] == notes()[0] and len(notes()) == (1 if reproduced else 3)
        assert app.counts["frames_processed"] == 2 and app.counts["errors"] == 0
