"""Procedural multispectral scenes with per-pixel ground truth, and loading of real scenes.

A scene is top-of-atmosphere (TOA) reflectance in the six payload bands plus what is really
there: a class per pixel, a cloud mask and a list of objects (ships, fires). Everything is built
from fractal noise (octaves of low-resolution Gaussian noise upsampled with ``cv2.resize``), so
a 1024 x 1024 scene takes a fraction of a second, and it is a pure function of
``(seed, frame_id, arguments)``.

Physical picture (docs/world.md has the details and the sources):

* terrain: one elevation field; the sea is everything below the level that gives the asked
  water fraction, so coastlines are fractal and lakes sit in the lowest land; terrain slopes
  are shaded for the sun position;
* land cover by biome (temperate, tropical, arid, snow): vegetation, soil, desert, urban, snow,
  each a mix of two or three surface endmembers (``payload_sim.spectra``) with texture;
  agricultural parcels and street grids; rivers;
* atmosphere: path reflectance and transmittance per band, with a haze factor per scene;
* thick clouds (cumulus or stratiform, fractal edges, semi-transparent rims, sunlit and shaded
  sides) whose shadows are displaced away from the sun by cloud height / tan(sun elevation);
  thin cirrus, semi-transparent, darker in swir16 than water clouds;
* ships on open water only (3-30 px at 10 m), with turbulent and Kelvin wakes;
* active fires on land: Planck emission that is hot in swir22 and swir16, a burn scar behind
  the front and a smoke plume downwind, opaque in blue and transparent in swir.

Class map precedence, top-most first: CLOUD_THICK > FIRE > SHIP > WAKE > CLOUD_THIN > SMOKE >
CLOUD_SHADOW > surface class. Objects seen through thin cirrus keep their class; the cloud mask
still marks them.

Coordinates: pixel (r, c) spans rows [r, r+1) and columns [c, c+1), so its centre is at
(r + 0.5, c + 0.5), as in ``flight.frames.Footprint``. North is up (row 0), east is right.
Headings and azimuths are degrees clockwise from north.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from flight.frames import BANDS
from payload_sim import spectra as sp

NB = len(BANDS)


class SurfaceClass(IntEnum):
    """Ground-truth class per pixel (uint8). Values are stable: models and datasets use them."""

    WATER = 0  # sea, lakes, rivers
    VEGETATION = 1  # crops, grassland, forest
    SOIL = 2  # bare soil, rock, fallow fields
    DESERT = 3  # sand and bright salt/gypsum playa (a cloud look-alike)
    URBAN = 4  # streets, roofs, concrete
    SNOW = 5  # snow and ice (a cloud look-alike, but dark in swir16)
    BURN_SCAR = 6  # recently burnt ground behind an active fire front
    CLOUD_THICK = 7  # opaque cloud (opacity >= 0.5)
    CLOUD_THIN = 8  # semi-transparent cloud: cirrus dense enough to count, thick-cloud rims
    CLOUD_SHADOW = 9  # ground in the shadow of a thick cloud
    SHIP = 10  # ship hull (coverage of the pixel >= 0.35)
    FIRE = 11  # actively burning (fire emission >= 0.15 apparent reflectance in swir22)
    SMOKE = 12  # smoke with blue-band opacity >= 0.3
    WAKE = 13  # ship wake foam (foam fraction >= 0.15)
    UNKNOWN = 255  # real scenes: clear, but the class is not known


SURFACE_CLASSES = (
    SurfaceClass.WATER,
    SurfaceClass.VEGETATION,
    SurfaceClass.SOIL,
    SurfaceClass.DESERT,
    SurfaceClass.URBAN,
    SurfaceClass.SNOW,
    SurfaceClass.BURN_SCAR,
)

# Thresholds that define the ground truth (documented in docs/world.md).
THICK_CLASS_ALPHA = 0.5  # thick-cloud opacity for CLOUD_THICK
CLOUD_MASK_ALPHA = 0.25  # thick-cloud opacity that still counts as cloud (rims: CLOUD_THIN)
CIRRUS_MASK_RED = 0.04  # cirrus counts as cloud where it adds >= 0.04 reflectance in red
SHADOW_CLASS = 0.5  # shadow strength for CLOUD_SHADOW
SHIP_COVERAGE = 0.35
WAKE_FOAM = 0.15
FIRE_SWIR22 = 0.15
SMOKE_BLUE_OPACITY = 0.3

LAYOUTS = ("sea", "coast", "land")
BIOMES = ("temperate", "tropical", "arid", "snow")


@dataclass(frozen=True)
class SceneObject:
    """A ship or a fire in a scene's ground truth.

    row, col: centre in pixel coordinates (pixel r spans [r, r+1)); length_px: ship length or
    fire front extent; heading_deg: ship heading, or for a fire the direction its smoke drifts,
    clockwise from north; pixels: object pixels drawn and visible (not under thick cloud);
    occluded: True when at least half of the object is under thick cloud.
    """

    kind: str
    row: float
    col: float
    length_px: float
    heading_deg: float = 0.0
    pixels: int = 0
    occluded: bool = False


@dataclass
class Scene:
    reflectance: np.ndarray  # float32 (6, H, W) TOA reflectance, band order BANDS
    classes: np.ndarray  # uint8 (H, W) SurfaceClass, top-most visible thing
    cloud_mask: np.ndarray  # bool (H, W)
    objects: list[SceneObject]
    gsd_m: float
    info: dict = field(default_factory=dict)  # how the scene was drawn (biome, layout, ...)

    @property
    def cloud_fraction(self) -> float:
        return float(self.cloud_mask.mean()) if self.cloud_mask.size else 0.0

    @property
    def height(self) -> int:
        return int(self.reflectance.shape[1])

    @property
    def width(self) -> int:
        return int(self.reflectance.shape[2])


# =============================================================================================
# Noise
# =============================================================================================


def fbm(
    rng: np.random.Generator,
    height: int,
    width: int,
    feature_px: float,
    min_px: float = 2.0,
    persistence: float = 0.5,
    aspect: float = 1.0,
) -> np.ndarray:
    """Fractal (fBm-like) noise, float32 (height, width), mean 0 and std 1.

    The coarsest octave has features of ``feature_px`` pixels (times ``aspect`` along columns);
    each octave halves the feature size and multiplies the amplitude by ``persistence`` until
    the features reach ``min_px``. Octaves are summed on a pyramid of small grids (each doubled
    with a cubic resize) and only the finest grid is resized to the full frame.
    """
    feature_px = max(float(feature_px), 1.0)
    ny = max(2, math.ceil(height / feature_px)) + 2
    nx = max(2, math.ceil(width / (feature_px * aspect))) + 2
    grid: np.ndarray = rng.standard_normal((ny, nx), dtype=np.float32)
    cell, amp = feature_px, 1.0
    while cell / 2 >= min_px and ny * nx * 4 <= 4 * height * width:
        ny, nx = ny * 2, nx * 2
        grid = np.asarray(cv2.resize(grid, (nx, ny), interpolation=cv2.INTER_CUBIC), np.float32)
        amp *= persistence
        cell /= 2
        grid += np.float32(amp) * rng.standard_normal((ny, nx), dtype=np.float32)
    out: np.ndarray = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    sub = out[:: max(1, height // 128), :: max(1, width // 128)]
    std = float(sub.std()) or 1.0
    out -= np.float32(sub.mean())
    out *= np.float32(1.0 / std)
    return out


def _rotated_fbm(rng, height, width, feature_px, angle_deg, aspect, min_px=2.0, persistence=0.5):
    """Anisotropic fbm (streaks along ``angle_deg``), generated on a square canvas and rotated."""
    d = int(math.ceil(math.hypot(height, width))) + 2
    canvas = fbm(rng, d, d, feature_px, min_px, persistence, aspect)
    m = cv2.getRotationMatrix2D((d / 2, d / 2), angle_deg, 1.0)
    m[0, 2] -= (d - width) / 2
    m[1, 2] -= (d - height) / 2
    return cv2.warpAffine(canvas, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _quantile(a: np.ndarray, q: float, mask: np.ndarray | None = None) -> float:
    """Quantile on a strided subsample (fast, deterministic)."""
    step = max(1, int(math.sqrt(a.size / 262_144)))
    sub = a[::step, ::step]
    if mask is not None:
        sub = sub[mask[::step, ::step]]
        if sub.size == 0:
            return float("inf")
    return float(np.quantile(sub, min(max(q, 0.0), 1.0)))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    np.clip(x, 0.0, 1.0, out=x)
    return x * x * (np.float32(3.0) - np.float32(2.0) * x)


def _grid_table(rng, H, W, cell_u_px, cell_v_px, angle_deg, make_table):
    """A table of per-cell values laid on a grid rotated by ``angle_deg``, nearest-sampled."""
    t = math.radians(angle_deg)
    cos, sin = math.cos(t), math.sin(t)
    d = math.hypot(H, W)
    nu, nv = int(d / cell_u_px) + 3, int(d / cell_v_px) + 3
    table = make_table((nv, nu)).astype(np.float32)
    # inverse map: destination (x, y) -> table (u / a + off, v / b + off)
    m = np.array(
        [[cos / cell_u_px, sin / cell_u_px, nu / 2 - (W / 2 * cos + H / 2 * sin) / cell_u_px],
         [-sin / cell_v_px, cos / cell_v_px, nv / 2 - (-W / 2 * sin + H / 2 * cos) / cell_v_px]],
        dtype=np.float64,
    )
    return cv2.warpAffine(table, m, (W, H), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


# =============================================================================================
# Biomes: land-cover shares and endmembers per class
# =============================================================================================
_C = SurfaceClass

# class -> (endmember A, endmember B, endmember C, weight of C, t offset, t gain, texture amp)
# per pixel: t = clip(offset + gain * n, 0, 1); s = lerp(A, B, t); s = lerp(s, C, w * weightC);
# s *= 1 + texture_amp * texture.
_DEFAULT_MIX = {
    _C.WATER: ("water_clear", "water_turbid", "water_clear", 0.0, 0.0, 0.12, 0.02),
    _C.VEGETATION: ("veg_dry", "veg_lush", "veg_forest", 0.8, 0.55, 0.3, 0.10),
    _C.SOIL: ("soil_dark", "soil_bright", "veg_dry", 0.35, 0.5, 0.3, 0.10),
    _C.DESERT: ("sand", "playa", "rock", 0.4, -1.2, 1.2, 0.06),
    _C.URBAN: ("asphalt", "concrete", "roof", 0.7, 0.5, 0.3, 0.18),
    _C.SNOW: ("snow_fresh", "snow_old", "rock", 0.3, 0.4, 0.35, 0.03),
    _C.BURN_SCAR: ("burn_scar", "soil_dark", "burn_scar", 0.0, 0.2, 0.2, 0.15),
}

_BIOME_SPEC: dict[str, dict] = {
    "temperate": dict(
        cover={_C.VEGETATION: 0.6, _C.SOIL: 0.27, _C.URBAN: 0.13},
        slope_deg=(2.0, 10.0), agri=0.6, fire_prob=0.12, rivers=0.6, mix={},
    ),
    "tropical": dict(
        cover={_C.VEGETATION: 0.84, _C.SOIL: 0.1, _C.URBAN: 0.06},
        slope_deg=(3.0, 18.0), agri=0.25, fire_prob=0.3, rivers=0.8,
        mix={_C.VEGETATION: ("veg_forest", "veg_lush", "veg_forest", 0.5, 0.45, 0.3, 0.08),
             _C.SOIL: ("soil_dark", "soil_bright", "veg_lush", 0.3, 0.3, 0.3, 0.10)},
    ),
    "arid": dict(
        cover={_C.DESERT: 0.6, _C.SOIL: 0.27, _C.VEGETATION: 0.07, _C.URBAN: 0.06},
        slope_deg=(2.0, 14.0), agri=0.12, fire_prob=0.15, rivers=0.2,
        mix={_C.SOIL: ("rock", "soil_bright", "veg_dry", 0.25, 0.5, 0.3, 0.10),
             _C.VEGETATION: ("veg_dry", "veg_lush", "soil_bright", 0.3, 0.35, 0.3, 0.10)},
    ),
    "snow": dict(
        cover={_C.SNOW: 0.45, _C.VEGETATION: 0.3, _C.SOIL: 0.25},
        slope_deg=(14.0, 26.0), agri=0.0, fire_prob=0.02, rivers=0.3,
        mix={_C.VEGETATION: ("veg_forest", "veg_dry", "rock", 0.3, 0.25, 0.3, 0.10),
             _C.SOIL: ("rock", "soil_dark", "snow_old", 0.25, 0.5, 0.3, 0.12),
             _C.SNOW: ("snow_fresh", "snow_old", "ice", 0.35, 0.4, 0.35, 0.03)},
    ),
}


def _mix_table(biome: str, rng: np.random.Generator):
    """Per-class lookup tables for this scene (with a per-scene spectral jitter of ~6 %)."""
    n = max(int(c) for c in SURFACE_CLASSES) + 1
    a = np.zeros((NB, n), np.float32)
    b = np.zeros((NB, n), np.float32)
    c = np.zeros((NB, n), np.float32)
    wc = np.zeros(n, np.float32)
    toff = np.zeros(n, np.float32)
    tgain = np.zeros(n, np.float32)
    tex = np.zeros(n, np.float32)
    mix = {**_DEFAULT_MIX, **_BIOME_SPEC[biome]["mix"]}
    for cls in SURFACE_CLASSES:
        ea, eb, ec, w, o, g, t = mix[cls]
        for arr, name in ((a, ea), (b, eb), (c, ec)):
            jitter = 1.0 + 0.06 * rng.standard_normal(NB).astype(np.float32)
            arr[:, int(cls)] = np.maximum(sp.SURFACE[name] * jitter, 0.0005)
        wc[cls], toff[cls], tgain[cls], tex[cls] = w, o, g, t
    return a, b, c, wc, toff, tgain, tex


# =============================================================================================
# Scene generation
# =============================================================================================


def _draw_params(rng: np.random.Generator, cloud_cover, water_fraction, biome) -> dict[str, Any]:
    """Scene-level parameters left as None are drawn here, with a realistic spread."""
    p: dict[str, Any] = {}
    if water_fraction is None:
        layout = str(rng.choice(LAYOUTS, p=(0.3, 0.3, 0.4)))
        water_fraction = {
            "sea": rng.uniform(0.9, 1.0), "coast": rng.uniform(0.2, 0.8), "land": rng.uniform(0.0, 0.04),
        }[layout]
        p["rivers_allowed"] = True
    else:
        layout = "sea" if water_fraction >= 0.9 else "coast" if water_fraction >= 0.15 else "land"
        p["rivers_allowed"] = False
    if cloud_cover is None:
        regime = str(rng.choice(("clear", "partly", "overcast"), p=(0.3, 0.4, 0.3)))
        cloud_cover = {
            "clear": rng.choice((0.0, rng.uniform(0.0, 0.03))),
            "partly": rng.uniform(0.05, 0.6),
            "overcast": rng.uniform(0.6, 1.0),
        }[regime]
    if biome is None:
        biome = str(rng.choice(BIOMES, p=(0.4, 0.2, 0.22, 0.18)))
    p.update(layout=layout, water_fraction=float(water_fraction), cloud_cover=float(cloud_cover), biome=biome)
    p["haze"] = float(np.clip(rng.lognormal(0.0, 0.3), 0.55, 2.0))
    stratiform = cloud_cover > 0.7 or rng.random() < 0.3
    p["cloud_type"] = "stratiform" if stratiform else "cumulus"
    p["cloud_feature_m"] = float(rng.uniform(4000, 12000) if stratiform else rng.uniform(700, 2500))
    p["cloud_height_m"] = float(rng.uniform(1000, 4000) if stratiform else rng.uniform(700, 2500))
    p["cloud_brightness"] = float(rng.uniform(0.35, 0.95))
    p["shadow_darkness"] = float(rng.uniform(0.6, 0.85))  # share of direct sun a cloud blocks
    p["cloud_swir16_ratio"] = float(rng.uniform(0.65, 0.9))
    p["cloud_swir22_ratio"] = float(rng.uniform(0.45, 0.7))
    p["cirrus_share"] = float(rng.uniform(0.1, 0.6) if rng.random() < 0.4 else 0.0)
    p["cirrus_peak"] = float(rng.uniform(0.12, 0.35))
    p["cirrus_angle_deg"] = float(rng.uniform(0, 180))
    p["wind_deg"] = float(rng.uniform(0, 360))
    p["slope_rms_deg"] = float(rng.uniform(*_BIOME_SPEC[biome]["slope_deg"]))
    return p


def synthetic_scene(
    seed: int,
    frame_id: int,
    height: int = 1024,
    width: int = 1024,
    gsd_m: float = 10.0,
    cloud_cover: float | None = None,
    water_fraction: float | None = None,
    sun_azimuth_deg: float = 135.0,
    sun_elevation_deg: float = 45.0,
    ships: int | None = None,
    fires: int | None = None,
    biome: str | None = None,
) -> Scene:
    """A procedural scene, a pure function of ``(seed, frame_id, arguments)``.

    ``None`` means drawn from the seed: ``water_fraction`` by layout (sea 30 %, coast 30 %,
    land 40 %), ``cloud_cover`` by regime (clear 30 %, partly cloudy 40 %, overcast 30 %),
    ``biome`` (temperate, tropical, arid, snow), ``ships`` (Poisson, about 3 per 100 km2 of
    open water; none on land frames), ``fires`` (only some land frames). Explicit counts are
    placed where possible: ships need open water and fires need land, so ``ships=3`` on a land
    frame gives no ships. Each component (terrain, clouds, ships, fires) draws from its own
    stream, so fixing one argument leaves the others' draws unchanged.
    """
    _check_args(seed, frame_id, height, width, gsd_m, cloud_cover, water_fraction,
                sun_elevation_deg, ships, fires, biome)
    ss = np.random.SeedSequence([int(seed), int(frame_id)])
    r_par, r_land, r_cloud, r_ship, r_fire, r_tex = (np.random.default_rng(s) for s in ss.spawn(6))
    p = _draw_params(r_par, cloud_cover, water_fraction, biome)
    p.update(sun_azimuth_deg=float(sun_azimuth_deg), sun_elevation_deg=float(sun_elevation_deg))
    H, W = int(height), int(width)
    px_per_m = 1.0 / gsd_m

    # ---- terrain, water, land cover -------------------------------------------------------
    land = _terrain_and_cover(r_land, H, W, gsd_m, p)
    cls, t, w, terrain, water_dist = land["cls"], land["t"], land["w"], land["terrain"], land["water_dist"]
    water = cls == _C.WATER

    # ---- fires: burn scars change the surface, emission and smoke come later ---------------
    fire_plan = _plan_fires(r_fire, cls, water_dist, gsd_m, p, fires)
    for f in fire_plan:
        sl, scar = f["scar_slice"], f["scar"]
        sub = cls[sl]
        sub[scar & (sub != _C.WATER)] = _C.BURN_SCAR

    # ---- surface reflectance (bottom of atmosphere) ---------------------------------------
    a, b, c, wc, toff, tgain, texamp = _mix_table(p["biome"], r_land)
    tex = fbm(r_tex, H, W, 60.0 * px_per_m + 2, min_px=1.0, persistence=0.6)
    # t, w were prepared as raw noise / overrides; turn them into per-class mixes.
    over = land["t_override"]
    tmix = toff[cls] + tgain[cls] * t
    np.copyto(tmix, over, where=over >= 0)
    np.clip(tmix, 0.0, 1.0, out=tmix)
    wmix = wc[cls] * w
    texmul = 1.0 + texamp[cls] * tex
    np.maximum(texmul, 0.2, out=texmul)
    refl = np.empty((NB, H, W), np.float32)
    for k in range(NB):
        ak = a[k][cls]
        s = refl[k]
        np.subtract(b[k][cls], ak, out=s)
        s *= tmix
        s += ak
        s += wmix * (c[k][cls] - s)
        s *= texmul
    del tmix, wmix, texmul, tex

    # ---- ships and wakes ------------------------------------------------------------------
    ship_plan = _place_ships(r_ship, refl, cls, water_dist, gsd_m, p, ships)

    # ---- clouds, cirrus, shadows ------------------------------------------------------------
    cl = _clouds(r_cloud, H, W, gsd_m, p)

    # ---- illumination and atmosphere -> TOA ---------------------------------------------
    hill = _hillshade(terrain, sun_azimuth_deg, sun_elevation_deg, p["slope_rms_deg"], ~water)
    hill[water] = 1.0
    shadow = cl["shadow"]
    direct = hill * (1.0 - np.float32(p["shadow_darkness"]) * shadow)
    diffuse = 1.0 - 0.2 * shadow
    haze = p["haze"]
    smoke = np.zeros((H, W), np.float32) if fire_plan else None
    if smoke is not None:
        for f in fire_plan:
            smoke[f["smoke_slice"]] += f["smoke"]
        np.clip(smoke, 0.0, 0.95, out=smoke)
    alpha, cir = cl["alpha"], cl["cirrus"]
    for k in range(NB):
        s = refl[k]
        d = sp.DIFFUSE_FRACTION[k]
        s *= (1.0 - d) * direct + d * diffuse
        s *= np.float32(sp.TRANSMITTANCE[k] ** haze)
        s += np.float32(sp.PATH_REFLECTANCE[k] * haze)
        for f in fire_plan:
            s[f["emit_slice"]] += f["emission"][k] * f["p"]
        if smoke is not None:
            o = smoke * np.float32(sp.SMOKE_OPACITY_SHAPE[k])
            s += o * (np.float32(sp.SMOKE_REFLECTANCE[k]) - s)
        if cl["has_thick"]:
            s += alpha * (cl["cloud_refl"][k] * cl["bright"] - s)
        if cl["has_cirrus"]:
            s *= 1.0 - 0.35 * cir
            s += cir * np.float32(cl["cirrus_refl"][k])
    np.clip(refl, 0.0, 10.0, out=refl)

    # ---- ground truth ---------------------------------------------------------------------
    thick_cls = alpha >= THICK_CLASS_ALPHA
    cloud_mask = cl["mask"]
    thin_cls = cloud_mask & ~thick_cls
    cls[(shadow >= SHADOW_CLASS) & ~cloud_mask] = _C.CLOUD_SHADOW
    if smoke is not None:
        cls[(smoke * sp.SMOKE_OPACITY_SHAPE[0] >= SMOKE_BLUE_OPACITY) & ~cloud_mask] = _C.SMOKE
    cls[thin_cls] = _C.CLOUD_THIN
    objects: list[SceneObject] = []
    for sh in ship_plan:  # wakes first, then hulls on top
        sub = cls[sh["slice"]]
        sub[sh["wake"]] = _C.WAKE
    for sh in ship_plan:
        sub = cls[sh["slice"]]
        sub[sh["hull"]] = _C.SHIP
    for f in fire_plan:
        sub = cls[f["emit_slice"]]
        sub[f["core"]] = _C.FIRE
    cls[thick_cls] = _C.CLOUD_THICK
    for sh in ship_plan:
        objects.append(_visible_object("ship", sh, thick_cls))
    for f in fire_plan:
        f["slice"], f["hull"] = f["emit_slice"], f["core"]
        objects.append(_visible_object("fire", f, thick_cls))

    p["cloud_fraction"] = float(cloud_mask.mean())
    return Scene(refl, cls, cloud_mask, objects, float(gsd_m), info=p)


def _check_args(seed, frame_id, height, width, gsd_m, cloud_cover, water_fraction,
                sun_elevation_deg, ships, fires, biome):
    def bad(key, value, allowed):
        raise ValueError(f"synthetic_scene: {key}={value!r} out of range, allowed {allowed}")

    if int(seed) < 0:
        bad("seed", seed, ">= 0")
    if int(frame_id) < 0:
        bad("frame_id", frame_id, ">= 0")
    if not (16 <= int(height) <= 16384):
        bad("height", height, "16..16384")
    if not (16 <= int(width) <= 16384):
        bad("width", width, "16..16384")
    if not (0.5 <= gsd_m <= 1000):
        bad("gsd_m", gsd_m, "0.5..1000")
    if cloud_cover is not None and not (0.0 <= cloud_cover <= 1.0):
        bad("cloud_cover", cloud_cover, "0..1 or None")
    if water_fraction is not None and not (0.0 <= water_fraction <= 1.0):
        bad("water_fraction", water_fraction, "0..1 or None")
    if not (5.0 <= sun_elevation_deg <= 90.0):
        bad("sun_elevation_deg", sun_elevation_deg, "5..90")
    if ships is not None and not (0 <= ships <= 500):
        bad("ships", ships, "0..500 or None")
    if fires is not None and not (0 <= fires <= 200):
        bad("fires", fires, "0..200 or None")
    if biome is not None and biome not in BIOMES:
        bad("biome", biome, f"{BIOMES} or None")


def _visible_object(kind: str, plan: dict, thick: np.ndarray) -> SceneObject:
    drawn = plan["hull"]
    under = thick[plan["slice"]][drawn]
    n_drawn = int(drawn.sum())
    visible = int(n_drawn - under.sum())
    return SceneObject(
        kind=kind, row=float(plan["row"]), col=float(plan["col"]), length_px=float(plan["length_px"]),
        heading_deg=float(plan["heading_deg"]), pixels=visible,
        occluded=bool(n_drawn == 0 or visible < 0.5 * n_drawn),
    )


def _terrain_and_cover(rng, H, W, gsd_m, p):
    """Elevation, water (sea/lakes/rivers), land-cover classes and their mixing fields."""
    px = 1.0 / gsd_m
    spec = _BIOME_SPEC[p["biome"]]
    elev = fbm(rng, H, W, rng.uniform(6000, 15000) * px, min_px=8.0, persistence=0.5)
    wf = p["water_fraction"]
    sea = _quantile(elev, wf) if wf > 0 else -np.inf
    if wf >= 1.0:
        sea = np.inf
    water = elev < sea if wf < 1.0 else np.ones((H, W), bool)
    detail = fbm(rng, H, W, 800 * px + 2, min_px=6.0, persistence=0.45)
    base = sea if np.isfinite(sea) else _quantile(elev, 0.0)
    terrain = np.maximum(elev - np.float32(base), 0.0)
    terrain += np.float32(0.04) * detail * np.minimum(terrain * np.float32(10.0), 1.0)

    river_noise = fbm(rng, H, W, rng.uniform(3000, 8000) * px, min_px=4.0, persistence=0.45)
    if p["rivers_allowed"] and wf < 0.9 and rng.random() < spec["rivers"]:
        ar = np.abs(river_noise)
        thr = _quantile(ar, rng.uniform(0.004, 0.012))
        valley = elev < _quantile(elev, min(wf + 0.5 * (1 - wf), 0.95))
        water |= (ar < thr) & valley
        p["rivers"] = True
    terrain[water] = 0.0

    cls = np.full((H, W), _C.WATER, np.uint8)
    landm = ~water
    cover = dict(spec["cover"])
    if _C.SNOW in cover:
        score = terrain + np.float32(0.08) * river_noise
        snow = landm & (score > _quantile(score, 1 - cover.pop(_C.SNOW), landm))
        cls[snow] = _C.SNOW
        rest = landm & ~snow
    else:
        rest = landm
    classes = list(cover)
    feat = rng.uniform(1500, 4000) * px
    fields = np.stack([fbm(rng, H, W, feat, min_px=3.0, persistence=0.55) for _ in classes])
    if p["biome"] == "arid" and _C.DESERT in classes:  # dunes gather in the lowlands
        fields[classes.index(_C.DESERT)] -= np.float32(0.6) * elev
    bias = _fit_bias(fields, np.array([cover[k] for k in classes], np.float32), rest)
    best = fields[0] + bias[0]
    pick = np.full((H, W), int(classes[0]), np.uint8)
    for k in range(1, len(classes)):
        cand = fields[k] + bias[k]
        better = cand > best
        pick[better] = int(classes[k])
        np.maximum(best, cand, out=best)
    np.copyto(cls, pick, where=rest)
    del fields, best, pick

    t = fbm(rng, H, W, rng.uniform(300, 900) * px + 2, min_px=4.0, persistence=0.55)
    w = fbm(rng, H, W, rng.uniform(800, 2500) * px + 2, min_px=6.0, persistence=0.5)
    np.clip(0.5 + 0.45 * w, 0.0, 1.0, out=w)
    t_override = np.full((H, W), -1.0, np.float32)

    # agricultural parcels and street grids: small random tables warped onto a rotated grid
    theta = rng.uniform(0, 90)
    if spec["agri"] > 0:
        zone_f = fbm(rng, H, W, 5000 * px, min_px=16.0)
        zone = rest & ((cls == _C.VEGETATION) | (cls == _C.SOIL))
        zone &= zone_f > _quantile(zone_f, 1 - spec["agri"])
        a_px, b_px = rng.uniform(150, 500) * px, rng.uniform(150, 500) * px
        pv = _grid_table(rng, H, W, a_px, b_px, theta, lambda shape: rng.random(shape, dtype=np.float32))
        bare = pv < 0.3
        cls[zone & bare] = _C.SOIL
        cls[zone & ~bare] = _C.VEGETATION
        tv = np.where(bare, pv * np.float32(1 / 0.3), (pv - np.float32(0.3)) * np.float32(1.1 / 0.7))
        np.copyto(t_override, tv, where=zone)
        w[zone] = 0.0
    urban = cls == _C.URBAN
    if urban.any():
        cell = max(1.0, 20 * px)  # building lots ~20 m; every 6th row and column is a street
        per = int(rng.integers(5, 8))

        def lots(shape):
            tab = rng.random((2, *shape), dtype=np.float32)
            tab[0] = 0.3 + 0.7 * tab[0]  # lots: between dark asphalt and concrete
            tab[1] = (tab[1] > 0.5).astype(np.float32)  # roof or not
            tab[:, ::per, :] = 0.0
            tab[0, ::per, :] = 0.3  # streets: asphalt with trees and cars
            tab[:, :, ::per] = 0.0
            tab[0, :, ::per] = 0.3
            return tab[0] + 2.0 * tab[1]  # packed: t in [0, 1), roof flag in the 2s

        packed = _grid_table(rng, H, W, cell, cell, theta, lots)
        roof = packed >= 2.0
        tv = packed - 2.0 * roof
        np.copyto(t_override, tv, where=urban)
        np.copyto(w, roof.astype(np.float32), where=urban)

    water_u8 = water.astype(np.uint8)
    if water.all():
        water_dist = np.full((H, W), float(H + W), np.float32)
    else:
        water_dist = cv2.distanceTransform(water_u8, cv2.DIST_L2, 5)
    # coastal turbidity: turbid near the shore, clear offshore
    turbid = np.exp(-water_dist * np.float32(gsd_m / rng.uniform(500, 3000))) * np.float32(rng.uniform(0.4, 1.0))
    turbid += np.float32(rng.uniform(0.0, 0.2) ** 2 * 5)
    np.copyto(t_override, np.clip(turbid + 0.05 * t, 0, 1), where=water)
    return dict(cls=cls, t=t, w=w, t_override=t_override, terrain=terrain, water_dist=water_dist)


def _fit_bias(fields: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Offsets so that argmax(fields + bias) gives roughly the target shares inside mask."""
    step = max(1, int(math.sqrt(fields[0].size / 16384)))
    sub = fields[:, ::step, ::step][:, mask[::step, ::step]]
    bias = np.zeros(len(target), np.float32)
    if sub.shape[1] == 0:
        return bias
    target = target / target.sum()
    for _ in range(40):
        idx = np.argmax(sub + bias[:, None], axis=0)
        frac = np.bincount(idx, minlength=len(target)) / idx.size
        bias += 1.5 * (target - frac).astype(np.float32)
    return bias


def _hillshade(height, az_deg, el_deg, slope_rms_deg, land):
    """Direct-sun illumination factor cos(incidence) / cos(zenith) of each terrain facet.

    ``height`` gives the shape of the terrain only: its gradients are scaled so that the rms slope
    over land is ``slope_rms_deg``, whatever the frame size and GSD.
    """
    height = cv2.GaussianBlur(height, (0, 0), 2.5)  # hides the knots of the cubic upsampling
    gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3)  # d/d east
    gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3)
    st = max(1, int(math.sqrt(height.size / 65536)))
    m = land[::st, ::st]
    ms = float(np.mean(gx[::st, ::st][m] ** 2 + gy[::st, ::st][m] ** 2)) if m.any() else 0.0
    k = math.tan(math.radians(slope_rms_deg)) / math.sqrt(ms) if ms > 0 else 0.0
    gx *= np.float32(k)
    gy *= np.float32(-k)  # rows grow southwards: d/d north = -d/d row
    z = math.radians(90.0 - el_deg)
    az = math.radians(az_deg)
    se, sn, su = math.sin(z) * math.sin(az), math.sin(z) * math.cos(az), math.cos(z)
    cos_i = (np.float32(su) - gx * np.float32(se) - gy * np.float32(sn)) / np.sqrt(1.0 + gx * gx + gy * gy)
    np.maximum(cos_i, 0.0, out=cos_i)
    cos_i *= np.float32(1.0 / su)
    np.minimum(cos_i, 2.5, out=cos_i)
    return cos_i


def _clouds(rng, H, W, gsd_m, p):
    """Thick-cloud opacity and brightness, cirrus amount, shadow strength and the cloud mask."""
    px = 1.0 / gsd_m
    cover = p["cloud_cover"]
    out = dict(has_thick=False, has_cirrus=False)
    zeros = np.zeros((H, W), np.float32)
    alpha, shadow, cirrus = zeros, zeros, zeros
    mask = np.zeros((H, W), bool)
    cirrus_share = p["cirrus_share"] if cover < 0.95 else min(p["cirrus_share"], 0.2)
    f_thick = cover * (1.0 - cirrus_share)
    # shadow displacement: away from the sun by height / tan(elevation)
    d_px = p["cloud_height_m"] / math.tan(math.radians(p["sun_elevation_deg"])) * px
    d_px = min(d_px, 1.5 * max(H, W))
    az = math.radians(p["sun_azimuth_deg"])
    dy, dx = int(round(d_px * math.cos(az))), int(round(-d_px * math.sin(az)))
    soft = 0.35 if p["cloud_type"] == "cumulus" else 0.6
    if f_thick > 0:
        ry0, rx0 = min(0, -dy), min(0, -dx)
        ch, cw = max(H, H - dy) - ry0, max(W, W - dx) - rx0
        dens = fbm(rng, ch, cw, p["cloud_feature_m"] * px, min_px=2.0, persistence=0.58)
        oy, ox = -ry0, -rx0
        in_frame = dens[oy:oy + H, ox:ox + W]
        thr = _quantile(in_frame, 1.0 - f_thick) - 0.3265 * soft - 1e-6
        canvas_alpha = (dens - np.float32(thr)) * np.float32(1.0 / soft)
        core = np.clip((dens - np.float32(thr)) * np.float32(1.0 / (4 * soft)), 0.0, 1.0)
        _smoothstep(canvas_alpha)
        alpha = np.ascontiguousarray(canvas_alpha[oy:oy + H, ox:ox + W])
        sy, sx = oy - dy, ox - dx
        shadow = np.ascontiguousarray(canvas_alpha[sy:sy + H, sx:sx + W])
        k = max(3, int(round(40 * px)) | 1)
        shadow = cv2.GaussianBlur(shadow, (k, k), 0)
        # brightness: thicker in the core, sunlit side brighter than the far side
        g = cv2.GaussianBlur(in_frame, (0, 0), max(1.0, 80 * px))
        gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
        toward_sun = gx * np.float32(math.sin(az)) - gy * np.float32(math.cos(az))
        norm = float(toward_sun[:: max(1, H // 128), :: max(1, W // 128)].std()) or 1.0
        shade = np.float32(1.0) - toward_sun * np.float32(0.12 / norm)
        np.clip(shade, 0.75, 1.15, out=shade)
        bright = (0.7 + 0.3 * core[oy:oy + H, ox:ox + W]) * shade
        bright *= np.float32(p["cloud_brightness"])
        out["bright"] = bright.astype(np.float32)
        out["cloud_refl"] = sp.CLOUD_SHAPE.copy()
        out["cloud_refl"][4] = p["cloud_swir16_ratio"]
        out["cloud_refl"][5] = p["cloud_swir22_ratio"]
        out["has_thick"] = True
        mask = alpha >= CLOUD_MASK_ALPHA
    need = cover - float(mask.mean())
    if cirrus_share > 0 and need > 0.002:
        ci = _rotated_fbm(rng, H, W, rng.uniform(3000, 10000) * px, p["cirrus_angle_deg"],
                          aspect=rng.uniform(3, 6), min_px=3.0, persistence=0.5)
        peak = p["cirrus_peak"]
        span = 1.5
        c_thr = min(CIRRUS_MASK_RED / (peak * sp.CIRRUS_SHAPE[2]), 0.95)
        free = ~mask
        share_free = need / max(1e-6, float(free.mean()))
        base = _quantile(ci, 1.0 - share_free, free) - c_thr * span
        cirrus = (ci - np.float32(base)) * np.float32(1.0 / span)
        np.clip(cirrus, 0.0, 1.0, out=cirrus)
        out["cirrus_refl"] = sp.CIRRUS_SHAPE * np.float32(peak)  # added reflectance at amount 1
        out["has_cirrus"] = True
        mask = mask | (cirrus >= c_thr)
    out.update(alpha=alpha, shadow=shadow, cirrus=cirrus, mask=mask)
    return out


def _place_ships(rng, refl, cls, water_dist, gsd_m, p, ships):
    """Ships on open water, drawn into the BOA reflectance; returns their plans."""
    H, W = cls.shape
    px = 1.0 / gsd_m
    open_water = water_dist >= 3.0
    step = 4
    open_km2 = float(open_water[::step, ::step].mean()) * H * W * (gsd_m / 1000.0) ** 2
    if ships is None:
        n = int(rng.poisson(3.0 * open_km2 / 100.0)) if open_km2 >= 1.0 else 0
        n = min(n, 40)
    else:
        n = int(ships)
    cand = np.flatnonzero(open_water[::step, ::step].ravel())
    plans: list[dict] = []
    if n == 0 or cand.size == 0:
        return plans
    wcols = (W + step - 1) // step
    tries = 0
    while len(plans) < n and tries < 60 * n:
        tries += 1
        length_m = math.exp(rng.uniform(math.log(30.0), math.log(300.0)))
        L = max(length_m * px, 1.5)
        i = int(cand[rng.integers(cand.size)])
        r = (i // wcols) * step + rng.uniform(0, step)
        c = (i % wcols) * step + rng.uniform(0, step)
        if not (0 <= r < H and 0 <= c < W) or water_dist[int(r), int(c)] < L / 2 + 2:
            continue
        if any(math.hypot(r - q["row"], c - q["col"]) < (L + q["length_px"]) / 2 + 10 for q in plans):
            continue
        plans.append(_draw_ship(rng, refl, cls, r, c, L, gsd_m))
    return plans


def _draw_ship(rng, refl, cls, r, c, L, gsd_m):
    H, W = cls.shape
    heading = rng.uniform(0, 360)
    h = math.radians(heading)
    fy, fx = -math.cos(h), math.sin(h)  # forward unit vector (row, col)
    beam = max(L / rng.uniform(5.5, 8.0), 0.6)
    moving = rng.random() < 0.75
    speed = rng.uniform(0.3, 1.0) if moving else 0.0
    wake_len = L * rng.uniform(3, 12) * speed + 1e-3
    reach = L / 2 + (2.5 * wake_len if moving else 0) + 4
    r0, r1 = max(0, int(r - reach)), min(H, int(r + reach) + 1)
    c0, c1 = max(0, int(c - reach)), min(W, int(c + reach) + 1)
    sl = (slice(r0, r1), slice(c0, c1))
    ph, pw = r1 - r0, c1 - c0
    # hull coverage with 4 x 4 supersampling, on a small patch around the hull
    ss = 4
    hr = L / 2 + 2
    h0, h1 = max(r0, int(r - hr)), min(r1, int(r + hr) + 1)
    g0, g1 = max(c0, int(c - hr)), min(c1, int(c + hr) + 1)
    yy = (np.arange((h1 - h0) * ss, dtype=np.float32) + 0.5) / ss + h0 - r
    xx = (np.arange((g1 - g0) * ss, dtype=np.float32) + 0.5) / ss + g0 - c
    dy, dx = yy[:, None], xx[None, :]
    u = dy * fy + dx * fx
    v = dy * fx - dx * fy
    taper = np.clip((L / 2 - u) / (0.25 * L), 0.15, 1.0)
    inside = (np.abs(u) <= L / 2) & (np.abs(v) <= beam / 2 * taper)
    aft = (u < -L / 2 + 0.35 * L) & (u > -L / 2 + 0.05 * L) & (np.abs(v) < beam * 0.3)
    cov = np.zeros((ph, pw), np.float32)
    aft_cov = np.zeros((ph, pw), np.float32)
    shp = (h1 - h0, ss, g1 - g0, ss)
    cov[h0 - r0:h1 - r0, g0 - c0:g1 - c0] = inside.reshape(shp).mean(axis=(1, 3))
    aft_cov[h0 - r0:h1 - r0, g0 - c0:g1 - c0] = aft.reshape(shp).mean(axis=(1, 3))
    hull = cov >= SHIP_COVERAGE
    if not hull.any():
        hull = cov >= cov.max() - 1e-6
    # colours: dark, grey or white ship, brighter superstructure aft
    kind = rng.choice(3, p=(0.2, 0.55, 0.25))
    base = [sp.SURFACE["hull_dark"], sp.SURFACE["deck_grey"], sp.SURFACE["superstructure"]][kind]
    base = base * np.float32(rng.uniform(0.8, 1.2))
    top = sp.SURFACE["superstructure"]
    # wake, at 1x resolution
    cy = (np.arange(ph, dtype=np.float32) + 0.5 + r0 - r)[:, None]
    cx = (np.arange(pw, dtype=np.float32) + 0.5 + c0 - c)[None, :]
    u1 = cy * fy + cx * fx
    v1 = cy * fx - cx * fy
    behind = -(u1 + L / 2)  # distance behind the stern
    foam = np.zeros((ph, pw), np.float32)
    if moving:
        b = np.maximum(behind, 0.0)
        ramp = np.clip(behind + 1.0, 0.0, 1.0)
        turb = np.exp(-((v1 / (0.5 * beam + 0.6 + 0.05 * b)) ** 2)) * np.exp(-b / (0.6 * wake_len))
        arm = np.exp(-(((np.abs(v1) - b * 0.3536) / (0.7 + 0.03 * b)) ** 2)) * np.exp(-b / (0.4 * wake_len))
        foam = (0.75 * turb + 0.15 * arm) * ramp * np.float32(speed)
        bow = np.exp(-((u1 - L / 2) ** 2 + v1**2) / max(1.0, (0.6 * beam) ** 2)) * 0.4 * speed
        foam += bow.astype(np.float32)
        water_here = cls[sl] == _C.WATER
        foam *= water_here
        np.clip(foam, 0.0, 0.85, out=foam)
        foam *= (1.0 - cov)
    for k in range(NB):
        s = refl[k][sl]
        s += foam * np.float32(sp.SURFACE["foam"][k]) - foam * s
        ship_k = base[k] + aft_cov / np.maximum(cov, 1e-3) * (top[k] - base[k]) * 0.7
        s += cov * (ship_k - s)
    wake = (foam >= WAKE_FOAM) & ~hull
    return dict(slice=sl, hull=hull, wake=wake, row=r, col=c, length_px=L, heading_deg=heading)


def _plan_fires(rng, cls, water_dist, gsd_m, p, fires):
    """Fire fronts on land with their burn scars, Planck emission and smoke plumes."""
    H, W = cls.shape
    px = 1.0 / gsd_m
    step = 4
    sub = cls[::step, ::step]
    burnable = (sub == _C.VEGETATION) | (sub == _C.SOIL)
    if not burnable.any():
        burnable = (sub != _C.WATER) & (sub != _C.SNOW)
    if not burnable.any():
        return []
    land_km2 = float(((sub != _C.WATER)).mean()) * H * W * (gsd_m / 1000.0) ** 2
    if fires is None:
        land_frac = float((sub != _C.WATER).mean())
        prob = _BIOME_SPEC[p["biome"]]["fire_prob"]
        n = 1 + int(rng.poisson(1.5 * land_km2 / 100.0)) if (land_frac > 0.3 and rng.random() < prob) else 0
    else:
        n = int(fires)
    cand = np.flatnonzero(burnable.ravel())
    wcols = sub.shape[1]
    wind = math.radians(p["wind_deg"])
    wy, wx = -math.cos(wind), math.sin(wind)  # direction the smoke drifts (row, col)
    turb = fbm(rng, 128, 128, 24, min_px=2.0) if n else None
    plans = []
    tries = 0
    while len(plans) < n and tries < 50 * max(n, 1):
        tries += 1
        i = int(cand[rng.integers(cand.size)])
        r = (i // wcols) * step + rng.uniform(0, step)
        c = (i % wcols) * step + rng.uniform(0, step)
        extent_m = math.exp(rng.uniform(math.log(20.0), math.log(200.0)))
        E = max(extent_m * px, 1.0)
        if not (0 <= r < H and 0 <= c < W) or water_dist[int(r), int(c)] > 0.5:
            continue  # water_dist is 0 on land: distanceTransform measures from land to water
        if any(math.hypot(r - q["row"], c - q["col"]) < 3 * (E + q["length_px"]) + 10 for q in plans):
            continue
        plans.append(_draw_fire(rng, r, c, E, gsd_m, p, (wy, wx), turb, H, W))
    return plans


def _draw_fire(rng, r, c, E, gsd_m, p, wind_vec, turb, H, W):
    px = 1.0 / gsd_m
    wy, wx = wind_vec
    # --- fire front (hot pixels), an elongated blob across the wind
    reach = E + 4
    r0, r1 = max(0, int(r - reach)), min(H, int(r + reach) + 1)
    c0, c1 = max(0, int(c - reach)), min(W, int(c + reach) + 1)
    yy = (np.arange(r0, r1, dtype=np.float32) + 0.5 - r)[:, None]
    xx = (np.arange(c0, c1, dtype=np.float32) + 0.5 - c)[None, :]
    along = yy * wy + xx * wx
    across = yy * wx - xx * wy
    minor = max(0.7, E / rng.uniform(2.5, 5.0))
    dist = (across / (E / 2 + 0.5)) ** 2 + (along / (minor / 2 + 0.5)) ** 2
    noise = rng.uniform(0.5, 1.0, size=dist.shape).astype(np.float32)
    peak = math.exp(rng.uniform(math.log(0.03), math.log(0.3)))
    pmap = (np.exp(-3.0 * dist * dist) * noise * np.float32(peak)).astype(np.float32)
    temp_k = rng.uniform(850, 1250)
    emission = sp.fire_apparent_reflectance(temp_k, p["sun_elevation_deg"])
    emission = np.minimum(emission, 400.0).astype(np.float32)
    core = pmap * emission[5] >= FIRE_SWIR22
    if not core.any():
        core = pmap >= pmap.max() - 1e-9
    # --- burn scar upwind of the front
    scar_len = E * rng.uniform(3, 12)
    scar_w = max(E * rng.uniform(1.0, 1.6), scar_len * rng.uniform(0.4, 0.8))
    sc_r, sc_c = r - wy * scar_len / 2, c - wx * scar_len / 2
    reach_s = scar_len / 2 + scar_w + 3
    s0, s1 = max(0, int(sc_r - reach_s)), min(H, int(sc_r + reach_s) + 1)
    t0, t1 = max(0, int(sc_c - reach_s)), min(W, int(sc_c + reach_s) + 1)
    sy = (np.arange(s0, s1, dtype=np.float32) + 0.5 - sc_r)[:, None]
    sx = (np.arange(t0, t1, dtype=np.float32) + 0.5 - sc_c)[None, :]
    a_ = sy * wy + sx * wx
    b_ = sy * wx - sx * wy
    d2 = (a_ / (scar_len / 2 + 0.5)) ** 2 + (b_ / (scar_w / 2 + 0.5)) ** 2
    edge_noise = fbm(rng, d2.shape[0], d2.shape[1], max(scar_w / 2, 3.0), min_px=1.5, persistence=0.6)
    scar = d2 + 0.35 * edge_noise < 1.0
    # --- smoke plume downwind
    plume_len = rng.uniform(1000, 6000) * px
    half_angle = math.radians(rng.uniform(6, 18))
    density0 = rng.uniform(0.5, 0.95)
    w0 = max(E / 2, 1.0)
    reach_p = plume_len * 1.6 + w0 + 4
    ends = [(r, c), (r + wy * reach_p, c + wx * reach_p)]
    lat = reach_p * math.tan(half_angle) * 1.5 + w0 + 4
    q0 = max(0, int(min(e[0] for e in ends) - lat))
    q1 = min(H, int(max(e[0] for e in ends) + lat) + 1)
    k0 = max(0, int(min(e[1] for e in ends) - lat))
    k1 = min(W, int(max(e[1] for e in ends) + lat) + 1)
    smoke = np.zeros((max(q1 - q0, 0), max(k1 - k0, 0)), np.float32)
    if smoke.size:
        py = (np.arange(q0, q1, dtype=np.float32) + 0.5 - r)[:, None]
        pxx = (np.arange(k0, k1, dtype=np.float32) + 0.5 - c)[None, :]
        along_p = py * wy + pxx * wx
        across_p = py * wx - pxx * wy
        a_pos = np.maximum(along_p, 0.0)
        width = w0 + a_pos * np.float32(math.tan(half_angle))
        smoke = np.exp(-((across_p / width) ** 2)) * np.exp(-a_pos / np.float32(plume_len))
        smoke *= np.clip(along_p / (w0 + 1.0) + 1.0, 0.0, 1.0)
        tt = cv2.resize(turb, (k1 - k0, q1 - q0), interpolation=cv2.INTER_CUBIC)
        smoke *= np.clip(1.0 + 0.35 * tt, 0.2, 2.0)
        smoke = (smoke * np.float32(density0)).astype(np.float32)
    return dict(
        row=r, col=c, length_px=E, heading_deg=p["wind_deg"],
        emit_slice=(slice(r0, r1), slice(c0, c1)), p=pmap, emission=emission, core=core,
        scar_slice=(slice(s0, s1), slice(t0, t1)), scar=scar,
        smoke_slice=(slice(q0, q1), slice(k0, k1)), smoke=smoke, temperature_k=temp_k,
    )


# =============================================================================================
# Real scenes
# =============================================================================================


REAL_MAX_PX = 16384  # payload_sim.sensor.Sensor's frame limit per side


def _npz_headers(path: Path) -> dict:
    """{name: (shape, dtype)} of each .npy member of an .npz, from the headers only."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            out[info.filename[:-4]] = (tuple(shape), np.dtype(dtype))
    return out


def real_scene(path: str | os.PathLike, gsd_m: float = 30.0) -> Scene:
    """A real TOA reflectance scene (.npz with 'img' (H, W, 6) float32, optional 'msk' (H, W, 1)).

    The reference mask's value 4 is cloud (CLOUD_THICK in ``classes``, True in ``cloud_mask``);
    0 is mapped to CLOUD_SHADOW and 1 to WATER (both "dark classes" in the data's README, told
    apart by eye), everything else to UNKNOWN. Without a mask every pixel is UNKNOWN and the
    cloud mask is all False. Objects are empty; ``gsd_m`` defaults to Landsat's 30 m.
    """
    path = Path(path)
    try:
        # shapes and dtypes from the .npy headers first: a file that declares a huge array must be
        # refused before numpy allocates it (np.load allocates the declared size, then reads)
        heads = _npz_headers(path)
        if "img" not in heads:
            raise ValueError(f"{path}: no 'img' array (keys: {sorted(heads)})")
        shape, dtype = heads["img"]
        if len(shape) != 3 or shape[2] != NB or not (1 <= shape[0] <= REAL_MAX_PX and 1 <= shape[1] <= REAL_MAX_PX):
            raise ValueError(f"{path}: 'img' has shape {shape}, expected (H, W, {NB}) with H, W in 1..{REAL_MAX_PX}")
        if dtype.kind not in "fiu":  # strings, complex, bool, objects are no reflectance
            raise ValueError(f"{path}: 'img' has dtype {dtype}, expected a real number type (float32)")
        if "msk" in heads:
            mshape, mdtype = heads["msk"]
            if math.prod(mshape) != shape[0] * shape[1] or mdtype.kind not in "iu":
                raise ValueError(f"{path}: 'msk' is {mdtype} {mshape}, expected integer ({shape[0]}, {shape[1]}, 1)")
        with np.load(path, allow_pickle=False) as data:
            img = np.asarray(data["img"])
            msk = np.asarray(data["msk"]) if "msk" in data else None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        # a truncated or non-zip file, a member that is not .npy (or pickled): one clear line
        if isinstance(exc, ValueError) and str(exc).startswith(f"{path}: "):
            raise
        raise ValueError(f"{path}: not a readable .npz: {exc}") from exc
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32 becomes inf, refused just below
        refl = np.ascontiguousarray(np.transpose(img.astype(np.float32, copy=False), (2, 0, 1)))
    # NaN / inf reflectance (also float64 beyond float32's range) would reach the sensor model as
    # silent zeros or saturation and give made-up metrics: refuse it
    if not np.isfinite(refl).all():
        raise ValueError(f"{path}: 'img' holds {int((~np.isfinite(refl)).sum())} NaN or infinite values (as float32)")
    H, W = img.shape[:2]
    cls = np.full((H, W), SurfaceClass.UNKNOWN, np.uint8)
    cloud = np.zeros((H, W), bool)
    if msk is not None:
        m = msk.reshape(H, W) if msk.size == H * W else None
        if m is None:
            raise ValueError(f"{path}: 'msk' has shape {msk.shape}, expected ({H}, {W}, 1)")
        cloud = m == 4
        cls[m == 0] = SurfaceClass.CLOUD_SHADOW
        cls[m == 1] = SurfaceClass.WATER
        cls[cloud] = SurfaceClass.CLOUD_THICK
    return Scene(refl, cls, cloud, [], float(gsd_m), info={"source": str(path)})
