"""The flight pipeline with its real parts: calibration products, INT8 models, strips."""

import json

import cv2
import numpy as np
import pytest

from flight.calibrate import Calibrator
from flight.config import load_scenario
from flight.dictionary import DetectionClass
from flight.frames import BANDS, Footprint
from flight.inference import TileModel, model_path
from flight.pipeline import STAGES, FramePipeline, encode_chip, tile_ndwi, tiles_of
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


def test_ndwi_separates_water_from_land():
    strip = np.zeros((6, 64, 128), np.uint16)
    strip[BANDS.index("green"), :, :64], strip[BANDS.index("nir"), :, :64] = 600, 100  # water: green > nir
    strip[BANDS.index("green"), :, 64:], strip[BANDS.index("nir"), :, 64:] = 800, 3000  # vegetation
    ndwi = tile_ndwi(strip, 64)
    assert ndwi.shape == (2,) and ndwi[0] > 0.5 and ndwi[1] < -0.3


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


def test_strip_height_does_not_change_the_result(world, pipeline):
    sensor, _ = world
    scene = synthetic_scene(12, 0, H, W)
    raw = sensor.expose(scene.reflectance, np.random.default_rng(6))
    a, b = run_frame(pipeline, raw, 1, 128), run_frame(pipeline, raw, 2, 64)
    assert np.array_equal(a.tile_cloud, b.tile_cloud)
    assert [(d.row_px, d.col_px) for d in a.detections] == [(d.row_px, d.col_px) for d in b.detections]
