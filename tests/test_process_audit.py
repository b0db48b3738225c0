"""Process-level behaviour under odd conditions (audit): damaged state files at restart, a wall
clock that steps backwards, a main-loop step that fails on every turn, and SIGTERM in the middle
of a frame. Real FlightApps on real files (ops_util.flight_apps), one real flight process."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
from ops_util import flight_apps
from test_modes import event_ids

from flight.app import OpsState
from flight.clock import ScenarioClock, parse_epoch
from flight.dictionary import EVENTS, Mode
from flight.modes import EventLimiter, ModeManager
from payload_sim.testing import REPO

EV = {name: e.id for name, e in EVENTS.items()}
BASE = ["ops.model_scrub_period_s=60.0", "flight.housekeeping_period_s=1.0"]


def hk_count(app) -> int:
    return app.store.db.execute("SELECT COUNT(*) FROM products WHERE apid = 0x104").fetchone()[0]


# --- damaged ops_state.json at restart ----------------------------------------------------------------

DAMAGED = {
    "counter Infinity": '{"last_counter": Infinity}',  # was OverflowError: start-up crashed
    "mode Infinity": '{"last_counter": 9, "mode": Infinity}',  # was OverflowError
    "negative counter": '{"last_counter": -5}',
    "counter beyond u64": '{"last_counter": 1e300}',  # every command a replay, for good
    "unknown parameter": '{"last_counter": 9, "params": {"no_such_param": 1}}',  # crashed FlightApp later
    "NaN parameter": '{"last_counter": 9, "params": {"housekeeping_period_s": NaN}}',  # a packet every turn
    "parameter out of range": '{"last_counter": 9, "params": {"chip_px": 100000}}',
    "priority out of range": '{"last_counter": 9, "priorities": {"260": 99}}',
    "threshold not a number": '{"last_counter": 9, "thresholds": {"ship_detect": "x"}}',
    "error time NaN": '{"last_counter": 9, "error_times": [NaN]}',
    "ack counter negative": '{"last_counter": 9, "ack_counters": {"1": -1}}',
}


@pytest.mark.parametrize("doc", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_value_in_the_ops_state_file_falls_back_to_the_previous_copy(tmp_path, doc):
    path = tmp_path / "ops_state.json"
    good = OpsState(path)
    good.last_counter, good.params = 41, {"housekeeping_period_s": 5.0}
    good.save()
    good.save()  # the previous copy holds the good state too
    path.write_text(doc)
    again = OpsState(path)
    assert again.restored and again.last_counter == 41 and again.params == {"housekeeping_period_s": 5.0}
    path.write_text(doc)
    (tmp_path / "ops_state.json.prev").write_text(doc)
    with pytest.raises(ValueError, match="previous copy unreadable"):  # a clear refusal, not OverflowError
        OpsState(path)


def test_a_restart_on_a_damaged_parameter_uses_the_previous_copy_and_runs(tmp_path, monkeypatch):
    """A NaN housekeeping period (or an unknown parameter) in the state file: before, the flight
    took the NaN (housekeeping on every loop turn: the store flooded) or crashed at start-up."""
    with flight_apps(tmp_path, monkeypatch, BASE, now_s=100.0) as (make, _key):
        app, _ = make()
        app.ops_state.params["housekeeping_period_s"] = 50.0
        app.ops_state.save()
        app.ops_state.save()
        app.store.close()
        state = json.loads((tmp_path / "ops_state.json").read_text())
        for damage in ({"housekeeping_period_s": float("nan")}, {"no_such_param": 3}):
            state["params"] = damage
            (tmp_path / "ops_state.json").write_text(json.dumps(state))
            again, _ = make()
            assert again.cfg.housekeeping_period_s == 50.0
            assert EV["STATE_RESTORED"] in event_ids(again)
            before = hk_count(again)
            for _ in range(20):
                again.housekeeping()
            assert hk_count(again) - before <= 1
            again.store.close()


# --- the wall clock steps backwards -------------------------------------------------------------------


def test_the_error_window_after_the_clock_stepped_back_counts_only_recent_errors():
    m = ModeManager(error_budget=10, error_window_s=100.0, emit=lambda *a, **k: None)
    m.fault(1000.0, "before the step")
    m.fault(10.0, "after the clock stepped back by 990 s")
    m.fault(20.0, "another")
    # at 150 the errors of 10 and 20 are older than the window; only the one stamped 1000 may count
    # (before: appended behind 1000, they were never popped: 3)
    assert m.errors_in_window(150.0) == 1


def test_restored_error_times_in_the_future_leave_the_window_one_window_from_now():
    """A restarted flight whose clock is behind the saved times (stepped back, or started from
    another wall time): those errors counted for the whole difference, not one window."""
    m = ModeManager(error_budget=3, error_window_s=100.0, emit=lambda *a, **k: None)
    m.restore(Mode.DEGRADED, [5000.0, 5001.0], now_s=10.0)
    assert m.errors_in_window(10.0) == 2  # still counted now
    assert m.errors_in_window(111.0) == 0  # before: 2 until t = 5101


def test_the_event_limiter_is_not_muted_for_the_whole_size_of_a_clock_step_back():
    lim = EventLimiter(burst=2, window_s=60.0)
    assert lim.allow("FRAME_REJECTED", 1000.0) and lim.allow("FRAME_REJECTED", 1000.0)
    assert not lim.allow("FRAME_REJECTED", 1000.5)
    assert not lim.allow("FRAME_REJECTED", 10.0)  # the clock stepped back 990 s: still within a window
    assert lim.allow("FRAME_REJECTED", 71.0)  # one window later, not at 1060 as before


def test_housekeeping_and_scrub_resume_at_once_after_the_clock_stepped_back(tmp_path, monkeypatch):
    with flight_apps(tmp_path, monkeypatch, BASE, now_s=1000.0) as (make, _key):
        app, _ = make()
        app.housekeeping(force=True)
        app.scrub_models()
        t = app.clock.now_s()
        assert app.next_hk_s > t and app.next_scrub_s > t
        # the wall clock steps back by 990 s (the same epoch and rate, another wall start)
        app.clock = ScenarioClock(app.clock.epoch, app.clock.rate, app.clock.wall_start + 990.0)
        before = hk_count(app)
        app.housekeeping()
        app.scrub_models()
        t = app.clock.now_s()
        assert hk_count(app) == before + 1  # before: none until scenario time 1001
        assert app.next_hk_s <= t + 1.0 and app.next_scrub_s <= t + 60.0


def test_the_downlink_and_its_timers_go_on_after_the_wall_clock_stepped_back(tmp_path, monkeypatch):
    """The radio's queue model and every packet's retransmission timer ran on wall time: after a
    step back of 990 s the model held 990 s of "airtime" (nothing went down) and an unacknowledged
    packet was not sent again until the clock had caught up. Link time is now monotonic."""
    import zmq

    with flight_apps(tmp_path, monkeypatch, BASE + ["link.downlink_rate_bps=1000.0"], now_s=1000.0) as (make, _key):
        app, _ = make()
        ctx = zmq.Context()
        radio, down = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        try:
            radio.bind("inproc://radio")
            down.connect("inproc://radio")
            app.housekeeping(force=True)
            app.pump_downlink(down)
            sent = app.counts["packets_sent"]
            assert sent >= 1 and not app.link_timer.has_room(time.monotonic())  # ~2 s of airtime queued at 1 kbit/s
            real_wall, real_mono, ahead = time.time, time.monotonic, [0.0]
            monkeypatch.setattr(time, "time", lambda: real_wall() - 990.0 + ahead[0])  # the wall clock steps back (NTP)
            monkeypatch.setattr(time, "monotonic", lambda: real_mono() + ahead[0])
            # nothing is acknowledged: once the timeout has run out (the wall clock is still 870 s
            # behind), the silent link is probed with one of those packets (before: nothing went
            # again for 990 s)
            ahead[0] = app.link_timer.rto_max_s + 60.0
            app.pump_downlink(down)
            assert app.counts["packets_retransmitted"] == 1 and app.counts["packets_sent"] == sent + 1
            # and the queue model is not held by the step: a new packet goes once the probe has left
            ahead[0] += 3.0
            app.housekeeping(force=True)
            app.pump_downlink(down)
            assert app.counts["packets_sent"] == sent + 2
        finally:
            radio.close(linger=0)
            down.close(linger=0)
            ctx.term()


def test_safe_entered_mid_frame_stops_processing_that_frame(tmp_path, monkeypatch):
    """SAFE (here by command; memory pressure or the error budget alike) between two strips of a
    frame: before, the rest of the frame was still processed and packaged."""
    import json as _json

    from payload_sim.camera import frame_meta, make_orbit, make_sensor, render

    with flight_apps(tmp_path, monkeypatch, BASE + ["sensor.strip_rows=64"], now_s=100.0) as (make, _key):
        app, sc = make()
        _, raw = render(sc, make_sensor(sc), 0)
        meta = frame_meta(sc, make_orbit(sc, app.clock), 0)
        app.on_frame_message([b"frame", meta.to_json()])
        strips = [[b"strip", _json.dumps({"frame_id": 0, "row0": r, "rows": 64}).encode(), raw[:, r:r + 64].tobytes()]
                  for r in range(0, meta.height, 64)]
        app.on_frame_message(strips[0])
        app.modes.command(Mode.SAFE)
        for s in strips[1:]:
            app.on_frame_message(s)
        assert app.counts["frames_processed"] == 0 and app.counts["frames_rejected"] == 1
        assert app.counts["strips_dropped"] == len(strips) - 1 and app.pipeline.meta is None
        assert app.counts["errors"] == 0 and app.counts["input_rejected"] == 0
        assert EV["FRAME_REJECTED"] in event_ids(app)


# --- a main-loop step failing on every turn -----------------------------------------------------------


def test_a_step_failing_on_every_turn_is_counted_exactly_but_reported_at_a_bounded_rate(tmp_path, monkeypatch):
    """A step that raises on every turn (here a real FileNotFoundError). Each turn is a software
    fault; before, each also made a SOFTWARE_FAULT event packet (20 a second at the loop's rate),
    filling the store and the downlink with the same message."""
    with flight_apps(tmp_path, monkeypatch, BASE + ["ops.error_budget=100000", "ops.event_burst=10"],
                     now_s=100.0) as (make, _key):
        app, _ = make()
        for _ in range(300):
            app.guarded("check_memory", lambda: (tmp_path / "missing" / "file").read_text())
        assert app.counts["software_faults"] == 300
        faults = sum(e == EV["SOFTWARE_FAULT"] for e in event_ids(app))
        assert faults == 10 and app.counts["events_suppressed"] >= 290


def test_a_status_file_that_cannot_be_written_is_no_fault(tmp_path, monkeypatch):
    """The run folder's disk full or failing (here: a folder where the status file goes, a real
    OSError on every write). The status file is for monitoring; before, each failed write was a
    software fault (4 a second) and the flight went to SAFE within a second of its disk filling.
    Now each is counted and said once per episode; frames go on; it is written again once it can."""
    with flight_apps(tmp_path, monkeypatch, BASE + ["ops.error_budget=3"], now_s=100.0) as (make, _key):
        app, _ = make()
        app.svc.run_dir = tmp_path
        (tmp_path / "flight.status.json").mkdir()
        for _ in range(10):
            app.guarded("status", lambda: app.status(force=True))
        assert app.counts["software_faults"] == 0 and app.modes.mode == Mode.NOMINAL
        assert app.svc.status_errors == 10
        (tmp_path / "flight.status.json").rmdir()
        app.guarded("status", lambda: app.status(force=True))
        assert json.loads((tmp_path / "flight.status.json").read_text())["frames_processed"] == 0


# --- SIGTERM in the middle of a frame, a real flight process ------------------------------------------


def test_sigterm_mid_frame_rejects_the_frame_keeps_the_ack_counter_and_exits_cleanly(tmp_path):
    """A real flight process gets a frame header and its first strip, then two signed acks within
    a second, then SIGTERM. It must stop with status 0, reject the frame in progress with the
    reason (before: captured but neither processed nor rejected, silently), and have written
    the last accepted ack counter (before: only the first one, the second was rate-limited in
    memory, so a replay of it was taken as new after the restart)."""
    import zmq

    from flight.acks import encode_ack
    from flight.config import load_scenario
    from flight.products import Event, decode_tm
    from flight.security import load_mission_key, write_mission_key
    from payload_sim.camera import CALIBRATION_VERSION, frame_meta, make_orbit, make_sensor, render

    key_path = write_mission_key(tmp_path / "mission.key")
    ipc = {n: f"ipc://{tmp_path}/{n}.ipc" for n in ("frames", "space_in", "space_out")}
    sets = ["sensor.height=128", "sensor.width=128", "sensor.strip_rows=64", "obc.cores=[0]",
            f"security.command_key_file={json.dumps(str(key_path))}", "security.curve=false",
            *(f"network.{n}={json.dumps(e)}" for n, e in ipc.items())]
    sc = load_scenario(None, sets)
    key = load_mission_key(sc.security)
    cal = tmp_path / "cal.npz"
    make_sensor(sc).calibration_products(CALIBRATION_VERSION).save(cal)
    clock = ScenarioClock(parse_epoch(sc.scenario.epoch), sc.scenario.clock_rate, time.time() - 100.0)
    run_dir = tmp_path / "run"

    def status() -> dict:
        try:
            return json.loads((run_dir / "flight.status.json").read_text())
        except (OSError, ValueError):
            return {}

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(60)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    env.pop("ONBOARD_STOP_WITH_PARENT", None)
    cmd = [sys.executable, "-m", "flight", "--run-dir", str(run_dir), "--calibration", str(cal),
           "--clock-start", repr(clock.wall_start)]
    for o in sets:
        cmd += ["--set", o]
    ctx = zmq.Context()
    frames, uplink = ctx.socket(zmq.PUSH), ctx.socket(zmq.PUSH)
    frames.bind(ipc["frames"])
    uplink.bind(ipc["space_out"])
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert notify.recv(4096).startswith(b"READY=1")
        _, raw = render(sc, make_sensor(sc), 0)
        meta = frame_meta(sc, make_orbit(sc, clock), 0)
        frames.send_multipart([b"frame", meta.to_json()])
        frames.send_multipart([b"strip", json.dumps({"frame_id": 0, "row0": 0, "rows": 64}).encode(),
                               raw[:, 0:64].tobytes()])
        now = int(clock.now_s())
        counter = 10**15
        for c in (counter, counter + 1):
            uplink.send(encode_ack(key, sc.security.ack_source_id, c, now, [(7, 1)]))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and status().get("frames_captured") != 1:
            time.sleep(0.1)
        time.sleep(0.5)  # the two acks (sent before) are taken within the same loop turns
        assert status().get("frames_captured") == 1 and status().get("frames_processed") == 0
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        frames.close(linger=0)
        uplink.close(linger=0)
        ctx.term()
        notify.close()
    assert proc.returncode == 0, err[-3000:]
    final = status()
    assert final["acks_rejected"] == 0 and final["uplink_rejected"] == 0, final
    assert final["frames_captured"] == final["frames_processed"] + final["frames_rejected"] == 1
    state = json.loads((run_dir / "ops_state.json").read_text())
    assert state["ack_counters"] == {str(sc.security.ack_source_id): counter + 1}
    (db_path,) = run_dir.rglob("flight_store.sqlite")
    db = sqlite3.connect(db_path)
    try:
        events = [decode_tm(p)[1] for (p,) in db.execute("SELECT packet FROM products WHERE apid = 0x105 ORDER BY id")]
    finally:
        db.close()
    rejected = [e for e in events if isinstance(e, Event) and e.event_id == EV["FRAME_REJECTED"]]
    assert len(rejected) == 1 and rejected[0].frame_id == 0 and "SIGTERM" in rejected[0].message
    assert isinstance(events[-1], Event) and events[-1].event_id == EV["STOPPING"]


def test_the_last_ack_counter_of_a_burst_is_written_within_its_period_without_another_ack(tmp_path, monkeypatch):
    """Two acks inside one second: the first counter is written at once, the second waited for the
    next ack (a pass later, or never before a crash). The main loop now writes it once the period
    is over (docs/operations.md: at most a second)."""
    import json

    from ops_util import flight_apps

    from flight.acks import encode_ack

    with flight_apps(tmp_path, monkeypatch, [], 100.0) as (make, key):
        app, _ = make()
        src = app.sc.security.ack_source_id

        def saved() -> int:
            return json.loads(app.ops_state.path.read_text())["ack_counters"].get(str(src), 0)

        now = int(app.clock.now_s())
        app.on_uplink(encode_ack(key, src, 1, now, [(1, 1)]))
        app.on_uplink(encode_ack(key, src, 2, now, [(2, 1)]))
        assert app.ack_auth.counters[src] == 2 and saved() == 1  # within the period: not yet
        app.ack_auth._last_persist -= 1.0  # the period is over (monotonic time, not waited for)
        app.store_maintenance()
        assert saved() == 2
        app.watchdog.close()
        app.store.close()


def test_a_command_runs_and_says_so_when_its_counter_cannot_be_saved(tmp_path, monkeypatch):
    """ops_state.json on a full disk (its temporary file is /dev/full): the command used to be
    neither executed nor reported (an OSError out of on_command, a SOFTWARE_FAULT), so CLEAR_STORE,
    the ground's way to free the disk, could not run. Now it runs, its report says the counter was
    not saved, and a replay of it is still refused."""
    from ops_util import flight_apps

    from flight.commands import encode_command
    from flight.products import CommandReport, decode_tm

    with flight_apps(tmp_path, monkeypatch, [], 100.0) as (make, key):
        app, _ = make()
        tmp = app.ops_state.path.with_name(app.ops_state.path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to("/dev/full")
        issued = int(app.clock.now_s())
        packet = encode_command(key, 5, issued, "CLEAR_STORE", {"min_priority": 4})
        app.on_uplink(packet)
        reports = [p for p in (decode_tm(r[0])[1] for r in app.store.db.execute(
            "SELECT packet FROM products WHERE apid = 0x106 ORDER BY id")) if isinstance(p, CommandReport)]
        assert [r.report for r in reports][-1] == 7, reports  # COMPLETED
        assert "counter not saved" in reports[-1].message and app.counts["software_faults"] == 0
        assert app.auth.last_counter == 5
        app.on_uplink(packet)  # the same packet again: a replay, refused from memory
        assert app.counts["commands_replayed"] == 1
        # a parameter: in effect at once, and the report says it holds until a restart (before: the
        # value was in effect but the report said FAILED)
        app.on_uplink(encode_command(key, 6, issued, "SET_PARAM", {"param": 4, "value": 48.0}))
        last = [p for p in (decode_tm(r[0])[1] for r in app.store.db.execute(
            "SELECT packet FROM products WHERE apid = 0x106 ORDER BY id")) if isinstance(p, CommandReport)][-1]
        assert last.report == 7 and "chip_px not saved" in last.message, last
        assert app.cfg.chip_px == 48 and app.counts["software_faults"] == 0
        app.watchdog.close()
        app.store.close()


def test_an_uplink_flood_is_taken_a_bounded_number_of_packets_per_loop_turn(tmp_path, monkeypatch):
    """1000 junk packets waiting on a real uplink socket: one main-loop turn takes UPLINK_PER_TURN
    of them and leaves the rest for the next turns, so frames, the downlink and the systemd
    watchdog still get their turn (before: the loop read until the socket was empty)."""
    import zmq
    from ops_util import flight_apps

    from flight.app import UPLINK_PER_TURN

    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        with flight_apps(tmp_path, monkeypatch, [], 100.0) as (make, _):
            app, _ = make()
            for i in range(1000):
                push.send(bytes([i % 251]) * 40)
            deadline = time.monotonic() + 10
            while not pull.poll(100) and time.monotonic() < deadline:
                pass
            time.sleep(0.3)  # all 1000 across loopback
            assert app.drain_uplink(pull) == UPLINK_PER_TURN < 1000
            taken = UPLINK_PER_TURN
            while (n := app.drain_uplink(pull)):
                assert n <= UPLINK_PER_TURN
                taken += n
            assert taken == 1000 and app.counts["uplink_rejected"] == 1000  # every one handled, in later turns
            app.watchdog.close()
            app.store.close()
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()



# --- the calibration table file damaged while the flight runs -------------------------------------


def test_a_calibration_table_file_damaged_while_running_costs_no_frame(tmp_path, monkeypatch):
    """The table file truncated under a running flight (a flash fault): before, every later frame
    was a stage error (SAFE after the error budget) with the good products .npz beside it. Now the
    next frame is processed as usual, and CALIBRATION_TABLES_FAULT says the file was remade. A bit
    flip is found by the scrub, a step per main-loop turn, and the file remade the same way."""
    from test_modes import feed_frame

    with flight_apps(tmp_path, monkeypatch, BASE + ["ops.error_budget=3"], now_s=100.0) as (make, _key):
        app, sc = make()
        feed_frame(app, sc, 0)
        tables = tmp_path / "cal.tables"
        with open(tables, "r+b") as f:
            f.truncate(5000)
        for fid in (1, 2, 3, 4):
            feed_frame(app, sc, fid)
        assert app.counts["frames_processed"] == 5 and app.counts["frames_rejected"] == 0
        assert event_ids(app).count(EV["CALIBRATION_TABLES_FAULT"]) == 1
        assert app.modes.mode == Mode.NOMINAL
        # a bit flip in the flat table: found by the next scrub pass
        with open(tables, "r+b") as f:
            f.seek(-1000 - 4 * app.calibrator.table_file.bad_pixels.size, 2)  # before the bad-pixel list
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0x40]))
        app.next_scrub_s = 0.0
        for _ in range(20):  # 256 x 256 x 6 x 2 bytes: one step of 1 MiB
            app.scrub_models()
        assert event_ids(app).count(EV["CALIBRATION_TABLES_FAULT"]) == 2
        assert not app.calibrator.scrubbing
        feed_frame(app, sc, 5)
        assert app.counts["frames_processed"] == 6


# --- the camera stops in the middle of a frame ------------------------------------------------------


def test_a_frame_whose_camera_stopped_mid_frame_is_dropped_and_reported(tmp_path, monkeypatch):
    """Half a frame's strips, then nothing (the camera or its link died). Before, the frame stayed
    open for good: no result, no report, a model swap waiting for the frame's end never applied,
    and the launcher waited for a frame that could not finish. After ops.frame_stall_s without a
    camera message it is rejected with the reason; the next frame is processed as usual."""
    import json as _json

    from test_modes import feed_frame

    from payload_sim.camera import frame_meta, make_orbit, make_sensor, render

    with flight_apps(tmp_path, monkeypatch, BASE + ["sensor.strip_rows=64", "ops.frame_stall_s=5.0"],
                     now_s=100.0) as (make, _key):
        app, sc = make()
        _, raw = render(sc, make_sensor(sc), 0)
        meta = frame_meta(sc, make_orbit(sc, app.clock), 0)
        app.on_frame_message([b"frame", meta.to_json()])
        for r in (0, 64):
            app.on_frame_message([b"strip", _json.dumps({"frame_id": 0, "row0": r, "rows": 64}).encode(),
                                  raw[:, r:r + 64].tobytes()])
        real = time.monotonic
        app.guarded("check_frame_stall", app.check_frame_stall)
        assert app.pipeline.meta is not None  # not yet: 5 s have not passed
        monkeypatch.setattr(time, "monotonic", lambda: real() + 6.0)
        app.guarded("check_frame_stall", app.check_frame_stall)
        assert app.pipeline.meta is None and app.counts["frames_rejected"] == 1
        assert app.counts["input_rejected"] == 0 and app.counts["errors"] == 0 and app.counts["software_faults"] == 0
        assert EV["FRAME_REJECTED"] in event_ids(app)
        monkeypatch.setattr(time, "monotonic", real)
        feed_frame(app, sc, 1)
        assert app.counts["frames_processed"] == 1
