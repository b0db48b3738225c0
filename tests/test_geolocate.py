"""Pixel geolocation from footprints (flight.geolocate) against the simulator's ray-traced truth."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flight.frames import Footprint
from flight.geolocate import ground_distance_m, pixel_to_latlon
from payload_sim.orbit import DEFAULT_EPOCH, DEFAULT_STATIONS, DEFAULT_TLE, Orbit

GSD_M = 10.0
ORBIT = Orbit(*DEFAULT_TLE, DEFAULT_EPOCH)


def _capture_times() -> dict[str, float]:
    """Scenario times of interest over the first day, found on a 10 s grid."""
    t = np.arange(0.0, 86400.0, 10.0)
    lat, lon, _ = ORBIT.subsatellite(t)
    baku = DEFAULT_STATIONS[0]
    return {
        "equator": float(t[np.argmin(np.abs(lat))]),
        "north_turn": float(t[np.argmax(lat)]),  # about 82.6 N, heading due west
        "south_turn": float(t[np.argmin(lat)]),
        "lat_70N": float(t[np.argmin(np.abs(lat - 70.0))]),
        "antimeridian": float(t[np.argmin(180.0 - np.abs(lon))]),
        "over_baku": float(t[np.argmax(ORBIT.elevation_deg(baku, t))]),
    }


TIMES = _capture_times()


def test_capture_times_cover_the_cases():
    lat, lon, _ = ORBIT.subsatellite(np.array(list(TIMES.values())))
    cases = dict(zip(TIMES, zip(lat, lon, strict=True), strict=True))
    assert cases["north_turn"][0] > 82.0 and cases["south_turn"][0] < -82.0
    assert 180.0 - abs(cases["antimeridian"][1]) < 0.5
    # the antimeridian frame really straddles +-180
    fp = ORBIT.footprint(TIMES["antimeridian"], 4096, 4096, GSD_M)
    assert min(fp.lon_deg) < -179.0 and max(fp.lon_deg) > 179.0


@pytest.mark.parametrize("name", sorted(TIMES))
def test_corners_are_exact(name):
    h, w = 3000, 2000
    fp = ORBIT.footprint(TIMES[name], h, w, GSD_M)
    rows, cols = np.array([0.0, 0.0, h, h]), np.array([0.0, w, w, 0.0])
    lat, lon = pixel_to_latlon(fp, h, w, rows, cols)
    d = ground_distance_m(lat, lon, np.array(fp.lat_deg), np.array(fp.lon_deg))
    assert np.all(d < 1e-3)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    name=st.sampled_from(sorted(TIMES)),
    dt_s=st.floats(-30.0, 30.0),
    height=st.integers(512, 4096),
    width=st.integers(512, 4096),
    u=st.floats(0.0, 1.0),
    v=st.floats(0.0, 1.0),
)
def test_pixel_within_one_gsd_of_truth(name, dt_s, height, width, u, v):
    t_s = TIMES[name] + dt_s
    row, col = v * height, u * width
    fp = ORBIT.footprint(t_s, height, width, GSD_M)
    lat, lon = pixel_to_latlon(fp, height, width, row, col)
    assert isinstance(lat, float) and isinstance(lon, float)
    assert -180.0 <= lon < 180.0
    true_lat, true_lon = ORBIT.pixel_truth(t_s, height, width, GSD_M, row, col)
    assert ground_distance_m(lat, lon, true_lat, true_lon) < GSD_M


def geolocation_errors_m(n_pixels: int, size: int, seed: int = 0) -> np.ndarray:
    """Errors (m) of pixel_to_latlon against pixel_truth for n_pixels random pixel centres of a
    size x size frame at GSD_M, at every capture time in TIMES. Used for docs/orbit.md."""
    rng = np.random.default_rng(seed)
    out = []
    for t_s in TIMES.values():
        fp = ORBIT.footprint(t_s, size, size, GSD_M)
        rows = rng.integers(0, size, n_pixels) + 0.5
        cols = rng.integers(0, size, n_pixels) + 0.5
        lat, lon = pixel_to_latlon(fp, size, size, rows, cols)
        tl, tn = ORBIT.pixel_truth(t_s, size, size, GSD_M, rows, cols)
        out.append(ground_distance_m(lat, lon, tl, tn))
    return np.concatenate(out)


@pytest.mark.parametrize(("size", "max_m"), [(512, 0.05), (2048, 0.5), (4096, 2.5)])
def test_geolocation_error_budget(size, max_m):
    """Measured (docs/orbit.md): max 0.003 / 0.20 / 1.62 m for 512 / 2048 / 4096 px frames."""
    err = geolocation_errors_m(5000, size)
    assert err.max() < max_m
    assert err.max() < 0.25 * GSD_M


def test_vectorized_matches_scalar():
    t_s, h, w = TIMES["antimeridian"], 2048, 1024
    fp = ORBIT.footprint(t_s, h, w, GSD_M)
    rows = np.array([[0.5, 100.0], [2047.5, 1024.0]])
    cols = np.array([[0.5, 900.0], [3.0, 512.0]])
    lat, lon = pixel_to_latlon(fp, h, w, rows, cols)
    assert lat.shape == lon.shape == (2, 2)
    for idx in np.ndindex(rows.shape):
        assert pixel_to_latlon(fp, h, w, rows[idx], cols[idx]) == pytest.approx(
            (lat[idx], lon[idx]), abs=1e-12
        )


def test_synthetic_footprint_over_pole_and_antimeridian():
    """A square straddling the antimeridian at 60 N: interpolated points stay inside it, and the
    centre comes out at lon 180 (not 0, as naive averaging of +-179.9 would give)."""
    fp = Footprint(lat_deg=(60.1, 60.1, 59.9, 59.9), lon_deg=(179.8, -179.8, -179.8, 179.8))
    lat, lon = pixel_to_latlon(fp, 100, 100, 50.0, 50.0)
    assert lat == pytest.approx(60.0, abs=1e-3)
    assert abs(abs(lon) - 180.0) < 1e-9
    lat, lon = pixel_to_latlon(fp, 100, 100, 50.0, 25.0)
    assert lon == pytest.approx(179.9, abs=1e-3)


def test_bad_arguments():
    fp = ORBIT.footprint(0.0, 100, 100, GSD_M)
    with pytest.raises(ValueError):
        pixel_to_latlon(fp, 0, 100, 1.0, 1.0)
    with pytest.raises(ValueError):
        pixel_to_latlon(Footprint((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)), 10, 10, 1.0, 1.0)


# --------------------------------------------------------------------------- ground_distance_m


def test_ground_distance_reference_values():
    assert ground_distance_m(0.0, 0.0, 0.0, 1.0) == pytest.approx(111319.491, abs=1e-3)
    assert ground_distance_m(0.0, 0.0, 90.0, 0.0) == pytest.approx(10001965.729, abs=1e-3)
    assert ground_distance_m(10.0, 20.0, 10.0, 20.0) == 0.0
    assert ground_distance_m(0.0, 179.9995, 0.0, -179.9995) == pytest.approx(111.319, abs=1e-3)
    # nearly antipodal: Vincenty does not converge; the haversine fallback is within 0.5 %
    d = ground_distance_m(0.0, 0.0, 0.5, 179.7)
    assert math.isfinite(d) and d == pytest.approx(19_950_000.0, rel=0.005)


@settings(max_examples=100, derandomize=True, deadline=None)
@given(
    lat1=st.floats(-89.0, 89.0),
    lon1=st.floats(-180.0, 180.0),
    dlat=st.floats(-1.0, 1.0),
    dlon=st.floats(-1.0, 1.0),
)
def test_ground_distance_is_symmetric_and_close_to_haversine(lat1, lon1, dlat, dlon):
    lat2, lon2 = max(-90.0, min(90.0, lat1 + dlat)), lon1 + dlon
    d = ground_distance_m(lat1, lon1, lat2, lon2)
    assert d == pytest.approx(ground_distance_m(lat2, lon2, lat1, lon1), rel=1e-9, abs=1e-6)
    r = 6371008.8
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(dlon) / 2) ** 2
    )
    hav = 2 * r * math.asin(math.sqrt(h))
    assert d == pytest.approx(hav, rel=0.006, abs=1e-6)


def test_flight_module_does_not_import_the_simulator():
    code = (
        "import sys, flight.geolocate; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('payload_sim', 'sgp4')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
