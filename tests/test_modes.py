"""Modes and fault protection: error budget, stage watchdog, memory pressure, SAFE, recovery by command."""

import json
import time

import pytest
from ops_util import flight_apps

from flight.commands import encode_command
from flight.dictionary import EVENTS, Mode
from flight.model_update import version_number
from flight.modes import ModeManager, StageStuck, StageWatchdog


class Events(list):
    def __call__(self, name, **kw):
        self.append((name, kw))

    def names(self):
        return [n for n, _ in self]


def test_a_fault_degrades_and_too_many_make_it_safe():
    ev = Events()
    m = ModeManager(error_budget=2, error_window_s=100.0, emit=ev)
    m.fault(0.0, "one")
    assert m.mode == Mode.DEGRADED
    m.fault(1.0, "two")
    assert m.mode == Mode.DEGRADED
    m.fault(2.0, "three")
    assert m.mode == Mode.SAFE
    assert ev.names() == ["MODE_CHANGED", "ERROR_BUDGET_EXCEEDED", "MODE_CHANGED"]
    m.fault(3.0, "four")  # already SAFE: no new events
    assert len(ev) == 3
    m.command(Mode.NOMINAL)  # recovery clears the window
    assert m.mode == Mode.NOMINAL and m.errors_in_window(3.0) == 0


def test_errors_leave_the_window():
    m = ModeManager(error_budget=1, error_window_s=10.0, emit=Events())
    m.fault(0.0, "a")
    m.fault(20.0, "b")  # the first left the window
    assert m.mode == Mode.DEGRADED and m.errors_in_window(20.0) == 1


def test_uncounted_faults_degrade_without_eating_the_budget():
    m = ModeManager(error_budget=0, error_window_s=10.0, emit=Events())
    m.fault(0.0, "store full", count=False)
    assert m.mode == Mode.DEGRADED and m.errors_in_window(0.0) == 0


def test_memory_pressure_degrades_then_safes():
    ev = Events()
    m = ModeManager(3, 100.0, ev)
    assert m.memory(100, 400, 480) is None and m.mode == Mode.NOMINAL
    assert m.memory(420, 400, 480) == "degraded" and m.mode == Mode.DEGRADED
    assert m.memory(500, 400, 480) == "safe" and m.mode == Mode.SAFE
    assert [kw.get("level") for n, kw in ev if n == "MEMORY_PRESSURE"] == ["DEGRADED", "SAFE"]


def test_the_watchdog_aborts_a_stuck_stage_and_ignores_quick_ones():
    wd = StageWatchdog(0.2)
    try:
        with wd.stage("quick"):
            time.sleep(0.01)
        t0 = time.perf_counter()
        with pytest.raises(StageStuck) as err:
            with wd.stage("stuck"):
                time.sleep(5.0)
        assert err.value.stage == "stuck" and 0.2 <= time.perf_counter() - t0 < 1.5
        assert wd.trips == 1
        time.sleep(0.3)  # no stale signal arrives after the stage is left
        with wd.stage("busy loop"), pytest.raises(StageStuck):
            while True:
                pass
        assert wd.trips == 2
    finally:
        wd.close()


# --- through the flight application ---------------------------------------------------------------------


@pytest.fixture
def flight(tmp_path, monkeypatch):
    with flight_apps(tmp_path, monkeypatch, ["sensor.strip_rows=128"], 1000.0) as (make, key):
        yield make, key


def feed_frame(app, sc, fid):
    from payload_sim.camera import frame_meta, make_orbit, make_sensor, render

    _, raw = render(sc, make_sensor(sc), fid)
    meta = frame_meta(sc, make_orbit(sc, app.clock), fid)
    rows = sc.sensor.strip_rows
    app.on_frame_message([b"frame", meta.to_json()])
    for r in range(0, meta.height, rows):
        app.on_frame_message([b"strip", json.dumps({"frame_id": fid, "row0": r, "rows": rows}).encode(),
                              raw[:, r : r + rows].tobytes()])


def event_ids(app):
    from flight.products import Event, decode_tm

    out = []
    for (pkt,) in app.store.db.execute("SELECT packet FROM products WHERE apid = 0x105 ORDER BY id"):
        p = decode_tm(pkt)[1]
        if isinstance(p, Event):
            out.append(p.event_id)
    return out


def test_safe_mode_processes_nothing_and_recovers_by_command(flight):
    make, key = flight
    app, sc = make()
    feed_frame(app, sc, 0)
    assert app.counts["frames_processed"] == 1
    app.on_uplink(encode_command(key, 1, 1000, "SET_MODE", {"mode": 2}))
    feed_frame(app, sc, 1)
    assert app.counts["frames_rejected"] == 1 and app.counts["frames_processed"] == 1
    app.on_uplink(encode_command(key, 2, 1000, "DUMP_TELEMETRY"))  # telemetry and commanding still work
    assert app.counts["commands_accepted"] == 2
    app.on_uplink(encode_command(key, 3, 1000, "SET_MODE", {"mode": 0}))
    feed_frame(app, sc, 2)
    assert app.counts["frames_processed"] == 2 and app.modes.mode == Mode.NOMINAL


def test_a_stuck_cloud_screen_is_aborted_the_frame_rejected_and_the_next_one_processed(flight):
    make, _ = flight
    app, sc = make(["ops.watchdog_limit_s=0.3", "faults.slow_model=\"cloud_screen\"", "faults.slow_model_s=5.0",
                    "faults.slow_frames=[1]"])
    feed_frame(app, sc, 0)
    t0 = time.perf_counter()
    feed_frame(app, sc, 1)
    assert time.perf_counter() - t0 < 2.0  # aborted, not waited out
    feed_frame(app, sc, 2)
    assert app.counts["frames_processed"] == 2 and app.counts["frames_rejected"] == 1
    assert app.counts["watchdog_trips"] == 1 and app.modes.mode == Mode.DEGRADED
    assert EVENTS["STAGE_WATCHDOG"].id in event_ids(app)


def test_a_failing_or_stuck_detector_is_switched_off_and_the_frame_goes_on(flight):
    make, _ = flight
    app, sc = make(["ops.watchdog_limit_s=0.3", 'faults.fail_model="fire_detect"',
                    'flight.cascade=[{model="cloud_screen"}, {model="fire_detect", when="all"}]',
                    "flight.clear_tile_max_cloud=1.0"])
    if "fire_detect" not in app.pipeline.models:
        pytest.skip("no fire_detect model packaged")
    feed_frame(app, sc, 0)
    assert app.counts["frames_processed"] == 1 and app.counts["frames_rejected"] == 0
    assert "fire_detect" in app.pipeline.disabled and app.modes.mode == Mode.DEGRADED
    ids = event_ids(app)
    assert EVENTS["MODEL_RUN_FAILED"].id in ids and EVENTS["MODEL_DISABLED"].id in ids


def test_error_budget_exceeded_goes_safe(flight):
    make, key = flight
    app, sc = make(["ops.error_budget=1", "ops.watchdog_limit_s=0.2", "faults.slow_model=\"cloud_screen\"",
                    "faults.slow_model_s=5.0", "faults.slow_frames=[0, 1]"])
    feed_frame(app, sc, 0)
    assert app.modes.mode == Mode.DEGRADED
    feed_frame(app, sc, 1)
    assert app.modes.mode == Mode.SAFE
    feed_frame(app, sc, 2)  # SAFE: not processed
    assert app.counts["frames_processed"] == 0 and app.counts["frames_rejected"] == 3
    app.on_uplink(encode_command(key, 1, 1000, "SET_MODE", {"mode": 0}))
    feed_frame(app, sc, 3)
    assert app.counts["frames_processed"] == 1 and app.modes.mode == Mode.NOMINAL
    assert EVENTS["ERROR_BUDGET_EXCEEDED"].id in event_ids(app)


def test_memory_pressure_through_the_app_sheds_quicklooks(flight):
    make, _ = flight
    app, sc = make(["obc.memory_mib=64"])  # any real process is above 95 % of 64 MiB
    feed_frame(app, sc, 0)
    assert app.quicklooks.ring
    app.check_memory()
    assert app.modes.mode == Mode.SAFE and not app.quicklooks.ring
    assert EVENTS["MEMORY_PRESSURE"].id in event_ids(app)


def test_housekeeping_carries_mode_versions_stage_latency_and_error_counters(flight):
    from flight.dictionary import TELEMETRY_BY_NAME
    from flight.products import decode_tm

    make, _ = flight
    app, sc = make()
    feed_frame(app, sc, 0)
    app.housekeeping(force=True)
    (pkt,) = app.store.db.execute("SELECT packet FROM products WHERE apid = 0x104 ORDER BY id DESC LIMIT 1").fetchone()
    ch = decode_tm(pkt)[1].channels()
    by = {name: ch[c.id] for name, c in TELEMETRY_BY_NAME.items() if c.id in ch}
    assert by["mode"] == 0
    assert by["model_cloud_screen_version"] == version_number(app.model_store.active["cloud_screen"].version)
    assert by["model_cloud_screen_sha24"] == int(app.model_store.active["cloud_screen"].sha256[:6], 16)
    assert by["stage_screen_ms_last"] > 0 and by["commands_rejected"] == 0 and by["quicklooks_held"] == 1


def test_random_frame_messages_lose_nothing_accepted_before(tmp_path):
    from flight.ops_report import frame_campaign

    r = frame_campaign(60, seed=2, root=tmp_path)
    assert r["kept_everything_before"] and r["good_frame_after"] and r["rejected"] > 0


def test_a_chip_of_a_recent_frame_is_full_resolution_from_mass_memory(flight):
    import cv2
    import numpy as np

    from flight.products import ImageChip, decode_tm

    make, key = flight
    app, sc = make(["ops.recent_frames_full_res=2"])
    for fid in range(3):
        feed_frame(app, sc, fid)
    assert sorted(app.recent.ring) == [1, 2] and len(list(app.recent.folder.glob("*.rgb"))) == 2
    app.on_uplink(encode_command(key, 1, 1000, "REQUEST_CHIP", {"frame_id": 2, "row_px": 100, "col_px": 60, "size_px": 32}))
    app.on_uplink(encode_command(key, 2, 1000, "REQUEST_CHIP", {"frame_id": 0, "row_px": 100, "col_px": 60, "size_px": 32}))
    chips = [decode_tm(r[0])[1] for r in app.store.db.execute("SELECT packet FROM products WHERE apid = ? ORDER BY id",
                                                               (ImageChip.APID,))]
    full, from_quicklook = chips[-2], chips[-1]
    assert (full.height_px, full.width_px) == (32, 32)
    img = cv2.imdecode(np.frombuffer(full.png, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (32, 32, 3)  # 32 pixels of the frame: full resolution
    # frame 0 left the full-resolution ring: its chip comes from the 1/8 quicklook (4 x 4 pixels)
    small = cv2.imdecode(np.frombuffer(from_quicklook.png, np.uint8), cv2.IMREAD_COLOR)
    assert small.shape[:2] == (32 // sc.ops.quicklook_factor,) * 2
