"""The operator console (issue #14): partner rules and sessions, every route of the web API, the
live feed, and a real headless Chromium against a live run.

Isolation is proven on a small archive with products in known places (`products()` below): for
each partner, every route (API lists, product by id, chips by id, exports, the live feed) returns
exactly the products its rule allows, and every id it may not see answers like an id that does not
exist. The browser test runs the real launcher with the console and drives the page; it skips
with the reason when chromium or chromedriver is not installed (.ci/run installs them).
"""

from __future__ import annotations

import http.client
import json
import math
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from e2e_util import REPO, hil_command, kill_leftovers, wait_console, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from flight.config import AlertRule
from flight.dictionary import DetectionClass
from flight.products import Detection, Event, FrameSummary, ImageChip, housekeeping
from ground_link.alerts import alert_record
from ground_link.archive import Archive
from ground_link.partners import hash_password
from ground_link.ports import free_port

# --- a small archive with known products in known places ----------------------------------------

E = 1 << 32  # product ids of store epoch 1: (1 << 32) | n, 64-bit like the flight's
FIRE, SHIP = int(DetectionClass.FIRE), int(DetectionClass.SHIP)
RULES = {"fire": (0, AlertRule("fire", 0.5, "critical", throttle_km=0.0)),
         "ship": (1, AlertRule("ship", 0.5, "info", throttle_km=0.0))}
PASSWORDS = {"operator": "op-secret", "north": "north-secret", "south": "south-secret", "late": "late-secret"}
NORTH = [-30.0, 50.0, -20.0, 70.0]
SOUTH = [-45.0, 50.0, -35.0, 70.0]


def png(seed: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    ok, data = cv2.imencode(".png", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    assert ok
    return data.tobytes()


def det(n, frame, t, cls, lat, lon, conf=0.9, row=100.0, col=200.0, area=40):
    return Detection(E | n, frame, t, cls, round(conf * 255), row, col, lat, lon, area)


def summary(n, frame, t, lat, lon, cloud=0.2):
    return FrameSummary(E | n, frame, t, 256, int(cloud * 256), cloud, 0, 1, 1, 40.0, lat, lon)


def chip(n, frame, t, cls, row=100.0, col=200.0, size=16):
    return ImageChip(E | n, frame, t, cls, row, col, size, size, 3, png(n, size))


# (product, where it belongs): "north", "south", "outside" (neither region), "nopos" (no position)
def products() -> list[tuple[object, str]]:
    nan = math.nan
    return [
        (summary(1, 0, 0.0, -25.0, 60.0, 0.1), "north"),
        (det(2, 0, 0.0, FIRE, -25.01, 60.01), "north"),
        (det(3, 0, 0.0, SHIP, -25.02, 60.0, row=300.0, col=40.0), "north"),
        (chip(4, 0, 0.0, FIRE, 102.0, 199.0), "north"),  # within CHIP_MATCH_PX of detection 2
        (chip(5, 0, 0.0, 255, 128.0, 128.0, 32), "north"),  # frame 0's quicklook
        (det(6, 0, 0.0, FIRE, nan, nan, row=10.0, col=10.0), "nopos"),
        (summary(7, 1, 10.0, -40.0, 58.0, 0.6), "south"),
        (det(8, 1, 10.0, FIRE, -40.01, 58.02), "south"),
        (det(9, 1, 10.0, SHIP, -40.0, 58.1, row=500.0, col=500.0), "south"),
        (chip(10, 1, 10.0, FIRE, 100.0, 200.0), "south"),
        (chip(11, 1, 10.0, SHIP, 500.0, 501.0), "south"),  # a ship chip: not for the fire-only partner
        (chip(12, 1, 10.0, 255, 128.0, 128.0, 32), "south"),
        (summary(13, 2, 20.0, -10.0, 80.0, 0.9), "outside"),
        (det(14, 2, 20.0, FIRE, -10.0, 80.0), "outside"),
        (chip(15, 2, 20.0, FIRE, 100.0, 200.0), "outside"),
        (housekeeping(E | 16, 25.0, {7: 3.0, 5: 500.0, 17: 0.0, 14: 0.0}), "hk"),
        (Event(E | 17, 26.0, 15, 4, -1, "mode NOMINAL -> SAFE: test"), "hk"),
    ]


def build_archive(run_dir: Path, received_wall: float | None = None) -> dict:
    """Archive every product (received `received_wall`, default now - 10 s, 10 ms apart) and an
    alert for each detection; returns {product_id: place} and the alert ids per place."""
    run_dir.mkdir(parents=True, exist_ok=True)
    wall = (time.time() - 10.0) if received_wall is None else received_wall
    arch = Archive(run_dir / "archive.sqlite")
    place: dict[int, str] = {}
    alert_place: dict[int, str] = {}
    alert_class: dict[int, str] = {}
    n_alert = 0
    for i, (p, where) in enumerate(products()):
        w = wall + 0.01 * i
        assert arch.product(p, w)
        place[p.product_id] = where
        if isinstance(p, Detection):
            cls = "fire" if p.class_id == FIRE else "ship"
            idx, rule = RULES[cls]
            arch.alert(alert_record(p, idx, rule, w, p.capture_time_s + 1.0, False))
            n_alert += 1
            alert_place[n_alert] = where
            alert_class[n_alert] = cls
    arch.close()
    (run_dir / "launch.json").write_text(json.dumps({
        "scenario": str(REPO / "payload_sim" / "scenarios" / "demo.toml"),
        "overrides": [], "clock_start": wall - 5.0, "run_dir": str(run_dir)}))
    return {"place": place, "alert_place": alert_place, "alert_class": alert_class}


def partners_file(path: Path, late_delay_s: float = 3600.0) -> Path:
    h = {n: hash_password(pw) for n, pw in PASSWORDS.items()}
    path.write_text(f"""
[[partner]]
name = "operator"
role = "operator"
password_hash = "{h['operator']}"

[[partner]]
name = "north"
title = "North agency"
password_hash = "{h['north']}"
regions = [{NORTH}]
classes = ["fire", "ship"]
housekeeping = true

[[partner]]
name = "south"
title = "South agency"
password_hash = "{h['south']}"
regions = [{SOUTH}]
classes = ["fire"]

[[partner]]
name = "late"
title = "Embargoed agency"
password_hash = "{h['late']}"
classes = ["fire", "ship"]
delay_s = {late_delay_s}
""")
    return path


def expected_products(name: str, info: dict) -> set[int]:
    """The product ids (detections, chips, frames) a partner must see, from the table above."""
    out = set()
    for p, where in products():
        pid = p.product_id
        if name == "operator":
            out.add(pid)
            continue
        if name == "late" or where in ("outside", "nopos"):
            continue
        if where == "hk":
            if name == "north":
                out.add(pid)
            continue
        if where != name:
            continue
        if name == "south" and getattr(p, "class_id", None) == SHIP:
            continue
        out.add(pid)
    return out


def expected_alerts(name: str, info: dict) -> set[int]:
    if name == "operator":
        return set(info["alert_place"])
    if name == "late":
        return set()
    return {a for a, w in info["alert_place"].items()
            if w == name and (name == "north" or info["alert_class"][a] == "fire")}


# --- a console process on that archive, and an HTTP client -----------------------------------------

PARTNERS = ("operator", "north", "south", "late")


class Client:
    """urllib against the console: bearer token (default) or the session cookie."""

    def __init__(self, base: str):
        self.base, self.token = base, None

    def login(self, name: str, password: str) -> int:
        status, _, body = self.request("/api/login", {"name": name, "password": password})
        self.token = json.loads(body).get("token") if status == 200 else None
        return status

    def request(self, path: str, data: dict | None = None, headers: dict | None = None,
                auth: bool = True) -> tuple[int, dict, bytes]:
        h = dict(headers or {})
        if auth and self.token and "Cookie" not in h:
            h["Authorization"] = f"Bearer {self.token}"
        body = None
        if data is not None:
            body, h["Content-Type"] = json.dumps(data).encode(), "application/json"
        req = urllib.request.Request(self.base + path, data=body, headers=h, method="POST" if data is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, path: str):
        status, _, body = self.request(path)
        assert status == 200, (path, status, body[:200])
        return json.loads(body)


def start_console(run_dir: Path, partners: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ground_link.console", str(run_dir), "--port", str(port),
                             "--partners", str(partners)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    base = f"http://127.0.0.1:{port}"
    wait_console(base, proc, 30, "the console to listen")
    return proc, base


def stop_console(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the console did not stop within 10 s of SIGTERM") from None


def login_all(base: str) -> dict[str, Client]:
    """A client logged in as each partner (and the operator)."""
    clients = {}
    for name in PARTNERS:
        c = Client(base)
        assert c.login(name, PASSWORDS[name]) == 200
        clients[name] = c
    return clients


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("console_run")
    info = build_archive(run_dir)
    proc, base = start_console(run_dir, partners_file(run_dir / "partners.toml"))
    clients = login_all(base)
    yield {"base": base, "info": info, "clients": clients, "run_dir": run_dir}
    stop_console(proc)


class Feed:
    """Reads the live feed (server-sent events) in a thread until closed."""

    def __init__(self, base: str, token: str, cursor: str = "0:0.0"):
        host, port = base.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.conn.request("GET", f"/api/stream?cursor={cursor}", headers={"Authorization": f"Bearer {token}"})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200 and self.resp.getheader("Content-Type").startswith("text/event-stream")
        self.events: list[tuple[str, dict, float]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        name, data = None, []
        try:
            for raw in self.resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif not line and name:
                    self.events.append((name, json.loads("\n".join(data)), time.time()))
                    name, data = None, []
        except Exception:  # noqa: BLE001 - closing the connection under the reader ends it, in any of several ways
            pass

    def close(self) -> None:
        try:
            self.resp.fp.raw._sock.shutdown(socket.SHUT_RDWR)  # wakes the reader thread
        except (AttributeError, OSError):
            pass
        self.conn.close()
        self.thread.join(5)

    def products(self) -> set[int]:
        return {d["product_id"] for n, d, _ in self.events if n in ("detection", "frame", "chip", "quicklook", "event")}

    def alerts(self) -> set[int]:
        return {d["id"] for n, d, _ in self.events if n == "alert"}


# --- partner rules and sessions ------------------------------------------------------------------


def test_passwords_are_stored_hashed_and_checked():
    from ground_link.partners import verify_password

    h = hash_password("s3cret")
    assert h.startswith("scrypt$") and "s3cret" not in h and h != hash_password("s3cret")  # salted
    assert verify_password("s3cret", h) and not verify_password("s3cret ", h) and not verify_password("", h)
    assert not verify_password("s3cret", "plain-text") and not verify_password("s3cret", "scrypt$x$y$z$a$b")


def test_partner_files_are_validated(tmp_path):
    from ground_link.partners import PartnersError, load_partners, parse_partners

    ok = load_partners(partners_file(tmp_path / "p.toml"))
    assert set(ok) == set(PARTNERS) and ok["south"].classes == ("fire",) and ok["operator"].operator
    h = hash_password("x")
    bad = [
        ({"partner": [{"name": "a", "password": "x"}]}, "unknown key"),  # a plain password is refused
        ({"partner": [{"name": "a", "password_hash": "x"}]}, "password_hash"),
        ({"partner": [{"name": "A b", "password_hash": h}]}, "name"),
        ({"partner": [{"name": "a", "password_hash": h}, {"name": "a", "password_hash": h}]}, "twice"),
        ({"partner": [{"name": "a", "password_hash": h, "regions": [[10, 0, 5, 1]]}]}, "latitudes"),
        ({"partner": [{"name": "a", "password_hash": h, "classes": ["cloud"]}]}, "classes"),
        ({"partner": [{"name": "a", "password_hash": h, "delay_s": -1}]}, "delay_s"),
        ({"partner": [{"name": "a", "password_hash": h, "role": "admin"}]}, "role"),
        ({}, "no \\[\\[partner\\]\\]"),
    ]
    for data, why in bad:
        with pytest.raises(PartnersError, match=why):
            parse_partners(data)


def test_the_rule_decides_by_class_region_delay_and_housekeeping():
    from ground_link.partners import Partner

    p = Partner("a", "h", regions=((-30.0, 50.0, -20.0, 70.0), (10.0, 170.0, 20.0, -170.0)), classes=("fire",),
                delay_s=60.0)
    now = 1000.0
    assert p.allows("alert", "fire", -25.0, 60.0, now - 61, now)
    assert not p.allows("alert", "fire", -25.0, 60.0, now - 59, now)  # still embargoed
    assert not p.allows("alert", "ship", -25.0, 60.0, now - 61, now)  # class
    assert not p.allows("alert", "fire", -35.0, 60.0, now - 61, now)  # region
    assert p.allows("alert", "fire", 15.0, -175.0, now - 61, now)  # the second box, across 180
    assert not p.allows("detection", "fire", math.nan, math.nan, now - 61, now)  # no position, regions set
    assert not p.allows("alert", "fire", -25.0, 60.0, None, now)  # no archive time: never released
    assert p.allows("quicklook", None, -25.0, 60.0, now - 61, now)
    assert not p.allows("housekeeping", None, None, None, now - 61, now)
    assert Partner("o", "h", role="operator").allows("housekeeping", None, None, None, None, now)


def test_sessions_lock_out_repeated_failures_and_end_at_logout():
    from ground_link.partners import Partner, Sessions

    s = Sessions({"a": Partner("a", hash_password("right"))}, max_failures=3, lockout_s=60.0)
    assert s.login("nobody", "right") is None and s.login("a", "wrong") is None
    t = s.login("a", "right")
    assert t and s.partner(t).name == "a" and s.partner(t + "x") is None and s.partner(None) is None
    s.logout(t)
    assert s.partner(t) is None
    for _ in range(3):
        assert s.login("a", "wrong") is None
    assert s.login("a", "right") is None  # locked out, even with the right password


# --- every route, each partner ------------------------------------------------------------------

API_ROUTES = ["/api/me", "/api/snapshot", "/api/alerts", "/api/alerts/1", "/api/detections", "/api/frames",
              "/api/chips", "/api/events", "/api/housekeeping", "/api/link", f"/api/chips/{E | 4}.png",
              "/api/export/alerts.geojson", "/api/export/alerts.cap", "/api/cap/1.xml", "/api/stream"]


def test_every_route_needs_a_login(console):
    anon = Client(console["base"])
    for path in API_ROUTES:
        assert anon.request(path)[0] == 401, path
        assert anon.request(path, headers={"Authorization": "Bearer forged-token"})[0] == 401, path
        assert anon.request(path, headers={"Cookie": "console_session=forged"})[0] == 401, path
    status, headers, _ = anon.request("/")
    assert status == 200 and b"log in" in anon.request("/login")[2].lower()  # redirected to the login page
    assert anon.login("north", "wrong") == 401 and anon.login("nobody", "x") == 401
    assert anon.request("/api/login", {"name": "north"})[0] == 400
    # the page and its assets are served by the console itself, with a CSP that allows only it
    csp = headers.get("content-security-policy") or headers.get("Content-Security-Policy")
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    for asset in ("/static/vendor/leaflet/leaflet.js", "/static/vendor/countries-50m.json", "/static/console.js"):
        assert anon.request(asset)[0] == 200, asset


def test_a_session_cookie_works_like_the_token_and_logout_ends_it(console):
    c = Client(console["base"])
    assert c.login("north", PASSWORDS["north"]) == 200
    cookie = {"Cookie": f"console_session={c.token}"}
    assert c.request("/api/me", headers=cookie, auth=False)[0] == 200
    assert c.request("/api/logout", {})[0] == 200
    assert c.request("/api/me")[0] == 401 and c.request("/api/me", headers=cookie, auth=False)[0] == 401


@pytest.mark.parametrize("name", PARTNERS)
def test_each_partner_sees_exactly_its_share_through_the_api(console, name):
    c, info = console["clients"][name], console["info"]
    assert {a["id"] for a in c.json("/api/alerts")} == expected_alerts(name, info)
    seen = set()
    for path in ("/api/detections", "/api/frames", "/api/chips", "/api/events"):
        seen |= {r["product_id"] for r in c.json(path)}
    status, _, _ = c.request("/api/housekeeping")
    if status == 200:
        seen.add(E | 16)  # the housekeeping product
    assert seen == expected_products(name, info)
    snap = c.json("/api/snapshot")
    assert {a["id"] for a in snap["alerts"]} == expected_alerts(name, info)
    snap_ids = {r["product_id"] for k in ("detections", "frames", "chips", "events") for r in snap[k]}
    assert snap_ids | ({E | 16} if snap["housekeeping"] is not None else set()) == expected_products(name, info)
    # asking for someone else's share changes nothing: there is no such parameter
    assert {a["id"] for a in c.json("/api/alerts?partner=operator&name=operator&role=operator")} == \
        expected_alerts(name, info)
    if name == "south":  # a frame's counts only for its classes
        assert all(f["ships"] is None and f["fires"] is not None for f in snap["frames"])
    if name not in ("operator", "north"):
        assert snap["housekeeping"] is None and "counts" not in c.json("/api/link")


@pytest.mark.parametrize("name", PARTNERS)
def test_guessed_ids_answer_like_missing_ones(console, name):
    """Every product id in the archive (and ids that do not exist) through the by-id routes: 200
    exactly for what the partner may see, and a forbidden id answers byte for byte like a missing one."""
    c, info = console["clients"][name], console["info"]
    want_chips = {pid for pid in expected_products(name, info) if pid in {E | n for n in (4, 5, 10, 11, 12, 15)}}
    missing = c.request(f"/api/chips/{E | 999}.png")
    assert missing[0] == 404
    guesses = list(info["place"]) + [n for n in range(0, 40)] + [E | n for n in range(18, 40)] + [2**63 - 1]
    for pid in guesses:
        status, _, body = c.request(f"/api/chips/{pid}.png")
        if pid in want_chips:
            assert status == 200 and body.startswith(b"\x89PNG"), pid
        else:
            assert (status, body) == (404, missing[2]), pid
    want_alerts = expected_alerts(name, info)
    missing_alert = c.request("/api/alerts/9999")
    for aid in range(0, 12):
        for path in (f"/api/alerts/{aid}", f"/api/cap/{aid}.xml"):
            status, _, body = c.request(path)
            if aid in want_alerts:
                assert status == 200, path
            else:
                assert (status, body) == (404, missing_alert[2]), path
    assert c.request("/static/../data.py")[0] == 404 and c.request("/static/%2e%2e/data.py")[0] == 404
    # ids past what the archive's 64-bit columns hold (the URL takes any digits): missing, not an error
    for huge in (2**63, 2**64, 10**40):
        for path in (f"/api/chips/{huge}.png", f"/api/chips/{huge}/{E | 4}.png", f"/api/chips/1/{huge}.png"):
            assert c.request(path)[::2] == (404, missing[2]), path
        for path in (f"/api/alerts/{huge}", f"/api/cap/{huge}.xml"):
            assert c.request(path)[::2] == (404, missing_alert[2]), path


@pytest.mark.parametrize("name", PARTNERS)
def test_exports_carry_only_the_partners_share(console, name):
    c, info = console["clients"][name], console["info"]
    want = expected_alerts(name, info)
    fc = c.json("/api/export/alerts.geojson")
    assert {f["id"] for f in fc["features"]} == want
    status, _, body = c.request("/api/export/alerts.csv")
    rows = body.decode().splitlines()
    col = rows[0].split(",").index("alert_id")
    assert status == 200 and {int(r.split(",")[col]) for r in rows[1:]} == want
    status, _, body = c.request("/api/export/alerts.kml")
    assert status == 200 and {int(x.split('"')[0]) for x in body.decode().split('id="alert-')[1:]} == want
    status, _, body = c.request("/api/export/alerts.cap")
    import xml.etree.ElementTree as ET

    entries = ET.fromstring(body).findall("{http://www.w3.org/2005/Atom}entry")
    assert status == 200 and len(entries) == len(want)
    scopes = {e.find(".//{urn:oasis:names:tc:emergency:cap:1.2}scope").text for e in entries}
    assert scopes <= ({"Public"} if name == "operator" else {"Restricted"})
    # filters narrow the share, never widen it
    assert {f["id"] for f in c.json("/api/export/alerts.geojson?class=ship")["features"]} == \
        {a for a in want if info["alert_class"][a] == "ship"}
    assert c.json("/api/export/alerts.geojson?region=-50,50,-35,70&since=2026-11-28T06:00:05Z")["features"] == [] \
        or name in ("operator", "south")


def test_query_cli_exports_a_partners_share(console, tmp_path):
    run_dir, info = console["run_dir"], console["info"]
    for name in PARTNERS:
        out = tmp_path / f"{name}.geojson"
        r = subprocess.run([sys.executable, "-m", "ground_link.query", str(run_dir), "--kind", "alerts", "--format",
                            "geojson", "--out", str(out), "--partner", name, "--partners",
                            str(run_dir / "partners.toml")], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert {f["id"] for f in json.loads(out.read_text())["features"]} == expected_alerts(name, info)
        pngs = tmp_path / f"{name}-png"
        r = subprocess.run([sys.executable, "-m", "ground_link.query", str(run_dir), "--kind", "chips", "--format",
                            "png", "--out", str(pngs), "--partner", name, "--partners", str(run_dir / "partners.toml")],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        want = {E | n for n in (4, 5, 10, 11, 12, 15)} & expected_products(name, info)
        assert len(list(pngs.glob("*.png")) if pngs.exists() else []) == len(want)


@pytest.mark.parametrize("name", PARTNERS)
def test_the_live_feed_sends_each_partner_only_its_share(console, name):
    c, info = console["clients"][name], console["info"]
    feed = Feed(console["base"], c.token)  # from the start of the archive: everything already there
    try:
        wait_for(lambda: any(n == "link" for n, _, _ in feed.events), 10, "the feed's first link state")
        time.sleep(1.0)
    finally:
        feed.close()
    assert feed.alerts() == expected_alerts(name, info)
    got = feed.products() | ({E | 16} if any(n == "housekeeping" for n, _, _ in feed.events) else set())
    assert got == expected_products(name, info)


def test_the_feed_follows_the_archive_and_releases_embargoed_products(tmp_path):
    """Products archived while partners watch: each sees its own within 2 s, none of the others';
    a partner with a delay gets them only once the delay has passed."""
    run_dir = tmp_path / "run"
    build_archive(run_dir, received_wall=time.time() - 100.0)
    proc, base = start_console(run_dir, partners_file(tmp_path / "p.toml", late_delay_s=3.0))
    feeds = {}
    try:
        for name in PARTNERS:
            c = Client(base)
            assert c.login(name, PASSWORDS[name]) == 200
            snap = c.json("/api/snapshot")
            feeds[name] = Feed(base, c.token, snap["cursor"])
        time.sleep(0.5)
        arch = Archive(run_dir / "archive.sqlite")
        new = [(det(50, 7, 70.0, FIRE, -25.5, 61.0), "north"), (det(51, 7, 70.0, SHIP, -41.0, 59.0), "south-ship"),
               (det(52, 8, 80.0, FIRE, -41.0, 59.0), "south")]
        t_arch = {}
        for d, _ in new:
            now = time.time()
            assert arch.product(d, now)
            cls = "fire" if d.class_id == FIRE else "ship"
            arch.alert(alert_record(d, RULES[cls][0], RULES[cls][1], now, d.capture_time_s + 1.0, False))
            t_arch[d.product_id] = now
        arch.close()
        wait_for(lambda: len(feeds["operator"].alerts()) == 3 and len(feeds["late"].alerts()) == 3, 10,
                 "the new alerts on the operator's and the delayed partner's feeds")
    finally:
        for f in feeds.values():
            f.close()
        stop_console(proc)
    pid_of = {d.product_id: where for d, where in new}
    got = {n: {d["product_id"] for k, d, _ in f.events if k == "alert"} for n, f in feeds.items()}
    assert got["north"] == {p for p, w in pid_of.items() if w == "north"}
    assert got["south"] == {p for p, w in pid_of.items() if w == "south"}  # no ship: fire only
    assert got["operator"] == got["late"] == set(pid_of)
    for name in ("operator", "north", "south"):
        for k, d, t in feeds[name].events:
            if k == "alert":
                assert t - t_arch[d["product_id"]] < 2.0, (name, t - t_arch[d["product_id"]])
    for k, d, t in feeds["late"].events:
        if k == "alert":
            assert t - t_arch[d["product_id"]] >= 3.0  # released only after its 3 s delay


def test_housekeeping_has_names_units_and_alarm_states(console):
    hk = {c["name"]: c for c in console["clients"]["operator"].json("/api/housekeeping")}
    assert hk["rss_mib"]["unit"] == "MiB" and hk["rss_mib"]["state"] == "alarm"  # 500 > 486.4 MiB
    assert hk["store_products"]["text"] == "3" and hk["store_products"]["state"] == "ok"
    assert hk["mode"]["text"] == "NOMINAL" and hk["commands_forged"]["state"] == "ok"
    assert hk["rss_mib"]["time_utc"] == "2026-11-28T06:00:25Z"
    link = console["clients"]["north"].json("/api/link")
    assert link["queue"] == {"products": 3, "time_utc": "2026-11-28T06:00:25Z"}  # as last reported
    assert {p["station"] for p in link["passes"]} == {"baku", "astana"} and link["run_active"] is False


# --- a real browser against a live run ---------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")


def chrome():
    """Headless Chromium from the OS packages through its own chromedriver (nothing downloaded)."""
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("no headless browser here: chromium and chromedriver are not installed "
                    "(apt-get install chromium chromium-driver; .ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra has it)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900",
              "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        opts.add_argument(a)
    opts.binary_location = CHROMIUM
    return webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))


def browser_login(d, base: str, name: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    d.get(base + "/login")
    d.find_element(By.ID, "name").send_keys(name)
    d.find_element(By.ID, "password").send_keys(password)
    d.find_element(By.ID, "login-button").click()
    wait_for(lambda: d.execute_script("return !!(window.consoleState && window.consoleState.me)"), 20,
             f"the console page for {name}")


def alerts_in_page(d) -> list[dict]:
    return d.execute_script("return Array.from(window.consoleState.alerts.values()).map(a => "
                            "({id: a.id, cls: a.class, via: a.via, seen_ms: a.seen_ms, received_wall: a.received_wall, "
                            "product_id: a.product_id, chip: window.consoleState.chipsByDetection.get(a.key)}))")


def assert_alert_list_fits(d, min_rows: float = 8) -> None:
    """The alert list shows every column without sideways scrolling and at least min_rows rows."""
    fit = d.execute_script(
        "const s = document.querySelector('#alerts-panel .scroll'), t = document.getElementById('alert-table');"
        "const r = t.querySelector('tbody tr').getBoundingClientRect().height;"
        "return {wide: t.scrollWidth - s.clientWidth, rows: s.clientHeight / r};")
    assert fit["wide"] <= 0, f"the alert table is {fit['wide']} px wider than its panel"
    assert fit["rows"] >= min_rows, f"only {fit['rows']:.1f} alert rows in view"


def markers(d, css: str) -> int:
    return d.execute_script(f"return document.querySelectorAll({css!r}).length")


def test_browser_against_a_live_run(tmp_path):
    """The launcher with --console-stay; Chromium logs in as the operator before the first capture:
    alerts appear on the map within 2 s of being archived, a chip opens, a filter works; after the
    run the console still serves the archive, and a partner login sees only its share."""
    d = chrome()
    from selenium.webdriver.common.by import By

    run_dir = tmp_path / "run"
    port = free_port()
    partners = tmp_path / "partners.toml"
    partners.write_text(f'''
[[partner]]
name = "operator"
role = "operator"
password_hash = "{hash_password('op-pw')}"

[[partner]]
name = "firewatch"
title = "Fire service"
password_hash = "{hash_password('fire-pw')}"
classes = ["fire"]
''')
    overrides = ["scenario.frames=6", "sensor.height=512", "sensor.width=512", "scenario.clock_rate=5.0",
                 "scenario.start_s=40.0", "scenario.max_wall_s=120", f"ground.console_port={port}",
                 f'ground.partners_file="{partners}"']
    cmd = hil_command(run_dir, overrides) + ["--console-stay"]
    hil = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_console(base, hil, 30, "the console of the run")
        browser_login(d, base, "operator", "op-pw")
        wait_for(lambda: d.execute_script("return document.getElementById('map').classList.contains('basemap-ready')"),
                 20, "the offline base map")
        # alerts arrive on the map while the run goes on
        wait_for(lambda: len({a["cls"] for a in alerts_in_page(d)}) == 2, 60, "fire and ship alerts in the page")
        wait_for(lambda: any(a["chip"] for a in alerts_in_page(d) if a["cls"] == "fire"), 30, "a fire alert's chip")
        page = alerts_in_page(d)
        latencies = [a["seen_ms"] / 1000.0 - a["received_wall"] for a in page if a["via"] == "feed"]
        assert latencies and max(latencies) < 2.0, latencies
        print(f"archive -> map latency: {len(latencies)} alerts, max {max(latencies):.3f} s, "
              f"median {sorted(latencies)[len(latencies) // 2]:.3f} s")
        assert markers(d, "path.alert-marker") == len(page)
        # a chip opens: the alert's row opens its popup on the map, with the chip image loaded
        fire = next(a for a in page if a["cls"] == "fire" and a["chip"])
        d.find_element(By.CSS_SELECTOR, f'tr[data-alert-id="{fire["id"]}"]').click()
        wait_for(lambda: d.execute_script(
            "const i = document.querySelector('.leaflet-popup img.chip-img'); return !!(i && i.complete && i.naturalWidth > 0)"),
            10, "the chip image in the alert's popup")
        # a filter works: ships off, only fire markers left; back on, all again
        d.find_element(By.CSS_SELECTOR, 'input.f-class[value="ship"]').click()
        n_fire = sum(a["cls"] == "fire" for a in alerts_in_page(d))
        wait_for(lambda: markers(d, "path.alert-marker.cls-ship") == 0 and
                 markers(d, "path.alert-marker") == n_fire, 5, "ship markers filtered out")
        d.find_element(By.CSS_SELECTOR, 'input.f-class[value="ship"]').click()
        wait_for(lambda: markers(d, "path.alert-marker.cls-ship") > 0, 5, "ship markers back")
        # nothing came from anywhere but the console
        urls = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert urls and all(u.startswith(base + "/") or u.startswith("data:") for u in urls), urls
        # the alert list keeps its room (as in a constellation): it had 4.8 rows in view at 1400 x 757
        assert_alert_list_fits(d)
        d.save_screenshot(str(tmp_path / "operator.png"))
        # the run ends; the console stays on the archive
        wait_for(lambda: (run_dir / "summary.json").exists(), 120, "the end of the run")
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["ok"], summary.get("failure")
        assert hil.poll() is None, "--console-stay: the launcher waits while the console serves"
        wait_for(lambda: "run ended" in d.find_element(By.ID, "link-state").text, 10, "the link panel to say the run ended")
        # a partner login sees only its share
        d.find_element(By.ID, "logout").click()
        wait_for(lambda: d.current_url.endswith("/login"), 10, "the login page")
        browser_login(d, base, "firewatch", "fire-pw")
        import sqlite3

        db = sqlite3.connect(f"file:{run_dir / 'archive.sqlite'}?mode=ro", uri=True)
        fires = {r[0] for r in db.execute("SELECT id FROM alerts WHERE throttled = 0 AND class = 'fire'")}
        ships = {r[0] for r in db.execute("SELECT id FROM alerts WHERE throttled = 0 AND class = 'ship'")}
        db.close()
        assert fires and ships
        wait_for(lambda: {a["id"] for a in alerts_in_page(d)} == fires, 10, "the partner's share in the page")
        assert markers(d, "path.alert-marker.cls-ship") == 0 and markers(d, "path.alert-marker") == len(fires)
        assert "firewatch" in d.find_element(By.ID, "who").text
        assert d.execute_script("return document.getElementById('hk-panel').classList.contains('hidden')")
    finally:
        d.quit()
        if hil.poll() is None:
            hil.send_signal(signal.SIGINT)
        try:
            hil.wait(15)
        except subprocess.TimeoutExpired:
            hil.kill()
        left = kill_leftovers(run_dir)
    assert hil.returncode == 0, hil.stderr.read()[-2000:]
    assert not left, f"processes left behind: {left}"


# --- hostile query parameters ----------------------------------------------------------------------

HOSTILE_NUMBERS = ["", "-1", "0", "2**63", str(2**63), str(2**64), str(10**40), "-" + str(2**63 + 1), "1e400", "-1e400",
                   "nan", "inf", "-inf", "NaN", "0x10", "1_000", " 5 ", "abc", "9" * 5000, "\u0661\u0662", "%00", "'; --"]


def test_hostile_filter_values_get_400_never_500(console):
    """Every filter over the whole range of its type (huge, negative, non-finite, malformed, long):
    the alert list and every export answer 200 (a usable value) or 400 with a reason, never 500,
    and the console keeps serving."""
    c = console["clients"]["operator"]
    everything = {a["id"] for a in c.json("/api/alerts")}
    regions = ["1,2", "1,2,3,4,5", "nan,0,1,1", "0,0,inf,1", "-91,0,0,1", "0,-181,1,1", "0,0,91,1", ",,,", "a,b,c,d",
               "1e400,0,1,1", ",".join(["1"] * 2000)]
    times = HOSTILE_NUMBERS + ["2026-11-28T06:00:00", "2026-13-40T00:00:00Z", "9999-12-31T23:59:59Z",
                               "0001-01-01T00:00:00Z", "2026-11-28T06:00:00+99:00", "T" * 3000]
    cases = [("since", v) for v in times] + [("until", v) for v in times] + [("region", v) for v in regions + HOSTILE_NUMBERS]
    cases += [("class", "x" * 5000), ("severity", ",,,"), ("class", "\u0000")]
    for key, value in cases:
        q = urllib.parse.urlencode({key: value})
        for path in ("/api/alerts", "/api/export/alerts.geojson", "/api/export/alerts.csv", "/api/export/alerts.cap"):
            status, _, body = c.request(f"{path}?{q}")
            assert status in (200, 400), (path, key, value[:40], status, body[:200])
            if status == 400:
                assert json.loads(body)["error"], (path, key, value[:40])
    # usable extremes still filter as asked
    assert {a["id"] for a in c.json("/api/alerts?since=-1e9&until=1e12")} == everything
    assert c.json("/api/alerts?since=1e12") == []
    assert {a["id"] for a in c.json("/api/alerts?region=-90,-180,90,180")} <= everything
    assert c.request("/api/alerts?since=nan")[0] == 400 and c.request("/api/alerts?region=0,0,nan,1")[0] == 400
    assert c.json("/api/me")["name"] == "operator"  # still serving


@pytest.mark.parametrize("cursor", ["", "x", "1:2:3", str(2**63) + ":0", str(2**64) + ":0", "-5:0", "0:nan", "0:inf",
                                    "0:-inf", "0:1e400", "1" * 5000 + ":0", "0:" + "9" * 400, ":"])
def test_hostile_feed_cursors_start_a_fresh_feed(console, cursor):
    """A cursor from a client (Last-Event-ID or ?cursor=) over the whole range of its fields: the
    feed answers and keeps sending. That a cursor which does not fit what SQL compares it with is
    ignored (the feed starts from now) is test_a_feed_cursor_is_what_sql_can_compare_or_none."""
    c = console["clients"]["operator"]
    host, port = console["base"].removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", f"/api/stream?cursor={urllib.parse.quote(cursor)}", headers={"Authorization": f"Bearer {c.token}"})
        resp = conn.getresponse()
        assert resp.status == 200
        first = resp.readline()
        assert first.startswith(b"retry:"), first
        # the stream stays open and sends the link state (every LINK_EVERY_S): it did not die on the cursor
        deadline, got = time.time() + 8, b""
        while b"event: link" not in got and time.time() < deadline:
            got += resp.readline()
        assert b"event: link" in got, got[-300:]
    finally:
        conn.close()
    assert c.json("/api/me")["name"] == "operator"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30)),
       st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text(max_size=30)))
def test_a_feed_cursor_is_what_sql_can_compare_or_none(alert_id, wall):
    """Before: a cursor past 64 bits parsed, every poll then failed in SQL (OverflowError, caught
    as 'nothing new'), and that feed stayed silent for good, even for new alerts."""
    from ground_link.console.data import Cursor

    cur = Cursor.parse(f"{alert_id}:{wall}")
    if cur is not None:
        assert 0 <= cur.alert_id < 2**63 and math.isfinite(cur.wall) and cur.wall >= 0
        assert Cursor.parse(cur.text()) == cur  # what the feed sends back as its id parses again
    assert Cursor.parse("17:1234.5") == Cursor(17, 1234.5)
