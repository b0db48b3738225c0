"""The console's reads of a large archive: work bounded by what is shown, not by the archive's size.

Before: every page load and, in a constellation's link view, every second read the whole
telemetry table (3.3 s at 10 days of the default housekeeping, 1.5 M rows) and every product
(each station's counts); the feed's poll and start scanned all products for a range of archive
times (no index on received_wall). Real archives on both back ends (SQLite, and PostgreSQL where
its binaries are installed), real ArchiveView."""

from __future__ import annotations

import json
import math
import random
import sqlite3

import pytest
from pg_util import pg_cluster, pg_dsn  # noqa: F401 (fixtures)

from flight.clock import parse_epoch
from flight.config import ScenarioSection
from flight.products import housekeeping
from ground_link import archive as archive_module
from ground_link.archive import Archive, reader
from ground_link.console import data as console_data
from ground_link.console.data import ArchiveView
from ground_link.export import RunContext
from ground_link.partners import Partner

NAN = float("nan")
WALL0 = 1.9e9  # archive times (wall seconds) of the synthetic passes


@pytest.fixture(params=["sqlite", "postgresql"])
def archive_target(request, tmp_path):
    if request.param == "sqlite":
        return tmp_path / "archive.sqlite"
    return request.getfixturevalue("pg_dsn")


def context(target, tmp_path, **kw) -> RunContext:
    return RunContext(target, tmp_path, None, parse_epoch(ScenarioSection().epoch), **kw)


def view_of(target, tmp_path) -> ArchiveView:
    return ArchiveView(context(target, tmp_path))


def operator() -> Partner:
    return Partner("op", "x", role="operator", housekeeping=True)


def delayed(delay_s: float) -> Partner:
    return Partner("late", "x", delay_s=delay_s, housekeeping=True)


def fill(target, seed: int = 7) -> list[tuple[int, int, float | None, float, float]]:
    """Housekeeping of three satellites in a seeded order: channel sets that vary (an unknown id
    among them), equal capture times archived at different times, times that are not numbers.
    Returns (satellite, channel, time_s or None, value, received_wall) of every telemetry row."""
    rng = random.Random(seed)
    arch = Archive(target)
    rows = []
    wall = WALL0
    for n in range(1, 181):
        sat = rng.choice((1, 2, 5))
        t = rng.choice((NAN, float(rng.randrange(0, 40) * 30)))  # ties on purpose: 40 distinct times
        chans = {c: rng.uniform(-5, 5) for c in rng.sample((1, 5, 7, 14, 17, 900), rng.randint(1, 4))}
        wall += rng.uniform(0.5, 2.0)
        assert arch.product(housekeeping(n, t, chans), wall, satellite_id=sat)
        for c, v in chans.items():
            rows.append((sat, c, None if math.isnan(t) else t, v, wall))
    arch.close()
    return rows


def reference(rows, horizon: float) -> dict[tuple[int, int], tuple]:
    """The latest value per (satellite, channel) by the documented rule, from every row: the
    greatest capture time released by `horizon`, the latest archived among equal times, a row
    without a time only when the channel has no other."""
    best: dict[tuple[int, int], tuple] = {}
    for sat, c, t, v, wall in rows:
        if wall > horizon:
            continue
        rank = (t is not None, t if t is not None else 0.0, wall)
        if (sat, c) not in best or rank > best[(sat, c)][0]:
            best[(sat, c)] = (rank, t, v, wall)
    return {k: (t, v, wall) for k, (_, t, v, wall) in best.items()}


def test_latest_housekeeping_per_satellite_and_channel_matches_every_row(archive_target, tmp_path):
    rows = fill(archive_target)
    view = view_of(archive_target, tmp_path)
    walls = sorted({r[4] for r in rows})
    for who, now in ((operator(), WALL0 + 1e6), (delayed(100.0), walls[len(walls) // 2] + 100.0),
                     (delayed(100.0), walls[0] + 99.0)):
        horizon = view.horizon(who, now)
        want = reference(rows, horizon)
        got = view.housekeeping(who, now)
        assert {(c["satellite_id"], c["id"]) for c in got} == set(want)
        for c in got:
            t, v, _ = want[(c["satellite_id"], c["id"])]
            assert c["time_s"] == t
            assert c["value"] == pytest.approx(v, abs=1e-5)  # float32 on the link
        assert any(c["id"] == 900 and c["name"] == "channel_900" for c in got) or not any(k[1] == 900 for k in want)
    assert len(view.housekeeping(operator(), WALL0 + 1e6)) == len(reference(rows, math.inf)) > 12


def counting_reader(steps: list[int]):
    """The console's own reader, with SQLite's progress handler counting virtual-machine steps:
    the work of its statements, counted instead of timed."""
    def open_counted(target):
        db = reader(target)
        db.conn.set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1) or 0, 100)
        return db
    return open_counted


def bulk_archive(path, reports: int) -> None:
    """An archive of `reports` housekeeping reports of 53 channels, one satellite, 30 s apart
    (the default period), written directly: building 1.5 M rows through the station takes minutes."""
    Archive(path).close()  # the schema, indexes included
    db = sqlite3.connect(path)
    db.executemany("INSERT INTO products (product_id, apid, kind, frame_id, time_s, received_wall, fields, satellite_id, "
                   "station) VALUES (?, 1, 'housekeeping', NULL, ?, ?, '{}', 1, 'baku')",
                   ((n, 30.0 * n, WALL0 + 30.0 * n) for n in range(1, reports + 1)))
    db.executemany("INSERT INTO telemetry (product_id, time_s, channel, value, satellite_id) VALUES (?, ?, ?, ?, 1)",
                   ((n, 30.0 * n, c, float(c)) for n in range(1, reports + 1) for c in range(1, 54)))
    db.commit()
    db.close()


def test_housekeeping_and_a_feeds_start_and_poll_do_not_grow_with_the_archive(tmp_path, monkeypatch):
    work = []
    for reports in (200, 4000):
        path = tmp_path / f"a{reports}.sqlite"
        bulk_archive(path, reports)
        view = view_of(path, tmp_path)
        steps = [0]
        monkeypatch.setattr(console_data, "reader", counting_reader(steps))
        now = WALL0 + 1e9
        got = view.housekeeping(operator(), now)
        assert len(got) == 53 and all(c["time_s"] == 30.0 * reports for c in got)
        cursor = view._read(lambda db, v=view, t=now: v._start_cursor(db, operator(), t), None)  # where a feed starts
        assert cursor.wall == WALL0 + 30.0 * reports
        assert view.poll(operator(), cursor, now) == []  # and its next second: nothing new
        work.append(steps[0])
    assert work[1] < 1.5 * work[0], work  # 20x the archive; reading every row made it about 20x the work


def test_station_counts_are_read_step_by_step_and_match_a_full_count(tmp_path, monkeypatch):
    """The constellation view's per-station counts and latencies: after the first read only what
    was archived since (plus an overlap), and the same figures as counting every product."""
    path = tmp_path / "archive.sqlite"
    rng = random.Random(3)
    stations = {"baku": Archive(path, station="baku"), "astana": Archive(path, station="astana")}
    ctx = context(path, tmp_path, clock_start=WALL0 - 100.0, constellation={"satellites": [1, 2], "stations": ["baku", "astana"]})
    view = ArchiveView(ctx)
    truth: dict[str, list[tuple[int, float]]] = {"baku": [], "astana": []}
    now, n = WALL0, 0
    for step in range(6):
        for _ in range(40):
            n += 1
            name, sat = rng.choice(("baku", "astana")), rng.choice((1, 2))
            now += rng.uniform(1.0, 3.0)  # a step's 40 products span more than the re-read overlap (60 s)
            t = float(n)
            assert stations[name].product(housekeeping(n, t, {1: 1.0}), now, satellite_id=sat)
            truth[name].append((sat, (now - (WALL0 - 100.0)) * ctx.rate - t))
        steps = [0]
        monkeypatch.setattr(console_data, "reader", counting_reader(steps))
        got = {s["station"]: s for s in view.station_stats(now + 10.0 * (step + 1) + 2.0)}
        for name, arrived in truth.items():
            lat = sorted(x for _, x in arrived)
            assert got[name]["products_archived"] == len(arrived)
            assert got[name]["by_satellite"] == {"1": sum(s == 1 for s, _ in arrived), "2": sum(s == 2 for s, _ in arrived)}
            assert got[name]["latency_s_max"] == round(lat[-1], 1)
            assert got[name]["latency_s_p50"] == round(float(console_data.percentile(lat, 50)), 1)
        last = steps[0]
    steps = [0]
    monkeypatch.setattr(console_data, "reader", counting_reader(steps))
    fresh = {s["station"]: s for s in ArchiveView(ctx).station_stats(now + 100.0)}
    assert fresh == got  # a new view reading every product says the same
    assert last < 0.5 * steps[0], (last, steps[0])  # the last step read its 40 products and the overlap, not all 240
    for a in stations.values():
        a.close()


def test_the_new_indexes_are_made_on_an_archive_written_before_them(tmp_path):
    """An archive from before this change opens in the station with the indexes added."""
    path = tmp_path / "archive.sqlite"
    Archive(path).close()
    db = sqlite3.connect(path)
    for name in ("products_arrival", "products_time", "telemetry_latest"):
        db.execute(f"DROP INDEX {name}")
    db.commit()
    db.close()
    Archive(path).close()
    db = sqlite3.connect(path)
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    db.close()
    assert {"products_arrival", "products_time", "telemetry_latest"} <= names
    assert archive_module.SCHEMA.count("CREATE INDEX") == 6


def test_watch_redraws_count_what_arrived_since_and_match_a_fresh_count(tmp_path):
    """ground_link.watch's per-station lines come from the same step-by-step reading: a redraw
    after more products arrived counts them, and says what a fresh watch says."""
    from ground_link import watch

    path = tmp_path / "archive.sqlite"
    baku = Archive(path, station="baku")
    info = {"clock_rate": 1.0, "clock_start": WALL0 - 1000.0, "stations": ["baku", "astana"], "satellites": [1, 2]}
    for n in range(1, 4):
        assert baku.product(housekeeping(n, 10.0 * n, {1: 1.0}), WALL0 + n, satellite_id=1)
    first = watch.station_latency(str(path), info)
    assert first["baku"].startswith("archive: 3 products (sat 1 3  sat 2 0)")
    assert first["astana"] == "archive: 0 products (sat 1 0  sat 2 0)"
    assert baku.product(housekeeping(9, 5.0, {1: 1.0}), WALL0 + 200.0, satellite_id=2)
    again = watch.station_latency(str(path), info)
    assert again["baku"] == "archive: 4 products (sat 1 3  sat 2 1)  capture to archive: median 986 s, max 1195 s (scenario)"  # 973, 982, 991, 1195
    watch._ARRIVALS.clear()
    assert watch.station_latency(str(path), info) == again
    baku.close()


def test_waiting_for_a_commands_report_reads_what_was_archived_since_it_was_sent(tmp_path, monkeypatch):
    """The commander polls the archive ten times a second while it waits for a command's final
    report. It read every command report of the mission each time (no index on the product kind);
    now only what was archived from REPORT_LOOKBACK_S before the command was sent, through the
    reception-time index: the same reports, a fraction of the work."""
    from types import SimpleNamespace

    from flight.dictionary import ReportKind
    from flight.products import CommandReport
    from ground_link import commander
    from ground_link.archive import _jsonable

    path = tmp_path / "archive.sqlite"
    Archive(path).close()
    db = sqlite3.connect(path)
    old = [CommandReport(n, 30.0 * n, n, 7, int(ReportKind.COMPLETED), 0, "ok") for n in range(1, 3001)]
    db.executemany("INSERT INTO products (product_id, apid, kind, frame_id, time_s, received_wall, fields, satellite_id, "
                   "station) VALUES (?, 1, 'CommandReport', NULL, ?, ?, ?, 1, 'baku')",
                   ((r.product_id, r.time_s, WALL0 + r.time_s, json.dumps(_jsonable(r))) for r in old))
    sent = WALL0 + 1e6
    new = [CommandReport(5000 + k, 0.0, 4242, 7, int(kind), 0, "") for k, kind in
           enumerate((ReportKind.ACCEPTED, ReportKind.COMPLETED))]
    db.executemany("INSERT INTO products (product_id, apid, kind, frame_id, time_s, received_wall, fields, satellite_id, "
                   "station) VALUES (?, 1, 'CommandReport', NULL, 0.0, ?, ?, 1, 'baku')",
                   ((r.product_id, sent + 2.0, json.dumps(_jsonable(r))) for r in new))
    db.commit()
    db.close()

    steps = [0]
    real_connect = sqlite3.connect

    def counted(*a, **kw):
        conn = real_connect(*a, **kw)
        conn.set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1) or 0, 100)
        return conn

    monkeypatch.setattr(commander.sqlite3, "connect", counted)
    cmd = SimpleNamespace(archive=path, route=None, sent_wall={4242: sent})
    since = commander.Commander.reports_since(cmd, [4242])
    assert since == sent - commander.REPORT_LOOKBACK_S
    assert commander.Commander.reports_since(cmd, [4242, 1]) is None  # one not sent here: every report
    got = commander.Commander.reports(cmd, 4242, since)
    bounded, steps[0] = steps[0], 0
    every = commander.Commander.reports(cmd, 4242)
    assert got == every and [r["kind"] for r in got] == ["ACCEPTED", "COMPLETED"]
    assert bounded * 20 < steps[0], (bounded, steps[0])
