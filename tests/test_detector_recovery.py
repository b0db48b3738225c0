"""Automatic, bounded recovery of a detector switched off by a fault (flight.app.FlightApp.retry_models).

A detector (fire_detect, ship_detect) past its probation that raises at run time or runs past the
stage watchdog is switched off (MODEL_DISABLED). Before, it stayed off until the ground sent
ENABLE_MODEL: one transient fault lost that detector's science until the next contact and an
operator noticing. Now it is switched on again after `ops.model_retry_s` scenario seconds (the
on-board mission clock), at most `ops.model_retries` times; failing again after that, it stays off
until ENABLE_MODEL, which also resets the count. DISABLE_MODEL by command is never undone
automatically. The retry state is kept in ops_state.json with the disabled list.

Real FlightApps (no sockets) on the simulator's 256 x 256 frames, the packaged models, faults
injected the way the scenario injects them (`[faults]`: fail_model raises in the model call,
slow_model sleeps past the watchdog on the frames named). Time moves on by giving the app a
ScenarioClock that many seconds later (`later`): the cool-down is mission time, and the tests must
not wait 300 s. Frame 7 of this scenario has a fire that fire_detect finds; frame 0 has clear land
tiles, so fire_detect is called on it. Section (6), a detector that cannot be loaded at its retry, puts
the models folder on a tmpfs it can make read-only (needs mount rights: skipped without).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest
from ops_util import flight_apps
from test_model_runtime_audit import CASCADE, check_products, named, products
from test_model_update import last_report
from test_modes import feed_frame

from flight.commands import encode_command
from flight.config import ConfigError, load_scenario
from flight.dictionary import Mode
from flight.faults import InjectedFaults
from flight.products import Detection

FIRE = 2  # DetectionClass.FIRE
FAIL_FIRE = 'faults.fail_model="fire_detect"'
STUCK_FIRE = ["ops.watchdog_limit_s=0.3", 'faults.slow_model="fire_detect"', "faults.slow_model_s=5.0",
              "faults.slow_frames=[0]"]


@pytest.fixture
def flight(tmp_path, monkeypatch):
    with flight_apps(tmp_path, monkeypatch, ["sensor.strip_rows=128", CASCADE, "ops.error_budget=100"], 1000.0) as (make, key):
        yield make, key


def later(app, seconds: float) -> None:
    """The on-board clock `seconds` of mission time later (what waiting that long would do)."""
    app.clock = dataclasses.replace(app.clock, wall_start=app.clock.wall_start - seconds / app.clock.rate)


class Ground:
    """Authenticated commands, issued at the flight's mission time (inside the command time window
    however far `later` moved it)."""

    def __init__(self, app, key, counter: int = 0):
        self.app, self.key, self.counter = app, key, counter

    def __call__(self, name: str, **args):
        self.counter += 1
        self.app.on_uplink(encode_command(self.key, self.counter, int(self.app.clock.now_s()), name, args))
        report = last_report(self.app)
        assert report.report == 7, report.message  # COMPLETED
        return report.message


def fires(app, frame_id: int) -> list[Detection]:
    return [p for p in products(app) if isinstance(p, Detection) and p.class_id == FIRE and p.frame_id == frame_id]


def disabled_channel(app) -> float:
    return app.telemetry()["models_disabled"]


# --- (1) one fault: back after the cool-down ---------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["raises", "stuck"])
def test_a_detector_that_fails_once_is_re_enabled_after_the_cool_down_and_detects_again(flight, fault):
    """fire_detect raises once at run time (an onnxruntime error, a MemoryError: here the injected
    fault) or runs once past the watchdog, on frame 0, past its probation. It is switched off at
    once (MODEL_DISABLED saying when it comes back), stays off until the 300 s cool-down (the
    default) has passed (frame 7's fire is not looked for before), and is then switched on again by
    itself at the next frame's start (MODEL_ENABLED, models_auto_enabled 1) and finds frame 7's
    fire. Before: off until ENABLE_MODEL."""
    make, _ = flight
    app, sc = make([FAIL_FIRE] if fault == "raises" else STUCK_FIRE)
    feed_frame(app, sc, 0)
    assert "fire_detect" in app.pipeline.disabled and disabled_channel(app) == 1
    assert app.counts["errors"] == 1 and app.modes.mode == Mode.DEGRADED
    app.faults = InjectedFaults()  # the fault was transient: gone by the next frame

    later(app, 290.0)  # inside the cool-down: still off
    feed_frame(app, sc, 7)
    assert "fire_detect" in app.pipeline.disabled and not fires(app, 7) and not named(app, "MODEL_ENABLED")

    later(app, 11.0)  # 301 s after the fault
    feed_frame(app, sc, 7)
    assert fires(app, 7), "fire_detect found nothing 301 s after its fault"
    assert "fire_detect" not in app.pipeline.disabled and disabled_channel(app) == 0
    assert app.telemetry()["model_fire_detect_version"] > 0
    assert app.counts["frames_processed"] == 3 and app.counts["errors"] == 1  # no new fault
    (why,) = named(app, "MODEL_DISABLED")
    assert ("failed at run time" if fault == "raises" else "stuck past the watchdog limit") in why
    assert "automatic retry 1 of 3 in 300 s at 2026-" in why, why
    (enabled,) = named(app, "MODEL_ENABLED")
    assert enabled == "model fire_detect (automatic retry 1 of 3, 300 s after its fault) enabled", enabled
    assert app.counts["models_auto_enabled"] == 1
    assert app.ops_state.model_recovery["fire_detect"] == {"retries": 1, "retry_at_s": None}
    assert json.loads((app.state_dir / "ops_state.json").read_text())["disabled"] == []
    check_products(app)


def test_the_main_loop_re_enables_a_detector_between_frames(flight):
    """The main-loop step (FlightApp.run calls it every turn) switches it on without waiting for a
    frame, so housekeeping shows it on again at once; never in the middle of a frame."""
    from payload_sim.camera import frame_meta, make_orbit, make_sensor, render

    make, _ = flight
    app, sc = make([FAIL_FIRE])
    feed_frame(app, sc, 0)
    app.faults = InjectedFaults()
    _, raw = render(sc, make_sensor(sc), 3)
    meta = frame_meta(sc, make_orbit(sc, app.clock), 3)
    app.on_frame_message([b"frame", meta.to_json()])  # frame 3 begins inside the cool-down
    later(app, 301.0)
    app.guarded("retry_models", app.retry_models)
    assert "fire_detect" in app.pipeline.disabled  # a frame in progress: waits for its end
    rows = sc.sensor.strip_rows
    for r in range(0, meta.height, rows):
        app.on_frame_message([b"strip", json.dumps({"frame_id": 3, "row0": r, "rows": rows}).encode(),
                              raw[:, r : r + rows].tobytes()])
    assert app.counts["frames_processed"] == 2 and "fire_detect" in app.pipeline.disabled
    app.guarded("retry_models", app.retry_models)
    assert "fire_detect" not in app.pipeline.disabled and app.counts["models_auto_enabled"] == 1
    assert app.counts["software_faults"] == 0 and disabled_channel(app) == 0
    feed_frame(app, sc, 7)
    assert fires(app, 7)


# --- (2) a detector that keeps failing: bounded ---------------------------------------------------------------------


def test_a_detector_that_keeps_failing_is_retried_model_retries_times_then_stays_off_until_enable_model(flight):
    """fire_detect fails on every call (the defaults: 3 retries, 300 s). It is switched on again
    exactly three times (each time it fails in that frame again), the fourth failure leaves it off
    for good: no retry however long the wait, never called again (no further MODEL_RUN_FAILED).
    ENABLE_MODEL switches it on and resets the count: the next failure is retry 1 of 3 again, and
    it comes back by itself again."""
    make, key = flight
    app, sc = make([FAIL_FIRE])
    feed_frame(app, sc, 0)
    for n in (1, 2, 3):
        later(app, 290.0)
        feed_frame(app, sc, 3)  # fire_detect has clear land tiles here too: not called, still off
        assert len(named(app, "MODEL_RUN_FAILED")) == n
        later(app, 11.0)
        feed_frame(app, sc, 0)  # switched on at the frame's start, fails in it again
        assert len(named(app, "MODEL_RUN_FAILED")) == n + 1 and "fire_detect" in app.pipeline.disabled
    assert len(named(app, "MODEL_ENABLED")) == 3 and app.counts["models_auto_enabled"] == 3
    assert [m.split("; ")[-1].split(" in ")[0] for m in named(app, "MODEL_DISABLED")] == [
        "automatic retry 1 of 3", "automatic retry 2 of 3", "automatic retry 3 of 3",
        "its 3 automatic retries used: off until ENABLE_MODEL"]
    assert app.ops_state.model_recovery["fire_detect"] == {"retries": 3, "retry_at_s": None}

    for fid in (0, 3):
        later(app, 100_000.0)
        app.retry_models()
        feed_frame(app, sc, fid)
    assert "fire_detect" in app.pipeline.disabled and app.counts["models_auto_enabled"] == 3
    assert len(named(app, "MODEL_RUN_FAILED")) == 4  # not called again
    app.status(force=True)
    status = json.loads((app.run_dir / "flight.status.json").read_text())
    assert status["disabled"] == ["fire_detect"] and status["models_auto_enabled"] == 3
    assert status["model_recovery"] == {"fire_detect": {"retries": 3, "retry_at_s": None}}

    ground = Ground(app, key)
    assert "automatic retries reset, 3 used" in ground("ENABLE_MODEL", model="fire_detect")
    assert "fire_detect" not in app.pipeline.disabled and "fire_detect" not in app.ops_state.model_recovery
    assert named(app, "MODEL_ENABLED")[-1] == "model fire_detect enabled"
    feed_frame(app, sc, 0)  # still failing: retried again, from 1
    assert "automatic retry 1 of 3 in 300 s" in named(app, "MODEL_DISABLED")[-1]
    later(app, 301.0)
    app.retry_models()
    assert "fire_detect" not in app.pipeline.disabled and app.counts["models_auto_enabled"] == 4
    assert app.counts["frames_processed"] == 10 and app.counts["frames_rejected"] == 0
    check_products(app)


def test_zero_retries_keeps_the_former_behaviour(flight):
    make, _ = flight
    app, sc = make([FAIL_FIRE, "ops.model_retries=0"])
    feed_frame(app, sc, 0)
    assert "off until ENABLE_MODEL (ops.model_retries = 0)" in named(app, "MODEL_DISABLED")[-1]
    later(app, 100_000.0)
    app.retry_models()
    feed_frame(app, sc, 0)
    assert "fire_detect" in app.pipeline.disabled and app.counts["models_auto_enabled"] == 0
    assert app.ops_state.model_recovery == {} and len(named(app, "MODEL_RUN_FAILED")) == 1


# --- (3) a commanded disable is the ground's decision -----------------------------------------------------------------


def test_a_commanded_disable_is_never_re_enabled_automatically(flight):
    """ship_detect switched off by DISABLE_MODEL and fire_detect by a fault, side by side: after the
    cool-down fire_detect is back, ship_detect is not. Then fire_detect fails again and, while its
    retry is pending, the ground sends DISABLE_MODEL for it: the pending retry is cancelled (said in
    the report and a MODEL_DISABLED event), and it stays off however long the wait, as ship_detect,
    across a restart too, until ENABLE_MODEL."""
    make, key = flight
    app, sc = make([FAIL_FIRE])
    ground = Ground(app, key)
    assert ground("DISABLE_MODEL", model="ship_detect") == "ship_detect disabled"
    feed_frame(app, sc, 0)
    assert app.pipeline.disabled == {"ship_detect", "fire_detect"}
    app.faults = InjectedFaults()
    later(app, 301.0)
    feed_frame(app, sc, 7)
    assert fires(app, 7) and app.pipeline.disabled == {"ship_detect"}
    assert app.counts["models_auto_enabled"] == 1

    app.faults = InjectedFaults(fail_model="fire_detect")
    feed_frame(app, sc, 0)
    assert "automatic retry 2 of 3" in named(app, "MODEL_DISABLED")[-1]
    assert ground("DISABLE_MODEL", model="fire_detect") == "fire_detect disabled (automatic retry cancelled)"
    assert named(app, "MODEL_DISABLED")[-1] == "model fire_detect disabled: commanded (its automatic retry cancelled)"
    seen = len(fires(app, 7))
    for _ in range(3):
        later(app, 100_000.0)
        app.retry_models()
        feed_frame(app, sc, 7)
    assert app.pipeline.disabled == {"ship_detect", "fire_detect"} and app.counts["models_auto_enabled"] == 1
    assert len(fires(app, 7)) == seen
    app.store.close()
    again, _ = make([FAIL_FIRE])  # restarted: still the ground's decision
    later(again, 100_000.0)
    again.retry_models()
    feed_frame(again, sc, 7)
    assert again.pipeline.disabled == {"ship_detect", "fire_detect"} and again.counts["models_auto_enabled"] == 0
    assert "ship_detect" not in again.ops_state.model_recovery and "fire_detect" not in again.ops_state.model_recovery


# --- (4) the configuration -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value, allowed", [
    ("model_retry_s", "-1.0", "must be in"),
    ("model_retry_s", "0.0", "must be in"),
    ("model_retry_s", "-0.0", "must be in"),
    ("model_retry_s", "1e8", "must be in"),
    ("model_retry_s", "inf", "must be in"),
    ("model_retry_s", "-inf", "must be in"),
    ("model_retry_s", "nan", "NaN"),
    ("model_retry_s", str(2**63), "must be in"),
    ("model_retry_s", "1" + "0" * 400, "too large"),
    ("model_retry_s", '"300"', "must be float"),
    ("model_retry_s", "true", "must be float"),
    ("model_retry_s", "[300.0]", "must be float"),
    ("model_retry_s", "{s = 300.0}", "must be float"),
    ("model_retries", "-1", "must be in"),
    ("model_retries", "101", "must be in"),
    ("model_retries", str(2**63), "must be in"),
    ("model_retries", str(-(2**63)), "must be in"),
    ("model_retries", "3.0", "must be int"),
    ("model_retries", "nan", "must be int"),
    ("model_retries", '"3"', "must be int"),
    ("model_retries", "true", "must be int"),
    ("model_retries", "[3]", "must be int"),
    ("model_retries", "{n = {n = 3}}", "must be int"),
])
def test_the_retry_settings_refuse_hostile_values_naming_the_key(tmp_path, key, value, allowed):
    """Each bad value is a ConfigError naming ops.<key> and what is allowed, from a --set override
    and from a scenario file alike (never 'unknown key', never another exception)."""
    with pytest.raises(ConfigError) as err:
        load_scenario(None, [f"ops.{key}={value}"])
    assert err.value.key == f"ops.{key}" and allowed in str(err.value) and "unknown key" not in str(err.value)
    f = tmp_path / "s.toml"
    f.write_text(f"[ops]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(f)
    assert err.value.key == f"ops.{key}" and allowed in str(err.value)


def test_the_retry_settings_take_sane_values():
    ops = load_scenario(None).ops
    assert (ops.model_retry_s, ops.model_retries) == (300.0, 3)
    ops = load_scenario(None, ["ops.model_retry_s=1", "ops.model_retries=0"]).ops
    assert ops.model_retry_s == 1.0 and isinstance(ops.model_retry_s, float) and ops.model_retries == 0
    ops = load_scenario(None, ["ops.model_retry_s=1e7", "ops.model_retries=100"]).ops
    assert (ops.model_retry_s, ops.model_retries) == (1e7, 100)


# --- (5) across a restart ---------------------------------------------------------------------------------------------


def test_the_retry_state_survives_a_restart(flight, tmp_path):
    """The pending retry and the retries used are in ops_state.json with the disabled list: a
    flight restarted while fire_detect waits for its retry still retries it after the cool-down
    and goes on counting, and one restarted after its retries are used up keeps it off. The
    restarted flight's mission clock is 5,000 s behind the one that scheduled the retry (a clock
    started again from another start): the retry is then due one cool-down after the restart, not
    5,000 s later."""
    make, _ = flight
    app, sc = make([FAIL_FIRE])
    later(app, 5000.0)
    feed_frame(app, sc, 0)
    scheduled_s = app.clock.now_s() + 300.0
    app.store.close()

    again, _ = make([FAIL_FIRE])  # its clock: about 1000 s; the retry was set for about 6300 s
    assert again.pipeline.disabled == {"fire_detect"}
    again.retry_models()
    later(again, 290.0)
    feed_frame(again, sc, 3)
    assert "fire_detect" in again.pipeline.disabled and again.counts["models_auto_enabled"] == 0
    later(again, 11.0)
    feed_frame(again, sc, 0)  # on again at the frame's start (retry 1), fails again
    assert again.counts["models_auto_enabled"] == 1 and "fire_detect" in again.pipeline.disabled
    assert "automatic retry 2 of 3" in named(again, "MODEL_DISABLED")[-1]
    saved = json.loads((tmp_path / "ops_state.json").read_text())
    assert saved["disabled"] == ["fire_detect"] and saved["model_recovery"]["fire_detect"]["retries"] == 1
    assert saved["model_recovery"]["fire_detect"]["retry_at_s"] < scheduled_s - 4000
    for _ in range(2):  # retries 2 and 3, each failing again
        later(again, 301.0)
        feed_frame(again, sc, 0)
    assert again.counts["models_auto_enabled"] == 3
    assert "its 3 automatic retries used" in named(again, "MODEL_DISABLED")[-1]
    again.store.close()

    third, _ = make([FAIL_FIRE])
    assert third.pipeline.disabled == {"fire_detect"}
    failed = len(named(third, "MODEL_RUN_FAILED"))  # one store for the three: the earlier runs' events too
    later(third, 100_000.0)
    third.retry_models()
    feed_frame(third, sc, 0)
    assert third.pipeline.disabled == {"fire_detect"} and third.counts["models_auto_enabled"] == 0
    assert len(named(third, "MODEL_RUN_FAILED")) == failed  # not called
    assert third.ops_state.model_recovery["fire_detect"] == {"retries": 3, "retry_at_s": None}


def test_an_ops_state_file_of_the_previous_version_still_loads(flight, tmp_path):
    """ops_state.json as the previous version wrote it (no model_recovery): it loads, and a
    detector it lists as disabled stays off until ENABLE_MODEL, as it did (the previous version did
    not record why it was switched off, so it is taken as the ground's decision)."""
    make, _ = flight
    app, sc = make()
    app.ops_state.disabled = ["fire_detect"]
    app.ops_state.last_counter = 7
    app.ops_state.save()
    app.store.close()
    state = json.loads((tmp_path / "ops_state.json").read_text())
    del state["model_recovery"]
    (tmp_path / "ops_state.json").write_text(json.dumps(state))
    again, _ = make()
    assert again.ops_state.restored is None and again.ops_state.last_counter == 7
    assert again.pipeline.disabled == {"fire_detect"} and again.ops_state.model_recovery == {}
    later(again, 100_000.0)
    again.retry_models()
    feed_frame(again, sc, 7)
    assert again.pipeline.disabled == {"fire_detect"} and not fires(again, 7)


@pytest.mark.parametrize("recovery", [
    [], "x", {"fire_detect": []}, {"fire_detect": {"retries": 1}},
    {"fire_detect": {"retries": 1, "retry_at_s": None, "more": 1}},
    {"fire_detect": {"retries": -1, "retry_at_s": None}}, {"fire_detect": {"retries": 2**63, "retry_at_s": None}},
    {"fire_detect": {"retries": True, "retry_at_s": None}}, {"fire_detect": {"retries": 1.5, "retry_at_s": None}},
    {"fire_detect": {"retries": 1, "retry_at_s": "soon"}}, {"fire_detect": {"retries": 1, "retry_at_s": 1e300}},
    {"fire_detect": {"retries": 1, "retry_at_s": [1]}},
])
def test_a_damaged_retry_record_makes_the_file_unreadable_and_the_previous_copy_is_used(flight, tmp_path, recovery):
    """A model_recovery field that is not what the flight writes is a damaged file, like any other
    damaged field: the previous copy is used (STATE_RESTORED), never a crash at start or later."""
    make, _ = flight
    app, _ = make()
    app.ops_state.last_counter = 5
    app.ops_state.save()
    app.ops_state.last_counter = 6
    app.ops_state.save()
    app.store.close()
    state = json.loads((tmp_path / "ops_state.json").read_text())
    state["model_recovery"] = recovery
    (tmp_path / "ops_state.json").write_text(json.dumps(state))
    again, _ = make()
    assert again.ops_state.restored and again.ops_state.last_counter == 5
    assert named(again, "STATE_RESTORED")


# --- (6) not loadable at its retry time -------------------------------------------------------------------------------
#
# A detector is switched on again by loading it only when the flight does not hold it already: every
# enabled cascade model is loaded at start-up, disabled or not, and one that fails verification there
# is rolled back to an older version or the factory copy, installed again from the package. So the
# detector is missing from the pipeline at its retry only after a start-up at which its stored copy
# failed verification and no copy could be installed in its place: here the models folder's file
# system has gone read-only (as a flash file system does after errors), with the active version's
# ONNX file damaged. The retry then fails to load it (retry_models' `except ModelUpdateError`).


@pytest.fixture
def models_partition(tmp_path):
    """STATE/models on a file system of its own (a 4 MiB tmpfs, the rest of the state folder stays
    where it is), so that it can be made read-only. Mounting needs root or CAP_SYS_ADMIN: skipped
    without, as tests/test_store_faults.py's tmpfs."""
    mnt = tmp_path / "models_fs"
    mnt.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here (needs root or CAP_SYS_ADMIN): {r.stderr.strip()}")
    (tmp_path / "models").symlink_to(mnt)  # the flight's models folder (state folder = tmp_path)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def remount(mnt, mode: str) -> None:
    r = subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def restart_unloadable(make, mnt, damage: str):
    """fire_detect fails at run time (retry 1 of 3 due 300 s later); its stored ONNX file is then
    damaged, the models file system goes read-only, and the flight restarts (fault gone). Returns
    the restarted app, its scenario, fire_detect's active ONNX path and its good bytes."""
    app, sc = make([FAIL_FIRE])
    feed_frame(app, sc, 0)
    assert "fire_detect" in app.pipeline.disabled and "automatic retry 1 of 3" in named(app, "MODEL_DISABLED")[-1]
    onnx_file = mnt / app.model_store.active["fire_detect"].folder / "fire_detect.onnx"
    good = onnx_file.read_bytes()
    if damage == "truncated":
        onnx_file.write_bytes(good[: len(good) // 2])
    else:
        onnx_file.unlink()
    app.store.close()
    remount(mnt, "ro")

    again, sc = make()
    corrupted, refused = named(again, "MODEL_CORRUPTED")[-1], named(again, "MODEL_REFUSED")[-1]
    assert corrupted.startswith("model fire_detect ") and "load refused" in corrupted, corrupted
    assert refused.startswith("model fire_detect refused: rollback impossible") and "Read-only file system" in refused
    assert "fire_detect" not in again.pipeline.models and again.pipeline.disabled == {"fire_detect"}
    r = again.ops_state.model_recovery["fire_detect"]
    assert r["retries"] == 0 and r["retry_at_s"] == pytest.approx(again.clock.now_s() + 300.0, abs=5.0)
    return again, sc, onnx_file, good


def saved_recovery(tmp_path) -> tuple[list, dict]:
    saved = json.loads((tmp_path / "ops_state.json").read_text())
    return saved["disabled"], saved["model_recovery"]


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_detector_not_loadable_at_its_retry_stays_off_and_a_later_retry_loads_it_once_its_file_is_good(
        models_partition, flight, tmp_path, damage):
    """The restarted flight runs without fire_detect. Its retry, due 300 s (mission time) after the
    fault, cannot load it: MODEL_REFUSED (automatic retry: why) and MODEL_DISABLED (not loadable;
    retry 2 of 3 in 300 s), one error counted, the retry used and the next one due 300 s later,
    all saved in ops_state.json; frames go on being processed, without fire_detect. With the file
    good again (the file system writable, the ONNX bytes rewritten), the next retry, 300 s later,
    loads it: MODEL_ENABLED, and frame 7's fire is found."""
    make, _ = flight
    again, sc, onnx_file, good = restart_unloadable(make, models_partition, damage)
    errors = again.counts["errors"]

    later(again, 290.0)  # the retry is not due yet
    feed_frame(again, sc, 7)
    assert not [m for m in named(again, "MODEL_REFUSED") if "automatic retry" in m]
    assert again.counts["frames_processed"] == 1 and not fires(again, 7)

    later(again, 11.0)
    feed_frame(again, sc, 7)  # the retry at the frame's start fails to load it, and to repair it; the frame goes on
    assert again.counts["frames_processed"] == 2 and again.counts["frames_rejected"] == 0 and not fires(again, 7)
    assert named(again, "MODEL_CORRUPTED")[-1].startswith("model fire_detect ")  # the stored copy, as at start-up
    repair, refused = named(again, "MODEL_REFUSED")[-2:]
    assert repair.startswith("model fire_detect refused: rollback impossible") and "Read-only file system" in repair
    assert refused.startswith("model fire_detect refused: automatic retry: load refused: "), refused
    disabled = named(again, "MODEL_DISABLED")[-1]
    assert disabled.startswith("model fire_detect disabled: not loadable; automatic retry 2 of 3 in 300 s at 2026-")
    assert again.counts["errors"] == errors + 1 and again.counts["models_auto_enabled"] == 0
    assert again.pipeline.disabled == {"fire_detect"} and "fire_detect" not in again.pipeline.models
    assert disabled_channel(again) == 1
    r = again.ops_state.model_recovery["fire_detect"]
    assert r["retries"] == 1 and r["retry_at_s"] == pytest.approx(again.clock.now_s() + 300.0, abs=5.0)
    assert saved_recovery(tmp_path) == (["fire_detect"], {"fire_detect": r})

    remount(models_partition, "rw")  # the file good again
    onnx_file.write_bytes(good)
    later(again, 290.0)
    feed_frame(again, sc, 7)
    assert "fire_detect" in again.pipeline.disabled and len(named(again, "MODEL_REFUSED")) == 3

    later(again, 11.0)
    feed_frame(again, sc, 7)  # retry 2 loads it at the frame's start
    assert fires(again, 7), "fire_detect found nothing after its retry loaded it"
    (enabled,) = named(again, "MODEL_ENABLED")
    assert enabled == "model fire_detect (automatic retry 2 of 3, 300 s after its fault) enabled", enabled
    assert "fire_detect" in again.pipeline.models and again.pipeline.disabled == set()
    assert again.counts["models_auto_enabled"] == 1 and again.counts["errors"] == errors + 1
    assert again.counts["frames_processed"] == 4 and disabled_channel(again) == 0
    assert saved_recovery(tmp_path) == ([], {"fire_detect": {"retries": 2, "retry_at_s": None}})
    check_products(again)


def test_a_detector_never_loadable_uses_its_retries_then_stays_off_until_the_ground_repairs_it(
        models_partition, flight, tmp_path):
    """Each of the three retries fails to load it (retries 2 and 3 scheduled, then none: off until
    ENABLE_MODEL), each one an error, saved each time; no retry after, however long the wait, and
    the frames go on. ENABLE_MODEL cannot load it either (FAILED, saying why). With the file system
    writable again, ROLLBACK_MODEL installs the factory copy again, and ENABLE_MODEL switches it on."""
    make, key = flight
    again, sc, _, _ = restart_unloadable(make, models_partition, "truncated")
    errors = again.counts["errors"]
    for n in (1, 2, 3):
        later(again, 301.0)
        feed_frame(again, sc, 3)
        assert again.ops_state.model_recovery["fire_detect"]["retries"] == n
        assert saved_recovery(tmp_path)[1]["fire_detect"] == again.ops_state.model_recovery["fire_detect"]
    refused = [m for m in named(again, "MODEL_REFUSED") if "automatic retry" in m]
    assert len(refused) == 3 and again.counts["errors"] == errors + 3
    assert [m.split("; ")[-1].split(" in ")[0] for m in named(again, "MODEL_DISABLED")[-3:]] == [
        "automatic retry 2 of 3", "automatic retry 3 of 3", "its 3 automatic retries used: off until ENABLE_MODEL"]
    assert saved_recovery(tmp_path) == (["fire_detect"], {"fire_detect": {"retries": 3, "retry_at_s": None}})

    for fid in (0, 7):
        later(again, 100_000.0)
        again.retry_models()
        feed_frame(again, sc, fid)
    assert len([m for m in named(again, "MODEL_REFUSED") if "automatic retry" in m]) == 3
    assert again.counts["errors"] == errors + 3 and again.counts["models_auto_enabled"] == 0
    assert again.counts["frames_processed"] == 5 and again.pipeline.disabled == {"fire_detect"}

    ground = Ground(again, key)
    ground.counter += 1
    again.on_uplink(encode_command(key, ground.counter, int(again.clock.now_s()), "ENABLE_MODEL", {"model": "fire_detect"}))
    report = last_report(again)
    assert report.report == 8 and "cannot load fire_detect: load refused" in report.message, report.message  # FAILED
    remount(models_partition, "rw")
    assert ground("ROLLBACK_MODEL", model="fire_detect").startswith("fire_detect ")
    assert ground("ENABLE_MODEL", model="fire_detect") == "fire_detect enabled (automatic retries reset, 3 used)"
    feed_frame(again, sc, 7)
    assert fires(again, 7) and again.pipeline.disabled == set() and again.ops_state.model_recovery == {}
    check_products(again)


def test_a_retry_repairs_a_damaged_detector_as_start_up_does_once_the_storage_writes_again(
        models_partition, flight, tmp_path):
    """The start-up repair failed (the models' file system read-only). By the retry, 300 s later,
    it writes again but the stored copy is still damaged: the retry rolls it back (the factory
    copy installed again, as at start-up) and switches it on, without the ground. Before, the
    retry only loaded the damaged copy again: all three retries failed, off until the ground sent
    ROLLBACK_MODEL and ENABLE_MODEL."""
    make, _ = flight
    again, sc, onnx_file, good = restart_unloadable(make, models_partition, "truncated")
    errors, faults = again.counts["errors"], again.counts["models_rolled_back"]
    remount(models_partition, "rw")  # writable again; the file still cut in half
    assert onnx_file.read_bytes() != good

    later(again, 301.0)
    feed_frame(again, sc, 7)  # the retry at the frame's start: load fails, rollback installs the factory copy
    assert fires(again, 7), "fire_detect found nothing after its retry repaired it"
    (rolled,) = named(again, "MODEL_ROLLED_BACK")
    assert rolled.startswith("model fire_detect rolled back ") and "(factory copy)" in rolled, rolled
    (enabled,) = named(again, "MODEL_ENABLED")
    assert enabled == "model fire_detect (automatic retry 1 of 3, 300 s after its fault) enabled", enabled
    assert again.pipeline.disabled == set() and "fire_detect" in again.pipeline.models
    assert again.counts["models_auto_enabled"] == 1 and again.counts["models_rolled_back"] == faults + 1
    assert again.counts["errors"] == errors  # repaired: not a failed retry
    assert not [m for m in named(again, "MODEL_REFUSED") if "automatic retry" in m]
    assert saved_recovery(tmp_path) == ([], {"fire_detect": {"retries": 1, "retry_at_s": None}})
    check_products(again)
