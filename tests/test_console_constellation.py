"""Exports and the operator console on a constellation's shared archive (issue #18 with #14).

The archive is built with real `Archive` writers of two named stations, on SQLite and on
PostgreSQL (a throwaway cluster, tests/pg_util.py): satellite 1 via Baku and satellite 2 via Astana
each archive the *same* product ids and frame ids (test_console's products, satellite 2 one degree
further east, with its own chip images and housekeeping), at the same reception times. Every
export and every console route must show them as two distinct products, each with its satellite
and station, each chip with its own satellite's image, and partner isolation must hold by every
route as on a one-station archive. The last tests run the real launcher with --console on a small
constellation (live PostgreSQL, then the copy after the run) and drive the page in headless
Chromium.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from e2e_util import wait_console
from pg_util import pg_cluster, pg_dsn  # noqa: F401 (fixtures)
from test_console import (
    FIRE,
    PARTNERS,
    PASSWORDS,
    RULES,
    Client,
    Feed,
    det,
    expected_alerts,
    expected_products,
    free_port,
    login_all,
    partners_file,
    png,
    products,
    start_console,
    stop_console,
)

from flight.products import Detection, FrameSummary, Housekeeping, ImageChip, housekeeping
from ground_link.alerts import alert_record
from ground_link.archive import Archive, Db
from payload_sim.testing import REPO, kill_leftovers, wait_for

SCENARIO = REPO / "payload_sim" / "scenarios" / "constellation.toml"
SATS = {1: ("baku", 0.0), 2: ("astana", 1.0)}  # satellite -> (its station, longitude offset of its products)
CHIP_IDS = (4, 5, 10, 11, 12, 15)  # test_console's chips and quicklooks (n of (1 << 32) | n)
CAP = "{urn:oasis:names:tc:emergency:cap:1.2}"


def for_satellite(p, sat: int):
    """test_console's product as satellite `sat` made it: the same ids, its own place and pictures."""
    dlon = SATS[sat][1]
    if isinstance(p, Detection):
        return dataclasses.replace(p, lon_deg=p.lon_deg + dlon)
    if isinstance(p, FrameSummary):
        return dataclasses.replace(p, center_lon_deg=p.center_lon_deg + dlon)
    if isinstance(p, ImageChip):
        return dataclasses.replace(p, png=png((p.product_id & 0xFFFF) + 1000 * sat, p.width_px))
    if isinstance(p, Housekeeping):  # store_products 3 on satellite 1, 5 on satellite 2
        return housekeeping(p.product_id, p.time_s, {7: 1.0 + 2.0 * sat, 5: 500.0, 17: 0.0, 14: 0.0})
    return p


def build_constellation(run_dir: Path, target, received_wall: float | None = None) -> dict:
    """Both satellites' products in one archive (`target`: an SQLite path or a postgresql:// URL),
    each by its own station, satellite 1 first; the two copies of a product share a reception
    time. Writes constellation.json as the launcher does. Returns what the tests expect."""
    run_dir.mkdir(parents=True, exist_ok=True)
    wall = (time.time() - 10.0) if received_wall is None else received_wall
    alert_place, alert_class, alert_sat, pngs, times = {}, {}, {}, {}, {}
    n_alert = 0
    for sat, (station, _) in SATS.items():
        arch = Archive(target, station=station)
        for i, (p, where) in enumerate(products()):
            q = for_satellite(p, sat)
            w = wall + 0.01 * i
            assert arch.product(q, w, satellite_id=sat)
            times[(sat, q.product_id)] = (w, getattr(q, "capture_time_s", getattr(q, "time_s", None)))
            if isinstance(q, ImageChip):
                pngs[(sat, q.product_id)] = q.png
            if isinstance(q, Detection):
                cls = "fire" if q.class_id == FIRE else "ship"
                arch.alert(alert_record(q, RULES[cls][0], RULES[cls][1], w, q.capture_time_s + 1.0, False)
                           | {"satellite_id": sat})
                n_alert += 1
                alert_place[n_alert], alert_class[n_alert], alert_sat[n_alert] = where, cls, sat
        arch.close()
    info = {"archive": str(target), "dialect": "postgresql" if str(target).startswith("postgres") else "sqlite",
            "satellites": list(SATS), "stations": [s for s, _ in SATS.values()], "clock_start": wall - 5.0,
            "clock_rate": 1.0, "epoch": "2026-11-28T16:00:00Z", "scenario": str(SCENARIO), "feeds": {},
            "overrides": ["constellation.satellites=[{id=1}, {id=2}]"]}
    (run_dir / "constellation.json").write_text(json.dumps(info))
    return {"alert_place": alert_place, "alert_class": alert_class, "alert_sat": alert_sat, "pngs": pngs,
            "times": times, "info": info}


def expected_keys(name: str) -> set[str]:
    return {f"{sat}:{pid}" for sat in SATS for pid in expected_products(name, {})}


def write_status(run_dir: Path) -> None:
    """Fresh status files as the radios and stations write them: satellite 1 in view of Baku,
    satellite 2 of none (next AOS Astana)."""
    for sat, per in ((1, {"baku": {"link_up": True, "los_s": 500.0, "next_aos_s": None, "next_station": None},
                          "astana": {"link_up": False, "los_s": None, "next_aos_s": 900.0, "next_station": "astana"}}),
                     (2, {"baku": {"link_up": False, "los_s": None, "next_aos_s": 1200.0, "next_station": "baku"},
                          "astana": {"link_up": False, "los_s": None, "next_aos_s": 800.0, "next_station": "astana"}})):
        d = run_dir / f"sat{sat}"
        d.mkdir(exist_ok=True)
        (d / "channel.status.json").write_text(json.dumps({"satellite_id": sat, "stations": per, "scenario_s": 300.0,
                                                           "stations_in_view": [n for n, v in per.items() if v["link_up"]]}))
    for name in ("baku", "astana"):
        (run_dir / name).mkdir(exist_ok=True)
        (run_dir / name / "station.status.json").write_text(json.dumps({"station": name, "duplicates": 1, "alerts": 6}))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def cons(request, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp(f"constellation_{request.param}")
    if request.param == "sqlite":
        target = run_dir / "archive.sqlite"
    else:
        import psycopg

        cluster = request.getfixturevalue("pg_cluster")  # skips, saying why, where PostgreSQL is absent
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE console_constellation")
        target = cluster.dsn.rsplit("/", 1)[0] + "/console_constellation"
    built = build_constellation(run_dir, target)
    write_status(run_dir)
    proc, base = start_console(run_dir, partners_file(run_dir / "partners.toml"))
    clients = login_all(base)
    yield {"base": base, "built": built, "clients": clients, "run_dir": run_dir, "target": target,
           "backend": request.param}
    stop_console(proc)


def query_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ground_link.query", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


# --- exports ---------------------------------------------------------------------------------------


def test_exports_keep_the_satellites_apart(cons, tmp_path):
    """GeoJSON, CSV, KML and CAP of the run folder (on PostgreSQL: the live archive its
    constellation.json names, and --db): twelve alerts of six product ids, each with its satellite
    and station; PNGs: each satellite's own image under its own name."""
    run_dir, built = cons["run_dir"], cons["built"]
    sources = [[str(run_dir)]] + ([["--db", str(cons["target"]), str(run_dir)]] if cons["backend"] == "postgresql" else [])
    for src in sources:
        r = query_cli(*src, "--kind", "alerts", "--format", "geojson")
        assert r.returncode == 0, r.stderr
        feats = json.loads(r.stdout)["features"]
        assert len(feats) == 12 and len({f["properties"]["product_id"] for f in feats}) == 6
        keys = {(f["properties"]["satellite_id"], f["properties"]["product_id"]) for f in feats}
        assert len(keys) == 12  # two satellites, same ids: two products
        for f in feats:
            p = f["properties"]
            assert p["station"] == SATS[p["satellite_id"]][0] and built["alert_sat"][f["id"]] == p["satellite_id"]
            assert p["capture_time"].startswith("2026-11-28T16:00")  # the constellation's epoch
        pairs = {}
        for f in feats:
            if f["geometry"] is not None:
                pairs.setdefault(f["properties"]["product_id"], {})[f["properties"]["satellite_id"]] = \
                    f["geometry"]["coordinates"][0]
        assert all(round(v[2] - v[1], 6) == 1.0 for v in pairs.values())  # each at its own satellite's place
        r = query_cli(*src, "--kind", "alerts", "--format", "csv")
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        assert r.returncode == 0 and len(rows) == 12
        assert len({(row["satellite_id"], row["product_id"]) for row in rows}) == 12
        assert {(row["satellite_id"], row["station"]) for row in rows} == {("1", "baku"), ("2", "astana")}
    r = query_cli(str(run_dir), "--kind", "alerts", "--format", "kml")
    k = "{http://www.opengis.net/kml/2.2}"
    marks = ET.fromstring(r.stdout).findall(f"{k}Document/{k}Placemark")
    assert r.returncode == 0 and len(marks) == 12
    sats = [{d.get("name"): d.find(f"{k}value").text for d in m.findall(f"{k}ExtendedData/{k}Data")} for m in marks]
    assert len({(s["satellite_id"], s["product_id"]) for s in sats}) == 12
    # CAP: one file per alert, identifiers distinct across satellites; each info names satellite and station
    out = tmp_path / "cap"
    out.mkdir()
    r = query_cli(str(run_dir), "--kind", "alerts", "--format", "cap", "--out", str(out))
    files = sorted(out.glob("*.xml"))
    assert r.returncode == 0 and len(files) == 12, r.stderr
    from test_export import cap_schema

    schema = cap_schema()
    for f in files:
        a = ET.parse(f).getroot()
        if schema is not None:
            schema.validate(str(f))
        params = {p.find(f"{CAP}valueName").text: p.find(f"{CAP}value").text
                  for p in a.findall(f"{CAP}info/{CAP}parameter")}
        assert params["station"] == SATS[int(params["satellite_id"])][0]
        assert f".sat{params['satellite_id']}." in a.find(f"{CAP}identifier").text
        assert "of satellite" in a.find(f"{CAP}info/{CAP}description").text
    # PNG: every chip of both satellites, each file that satellite's image
    out = tmp_path / "png"
    r = query_cli(str(run_dir), "--kind", "chips", "--format", "png", "--out", str(out))
    assert r.returncode == 0, r.stderr
    files = {f.name: f.read_bytes() for f in out.glob("*.png")}
    assert len(files) == 12
    for (sat, pid), data in built["pngs"].items():
        name = next(n for n in files if n.startswith(f"sat{sat}_") and f"_1-{pid & 0xFFFF}_" in n)
        assert files[name] == data, name


@pytest.mark.parametrize("name", PARTNERS)
def test_partner_exports_of_a_constellation(cons, name, tmp_path):
    run_dir, built = cons["run_dir"], cons["built"]
    partners = str(run_dir / "partners.toml")
    r = query_cli(str(run_dir), "--kind", "alerts", "--format", "geojson", "--partner", name, "--partners", partners)
    assert r.returncode == 0, r.stderr
    assert {f["id"] for f in json.loads(r.stdout)["features"]} == expected_alerts(name, built)
    out = tmp_path / "png"
    r = query_cli(str(run_dir), "--kind", "chips", "--format", "png", "--out", str(out), "--partner", name,
                  "--partners", partners)
    assert r.returncode == 0, r.stderr
    want = {k for k in expected_keys(name) if int(k.split(":")[1]) & 0xFFFF in CHIP_IDS}
    got = {f.name: f.read_bytes() for f in out.glob("*.png")} if out.exists() else {}
    assert len(got) == len(want)
    assert sorted(got.values()) == sorted(built["pngs"][(int(k.split(":")[0]), int(k.split(":")[1]))] for k in want)


# --- the console -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PARTNERS)
def test_console_shows_each_satellites_products_apart_and_only_the_share(cons, name):
    c, built = cons["clients"][name], cons["built"]
    alerts = c.json("/api/alerts")
    assert {a["id"] for a in alerts} == expected_alerts(name, built)
    assert all(a["station"] == SATS[a["satellite_id"]][0] and a["key"] == f"{a['satellite_id']}:{a['product_id']}"
               for a in alerts)
    recs = [r for path in ("/api/detections", "/api/frames", "/api/chips", "/api/events") for r in c.json(path)]
    keys = [r["key"] for r in recs]
    hk = c.request("/api/housekeeping")[0] == 200
    assert len(keys) == len(set(keys))  # nothing folded together by product id
    assert set(keys) | ({f"{s}:{(1 << 32) | 16}" for s in SATS} if hk else set()) == expected_keys(name)
    for r in recs:
        assert r["station"] == SATS[r["satellite_id"]][0]
        if r["kind"] == "chip" and r["detection_key"] is not None:  # matched within its own satellite
            assert r["detection_key"].split(":")[0] == str(r["satellite_id"])
    snap = c.json("/api/snapshot")
    assert snap["constellation"] == {"satellites": [1, 2], "stations": ["baku", "astana"]}
    assert {r["key"] for k in ("detections", "frames", "chips", "events") for r in snap[k]} == set(keys)
    assert {a["id"] for a in snap["alerts"]} == expected_alerts(name, built)


@pytest.mark.parametrize("name", PARTNERS)
def test_console_chips_by_satellite_and_guessed_ids(cons, name):
    """Each (satellite, product) through /api/chips/SAT/ID.png: 200 with that satellite's own image
    exactly for the share; else byte for byte like a missing one. /api/chips/ID.png is satellite 1."""
    c, built = cons["clients"][name], cons["built"]
    want = {k for k in expected_keys(name) if int(k.split(":")[1]) & 0xFFFF in CHIP_IDS}
    missing = c.request(f"/api/chips/2/{(1 << 32) | 999}.png")
    assert missing[0] == 404
    pids = sorted({pid for _, pid in built["times"]}) + [1, 2, 40, 2**63 - 1]
    for sat in (1, 2, 3):
        for pid in pids:
            status, _, body = c.request(f"/api/chips/{sat}/{pid}.png")
            if f"{sat}:{pid}" in want:
                assert status == 200 and body == built["pngs"][(sat, pid)], (sat, pid)
            else:
                assert (status, body) == (404, missing[2]), (sat, pid)
    for pid in pids:
        assert c.request(f"/api/chips/{pid}.png")[2] == c.request(f"/api/chips/1/{pid}.png")[2]


@pytest.mark.parametrize("name", PARTNERS)
def test_console_feed_sends_both_satellites_products(cons, name):
    c, built = cons["clients"][name], cons["built"]
    feed = Feed(cons["base"], c.token)  # from the start of the archive
    try:
        wait_for(lambda: any(n == "link" for n, _, _ in feed.events), 10, "the feed's first link state")
        time.sleep(1.0)
    finally:
        feed.close()
    assert feed.alerts() == expected_alerts(name, built)
    got = {d["key"] for n, d, _ in feed.events if n in ("detection", "frame", "chip", "quicklook", "event")}
    hk = any(n == "housekeeping" for n, _, _ in feed.events)
    assert got | ({f"{s}:{(1 << 32) | 16}" for s in SATS} if hk else set()) == expected_keys(name)


def test_console_link_per_satellite_and_latency_per_station(cons):
    run_dir, built = cons["run_dir"], cons["built"]
    write_status(run_dir)  # fresh: "the run goes on"
    op = cons["clients"]["operator"].json("/api/link")
    sats = {s["satellite_id"]: s for s in op["satellites"]}
    assert op["run_active"] is True and set(sats) == {1, 2}
    assert sats[1]["link_up"] is True and sats[1]["stations_in_view"] == ["baku"]
    assert sats[2]["link_up"] is False and sats[2]["next_station"] == "astana"
    assert sats[1]["queue"]["products"] == 3 and sats[2]["queue"]["products"] == 5  # each its own housekeeping
    assert op["passes"] and {p["satellite_id"] for p in op["passes"]} <= {1, 2}
    assert {p["station"] for p in op["passes"]} <= {"baku", "astana"}
    t0 = built["info"]["clock_start"]
    for st in op["stations"]:
        sat = next(s for s, (n, _) in SATS.items() if n == st["station"])
        lat = [(w - t0) * 1.0 - t for (s, _), (w, t) in built["times"].items() if s == sat]
        assert st["products_archived"] == 17 and st["by_satellite"] == {str(sat): 17, str(3 - sat): 0}
        for k, q in (("p50", 50), ("p99", 99), ("max", 100)):
            assert st[f"latency_s_{k}"] == round(float(np.percentile(lat, q)), 1), (st["station"], k)
    hk = cons["clients"]["operator"].json("/api/housekeeping")
    assert {(c["satellite_id"], c["text"]) for c in hk if c["name"] == "store_products"} == {(1, "3"), (2, "5")}
    north = cons["clients"]["north"].json("/api/link")
    assert "stations" not in north and north["satellites"][0]["queue"] is not None  # north sees housekeeping
    south = cons["clients"]["south"].json("/api/link")
    assert "stations" not in south and all(s["queue"] is None for s in south["satellites"])


def test_console_feed_follows_colliding_products_archived_at_once(tmp_path):
    """The same product id archived for both satellites at the same moment while feeds are open:
    the operator gets both (the cursor remembers (satellite, product)); a partner gets only the
    one in its region. SQLite (PostgreSQL: the module tests above read it live the same way)."""
    run_dir = tmp_path / "run"
    target = run_dir / "archive.sqlite"
    build_constellation(run_dir, target, received_wall=time.time() - 100.0)
    proc, base = start_console(run_dir, partners_file(tmp_path / "p.toml"))
    feeds = {}
    try:
        for name in ("operator", "north"):
            c = Client(base)
            assert c.login(name, PASSWORDS[name]) == 200
            feeds[name] = Feed(base, c.token, c.json("/api/snapshot")["cursor"])
        time.sleep(0.5)
        now = time.time()
        for sat, (station, _) in SATS.items():
            arch = Archive(target, station=station)
            # satellite 1's in north's region, satellite 2's (1 degree further east) outside it
            d = dataclasses.replace(det(60, 9, 90.0, FIRE, -25.5, 69.5), lon_deg=69.5 + SATS[sat][1])
            assert arch.product(d, now, satellite_id=sat)
            arch.alert(alert_record(d, RULES["fire"][0], RULES["fire"][1], now, 91.0, False) | {"satellite_id": sat})
            arch.close()
        key = f"{(1 << 32) | 60}"
        wait_for(lambda: {d["key"] for n, d, _ in feeds["operator"].events if n == "detection"} == {f"1:{key}", f"2:{key}"},
                 10, "both satellites' detection on the operator's feed")
        time.sleep(1.0)
    finally:
        for f in feeds.values():
            f.close()
        stop_console(proc)
    assert len([1 for n, _, _ in feeds["operator"].events if n == "alert"]) == 2
    assert {d["key"] for n, d, _ in feeds["north"].events if n in ("detection", "alert")} == {f"1:{key}"}


# --- the launcher with --console, and the page -----------------------------------------------------------


@pytest.mark.timeout(300)
def test_hil_console_serves_a_live_constellation_and_its_archive_after(tmp_path):
    """`hil --console-stay` on a constellation: the console serves the live run (its throwaway
    PostgreSQL archive when PostgreSQL is here, else the shared SQLite file) and, after the run,
    the copy; products of both satellites with their stations; link state per satellite."""
    from payload_sim.constellation import pg_missing_reason

    run_dir = tmp_path / "run"
    port = free_port()
    partners = partners_file(tmp_path / "partners.toml")
    archive = "postgresql" if pg_missing_reason() is None else "sqlite"
    sets = ["constellation.satellites=[{id=1}, {id=2}]", f'constellation.archive="{archive}"', "scenario.frames=2",
            'link.contacts="always"', "scenario.max_wall_s=120", f"ground.console_port={port}",
            f'ground.partners_file="{partners}"']
    cmd = [sys.executable, "-m", "payload_sim.hil", str(SCENARIO), "--run-dir", str(run_dir), "--quiet",
           "--console-stay", *[x for s in sets for x in ("--set", s)]]
    hil = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    live_dialect = None
    try:
        wait_console(base, hil, 60, "the console of the constellation's run")
        c = Client(base)
        assert c.login("operator", PASSWORDS["operator"]) == 200
        info = json.loads((run_dir / "constellation.json").read_text())
        live_dialect = info["dialect"]
        wait_for(lambda: c.json("/api/link")["run_active"], 30, "the radios' status on the link panel")
        link = c.json("/api/link")
        assert {s["satellite_id"] for s in link["satellites"]} == {1, 2}
        live_reads = []

        def frames_of_both() -> bool:
            before = json.loads((run_dir / "constellation.json").read_text())["dialect"]
            sats = {r["satellite_id"] for r in c.json("/api/frames")}
            after = json.loads((run_dir / "constellation.json").read_text())["dialect"]
            if sats and before == after == archive:  # read from the archive of the live run
                live_reads.append(sats)
            return sats == {1, 2}

        wait_for(frames_of_both, 60, "frames of both satellites")
        assert live_reads, "no frame read while the run's own archive was live"
        wait_for(lambda: (run_dir / "summary.json").exists(), 120, "the end of the run")
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["ok"], summary.get("failure")
        assert hil.poll() is None, "--console-stay: the launcher waits while the console serves"
        wait_for(lambda: not c.json("/api/link")["run_active"], 15, "the link panel to say the run ended")
        # after the run: the copy; the console shows exactly what the archive holds, each product once
        copy = Db(run_dir / "archive.sqlite", read_only=True)
        frames = {f"{s}:{p}" for s, p in copy.execute("SELECT satellite_id, product_id FROM products "
                                                      "WHERE kind = 'FrameSummary'").fetchall()}
        alerts = {r[0] for r in copy.execute("SELECT id FROM alerts WHERE throttled = 0").fetchall()}
        copy.close()
        assert len(frames) == summary["frames_processed"] == 4
        assert {r["key"] for r in c.json("/api/frames")} == frames
        assert {a["id"] for a in c.json("/api/alerts")} == alerts
        assert all(r["station"] in ("baku", "astana") for r in c.json("/api/frames"))
    finally:
        if hil.poll() is None:
            hil.send_signal(signal.SIGINT)
        try:
            hil.wait(30)
        except subprocess.TimeoutExpired:
            hil.kill()
            hil.wait()
        left = kill_leftovers(run_dir)
    assert hil.returncode == 0, hil.stderr.read()[-3000:]
    assert not left, f"processes left behind: {left}"
    assert live_dialect == archive


def popup_inside_map(d) -> bool:
    return d.execute_script(
        "const p = document.querySelector('.leaflet-popup-content-wrapper').getBoundingClientRect();"
        "const m = document.getElementById('map').getBoundingClientRect();"
        "return p.top >= m.top - 1 && p.bottom <= m.bottom + 1 && p.height > 50;")


def test_browser_shows_a_constellation(cons, tmp_path):
    """Headless Chromium on the constellation archive (SQLite run only: the page is the same on
    both): both satellites' alerts on the map as distinct markers, the satellite and station in the
    list and the popup, each alert's chip its own satellite's, link state per satellite."""
    if cons["backend"] != "sqlite":
        pytest.skip("the page is the same on both back ends: run once, on SQLite")
    from test_console import alerts_in_page, assert_alert_list_fits, browser_login, chrome, markers

    d = chrome()
    from selenium.webdriver.common.by import By

    try:
        write_status(cons["run_dir"])
        browser_login(d, cons["base"], "operator", PASSWORDS["operator"])
        wait_for(lambda: len(alerts_in_page(d)) == 12, 20, "twelve alerts in the page")
        page = alerts_in_page(d)
        wait_for(lambda: markers(d, "path.alert-marker") == 10, 10, "ten markers (two alerts have no position)")
        chips = {a["id"]: a["chip"] for a in page if a["chip"]}
        # the same detection ids on both satellites: each alert's chip is its own satellite's
        assert len(set(chips.values())) == len(chips) and {c.split(":")[0] for c in chips.values()} == {"1", "2"}
        assert all(c.split(":")[0] == str(cons["built"]["alert_sat"][a]) for a, c in chips.items())
        assert d.execute_script("return document.body.classList.contains('constellation')")
        vias = set(d.execute_script("return [...document.querySelectorAll('#alert-table td.via')].map(t => t.textContent)"))
        assert vias == {"1 · baku", "2 · astana"}
        fire2 = next(a for a in page if a["cls"] == "fire" and a["chip"] and a["chip"].startswith("2:"))
        d.find_element(By.CSS_SELECTOR, f'tr[data-alert-id="{fire2["id"]}"]').click()
        wait_for(lambda: d.execute_script(
            "const i = document.querySelector('.leaflet-popup img.chip-img'); return !!(i && i.complete && i.naturalWidth > 0)"),
            10, "satellite 2's chip in its alert's popup")
        src = d.execute_script("return document.querySelector('.leaflet-popup img.chip-img').getAttribute('src')")
        assert src.startswith("/api/chips/2/")
        assert "astana" in d.execute_script("return document.querySelector('.leaflet-popup').textContent")
        # The whole popup is inside the map (its content scrolls when chip and quicklook are taller
        # than a short map): before, its top (severity and class) was clipped off in CI's window.
        wait_for(lambda: popup_inside_map(d), 5, "the alert popup inside the map, not clipped at its top")
        wait_for(lambda: len(d.find_elements(By.CSS_SELECTOR, "#passes tr.sat-row")) == 2, 10, "a row per satellite")
        assert len(d.find_elements(By.CSS_SELECTOR, "#passes tr.station-row")) == 2
        # The alert list keeps its room in CI's 1400 x 900 window: every column without sideways
        # scrolling, and at least 8 rows in view (it showed 4, the time column cut off on the left)
        assert_alert_list_fits(d)
        if os.environ.get("CONSOLE_SHOTS"):
            d.save_screenshot(os.environ["CONSOLE_SHOTS"])
    finally:
        d.quit()


def test_an_archive_from_before_the_constellation_reads_as_satellite_1(tmp_path):
    """An SQLite archive written before issue #18 has no satellite or station columns: the console
    and the exports read it as satellite 1 (ground_link.archive.reader's temporary views), as
    ground_link.query always has."""
    import sqlite3

    from ground_link.archive import _jsonable
    from ground_link.console.data import ArchiveView, partners_for
    from ground_link.export import run_context

    old = sqlite3.connect(tmp_path / "archive.sqlite")
    old.executescript("""
        CREATE TABLE products (product_id INTEGER PRIMARY KEY, apid INTEGER, kind TEXT, frame_id INTEGER,
            time_s REAL, received_wall REAL, fields TEXT);
        CREATE TABLE alerts (id INTEGER PRIMARY KEY, product_id INTEGER, severity TEXT, class TEXT, confidence REAL,
            lat_deg REAL, lon_deg REAL, frame_id INTEGER, time_s REAL, received_wall REAL, message TEXT,
            area_px INTEGER, received_s REAL, latency_s REAL, throttled INTEGER NOT NULL DEFAULT 0, rule INTEGER);
        CREATE TABLE telemetry (product_id INTEGER, time_s REAL, channel INTEGER, value REAL);
        CREATE TABLE chips (product_id INTEGER PRIMARY KEY, frame_id INTEGER, png BLOB);""")  # the pre-#18 schema
    wall = time.time() - 10.0
    for i, (p, _) in enumerate(products()):
        old.execute("INSERT INTO products VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (p.product_id, p.APID, type(p).__name__, getattr(p, "frame_id", None),
                     getattr(p, "capture_time_s", getattr(p, "time_s", None)), wall + 0.01 * i, json.dumps(_jsonable(p))))
        if isinstance(p, ImageChip):
            old.execute("INSERT INTO chips VALUES (?, ?, ?)", (p.product_id, p.frame_id, p.png))
    old.commit()
    old.close()
    view = ArchiveView(run_context(tmp_path))
    op = partners_for(None, None)["operator"]
    snap = view.snapshot(op)
    assert {r["key"] for r in snap["chips"]} == {f"1:{(1 << 32) | n}" for n in CHIP_IDS}
    assert all(r["station"] is None for r in snap["detections"]) and len(snap["detections"]) == 6
    assert view.chip(op, (1 << 32) | 4)[1] == next(p.png for p, _ in products() if p.product_id == (1 << 32) | 4)
    r = query_cli(str(tmp_path), "--kind", "chips", "--format", "png", "--out", str(tmp_path / "png"))
    assert r.returncode == 0 and len(list((tmp_path / "png").glob("frame*.png"))) == 6, r.stderr
