"""Procedural scenes: determinism, ground truth, physics that the models rely on, real scenes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flight.frames import BANDS
from payload_sim.scenes import (
    CLOUD_MASK_ALPHA,
    Scene,
    SceneObject,
    SurfaceClass,
    real_scene,
    synthetic_scene,
)

C = SurfaceClass
REAL = Path(__file__).parents[2] / "shared" / "data" / "real"
B = {name: i for i, name in enumerate(BANDS)}
LAND = {C.VEGETATION, C.SOIL, C.DESERT, C.URBAN, C.SNOW, C.BURN_SCAR}


def frac(scene: Scene, cls: SurfaceClass) -> float:
    return float((scene.classes == cls).mean())


def test_deterministic_from_seed_and_frame_id():
    kw = dict(height=256, width=256)
    a = synthetic_scene(11, 3, **kw)
    b = synthetic_scene(11, 3, **kw)
    np.testing.assert_array_equal(a.reflectance, b.reflectance)
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_array_equal(a.cloud_mask, b.cloud_mask)
    assert a.objects == b.objects
    c = synthetic_scene(11, 4, **kw)
    assert not np.array_equal(a.reflectance, c.reflectance)


def test_components_draw_independently():
    """Asking for ships does not move the clouds or the coastline."""
    kw = dict(height=256, width=256, water_fraction=0.95, cloud_cover=0.3)
    a = synthetic_scene(5, 0, ships=0, **kw)
    b = synthetic_scene(5, 0, ships=4, **kw)
    np.testing.assert_array_equal(a.cloud_mask, b.cloud_mask)
    assert sum(o.kind == "ship" for o in b.objects) == 4


def test_types_shapes_and_ranges():
    s = synthetic_scene(1, 1, height=128, width=200)
    assert s.reflectance.dtype == np.float32 and s.reflectance.shape == (len(BANDS), 128, 200)
    assert s.classes.dtype == np.uint8 and s.classes.shape == (128, 200)
    assert s.cloud_mask.dtype == bool and s.cloud_mask.shape == (128, 200)
    assert np.isfinite(s.reflectance).all() and s.reflectance.min() >= 0.0
    assert set(np.unique(s.classes)) <= {int(c) for c in SurfaceClass}
    assert 0.0 <= s.cloud_fraction <= 1.0
    assert all(isinstance(o, SceneObject) for o in s.objects)


@pytest.mark.parametrize("cover", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_cloud_fraction_follows_request(cover):
    s = synthetic_scene(2, 7, height=256, width=256, cloud_cover=cover)
    assert abs(s.cloud_fraction - cover) <= 0.03
    if cover == 0.0:
        assert not np.isin(s.classes, [C.CLOUD_THICK, C.CLOUD_THIN, C.CLOUD_SHADOW]).any()
    if cover >= 0.5:
        assert frac(s, C.CLOUD_THICK) > 0.2


def test_cloud_mask_covers_cloud_classes():
    s = synthetic_scene(4, 2, height=256, width=256, cloud_cover=0.4)
    assert s.cloud_mask[np.isin(s.classes, [C.CLOUD_THICK, C.CLOUD_THIN])].all()
    assert not s.cloud_mask[s.classes == C.CLOUD_SHADOW].any()


def test_random_draws_span_clear_partly_and_overcast():
    covers = [synthetic_scene(3, f, height=64, width=64).info["cloud_cover"] for f in range(40)]
    covers = np.array(covers)
    assert (covers < 0.05).any() and ((covers > 0.1) & (covers < 0.6)).any() and (covers > 0.7).any()


def test_water_fraction_and_land_classes():
    s = synthetic_scene(8, 0, height=256, width=256, water_fraction=0.4, cloud_cover=0.0, ships=0, biome="temperate")
    assert abs(frac(s, C.WATER) - 0.4) <= 0.03
    for cls in (C.VEGETATION, C.SOIL):
        assert frac(s, cls) > 0.05
    sea = synthetic_scene(8, 1, height=256, width=256, water_fraction=1.0, cloud_cover=0.0, ships=0)
    assert frac(sea, C.WATER) > 0.99


@pytest.mark.parametrize(
    ("biome", "cls"), [("snow", C.SNOW), ("arid", C.DESERT), ("temperate", C.URBAN), ("tropical", C.VEGETATION)]
)
def test_biomes_have_their_classes(biome, cls):
    s = synthetic_scene(9, 0, height=256, width=256, water_fraction=0.0, cloud_cover=0.0, biome=biome)
    assert frac(s, cls) > 0.03


def test_snow_is_dark_in_swir16_and_clouds_are_not():
    """The look-alike discriminator: clouds stay bright in swir16, snow does not."""
    s = synthetic_scene(6, 0, height=256, width=256, water_fraction=0.0, cloud_cover=0.4, biome="snow")
    r = s.reflectance
    snow, cloud = s.classes == C.SNOW, s.classes == C.CLOUD_THICK
    assert snow.sum() > 500 and cloud.sum() > 500
    assert np.median(r[B["green"]][snow]) > 0.4
    assert np.median(r[B["swir16"]][snow]) < 0.2
    assert np.median(r[B["swir16"]][cloud]) > 0.2
    ndsi_snow = (r[B["green"]] - r[B["swir16"]]) / (r[B["green"]] + r[B["swir16"]])
    assert np.median(ndsi_snow[snow]) > 0.6 > np.median(ndsi_snow[cloud])


def test_thin_cirrus_is_semi_transparent():
    for frame in range(40):  # find a scene that drew cirrus
        s = synthetic_scene(12, frame, height=128, width=128, cloud_cover=0.5)
        if s.info["cirrus_share"] > 0 and frac(s, C.CLOUD_THIN) > 0.05:
            break
    else:
        pytest.fail("no cirrus in 40 frames")
    thin = s.classes == C.CLOUD_THIN
    # thinner than thick cloud in the visible, and the ground still shows through: not uniform
    vis = s.reflectance[B["red"]]
    assert np.median(vis[thin]) < np.median(vis[s.classes == C.CLOUD_THICK]) if (s.classes == C.CLOUD_THICK).any() else True
    assert vis[thin].std() > 0.01


def test_cloud_shadows_fall_away_from_the_sun():
    for az in (135.0, 300.0):
        s = synthetic_scene(0, 0, height=512, width=512, cloud_cover=0.15, water_fraction=0.0, sun_azimuth_deg=az)
        thick = (s.classes == C.CLOUD_THICK).astype(float)
        shadow = (s.classes == C.CLOUD_SHADOW).astype(float)
        cc = np.fft.irfft2(np.conj(np.fft.rfft2(thick)) * np.fft.rfft2(shadow), s=thick.shape)
        dy, dx = np.unravel_index(np.argmax(cc), cc.shape)
        dy, dx = (dy + 256) % 512 - 256, (dx + 256) % 512 - 256
        d = s.info["cloud_height_m"] / np.tan(np.radians(45.0)) / s.gsd_m
        expect = (d * np.cos(np.radians(az)), -d * np.sin(np.radians(az)))  # rows grow south
        assert abs(dy - expect[0]) <= 3 and abs(dx - expect[1]) <= 3, (az, dy, dx, expect)


def test_shadows_darken_the_ground():
    s = synthetic_scene(0, 0, height=256, width=256, cloud_cover=0.2, water_fraction=0.0, biome="temperate")
    nir = s.reflectance[B["nir"]]
    shade = s.classes == C.CLOUD_SHADOW
    clear = np.isin(s.classes, [C.VEGETATION, C.SOIL])
    assert np.median(nir[shade]) < 0.7 * np.median(nir[clear])


def test_ships_only_on_open_water_with_wakes():
    found = 0
    for frame in range(3):
        s = synthetic_scene(21, frame, height=384, width=384, water_fraction=0.5, cloud_cover=0.0, ships=5)
        ships = [o for o in s.objects if o.kind == "ship"]
        for o in ships:
            r, c, rad = int(o.row), int(o.col), int(o.length_px / 2) + 1
            ring = s.classes[max(0, r - rad):r + rad + 1, max(0, c - rad):c + rad + 1]
            assert not np.isin(ring, list(LAND)).any(), o
            assert s.classes[r, c] in (C.SHIP, C.WAKE, C.WATER)
            assert o.pixels > 0 and not o.occluded
        found += len(ships)
        assert (s.classes == C.SHIP).sum() == sum(o.pixels for o in ships)
    assert found == 15
    assert any((synthetic_scene(21, f, height=384, width=384, water_fraction=0.5, cloud_cover=0.0, ships=5).classes
                == C.WAKE).any() for f in range(3))


def test_ship_sizes_and_density():
    lengths, per_frame = [], []
    for frame in range(12):
        s = synthetic_scene(31, frame, height=512, width=512, water_fraction=1.0, cloud_cover=0.0)
        ships = [o for o in s.objects if o.kind == "ship"]
        per_frame.append(len(ships))
        lengths += [o.length_px for o in ships]
    # 512 x 512 at 10 m is 26 km2: about 0.8 ships per frame on average
    assert 0.2 <= np.mean(per_frame) <= 2.0
    assert lengths and min(lengths) >= 3.0 - 1e-6 and max(lengths) <= 30.0 + 1e-6


def test_no_ships_on_land_frames():
    for frame in range(4):
        s = synthetic_scene(41, frame, height=256, width=256, water_fraction=0.0)
        assert not any(o.kind == "ship" for o in s.objects)
    s = synthetic_scene(41, 9, height=256, width=256, water_fraction=0.0, ships=5)
    assert not any(o.kind == "ship" for o in s.objects) and not (s.classes == C.SHIP).any()


def test_fires_are_hot_in_swir_with_smoke_and_scars():
    s = synthetic_scene(51, 0, height=384, width=384, water_fraction=0.0, cloud_cover=0.0, fires=3, biome="temperate")
    fires = [o for o in s.objects if o.kind == "fire"]
    assert len(fires) == 3 and all(o.pixels > 0 for o in fires)
    fire = s.classes == C.FIRE
    r = s.reflectance
    assert np.median(r[B["swir22"]][fire]) > 0.5
    assert np.median(r[B["swir16"]][fire]) > 0.3
    assert np.median(r[B["swir22"]][fire]) > 3 * np.median(r[B["nir"]][fire])
    assert np.median(r[B["red"]][fire]) < 0.3  # flames are invisible in the visible at this scale
    assert frac(s, C.SMOKE) > 0.002 and frac(s, C.BURN_SCAR) > 0.0005
    smoke = s.classes == C.SMOKE
    clear = np.isin(s.classes, [C.VEGETATION, C.SOIL])
    assert np.median(r[B["blue"]][smoke]) > np.median(r[B["blue"]][clear]) + 0.03


def test_no_fires_on_water():
    s = synthetic_scene(52, 0, height=256, width=256, water_fraction=1.0, fires=3)
    assert not any(o.kind == "fire" for o in s.objects)


def test_objects_under_thick_cloud_are_occluded():
    s = synthetic_scene(61, 0, height=256, width=256, water_fraction=1.0, cloud_cover=1.0, ships=3)
    ships = [o for o in s.objects if o.kind == "ship"]
    assert len(ships) == 3 and all(o.occluded and o.pixels == 0 for o in ships)


def test_gsd_scales_objects():
    s10 = synthetic_scene(71, 0, height=256, width=256, water_fraction=1.0, cloud_cover=0.0, ships=6)
    s30 = synthetic_scene(71, 0, height=256, width=256, water_fraction=1.0, cloud_cover=0.0, ships=6, gsd_m=30.0)
    l10 = np.mean([o.length_px for o in s10.objects])
    l30 = np.mean([o.length_px for o in s30.objects])
    assert l30 < l10


def test_bad_arguments_fail_fast():
    with pytest.raises(ValueError, match="cloud_cover"):
        synthetic_scene(0, 0, cloud_cover=1.5)
    with pytest.raises(ValueError, match="height"):
        synthetic_scene(0, 0, height=4)
    with pytest.raises(ValueError, match="biome"):
        synthetic_scene(0, 0, biome="moon")


def test_cloud_mask_threshold_constant_is_documented():
    assert 0.0 < CLOUD_MASK_ALPHA < 0.5


def _need_real() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"real scenes not available: {REAL} is absent (the shared data folder is not mounted)")
    return REAL


def test_real_scene_landsat7_loads():
    s = real_scene(_need_real() / "landsat7.npz")
    assert s.reflectance.shape == (len(BANDS), 512, 512) and s.reflectance.dtype == np.float32
    assert s.reflectance.flags.c_contiguous
    assert s.objects == []
    assert abs(s.cloud_fraction - 94451 / 512**2) < 1e-6
    np.testing.assert_array_equal(s.cloud_mask, s.classes == C.CLOUD_THICK)
    # band order: clouds are brighter than clear land in blue, vegetation/land has nir > red
    clear = ~s.cloud_mask
    assert s.reflectance[B["blue"]][s.cloud_mask].mean() > s.reflectance[B["blue"]][clear].mean()
    assert s.reflectance[B["nir"]][clear].mean() > s.reflectance[B["red"]][clear].mean()


def test_real_scene_rejects_bad_files(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, img=np.zeros((8, 8, 4), np.float32))
    with pytest.raises(ValueError, match="expected"):
        real_scene(p)
    q = tmp_path / "junk.npz"
    q.write_bytes(b"not a zip")
    with pytest.raises(ValueError):
        real_scene(q)
    r = tmp_path / "nomask.npz"
    np.savez(r, img=np.full((8, 8, 6), 0.1, np.float32))
    s = real_scene(r)
    assert not s.cloud_mask.any() and (s.classes == C.UNKNOWN).all()
