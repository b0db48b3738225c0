"""Audit of the store, the products and their neighbours under storage faults and odd values: damaged
store records that pass SQLite's quick_check, a damaged epoch file, a full or vanished mass memory
under the recent-frames ring, housekeeping values beyond f32, footprints that put a pixel at the
Earth's centre, and the ops report's exit status. Real files, real SQLite, real ENOSPC (/dev/full)."""

import json
import math
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from flight.frames import BANDS, Footprint, FrameMeta
from flight.geolocate import pixel_to_latlon
from flight.products import Housekeeping, decode_tm, encode_tm, housekeeping
from flight.quicklook import RecentFrames
from flight.store import ProductStore, StoreFull

MiB = 1024 * 1024


def put(store, priority=1, apid=0x101):
    return store.put(priority, apid, 0.0, lambda pid, seq: pid.to_bytes(8, "big") + bytes(100))[0]


def waiting(store) -> list[int]:
    return sorted(r[0] for r in store.db.execute("SELECT id FROM products"))


def set_counter(path: Path, name: str, value) -> None:
    """Overwrite one counter row as a bit flip or a stray write would: the file stays a healthy
    SQLite database (quick_check "ok"), only the value is wrong."""
    db = sqlite3.connect(path)
    try:
        if db.execute("UPDATE counters SET value = ? WHERE name = ?", (value, name)).rowcount == 0:
            db.execute("INSERT INTO counters (name, value) VALUES (?, ?)", (name, value))
        db.commit()
        assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    finally:
        db.close()


# -- the store: damaged records that pass quick_check ----------------------------------------------

@pytest.mark.parametrize("name,value", [
    ("product_id", "abc"),       # was TypeError at open: the flight did not start
    ("product_id", 1.5),         # was TypeError at open
    ("epoch", "x"),              # was TypeError at open
    ("seq_abc", 1),              # was ValueError at open
    ("product_id", -5),          # behind the stored products: was IntegrityError on every put
    ("product_id", 2**63 - 1),   # the last id of the last epoch: was RuntimeError on the next put
], ids=["id_text", "id_float", "epoch_text", "seq_name", "id_behind_products", "id_space_end"])
def test_a_damaged_id_counter_neither_stops_the_store_nor_repeats_a_stored_id(tmp_path, name, value):
    path = tmp_path / "s.db"
    s = ProductStore(path, MiB)
    old = [put(s) for _ in range(3)]
    s.close()
    set_counter(path, name, value)
    s = ProductStore(path, MiB)
    assert waiting(s) == old  # nothing accepted before is lost
    new = [put(s) for _ in range(3)]
    assert min(new) > max(old) and len(set(new)) == 3
    assert s.state == 0 and s.pending() == 6
    s.close()
    s = ProductStore(path, MiB)  # and the store is healthy again after a restart
    later = put(s)
    assert later > max(new) and waiting(s) == sorted(old + new + [later])
    s.close()


def test_a_damaged_apid_sequence_counter_still_gives_14_bit_counts(tmp_path):
    path = tmp_path / "s.db"
    s = ProductStore(path, MiB)
    put(s)
    s.close()
    set_counter(path, "seq_257", "x")  # was TypeError ('x' + 1) in the first put
    s = ProductStore(path, MiB)
    seqs = []
    s.put(1, 0x101, 0.0, lambda pid, seq: seqs.append(seq) or b"p")
    assert seqs == [0]
    s.close()


def test_a_damaged_products_created_counter_reads_as_a_number(tmp_path):
    path = tmp_path / "s.db"
    s = ProductStore(path, MiB)
    put(s)
    set_counter(path, "products_created", "x")  # damaged under the running flight (another connection)
    assert s.counter("products_created") == 0  # was TypeError ('x' + 0) in telemetry
    put(s)  # the next counted write repairs it (SQLite reads 'x' as 0)
    assert s.counter("products_created") == 1
    s.close()


@pytest.mark.parametrize("content", ["90000000000000000001\n", "00000000002147483647\n"],
                         ids=["digit_flipped", "last_epoch"])
def test_a_damaged_epoch_file_does_not_stop_the_store_from_opening(tmp_path, content):
    path = tmp_path / "s.db"
    s = ProductStore(path, MiB)
    old = [put(s) for _ in range(3)]
    s.close()
    (tmp_path / "store_epoch").write_text(content)
    s = ProductStore(path, MiB)  # was RuntimeError "store epoch ... exhausted": the flight never started
    assert waiting(s) == old
    new = put(s)
    assert new > max(old)
    s.close()
    assert int((tmp_path / "store_epoch").read_text()) == s.epoch  # the file repaired


def test_an_exhausted_id_space_is_a_counted_store_full_not_a_crash(tmp_path):
    path = tmp_path / "s.db"
    s = ProductStore(path, MiB)
    put(s)
    s.close()
    db = sqlite3.connect(path)  # a stored id in the last epoch: no new id can be unique
    db.execute("UPDATE products SET id = ?", (2**63 - 1,))
    db.commit()
    db.close()
    s = ProductStore(path, MiB)  # was RuntimeError at open
    with pytest.raises(StoreFull) as exc:
        put(s)
    assert exc.value.lost and "exhausted" in str(exc.value)
    assert waiting(s) == [2**63 - 1]
    s.close()


# -- products: every value fits its field ------------------------------------------------------------

def test_housekeeping_values_beyond_f32_saturate_instead_of_losing_the_packet():
    from flight.clock import parse_epoch

    # was OverflowError from struct.pack (1e39, -1e39) or float() (2**1100): the packet was lost
    hk = housekeeping(7, 1.0, {1: 1e39, 2: -1e39, 3: 2**1100, 4: -(2**1100), 5: float("nan"), 6: 3.4e38, 7: 12.5})
    _, back = decode_tm(encode_tm(hk, 0, parse_epoch("2026-11-28T06:00:00Z"), 1.0))
    assert isinstance(back, Housekeeping)
    ch = back.channels()
    assert ch[1] == ch[3] == math.inf and ch[2] == ch[4] == -math.inf and math.isnan(ch[5])
    assert ch[6] == pytest.approx(3.4e38, rel=1e-6) and ch[7] == 12.5


# -- geolocation: a footprint that spans a hemisphere --------------------------------------------------

@pytest.mark.parametrize("fp", [
    Footprint((0.0, 0.0, 0.0, 0.0), (0.0, 179.0, 0.0, -179.0)),
    Footprint((60.0, 60.0, -60.0, -60.0), (-90.0, 90.0, 90.0, -90.0)),
], ids=["across_the_globe", "half_globe"])
def test_a_pixel_that_interpolates_to_the_earth_centre_has_no_latitude_not_180(fp):
    lat, lon = pixel_to_latlon(fp, 100, 100, 50.0, 50.0)
    assert math.isnan(lat) and math.isnan(lon)  # was latitude 180.0 in the detection packet
    lats, lons = pixel_to_latlon(fp, 100, 100, np.linspace(0, 100, 101), np.linspace(0, 100, 101))
    ok = ~np.isnan(lats)
    assert np.all(np.abs(lats[ok]) <= 90) and np.all((-180 <= lons[ok]) & (lons[ok] < 180))
    assert pixel_to_latlon(fp, 100, 100, 0.0, 0.0) == pytest.approx((fp.lat_deg[0], fp.lon_deg[0]), abs=1e-6)


def test_points_just_below_the_surface_still_geolocate():
    fp = Footprint((10.0, 10.0, 9.0, 9.0), (20.0, 21.0, 21.0, 20.0))
    lat, lon = pixel_to_latlon(fp, 100, 100, 50.0, 50.0)
    assert lat == pytest.approx(9.5, abs=0.01) and lon == pytest.approx(20.5, abs=0.01)


# -- the recent-frames ring on a failing mass memory --------------------------------------------------

def _meta(fid: int, h: int = 64, w: int = 64) -> FrameMeta:
    return FrameMeta(frame_id=fid, capture_time_s=1.0, height=h, width=w)


def _strip(rows: int, w: int = 64) -> np.ndarray:
    return np.full((len(BANDS), rows, w), 1000, np.uint16)


@pytest.mark.parametrize("h", [64, 8], ids=["write_fails", "close_fails"])  # 64 rows: over the write buffer
def test_a_full_mass_memory_drops_the_frame_from_the_ring_only(tmp_path, h):
    ring = RecentFrames(tmp_path / "recent", 2)
    (tmp_path / "recent" / "0.rgb").symlink_to("/dev/full")  # every write: ENOSPC, from the kernel
    ring.begin(_meta(0, h))
    ring.add_strip(_strip(h), 0)  # was OSError ENOSPC: the frame failed as a stage error
    ring.commit()
    assert ring.errors == 1 and "No space left" in ring.last_error
    assert 0 not in ring.ring and ring.chip(0, 10, 10, 8) is None  # the ground gets the quicklook instead
    ring.begin(_meta(1, h))  # the next frame, on a working disk, is kept
    ring.add_strip(_strip(h), 0)
    ring.commit()
    got = ring.chip(1, 4, 4, 4)
    assert got is not None and got[0].shape == (4, 4, 3) and ring.errors == 1


def test_a_vanished_mass_memory_folder_is_counted_not_raised(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_bytes(b"")
    ring = RecentFrames(blocker / "recent", 2)  # was NotADirectoryError: the flight did not start
    ring.begin(_meta(0))  # was FileNotFoundError for every frame
    ring.add_strip(_strip(64), 0)
    ring.commit()
    assert ring.errors == 2 and ring.ring == {} and ring.file is None


def test_a_truncated_ring_file_gives_no_chip_instead_of_raising(tmp_path):
    ring = RecentFrames(tmp_path / "recent", 2)
    ring.begin(_meta(0))
    ring.add_strip(_strip(64), 0)
    ring.commit()
    os.truncate(tmp_path / "recent" / "0.rgb", 100)  # a torn write, or another process
    assert ring.chip(0, 10, 10, 8) is None  # was ValueError from numpy.memmap
    assert ring.errors == 1 and 0 not in ring.ring


@pytest.fixture
def flight(tmp_path, monkeypatch):
    from ops_util import flight_apps

    with flight_apps(tmp_path, monkeypatch, ["sensor.strip_rows=128"], 1000.0) as (make, key):
        yield make


def test_the_flight_processes_a_frame_whose_full_resolution_copy_finds_the_disk_full(flight):
    from payload_sim.camera import frame_meta, make_orbit, make_sensor, render

    app, sc = flight(["ops.recent_frames_full_res=2"])
    (app.recent.folder / "0.rgb").symlink_to("/dev/full")
    _, raw = render(sc, make_sensor(sc), 0)
    meta = frame_meta(sc, make_orbit(sc, app.clock), 0)
    app.on_frame_message([b"frame", meta.to_json()])
    for r in range(0, meta.height, 128):
        app.on_frame_message([b"strip", json.dumps({"frame_id": 0, "row0": r, "rows": 128}).encode(),
                              raw[:, r : r + 128].tobytes()])
    # before: OSError ENOSPC from the optional ring -> STAGE_ERROR, frame rejected, its products lost
    assert app.counts["frames_processed"] == 1 and app.counts["errors"] == 0 and app.counts["frames_rejected"] == 0
    assert app.recent.errors == 1 and 0 not in app.recent.ring
    summaries = app.store.db.execute("SELECT count(*) FROM products WHERE apid = 0x101").fetchone()[0]
    assert summaries == 1


def test_mass_memory_faults_of_the_ring_are_reported_once_per_episode_and_counted_in_telemetry(flight):
    from flight.dictionary import EVENTS, TELEMETRY_BY_NAME
    from flight.products import Event, decode_tm
    from payload_sim.camera import frame_meta, make_orbit, make_sensor, render

    app, sc = flight(["ops.recent_frames_full_res=2"])
    sensor, orbit = make_sensor(sc), make_orbit(sc, app.clock)
    for fid in (0, 1, 3):  # 0 and 1: one episode; 2 is kept; 3: a second episode
        (app.recent.folder / f"{fid}.rgb").symlink_to("/dev/full")
    for fid in range(4):
        _, raw = render(sc, sensor, fid)
        meta = frame_meta(sc, orbit, fid)
        app.on_frame_message([b"frame", meta.to_json()])
        for r in range(0, meta.height, 128):
            app.on_frame_message([b"strip", json.dumps({"frame_id": fid, "row0": r, "rows": 128}).encode(),
                                  raw[:, r : r + 128].tobytes()])
    assert app.counts["frames_processed"] == 4 and list(app.recent.ring) == [2]
    faults = [p.message for p in (decode_tm(r[0])[1] for r in app.store.db.execute(
        "SELECT packet FROM products WHERE apid = 0x105 ORDER BY id"))
        if isinstance(p, Event) and p.event_id == EVENTS["RECENT_FRAMES_FAULT"].id]
    assert len(faults) == 2 and "frame 0 not kept" in faults[0] and "frame 3 not kept" in faults[1], faults
    assert app.telemetry()["recent_frames_errors"] == 3 and "recent_frames_errors" in TELEMETRY_BY_NAME


# -- the ops report's exit status -----------------------------------------------------------------------

def test_the_ops_report_fails_when_a_campaign_went_wrong(monkeypatch, capsys):
    """The campaigns are replaced by figures they can return: the exit status must follow them."""
    import flight.ops_report as rep

    good_cmd = {"tried": 1, "refused": 1, "executed": 0, "by_reason": {}, "valid_command_after": True}
    frames = {"tried": 1, "rejected": 1, "errors": 0, "kept_everything_before": True, "good_frame_after": True}
    bundles = {"tried": 1, "refused": 1, "accepted": 0, "accepted_harmless": 0, "by_reason": {},
               "active_version_unchanged_and_verifies": True}
    ground = {"tried": 1, "bad": 1, "duplicates": 0, "kept_everything_before": True, "good_packet_after": True}
    monkeypatch.setattr(rep, "bundle_campaign", lambda n, seed: bundles)
    monkeypatch.setattr(rep, "ground_packet_campaign", lambda n, seed: ground)
    monkeypatch.setattr(rep, "fault_figures", lambda: [])

    def run(cmd, fr) -> int:
        monkeypatch.setattr(rep, "command_campaigns", lambda n, seed: {"forged (wrong key)": cmd})
        monkeypatch.setattr(rep, "frame_campaign", lambda n, seed: fr)
        code = rep.main(["--n", "1", "--bundles", "1"])
        capsys.readouterr()
        as_json = rep.main(["--n", "1", "--bundles", "1", "--json"])  # --json said 0 whatever it held
        assert json.loads(capsys.readouterr().out)["ok"] == (code == 0) and as_json == code
        return code

    assert run(good_cmd, frames) == 0
    assert run(good_cmd, frames | {"errors": 3}) == 1  # stage errors on random frames: was exit 0
    assert run(good_cmd | {"valid_command_after": False}, frames) == 1  # printed "NO": was exit 0
