"""The operator console's web server (Starlette on uvicorn): pages, a JSON API, a live feed by
server-sent events and partner exports, all behind a login.

Every route that returns archive data goes through `ArchiveView` with the logged-in partner, so a
partner never gets a product its rule does not allow, whatever it asks: a product it may not see
answers 404 exactly like one that does not exist. Static files (the page, its script, Leaflet and
the base map) are served from the package: nothing is fetched from the internet.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from datetime import datetime
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ground_link.console.data import ArchiveView, Cursor
from ground_link.export import (
    RunContext,
    alerts_cap_feed,
    alerts_csv,
    alerts_geojson,
    alerts_kml,
    cap_document,
)
from ground_link.partners import Partner, Sessions

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "console_session"
POLL_S = 0.25  # the feed looks at the archive this often
LINK_EVERY_S = 1.0  # link state on the feed
KEEPALIVE_S = 5.0
LOGIN_BODY_MAX = 16 * 1024  # a login is {name, password}: well under 1 KiB
FEEDS_PER_PARTNER = 16  # open live feeds per login name (a browser tab holds one)
EXPORT_TYPES = {"geojson": "application/geo+json", "kml": "application/vnd.google-earth.kml+xml",
                "csv": "text/csv; charset=utf-8", "cap": "application/atom+xml"}
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
                                "base-uri 'none'; form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class NotAllowed(Exception):
    pass


class IdConvertor(Convertor[int]):
    """A product, alert or satellite id in a URL: digits, as Starlette's `int`, but any number of
    them. `int` refused more than 4300 digits with a ValueError, answered 400 with Python's advice
    to call sys.set_int_max_str_digits; an id past 64 bits is one no archive holds, answered 404
    like any missing id (the reads treat 2**64 so)."""

    regex = "[0-9]+"

    def convert(self, value: str) -> int:
        digits = value.lstrip("0") or "0"
        return int(digits) if len(digits) <= 20 else 2**64

    def to_string(self, value: int) -> str:
        return str(int(value))


register_url_convertor("id", IdConvertor())


class SecurityHeaders:
    """ASGI middleware: SECURITY_HEADERS on every response (streams included)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()
                         if k.lower().encode() not in have]
                message = dict(message, headers=list(message.get("headers", [])) + extra)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _json(data, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers={"Cache-Control": "no-store"})


def _parse_time(text: str | None, ctx: RunContext) -> float | None:
    """A filter time: scenario seconds, or UTC ISO 8601 (converted with the scenario epoch)."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        if not math.isfinite(value):  # nan would keep everything, inf nothing: say so instead
            raise ValueError(f"{text[:40]!r}: a time must be a finite number of seconds or UTC ISO 8601")
        return value
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:  # its own message quotes the whole text (3000 characters in, 3000 back): a short one
        raise ValueError(f"{text[:40]!r}: a time must be a finite number of seconds or UTC ISO 8601") from None
    if dt.tzinfo is None:
        raise ValueError(f"{text[:40]!r}: give a timezone (Z for UTC)")
    return (dt - ctx.epoch).total_seconds()


def alert_filter(params, ctx: RunContext):
    """The console's filters as a predicate over alert records: class, severity (comma lists),
    since/until (scenario seconds or UTC ISO 8601), region lat0,lon0,lat1,lon1."""
    from ground_link.alerts import in_region
    from ground_link.query import region_of

    for key in ("class", "severity", "since", "until", "region"):
        if len(params.getlist(key)) > 1:  # which one counts would be a guess: the last did, silently
            raise ValueError(f"{key} given {len(params.getlist(key))} times: give it once"
                             + (f" (several as a comma list: {key}=a,b)" if key in ("class", "severity") else ""))
    classes = set(filter(None, params.get("class", "").split(",")))
    severities = set(filter(None, params.get("severity", "").split(",")))
    since, until = _parse_time(params.get("since"), ctx), _parse_time(params.get("until"), ctx)
    region = None
    if params.get("region"):
        region = region_of(params["region"])

    def keep(r: dict) -> bool:
        if classes and r["class"] not in classes:
            return False
        if severities and r["severity"] not in severities:
            return False
        t = r["capture_time_s"]
        if since is not None and (t is None or t < since):
            return False
        if until is not None and (t is None or t > until):
            return False
        if region is not None and (r["lat"] is None or not in_region(region, r["lat"], r["lon"])):
            return False
        return True

    return keep


def over_tls(request: Request) -> bool:
    """The browser reached us over https: directly, or through the TLS proxy that docs/console.md
    asks for off loopback (it says so in X-Forwarded-Proto). Then the session cookie is Secure, so
    the browser never sends it over plain http. Trusting the header can only make the cookie stricter."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def export_row(rec: dict) -> dict:
    """An alert record in the shape ground_link.export takes (the archive's column names)."""
    return dict(rec, lat_deg=rec["lat"], lon_deg=rec["lon"])


def create_app(ctx: RunContext, partners: dict[str, Partner], stopping: list[bool] | None = None) -> Starlette:
    """`stopping`: a one-element flag the server sets when it shuts down, to end open feeds."""
    view = ArchiveView(ctx)
    sessions = Sessions(partners)
    stopping = stopping if stopping is not None else [False]
    gsd = ctx.scenario.sensor.gsd_m if ctx.scenario else 10.0

    def token_of(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.cookies.get(COOKIE)

    def who(request: Request) -> Partner:
        p = sessions.partner(token_of(request))
        if p is None:
            raise NotAllowed()
        return p

    async def page(request: Request):
        if sessions.partner(token_of(request)) is None:
            return RedirectResponse("/login", status_code=303)
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def login_page(request: Request):
        return FileResponse(STATIC / "login.html")

    async def login(request: Request):
        # JSON only: a cross-site HTML form can post text/plain (a body that parses as JSON) but
        # never application/json without a CORS preflight, so another site cannot log a browser
        # in to an account of its choosing (login CSRF). The console's own page sends JSON.
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _json({"error": "send JSON {name, password} as application/json"}, 415)
        # read at most LOGIN_BODY_MAX bytes: request.json() read any body whole into memory (and
        # waited for all of a Content-Length of 10**20) before looking at it
        declared = request.headers.get("content-length", "").strip()
        if declared.isascii() and declared.isdigit() and (len(declared) > 12 or int(declared) > LOGIN_BODY_MAX):
            return _json({"error": f"a login is at most {LOGIN_BODY_MAX} bytes"}, 413)
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > LOGIN_BODY_MAX:
                return _json({"error": f"a login is at most {LOGIN_BODY_MAX} bytes"}, 413)
        try:
            body = json.loads(raw)
            name, password = str(body["name"]), str(body["password"])
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: [[[[... (was a 500)
            return _json({"error": "send JSON {name, password}"}, 400)
        token = await run_in_threadpool(sessions.login, name, password)
        if token is None:
            return _json({"error": "unknown name or wrong password"}, 401)
        p = sessions.partner(token)
        resp = _json({"token": token, "me": p.public() if p else None})
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/", secure=over_tls(request))
        return resp

    async def logout(request: Request):
        sessions.logout(token_of(request))
        resp = _json({"ok": True})
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=over_tls(request))
        return resp

    async def me(request: Request):
        return _json(who(request).public())

    async def snapshot(request: Request):
        p = who(request)
        return _json(await run_in_threadpool(view.snapshot, p))

    async def alerts(request: Request):
        p = who(request)
        keep = alert_filter(request.query_params, ctx)
        return _json([a for a in await run_in_threadpool(view.alerts, p) if keep(a)])

    async def alert(request: Request):
        p = who(request)
        rec = await run_in_threadpool(view.alert, p, request.path_params["alert_id"])
        return _json(rec) if rec is not None else _json({"error": "not found"}, 404)

    def product_list(kinds: tuple[str, ...], only: tuple[str, ...]):
        async def handler(request: Request):
            p = who(request)
            recs = await run_in_threadpool(view.products, p, kinds)
            return _json([r for r in recs if r["kind"] in only])
        return handler

    async def housekeeping(request: Request):
        p = who(request)
        hk = await run_in_threadpool(view.housekeeping, p)
        return _json(hk) if hk is not None else _json({"error": "not found"}, 404)

    async def link(request: Request):
        p = who(request)
        return _json(await run_in_threadpool(view.link, p))

    async def chip(request: Request):
        p = who(request)
        # /api/chips/<pid>.png is satellite 1; a constellation's chips of other satellites name theirs
        sat = request.path_params.get("satellite_id", 1)
        got = await run_in_threadpool(view.chip, p, request.path_params["product_id"], None, sat)
        if got is None:
            return _json({"error": "not found"}, 404)
        rec, png = got
        name = f"{rec['label']}_{rec['product'].replace(':', '-')}_frame{rec['frame_id']}.png"
        if rec.get("station"):  # a constellation's: product and frame ids repeat across satellites
            name = f"sat{rec['satellite_id']}_{name}"
        return Response(png, media_type="image/png",
                        headers={"Cache-Control": "private, no-store", "Content-Disposition": f'inline; filename="{name}"'})

    async def export(request: Request):
        p = who(request)
        fmt = request.path_params["fmt"]
        if fmt not in EXPORT_TYPES:
            # fmt[:40]: the URL takes any length, and the whole of it used to come back in the message
            return _json({"error": f"format {fmt[:40]!r}: one of {sorted(EXPORT_TYPES)}"}, 404)
        try:
            keep = alert_filter(request.query_params, ctx)
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        rows = [export_row(a) for a in await run_in_threadpool(view.alerts, p) if keep(a)]
        scope = {} if p.operator else {"scope": "Restricted", "restriction": f"shared with partner {p.name} only"}
        if fmt == "geojson":
            body = json.dumps(alerts_geojson(rows, ctx.epoch))
        elif fmt == "kml":
            body = alerts_kml(rows, ctx.epoch, name=f"Alerts for {p.title or p.name}")
        elif fmt == "csv":
            body = alerts_csv(rows, ctx.epoch)
        else:
            body = alerts_cap_feed(rows, ctx.epoch, gsd_m=gsd, **scope)
        ext = "xml" if fmt == "cap" else fmt
        return Response(body, media_type=EXPORT_TYPES[fmt], headers={
            "Cache-Control": "no-store", "Content-Disposition": f'attachment; filename="alerts-{p.name}.{ext}"'})

    async def cap_one(request: Request):
        p = who(request)
        rec = await run_in_threadpool(view.alert, p, request.path_params["alert_id"])
        if rec is None:
            return _json({"error": "not found"}, 404)
        scope = {} if p.operator else {"scope": "Restricted", "restriction": f"shared with partner {p.name} only"}
        return Response(cap_document(export_row(rec), ctx.epoch, gsd_m=gsd, **scope),
                        media_type="application/cap+xml", headers={"Cache-Control": "no-store"})

    async def stream(request: Request):
        p = who(request)
        token = token_of(request)
        cursor = Cursor.parse(request.headers.get("last-event-id") or request.query_params.get("cursor"))
        if cursor is None:
            snap_now = time.time()
            cursor = await run_in_threadpool(lambda: view._read(lambda db: view._start_cursor(db, p, snap_now), Cursor()))

        async def events():
            yield "retry: 1000\n\n"
            last_link = last_sent = 0.0
            while not stopping[0]:
                if sessions.partner(token) is None:  # logged out (or expired): the feed ends
                    yield "event: logout\ndata: {}\n\n"
                    return
                out = []
                for name, rec in await run_in_threadpool(view.poll, p, cursor):
                    out.append(f"event: {name}\nid: {cursor.text()}\ndata: {json.dumps(rec)}\n\n")
                if time.monotonic() - last_link >= LINK_EVERY_S:
                    out.append(f"event: link\ndata: {json.dumps(await run_in_threadpool(view.link, p))}\n\n")
                    last_link = time.monotonic()
                if not out and time.monotonic() - last_sent >= KEEPALIVE_S:
                    out.append(": keepalive\n\n")
                if out:
                    yield "".join(out)
                    last_sent = time.monotonic()
                await asyncio.sleep(POLL_S)

        # each open feed polls the archive 4 times a second: one login could open thousands and
        # hold every worker thread; counted from here (no await before the response runs) until
        # the response ends, however it ends
        if feeds.get(p.name, 0) >= FEEDS_PER_PARTNER:
            return _json({"error": f"at most {FEEDS_PER_PARTNER} open live feeds per login: close one"}, 429)
        feeds[p.name] = feeds.get(p.name, 0) + 1
        return Feed(p.name, events(), media_type="text/event-stream",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    feeds: dict[str, int] = {}

    class Feed(StreamingResponse):
        def __init__(self, name: str, *args, **kw):
            super().__init__(*args, **kw)
            self.name = name

        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                feeds[self.name] -= 1
                if not feeds[self.name]:
                    del feeds[self.name]

    routes = [
        Route("/", page),
        Route("/login", login_page),
        Route("/api/login", login, methods=["POST"]),
        Route("/api/logout", logout, methods=["POST"]),
        Route("/api/me", me),
        Route("/api/snapshot", snapshot),
        Route("/api/alerts", alerts),
        Route("/api/alerts/{alert_id:id}", alert),
        Route("/api/detections", product_list(("Detection",), ("detection",))),
        Route("/api/frames", product_list(("FrameSummary",), ("frame",))),
        Route("/api/chips", product_list(("ImageChip",), ("chip", "quicklook"))),
        Route("/api/events", product_list(("Event",), ("event",))),
        Route("/api/housekeeping", housekeeping),
        Route("/api/link", link),
        Route("/api/chips/{product_id:id}.png", chip),
        Route("/api/chips/{satellite_id:id}/{product_id:id}.png", chip),
        Route("/api/export/alerts.{fmt:str}", export),
        Route("/api/cap/{alert_id:id}.xml", cap_one),
        Route("/api/stream", stream),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def not_allowed(request: Request, exc: Exception):
        return _json({"error": "log in first"}, 401)

    async def bad_request(request: Request, exc: Exception):
        return _json({"error": str(exc)[:200]}, 400)  # a short reason, whatever raised it

    app = Starlette(routes=routes, exception_handlers={NotAllowed: not_allowed, ValueError: bad_request},
                    middleware=[Middleware(SecurityHeaders)])
    app.state.view, app.state.sessions, app.state.feeds = view, sessions, feeds
    return app


def serve(ctx: RunContext, partners: dict[str, Partner], host: str, port: int, exit_with_parent: bool = False,
          on_ready=None) -> None:
    """Run until SIGINT/SIGTERM (or the launcher that started it exits, with exit_with_parent)."""
    import uvicorn

    stopping = [False]
    app = create_app(ctx, partners, stopping)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=1, lifespan="off")
    server = uvicorn.Server(config)
    parent = os.getppid()

    async def run():
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started and on_ready is not None:
            on_ready(server)
        while not task.done():
            if server.should_exit:
                stopping[0] = True
            if exit_with_parent and os.getppid() != parent:
                server.should_exit = stopping[0] = True
            await asyncio.sleep(0.2)
        await task

    asyncio.run(run())


def bound_port(server) -> int | None:
    for s in getattr(server, "servers", []):
        for sock in s.sockets:
            return sock.getsockname()[1]
    return None

