"""Flags, summaries and exit codes that say ok (the ok-flags audit): each must be false, and the
exit status non-zero, when something went wrong; a tool must say what is wrong, not raise.

- payload_sim.constellation: the summary had no detection_recall, so the launcher's
  `detection_recall >= 0.6` check passed as "not measured" and a constellation whose detectors
  were off said ok (exit 0); an unreadable shared archive failed the run only through the products
  it seemed to have lost.
- benchmarks: a budget whose measurement is missing raised TypeError out of the harness
  (traceback); one that is infinite passed; the harness now exits 2 (cannot measure), --smoke too.
- ground_link.watch --once: exit 0 with "unreadable (file is not a database)" on the screen.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from payload_sim.testing import DEMO, REPO, kill_leftovers

# --- the constellation launcher: detections scored, per satellite ------------------------------------


def _ship(row: float, col: float) -> dict:
    return {"kind": "ship", "row": row, "col": col, "length_px": 6.0, "pixels": 10, "occluded": False}


def _fake_constellation(tmp_path: Path, found_on_sat1: bool) -> SimpleNamespace:
    """Two satellites whose frame 0 (each counts from 0) has 6 ships at the same pixels; the
    shared SQLite archive holds both frame summaries and, if `found_on_sat1`, satellite 1's six
    detections. Real files: status files, truth.jsonl per satellite, an archive written by
    ground_link.archive.Archive."""
    from flight.products import Detection, FrameSummary
    from ground_link.archive import Archive

    run_dir = tmp_path / "run"
    ships = [_ship(100, 100 + 40 * k) for k in range(6)]
    for sid in (1, 2):
        d = run_dir / f"sat{sid}"
        d.mkdir(parents=True)
        (d / "truth.jsonl").write_text(json.dumps({"frame_id": 0, "cloud_fraction": 0.0, "objects": ships}) + "\n")
        (d / "camera.status.json").write_text(json.dumps({"frames_captured": 1, "done": True}))
        (d / "flight.status.json").write_text(json.dumps({"frames_processed": 1, "products_created": 1 + 6 * (sid == 1),
                                                          "store_products": 0, "packets_sent": 1}))
    (run_dir / "baku").mkdir()
    archive = run_dir / "archive.sqlite"
    arch = Archive(archive, "baku")
    for sid in (1, 2):
        arch.product(FrameSummary(1, 0, 0.0, 16, 0, 0.0, 0, 6, 0, 10.0, 40.0, 50.0), 1.0, satellite_id=sid)
    if found_on_sat1:
        for k, o in enumerate(ships):
            arch.product(Detection(2 + k, 0, 0.0, 1, 230, o["row"], o["col"], 40.0, 50.0, 12), 1.0, satellite_id=1)
    arch.db.close()
    return SimpleNamespace(sc=SimpleNamespace(scenario=SimpleNamespace(clock_rate=1.0)), clock_start=0.0,
                           archive=str(archive), sats=[SimpleNamespace(id=1), SimpleNamespace(id=2)], stations=["baku"],
                           run_dir=run_dir, pg=None, sat_dir=lambda sid: run_dir / f"sat{sid}")


def test_constellation_summary_scores_each_satellites_detections_against_its_own_truth(tmp_path, capsys):
    """Before: no detection_recall in the summary; the check passed as "not measured" and ok was
    true though satellite 2 reported none of its 6 ships. Satellite 1's detections must not count
    for satellite 2's ships at the same pixels of its own frame 0."""
    from flight.config import load_scenario
    from payload_sim.constellation import summarize
    from payload_sim.hil import DETECTION_RECALL_MIN, default_expectations, write_summary

    launch = _fake_constellation(tmp_path, found_on_sat1=True)
    summary = summarize(launch, 1.0, {}, {})
    assert summary["objects_true"] == 12 and summary["objects_found"] == 6
    assert summary["detection_recall"] == 0.5 < DETECTION_RECALL_MIN
    assert summary["per_satellite"]["1"]["objects_found"] == 6 and summary["per_satellite"]["2"]["objects_found"] == 0
    assert summary["false_alarms"] == 0 and summary["archive_unreadable"] is None
    code = write_summary(summary, default_expectations(load_scenario(DEMO, [])), 0, None, launch.run_dir, "constellation")
    assert code == 1 and not summary["ok"] and "detection_recall = 0.5" in summary["failure"]
    capsys.readouterr()


def test_constellation_summary_says_when_the_shared_archive_is_unreadable(tmp_path, capsys):
    from payload_sim.constellation import summarize

    launch = _fake_constellation(tmp_path, found_on_sat1=True)
    Path(launch.archive).write_bytes(b"not a database" * 100)
    summary = summarize(launch, 1.0, {}, {})
    assert summary["archive_unreadable"] and "not a database" in summary["archive_unreadable"]
    assert summary["products_delivered"] == 0 and summary["detection_recall"] is None
    capsys.readouterr()


def _constellation_run(tmp_path: Path, name: str, sets: list[str]) -> tuple[subprocess.CompletedProcess, dict]:
    run_dir = tmp_path / name
    base = ["constellation.satellites=[{id=1}, {id=2}]", 'constellation.archive="sqlite"', "scenario.frames=6",
            "scenario.max_wall_s=100"]
    cmd = [sys.executable, "-m", "payload_sim.hil", str(DEMO), "--run-dir", str(run_dir), "--quiet",
           *[x for s in base + sets for x in ("--set", s)]]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=150)
    finally:
        left = kill_leftovers(run_dir)
    assert not left, f"processes left behind: {left}"
    return proc, json.loads((run_dir / "summary.json").read_text())


@pytest.mark.timeout(300)
def test_a_constellation_whose_detectors_are_off_is_not_ok(tmp_path):
    """Two satellites of the demo (6 frames of 1024 px each, link always up, shared SQLite), real
    processes. With only the cloud screen in the cascade every product arrives and nothing else is
    wrong; before, the launcher said ok and exited 0. With the detectors on it stays ok."""
    proc, summary = _constellation_run(tmp_path, "quiet", ['flight.cascade=[{model="cloud_screen"}]'])
    assert proc.returncode == 1 and not summary["ok"], proc.stderr[-3000:]
    assert summary["objects_true"] >= 10 and summary["objects_found"] == 0
    assert "detection_recall = 0.0, expected >= 0.6" in summary["failure"]
    assert summary["products_lost"] == 0 and summary["exactly_once"] and summary["frames_processed"] == 12
    proc, summary = _constellation_run(tmp_path, "on", [])
    assert proc.returncode == 0 and summary["ok"], proc.stderr[-3000:]
    assert summary["detection_recall"] >= 0.6 and summary["objects_true"] == 22  # same scenes (seeded)
    assert sum(s["objects_true"] for s in summary["per_satellite"].values()) == summary["objects_true"]


# --- the benchmark harness: a budget not measured is never within ----------------------------------

BUDGETS = {"latency_p50_ms": 160.0, "latency_p99_ms": 200.0, "latency_max_ms": 400.0, "peak_rss_mib": 192.0,
           "cadence_fps": 5.0}


@pytest.mark.parametrize("what, value", [("missing", None), ("nan", math.nan), ("inf", math.inf), ("text", "12")])
def test_a_budget_whose_measurement_is_missing_or_not_finite_is_not_within(what, value):
    """Before: None raised TypeError (a traceback out of the harness), "12" too; an infinite cadence
    (no wall time) was within its budget."""
    from benchmarks import report

    res = {"latency_ms": {"p50": 10.0, "p99": 20.0, "max": 30.0}, "peak_rss_mib": 100.0, "cadence_fps": 50.0}
    res["cadence_fps" if what == "inf" else "peak_rss_mib"] = value
    if what == "missing":
        del res["peak_rss_mib"]
    within, held = report.check_budgets(res, BUDGETS, {"records": []})
    name = "cadence_fps" if what == "inf" else "peak_rss_mib"
    assert within[name] is False and held[name].startswith("not measured")
    assert all(ok for k, ok in within.items() if k != name)  # the measured ones are still judged


def _fake_runner(real_run, drop: str):
    """Runner.run doing the main pipeline run for real (smoke frames, a few seconds) and, as if the
    child had not reported it, without `drop`; every other child fails (the harness notes it)."""
    from benchmarks.harness import ChildFailed

    def run(self, spec):
        if spec["kind"] != "pipeline" or getattr(self, "_main_done", False):
            raise ChildFailed(f"{spec['kind']} skipped by the test")
        self._main_done = True
        out = real_run(self, spec)
        out[drop] = None
        return out

    return run


def test_the_harness_exits_2_when_a_budget_was_not_measured_even_for_smoke(tmp_path, monkeypatch, capsys):
    """Before: TypeError out of report.check_budgets (a traceback, exit 1 from the interpreter)."""
    if not (REPO / "models" / "cloud_screen.card.json").exists():
        pytest.skip("models not built")
    from benchmarks import harness

    monkeypatch.setattr(harness.Runner, "run", _fake_runner(harness.Runner.run, "peak_rss_mib"))
    code = harness.main(["--profile", "default", "--smoke", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "cannot measure: budget peak_rss_mib: not measured" in err
    res = json.loads((tmp_path / "latest.json").read_text())
    assert res["within_budget"]["peak_rss_mib"] is False and res["within_budget"]["latency_p50_ms"] in (True, False)
    assert "| peak_rss_mib | n/a |" in (tmp_path / "latest.md").read_text()


# --- ground_link.watch --once -----------------------------------------------------------------------


def _watch(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ground_link.watch", str(path), "--once"], cwd=REPO,
                          capture_output=True, text=True, timeout=30)


def test_watch_once_exits_1_when_the_archive_is_unreadable_and_0_when_it_is_not_there_yet(tmp_path):
    """Before: exit 0, the screen saying "unreadable (file is not a database)" and then "(no archive
    yet)". A run folder whose archive is not made yet (a run starting) is still 0."""
    run = tmp_path / "run"
    run.mkdir()
    out = _watch(run)
    assert out.returncode == 0 and "(no archive yet)" in out.stdout, out.stderr
    (run / "archive.sqlite").write_bytes(b"junk" * 100)
    out = _watch(run)
    assert out.returncode == 1, out.stdout
    assert "unreadable (file is not a database)" in out.stdout and "(no archive yet)" not in out.stdout
    assert out.stderr.startswith("watch: ") and "Traceback" not in out.stderr
    # a constellation's run folder: its shared archive named in constellation.json
    cons = tmp_path / "cons"
    cons.mkdir()
    info = {"satellites": [1], "stations": ["baku"], "archive": str(cons / "archive.sqlite")}
    (cons / "constellation.json").write_text(json.dumps(info))
    out = _watch(cons)
    assert out.returncode == 0 and "(no archive yet)" in out.stdout, out.stdout + out.stderr
    (cons / "archive.sqlite").write_bytes(b"junk" * 100)
    out = _watch(cons)
    assert out.returncode == 1 and "unreadable" in out.stdout and "shared archive" in out.stderr
    (cons / "constellation.json").write_text("{")
    out = _watch(cons)
    assert out.returncode == 1 and "constellation.json unreadable" in out.stdout


# --- python -m models verify --------------------------------------------------------------------------


def test_verify_fails_fp32_golden_outputs_of_another_shape(tmp_path):
    """Golden tiles that repeat one tile, INT8 outputs right, FP32 outputs of that one tile only
    (shape (1, ...) for 6 tiles): compared by broadcasting, verify said "OK ... fp32 max|d| 0.0e+00"."""
    import shutil

    import numpy as np

    from flight.inference import TileModel
    from models.__main__ import MODELS_DIR, verify

    d = tmp_path / "models"
    (d / "golden").mkdir(parents=True)
    for f in MODELS_DIR.glob("cloud_screen*"):
        shutil.copy(f, d / f.name)
    with np.load(MODELS_DIR / "golden" / "cloud_screen.npz") as g:
        arrays = {k: g[k] for k in g.files}
    tiles = np.repeat(arrays["tiles"][:1], len(arrays["tiles"]), axis=0)
    card = d / "cloud_screen.card.json"
    arrays |= {"tiles": tiles, "int8": TileModel(card, batch_size=64).run(tiles),
               "fp32": TileModel(card, precision="fp32").run(tiles[:1])}
    np.savez(d / "golden" / "cloud_screen.npz", **arrays)
    lines: list[str] = []
    assert verify(d, log=lines.append) == 1, lines
    assert any(ln.startswith("FAIL cloud_screen") and "FP32 output shape" in ln for ln in lines), lines
    arrays["fp32"] = TileModel(card, precision="fp32").run(tiles)  # the same, whole: verifies
    np.savez(d / "golden" / "cloud_screen.npz", **arrays)
    assert verify(d, log=lines.append) == 0, lines


def test_verify_aarch64_refuses_a_blank_cpu_list_instead_of_saying_ok():
    """QEMU_CPUS=" " ran no emulated CPU and still printed OK (noticed by this audit). It now
    stops at once, before building or running anything, with exit 2."""
    import subprocess

    from payload_sim.testing import REPO

    r = subprocess.run(["bash", "scripts/verify_aarch64.sh"], cwd=REPO, capture_output=True, text=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin", "QEMU_CPUS": " ", "PY": "/nonexistent"})
    assert r.returncode == 2 and "names no CPU model" in r.stderr and "OK" not in r.stdout
