"""python -m models finetune (issue #17): leave-one-scene-out on the shared real scenes, then a
model folder like a normal build (card, golden, verify, upload bundle). Needs torch (the train
extra) and ../shared/data/real; short settings (1 epoch, few crops): the figures mean nothing here,
the chain is what is tested."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    if not all((REAL / f"{s}.npz").exists() for s in ("landsat7", "landsat5")):
        pytest.skip(f"real scenes not available in {REAL}")
    from models.finetune import finetune

    out = tmp_path_factory.mktemp("ft")
    lines: list[str] = []
    rc = finetune(REAL, out, epochs=1, crops=64, log=lines.append)
    return rc, out, lines


def test_finetune_reports_leave_one_scene_out_and_builds_a_verified_bundle(tuned):
    rc, out, lines = tuned
    assert rc == 0, "\n".join(lines)
    report = json.loads((out / "finetune_report.json").read_text())
    loso = report["leave_one_scene_out"]
    assert loso["scenes"] == 2 and loso["tiles"] == 128 and "2 scenes" in loso["caveat"]
    assert [f["heldout_scene"] for f in loso["folds"]] == ["landsat5.npz", "landsat7.npz"]
    for f in loso["folds"]:
        assert f["heldout_scene"] not in f["tuned_on"]  # never measured on a scene it was tuned on
    card = json.loads((out / "cloud_screen.card.json").read_text())
    assert card["name"] == "cloud_screen" and "-ft." in card["version"] and card["output_channels"] == ["thick", "thin", "shadow"]
    assert card["finetune"]["leave_one_scene_out"]["finetuned_int8_tile_accuracy"] == loso["finetuned_int8_tile_accuracy"]
    assert report["verify_failed"] == 0 and any(ln.startswith("OK   cloud_screen") for ln in lines)


def test_finetuned_bundle_installs_like_an_upload(tuned, tmp_path):
    from flight.model_update import unpack_bundle

    _rc, out, _ = tuned
    parts = unpack_bundle((out / "cloud_screen.bundle").read_bytes())
    assert json.loads(parts[1])["finetune"]["scenes"]
    assert parts[2] == (out / "cloud_screen.onnx").read_bytes()


def test_evaluate_marks_scenes_the_model_was_tuned_on(tuned):
    from models.evaluate import evaluate_scene

    _rc, out, _ = tuned
    r = evaluate_scene(REAL / "landsat5.npz", out / "cloud_screen.card.json")
    assert r["trained_on_this_scene"] is True and "thick_only" in r
