"""The ground side under hostile or odd input (audit): packets whose CRC is right but whose values
are not (a housekeeping count that lies, NUL in a message, NaN, infinities, times past any date,
positions off the globe), and operator inputs that slip past a `<= 0` check (NaN).

Each case goes through the real code path: packets are encoded as the flight would and given to a
real Station over a real archive (SQLite, and PostgreSQL where the OS has it); the console is a
real process on a free port; the query and commander tools run their own main(). Every test here
failed before the fix it covers (see the docstrings)."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import pytest
from e2e_util import REPO
from pg_util import pg_cluster, pg_dsn  # noqa: F401 (fixtures)

from flight.clock import parse_epoch
from flight.config import load_scenario
from flight.dictionary import DetectionClass
from flight.products import (
    CommandReport,
    Detection,
    Event,
    FrameSummary,
    Housekeeping,
    ImageChip,
    encode_tm,
    housekeeping,
)
from flight.service import Service
from ground_link.station import Station

EPOCH = parse_epoch("2026-11-28T06:00:00Z")
KEY = bytes(range(32))
FIRE = int(DetectionClass.FIRE)
MODE, STORE_PRODUCTS = 14, 7  # housekeeping channel ids (flight.dictionary TELEMETRY)
NAN, INF = math.nan, math.inf


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as a browser's JSON.parse and jq do."""
    def refuse(token: str):
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def make_station(target, as_json: bool = False, alerts_file: Path | None = None) -> Station:
    return Station(load_scenario(None), target, as_json=as_json, svc=Service("audit", None), key=KEY,
                   alerts_file=alerts_file)


def tm(product) -> bytes:
    return encode_tm(product, 0, EPOCH, 1.0)


def fire(pid: int, t: float = 30.0, lat: float = 40.5, lon: float = 49.8, row: float = 100.0, col: float = 200.0):
    return Detection(pid, 3, t, FIRE, 240, row, col, lat, lon, 6)


# --- the station -------------------------------------------------------------------------------------


def test_a_housekeeping_report_whose_count_lies_is_a_bad_packet_not_a_crash(tmp_path):
    """Before: the count is checked only when the archive reads the channels, so PacketError left
    on_packet (after a rollback) and ended the station's main loop; the packet was neither counted
    bad nor kept. Now: counted bad, kept with the reason, not acknowledged, and the station goes on."""
    st = make_station(tmp_path / "archive.sqlite")
    rng = random.Random(18)
    lies = [(1, b""), (0, b"\x00" * 6), (2, b"\x00" * 6), (65535, b"\x00" * 6), (1, b"\x00" * 7), (3, b"\x00" * 17)]
    lies += [(c, bytes(rng.randrange(256) for _ in range(n))) for c, n in
             ((rng.randrange(65536), rng.randrange(0, 200)) for _ in range(20)) if n != 6 * c]
    for i, (count, values) in enumerate(lies):
        st.on_packet(tm(Housekeeping(100 + i, 1.0, count, values)))
    good = housekeeping(999, 2.0, {MODE: 1.0, STORE_PRODUCTS: 5.0})
    st.on_packet(tm(good))
    assert st.counts["packets_bad"] == len(lies) and st.counts["products_archived"] == 1
    assert st.to_ack == [999]  # a malformed report is not acknowledged as archived
    rows = st.archive.db.execute("SELECT ok, error FROM packets ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [0] * len(lies) + [1]
    assert all("channels" in r[1] for r in rows[:-1])
    st.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def archive_target(request, tmp_path):
    if request.param == "sqlite":
        return tmp_path / "archive.sqlite"
    return request.getfixturevalue("pg_dsn")


def test_a_nul_in_a_flight_message_is_archived_on_both_back_ends(archive_target):
    """Before: PostgreSQL refuses NUL in TEXT (DataError), which left on_packet and stopped a
    constellation's station on one event message holding a NUL byte."""
    st = make_station(archive_target)
    st.on_packet(tm(Event(1, 5.0, 3, 2, -1, "before\x00after")))
    st.on_packet(tm(Event(2, 6.0, 3, 2, -1, "\x00")))
    st.on_packet(tm(CommandReport(3, 7.0, 9, 0, 7, 0, "ok\x00")))
    assert st.counts["products_archived"] == 3 and st.counts["packets_bad"] == 0
    msgs = [r[0] for r in st.archive.db.execute("SELECT message FROM events ORDER BY product_id").fetchall()]
    assert msgs == ["before\ufffdafter", "\ufffd"]
    st.close()


HOSTILE_DETECTIONS = [
    fire(11, t=NAN), fire(12, t=INF), fire(13, t=-INF), fire(14, t=1e300), fire(15, t=-1e300),
    fire(16, row=NAN, col=INF), fire(17, lat=INF, lon=-INF), fire(18, lat=500.0, lon=49.8), fire(19, lat=40.0, lon=-181.0),
    fire(20, lat=NAN, lon=NAN, t=NAN, row=NAN, col=NAN),
]


def test_alerts_of_detections_with_odd_values_are_json_and_fit_the_archive(archive_target, tmp_path, capsys):
    """Before: NaN and infinities went into the printed JSON lines, the alerts file and the feed as
    `NaN`/`Infinity` (no JSON reader takes them); PostgreSQL kept them in the alerts table (the
    console then failed to encode the alert list); a latitude of 500 deg was a position."""
    alerts_file = tmp_path / "alerts.jsonl"
    st = make_station(archive_target, as_json=True, alerts_file=alerts_file)
    for d in HOSTILE_DETECTIONS:
        st.on_packet(tm(d))
    assert st.counts["products_archived"] == len(HOSTILE_DETECTIONS)
    printed = [strict_json(line) for line in capsys.readouterr().out.splitlines()]
    filed = [strict_json(line) for line in alerts_file.read_text().splitlines()]
    assert printed == filed and len(printed) == st.counts["alerts"] >= 1
    shown = {r["product_id"] for r in printed}
    rows = st.archive.db.execute("SELECT product_id, time_s, lat_deg, lon_deg, latency_s, confidence FROM alerts").fetchall()
    assert len(rows) == st.counts["alerts"] + st.counts["alerts_throttled"]
    for row in rows:
        for v in row[1:]:
            assert v is None or math.isfinite(v), row
    for r in printed:  # a position is on the globe or unknown
        assert r["lat_deg"] is None or (-90 <= r["lat_deg"] <= 90 and -180 <= r["lon_deg"] <= 180), r
    assert {17, 18, 19} <= shown and all(r["lat_deg"] is None for r in printed if r["product_id"] in (17, 18, 19))
    st.close()


# --- what reads the archive: exports, query, console --------------------------------------------------


def hostile_run(run_dir: Path) -> dict:
    """A run folder whose archive the station filled with odd values beside normal ones."""
    run_dir.mkdir(parents=True, exist_ok=True)
    st = make_station(run_dir / "archive.sqlite")
    wall = time.time() - 10.0
    normal = [fire(1, t=10.0, lat=-25.0, lon=60.0), FrameSummary(2, 3, 10.0, 16, 2, 0.1, 0, 0, 1, 12.0, -25.0, 60.0)]
    odd = [fire(3, t=1e300, lat=10.0, lon=10.0), fire(4, t=-1e18, lat=20.0, lon=20.0), fire(5, t=1e15, lat=30.0, lon=30.0),
           ImageChip(6, 3, 10.0, FIRE, NAN, NAN, 16, 16, 3, b"\x89PNG"),
           Event(7, 1e300, 3, 2, -1, "a time past any date"),
           FrameSummary(8, 4, INF, 16, 2, NAN, 0, 0, 0, NAN, INF, -INF),
           housekeeping(9, 20.0, {MODE: NAN, STORE_PRODUCTS: INF, 1: -INF, 2: 1e30})]
    for p in normal + odd:
        st.on_packet(tm(p))
    assert st.counts["products_archived"] == len(normal) + len(odd)
    n_alerts = st.counts["alerts"]
    st.close()
    (run_dir / "launch.json").write_text(json.dumps({
        "scenario": str(REPO / "payload_sim" / "scenarios" / "demo.toml"), "overrides": [],
        "clock_start": wall - 5.0, "run_dir": str(run_dir)}))
    return {"alerts": n_alerts}


@pytest.mark.parametrize("fmt", ["geojson", "kml", "csv", "cap"])
def test_every_alert_export_survives_a_capture_time_past_any_date(tmp_path, capsys, fmt):
    """Before: a capture time a date cannot hold (1e15 s and more) raised OverflowError in
    utc_text, so every export of every alert failed with a traceback."""
    from ground_link import query

    run_dir = tmp_path / "run"
    info = hostile_run(run_dir)
    capsys.readouterr()  # the station's alert lines
    assert query.main([str(run_dir), "--kind", "alerts", "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "geojson":
        assert len(strict_json(out)["features"]) == info["alerts"] == 4
    elif fmt == "csv":
        assert len(out.strip().splitlines()) == 1 + info["alerts"]
    else:
        import xml.etree.ElementTree as ET

        ET.fromstring(out.split("\n", 1)[1])
    # one CAP file per alert too
    cap_dir = tmp_path / "cap"
    cap_dir.mkdir()
    assert query.main([str(run_dir), "--kind", "alerts", "--format", "cap", "--out", str(cap_dir)]) == 0
    assert len(list(cap_dir.glob("*.xml"))) == info["alerts"]


def test_query_lists_housekeeping_whose_values_are_not_numbers(tmp_path, capsys):
    """Before: a NaN mode channel (NULL in SQLite) raised TypeError in format_row (a traceback),
    and --json printed `Infinity` for an infinite channel."""
    from ground_link import query

    run_dir = tmp_path / "run"
    hostile_run(run_dir)
    capsys.readouterr()  # the station's alert lines
    assert query.main([str(run_dir), "--kind", "housekeeping"]) == 0
    assert "mode=-" in capsys.readouterr().out
    assert query.main([str(run_dir), "--kind", "all", "--json"]) == 0
    lines = [strict_json(line) for line in capsys.readouterr().out.splitlines()]
    hk = next(r for r in lines if r["kind"] == "Housekeeping")
    assert hk["channels"]["mode"] is None and hk["channels"]["store_products"] is None
    assert len(lines) == 9


def test_the_console_serves_an_archive_holding_odd_values(tmp_path):
    """Before: one alert or product with a time past any date made the console's reads raise
    OverflowError, caught as 'no archive': the alert, detection and product lists came back empty
    (nothing said why); a NaN housekeeping value raised TypeError (500 on the snapshot, the link
    and housekeeping routes); a chip with NaN pixel positions raised TypeError when matched."""
    from test_console import PASSWORDS, Client, partners_file, start_console, stop_console

    run_dir = tmp_path / "run"
    info = hostile_run(run_dir)
    proc, base = start_console(run_dir, partners_file(run_dir / "partners.toml"))
    try:
        c = Client(base)
        assert c.login("operator", PASSWORDS["operator"]) == 200
        for path in ("/api/snapshot", "/api/alerts", "/api/housekeeping", "/api/link", "/api/detections",
                     "/api/frames", "/api/chips", "/api/events", "/api/export/alerts.geojson",
                     "/api/export/alerts.kml", "/api/export/alerts.csv", "/api/export/alerts.cap"):
            status, _, body = c.request(path)
            assert status == 200, (path, status, body[:300])
            if path.startswith("/api/") and "export" not in path:
                strict_json(body.decode())
        snap = c.json("/api/snapshot")
        assert len(snap["alerts"]) == info["alerts"] == 4
        assert {d["product_id"] for d in snap["detections"]} == {1, 3, 4, 5}
        assert {f["product_id"] for f in snap["frames"]} == {2, 8}
        assert [ch["product_id"] for ch in snap["chips"]] == [6]
        hk = {h["name"]: h for h in snap["housekeeping"]}
        assert hk["mode"]["value"] is None and hk["mode"]["state"] == "alarm"
        assert hk["store_products"]["value"] is None
        assert len(strict_json(c.request("/api/export/alerts.geojson")[2].decode())["features"]) == 4
    finally:
        stop_console(proc)


# --- the commander -------------------------------------------------------------------------------------


def test_commander_reports_shows_a_report_of_an_unknown_kind_beside_the_others(tmp_path, capsys):
    """Before: ReportKind(99) raised ValueError in _decode_reports, so `commander reports` printed
    nothing but an error, hiding every good report (and wait() failed the same way)."""
    from ground_link import commander

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "launch.json").write_text(json.dumps({"scenario": "x", "overrides": []}))
    st = make_station(run_dir / "archive.sqlite")
    st.on_packet(tm(CommandReport(1, 5.0, 41, 0, 7, 0, "done")))
    st.on_packet(tm(CommandReport(2, 6.0, 42, 0, 99, 65535, "odd")))
    st.on_packet(tm(CommandReport(3, 7.0, 2**64 - 1, 65535, 255, 0, "")))
    st.close()
    capsys.readouterr()
    assert commander.main(["--run-dir", str(run_dir), "reports"]) == 0
    reps = [strict_json(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["counter"], r["kind"]) for r in reps] == [(41, "COMPLETED"), (42, "99"), (2**64 - 1, "255")]
    assert commander.main(["--run-dir", str(run_dir), "reports", "--counter", "42"]) == 0
    assert [r["kind"] for r in map(strict_json, capsys.readouterr().out.splitlines())] == ["99"]


@pytest.mark.parametrize("value", ["nan", "NaN", "-nan", "0", "-1", "-inf"])
def test_commander_refuses_a_timeout_that_is_not_a_positive_number_before_anything(tmp_path, capsys, value):
    """Before: `--timeout nan` passed the `<= 0` check: the command would be sent and its wait end
    at once with 'no report within nan s'."""
    from ground_link import commander

    assert commander.main([f"--timeout={value}", "--run-dir", str(tmp_path), "send", "NOOP"]) == 2
    assert "--timeout" in capsys.readouterr().err


# --- the link measurement tool -------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--rates", "abc"], ["--rates", "nan"], ["--rates", "inf"], ["--rates", "1e400"],
                                  ["--rates", ""], ["--rates", "nan,9600"], ["--rates", "-inf"]])
def test_measure_refuses_rates_that_are_not_numbers_in_one_line_before_any_run(argv, tmp_path, capsys):
    """Before: --rates was split and converted inside the run loop: `abc` raised ValueError and
    `nan`/`inf` failed in int() (the run folder's name), each a traceback."""
    from ground_link import measure

    with pytest.raises(SystemExit) as stop:
        measure.main([*argv, "--run-root", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--rates" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing was launched


@pytest.mark.parametrize("frame", [str(2**32), str(2**63), str(2**64), "9" * 30, "-1", "1e3", "nan"])
def test_query_refuses_a_frame_id_no_frame_can_have_in_one_line(tmp_path, capsys, frame):
    """Before: --frame took any whole number >= 0; past 64 bits it reached SQLite, whose
    OverflowError (not an sqlite3.Error) ended the tool in a traceback."""
    from ground_link import query

    run_dir = tmp_path / "run"
    hostile_run(run_dir)
    capsys.readouterr()
    for kind in ("detections", "alerts"):
        with pytest.raises(SystemExit) as stop:
            query.main([str(run_dir), "--kind", kind, f"--frame={frame}"])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert "--frame" in err and len(err.strip().splitlines()) == 1, err
    # the largest frame id is a query like any other
    assert query.main([str(run_dir), "--frame", str(2**32 - 1)]) == 0
    assert query.main([str(run_dir), "--frame", "3", "--json"]) == 0
    assert {strict_json(line)["product_id"] for line in capsys.readouterr().out.splitlines()} == {1, 3, 4, 5}


@pytest.mark.parametrize("case", ["a folder", "no such folder", "png into a file", "cap into no such folder"])
def test_an_export_to_a_path_that_cannot_be_written_says_so_in_one_line(tmp_path, capsys, case):
    """Before: --out naming a folder (geojson), a file in a folder that is not there, or a file
    where the PNG folder should go ended the query tool in an OSError traceback."""
    from ground_link import query

    run_dir = tmp_path / "run"
    hostile_run(run_dir)
    (tmp_path / "a-file").write_text("x")
    kind, fmt, out = {"a folder": ("alerts", "geojson", tmp_path),
                      "no such folder": ("alerts", "csv", tmp_path / "no" / "such" / "x.csv"),
                      "png into a file": ("chips", "png", tmp_path / "a-file"),
                      "cap into no such folder": ("alerts", "cap", tmp_path / "no" / "x.xml")}[case]
    capsys.readouterr()
    assert query.main([str(run_dir), "--kind", kind, "--format", fmt, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("query: cannot write the export") and str(out) in err[-1], err


def test_no_archived_time_or_value_is_nan_or_infinite_on_either_back_end(archive_target):
    """Before: SQLite stored NaN as NULL but kept infinities, and PostgreSQL kept both; every
    reader computing from them (the console's per-station latency of a constellation, ordering by
    time) then put NaN into its JSON or sorted garbage. Now both back ends hold NULL; the
    product's fields and its raw packet are kept as they were."""
    st = make_station(archive_target)
    odd = [FrameSummary(1, 1, NAN, 16, 2, 0.1, 0, 0, 0, 1.0, 1.0, 1.0), FrameSummary(2, 2, INF, 16, 2, 0.1, 0, 0, 0, 1.0, 1.0, 1.0),
           Event(3, -INF, 1, 1, -1, "x"), housekeeping(4, NAN, {MODE: NAN, STORE_PRODUCTS: INF, 1: -INF, 2: 3.5}),
           fire(5, t=INF), CommandReport(6, NAN, 1, 0, 7, 0, "")]
    for p in odd:
        st.on_packet(tm(p))
    assert st.counts["products_archived"] == len(odd) and st.counts["packets_bad"] == 0
    db = st.archive.db
    for sql in ("SELECT time_s FROM products", "SELECT time_s, value FROM telemetry", "SELECT time_s FROM events",
                "SELECT time_s, latency_s, lat_deg, lon_deg FROM alerts"):
        for row in db.execute(sql).fetchall():
            assert all(v is None or math.isfinite(v) for v in row), (sql, row)
    values = sorted(v for (v,) in db.execute("SELECT value FROM telemetry").fetchall() if v is not None)
    assert values == [3.5]
    assert db.execute("SELECT count(*) FROM packets WHERE ok = 1").fetchone()[0] == len(odd)
    st.close()


# --- partners and console sessions -----------------------------------------------------------------------


@pytest.mark.parametrize("stored", [
    "scrypt$1000$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # n not a power of 2
    "scrypt$1048576$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # 1 GiB: past MAXMEM
    f"scrypt${2**70}$8$1$AAAA$AAAA", f"scrypt$16384$8${2**63}$AAAA$AAAA", "scrypt$16384$0$1$AAAA$AAAA",
    "scrypt$16384$8$-1$AAAA$AAAA", "scrypt$16384$8$1$AAAA$", "scrypt$16384$8$1$AAAA$A", "scrypt$16384$x$1$AAAA$AAAA",
    "scrypt$$$$$", "scrypt$16384$8$1$\u00e9\u00e9$AAAA",
])
def test_a_password_hash_that_can_never_verify_is_refused_when_the_file_is_loaded(tmp_path, stored):
    """Before: any `scrypt$...` with five dollars loaded; verify_password then answered False for
    every password (scrypt refused the parameters), so that partner could never log in and the
    console said only 'wrong password'."""
    from ground_link.partners import PartnersError, hash_password, load_partners, main

    good = hash_password("pw")
    path = tmp_path / "partners.toml"
    path.write_text(f'[[partner]]\nname = "ok"\npassword_hash = "{good}"\n\n'
                    f'[[partner]]\nname = "broken"\npassword_hash = "{stored}"\n')
    with pytest.raises(PartnersError, match=r"partner\[1\]\.password_hash"):
        load_partners(path)
    assert main(["check", str(path)]) == 2


def test_failed_logins_under_names_nobody_has_leave_nothing_behind():
    """Before: Sessions.login stored an (empty) failure list under every name tried, known or
    not, for good: a client sending names could grow the console's memory without limit."""
    from ground_link.partners import Partner, Sessions, hash_password

    s = Sessions({"a": Partner("a", hash_password("right"))}, max_failures=3, lockout_s=60.0)
    rng = random.Random(7)
    names = [f"{rng.getrandbits(64):x}" for _ in range(12)] + ["", "\u0000", "x" * 10_000, "A", "a "]
    for name in names:
        assert s.login(name, "whatever") is None
    assert s._failures == {}
    assert s.login("a", "wrong") is None and list(s._failures) == ["a"]  # a real partner's failures still count
    assert s.login("a", "right") and s._failures == {}


# --- malformed run-folder files and listening ports ----------------------------------------------------------

BAD_CONSTELLATION = ["[]", "5", '"x"', '{"epoch": 5}', '{"epoch": "tuesday"}', '{"clock_start": "x"}',
                     '{"clock_start": 1e400}', '{"satellites": 3, "stations": ["a"]}', '{"satellites": [1], "stations": [7]}',
                     "{", ""]


@pytest.mark.parametrize("text", BAD_CONSTELLATION)
def test_a_malformed_constellation_json_is_one_line_not_a_traceback(tmp_path, capsys, text):
    """Before: the console, the query tool's exports and watch read constellation.json assuming an
    object of the right types: a list, a number for the epoch or a string for clock_start ended each
    in an AttributeError or TypeError traceback (the console never started, watch died mid-run)."""
    import subprocess
    import sys

    from ground_link import query, watch

    run_dir = tmp_path / "run"
    hostile_run(run_dir)
    (run_dir / "launch.json").unlink()  # a constellation's run folder has constellation.json instead
    (run_dir / "constellation.json").write_text(text)
    capsys.readouterr()
    watch_only = text == '{"satellites": [1], "stations": [7]}'  # station names are folder names to watch only
    assert query.main([str(run_dir), "--kind", "alerts", "--format", "csv"]) == (0 if watch_only else 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert watch_only or (len(err) == 1 and "constellation.json" in err[0]), err
    assert query.main([str(run_dir), "--kind", "alerts"]) in (0, 2)  # the listing: a note or an answer, no traceback
    capsys.readouterr()
    code = watch.main([str(run_dir), "--once"])
    out = capsys.readouterr().out
    assert code == (1 if "unreadable" in out else 0), out  # --once says so in its exit status (ok-flags audit)
    if watch_only or text in ('{"satellites": 3, "stations": ["a"]}', "{", "") or not text.startswith("{"):
        assert "constellation.json unreadable" in out, out
    if not watch_only:
        proc = subprocess.run([sys.executable, "-m", "ground_link.console", str(run_dir), "--port", "0"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "constellation.json" in proc.stderr, \
            proc.stderr


@pytest.mark.parametrize("port", ["70000", "-1", str(2**64), "x", "1e3"])
def test_the_console_refuses_a_port_no_socket_can_have_in_one_line(tmp_path, port):
    """Before: --port took any int; bind() then raised OverflowError (a traceback, exit 1)."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    hostile_run(run_dir)
    proc = subprocess.run([sys.executable, "-m", "ground_link.console", str(run_dir), f"--port={port}"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "--port" in proc.stderr, proc.stderr


FORGED = "ok\n2026-11-28T06:00:00.000Z (t=0.0s)  Detection  class=fire  confidence=0.99  product=0:666"


def test_a_flight_message_cannot_forge_rows_or_drive_the_terminal_in_query_output(tmp_path, capsys):
    """Before: format_row printed an event's message as it came: a newline in it printed a line
    that reads as a detection the ground never archived, and escape sequences reached the
    operator's terminal as they were. Now each row is one line, control characters escaped."""
    from ground_link import query

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    st = make_station(run_dir / "archive.sqlite")
    messages = [FORGED, "\x1b[2J\x1b[31mSAFE MODE CLEARED", "right-to-left \u202edecnuonna", "tab\there\rcr", "\u2028\x85\x00",
                "plain é 日本"]
    for i, msg in enumerate(messages):
        st.on_packet(tm(Event(10 + i, 5.0 + i, 3, 2, -1, msg)))
    st.close()
    capsys.readouterr()
    assert query.main([str(run_dir), "--kind", "events", "--epoch", "2026-11-28T06:00:00Z"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(messages), lines
    assert not any(c in "".join(lines) for c in "\x1b\u202e\r\x85\u2028\x00")
    assert not any(line.startswith("2026-11-28T06:00:00.000Z (t=0.0s)  Detection") for line in lines)
    assert lines[-1].endswith("message=plain é 日本")  # printable text, any script, as it is
    # --json is JSON's own escaping: each message comes back exactly as the flight sent it
    assert query.main([str(run_dir), "--kind", "events", "--json"]) == 0
    assert [strict_json(line)["message"] for line in capsys.readouterr().out.splitlines()] == messages


def test_an_archive_outage_costs_the_packet_only_and_it_is_not_acknowledged(tmp_path, capsys):
    """The archive's connection is lost (here: closed under the station) while packets come in:
    each costs that packet only, counted and not acknowledged, so the flight keeps the product and
    sends it again; the station goes on, and once the archive is back the re-sent product is
    archived, acknowledged and alerted exactly once. Before, the exception ended the main loop."""
    from ground_link.archive import Archive

    path = tmp_path / "archive.sqlite"
    st = make_station(path)
    st.receive(tm(fire(1)))
    assert st.counts["products_archived"] == 1 and st.to_ack == [1] and st.counts["alerts"] == 1
    st.archive.db.conn.close()  # the outage: a connection that is gone for good
    st.reconnect_after = float("inf")  # (no new connection yet)
    st.receive(tm(fire(2, lat=41.5)))
    st.receive(b"\x00" * 12)  # a bad packet cannot be logged either: counted the same way
    assert st.counts["packets_failed"] == 2 and st.to_ack == [1] and st.counts["products_archived"] == 1
    st.reconnect_after = 0.0  # the server is back: the next failure opens a new connection
    st.receive(tm(fire(2, lat=41.5)))
    assert st.counts["packets_failed"] == 3 and st.counts["archive_reconnects"] == 1 and st.to_ack == [1]
    assert isinstance(st.archive, Archive)
    st.receive(tm(fire(2, lat=41.5)))  # the flight's re-send
    assert st.counts["products_archived"] == 2 and st.to_ack == [1, 2] and st.counts["alerts"] == 2
    assert st.archive.db.execute("SELECT count(*) FROM products").fetchone()[0] == 2
    st.close()
    capsys.readouterr()


def test_an_alerts_file_on_a_full_disk_loses_no_alert(tmp_path, capsys):
    full = tmp_path / "alerts.jsonl"
    full.symlink_to("/dev/full")
    st = make_station(tmp_path / "archive.sqlite", alerts_file=full)
    st.receive(tm(fire(1)))
    assert st.counts["alerts"] == 1 and st.counts["alerts_file_errors"] == 1 and st.to_ack == [1]
    assert "fire" in capsys.readouterr().out.lower()  # shown to the operator
    assert st.archive.db.execute("SELECT count(*) FROM alerts").fetchone()[0] == 1  # and archived
    st.receive(tm(fire(2, lat=45.0)))
    assert st.counts["alerts"] == 2 and st.counts["products_archived"] == 2
    st.close()


def test_the_commander_refuses_an_empty_file_before_anything_goes_up(tmp_path):
    """An empty file has nothing for the flight to check or keep, and its transfer figures divided
    by an ideal time of 0 (ZeroDivisionError after the transfer)."""
    import zmq

    from flight.clock import ScenarioClock
    from ground_link.commander import Commander, CommanderError

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    sc = load_scenario(None, ["security.curve=false", f'network.ground_in="tcp://127.0.0.1:{port}"'])
    c = Commander(sc, ScenarioClock(EPOCH, 1.0, time.time()), tmp_path, key=KEY)
    try:
        with pytest.raises(CommanderError, match="empty"):
            c.put_file(b"", "empty.mdlpkg", timeout_s=5.0)
        assert not pull.poll(200)  # nothing was sent
    finally:
        c.close()
        pull.close(0)
        ctx.term()
