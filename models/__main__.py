"""Onboard models: build, verify, evaluate.

    python -m models verify                    every model matches its card and its golden vectors
    python -m models evaluate --scene X.npz    a real scene through sensor + calibration + cloud model
    python -m models build [--only NAME]       regenerate data, train, export, quantize, card, golden
    python -m models restem                    the committed INT8 files with the faster stem (no retraining)

``verify`` and ``evaluate`` need numpy + onnxruntime only; ``build`` needs the ``train`` extra
(torch, onnx).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODELS_DIR = Path(__file__).resolve().parent
GOLDEN_DIR = MODELS_DIR / "golden"
MAX_INT8_BYTES = 256 * 1024
FP32_GOLDEN_ATOL = 1e-5  # FP32 may differ across CPUs (NOTES.md: up to 7e-7 x86 vs aarch64)


def _log(msg: str) -> None:
    print(msg, flush=True)


# ============================================================================================ verify
def verify(models_dir: Path = MODELS_DIR, log=_log) -> int:
    """Check every card in ``models_dir``: hash, size, I/O spec, golden vectors. Returns the number
    of failed models."""
    from flight.inference import ModelCard, ModelError, TileModel

    cards = sorted(models_dir.glob("*.card.json"))
    if not cards:
        log(f"FAIL no model cards in {models_dir}")
        return 1
    failed = 0
    for card_path in cards:
        name = card_path.name.removesuffix(".card.json")
        try:
            card = ModelCard.load(card_path)
            if card.name != name:
                raise ModelError(f"card file is {card_path.name} but names model {card.name!r}", model=name, path=card_path)
            if card.size_bytes > MAX_INT8_BYTES:
                raise ModelError(f"INT8 file is {card.size_bytes} bytes, limit {MAX_INT8_BYTES}", model=name, path=card_path)
            model = TileModel(card_path, batch_size=64)
            gpath = models_dir / "golden" / f"{name}.npz"
            with np.load(gpath, allow_pickle=False) as g:
                tiles, want = g["tiles"], g["int8"]
                want32 = g["fp32"] if "fp32" in g.files else None
                gsha = str(g["sha256"]) if "sha256" in g.files else None
            if gsha is not None and gsha != card.sha256:
                raise ModelError(f"golden vectors were made for sha256 {gsha[:12]}, card has {card.sha256[:12]}", model=name, path=gpath)
            got = model.run(tiles)
            if got.shape != want.shape or not np.array_equal(got, want):
                diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("nan")
                raise ModelError(f"INT8 output differs from golden (max |d| {diff:.3g}); expected bit-exact", model=name, path=gpath)
            one = np.concatenate([model.run(tiles[i: i + 1]) for i in range(len(tiles))])
            if not np.array_equal(one, want):
                raise ModelError("INT8 output depends on batch size (batch 1 vs full batch differ)", model=name, path=gpath)
            msg32 = "no fp32"
            if card.fp32_file is not None and want32 is None:
                # the FP32 file would otherwise be compared with nothing and reported OK ("max|d| nan")
                raise ModelError("card has an FP32 file but the golden vectors have no 'fp32' outputs", model=name, path=gpath)
            if card.fp32_file is not None:
                m32 = TileModel(card_path, precision="fp32")
                got32 = m32.run(tiles)
                if want32 is not None and got32.shape != want32.shape:
                    # compared by broadcasting, FP32 golden outputs of another shape (one row for
                    # several tiles) verified OK; INT8 already needed the same shape
                    raise ModelError(f"FP32 output shape {got32.shape} differs from golden {want32.shape}",
                                     model=name, path=gpath)
                d32 = float(np.max(np.abs(got32 - want32))) if want32 is not None else float("nan")
                if want32 is not None and not d32 <= FP32_GOLDEN_ATOL:
                    raise ModelError(f"FP32 output differs from golden by {d32:.3g} > {FP32_GOLDEN_ATOL}", model=name, path=gpath)
                msg32 = f"fp32 max|d| {d32:.1e} <= {FP32_GOLDEN_ATOL:g}"
            log(f"OK   {name} {card.version} {card.kind} sha256 {card.sha256[:12]} {card.size_bytes / 1024:.1f} KiB "
                f"{card.macs_per_tile / 1e6:.2f} MMAC/tile; golden {len(tiles)} tiles INT8 bit-exact (batch 1 and {len(tiles)}); {msg32}")
        except Exception as exc:  # noqa: BLE001 - any failure is this model's FAIL; the others are still verified
            # (a golden file that is not a zip, golden outputs of a non-numeric dtype, a card nested too deep
            # raised past the narrower list and stopped verify with a traceback)
            failed += 1
            kind = "" if isinstance(exc, ModelError | OSError | KeyError | ValueError) else f"{type(exc).__name__}: "
            log(f"FAIL {name}: {kind}{exc}")
    log(f"{len(cards) - failed}/{len(cards)} models verified")
    return failed


# ========================================================================================== evaluate
def evaluate_cmd(args) -> int:
    from flight.inference import ModelError
    from models.evaluate import evaluate_scene

    # a bad scene or card is a user error: one line and exit 2, not a traceback
    try:
        out = evaluate_scene(args.scene, args.card, args.precision, args.noise_seed)
    except (ModelError, ValueError, OSError, KeyError) as exc:
        print(f"models evaluate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


# ============================================================================================= build
# Sizes of the generated data sets (scenes of SIZE x SIZE pixels at 10 m, see models/dataset.py).
PLAN = {
    "cloud_screen": dict(kind="tile_fraction", stride=64, output="cloud_fraction", version="2.0.2",
                         train=100, val=20, test=40, size=512, epochs=8, width=16, embed="conv", ctx=0,
                         thin_weight=0.5, real_share=0.0, real_crops=1000, real_fold="west"),
    "fire_detect": dict(kind="heatmap", stride=4, output="fire_heatmap", version="2.0.2",
                        train=120, val=24, test=40, size=512, epochs=14, width=16, depth=2, dilations=(1, 2),
                        sigma_px=2.0, sigma_per_length=0.5, pos_weight=20.0, cloudy_boost=1.0),
    "ship_detect": dict(kind="heatmap", stride=4, output="ship_heatmap",
                        train=400, val=60, test=40, size=512, epochs=48, width=32, depth=3, dilations=(1, 2, 4),
                        stem="s2", sigma_px=2.0, sigma_per_length=0.15, pos_weight=10.0, cloudy_boost=3.0,
                        qat_epochs=6, calibrate="MinMax", calib_tiles=256, threshold_rule="min_recall_precision",
                        hard_weight=4.0, version="2.1.2"),
}
BUILD_ORDER = ("cloud_screen", "fire_detect", "ship_detect")
CALIB_TILES = 512
GOLDEN_TILES = 6
TRAIN_SEED = 1
# What models.export.merge_stem_columns and stem_over_cells did to the INT8 file (written into the card).
STEM_NOTE = ("INT8 file only: it takes its tiles in k x k cells, (N, 64/k, 64/k, 6k^2) (int8_input_cell k; "
             "flight.inference.to_cells, or the native tile kernel directly), and the k x k stride-k stem convolution "
             "runs as 1 x 1 over 6k^2 channels with its weights reordered: same integer products and sums, "
             "bit-identical outputs. Over merged columns (k x 1 over 6k channels, the input only reshaped) it took "
             "1.3-1.9x less model time than the plain stem, over cells another 1.1-1.4x (docs/benchmarks.md). The "
             "FP32 file keeps the plain stem and input: onnxruntime's float kernels ran the rewritten ones slower "
             "(0.66-0.69x over merged columns, 0.86-0.95x over cells).")

INPUT_TEXT = ("uint8 (N, 64, 64, 6), channels last: uint16 calibrated reflectance tiles (reflectance * 10000) "
              "quantized as round(tile * input_scale / input_quant.scale) + input_quant.zero_point, saturated to "
              "0..255 (flight.inference.quantize_tiles); bands blue green red nir swir16 swir22. Both files take this "
              "input, the INT8 file in int8_input_cell x int8_input_cell cells (flight.inference.to_cells); the FP32 "
              "file dequantizes it first. No other normalisation.")

DESCRIPTION = {
    "cloud_screen": "Cloud screening: fraction of the tile's pixels that are cloud (thick cloud, semi-transparent rims "
                    "and cirrus dense enough to count in the simulator's truth). A tile is cloudy when the output is "
                    ">= threshold (the issue's rule: >= 50 % cloud pixels). The graph predicts a 16x16 map of 4x4-pixel "
                    "cells and outputs their mean.",
    "fire_detect": "Active fire detection on clear land tiles: heatmap of fire-front centres, one cell per 4x4 pixels; "
                   "peaks above threshold are fires (flight.inference.heatmap_peaks).",
    "ship_detect": "Ship detection on clear water tiles: heatmap of ship centres, one cell per 4x4 pixels; peaks above "
                   "threshold are ships, positioned by the weighted centroid of the 3x3 cells around the peak.",
}
OUTPUT_MEANING = {
    "tile_fraction": "float32 (N,): cloud fraction of each tile in [0, 1]",
    "heatmap": "float32 (N, 64/stride, 64/stride): probability that an object centre lies in the cell",
}
LIMITS = {
    "cloud_screen": [
        "Trained on simulated scenes only; the two real Landsat scenes are never used for training. Its real-scene "
        "accuracy (card: real_scene_metrics) is below the 92 % target, and 128 mostly borderline tiles (35-50 % "
        "cloud) are too few to tell a better recipe from noise: the training seed alone moves it between 101 and "
        "115 of 128 (seeds 1-7; this build is seed 1).",
        "Faint cloud: the simulator counts water cloud from opacity 0.25 and cirrus where it adds >= 0.04 red "
        "reflectance. The Landsat-7 reference mask also marks faint haze veils around cumulus over bright arid land, "
        "which this model calls clear (9 of that scene's 22 cloudy tiles; docs/gallery/real_tiles_landsat7.png); "
        "the Landsat-5 mask is tight around bright cumulus. Training on half of each real scene and a 10x larger "
        "model with spatial context did not close the gap on held-out tiles (models/README.md).",
        "No cloud-shadow class: shadows are 'clear'.",
    ],
    "fire_detect": ["Trained and evaluated on simulated fires only (Planck emission, 850-1250 K); no real fire scenes.",
                    "Fires under thick cloud are not required to be found; smoke is transparent in swir."],
    "ship_detect": ["Trained and evaluated on simulated ships only (3-30 px at 10 m).",
                    "A ship whose centre lies on a tile border may be reported from both tiles; merge peaks closer than "
                    "8 px across tile borders (the pipeline and the evaluation do).",
                    "Precision is at the target's edge (compare metrics.int8 with metrics.dev_test_int8, another "
                    "40-scene set): cloudlet edges, coasts and cloud shadow over water make most false alarms."],
}


def _limits(name: str, plan: dict) -> list[str]:
    if not plan.get("real_share"):
        return LIMITS[name]
    # cloud_screen trained on half of each real scene (--real-share): the first line says so
    return [f"Trained on simulated scenes plus crops from one half ({plan['real_fold']}) of each of the two real "
            "Landsat scenes; its real-scene accuracy is measured on the other half only (card: real_scene_metrics); "
            "the halves share a scene and its labelling conventions."] + LIMITS[name][1:]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _card_dict(name, plan, int8, fp32, threshold, macs, quant, extra) -> dict:
    from flight.frames import BANDS
    from models import export as ex

    d = {
        "format_version": 1,
        "name": name, "version": plan["version"], "kind": plan["kind"],
        "file": int8.name, "sha256": _sha(int8), "size_bytes": int8.stat().st_size,
        "fp32_file": fp32.name, "fp32_sha256": _sha(fp32), "fp32_size_bytes": fp32.stat().st_size,
        "input_name": "tiles_u8", "input_shape": [None, 64, 64, 6], "int8_input_cell": ex.input_cell(int8),
        "bands": list(BANDS), "input_scale": 1e-4,
        "input_quant": {"scale": quant[0], "zero_point": quant[1]},
        "input": INPUT_TEXT,
        "output_name": plan["output"], "output": OUTPUT_MEANING[plan["kind"]],
        "stride": plan["stride"], "threshold": float(threshold), "macs_per_tile": int(macs),
        "description": DESCRIPTION[name],
        "limitations": _limits(name, plan),
    }
    d.update(extra)
    return d


def _write_card(path: Path, d: dict) -> None:
    path.write_text(json.dumps(d, indent=2) + "\n")


def _bench(card_path: Path, tiles: np.ndarray, precision: str = "int8", repeats: int = 7) -> float:
    """ms per tile, 1 thread, batch 64, through TileModel.run (including the uint16 -> float32
    conversion); the best of ``repeats`` passes over ``tiles``, because the build machine is
    shared and the slower passes measure the neighbours."""
    from flight.inference import TileModel

    m = TileModel(card_path, intra_op_threads=1, batch_size=64, precision=precision)
    m.run(tiles[:64])
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        m.run(tiles)
        times.append((time.perf_counter() - t) * 1e3 / len(tiles))
    return round(float(np.min(times)), 4)


def _golden_pick(name, tiles, score, rng) -> np.ndarray:
    """A few test tiles that exercise the model: both decisions and borderline cases."""
    order = np.argsort(score)
    n = len(tiles)
    picks = [order[0], order[n // 4], order[n // 2], order[(3 * n) // 4], order[-2], order[-1]]
    return np.unique(np.array(picks[:GOLDEN_TILES]))


def _need_real_scenes() -> None:
    from models import dataset as ds

    missing = [n for n in ds.REAL_SCENES if not (ds.real_dir() / f"{n}.npz").exists()]
    if missing:
        raise SystemExit(f"cloud_screen trains on half of each real scene, but {ds.real_dir()} lacks {missing}: "
                         "build it where ../shared/data/real is present")


def _real_scene_metrics(plan, m8, m32, threshold, train, log) -> dict:
    """Real-scene accuracy of the shipped model on the tiles its training never saw (the other half
    of each scene), and of the opposite fold (trained on the other halves, measured on these) as a
    cross-check: together a two-fold estimate over all 128 tiles. Also all tiles, marked as such."""
    import tempfile

    from models import dataset as ds
    from models import evaluate as ev
    from models import export as ex
    from models import train as tr

    if not plan.get("real_share"):  # never trained on real tiles: every tile is held out
        out: dict = {}
        for scene in ds.REAL_SCENES:
            path = ds.real_dir() / f"{scene}.npz"
            if path.exists():
                tiles, truth = ds.load_real(path)
                out[scene] = {"sha256": _sha(path), "heldout_int8": ev.cloud_metrics(m8.run(tiles), truth, threshold),
                              "heldout_fp32": ev.cloud_metrics(m32.run(tiles), truth, threshold)}
        if out:
            n = sum(v["heldout_int8"]["tiles"] for v in out.values())
            ok = sum(v["heldout_int8"]["tiles"] - v["heldout_int8"]["clear_as_cloudy"] - v["heldout_int8"]["cloudy_as_clear"]
                     for v in out.values())
            out["heldout_int8_tile_accuracy"] = round(ok / n, 5)
            out["note"] = ("Real Landsat-7 / Landsat-5 TOA scenes (shared/data/real, DLR ukis-csmask test files) run "
                           "through payload_sim.sensor (noise seed 0) and flight.calibrate; never used for training.")
            log(f"  real scenes (never trained on): {ok}/{n} = {ok / n:.4f}")
        return out
    _need_real_scenes()
    fold = plan["real_fold"]
    other = next(f for f in ds.REAL_FOLDS if f != fold)
    log(f"== cloud_screen: cross-check fold {other!r} (trained on the {other} halves, measured on the {fold} tiles)")
    crops = ds.real_crops(other, plan["real_crops"], seed=TRAIN_SEED)
    cross = tr.train_cloud(train, epochs=plan["epochs"], seed=TRAIN_SEED, c=plan["width"], embed=plan["embed"],
                           ctx=plan["ctx"], thin_weight=plan["thin_weight"], real=crops, real_share=plan["real_share"],
                           cell=plan.get("cell", 4), log=lambda m: None)
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(TRAIN_SEED)
        calib = train["tiles"][np.sort(rng.choice(len(train["tiles"]), size=CALIB_TILES, replace=False))]
        quant = ex.flight_files(cross, plan["output"], calib, Path(tmp) / "cross.u8.onnx", Path(tmp) / "cross.u8.fp32.onnx", tmp)
        cross_run = _plain_runner(Path(tmp) / "cross.u8.onnx", quant)
        out: dict = {}
        right = total = 0
        for scene in ds.REAL_SCENES:
            path = ds.real_dir() / f"{scene}.npz"
            tiles, truth = ds.load_real(path)
            held = ds.real_heldout(fold, 512)
            assert len(tiles) == len(held), f"{path}: expected a 512 x 512 scene"
            r8, r32, rx = m8.run(tiles), m32.run(tiles), cross_run(tiles)
            out[scene] = {
                "sha256": _sha(path),
                "heldout_int8": ev.cloud_metrics(r8[held], truth[held], threshold),
                "heldout_fp32": ev.cloud_metrics(r32[held], truth[held], threshold),
                f"cross_fold_{other}_int8_on_{fold}_tiles": ev.cloud_metrics(rx[~held], truth[~held], threshold),
                "all_tiles_int8_includes_trained": ev.cloud_metrics(r8, truth, threshold),
            }
            for key in ("heldout_int8", f"cross_fold_{other}_int8_on_{fold}_tiles"):
                m = out[scene][key]
                right += m["tiles"] - m["clear_as_cloudy"] - m["cloudy_as_clear"]
                total += m["tiles"]
    held_n = sum(out[s]["heldout_int8"]["tiles"] for s in ds.REAL_SCENES)
    held_ok = sum(out[s]["heldout_int8"]["tiles"] - out[s]["heldout_int8"]["clear_as_cloudy"]
                  - out[s]["heldout_int8"]["cloudy_as_clear"] for s in ds.REAL_SCENES)
    out["heldout_int8_tile_accuracy"] = round(held_ok / held_n, 5)
    out["two_fold_int8_tile_accuracy"] = round(right / total, 5)
    out["training_use"] = {
        "fold": fold, "train_columns": list(ds.real_half_cols(fold, 512)),
        "crops": f"{plan['real_crops']} random 64x64 crops per scene inside those columns, sensor noise seed "
                 f"{ds.REAL_TRAIN_NOISE_SEED}; {plan['real_share']:.0%} of the tiles drawn per epoch",
        "heldout": "tiles wholly outside the training columns (the other half of each scene), sensor noise seed 0",
        "selection": f"real_share and epochs were chosen on the cross-check fold {other!r} only (its held-out "
                     f"tiles are the {fold} half); the shipped fold's held-out tiles were not looked at before "
                     "the configuration was fixed",
    }
    out["note"] = ("Real Landsat-7 / Landsat-5 TOA scenes (shared/data/real, DLR ukis-csmask test files) run through "
                   "payload_sim.sensor and flight.calibrate.")
    log(f"  real scenes: held-out {held_ok}/{held_n} = {held_ok / held_n:.4f}; two-fold {right}/{total} = {right / total:.4f}")
    return out


def _plain_runner(path: Path, quant: tuple[float, int]):
    """uint16 tiles -> outputs of an ONNX file with no card (build-time cross-checks only)."""
    import onnxruntime as ort

    from flight.inference import quantize_tiles, to_cells

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    cell = 64 // sess.get_inputs()[0].shape[1]  # an INT8 file over cells (models.export.stem_over_cells)

    def run(tiles: np.ndarray) -> np.ndarray:
        outs = [sess.run(None, {name: to_cells(quantize_tiles(tiles[i: i + 64], *quant), cell)})[0].reshape(-1)
                for i in range(0, len(tiles), 64)]
        return np.clip(np.concatenate(outs), 0.0, 1.0)

    return run


def build_one(name: str, log=_log) -> dict:
    import torch

    from flight.inference import TileModel
    from models import dataset as ds
    from models import evaluate as ev
    from models import export as ex
    from models import train as tr

    plan = PLAN[name]
    t0 = time.time()
    log(f"== {name}: data")
    size = plan["size"]
    train = ds.build(name, "train", plan["train"], size, log=log)
    log(f"  train tiles {len(train['tiles'])} ({time.time() - t0:.0f} s)")
    torch.set_num_threads(1)
    log(f"== {name}: train ({plan['epochs']} epochs)")
    if name == "cloud_screen":
        real_crops = None
        if plan.get("real_share", 0) > 0:
            _need_real_scenes()
            real_crops = ds.real_crops(plan["real_fold"], plan["real_crops"], seed=TRAIN_SEED)
            log(f"  real crops: {len(real_crops['tiles'])} from the {plan['real_fold']} halves of {', '.join(ds.REAL_SCENES)}")
        model = tr.train_cloud(train, epochs=plan["epochs"], seed=TRAIN_SEED, c=plan["width"], embed=plan["embed"],
                               ctx=plan["ctx"], thin_weight=plan["thin_weight"], real=real_crops,
                               real_share=plan.get("real_share", 0.0), cell=plan.get("cell", 4), log=log)
    else:
        model = tr.train_heat(train, stride=plan["stride"], epochs=plan["epochs"], seed=TRAIN_SEED, c=plan["width"],
                              depth=plan["depth"], dilations=plan["dilations"], sigma_px=plan["sigma_px"],
                              sigma_per_length=plan["sigma_per_length"], pos_weight=plan["pos_weight"],
                              cloudy_boost=plan["cloudy_boost"], stem=plan.get("stem", "patch"), act=plan.get("act", "relu"),
                              qat_epochs=plan.get("qat_epochs", 0), hard_weight=plan.get("hard_weight", 0.0),
                              stem_c=plan.get("stem_c"), name=name, log=log)
    log(f"  trained ({time.time() - t0:.0f} s)")

    fp32 = MODELS_DIR / f"{name}.fp32.onnx"
    int8 = MODELS_DIR / f"{name}.onnx"
    work = Path(tempfile.mkdtemp(prefix=f"{name}_build_"))  # the float-input graphs, for layer comparisons
    float_fp32, float_int8 = work / "float_input.fp32.onnx", work / "float_input.int8.onnx"  # flight_files writes them
    rng = np.random.default_rng(TRAIN_SEED)
    n_calib = min(plan.get("calib_tiles", CALIB_TILES), len(train["tiles"]))
    calib = train["tiles"][np.sort(rng.choice(len(train["tiles"]), size=n_calib, replace=False))]
    # INT8 stem over merged columns; the FP32 file keeps its plain stem (see STEM_NOTE)
    quant = ex.flight_files(model, plan["output"], calib, int8, fp32, work, plan.get("calibrate", "MinMax"))
    macs = ex.count_macs(float_fp32)
    card_path = MODELS_DIR / f"{name}.card.json"
    _write_card(card_path, _card_dict(name, plan, int8, fp32, 0.5, macs, quant, {}))
    m8 = TileModel(card_path)
    m32 = TileModel(card_path, precision="fp32")
    log(f"  exported: INT8 {int8.stat().st_size / 1024:.1f} KiB, FP32 {fp32.stat().st_size / 1024:.1f} KiB, {macs / 1e6:.3f} MMAC/tile")

    extra: dict = {}
    extra_metrics: dict = {}
    if name == "cloud_screen":
        threshold = 0.5  # the tile rule; the model is trained to output calibrated fractions
        test = ds.build(name, "test", plan["test"], size, log=log)
        truth = test["cells"].reshape(len(test["cells"]), -1).mean(axis=1) / 16.0
        p8, p32 = m8.run(test["tiles"]), m32.run(test["tiles"])
        met8, met32 = ev.cloud_metrics(p8, truth, threshold), ev.cloud_metrics(p32, truth, threshold)
        met8.update(ev.frame_fraction_errors(p8, truth, test["frame"]))
        met32.update(ev.frame_fraction_errors(p32, truth, test["frame"]))
        agree = float(np.mean((p8 >= threshold) == (p32 >= threshold)))
        real = _real_scene_metrics(plan, m8, m32, threshold, train, log)
        extra["real_scene_metrics"] = real
        golden_tiles = test["tiles"][_golden_pick(name, test["tiles"], truth, rng)]
        bench_tiles = test["tiles"][:1024]
    else:
        log(f"== {name}: threshold on validation frames (INT8)")
        val_frames = ev.detector_frames(name, m8.run, "val", plan["val"], size)
        threshold, val_m = ev.tune_threshold(val_frames, plan["stride"], rule=plan.get("threshold_rule", "f1"))
        log(f"  threshold {threshold}: val recall {val_m['recall']} precision {val_m['precision']}")
        log(f"== {name}: test frames")
        f8 = ev.detector_frames(name, m8.run, "test", plan["test"], size)
        f32 = ev.detector_frames(name, m32.run, "test", plan["test"], size)
        met8, met32 = ev.detector_score(f8, threshold, plan["stride"]), ev.detector_score(f32, threshold, plan["stride"])
        h8 = np.concatenate([f[0].reshape(len(f[0]), -1).max(axis=1) for f in f8 if f[0] is not None])
        h32 = np.concatenate([f[0].reshape(len(f[0]), -1).max(axis=1) for f in f32 if f[0] is not None])
        agree = float(np.mean((h8 >= threshold) == (h32 >= threshold)))
        if name in ds.DEV_TEST_BASE:  # the old test set, now development data: reported, not the headline
            fd = ev.detector_frames(name, m8.run, "dev_test", plan["test"], size)
            extra_metrics["dev_test_int8"] = {
                "note": f"seeds {ds.DEV_TEST_BASE[name] * 100}..: the previous test set, looked at while this version "
                        "was developed, so not a clean test", **ev.detector_score(fd, threshold, plan["stride"])}
        extra_metrics.update({"validation_int8": val_m,
                         "int8_without_cross_tile_merge": ev.detector_score(f8, threshold, plan["stride"], merge_px=0.0),
                         "rules": "ships >= 3 px long / fires >= 2 hot pixels, not occluded, on tiles the cascade passes; "
                                  "match radius ships max(5, 0.3 * length) px, fires max(6, length / 2 + 3) px; peaks "
                                  f"within {ev.MERGE_PX:g} px merged across tile borders (see models/evaluate.py)",
                              "threshold_rule": plan.get("threshold_rule", "f1") + " on the validation frames"})
        test_tiles = ds.build(name, "val", plan["val"], size, log=log)["tiles"]
        score = m8.run(test_tiles).reshape(len(test_tiles), -1).max(axis=1)
        golden_tiles = test_tiles[_golden_pick(name, test_tiles, score, rng)]
        bench_tiles = test_tiles[:1024]
    log(f"  FP32 {json.dumps(met32)}")
    log(f"  INT8 {json.dumps(met8)}")
    log(f"  INT8 vs FP32 decision agreement {agree:.4f}")
    layers = None
    if agree < 0.99:
        log("  agreement < 99 %: layer-by-layer SQNR (dB), worst first:")
        layers = ex.compare_layers(float_fp32, float_int8, bench_tiles)
        for tname, db in layers[:8]:
            log(f"    {tname:40s} {db:7.2f}")

    ms8 = _bench(card_path, bench_tiles, "int8")
    ms32 = _bench(card_path, bench_tiles, "fp32")
    log(f"  speed (1 thread, batch 64): INT8 {ms8:.4f} ms/tile, FP32 {ms32:.4f} ms/tile")
    spec_train = [(s.seed, s.size, s.gsd_m) for s in ds.scene_specs(name, "train", plan["train"], size)]
    extra.update({
        "metrics": {
            "split": f"test: {plan['test']} simulated scenes of {size}x{size} px, seeds {ds.TEST_BASE[name] * 100}.."
                     f"{ds.TEST_BASE[name] * 100 + plan['test'] - 1} (never used for training or thresholds)",
            "counts": "tiles / objects are counts; *_rate and accuracy are fractions",
            "fp32": met32, "int8": met8, "int8_fp32_decision_agreement": round(agree, 5),
            "ms_per_tile_int8_1thread_batch64": ms8, "ms_per_tile_fp32_1thread_batch64": ms32,
            "timing_machine": f"{platform.machine()} {platform.processor() or ''}".strip()
                              + ", onnxruntime CPU, shared 2-core build machine (indicative)",
            **extra_metrics,
        },
        "training": {
            "data": "payload_sim.scenes.synthetic_scene -> payload_sim.sensor.Sensor(SensorConfig()) -> "
                    "flight.calibrate.Calibrator, tiled 64x64 (what the flight software sees)",
            "scenes": len(spec_train), "tiles": int(len(train["tiles"])),
            "seeds": f"{spec_train[0][0]}..{spec_train[-1][0]} (frame_id 0), sensor noise seed = scene seed + 7",
            "scene_size_px": size, "gsd_m": sorted({s[2] for s in spec_train}),
            "validation_seeds": f"{ds.VAL_BASE[name] * 100}..{ds.VAL_BASE[name] * 100 + plan['val'] - 1}",
            "epochs": plan["epochs"], "torch_seed": TRAIN_SEED, "simulator_hash": ds.sim_hash(),
            "augmentation": "rot90/flip, brightness x0.9-1.1, per-band gain x0.95-1.05"
                            + ("; visible bands clipped at 0.3-0.6 for 25 % of tiles (older-sensor saturation)" if name == "cloud_screen" else ""),
            "loss": ("per-cell BCE on the cloud fraction of each 4x4 cell (cells of semi-transparent CLOUD_THIN "
                     f"pixels weighted {plan.get('thin_weight', 1.0)}) + 2 x |tile fraction error|") if name == "cloud_screen" else
                    (f"Gaussian centre heatmap, sigma = max({plan.get('sigma_px')}, {plan.get('sigma_per_length')} x length) px, "
                     "BCE with positives weighted; objects below the detection rule are ignored (weight 0)"),
        },
        "quantization": {
            "tool": "onnxruntime.quantization.quantize_static after quant_pre_process",
            "format": "QDQ", "weights": "int8 symmetric per-channel", "activations": "uint8 asymmetric per-tensor",
            "calibration": f"{plan.get('calibrate', 'MinMax')} over {len(calib)} training tiles (seeded), never test tiles",
            "input": "the model input is the uint8 tile itself (input_quant); the QuantizeLinear on the input was "
                     "replaced by a transpose that onnxruntime's layout optimizer removes",
            "stem": STEM_NOTE,
            **({"aware_training": f"{plan['qat_epochs']} fine-tuning epochs at lr/10 with input, every ReLU output and "
                                  "the logits rounded to 8 bits over ranges observed on training batches (straight-"
                                  "through gradients, batch-norm frozen); each step fits both the rounded and the "
                                  "float forward pass (models/train.py ActivationFakeQuant)"}
               if plan.get("qat_epochs") else {}),
        },
        "golden": {"file": f"golden/{name}.npz", "tiles": int(len(golden_tiles)), "int8": "bit-exact",
                   "fp32_atol": FP32_GOLDEN_ATOL},
        "reproducibility": {
            "command": f"python -m models build --only {name}",
            "deterministic": "same machine and library versions give the same data, weights and ONNX bytes "
                             "(seeded, torch deterministic, 1 thread)",
            "tolerance": "on another machine or library version: test accuracy / recall / precision within 1 "
                         "percentage point, real-scene tile accuracy within 2 tiles per scene, INT8 file size within 5 %",
        },
        "created_by": "python -m models build",
    })
    if layers is not None:
        extra["quantization"]["worst_layers_sqnr_db"] = [[n, round(v, 2)] for n, v in layers[:8]]
    shutil.rmtree(work, ignore_errors=True)
    _write_card(card_path, _card_dict(name, plan, int8, fp32, threshold, macs, quant, extra))
    m8 = TileModel(card_path)
    g8 = m8.run(golden_tiles)
    g32 = TileModel(card_path, precision="fp32").run(golden_tiles)
    GOLDEN_DIR.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN_DIR / f"{name}.npz", tiles=golden_tiles.astype(np.uint16), int8=g8, fp32=g32,
                        sha256=np.array(_sha(int8)))
    log(f"  wrote {card_path.name}, {int8.name}, {fp32.name}, golden/{name}.npz ({time.time() - t0:.0f} s)")
    return {"name": name, "int8": met8, "agree": agree}


def restem(log=_log) -> int:
    """Apply models.export.merge_stem_columns and stem_over_cells to the committed INT8 files
    without retraining: the outputs must stay bit-identical (checked on the golden tiles and on 256
    random tiles), then the card (version, sha256, size, int8_input_cell, speed) and the golden
    file's sha256 are updated."""
    from flight.inference import TileModel
    from models import export as ex

    rng = np.random.default_rng(TRAIN_SEED)
    for name in BUILD_ORDER:
        card_path = MODELS_DIR / f"{name}.card.json"
        card = json.loads(card_path.read_text())
        int8 = MODELS_DIR / card["file"]
        gpath = GOLDEN_DIR / f"{name}.npz"
        with np.load(gpath, allow_pickle=False) as g:
            golden = {k: g[k] for k in g.files}
        tiles = np.concatenate([golden["tiles"], rng.integers(0, 12000, (256, 64, 64, 6), dtype=np.uint16)])
        before = TileModel(card_path).run(tiles)
        with tempfile.TemporaryDirectory() as tmp:
            trial = Path(tmp) / int8.name
            shutil.copy(int8, trial)
            merged = ex.merge_stem_columns(trial)
            k = ex.stem_over_cells(trial)
            if k is None:
                log(f"{name}: no k x k stride-k stem to rewrite (or rewritten already); unchanged")
                continue
            trial_card = json.loads(card_path.read_text())
            trial_card.update(sha256=_sha(trial), size_bytes=trial.stat().st_size, int8_input_cell=k)
            _write_card(Path(tmp) / card_path.name, trial_card)
            after = TileModel(Path(tmp) / card_path.name).run(tiles)
            if not np.array_equal(before, after):
                log(f"FAIL {name}: the rewritten stem changes the outputs (max |d| {np.abs(before - after).max():.3g}); unchanged")
                return 1
            shutil.copy(trial, int8)
        card.update(version=PLAN[name]["version"], sha256=_sha(int8), size_bytes=int8.stat().st_size, int8_input_cell=k)
        card["input"] = INPUT_TEXT
        card.setdefault("quantization", {})["stem"] = STEM_NOTE
        _write_card(card_path, card)
        speed_tiles = np.resize(tiles, (1024, 64, 64, 6))  # both files timed now, on the same tiles
        card.setdefault("metrics", {}).update(ms_per_tile_int8_1thread_batch64=_bench(card_path, speed_tiles),
                                              ms_per_tile_fp32_1thread_batch64=_bench(card_path, speed_tiles, "fp32"))
        _write_card(card_path, card)
        golden["sha256"] = np.array(card["sha256"])
        np.savez_compressed(gpath, **golden)
        how = f"{k} x {k} -> {k} x 1 over {6 * k} channels -> " if merged else ""
        log(f"{name} {card['version']}: stem {how}1 x 1 over {6 * k * k} channels ({k} x {k} cells), outputs "
            f"bit-identical on {len(tiles)} tiles; sha256 {card['sha256'][:12]}, "
            f"{card['metrics']['ms_per_tile_int8_1thread_batch64']:.4f} ms/tile")
    return 0 if verify(log=log) == 0 else 1


def build(only=None, quick=False, log=_log) -> int:
    t0 = time.time()
    if quick:  # smoke test of the whole chain: tiny data, 2 epochs (numbers meaningless)
        for p in PLAN.values():
            p.update(train=8, val=4, test=4, epochs=2)
    names = [only] if only else list(BUILD_ORDER)
    for n in names:
        if n not in PLAN:
            log(f"unknown model {n!r}; known: {', '.join(PLAN)}")
            return 2
        build_one(n, log=log)
    log(f"build done in {time.time() - t0:.0f} s")
    return 0 if verify(log=log) == 0 else 1


def _seed(text: str) -> int:
    """--noise-seed: numpy's generators take a non-negative integer; refused by argparse otherwise."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= v < 2**63:
        raise argparse.ArgumentTypeError(f"{v} is out of range 0 .. 2**63-1")
    return v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("verify", help="check every model against its card and golden vectors")
    e = sub.add_parser("evaluate", help="cloud screening on a scene .npz (img, msk) through sensor + calibration")
    e.add_argument("--scene", required=True)
    e.add_argument("--card", default=None, help="card path (default: the installed cloud_screen)")
    e.add_argument("--precision", choices=("int8", "fp32"), default="int8")
    e.add_argument("--noise-seed", type=_seed, default=0, help="sensor temporal noise seed (0 .. 2**63-1)")
    sub.add_parser("restem", help="rewrite the committed INT8 files' stems for speed, outputs bit-identical (no retraining)")
    b = sub.add_parser("build", help="regenerate data, train, export, quantize, write cards and golden vectors")
    b.add_argument("--only", choices=sorted(PLAN), default=None)
    b.add_argument("--quick", action="store_true", help="smoke test: tiny data sets, 2 epochs (do not commit the result)")
    b.add_argument("--real-share", type=float, default=None,
                   help="cloud_screen: share of each epoch drawn from crops of the west halves of the real scenes "
                        "(the experiment in models/README.md; the shipped model uses 0)")
    args = ap.parse_args(argv)
    if args.cmd == "verify":
        return 1 if verify() else 0
    if args.cmd == "evaluate":
        return evaluate_cmd(args)
    if args.cmd == "restem":
        return restem()
    if args.real_share is not None:
        PLAN["cloud_screen"].update(real_share=args.real_share, epochs=12)
    return build(args.only, args.quick)


if __name__ == "__main__":
    sys.exit(main())
