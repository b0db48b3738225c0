"""CURVE on the ZeroMQ links: authorized peers get through, unknown or plain peers never do; CURVE
is on unless a scenario says it is a lab scenario, and a process started by hand without its key
material refuses to start with a clear message."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import zmq
import zmq.auth

from flight.config import SecuritySection, load_scenario
from flight.security import KeyMaterialError, SecureContext, generate_curve_keys
from payload_sim.ops_support import launch_overrides


@pytest.fixture
def curve(tmp_path):
    generate_curve_keys(tmp_path / "curve")
    return SecuritySection(curve=True, curve_dir=str(tmp_path / "curve"))


def server(sec, name="channel"):
    ctx = SecureContext(sec, name)
    pull = ctx.socket(zmq.PULL)
    ctx.serve(pull)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    return ctx, pull, f"tcp://127.0.0.1:{port}"


def test_authorized_client_gets_through_unknown_and_plain_do_not(curve, tmp_path):
    sctx, pull, addr = server(curve)
    ok_ctx = SecureContext(curve, "commander")
    ok = ok_ctx.socket(zmq.PUSH)
    ok_ctx.client(ok, "channel")
    ok.connect(addr)
    other = zmq.Context()
    rogue = other.socket(zmq.PUSH)  # a valid CURVE keypair the server never authorized
    pub, sec = zmq.curve_keypair()
    rogue.curve_publickey, rogue.curve_secretkey = pub, sec
    rogue.curve_serverkey = zmq.auth.load_certificate(str(tmp_path / "curve" / "channel.key"))[0]
    rogue.connect(addr)
    plain = other.socket(zmq.PUSH)  # no CURVE at all
    plain.connect(addr)
    try:
        for s, msg in ((rogue, b"rogue"), (plain, b"plain")):
            try:
                s.send(msg, zmq.NOBLOCK)
            except zmq.Again:
                pass
        ok.send(b"ground")
        got = []
        while pull.poll(1500):
            got.append(pull.recv())
        assert got == [b"ground"]
    finally:
        for s in (ok, rogue, plain, pull):
            s.close(linger=0)
        ok_ctx.term()
        other.term()
        sctx.term()  # stops the authenticator thread first, does not hang


def test_curve_off_is_a_plain_context(tmp_path):
    sec = SecuritySection(curve=False)
    sctx, pull, addr = server(sec)
    cctx = SecureContext(sec, "station")
    push = cctx.socket(zmq.PUSH)
    cctx.client(push, "channel")
    push.connect(addr)
    push.send(b"x")
    assert pull.poll(2000) and pull.recv() == b"x"
    push.close(0)
    pull.close(0)
    cctx.term()
    sctx.term()


def test_missing_certificates_fail_fast(tmp_path):
    ctx = SecureContext(SecuritySection(curve=True, curve_dir=str(tmp_path / "none")), "channel")
    s = ctx.socket(zmq.PULL)
    with pytest.raises(KeyMaterialError, match="channel"):
        ctx.serve(s)
    s.close(0)
    ctx.term()


def test_launcher_makes_per_run_keys_only_readable_by_the_owner(tmp_path, monkeypatch):
    monkeypatch.delenv("FLIGHT_MISSION_KEY", raising=False)
    monkeypatch.delenv("FLIGHT_MISSION_KEY_FILE", raising=False)
    sc = load_scenario(None, ["security.curve=true"])
    overrides = launch_overrides(sc, tmp_path)
    sc2 = load_scenario(None, ["security.curve=true", *overrides])
    key = sc2.security.command_key_file
    assert os.path.isabs(key) and oct(os.stat(key).st_mode & 0o777) == "0o600"
    assert oct(os.stat(tmp_path / "curve" / "flight.key_secret").st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in (tmp_path / "curve" / "authorized").iterdir()) == ["commander.key", "flight.key", "station.key"]
    assert sc2.ops.state_dir == str(tmp_path.resolve())
    again = launch_overrides(sc, tmp_path / "other")
    assert open(key).read() != open(load_scenario(None, again).security.command_key_file).read()  # fresh per run


REPO = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((REPO / "payload_sim" / "scenarios").glob("*.toml"))


def test_curve_is_on_by_default_and_off_only_in_lab_scenarios():
    assert SecuritySection().curve and load_scenario(None).security.curve
    assert SCENARIOS
    for path in SCENARIOS:
        text = path.read_text()
        lab = re.search(r"^#.*\blab scenario\b", text, re.MULTILINE | re.IGNORECASE) is not None
        curve = load_scenario(str(path)).security.curve
        assert curve or lab, f"{path.name} turns CURVE off without saying it is a lab scenario"
        if lab:
            assert tomllib.loads(text).get("security", {}).get("curve") is False, f"{path.name}: a lab scenario says curve = false"


def test_the_launcher_makes_certificates_for_the_default_scenario(tmp_path, monkeypatch):
    monkeypatch.setenv("FLIGHT_MISSION_KEY", "ab" * 32)
    overrides = launch_overrides(load_scenario(None), tmp_path)
    assert any(o.startswith("security.curve_dir=") for o in overrides)
    assert (tmp_path / "curve" / "station.key_secret").exists()


def station_by_hand(tmp_path, env_key: str | None, *sets: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("FLIGHT_MISSION_KEY", "FLIGHT_MISSION_KEY_FILE")}
    if env_key:
        env["FLIGHT_MISSION_KEY"] = env_key
    cmd = [sys.executable, "-m", "ground_link.station", "--run-dir", str(tmp_path)]
    for o in ('network.ground_out="tcp://127.0.0.1:1"', 'network.ground_in="tcp://127.0.0.1:1"', *sets):
        cmd += ["--set", o]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=30, env=env)


def test_a_station_started_by_hand_without_key_material_refuses_to_start_clearly(tmp_path):
    no_key = station_by_hand(tmp_path, None)
    assert no_key.returncode == 2 and "Traceback" not in no_key.stderr
    assert "cannot start" in no_key.stderr and "mission key" in no_key.stderr and "FLIGHT_MISSION_KEY" in no_key.stderr
    no_certs = station_by_hand(tmp_path, "ab" * 32)  # CURVE on by default, no certificates made
    assert no_certs.returncode == 2 and "Traceback" not in no_certs.stderr
    assert "security.curve is on" in no_certs.stderr and "security.curve=false" in no_certs.stderr
