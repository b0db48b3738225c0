"""Faults the scenario injects inside the flight process (the `[faults]` table, read at start-up).

These stand for hardware and software faults the flight software must survive, so they live in
one small place, off unless the scenario names them:

    slow_model = "cloud_screen"   # this model's calls take slow_model_s longer (a stuck stage)
    slow_model_s = 3.0            # wall seconds added to each call
    slow_frames = [1]             # only on these frame ids (absent: every frame)
    fail_model = "cloud_screen:1.0.1"   # this model (optionally only this version) raises at run time
    raise_in = ["housekeeping"]   # these main-loop steps raise once each (a software bug), for the
                                  # last-resort handler; names as in FlightApp.run

Other `[faults]` keys belong to other processes (the camera, the launcher) and are ignored here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from flight.config import ConfigError


@dataclass(frozen=True)
class InjectedFaults:
    slow_model: str = ""
    slow_model_s: float = 0.0
    slow_frames: tuple[int, ...] = ()
    fail_model: str = ""
    raise_in: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "_raised", set())

    @staticmethod
    def from_extra(extra: dict) -> InjectedFaults:
        f = extra.get("faults", {}) or {}

        def get(key, typ, default):
            v = f.get(key, default)
            if typ is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
                raise ConfigError(f"faults.{key}", v, f"must be {typ.__name__}")
            return v

        frames = f.get("slow_frames", [])
        if not isinstance(frames, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in frames):
            raise ConfigError("faults.slow_frames", frames, "must be a list of frame ids")
        seconds = get("slow_model_s", float, 0.0)
        if not 0.0 <= seconds <= 3600.0:
            raise ConfigError("faults.slow_model_s", seconds, "must be in [0, 3600]")
        raise_in = f.get("raise_in", [])
        if not isinstance(raise_in, list) or not all(isinstance(h, str) for h in raise_in):
            raise ConfigError("faults.raise_in", raise_in, "must be a list of main-loop step names")
        return InjectedFaults(get("slow_model", str, ""), seconds, tuple(frames), get("fail_model", str, ""),
                              tuple(raise_in))

    def handler_call(self, handler: str) -> None:
        """Called before each main-loop step: raises once for each step named in raise_in."""
        if handler in self.raise_in and handler not in self._raised:  # type: ignore[attr-defined]
            self._raised.add(handler)  # type: ignore[attr-defined]
            raise RuntimeError(f"injected fault: a bug in {handler}")

    def model_call(self, name: str, version: str, frame_id: int) -> None:
        """Called before each model call: sleeps or raises as the scenario asks."""
        if self.slow_model == name and self.slow_model_s > 0 and (not self.slow_frames or frame_id in self.slow_frames):
            time.sleep(self.slow_model_s)
        if self.fail_model and self.fail_model in (name, f"{name}:{version}"):
            raise RuntimeError(f"injected fault: {name} {version} fails at run time")
