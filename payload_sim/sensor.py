"""Radiometric model of the payload camera: TOA reflectance -> raw 12-bit DN per band.

For band b and pixel p (docs/world.md has the full list of defaults):

    x        = PSF * rho                                   (Gaussian, sigma psf_sigma_px; 0 = none)
    S_e      = x * dn_per_reflectance[b] * e_per_dn * F[b,p]        signal electrons
    F[b,p]   = (1 + prnu_fraction * N(0,1)) * V(p)         relative response: PRNU x vignetting
                                                          (0 for dead pixels and the dead column)
    D_e      = dark_current_e_per_s * integration_time_s  (x ~1000-25000 for hot pixels)
    e        = S_e + D_e + sqrt(S_e + D_e + read_noise_e**2) * N(0,1)
               (Gaussian approximation of Poisson shot noise plus read noise)
    DN       = clip(round(e / e_per_dn + offset_dn[b] + DSNU[b,p]), 0, 2**bits - 1)
    DSNU     ~ N(0, dsnu_dn)
    e_per_dn = full_well_e / 2**bits                       (the ADC range spans the full well)

Fixed patterns (PRNU, DSNU, vignetting, hot, dead pixels) come from ``instrument_seed`` and are
built once per ``Sensor``; only the temporal noise comes from the ``rng`` passed to ``expose``.

A frame narrower than ``dead_column`` is a windowed read-out that does not include the dead
column; the column is then simply absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import cv2
import numpy as np

from flight.calibrate import CalibrationProducts
from flight.frames import BANDS

NB = len(BANDS)


@dataclass(frozen=True)
class SensorConfig:
    """Camera parameters, units in the names. Validated on creation (ValueError with key and range)."""

    full_well_e: float = 20_000.0  # electrons at ADC full scale
    read_noise_e: float = 15.0  # electrons rms per read
    dark_current_e_per_s: float = 200.0  # electrons per second per pixel, at operating temperature
    integration_time_s: float = 0.002
    # DN per unit TOA reflectance for a pixel of relative response 1 (vignetting centre).
    # Saturation (4095 - offset) is reached at reflectance 1.18 (blue), 1.25, 1.29, 1.33, 1.33, 1.33.
    dn_per_reflectance: tuple[float, ...] = (3400.0, 3200.0, 3100.0, 3000.0, 3000.0, 3000.0)
    offset_dn: tuple[float, ...] = (96.0, 104.0, 100.0, 98.0, 102.0, 100.0)  # ADC offset per band
    dsnu_dn: float = 2.0  # dark-signal non-uniformity, DN rms pixel to pixel
    prnu_fraction: float = 0.01  # photo-response non-uniformity, rms relative gain
    vignetting_fraction: float = 0.04  # response loss at the frame corners (cos^4-like falloff)
    hot_pixel_fraction: float = 2e-4  # per band
    hot_pixel_dark_current_e_per_s: float = 1.5e6  # median for hot pixels (log-uniform x0.2..x5)
    dead_pixel_fraction: float = 5e-5  # per band: no photo response
    dead_column: int | None = 101  # column index with no photo response, None = none
    dead_column_band: int | None = None  # band with the dead column, None = all bands
    psf_sigma_px: float = 0.5  # Gaussian optics + detector blur, 0 = none
    instrument_seed: int = 20_261_128  # fixed-pattern noise comes from this, not the frame seed
    bits: int = 12

    def __post_init__(self) -> None:
        def bad(key, value, allowed):
            raise ValueError(f"SensorConfig: {key}={value!r} out of range, allowed {allowed}")

        for key, lo, hi in (
            ("full_well_e", 100.0, 1e7),
            ("read_noise_e", 0.0, 1e4),
            ("dark_current_e_per_s", 0.0, 1e8),
            ("integration_time_s", 1e-6, 10.0),
            ("dsnu_dn", 0.0, 100.0),
            ("prnu_fraction", 0.0, 0.2),
            ("vignetting_fraction", 0.0, 0.5),
            ("hot_pixel_fraction", 0.0, 0.01),
            ("hot_pixel_dark_current_e_per_s", 0.0, 1e9),
            ("dead_pixel_fraction", 0.0, 0.01),
            ("psf_sigma_px", 0.0, 5.0),
        ):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and lo <= v <= hi):
                bad(key, v, f"{lo}..{hi}")
        if not (isinstance(self.bits, int) and 8 <= self.bits <= 16):
            bad("bits", self.bits, "8..16")
        for key in ("dn_per_reflectance", "offset_dn"):
            v = tuple(getattr(self, key))
            if len(v) != NB:
                bad(key, v, f"{NB} values, one per band {BANDS}")
            object.__setattr__(self, key, tuple(float(x) for x in v))
        if not all(10.0 <= g <= 65535.0 for g in self.dn_per_reflectance):
            bad("dn_per_reflectance", self.dn_per_reflectance, "10..65535 per band")
        if not all(0.0 <= o < (1 << self.bits) / 2 for o in self.offset_dn):
            bad("offset_dn", self.offset_dn, f"0..{(1 << self.bits) // 2} per band")
        if self.dead_column is not None and not (isinstance(self.dead_column, int) and self.dead_column >= 0):
            bad("dead_column", self.dead_column, "int >= 0 or None")
        if self.dead_column_band is not None and self.dead_column_band not in range(NB):
            bad("dead_column_band", self.dead_column_band, f"0..{NB - 1} or None")

    @property
    def dn_max(self) -> int:
        return (1 << self.bits) - 1

    @property
    def e_per_dn(self) -> float:
        return self.full_well_e / (1 << self.bits)

    def describe(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Sensor:
    """One camera: fixed patterns built once for a frame size, then ``expose`` per frame."""

    def __init__(self, config: SensorConfig, height: int, width: int):
        if not (1 <= height <= 16384 and 1 <= width <= 16384):
            raise ValueError(f"Sensor: frame {height} x {width} out of range, allowed 1..16384 each")
        self.config = cfg = config
        self.height, self.width = int(height), int(width)
        H, W = self.height, self.width
        rng = np.random.default_rng(np.random.SeedSequence([int(cfg.instrument_seed), H, W]))
        epd = cfg.e_per_dn
        # vignetting: cos^4-like falloff reaching vignetting_fraction at the corners
        yy = (np.arange(H, dtype=np.float32) - (H - 1) / 2) / max(H / 2, 1)
        xx = (np.arange(W, dtype=np.float32) - (W - 1) / 2) / max(W / 2, 1)
        r2 = (yy[:, None] ** 2 + xx[None, :] ** 2) / 2.0
        vign = (1.0 - np.float32(cfg.vignetting_fraction) * r2).astype(np.float32)
        self.relative_response = np.empty((NB, H, W), np.float32)  # F[b, p]
        self._dark_dn = np.empty((NB, H, W), np.float32)  # offset + DSNU + mean dark, DN
        self.hot_pixels: list[np.ndarray] = []
        self.dead_pixels: list[np.ndarray] = []
        self._hot_e: list[np.ndarray] = []
        dark_e = cfg.dark_current_e_per_s * cfg.integration_time_s
        n = H * W
        for b in range(NB):
            f = self.relative_response[b]
            f[...] = rng.standard_normal((H, W), dtype=np.float32)
            f *= np.float32(cfg.prnu_fraction)
            f += 1.0
            f *= vign
            dead = rng.choice(n, size=int(round(cfg.dead_pixel_fraction * n)), replace=False)
            f.reshape(-1)[dead] = 0.0
            if cfg.dead_column is not None and cfg.dead_column < W and cfg.dead_column_band in (None, b):
                f[:, cfg.dead_column] = 0.0
            d = self._dark_dn[b]
            d[...] = rng.standard_normal((H, W), dtype=np.float32)
            d *= np.float32(cfg.dsnu_dn)
            d += np.float32(cfg.offset_dn[b] + dark_e / epd)
            hot = rng.choice(n, size=int(round(cfg.hot_pixel_fraction * n)), replace=False)
            hot_e = cfg.hot_pixel_dark_current_e_per_s * cfg.integration_time_s * np.exp(
                rng.uniform(math.log(0.2), math.log(5.0), size=hot.size)
            )
            d.reshape(-1)[hot] += (hot_e / epd).astype(np.float32)
            self.hot_pixels.append(hot)
            self._hot_e.append(hot_e.astype(np.float32))
            self.dead_pixels.append(dead)
        self._dark_e = dark_e

    # ------------------------------------------------------------------------------------------
    def optics(self, reflectance: np.ndarray) -> np.ndarray:
        """The reflectance the detector sees: the PSF applied per band (a copy when blurred)."""
        s = self.config.psf_sigma_px
        if s <= 0:
            return reflectance
        out = np.empty_like(reflectance, dtype=np.float32)
        for b in range(reflectance.shape[0]):
            cv2.GaussianBlur(reflectance[b].astype(np.float32, copy=False), (0, 0), s, dst=out[b],
                             borderType=cv2.BORDER_REFLECT)
        return out

    def expose(self, reflectance: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """float32 (6, H, W) TOA reflectance -> uint16 (6, H, W) raw DN, saturating at 2**bits - 1."""
        cfg = self.config
        if reflectance.shape != (NB, self.height, self.width):
            raise ValueError(
                f"Sensor.expose: reflectance shape {reflectance.shape}, expected {(NB, self.height, self.width)}"
            )
        epd = np.float32(cfg.e_per_dn)
        raw = np.empty((NB, self.height, self.width), np.uint16)
        base_var = np.float32(self._dark_e + cfg.read_noise_e**2)
        for b in range(NB):
            x = reflectance[b].astype(np.float32, copy=False)
            if cfg.psf_sigma_px > 0:
                x = cv2.GaussianBlur(x, (0, 0), cfg.psf_sigma_px, borderType=cv2.BORDER_REFLECT)
            e = x * (np.float32(cfg.dn_per_reflectance[b]) * epd)  # new array
            e *= self.relative_response[b]
            np.maximum(e, 0.0, out=e)
            sigma = e + base_var
            np.sqrt(sigma, out=sigma)
            sigma *= rng.standard_normal(e.shape, dtype=np.float32)
            e += sigma
            del sigma
            hot = self.hot_pixels[b]  # shot noise of the hot pixels' dark current
            e.reshape(-1)[hot] += np.sqrt(self._hot_e[b]) * rng.standard_normal(hot.size, dtype=np.float32)
            e *= np.float32(1.0) / epd
            e += self._dark_dn[b]
            np.rint(e, out=e)
            np.clip(e, 0, cfg.dn_max, out=e)
            raw[b] = e
        return raw

    def noise_sigma_reflectance(self, reflectance: np.ndarray) -> np.ndarray:
        """Expected rms error of one calibrated pixel, in reflectance, for a perfect calibration.

        Shot + dark + read noise, DN quantization (1/12 DN^2), the dark-frame estimate (64 frames,
        then rounded to whole DN: 1/12 DN^2) and the output quantization (1/12 of 1e-4 squared),
        divided by the pixel's gain. Used to derive calibration tolerances.
        """
        cfg = self.config
        out = np.empty(reflectance.shape, np.float32)
        epd = cfg.e_per_dn
        for b in range(NB):
            k = cfg.dn_per_reflectance[b]
            f = np.maximum(self.relative_response[b], 1e-3)
            sig_e = np.maximum(reflectance[b], 0) * (k * epd) * f
            var_dn = (sig_e + self._dark_e + cfg.read_noise_e**2) / epd**2 + 1 / 12
            var_dn += (self._dark_e + cfg.read_noise_e**2) / epd**2 / 64 + 1 / 12
            var_r = var_dn / (k * f) ** 2 + (1e-4) ** 2 / 12
            out[b] = np.sqrt(var_r)
        return out

    def calibration_products(self, version: str = "sim-v1", dark_frames: int = 64,
                             flat_frames: int = 64, flat_level_e: float | None = None) -> CalibrationProducts:
        """Products of a simulated ground characterisation campaign, as a mission would make them.

        dark: mean of ``dark_frames`` closed-shutter frames (estimated, with the read noise of that
        average), rounded to DN. flat: mean of ``flat_frames`` integrating-sphere frames at half the
        full well, normalised by the nominal gain, inverted. Bad pixels: dark more than 25 DN above
        the band median (hot), relative response below 0.5 or above 1.5 (dead, dead column).
        ``CalibrationProducts.from_full`` then compacts them to the uplink format (uint8 dark offset,
        uint8 flat in steps of 2**-10, sparse bad-pixel list; it also flags pixels the format cannot
        hold). Deterministic from ``instrument_seed``.
        """
        cfg = self.config
        H, W = self.height, self.width
        rng = np.random.default_rng(np.random.SeedSequence([int(cfg.instrument_seed), H, W, 1]))
        epd = cfg.e_per_dn
        level = flat_level_e if flat_level_e is not None else cfg.full_well_e / 2
        dark = np.empty((NB, H, W), np.uint16)
        inverse = np.empty((NB, H, W), np.float32)
        badmap = np.zeros((NB, H, W), np.uint8)
        for b in range(NB):
            noise_dn = math.sqrt(self._dark_e + cfg.read_noise_e**2) / epd / math.sqrt(dark_frames)
            d = self._dark_dn[b] + noise_dn * rng.standard_normal((H, W), dtype=np.float32)
            dark[b] = np.clip(np.rint(d), 0, cfg.dn_max).astype(np.uint16)
            f = self.relative_response[b]
            rel_err = 1.0 / math.sqrt(flat_frames * level)
            f_est = f * (1.0 + np.float32(rel_err) * rng.standard_normal((H, W), dtype=np.float32))
            hot = (dark[b].astype(np.int32) - int(np.median(dark[b][:: max(1, H // 256), :: max(1, W // 256)]))) > 25
            dead = (f_est < 0.5) | (f_est > 1.5)
            badmap[b] = hot | dead
            inverse[b] = np.where(dead, np.inf, 1.0 / np.maximum(f_est, 0.25))
        return CalibrationProducts.from_full(version, dark, inverse, badmap, tuple(cfg.dn_per_reflectance))
