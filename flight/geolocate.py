"""Pixel geolocation from a frame's footprint (flight side).

The camera reports only the four ground corners of a frame (`flight.frames.Footprint`); this
module turns a continuous pixel position into latitude/longitude from those corners alone.
No orbit, no sgp4: flight code must not depend on the simulator.

Method: the corners are converted to Earth-centred Earth-fixed (ECEF) coordinates on the WGS-84
ellipsoid, interpolated bilinearly in pixel coordinates, and the interpolated point (slightly
below the surface, on the chord between corners) is mapped back to geodetic latitude/longitude
along the ellipsoid normal. Working in ECEF makes it exact at the corners and free of
antimeridian and pole special cases. For a nadir frame the residual is the Earth's curvature
that four corners cannot describe: about 1 m for a 4096 x 4096 frame at 10 m (docs/orbit.md).
"""

from __future__ import annotations

import numpy as np

from flight.frames import Footprint

__all__ = ["WGS84_A_M", "WGS84_F", "ground_distance_m", "pixel_to_latlon"]

WGS84_A_M = 6378137.0
WGS84_F = 1.0 / 298.257223563
_B = WGS84_A_M * (1.0 - WGS84_F)
_E2 = WGS84_F * (2.0 - WGS84_F)  # first eccentricity squared
_EP2 = _E2 / (1.0 - _E2)  # second eccentricity squared
_MEAN_RADIUS_M = 6371008.8  # IUGG mean radius (fallback only)


def _to_ecef(lat_deg, lon_deg):
    lat = np.radians(np.asarray(lat_deg, dtype=float))
    lon = np.radians(np.asarray(lon_deg, dtype=float))
    sl, cl = np.sin(lat), np.cos(lat)
    n = WGS84_A_M / np.sqrt(1.0 - _E2 * sl * sl)
    return np.stack([n * cl * np.cos(lon), n * cl * np.sin(lon), n * (1.0 - _E2) * sl], axis=-1)


def _to_latlon(xyz):
    """ECEF -> geodetic (deg) by Bowring's formula (sub-millimetre near the surface)."""
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    p = np.hypot(x, y)
    beta = np.arctan2(WGS84_A_M * z, _B * p)
    sb, cb = np.sin(beta), np.cos(beta)
    lat = np.arctan2(z + _EP2 * _B * sb**3, p - _E2 * WGS84_A_M * cb**3)
    lon = np.arctan2(y, x)
    # Near the Earth's centre Bowring's formula leaves [-90, 90] (latitude 180 at the centre): a
    # footprint whose corners span a hemisphere (odd attitude, bad metadata) interpolates there.
    # Such a point is on no ground: NaN, as for a frame without a footprint. Beyond half the
    # semi-minor axis the denominator above is never negative (it needs r < e^2 a, 43 km).
    deep = np.sqrt(p * p + z * z) < _B / 2
    lat, lon = np.where(deep, np.nan, lat), np.where(deep, np.nan, lon)
    return np.degrees(lat), (np.degrees(lon) + 180.0) % 360.0 - 180.0


def pixel_to_latlon(footprint: Footprint, height: int, width: int, row, col):
    """Latitude and longitude (degrees, lon in [-180, 180)) of continuous pixel position
    (row, col) of a height x width frame, from its footprint corners.

    row/col are continuous: (0, 0) is the outer corner of the top-left pixel, the centre of pixel
    (r, c) is (r + 0.5, c + 0.5) and (height, width) is the outer bottom-right corner. Positions
    outside the frame are extrapolated. row and col may be numpy arrays (broadcast together);
    then arrays are returned, otherwise floats."""
    if len(footprint.lat_deg) != 4 or len(footprint.lon_deg) != 4:
        raise ValueError("footprint needs 4 corners")
    if not (height > 0 and width > 0):
        raise ValueError(f"frame size {height} x {width}: both must be positive")
    corners = _to_ecef(footprint.lat_deg, footprint.lon_deg)  # TL, TR, BR, BL
    if not np.all(np.isfinite(corners)):
        raise ValueError(f"footprint has non-finite corners: {footprint}")
    v = np.asarray(row, dtype=float) / height
    u = np.asarray(col, dtype=float) / width
    u, v = np.broadcast_arrays(u, v)
    tl, tr, br, bl = corners
    p = (
        ((1.0 - u) * (1.0 - v))[..., None] * tl
        + (u * (1.0 - v))[..., None] * tr
        + (u * v)[..., None] * br
        + ((1.0 - u) * v)[..., None] * bl
    )
    lat, lon = _to_latlon(p)
    if lat.ndim == 0:
        return float(lat), float(lon)
    return lat, lon


def _haversine_m(lat1, lon1, lat2, lon2):
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dl = np.radians(lon2 - lon1)
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2.0 * _MEAN_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def ground_distance_m(lat1, lon1, lat2, lon2):
    """Geodesic distance on WGS-84, metres (Vincenty's inverse formula, about 0.1 mm).

    Accepts floats or numpy arrays (broadcast). For nearly antipodal points, where Vincenty's
    iteration does not converge, falls back to the haversine distance on the mean sphere
    (error below 0.5 %)."""
    lat1, lon1, lat2, lon2 = np.broadcast_arrays(
        *(np.asarray(a, dtype=float) for a in (lat1, lon1, lat2, lon2))
    )
    f, a, b = WGS84_F, WGS84_A_M, _B
    dlon = np.radians((lon2 - lon1 + 180.0) % 360.0 - 180.0)
    u1 = np.arctan((1.0 - f) * np.tan(np.radians(lat1)))
    u2 = np.arctan((1.0 - f) * np.tan(np.radians(lat2)))
    su1, cu1, su2, cu2 = np.sin(u1), np.cos(u1), np.sin(u2), np.cos(u2)
    lam = dlon.copy()
    converged = np.zeros(lam.shape, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(200):
            sl, cl = np.sin(lam), np.cos(lam)
            sin_sigma = np.hypot(cu2 * sl, cu1 * su2 - su1 * cu2 * cl)
            cos_sigma = su1 * su2 + cu1 * cu2 * cl
            sigma = np.arctan2(sin_sigma, cos_sigma)
            sin_alpha = np.where(sin_sigma > 0, cu1 * cu2 * sl / sin_sigma, 0.0)
            cos2_alpha = 1.0 - sin_alpha**2
            cos_2sm = np.where(cos2_alpha > 0, cos_sigma - 2.0 * su1 * su2 / cos2_alpha, 0.0)
            c = f / 16.0 * cos2_alpha * (4.0 + f * (4.0 - 3.0 * cos2_alpha))
            lam_new = dlon + (1.0 - c) * f * sin_alpha * (
                sigma + c * sin_sigma * (cos_2sm + c * cos_sigma * (-1.0 + 2.0 * cos_2sm**2))
            )
            converged = np.abs(lam_new - lam) < 1e-12
            lam = lam_new
            if np.all(converged):
                break
        u_sq = cos2_alpha * (a * a - b * b) / (b * b)
        big_a = 1.0 + u_sq / 16384.0 * (4096.0 + u_sq * (-768.0 + u_sq * (320.0 - 175.0 * u_sq)))
        big_b = u_sq / 1024.0 * (256.0 + u_sq * (-128.0 + u_sq * (74.0 - 47.0 * u_sq)))
        d_sigma = (
            big_b
            * sin_sigma
            * (
                cos_2sm
                + big_b
                / 4.0
                * (
                    cos_sigma * (-1.0 + 2.0 * cos_2sm**2)
                    - big_b
                    / 6.0
                    * cos_2sm
                    * (-3.0 + 4.0 * sin_sigma**2)
                    * (-3.0 + 4.0 * cos_2sm**2)
                )
            )
        )
        dist = b * big_a * (sigma - d_sigma)
    bad = ~converged | ~np.isfinite(dist)
    if np.any(bad):
        dist = np.where(bad, _haversine_m(lat1, lon1, lat2, lon2), dist)
    return float(dist) if dist.ndim == 0 else dist
