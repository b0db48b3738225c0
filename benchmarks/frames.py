"""Raw frames for the benchmark, generated before any timing and cached on disk.

Each frame is rendered by the simulator (scene -> sensor, exactly as the camera does) and written
strip-major (strip after strip, each (bands, rows, width) little-endian uint16), so a measuring
process can read one strip at a time into one buffer. The cache is keyed by the frame's
parameters and a hash of the simulator's sources, so a changed simulator never serves stale frames.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "runs" / "bench-cache"
GSD_M = 10.0


def _sim_hash() -> str:
    h = hashlib.sha256()
    for name in ("payload_sim/scenes.py", "payload_sim/sensor.py", "payload_sim/spectra.py", "flight/calibrate.py"):
        p = REPO / name
        h.update(p.read_bytes() if p.exists() else b"-")
    return h.hexdigest()[:10]


def prune_cache() -> int:
    """Delete cached frames and calibrations made by another version of the simulator."""
    if not CACHE.exists():
        return 0
    keep = _sim_hash()
    stale = [p for p in CACHE.iterdir() if p.is_file() and keep not in p.name]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def footprint(height: int, width: int):
    """A nadir footprint over the Ligurian coast: the localize stage has real work to do."""
    from flight.frames import Footprint

    dlat = height * GSD_M / 111_320.0
    dlon = width * GSD_M / (111_320.0 * np.cos(np.radians(44.0)))
    lat0, lon0 = 44.0 + dlat / 2, 8.5 - dlon / 2
    return Footprint((lat0, lat0, lat0 - dlat, lat0 - dlat), (lon0, lon0 + dlon, lon0 + dlon, lon0))


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def calibration_file(height: int, width: int) -> Path:
    """The sensor's calibration products for this frame size, as the flight loads them (version sim-v1)."""
    from payload_sim.sensor import Sensor, SensorConfig

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"cal-{height}x{width}-{_sim_hash()}.npz"
    if not path.exists():
        products = Sensor(SensorConfig(), height, width).calibration_products()
        tmp = path.with_name(path.stem + ".tmp.npz")
        products.save(tmp)
        os.replace(tmp, path)
    return path


def _scene_tag(scene: dict) -> str:
    """Cache-name part for a frame's scene arguments: cc0.00 for a typical frame, more for the worst case."""
    short = {"cloud_cover": "cc", "water_fraction": "w", "ships": "ships", "fires": "fires"}
    return "-".join(f"{short[k]}{v:.2f}" if isinstance(v, float) else f"{short[k]}{v}" for k, v in sorted(scene.items()))


def frame_set(seed: int, frames: list[tuple[int, dict]], height: int, width: int, strip_rows: int,
              calibration_version: str = "sim-v1", worst_case: int | None = None) -> list[dict]:
    """One cached raw frame per (index, scene arguments for synthetic_scene: cloud_cover, and for
    the worst case water_fraction, ships, fires); returns what a child needs to read them.
    ``worst_case``: the index of the frame that is the latency worst case (marked in its entry)."""
    from flight.frames import FrameMeta
    from payload_sim.scenes import synthetic_scene
    from payload_sim.sensor import Sensor, SensorConfig

    CACHE.mkdir(parents=True, exist_ok=True)
    sensor = None
    out = []
    for k, scene_kw in frames:
        stem = f"raw-{seed}-{k}-{_scene_tag(scene_kw)}-{height}x{width}-s{strip_rows}-{_sim_hash()}"
        path, info_path = CACHE / f"{stem}.u16", CACHE / f"{stem}.json"
        if not (path.exists() and info_path.exists()):
            scene = synthetic_scene(seed, k, height, width, GSD_M, **scene_kw)
            sensor = sensor or Sensor(SensorConfig(), height, width)
            raw = sensor.expose(scene.reflectance, np.random.default_rng([seed, k, 1]))
            assert raw.dtype == np.uint16 and raw.shape == (6, height, width), (raw.dtype, raw.shape)

            def write(f, raw=raw):
                for r in range(0, height, strip_rows):
                    f.write(np.ascontiguousarray(raw[:, r : r + strip_rows]).astype("<u2", copy=False).tobytes())

            _atomic_write(path, write)
            info = {"truth_cloud_fraction": scene.cloud_fraction, "objects": len(scene.objects)}
            info_path.write_text(json.dumps(info))
            del scene, raw
        info = json.loads(info_path.read_text())
        meta = FrameMeta(frame_id=0, capture_time_s=100.0 + k, height=height, width=width, gsd_m=GSD_M,
                         footprint=footprint(height, width), calibration_version=calibration_version)
        out.append({"path": str(path), "height": height, "width": width, "distinct": k,
                    "cloud_cover": scene_kw.get("cloud_cover"), "scene": dict(scene_kw), "worst_case": k == worst_case,
                    "header": json.loads(meta.to_json()), **info})
    return out
