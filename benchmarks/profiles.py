"""Onboard-computer profiles and budgets (benchmarks/budgets.toml), validated at start-up.

A bad value fails fast with the key, the value and what is allowed, like the flight config.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import tomllib
from dataclasses import dataclass
from pathlib import Path

BUDGETS_FILE = Path(__file__).with_name("budgets.toml")
# Budget name -> (JSON measurement key, True when the measurement must stay at or below it)
BUDGET_KEYS = {
    "latency_p50_ms": ("latency_ms.p50", True),
    "latency_p99_ms": ("latency_ms.p99", True),
    "latency_max_ms": ("latency_ms.max", True),
    "peak_rss_mib": ("peak_rss_mib", True),
    "cadence_fps": ("cadence_fps", False),
}


class ProfileError(ValueError):
    def __init__(self, key: str, value, allowed: str):
        super().__init__(f"budgets.toml {key} = {value!r}: {allowed}")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    board: str
    cores: tuple[int, ...]
    threads: int
    memory_ceiling_mib: int
    height: int
    width: int
    bands: int
    bits: int
    strip_rows: int
    scenario: str
    seed: int
    cloud_cover: tuple[float, ...]
    warmup: int
    frames: int
    compare_frames: int
    scaling_sizes: tuple[int, ...]
    scaling_frames: int
    ukis_frames: int
    roofline_n: int
    budgets: dict[str, float]
    # Scene of the latency worst-case frame, cycled with the others (synthetic_scene arguments)
    worst_case: dict | None = None
    smoke: bool = False

    def cores_here(self) -> tuple[list[int], str | None]:
        """The profile's cores that exist here, and a note when some do not."""
        avail = sorted(os.sched_getaffinity(0))
        cores = [c for c in self.cores if c in avail]
        if not cores:
            cores = avail[-1:]
        note = None
        if cores != list(self.cores):
            note = f"profile cores {list(self.cores)}: only {cores} available here"
        return cores, note


# key -> (type, lo, hi); ranges keep a typo from starting a 2-hour run
_RANGES = {
    "cores": (int, 0, 1023), "threads": (int, 1, 64), "memory_ceiling_mib": (int, 64, 1 << 20),
    "height": (int, 64, 16384), "width": (int, 64, 16384), "bands": (int, 6, 6), "bits": (int, 12, 12),
    "strip_rows": (int, 64, 4096), "seed": (int, 0, 2**31 - 1), "cloud_cover": (float, 0.0, 1.0),
    "warmup": (int, 0, 10000), "frames": (int, 1, 1_000_000), "compare_frames": (int, 1, 100000),
    "scaling_sizes": (int, 64, 16384), "scaling_frames": (int, 1, 100000), "ukis_frames": (int, 0, 1000),
    "roofline_n": (int, 16, 8192),
}
_TUPLES = {"cores", "cloud_cover", "scaling_sizes"}
_WORST_CASE = {"cloud_cover": (float, 0.0, 1.0), "water_fraction": (float, 0.0, 1.0), "ships": (int, 0, 500),
               "fires": (int, 0, 200)}  # synthetic_scene's own ranges


def _check(key: str, value, name: str):
    typ, lo, hi = _RANGES[key]
    items = value if key in _TUPLES else [value]
    if key in _TUPLES and (not isinstance(value, list) or not value):
        raise ProfileError(f"{name}.{key}", value, "must be a non-empty list")
    for v in items:
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if type(v) is not typ or not lo <= v <= hi:
            raise ProfileError(f"{name}.{key}", value, f"must be {typ.__name__} in [{lo}, {hi}]")
    return tuple(typ(v) for v in items) if key in _TUPLES else typ(value)


def load_profile(name: str, smoke: bool = False, path: Path = BUDGETS_FILE) -> Profile:
    data = tomllib.loads(path.read_text())
    profiles = {k: v for k, v in data.items() if k != "smoke"}
    if name not in profiles:
        raise ProfileError("profile", name, f"must be one of {sorted(profiles)}")
    # a profile or [smoke] that is not a table raised TypeError past the harness's usage errors
    if not isinstance(profiles[name], dict):
        raise ProfileError(name, profiles[name], "must be a table")
    if not isinstance(data.get("smoke", {}), dict):
        raise ProfileError("smoke", data["smoke"], "must be a table")
    raw = dict(profiles[name])
    if smoke:
        raw.update(data.get("smoke", {}))
    fields = {f.name for f in dataclasses.fields(Profile)} - {"name", "smoke"}
    unknown = set(raw) - fields
    if unknown:
        k = sorted(unknown)[0]
        raise ProfileError(f"{name}.{k}", raw[k], f"unknown key; known keys: {sorted(fields)}")
    missing = fields - set(raw) - {"worst_case"}
    if missing:
        raise ProfileError(f"{name}.{sorted(missing)[0]}", None, "is required")
    kw = {}
    for key, value in raw.items():
        if key in _RANGES:
            kw[key] = _check(key, value, name)
        elif key == "budgets":
            if not isinstance(value, dict) or set(value) - set(BUDGET_KEYS):
                raise ProfileError(f"{name}.budgets", value, f"keys must be among {sorted(BUDGET_KEYS)}")
            for k, v in value.items():
                # NaN passed `v <= 0` (and compared false with every measurement); inf is no budget
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                    raise ProfileError(f"{name}.budgets.{k}", v, "must be a positive number")
            kw[key] = {k: float(v) for k, v in value.items()}
        elif key == "worst_case":
            if not isinstance(value, dict) or not value or set(value) - set(_WORST_CASE):
                raise ProfileError(f"{name}.worst_case", value, f"keys must be among {sorted(_WORST_CASE)}")
            wc = {}
            for k, v in value.items():
                typ, lo, hi = _WORST_CASE[k]
                v = float(v) if typ is float and type(v) is int else v
                if type(v) is not typ or not lo <= v <= hi:
                    raise ProfileError(f"{name}.worst_case.{k}", value[k], f"must be {typ.__name__} in [{lo}, {hi}]")
                wc[k] = v
            kw[key] = wc
        else:
            if not isinstance(value, str):
                raise ProfileError(f"{name}.{key}", value, "must be a string")
            kw[key] = value
    p = Profile(name=name, smoke=smoke, **kw)
    for size in (p.height, *p.scaling_sizes):
        if size % p.strip_rows and size > p.strip_rows or size % 64:
            raise ProfileError(f"{name}.height/scaling_sizes", size, f"must be a multiple of 64 and of strip_rows {p.strip_rows}")
    if not p.smoke and p.frames < 200:
        raise ProfileError(f"{name}.frames", p.frames, "must be >= 200 for a stable p99 (use --smoke for a short run)")
    return p


def machine() -> dict:
    """What the numbers were measured on: CPU model, cores, memory, kernel, Python."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = val.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(val.split())
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    thp = "unknown"
    try:  # transparent huge pages change resident memory (numpy madvises large arrays)
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
        thp = text[text.index("[") + 1 : text.index("]")]
    except (OSError, ValueError):
        pass
    import numpy
    import onnxruntime

    try:
        import cv2
        cv2_version = cv2.__version__
    except ImportError:
        cv2_version = None
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "isa": sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8"}),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opencv": cv2_version,
        "transparent_hugepages": thp,
        "numpy_madvise_hugepage": os.environ.get("NUMPY_MADVISE_HUGEPAGE", "default (on)"),
        "load_avg_at_start": os.getloadavg(),
    }
