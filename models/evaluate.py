"""Metrics for the onboard models, measured through the flight runtime (numpy + onnxruntime).

No torch here: ``python -m models evaluate`` and the tests use this module.

Cloud screening: a tile is cloudy when >= 50 % of its pixels are cloud (truth) or when the
predicted cloud fraction is >= the card threshold (prediction).

Detectors are evaluated per frame, the way the flight pipeline uses them: only tiles the cascade
passes (true cloud fraction < 0.3; ships on tiles with mean NDWI > 0.2, fires on the others) are
run; peaks above the card threshold are mapped to frame coordinates, peaks closer than
``MERGE_PX`` are merged (an object on a tile border is seen from both tiles; the card also gives
the numbers without merging, ``merge_px`` 0), and
each peak is matched greedily (highest score first) to the nearest unmatched object within the
match radius. Objects the rule says must be found (ships >= 3 px long, fires >= 2 hot pixels, not
occluded by thick cloud) count for recall; a peak on an object the rule does not require (a
smaller or occluded one) is neither a hit nor a false alarm.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from models import dataset as ds

MERGE_PX = 8.0  # objects are >= 13 px apart in the simulator; a border object is seen from both tiles


# --------------------------------------------------------------------------------------- cloud
def cloud_metrics(pred: np.ndarray, true_frac: np.ndarray, threshold: float = 0.5) -> dict:
    pred = np.asarray(pred, np.float64)
    true_frac = np.asarray(true_frac, np.float64)
    p, t = pred >= threshold, true_frac >= 0.5
    n_clear, n_cloudy = int((~t).sum()), int(t.sum())
    return {
        "tiles": int(len(p)),
        "tile_accuracy": round(float(np.mean(p == t)) if len(p) else float("nan"), 5),
        "clear_tiles": n_clear,
        "cloudy_tiles": n_cloudy,
        "clear_as_cloudy": int((p & ~t).sum()),
        "cloudy_as_clear": int((~p & t).sum()),
        "clear_as_cloudy_rate": round(float((p & ~t).sum() / max(n_clear, 1)), 5),
        "cloudy_as_clear_rate": round(float((~p & t).sum() / max(n_cloudy, 1)), 5),
        "fraction_mae": round(float(np.abs(pred - true_frac).mean()), 5),
        "frame_cloud_fraction_true": round(float(true_frac.mean()), 5),
        "frame_cloud_fraction_pred": round(float(pred.mean()), 5),
    }


def frame_fraction_errors(pred: np.ndarray, true_frac: np.ndarray, frame: np.ndarray) -> dict:
    errs = np.array([abs(pred[frame == k].mean() - true_frac[frame == k].mean()) for k in np.unique(frame)])
    return {"frames": int(len(errs)), "frame_fraction_abs_err_mean": round(float(errs.mean()), 5),
            "frame_fraction_abs_err_max": round(float(errs.max()), 5),
            "frames_within_10pp": round(float(np.mean(errs <= 0.10)), 5)}


def evaluate_scene(path, card_path=None, precision: str = "int8", noise_seed: int = 0) -> dict:
    """A real (or any .npz with 'img' and 'msk') scene through sensor model + calibration + cloud model."""
    from flight.inference import TileModel, model_path

    card_path = card_path or model_path("cloud_screen")
    model = TileModel(card_path, precision=precision)
    tiles, truth = ds.load_real(path, noise_seed=noise_seed)
    pred = model.run(tiles)
    out = {"scene": str(path), "model": model.card.name, "version": model.card.version, "precision": precision,
           "sensor_noise_seed": noise_seed, "threshold": model.card.threshold, "counts_are": "tiles"}
    out.update(cloud_metrics(pred, truth, model.card.threshold))
    heldout = trained_half(card_path, path)
    if heldout is not None:
        held = ds.real_heldout(heldout, 512)
        if len(held) == len(tiles):
            out["trained_on_part_of_this_scene"] = True
            out["heldout"] = {"tiles_are": f"tiles outside the {heldout} half this model was trained on",
                              **cloud_metrics(pred[held], truth[held], model.card.threshold)}
    return out


def trained_half(card_path, scene_path) -> str | None:
    """The fold ('west' / 'east') of ``scene_path`` the model's training used, when the card says
    training saw part of this scene (matched by the scene file's sha256); else None."""
    import hashlib

    card = json.loads(Path(card_path).read_text())
    real = card.get("real_scene_metrics") or {}
    use = real.get("training_use") or {} if isinstance(real, dict) else {}
    if not isinstance(real, dict) or not isinstance(use, dict):  # an odd card: no training use recorded
        return None
    digest = hashlib.sha256(Path(scene_path).read_bytes()).hexdigest()
    if any(isinstance(v, dict) and v.get("sha256") == digest for v in real.values()) and use.get("fold"):
        return str(use["fold"])
    return None


# ----------------------------------------------------------------------------------- detectors
def frame_peaks(heat: np.ndarray, tile_idx: np.ndarray, cols: int, threshold: float, stride: int,
                merge_px: float = MERGE_PX) -> list:
    """Heatmaps of selected tiles -> merged peaks [(row, col, score)] in frame pixel coordinates."""
    from flight.inference import heatmap_peaks, merge_peaks

    peaks = []
    for k, r, c, s in heatmap_peaks(heat, threshold, stride):
        t = int(tile_idx[k])
        peaks.append(((t // cols) * ds.TILE + r, (t % cols) * ds.TILE + c, s))
    return merge_peaks(peaks, merge_px) if merge_px > 0 else sorted(peaks, key=lambda p: -p[2])


def match(peaks: list, objects: list, radius) -> dict:
    """Greedy matching. objects: [(row, col, must, radius_px)]. Returns tp, fp, fn, errors."""
    used = [False] * len(objects)
    tp = fp = 0
    errors = []
    for r, c, _ in peaks:
        best, bd = -1, float("inf")
        for j, (orow, ocol, _must, rad) in enumerate(objects):
            d = math.hypot(r - orow, c - ocol)
            if not used[j] and d <= rad and d < bd:
                best, bd = j, d
        if best < 0:
            # a second peak on an already matched object is a false alarm unless the object
            # need not be found; a peak near an ignorable object is ignored
            near_ignorable = any(not o[2] and math.hypot(r - o[0], c - o[1]) <= o[3] for o in objects)
            if not near_ignorable:
                fp += 1
            continue
        used[best] = True
        if objects[best][2]:
            tp += 1
            errors.append(bd)
    fn = sum(1 for j, o in enumerate(objects) if o[2] and not used[j])
    return {"tp": tp, "fp": fp, "fn": fn, "errors": errors}


def match_radius(model: str, length_px: float) -> float:
    return max(5.0, 0.3 * length_px) if model == "ship_detect" else max(6.0, 0.5 * length_px + 3.0)


def detector_frames(model_name: str, run, split: str = "test", n: int = 30, size: int = 512, tile_stat=None) -> list:
    """Run a detector over generated frames once: [(heatmaps, tile_idx, cols, objects)], where
    objects are [(row, col, must_find, match_radius_px)]. ``run`` maps uint16 tiles -> heatmaps.
    ``tile_stat(frame) -> per-tile values`` adds them, for the selected tiles, as a fifth item."""
    frames = []
    for spec in ds.scene_specs(model_name, split, n, size):
        scene = spec.make()
        frame = ds.flight_view(scene.reflectance, noise_seed=spec.seed + 7)
        tiles = ds.tiles_of(frame)
        cols = size // ds.TILE
        frac = ds.mask_tiles(scene.cloud_mask).mean(axis=(1, 2))
        water = ds.tile_ndwi(frame) > ds.NDWI_MIN
        keep = (frac < ds.CLEAR_MAX) & (water if model_name == "ship_detect" else ~water)
        idx = np.flatnonzero(keep)
        heat = run(tiles[idx]) if idx.size else None
        record = (heat, idx, cols, detector_objects(model_name, scene.objects, keep, cols))
        frames.append(record if tile_stat is None else (*record, tile_stat(frame)[idx]))
    return frames


def detector_objects(model_name: str, objects, keep: np.ndarray, cols: int) -> list:
    """A scene's objects of the detector's kind as [(row, col, must_find, match_radius_px)]: must
    be found when on a tile the cascade passes (``keep``), not occluded and large enough."""
    kind, min_size, attr = ds.RULES[model_name]
    objs = []
    for o in objects:
        if o.kind != kind:
            continue
        t = int(o.row // ds.TILE) * cols + int(o.col // ds.TILE)
        size_v = o.length_px if attr == "length_px" else o.pixels
        must = bool(keep[t]) if 0 <= t < len(keep) else False
        must = must and not o.occluded and size_v >= min_size and o.pixels > 0
        objs.append((o.row, o.col, must, match_radius(model_name, o.length_px)))
    return objs


def detector_score(frames: list, threshold: float, stride: int, merge_px: float = MERGE_PX) -> dict:
    tp = fp = fn = tiles = 0
    errors: list = []
    for heat, idx, cols, objs in frames:
        peaks = frame_peaks(heat, idx, cols, threshold, stride, merge_px) if heat is not None else []
        m = match(peaks, objs, None)
        tp, fp, fn = tp + m["tp"], fp + m["fp"], fn + m["fn"]
        errors += m["errors"]
        tiles += int(idx.size)
    err = np.array(errors) if errors else np.array([np.nan])
    return {
        "frames": len(frames), "tiles_run": tiles, "objects": tp + fn, "threshold": threshold, "merge_px": merge_px,
        "tp": tp, "fp": fp, "fn": fn,
        "recall": round(tp / max(tp + fn, 1), 5), "precision": round(tp / max(tp + fp, 1), 5),
        "position_error_px_mean": round(float(np.nanmean(err)), 3),
        "position_error_px_p90": round(float(np.nanpercentile(err, 90)), 3),
    }


def tune_threshold(frames: list, stride: int, grid=None, rule: str = "f1") -> tuple[float, dict]:
    """Threshold chosen on (validation) frames: the best F1, or with rule "min_recall_precision"
    the best of the smaller of recall and precision (for targets that ask both to reach a level)."""
    grid = grid if grid is not None else [round(0.1 + 0.05 * i, 2) for i in range(17)]
    best = None
    for thr in grid:
        m = detector_score(frames, thr, stride)
        p, r = m["precision"], m["recall"]
        score = min(p, r) if rule == "min_recall_precision" else 2 * p * r / max(p + r, 1e-9)
        if best is None or score > best[0] + 1e-9:
            best = (score, thr, m)
    return best[1], best[2]


def main_evaluate(scene: str, precision: str = "int8", noise_seed: int = 0, card: str | None = None) -> int:
    out = evaluate_scene(scene, card, precision, noise_seed)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    raise SystemExit(main_evaluate(sys.argv[1]))
