"""systemd's sd_notify protocol without a dependency (issue #15, deploy/onboard-flight.service).

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET`` (an AF_UNIX datagram socket; a leading
``@`` is the abstract namespace). The flight sends ``READY=1`` once started, ``WATCHDOG=1`` from
its main loop (rate-limited to a fraction of ``$WATCHDOG_USEC``: when the loop stops turning, for
instance inside an onnxruntime call that never returns, systemd kills and restarts the process)
and ``STOPPING=1`` when it stops. Without ``$NOTIFY_SOCKET`` every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        # feed at a quarter of the period when systemd set one, else once a second (harmless)
        self.watchdog_every_s = int(usec) / 4e6 if usec.isdigit() and ours else 1.0
        self._last_watchdog = float("-inf")
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, state: str) -> bool:
        """Send one state string; False (never an exception) when there is no socket or it fails."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(state.encode(), self.address)
            self.sent += 1
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        """WATCHDOG=1, at most once per ``watchdog_every_s``: call it on every main-loop turn."""
        now = time.monotonic()
        if not self.address or now - self._last_watchdog < self.watchdog_every_s:
            return False
        self._last_watchdog = now
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))
