"""Uplink audit: command arguments, config keys, model bundles and key files over the whole range
of their types. Each case here was accepted silently, padded or cut into another value, or raised
something other than the module's own error before its fix."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from datetime import datetime

import pytest
from ops_util import bundle

from flight.commands import CommandAuth, CommandError, decode_command, encode_command
from flight.config import ConfigError, load_scenario
from flight.contacts import parse_plan
from flight.dictionary import COMMANDS, MODEL_NAME, PARAMS, PARAMS_BY_NAME, Reason
from flight.model_update import CARD, GOLDEN, MAGIC, ONNX, ModelStore, ModelUpdateError
from flight.ops_report import NOW_S, _signed_app_data
from flight.products import ImageChip, decode_tm, encode_tm

KEY = bytes(range(32))
SHA = bytes(range(32))


# --- commands: what struct would pad, cut or invent ---------------------------------------------------


@pytest.mark.parametrize("name, args, kw, fragment", [
    # a 20-character name was cut to "ship_detect_and_" and sent as that model
    ("ENABLE_MODEL", {"model": "ship_detect_and_more"}, {}, "at most 16"),
    # the hex digest given as text: its first 32 ASCII characters went up as the SHA-256
    ("UPLOAD_BEGIN", {"model": "cloud_screen", "size_bytes": 100, "chunk_bytes": 64, "sha256": SHA.hex()}, {}, "must be 32"),
    # 31 bytes were NUL-padded into another digest
    ("LOAD_CONTACT_PLAN", {"sha256": SHA[:31]}, {}, "must be 32"),
    # bytes(32) of an int is 32 zero bytes
    ("UPLOAD_ACTIVATE_FILE", {"model": "cloud_screen", "sha256": 32}, {}, "must be bytes"),
    ("UPLOAD_CHUNK", {"upload_id": 1, "index": 0, "data": 5}, {}, "must be bytes"),
    # bytes(2**63): OverflowError (not a CommandError); a smaller huge int allocated that many bytes
    ("UPLOAD_CHUNK", {"upload_id": 1, "index": 0, "data": 2**63}, {}, "must be bytes"),
    ("SET_MODE", {"mode": True}, {}, "must be a number"),
    # ack flags are 4 bits: 16 spilled into the PUS version field, -1 raised a bare ValueError
    ("NOOP", {}, {"ack_flags": 16}, "ack_flags"),
    ("NOOP", {}, {"ack_flags": -1}, "ack_flags"),
    # a trailing newline passed re.match(...$)
    ("DISABLE_MODEL", {"model": "ship_detect\n"}, {}, "not a model name"),
])
def test_the_ground_refuses_arguments_that_do_not_fit_their_field(name, args, kw, fragment):
    with pytest.raises(CommandError, match=fragment) as err:
        encode_command(KEY, 1, NOW_S, name, args, **kw)
    assert err.value.code == Reason.BAD_ARGUMENT


def test_the_flight_refuses_a_model_name_with_a_trailing_newline():
    """Signed by hand (the ground refuses it now): the flight must refuse it as BAD_ARGUMENT."""
    opcode = COMMANDS["DISABLE_MODEL"].opcode
    packet = _signed_app_data(KEY, 5, opcode.to_bytes(2, "big") + b"ship_detect\n".ljust(16, b"\0"))
    auth = CommandAuth(KEY, 0, 1000, 0)
    with pytest.raises(CommandError, match="not a model name") as err:
        decode_command(packet, auth, NOW_S)
    assert err.value.code == Reason.BAD_ARGUMENT and auth.last_counter == 5


def test_byte_fields_of_the_right_size_still_go_up_unchanged():
    packet = encode_command(KEY, 1, NOW_S, "UPLOAD_BEGIN", {"model": "cloud_screen", "size_bytes": 100,
                                                            "chunk_bytes": 64, "sha256": bytearray(SHA)})
    cmd = decode_command(packet, CommandAuth(KEY, 0, 10, 0), NOW_S)
    assert cmd.args["sha256"] == SHA and cmd.args["model"] == "cloud_screen"
    assert MODEL_NAME.code == "16s"


# --- chips: every chip_max_bytes the flight accepts fits its packet -----------------------------------


def test_the_largest_chip_the_config_and_set_param_allow_fits_one_packet():
    """chip_max_bytes went to 65536: a PNG of more than 65486 bytes made encode_tm raise at packing
    time (the frame's products lost, far from the cause)."""
    from flight.config import FlightSection

    hi = FlightSection.__dataclass_fields__["chip_max_bytes"].metadata["hi"]
    assert PARAMS_BY_NAME["chip_max_bytes"].hi == hi
    chip = ImageChip(1, 1, 0.0, 1, 1.0, 1.0, 256, 256, 3, bytes(int(hi)))
    _, back = decode_tm(encode_tm(chip, 1, datetime.fromisoformat("2026-11-28T06:00:00+00:00"), 0.0))
    assert back == chip
    with pytest.raises(ConfigError) as err:
        load_scenario(None, ["flight.chip_max_bytes=65536"])
    assert err.value.key == "flight.chip_max_bytes"
    p = next(p for p in PARAMS.values() if p.name == "chip_max_bytes")
    with pytest.raises(CommandError, match="outside"):
        encode_command(KEY, 1, NOW_S, "SET_PARAM", {"param": p.id, "value": 65536.0})


# --- config ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, key", [
    ("flight.merge_px=1" + "0" * 400, "flight.merge_px"),  # OverflowError: int too large to convert to float
    ('scenario.epoch="0001-01-01T00:00:00+01:00"', "scenario.epoch"),  # OverflowError in astimezone
    ('scenario.epoch="9999-12-31T23:59:59-01:00"', "scenario.epoch"),
    ("link.schedule=[[0, inf]]", "link.schedule[0][1]"),  # the launcher's plan writer: OverflowError
    ("link.schedule=[[-inf, 5]]", "link.schedule[0][0]"),
    ("link.schedule=[[0, 1e300]]", "link.schedule[0][1]"),
    ('flight.cascade=[{model="cloud_screen"}, {model="a_seventeen_chars"}]', "flight.cascade[1].model"),
    ('flight.cascade=[{model="cloud_screen"}, {model="../../x"}]', "flight.cascade[1].model"),
    ('flight.chip_classes=["fires"]', "flight.chip_classes[0]"),  # a typo: no chip, ever, silently
    ('ops.state_dir="run\\u0000dir"', "ops.state_dir"),  # open()/mkdir raise a bare ValueError on a NUL
    ('security.command_key_file="k\\u0000"', "security.command_key_file"),
    # ground_link.station keys its sockets and mission keys by satellite id: the second link replaced the first
    ("station.links=[{satellite_id=3, ground_out=\"tcp://127.0.0.1:1\"}, {satellite_id=3}]", "station.links"),
])
def test_config_values_that_cannot_be_used_are_config_errors(override, key):
    with pytest.raises(ConfigError) as err:
        load_scenario(None, [override])
    assert err.value.key == key


def test_a_schedule_at_its_bounds_becomes_a_plan_the_flight_takes():
    from flight.clock import ScenarioClock, parse_epoch
    from payload_sim.ops_support import contact_plan_bytes

    sc = load_scenario(None, ['link.contacts="schedule"', f"link.schedule=[[{-2**31}, 0], [10, {2**31}]]",
                              'flight.cascade=[{model="cloud_screen"}, {model="ship_detect"}]',
                              'flight.chip_classes=["fire", "ship", "ship_detect"]'])
    data = contact_plan_bytes(sc)
    assert data is not None
    windows = parse_plan(data, ScenarioClock(parse_epoch(sc.scenario.epoch)))
    assert [(w.aos_s, w.los_s) for w in windows] == [(-2**31, 0), (10, 2**31)]


# --- model bundles ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    return tmp_path_factory.mktemp("audit") / "state" / "models"


@pytest.mark.parametrize("version", ["../../../../escape", "1/2", ".hidden", "1.0\n", "1.0\x00x", "..", "a b"])
def test_a_card_version_that_is_not_one_plain_folder_name_is_refused(store_root, version):
    """The version names the folder: "../../../../escape" installed a verified model (and its files)
    outside the models folder; a NUL raised a bare ValueError from open()."""
    store = ModelStore(store_root)
    before = store.active["cloud_screen"]
    with pytest.raises(ModelUpdateError, match="plain version"):
        store.install_bundle("cloud_screen", bundle(version), "tile_fraction")
    assert store.active["cloud_screen"] == before
    top = store_root.parent.parent
    assert not [p for p in top.rglob("*") if "escape" in p.name or "hidden" in p.name]
    assert not (store_root / "versions" / "cloud_screen" / "1").exists()


def test_a_deeply_nested_card_is_a_model_update_error(store_root):
    """json.loads raised RecursionError: the flight reported an internal error, not a refused card."""
    store = ModelStore(store_root)
    card = b"[" * 60000
    blob = MAGIC + b"".join(struct.pack(">BI", k, len(x)) + x for k, x in ((CARD, card), (ONNX, b"x"), (GOLDEN, b"y")))
    with pytest.raises(ModelUpdateError, match="card refused"):
        store.install_bundle("cloud_screen", blob, None)


def test_a_good_bundle_still_installs_with_a_release_style_version(store_root):
    store = ModelStore(store_root)
    active, _ = store.install_bundle("cloud_screen", bundle("2.1.1-ft.0a1b+2"), "tile_fraction")
    assert active.version == "2.1.1-ft.0a1b+2" and active.folder.startswith("versions/cloud_screen/2.1.1-ft.0a1b+2-")
    assert json.loads((store_root / "active.json").read_text())["cloud_screen"]["version"] == "2.1.1-ft.0a1b+2"


# --- key files -------------------------------------------------------------------------------------------


def test_a_key_file_that_never_ends_is_refused_at_once():
    """security.command_key_file = /dev/zero was read for ever (memory growing without bound)."""
    code = ("import os, resource\n"
            "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
            "os.environ.pop('FLIGHT_MISSION_KEY', None); os.environ.pop('FLIGHT_MISSION_KEY_FILE', None)\n"
            "from flight.config import SecuritySection\n"
            "from flight.security import KeyMaterialError, load_mission_key\n"
            "try:\n"
            "    load_mission_key(SecuritySection(command_key_file='/dev/zero'))\n"
            "except KeyMaterialError as exc:\n"
            "    print('refused:', exc)\n")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("load_mission_key kept reading /dev/zero")
    assert out.returncode == 0 and "refused:" in out.stdout and "bytes" in out.stdout, out.stderr[-500:]


# --- file transfer: the ground's "ok" ---------------------------------------------------------------------


def test_a_file_the_flight_discards_is_not_ok_at_the_ground(tmp_path):
    """One File Data PDU altered with a valid PDU CRC: cfdp-py (which skips the file checksum when
    nothing was lost) sent Finished NO_ERROR, so FileSender.ok was True while the flight had
    discarded the file for its CRC-32; a late EOF got that Finished again."""
    import random

    from spacepackets.cfdp import ConditionCode, PduType
    from spacepackets.cfdp.pdu import FileDataPdu
    from spacepackets.cfdp.pdu.file_data import FileDataParams
    from test_filetransfer import Link, received, transfer

    from flight.dictionary import Apid
    from flight.filetransfer import parse_pdu, unwrap, wrap

    altered = []

    def alter(way, p):
        if way != "up" or altered:
            return p
        pdu = parse_pdu(unwrap(p, Apid.FILE_DATA))
        if pdu.pdu_type != PduType.FILE_DATA or pdu.offset != 256:
            return p
        altered.append(pdu.offset)
        bad = FileDataPdu(pdu.pdu_header.pdu_conf, FileDataParams(file_data=bytes(b ^ 0xFF for b in pdu.file_data),
                                                                  offset=pdu.offset, segment_metadata=None))
        return wrap(bytes(bad.pack()), Apid.FILE_DATA, ((p[2] & 0x3F) << 8) | p[3])

    data = random.Random(1).randbytes(3000)
    tx, rx = transfer(tmp_path, data, Link(seed=1, alter=alter), timeout_s=20)
    assert altered and tx.done
    assert not received(rx, data) and rx.counts["transfers_failed"] == 1 and rx.counts["files_received"] == 0
    assert not tx.ok, tx.describe()
    assert tx.result is not None and tx.result.condition_code == ConditionCode.FILE_CHECKSUM_FAILURE
    assert [e[0] for e in rx.events] == ["FILE_TRANSFER_FAILED"]
    # what a late EOF of this transaction is answered with (its Finished again) says the same
    assert rx.history[(1, 7)]["condition"] == int(ConditionCode.FILE_CHECKSUM_FAILURE)


# --- scenario time: what a CDS time code holds ---------------------------------------------------------


def test_a_run_cannot_outlast_the_time_code():
    from flight.config import ScenarioSection
    from flight.products import cds_timestamp

    hi_rate = ScenarioSection.__dataclass_fields__["clock_rate"].metadata["hi"]
    hi_wall = ScenarioSection.__dataclass_fields__["max_wall_s"].metadata["hi"]
    with pytest.raises(struct.error):  # what such a run met at its first packet after 2**31 s
        cds_timestamp(datetime.fromisoformat("2026-11-28T06:00:00+00:00"), hi_rate * hi_wall)
    with pytest.raises(ConfigError) as err:
        load_scenario(None, [f"scenario.clock_rate={hi_rate}", f"scenario.max_wall_s={hi_wall}"])
    assert err.value.key == "scenario.max_wall_s"
    # the latest epoch allowed, at the longest run allowed, still packs
    sc = load_scenario(None, ['scenario.epoch="2068-12-31T23:59:59Z"', "scenario.clock_rate=24855.13",
                              "scenario.max_wall_s=86400"])
    assert len(cds_timestamp(datetime.fromisoformat("2068-12-31T23:59:59+00:00"),
                             sc.scenario.clock_rate * sc.scenario.max_wall_s)) == 7


@pytest.mark.parametrize("start", [float("nan"), float("inf"), 0.0, -1e300])
def test_a_clock_start_no_time_code_can_hold_is_a_usage_error(start, monkeypatch, capsys):
    import argparse

    from flight.service import setup

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # setup() installs its own
    args = argparse.Namespace(scenario=None, overrides=[], run_dir=None, clock_start=start, log_format=None)
    with pytest.raises(SystemExit) as exit_:
        setup(args)
    assert exit_.value.code == 2 and "--clock-start" in capsys.readouterr().err


def test_a_clock_start_of_now_or_a_few_seconds_ahead_is_taken(monkeypatch):
    import argparse
    import time

    from flight.service import setup

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    for start in (None, time.time() + 3.0):
        _, clock = setup(argparse.Namespace(scenario=None, overrides=[], run_dir=None, clock_start=start, log_format=None))
        assert abs(clock.now_s()) < 100
