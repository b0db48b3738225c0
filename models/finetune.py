"""Fine-tuning the shipped cloud model on a partner's labelled real scenes (issue #17).

    python -m models finetune --scenes DIR [--out DIR]

DIR holds scenes as ``.npz`` files like ``shared/data/real`` (``img`` (H, W, 6) TOA reflectance
in the payload's band order, ``msk`` (H, W, 1) with 4 = cloud). The shipped model
(``models/cloud_screen.weights.npz``, the torch weights of the INT8 file that flies) is adapted on
random 64 x 64 crops of the scenes, mixed with the synthetic training set so that what the
simulator teaches (thick / thin / shadow, clear ground) is kept. Real crops teach only what their
mask knows: cloud (thick + thin) against not cloud (models/train.py train_cloud_split).

Reported first: **leave-one-scene-out** accuracy -- for each scene, a model fine-tuned on all the
other scenes, measured (INT8) on the whole held-out scene, next to the shipped model on the same
tiles. Then the model fine-tuned on every scene is built exactly like a normal build: FP32 and
INT8 ONNX, card (with a ``finetune`` section: scenes and their sha256, the leave-one-out figures),
golden vectors, ``verify`` of the output folder and the upload bundle
(``flight.model_update.pack_bundle``) -- in ``--out``, never over the shipped files. Its accuracy on
the scenes it was tuned on is not a held-out figure and is labelled so.

Deterministic: seeded (the shipped seed), one torch thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from models import dataset as ds

FT_EPOCHS = 4
FT_LR = 1e-3
FT_REAL_SHARE = 0.5
FT_CROPS = 1000  # random crops per scene per training run


def _log(msg: str) -> None:
    print(msg, flush=True)


def _sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _scenes(folder: Path) -> list[Path]:
    paths = sorted(p for p in Path(folder).glob("*.npz"))
    good = []
    for p in paths:
        with np.load(p, allow_pickle=False) as d:
            if "img" in d.files and "msk" in d.files:
                good.append(p)
    return good


def _tune(train: dict, plan: dict, seed: int, init: dict, paths: list[Path], epochs: int, real_share: float,
          crops: int, log):
    from models import train as tr

    real = ds.scene_crops(paths, crops, seed=seed)
    return tr.train_cloud_split(train, epochs=epochs, seed=seed, c=plan["width"], embed=plan["embed"], ctx=plan["ctx"],
                                dw=plan.get("dw", 0), lr=FT_LR, real=real, real_share=real_share, init=init,
                                log=lambda m: None)


def _score(run, path: Path) -> dict:
    from models import evaluate as ev

    tiles, ref, dark0 = ds.load_real_split(path)
    return ev.real_split_metrics(run(tiles), ref, dark0, 0.5)


def _right(m: dict) -> int:
    return m["tiles"] - m["clear_as_cloudy"] - m["cloudy_as_clear"]


def finetune(scenes_dir: Path, out_dir: Path, epochs: int = FT_EPOCHS, real_share: float = FT_REAL_SHARE,
             crops: int = FT_CROPS, log=_log) -> int:
    import torch

    from flight.inference import TileModel
    from flight.model_update import pack_bundle
    from models import __main__ as mm
    from models import evaluate as ev
    from models import export as ex

    t0 = time.time()
    paths = _scenes(scenes_dir)
    if len(paths) < 2:
        log(f"finetune needs at least 2 labelled scenes (.npz with img and msk) in {scenes_dir}, found {len(paths)}")
        return 2
    shipped_card = mm.MODELS_DIR / "cloud_screen.card.json"
    weights = mm.MODELS_DIR / "cloud_screen.weights.npz"
    card = json.loads(shipped_card.read_text())
    if "output_channels" not in card or not weights.exists():
        log("the shipped cloud_screen has no torch weights (models/cloud_screen.weights.npz): rebuild it first")
        return 2
    plan = dict(mm.PLAN["cloud_screen"])
    seed = int(card["seeds"]["shipped_seed"])
    init = mm.load_weights(weights)
    torch.set_num_threads(1)
    train = ds.build("cloud_screen", "train", plan["train"], plan["size"], log=log)
    rng = np.random.default_rng(mm.TRAIN_SEED)
    calib = train["tiles"][np.sort(rng.choice(len(train["tiles"]), size=mm.CALIB_TILES, replace=False))]
    shipped = TileModel(shipped_card)
    log(f"== finetune cloud_screen {card['version']} (seed {seed}) on {len(paths)} scenes: "
        f"{', '.join(p.name for p in paths)}; {epochs} epochs, real share {real_share}, {crops} crops per scene")

    # ---- leave one scene out ------------------------------------------------------------------
    folds = []
    with tempfile.TemporaryDirectory() as tmp:
        for held in paths:
            others = [p for p in paths if p != held]
            m = _tune(train, plan, seed, init, others, epochs, real_share, crops, log)
            o8, _o32, quant = mm._int8_files(m, plan["output"], calib, Path(tmp), f"loso_{held.stem}")
            tuned = _score(mm._plain_runner_nd(o8, quant), held)
            base = _score(shipped.run, held)
            folds.append({"heldout_scene": held.name, "sha256": _sha(held), "tuned_on": [p.name for p in others],
                          "finetuned_int8": tuned, "shipped_int8": base})
            log(f"  held out {held.name}: fine-tuned {_right(tuned)}/{tuned['tiles']} (thick only "
                f"{_right(tuned['thick_only'])}), shipped {_right(base)}/{base['tiles']} (thick+thin vs reference)")
    n = sum(f["finetuned_int8"]["tiles"] for f in folds)
    loso = {
        "scenes": len(paths),
        "tiles": n,
        "finetuned_int8_tile_accuracy": round(sum(_right(f["finetuned_int8"]) for f in folds) / n, 5),
        "finetuned_int8_thick_only_tile_accuracy": round(sum(_right(f["finetuned_int8"]["thick_only"]) for f in folds) / n, 5),
        "shipped_int8_tile_accuracy": round(sum(_right(f["shipped_int8"]) for f in folds) / n, 5),
        "finetuned_clear_as_cloudy_rate": round(sum(f["finetuned_int8"]["clear_as_cloudy"] for f in folds)
                                                / max(sum(f["finetuned_int8"]["clear_tiles"] for f in folds), 1), 5),
        "convention": "thick + thin vs the reference cloud (mask value 4), whole held-out scene, INT8",
        "caveat": f"from {len(paths)} scenes only: each figure is one model measured on one scene; with so few "
                  "scenes it says little about other scenes, sensors or seasons",
        "folds": folds,
    }
    log(f"  leave-one-scene-out: fine-tuned {loso['finetuned_int8_tile_accuracy']:.4f} vs shipped "
        f"{loso['shipped_int8_tile_accuracy']:.4f} over {n} tiles of {len(paths)} scenes")

    # ---- the model tuned on every scene, built like a normal build -----------------------------
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "golden").mkdir(exist_ok=True)
    model = _tune(train, plan, seed, init, paths, epochs, real_share, crops, log)
    digest = hashlib.sha256("".join(_sha(p) for p in paths).encode()).hexdigest()[:8]
    plan["version"] = f"{card['version']}-ft.{digest}"
    fp32, int8 = out_dir / "cloud_screen.fp32.onnx", out_dir / "cloud_screen.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        ff, fi = Path(tmp) / "f.fp32.onnx", Path(tmp) / "f.int8.onnx"
        ex.export_onnx(model, ff, plan["output"])
        ex.quantize(ff, fi, calib)
        quant = ex.channels_last_uint8_input(fi, ff, int8, fp32)
        macs = ex.count_macs(ff)
    card_path = out_dir / "cloud_screen.card.json"
    mm._write_card(card_path, mm._card_dict("cloud_screen", plan, int8, fp32, 0.5, macs, quant, {}))
    m8, m32 = TileModel(card_path), TileModel(card_path, precision="fp32")
    test = ds.build("cloud_screen", "test", plan["test"], plan["size"], log=log)
    t3 = ds.split_truth(test)
    p8, p32 = m8.run(test["tiles"]), m32.run(test["tiles"])
    met8, met32 = ev.split_metrics(p8, t3), ev.split_metrics(p32, t3)
    agree = round(float(np.mean((p8[:, 0] >= 0.5) == (p32[:, 0] >= 0.5))), 5)
    tuned_on = {p.stem: {"sha256": _sha(p), "int8_not_heldout": _score(m8.run, p)} for p in paths}
    mm.save_weights(model, out_dir / "cloud_screen.weights.npz")
    golden = test["tiles"][mm._golden_pick("cloud_screen", test["tiles"], t3[:, 0] + 0.01 * t3[:, 2], rng)]
    extra = {
        "limitations": [f"Fine-tuned on {len(paths)} labelled real scenes ({', '.join(p.name for p in paths)}) from "
                        f"the shipped cloud_screen {card['version']}; its real-scene figures come from those "
                        f"{len(paths)} scenes (finetune.leave_one_scene_out)."] + card["limitations"],
        "finetune": {
            "command": f"python -m models finetune --scenes {scenes_dir}",
            "from": {"version": card["version"], "sha256": card["sha256"], "seed": seed},
            "scenes": [{"file": p.name, "sha256": _sha(p)} for p in paths],
            "recipe": f"{epochs} epochs at lr {FT_LR} (one-cycle) from the shipped weights; {crops} random 64x64 crops per "
                      f"scene (sensor noise seed {ds.REAL_TRAIN_NOISE_SEED}) make up {real_share:.0%} of each epoch, "
                      "the synthetic training set the rest; real crops fit cloud (thick + thin) vs not cloud",
            "leave_one_scene_out": loso,
            "tuned_scenes_int8_not_heldout": tuned_on,
        },
        "metrics": {"split": "synthetic test: 40 simulated scenes (as the shipped card)", "fp32": met32, "int8": met8,
                    "int8_fp32_decision_agreement": agree,
                    "ms_per_tile_int8_1thread_batch64": mm._bench(card_path, test["tiles"][:1024], "int8"),
                    "ms_per_tile_fp32_1thread_batch64": mm._bench(card_path, test["tiles"][:1024], "fp32")},
        "training": dict(card["training"], finetuned_on=[p.name for p in paths]),
        "quantization": card["quantization"],
        "golden": {"file": "golden/cloud_screen.npz", "tiles": int(len(golden)), "int8": "bit-exact",
                   "fp32_atol": mm.FP32_GOLDEN_ATOL},
        "reproducibility": {"command": f"python -m models finetune --scenes {scenes_dir} --out {out_dir}",
                            "deterministic": card["reproducibility"]["deterministic"],
                            "tolerance": card["reproducibility"]["tolerance"]},
        "created_by": "python -m models finetune",
    }
    d = mm._card_dict("cloud_screen", plan, int8, fp32, 0.5, macs, quant, {})
    d.update(extra)
    mm._write_card(card_path, d)
    m8 = TileModel(card_path)
    np.savez_compressed(out_dir / "golden" / "cloud_screen.npz", tiles=golden.astype(np.uint16), int8=m8.run(golden),
                        fp32=TileModel(card_path, precision="fp32").run(golden), sha256=np.array(_sha(int8)))
    failed = mm.verify(out_dir, log=log)
    bundle = pack_bundle(card_path)
    (out_dir / "cloud_screen.bundle").write_bytes(bundle)
    report = {"out": str(out_dir), "version": plan["version"], "leave_one_scene_out": loso,
              "synthetic_test_int8": {k: met8[k] for k in ("tile_accuracy", "clear_as_cloudy_rate", "thin_fraction_mae",
                                                           "shadow_fraction_mae")},
              "int8_fp32_decision_agreement": agree, "bundle_bytes": len(bundle), "verify_failed": failed}
    (out_dir / "finetune_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"  wrote {out_dir}: card, INT8/FP32 ONNX, golden, cloud_screen.bundle ({len(bundle)} bytes), "
        f"finetune_report.json ({time.time() - t0:.0f} s)")
    return 1 if failed else 0


def main(args) -> int:
    out = Path(args.out) if args.out else Path("runs") / f"finetune-{time.strftime('%Y%m%d-%H%M%S')}"
    return finetune(Path(args.scenes), out, epochs=args.epochs, real_share=args.real_share, crops=args.crops)


def add_parser(sub) -> argparse.ArgumentParser:
    f = sub.add_parser("finetune", help="adapt the shipped cloud_screen on labelled real scenes (leave-one-scene-out, "
                                        "card, golden, verify, upload bundle in --out)")
    f.add_argument("--scenes", required=True, help="folder of labelled scenes (.npz with img and msk, 4 = cloud)")
    f.add_argument("--out", default=None, help="output folder (default runs/finetune-<time>); never the shipped models")
    f.add_argument("--epochs", type=int, default=FT_EPOCHS)
    f.add_argument("--real-share", type=float, default=FT_REAL_SHARE)
    f.add_argument("--crops", type=int, default=FT_CROPS, help="random 64x64 crops per scene per training run")
    return f
