"""Loopback TCP ports for the simulation's processes, chosen by a launcher (or a test) before the
processes that bind them have started.

Picking with bind(("127.0.0.1", 0)) and closing again, as this project did, failed CI (a
constellation run's radio died: "Address already in use") in two ways:
- the kernel hands a port it just gave out again: 25 picks in a row held a duplicate in 8 of 200
  tries on the CI host (Linux 6.18), so two sockets of one run were given one address;
- bind(0) draws from the ephemeral range, where every outgoing connect() takes its local port:
  ZeroMQ retries a connect every 100 ms while its peer starts, PostgreSQL clients connect, and so
  one of them can take a port after it was picked and before its process binds it.

So a port here is drawn at random below the ephemeral range, must be free now (a test bind), and
is reserved for RESERVE_S by a file in a per-user folder, under an flock, so no later pick on this
machine (the same launcher, another one, another test worker) is given it while its process starts.
Expired reservation files are removed once there are more than PRUNE_ABOVE.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
import time
from pathlib import Path

RESERVE_S = 600.0  # longer than any process takes to start and bind
PRUNE_ABOVE = 1000  # reservation files kept before the expired ones are removed
LOW = 20000  # the bottom of the range drawn from: clear of well-known service ports (5432, 8080, ...)
_draw = random.SystemRandom()  # not the seeded `random`: two seeded workers would draw the same ports


def port_range(text: str | None = None) -> tuple[int, int] | None:
    """The ports drawn from: LOW up to the ephemeral range's start, else above its end; None when
    the ephemeral range leaves fewer than 1000 (then the kernel's bind(0) choice is used).
    `text`: the contents of /proc/sys/net/ipv4/ip_local_port_range (read when None)."""
    try:
        if text is None:
            text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        lo, hi = (int(x) for x in text.split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999  # Linux's default
    if lo - LOW >= 1000:
        return LOW, lo - 1
    if 65535 - hi >= 1000:
        return hi + 1, 65535
    return None


def _bindable(port: int, host: str) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _prune(folder: Path, now: float) -> None:
    """Remove expired reservations once there are more than PRUNE_ABOVE, at most once a minute
    (so that the folder stays small on a machine that runs for years, and a pick stays cheap)."""
    stamp = folder / ".pruned"
    try:
        if now - stamp.stat().st_mtime < 60.0:
            return
    except FileNotFoundError:
        pass
    names = [n for n in os.listdir(folder) if n.isdigit()]
    if len(names) <= PRUNE_ABOVE:
        return
    for name in names:
        try:
            if now - (folder / name).stat().st_mtime >= RESERVE_S:
                (folder / name).unlink()
        except FileNotFoundError:
            pass
    stamp.touch()
    os.utime(stamp, (now, now))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that is free now and that no other call on this machine returns within
    RESERVE_S. Without a usable reservation folder (a read-only or full temp directory) it is only
    drawn and checked: still outside the ephemeral range, but not kept from another launcher."""
    folder = Path(tempfile.gettempdir()) / f"loopback-ports-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        lock = open(folder / ".lock", "a")
    except OSError:
        return _pick(host, None, time.time())
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # pick and reserve as one step across processes
        now = time.time()
        try:
            _prune(folder, now)
        except OSError:
            pass
        return _pick(host, folder, now)


def _pick(host: str, folder: Path | None, now: float) -> int:
    span = port_range()
    for _ in range(1000):
        if span is None:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        else:
            port = _draw.randint(*span)
        mark = None if folder is None else folder / str(port)
        try:
            if mark is not None and now - mark.stat().st_mtime < RESERVE_S:
                continue  # given out a moment ago; its process may not have bound it yet
        except FileNotFoundError:
            pass
        if _bindable(port, host):
            if mark is not None:
                try:
                    mark.touch()
                    os.utime(mark, (now, now))
                except OSError:  # not recorded (a full temp directory): the port is free all the same
                    pass
            return port
    raise RuntimeError(f"no free port on {host} after 1000 tries")
