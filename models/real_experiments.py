"""The real-scene cloud experiments of models/README.md, reproducible (torch: the ``train`` extra).

    .venv/bin/python -m models.real_experiments [--only TAG ...]

Each run trains one cloud_screen variant on the cached synthetic training set (seed 1, as
``make models``), optionally with crops of one half of each real Landsat scene
(``models.dataset.real_crops``), and measures it (FP32, in torch) on the synthetic validation
scenes and on the real tiles its training did not see. Nothing under models/ is replaced. Two rows run DLR's
ukis-csmask (the optional ``ukis`` extra) on the same tiles as a reference.

The protocol, fixed before the runs (session 3):
1. variants are compared on the cross-check fold only (trained on the east halves, measured on
   the west tiles) and on synthetic validation (never the test set);
2. the variant chosen is the best cross-check accuracy among those with synthetic validation
   clear-as-cloudy <= 1 %, ties broken by validation accuracy;
3. only that variant is trained on the shipping fold (west halves) and measured once on the east
   tiles, the number that decides whether it ships.
The real tiles had been looked at in earlier sessions, so no number here is a blind estimate.

Results go to models/results/cloud_real_experiments.json (one object per run) and a Markdown
table on stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from models import dataset as ds
from models import evaluate as ev

OUT = Path(__file__).resolve().parent / "results" / "cloud_real_experiments.json"
SEED = 1  # the build's TRAIN_SEED

# tag -> (fold trained on: "none" | "west" | "east", variant); epochs 12 (the --real-share build)
RUNS: dict[str, tuple[str, dict]] = {
    "shipped": ("none", dict(real_share=0.0, epochs=8)),  # cloud_screen 2.0.0's recipe, for reference
    "A": ("east", dict(real_share=0.5)),  # session 2's recipe (cross-check fold)
    "A2": ("east", dict(real_share=0.5, ctx=2)),
    "B": ("east", dict(real_share=0.5, ctx=2, width=32)),
    "C": ("east", dict(real_share=0.3)),
    "D": ("east", dict(real_share=0.3, ctx=2, width=32)),
    "E": ("east", dict(real_share=0.5, width=32)),
    "F": ("east", dict(real_share=0.2, ctx=2, width=32, epochs=16)),
    "G": ("east", dict(real_share=0.3, ctx=2, width=32, epochs=16)),
    "H": ("east", dict(real_share=0.4, ctx=2, width=32)),
    "D-ship": ("west", dict(real_share=0.3, ctx=2, width=32)),  # the chosen variant, shipping fold
    "S32": ("none", dict(real_share=0.0, ctx=2, width=32)),  # synthetic only, with context
    # the shipped recipe with 50 more training scenes, all at 30 m GSD like the real scenes (the
    # shipped recipe scores 97.1 % on the validation scenes made at 30 m, 98.5 % at 10 m)
    "W": ("none", dict(real_share=0.0, epochs=8, train_scenes=150)),
    # the shipped recipe with other training seeds: how far the real count moves by chance alone
    # (measured to size the noise, never to pick a seed)
    **{f"seed{k}": ("none", dict(real_share=0.0, epochs=8, seed=k)) for k in range(2, 8)},
    # DLR ukis-csmask (the reference, 40 MB U-Net, the optional `ukis` extra) on the same
    # tiles: it knows the real labelling convention, not the simulated world
    "ukis-4b": ("none", dict(reference="ukis-csmask model_4b_l1c")),
    "ukis-6b": ("none", dict(reference="ukis-csmask model_6b_l1c")),
}


def ukis_predict(bands: int):
    """uint16 tiles of whole 512 x 512 scenes (64 per scene, row-major) -> ukis-csmask cloud fraction per tile."""
    from ukis_csmask.mask import CSmask

    def predict(tiles: np.ndarray) -> np.ndarray:
        out = []
        for k in range(0, len(tiles), 64):
            img = ds.frame_of(tiles[k: k + 64, ..., :bands], 8).astype(np.float32) * np.float32(1e-4)
            csm = CSmask(img, band_order=["blue", "green", "red", "nir", "swir16", "swir22"][:bands], product_level="l1c",
                         intra_op_num_threads=1, inter_op_num_threads=1, providers=["CPUExecutionProvider"])
            out.append(ds.mask_tiles(np.squeeze(csm.csm) == 1).mean(axis=(1, 2)))  # class 1 = cloud
        return np.concatenate(out)

    return predict


def torch_predict(fold: str, variant: dict, train: dict):
    import torch

    from models import train as tr
    from models.__main__ import PLAN

    plan = PLAN["cloud_screen"]
    if variant.get("train_scenes", plan["train"]) != plan["train"]:
        train = ds.build("cloud_screen", "train", variant["train_scenes"], plan["size"])
    share = variant.get("real_share", 0.0)
    crops = ds.real_crops(fold, plan["real_crops"], seed=SEED) if share > 0 else None
    t0 = time.time()
    model = tr.train_cloud(train, epochs=variant.get("epochs", 12), seed=variant.get("seed", SEED), c=variant.get("width", 16),
                           embed=plan["embed"], ctx=variant.get("ctx", 0), thin_weight=plan["thin_weight"], real=crops,
                           real_share=share,
                           log=lambda _m: None)

    def predict(tiles: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([model(tr._as_float(tiles[i: i + 256])).numpy() for i in range(0, len(tiles), 256)])

    return predict, round(time.time() - t0)


def run_one(tag: str, fold: str, variant: dict, train: dict, val: dict) -> dict:
    if "reference" in variant:
        predict, train_s = ukis_predict(4 if "4b" in variant["reference"] else 6), 0
    else:
        predict, train_s = torch_predict(fold, variant, train)
    truth = val["cells"].reshape(len(val["cells"]), -1).mean(axis=1) / 16.0
    out = {"tag": tag, "fold": fold, "variant": variant, "train_s": train_s,
           "validation": ev.cloud_metrics(predict(val["tiles"]), truth)}
    held = ds.real_heldout(fold, 512) if fold != "none" else np.ones(64, bool)
    right = total = 0
    for name in ds.REAL_SCENES:
        tiles, frac = ds.load_real(ds.real_dir() / f"{name}.npz")
        m = ev.cloud_metrics(predict(tiles)[held], frac[held])
        out[f"{name}_heldout"] = m
        right += m["tiles"] - m["clear_as_cloudy"] - m["cloudy_as_clear"]
        total += m["tiles"]
    out["real_heldout"] = f"{right}/{total}"
    out["real_heldout_accuracy"] = round(right / total, 5)
    return out


def table(rows: list[dict]) -> str:
    lines = ["| run | trained on real | variant | synthetic val accuracy | val clear->cloudy | real held-out |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        v = r["validation"]
        where = {"none": "no", "west": "west halves (east tiles held out)",
                 "east": "east halves (west tiles held out)"}[r["fold"]]
        if "reference" in r["variant"]:
            where = "its own real training data (DLR)"
        var = ", ".join(f"{k} {val}" for k, val in r["variant"].items())
        lines.append(f"| {r['tag']} | {where} | {var} | {v['tile_accuracy']:.2%} | {v['clear_as_cloudy_rate']:.2%} "
                     f"| {r['real_heldout']} = {r['real_heldout_accuracy']:.1%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(prog="python -m models.real_experiments", description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", choices=sorted(RUNS), help="runs to repeat (default: all)")
    args = ap.parse_args(argv)
    if not all((ds.real_dir() / f"{n}.npz").exists() for n in ds.REAL_SCENES):
        raise SystemExit(f"the real scenes are not in {ds.real_dir()}")
    from models.__main__ import PLAN

    torch.set_num_threads(1)
    plan = PLAN["cloud_screen"]
    train = ds.build("cloud_screen", "train", plan["train"], plan["size"])
    val = ds.build("cloud_screen", "val", plan["val"], plan["size"])
    old = {r["tag"]: r for r in json.loads(OUT.read_text())} if OUT.exists() else {}
    for tag in args.only or list(RUNS):
        fold, variant = RUNS[tag]
        old[tag] = run_one(tag, fold, variant, train, val)
        print(f"{tag}: synthetic val {old[tag]['validation']['tile_accuracy']:.4f}, "
              f"real held-out {old[tag]['real_heldout']}", flush=True)
    rows = [old[t] for t in RUNS if t in old]
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
