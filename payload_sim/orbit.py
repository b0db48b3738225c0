"""Simulated orbit: SGP4 propagation, ground stations, contact windows and frame footprints.

This is the simulator's *truth*. Flight software never imports it: the camera hands the flight
software a `flight.frames.Footprint` (four ground corners) and the flight side geolocates pixels
from that alone (`flight.geolocate`).

Model (details and accuracy in docs/orbit.md):
- SGP4 (python-sgp4, WGS-72 constants as the TLE standard requires) gives TEME position/velocity.
- TEME -> ECEF by a rotation of GMST (IAU-82, UT1 taken equal to UTC); polar motion neglected.
- ECEF -> geodetic on WGS-84 by fixed-point iteration.
- A frame is a nadir pinhole image: its focal plane is parallel to the local tangent plane at the
  sub-satellite point, so the detector grid maps to a regular grid of spacing `gsd_m` on that
  tangent plane, with rows along the ground track (row 0 = leading edge) and columns across it
  (column W on the right of the direction of flight). Each pixel's ground point is the
  intersection of its line of sight from the satellite with the WGS-84 ellipsoid.

Times are scenario seconds since the scenario epoch (an aware UTC datetime).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sgp4.api import SGP4_ERRORS, WGS72, Satrec, jday

from flight.frames import Footprint

__all__ = [
    "DEFAULT_EPOCH",
    "DEFAULT_STATIONS",
    "DEFAULT_TLE",
    "ContactWindow",
    "GroundStation",
    "Orbit",
    "check_tle",
    "contact_windows",
    "tle_checksum",
]

# A fictitious sun-synchronous satellite (catalogue number 99901): mean altitude about 500 km
# (geodetic altitude 490..517 km over the orbit), inclination 97.368 deg (node drift 360 deg per
# tropical year), near-circular, ascending node at about 22:30 local time (descending 10:30).
# Epoch 2026-11-01 00:00:00 UTC (day 305.0 of 2026).
DEFAULT_TLE: tuple[str, str] = (
    "1 99901U 26999A   26305.00000000  .00001000  00000+0  50000-4 0  9998",
    "2 99901  97.3680  14.1000 0001200  90.0000 270.0000 15.26000000    15",
)
# The scenario epoch that matches DEFAULT_TLE (scenarios may choose another).
DEFAULT_EPOCH = datetime(2026, 11, 1, tzinfo=UTC)

# WGS-84 ellipsoid (the simulator's own copy; flight.geolocate has its own, on purpose).
_WGS84_A = 6378137.0
_WGS84_F = 1.0 / 298.257223563
_WGS84_B = _WGS84_A * (1.0 - _WGS84_F)
_WGS84_E2 = _WGS84_F * (2.0 - _WGS84_F)
# Earth rotation rate consistent with GMST (IAU-82), rad/s.
_OMEGA_EARTH = 7.292115146706979e-5


# --------------------------------------------------------------------------- TLE checking

# Column layout of each line (TLE format as published by CelesTrak / Space-Track).


def _right_aligned(n: int) -> str:
    """n columns of a right-aligned unsigned integer: digits, optionally after leading blanks."""
    return "(?:" + "|".join(" " * k + f"[0-9]{{{n - k}}}" for k in range(n)) + ")"


_TLE_LINE1 = re.compile(
    "".join(
        [
            r"1 [0-9A-Z][0-9]{4}[UCS] ",  # line number, satnum (alpha-5 allowed), classification
            r"(?:[0-9]{5}[A-Z ]{3}| {8}) ",  # international designator (or blank)
            r"[0-9]{2}" + _right_aligned(3) + r"\.[0-9]{8} ",  # epoch YYDDD.DDDDDDDD
            r"[ +-]\.[0-9]{8} ",  # first derivative of mean motion / 2
            r"[ +-][0-9]{5}[+-][0-9] ",  # second derivative / 6 (implied decimal point)
            r"[ +-][0-9]{5}[+-][0-9] ",  # BSTAR (implied decimal point)
            r"[0-9] ",  # ephemeris type (0 in every TLE published today)
            _right_aligned(4),  # element set number
            r"[0-9]",  # checksum
        ]
    )
)
_TLE_LINE2 = re.compile(
    "".join(
        [
            r"2 [0-9A-Z][0-9]{4} ",  # line number, satnum
            _right_aligned(3) + r"\.[0-9]{4} ",  # inclination, deg
            _right_aligned(3) + r"\.[0-9]{4} ",  # RAAN, deg
            r"[0-9]{7} ",  # eccentricity (implied leading decimal point)
            _right_aligned(3) + r"\.[0-9]{4} ",  # argument of perigee, deg
            _right_aligned(3) + r"\.[0-9]{4} ",  # mean anomaly, deg
            _right_aligned(2) + r"\.[0-9]{8}",  # mean motion, rev/day
            _right_aligned(5),  # revolution number at epoch
            r"[0-9]",  # checksum
        ]
    )
)


def tle_checksum(line: str) -> int:
    """Modulo-10 checksum of the first 68 columns: digits count their value, '-' counts 1."""
    return sum(int(c) if c.isdigit() else (1 if c == "-" else 0) for c in line[:68]) % 10


def _first_bad_column(line: str, pattern: re.Pattern[str]) -> int:
    """1-based column of the first character that breaks `pattern` (for the error message):
    each column is tried in a copy of a known-good line."""
    good = _GOOD_LINE[pattern]
    for i, ch in enumerate(line):
        if not pattern.fullmatch(good[:i] + ch + good[i + 1 :]):
            return i + 1
    return 1


def check_tle(line1: str, line2: str) -> None:
    """Check a two-line element set; raise ValueError naming the first problem found.

    Checks, in order: type, length (69 columns, trailing newline/blanks tolerated), checksums,
    line numbers, the column layout of every field, and that both lines carry the same catalogue
    number. sgp4 itself checks none of these reliably (it ignores checksums)."""
    lines = []
    for i, line in enumerate((line1, line2), start=1):
        if not isinstance(line, str):
            raise ValueError(f"TLE line {i} is {type(line).__name__}, expected str")
        line = line.rstrip("\r\n ")
        if len(line) != 69:
            raise ValueError(f"TLE line {i} has {len(line)} characters, expected 69: {line!r}")
        if not line.isascii():
            raise ValueError(f"TLE line {i} has non-ASCII characters: {line!r}")
        if not line[68].isdigit():
            raise ValueError(f"TLE line {i} checksum column is {line[68]!r}, expected a digit")
        expected = tle_checksum(line)
        if int(line[68]) != expected:
            raise ValueError(
                f"TLE line {i} checksum mismatch: computed {expected}, line says {line[68]}"
            )
        if line[0] != str(i) or line[1] != " ":
            raise ValueError(f"TLE line {i} must start with '{i} ', got {line[:2]!r}")
        pattern = _TLE_LINE1 if i == 1 else _TLE_LINE2
        if not pattern.fullmatch(line):
            col = _first_bad_column(line, pattern)
            raise ValueError(
                f"TLE line {i} is malformed at column {col} ({line[col - 1]!r}): {line!r}"
            )
        lines.append(line)
    if lines[0][2:7] != lines[1][2:7]:
        raise ValueError(
            f"TLE satellite numbers differ: line 1 has {lines[0][2:7]!r}, line 2 {lines[1][2:7]!r}"
        )


# A valid line of each kind, used to locate the first bad column of a malformed line.
_GOOD_LINE = {_TLE_LINE1: DEFAULT_TLE[0], _TLE_LINE2: DEFAULT_TLE[1]}


# --------------------------------------------------------------------------- geodesy (WGS-84)


def _geodetic_to_ecef(lat_rad, lon_rad, h_m):
    sl, cl = np.sin(lat_rad), np.cos(lat_rad)
    n = _WGS84_A / np.sqrt(1.0 - _WGS84_E2 * sl * sl)
    return np.stack(
        [
            (n + h_m) * cl * np.cos(lon_rad),
            (n + h_m) * cl * np.sin(lon_rad),
            (n * (1.0 - _WGS84_E2) + h_m) * sl,
        ],
        axis=-1,
    )


def _ecef_to_geodetic(xyz):
    """ECEF metres (..., 3) -> geodetic lat, lon (rad), height (m); fixed-point iteration on
    tan(lat) = (z + e2 N sin(lat)) / p, converged to well below a millimetre near the Earth."""
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    p = np.hypot(x, y)
    lat = np.arctan2(z, p * (1.0 - _WGS84_E2))
    for _ in range(6):
        sl = np.sin(lat)
        n = _WGS84_A / np.sqrt(1.0 - _WGS84_E2 * sl * sl)
        lat = np.arctan2(z + _WGS84_E2 * n * sl, p)
    sl, cl = np.sin(lat), np.cos(lat)
    h = p * cl + z * sl - _WGS84_A * np.sqrt(1.0 - _WGS84_E2 * sl * sl)
    return lat, np.arctan2(y, x), h


def _enu_basis(lat_rad, lon_rad):
    """East, north, up unit vectors (ECEF) at a geodetic position; each (..., 3)."""
    sl, cl = np.sin(lat_rad), np.cos(lat_rad)
    so, co = np.sin(lon_rad), np.cos(lon_rad)
    zero = np.zeros_like(sl * so)
    east = np.stack([-so + zero, co + zero, zero], axis=-1)
    north = np.stack([-sl * co, -sl * so, cl + zero], axis=-1)
    up = np.stack([cl * co, cl * so, sl + zero], axis=-1)
    return east, north, up


def _wrap_lon_deg(lon):
    return (np.asarray(lon) + 180.0) % 360.0 - 180.0


def _gmst_rad(jd, fr):
    """Greenwich mean sidereal time, IAU-82 (Vallado's gstime), UT1 = UTC."""
    t = ((jd - 2451545.0) + fr) / 36525.0
    sec = (
        67310.54841
        + (876600.0 * 3600.0 + 8640184.812866) * t
        + 0.093104 * t * t
        - 6.2e-6 * t * t * t
    )
    return np.mod(np.radians(sec / 240.0), 2.0 * np.pi)


def _scalar_or_array(x):
    x = np.asarray(x, dtype=float)
    return float(x) if x.ndim == 0 else x


# --------------------------------------------------------------------------- stations, windows


@dataclass(frozen=True)
class GroundStation:
    name: str
    lat_deg: float
    lon_deg: float
    alt_m: float = 0.0
    min_elevation_deg: float = 5.0

    def __post_init__(self) -> None:
        if not -90.0 <= self.lat_deg <= 90.0:
            raise ValueError(f"station {self.name!r}: lat_deg={self.lat_deg} not in [-90, 90]")
        if not -180.0 <= self.lon_deg <= 360.0:
            raise ValueError(f"station {self.name!r}: lon_deg={self.lon_deg} not in [-180, 360]")
        if not -90.0 <= self.min_elevation_deg < 90.0:
            raise ValueError(
                f"station {self.name!r}: min_elevation_deg={self.min_elevation_deg} "
                "not in [-90, 90)"
            )

    def ecef_m(self) -> np.ndarray:
        return _geodetic_to_ecef(
            math.radians(self.lat_deg), math.radians(self.lon_deg), float(self.alt_m)
        )


DEFAULT_STATIONS: tuple[GroundStation, ...] = (
    GroundStation("baku", 40.4, 49.9, alt_m=0.0),
    GroundStation("astana", 51.1, 71.4, alt_m=350.0),
)


@dataclass(frozen=True)
class ContactWindow:
    station: str
    aos_s: float  # scenario seconds: acquisition of signal (elevation rises through the mask)
    los_s: float  # scenario seconds: loss of signal
    max_elevation_deg: float

    @property
    def duration_s(self) -> float:
        return self.los_s - self.aos_s


# --------------------------------------------------------------------------- orbit


class Orbit:
    """An SGP4 orbit seen from a scenario clock: times are seconds since `epoch` (aware UTC).

    Methods accept a float time and return floats; most also accept numpy arrays of times."""

    def __init__(self, line1: str, line2: str, epoch: datetime):
        check_tle(line1, line2)
        if not isinstance(epoch, datetime) or epoch.tzinfo is None:
            raise ValueError(f"epoch must be a timezone-aware datetime, got {epoch!r}")
        self.line1 = line1.rstrip("\r\n ")
        self.line2 = line2.rstrip("\r\n ")
        self.epoch = epoch.astimezone(UTC)
        self.satrec = Satrec.twoline2rv(self.line1, self.line2, WGS72)
        if self.satrec.error:
            raise ValueError(
                f"TLE rejected by sgp4: {SGP4_ERRORS.get(self.satrec.error, self.satrec.error)}"
            )
        e = self.epoch
        self._jd, self._fr = jday(
            e.year, e.month, e.day, e.hour, e.minute, e.second + e.microsecond * 1e-6
        )

    # --- elements
    @property
    def inclination_deg(self) -> float:
        return math.degrees(self.satrec.inclo)

    @property
    def period_s(self) -> float:
        """Anomalistic period from the (Kozai) mean motion of the TLE."""
        return 2.0 * math.pi / self.satrec.no_kozai * 60.0

    @property
    def tle_epoch_offset_s(self) -> float:
        """TLE epoch minus scenario epoch, seconds."""
        return (
            (self.satrec.jdsatepoch - self._jd) + (self.satrec.jdsatepochF - self._fr)
        ) * 86400.0

    # --- state
    def _state_ecef(self, t_s):
        """ECEF position (m) and Earth-relative velocity (m/s), each (n, 3), for times t_s (n,)."""
        t = np.atleast_1d(np.asarray(t_s, dtype=float))
        jd = np.full(t.shape, self._jd)
        fr = self._fr + t / 86400.0
        err, r, v = self.satrec.sgp4_array(jd, fr)
        if np.any(err):
            i = int(np.flatnonzero(err)[0])
            raise RuntimeError(
                f"sgp4 failed at t={t[i]:.1f} s: {SGP4_ERRORS.get(int(err[i]), int(err[i]))}"
            )
        g = _gmst_rad(jd, fr)
        cg, sg = np.cos(g), np.sin(g)
        r = r * 1000.0
        v = v * 1000.0
        x = cg * r[:, 0] + sg * r[:, 1]
        y = -sg * r[:, 0] + cg * r[:, 1]
        vx = cg * v[:, 0] + sg * v[:, 1] + _OMEGA_EARTH * y
        vy = -sg * v[:, 0] + cg * v[:, 1] - _OMEGA_EARTH * x
        return np.stack([x, y, r[:, 2]], axis=-1), np.stack([vx, vy, v[:, 2]], axis=-1)

    def subsatellite(self, t_s):
        """Geodetic latitude (deg), longitude (deg, [-180, 180)), altitude (km) on WGS-84."""
        pos, _ = self._state_ecef(t_s)
        lat, lon, h = _ecef_to_geodetic(pos)
        out = (np.degrees(lat), _wrap_lon_deg(np.degrees(lon)), h / 1000.0)
        if np.ndim(t_s) == 0:
            return tuple(float(a[0]) for a in out)
        return out

    def _heading_rad(self, pos, vel):
        """Azimuth (clockwise from north) of the sub-satellite point's ground velocity."""
        lat, lon, h = _ecef_to_geodetic(pos)
        east, north, _ = _enu_basis(lat, lon)
        sl2 = np.sin(lat) ** 2
        w = np.sqrt(1.0 - _WGS84_E2 * sl2)
        n_prime = _WGS84_A / w  # prime-vertical radius of curvature
        m_merid = _WGS84_A * (1.0 - _WGS84_E2) / w**3  # meridian radius of curvature
        # the foot point moves by the satellite's horizontal velocity scaled by R / (R + h)
        ve = np.sum(vel * east, axis=-1) * n_prime / (n_prime + h)
        vn = np.sum(vel * north, axis=-1) * m_merid / (m_merid + h)
        return np.arctan2(ve, vn)

    def ground_track_heading_deg(self, t_s):
        """Direction of motion of the sub-satellite point over the (rotating) ground, degrees
        clockwise from geodetic north, in [0, 360)."""
        pos, vel = self._state_ecef(t_s)
        hd = np.mod(np.degrees(self._heading_rad(pos, vel)), 360.0)
        return float(hd[0]) if np.ndim(t_s) == 0 else hd

    def elevation_deg(self, station: GroundStation, t_s):
        """Elevation of the satellite above the station's geodetic horizon (no refraction)."""
        pos, _ = self._state_ecef(t_s)
        el = _elevation_rad(station, pos)
        return float(np.degrees(el[0])) if np.ndim(t_s) == 0 else np.degrees(el)

    # --- frames
    def _frame_geometry(self, t_s: float):
        pos, vel = self._state_ecef(float(t_s))
        lat, lon, h = _ecef_to_geodetic(pos)
        heading = self._heading_rad(pos, vel)[0]
        east, north, up = (b[0] for b in _enu_basis(lat, lon))
        foot = pos[0] - h[0] * up  # sub-satellite point on the ellipsoid
        fwd = math.cos(heading) * north + math.sin(heading) * east  # direction of flight
        right = math.cos(heading) * east - math.sin(heading) * north  # to the right of it
        return pos[0], foot, fwd, right

    def pixel_truth(self, t_s, height_px, width_px, gsd_m, row, col):
        """True geodetic (lat_deg, lon_deg) of continuous pixel position (row, col) of a nadir
        frame captured at t_s; the frame centre (H/2, W/2) is the sub-satellite point.

        Ray-traced independently of any footprint: the pixel's point on the tangent plane at the
        sub-satellite point, (H/2 - row) * gsd ahead and (col - W/2) * gsd to the right, is
        joined to the satellite, and the line is intersected with the WGS-84 ellipsoid.
        row and col may be numpy arrays (broadcast); then arrays are returned."""
        _check_frame(height_px, width_px, gsd_m)
        sat, foot, fwd, right = self._frame_geometry(t_s)
        row = np.asarray(row, dtype=float)
        col = np.asarray(col, dtype=float)
        along = (height_px / 2.0 - row) * gsd_m
        across = (col - width_px / 2.0) * gsd_m
        target = foot + along[..., None] * fwd + across[..., None] * right
        ground = _ray_ellipsoid(sat, target - sat)
        lat, lon, _ = _ecef_to_geodetic(ground)
        return _scalar_or_array(np.degrees(lat)), _scalar_or_array(_wrap_lon_deg(np.degrees(lon)))

    def footprint(self, t_s: float, height_px: int, width_px: int, gsd_m: float) -> Footprint:
        """Ground corners of a nadir frame captured at t_s (outer pixel edges, pixel order
        TL, TR, BR, BL as `flight.frames.Footprint` requires)."""
        h, w = height_px, width_px
        lat, lon = self.pixel_truth(
            t_s, h, w, gsd_m, np.array([0.0, 0.0, h, h]), np.array([0.0, w, w, 0.0])
        )
        la, lo = [float(v) for v in lat], [float(v) for v in lon]
        return Footprint((la[0], la[1], la[2], la[3]), (lo[0], lo[1], lo[2], lo[3]))


def _check_frame(height_px, width_px, gsd_m) -> None:
    if not (isinstance(height_px, int | np.integer) and height_px > 0):
        raise ValueError(f"height_px={height_px!r}: expected a positive integer")
    if not (isinstance(width_px, int | np.integer) and width_px > 0):
        raise ValueError(f"width_px={width_px!r}: expected a positive integer")
    if not (math.isfinite(gsd_m) and gsd_m > 0):
        raise ValueError(f"gsd_m={gsd_m!r}: expected a positive number of metres")


def _ray_ellipsoid(origin, direction):
    """First intersection of rays origin + s * direction (s > 0) with the WGS-84 ellipsoid."""
    scale = np.array([1.0 / _WGS84_A, 1.0 / _WGS84_A, 1.0 / _WGS84_B])
    o = origin * scale
    d = direction * scale
    qa = np.sum(d * d, axis=-1)
    qb = 2.0 * np.sum(o * d, axis=-1)
    qc = np.sum(o * o, axis=-1) - 1.0
    disc = qb * qb - 4.0 * qa * qc
    if np.any(disc < 0):
        raise ValueError("a pixel's line of sight misses the Earth (frame too large)")
    # numerically stable near root: q = -(b - sqrt(disc)) / 2 (b < 0 looking down), s = c / q
    q = -0.5 * (qb - np.sqrt(disc))
    s = qc / q
    return origin + s[..., None] * direction


def _elevation_rad(station: GroundStation, sat_ecef):
    st = station.ecef_m()
    _, _, up = _enu_basis(math.radians(station.lat_deg), math.radians(station.lon_deg))
    rho = sat_ecef - st
    return np.arcsin(np.clip(rho @ up / np.linalg.norm(rho, axis=-1), -1.0, 1.0))


# --------------------------------------------------------------------------- contact windows

_EDGE_TOL_S = 0.05  # AOS/LOS bisection tolerance
_PEAK_TOL_S = 0.01  # golden-section tolerance of the time of maximum elevation


def _golden_max(f, lo, hi, tol):
    """Vectorised golden-section search for the maximum of f on each [lo_i, hi_i]."""
    invphi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = np.array(lo, dtype=float), np.array(hi, dtype=float)
    c = b - invphi * (b - a)
    d = a + invphi * (b - a)
    fc, fd = f(c), f(d)
    width = float(np.max(b - a)) if a.size else 0.0
    n_iter = max(0, math.ceil(math.log(max(width, tol) / tol) / math.log(1.0 / invphi)))
    for _ in range(n_iter):
        left = fc >= fd  # maximum lies in [a, d]
        b = np.where(left, d, b)
        a = np.where(left, a, c)
        new_c = b - invphi * (b - a)
        new_d = a + invphi * (b - a)
        # reuse the surviving interior point, evaluate the new one
        x_new = np.where(left, new_c, new_d)
        f_new = f(x_new)
        fc, fd, c, d = (
            np.where(left, f_new, fd),
            np.where(left, fc, f_new),
            np.where(left, new_c, d),
            np.where(left, c, new_d),
        )
    best = np.where(fc >= fd, c, d)
    return best, np.maximum(fc, fd)


def _bisect_crossing(f, below, above, tol):
    """Vectorised bisection: f(below_i) < 0 <= f(above_i); returns points with f >= 0 within tol
    of the crossing (the first/last instant inside the window)."""
    below, above = np.array(below, dtype=float), np.array(above, dtype=float)
    if below.size == 0:
        return above
    n_iter = max(0, math.ceil(math.log2(max(float(np.max(np.abs(above - below))), tol) / tol)))
    for _ in range(n_iter):
        mid = 0.5 * (below + above)
        inside = f(mid) >= 0.0
        above = np.where(inside, mid, above)
        below = np.where(inside, below, mid)
    return above


def contact_windows(
    orbit: Orbit,
    stations: Sequence[GroundStation],
    start_s: float,
    duration_s: float,
    step_s: float = 10.0,
) -> list[ContactWindow]:
    """Visibility windows (elevation >= each station's mask) in [start_s, start_s + duration_s],
    sorted by AOS. A window already open at the start or still open at the end is clipped there.

    Elevation is sampled every step_s; every local maximum of the samples is refined by a
    golden-section search (so a short pass that peaks above the mask between two samples is still
    found), and AOS/LOS are bisected to 0.05 s. max_elevation_deg is the refined peak."""
    if not math.isfinite(start_s):
        raise ValueError(f"start_s={start_s!r}: expected a finite number")
    if not (math.isfinite(duration_s) and duration_s >= 0):
        raise ValueError(f"duration_s={duration_s!r}: expected a finite number >= 0")
    if not (math.isfinite(step_s) and step_s > 0):
        raise ValueError(f"step_s={step_s!r}: expected a positive number")
    end_s = start_s + duration_s
    n = max(1, math.ceil(duration_s / step_s))
    t = np.minimum(start_s + np.arange(n + 1) * step_s, end_s)
    sat, _ = orbit._state_ecef(t)
    windows: list[ContactWindow] = []
    for st in stations:
        mask = math.radians(st.min_elevation_deg)

        def f(times, st=st, mask=mask):
            return _elevation_rad(st, orbit._state_ecef(times)[0]) - mask

        g = _elevation_rad(st, sat) - mask
        m = g.size
        # local maxima of the samples, boundaries included
        if m == 1:
            peaks = np.array([0])
        else:
            left_ok = np.r_[True, g[1:] >= g[:-1]]
            right_ok = np.r_[g[:-1] > g[1:], True]
            peaks = np.flatnonzero(left_ok & right_ok)
        lo = t[np.maximum(peaks - 1, 0)]
        hi = t[np.minimum(peaks + 1, m - 1)]
        t_pk, g_pk = _golden_max(f, lo, hi, _PEAK_TOL_S)
        use_grid = g[peaks] > g_pk
        t_pk = np.where(use_grid, t[peaks], t_pk)
        g_pk = np.where(use_grid, g[peaks], g_pk)

        # bracket each edge of each visible peak between a sample outside and a point inside
        passes = []  # (t_peak, g_peak, rise_bracket | None, set_bracket | None)
        for tp, gp in zip(t_pk, g_pk, strict=True):
            if gp < 0.0:
                continue
            j = int(np.searchsorted(t, tp, side="right")) - 1  # last sample <= tp
            while j >= 0 and g[j] >= 0.0:
                j -= 1
            rise = None if j < 0 else (t[j], min(t[min(j + 1, m - 1)], tp))
            k = int(np.searchsorted(t, tp, side="left"))  # first sample >= tp
            while k < m and g[k] >= 0.0:
                k += 1
            fall = None if k >= m else (t[k], max(t[max(k - 1, 0)], tp))
            passes.append((tp, gp, rise, fall))
        rises = [p[2] for p in passes if p[2] is not None]
        falls = [p[3] for p in passes if p[3] is not None]
        aos_ref = iter(
            _bisect_crossing(f, [b[0] for b in rises], [b[1] for b in rises], _EDGE_TOL_S)
        )
        los_ref = iter(
            _bisect_crossing(f, [b[0] for b in falls], [b[1] for b in falls], _EDGE_TOL_S)
        )
        found: list[ContactWindow] = []
        for _tp, gp, rise, fall in passes:
            aos = float(start_s) if rise is None else float(next(aos_ref))
            los = float(end_s) if fall is None else float(next(los_ref))
            el = math.degrees(gp + mask)
            if found and aos <= found[-1].los_s:  # two sample maxima in one pass: merge
                prev = found.pop()
                aos, los = prev.aos_s, max(los, prev.los_s)
                el = max(el, prev.max_elevation_deg)
            found.append(ContactWindow(st.name, aos, los, el))
        windows.extend(found)
    windows.sort(key=lambda w: (w.aos_s, w.station))
    return windows
