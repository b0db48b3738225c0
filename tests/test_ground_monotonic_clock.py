"""The ground's intervals run on time.monotonic(), not the wall clock (as the flight's do).

A wall clock stepped back (NTP, a GPS fix) by 990 s used to hold the commander's uplink pacer (no
bulk data and no paced command for 990 s: its `busy_until` and its channel-status read time were
wall times), the file upload loop, and every packet behind the link channel's transmitter
(`free_at` in wall time); stepped forward, it let the pacer's whole queue out at once. Each test
steps the wall clock (time.time, which the modules under test read) while time.monotonic() runs
on, with real objects: the Commander with its sockets, the flight's CFDP receiver, the channel
process.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import zmq

from flight.clock import ScenarioClock, parse_epoch
from flight.commands import encode_command
from flight.config import load_scenario
from flight.dictionary import Apid
from flight.filetransfer import FileReceiver, timers_for, wrap
from ground_link.commander import Commander, CommanderError
from ground_link.ports import free_port

REPO = Path(__file__).resolve().parents[1]
STEP_S = 990.0


class WallClock:
    """time.time as the real one until `step(by)`, then that many seconds off; time.monotonic()
    is left alone."""

    def __init__(self, monkeypatch):
        self.real, self.offset = time.time, 0.0
        monkeypatch.setattr(time, "time", lambda: self.real() + self.offset)

    def step(self, by: float) -> None:
        self.offset += by


@pytest.fixture
def wall(monkeypatch):
    return WallClock(monkeypatch)


def commander(tmp_path: Path, *sets: str):
    """A Commander whose uplink is a PULL socket here (nothing else of a run is needed to send);
    the scenario started 5000 s ago (scenario time stays positive across the step)."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    sc = load_scenario(None, ["security.curve=false", f'network.ground_in="tcp://127.0.0.1:{port}"',
                              'link.contacts="always"', *sets])
    clock = ScenarioClock(parse_epoch(sc.scenario.epoch), 1.0, time.time() - 5000.0)
    return Commander(sc, clock, tmp_path, key=bytes(32)), clock, pull, ctx


def close_all(c: Commander, *socks, ctx: zmq.Context) -> None:
    c.close()
    for s in socks:
        s.close(0)
    ctx.term()


def test_a_paced_command_goes_at_once_after_the_wall_clock_stepped_back(tmp_path, wall):
    """The pacer counted its own packets' airtime in wall time (`busy_until`): after a step back
    of 990 s it saw 990 s of uplink queued and held every paced command (UPLOAD_CHUNK of the
    command-based upload) for 990 s; here it would be 'uplink not available in time'."""
    c, _, pull, ctx = commander(tmp_path)
    try:
        for _ in range(3):
            c.send_paced("NOOP", time.monotonic() + 5.0)
        wall.step(-STEP_S)
        t0 = time.monotonic()
        c.send_paced("NOOP", time.monotonic() + 3.0)
        assert time.monotonic() - t0 < 1.0  # 4 NOOPs at 64 kbit/s: milliseconds of airtime
        got = 0
        while pull.poll(2000) and got < 4:
            pull.recv()
            got += 1
        assert got == 4
    finally:
        close_all(c, pull, ctx=ctx)


def test_the_pacer_still_holds_a_full_uplink_after_the_wall_clock_stepped_forward(tmp_path, wall):
    """Stepped forward by 990 s, the wall-clock pacer took its queue for drained and let the next
    bulk packet out at once, over what the transmitter still had to send."""
    c, _, pull, ctx = commander(tmp_path, "link.uplink_rate_bps=200.0")
    try:
        air = len(encode_command(bytes(32), 1, 0, "NOOP", {})) * 8 / 200.0  # about 2 s on the air
        assert air > c.pacer.queue_s  # the second NOOP waits until the first is off the air
        t0 = time.monotonic()
        c.send_paced("NOOP", t0 + 5.0)
        wall.step(STEP_S)
        with pytest.raises(CommanderError, match="uplink not available in time"):
            c.send_paced("NOOP", time.monotonic() + 0.5)  # the first is still on the air
        c.send_paced("NOOP", time.monotonic() + 10.0)  # and goes once the first is off the air
        assert time.monotonic() - t0 >= air - 0.05
    finally:
        close_all(c, pull, ctx=ctx)


def test_the_pacer_reads_the_channel_status_again_after_the_wall_clock_stepped_back(tmp_path, wall):
    """The pacer re-reads RUN/channel.status.json (the channel's uplink backlog, with the
    station's acks) every 0.1 s, timed on the wall clock: after a step back it kept the last
    backlog it had read, here 30 s of a full transmitter, for 990 s."""
    c, clock, pull, ctx = commander(tmp_path)
    status = tmp_path / "channel.status.json"
    try:
        status.write_text(json.dumps({"scenario_s": clock.now_s(), "up_backlog_s": 30.0}))
        with pytest.raises(CommanderError, match="uplink not available in time"):
            c.send_paced("NOOP", time.monotonic() + 0.3)  # the channel's queue is full: held
        wall.step(-STEP_S)
        status.write_text(json.dumps({"scenario_s": clock.now_s(), "up_backlog_s": 0.0}))  # drained (new clock)
        t0 = time.monotonic()
        c.send_paced("NOOP", time.monotonic() + 3.0)
        assert time.monotonic() - t0 < 1.0 and pull.poll(2000)
    finally:
        close_all(c, pull, ctx=ctx)


def test_a_file_upload_goes_on_after_the_wall_clock_stepped_back(tmp_path, wall):
    """Commander.put_file (the CFDP upload loop) paced its PDUs on the wall clock and timed the
    transfer with it: stepped back 990 s mid-transfer, no PDU went up for 990 s (here: 'not
    delivered within 8 s') and the time it reported would have been negative. The flight end is
    the flight's own FileReceiver behind the commander's real sockets."""
    # 0.2 s of bulk queued at most (5 kB): most of the file goes up paced, after the step
    c, _, pull, ctx = commander(tmp_path, "link.uplink_rate_bps=200000.0", "link.uplink_bulk_queue_s=0.2")
    pub = ctx.socket(zmq.PUB)  # the channel's file_out: CFDP replies to the ground
    pub.setsockopt(zmq.LINGER, 0)
    file_out = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    (tmp_path / "channel.status.json").write_text(json.dumps({"file_out": file_out, "scenario_s": c.clock.now_s(),
                                                             "up_backlog_s": 0.0}))
    link = c.sc.link
    timers = timers_for(link.uplink_rate_bps, link.downlink_rate_bps, link.delay_ms / 1e3, c.pacer.queue_s)
    data = random.Random(7).randbytes(20_000)  # 40 segments, 0.8 s on the air
    seen = {"before": 0, "after": 0}
    stop, stepped = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    down_seq = [0]

    def reply(pdu: bytes) -> None:
        down_seq[0] += 1
        pub.send(wrap(pdu, Apid.FILE_REPLY, down_seq[0]))

    rx = FileReceiver(tmp_path / "flight", 10**7, timers, reply)

    def flight() -> None:  # the only user of pull, pub and rx while it runs
        try:
            last_tick = 0.0
            while not stop.is_set():
                if pull.poll(20):
                    while pull.poll(0):
                        rx.on_packet(pull.recv())
                        seen["after" if stepped.is_set() else "before"] += 1
                        if seen["before"] == 6 and not stepped.is_set():
                            wall.step(-STEP_S)  # mid-transfer: a few PDUs are on board
                            stepped.set()
                if time.monotonic() - last_tick > 0.05:
                    rx.tick()
                    last_tick = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            errors.append(exc)

    th = threading.Thread(target=flight, daemon=True)
    th.start()
    lines: list[str] = []
    try:
        sender = c.put_file(data, "stepped.bin", timeout_s=8.0, log=lines.append)
        assert stepped.is_set() and seen["after"] >= 25, seen  # most of it went up after the step
        assert sender.ok, sender.describe()
        assert 0.0 < sender.took_s < 8.0, (sender.took_s, lines)
        deadline = time.monotonic() + 5.0
        while rx.received_file(hashlib.sha256(data).hexdigest()) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        path = rx.received_file(hashlib.sha256(data).hexdigest())
        assert path is not None and path.read_bytes() == data
    finally:
        stop.set()
        th.join(5.0)
        close_all(c, pull, pub, ctx=ctx)
    assert not errors, errors


# -- the link channel process ---------------------------------------------------------------------

STEPPED_CHANNEL = textwrap.dedent("""
    import os, sys, time
    real, flag = time.time, os.environ["WALL_STEP_FLAG"]
    # the process's wall clock: stepped back by the number in the flag file once it exists
    time.time = lambda: real() - (float(open(flag).read() or 0) if os.path.exists(flag) else 0.0)
    if sys.argv[1] == "radio":  # a constellation satellite's radio (payload_sim/constellation.py)
        from payload_sim.constellation import radio_main
        sys.exit(radio_main(sys.argv[2:]))
    from ground_link.channel import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("program", ["channel", "radio"])
def test_the_channel_forwards_at_once_after_its_wall_clock_stepped_back(tmp_path, program):
    """The channel's transmitter queue ran on the wall clock: after a step back of 990 s a
    packet waited behind `free_at`, the wall time the previous packet had left the transmitter,
    for 990 s. So did a constellation satellite's radio, one such link per station. The real
    process, its wall clock stepped while it runs."""
    ports = {k: free_port() for k in ("space_in", "space_out", "ground_out", "ground_in")}
    flag = tmp_path / "wall_step"
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-c", STEPPED_CHANNEL, program, "--run-dir", str(run_dir), "--clock-start", str(time.time() - 5000.0)]
    if program == "radio":  # the station side of its one link
        cmd += ["--satellite", "1", "--pairs", json.dumps([{"station": "alpha", "ground_out": f"tcp://127.0.0.1:{ports['ground_out']}",
                                                            "ground_in": f"tcp://127.0.0.1:{ports['ground_in']}"}])]
    for s in [f'network.{k}="tcp://127.0.0.1:{p}"' for k, p in ports.items()] + [
            "security.curve=false", 'link.contacts="always"', "link.uplink_rate_bps=64000.0", "link.delay_ms=5.0", "scenario.clock_rate=1.0"]:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=os.environ | {"PYTHONPATH": str(REPO), "WALL_STEP_FLAG": str(flag)})
    ctx = zmq.Context()
    station, flight = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    for s in (station, flight):
        s.setsockopt(zmq.LINGER, 0)
    status_path = run_dir / "channel.status.json"

    def command(n: int) -> bytes:
        return bytes([(Apid.COMMAND >> 8) & 7, Apid.COMMAND & 0xFF]) + n.to_bytes(2, "big") + bytes(60)

    try:
        station.connect(f"tcp://127.0.0.1:{ports['ground_in']}")
        flight.connect(f"tcp://127.0.0.1:{ports['space_out']}")
        deadline = time.monotonic() + 20.0
        while not status_path.exists():  # the channel is up once it writes its status
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "channel did not start"
            time.sleep(0.05)
        while True:  # until the flight side is connected: a packet arrives
            station.send(command(1))
            if flight.poll(500):
                assert flight.recv() == command(1)
                break
            assert time.monotonic() < deadline, "nothing came through the channel"
        flag.write_text(str(STEP_S))
        time.sleep(0.2)  # the channel's loop reads the stepped clock
        t0 = time.monotonic()
        station.send(command(2))
        assert flight.poll(3000), "held behind the transmitter's wall-clock free_at"
        assert flight.recv() == command(2) and time.monotonic() - t0 < 1.0
        status: dict = {}
        while time.monotonic() < deadline:
            status = json.loads(status_path.read_text())
            if status["up_packets_out"] >= 2 and status["scenario_s"] < 5000.0 - STEP_S + 60.0:
                break
            time.sleep(0.05)
        # the contact state (scenario time) follows the process's wall clock, as the flight's does
        assert status["link_up"] and status["scenario_s"] < 5000.0 - STEP_S + 60.0, status
        link = status["stations"]["alpha"] if program == "radio" else status
        assert link["up_dropped_outside_contact"] == 0 and link["up_backlog_s"] < 1.0, status
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        station.close(0)
        flight.close(0)
        ctx.term()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
