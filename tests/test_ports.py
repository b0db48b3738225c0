"""Ports the launchers and tests give their processes (ground_link.ports), and what a launcher says
when one of its processes dies.

CI failed on a constellation run whose radio died with "Address already in use": the launcher had
picked ports with bind(0)-and-close, and the kernel handed one of them out twice in one run."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

from ground_link import ports
from ground_link.ports import free_port, port_range
from payload_sim.hil import died

REPO = Path(__file__).resolve().parents[1]


def ephemeral() -> tuple[int, int]:
    lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(lo), int(hi)


def test_many_picks_in_a_row_are_all_different_and_outside_the_ephemeral_range():
    """The old pick gave a duplicate among 25 in 8 of 200 tries on the CI host; 300 in a row here.
    Outside the ephemeral range, no process's connect() can take a port before its owner binds it."""
    got = [free_port() for _ in range(300)]
    assert len(set(got)) == len(got)
    lo, hi = ephemeral()
    assert not [p for p in got if lo <= p <= hi]
    assert all(1024 <= p <= 65535 for p in got)


def test_picks_in_parallel_processes_never_meet():
    """Two launchers (or two test workers) starting at once: the reservation folder and its lock
    keep their picks apart."""
    code = "from ground_link.ports import free_port; print(*[free_port() for _ in range(150)])"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    picks = [set(map(int, p.communicate(timeout=60)[0].split())) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(picks[0]) == len(picks[1]) == 150
    assert not picks[0] & picks[1]


def test_a_port_in_use_is_never_given(monkeypatch):
    """A port another program listens on is skipped, though the draw offers it first."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        offers = iter([taken, taken])

        class Draw:  # the random source, offering the busy port before falling back to random ones
            def randint(self, a, b):
                return next(offers, None) or random.SystemRandom().randint(a, b)

        monkeypatch.setattr(ports, "_draw", Draw())
        monkeypatch.setattr(ports, "port_range", lambda text=None: (1024, 65535))
        got = free_port()
        assert got != taken
        assert next(offers, "spent") == "spent"  # both offers of the busy port were looked at and refused


def test_the_range_drawn_from_follows_the_kernels_ephemeral_range():
    assert port_range("32768\t60999\n") == (20000, 32767)  # Linux's default
    assert port_range("40000 65000") == (20000, 39999)
    assert port_range("20500 60000") == (60001, 65535)  # too little below: above it
    assert port_range("1024 65535") is None  # nothing left outside: the kernel's bind(0) choice
    assert port_range("garbage") == (20000, 32767)  # unreadable: Linux's default assumed


def test_expired_reservations_are_removed_once_there_are_many(monkeypatch, tmp_path):
    """The reservation folder does not grow for good: past PRUNE_ABOVE files, those older than
    RESERVE_S go; fresh ones stay (their ports are still starting)."""
    monkeypatch.setattr(ports.tempfile, "gettempdir", lambda: str(tmp_path))
    folder = tmp_path / f"loopback-ports-{os.getuid()}"
    folder.mkdir()
    old = time.time() - ports.RESERVE_S - 5
    for port in range(1, ports.PRUNE_ABOVE + 2):
        (folder / str(port)).touch()
        os.utime(folder / str(port), (old, old))
    (folder / "2000").touch()  # reserved a moment ago
    got = free_port()
    left = sorted(int(p.name) for p in folder.glob("[0-9]*"))
    assert left == sorted({2000, got})


def test_without_a_usable_temp_directory_a_port_is_still_given(monkeypatch):
    """A temp directory that cannot hold the reservation folder (read-only, full, not a
    directory): the port is drawn and checked as before, not refused."""
    monkeypatch.setattr(ports.tempfile, "gettempdir", lambda: "/dev/null/none")
    got = [free_port() for _ in range(20)]  # (without reservations two may repeat: not asserted)
    lo, hi = ephemeral()
    assert not [p for p in got if lo <= p <= hi] and all(1024 <= p <= 65535 for p in got)


def test_a_dead_process_is_reported_with_the_end_of_its_log(tmp_path):
    (tmp_path / "radio3.log").write_text(
        "[channel] satellite 3 -> baku: 6478-6971 s\nTraceback (most recent call last):\n  File \"x.py\", line 1\n\n"
        "zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:36201')\n")
    said = died(tmp_path, "radio3", 1)
    assert said.startswith("process radio3 died with exit code 1 (log: ")
    assert said.splitlines()[-1] == "  | zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:36201')"
    assert len(said.splitlines()) == 5  # the message and the log's 4 non-empty lines
    assert died(tmp_path, "flight1", -9) == f"process flight1 died with exit code -9 (log: {tmp_path / 'flight1.log'})"
