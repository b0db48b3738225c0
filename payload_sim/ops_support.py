"""What the launcher does for flight operations (issue #7), kept out of hil.py's own logic.

- `launch_overrides`: per-run key material (a fresh mission key, CURVE certificates: CURVE is on
  unless a lab scenario turns it off, and then the launcher says so) and the flight's state
  folder, as `--set` overrides with absolute paths, so a flight restarted in another folder still
  finds them.
- `preload_contact_plan`: the flight's contact plan (flight/contacts.py) written into its state
  folder before launch, as a real mission loads its first pass plan before the satellite flies;
  later plans go up by file transfer (`ground_link.commander contact-plan`).
- `write_launch_record`: RUN_DIR/launch.json (scenario, overrides, clock start) from which
  `python -m ground_link.commander --run-dir RUN_DIR` finds the endpoints, keys and clock.
- `OpsFaults`: scenario faults the launcher injects from outside the flight process:

      [faults]
      corrupt_model = "cloud_screen"   # flip one byte of this model's active ONNX file on disk ...
      corrupt_model_at_s = 30.0        # ... at this scenario time
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from flight.config import Scenario
from flight.inference import ModelCard
from flight.security import KEY_ENV, KEY_FILE_ENV, generate_curve_keys, write_mission_key


def _toml_str(path: Path) -> str:
    return json.dumps(str(path.resolve()))  # a JSON string is a TOML basic string


def launch_overrides(scenario: Scenario, run_dir: Path) -> list[str]:
    import os

    out = []
    if not scenario.security.command_key_file and not (os.environ.get(KEY_ENV) or os.environ.get(KEY_FILE_ENV)):
        out.append(f"security.command_key_file={_toml_str(write_mission_key(run_dir / 'mission.key'))}")
    if scenario.security.curve and not scenario.security.curve_dir:
        out.append(f"security.curve_dir={_toml_str(generate_curve_keys(run_dir / 'curve'))}")
    if not scenario.security.curve:
        print("hil: security.curve is off (a lab scenario): every link is plain, and any process that reaches "
              "the uplink input can send; commands and acknowledgements are still authenticated", file=sys.stderr)
    if not scenario.ops.state_dir:
        out.append(f"ops.state_dir={_toml_str(run_dir)}")
    return out


def contact_plan_bytes(scenario: Scenario) -> bytes | None:
    """The ground's contact plan of the scenario (schedule or sgp4 passes) as the flight's plan
    file; None when the link is always up (nothing to plan)."""
    from flight.clock import parse_epoch
    from flight.contacts import plan_json
    from ground_link.linkmodel import make_contacts

    contacts = make_contacts(scenario)
    if contacts.windows is None:
        return None
    windows = [(w.station, w.aos_s, w.los_s) for w in contacts.windows]
    return plan_json(windows, parse_epoch(scenario.scenario.epoch))


def preload_contact_plan(scenario: Scenario, state_dir: Path) -> str | None:
    """Load the scenario's passes into the flight's state folder before launch (what it says, or
    None). Every launch is a new run, so a plan left in a reused state folder by an earlier run
    (another epoch, other passes) is replaced, or removed when this run's link is always up. (The
    launcher's restart of a killed flight does not come here: that flight keeps its plan.)"""
    from flight.contacts import PLAN_FILE, keep_plan_file

    if not scenario.flight.use_contact_plan:
        return None
    data = contact_plan_bytes(scenario)
    path = state_dir / PLAN_FILE
    if data is None:
        if path.exists():
            path.unlink()
            return f"contact plan of an earlier run removed from {state_dir} (this run's link is always up)"
        return None
    state_dir.mkdir(parents=True, exist_ok=True)
    keep_plan_file(state_dir, data)
    windows = len(json.loads(data)["windows"])
    return f"contact plan ({windows} windows) preloaded into the flight's state folder {state_dir}"


def write_launch_record(run_dir: Path, scenario_path: str, overrides: list[str], clock_start: float,
                        route: dict | None = None) -> None:
    """`route`: a constellation satellite's uplinks and shared archive (ground_link.commander)."""
    record = {"scenario": str(Path(scenario_path).resolve()), "overrides": overrides, "clock_start": clock_start,
              "run_dir": str(run_dir.resolve())} | ({"route": route} if route else {})
    tmp = run_dir / "launch.json.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(run_dir / "launch.json")


def active_model_file(state_dir: Path, name: str) -> Path:
    active = json.loads((state_dir / "models" / "active.json").read_text())[name]
    return ModelCard.load(state_dir / "models" / active["folder"] / f"{name}.card.json").model_file()


class OpsFaults:
    def __init__(self, scenario: Scenario, run_dir: Path, clock_start: float):
        faults = scenario.extra.get("faults", {})
        self.model = faults.get("corrupt_model")
        self.at_s = faults.get("corrupt_model_at_s")
        self.rate, self.clock_start, self.run_dir = scenario.scenario.clock_rate, clock_start, run_dir
        self.state_dir = Path(scenario.ops.state_dir) if scenario.ops.state_dir else run_dir
        self.done = self.model is None or self.at_s is None

    def step(self) -> None:
        if self.done or (time.time() - self.clock_start) * self.rate < self.at_s:
            return
        self.done = True
        try:
            path = active_model_file(self.state_dir, self.model)
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
        except (OSError, KeyError, ValueError) as exc:
            print(f"hil: fault: could not corrupt model {self.model}: {exc}", file=sys.stderr)
            return
        t = (time.time() - self.clock_start) * self.rate
        (self.run_dir / "ops_faults.json").write_text(json.dumps(
            {"corrupted_model": self.model, "file": str(path), "at_s": round(t, 3)}) + "\n")
        print(f"hil: fault: model {self.model} file corrupted on disk at t={t:.1f} s ({path})", file=sys.stderr)
