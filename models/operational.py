"""What an operator gets from the detectors, end to end: the real flight pipeline (sensor model,
calibration, cloud screen, cascade, prescreens, INT8 detectors, peak merging) on whole scenes,
scored against the simulator's truth.

`python -m models.operational [--demo-frames 60] [--test-scenes 40]` -> models/results/operational.json

The cards' figures (models/README.md) score each detector on the tiles its cascade step passes
(clear water for ships, clear land for fires) over test scenes dense with objects (8-24 ships or
6-19 fires each, 0-35 % cloud). An operator sees something else:

- **recall of every visible object**: an object not hidden under thick cloud and big enough for
  the detector's rule (a ship >= 3 px long, a fire >= 2 hot pixels), wherever it is. One in a
  tile the cloud screen calls cloudy, or on a coast tile whose water index says land, is never
  looked at: it is missed, where the card does not count it;
- **false alarms per area**: a detection farther than 8 px (the models' merge radius) from every
  true object, per 1000 tiles the detector ran on (1000 tiles of 64 x 64 px at 10 m = 410 km^2).
  Precision depends on how many true objects there are: the same false-alarm rate gives 91 %
  precision on the dense test scenes and about 60 % on the demo's scenes (1-3 ships a frame).

Two scene sets: the demo scenario's own frames (`payload_sim/scenarios/demo.toml`: 1024 px, the
simulator's natural mix of sea, coast and land, any cloud cover; frames discarded as cloudy are not
scored, as the flight sends no detections for them) and scenes drawn like ship_detect's fresh test
set (`models.dataset.scene_specs("ship_detect", "test", ...)`). Measurement only: nothing here
chooses a model or a threshold.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np

from payload_sim.hil import MATCH_PX, SCORED, counts_as_visible

RESULTS = Path(__file__).resolve().parent / "results" / "operational.json"
DEMO = Path(__file__).resolve().parent.parent / "payload_sim" / "scenarios" / "demo.toml"
TILE_KM2 = 64 * 64 * 10.0 * 10.0 / 1e6  # one 64 x 64 tile at 10 m


class _CountingModel:
    """A TileModel that counts the tiles it is given."""

    def __init__(self, model):
        self.model, self.tiles = model, 0

    @property
    def card(self):
        return self.model.card

    def run(self, tiles: np.ndarray) -> np.ndarray:
        self.tiles += len(tiles)
        return self.model.run(tiles)


def score_frame(scene, result, searched: set, tile_px: int, clear_max: float, counts: Counter) -> None:
    """Add one processed frame's matches to `counts` (per class: visible, found, missed where the
    detector never looked and why, detections, false alarms). `searched`: (model, tile row, tile
    col) of every tile a detector ran on."""
    for kind, class_id in SCORED.items():
        dets = [d for d in result.detections if d.class_id == class_id]
        for o in scene.objects:
            if o.kind != kind or not counts_as_visible(vars(o)):  # the launcher's rule (payload_sim.hil)
                continue
            counts[f"{kind}_visible"] += 1
            tile = (int(o.row) // tile_px, int(o.col) // tile_px)
            if any(math.hypot(d.row_px - o.row, d.col_px - o.col) <= MATCH_PX for d in dets):
                counts[f"{kind}_found"] += 1
            elif (f"{kind}_detect", *tile) in searched:
                counts[f"{kind}_missed_on_searched_tile"] += 1
            elif result.tile_cloud[tile] >= clear_max:
                counts[f"{kind}_missed_tile_cloudy"] += 1  # the cloud screen's tile fraction >= clear_tile_max_cloud
            else:
                counts[f"{kind}_missed_tile_other"] += 1  # water index says the other surface, or the prescreen
        counts[f"{kind}_detections"] += len(dets)
        counts[f"{kind}_false_alarms"] += sum(
            not any(math.hypot(d.row_px - o.row, d.col_px - o.col) <= MATCH_PX for o in scene.objects) for d in dets)


def run_scenes(scenes, n: int, label: str, overrides: list[str]) -> dict:
    """Every scene of the iterator through a fresh FramePipeline with the demo's cascade."""
    from flight.calibrate import Calibrator
    from flight.config import load_scenario
    from flight.inference import TileModel, model_path
    from flight.pipeline import FramePipeline
    from payload_sim.sensor import Sensor, SensorConfig

    class Recording(FramePipeline):
        """The flight's pipeline, noting which tiles each detector ran on."""

        searched: set = set()

        def _detect(self, step, step_no, tiles, cal, row0, col0, select):
            tp = self.cfg.tile_px
            per_row = len(select) // (cal.shape[1] // tp)  # select: the block's tiles, row-major
            self.searched |= {(step.model, row0 // tp + int(k) // per_row, col0 // tp + int(k) % per_row)
                              for k in np.flatnonzero(select)}
            super()._detect(step, step_no, tiles, cal, row0, col0, select)

    cfg = load_scenario(DEMO, overrides).flight
    models = {s.model: _CountingModel(TileModel(model_path(s.model))) for s in cfg.cascade}
    counts: Counter = Counter()
    sensors: dict = {}
    t0 = time.monotonic()
    for i, scene in enumerate(scenes):
        h, w = scene.reflectance.shape[1:]
        if (h, w) not in sensors:
            sensor = Sensor(SensorConfig(), h, w)
            sensors[(h, w)] = sensor, Calibrator(sensor.calibration_products(version="operational"))
        sensor, cal = sensors[(h, w)]
        raw = sensor.expose(scene.reflectance, np.random.default_rng([20261203, i]))
        pipe = Recording(cfg, cal, models)
        pipe.searched = set()
        pipe.begin(json.dumps({"frame_id": i, "capture_time_s": 0.0, "height": h, "width": w}).encode())
        for r in range(0, h, 128):
            pipe.strip(i, r, min(128, h - r), np.ascontiguousarray(raw[:, r:r + 128]).tobytes())
        result = pipe.finish()
        counts["frames"] += 1
        if result.discarded:
            counts["frames_discarded_cloudy"] += 1
            continue
        score_frame(scene, result, pipe.searched, cfg.tile_px, cfg.clear_tile_max_cloud, counts)
        print(f"\r{label}: {i + 1}/{n} scenes, {time.monotonic() - t0:.0f} s", end="", flush=True)
    print()
    out: dict = {"frames": counts["frames"], "frames_discarded_cloudy": counts["frames_discarded_cloudy"]}
    for kind in SCORED:
        tiles = models[f"{kind}_detect"].tiles
        vis, found, det, fa = (counts[f"{kind}_{k}"] for k in ("visible", "found", "detections", "false_alarms"))
        out[kind] = {
            "visible": vis, "found": found, "recall": round(found / vis, 4) if vis else None,
            "missed_on_searched_tile": counts[f"{kind}_missed_on_searched_tile"],
            "missed_tile_cloudy": counts[f"{kind}_missed_tile_cloudy"],
            "missed_tile_other": counts[f"{kind}_missed_tile_other"],
            "detections": det, "false_alarms": fa, "precision": round(1 - fa / det, 4) if det else None,
            "tiles_run": tiles, "false_alarms_per_1000_tiles": round(1000 * fa / tiles, 1) if tiles else None,
            "false_alarms_per_100_km2": round(100 * fa / (tiles * TILE_KM2), 2) if tiles else None,
        }
    return out


def demo_scenes(n: int):
    from flight.config import load_scenario
    from payload_sim.scenes import synthetic_scene

    sc = load_scenario(DEMO, [])
    s = sc.sensor
    for fid in range(n):
        yield synthetic_scene(sc.scenario.seed, fid, s.height, s.width, s.gsd_m, cloud_cover=s.cloud_cover)


def test_like_scenes(n: int):
    from models.dataset import scene_specs

    for spec in scene_specs("ship_detect", "test", n, 512):
        yield spec.make()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.operational", description=__doc__.split("\n\n")[0])
    p.add_argument("--demo-frames", type=int, default=60)
    p.add_argument("--test-scenes", type=int, default=40)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="flight.KEY=VALUE",
                   help="change the demo's flight settings for both scene sets (repeatable)")
    args = p.parse_args(argv)
    if args.demo_frames < 1 or args.test_scenes < 1:
        p.error("--demo-frames and --test-scenes must be >= 1")
    from flight.inference import model_path

    versions = {name: json.loads(model_path(name).read_text())["version"] for name in ("ship_detect", "fire_detect",
                                                                                         "cloud_screen")}
    results = {
        "models": versions,
        "overrides": args.overrides,
        "demo": run_scenes(demo_scenes(args.demo_frames), args.demo_frames, "demo frames", args.overrides),
        "ship_test_like": run_scenes(test_like_scenes(args.test_scenes), args.test_scenes, "ship test-like scenes",
                                     args.overrides),
        "match_px": MATCH_PX,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
