"""Quicklook gallery of the simulated world, and the numbers quoted in docs/world.md.

    .venv/bin/python -m payload_sim.gallery --out docs/gallery            # PNG quicklooks
    .venv/bin/python -m payload_sim.gallery --out docs/gallery --report   # + error/speed tables

Each PNG shows true colour (red, green, blue) and a swir composite (swir22, nir, red: fires are
red-orange, snow and ice cyan, clouds white to pale cyan, vegetation green) with the ground truth
drawn on top: the cloud mask outline in yellow, ships as cyan circles, fires as red squares
(grey when under thick cloud); synthetic scenes with objects get a third, zoomed panel. Real
scenes go through the sensor model and the flight calibration first, and their outline is the
reference cloud mask of the data set.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from flight.calibrate import Calibrator
from flight.frames import BANDS, REFLECTANCE_SCALE
from payload_sim.scenes import Scene, real_scene, synthetic_scene
from payload_sim.sensor import Sensor, SensorConfig

B = {name: i for i, name in enumerate(BANDS)}
REAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
PANEL_PX = 400
MAX_BYTES = 300_000

SYNTHETIC: dict[str, dict[str, Any]] = {
    "sea_ships": dict(seed=101, frame_id=0, water_fraction=1.0, cloud_cover=0.12, ships=8, biome="temperate"),
    "coast_clouds": dict(seed=102, frame_id=3, water_fraction=0.45, cloud_cover=0.45, ships=3, biome="temperate"),
    "land_fires_smoke": dict(seed=103, frame_id=1, water_fraction=0.0, cloud_cover=0.08, fires=4, biome="tropical"),
    "snow_lookalike": dict(seed=104, frame_id=0, water_fraction=0.05, cloud_cover=0.35, biome="snow"),
    "desert_lookalike": dict(seed=105, frame_id=2, water_fraction=0.0, cloud_cover=0.3, biome="arid"),
}


def _stretch(rgb: np.ndarray, top: float) -> np.ndarray:
    x = np.clip(rgb / np.float32(top), 0.0, 1.0)
    return (x * 255 + 0.5).astype(np.uint8)


def _panel(refl: np.ndarray, bands: tuple[str, str, str], top: float, size: int, box=None) -> np.ndarray:
    r0, r1, c0, c1 = box if box else (0, refl.shape[1], 0, refl.shape[2])
    sub = np.stack([refl[B[b], r0:r1, c0:c1] for b in bands], axis=-1).astype(np.float32)
    interp = cv2.INTER_AREA if (r1 - r0) >= size else cv2.INTER_NEAREST
    sub = np.asarray(cv2.resize(sub, (size, size), interpolation=interp), np.float32)
    return np.ascontiguousarray(_stretch(sub, top))


def _overlay(img: np.ndarray, scene: Scene, box=None) -> None:
    h = img.shape[0]
    r0, r1, c0, c1 = box if box else (0, scene.classes.shape[0], 0, scene.classes.shape[1])
    sy, sx = h / (r1 - r0), img.shape[1] / (c1 - c0)
    m: np.ndarray = scene.cloud_mask[r0:r1, c0:c1].astype(np.float32)
    m = cv2.resize(m, (img.shape[1], h), interpolation=cv2.INTER_AREA if sy < 1 else cv2.INTER_NEAREST)
    contours, _ = cv2.findContours((m >= 0.5).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, (255, 230, 0), 1, lineType=cv2.LINE_AA)
    for o in scene.objects:
        y, x = (o.row - r0) * sy, (o.col - c0) * sx
        if not (0 <= y < h and 0 <= x < img.shape[1]):
            continue
        colour = (150, 150, 150) if o.occluded else ((0, 255, 255) if o.kind == "ship" else (255, 40, 40))
        rad = int(max(6, o.length_px * sx * 0.8))
        if o.kind == "ship":
            cv2.circle(img, (int(x), int(y)), rad, colour, 1, lineType=cv2.LINE_AA)
        else:
            cv2.rectangle(img, (int(x) - rad, int(y) - rad), (int(x) + rad, int(y) + rad), colour, 1)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    bar = np.zeros((18, img.shape[1], 3), np.uint8)
    cv2.putText(bar, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([bar, img])


def _zoom_box(scene: Scene, size: int = 96):
    visible = [o for o in scene.objects if not o.occluded]
    if not visible:
        return None, None
    o = max(visible, key=lambda o: (o.kind == "fire", o.length_px))
    H, W = scene.classes.shape
    half = size // 2
    r0 = int(min(max(o.row - half, 0), H - size))
    c0 = int(min(max(o.col - half, 0), W - size))
    return (r0, r0 + size, c0, c0 + size), o


def quicklook(scene: Scene, title: str, zoom: bool = True) -> np.ndarray:
    tc = _panel(scene.reflectance, ("red", "green", "blue"), 0.3, PANEL_PX)
    sw = _panel(scene.reflectance, ("swir22", "nir", "red"), 0.5, PANEL_PX)
    for img in (tc, sw):
        _overlay(img, scene)
    panels = [_label(tc, f"{title}: true colour"), _label(sw, "swir22 / nir / red")]
    if zoom:
        box, o = _zoom_box(scene)
        if box is not None:
            bands = ("red", "green", "blue") if o.kind == "ship" else ("swir22", "nir", "red")
            z = _panel(scene.reflectance, bands, 0.3 if o.kind == "ship" else 0.5, PANEL_PX, box)
            _overlay(z, scene, box)
            panels.append(_label(z, f"zoom x{PANEL_PX // (box[1] - box[0])}: {o.kind} {o.length_px:.0f} px"))
    return np.hstack(panels)


def save_png(img: np.ndarray, path: Path) -> int:
    im = Image.fromarray(img)
    im.save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:
        im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    return path.stat().st_size


def sensor_and_calibrate(reflectance: np.ndarray, seed: int = 0, config: SensorConfig | None = None):
    """Reflectance -> raw DN (sensor model) -> calibrated reflectance (flight calibration)."""
    _, h, w = reflectance.shape
    sensor = Sensor(config or SensorConfig(), h, w)
    raw = sensor.expose(reflectance, np.random.default_rng(seed))
    cal = Calibrator(sensor.calibration_products(version="gallery"))(raw)
    return sensor, raw, cal.astype(np.float32) / np.float32(REFLECTANCE_SCALE)


def make_gallery(out: Path, size: int = 1024) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, kw in SYNTHETIC.items():
        kw = dict(kw)
        scene = synthetic_scene(kw.pop("seed"), kw.pop("frame_id"), height=size, width=size, **kw)
        path = out / f"{name}.png"
        n = save_png(quicklook(scene, name), path)
        print(f"{path}  {n // 1000} kB  cloud {scene.cloud_fraction:.2f}  objects {len(scene.objects)}")
        written.append(path)
    if not REAL_DIR.is_dir():
        print(f"real scenes skipped: {REAL_DIR} is absent")
        return written
    for name in ("landsat7", "landsat5"):
        scene = real_scene(REAL_DIR / f"{name}.npz")
        _, _, cal = sensor_and_calibrate(scene.reflectance, seed=1)
        shown = dataclasses.replace(scene, reflectance=cal)
        path = out / f"real_{name}.png"
        n = save_png(quicklook(shown, f"{name} (sensor + calibration)", zoom=False), path)
        print(f"{path}  {n // 1000} kB  reference cloud {scene.cloud_fraction:.2f}")
        written.append(path)
    return written


def report() -> None:
    """Print the calibration error table, calibration speed and scene generation speed (one core)."""
    cv2.setNumThreads(1)
    cfg = dataclasses.replace(SensorConfig(), psf_sigma_px=0.0)
    n = 1024
    errs: dict[str, list] = {b: [] for b in BANDS}
    sens = Sensor(cfg, n, n)
    products = sens.calibration_products()
    cal = Calibrator(products)
    for i, kw in enumerate(SYNTHETIC.values()):
        kw = dict(kw)
        scene = synthetic_scene(kw.pop("seed"), kw.pop("frame_id"), height=n, width=n, **kw)
        raw = sens.expose(scene.reflectance, np.random.default_rng(i))
        out = cal(raw)
        sigma = sens.noise_sigma_reflectance(scene.reflectance)
        for b, name in enumerate(BANDS):
            ok = (raw[b] < 4095) & ~products.bad_pixel_mask(b)
            e = out[b][ok] / REFLECTANCE_SCALE - scene.reflectance[b][ok]
            errs[name].append((e, np.abs(e) / sigma[b][ok], (raw[b] == 4095).mean()))
    print("| band | mean abs error | p99 abs error | bias | mean abs z | p99 abs z | saturated |")
    print("|---|---|---|---|---|---|---|")
    for name in BANDS:
        e = np.concatenate([x[0] for x in errs[name]])
        z = np.concatenate([x[1] for x in errs[name]])
        sat = np.mean([x[2] for x in errs[name]])
        print(f"| {name} | {np.abs(e).mean():.4f} | {np.percentile(np.abs(e), 99):.4f} | {e.mean():+.5f} "
              f"| {z.mean():.3f} | {np.percentile(z, 99):.3f} | {sat:.3%} |")
    n2 = 2048
    sens2 = Sensor(SensorConfig(), n2, n2)
    cal2 = Calibrator(sens2.calibration_products())
    rng = np.random.default_rng(0)
    raw2 = sens2.expose(rng.uniform(0, 0.8, (len(BANDS), n2, n2)).astype(np.float32), rng)
    out2 = np.empty_like(raw2)
    fresh, reuse = [], []
    for _ in range(7):
        t = time.perf_counter()
        cal2(raw2)
        fresh.append(time.perf_counter() - t)
        t = time.perf_counter()
        cal2(raw2, out=out2)
        reuse.append(time.perf_counter() - t)
    print(f"calibration 2048 x 2048 x 6, one thread: median {np.median(fresh) * 1e3:.1f} ms "
          f"(new output array), {np.median(reuse) * 1e3:.1f} ms (reused output)")
    for size in (1024, 2048):
        ts = []
        for f in range(5):
            t = time.perf_counter()
            synthetic_scene(7, f, height=size, width=size)
            ts.append(time.perf_counter() - t)
        print(f"synthetic_scene {size} x {size}, one thread: median {np.median(ts) * 1e3:.0f} ms, "
              f"max {max(ts) * 1e3:.0f} ms over 5 random frames")
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        sens2.expose(raw2.astype(np.float32) * np.float32(1 / 4000), rng)
        ts.append(time.perf_counter() - t)
    print(f"Sensor.expose 2048 x 2048 x 6: median {np.median(ts) * 1e3:.0f} ms")


def detections_figure(out: Path, size: int = 1024) -> list[Path]:
    """What the flight software reported on a scene against the truth: the scene through the
    sensor model and the real flight pipeline (calibration, INT8 cascade), then drawn with the
    truth (yellow cloud outline, cyan ship circles, red fire squares) and the flight's output
    (magenta: tiles it called cloudy; white crosses: its detections)."""
    import json

    from flight.config import load_scenario
    from flight.inference import TileModel, model_path
    from flight.pipeline import FramePipeline

    cfg = load_scenario(Path(__file__).parent / "scenarios" / "demo.toml").flight
    models = {s.model: TileModel(model_path(s.model)) for s in cfg.cascade}
    written = []
    for name in ("coast_clouds", "land_fires_smoke", "sea_ships"):
        kw = dict(SYNTHETIC[name])
        scene = synthetic_scene(kw.pop("seed"), kw.pop("frame_id"), height=size, width=size, **kw)
        sensor, raw, _ = sensor_and_calibrate(scene.reflectance, seed=2)
        pipe = FramePipeline(cfg, Calibrator(sensor.calibration_products(version="gallery")), models)
        pipe.begin(json.dumps({"frame_id": 0, "capture_time_s": 0.0, "height": size, "width": size}).encode())
        for r in range(0, size, 128):
            pipe.strip(0, r, 128, np.ascontiguousarray(raw[:, r : r + 128]).tobytes())
        result = pipe.finish()
        img = _panel(scene.reflectance, ("red", "green", "blue"), 0.3, PANEL_PX)
        _overlay(img, scene)
        k = PANEL_PX / size
        t = cfg.tile_px * k
        for (i, j), frac in np.ndenumerate(result.tile_cloud):
            if frac >= 0.5:
                cv2.rectangle(img, (int(j * t) + 1, int(i * t) + 1), (int((j + 1) * t) - 1, int((i + 1) * t) - 1),
                              (255, 0, 255), 1)
        for d in result.detections:
            cv2.drawMarker(img, (int(d.col_px * k), int(d.row_px * k)), (255, 255, 255), cv2.MARKER_CROSS, 9, 1)
        truth = {kind: sum(1 for o in scene.objects if o.kind == kind and not o.occluded) for kind in ("ship", "fire")}
        found = {kind: sum(1 for d in result.detections if d.class_id == c) for kind, c in (("ship", 1), ("fire", 2))}
        # found / true counts, and truth / flight cloud fraction
        label = (f"{name}: cloud {scene.cloud_fraction:.2f}/{result.cloud_fraction:.2f} "
                 f"ships {found['ship']}/{truth['ship']} fires {found['fire']}/{truth['fire']}")
        path = out / f"detections_{name}.png"
        n = save_png(_label(img, label), path)
        print(f"{path}  {n // 1000} kB  {label}")
        written.append(path)
    return written


def real_tiles_figure(out: Path) -> list[Path]:
    """The flight's cloud screening on the real Landsat scenes, tile by tile: the calibrated tiles the
    model saw (sensor model noise seed 0, as ``python -m models evaluate``), the reference
    mask outline in yellow, each tile's reference / predicted cloud fraction, and a red box where
    the tile decision (cloudy at >= 0.5) differs from the reference."""
    from flight.inference import TileModel, model_path
    from models.dataset import frame_of, load_real

    if not REAL_DIR.is_dir():
        print(f"real tile figure skipped: {REAL_DIR} is absent")
        return []
    model = TileModel(model_path("cloud_screen"))
    written = []
    for name in ("landsat7", "landsat5"):
        scene = real_scene(REAL_DIR / f"{name}.npz")
        tiles, truth = load_real(REAL_DIR / f"{name}.npz", noise_seed=0)
        pred = model.run(tiles)
        # shown: the very tiles the model saw, put back together
        cols = scene.width // 64
        seen = np.moveaxis(frame_of(tiles, cols), -1, 0).astype(np.float32) / np.float32(REFLECTANCE_SCALE)
        size = 2 * PANEL_PX
        img = _panel(seen, ("red", "green", "blue"), 0.3, size)
        _overlay(img, dataclasses.replace(scene, objects=[]))
        t = size / cols
        for k, (f_true, f_pred) in enumerate(zip(truth, pred, strict=True)):
            i, j = divmod(k, cols)
            x0, y0 = int(j * t), int(i * t)
            if (f_pred >= model.card.threshold) != (f_true >= 0.5):
                cv2.rectangle(img, (x0 + 2, y0 + 2), (int(x0 + t) - 2, int(y0 + t) - 2), (255, 0, 0), 3)
            for dy, text, colour in ((16, f"ref {f_true:.2f}", (255, 230, 0)), (32, f"ai  {f_pred:.2f}", (0, 255, 255))):
                cv2.putText(img, text, (x0 + 4, y0 + dy), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 3, cv2.LINE_AA)
                cv2.putText(img, text, (x0 + 4, y0 + dy), cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, 1, cv2.LINE_AA)
        wrong = int(np.sum((pred >= model.card.threshold) != (truth >= 0.5)))
        label = (f"{name}: cloud_screen {model.card.version} INT8, {len(tiles) - wrong}/{len(tiles)} tiles right "
                 "(red: decision differs from the reference mask)")
        path = out / f"real_tiles_{name}.png"
        n = save_png(_label(img, label), path)
        print(f"{path}  {n // 1000} kB  {label}")
        written.append(path)
    return written


def _size(text: str) -> int:
    """--size: whole 128-row strips within the simulator's range (0 or 100 was a traceback midway)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 256 <= n <= 8192 or n % 128:  # 128-row strips (detections_figure), 96-px zoom boxes
        raise argparse.ArgumentTypeError(f"{n}: must be a multiple of 128 in 256..8192")
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/gallery"))
    ap.add_argument("--size", type=_size, default=1024, help="synthetic scene size, pixels (256..8192, a multiple of 128)")
    ap.add_argument("--report", action="store_true", help="also print the error and speed tables")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    make_gallery(args.out, args.size)
    detections_figure(args.out, args.size)
    real_tiles_figure(args.out)
    if args.report:
        report()


if __name__ == "__main__":
    main()
