"""Alert rules (class, confidence, area, region, throttling), the alert outputs (stdout JSON, file,
ZeroMQ feed) and the operator tools (query, watch)."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import zmq

from flight.acks import open_ack
from flight.clock import ScenarioClock, parse_epoch
from flight.config import AlertRule, ConfigError, load_scenario
from flight.dictionary import DetectionClass
from flight.products import Detection, FrameSummary, encode_tm
from flight.service import Service
from ground_link.alerts import Throttle, in_region, match_rule
from ground_link.ports import free_port
from ground_link.query import query
from ground_link.station import Station
from ground_link.watch import screen

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
EPOCH = parse_epoch("2026-11-28T06:00:00Z")
KEY = bytes(range(32))  # the mission key the station signs its acks with
FIRE, SHIP = DetectionClass.FIRE, DetectionClass.SHIP


def det(pid, frame, t, cls=FIRE, conf=0.9, lat=40.5, lon=49.8, area=10):
    return Detection(pid, frame, t, cls, round(conf * 255), 10.0, 20.0, lat, lon, area)


RULES = (
    AlertRule("fire", 0.8, "critical", region=(40.0, 49.0, 41.0, 50.0)),  # fires near Baku: critical
    AlertRule("fire", 0.5, "warning", area_px_min=5),  # other fires, not tiny ones
    AlertRule("ship", 0.6, "info", area_px_max=100),
)


def test_first_matching_rule_gives_the_severity():
    sev = lambda d: (m := match_rule(RULES, d)) and m[1].severity  # noqa: E731
    assert sev(det(1, 0, 0.0)) == "critical"
    assert sev(det(1, 0, 0.0, conf=0.7)) == "warning"  # below the critical confidence
    assert sev(det(1, 0, 0.0, lat=10.0)) == "warning"  # outside the region
    assert sev(det(1, 0, 0.0, lat=10.0, area=4)) is None  # too small for the second rule
    assert sev(det(1, 0, 0.0, lat=float("nan"), lon=float("nan"))) == "warning"  # no position: no region match
    assert sev(det(1, 0, 0.0, cls=SHIP, conf=0.7, area=100)) == "info"
    assert sev(det(1, 0, 0.0, cls=SHIP, conf=0.7, area=101)) is None
    assert sev(det(1, 0, 0.0, cls=SHIP, conf=0.5)) is None
    assert sev(Detection(1, 0, 0.0, 99, 255, 1.0, 1.0, 40.5, 49.8, 10)) is None  # unknown class


def test_region_boxes_including_across_the_antimeridian():
    assert in_region((40, 49, 41, 50), 40.0, 50.0) and not in_region((40, 49, 41, 50), 41.01, 49.5)
    assert in_region((-10, 170, 10, -170), 0.0, 179.0) and in_region((-10, 170, 10, -170), 0.0, -175.0)
    assert not in_region((-10, 170, 10, -170), 0.0, 0.0)
    assert in_region((), math.nan, math.nan)


def test_bad_rules_fail_fast():
    with pytest.raises(ConfigError, match="region"):
        load_scenario(None, ["ground.alerts=[{class_name=\"fire\", region=[41.0, 49.0, 40.0, 50.0]}]"])
    with pytest.raises(ConfigError, match="area_px_min"):
        load_scenario(None, ["ground.alerts=[{class_name=\"fire\", area_px_min=10, area_px_max=5}]"])


def test_throttle_same_class_nearby_and_recent_only():
    rule = AlertRule("fire", 0.5, "warning", throttle_km=5.0, throttle_s=600.0)
    th = Throttle()
    first = det(1, 0, 100.0)
    assert not th.is_repeat(rule, first)
    th.remember(rule, first)
    assert th.is_repeat(rule, det(2, 1, 400.0, lat=40.52))  # 2.2 km away, 300 s later
    assert th.is_repeat(rule, det(3, 1, 0.0))  # an older capture arriving late is a repeat too
    assert not th.is_repeat(rule, det(4, 1, 800.0))  # 700 s later
    assert not th.is_repeat(rule, det(5, 1, 200.0, lat=40.6))  # 11 km away
    assert not th.is_repeat(rule, det(6, 1, 200.0, lat=math.nan, lon=math.nan))  # position unknown
    off = AlertRule("fire", 0.5, "warning", throttle_km=0.0)
    assert not th.is_repeat(off, det(7, 1, 100.0))


@pytest.fixture
def station(tmp_path):
    sc = load_scenario(None)
    clock = ScenarioClock(EPOCH, rate=10.0, wall_start=time.time() - 100.0)  # scenario t is about 1000 s
    st = Station(sc, tmp_path / "archive.sqlite", as_json=True, svc=Service("station-test", None), clock=clock,
                 alerts_file=tmp_path / "alerts.jsonl", key=KEY)
    yield st
    st.close()


def feed_station(st: Station) -> None:
    packets = [
        det(1, 0, 100.0), det(2, 1, 110.0, lat=40.51),  # the same fire seen again 10 s later: throttled
        det(3, 2, 120.0, lat=-20.0, lon=30.0), det(4, 2, 120.0, cls=SHIP, lat=-20.1, lon=30.0),
        det(5, 3, 130.0, conf=0.3),  # below every rule: archived, no alert
        FrameSummary(6, 2, 120.0, 16, 2, 0.1, 0, 1, 1, 12.0, -20.0, 30.0),
    ]
    for p in packets:
        st.on_packet(encode_tm(p, 0, EPOCH, getattr(p, "capture_time_s", 0.0)))
    st.on_packet(encode_tm(packets[0], 0, EPOCH, 100.0))  # a retransmission: never a second alert


def test_station_alerts_throttles_and_writes_json_lines(station, tmp_path, capsys):
    feed_station(station)
    assert station.counts["alerts"] == 3 and station.counts["alerts_throttled"] == 1
    assert station.counts["duplicates"] == 1 and station.counts["products_archived"] == 6
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["product_id"] for a in printed] == [1, 3, 4]
    assert printed[0]["severity"] == "critical" and printed[2]["class"] == "ship"
    assert 800 < printed[0]["latency_s"] < 1200  # received at scenario t ~1000 s, captured at 100 s
    filed = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert filed == printed
    rows = station.archive.db.execute("SELECT product_id, throttled FROM alerts ORDER BY id").fetchall()
    assert rows == [(1, 0), (2, 1), (3, 0), (4, 0)]  # the throttled one is archived


def test_query_filters(station, tmp_path, capsys):
    feed_station(station)
    archive = tmp_path / "archive.sqlite"
    ids = lambda rows: [r["product_id"] for r in rows]  # noqa: E731
    assert ids(query(archive)) == [1, 2, 3, 4, 5]
    assert ids(query(archive, cls="ship")) == [4]
    assert ids(query(archive, since=110.0, until=125.0)) == [2, 3, 4]
    assert ids(query(archive, region=(40.0, 49.0, 41.0, 50.0))) == [1, 2, 5]
    assert ids(query(archive, frame=2, kind="all")) == [3, 4, 6]
    assert ids(query(archive, kind="summaries", region=(-21, 29, -19, 31))) == [6]
    assert ids(query(archive, kind="alerts")) == [1, 3, 4]
    assert ids(query(archive, kind="alerts", throttled=True, cls="fire")) == [1, 2, 3]
    out = subprocess.run([sys.executable, "-m", "ground_link.query", str(archive), "--class", "fire", "--region",
                          "40,49,41,50", "--since", "105", "--json"], cwd=REPO, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["product_id"] for line in out.stdout.splitlines()] == [2, 5]
    text = subprocess.run([sys.executable, "-m", "ground_link.query", str(tmp_path), "--kind", "alerts"], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert text.stdout.count("ALERT") == 3 and "3 alerts" in text.stderr
    bad = subprocess.run([sys.executable, "-m", "ground_link.query", str(archive), "--region", "1,2,3"], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "LAT0,LON0,LAT1,LON1" in bad.stderr


def write_status(run_dir, name, status):
    (run_dir / f"{name}.status.json").write_text(json.dumps(status))


def test_watch_once_shows_link_state_counters_and_latest_alerts(station, tmp_path):
    feed_station(station)
    write_status(tmp_path, "channel", {"link_up": False, "station": None, "los_s": None, "next_aos_s": 1500.0,
                                       "next_station": "astana", "scenario_s": 1200.0, "down_packets_in": 40,
                                       "down_lost": 3, "down_dropped_outside_contact": 7})
    write_status(tmp_path, "station", station.counts)
    out = subprocess.run([sys.executable, "-m", "ground_link.watch", str(tmp_path), "--once"], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "DOWN, next AOS astana at t=1500.0 s (in 300 s)" in out.stdout
    assert "outside contact     7" in out.stdout and "throttled 1" in out.stdout
    alert_lines = [line for line in out.stdout.splitlines() if "ALERT" in line]
    assert len(alert_lines) == 3 and "SHIP" in alert_lines[0].upper()  # newest first
    write_status(tmp_path, "channel", {"link_up": True, "station": "baku", "los_s": 1800.0, "scenario_s": 1700.0})
    assert "UP via baku until t=1800.0 s" in screen(tmp_path / "archive.sqlite")


def test_watch_exits_cleanly_on_ctrl_c(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "ground_link.watch", str(tmp_path), "--interval", "0.1"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while "no archive yet" not in proc.stdout.readline() and time.monotonic() < deadline:
            pass
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_station_process_publishes_alerts_on_the_feed(tmp_path):
    """The real station process: a detection pushed in comes out as an alert on a SUB, in the
    alerts file, and as an ack on the uplink side."""
    ports = {k: free_port() for k in ("ground_out", "ground_in", "feed")}
    sets = [f'network.{k}="tcp://127.0.0.1:{p}"' for k, p in ports.items()] + ['ground.alerts_file="alerts.jsonl"']
    sets.append("security.curve=false")  # a lab set-up: plain test sockets stand in for the channel
    ctx = zmq.Context()
    down = ctx.socket(zmq.PUSH)  # stands in for the channel
    down.bind(f"tcp://127.0.0.1:{ports['ground_out']}")
    up = ctx.socket(zmq.PULL)
    up.bind(f"tcp://127.0.0.1:{ports['ground_in']}")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"alert")
    sub.connect(f"tcp://127.0.0.1:{ports['feed']}")
    cmd = [sys.executable, "-m", "ground_link.station", "--run-dir", str(tmp_path)]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, FLIGHT_MISSION_KEY=KEY.hex())
    env.pop("FLIGHT_MISSION_KEY_FILE", None)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        # PUB drops what it sends before the subscription arrives: send new detections (new product
        # ids, far apart so none is throttled) until one comes out on the feed
        got, pid = None, 0
        deadline = time.monotonic() + 30
        while got is None and time.monotonic() < deadline:
            pid += 1
            down.send(encode_tm(det(pid, pid, 10.0 * pid, lat=-60.0 + pid), 0, EPOCH, 10.0 * pid))
            if sub.poll(300):
                got = sub.recv_multipart()
        assert got is not None, proc.stderr.read() if proc.poll() is not None else "no alert on the feed"
        topic, body = got
        alert = json.loads(body)
        assert topic == b"alert" and alert["class"] == "fire" and alert["severity"] == "critical"
        acked = []
        while up.poll(2000) and pid not in acked:
            acked += open_ack(up.recv(), KEY).ids  # signed with the mission key
        assert pid in acked
        filed = [json.loads(line)["product_id"] for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
        assert alert["product_id"] in filed
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for s in (down, up, sub):
            s.close(linger=0)
        ctx.term()
