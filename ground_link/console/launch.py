"""The launcher's side of the console (payload_sim.hil --console / --console-stay): start it as one
more process on the run folder, stop it with the run, or keep it serving the archive afterwards
until Ctrl-C. Kept here so hil.py holds only the calls."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path

from ground_link.partners import DEMO_FILE
from ground_link.ports import free_port

DEMO_LOGINS = "operator / operator-demo, baku / baku-demo, astana / astana-demo"


class ConsoleProcess:
    def __init__(self, proc: subprocess.Popen, url: str, run_dir: Path):
        self.proc, self.url, self.run_dir = proc, url, run_dir

    @classmethod
    def start(cls, scenario, run_dir: Path, enabled: bool = False) -> ConsoleProcess | None:
        """Start when `enabled` (the --console flags) or ground.console_port >= 0; None when off."""
        port = scenario.ground.console_port
        if port < 0 and not enabled:
            return None
        missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
        if missing:
            print(f"console: not started: {', '.join(missing)} missing (pip install -e '.[ground]'; make run does)",
                  file=sys.stderr, flush=True)
            return None
        port = port if port > 0 else free_port()
        cmd = [sys.executable, "-m", "ground_link.console", str(run_dir), "--port", str(port), "--exit-with-parent"]
        partners = scenario.ground.partners_file
        if partners:
            cmd += ["--partners", str(Path(partners).resolve())]
        log = open(run_dir / "console.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}/"
        logins = f"logins in {partners}" if partners else f"demo logins {DEMO_LOGINS} ({DEMO_FILE.name})"
        print(f"console: {url}  ({logins})", file=sys.stderr, flush=True)
        return cls(proc, url, run_dir)

    def stop(self, grace_s: float = 4.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def finish(self, stay: bool) -> None:
        """After the run: stop, or (stay) keep serving the archive until Ctrl-C / SIGTERM."""
        if not stay or self.proc.poll() is not None:
            if stay:
                print(f"console: exited early with code {self.proc.returncode} (log {self.run_dir / 'console.log'})",
                      file=sys.stderr, flush=True)
            self.stop()
            return
        print(f"console: still serving {self.url} on the archive of {self.run_dir}; Ctrl-C to stop",
              file=sys.stderr, flush=True)
        stopped: list[str] = []
        old = {s: signal.signal(s, lambda signum, _f: stopped.append(signal.Signals(signum).name))
               for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not stopped and self.proc.poll() is None:
                time.sleep(0.2)
        finally:
            self.stop()
            for s, h in old.items():
                signal.signal(s, h)
        print("console: stopped", file=sys.stderr, flush=True)
