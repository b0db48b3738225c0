"""Command-line tools and their file inputs under hostile or odd input (the tools audit).

`python -m models evaluate|verify`, the launcher's scenario sections ([faults], [expect], [orbit],
[[ground_stations]], sensor.source), the launcher's `ok`, and the benchmark CLIs: a bad input is a
one-line error with a non-zero exit before anything starts (no traceback), a bad model is a FAIL,
and `ok` is false when something went wrong.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
LAB = REPO / "payload_sim" / "scenarios" / "lab_plain_link.toml"


# ------------------------------------------------------------------------- models evaluate --scene
def _npz_declaring(path: Path, shape: tuple, payload: bytes = b"\0" * 64) -> Path:
    """An .npz whose 'img' header declares `shape` but holds only `payload`."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("img.npy", head.getvalue() + payload)
    return path


def _scene_files(d: Path) -> dict[str, Path]:
    rng = np.random.default_rng(7)
    ok_img = rng.uniform(0.01, 0.5, (128, 128, 6)).astype(np.float32)
    files = {}

    def save(name, **arrays):
        files[name] = d / f"{name}.npz"
        np.savez(files[name], **arrays)

    save("one_pixel", img=ok_img[:1, :1])
    save("narrow", img=np.zeros((32, 1000, 6), np.float32))  # no whole 64 x 64 tile
    save("zero", img=np.zeros((0, 0, 6), np.float32))
    nan = ok_img.copy()
    nan[5, 5, 2] = np.nan
    save("nan", img=nan)
    save("inf", img=np.full((128, 128, 6), np.inf, np.float32))
    save("beyond_float32", img=np.full((128, 128, 6), 1e300))  # float64, inf as float32
    save("complex", img=ok_img.astype(np.complex64))
    save("strings", img=np.array(["a"] * 6).reshape(1, 1, 6))
    save("string_mask", img=ok_img, msk=np.array(["4"] * (128 * 128)))
    save("no_img", a=np.zeros(3))
    files["missing"] = d / "missing.npz"
    files["folder"] = d
    (d / "text.npz").write_text("hello")
    files["text"] = d / "text.npz"
    np.savez(d / "whole.npz", img=ok_img)
    whole = (d / "whole.npz").read_bytes()
    (d / "truncated.npz").write_bytes(whole[: len(whole) // 2])
    files["truncated"] = d / "truncated.npz"
    files["huge_declared"] = _npz_declaring(d / "huge.npz", (100_000, 100_000, 6))
    files["short_data"] = _npz_declaring(d / "short.npz", (128, 128, 6))
    return files


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory):
    return _scene_files(tmp_path_factory.mktemp("scenes"))


BAD_SCENES = ("one_pixel", "narrow", "zero", "nan", "inf", "beyond_float32", "complex", "strings", "string_mask",
              "no_img", "missing", "folder", "text", "truncated", "huge_declared", "short_data")


@pytest.mark.parametrize("case", BAD_SCENES)
def test_evaluate_refuses_a_bad_scene_file_in_one_line(case, scene_files, capsys):
    # before: a traceback (cv2 assertion for scenes smaller than a tile, BadZipFile, MemoryError for a
    # huge declared shape) or, for NaN / inf / complex reflectance and a string mask, exit 0 with
    # metrics made up from silently zeroed or saturated pixels
    from models.__main__ import main

    rc = main(["evaluate", "--scene", str(scene_files[case])])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("models evaluate: ") and "\n" not in err and "Traceback" not in err, err
    assert str(scene_files[case]) in err


def test_evaluate_cli_error_has_no_traceback(scene_files):
    r = subprocess.run([sys.executable, "-m", "models", "evaluate", "--scene", str(scene_files["truncated"])],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("seed", ["-1", str(2**63), "1.5", "nan"])
def test_evaluate_noise_seed_out_of_range_is_a_usage_error(seed, scene_files, capsys):
    from models.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--scene", str(scene_files["nan"]), f"--noise-seed={seed}"])
    assert exc.value.code == 2
    assert "--noise-seed" in capsys.readouterr().err


def test_evaluate_scene_checks_its_header_before_allocating(tmp_path):
    from payload_sim.scenes import real_scene

    path = _npz_declaring(tmp_path / "h.npz", (16385, 64, 6))
    with pytest.raises(ValueError, match=r"1\.\.16384"):
        real_scene(path)


# ---------------------------------------------------------------------------------- models verify
def _model_copy(d: Path, names=("cloud_screen",)) -> Path:
    (d / "golden").mkdir(parents=True)
    for name in names:
        for f in MODELS.glob(f"{name}*"):
            shutil.copy(f, d / f.name)
        shutil.copy(MODELS / "golden" / f"{name}.npz", d / "golden" / f"{name}.npz")
    return d


def _golden(d: Path, name: str, **change) -> None:
    with np.load(MODELS / "golden" / f"{name}.npz") as g:
        arrays = {k: g[k] for k in g.files}
    for k, v in change.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    np.savez(d / "golden" / f"{name}.npz", **arrays)


@pytest.mark.parametrize("damage", ["truncated_golden", "string_int8", "string_fp32", "deep_card"])
def test_verify_reports_fail_for_the_damaged_model_and_verifies_the_others(damage, tmp_path):
    # before: BadZipFile, numpy's UFuncTypeError and RecursionError escaped verify's except list:
    # a traceback, and the models after the damaged one were never verified
    from models.__main__ import verify

    d = _model_copy(tmp_path, ("cloud_screen", "fire_detect"))
    if damage == "truncated_golden":
        p = d / "golden" / "cloud_screen.npz"
        p.write_bytes(p.read_bytes()[:500])
    elif damage == "string_int8":
        _golden(d, "cloud_screen", int8=np.array(["x"] * 6))
    elif damage == "string_fp32":
        _golden(d, "cloud_screen", fp32=np.array(["x"] * 6))
    else:
        (d / "cloud_screen.card.json").write_text("[" * 100_000 + "]" * 100_000)
    lines: list[str] = []
    assert verify(d, log=lines.append) == 1
    assert any(ln.startswith("FAIL cloud_screen") for ln in lines), lines
    assert any(ln.startswith("OK   fire_detect") for ln in lines), lines
    assert lines[-1] == "1/2 models verified"


def test_verify_fails_when_the_golden_file_has_no_fp32_outputs(tmp_path):
    # before: "OK ... fp32 max|d| nan <= 1e-05": the card's FP32 file was compared with nothing
    from models.__main__ import verify

    d = _model_copy(tmp_path)
    _golden(d, "cloud_screen", fp32=None)
    lines: list[str] = []
    assert verify(d, log=lines.append) == 1
    assert any(ln.startswith("FAIL cloud_screen") and "fp32" in ln for ln in lines), lines


# ------------------------------------------------------------------- the launcher's scenario sections
HIL_REFUSED = [
    ["faults.corrupt_frames=5"],  # was: TypeError traceback from len(5)
    ["faults.corrupt_frames=\"abc\""],  # was: 3 corrupt frames expected, none injected
    ["faults.corrupt_frames=[1, 1]"],  # was: 2 rejections expected, 1 frame corrupted
    ["faults.corrupt_frames=[10]"],  # frames = 10: frame 10 never comes
    ["faults.corrupt_frames=[true]"],
    ["faults.hostile_messages_per_frame=\"x\""],  # was: the camera died midway (int('x'))
    ["faults.hostile_messages_per_frame=nan"],
    ["faults.hostile_messages_per_frame=1000000000"],
    ["faults.kill_flight_at_s=\"x\""],  # was: TypeError in the launcher's loop after the start
    ["faults.kill_flight_at_s=nan"],  # was: silently never killed
    ["faults.kill_flight_at_s=-1"],
    ["faults.kil_flight_at_s=5"],  # a typo: was ignored, the run "ok" without the fault
    ["faults.corrupt_model=\"cloud_screen\""],  # without corrupt_model_at_s: was silently no fault
    ["faults.corrupt_model=\"no_such\"", "faults.corrupt_model_at_s=5"],
    ["faults.restart_station_at_s=3"],
    ["faults.raise_in=[[1]]"],  # the flight's own keys: was a flight process dying at start
    ["faults.slow_model_s=nan"],
    ["expect.frames_rejected=true"],
    ["expect.frames_rejected=[1]"],
    ["orbit.tle1=\"junk\""],  # was: the camera died at start (make_orbit)
    ["orbit.x=1"],
    ["sensor.source=\"/nonexistent/scene.npz\""],  # was: the camera died rendering frame 0
]


@pytest.mark.parametrize("sets", HIL_REFUSED, ids=lambda s: " ".join(s))
def test_hil_refuses_odd_simulator_sections_before_starting_anything(sets, tmp_path, capsys):
    from payload_sim import hil

    run_dir = tmp_path / "run"
    argv = [str(LAB), "--run-dir", str(run_dir), "--quiet"]
    for s in sets:
        argv += ["--set", s]
    assert hil.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hil: ") and "\n" not in err, err
    assert not run_dir.exists()  # refused before the run folder, the keys or any process


def _scenario_file(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "odd.toml"
    path.write_text(LAB.read_text() + "\n" + extra + "\n")
    return path


@pytest.mark.parametrize("table", [
    "[[ground_stations]]\nname = \"x\"\nlat_deg = \"north\"\nlon_deg = 0.0",  # was: TypeError where stations are used
    "[[ground_stations]]\nname = \"x\"\nlat_deg = nan\nlon_deg = 0.0",
    "[[ground_stations]]\nname = \"x\"\nlat_deg = 1.0\nlon_deg = 0.0\nheight = 3",
    "[faults.corrupt_frames]\nx = 1",
    "[expect.nested]\nx = 1",
])
def test_hil_refuses_odd_tables_in_the_scenario_file(table, tmp_path, capsys):
    from payload_sim import hil

    run_dir = tmp_path / "run"
    assert hil.main([str(_scenario_file(tmp_path, table)), "--run-dir", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hil: ") and "\n" not in err, err
    assert not run_dir.exists()


def test_hil_refuses_a_non_table_faults_section_without_a_traceback(tmp_path):
    path = tmp_path / "odd.toml"
    path.write_text("faults = 5\n" + LAB.read_text())  # was: AttributeError traceback ('int'.get)
    r = subprocess.run([sys.executable, "-m", "payload_sim.hil", str(path), "--run-dir", str(tmp_path / "run"), "--quiet"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().startswith("hil: config faults = 5"), r.stderr
    assert not (tmp_path / "run").exists()


def test_hil_refuses_a_real_scene_of_another_size_and_a_nan_expectation(tmp_path, scene_files, capsys):
    from payload_sim import hil

    scene = tmp_path / "scene.npz"
    np.savez(scene, img=np.full((128, 128, 6), 0.1, np.float32))
    for extra in (["--set", f"sensor.source={json.dumps(str(scene))}"],  # 128 x 128, the sensor is 256 x 256
                  ["--set", f"sensor.source={json.dumps(str(scene_files['nan']))}"],
                  ["--expect", "frames_rejected=nan"],  # was: a whole run, then "not met" whatever happened
                  ["--run-dir", str(scene)]):  # a file: was FileExistsError traceback
        argv = [str(LAB), "--run-dir", str(tmp_path / "run"), "--quiet", *extra]
        assert hil.main(argv) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("hil: ") and "\n" not in err, err
    assert not (tmp_path / "run").exists()


def test_shipped_scenarios_pass_the_simulator_section_checks():
    from flight.config import load_scenario
    from payload_sim.hil import check_sim_sections

    for path in sorted((REPO / "payload_sim" / "scenarios").glob("*.toml")):
        check_sim_sections(load_scenario(path))  # raises on a refusal


# --------------------------------------------------------------------------------- the launcher's ok
def _summary(**values) -> dict:
    base = {"frames_rejected": 0, "products_lost": 0, "commands_refused": 0, "retransmit_fraction": 0.0,
            "software_faults": 0}
    return base | values


@pytest.mark.parametrize("raise_in, faults, ok", [([], 0, True), ([], 1, False), (["housekeeping"], 1, True),
                                                   (["housekeeping"], 2, False)])
def test_ok_is_false_when_the_flight_caught_a_software_fault(raise_in, faults, ok, tmp_path, capsys):
    # before: a run whose flight hit a bug (caught by the last-resort handler) still said ok
    from flight.config import load_scenario
    from payload_sim.hil import expectations, write_summary

    sc = load_scenario(LAB, [f"faults.raise_in={json.dumps(raise_in)}"])
    summary = _summary(software_faults=faults)
    code = write_summary(summary, expectations(sc, []), 0, None, tmp_path, "hil")
    capsys.readouterr()
    assert summary["ok"] is ok and (code == 0) is ok
    assert json.loads((tmp_path / "summary.json").read_text())["ok"] is ok


# ------------------------------------------------------------------------------- benchmark CLIs
def _soak(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.soak", "--smoke", "--out", str(tmp_path / "soak"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("args", [
    ("--profile", "no_such_profile"),  # was: ProfileError traceback, exit 1
    ("--variants", "off,off", "--frames", "1", "--every", "1"),  # was: two children on one log, one orphaned
    ("--frames", "2", "--every", "5"),  # was: no memory sample, exit 0
])
def test_soak_usage_errors(args, tmp_path):
    r = _soak(tmp_path, *args)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "error:" in r.stderr.splitlines()[-1], r.stderr
    assert not (tmp_path / "soak").exists()  # refused before any child


def _budgets(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "budgets.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_budget_is_refused(value, tmp_path):
    from benchmarks.profiles import BUDGETS_FILE, ProfileError, load_profile

    text = BUDGETS_FILE.read_text().replace("latency_p50_ms = 160", f"latency_p50_ms = {value}", 1)
    assert f"latency_p50_ms = {value}" in text
    with pytest.raises(ProfileError, match="latency_p50_ms"):
        load_profile("default", path=_budgets(tmp_path, text))


@pytest.mark.parametrize("text", ["default = 5\n", "smoke = 3\n[default]\nheight = 64\n"])
def test_harness_reports_a_profile_that_is_not_a_table_as_cannot_measure(text, tmp_path, capsys):
    # before: TypeError traceback (dict(5), dict.update(3))
    from benchmarks import harness

    args = ["--budgets", str(_budgets(tmp_path, text)), "--out", str(tmp_path / "out")]
    assert harness.main(args + (["--smoke"] if "smoke" in text else [])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("benchmark: cannot measure: ") and "must be a table" in err, err


# ------------------------------------------------------------------------------- other simulator CLIs
SMALL_SENSOR = ["--set", "sensor.height=64", "--set", "sensor.width=64", "--set", "sensor.strip_rows=64"]


@pytest.mark.parametrize("args", [["--version="], ["--out-is-folder"], ["--tables-is-folder"]])
def test_calibrate_bad_version_or_output_is_one_line(args, tmp_path, capsys):
    # before: ValueError / IsADirectoryError tracebacks
    from payload_sim.calibrate import main

    out = tmp_path if args == ["--out-is-folder"] else tmp_path / "cal.npz"
    extra = ["--tables", str(tmp_path)] if args == ["--tables-is-folder"] else [a for a in args if a.startswith("--version")]
    assert main(["--out", str(out), *SMALL_SENSOR, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err


def _verify_result(path: Path, frames: int, packets: list) -> Path:
    path.write_text(json.dumps({"machine": "x86_64", "onnxruntime": "1", "frames": frames, "frames_processed": frames,
                                "errors": 0, "packets": packets}))
    return path


def test_verify_aarch64_compare_of_two_empty_runs_is_not_same(tmp_path, capsys):
    # before: 0 frames on both sides, no packets: "SAME 0 science packets", exit 0, nothing verified
    from payload_sim.verify_aarch64 import main

    a, b = _verify_result(tmp_path / "a.json", 0, []), _verify_result(tmp_path / "b.json", 0, [])
    assert main(["compare", str(a), str(b)]) == 1
    assert "nothing to compare" in capsys.readouterr().err
    pk = [{"apid": 257, "sha256": "ab" * 32, "hex": ""}]
    a, b = _verify_result(tmp_path / "a.json", 1, pk), _verify_result(tmp_path / "b.json", 1, pk)
    assert main(["compare", str(a), str(b)]) == 0  # the same one packet: still SAME


@pytest.mark.parametrize("case", ["missing", "not_json", "no_keys"])
def test_verify_aarch64_compare_of_a_bad_result_file_is_one_line(case, tmp_path, capsys):
    from payload_sim.verify_aarch64 import main

    good = _verify_result(tmp_path / "good.json", 1, [{"apid": 257, "sha256": "ab" * 32, "hex": ""}])
    bad = tmp_path / "bad.json"
    if case == "not_json":
        bad.write_text("{")
    elif case == "no_keys":
        bad.write_text("{}")
    assert main(["compare", str(good), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("verify: error: ") and "\n" not in err, err


def test_verify_aarch64_run_of_a_folder_never_prepared_is_one_line(tmp_path, capsys):
    from payload_sim.verify_aarch64 import main

    assert main(["run", str(tmp_path), "--out", str(tmp_path / "r.json")]) == 2
    assert capsys.readouterr().err.strip().startswith("verify: error: FileNotFoundError")


@pytest.mark.parametrize("tool, argv", [
    ("payload_sim.verify_aarch64", ["prepare", "DIR", "--frames", "0"]),  # was: "prepared 0 frames", then SAME
    ("payload_sim.verify_aarch64", ["prepare", "DIR", "--frames", "-1"]),
    ("payload_sim.gallery", ["--size", "0", "--out", "DIR"]),  # was: ValueError traceback
    ("payload_sim.gallery", ["--size", "100", "--out", "DIR"]),
    ("payload_sim.gallery", ["--size", str(2**63), "--out", "DIR"]),
])
def test_simulator_cli_count_arguments_are_usage_errors(tool, argv, tmp_path, capsys):
    import importlib

    main = importlib.import_module(tool).main
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "d") if a == "DIR" else a for a in argv])
    assert exc.value.code == 2
    assert "error: argument" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_harness_refuses_an_out_that_is_a_file_before_measuring(tmp_path, capsys):
    # before: the whole measurement ran, then mkdir failed with "[Errno 17] File exists"
    from benchmarks import harness

    out = tmp_path / "results"
    out.write_text("not a folder")
    assert harness.main(["--profile", "default", "--smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"benchmark: cannot measure: --out {out} exists and is not a folder", err


def test_camera_started_alone_refuses_a_real_source_of_another_size(tmp_path):
    # before: the camera bound its socket, then died rendering frame 0 (a ValueError from render)
    scene = tmp_path / "scene.npz"
    np.savez(scene, img=np.full((128, 128, 6), 0.1, np.float32))
    r = subprocess.run([sys.executable, "-m", "payload_sim.camera", str(LAB), "--run-dir", str(tmp_path / "run"),
                        "--set", f"sensor.source={json.dumps(str(scene))}"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().startswith("error: config sensor.source") and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "run" / "truth.jsonl").exists()
