"""Committed onboard models: verify against cards and golden vectors, real-scene cloud accuracy,
CLI. Runs without torch (checked in a subprocess where importing torch fails)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
REAL_SCENES = ("landsat7.npz", "landsat5.npz")
REAL_TARGET = 0.92  # tile accuracy over both real scenes (issue: DLR ukis-csmask scores 92-94 %)
REAL_FLOOR = 112 / 128  # regression floor: the committed model's 114/128 minus 2 tiles
NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['onnx'] = None; "


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH + code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_verify_passes_without_torch():
    r = _run("from models.__main__ import main; sys.exit(main(['verify']))")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("OK", "FAIL"))]
    assert lines and all(ln.startswith("OK") for ln in lines), r.stdout
    assert any("cloud_screen" in ln for ln in lines)


def test_verify_fails_on_tampered_golden(tmp_path):
    from models.__main__ import verify

    for f in MODELS.glob("cloud_screen*"):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "golden").mkdir()
    import numpy as np

    with np.load(MODELS / "golden" / "cloud_screen.npz") as g:
        arrays = {k: g[k] for k in g.files}
    arrays["int8"] = arrays["int8"] + np.float32(1e-3)
    np.savez(tmp_path / "golden" / "cloud_screen.npz", **arrays)
    lines = []
    assert verify(tmp_path, log=lines.append) == 1
    assert any(ln.startswith("FAIL cloud_screen") and "golden" in ln for ln in lines)


def test_verify_fails_on_flipped_model_byte(tmp_path):
    from models.__main__ import verify

    for f in MODELS.glob("cloud_screen*"):
        shutil.copy(f, tmp_path / f.name)
    shutil.copytree(MODELS / "golden", tmp_path / "golden")
    onnx_file = tmp_path / "cloud_screen.onnx"
    blob = bytearray(onnx_file.read_bytes())
    blob[100] ^= 0x80
    onnx_file.write_bytes(bytes(blob))
    lines = []
    assert verify(tmp_path, log=lines.append) == 1
    assert any("sha256" in ln for ln in lines)


@pytest.mark.parametrize("card", sorted(MODELS.glob("*.card.json")), ids=lambda p: p.name)
def test_card_records_measurements(card):
    d = json.loads(card.read_text())
    assert d["size_bytes"] <= 256 * 1024
    m = d["metrics"]
    for prec in ("fp32", "int8"):
        assert prec in m
    assert 0.0 <= m["int8_fp32_decision_agreement"] <= 1.0
    assert m["ms_per_tile_int8_1thread_batch64"] > 0
    assert "seeds" in d["training"] and "tolerance" in d["reproducibility"]
    assert (MODELS / d["golden"]["file"]).exists()


def _real_skip():
    missing = [s for s in REAL_SCENES if not (REAL / s).exists()]
    if missing:
        pytest.skip(f"real scenes not available: {REAL} lacks {missing} (shared data folder absent)")


@pytest.fixture(scope="module")
def real_results():
    _real_skip()
    from models.evaluate import evaluate_scene

    return {s: evaluate_scene(REAL / s) for s in REAL_SCENES}


def _real_accuracy(real_results) -> float:
    tiles = sum(r["tiles"] for r in real_results.values())
    correct = sum(r["tiles"] - r["clear_as_cloudy"] - r["cloudy_as_clear"] for r in real_results.values())
    assert tiles == 128
    return correct / tiles


def test_real_scene_cloud_accuracy_has_not_regressed(real_results):
    # measured 114/128 = 89.1 % for cloud_screen 2.0.0 (2.0.1, 2.0.2: same outputs); floor = that minus 2 tiles
    acc = _real_accuracy(real_results)
    per = {s: r["tile_accuracy"] for s, r in real_results.items()}
    assert acc >= REAL_FLOOR, f"real-scene tile accuracy {acc:.3f} < {REAL_FLOOR:.3f} ({per})"


@pytest.mark.xfail(strict=True, reason="issue target 92 % not reached: cloud_screen 2.0.2 (2.0.0 with faster stems, same outputs) scores 89.1 % "
                                       "(models/README.md); strict, so reaching it flags this test for removal")
def test_real_scene_cloud_accuracy_meets_target(real_results):
    assert _real_accuracy(real_results) >= REAL_TARGET


def test_real_scene_frame_fraction(real_results):
    for s, r in real_results.items():
        assert abs(r["frame_cloud_fraction_pred"] - r["frame_cloud_fraction_true"]) <= 0.10, (s, r)


def test_evaluate_cli_prints_json_without_torch():
    _real_skip()
    scene = REAL / REAL_SCENES[0]
    r = _run(f"from models.__main__ import main; sys.exit(main(['evaluate', '--scene', {str(scene)!r}]))")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("tiles", "tile_accuracy", "cloudy_as_clear", "clear_as_cloudy",
                "frame_cloud_fraction_true", "frame_cloud_fraction_pred"):
        assert key in out
    assert out["tiles"] == 64 and out["counts_are"] == "tiles"


def test_real_scene_folds_split_each_scene_into_halves():
    from models.dataset import real_half_cols, real_heldout

    assert real_half_cols("west", 512) == (0, 256) and real_half_cols("east", 512) == (256, 512)
    west_held, east_held = real_heldout("west"), real_heldout("east")
    assert west_held.shape == (64,) and west_held.sum() == 32 and east_held.sum() == 32
    assert not (west_held & east_held).any()  # every tile is held out by exactly one fold
    assert west_held.reshape(8, 8)[:, 4:].all() and not west_held.reshape(8, 8)[:, :4].any()


def test_evaluate_reports_heldout_tiles_when_the_card_trained_on_the_scene(tmp_path):
    import hashlib

    from models.evaluate import trained_half

    scene = tmp_path / "scene.npz"
    scene.write_bytes(b"not really a scene, only hashed")
    card = json.loads((MODELS / "cloud_screen.card.json").read_text())
    card["real_scene_metrics"] = {"scene": {"sha256": hashlib.sha256(scene.read_bytes()).hexdigest()},
                                  "training_use": {"fold": "west"}}
    (tmp_path / "c.card.json").write_text(json.dumps(card))
    assert trained_half(tmp_path / "c.card.json", scene) == "west"
    other = tmp_path / "other.npz"
    other.write_bytes(b"another scene")
    assert trained_half(tmp_path / "c.card.json", other) is None
    assert trained_half(MODELS / "cloud_screen.card.json", scene) is None  # the shipped model never trained on real tiles


def test_real_tiles_figure_marks_the_tiles_evaluate_counts_wrong(real_results, tmp_path):
    # the gallery's real-scene figure must tell a reader the same as `python -m models evaluate`
    import numpy as np
    from PIL import Image

    from payload_sim.gallery import real_tiles_figure

    paths = real_tiles_figure(tmp_path)
    assert [p.name for p in paths] == [f"real_tiles_{s.removesuffix('.npz')}.png" for s in REAL_SCENES]
    for path, scene in zip(paths, REAL_SCENES, strict=True):
        r = real_results[scene]
        img = np.asarray(Image.open(path).convert("RGB"))
        tile = (img.shape[1]) // 8
        body = img[img.shape[0] - img.shape[1]:]  # below the label bar
        # a red box edge three pixels wide is drawn 2 px inside each wrong tile (the PNG may be
        # palette-reduced, so "red" is a range)
        def is_red(px):
            return px[0] > 200 and px[1] < 60 and px[2] < 60

        red = [is_red(body[i * tile + 3, j * tile + tile // 2].astype(int)) for i in range(8) for j in range(8)]
        assert sum(red) == r["clear_as_cloudy"] + r["cloudy_as_clear"], (scene, sum(red))


def test_committed_real_experiments_cover_every_run_and_match_the_card():
    # models/results/cloud_real_experiments.json is what models/README.md quotes: every run of
    # models.real_experiments is in it, and its "shipped" row agrees with the card's count
    from models.real_experiments import OUT, RUNS, table

    rows = json.loads(OUT.read_text())
    assert [r["tag"] for r in rows] == list(RUNS)
    assert sum(1 for fold, _v in RUNS.values() if fold == "west") == 1  # one look at the shipping fold
    card = json.loads((MODELS / "cloud_screen.card.json").read_text())
    real = card["real_scene_metrics"]
    right = sum(real[s]["heldout_int8"]["tiles"] - real[s]["heldout_int8"]["clear_as_cloudy"]
                - real[s]["heldout_int8"]["cloudy_as_clear"] for s in ("landsat7", "landsat5"))
    shipped = next(r for r in rows if r["tag"] == "shipped")  # FP32 in torch; the card counts INT8
    assert shipped["real_heldout"] == f"{right}/128"
    assert {"validation", "landsat7_heldout", "landsat5_heldout"} <= set(shipped)
    assert table(rows).count("\n") == len(rows) + 1


def test_every_split_draws_its_own_scene_seeds():
    """A fresh test set is only fresh if no other split of any model draws its seeds: the splits'
    seed ranges (base * 100 + i, up to the largest set built: 400 training scenes) are disjoint."""
    from models import dataset as ds

    ranges = []
    for split, bases in (("train", ds.TRAIN_BASE), ("val", ds.VAL_BASE), ("test", ds.TEST_BASE),
                         ("dev_test", ds.DEV_TEST_BASE), ("fresh_test", ds.FRESH_TEST_BASE),
                         ("fresh2_test", ds.FRESH2_TEST_BASE)):
        for model, base in bases.items():
            seeds = [s.seed for s in ds.scene_specs(model, split, 3, 64)]
            assert seeds == [base * 100 + i for i in range(3)], (split, model, seeds)
            ranges.append((base * 100, base * 100 + 400, split, model))
    ranges.sort()
    for (_, hi1, *a), (lo2, _, *b) in zip(ranges, ranges[1:], strict=False):
        assert hi1 <= lo2, f"{a} and {b} share scene seeds"
