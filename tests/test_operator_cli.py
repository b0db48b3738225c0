"""The operator tools as a person types them (issue #13): names and UTC instead of codes, and a
one-line error with a non-zero exit, never a traceback, for every mistake a user can make:
ground_link.query, commander, watch and xtce (station and channel: --help)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

import ground_link.commander as commander
import ground_link.query as query
import ground_link.watch as watch
from flight.commands import parse_command
from flight.config import AlertRule
from flight.dictionary import COMMANDS, PARAMS, DetectionClass, Mode, ReportKind
from flight.products import CommandReport, Detection, Event, FrameSummary, housekeeping
from ground_link.alerts import alert_record
from ground_link.archive import Archive
from ground_link.ports import free_port

REPO = Path(__file__).resolve().parents[1]
EPOCH = "2030-01-02T03:04:05Z"  # not the default epoch: proves it comes from the run's launch.json
FIRE, SHIP = DetectionClass.FIRE, DetectionClass.SHIP
KEY_HEX = "11" * 32


def make_archive(path: Path) -> None:
    """An archive as the station writes it: detections (north and south), a summary, an event,
    housekeeping, a command report, and the alerts of the two detections."""
    a = Archive(path)
    dets = [Detection(1, 0, 100.0, FIRE, 230, 10.0, 20.0, 40.5, 49.8, 10),
            Detection(2, 2, 120.0, SHIP, 200, 11.0, 21.0, -20.0, -50.0, 10)]
    products = [*dets, FrameSummary(3, 2, 120.0, 16, 2, 0.125, 0, 1, 1, 12.0, -20.0, -50.0),
                Event(4, 130.0, 2, 1, 3, "frame 3 81% cloud >= 70%: discarded"),
                housekeeping(5, 140.0, {1: 3.0, 5: 120.5, 14: float(Mode.SAFE)}),
                CommandReport(6, 150.0, 3, 2, int(ReportKind.COMPLETED), 0, "cloud_discard_fraction = 0.8 (was 0.7)")]
    for p in products:
        a.product(p, 1000.0)
    for d in dets:
        a.alert(alert_record(d, 0, AlertRule(DetectionClass(d.class_id).name.lower(), 0.5, "warning"), 1000.0,
                             d.capture_time_s + 1.0, False))
    a.close()


def write_launch(run_dir: Path, overrides: list[str] | None = None) -> None:
    rec = {"scenario": None, "overrides": [f'scenario.epoch="{EPOCH}"', *(overrides or [])], "clock_start": time.time(),
           "run_dir": str(run_dir)}
    (run_dir / "launch.json").write_text(json.dumps(rec))


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    make_archive(d / "archive.sqlite")
    write_launch(d)
    return d


def call(main, argv, capsys) -> tuple[int, str, str]:
    """rc, stdout, stderr of a tool's main(argv), argparse exits included."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def refused(main, argv, capsys, *words) -> str:
    """The tool refuses with one line holding every word, exit 2, no traceback."""
    rc, out, err = call(main, argv, capsys)
    assert rc == 2, (argv, rc, out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
    for w in words:
        assert w in err, (argv, w, err)
    return err


# --- query: names and UTC ----------------------------------------------------------------------------


def test_query_prints_names_and_utc_from_the_runs_epoch(run_dir, capsys):
    rc, out, err = call(query.main, [str(run_dir), "--kind", "all"], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 6 and "6 all" in err and "scenario seconds" not in err
    fire = next(line for line in lines if "Detection" in line and "class=fire" in line)
    assert fire.startswith("2030-01-02T03:05:45.000Z (t=100.0s)") and "confidence=0.90" in fire  # epoch + 100 s
    assert "class_id" not in fire and "confidence_q" not in fire
    event = next(line for line in lines if "Event" in line)
    assert "event=FRAME_DISCARDED_CLOUDY" in event and "severity=INFO" in event
    hk = next(line for line in lines if "Housekeeping" in line)
    assert "frames_captured=3" in hk and "rss_mib=120.5" in hk and "mode=SAFE" in hk
    report = next(line for line in lines if "CommandReport" in line)
    assert "command=SET_PARAM" in report and "report=COMPLETED" in report and "reason=OK" in report
    rc, out, _ = call(query.main, [str(run_dir / "archive.sqlite"), "--kind", "alerts"], capsys)
    assert rc == 0 and out.splitlines()[0].startswith("2030-01-02T03:05:45.000Z  ALERT WARNING  fire")
    rc, out, _ = call(query.main, [str(run_dir), "--kind", "housekeeping", "--json"], capsys)
    rec = json.loads(out)
    assert rec["channels"] == {"frames_captured": 3.0, "rss_mib": 120.5, "mode": 2.0}
    assert rec["utc"] == "2030-01-02T03:06:25.000Z" and rec["product_id"] == 5  # archived fields kept
    # UTC bounds and case-insensitive choices
    rc, out, _ = call(query.main, [str(run_dir), "--kind", "DETECTIONS", "--class", "SHIP",
                                   "--since", "2030-01-02T03:05:50Z", "--json"], capsys)
    assert rc == 0 and [json.loads(line)["class"] for line in out.splitlines()] == ["ship"]


def test_query_without_an_epoch_says_so_and_takes_one(tmp_path, capsys):
    archive = tmp_path / "archive.sqlite"  # no launch.json beside it
    make_archive(archive)
    rc, out, err = call(query.main, [str(archive)], capsys)
    assert rc == 0 and out.splitlines()[0].startswith("t=100.0s  Detection  class=fire")
    assert "times are scenario seconds" in err and "--epoch" in err
    rc, out, err = call(query.main, [str(archive), "--epoch", "2026-11-28T06:00:00Z"], capsys)
    assert rc == 0 and out.startswith("2026-11-28T06:01:40.000Z") and "scenario seconds" not in err
    refused(query.main, [str(archive), "--since", "2026-11-28T06:00:00Z"], capsys, "needs the scenario epoch")
    (tmp_path / "launch.json").write_text(json.dumps({"scenario": str(tmp_path / "gone.toml"), "overrides": []}))
    rc, out, err = call(query.main, [str(archive)], capsys)
    assert rc == 0 and "cannot read its scenario" in err and out.startswith("t=100.0s")


def test_query_region_takes_negative_coordinates(run_dir, capsys):
    south = "-21,-51,-19,-49"
    for argv in (["--region=" + south], ["--region", south]):
        rc, out, err = call(query.main, [str(run_dir), "--kind", "all", "--json", *argv], capsys)
        assert rc == 0, err
        assert sorted(json.loads(line)["product_id"] for line in out.splitlines()) == [2, 3]  # ship, its frame
    proc = subprocess.run([sys.executable, "-m", "ground_link.query", str(run_dir), "--region", south], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "class=ship" in proc.stdout, proc.stderr
    refused(query.main, [str(run_dir), "--region", "-30,-60,-10"], capsys, "LAT0,LON0,LAT1,LON1")
    refused(query.main, [str(run_dir), "--region", "-10,-60,-30,-40"], capsys, "LAT0 <= LAT1")
    refused(query.main, [str(run_dir), "--region", "-10,-200,10,40"], capsys, "[-180, 180]")


@pytest.mark.parametrize("argv, words", [
    ([], ["required", "archive"]),
    (["{missing}"], ["no archive at"]),
    (["{tmp}"], ["holds no archive.sqlite"]),
    (["{notdb}"], ["not a readable archive"]),
    (["{run}", "--kind", "frob"], ["invalid choice: 'frob'"]),
    (["{run}", "--class", "boat"], ["invalid choice: 'boat'"]),
    (["{run}", "--since", "yesterday"], ["scenario seconds or a UTC time"]),
    (["{run}", "--since", "nan"], ["must be finite"]),
    (["{run}", "--until=-inf"], ["must be finite"]),
    (["{run}", "--since", "1e400"], ["must be finite"]),
    (["{run}", "--region", "nan,0,1,1"], ["LAT0 <= LAT1"]),
    (["{run}", "--region", "0,0,1,inf"], ["[-180, 180]"]),
    (["{run}", "--epoch", "bogus"], ["ISO-8601"]),
    (["{run}", "--limit", "0"], [">= 1"]),
    (["{run}", "--frame", "x"], [">= 0"]),
    (["{run}", "--region"], ["expected one argument"]),
])
def test_query_user_mistakes(run_dir, tmp_path, capsys, argv, words):
    (tmp_path / "notes.txt").write_text("not a database")
    paths = {"{missing}": str(tmp_path / "nothing"), "{tmp}": str(tmp_path), "{notdb}": str(tmp_path / "notes.txt"),
             "{run}": str(run_dir)}
    refused(query.main, [paths.get(a, a) for a in argv], capsys, *words)


# --- commander ---------------------------------------------------------------------------------------


def test_commander_takes_names_in_any_case():
    assert commander.parse_args_for("set_param", ["PARAM=Cloud_Discard_Fraction", "value=0.5"]) == {
        "param": PARAMS[1].id, "value": 0.5}
    assert commander.parse_args_for("Set_Mode", ["mode=safe"]) == {"mode": int(Mode.SAFE)}
    assert commander.parse_args_for("disable_model", ["model=Ship_Detect"]) == {"model": "ship_detect"}
    assert commander.parse_args_for("request_quicklook", ["frame_id=0xFFFFFFFF"]) == {"frame_id": 0xFFFFFFFF}
    assert commander.command_def("noop") is COMMANDS["NOOP"]


@pytest.mark.parametrize("argv, words", [
    (["send", "frob"], ["unknown command 'frob'; known: NOOP, SET_PARAM"]),
    (["send", "set_param", "param=foo", "value=1"], ["unknown parameter 'foo'; known: cloud_discard_fraction"]),
    (["send", "set_param", "param=99", "value=1"], ["unknown parameter '99'; known:"]),
    (["send", "set_param", "param=chip_px"], ["SET_PARAM needs value="]),
    (["send", "set_param", "param=chip_px", "value=abc"], ["value='abc' is not a number"]),
    (["send", "set_param", "param=chip_px", "value=1000"], ["chip_px = 1000.0 outside [8, 256]"]),
    (["send", "set_mode", "mode=bogus"], ["unknown mode 'bogus'; known: NOMINAL, DEGRADED, SAFE"]),
    (["send", "set_mode", "mode=safe", "speed=2"], ["SET_MODE has no argument 'speed'; it takes mode="]),
    (["send", "noop", "junk"], ["'junk' is not KEY=VALUE"]),
    (["send", "request_quicklook", "frame_id=-1"], ["frame_id=-1 is outside 0..4294967295"]),
    (["send", "request_chip", "frame_id=1", "row_px=1", "col_px=1", "size_px=2"], ["size_px = 2 outside [8, 4096]"]),
    (["send", "upload_begin", "model=x", "size_bytes=1", "chunk_bytes=64", "sha256=zz"], ["is not hex bytes"]),
    (["frob"], ["invalid choice: 'frob'"]),
    (["--timeout", "abc", "list"], ["invalid float value"]),
    (["list", "extra"], ["unrecognized arguments: extra"]),
    (["pack-model", "{missing}", "{out}"], ["cannot read card"]),
    (["upload", "{missing}"], ["no model file at"]),
])
def test_commander_user_mistakes(run_dir, tmp_path, capsys, argv, words):
    """Arguments are checked before the run is: each mistake is named even with no run going."""
    paths = {"{missing}": str(tmp_path / "nothing.card.json"), "{out}": str(tmp_path / "out.mdlpkg")}
    refused(commander.main, ["--run-dir", str(run_dir), *[paths.get(a, a) for a in argv]], capsys, *words)


def test_commander_says_when_no_run_is_live(run_dir, tmp_path, capsys):
    send = ["send", "noop"]
    refused(commander.main, send, capsys, "send needs --run-dir")
    refused(commander.main, ["--run-dir", str(tmp_path / "nothing"), *send], capsys, "no run folder at")
    refused(commander.main, ["--run-dir", str(tmp_path), *send], capsys, "is not a run folder (no launch.json")
    t0 = time.monotonic()
    refused(commander.main, ["--run-dir", str(run_dir), *send], capsys, "no live run in",
            "the link channel never wrote its status")
    status = run_dir / "channel.status.json"
    status.write_text("{}")
    os.utime(status, (time.time() - 120, time.time() - 120))
    refused(commander.main, ["--run-dir", str(run_dir), *send], capsys, "no live run in", "120 s ago")
    status.write_text("{}")  # fresh, but the run wrote its summary: it ended
    (run_dir / "summary.json").write_text("{}")
    refused(commander.main, ["--run-dir", str(run_dir), *send], capsys, "no live run in", "the run ended")
    refused(commander.main, ["--run-dir", str(run_dir), "upload", str(REPO / "README.md")], capsys, "no live run")
    assert time.monotonic() - t0 < 5  # told at once, not after a socket timeout
    # reading the reports of an ended run needs neither a live run nor the key
    rc, out, err = call(commander.main, ["--run-dir", str(run_dir), "reports"], capsys)
    assert rc == 0 and json.loads(out)["kind"] == "COMPLETED", err


def test_commander_sends_a_command_typed_in_lower_case_to_a_live_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    port = free_port()
    (run_dir / "mission.key").write_text(KEY_HEX + "\n")
    write_launch(run_dir, ["security.curve=false", 'security.command_key_file="mission.key"',
                           f'network.ground_in="tcp://127.0.0.1:{port}"'])
    (run_dir / "channel.status.json").write_text("{}")  # the channel is up
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(f"tcp://127.0.0.1:{port}")
    try:
        rc, _, err = call(commander.main, ["--run-dir", str(run_dir), "send", "set_mode", "mode=safe", "--no-wait"],
                          capsys)
        assert rc == 0 and "sent SET_MODE counter 1" in err, err
        assert pull.poll(5000)
        cmd = parse_command(pull.recv())
        assert cmd.opcode == COMMANDS["SET_MODE"].opcode and cmd.body == bytes([Mode.SAFE]) and cmd.counter == 1
    finally:
        pull.close(linger=0)
        ctx.term()


# --- watch, xtce, and every tool as a process ----------------------------------------------------------


def test_watch_user_mistakes(run_dir, tmp_path, capsys):
    refused(watch.main, [str(tmp_path / "nothing")], capsys, "does not exist")
    refused(watch.main, [str(run_dir), "--interval", "0"], capsys, "expected seconds")
    refused(watch.main, [str(run_dir), "--rows", "-1"], capsys, ">= 1")
    rc, out, _ = call(watch.main, [str(run_dir), "--once", "--rows", "1"], capsys)
    assert rc == 0 and out.count("ALERT") == 1


@pytest.mark.parametrize("module", ["ground_link.query", "ground_link.commander", "ground_link.watch",
                                    "ground_link.xtce", "ground_link.station", "ground_link.channel"])
def test_every_tool_shows_help(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage:") and "<?xml" not in proc.stdout, proc.stderr


@pytest.mark.parametrize("argv", [
    ["ground_link.query", "{missing}"],
    ["ground_link.query", "{run}", "--region", "-30,-60"],
    ["ground_link.commander", "send", "frob"],
    ["ground_link.commander", "--run-dir", "{run}", "send", "NOOP"],
    ["ground_link.commander", "pack-model", "{missing}", "{missing}"],
    ["ground_link.watch", "{missing}"],
    ["ground_link.xtce", "--output", "{missing}/m.xml"],
])
def test_no_traceback_from_a_process(run_dir, tmp_path, argv):
    paths = {"{missing}": str(tmp_path / "nothing"), "{run}": str(run_dir)}
    argv = [a.replace("{missing}", paths["{missing}"]).replace("{run}", paths["{run}"]) for a in argv]
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_command_copy_lost_on_the_uplink_does_not_hold_back_the_answer():
    """run_reliably sends a command again when it hears nothing; copy 1 may be lost on the uplink
    and never report. A failure of a later copy is then the answer after try_s of contact (the
    e2e contact-plan test once waited 113 s for copy 1's report), a COMPLETED copy at once."""
    failed = {"kind": "FAILED", "message": "contact plan refused: not JSON"}
    again = {"kind": "FAILED", "message": "no received file"}
    settle = commander.settle
    assert settle({}, [3, 4], None, 9.0) is None
    assert settle({4: failed}, [3, 4], 0.0, 9.0) is None  # copy 3 may still report: wait
    assert settle({4: failed}, [3, 4], 8.9, 9.0) is None
    assert settle({4: failed, 5: again}, [3, 4, 5], 9.0, 9.0) is failed  # the earliest that executed
    assert settle({4: failed, 3: again}, [3, 4], 0.0, 9.0) is again  # every copy reported: the earliest
    done = {"kind": "COMPLETED", "message": "ok"}
    assert settle({5: done, 4: failed}, [3, 4, 5], 0.0, 9.0) is done
