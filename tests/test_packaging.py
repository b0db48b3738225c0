"""The flight as a board installs it (issue #15): the package without extras in a fresh venv.

One module-scoped fixture builds the wheel from this checkout and installs it, with no extras,
into a new venv (PyPI or the local pip cache/find-links for the dependencies). The tests then run
the flight's console script from that venv: --help, and the flight process of a short launcher run
whose other processes (camera, link, ground) come from the checkout's .venv. The flight's imports
are read from its own log (PYTHONPROFILEIMPORTTIME), so what is proved is what the real flight
process imported, not what a test process did.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from payload_sim.testing import REPO, hil_command, kill_leftovers

# top-level names the flight must never import at run time
FORBIDDEN = ("payload_sim", "ground_link", "benchmarks", "torch", "sgp4", "starlette", "uvicorn", "matplotlib",
             "onnx", "pytest", "hypothesis", "tqdm")
FORBIDDEN_SUBMODULES = ("models.train", "models.export", "models.dataset", "models.evaluate", "models.real_experiments")
# what the base install may bring (the flight runtime and what it depends on), lower-case dist names
FLIGHT_DISTS = {"onboard-payload", "numpy", "onnxruntime", "opencv-python-headless", "pyzmq", "spacepackets",
                "cfdp-py", "psutil", "fastcrc", "deprecation", "packaging", "coloredlogs", "humanfriendly",
                "flatbuffers", "protobuf", "sympy", "mpmath", "pip", "setuptools"}


def _run(cmd, timeout=300, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def flight_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flight-only")
    wheels, venv = root / "wheels", root / "venv"
    t0 = time.monotonic()
    r = _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels),
              str(REPO)], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = wheels.glob("onboard_payload-*.whl")
    r = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    if r.returncode != 0:
        pytest.skip(f"cannot create a venv here: {r.stderr.strip()[-300:]}")
    # the checkout's (recent) pip installs into the new venv: ensurepip's older pip mis-resolves here
    r = _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
              "--disable-pip-version-check", str(wheel)], timeout=600, cwd=root)
    assert r.returncode == 0, f"installing the wheel without extras failed:\n{r.stderr[-3000:]}"
    print(f"flight-only venv in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return venv


def test_base_install_carries_only_the_flight_runtime(flight_venv):
    """pip install <wheel> (no extras) brings the flight's dependencies and nothing of the
    simulator, ground, benchmark or training extras; the console script is there."""
    r = _run([sys.executable, "-m", "pip", "--python", str(flight_venv / "bin" / "python"), "list", "--format", "json",
              "--disable-pip-version-check"])
    dists = {d["name"].lower().replace("_", "-") for d in json.loads(r.stdout)}
    assert {"onboard-payload", "numpy", "onnxruntime", "pyzmq", "spacepackets", "psutil"} <= dists
    extra = dists - FLIGHT_DISTS
    assert not extra, f"the base install brought more than the flight runtime: {sorted(extra)}"
    for absent in ("sgp4", "starlette", "uvicorn", "torch", "matplotlib", "onnx", "pytest"):
        assert absent not in dists
    assert (flight_venv / "bin" / "onboard-flight").exists()
    # the simulator's code is in the wheel but cannot run without its extra: proof the extra is needed
    r = _run([str(flight_venv / "bin" / "python"), "-c", "import payload_sim.orbit"], cwd=flight_venv)
    assert r.returncode != 0 and "sgp4" in r.stderr


def test_flight_console_script_help(flight_venv):
    r = _run([str(flight_venv / "bin" / "onboard-flight"), "--help"], cwd=flight_venv)
    assert r.returncode == 0, r.stderr
    for flag in ("--calibration", "--config", "--log-format", "--run-dir"):
        assert flag in r.stdout


def test_flight_from_the_fresh_venv_flies_a_short_scenario(flight_venv, tmp_path):
    """The launcher (checkout .venv) runs camera, link and ground; the flight process is the fresh
    venv's onboard-flight. The run completes, and the flight imported nothing of the simulator,
    ground, benchmarks, training code, torch or sgp4 (its own import log says so)."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "ONBOARD_FLIGHT_EXE": str(flight_venv / "bin" / "onboard-flight"), "PYTHONPROFILEIMPORTTIME": "1"}
    env.pop("PYTHONPATH", None)
    overrides = ["scenario.frames=2", "sensor.height=256", "sensor.width=256", "scenario.clock_rate=100.0",
                 "scenario.max_wall_s=90"]
    try:
        proc = _run(hil_command(run_dir, overrides), timeout=150, cwd=REPO, env=env)
    finally:
        left = kill_leftovers(run_dir)
    assert not left, f"processes left behind: {left}"
    flight_log = (run_dir / "flight.log").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert proc.returncode == 0 and summary["ok"], f"{proc.stderr[-2000:]}\n--- flight.log ---\n{flight_log[-2000:]}"
    assert summary["frames_processed"] == 2
    imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)\s*$", flight_log, re.M))
    assert "flight.app" in imported and "onnxruntime" in imported, "no import log from the flight process"
    bad = sorted(m for m in imported if m.split(".")[0] in FORBIDDEN or m.startswith(FORBIDDEN_SUBMODULES))
    assert not bad, f"the flight imported {bad}"
    # the wheel carries the native calibration kernel the checkout built, and the flight uses it
    lib = REPO / "flight" / "native" / f"libflight_kernels.{platform.machine()}.so"
    if lib.exists():
        assert f"NATIVE_KERNELS: native kernels: model input native; calibration native ({lib.name})" in flight_log
    # and the flight that ran was the installed one, not the checkout's
    r = _run([str(flight_venv / "bin" / "python"), "-c", "import flight, models; print(flight.__file__); print(models.__file__)"],
             cwd=flight_venv)
    assert r.returncode == 0 and all("site-packages" in line for line in r.stdout.split()), r.stdout + r.stderr


def test_makefile_runtime_extras_still_run_the_demo():
    """make run installs the sim and ground extras beside the flight (the base install lacks them)."""
    text = (REPO / "Makefile").read_text()
    assert "-e '.[sim,ground]'" in text
    assert shutil.which("make") is None or "verify-aarch64:" in text
