"""The flight pipeline with its real parts: calibration products, INT8 models, strips."""

import json

import cv2
import numpy as np
import pytest

from flight.calibrate import Calibrator
from flight.config import load_scenario
from flight.dictionary import DetectionClass
from flight.frames import BANDS, Footprint
from flight.geolocate import pixel_to_latlon
from flight.inference import TileModel, heatmap_peaks, merge_peaks, model_path
from flight.pipeline import (
    STAGES,
    FramePipeline,
    StripBuffers,
    encode_chip,
    tile_contrast,
    tile_ndwi,
    tiles_of,
)
from payload_sim.scenes import synthetic_scene
from payload_sim.sensor import Sensor, SensorConfig

H = W = 512
FP = Footprint((40.0, 40.0, 39.954, 39.954), (49.0, 49.06, 49.06, 49.0))


@pytest.fixture(scope="module")
def world():
    sensor = Sensor(SensorConfig(), H, W)
    return sensor, Calibrator(sensor.calibration_products("test"))


@pytest.fixture(scope="module")
def pipeline(world):
    cfg = load_scenario(None, ['flight.cascade=[{model="cloud_screen"}, {model="ship_detect", when="clear_water"},'
                               ' {model="fire_detect", when="clear_land"}]']).flight
    models = {s.model: TileModel(model_path(s.model)) for s in cfg.cascade}
    return FramePipeline(cfg, world[1], models)


def run_frame(pipe, raw, frame_id=1, strip_rows=128):
    header = json.dumps({"frame_id": frame_id, "capture_time_s": 5.0, "height": H, "width": W, "bands": list(BANDS),
                         "footprint": {"lat_deg": FP.lat_deg, "lon_deg": FP.lon_deg}}).encode()
    pipe.begin(header)
    for r in range(0, H, strip_rows):
        pipe.strip(frame_id, r, strip_rows, np.ascontiguousarray(raw[:, r : r + strip_rows]).tobytes())
    return pipe.finish()


def test_tiles_of_cuts_a_strip_into_channels_last_tiles_in_order():
    strip = np.arange(6 * 64 * 192, dtype=np.uint16).reshape(6, 64, 192)
    t = tiles_of(strip, 64)
    assert t.shape == (3, 64, 64, 6) and t.flags.c_contiguous
    assert np.array_equal(t[2], np.moveaxis(strip[:, :, 128:192], 0, -1))


def test_tiles_of_a_frame_is_row_major():
    frame = np.random.default_rng(1).integers(0, 4000, (6, 128, 192), dtype=np.uint16)
    t = tiles_of(frame, 64)
    assert t.shape == (6, 64, 64, 6)
    assert np.array_equal(t[4], np.moveaxis(frame[:, 64:128, 64:128], 0, -1))  # row 1, column 1


def test_tiles_into_reused_buffers_are_the_same_tiles_and_follow_a_change_of_size():
    rng = np.random.default_rng(3)
    scratch = StripBuffers()
    for bands, rows, width in ((6, 64, 192), (6, 64, 192), (6, 128, 320), (1, 64, 128), (6, 64, 192)):
        strip = rng.integers(0, 65536, (bands, rows, width), dtype=np.uint16)
        got = tiles_of(strip, 64, scratch)
        assert np.array_equal(got, tiles_of(strip, 64)) and got.flags.c_contiguous
        assert np.shares_memory(got, scratch.arrays["tiles"])  # written into the reused buffer, not a new one
    largest = scratch.arrays["tiles"]
    assert largest.size == 10 * 64 * 64 * 6 * 2  # the 128 x 320 strip's 10 tiles: smaller ones reused it
    again = tiles_of(strip, 64, scratch)
    assert np.shares_memory(again, got) and scratch.arrays["tiles"] is largest  # no new buffer


def test_ndwi_separates_water_from_land():
    strip = np.zeros((6, 64, 128), np.uint16)
    strip[BANDS.index("green"), :, :64], strip[BANDS.index("nir"), :, :64] = 600, 100  # water: green > nir
    strip[BANDS.index("green"), :, 64:], strip[BANDS.index("nir"), :, 64:] = 800, 3000  # vegetation
    ndwi = tile_ndwi(strip, 64)
    assert ndwi.shape == (2,) and ndwi[0] > 0.5 and ndwi[1] < -0.3


@pytest.mark.parametrize("shape", [(6, 64, 2048), (6, 200, 130), (6, 512, 512), (6, 63, 640), (6, 10, 10)])
def test_ndwi_is_the_exact_tile_mean_over_the_whole_uint16_range(shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 2**16, shape, dtype=np.uint16)
    image[:, :8] = 65535  # saturated rows: the largest sums a tile can have
    r, c = shape[1] // 64, shape[2] // 64

    def mean(band):  # float64 reference, full tiles only (partial edge tiles are not tiles)
        return image[band, : r * 64, : c * 64].astype(np.float64).reshape(r, 64, c, 64).mean(axis=(1, 3)).reshape(-1)

    g, n = mean(BANDS.index("green")), mean(BANDS.index("nir"))
    want = (g - n) / np.maximum(g + n, 1.0)
    got = tile_ndwi(image, 64)
    assert got.shape == (r * c,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("band", ["nir", "swir22"])
@pytest.mark.parametrize("shape", [(6, 64, 2048), (6, 200, 130), (6, 63, 640), (6, 10, 10)])
def test_contrast_is_the_tile_max_minus_the_tile_mean_over_the_whole_uint16_range(shape, band):
    rng = np.random.default_rng(sum(shape) + 1)
    image = rng.integers(0, 2**16, shape, dtype=np.uint16)
    image[:, :4, :100] = 65535
    r, c = shape[1] // 64, shape[2] // 64
    nir = image[BANDS.index(band), : r * 64, : c * 64].astype(np.float64).reshape(r, 64, c, 64).transpose(0, 2, 1, 3)
    want = (nir.max(axis=(2, 3)) - nir.mean(axis=(2, 3))).reshape(-1)
    got = tile_contrast(image, 64, BANDS.index(band))
    assert got.shape == (r * c,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=0.01)


@pytest.mark.parametrize("model, when, band, cut, scenes", [
    # open sea with a few ships, and with many
    ("ship_detect", "clear_water", "nir", 150.0, [dict(water_fraction=1.0, ships=n) for n in (6, 6, 60)]),
    # land with fires
    ("fire_detect", "clear_land", "swir22", 4000.0, [dict(water_fraction=0.0, fires=n) for n in (3, 8, 20)]),
])
def test_the_prescreen_finds_the_same_objects_on_fewer_tiles(world, model, when, band, cut, scenes):
    sensor, calibrator = world
    nets = {n: TileModel(model_path(n)) for n in ("cloud_screen", model)}
    runs = {}
    for c in (0.0, cut):
        step = f'{{model="{model}", when="{when}", contrast_band="{band}", min_contrast={c}}}'
        cfg = load_scenario(None, [f'flight.cascade=[{{model="cloud_screen"}}, {step}]']).flight
        rec = {n: Recorder(m) for n, m in nets.items()}
        pipe = FramePipeline(cfg, calibrator, rec)
        found = []
        for seed, kw in enumerate(scenes, start=31):
            scene = synthetic_scene(seed, 1, H, W, cloud_cover=0.0, **kw)
            r = run_frame(pipe, sensor.expose(scene.reflectance, np.random.default_rng(seed)), seed)
            found.append([(d.row_px, d.col_px, d.confidence) for d in r.detections])
        runs[c] = found, sum(len(t) for t in rec[model].inputs)
    (found_all, tiles_all), (found_pre, tiles_pre) = runs[0.0], runs[cut]
    assert found_pre == found_all and sum(map(len, found_all)) >= 20
    assert tiles_pre < 0.8 * tiles_all  # tiles with nothing brighter than their surroundings are skipped


def test_no_prescreen_runs_for_a_model_whose_card_does_not_validate_it(world):
    """The configured cut is bounded by the loaded card (FramePipeline.prescreen_cut): a card
    without a prescreen, or with one in another band, runs the detector on every selected tile."""
    import dataclasses

    sensor, calibrator = world
    nets = {n: TileModel(model_path(n)) for n in ("cloud_screen", "ship_detect")}
    scene = synthetic_scene(31, 1, H, W, cloud_cover=0.0, water_fraction=1.0, ships=6)
    raw = sensor.expose(scene.reflectance, np.random.default_rng(31))

    class WithCard(Recorder):
        def __init__(self, model, **changes):
            super().__init__(model)
            self.card = dataclasses.replace(model.card, **changes)

    tiles = {}
    for label, cut, changes in (("off", 0.0, {}), ("on", 150.0, {}),
                                ("no card cut", 150.0, dict(prescreen_band=None, prescreen_max_cut=None)),
                                ("other band", 150.0, dict(prescreen_band="swir22")),
                                ("card cut lower", 150.0, dict(prescreen_max_cut=1.0))):
        step = f'{{model="ship_detect", when="clear_water", contrast_band="nir", min_contrast={cut}}}'
        cfg = load_scenario(None, [f'flight.cascade=[{{model="cloud_screen"}}, {step}]']).flight
        rec = {"cloud_screen": Recorder(nets["cloud_screen"]), "ship_detect": WithCard(nets["ship_detect"], **changes)}
        pipe = FramePipeline(cfg, calibrator, rec)
        run_frame(pipe, raw, 31)
        tiles[label] = sum(len(t) for t in rec["ship_detect"].inputs)
        reasons = [why for _, _, why in pipe.prescreen_limits()]
        assert bool(reasons) == (label in ("no card cut", "other band", "card cut lower")), (label, reasons)
    assert tiles["on"] < tiles["off"] == tiles["no card cut"] == tiles["other band"]
    assert tiles["on"] <= tiles["card cut lower"] <= tiles["off"]


def test_chips_fit_their_byte_cap_and_decode():
    rng = np.random.default_rng(0)
    strip = rng.integers(0, 10000, (6, 64, 256), dtype=np.uint16)  # noise compresses badly
    crop, png = encode_chip(strip, 30.0, 100.0, 32, 1500)
    assert len(png) <= 1500 and crop.shape[1] < 32  # had to shrink to fit
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[:2] == crop.shape[1:]


def test_frame_cloud_fraction_and_fires_match_the_scene(world, pipeline):
    sensor, _ = world
    scene = synthetic_scene(11, 3, H, W, cloud_cover=0.3, water_fraction=0.0, fires=6)
    raw = sensor.expose(scene.reflectance, np.random.default_rng(5))
    r = run_frame(pipeline, raw)
    assert r.tiles == (H // 64) * (W // 64) and set(r.stage_ms) == set(STAGES)
    assert abs(r.cloud_fraction - scene.cloud_fraction) <= 0.10
    fires = [o for o in scene.objects if o.kind == "fire" and not o.occluded and o.pixels >= 2]
    found = [d for d in r.detections if d.class_id == DetectionClass.FIRE]
    assert fires, "the scene should have visible fires"
    hits = sum(any(np.hypot(d.row_px - f.row, d.col_px - f.col) <= 4 for d in found) for f in fires)
    assert hits >= len(fires) - 1
    # merged: no two fire detections of one frame closer than the merge distance
    pts = np.array([(d.row_px, d.col_px) for d in found])
    if len(pts) > 1:
        dist = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
        assert dist[np.triu_indices(len(pts), 1)].min() > pipeline.cfg.merge_px
    for d in found:  # localized inside the footprint
        assert 39.95 <= d.lat_deg <= 40.0 and 49.0 <= d.lon_deg <= 49.06
    # located in one array call per frame: the same values, bit for bit, as one call per detection
    assert r.detections
    for d in r.detections:
        assert (d.lat_deg, d.lon_deg) == pixel_to_latlon(FP, H, W, d.row_px, d.col_px)
        assert type(d.lat_deg) is float and type(d.lon_deg) is float


def test_strip_height_does_not_change_the_result(world, pipeline):
    sensor, _ = world
    scene = synthetic_scene(12, 0, H, W)
    raw = sensor.expose(scene.reflectance, np.random.default_rng(6))
    a, b = run_frame(pipeline, raw, 1, 128), run_frame(pipeline, raw, 2, 64)
    assert np.array_equal(a.tile_cloud, b.tile_cloud)
    assert [(d.row_px, d.col_px) for d in a.detections] == [(d.row_px, d.col_px) for d in b.detections]


@pytest.mark.parametrize("block_rows", [64, 128])
def test_a_strip_calibrated_in_blocks_gives_the_same_frame(world, pipeline, monkeypatch, block_rows):
    """A wide frame's strip is calibrated in blocks of CALIBRATED_BLOCK_BYTES (whole tile rows,
    views of the strip: no copy) so memory stays flat with width. The block size, forced here to
    one or two tile rows of a 256-row strip, does not change the frame: same tile fractions, same
    detections, same chips, bit for bit."""
    import flight.pipeline as fp

    sensor, _ = world
    scene = synthetic_scene(12, 0, H, W)
    raw = sensor.expose(scene.reflectance, np.random.default_rng(6))
    whole = run_frame(pipeline, raw, 1, 256)
    monkeypatch.setattr(fp, "CALIBRATED_BLOCK_BYTES", block_rows * 6 * W * 2)
    blocks = run_frame(pipeline, raw, 2, 256)
    assert np.array_equal(whole.tile_cloud, blocks.tile_cloud)
    assert [(d.class_id, d.score, d.row_px, d.col_px) for d in whole.detections] == \
        [(d.class_id, d.score, d.row_px, d.col_px) for d in blocks.detections]
    assert [c.png for c in whole.chips] == [c.png for c in blocks.chips]


# -- the frame path of issue #16 against the computation it replaced ---------------------------------


class Recorder:
    """A model that keeps a copy of every input it is given."""

    def __init__(self, model):
        self.model, self.card, self.inputs = model, model.card, []

    def run(self, tiles):
        self.inputs.append(tiles.copy())
        return self.model.run(tiles)


def _reference(cfg, calibrator, models, raw, strip_rows):
    """The frame computed as before issue #16, from its parts: every peak of the frame merged, then
    the strongest kept. Returns tile cloud, detections and chips."""
    tp, clouds, found, chips = cfg.tile_px, [], [], []
    for r0 in range(0, raw.shape[1], strip_rows):
        cal = calibrator.calibrate_strip(np.ascontiguousarray(raw[:, r0 : r0 + strip_rows]), r0)
        for r in range(0, strip_rows, tp):
            strip = cal[:, r : r + tp]
            tiles = tiles_of(strip, tp)
            cloud = models["cloud_screen"].run(tiles)
            clouds.append(cloud)
            clear, water = cloud < cfg.clear_tile_max_cloud, tile_ndwi(strip, tp) > cfg.water_ndwi_min
            for step in cfg.cascade[1:]:
                idx = np.flatnonzero(clear & (water if step.when == "clear_water" else ~water))
                if idx.size == 0:
                    continue
                m = models[step.model]
                heat = m.run(tiles[idx])
                cls = {"ship_detect": DetectionClass.SHIP, "fire_detect": DetectionClass.FIRE}[step.model]
                for k, rr, cc, score in heatmap_peaks(heat, m.card.threshold, m.card.stride):
                    col = int(idx[k]) * tp + cc
                    area = int((heat[k] >= m.card.threshold).sum()) * m.card.stride**2
                    found.append((int(cls), float(score), float(r0 + r + rr), float(col), area))
                    if cls.name.lower() in cfg.chip_classes and len(chips) < cfg.chips_per_frame:
                        chip = encode_chip(strip, rr, col, cfg.chip_px, cfg.chip_max_bytes)
                        if chip is not None:
                            chips.append((int(cls), float(r0 + r + rr), float(col), chip[1]))
    merged = []
    for cls in {f[0] for f in found}:
        peaks = [(row, col, score, area) for c, score, row, col, area in found if c == cls]
        merged += [(cls, score, row, col, area) for row, col, score, area in merge_peaks(peaks, cfg.merge_px)]
    return np.stack(clouds), sorted(merged, key=lambda f: -f[1])[: cfg.max_detections_per_frame], chips


@pytest.mark.parametrize("case", [
    dict(scene=dict(cloud_cover=0.3, water_fraction=0.0, fires=12), limit=64, strip_rows=128),
    dict(scene=dict(cloud_cover=0.0, water_fraction=0.5, ships=60, fires=30), limit=64, strip_rows=64, reuse=True),
    # tile rows in blocks of 3 tiles (8 tiles wide: blocks of 3, 3, 2), as a frame wider than BLOCK_TILES goes
    dict(scene=dict(cloud_cover=0.0, water_fraction=0.5, ships=60, fires=30), limit=64, strip_rows=128, reuse=True,
         block=3),
    # the benchmark's worst case, small: hundreds of peaks, and a cap far below them (early stop)
    dict(scene=dict(cloud_cover=0.0, water_fraction=1.0, ships=300), limit=5, strip_rows=128),
    dict(scene=dict(cloud_cover=0.0, water_fraction=1.0, ships=300), limit=64, strip_rows=64, reuse=True),
])
def test_frame_path_is_bit_identical_to_the_previous_computation(world, case, monkeypatch):
    sensor, calibrator = world
    if "block" in case:
        monkeypatch.setattr("flight.pipeline.BLOCK_TILES", case["block"])
    cfg = load_scenario(None, ['flight.cascade=[{model="cloud_screen"}, {model="ship_detect", when="clear_water"},'
                               ' {model="fire_detect", when="clear_land"}]', 'flight.chip_classes=["fire", "ship"]',
                               'flight.chips_per_frame=4', f'flight.max_detections_per_frame={case["limit"]}']).flight
    nets = {s.model: TileModel(model_path(s.model)) for s in cfg.cascade}
    new, old = {n: Recorder(m) for n, m in nets.items()}, {n: Recorder(m) for n, m in nets.items()}
    pipe = FramePipeline(cfg, calibrator, new, reuse_buffers=case.get("reuse", False))
    for seed in (21, 22):
        scene = synthetic_scene(seed, 1, H, W, **case["scene"])
        raw = sensor.expose(scene.reflectance, np.random.default_rng(seed))
        for rec in (*new.values(), *old.values()):
            rec.inputs.clear()
        r = run_frame(pipe, raw, seed, case["strip_rows"])
        cloud, found, chips = _reference(cfg, calibrator, old, raw, case["strip_rows"])
        for n in nets:  # calibrated tiles and every model input, bit for bit, each tile once
            # (the pipeline calls a model once per block of tile rows and columns, the reference once
            # per tile row: the same tiles in another grouping and, with narrow blocks, order)
            if old[n].inputs:
                got, want = np.concatenate(new[n].inputs), np.concatenate(old[n].inputs)
                assert got.shape == want.shape, n
                assert sorted(t.tobytes() for t in got) == sorted(t.tobytes() for t in want), n
                if "block" not in case:  # whole tile rows: the same order too
                    assert np.array_equal(got, want), n
                assert len(new[n].inputs) <= len(old[n].inputs) or "block" in case, n
            else:
                assert not new[n].inputs, n
        assert np.array_equal(r.tile_cloud, cloud)
        assert [(d.class_id, d.confidence, d.row_px, d.col_px, d.area_px) for d in r.detections] == found
        assert [(c.class_id, c.row_px, c.col_px, c.png) for c in r.chips] == chips
    if case["limit"] == 5:
        assert len(found) == 5 and len(old["ship_detect"].inputs) > 0  # the cap did bite



@pytest.mark.parametrize("factor, pieces", [(8, [64] * 4), (64, [64] * 4), (64, [16] * 16), (32, [48, 16, 80, 40, 72]),
                                            (8, [3, 5, 8, 100, 140])])
def test_a_quicklook_is_the_same_whatever_rows_each_strip_brings(factor, pieces):
    from flight.frames import FrameMeta
    from flight.quicklook import QuicklookRing

    h, w = sum(pieces), 128
    cal = np.random.default_rng(factor).integers(0, 4000, (6, h, w), dtype=np.uint16)
    meta = FrameMeta(frame_id=1, capture_time_s=1.0, height=h, width=w, gsd_m=10.0)
    whole, split = QuicklookRing(2, factor), QuicklookRing(2, factor)
    whole.begin(meta)
    whole.add_strip(cal, 0)
    split.begin(meta)
    r = 0
    for n in pieces:
        split.add_strip(cal[:, r : r + n], r)
        r += n
    assert split.carry is None  # every row used
    assert np.array_equal(split.buf, whole.buf) and whole.buf.any()
