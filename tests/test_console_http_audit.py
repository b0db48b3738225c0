"""The operator console under hostile and odd HTTP requests (audit): every query parameter over the
whole range of its type, path parameters, login bodies, cookies and tokens, export formats, static
paths, bodies far larger than any real one, methods a route does not take, a partner reaching for
another partner's products by every route, and whether logout and expiry really end a session.

What an operator expects, throughout: a clear 4xx with a short message (never a 500, never a
traceback, never data the partner may not see), the console keeps serving afterwards, and what a
client can make the console hold in memory is bounded.

The console is the real app (ground_link.console.server.create_app) on a real uvicorn server in a
thread of this process, on a free loopback port, over a real archive built as tests/test_console.py
builds one; requests go through http.client or a raw socket, so nothing normalizes a path or a
header on the way. Every request the server answers is watched: a 5xx or an exception out of the
app fails the test that caused it. The tests that cover a fix say in their docstring what happened
before it.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
import urllib.parse

import pytest
import uvicorn
from test_console import (
    PASSWORDS,
    E,
    build_archive,
    expected_alerts,
    expected_products,
    partners_file,
)

from ground_link.console import server as console_server
from ground_link.console.data import partners_for
from ground_link.console.server import create_app
from ground_link.export import run_context
from ground_link.partners import Partner, Sessions, hash_password

SHORT = 300  # bytes: what "a short message" may take
# the limits the fixes brought (defaults as they are, so this file also runs, and fails, on the code before them)
LOGIN_BODY_MAX = getattr(console_server, "LOGIN_BODY_MAX", 16 * 1024)
FEEDS_PER_PARTNER = getattr(console_server, "FEEDS_PER_PARTNER", 16)
CHIPS = {E | n for n in (4, 5, 10, 11, 12, 15)}  # the archive's chip and quicklook products (test_console.products)


class Watch:
    """ASGI wrapper: records every 5xx answer and every exception out of the app."""

    def __init__(self, app):
        self.app, self.errors = app, []

    async def __call__(self, scope, receive, send):
        async def watched(message):
            if message["type"] == "http.response.start" and message["status"] >= 500:
                self.errors.append(f"{message['status']} {scope.get('method')} {scope.get('path', '')[:80]}")
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__} {scope.get('method')} {scope.get('path', '')[:80]}")
            raise


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("http_audit_run")
    info = build_archive(run_dir)
    ctx = run_context(run_dir)
    stopping = [False]
    app = create_app(ctx, partners_for(partners_file(run_dir / "partners.toml"), ctx.scenario), stopping)
    watch = Watch(app)
    server = uvicorn.Server(uvicorn.Config(watch, host="127.0.0.1", port=0, log_level="critical", access_log=False,
                                           timeout_graceful_shutdown=1, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    con = {"port": port, "app": app, "watch": watch, "info": info, "run_dir": run_dir,
           "sessions": app.state.sessions, "tokens": {}}
    for name in PASSWORDS:
        con["tokens"][name] = login(port, name)
    yield con
    stopping[0] = server.should_exit = True
    thread.join(15)
    assert not thread.is_alive(), "the server thread did not stop"


@pytest.fixture(autouse=True)
def no_server_errors(request):
    """Every test here: nothing it sent made the app answer 5xx or raise."""
    if "console" not in request.fixturenames:
        yield
        return
    con = request.getfixturevalue("console")
    before = len(con["watch"].errors)
    yield
    assert con["watch"].errors[before:] == []


# --- HTTP helpers ----------------------------------------------------------------------------------


def req(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
        timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """One request, the path sent exactly as given."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
        h = dict(headers or {})
        if body is not None:
            h.setdefault("Content-Length", str(len(body)))
        for k, v in h.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def login(port: int, name: str, password: str | None = None) -> str:
    status, _, body = req(port, "POST", "/api/login",
                          json.dumps({"name": name, "password": password or PASSWORDS[name]}).encode(),
                          {"Content-Type": "application/json"})
    assert status == 200, body[:200]
    return json.loads(body)["token"]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def get(con, path: str, who: str = "operator", **kw) -> tuple[int, dict, bytes]:
    return req(con["port"], "GET", path, headers=bearer(con["tokens"][who]), **kw)


def assert_clean_4xx(status: int, headers: dict, body: bytes, what, codes=range(400, 500)) -> None:
    """A clear 4xx: the code, a short body, no traceback; a JSON body has an 'error'."""
    assert status in codes, (what, status, body[:200])
    assert len(body) <= SHORT, (what, len(body), body[:200])
    assert b"Traceback" not in body and b'File "' not in body, (what, body[:200])
    if headers.get("content-type", "").startswith("application/json"):
        assert json.loads(body)["error"], what


def still_serving(con) -> None:
    status, _, body = get(con, "/api/me")
    assert status == 200 and json.loads(body)["name"] == "operator"


class Stream:
    """An open /api/stream on a raw socket; lines are read as they come."""

    def __init__(self, port: int, headers: dict, path: str = "/api/stream"):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.conn.request("GET", path, headers=headers)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status

    def read_until(self, marker: bytes, seconds: float) -> bytes:
        got, deadline = b"", time.time() + seconds
        while marker not in got and time.time() < deadline:
            line = self.resp.readline()
            if not line:
                break
            got += line
        return got

    def close(self) -> None:
        try:
            self.resp.fp.raw._sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            pass
        self.conn.close()


# --- login bodies ------------------------------------------------------------------------------------

NOT_A_LOGIN = [b"", b"not json", b"\xff\xfe\x00", b"[1, 2]", b'"operator"', b"null", b"5", b"true", b"{}",
               b'{"name": "operator"}', b'{"password": "op-secret"}', b'{"name": "operator", "password": "op-secret"',
               b"[" * 10_000, b'{"a": ' * 2500, b'{"name": "operator", "password": 1' + b"1" * 5000 + b"}",
               b'{"name": "x", "password": "x"}\x00garbage']


@pytest.mark.parametrize("body", NOT_A_LOGIN, ids=lambda b: repr(b[:24]) + f"..{len(b)}")
def test_a_login_body_that_is_not_a_name_and_password_is_400(console, body):
    """Not JSON, JSON that is not an object, missing fields, nesting deeper than the parser goes, a
    number past Python's digit limit: 400 "send JSON {name, password}", no session.
    Before: 10,000 '[' (or nested objects) raised RecursionError out of request.json(): a 500."""
    status, headers, reply = req(console["port"], "POST", "/api/login", body, {"Content-Type": "application/json"})
    assert_clean_4xx(status, headers, reply, body[:30], codes=(400,))
    assert "set-cookie" not in headers
    still_serving(console)


def test_login_values_of_the_wrong_type_or_shape_never_log_in(console):
    """Right password in the wrong shape (a list, an object, a number), names that only look like
    a partner's (case, spaces, NUL, 10,000 characters, unicode, a lone surrogate), operators and
    objects as in NoSQL injections: never a session (401, as a wrong password; 400 for what is not
    JSON), never a cookie. The lockout these failures count toward is reset afterwards.
    Before: the password followed by a NUL logged in (200 and a session): see the test below."""
    port = console["port"]
    pw = PASSWORDS["late"]
    cases = [{"name": "late", "password": [pw]}, {"name": "late", "password": {"$ne": ""}},
             {"name": ["late"], "password": pw}, {"name": {"$gt": ""}, "password": {"$gt": ""}},
             {"name": "LATE", "password": pw}, {"name": "late ", "password": pw}, {"name": "late\u0000", "password": pw},
             {"name": "l\u0430te", "password": pw}, {"name": "late", "password": pw + "\u0000"},
             {"name": "x" * 5000, "password": "y" * 5000}, {"name": None, "password": None},
             {"name": 0, "password": 0}, {"name": True, "password": False}, {"name": "late", "password": ""}]
    raw = [b'{"name": "late", "password": "\\ud800"}', b'{"name": "\\udfff", "password": "x"}',
           b'{"name": NaN, "password": Infinity}', b'{"name": "late", "password": "late-secret", "name": "operator"}']
    try:
        for body in [json.dumps(c).encode() for c in cases] + raw:
            status, headers, reply = req(port, "POST", "/api/login", body, {"Content-Type": "application/json"})
            assert_clean_4xx(status, headers, reply, body[:60], codes=(400, 401))
            assert "set-cookie" not in headers and b"token" not in reply, body[:60]
    finally:
        console["sessions"]._failures.clear()
    assert login(port, "late")  # the real one still works
    still_serving(console)


def test_a_password_with_nul_bytes_added_is_another_password():
    """Before: scrypt keys HMAC-SHA256 with the password and HMAC pads a key with zero bytes, so
    "pw", "pw\\0" and "pw" + 61 NULs all verified against the hash of "pw". A NUL is refused now, at
    login and when a hash is made."""
    from ground_link.partners import PartnersError, verify_password

    h = hash_password("pw")
    assert verify_password("pw", h)
    for other in ("pw\x00", "pw\x00\x00", "pw" + "\x00" * 61, "\x00pw"):
        assert not verify_password(other, h), repr(other)
    with pytest.raises(PartnersError):
        hash_password("pw\x00")


def _send_until_answered(port: int, head: bytes, chunk: bytes, most: int) -> tuple[int, bytes]:
    """Send `head`, then `chunk` again and again (at most `most` bytes) until the server answers;
    (bytes of body sent, the answer)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    sent = 0
    try:
        s.sendall(head)
        try:
            while sent < most and not select.select([s], [], [], 0)[0]:
                s.sendall(chunk)
                sent += len(chunk)
            if sent >= most:
                s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: its answer is still to read
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                got = s.recv(65536)
                if not got:
                    break
                answer += got
        except ConnectionResetError:
            pass
        return sent, answer
    finally:
        s.close()


def test_a_login_body_far_larger_than_any_real_one_is_refused_unread(console):
    """A login is {name, password}, well under 1 KiB. Declared or sent past LOGIN_BODY_MAX (16 KiB):
    413 at once, the body not read. Before: request.json() read any body whole into memory (32 MiB
    sent in chunks, all of it kept, then 400); a Content-Length of 50 MB with 1 KiB sent held the
    request open waiting for the rest (the client timed out); a 1 MiB password was hashed (401)."""
    port = console["port"]
    t0 = time.time()
    status, headers, body = req(port, "POST", "/api/login", b"x" * 1024,
                                {"Content-Type": "application/json", "Content-Length": str(50_000_000)}, timeout=5)
    assert_clean_4xx(status, headers, body, "declared 50 MB", codes=(413,))
    assert time.time() - t0 < 5
    for declared in (str(10**20), "9" * 5000):
        try:
            status, headers, body = req(port, "POST", "/api/login", b"{}", {"Content-Length": declared}, timeout=5)
        except (ConnectionResetError, http.client.RemoteDisconnected):
            continue  # uvicorn refused the header itself
        assert 400 <= status < 500, (declared[:30], status)
    big = json.dumps({"name": "operator", "password": "x" * 2**20}).encode()
    status, headers, body = req(port, "POST", "/api/login", big, {"Content-Type": "application/json"})
    assert_clean_4xx(status, headers, body, "1 MiB password", codes=(413,))
    # no Content-Length (chunked): the server stops at the limit, not at the end of 32 MiB
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    head = b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    sent, answer = _send_until_answered(port, head, chunk, 32 * 2**20)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert sent <= 4 * 2**20, sent  # socket buffers hold some; far from all of it
    status, _, _ = req(port, "POST", "/api/login", json.dumps({"name": "south", "password": "s" * (LOGIN_BODY_MAX // 2)})
                       .encode(), {"Content-Type": "application/json"})
    assert status == 401  # a long password under the limit is still checked
    assert login(port, "south")
    still_serving(console)


def test_a_request_body_on_a_route_that_takes_none_is_not_waited_for(console):
    """GET with a Content-Length of 1 GB and 1 KiB sent (and POST /api/logout, which reads no
    body): answered at once; the rest is never read, so it holds no memory."""
    port, token = console["port"], console["tokens"]["operator"]
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(f"GET /api/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  "Content-Length: 1000000000\r\n\r\n".encode() + b"x" * 1024)
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        s.close()
    throwaway = login(port, "north")
    status, _, _ = req(port, "POST", "/api/logout", b"x" * 1024, {**bearer(throwaway), "Content-Length": "1000000000"},
                       timeout=5)
    assert status == 200 and req(port, "GET", "/api/me", headers=bearer(throwaway))[0] == 401
    still_serving(console)


def test_huge_urls_and_headers_are_refused_or_answered_and_the_console_goes_on(console):
    """A 1 MiB URL, a 1 MiB cookie, 10,000 query parameters: uvicorn either refuses the request
    (4xx or a closed connection: its header limit) or the console answers it (401 for a cookie that
    is no session); never a 5xx, and the console keeps serving."""
    port = console["port"]
    for method, path, headers in [("GET", "/api/alerts?since=" + "1" * 2**20, bearer(console["tokens"]["operator"])),
                                  ("GET", "/api/me", {"Cookie": "console_session=" + "x" * 2**20}),
                                  ("GET", "/api/alerts?" + "a=1&" * 10_000, bearer(console["tokens"]["operator"])),
                                  ("GET", "/static/" + "a/" * 100_000 + "x.js", {})]:
        try:
            status, _, body = req(port, method, path, headers=headers, timeout=10)
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
            continue
        assert 200 <= status < 500 and len(body) < 2**20, (path[:40], status)
        assert status != 200 or path.startswith("/api/alerts?a=1"), (path[:40], status)
    still_serving(console)


# --- cookies, tokens, expiry, logout ------------------------------------------------------------------


def test_forged_truncated_and_odd_credentials_are_401(console):
    """A session is a token the console gave out, in the session cookie or an Authorization:
    Bearer header, nothing else: forged, truncated, extended, quoted, case-changed, empty, another
    scheme, in the query string: 401 "log in first" on every route. Another partner's token gives
    that partner's view, nothing more (it is that partner's session)."""
    port, tokens = console["port"], console["tokens"]
    t = tokens["south"]
    bad_cookies = ["console_session=", "console_session=forged", f"console_session={t[:-1]}", f"console_session={t}x",
                   f"console_session={t.upper()}", f"console_session= {t[:20]}",
                   f"Console_Session={t}", f"console_session_x={t}", "console_session=" + "\u00e9" * 50,
                   f"console_session={urllib.parse.quote(t + '%00')}", "console_session=%00"]
    bad_auth = ["Bearer", "Bearer ", f"Basic {t}", f"Token {t}", f"Bearer {t[:-1]}", f"Bearer {t} {t}",
                f"Bearer\t{t}x", "Bearer " + "A" * 10_000, f"{t}"]
    routes = ["/api/me", "/api/snapshot", "/api/alerts", "/api/alerts/1", f"/api/chips/{E | 10}.png",
              "/api/export/alerts.csv", "/api/cap/1.xml", "/api/stream"]
    for path in routes:
        for cookie in bad_cookies:
            status, headers, body = req(port, "GET", path, headers={"Cookie": cookie})
            assert_clean_4xx(status, headers, body, (path, cookie[:30]), codes=(401,))
        for auth in bad_auth:
            status, headers, body = req(port, "GET", path, headers={"Authorization": auth})
            assert_clean_4xx(status, headers, body, (path, auth[:30]), codes=(401,))
        for q in (f"?token={t}", f"?console_session={t}", f"?access_token={t}"):
            assert req(port, "GET", path + q)[0] == 401, (path, q)
    # a real token, however sent: that partner and only that one
    # (a quoted cookie value is that value, as RFC 6265 has it)
    for h in ({"Cookie": f"console_session={t}"}, {"Cookie": f'console_session="{t}"'}, {"Authorization": f"bearer {t}"},
              {"Authorization": f"Bearer  {t} "}):
        status, _, body = req(port, "GET", "/api/me", headers=h)
        assert status == 200 and json.loads(body)["name"] == "south", h
    # both: the bearer header decides (the API's explicit choice), never a mix of the two
    status, _, body = req(port, "GET", "/api/alerts", headers={**bearer(t), "Cookie": f"console_session={tokens['operator']}"})
    assert status == 200 and {a["id"] for a in json.loads(body)} == expected_alerts("south", console["info"])
    still_serving(console)


def test_many_distinct_bad_credentials_leave_nothing_behind(console):
    """Each distinct forged cookie, bearer token or failed login under a name nobody has: the
    console keeps no record of it (its session and failure tables do not grow)."""
    port, sessions = console["port"], console["sessions"]
    tokens_before, failures_before = dict(sessions._tokens), dict(sessions._failures)
    for i in range(800):
        req(port, "GET", "/api/me", headers={"Cookie": f"console_session=forged-{i:06d}-{'z' * (i % 300)}"})
        req(port, "GET", "/api/me", headers={"Authorization": f"Bearer forged-{i}"})
    for i in range(10):
        status, _, _ = req(port, "POST", "/api/login", json.dumps({"name": f"nobody{i}", "password": "x"}).encode(),
                           {"Content-Type": "application/json"})
        assert status == 401
    assert sessions._tokens == tokens_before and sessions._failures == failures_before
    still_serving(console)


def test_sessions_that_expired_are_dropped_even_if_never_used_again():
    """Before: an expired session was dropped only when its token came back; a client that logs
    in for every request (a script) and never logs out left one entry per login for good. Now each
    login drops the expired ones: the table holds the live sessions only."""
    s = Sessions({"a": Partner("a", hash_password("pw"))}, ttl_s=1.0)
    for _ in range(8):
        assert s.login("a", "pw")
    time.sleep(1.1)
    last = s.login("a", "pw")
    assert list(s._tokens) == [last]
    assert s.partner(last) is not None


def test_an_expired_session_ends_everywhere_and_its_feed_says_so(console):
    """A session past its time (ttl_s, 12 h in service; 0.6 s here): 401 on every route, cookie or
    bearer, and an open live feed sends `event: logout` and ends."""
    port, sessions = console["port"], console["sessions"]
    ttl = sessions.ttl_s
    sessions.ttl_s = 0.6
    try:
        t = login(port, "north")
    finally:
        sessions.ttl_s = ttl
    assert req(port, "GET", "/api/me", headers=bearer(t))[0] == 200
    feed = Stream(port, bearer(t))
    try:
        assert feed.status == 200
        got = feed.read_until(b"event: logout", 5)
        assert b"event: logout" in got, got[-200:]
    finally:
        feed.close()
    for path in ("/api/me", "/api/alerts", "/api/snapshot", f"/api/chips/{E | 4}.png", "/api/export/alerts.kml",
                 "/api/stream"):
        assert req(port, "GET", path, headers=bearer(t))[0] == 401, path
        assert req(port, "GET", path, headers={"Cookie": f"console_session={t}"})[0] == 401, path
    still_serving(console)


def test_logout_ends_that_session_on_every_route_and_its_open_feed(console):
    """Logout ends the session it is sent with: its token is refused everywhere (cookie and
    bearer), its open feed ends with `event: logout`, the cookie is cleared; a second logout is
    harmless; the same partner's other sessions (another browser) go on."""
    port = console["port"]
    t, other = login(port, "north"), login(port, "north")
    feed = Stream(port, {"Cookie": f"console_session={t}"})
    try:
        assert feed.status == 200 and feed.read_until(b"retry:", 5)
        status, headers, _ = req(port, "POST", "/api/logout", b"", {"Cookie": f"console_session={t}"})
        assert status == 200
        cleared = headers.get("set-cookie", "")
        assert cleared.startswith("console_session=") and ("max-age=0" in cleared.lower() or "expires=" in cleared.lower())
        got = feed.read_until(b"event: logout", 5)
        assert b"event: logout" in got, got[-200:]
    finally:
        feed.close()
    for path in ("/api/me", "/api/alerts", "/api/snapshot", "/api/housekeeping", f"/api/chips/{E | 4}.png",
                 "/api/cap/1.xml", "/api/export/alerts.geojson", "/api/stream"):
        assert req(port, "GET", path, headers=bearer(t))[0] == 401, path
        assert req(port, "GET", path, headers={"Cookie": f"console_session={t}"})[0] == 401, path
    assert req(port, "POST", "/api/logout", b"", bearer(t))[0] == 200  # again: nothing to end, no error
    assert req(port, "POST", "/api/logout", b"", {"Cookie": "console_session=forged"})[0] == 200
    status, _, body = req(port, "GET", "/api/me", headers=bearer(other))
    assert status == 200 and json.loads(body)["name"] == "north"
    req(port, "POST", "/api/logout", b"", bearer(other))


# --- query and path parameters ----------------------------------------------------------------------

ODD_VALUES = ["", "-1", "0", "2**63", str(2**63), str(2**64), str(10**40), "-" + str(2**63 + 1), "1e400", "-1e400",
              "1e-400", "nan", "NaN", "inf", "-inf", "Infinity", "0x10", "1_000", " 5 ", "abc", "9" * 5000,
              "T" * 3000, "\u0661\u0662", "\u00e9\u4e2d\U0001f525", "\u0000", "1\u00002", "'; DROP TABLE alerts; --",
              "<script>alert(1)</script>", "../../etc/passwd", "1,2,3,4", ",,,", "x" * 10_000,
              "2026-11-28T06:00:00", "2026-11-28T06:00:00Z", "2026-13-40T00:00:00Z", "9999-12-31T23:59:59Z",
              "0001-01-01T00:00:00+23:59", "2026-11-28T06:00:00+99:00", "-90,-180,90,180", "nan,0,1,1"]
RAW_VALUES = ["%ff", "%", "%zz", "%ed%a0%80", "%c0%af", "%00", "%25", "%2C%2C"]  # sent as they are


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def test_every_filter_over_its_whole_range_is_200_or_a_short_400(console):
    """since, until, region, class, severity on the alert list and every export: a usable value
    answers 200, anything else 400 with a short reason (at most SHORT bytes, not an echo of the
    input). Before: a time that was not ISO 8601 came back whole in datetime's own message (a 3,000
    character value, a 3,000 character error; 10,000 for the 10,000 character one)."""
    routes = ["/api/alerts", "/api/export/alerts.geojson", "/api/export/alerts.csv", "/api/export/alerts.kml",
              "/api/export/alerts.cap"]
    for key in ("since", "until", "region", "class", "severity"):
        for value in [_q(v) for v in ODD_VALUES] + RAW_VALUES:
            for path in routes if key in ("since", "region") else routes[:2]:
                status, headers, body = get(console, f"{path}?{key}={value}")
                assert status in (200, 400), (path, key, value[:40], status, body[:200])
                if status == 400:
                    assert_clean_4xx(status, headers, body, (path, key, value[:40]))
    still_serving(console)


def test_a_repeated_filter_is_refused_not_guessed(console):
    """A filter given twice is a 400 that says to give it once (a list of classes or severities is a
    comma list, class=fire,ship). It used to count the last one silently, so class=fire&class=ship
    showed ships only to an operator who asked for both. Never a 500."""
    c = console
    def ids(path):
        status, _, body = get(c, path)
        assert status == 200, (path, body[:200])
        return {a["id"] for a in json.loads(body)}

    assert ids("/api/alerts?class=fire,ship") == ids("/api/alerts") != set()
    for path in ("/api/alerts", "/api/export/alerts.geojson", "/api/export/alerts.csv"):
        for query in ("class=fire&class=ship", "severity=high&severity=low", "since=nan&since=0", "since=0&since=0",
                      "until=0&until=1", "region=0,0,1,1&region=0,0,2,2"):
            status, headers, body = get(c, f"{path}?{query}")
            assert_clean_4xx(status, headers, body, query, codes=(400,))
            key = query.split("=")[0]
            assert f"{key} given 2 times: give it once" in json.loads(body)["error"], body[:200]


def test_the_session_cookie_is_secure_when_the_browser_came_over_tls(console):
    """Behind the TLS proxy docs/console.md asks for off loopback (X-Forwarded-Proto: https) the
    session cookie carries Secure, so a browser never sends it over plain http; on plain loopback
    http it cannot (the browser would drop it). HttpOnly and SameSite=strict either way."""
    body = json.dumps({"name": "operator", "password": PASSWORDS["operator"]}).encode()
    for headers, secure in (({}, False), ({"X-Forwarded-Proto": "https"}, True),
                            ({"X-Forwarded-Proto": "HTTPS, http"}, True), ({"X-Forwarded-Proto": "http"}, False)):
        status, got, _ = req(console["port"], "POST", "/api/login", body, {"Content-Type": "application/json", **headers})
        assert status == 200
        cookie = got["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert ("; secure" in cookie) is secure, (headers, cookie)
        status, got, _ = req(console["port"], "POST", "/api/logout", b"", headers)
        assert ("; secure" in got["set-cookie"].lower()) is secure


def test_parameters_the_console_does_not_have_change_nothing(console):
    """limit, offset, bbox, kind, satellite, partner, role, cursor on the lists: the console has no
    such filters (the region filter is `region`), so whatever the value the answer is the same as
    without it: never a 500, never more than the partner's share."""
    routes = ["/api/alerts", "/api/detections", "/api/frames", "/api/chips", "/api/events"]
    for who in ("operator", "south"):
        plain = {}
        for path in routes:
            status, _, body = get(console, path, who)
            assert status == 200
            plain[path] = json.loads(body)
        for key in ("limit", "offset", "bbox", "kind", "satellite", "partner", "role", "cursor", "name"):
            for value in ["-1", str(2**63), "nan", "", "operator", "x" * 5000, "%00"]:
                for path in routes:
                    status, _, body = get(console, f"{path}?{key}={value if '%' in value else _q(value)}", who)
                    assert status == 200 and json.loads(body) == plain[path], (who, path, key, value[:20])


ODD_IDS = ["-1", "-0", "+1", str(2**63), str(2**64), str(10**40), "9" * 5000, "1e3", "0x1", "1.0", "%20", "1%20",
           "%d9%a1", "abc", "%00", "1%00", "", "NaN", "1;2", "1/..", "%2e%2e"]  # as sent in the URL


def test_odd_ids_in_paths_are_404_like_a_missing_one(console):
    """Ids in the path (alerts, CAP, chips of satellite 1 and of a named satellite): negative, past
    64 bits, 5,000 digits, not decimal digits, empty: 404 with a short body, like an id that does
    not exist. Leading zeros and a percent-encoded digit are still that number."""
    routes = ["/api/alerts/{}", "/api/cap/{}.xml", "/api/chips/{}.png", "/api/chips/1/{}.png",
              "/api/chips/{}/" + str(E | 4) + ".png"]
    for template in routes:
        for odd in ODD_IDS:
            path = template.format(odd)
            status, headers, body = get(console, path)
            if path == "/api/alerts/":  # the list's URL with a slash: Starlette redirects to the list
                assert status == 307 and headers["location"].endswith("/api/alerts")
                continue
            assert_clean_4xx(status, headers, body, path[:60], codes=(404,))
    one = get(console, "/api/alerts/1")
    assert one[0] == 200
    assert get(console, "/api/alerts/0001")[2] == one[2] and get(console, "/api/alerts/%31")[2] == one[2]
    still_serving(console)


EXPORT_ODD = ["xml", "json", "GEOJSON", "GeoJSON", "Csv", "geojson%20", "geojson%00", "geojson.csv", "csv.geojson",
              "x" * 5000, "%2e%2e", "..", "geojson%2f..%2f..%2fetc%2fpasswd", "kml;csv", "cap%0d%0aX-Injected:%201",
              "%c0%ae%c0%ae", "%c3%a9", "%ff"]


def test_unknown_export_formats_are_a_short_404_naming_the_formats(console):
    """Formats are geojson, kml, csv, cap, lower case as the page links them: anything else (case,
    padding, NUL, a second extension, path tricks, 5,000 characters) is 404 naming the formats, in a
    short body. Before: the whole format came back in the message (5,000 characters in, 5,000 out)."""
    for fmt in EXPORT_ODD:
        status, headers, body = get(console, f"/api/export/alerts.{fmt}")
        assert_clean_4xx(status, headers, body, fmt[:40], codes=(404,))
        assert "x-injected" not in headers
        if headers.get("content-type", "").startswith("application/json"):
            assert "geojson" in json.loads(body)["error"]
    for path in ("/api/export/alerts.", "/api/export/alerts.geojson/..", "/api/export/alerts.geojson/../../x",
                 "/api/export/alerts", "/api/export/../alerts", "/api/export/%2e%2e/alerts.csv"):
        assert_clean_4xx(*get(console, path), path, codes=(404,))
    for fmt, ctype in (("geojson", "application/geo+json"), ("kml", "application/vnd.google-earth.kml+xml"),
                       ("csv", "text/csv"), ("cap", "application/atom+xml")):
        status, headers, _ = get(console, f"/api/export/alerts.{fmt}")
        assert status == 200 and headers["content-type"].startswith(ctype), fmt
    still_serving(console)


# --- static files, methods ------------------------------------------------------------------------------

TRAVERSALS = ["/static/../data.py", "/static/%2e%2e/data.py", "/static/%2e%2e%2fdata.py", "/static/..%2fdata.py",
              "/static/.%2e/.%2e/partners.py", "/static/%252e%252e/data.py", "/static/..%5cdata.py",
              "/static/vendor/../../data.py", "/static/./../server.py", "/static//etc/passwd", "/static/%2fetc%2fpasswd",
              "/static/%2F%2Fetc%2Fpasswd", "/static/" + "../" * 20 + "etc/passwd", "/static/%c0%ae%c0%ae/data.py",
              "/static/console.js%00.png", "/static/console.js/../../data.py", "/../../etc/passwd",
              "/static/vendor/leaflet/../../../data.py", "/static/", "/static/vendor", "/static/vendor/",
              "/static/..", "/static/%2e%2e", "//static/../../ground_link/partners.py", "/static/\\..\\data.py",
              "/static/C:%5cWindows%5cwin.ini", "/static/~root/.bashrc", "/api/../static/../data.py"]


def test_static_paths_outside_the_static_folder_are_404(console):
    """../ in every spelling (plain, %2e, double-encoded, overlong UTF-8, backslash), absolute
    paths, NUL, folder listings: 404 with a short body, never the bytes of a file outside the static
    folder (the console's source, the run's partners file, /etc/passwd). The real assets load."""
    secrets_seen = [b"class ArchiveView", b"def create_app", b"scrypt$", b"root:x:", b"class Sessions"]
    for path in TRAVERSALS:
        status, headers, body = req(console["port"], "GET", path)
        assert status in (404, 400) or (status in (307, 308) and len(body) < SHORT), (path, status)
        assert not any(s in body for s in secrets_seen), path
        assert len(body) <= SHORT, (path, len(body))
    for asset in ("/static/console.js", "/static/login.js", "/static/vendor/leaflet/leaflet.js"):
        assert req(console["port"], "GET", asset)[0] == 200, asset
    still_serving(console)


def test_methods_a_route_does_not_take_are_405(console):
    """A method a route does not take: 405, short; HEAD on a data route still needs a login;
    anything answers without touching data."""
    port, token = console["port"], console["tokens"]["operator"]
    gets = ["/api/me", "/api/snapshot", "/api/alerts", "/api/alerts/1", "/api/housekeeping", "/api/link",
            f"/api/chips/{E | 4}.png", "/api/export/alerts.csv", "/api/cap/1.xml", "/api/stream"]
    for path in gets:
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"):
            status, headers, body = req(port, method, path, b"{}", bearer(token))
            assert_clean_4xx(status, headers, body, (method, path), codes=(405, 400))
        assert req(port, "HEAD", path)[0] == 401, path
    for path in ("/api/login", "/api/logout"):
        for method in ("GET", "PUT", "DELETE", "PATCH"):
            status, headers, body = req(port, method, path, b"{}")
            assert_clean_4xx(status, headers, body, (method, path), codes=(405,))
    assert req(port, "GET", "/api/me", headers=bearer(token))[0] == 200  # GET /api/logout ended nothing
    still_serving(console)


# --- one partner reaching for another's products ---------------------------------------------------------


def test_a_partner_reaches_no_other_partners_product_by_any_route(console):
    """south (fire, its own region) asks for everything north and the operator may see: by id
    (alerts, CAP, chips by both URL forms, HEAD), in exports whose filters cover north's region,
    through the feed from the start (cursor 0:0, by query and by Last-Event-ID), with parameters
    naming another partner: it gets exactly its share, and a forbidden id answers byte for byte
    like a missing one."""
    port, info, t = console["port"], console["info"], console["tokens"]["south"]
    h = bearer(t)
    mine_alerts, mine = expected_alerts("south", info), expected_products("south", info)
    missing_chip = req(port, "GET", f"/api/chips/{E | 999}.png", headers=h)
    missing_alert = req(port, "GET", "/api/alerts/99999", headers=h)
    assert missing_chip[0] == missing_alert[0] == 404
    for pid in info["place"]:
        for path in (f"/api/chips/{pid}.png", f"/api/chips/1/{pid}.png", f"/api/chips/0/{pid}.png",
                     f"/api/chips/2/{pid}.png"):
            status, _, body = req(port, "GET", path, headers=h)
            if pid in mine & CHIPS and path in (f"/api/chips/{pid}.png", f"/api/chips/1/{pid}.png"):
                assert status == 200 and body.startswith(b"\x89PNG"), path
            else:
                assert (status, body) == (404, missing_chip[2]), path
            assert req(port, "HEAD", path, headers=h)[0] == status, path
    for aid in info["alert_place"]:
        for path in (f"/api/alerts/{aid}", f"/api/cap/{aid}.xml"):
            status, _, body = req(port, "GET", path, headers=h)
            assert (status == 200) == (aid in mine_alerts), path
            if status != 200:
                assert body == missing_alert[2], path
    for q in ("", "?region=-90,-180,90,180", "?region=-30,50,-20,70", "?class=ship", "?partner=north&role=operator"):
        status, _, body = req(port, "GET", f"/api/export/alerts.geojson{q}", headers=h)
        assert status == 200 and {f["id"] for f in json.loads(body)["features"]} <= mine_alerts, q
        status, _, body = req(port, "GET", f"/api/export/alerts.csv{q}", headers=h)
        rows = body.decode().splitlines()
        col = rows[0].split(",").index("alert_id")
        assert {int(r.split(",")[col]) for r in rows[1:]} <= mine_alerts, q
    for headers, path in ((h, "/api/stream?cursor=0:0.0"), ({**h, "Last-Event-ID": "0:0.0"}, "/api/stream"),
                          (h, "/api/stream?cursor=0:0.0&partner=operator")):
        feed = Stream(port, headers, path)
        try:
            got = feed.read_until(b"event: link", 5) + feed.read_until(b"event: link", 3)
        finally:
            feed.close()
        events = [json.loads(line[6:]) for line in got.splitlines() if line.startswith(b"data: {\"")]
        alerts = {e["id"] for e in events if "severity" in e and "rule" in e}
        products = {e["product_id"] for e in events if "product_id" in e and "rule" not in e}
        assert alerts == mine_alerts and products <= mine, (path, alerts, products - mine)


# --- open feeds ---------------------------------------------------------------------------------------


def test_open_feeds_per_login_are_bounded(console):
    """Each open feed polls the archive four times a second. Before: one login could open any
    number (each 200), and a few hundred held every worker thread of the console. Now: at most
    FEEDS_PER_PARTNER per login name, the next one 429 with a short reason; other partners are not
    affected, and a closed feed frees its place."""
    port, feeds = console["port"], getattr(console["app"].state, "feeds", {})
    t = login(port, "north")
    opened = []
    try:
        for _ in range(FEEDS_PER_PARTNER):
            f = Stream(port, bearer(t))
            opened.append(f)
            assert f.status == 200 and f.read_until(b"retry:", 5)
        # one more, and the same partner by another login (the same partner): refused
        for token in (t, login(port, "north")):
            extra = Stream(port, bearer(token))
            try:
                assert extra.status == 429, "a feed past the limit was opened"
                body = extra.resp.read()
            finally:
                extra.close()
            assert len(body) <= SHORT and json.loads(body)["error"]
        other = Stream(port, bearer(console["tokens"]["south"]))
        try:
            assert other.status == 200
        finally:
            other.close()
        opened.pop().close()
        deadline = time.time() + 5
        while feeds.get("north", 0) >= FEEDS_PER_PARTNER and time.time() < deadline:
            time.sleep(0.1)
        again = Stream(port, bearer(t))
        opened.append(again)
        assert again.status == 200
    finally:
        for f in opened:
            f.close()
    deadline = time.time() + 5
    while feeds.get("north") and time.time() < deadline:
        time.sleep(0.1)
    assert "north" not in feeds  # every closed feed gave its place back
    still_serving(console)


def test_a_login_that_is_not_sent_as_json_is_refused(console):
    """Login CSRF: another site's HTML form can post a JSON-looking body as text/plain (or a form
    encoding) without a CORS preflight and log the operator's browser in to an account of the
    attacker's choosing. Before, any Content-Type was read as JSON and logged in; now only
    application/json is (the console's own page sends it), else 415, and no session is made."""
    port, sessions = console["port"], console["sessions"]
    body = json.dumps({"name": "south", "password": PASSWORDS["south"]}).encode()
    before = dict(sessions._tokens)
    for ctype in (None, "text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
                  "multipart/form-data; boundary=x", "application/jsonx"):
        status, headers, reply = req(port, "POST", "/api/login", body, {"Content-Type": ctype} if ctype else {})
        assert status == 415 and "set-cookie" not in headers, (ctype, status)
    assert sessions._tokens == before
    status, _, _ = req(port, "POST", "/api/login", body, {"Content-Type": "Application/JSON; charset=utf-8"})
    assert status == 200
    still_serving(console)
