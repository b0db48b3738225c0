"""Forged, replayed, altered and late acknowledgements end to end (issue #12).

The lab scenario (payload_sim/scenarios/lab_plain_link.toml) runs every ZeroMQ link plain, CURVE
off, as the issue found it: any process that reaches the channel's uplink input
(`network.ground_in` from RUN_DIR/launch.json) puts packets on the uplink. This test is that
process: a plain PUSH socket that, while products wait onboard (a 4 kbit/s downlink), reads the
ids the flight holds and acknowledges them with forged acks (other keys, other source ids),
replays (signed with the mission key but an old counter, as a captured ack would be), altered acks
(a genuine ack's range rewritten and the CRC fixed up), late acks (genuine, issued an hour ahead)
and bit-corrupted ones. Nothing may be lost: every product the flight created is archived once.
"""

import json
import os
import sqlite3
import subprocess
import time
from collections import Counter

import zmq
from e2e_util import REPO, hil_command, kill_leftovers, wait_for
from fastcrc import crc16

from flight.acks import HEADER, RANGE, batches, encode_ack
from flight.config import load_scenario
from flight.dictionary import EVENTS
from flight.products import Event, decode_tm
from flight.security import load_mission_key

LAB = REPO / "payload_sim" / "scenarios" / "lab_plain_link.toml"
RANGES_AT = 6 + 5 + HEADER.size  # where an ack's first (first_id, count) range starts
ROUNDS = 6


def rows(path, sql: str) -> list:
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql).fetchall()
    except sqlite3.Error:
        return []
    finally:
        db.close()


def status(run_dir, name: str = "flight") -> dict:
    try:
        return json.loads((run_dir / f"{name}.status.json").read_text())
    except (OSError, ValueError):
        return {}


def fix_crc(packet: bytes) -> bytes:
    return packet[:-2] + crc16.ibm_3740(packet[:-2]).to_bytes(2, "big")


def test_forged_replayed_altered_and_late_acks_delete_nothing_on_a_plain_link(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(hil_command(run_dir, [], scenario=LAB), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    sent: Counter[str] = Counter()
    held_seen: set[int] = set()
    undelivered_targets: set[int] = set()  # ids acknowledged by the forger before the ground had them
    try:
        wait_for(lambda: (run_dir / "launch.json").exists(), 30, "the launch record")
        rec = json.loads((run_dir / "launch.json").read_text())
        sc = load_scenario(rec["scenario"], rec["overrides"])
        assert not sc.security.curve  # the lab case: plain links
        key = load_mission_key(sc.security)  # a replay needs a genuine ack: built here with the key

        def now_s() -> int:
            return max(0, int((time.time() - rec["clock_start"]) * sc.scenario.clock_rate))

        push.connect(sc.network.ground_in)
        captured = int((time.time() - 3600) * 1e6)  # the counter of an ack "captured" an hour ago
        # replays only once the station's own first ack was accepted: the flight's counter is then
        # above the captured one (before that, an old genuine ack is simply a genuine ack)
        wait_for(lambda: status(run_dir).get("products_acked", 0) > 0, 40, "the station's first ack")
        store, archive = run_dir / "flight_store.sqlite", run_dir / "archive.sqlite"
        for rnd in range(ROUNDS):
            held = sorted(r[0] for r in rows(store, "SELECT id FROM products"))
            if not held:
                time.sleep(0.2)
                continue
            on_ground = {r[0] for r in rows(archive, "SELECT product_id FROM products")}
            held_seen |= set(held)
            undelivered_targets |= set(held) - on_ground
            ranges = batches(held)[0]
            fresh = int(time.time() * 1e6) + 10**9  # ahead of the station: would be accepted if authentic
            genuine_elsewhere = encode_ack(key, 1, fresh, now_s(), [(2**62 + rnd, 1)])  # an id nobody holds
            altered = bytearray(genuine_elsewhere)
            altered[RANGES_AT : RANGES_AT + RANGE.size] = RANGE.pack(*ranges[0])
            packets = {
                "forged": encode_ack(os.urandom(32), 1 + rnd % 2 * 6, fresh, now_s(), ranges),  # source 1 or 7
                "replayed": encode_ack(key, 1, captured + rnd, now_s(), ranges),
                "altered": fix_crc(bytes(altered)),
                "late": encode_ack(key, 1, fresh, now_s() + 3600, ranges),
                "corrupted": bytes(altered),  # the CRC no longer matches: not even an ack
            }
            for kind, packet in packets.items():
                push.send(packet)
                sent[kind] += 1
            time.sleep(0.3)
        push.close(linger=2000)
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        push.close(linger=0)
        ctx.term()
        left = kill_leftovers(run_dir)
    assert not left, f"processes left behind: {left}"
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ok"] and summary["products_lost"] == 0, summary

    # the forger aimed at products the ground did not have yet: accepted, these acks would have lost them
    print(f"forger: {dict(sent)}; {len(held_seen)} ids held, {len(undelivered_targets)} not yet on the ground; wall {summary['wall_s']} s")
    assert sum(sent.values()) == 5 * ROUNDS and undelivered_targets, (sent, held_seen)
    flight = status(run_dir)
    refused = sent["forged"] + sent["replayed"] + sent["altered"] + sent["late"]
    assert flight["acks_rejected"] == summary["acks_rejected"] == refused
    assert flight["uplink_rejected"] == sent["corrupted"]

    # every product the flight created is archived, once (the archive is keyed by product id), except
    # the STOPPING event the flight stores as the launcher stops it (still onboard, not lost)
    archived = [r[0] for r in rows(run_dir / "archive.sqlite", "SELECT product_id FROM products")]
    onboard = [decode_tm(p)[1] for (p,) in rows(run_dir / "flight_store.sqlite", "SELECT packet FROM products")]
    assert all(isinstance(e, Event) and e.event_id == EVENTS["STOPPING"].id for e in onboard), onboard
    assert len(archived) == len(set(archived)) == status(run_dir, "station")["products_archived"]
    assert len(archived) + len(onboard) == summary["products_created"]
    assert held_seen <= set(archived) and undelivered_targets <= set(archived)

    # the refusals were reported, by kind
    msgs = [m for (m,) in rows(run_dir / "archive.sqlite",
                                f"SELECT message FROM events WHERE event_id = {EVENTS['ACK_REJECTED'].id}")]
    kinds = Counter(m.split("(", 1)[1].split(")", 1)[0] for m in msgs)
    assert set(kinds) == {"BAD_MAC", "REPLAY", "TIME_WINDOW"} and sum(kinds.values()) == refused, kinds
    assert kinds["BAD_MAC"] == sent["forged"] + sent["altered"] and kinds["REPLAY"] == sent["replayed"]
    # the flight's counter for the station moved with the station's own acks only, and is on disk
    counters = json.loads((run_dir / "ops_state.json").read_text())["ack_counters"]
    assert set(counters) == {"1"} and captured < counters["1"] < int(time.time() * 1e6)
