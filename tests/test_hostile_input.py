"""Hostile input never knocks the flight over (issue #12).

Frame headers and strips are generated over each field's whole type range (huge, negative, 2**63,
floats where integers go, NaN, nested, empty, wrong part counts) and fed to a real FlightApp (real
store, real models, real calibration). Each must be rejected as input: counted, reported, never
charged to the error budget, never a mode change; a valid frame afterwards is processed. The
last-resort handler is proven for every main-loop step, and the mode survives a restart.
End to end, a real camera process sends the same kind of messages through ZeroMQ.
"""

from __future__ import annotations

import json
import math

import pytest
from e2e_util import run_hil
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ops_util import flight_apps
from test_modes import event_ids, feed_frame

from flight.dictionary import EVENTS, Mode
from payload_sim.hostile import HEADER_FIELDS, STRIP_FIELDS, hostile_messages, nested

EV = {name: e.id for name, e in EVENTS.items()}
BASE = ["flight.housekeeping_period_s=1000.0", "ops.model_scrub_period_s=0.0"]
MAIN_LOOP_STEPS = ("on_frame_message", "on_uplink", "apply_pending_models", "retry_models", "pump_downlink", "housekeeping",
                   "check_memory", "check_frame_stall", "scrub_models", "store_maintenance", "status")
HOSTILE_EXAMPLES = 2500  # per property test below; with the seeded campaign: >= 10,000 messages per run

any_json_value = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.lists(st.integers(-(2**65), 2**65), max_size=6),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
    st.sampled_from([2**31 - 1, 2**31, 2**32, 2**63, -(2**63), 2**64, 256, 512, 64, 0, -1]),
)


def valid_header(app, sc, fid: int) -> dict:
    from payload_sim.camera import frame_meta, make_orbit

    return json.loads(frame_meta(sc, make_orbit(sc, app.clock), fid).to_json())


def assert_unharmed(app, sc, fid: int) -> None:
    """No fault counted, still NOMINAL, and the next valid frame goes through."""
    assert app.counts["errors"] == 0 and app.counts["software_faults"] == 0, app.counts
    assert app.modes.mode == Mode.NOMINAL
    assert EV["STAGE_ERROR"] not in event_ids(app) and EV["MODE_CHANGED"] not in event_ids(app)
    done = app.counts["frames_processed"]
    feed_frame(app, sc, fid)
    assert app.counts["frames_processed"] == done + 1


@pytest.fixture
def app_and_scenario(tmp_path, monkeypatch):
    with flight_apps(tmp_path, monkeypatch, BASE, now_s=100.0) as (make, _key):
        yield make()


def test_generated_frame_headers_are_rejected_as_input(app_and_scenario):
    app, sc = app_and_scenario
    good = valid_header(app, sc, 5)

    @settings(max_examples=HOSTILE_EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(fields=st.dictionaries(st.sampled_from(HEADER_FIELDS), any_json_value, min_size=1, max_size=4),
           drop=st.lists(st.sampled_from(HEADER_FIELDS), max_size=2))
    def feed(fields, drop):
        h = dict(good) | fields
        for k in drop:
            h.pop(k, None)
        app.on_frame_message([b"frame", json.dumps(h, allow_nan=True).encode()])

    feed()
    assert app.counts["input_rejected"] > HOSTILE_EXAMPLES // 2  # most are rejected (some stay valid)
    assert_unharmed(app, sc, 6)


def test_generated_strips_are_rejected_as_input(app_and_scenario):
    app, sc = app_and_scenario
    good = valid_header(app, sc, 7)
    strip_bytes = 6 * sc.sensor.strip_rows * sc.sensor.width * 2

    @settings(max_examples=HOSTILE_EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(open_frame=st.booleans(), fields=st.dictionaries(st.sampled_from(STRIP_FIELDS), any_json_value, max_size=3),
           size=st.sampled_from([0, 1, strip_bytes - 2, strip_bytes, strip_bytes + 2]), fill=st.sampled_from([0, 255]),
           parts=st.integers(1, 4))
    def feed(open_frame, fields, size, fill, parts):
        if open_frame:
            app.on_frame_message([b"frame", json.dumps(good).encode()])
        hdr = {"frame_id": good["frame_id"], "row0": 0, "rows": sc.sensor.strip_rows} | fields
        msg = [b"strip", json.dumps(hdr, allow_nan=True).encode(), bytes([fill]) * size]
        app.on_frame_message(msg[:parts] if parts < 3 else msg + [b"x"] * (parts - 3))

    feed()
    assert app.counts["input_rejected"] > 0
    assert_unharmed(app, sc, 8)


@pytest.mark.parametrize("size", [(0, -64), (-64, 0), (64, 64), (-128, -128)])
def test_a_frame_of_another_size_than_the_calibrated_sensor_is_rejected_as_input(app_and_scenario, size):
    """A header whose size is valid in itself (a multiple of the tile) but not the size the
    calibration products are for is refused at the header, as input: before, it passed ingest and
    failed in calibration, a stage error charged to the error budget."""
    app, sc = app_and_scenario
    h = valid_header(app, sc, 5)
    h["height"], h["width"] = h["height"] + size[0], h["width"] + size[1]
    app.on_frame_message([b"frame", json.dumps(h).encode()])
    rows = sc.sensor.strip_rows
    hdr = json.dumps({"frame_id": 5, "row0": 0, "rows": rows}).encode()
    app.on_frame_message([b"strip", hdr, bytes(6 * rows * h["width"] * 2)])
    assert app.counts["input_rejected"] >= 1 and app.counts["frames_rejected"] == 1, app.counts
    assert_unharmed(app, sc, 6)


@pytest.mark.parametrize("area_px, class_id", [(2**16, 1), (-1, 1), (2**63, 1), (1, 256), (1, -1)])
def test_a_product_that_does_not_fit_its_packet_is_lost_alone_as_a_software_fault(app_and_scenario, area_px, class_id):
    """A value that does not fit its packet field (a defect upstream: every field is range-checked
    before packing) loses that product only: counted, reported, charged as a software fault, and the
    flight's next frame and its products go on. Before, the exception escaped _store and took the
    rest of the frame's products with it."""
    from flight.dictionary import Apid
    from flight.products import Detection

    app, sc = app_and_scenario

    def detections() -> int:
        return app.store.db.execute("SELECT COUNT(*) FROM products WHERE apid = ?", (int(Apid.DETECTION),)).fetchone()[0]

    lost, before = app.counts["products_lost"], detections()
    t = app.clock.now_s()
    app._store(Apid.DETECTION, t, lambda pid: Detection(pid, 1, t, class_id, 200, 1.0, 2.0, 40.0, 49.0, area_px))
    assert app.counts["products_lost"] == lost + 1 and app.counts["software_faults"] == 1
    assert detections() == before and EV["SOFTWARE_FAULT"] in event_ids(app)
    created = app.counts["products_created"]
    done = app.counts["frames_processed"]
    feed_frame(app, sc, 12)
    assert app.counts["frames_processed"] == done + 1 and app.counts["products_created"] > created + 1


def test_seeded_campaign_of_hostile_camera_messages(app_and_scenario):
    """The camera's own generator (what the end-to-end test sends over ZeroMQ), 5000 messages,
    nested JSON 100,000 deep and 2**63 frame ids included."""
    app, sc = app_and_scenario
    msgs = hostile_messages(11, 5000, valid_header(app, sc, 9), 6 * sc.sensor.strip_rows * sc.sensor.width * 2)
    msgs += [[b"frame", nested(100_000)], [b"strip", nested(100_000), b""],
             [b"frame", json.dumps(valid_header(app, sc, 9) | {"frame_id": 2**63}).encode()]]
    for m in msgs:
        app.on_frame_message(m)
    # each message rejected, or dropped as a strip of no open frame; the headers that stayed valid
    # (an optional field removed, a value replaced by an allowed one) are rejected when the next
    # header comes before their strips
    c = app.counts
    assert c["input_rejected"] >= 3000 and c["frames_rejected"] + c["strips_dropped"] >= 4500, c
    assert app.counts["events_suppressed"] > 0  # thousands of rejections are not thousands of event packets
    assert_unharmed(app, sc, 10)


def test_an_event_about_an_unpackable_frame_id_still_packs(app_and_scenario):
    app, sc = app_and_scenario
    for fid in (2**31, 2**32, 2**63, -(2**63), -2):
        app.reject(fid, "hostile id", hostile=True)  # before, struct.error inside the rejection handler
    assert app.counts["frames_rejected"] == 5 and app.counts["software_faults"] == 0


def test_the_last_resort_handler_keeps_every_main_loop_step_alive(tmp_path, monkeypatch):
    """Each main-loop step raises once (faults.raise_in: a bug in that step); each is caught,
    logged, reported as SOFTWARE_FAULT and counted, and the flight goes on processing frames."""
    steps = json.dumps(list(MAIN_LOOP_STEPS))
    with flight_apps(tmp_path, monkeypatch, BASE + [f"faults.raise_in={steps}", "ops.error_budget=100"],
                     now_s=100.0) as (make, _key):
        app, sc = make()
        for step in MAIN_LOOP_STEPS:
            app.guarded(step, lambda: None)
            app.guarded(step, lambda: None)  # raises once only
        assert app.counts["software_faults"] == len(MAIN_LOOP_STEPS)
        faults = [e for e in event_ids(app) if e == EV["SOFTWARE_FAULT"]]
        assert len(faults) == len(MAIN_LOOP_STEPS)
        app.guarded("on_frame_message", lambda: (_ for _ in ()).throw(KeyError("a bug")))  # an uninjected bug
        assert app.counts["software_faults"] == len(MAIN_LOOP_STEPS) + 1
        feed_frame(app, sc, 3)
        assert app.counts["frames_processed"] == 1


def test_mode_and_error_budget_survive_a_restart(tmp_path, monkeypatch):
    with flight_apps(tmp_path, monkeypatch, BASE + ["ops.error_budget=1"], now_s=100.0) as (make, _key):
        app, _ = make()
        app.modes.fault(app.clock.now_s(), "test fault")
        assert app.modes.mode == Mode.DEGRADED
        app.store.close()
        again, _ = make()  # a restart on the same state folder
        assert again.modes.mode == Mode.DEGRADED and again.modes.errors_in_window(again.clock.now_s()) == 1
        assert EV["MODE_RESTORED"] in event_ids(again)
        again.modes.fault(again.clock.now_s(), "second fault")  # over the budget of 1: SAFE
        assert again.modes.mode == Mode.SAFE
        again.store.close()
        third, _ = make()
        assert third.modes.mode == Mode.SAFE
        third.modes.command(Mode.NOMINAL)  # only a command brings it back, and that persists too
        third.store.close()
        fourth, _ = make()
        assert fourth.modes.mode == Mode.NOMINAL and fourth.modes.errors_in_window(fourth.clock.now_s()) == 0


def test_hostile_camera_messages_end_to_end(tmp_path):
    """A real camera process sends 300 hostile messages before each of 6 frames over ZeroMQ; the
    flight process stays up, NOMINAL, processes every real frame, and counts no fault."""
    run_dir = tmp_path / "run"
    code, summary, err = run_hil(run_dir, [
        "scenario.frames=6", "sensor.height=256", "sensor.width=256", "scenario.clock_rate=20.0",
        "faults.hostile_messages_per_frame=300",
    ], timeout_s=150, expect=["frames_processed=6", "software_faults=0", "frames_rejected>=0"])
    assert code == 0, err[-3000:]
    cam = json.loads((run_dir / "camera.status.json").read_text())
    assert cam["hostile_messages"] == 1800
    assert summary["mode"] == "NOMINAL" and summary["input_rejected"] > 1000
    assert summary["frames_processed"] == 6 and summary["products_lost"] == 0
    assert not math.isnan(summary["frame_latency_ms_p50"])


def test_a_corrupt_ops_state_file_is_restored_from_its_previous_copy(tmp_path, monkeypatch):
    """ops_state.json (command counter, mode, parameters) torn or overwritten: the flight starts
    from the copy kept before the last save and says so; with both gone it refuses to start."""
    with flight_apps(tmp_path, monkeypatch, BASE, now_s=100.0) as (make, _key):
        app, _ = make()
        app.ops_state.last_counter = 41
        app.ops_state.save()
        app.ops_state.last_counter = 42
        app.ops_state.save()
        app.store.close()
        (tmp_path / "ops_state.json").write_bytes(b'{"last_counter": 4')  # torn write
        again, _ = make()
        assert again.ops_state.last_counter == 41  # one behind at worst; the time window bounds a replay
        assert EV["STATE_RESTORED"] in event_ids(again)
        again.store.close()
        for name in ("ops_state.json", "ops_state.json.prev"):
            (tmp_path / name).write_bytes(b"\x00garbage")
        with pytest.raises(ValueError, match="previous copy unreadable"):
            make()


def test_a_bug_in_every_main_loop_step_of_a_real_flight_process(tmp_path):
    """The same through the launcher: each step of a real flight process raises once; the
    process lives, reports each one, and every frame is still processed and archived."""
    steps = json.dumps(list(MAIN_LOOP_STEPS))
    code, summary, err = run_hil(tmp_path / "run", [
        "scenario.frames=5", "sensor.height=256", "sensor.width=256", "scenario.clock_rate=20.0",
        f"faults.raise_in={steps}", "ops.error_budget=100",
    ], timeout_s=120, expect=[f"software_faults={len(MAIN_LOOP_STEPS)}", "frames_processed=5"])
    assert code == 0, err[-3000:]
    assert summary["frame_summaries"] == 5 and summary["products_lost"] == 0
    log = (tmp_path / "run" / "flight.log").read_text()
    assert all(f"software fault in {s}" in log for s in MAIN_LOOP_STEPS)
