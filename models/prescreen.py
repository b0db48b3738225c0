"""Issue #16 experiment: a brightness prescreen before each detector.

`python -m models.prescreen [--only ship_detect|fire_detect]` -> models/results/prescreen.json

A detector need not run on a tile where nothing is brighter than its surroundings in the band
its objects light up (`flight.pipeline.tile_contrast`: per tile, its brightest pixel minus its
mean, reflectance x 10000, computed by the flight from the calibrated strip):

- ship_detect, NIR: open water is dark and even (surface reflectance 0.003 clear, 0.025 turbid)
  and every hull the simulator draws is brighter (dark hull 0.05, grey deck 0.24,
  superstructure 0.56), as are wakes (foam 0.20);
- fire_detect, swir22: a 1 % flaming fraction of a pixel already adds 1.7 reflectance there
  (`payload_sim.spectra.fire_apparent_reflectance`), land is 0.05-0.4.

Protocol, per detector, on its validation scenes only: ``unchanged_cut`` is the largest grid value
at which the INT8 detector's true positives, false alarms and misses on validation are all
unchanged (no object found without the prescreen is lost). That rule was fixed before the first
run. The first run showed how thin its margin is (fire_detect: the weakest validation fire tile
at 9699, the rule's cut 8000, half the fires lost at 12000), so the cut shipped, ``chosen_cut``,
adds a margin: the largest grid value at most ``unchanged_cut`` and at most half the contrast of
the weakest validation tile holding an object to be found. Both are then reported on the test
scenes (the card's figures) and, for ship_detect, the development scenes, with the share of tiles
the prescreen spares.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from flight.frames import BANDS
from flight.pipeline import tile_contrast
from models import dataset as ds
from models import evaluate as ev

SETUP = {  # band, grid, validation scenes, test splits (name, scenes)
    "ship_detect": ("nir", [0, 25, 50, 75, 100, 150, 200, 250, 300, 400, 500, 600, 800], 60,
                    [("test", 40), ("dev_test", 40)]),
    "fire_detect": ("swir22", [0, 100, 250, 500, 1000, 1500, 2000, 3000, 4000, 6000, 8000, 12000, 16000], 24,
                    [("test", 40)]),
}
OUT = Path(__file__).parent / "results" / "prescreen.json"


def frames_with_contrast(model_name: str, band: str, split: str, n: int, run) -> list:
    """detector_frames' records, each with the contrast of its selected tiles."""
    b = BANDS.index(band)
    return ev.detector_frames(model_name, run, split, n, 512, tile_stat=lambda frame: tile_contrast(frame, ds.TILE, b))


def score(frames: list, threshold: float, stride: int, cut: float) -> dict:
    """detector_score with the tiles below ``cut`` contrast not run (no peaks)."""
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


def contrast_of_object_tiles(frames: list) -> dict:
    """Contrast of the selected tiles holding an object to be found, and of the others."""
    with_obj, without = [], []
    for _, idx, cols, objs, con in frames:
        tiles_with = {int(r // ds.TILE) * cols + int(c // ds.TILE) for r, c, must, _ in objs if must}
        any_obj = {int(r // ds.TILE) * cols + int(c // ds.TILE) for r, c, _, _ in objs}
        for t, v in zip(idx.tolist(), con.tolist(), strict=True):
            if t in tiles_with:
                with_obj.append(v)
            elif t not in any_obj:
                without.append(v)
    def pct(a, qs):
        return [round(float(np.percentile(a, q)), 1) for q in qs] if a else []

    return {"tiles_with_an_object_min_p1_p5": pct(with_obj, (0, 1, 5)), "tiles_without_p50_p90_p99": pct(without, (50, 90, 99)),
            "tiles_with": len(with_obj), "tiles_without": len(without)}


def study(name: str) -> dict:
    from flight.inference import TileModel, model_path

    model = TileModel(model_path(name))
    card = model.card
    band, grid, n_val, tests = SETUP[name]
    res = {"model": f"{name} {card.version}", "threshold": card.threshold, "band": band,
           "statistic": f"max({band}) - mean({band}) per tile, reflectance x 1e4", "grid": grid}
    val = frames_with_contrast(name, band, "val", n_val, model.run)
    res["val"] = {str(c): score(val, card.threshold, card.stride, c) for c in grid}
    base = res["val"]["0"]
    same = [c for c in grid if all(res["val"][str(c)][k] == base[k] for k in ("tp", "fp", "fn"))]
    res["unchanged_cut"] = max(same)
    res["val_contrast"] = contrast_of_object_tiles(val)
    weakest = (res["val_contrast"]["tiles_with_an_object_min_p1_p5"] or [float("inf")])[0]  # no objects: no margin to keep
    res["chosen_cut"] = max(c for c in grid if c <= res["unchanged_cut"] and c <= weakest / 2)
    for split, n in tests:
        frames = frames_with_contrast(name, band, split, n, model.run)
        res[split] = {"without": score(frames, card.threshold, card.stride, 0),
                      "with": score(frames, card.threshold, card.stride, res["chosen_cut"]),
                      "with_unchanged_cut": score(frames, card.threshold, card.stride, res["unchanged_cut"])}
    return res


def write_card(name: str, res: dict, models_dir: Path | None = None) -> bool:
    """Put the chosen cut in the card of the model version it was found for: the flight never
    applies a cut above the card's ``prescreen.max_cut`` (flight.pipeline.FramePipeline.prescreen_cut).
    False (card unchanged) when the card now holds another version than the one studied."""
    from models.__main__ import MODELS_DIR, _write_card

    path = (models_dir or MODELS_DIR) / f"{name}.card.json"
    card = json.loads(path.read_text())
    if res["model"] != f"{name} {card['version']}":
        print(f"{name}: results are for {res['model']}, the card is {card['version']}: card unchanged")
        return False
    weakest = (res["val_contrast"]["tiles_with_an_object_min_p1_p5"] or [None])[0]
    card["prescreen"] = {
        "band": res["band"], "max_cut": res["chosen_cut"],
        "basis": (f"models.prescreen on validation scenes: tp, fp and fn unchanged up to {res['unchanged_cut']}; "
                  f"at most half the weakest validation object tile ({weakest}); statistic {res['statistic']}"),
    }
    _write_card(path, card)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=sorted(SETUP))
    ap.add_argument("--cards-only", action="store_true",
                    help="write the cuts of the existing results file into the cards, without a new study")
    args = ap.parse_args(argv)
    old = json.loads(OUT.read_text()) if OUT.exists() else {}
    results = {k: v for k, v in old.items() if k in SETUP}
    if args.cards_only:
        names = [args.only] if args.only else sorted(results)
        return 0 if all([write_card(n, results[n]) for n in names]) else 1
    for name in [args.only] if args.only else sorted(SETUP):
        res = results[name] = study(name)
        print(name, "cut", res["chosen_cut"], "unchanged up to", res["unchanged_cut"], res["val_contrast"])
        for split, _ in SETUP[name][3]:
            for w in ("without", "with", "with_unchanged_cut"):
                m = res[split][w]
                print(f"  {split} {w}:", {k: m[k] for k in ("recall", "precision", "tp", "fp", "fn", "tiles_run", "tiles_spared_pct")})
    OUT.write_text(json.dumps(results, indent=1))
    for name in [args.only] if args.only else sorted(SETUP):
        write_card(name, results[name])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
