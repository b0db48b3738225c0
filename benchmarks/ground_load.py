"""Load generator for the ground archive (issue #18, docs/ground.md): how many products per second
one PostgreSQL (or one SQLite file) sustains, and the ingest latency, on loopback.

    python -m benchmarks.ground_load [--stations 1,2,4,8] [--satellites 3] [--seconds 10]
                                     [--dup 0.3] [--rate 0] [--backend postgresql|sqlite|both]
                                     [--dsn postgresql://...] [--json OUT]

Each station is a process with its own connection that does what ground_link.station does per
packet: `Archive.product(product, now, satellite_id, raw=packet)` (the packet logged and the
product archived once, in one transaction; a detection, a frame summary or housekeeping, with its
encoded packet). Station i archives its own products (satellite n % S, ids unique to it); with
probability --dup it also archives, right after, the product its neighbour station archives at
the same step (the same product received by two stations: a race on the key). --rate N paces
each station at N packets/s (0: as fast as it can). Without --dsn a throwaway cluster is started
(initdb/pg_ctl, fsync on, default settings). Reports distinct products archived per second over
the run, duplicate packets per second, and the latency of each ingest call (p50, p99, max).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _products(n: int, sat: int, pid: int):
    from flight.dictionary import DetectionClass
    from flight.products import Detection, FrameSummary

    if n % 3 == 0:
        return Detection(pid, n, float(n), int(DetectionClass.FIRE), 200, 10.0, 20.0, 40.4, 49.9, 12)
    return FrameSummary(pid, n, float(n), 256, 4, 0.2, 0, 1, 0, 12.0, 40.4, 49.9)


def station_worker(target: str, i: int, stations: int, sats: int, seconds: float, dup: float, rate: float,
                   start_at: float, out) -> None:
    from flight.clock import parse_epoch
    from flight.products import encode_tm
    from ground_link.archive import Archive

    epoch = parse_epoch("2026-11-28T06:00:00Z")
    archive = Archive(target, station=f"st{i}")
    rng = np.random.default_rng(i)
    lat: list[float] = []
    new = dup_n = 0
    n = 0
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + seconds
    next_t = start_at
    while True:
        now = time.time()
        if now >= end:
            break
        keys = [(i, n)]
        if dup > 0 and rng.random() < dup:
            keys.append(((i + 1) % stations, n))
        for owner, k in keys:
            sat = k % sats + 1
            pid = (k // sats) * stations + owner + 1
            p = _products(k, sat, pid)
            raw = encode_tm(p, 0, epoch, float(k))
            t0 = time.perf_counter()
            if archive.product(p, time.time(), sat, raw=raw):
                new += 1
            else:
                dup_n += 1
            lat.append(time.perf_counter() - t0)
        n += 1
        if rate > 0:
            next_t += 1.0 / rate
            delay = next_t - time.time()
            if delay > 0:
                time.sleep(delay)
    archive.close()
    out.put({"station": i, "new": new, "dup": dup_n, "lat": lat})


def run_load(target: str, stations: int, sats: int, seconds: float, dup: float, rate: float) -> dict:
    from ground_link.archive import Archive

    Archive(target).close()  # the schema exists before the stations start
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 1.5 + 0.2 * stations  # every process imported and connected
    procs = [ctx.Process(target=station_worker, args=(target, i, stations, sats, seconds, dup, rate, start_at, out))
             for i in range(stations)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    lat = np.array([x for r in results for x in r["lat"]]) * 1e3
    new, dups = sum(r["new"] for r in results), sum(r["dup"] for r in results)
    return {"backend": "postgresql" if target.startswith("postgresql") else "sqlite", "stations": stations,
            "satellites": sats, "seconds": seconds, "dup": dup, "rate_per_station": rate,
            "products_per_s": round(new / seconds, 1), "duplicates_per_s": round(dups / seconds, 1),
            "ingest_ms_p50": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
            "ingest_ms_p99": round(float(np.percentile(lat, 99)), 3) if lat.size else None,
            "ingest_ms_max": round(float(lat.max()), 3) if lat.size else None}


def _fresh_pg_db(dsn: str, name: str) -> str:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return dsn.rsplit("/", 1)[0] + f"/{name}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stations", default="1,2,4,8")
    p.add_argument("--satellites", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--dup", type=float, default=0.3, help="fraction of products a second station also receives")
    p.add_argument("--rate", type=float, default=0.0, help="packets/s per station; 0 = as fast as possible")
    p.add_argument("--backend", choices=("postgresql", "sqlite", "both"), default="both")
    p.add_argument("--dsn", default=None, help="a running PostgreSQL (default: a throwaway local cluster)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    counts = [int(x) for x in args.stations.split(",")]
    rows = []
    cluster = None
    try:
        if args.backend in ("postgresql", "both"):
            dsn = args.dsn
            if dsn is None:
                from payload_sim.constellation import PgCluster, pg_missing_reason

                reason = pg_missing_reason()
                if reason:
                    print(f"ground_load: no PostgreSQL: {reason}", file=sys.stderr)
                    return 2
                cluster = PgCluster(fsync=True)
                dsn = cluster.start()
            for m in counts:
                target = _fresh_pg_db(dsn, f"load{m}")
                rows.append(run_load(target, m, args.satellites, args.seconds, args.dup, args.rate))
                print(json.dumps(rows[-1]), flush=True)
        if args.backend in ("sqlite", "both"):
            for m in counts:
                with tempfile.TemporaryDirectory() as d:
                    rows.append(run_load(str(Path(d) / "archive.sqlite"), m, args.satellites, args.seconds, args.dup,
                                         args.rate))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
    print(f"{'backend':<11} {'stations':>8} {'products/s':>11} {'dups/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for r in rows:
        print(f"{r['backend']:<11} {r['stations']:>8} {r['products_per_s']:>11} {r['duplicates_per_s']:>8} "
              f"{r['ingest_ms_p50']:>8} {r['ingest_ms_p99']:>8} {r['ingest_ms_max']:>8}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
