"""Orbit, TLE checking, ground stations and contact windows (payload_sim.orbit)."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sgp4.api import WGS72, Satrec

from payload_sim.orbit import (
    DEFAULT_EPOCH,
    DEFAULT_STATIONS,
    DEFAULT_TLE,
    ContactWindow,
    GroundStation,
    Orbit,
    check_tle,
    contact_windows,
    tle_checksum,
)

# A real published TLE (ISS, 2008), as a second specimen with leading zeros and negative fields.
ISS_TLE = (
    "1 25544U 98067A   08264.51782528 -.00002182  00000-0 -11606-4 0  2927",
    "2 25544  51.6416 247.4627 0006703 130.5360 325.0288 15.72125391563537",
)
DAY_S = 86400.0


@pytest.fixture(scope="module")
def orbit() -> Orbit:
    return Orbit(*DEFAULT_TLE, DEFAULT_EPOCH)


@pytest.fixture(scope="module")
def windows_24h(orbit) -> list[ContactWindow]:
    return contact_windows(orbit, DEFAULT_STATIONS, 0.0, DAY_S)


# --------------------------------------------------------------------------- check_tle


def test_default_and_real_tles_pass():
    check_tle(*DEFAULT_TLE)
    check_tle(*ISS_TLE)
    check_tle(DEFAULT_TLE[0] + "\n", DEFAULT_TLE[1] + "\r\n")  # line ends are tolerated


def test_default_tle_epoch_near_2026_11_01():
    sat = Satrec.twoline2rv(*DEFAULT_TLE, WGS72)
    assert sat.epochyr == 26 and 304.0 <= sat.epochdays <= 306.0


def _replace(line: str, i: int, ch: str) -> str:
    return line[:i] + ch + line[i + 1 :]


def test_changed_digit_fails_with_checksum_message():
    l2 = DEFAULT_TLE[1]
    i = l2.index("97.3680") + 1  # the 7 of the inclination
    with pytest.raises(ValueError, match="line 2 checksum"):
        check_tle(DEFAULT_TLE[0], _replace(l2, i, "8"))


@pytest.mark.parametrize(
    ("l1", "l2", "message"),
    [
        (DEFAULT_TLE[0][:-1], DEFAULT_TLE[1], "line 1 has 68 characters"),
        (DEFAULT_TLE[0], DEFAULT_TLE[1] + "0", "line 2 has 70 characters"),
        (DEFAULT_TLE[1], DEFAULT_TLE[0], "line 1 must start with '1 '"),
        (DEFAULT_TLE[0], _replace(DEFAULT_TLE[1], 68, "x"), "checksum column"),
        (DEFAULT_TLE[0], "".join(DEFAULT_TLE[1][:68]) + "é", "non-ASCII"),
    ],
)
def test_structural_errors_are_named(l1, l2, message):
    with pytest.raises(ValueError, match=message):
        check_tle(l1, l2)


def test_satnum_mismatch_is_named():
    l2 = _replace(DEFAULT_TLE[1], 6, "2")  # 99901 -> 99902
    l2 = l2[:68] + str(tle_checksum(l2))
    with pytest.raises(ValueError, match="satellite numbers differ"):
        check_tle(DEFAULT_TLE[0], l2)


def test_malformed_field_names_the_column():
    l1 = _replace(DEFAULT_TLE[0], 23, ",")  # the decimal point of the epoch; checksum unchanged
    with pytest.raises(ValueError, match="column 24"):
        check_tle(l1, DEFAULT_TLE[1])


def _digit_positions(tle):
    return [(n, i) for n, line in enumerate(tle) for i, c in enumerate(line) if c.isdigit()]


@settings(max_examples=300, derandomize=True, deadline=None)
@given(data=st.data(), tle=st.sampled_from([DEFAULT_TLE, ISS_TLE]))
def test_any_single_digit_change_is_rejected_by_checksum(data, tle):
    n, i = data.draw(st.sampled_from(_digit_positions(tle)))
    new = data.draw(st.sampled_from([d for d in "0123456789" if d != tle[n][i]]))
    lines = list(tle)
    lines[n] = _replace(lines[n], i, new)
    # a digit change shifts the digit sum by 1..9 (mod 10 never 0); if the changed digit is the
    # checksum itself, it no longer equals the (unchanged) sum. Either way: a checksum error.
    with pytest.raises(ValueError, match="checksum"):
        check_tle(*lines)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    data=st.data(),
    tle=st.sampled_from([DEFAULT_TLE, ISS_TLE]),
    new=st.characters(min_codepoint=32, max_codepoint=126).filter(lambda c: not c.isdigit()),
)
def test_digit_replaced_by_any_other_character(data, tle, new):
    """Replacing a digit by a non-digit can leave the checksum intact ('0' -> blank, '1' -> '-'),
    so the column layout must catch it. The only corruption that may pass is a leading zero of a
    right-aligned number turned into a blank, which does not change any value."""
    n, i = data.draw(st.sampled_from(_digit_positions(tle)))
    lines = list(tle)
    lines[n] = _replace(lines[n], i, new)
    try:
        check_tle(*lines)
    except ValueError:
        return
    assert tle[n][i] == "0" and new == " ", (lines[n], i)
    a, b = Satrec.twoline2rv(*tle, WGS72), Satrec.twoline2rv(*lines, WGS72)
    for name in ("epochdays", "inclo", "nodeo", "ecco", "argpo", "mo", "no_kozai", "bstar"):
        assert getattr(a, name) == getattr(b, name), name


def test_default_tle_rejects_every_single_digit_corruption():
    """Exhaustive: in DEFAULT_TLE no digit can be replaced by any printable character unnoticed."""
    for n, i in _digit_positions(DEFAULT_TLE):
        for code in range(32, 127):
            if chr(code) == DEFAULT_TLE[n][i]:
                continue
            lines = list(DEFAULT_TLE)
            lines[n] = _replace(lines[n], i, chr(code))
            with pytest.raises(ValueError):
                check_tle(*lines)


def test_orbit_checks_its_tle_and_epoch():
    with pytest.raises(ValueError, match="checksum"):
        Orbit(DEFAULT_TLE[0], _replace(DEFAULT_TLE[1], 10, "8"), DEFAULT_EPOCH)
    with pytest.raises(ValueError, match="timezone-aware"):
        Orbit(*DEFAULT_TLE, datetime(2026, 11, 1))


# --------------------------------------------------------------------------- the orbit


def test_altitude_inclination_period(orbit):
    t = np.arange(0.0, DAY_S, 30.0)
    lat, lon, alt_km = orbit.subsatellite(t)
    assert 480.0 <= alt_km.min() and alt_km.max() <= 520.0
    assert 495.0 <= alt_km.mean() <= 505.0
    assert abs(lat).max() == pytest.approx(180.0 - orbit.inclination_deg, abs=0.2)
    assert 97.2 <= orbit.inclination_deg <= 97.6
    # sun-synchronous: the node drifts 360 deg per tropical year
    node_deg_per_day = math.degrees(orbit.satrec.nodedot) * 1440.0
    assert node_deg_per_day == pytest.approx(360.0 / 365.2422, rel=0.01)
    assert orbit.period_s / 60.0 == pytest.approx(94.5, abs=0.5)
    # measured nodal period: ascending equator crossings
    up = np.flatnonzero((lat[:-1] < 0) & (lat[1:] >= 0))
    assert np.diff(t[up]).mean() / 60.0 == pytest.approx(orbit.period_s / 60.0, abs=0.5)
    assert lon.min() >= -180.0 and lon.max() < 180.0


def test_scalar_and_array_calls_agree(orbit):
    t = np.array([0.0, 1234.5, 50000.0])
    lat, lon, alt = orbit.subsatellite(t)
    hd = orbit.ground_track_heading_deg(t)
    el = orbit.elevation_deg(DEFAULT_STATIONS[0], t)
    for k, tk in enumerate(t):
        s = orbit.subsatellite(float(tk))
        assert all(isinstance(v, float) for v in s)
        assert s == pytest.approx((lat[k], lon[k], alt[k]), abs=1e-9)
        assert orbit.ground_track_heading_deg(float(tk)) == pytest.approx(hd[k], abs=1e-9)
        assert orbit.elevation_deg(DEFAULT_STATIONS[0], float(tk)) == pytest.approx(el[k])


def _enu_offset_m(lat0, lon0, lat, lon):
    """Small offsets, metres east/north, of (lat, lon) from (lat0, lon0) on the mean sphere."""
    r = 6371008.8
    dlon = (np.asarray(lon) - lon0 + 180.0) % 360.0 - 180.0
    return (
        np.radians(dlon) * r * math.cos(math.radians(lat0)),
        np.radians(np.asarray(lat) - lat0) * r,
    )


def _ecef(lat, lon):
    a, f = 6378137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    la, lo = np.radians(lat), np.radians(lon)
    n = a / np.sqrt(1 - e2 * np.sin(la) ** 2)
    return np.array(
        [n * np.cos(la) * np.cos(lo), n * np.cos(la) * np.sin(lo), n * (1 - e2) * np.sin(la)]
    )


@pytest.mark.parametrize("t_s", [0.0, 1400.0, 2800.0, 4300.0, 46740.0, 81540.0])
def test_heading_matches_ground_track(orbit, t_s):
    """Heading against the azimuth of the sub-satellite point's displacement over +-0.5 s."""
    lat, lon, _ = orbit.subsatellite(t_s)
    a = orbit.subsatellite(t_s - 0.5)
    b = orbit.subsatellite(t_s + 0.5)
    d = _ecef(b[0], b[1]) - _ecef(a[0], a[1])
    la, lo = math.radians(lat), math.radians(lon)
    east = np.array([-math.sin(lo), math.cos(lo), 0.0])
    north = np.array([-math.sin(la) * math.cos(lo), -math.sin(la) * math.sin(lo), math.cos(la)])
    az = math.degrees(math.atan2(d @ east, d @ north)) % 360.0
    hd = orbit.ground_track_heading_deg(t_s)
    assert 0.0 <= hd < 360.0
    assert abs((hd - az + 180.0) % 360.0 - 180.0) < 0.005


def test_footprint_orientation_and_scale(orbit):
    h, w, gsd = 2048, 1024, 10.0
    for t_s in (0.0, 2800.0, 46740.0):
        lat0, lon0, _ = orbit.subsatellite(t_s)
        hd = orbit.ground_track_heading_deg(t_s)
        # the frame centre is the sub-satellite point
        c = orbit.pixel_truth(t_s, h, w, gsd, h / 2, w / 2)
        assert c == pytest.approx((lat0, lon0), abs=1e-9)
        # row 0 (top edge) lies ahead, column W (right edge) to the right of the flight direction
        lat, lon = orbit.pixel_truth(t_s, h, w, gsd, np.array([0.0, h / 2]), np.array([w / 2, w]))
        e, n = _enu_offset_m(lat0, lon0, lat, lon)
        az = np.degrees(np.arctan2(e, n))
        assert abs((az[0] - hd + 180) % 360 - 180) < 0.5
        assert abs((az[1] - hd - 90 + 180) % 360 - 180) < 0.5
        assert math.hypot(e[0], n[0]) == pytest.approx(h / 2 * gsd, rel=0.01)
        assert math.hypot(e[1], n[1]) == pytest.approx(w / 2 * gsd, rel=0.01)
        # the next sub-satellite points move towards row 0
        later = orbit.subsatellite(t_s + 1.0)
        e1, n1 = _enu_offset_m(lat0, lon0, later[0], later[1])
        assert (e1 * e[0] + n1 * n[0]) > 0
        # footprint corners are the pixel_truth of the outer corners, in Footprint order
        fp = orbit.footprint(t_s, h, w, gsd)
        for k, (r, cc) in enumerate([(0, 0), (0, w), (h, w), (h, 0)]):
            assert (fp.lat_deg[k], fp.lon_deg[k]) == pytest.approx(
                orbit.pixel_truth(t_s, h, w, gsd, r, cc), abs=1e-12
            )


def test_pixel_truth_spacing_is_gsd_at_nadir(orbit):
    from flight.geolocate import ground_distance_m

    h = w = 2048
    lat, lon = orbit.pixel_truth(
        100.0, h, w, 10.0, np.array([1024.5, 1025.5, 1024.5]), np.array([1024.5, 1024.5, 1025.5])
    )
    assert ground_distance_m(lat[0], lon[0], lat[1], lon[1]) == pytest.approx(10.0, abs=1e-3)
    assert ground_distance_m(lat[0], lon[0], lat[2], lon[2]) == pytest.approx(10.0, abs=1e-3)


@pytest.mark.parametrize(
    ("h", "w", "gsd"), [(0, 10, 10.0), (10, -1, 10.0), (10, 10, 0.0), (10.5, 10, 10.0)]
)
def test_bad_frame_arguments(orbit, h, w, gsd):
    with pytest.raises(ValueError):
        orbit.footprint(0.0, h, w, gsd)


# --------------------------------------------------------------------------- contact windows


def test_default_stations():
    names = {s.name: s for s in DEFAULT_STATIONS}
    assert set(names) == {"baku", "astana"}
    assert (names["baku"].lat_deg, names["baku"].lon_deg) == pytest.approx((40.4, 49.9), abs=0.1)
    assert (names["astana"].lat_deg, names["astana"].lon_deg) == pytest.approx(
        (51.1, 71.4), abs=0.1
    )
    with pytest.raises(ValueError, match="lat_deg"):
        GroundStation("x", 91.0, 0.0)


def test_contact_windows_24h(orbit, windows_24h):
    assert [w.aos_s for w in windows_24h] == sorted(w.aos_s for w in windows_24h)
    for station in DEFAULT_STATIONS:
        mine = [w for w in windows_24h if w.station == station.name]
        assert len(mine) >= 2, station.name
        assert max(w.duration_s for w in mine) >= 300.0
        for w in mine:
            assert 60.0 <= w.duration_s <= 12 * 60.0, w
            assert 0.0 <= w.aos_s < w.los_s <= DAY_S
            mask = station.min_elevation_deg
            el = lambda t, s=station: orbit.elevation_deg(s, t)  # noqa: E731
            assert el(w.aos_s) >= mask - 1e-9 and el(w.los_s) >= mask - 1e-9
            assert el(w.aos_s + 1.0) > mask and el(w.los_s - 1.0) > mask
            assert el(w.aos_s - 1.0) < mask and el(w.los_s + 1.0) < mask
            dense = el(np.arange(w.aos_s, w.los_s, 1.0))
            assert dense.min() >= mask - 1e-9
            assert w.max_elevation_deg >= dense.max() - 1e-6
            assert w.max_elevation_deg <= dense.max() + 0.05


def test_contact_windows_match_brute_force(orbit, windows_24h):
    """Sample every second for 24 h: the same windows, AOS/LOS within 1 s."""
    t = np.arange(0.0, DAY_S + 1.0, 1.0)
    for station in DEFAULT_STATIONS:
        vis = orbit.elevation_deg(station, t) >= station.min_elevation_deg
        edges = np.flatnonzero(np.diff(vis.astype(int)))
        rises, sets = t[edges[~vis[edges]] + 1], t[edges[vis[edges]]]
        mine = [w for w in windows_24h if w.station == station.name]
        assert len(rises) == len(sets) == len(mine)
        for w, a, b in zip(mine, rises, sets, strict=True):
            assert abs(w.aos_s - a) <= 1.0 and abs(w.los_s - b) <= 1.0


def test_coarse_step_finds_the_same_windows(orbit, windows_24h):
    coarse = contact_windows(orbit, DEFAULT_STATIONS, 0.0, DAY_S, step_s=300.0)
    assert len(coarse) == len(windows_24h)
    for a, b in zip(coarse, windows_24h, strict=True):
        assert a.station == b.station
        assert a.aos_s == pytest.approx(b.aos_s, abs=0.1)
        assert a.los_s == pytest.approx(b.los_s, abs=0.1)
        assert a.max_elevation_deg == pytest.approx(b.max_elevation_deg, abs=0.01)


def test_windows_are_clipped_to_the_interval(orbit, windows_24h):
    w = windows_24h[0]
    mid = (w.aos_s + w.los_s) / 2
    inner = contact_windows(orbit, [s for s in DEFAULT_STATIONS if s.name == w.station], mid, 60.0)
    assert len(inner) == 1
    assert inner[0].aos_s == mid and inner[0].los_s == mid + 60.0


def test_contact_windows_6h_is_fast(orbit):
    contact_windows(orbit, DEFAULT_STATIONS, 0.0, 3600.0)  # warm-up
    t0 = time.perf_counter()
    contact_windows(orbit, DEFAULT_STATIONS, 0.0, 6 * 3600.0, step_s=10.0)
    assert time.perf_counter() - t0 < 1.0


def test_contact_windows_rejects_bad_arguments(orbit):
    with pytest.raises(ValueError, match="step_s"):
        contact_windows(orbit, DEFAULT_STATIONS, 0.0, 100.0, step_s=0.0)
    with pytest.raises(ValueError, match="duration_s"):
        contact_windows(orbit, DEFAULT_STATIONS, 0.0, -1.0)


def test_epoch_shift_is_consistent():
    """A scenario epoch one hour later sees the same sky one hour earlier in scenario time."""
    a = Orbit(*DEFAULT_TLE, DEFAULT_EPOCH)
    b = Orbit(*DEFAULT_TLE, datetime(2026, 11, 1, 1, tzinfo=UTC))
    assert b.subsatellite(100.0) == pytest.approx(a.subsatellite(3700.0), abs=1e-7)
