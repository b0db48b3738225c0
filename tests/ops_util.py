"""Helpers for the flight-operations tests: model bundles, a running scenario with a commander, figures."""

from __future__ import annotations

import json
import os
import struct
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from e2e_util import REPO

from flight.inference import ModelCard
from flight.model_update import CARD, GOLDEN, MAGIC, ONNX, golden_bytes
from payload_sim.testing import HilRun, query  # noqa: F401 (query: used by the ops tests)

MODELS = REPO / "models"
FIGURES = REPO / "runs" / "ops_figures"  # written by the tests, printed by `python -m flight.ops_report`

# 256 x 256 frames, one every 10 scenario seconds = 1 s of wall time: runs stay small and slow enough
# for a test to command them while they go on
OPS_BASE = ["sensor.height=256", "sensor.width=256", "scenario.clock_rate=10.0", "scenario.capture_interval_s=10.0",
            "link.uplink_rate_bps=2000000.0", "scenario.max_wall_s=120", "flight.housekeeping_period_s=10.0"]


def bundle(version: str = "1.0.1", tiles: int = 2, golden_int8: np.ndarray | None = None, onnx: bytes | None = None,
           name: str = "cloud_screen", card_changes: dict | None = None) -> bytes:
    """An upload bundle of the packaged model under a new version (its golden vectors cut to
    `tiles` to keep the upload small). `golden_int8` / `onnx` replace those parts (bad bundles);
    `card_changes` sets card keys (a value of None removes the key)."""
    card_path = MODELS / f"{name}.card.json"
    card = json.loads(card_path.read_text())
    card["version"] = version
    for k, v in (card_changes or {}).items():
        if v is None:
            card.pop(k, None)
        else:
            card[k] = v
    model_bytes = ModelCard.load(card_path).model_file().read_bytes()
    with np.load(MODELS / "golden" / f"{name}.npz", allow_pickle=False) as g:
        t, want, sha = g["tiles"][:tiles], g["int8"][:tiles], str(g["sha256"])
    gold = golden_bytes(t, want if golden_int8 is None else golden_int8, sha)
    parts = [(CARD, json.dumps(card).encode()), (ONNX, onnx if onnx is not None else model_bytes), (GOLDEN, gold)]
    return MAGIC + b"".join(struct.pack(">BI", k, len(b)) + b for k, b in parts)


def record_figures(test: str, **figures) -> None:
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / f"{test}.json").write_text(json.dumps(dict(figures, test=test, at=time.strftime("%Y-%m-%dT%H:%M:%S"))) + "\n")


Run = HilRun  # the package's HIL test API (payload_sim.testing), which these tests helped shape


@contextmanager
def flight_apps(tmp_path: Path, monkeypatch, base: list[str], now_s: float):
    """FlightApps without sockets on 256 x 256 frames, sharing one state folder (a second one is a
    restarted flight). Yields (make, key): make(extra_overrides) -> (app, scenario)."""
    from flight.app import FlightApp
    from flight.clock import ScenarioClock, parse_epoch
    from flight.config import load_scenario
    from flight.security import KEY_ENV, KEY_FILE_ENV, load_mission_key, write_mission_key
    from payload_sim.camera import CALIBRATION_VERSION, make_sensor

    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    affinity = os.sched_getaffinity(0)
    keyfile = write_mission_key(tmp_path / "mission.key")
    key_setting = f'security.command_key_file="{keyfile}"'
    apps = []

    def make(extra=()):
        sc = load_scenario(None, ["sensor.height=256", "sensor.width=256", key_setting, *base, *extra])
        cal = tmp_path / "cal.npz"
        if not cal.exists():
            make_sensor(sc).calibration_products(CALIBRATION_VERSION).save(cal)
        clock = ScenarioClock(parse_epoch(sc.scenario.epoch), 1.0, time.time() - now_s)
        app = FlightApp(sc, clock, cal, tmp_path)
        apps.append(app)
        return app, sc

    try:
        yield make, load_mission_key(load_scenario(None, [key_setting]).security)
    finally:
        for app in apps:
            app.watchdog.close()
            app.store.close()
        os.sched_setaffinity(0, affinity)
