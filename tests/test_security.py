"""CURVE on the ZeroMQ links: authorized peers get through, unknown or plain peers never do."""

import os

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
    sec = SecuritySection()
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
