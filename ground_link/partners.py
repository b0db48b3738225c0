"""Partner agencies: who may log in to the operator console, and what each may see.

    python -m ground_link.partners hash            # read a password (stdin), print its hash for a partners file
    python -m ground_link.partners check FILE      # load and validate a partners file, print each rule

A partners file is TOML, one `[[partner]]` table per login:

```toml
[[partner]]
name = "baku"                      # the login name: lower-case letters, digits, - and _
title = "Baku partner agency"      # shown in the console
role = "partner"                   # "partner" (default): its rule below applies; "operator": sees everything
password_hash = "scrypt$16384$8$1$<salt>$<key>"   # never the password: python -m ground_link.partners hash
regions = [[38.0, 44.0, 42.5, 51.0]]   # [lat0, lon0, lat1, lon1] boxes (deg; lon0 > lon1 crosses 180); [] = anywhere
classes = ["fire", "ship"]         # detection classes it may see
delay_s = 0.0                      # sees a product this many seconds after the ground archived it
housekeeping = false               # spacecraft housekeeping and events (operators always)
```

The rule decides every product, by whatever route it is asked for (console pages, the JSON API,
the live feed, exports, chips by id): `Partner.allows(...)` is the one place that says yes.

- A **detection** or **alert**: its class is in `classes` and its position is in one of
  `regions` (a detection without a position is seen only by a partner with no regions).
- An **image chip** of a detection: as that detection. A **quicklook** (or a chip the ground asked
  for, or one whose detection has not arrived): the frame's centre must be in a region, and a
  chip of a class must be of an allowed class.
- A **frame summary** (cloud cover): the frame's centre in a region; its ship and fire counts
  only for the classes allowed.
- **Housekeeping and events**: only with `housekeeping = true`.
- **Delay**: a product is released `delay_s` wall seconds after the ground archived it (its
  `received_wall`); before that it does not exist for the partner.

Passwords are stored as scrypt hashes (hashlib, a fresh 16-byte salt each). Console sessions are
random 256-bit tokens held in the console's memory (lost when it restarts), sent as an HttpOnly,
SameSite=Strict cookie or an `Authorization: Bearer` header.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import math
import re
import secrets
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ground_link.alerts import in_region

CLASSES = ("fire", "ship")
ROLES = ("partner", "operator")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # 16 MiB, about 50 ms per check here
KEYS = {"name", "title", "role", "password_hash", "regions", "classes", "delay_s", "housekeeping"}
DEMO_FILE = Path(__file__).resolve().parent / "console" / "demo_partners.toml"


class PartnersError(ValueError):
    pass


# --- passwords ---------------------------------------------------------------------------------


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$salt$key` (urlsafe base64, no padding)."""
    if not password:
        raise PartnersError("empty password")
    if "\x00" in password:  # see verify_password
        raise PartnersError("a password cannot hold a NUL character")
    salt = salt if salt is not None else secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


MAXMEM = 2**26  # what one check may take (scrypt's memory is about 128 * r * n bytes)


def verify_password(password: str, stored: str) -> bool:
    if "\x00" in password:
        # scrypt keys HMAC-SHA256 with the password, and HMAC pads a key with zero bytes: "secret",
        # "secret\0" and "secret\0\0" were all the same password. No password holds a NUL.
        return False
    try:
        algo, n, r, p, salt, key = stored.split("$")
        if algo != "scrypt":
            return False
        want = _unb64(key)
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(want),
                             maxmem=MAXMEM)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def check_hash(stored: str) -> str | None:
    """Why a stored hash can never verify (None: it can). verify_password answers False for a
    hash it cannot compute (parameters scrypt refuses or past MAXMEM, a salt or key that is not
    base64, an empty key) exactly as for a wrong password: such a partner could never log in and
    nothing said why. Checked when a partners file is loaded, by one computation (about as long as
    one login: p is bounded first so that stays short)."""
    try:
        algo, n, r, p, salt, key = stored.split("$")
        want = _unb64(key)
        if algo != "scrypt" or not want:
            return "not scrypt$N$r$p$salt$key with a key"
        if not (1 <= int(p) <= 16 and 1 <= int(r) <= 64):
            return f"r={r}, p={p}: r must be 1..64 and p 1..16"
        hashlib.scrypt(b"", salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(want), maxmem=MAXMEM)
    except (ValueError, TypeError, OverflowError) as exc:
        return str(exc) or type(exc).__name__
    return None


# --- rules ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Partner:
    name: str
    password_hash: str = field(repr=False)
    title: str = ""
    role: str = "partner"
    regions: tuple[tuple[float, float, float, float], ...] = ()
    classes: tuple[str, ...] = CLASSES
    delay_s: float = 0.0
    housekeeping: bool = False

    @property
    def operator(self) -> bool:
        return self.role == "operator"

    def released(self, received_wall: float | None, now: float | None = None) -> bool:
        """Archived at least delay_s ago (a product with no archive time is never released to a
        delayed partner)."""
        if self.operator or self.delay_s <= 0:
            return True
        if received_wall is None:
            return False
        # wall clock on purpose: received_wall is the archive's wall-clock timestamp
        return received_wall <= (time.time() if now is None else now) - self.delay_s

    def sees_position(self, lat: float | None, lon: float | None) -> bool:
        if self.operator or not self.regions:
            return True
        if lat is None or lon is None or math.isnan(lat) or math.isnan(lon):
            return False  # a region rule needs a position
        return any(in_region(r, lat, lon) for r in self.regions)

    def sees_class(self, cls: str | None) -> bool:
        """`cls` None: the product is not of a detection class (a quicklook, a frame)."""
        return self.operator or cls is None or cls in self.classes

    def allows(self, kind: str, cls: str | None, lat: float | None, lon: float | None,
               received_wall: float | None, now: float | None = None) -> bool:
        """The one decision: may this partner see a product of `kind` (alert, detection, chip,
        quicklook, frame, housekeeping, event) with this class, position and archive time."""
        if self.operator:
            return True
        if not self.released(received_wall, now):
            return False
        if kind in ("housekeeping", "event"):
            return self.housekeeping
        return self.sees_class(cls) and self.sees_position(lat, lon)

    def describe(self) -> str:
        if self.operator:
            return f"{self.name}: operator, sees everything"
        where = "anywhere" if not self.regions else " or ".join(
            f"[{a:g}, {b:g}, {c:g}, {d:g}]" for a, b, c, d in self.regions)
        return (f"{self.name}: {', '.join(self.classes) or 'no classes'} in {where}, delay {self.delay_s:g} s, "
                f"housekeeping {'yes' if self.housekeeping else 'no'}")

    def public(self) -> dict:
        """What the console tells the logged-in partner about its own rule."""
        return {"name": self.name, "title": self.title or self.name, "role": self.role,
                "regions": [list(r) for r in self.regions], "classes": list(self.classes), "delay_s": self.delay_s,
                "housekeeping": self.operator or self.housekeeping, "rule": self.describe()}


def _region(key: str, value) -> tuple[float, float, float, float]:
    if not isinstance(value, list | tuple) or len(value) != 4 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise PartnersError(f"{key} = {value!r}: must be [lat0, lon0, lat1, lon1] in degrees")
    lat0, lon0, lat1, lon1 = (float(v) for v in value)
    if not -90 <= lat0 <= lat1 <= 90:
        raise PartnersError(f"{key} = {value!r}: latitudes must satisfy -90 <= lat0 <= lat1 <= 90")
    if not (-180 <= lon0 <= 180 and -180 <= lon1 <= 180):
        raise PartnersError(f"{key} = {value!r}: longitudes must be in [-180, 180] (lon0 > lon1 crosses 180)")
    return lat0, lon0, lat1, lon1


def parse_partners(data: dict, source: str = "partners") -> dict[str, Partner]:
    tables = data.get("partner")
    extra = set(data) - {"partner"}
    if extra:
        raise PartnersError(f"{source}: unknown key {sorted(extra)[0]!r}; a partners file holds [[partner]] tables")
    if not isinstance(tables, list) or not tables:
        raise PartnersError(f"{source}: no [[partner]] tables")
    out: dict[str, Partner] = {}
    for i, t in enumerate(tables):
        key = f"{source}: partner[{i}]"
        if not isinstance(t, dict):
            raise PartnersError(f"{key}: must be a table")
        unknown = set(t) - KEYS
        if unknown:
            raise PartnersError(f"{key}.{sorted(unknown)[0]}: unknown key; known keys: {sorted(KEYS)}")
        name = t.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise PartnersError(f"{key}.name = {name!r}: lower-case letters, digits, - and _ (at most 32)")
        if name in out:
            raise PartnersError(f"{key}.name = {name!r}: given twice")
        pw = t.get("password_hash")
        if not isinstance(pw, str) or not pw.startswith("scrypt$") or pw.count("$") != 5:
            raise PartnersError(f"{key}.password_hash: must be a hash from `python -m ground_link.partners hash`")
        why = check_hash(pw)
        if why is not None:  # it would load, and that partner could never log in (every login "wrong password")
            raise PartnersError(f"{key}.password_hash: cannot be checked ({why}); make one with "
                                "`python -m ground_link.partners hash`")
        role = t.get("role", "partner")
        if role not in ROLES:
            raise PartnersError(f"{key}.role = {role!r}: must be one of {list(ROLES)}")
        classes = t.get("classes", list(CLASSES))
        if not isinstance(classes, list) or any(c not in CLASSES for c in classes):
            raise PartnersError(f"{key}.classes = {classes!r}: a list of {list(CLASSES)}")
        regions = t.get("regions", [])
        if not isinstance(regions, list):
            raise PartnersError(f"{key}.regions = {regions!r}: a list of [lat0, lon0, lat1, lon1]")
        delay = t.get("delay_s", 0.0)
        if not isinstance(delay, int | float) or isinstance(delay, bool) or not 0 <= delay <= 1e9:
            raise PartnersError(f"{key}.delay_s = {delay!r}: seconds, >= 0")
        hk = t.get("housekeeping", False)
        title = t.get("title", "")
        if not isinstance(hk, bool) or not isinstance(title, str):
            raise PartnersError(f"{key}: housekeeping must be true/false and title a string")
        out[name] = Partner(name, pw, title, role, tuple(_region(f"{key}.regions[{j}]", r) for j, r in enumerate(regions)),
                            tuple(dict.fromkeys(classes)), float(delay), hk)
    return out


def load_partners(path: str | Path) -> dict[str, Partner]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PartnersError(f"cannot read partners file {path}: {exc}") from exc
    return parse_partners(data, str(path))


# --- sessions ------------------------------------------------------------------------------------


class Sessions:
    """Logins and their session tokens, in memory. Repeated failures for one name are slowed down:
    after `max_failures` within `lockout_s`, that name is refused until the window passes."""

    def __init__(self, partners: dict[str, Partner], ttl_s: float = 12 * 3600, max_failures: int = 5,
                 lockout_s: float = 60.0):
        self.partners, self.ttl_s = partners, ttl_s
        self.max_failures, self.lockout_s = max_failures, lockout_s
        self._tokens: dict[str, tuple[str, float]] = {}
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        # a dummy hash, so an unknown name costs as much time as a wrong password
        self._dummy = hash_password(secrets.token_hex(8))

    def login(self, name: str, password: str) -> str | None:
        """A new session token, or None (unknown name, wrong password or locked out)."""
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._failures.get(name, []) if now - t < self.lockout_s]
            # kept only while there are failures to remember: every name ever tried (any string a
            # client sends, known or not) used to stay here for good, a memory anyone could fill
            if recent:
                self._failures[name] = recent
            else:
                self._failures.pop(name, None)
            locked = len(recent) >= self.max_failures
        partner = self.partners.get(name)
        ok = verify_password(password, partner.password_hash if partner else self._dummy) and partner is not None
        with self._lock:
            if not ok or locked:
                if name in self.partners:
                    self._failures.setdefault(name, []).append(now)
                return None
            self._failures.pop(name, None)
            # expired sessions were dropped only when their token came back: every login never
            # used again (a script logging in per request) stayed in memory for good
            for t in [t for t, (_, exp) in self._tokens.items() if now > exp]:
                del self._tokens[t]
            token = secrets.token_urlsafe(32)
            self._tokens[token] = (name, now + self.ttl_s)
            return token

    def partner(self, token: str | None) -> Partner | None:
        if not token:
            return None
        with self._lock:
            entry = self._tokens.get(token)
            if entry is None:
                return None
            name, expires = entry
            if time.monotonic() > expires:
                del self._tokens[token]
                return None
        return self.partners.get(name)

    def logout(self, token: str | None) -> None:
        with self._lock:
            self._tokens.pop(token or "", None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ground_link.partners", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("hash", help="read a password (twice on a terminal, else one line of stdin), print its hash")
    c = sub.add_parser("check", help="validate a partners file and print each rule")
    c.add_argument("file", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "hash":
        if sys.stdin.isatty():
            pw = getpass.getpass("password: ")
            if getpass.getpass("again: ") != pw:
                print("partners: the two passwords differ", file=sys.stderr)
                return 2
        else:
            pw = sys.stdin.readline().rstrip("\n")
        try:
            print(hash_password(pw))
        except PartnersError as exc:
            print(f"partners: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        partners = load_partners(args.file)
    except PartnersError as exc:
        print(f"partners: {exc}", file=sys.stderr)
        return 2
    for partner in partners.values():
        print(partner.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
