"""Spectra of the simulated world, band-averaged to the six payload bands.

All numbers are band-averaged reflectances for the band order of ``flight.frames.BANDS``
(blue 490 nm, green 560 nm, red 665 nm, nir 842 nm, swir16 1610 nm, swir22 2190 nm; the
Sentinel-2 B2/B3/B4/B8/B11/B12 centres, within 10-30 nm of Landsat-8 OLI).

Surface materials are *surface* (bottom-of-atmosphere) reflectances, read off typical curves
of the USGS Spectral Library version 7 (Kokaly et al. 2017, doi:10.5066/F7RR1WDJ) and the
ECOSTRESS spectral library 1.0 (Meerdink et al. 2019, doi:10.1016/j.rse.2019.05.015) and
rounded; they are typical values, not one sample. The atmosphere (``PATH_REFLECTANCE``,
``TRANSMITTANCE``, ``DIFFUSE_FRACTION``) turns them into top-of-atmosphere (TOA) reflectance;
magnitudes are those of a 6S run (Vermote et al. 1997) for a mid-latitude summer atmosphere,
continental aerosol with optical depth about 0.15 at 550 nm and a 45 degree sun.
Clouds, cirrus and smoke are given directly at TOA (they sit above most of the atmosphere).
Fire emission is computed from Planck's law (``fire_apparent_reflectance``).
docs/world.md has the table and the sources per entry.
"""

from __future__ import annotations

import math

import numpy as np

from flight.frames import BANDS

NBANDS = len(BANDS)

# Band centres (micrometres) and mean exoatmospheric solar irradiance per band (W m-2 um-1),
# Sentinel-2A values from the L1C metadata (Thuillier et al. 2003 spectrum).
BAND_CENTRE_UM: tuple[float, ...] = (0.490, 0.560, 0.665, 0.842, 1.610, 2.190)
SOLAR_IRRADIANCE_W_M2_UM: tuple[float, ...] = (1959.8, 1824.9, 1512.8, 1036.4, 245.6, 85.25)


def _s(*values: float) -> np.ndarray:
    assert len(values) == NBANDS
    return np.array(values, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Surface endmembers (bottom-of-atmosphere reflectance), blue green red nir swir16 swir22.
# ---------------------------------------------------------------------------------------------
SURFACE: dict[str, np.ndarray] = {
    # Water: open ocean (case-1) and turbid / sediment-laden coastal water. Water absorbs
    # strongly beyond 700 nm; USGS splib07 "Seawater_Open_Ocean", "Seawater_Coast_Chl".
    "water_clear": _s(0.030, 0.020, 0.008, 0.003, 0.001, 0.001),
    "water_turbid": _s(0.050, 0.075, 0.065, 0.025, 0.004, 0.002),
    # Vegetation: red edge (red ~0.04, nir 0.3-0.5), liquid-water absorption lowers swir.
    # splib07 "Lawn_Grass", "Aspen_Leaf", ECOSTRESS conifer canopies, "Dry_Long_Grass".
    "veg_lush": _s(0.030, 0.070, 0.035, 0.420, 0.210, 0.090),
    "veg_forest": _s(0.020, 0.040, 0.022, 0.260, 0.120, 0.050),
    "veg_dry": _s(0.060, 0.090, 0.120, 0.260, 0.330, 0.230),
    # Soils: reflectance rises with wavelength; clay/carbonate dips lower swir22.
    # ECOSTRESS soils (Entisol, Mollisol, Aridisol), splib07 "Brown_Sandy_Loam".
    "soil_dark": _s(0.045, 0.065, 0.085, 0.140, 0.210, 0.170),
    "soil_bright": _s(0.100, 0.140, 0.200, 0.260, 0.360, 0.320),
    "rock": _s(0.110, 0.140, 0.170, 0.210, 0.280, 0.250),
    # Desert: iron-stained quartz dune sand, and salt / gypsum playa crust, the desert cloud
    # look-alike: bright in every band including swir16. splib07 "Sand_DWO-3", "Halite", "Gypsum".
    "sand": _s(0.150, 0.250, 0.380, 0.460, 0.560, 0.500),
    "playa": _s(0.420, 0.460, 0.490, 0.500, 0.460, 0.370),
    # Urban: asphalt, concrete, red-tile / metal roofs. splib07 "Asphalt_Tar", "Concrete",
    # ECOSTRESS manmade materials.
    "asphalt": _s(0.050, 0.060, 0.070, 0.080, 0.100, 0.095),
    "concrete": _s(0.200, 0.220, 0.240, 0.270, 0.310, 0.280),
    "roof": _s(0.080, 0.100, 0.180, 0.260, 0.300, 0.260),
    # Snow and ice: very bright in the visible, dark at 1.6 and 2.2 um (ice absorption). This is
    # the snow/cloud discriminator (NDSI). splib07 "Snow_fine_grained", "Snow_medium_granular",
    # "Ice" ; Dozier (1989).
    "snow_fresh": _s(0.950, 0.940, 0.900, 0.820, 0.100, 0.080),
    "snow_old": _s(0.800, 0.780, 0.740, 0.620, 0.050, 0.040),
    "ice": _s(0.550, 0.500, 0.420, 0.250, 0.020, 0.015),
    # Burn scar (char and ash): dark, nir < swir22 (negative normalized burn ratio).
    # ECOSTRESS "Charcoal"; Key and Benson (2006) typical post-fire values.
    "burn_scar": _s(0.030, 0.035, 0.040, 0.060, 0.110, 0.110),
    # Ships: painted steel hulls and decks: dark hull, grey deck, white superstructure.
    # splib07 "Paint" samples, roughly flat with a mild swir drop.
    "hull_dark": _s(0.050, 0.050, 0.050, 0.050, 0.040, 0.035),
    "deck_grey": _s(0.220, 0.230, 0.230, 0.240, 0.200, 0.170),
    "superstructure": _s(0.550, 0.560, 0.560, 0.560, 0.450, 0.380),
    # Whitecap / wake foam: bright in the visible, falls sharply in nir and swir
    # (Koepke 1984; Dierssen 2019, doi:10.3389/feart.2019.00014).
    "foam": _s(0.350, 0.340, 0.300, 0.200, 0.040, 0.020),
}

# ---------------------------------------------------------------------------------------------
# Atmosphere (per band); a scene draws a haze factor that scales path reflectance and optical
# depth around these values.
# ---------------------------------------------------------------------------------------------
PATH_REFLECTANCE = _s(0.070, 0.045, 0.025, 0.012, 0.003, 0.001)  # Rayleigh + aerosol path
TRANSMITTANCE = _s(0.72, 0.80, 0.86, 0.90, 0.94, 0.95)  # sun-to-ground-to-sensor, total
DIFFUSE_FRACTION = _s(0.25, 0.18, 0.12, 0.08, 0.04, 0.03)  # skylight share of irradiance

# ---------------------------------------------------------------------------------------------
# Clouds, cirrus, smoke: TOA.
# ---------------------------------------------------------------------------------------------
# Optically thick water cloud, per unit of visible brightness: flat in the visible and nir,
# swir16 0.65-0.9 of the visible and swir22 0.45-0.7 (weak droplet absorption; Nakajima and King
# 1990; Landsat cloud statistics behind Fmask, Zhu and Woodcock 2012). A scene draws the ratios
# and a brightness 0.35-0.95, so clouds stay bright (0.25-0.8) in swir16 where snow is dark.
CLOUD_SHAPE = _s(1.00, 0.98, 0.97, 0.96, 0.78, 0.58)
# Cirrus (ice crystals): semi-transparent, added reflectance up to 0.1-0.3 in the visible, ice
# absorbs more at 1.6 um than water droplets.
CIRRUS_SHAPE = _s(1.00, 0.97, 0.95, 0.93, 0.55, 0.35)
# Smoke: fine-mode aerosol. Opacity per band follows tau ~ lambda^-1.8 (Angstrom exponent of
# fresh biomass-burning smoke, Eck et al. 1999): transparent in swir, which is why fires are seen
# through their own smoke. Single-scattering albedo ~0.9: smoke reflectance at full opacity.
SMOKE_OPACITY_SHAPE = np.array(
    [(BAND_CENTRE_UM[0] / lam) ** 1.8 for lam in BAND_CENTRE_UM], dtype=np.float32
)
SMOKE_REFLECTANCE = _s(0.24, 0.22, 0.19, 0.15, 0.08, 0.05)

# Physical constants for Planck's law, with wavelength in micrometres.
_C1 = 1.191042e8  # 2 h c^2, W um^4 m-2 sr-1
_C2 = 14387.77  # h c / k, um K


def planck_radiance(wavelength_um: float, temperature_k: float) -> float:
    """Black-body spectral radiance, W m-2 sr-1 um-1."""
    x = _C2 / (wavelength_um * temperature_k)
    if x > 700:
        return 0.0
    return _C1 / (wavelength_um**5 * math.expm1(x))


def fire_apparent_reflectance(temperature_k: float, sun_elevation_deg: float) -> np.ndarray:
    """Apparent TOA reflectance per band added by a pixel fully covered by flames.

    rho = pi * L_planck(lambda, T) / (E_sun(lambda) * cos(theta_sun)); a pixel with flaming
    fraction p adds p * rho. At 1000 K a whole pixel gives about 175 in swir22, 26 in swir16 and
    0.07 in nir, so a 1 % flaming fraction already reaches 1.7 in swir22: fires are hot in swir22,
    warm in swir16, and invisible in the visible, as seen by Sentinel-2 and Landsat-8
    (Schroeder et al. 2016, doi:10.1016/j.rse.2015.08.032). Atmospheric transmittance is ignored.
    """
    cos_sun = max(math.sin(math.radians(sun_elevation_deg)), 0.05)
    out = [
        math.pi * planck_radiance(lam, temperature_k) / (e * cos_sun)
        for lam, e in zip(BAND_CENTRE_UM, SOLAR_IRRADIANCE_W_M2_UM, strict=True)
    ]
    return np.array(out, dtype=np.float32)


def toa_from_surface(surface: np.ndarray, haze: float = 1.0) -> np.ndarray:
    """TOA reflectance of a flat, sunlit, Lambertian surface spectrum (shape (..., 6))."""
    path = PATH_REFLECTANCE * haze
    trans = TRANSMITTANCE ** haze
    return path + trans * surface


# Class spectral signatures as TOA reflectance (for docs and quick checks): the endmember mean
# through the default atmosphere.
def typical_toa() -> dict[str, np.ndarray]:
    return {name: toa_from_surface(spec) for name, spec in SURFACE.items()}
