"""Telecommands: every command round-trips; forged, altered, replayed, out-of-window and random
packets are refused, counted, reported and never executed; the flight keeps its counter across a
restart; keys come from files or the environment only."""

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_util import flight_apps

from flight.clock import ScenarioClock, parse_epoch
from flight.commands import CommandAuth, CommandError, decode_command, encode_command, parse_command
from flight.config import load_scenario
from flight.dictionary import COMMANDS, EVENTS, PARAMS, Reason, ReportKind
from flight.ops_report import NOW_S, SAMPLE_ARGS, command_campaigns
from flight.products import CommandReport, decode_tm
from flight.security import (
    KEY_ENV,
    KEY_FILE_ENV,
    KeyMaterialError,
    load_mission_key,
    write_mission_key,
)

KEY = bytes(range(32))


def auth(last=0):
    return CommandAuth(KEY, last, 1000, 600.0)


def test_every_command_round_trips():
    assert set(SAMPLE_ARGS) == set(COMMANDS)
    a = auth()
    for i, (name, args) in enumerate(SAMPLE_ARGS.items(), start=1):
        cmd = decode_command(encode_command(KEY, i, NOW_S, name, args), a, NOW_S)
        expect = {k: (v.decode() if isinstance(v, bytes) and COMMANDS[name].args and k == "model" else v) for k, v in args.items()}
        assert (cmd.name, cmd.counter, cmd.args) == (name, i, expect)
        assert a.last_counter == i


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(SAMPLE_ARGS)), counter=st.integers(1, 999), pos=st.integers(0, 10_000),
       bit=st.integers(0, 7), fix_crc=st.booleans())
def test_any_altered_bit_is_refused_and_never_executed(name, counter, pos, bit, fix_crc):
    from flight.ops_report import _fix_crc

    a = auth()
    packet = bytearray(encode_command(KEY, counter, NOW_S, name, SAMPLE_ARGS[name]))
    packet[pos % (len(packet) - 2)] ^= 1 << bit
    altered = _fix_crc(bytes(packet)) if fix_crc else bytes(packet)
    with pytest.raises(CommandError) as err:
        decode_command(altered, a, NOW_S)
    assert err.value.code in (Reason.BAD_MAC, Reason.BAD_PACKET)
    assert a.last_counter == 0


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400))
def test_random_bytes_raise_command_error_only(data):
    a = auth(5)
    try:
        decode_command(data, a, NOW_S)
    except CommandError as exc:
        assert exc.code == Reason.BAD_PACKET
    assert a.last_counter == 5


def test_forged_replayed_and_out_of_window_are_refused_with_their_reason():
    a = auth()
    good = encode_command(KEY, 1, NOW_S, "NOOP")
    assert decode_command(good, a, NOW_S).name == "NOOP"
    cases = [
        (good, Reason.REPLAY),
        (encode_command(b"\x01" * 32, 2, NOW_S, "NOOP"), Reason.BAD_MAC),
        (encode_command(KEY, 1 + 1001, NOW_S, "NOOP"), Reason.COUNTER_WINDOW),
        (encode_command(KEY, 2, NOW_S - 601, "NOOP"), Reason.TIME_WINDOW),
        (encode_command(KEY, 2, NOW_S + 601, "NOOP"), Reason.TIME_WINDOW),
    ]
    for packet, reason in cases:
        with pytest.raises(CommandError) as err:
            decode_command(packet, a, NOW_S)
        assert err.value.code == reason and err.value.is_auth
        assert a.last_counter == 1  # refused commands never move the counter
    assert decode_command(encode_command(KEY, 2, NOW_S, "NOOP"), a, NOW_S).counter == 2


@pytest.mark.parametrize("name, args, fragment", [
    ("SET_PARAM", {"param": 1, "value": 1.5}, "outside"),
    ("SET_PARAM", {"param": 4, "value": 8.5}, "not whole"),
    ("SET_PARAM", {"param": 99, "value": 1.0}, "unknown parameter"),
    ("SET_PARAM", {"param": 1, "value": float("nan")}, "not finite"),
    ("SET_MODE", {"mode": 7}, "outside"),
    ("ENABLE_MODEL", {"model": "Bad Name"}, "not a model name"),
    ("CLEAR_STORE", {"min_priority": 0}, "outside"),
    ("UPLOAD_CHUNK", {"upload_id": 1, "index": 0, "data": b""}, "data"),
    ("UPLOAD_CHUNK", {"upload_id": 1, "index": 0, "data": bytes(1025)}, "at most"),
    ("NOOP", {"extra": 1}, "unknown"),
])
def test_bad_arguments_are_refused_on_the_ground_with_the_reason(name, args, fragment):
    with pytest.raises(CommandError, match=fragment):
        encode_command(KEY, 1, NOW_S, name, args)


def test_bad_arguments_that_reach_the_flight_move_the_counter_but_do_not_execute():
    """Authentic but malformed: refused as BAD_ARGUMENT, and its counter is used up (no replay)."""
    from flight.ops_report import _signed_app_data

    a = auth()
    packet = _signed_app_data(KEY, 1, (2).to_bytes(2, "big") + b"\x01")  # SET_PARAM with 1 byte of arguments
    with pytest.raises(CommandError) as err:
        decode_command(packet, a, NOW_S)
    assert err.value.code == Reason.BAD_ARGUMENT and a.last_counter == 1


def test_campaigns_refuse_everything_and_lose_nothing():
    rows = command_campaigns(200, seed=3)
    for name, r in rows.items():
        assert r["valid_command_after"], name
        if not name.startswith("random"):
            assert r["refused"] == r["tried"] and r["executed"] == 0, (name, r)


def test_every_dictionary_entry_is_well_formed():
    assert len({c.opcode for c in COMMANDS.values()}) == len(COMMANDS)
    for p in PARAMS.values():
        assert p.lo <= p.hi
    for e in ("COMMAND_ACCEPTED", "COMMAND_REJECTED", "COMMAND_AUTH_FAILED", "MODE_CHANGED", "STAGE_WATCHDOG"):
        assert e in EVENTS


# --- keys ---------------------------------------------------------------------------------------------


def test_key_from_file_env_and_never_without_one(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    sc = load_scenario(None)
    with pytest.raises(KeyMaterialError, match="none given"):
        load_mission_key(sc.security)
    path = write_mission_key(tmp_path / "mission.key")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    key = load_mission_key(load_scenario(None, [f'security.command_key_file="{path}"']).security)
    assert len(key) == 32
    monkeypatch.setenv(KEY_FILE_ENV, str(path))
    assert load_mission_key(sc.security) == key
    monkeypatch.setenv(KEY_ENV, "00" * 20)
    assert load_mission_key(sc.security) == bytes(20)
    monkeypatch.setenv(KEY_ENV, "zz")
    with pytest.raises(KeyMaterialError, match="hexadecimal"):
        load_mission_key(sc.security)
    monkeypatch.setenv(KEY_ENV, "00" * 4)
    with pytest.raises(KeyMaterialError, match="16..64"):
        load_mission_key(sc.security)


# --- the flight application -----------------------------------------------------------------------------


@pytest.fixture
def flight(tmp_path, monkeypatch):
    """A FlightApp without sockets: packets go straight into on_uplink."""
    with flight_apps(tmp_path, monkeypatch, ["scenario.clock_rate=1.0"], NOW_S) as (make, key):
        yield (lambda extra=(): make(extra)[0]), key


def reports(app) -> list[CommandReport]:
    rows = app.store.db.execute("SELECT packet FROM products WHERE apid = 0x106 ORDER BY id").fetchall()
    return [decode_tm(r[0])[1] for r in rows]


def events(app) -> list[int]:
    from flight.products import Event

    return [p.event_id for p in (decode_tm(r[0])[1] for r in app.store.db.execute("SELECT packet FROM products WHERE apid = 0x105"))
            if isinstance(p, Event)]


def test_flight_executes_authentic_commands_and_reports_each_step(flight):
    make, key = flight
    app = make()
    app.on_uplink(encode_command(key, 1, NOW_S, "SET_PARAM", {"param": 1, "value": 0.8}))
    assert app.cfg.cloud_discard_fraction == 0.8
    app.on_uplink(encode_command(key, 2, NOW_S, "DISABLE_MODEL", {"model": "cloud_screen"}))  # refused: required
    got = [(r.counter, ReportKind(r.report).name) for r in reports(app)]
    assert got == [(1, "ACCEPTED"), (1, "COMPLETED"), (2, "ACCEPTED"), (2, "FAILED")]
    assert app.counts["commands_accepted"] == 2 and app.counts["commands_failed"] == 1
    assert EVENTS["PARAMETER_SET"].id in events(app)


def test_flight_refuses_forged_replayed_and_stale_commands(flight):
    make, key = flight
    app = make()
    good = encode_command(key, 1, NOW_S, "SET_MODE", {"mode": 2})
    app.on_uplink(good)
    assert app.modes.mode == 2
    app.on_uplink(encode_command(key, 2, NOW_S, "SET_MODE", {"mode": 0}))
    app.on_uplink(good)  # replay of "SAFE"
    app.on_uplink(encode_command(os.urandom(32), 3, NOW_S, "SET_MODE", {"mode": 2}))  # forged
    app.on_uplink(encode_command(key, 3, NOW_S - 10_000, "SET_MODE", {"mode": 2}))  # stale
    app.on_uplink(b"\x19\x82" + os.urandom(40))  # junk on the command APID
    assert app.modes.mode == 0  # none of them executed
    c = app.counts
    assert (c["commands_replayed"], c["commands_forged"], c["commands_out_of_window"]) == (1, 1, 1)
    assert c["commands_rejected"] == 4 and c["uplink_rejected"] == 1
    rejected = [Reason(r.code).name for r in reports(app) if r.report == ReportKind.REJECTED]
    assert rejected == ["REPLAY", "BAD_MAC", "TIME_WINDOW"]
    assert events(app).count(EVENTS["COMMAND_AUTH_FAILED"].id) == 3


def test_the_counter_survives_a_restart_so_a_replay_stays_a_replay(flight, tmp_path):
    make, key = flight
    app = make()
    packet = encode_command(key, 7, NOW_S, "NOOP")
    app.on_uplink(packet)
    assert json.loads((tmp_path / "ops_state.json").read_text())["last_counter"] == 7
    app.watchdog.close()
    app.store.close()
    again = make()  # same state folder: a restarted flight
    again.on_uplink(packet)
    assert again.counts["commands_replayed"] == 1 and again.auth.last_counter == 7


def test_parameters_set_by_command_survive_a_restart(flight):
    make, key = flight
    app = make()
    app.on_uplink(encode_command(key, 1, NOW_S, "SET_PARAM", {"param": 4, "value": 64.0}))
    app.watchdog.close()
    app.store.close()
    assert make().cfg.chip_px == 64


def test_flight_start_up_fails_without_a_key(flight, tmp_path):
    from flight.app import FlightApp

    sc = load_scenario(None, ["sensor.height=256", "sensor.width=256"])
    with pytest.raises(KeyMaterialError):
        FlightApp(sc, ScenarioClock(parse_epoch(sc.scenario.epoch)), tmp_path / "cal.npz", tmp_path)


def test_random_uplink_packets_never_stop_the_flight(flight):
    import random

    make, key = flight
    app = make()
    rng = random.Random(11)
    for i in range(300):
        data = rng.randbytes(rng.randrange(0, 300))
        packet = (b"\x19\x82" + data) if i % 2 else data  # half of them on the command APID
        before = app.auth.last_counter
        app.on_uplink(packet)
        assert app.auth.last_counter == before
    app.on_uplink(encode_command(key, 1, int(app.clock.now_s()), "NOOP"))
    assert app.auth.last_counter == 1  # a valid command still goes through
    assert app.counts["uplink_rejected"] == 300


def test_parse_command_reads_the_ack_flags():
    sc = parse_command(encode_command(KEY, 3, NOW_S, "NOOP", ack_flags=0))
    assert sc.ack_flags == 0 and sc.counter == 3


def test_random_downlink_packets_at_the_station_lose_nothing_archived_before(tmp_path):
    from flight.ops_report import ground_packet_campaign

    r = ground_packet_campaign(300, seed=2, root=tmp_path)
    assert r["kept_everything_before"] and r["good_packet_after"]
    assert r["bad"] + r["duplicates"] == r["tried"]


def test_an_unreadable_counter_file_stops_start_up_rather_than_allow_replays(flight, tmp_path):
    make, _ = flight
    (tmp_path / "ops_state.json").write_text('{"last_counter": "x')
    with pytest.raises(ValueError, match="ops_state.json and its previous copy unreadable"):
        make()
