"""Key material: the mission key that authenticates telecommands, and CURVE on the ZeroMQ links.

Mission key: 16..64 random bytes written as hex in a file (mode 0600). It is found, in this order,
in the environment variable FLIGHT_MISSION_KEY (hex), the file named by FLIGHT_MISSION_KEY_FILE,
or the file named by `security.command_key_file`; never in code or in a scenario. The launcher
writes a fresh one per run (RUN_DIR/mission.key) and gives its path to flight and ground.

CURVE (`security.curve = true`): every process has its own certificate (zmq.auth), made per run
by the launcher in `security.curve_dir`. Binding processes (camera, channel) are CURVE servers and
accept only clients whose public key is in `<curve_dir>/authorized/` (a ZAP handler,
zmq.auth.thread.ThreadAuthenticator); connecting processes (flight, station, commander) know the
server's public key. An unknown peer, or one without CURVE, never completes the handshake.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from flight.config import SecuritySection

KEY_ENV = "FLIGHT_MISSION_KEY"
KEY_FILE_ENV = "FLIGHT_MISSION_KEY_FILE"
KEY_BYTES = 32
KEY_FILE_MAX = 4096  # a 64-byte key is 128 hex digits; room for whitespace and a newline
SERVERS = ("camera", "channel")  # processes that bind
CLIENTS = ("flight", "station", "commander")  # processes that connect


class KeyMaterialError(ValueError):
    """Key material missing or malformed: carries where it was looked for."""

    def __init__(self, reason: str, source: str, what: str = "mission key"):
        super().__init__(f"{what} ({source}): {reason}")
        self.reason, self.source = reason, source


def _parse_key(text: str, source: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise KeyMaterialError("not hexadecimal", source) from None
    if not 16 <= len(key) <= 64:
        raise KeyMaterialError(f"{len(key)} bytes, need 16..64", source)
    return key


def resolve(path: str, run_dir: Path | None) -> Path:
    p = Path(path)
    return p if p.is_absolute() or run_dir is None else run_dir / p


def load_mission_key(sec: SecuritySection, run_dir: Path | None = None) -> bytes:
    """The mission key from the environment or the configured file; raises KeyMaterialError when absent."""
    if os.environ.get(KEY_ENV):
        return _parse_key(os.environ[KEY_ENV], f"${KEY_ENV}")
    path = os.environ.get(KEY_FILE_ENV) or sec.command_key_file
    if not path:
        raise KeyMaterialError(f"none given: set security.command_key_file, ${KEY_FILE_ENV} or ${KEY_ENV}", "nowhere")
    f = resolve(path, run_dir)
    try:
        # at most KEY_FILE_MAX bytes: a key file named by mistake as /dev/zero or a huge file
        # would otherwise be read for ever (or until memory runs out) at start-up
        with open(f, "rb") as fh:
            raw = fh.read(KEY_FILE_MAX + 1)
        text = raw.decode()
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: a NUL in the path
        raise KeyMaterialError(f"cannot read: {exc}", str(f)) from None
    if len(raw) > KEY_FILE_MAX:
        raise KeyMaterialError(f"more than {KEY_FILE_MAX} bytes: not a key file", str(f))
    return _parse_key(text, str(f))


def write_mission_key(path: Path) -> Path:
    """A fresh random key, hex, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(KEY_BYTES) + "\n")
    return path


# --- CURVE ------------------------------------------------------------------------------------------


def generate_curve_keys(curve_dir: Path) -> Path:
    """One certificate per process, and the allowed clients' public keys in curve_dir/authorized."""
    curve_dir.mkdir(parents=True, exist_ok=True)
    authorized = curve_dir / "authorized"
    authorized.mkdir(exist_ok=True)
    for name in SERVERS + CLIENTS:
        public, secret = zmq.auth.create_certificates(str(curve_dir), name)
        os.chmod(secret, 0o600)
        if name in CLIENTS:
            (authorized / f"{name}.key").write_bytes(Path(public).read_bytes())
    return curve_dir


def curve_dir_of(sec: SecuritySection, run_dir: Path | None) -> Path:
    return resolve(sec.curve_dir or "curve", run_dir)


class SecureContext(zmq.Context):
    """A zmq.Context that puts CURVE on its sockets when `security.curve` is on (else a plain context).

    `serve(sock)` before bind, `client(sock, server_name)` before connect. term() stops the ZAP
    authenticator first, so a process's usual `ctx.term()` does not hang on it."""

    # pyzmq contexts need attributes declared at class level to set them on instances
    _curve_dir: Path | None = None
    _name: str = ""
    _auth: ThreadAuthenticator | None = None

    def __init__(self, sec: SecuritySection, name: str, run_dir: Path | None = None):
        super().__init__()
        self._name = name
        self._curve_dir = curve_dir_of(sec, run_dir) if sec.curve else None
        self._auth = None

    @property
    def curve(self) -> bool:
        return self._curve_dir is not None

    def _load(self, name: str, secret: bool) -> tuple[bytes, bytes | None]:
        assert self._curve_dir is not None
        path = self._curve_dir / f"{name}.key{'_secret' if secret else ''}"
        try:
            return zmq.auth.load_certificate(str(path))
        except (OSError, ValueError) as exc:
            raise KeyMaterialError(f"certificate of {name!r} unusable ({exc}); the launcher makes them per run, "
                                   "or set security.curve_dir (security.curve = false only in a lab scenario)",
                                   str(path), what="CURVE") from None

    def serve(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE server that admits only the authorized clients (call before bind)."""
        if not self.curve:
            return
        if self._auth is None:
            self._auth = ThreadAuthenticator(self)
            self._auth.start()
            assert self._curve_dir is not None  # self.curve is True
            self._auth.configure_curve(domain="*", location=str(self._curve_dir / "authorized"))
        public, secret = self._load(self._name, secret=True)
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_server = True

    def client(self, sock: zmq.Socket, server: str) -> None:
        """Make `sock` a CURVE client of the named server process (call before connect)."""
        if not self.curve:
            return
        public, secret = self._load(self._name, secret=True)
        server_public, _ = self._load(server, secret=False)
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = server_public

    def term(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        super().term()
