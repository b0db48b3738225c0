"""Sensor model: radiometry, noise, fixed patterns, defects, saturation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from flight.frames import BANDS, DN_MAX
from payload_sim.sensor import Sensor, SensorConfig

NB = len(BANDS)
H, W = 128, 160


def uniform(level: float, h: int = H, w: int = W) -> np.ndarray:
    return np.full((NB, h, w), level, np.float32)


@pytest.fixture(scope="module")
def sensor() -> Sensor:
    return Sensor(SensorConfig(), H, W)


def test_dtype_shape_and_range(sensor):
    rng = np.random.default_rng(0)
    refl = rng.uniform(0, 1.5, (NB, H, W)).astype(np.float32)
    raw = sensor.expose(refl, rng)
    assert raw.dtype == np.uint16 and raw.shape == (NB, H, W)
    assert raw.max() <= DN_MAX == 4095


def test_saturation_at_4095(sensor):
    raw = sensor.expose(uniform(3.0), np.random.default_rng(1))
    live = sensor.relative_response > 0.5
    assert (raw[live] == 4095).all()
    assert (raw[~live] < 300).all()  # dead pixels and the dead column do not respond


def test_typical_reflectances_do_not_saturate(sensor):
    cfg = sensor.config
    top = [1.0] + [1.2] * (NB - 1)  # bright cloud may saturate blue, nothing else below 1.2
    for b in range(NB):
        assert cfg.offset_dn[b] + top[b] * cfg.dn_per_reflectance[b] * (1 + 3 * cfg.prnu_fraction) < DN_MAX
    refl = np.stack([np.full((H, W), t, np.float32) for t in top])
    raw = sensor.expose(refl, np.random.default_rng(2))
    assert (raw == 4095).mean() < 1e-4


def test_mean_response_follows_gain_and_offset():
    cfg = dataclasses.replace(SensorConfig(), prnu_fraction=0.0, vignetting_fraction=0.0, psf_sigma_px=0.0,
                              hot_pixel_fraction=0.0, dead_pixel_fraction=0.0, dead_column=None)
    sen = Sensor(cfg, H, W)
    raw = sen.expose(uniform(0.3), np.random.default_rng(3)).astype(np.float64)
    dark_e = cfg.dark_current_e_per_s * cfg.integration_time_s
    for b in range(NB):
        expect = cfg.offset_dn[b] + 0.3 * cfg.dn_per_reflectance[b] + dark_e / cfg.e_per_dn
        assert abs(raw[b].mean() - expect) < 0.5
        # temporal + DSNU noise: shot + read + DSNU + quantization
        sig_e = 0.3 * cfg.dn_per_reflectance[b] * cfg.e_per_dn
        var = (sig_e + dark_e + cfg.read_noise_e**2) / cfg.e_per_dn**2 + cfg.dsnu_dn**2 + 1 / 12
        assert raw[b].std() == pytest.approx(np.sqrt(var), rel=0.05)


def test_dead_column_present_and_flat(sensor):
    col = sensor.config.dead_column
    assert col is not None and col < W
    raw = sensor.expose(uniform(0.5), np.random.default_rng(4))
    for b in range(NB):
        dead = raw[b, :, col].astype(float)
        live = raw[b, :, col + 1].astype(float)
        assert dead.mean() < 200 and live.mean() > 1000
        assert dead.std() < 10


def test_windowed_readout_without_the_dead_column():
    sen = Sensor(SensorConfig(), 32, 64)  # narrower than column 101
    assert (sen.relative_response.reshape(NB, -1).min(axis=1) >= 0).all()
    raw = sen.expose(uniform(0.5, 32, 64), np.random.default_rng(5))
    assert np.all(np.median(raw, axis=1) > 1000)


def test_dead_column_in_one_band_only():
    cfg = dataclasses.replace(SensorConfig(), dead_column=7, dead_column_band=3)
    sen = Sensor(cfg, 32, 32)
    raw = sen.expose(uniform(0.5, 32, 32), np.random.default_rng(6))
    assert raw[3, :, 7].mean() < 200
    assert all(raw[b, :, 7].mean() > 1000 for b in range(NB) if b != 3)


def test_hot_pixels_present_in_the_dark(sensor):
    raw = sensor.expose(uniform(0.0), np.random.default_rng(7)).astype(np.int32)
    for b in range(NB):
        hot = sensor.hot_pixels[b]
        assert hot.size == round(sensor.config.hot_pixel_fraction * H * W)
        flat = raw[b].reshape(-1)
        median = np.median(flat)
        assert (flat[hot] > median + 50).mean() > 0.95
        # and nothing else is that bright
        others = np.delete(flat, hot)
        assert (others > median + 50).mean() < 1e-3


def test_dead_pixels_do_not_respond(sensor):
    raw = sensor.expose(uniform(0.8), np.random.default_rng(8))
    for b in range(NB):
        assert (raw[b].reshape(-1)[sensor.dead_pixels[b]] < 200).all()


def test_fixed_pattern_from_instrument_seed_noise_from_rng():
    a = Sensor(SensorConfig(), 64, 64)
    b = Sensor(SensorConfig(), 64, 64)
    np.testing.assert_array_equal(a.relative_response, b.relative_response)
    refl = uniform(0.2, 64, 64)
    r1 = a.expose(refl, np.random.default_rng(9))
    r2 = b.expose(refl, np.random.default_rng(9))
    r3 = b.expose(refl, np.random.default_rng(10))
    np.testing.assert_array_equal(r1, r2)
    assert not np.array_equal(r1, r3)
    c = Sensor(dataclasses.replace(SensorConfig(), instrument_seed=1), 64, 64)
    assert not np.array_equal(a.relative_response, c.relative_response)


def test_prnu_and_vignetting_shape_the_flat(sensor):
    f = sensor.relative_response[0]
    live = f > 0.5
    assert 0.005 < f[live].std() < 0.03
    assert f[H // 2 - 4:H // 2 + 4, W // 2 - 4:W // 2 + 4].mean() > f[:8, :8].mean() + 0.02


def test_psf_blurs():
    refl = np.zeros((NB, 32, 32), np.float32)
    refl[:, 16, 16] = 1.0
    sharp = Sensor(dataclasses.replace(SensorConfig(), psf_sigma_px=0.0), 32, 32)
    blurred = Sensor(SensorConfig(), 32, 32)
    assert sharp.optics(refl) is refl
    o = blurred.optics(refl)
    assert 0.3 < o[0, 16, 16] < 0.9 and o[0, 16, 17] > 0.05
    assert o[0].sum() == pytest.approx(1.0, rel=1e-3)


def test_config_validation_names_the_key():
    with pytest.raises(ValueError, match="prnu_fraction"):
        SensorConfig(prnu_fraction=0.9)
    with pytest.raises(ValueError, match="dn_per_reflectance"):
        SensorConfig(dn_per_reflectance=(1.0, 2.0))
    with pytest.raises(ValueError, match="bits"):
        SensorConfig(bits=32)
    with pytest.raises(ValueError, match="shape"):
        Sensor(SensorConfig(), 16, 16).expose(uniform(0.1, 8, 8), np.random.default_rng(0))
