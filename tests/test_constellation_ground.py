"""The alert feed of a constellation's ground (issue #18): real Station objects of two named
stations on one real archive, SQLite and PostgreSQL both. A product that reaches both stations
raises its alert once; a second sighting of the same fire (another product, another satellite)
via the other station is a throttled repeat, as it would be at a single station; and two stations
racing on the same products or on two sightings of one fire still show each thing once."""

from __future__ import annotations

import json
import threading
import time

import pytest
from pg_util import pg_cluster, pg_dsn  # noqa: F401 (fixtures)

from flight.clock import ScenarioClock, parse_epoch
from flight.config import load_scenario
from flight.dictionary import DetectionClass
from flight.products import Detection, encode_tm
from ground_link.archive import Db
from ground_link.station import Station

EPOCH = parse_epoch("2026-11-28T16:00:00Z")
FIRE = int(DetectionClass.FIRE)
RULES = 'ground.alerts=[{class_name="fire", min_confidence=0.5, severity="critical", throttle_km=5.0, throttle_s=600.0}]'


class Quiet:
    def log(self, msg: str) -> None:
        pass


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "archive.sqlite")
    return request.getfixturevalue("pg_dsn")


def station(name: str, target: str) -> Station:
    sc = load_scenario(None, [f'station.name="{name}"', RULES])
    clock = ScenarioClock(EPOCH, rate=10.0, wall_start=time.time() - 1000.0)  # scenario t is about 10,000 s
    return Station(sc, target, as_json=True, svc=Quiet(), clock=clock)


def fire(pid: int, t: float, lat: float = 40.5, lon: float = 49.8) -> bytes:
    return encode_tm(Detection(pid, pid, t, FIRE, 240, 10.0, 20.0, lat, lon, 12), 0, EPOCH, t)


def alert_rows(target: str) -> list[tuple]:
    db = Db(target, read_only=True)
    try:
        return [tuple(r) for r in db.execute(
            "SELECT satellite_id, product_id, station, throttled FROM alerts ORDER BY id").fetchall()]
    finally:
        db.close()


def test_a_product_reaching_two_stations_alerts_once_and_a_repeat_via_the_other_is_throttled(target, capsys):
    baku, astana = station("baku", target), station("astana", target)
    try:
        baku.on_packet(fire(1, 100.0), 1)
        astana.on_packet(fire(1, 100.0), 1)  # the same product of satellite 1, heard by Astana too
        assert baku.counts["alerts"] == 1 and astana.counts["alerts"] == 0 and astana.counts["duplicates"] == 1
        # product 1 of satellite 2 is another product: a fire far away, its own alert
        astana.on_packet(fire(1, 150.0, lat=-20.0, lon=30.0), 2)
        # satellite 2 sees Baku's fire again 190 s later (product 5) and it comes down via Astana:
        # Astana never showed that fire, Baku did, so it is a repeat
        astana.on_packet(fire(5, 290.0, lat=40.51), 2)
        assert astana.counts["alerts"] == 1 and astana.counts["alerts_throttled"] == 1
        # far in time from the first: shown again
        astana.on_packet(fire(6, 1000.0), 2)
    finally:
        baku.close()
        astana.close()
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(a["satellite_id"], a["product_id"], a["station"]) for a in printed] == [
        (1, 1, "baku"), (2, 1, "astana"), (2, 6, "astana")]
    assert all(not a["throttled"] for a in printed) and "sat 1 via baku" in printed[0]["message"]
    assert alert_rows(target) == [(1, 1, "baku", 0), (2, 1, "astana", 0), (2, 5, "astana", 1), (2, 6, "astana", 0)]


def test_a_single_station_ground_throttles_as_before(tmp_path, capsys):
    """An unnamed station (the single-satellite ground) keeps its own throttle: same rows as ever."""
    sc = load_scenario(None, [RULES])
    st = Station(sc, tmp_path / "archive.sqlite", as_json=True, svc=Quiet(),
                 clock=ScenarioClock(EPOCH, rate=10.0, wall_start=time.time() - 1000.0))
    try:
        st.on_packet(fire(1, 100.0))
        st.on_packet(fire(2, 290.0, lat=40.51))
        st.on_packet(fire(1, 100.0))
    finally:
        st.close()
    assert [json.loads(line)["product_id"] for line in capsys.readouterr().out.splitlines()] == [1]
    assert alert_rows(str(tmp_path / "archive.sqlite")) == [(1, 1, None, 0), (1, 2, None, 1)]


def race(target: str, feeds: dict[str, list[tuple[bytes, int]]]) -> dict[str, Station]:
    """Each named station, in its own thread and with its own connection, takes its packets."""
    stations: dict[str, Station] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(feeds))

    def run(name: str) -> None:
        try:
            st = station(name, target)  # made in its thread: an SQLite connection stays in one thread
            stations[name] = st
            start.wait(30)
            for raw, sid in feeds[name]:
                st.on_packet(raw, sid)
            st.archive.close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in feeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return stations


def test_stations_racing_on_the_same_products_alert_each_once(target, capsys):
    # 40 fires of satellites 1 and 2, 0.5 deg (55 km) apart and the two satellites' at other
    # longitudes: no two are repeats of each other
    packets = [(fire(i, 100.0 + i, lat=-60.0 + 0.5 * i, lon=30.0 * sid), sid) for sid in (1, 2) for i in range(1, 21)]
    st = race(target, {"baku": packets, "astana": packets[::-1]})
    rows = alert_rows(target)
    assert sorted((r[0], r[1]) for r in rows) == sorted({(sid, i) for sid in (1, 2) for i in range(1, 21)})
    assert all(r[3] == 0 for r in rows) and len(capsys.readouterr().out.splitlines()) == 40
    assert st["baku"].counts["alerts"] + st["astana"].counts["alerts"] == 40
    assert st["baku"].counts["duplicates"] + st["astana"].counts["duplicates"] == 40


def test_two_sightings_of_one_fire_at_two_stations_at_once_show_once(target, capsys):
    # 15 fires, each seen by satellite 1 (via Baku) and satellite 2 (via Astana), received at once
    baku = [(fire(100 + i, 1000.0 * i, lat=-60.0 + i), 1) for i in range(15)]
    astana = [(fire(200 + i, 1000.0 * i + 190.0, lat=-60.0 + i), 2) for i in range(15)]
    race(target, {"baku": baku, "astana": astana})
    rows = alert_rows(target)
    assert len(rows) == 30 and sum(1 for r in rows if r[3] == 0) == 15  # each fire shown once
    shown = sorted((r[1] % 100) for r in rows if r[3] == 0)
    assert shown == list(range(15))
    assert len(capsys.readouterr().out.splitlines()) == 15


def two_station_run(tmp_path, target: str) -> tuple:
    """A constellation run folder as the launcher leaves it (constellation.json naming the archive)
    whose archive two real stations filled."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    baku, astana = station("baku", target), station("astana", target)
    try:
        baku.on_packet(fire(1, 9000.0), 1)
        astana.on_packet(fire(1, 9100.0, lat=-20.0, lon=30.0), 2)
        astana.on_packet(fire(1, 9000.0), 1)  # a duplicate
        clock = baku.clock
    finally:
        baku.close()
        astana.close()
    info = {"archive": target, "dialect": "postgresql" if target.startswith("postgres") else "sqlite",
            "satellites": [1, 2], "stations": ["baku", "astana"], "clock_start": clock.wall_start,
            "clock_rate": clock.rate, "epoch": "2026-11-28T16:00:00Z"}
    (run_dir / "constellation.json").write_text(json.dumps(info))
    return run_dir, info


def test_watch_and_query_show_satellite_station_and_latency(target, tmp_path, capsys):
    from ground_link import query, watch

    run_dir, _ = two_station_run(tmp_path, target)
    capsys.readouterr()
    text = watch.constellation_screen(run_dir, None)
    assert "sat 1 via baku" in text and "sat 2 via astana" in text
    baku_line = next(line for line in text.splitlines() if line.startswith("  archive: 1 products (sat 1 1  sat 2 0)"))
    # captured at 9000 s, archived at about t = 10,000 s (the stations' clock): ~1000 s
    assert 900 < float(baku_line.split("median ")[1].split(" s")[0]) < 1100
    assert query.main(["--db", target, "--kind", "alerts", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["satellite_id"], r["product_id"], r["station"]) for r in rows] == [(1, 1, "baku"), (2, 1, "astana")]


def test_a_kept_copy_of_the_archive_serves_the_tools_after_the_run(target, tmp_path, capsys):
    """The launcher copies a throwaway PostgreSQL archive into RUN_DIR/archive.sqlite before the
    server goes (payload_sim.constellation.keep_archive); the tools read the copy, with UTC times."""
    from ground_link import query, watch
    from ground_link.archive import copy_archive
    from ground_link.console.__main__ import main as console_main

    run_dir, info = two_station_run(tmp_path, target)
    copy = run_dir / "archive.sqlite"
    if target.endswith("archive.sqlite"):  # the SQLite source: copy it elsewhere first
        copy = run_dir / "copy.sqlite"
    assert copy_archive(target, copy) == 2  # two products (and a duplicate reception, in packets)
    src, dst = Db(target, read_only=True), Db(copy, read_only=True)
    for table in ("products", "alerts", "packets"):
        a = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
             for r in src.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()]
        assert a == [tuple(r) for r in dst.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()], table
    src.close()
    dst.close()
    (run_dir / "constellation.json").write_text(json.dumps(info | {"archive": str(copy), "dialect": "sqlite"}))
    capsys.readouterr()
    assert "sat 2 via astana" in watch.constellation_screen(run_dir, None)
    if copy.name == "archive.sqlite":  # the run folder itself, as after a run: UTC from constellation.json
        assert query.main([str(run_dir), "--kind", "alerts"]) == 0
        out = capsys.readouterr()
        assert "2026-11-28T18:30:00" in out.out and "sat 1 via baku" in out.out and "epoch" not in out.err
        # exports key by (satellite, product) now (tests/test_console_constellation.py): each row says which
        assert query.main([str(run_dir), "--kind", "alerts", "--format", "csv"]) == 0
        rows = capsys.readouterr().out.splitlines()
        assert rows[0].endswith(",satellite_id,station") and len(rows) == 3
    # the console serves a constellation's run folder now: its context reads the archive constellation.json names
    from ground_link.export import run_context

    ctx = run_context(run_dir)
    assert ctx.constellation is not None and ctx.target() == copy
    assert console_main([str(run_dir / "nowhere")]) == 2
