"""Flight operations end to end: the whole system as real processes (payload_sim.hil), commanded
through the link by ground_link.commander, with faults injected from the scenario. Each test shows
the expected event, mode and recovery, and records its figures for `python -m flight.ops_report`.

256 x 256 frames, one per wall second (clock rate 10, a capture every 10 scenario seconds)."""

import hashlib
import json
import os
import time

import zmq
from e2e_util import wait_for
from ops_util import OPS_BASE, Run, bundle, query, record_figures

from flight.commands import encode_command
from flight.dictionary import EVENTS, TELEMETRY_BY_NAME, Mode, ReportKind
from flight.model_update import upload_id_of, version_number
from ground_link.commander import Commander

EV = {name: e.id for name, e in EVENTS.items()}
CH = {name: c.id for name, c in TELEMETRY_BY_NAME.items()}


def summaries(run_dir) -> list[int]:
    return sorted(r[0] for r in query(run_dir, "SELECT frame_id FROM products WHERE kind = 'FrameSummary'"))


def truth(run_dir) -> list[int]:
    return [json.loads(line)["frame_id"] for line in (run_dir / "truth.jsonl").read_text().splitlines()]


def test_commands_over_a_curve_link_forged_replayed_and_unknown_peers_refused(tmp_path):
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    # refused by design: 5 forged, 3 replayed, 1 late; failed: the quicklook of a frame not held
    with Run(run_dir, OPS_BASE + ["scenario.frames=12", "security.curve=true"], expect=["commands_refused=10"]) as run:
        run.wait_status(lambda s: s.get("frames_processed", 0) >= 2, 40, "two frames")
        c = run.commander
        assert c.run("SET_PARAM", param=1, value=0.9)["kind"] == "COMPLETED"
        r = c.run("REQUEST_QUICKLOOK", frame_id=0xFFFFFFFF)
        assert r["kind"] == "COMPLETED", r
        assert c.run("REQUEST_CHIP", frame_id=1, row_px=128, col_px=128, size_px=64)["kind"] == "COMPLETED"
        assert c.run("REQUEST_QUICKLOOK", frame_id=999)["kind"] == "FAILED"  # not a recent frame
        # forged: signed with another key; replayed: an accepted command sent again
        forger = Commander.from_run_dir(run_dir, key=os.urandom(32))
        forged = [forger.send("SET_MODE", mode=2) for _ in range(5)]
        forger.close()
        replayed = list(c.sent)[:3]
        for counter in replayed:
            c.send_raw(c.sent[counter])
        late = c.next_counter()  # out of window: stamped an hour of scenario time ahead (a stored attack)
        c.send_raw(encode_command(c.key, late, c.issued_s() + 3600, "SET_MODE", {"mode": 2}))
        for counter in forged + [late]:
            assert c.wait(counter)["kind"] == "REJECTED"
        # an unknown peer on the uplink (no CURVE certificate) never reaches the link at all
        # (even with the mission key: these are correctly signed)
        ctx = zmq.Context()
        rogue = ctx.socket(zmq.PUSH)
        rogue.connect(c.sc.network.ground_in)
        rogue_counters = [c.next_counter() for _ in range(5)]
        for counter in rogue_counters:
            try:
                rogue.send(encode_command(c.key, counter, c.issued_s(), "SET_MODE", {"mode": 2}), zmq.NOBLOCK)
            except zmq.Again:
                pass
        time.sleep(0.5)
        assert c.run("NOOP")["kind"] == "COMPLETED"  # sent after them on the same link: they would be in
        rogue.close(0)
        ctx.term()
        assert all(not c.reports(k) for k in rogue_counters)
        c.run("DUMP_TELEMETRY")
        code = run.finish(60)
    assert code == 0, run.err[-2000:]
    st = json.loads((run_dir / "flight.status.json").read_text())
    assert st["mode"] == "NOMINAL"  # none of the forged, replayed, late or rogue SET_MODE SAFE ran
    assert (st["commands_forged"], st["commands_replayed"], st["commands_out_of_window"]) == (5, 3, 1)
    asked = [json.loads(f)["class_id"] for (f,) in query(run_dir, "SELECT fields FROM products WHERE kind = 'ImageChip'")]
    assert sorted(k for k in asked if k in (0, 255)) == [0, 255]  # the chip and the quicklook came down as images
    assert summaries(run_dir) == truth(run_dir)  # nothing lost
    auth_events = [m for e, m in run.events() if e == EV["COMMAND_AUTH_FAILED"]]
    assert len(auth_events) == 9
    record_figures("commands_e2e", fault="forged x5, replayed x3, out of window x1, unknown CURVE peer x5",
                   event="COMMAND_AUTH_FAILED x9 + REJECTED reports", mode="NOMINAL throughout",
                   recovery="n/a: nothing executed", lost=0, wall_s=round(time.monotonic() - t0, 1))


def test_model_upload_resumes_after_the_link_drops_mid_upload(tmp_path):
    run_dir = tmp_path / "run"
    data = bundle("1.0.1")
    chunk = 512
    chunks = -(-len(data) // chunk)
    t0 = time.monotonic()
    # contact is lost from t = 60 s to 110 s (scenario), in the middle of the upload
    overrides = OPS_BASE + ["scenario.frames=20", 'link.contacts="schedule"', "link.schedule=[[0.0, 60.0], [110.0, 1000000.0]]",
                            "flight.retransmit_s=0.5"]
    with Run(run_dir, overrides, expect=["retransmit_fraction<=1"]) as run:  # packets sent into the gap are re-sent
        run.wait_status(lambda s: s.get("frames_processed", 0) >= 1, 40, "a frame")
        c = run.commander
        sha = hashlib.sha256(data).digest()
        r = c.run("UPLOAD_BEGIN", model="cloud_screen", size_bytes=len(data), chunk_bytes=chunk, sha256=sha)
        assert r["kind"] == "COMPLETED", r
        uid = upload_id_of(sha)
        half = chunks // 2
        for i in range(half):
            c.send("UPLOAD_CHUNK", ack_flags=0, upload_id=uid, index=i, data=data[i * chunk : (i + 1) * chunk])
        run.wait_status(lambda s: s.get("uploads", {}).get(f"{uid:08x}", 0) == half, 20, "the first half on board")
        run.wait_status(lambda s: s.get("link_up") is False, 30, "loss of signal", name="channel")
        dropped_before = run.status("channel")["up_dropped_outside_contact"]
        for i in range(half, chunks):  # sent into the gap: lost
            c.send("UPLOAD_CHUNK", ack_flags=0, upload_id=uid, index=i, data=data[i * chunk : (i + 1) * chunk])
        wait_for(lambda: run.status("channel")["up_dropped_outside_contact"] - dropped_before >= chunks - half, 10,
                 "the chunks to be dropped outside contact")
        assert run.status()["uploads"][f"{uid:08x}"] == half
        run.wait_status(lambda s: s.get("link_up") is True, 30, "acquisition of signal", name="channel")
        final = c.upload(data, chunk_bytes=chunk)  # resumes: only the missing chunks go up again
        assert final["kind"] == "COMPLETED", final
        run.wait_status(lambda s: s.get("models", {}).get("cloud_screen") == "1.0.1", 10, "1.0.1 in use")
        c.run("DUMP_TELEMETRY")
        wait_for(lambda: version_number("1.0.1") in run.telemetry(CH["model_cloud_screen_version"]), 20,
                 "the new version in housekeeping")
        code = run.finish(60)
    assert code == 0, run.err[-2000:]
    msgs = [m for e, m in run.events() if e == EV["UPLOAD_PROGRESS"]]
    assert any("begun" in m for m in msgs) and any(f"{half}/{chunks} chunks resumed" in m for m in msgs), msgs
    assert any(e == EV["MODEL_ACTIVATED"] and "1.0.1" in m for e, m in run.events())
    assert summaries(run_dir) == truth(run_dir)  # nothing lost across the gap
    record_figures("upload_link_drop", fault=f"link lost mid-upload ({chunks - half} of {chunks} chunks dropped)",
                   event="UPLOAD_PROGRESS resumed, MODEL_ACTIVATED", mode="NOMINAL",
                   recovery="upload resumed after AOS, only missing chunks re-sent; 1.0.1 in telemetry", lost=0,
                   wall_s=round(time.monotonic() - t0, 1))


def test_model_file_corrupted_on_disk_is_rolled_back_then_recovered_by_command(tmp_path):
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    overrides = OPS_BASE + ["scenario.frames=10", 'faults.corrupt_model="cloud_screen"', "faults.corrupt_model_at_s=25.0",
                            "ops.model_scrub_period_s=5.0"]
    with Run(run_dir, overrides) as run:
        run.wait_event(EV["MODEL_CORRUPTED"], 40, "cloud_screen")
        run.wait_event(EV["MODEL_ROLLED_BACK"], 10, "factory copy")
        st = run.wait_status(lambda s: s.get("mode") == "DEGRADED", 10, "DEGRADED")
        assert st["models"]["cloud_screen"]
        assert run.commander.run("SET_MODE", mode=0)["kind"] == "COMPLETED"
        run.wait_status(lambda s: s.get("mode") == "NOMINAL", 10, "NOMINAL again")
        code = run.finish(60)
    assert code == 0, run.err[-2000:]
    assert (run_dir / "ops_faults.json").exists()
    modes = [m for e, m in run.events() if e == EV["MODE_CHANGED"]]
    assert any("NOMINAL -> DEGRADED" in m for m in modes) and any("DEGRADED -> NOMINAL" in m for m in modes)
    assert summaries(run_dir) == truth(run_dir)  # every frame processed, before and after
    record_figures("model_corrupted_on_disk", fault="one byte of the active ONNX file flipped at t=25 s",
                   event="MODEL_CORRUPTED, MODEL_ROLLED_BACK (factory copy)", mode="NOMINAL -> DEGRADED",
                   recovery="SET_MODE NOMINAL", lost=0, wall_s=round(time.monotonic() - t0, 1))


def test_a_stuck_stage_is_aborted_by_the_watchdog_and_recovered_by_command(tmp_path):
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    overrides = OPS_BASE + ["scenario.frames=8", 'faults.slow_model="cloud_screen"', "faults.slow_model_s=5.0",
                            "faults.slow_frames=[2]", "ops.watchdog_limit_s=0.5"]
    with Run(run_dir, overrides, expect=["frames_rejected=1"]) as run:
        msg = run.wait_event(EV["STAGE_WATCHDOG"], 40)
        assert "screen" in msg and "frame 2" in msg
        run.wait_status(lambda s: s.get("mode") == "DEGRADED", 10, "DEGRADED")
        assert run.commander.run("SET_MODE", mode=0)["kind"] == "COMPLETED"
        code = run.finish(60)
    assert code == 0, run.err[-2000:]
    st = json.loads((run_dir / "flight.status.json").read_text())
    assert st["watchdog_trips"] == 1 and st["frames_rejected"] == 1 and st["frames_processed"] == 7
    assert st["mode"] == "NOMINAL"
    rejected = [m for e, m in run.events() if e == EV["FRAME_REJECTED"]]
    assert rejected == ["frame 2 rejected: stage screen aborted by the watchdog"]
    assert summaries(run_dir) == [f for f in truth(run_dir) if f != 2]  # the rest went on
    record_figures("stage_stuck", fault="cloud screen stuck 5 s on frame 2 (limit 0.5 s)",
                   event="STAGE_WATCHDOG, FRAME_REJECTED (frame 2)", mode="NOMINAL -> DEGRADED",
                   recovery="SET_MODE NOMINAL; frames 3-7 processed", lost="1 frame, rejected and reported",
                   wall_s=round(time.monotonic() - t0, 1))


def test_a_full_store_during_a_long_gap_degrades_and_recovers(tmp_path):
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    # a 4 KiB store, housekeeping (about 290 bytes) every scenario second, and no contact from t = 15 s to
    # 95 s: each housekeeping report evicts an older one and adds a STORE_EVICTED event, so after about 45
    # of them only events and frame summaries are left and housekeeping is refused
    overrides = OPS_BASE + ["scenario.frames=14", "flight.store_max_bytes=4096", "flight.housekeeping_period_s=1.0",
                            'link.contacts="schedule"', "link.schedule=[[0.0, 15.0], [95.0, 1000000.0]]",
                            "flight.retransmit_s=0.5"]
    # a designed loss: evicted products are counted as lost, and the gap costs re-sends
    with Run(run_dir, overrides, expect=["products_lost>=1", "retransmit_fraction<=1"]) as run:
        run.wait_status(lambda s: s.get("products_refused", 0) > 0, 40, "a refused product")
        run.wait_status(lambda s: s.get("mode") == "DEGRADED", 10, "DEGRADED")
        run.wait_status(lambda s: s.get("link_up") is True and s.get("scenario_s", 0) > 95, 30, "AOS", name="channel")
        run.wait_event(EV["STORE_FULL"], 30)
        c = run.commander
        assert c.run("SET_PARAM", param=8, value=30.0)["kind"] == "COMPLETED"  # housekeeping back to every 30 s
        assert c.run("CLEAR_STORE", min_priority=4)["kind"] == "COMPLETED"  # telemetry backlog is expendable
        assert c.run("SET_MODE", mode=0)["kind"] == "COMPLETED"
        code = run.finish(60)
    assert code == 0, run.err[-2000:]
    st = json.loads((run_dir / "flight.status.json").read_text())
    assert st["mode"] == "NOMINAL" and st["products_refused"] > 0
    got = summaries(run_dir)
    lost = sorted(set(truth(run_dir)) - set(got))
    evicted_events = sum(1 for e, _ in run.events() if e == EV["STORE_EVICTED"])
    record_figures("store_full", fault="4 KiB store, 80 s without contact, housekeeping every second",
                   event=f"STORE_EVICTED x{evicted_events} ({st['products_evicted']} evicted in all), STORE_FULL "
                         f"({st['products_refused']} refused)",
                   mode="NOMINAL -> DEGRADED", recovery="AOS drains it; SET_PARAM housekeeping 30 s, CLEAR_STORE 4, SET_MODE NOMINAL",
                   lost=f"{len(lost)} frame summaries, evicted and counted" if lost else 0,
                   wall_s=round(time.monotonic() - t0, 1))
    # by the store's policy a full store evicts the least important oldest products (housekeeping first,
    # then summaries, which rank below events); every loss is an eviction that was counted
    assert len(lost) <= st["products_evicted"]
    assert frames_after_gap_all_archived(run_dir, got)


def frames_after_gap_all_archived(run_dir, got: list[int]) -> bool:
    """Frames captured after contact came back (t >= 95 s, frame 10 on) all reached the archive."""
    return all(f in got for f in truth(run_dir) if f >= 10)


def test_flight_killed_mid_upload_resumes_and_still_refuses_replays(tmp_path):
    run_dir = tmp_path / "run"
    data = bundle("1.0.1")
    chunk = 512
    chunks = -(-len(data) // chunk)
    t0 = time.monotonic()
    overrides = OPS_BASE + ["scenario.frames=14", "faults.kill_flight_at_s=50.0", "flight.retransmit_s=0.5"]
    # a frame in progress dies with the flight; one command is replayed on purpose
    with Run(run_dir, overrides, expect=["frames_rejected>=0", "commands_refused=1", "retransmit_fraction<=1"]) as run:
        run.wait_status(lambda s: s.get("frames_processed", 0) >= 1, 40, "a frame")
        c = run.commander
        sha = hashlib.sha256(data).digest()
        r = c.run("UPLOAD_BEGIN", model="cloud_screen", size_bytes=len(data), chunk_bytes=chunk, sha256=sha)
        first, uid = r["counter"], upload_id_of(sha)
        half = chunks // 2
        for i in range(half):
            c.send("UPLOAD_CHUNK", ack_flags=0, upload_id=uid, index=i, data=data[i * chunk : (i + 1) * chunk])
        run.wait_status(lambda s: s.get("uploads", {}).get(f"{uid:08x}", 0) == half, 20, "the first half on board")
        wait_for(lambda: (run_dir / "faults.json").exists(), 30, "the flight to be killed")
        wait_for(lambda: (run_dir / "flight-restart" / "flight.status.json").exists(), 30, "the flight to restart")
        final = c.upload(data, chunk_bytes=chunk)
        assert final["kind"] == "COMPLETED", final
        c.send_raw(c.sent[first])  # a command from before the kill, replayed after it
        replay = c.wait(first, kinds={ReportKind.REJECTED})
        assert replay["reason"] == "REPLAY"
        code = run.finish(60)
    assert code == 0, run.err[-2000:]
    msgs = [m for e, m in run.events() if e == EV["UPLOAD_PROGRESS"]]
    assert any(f"{half}/{chunks} chunks resumed" in m for m in msgs), msgs
    st = json.loads((run_dir / "flight.status.json").read_text())
    assert st["models"]["cloud_screen"] == "1.0.1" and st["restarts"] == 1
    record_figures("flight_killed_mid_upload", fault=f"flight SIGKILLed at t=50 s with {half}/{chunks} chunks on board",
                   event="STARTED again, UPLOAD_PROGRESS resumed, MODEL_ACTIVATED; replay REJECTED", mode="NOMINAL",
                   recovery="restart on the same store and state; upload resumed", lost=0,
                   wall_s=round(time.monotonic() - t0, 1))
    assert Mode.NOMINAL.name == st["mode"]
