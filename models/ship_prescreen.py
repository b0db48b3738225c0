"""Issue #16 experiment: a brightness prescreen before ship_detect.

`python -m models.ship_prescreen` -> models/results/ship_prescreen.json

Open water is dark in the near infrared (surface reflectance 0.003 clear, 0.025 turbid) and every
hull the simulator draws is brighter there (dark hull 0.05, grey deck 0.24, superstructure 0.56),
as are wakes (foam 0.20). A clear-water tile whose brightest NIR pixel is close to its mean NIR
holds no hull and no wake, so ship_detect need not run on it. The statistic per tile is
``max(NIR) - mean(NIR)`` in reflectance units x 10000 (what the flight computes from the
calibrated strip, `flight.pipeline.tile_nir_contrast`).

Protocol, fixed before any run: the threshold is chosen on the 60 validation scenes only, as the
largest grid value at which the INT8 detector's validation recall, precision and true positives
are unchanged (no ship found without the prescreen is lost); it is then reported once on the 40
fresh test scenes (the card's figures) and the 40 development scenes, with the share of tiles the
prescreen spares.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flight.pipeline import tile_nir_contrast
from models import dataset as ds
from models import evaluate as ev

GRID = [0, 25, 50, 75, 100, 150, 200, 250, 300, 400, 500, 600, 800]
OUT = Path(__file__).parent / "results" / "ship_prescreen.json"


def frames_with_contrast(split: str, n: int, run) -> list:
    """detector_frames' records, each with the kept tiles' NIR contrast."""
    out = []
    for spec in ds.scene_specs("ship_detect", split, n, 512):
        scene = spec.make()
        frame = ds.flight_view(scene.reflectance, noise_seed=spec.seed + 7)
        tiles = ds.tiles_of(frame)
        frac = ds.mask_tiles(scene.cloud_mask).mean(axis=(1, 2))
        water = ds.tile_ndwi(frame) > ds.NDWI_MIN
        idx = np.flatnonzero((frac < ds.CLEAR_MAX) & water)
        heat = run(tiles[idx]) if idx.size else None
        cols = 512 // ds.TILE
        kind, min_size, _ = ds.RULES["ship_detect"]
        keep = np.zeros(len(tiles), bool)
        keep[idx] = True
        objs = []
        for o in scene.objects:
            if o.kind != kind:
                continue
            t = int(o.row // ds.TILE) * cols + int(o.col // ds.TILE)
            must = bool(keep[t]) if 0 <= t < len(keep) else False
            must = must and not o.occluded and o.length_px >= min_size and o.pixels > 0
            objs.append((o.row, o.col, must, ev.match_radius("ship_detect", o.length_px)))
        out.append((heat, idx, cols, objs, tile_nir_contrast(frame, ds.TILE)[idx]))
    return out


def score(frames: list, threshold: float, stride: int, cut: float) -> dict:
    """detector_score with the tiles below ``cut`` NIR contrast not run (no peaks)."""
    kept_frames, run_tiles, all_tiles = [], 0, 0
    for heat, idx, cols, objs, con in frames:
        keep = con >= cut
        run_tiles += int(keep.sum())
        all_tiles += int(idx.size)
        kept_frames.append((heat[keep] if heat is not None and keep.any() else None, idx[keep], cols, objs))
    m = ev.detector_score(kept_frames, threshold, stride)
    m["tiles_run"], m["tiles_selected"] = run_tiles, all_tiles
    m["tiles_spared_pct"] = round(100 * (1 - run_tiles / max(all_tiles, 1)), 2)
    return m


def main() -> int:
    from flight.inference import TileModel, model_path

    model = TileModel(model_path("ship_detect"))
    card = model.card
    res = {"model": f"ship_detect {card.version}", "threshold": card.threshold, "statistic": "max(NIR) - mean(NIR), reflectance x 1e4",
           "grid": GRID}
    val = frames_with_contrast("val", 60, model.run)
    res["val"] = {str(c): score(val, card.threshold, card.stride, c) for c in GRID}
    base = res["val"]["0"]
    same = [c for c in GRID if all(res["val"][str(c)][k] == base[k] for k in ("tp", "fp", "fn"))]
    chosen = max(same)
    res["chosen_cut"] = chosen
    for split, n in (("test", 40), ("dev_test", 40)):
        frames = frames_with_contrast(split, n, model.run)
        res[split] = {"without": score(frames, card.threshold, card.stride, 0), "with": score(frames, card.threshold, card.stride, chosen)}
    # the contrast of the tiles holding a ship that must be found, and of those without, for the record
    ship_con = []
    for _, idx, cols, objs, con in val:
        for r, c, must, _ in objs:
            t = int(r // ds.TILE) * cols + int(c // ds.TILE)
            k = np.flatnonzero(idx == t)
            if must and k.size:
                ship_con.append(float(con[k[0]]))
    empty = np.concatenate([con[[not any(int(r // ds.TILE) * cols + int(c // ds.TILE) == t for r, c, _, _ in objs)
                                  for t in idx]] for _, idx, cols, objs, con in val if idx.size])
    res["val_contrast"] = {
        "tiles_with_a_ship_min_p1_p5": [round(float(np.min(ship_con)), 1), round(float(np.percentile(ship_con, 1)), 1),
                                        round(float(np.percentile(ship_con, 5)), 1)],
        "tiles_without_p50_p90_p99": [round(float(np.percentile(empty, q)), 1) for q in (50, 90, 99)],
    }
    OUT.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: res[k] for k in ("chosen_cut", "val_contrast")}, indent=1))
    for split in ("test", "dev_test"):
        for w in ("without", "with"):
            m = res[split][w]
            print(split, w, {k: m[k] for k in ("recall", "precision", "tp", "fp", "fn", "tiles_run", "tiles_spared_pct")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
