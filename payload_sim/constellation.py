"""A constellation: N satellites x M ground stations sharing one archive (issue #18, docs/ground.md).

    python -m payload_sim.hil payload_sim/scenarios/constellation.toml     (hil dispatches here)
    python -m payload_sim.constellation payload_sim/scenarios/constellation.toml [--run-dir DIR] ...

A scenario with `[[constellation.satellites]]` runs, on loopback ZeroMQ with free ports:

- per satellite (RUN_DIR/sat<ID>/): a camera, a flight process (its own TLE, mission key, scene
  seed and product store, so its own product ids) and a *radio* (`python -m
  payload_sim.constellation radio`): the satellite's transmitter and receiver. The radio emulates
  one link per (satellite, station) pair with ground_link.channel's `Direction` (rate, delay,
  priority classes, loss, bit errors) and that pair's contact plan from sgp4: every downlink packet
  is offered to each pair (a radio broadcast reaches every station in view, each with its own
  fades), every station's uplink reaches the flight. Each pair has its own seeded loss streams.
- per station (RUN_DIR/<station>/): a ground_link.station with one link per satellite (the pair's
  endpoints and that satellite's key), its own PUS source id (1, 2, ...) and the shared archive.
- the archive: a throwaway PostgreSQL cluster (initdb/pg_ctl from the OS packages, a free port,
  deleted at the end) unless `constellation.archive` names a server or "sqlite"; without
  PostgreSQL it says so and falls back to one SQLite file shared by the stations (one machine).

Each flight is given its contact plan before launch (its windows with every station, the same
sgp4 passes its radio uses; flight/contacts.py, unless flight.use_contact_plan is off), as the
single-satellite launcher does: products wait in the store between passes and go at AOS.

Faults (`[faults]`): `kill_station = "baku"`, `kill_station_at_s = T` SIGKILLs that station at
scenario time T; `restart_station_at_s = T2` starts it again (same name, source id and archive).
The run ends when every satellite's camera is done and its store was empty once after its last
frame (housekeeping made after its last pass waits for a pass that is not in the run). It fails
at once, saying which satellite, when a satellite is past its last pass in the run (plus
LOS_GRACE_WALL_S) with products still on board: nothing can bring them down any more. The summary
has totals, and per satellite and per station counts, and the capture-to-archive latency per
station. A throwaway PostgreSQL archive is copied into RUN_DIR/archive.sqlite before its server
is deleted, for ground_link.query and ground_link.watch after the run.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ground_link.ports import free_port

# --- a throwaway PostgreSQL cluster ----------------------------------------------------------------


def pg_bin_dir() -> Path | None:
    """The folder of initdb/pg_ctl/postgres: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def pg_missing_reason() -> str | None:
    """Why a throwaway PostgreSQL cannot be started here (None: it can)."""
    if pg_bin_dir() is None:
        return ("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin: "
                "apt-get install postgresql (.ci/run does)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg 3 not installed (pip install 'onboard-payload[ground]')"
    if os.geteuid() == 0 and shutil.which("runuser") is None and shutil.which("setpriv") is None:
        return "running as root and neither runuser nor setpriv is available to drop to an unprivileged user"
    return None


class PgCluster:
    """A PostgreSQL server of its own: initdb in a temporary folder, pg_ctl start on a free
    loopback port with its socket in that folder, trust authentication for the local user
    `postgres`, stopped and deleted by `stop()`. initdb refuses to run as root, so as root the
    server runs as `nobody`. `fsync=False` for tests that do not measure durability."""

    def __init__(self, fsync: bool = True, max_connections: int = 200):
        found = pg_bin_dir()
        if found is None:
            raise RuntimeError(pg_missing_reason() or "no PostgreSQL")
        self.bin: Path = found
        self.fsync, self.max_connections = fsync, max_connections
        self.root: Path | None = None
        self.port = 0
        self.running = False

    def _as_user(self, cmd: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return cmd
        if shutil.which("runuser"):
            return ["runuser", "-u", "nobody", "--", *cmd]
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log_file(self) -> Path:
        assert self.root is not None
        return self.root / "server.log"

    def start(self, timeout_s: float = 60.0) -> str:
        root = self.root = Path(tempfile.mkdtemp(prefix="pgcluster-"))
        if os.geteuid() == 0:
            shutil.chown(root, "nobody", "nogroup")
        data = root / "data"
        subprocess.run(self._as_user([str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                      "-E", "UTF8", "--no-sync", "--no-instructions"]),
                       check=True, capture_output=True, timeout=timeout_s, cwd=self.root)
        last = ""
        for _ in range(3):  # a free port can be taken between looking and binding
            self.port = free_port()
            opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync={'on' if self.fsync else 'off'} "
                    f"-c max_connections={self.max_connections}")
            r = subprocess.run(self._as_user([str(self.bin / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
                                              str(self.log_file), "-w", "-t", str(int(timeout_s)), "start"]),
                               capture_output=True, text=True, timeout=timeout_s + 10, cwd=self.root)
            if r.returncode == 0:
                self.running = True
                return self.dsn
            last = r.stdout + r.stderr + (self.log_file.read_text() if self.log_file.exists() else "")
        raise RuntimeError(f"PostgreSQL did not start: {last[-2000:]}")

    def stop(self) -> None:
        if self.root is None:
            return
        if self.running:
            subprocess.run(self._as_user([str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w",
                                          "stop"]), capture_output=True, timeout=60, cwd=self.root)
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> PgCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --- orbits -----------------------------------------------------------------------------------------


def shifted_tle(number: int, mean_anomaly_deg: float = 0.0, raan_deg: float = 0.0,
                base: tuple[str, str] | None = None) -> tuple[str, str]:
    """The base TLE (payload_sim.orbit.DEFAULT_TLE) as catalogue `number`, its mean anomaly and
    right ascension of the ascending node moved by the given degrees (a satellite ahead of or
    behind it in the same or another plane), checksums recomputed."""
    from payload_sim.orbit import DEFAULT_TLE, check_tle, tle_checksum

    l1, l2 = base or DEFAULT_TLE
    l1 = l1[:2] + f"{number:05d}" + l1[7:68]
    raan = (float(l2[17:25]) + raan_deg) % 360
    ma = (float(l2[43:51]) + mean_anomaly_deg) % 360
    l2 = l2[:2] + f"{number:05d}" + l2[7:17] + f"{raan:8.4f}" + l2[25:43] + f"{ma:8.4f}" + l2[51:68]
    l1, l2 = l1 + str(tle_checksum(l1)), l2 + str(tle_checksum(l2))
    check_tle(l1, l2)
    return l1, l2


def ground_stations(scenario) -> list:
    """The scenario's stations that run (constellation.stations of [[ground_stations]], or all)."""
    from payload_sim.orbit import DEFAULT_STATIONS, GroundStation

    tables = scenario.extra.get("ground_stations")
    stations = [GroundStation(**t) for t in tables] if tables else list(DEFAULT_STATIONS)
    wanted = scenario.constellation.stations
    if wanted:
        missing = set(wanted) - {s.name for s in stations}
        if missing:
            raise ValueError(f"constellation.stations names {sorted(missing)}, not in [[ground_stations]]")
        stations = [s for s in stations if s.name in wanted]
    return stations


def pair_contacts(scenario, station_names: list[str], tle: tuple[str, str] | None = None) -> dict:
    """{station: ContactPlan} of a satellite (`tle`, else the scenario's orbit table) with each station."""
    from flight.clock import parse_epoch
    from ground_link.linkmodel import ContactPlan, Window, make_contacts, scenario_horizon_s
    from payload_sim.orbit import DEFAULT_TLE, Orbit, contact_windows

    if scenario.link.contacts != "orbit":  # "always" or an explicit schedule: the same for every pair
        plan = make_contacts(scenario)
        return {name: plan for name in station_names}
    orbit_cfg = scenario.extra.get("orbit", {})
    tle1, tle2 = tle or (orbit_cfg.get("tle1", DEFAULT_TLE[0]), orbit_cfg.get("tle2", DEFAULT_TLE[1]))
    orbit = Orbit(tle1, tle2, parse_epoch(scenario.scenario.epoch))
    by_name = {s.name: s for s in ground_stations(scenario)}
    horizon = scenario_horizon_s(scenario)
    return {name: ContactPlan([Window(c.station, c.aos_s, c.los_s)
                               for c in contact_windows(orbit, (by_name[name],), 0.0, horizon)])
            for name in station_names}


def last_los_s(plans: dict) -> float | None:
    """The end of a satellite's last contact with any station in the run (None: always in contact)."""
    if any(plan.windows is None for plan in plans.values()):
        return None
    return max((w.los_s for plan in plans.values() for w in plan.windows), default=0.0)


def preload_sat_plan(scenario, state_dir: Path, plans: dict) -> int:
    """Write a satellite's onboard contact plan (flight/contacts.py: its windows with every station,
    overlaps allowed) into its state folder before launch, as the single-satellite launcher does
    (payload_sim.ops_support.preload_contact_plan). Without it the flight sends into the gaps and,
    while nothing is acknowledged, probes once per timeout: a short last pass may end before the
    backlog is down. Returns the number of windows written (0: none, the flight plans nothing)."""
    from flight.clock import parse_epoch
    from flight.contacts import keep_plan_file, plan_json

    if not scenario.flight.use_contact_plan or last_los_s(plans) is None:
        return 0  # (each launch is a new run: a plan an earlier run left in the folder is replaced)
    windows = sorted(((w.station, w.aos_s, w.los_s) for plan in plans.values() for w in plan.windows),
                     key=lambda w: w[1])
    if windows:
        keep_plan_file(state_dir, plan_json(windows, parse_epoch(scenario.scenario.epoch)))
    return len(windows)


# --- the satellite's radio: one emulated link per (satellite, station) pair ---------------------------


def radio_main(argv: list[str]) -> int:
    import dataclasses
    import json
    import time

    import zmq

    from flight.security import SecureContext
    from flight.service import Service, common_args, setup
    from ground_link.channel import ack_ids_in, link_status, make_link, wall_of_monotonic

    p = common_args("A satellite's radio: one emulated link per ground station")
    p.add_argument("--satellite", type=int, required=True)
    p.add_argument("--pairs", required=True, help='JSON: [{"station": NAME, "ground_out": URL, "ground_in": URL}, ...]')
    args = p.parse_args(argv)
    scenario, clock = setup(args)
    svc = Service("channel", args.run_dir)
    pairs = json.loads(args.pairs)

    def scenario_s(wall: float) -> float:
        return (wall - clock.wall_start) * clock.rate

    def scenario_at(t: float) -> float:  # link time (monotonic: the queues' clock) -> scenario seconds (wall-based, shared)
        return scenario_s(wall_of_monotonic(t))

    plans = pair_contacts(scenario, [pr["station"] for pr in pairs])
    ctx = SecureContext(scenario.security, "channel", args.run_dir)
    net = scenario.network

    def bound(kind: int, addr: str) -> zmq.Socket:
        s = ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        ctx.serve(s)
        s.bind(addr)
        return s

    space_in, space_out = bound(zmq.PULL, net.space_in), bound(zmq.PUSH, net.space_out)
    links = []
    for k, pr in enumerate(pairs):
        cfg = dataclasses.replace(scenario.link, seed=(scenario.link.seed + 7919 * args.satellite + 104729 * k) % 2**31)
        down, up = make_link(cfg, plans[pr["station"]], scenario_at)
        links.append((pr["station"], down, up, bound(zmq.PUSH, pr["ground_out"]), bound(zmq.PULL, pr["ground_in"])))
    poller = zmq.Poller()
    poller.register(space_in, zmq.POLLIN)
    for *_, gin in links:
        poller.register(gin, zmq.POLLIN)
    for name, *_ in links:
        w = plans[name].windows
        svc.log(f"satellite {args.satellite} -> {name}: " + ("always in contact" if w is None else
                ", ".join(f"{x.aos_s:.0f}-{x.los_s:.0f} s" for x in w[:6])))

    def status() -> dict:
        t_s, now = scenario_s(time.time()), time.monotonic()
        per = {name: link_status(down, up, plans[name], t_s, now) for name, down, up, _, _ in links}
        total = {k: sum(v[k] for v in per.values()) for k in ("down_packets_out", "down_bytes_out", "down_lost",
                                                                "up_packets_out", "up_lost", "down_dropped_no_listener")}
        return total | {"satellite_id": args.satellite, "down_packets_in": links[0][1].packets_in if links else 0,
                        "link_up": any(v["link_up"] for v in per.values()),
                        "stations_in_view": [n for n, v in per.items() if v["link_up"]], "stations": per,
                        "scenario_s": round(t_s, 3)}

    try:
        while svc.running:
            now = time.monotonic()  # link time, as in ground_link/channel.py: a wall clock stepped back held every link
            nxt = [t for _, d, u, _, _ in links for t in (d.next_event(), u.next_event()) if t is not None]
            events = dict(poller.poll(max(0, int(min([t - now for t in nxt] + [0.05]) * 1e3))))
            now = time.monotonic()
            while space_in in events and space_in.poll(0):
                packet = space_in.recv()
                for _, down, _, _, _ in links:  # a broadcast: every station in view hears it
                    down.offer(packet, now)
            for _, _, up, _, gin in links:
                while gin in events and gin.poll(0):
                    up.offer(gin.recv(), now)
            for _, down, up, gout, _ in links:
                for d, out in ((down, gout), (up, space_out)):
                    for packet in d.due(now):
                        try:
                            out.send(packet, zmq.NOBLOCK)
                        except zmq.Again:  # nobody listening on that side (a station down): lost, as on a radio
                            d.dropped_no_listener += 1
                            d.lost_ack_ids += ack_ids_in(packet)  # a lost ack costs the flight re-sends, as in the channel
                            continue
                        d.packets_out += 1
                        d.bytes_out += len(packet)
            svc.write_status(status)
        svc.write_status(status(), force=True)
    finally:
        for s in (space_in, space_out, *(x for _, _, _, gout, gin in links for x in (gout, gin))):
            s.close(linger=0)
        ctx.term()
    return 0


# --- the launcher -------------------------------------------------------------------------------------

SAT_COUNTS = ("frames_captured", "frames_processed", "frames_rejected", "products_created", "packets_sent",
              "packets_retransmitted", "products_lost", "products_evicted", "acks_rejected", "commands_rejected",
              "commands_failed", "software_faults")


def _toml(value: str) -> str:
    import json

    return json.dumps(value)  # a JSON string is a TOML basic string


def _percentile(values: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(values, q)), 1) if values else None


class Launch:
    """The processes of one constellation run and what the summary needs of them."""

    def __init__(self, scenario, scenario_path: str, run_dir: Path, overrides: list[str], as_json: bool):
        import time

        from flight.security import generate_curve_keys, write_mission_key

        self.sc, self.path, self.run_dir, self.as_json = scenario, scenario_path, run_dir, as_json
        self.sats = scenario.constellation.satellites
        self.stations = [s.name for s in ground_stations(scenario)]
        self.pg: PgCluster | None = None
        self.archive = self._archive()
        common = list(overrides)
        if scenario.security.curve and not scenario.security.curve_dir:
            common.append(f"security.curve_dir={_toml(str(generate_curve_keys(run_dir / 'curve').resolve()))}")
        self.clock_start = time.time() + 3.0
        self.argv: dict[str, list[str]] = {}  # process name -> command line
        self.last_los: dict[int, float | None] = {}  # satellite id -> end of its last pass in the run
        self.plan_windows: dict[int, int] = {}  # satellite id -> windows in its preloaded contact plan
        self.procs: dict = {}
        base = [scenario_path, "--clock-start", repr(self.clock_start)]
        links: dict[str, list[str]] = {name: [] for name in self.stations}
        from payload_sim.camera import CALIBRATION_VERSION, make_sensor

        calibration = run_dir / f"calibration-{CALIBRATION_VERSION}.npz"
        make_sensor(scenario).calibration_products(CALIBRATION_VERSION).save(calibration)
        orbit = scenario.extra.get("orbit", {})
        for sat in self.sats:
            d = (run_dir / f"sat{sat.id}").resolve()
            d.mkdir(parents=True, exist_ok=True)
            key = Path(sat.command_key_file).resolve() if sat.command_key_file else write_mission_key(d / "mission.key").resolve()
            so = [*common, f"network.frames=\"tcp://127.0.0.1:{free_port()}\"",
                  f"network.space_in=\"tcp://127.0.0.1:{free_port()}\"",
                  f"network.space_out=\"tcp://127.0.0.1:{free_port()}\"",
                  f"security.command_key_file={_toml(str(key))}", f"ops.state_dir={_toml(str(d))}",
                  f"scenario.seed={sat.seed if sat.seed is not None else (scenario.scenario.seed + sat.id) % 2**31}"]
            tle1, tle2 = sat.tle1 or orbit.get("tle1", ""), sat.tle2 or orbit.get("tle2", "")
            if tle1 and tle2:
                so += [f"orbit.tle1={_toml(tle1)}", f"orbit.tle2={_toml(tle2)}"]
            # the same passes as this satellite's radio computes (pair_contacts, same horizon)
            plans = pair_contacts(scenario, self.stations, (tle1, tle2) if tle1 and tle2 else None)
            self.last_los[sat.id] = last_los_s(plans)
            self.plan_windows[sat.id] = preload_sat_plan(scenario, d, plans)
            pairs = []
            for name in self.stations:
                pair = {"station": name, "ground_out": f"tcp://127.0.0.1:{free_port()}",
                        "ground_in": f"tcp://127.0.0.1:{free_port()}"}
                pairs.append(pair)
                links[name].append(f"{{satellite_id={sat.id}, ground_out=\"{pair['ground_out']}\", "
                                   f"ground_in=\"{pair['ground_in']}\", command_key_file={_toml(str(key))}}}")
            sets = [x for o in so for x in ("--set", o)]
            from payload_sim.ops_support import write_launch_record

            # ground_link.commander --run-dir RUN/satN: commands go up through a station in view
            route = {"satellite_id": sat.id, "uplinks": {p["station"]: p["ground_in"] for p in pairs},
                     "archive": str(self.archive)}
            write_launch_record(d, scenario_path, so, self.clock_start, route)
            self.argv[f"radio{sat.id}"] = [sys.executable, "-m", "payload_sim.constellation", "radio", *base, "--run-dir",
                                           str(d), *sets, "--satellite", str(sat.id), "--pairs", json.dumps(pairs)]
            # each flight its own calibration products file (a hard link): flight.calibrate makes,
            # remakes and cleans its table file beside it, so each flight's stays its own (a cleanup
            # that once took another flight's table mid-write killed that flight at start; the
            # writers now lock their temporary files, and this keeps the satellites apart anyway)
            own = d / calibration.name
            own.unlink(missing_ok=True)
            try:
                os.link(calibration, own)
            except OSError:  # no hard links there: a copy
                shutil.copyfile(calibration, own)
            self.argv[f"flight{sat.id}"] = [sys.executable, "-m", "flight", *base, "--run-dir", str(d), *sets,
                                            "--calibration", str(own)]
            self.argv[f"camera{sat.id}"] = [sys.executable, "-m", "payload_sim.camera", *base, "--run-dir", str(d), *sets]
        # an alert feed (network.feed) per station: one address cannot be bound twice; each alert is
        # published by the one station that raised it, so a subscriber to every feed gets it once
        self.feeds = {name: f"tcp://127.0.0.1:{free_port()}" for name in self.stations} if scenario.network.feed else {}
        for k, name in enumerate(self.stations):
            d = (run_dir / name).resolve()
            d.mkdir(parents=True, exist_ok=True)
            so = [*common, f"station.name={_toml(name)}", f"station.archive={_toml(str(self.archive))}",
                  f"station.links=[{', '.join(links[name])}]", f"security.ack_source_id={k + 1}"]
            if name in self.feeds:
                so.append(f"network.feed={_toml(self.feeds[name])}")
            self.argv[f"station-{name}"] = [sys.executable, "-m", "ground_link.station", *base, "--run-dir", str(d),
                                            *[x for o in so for x in ("--set", o)], *(["--json"] if as_json else [])]

    def _archive(self) -> str:
        choice = self.sc.constellation.archive
        if choice.startswith(("postgresql://", "postgres://")):
            return choice
        if choice == "postgresql":
            reason = pg_missing_reason()
            if reason is None:
                self.pg = PgCluster()
                dsn = self.pg.start()
                print(f"constellation: archive: PostgreSQL {dsn} (a throwaway cluster, log {self.pg.log_file})",
                      file=sys.stderr)
                return dsn
            print(f"constellation: PostgreSQL unavailable ({reason}): the stations share one SQLite file instead",
                  file=sys.stderr)
        return str((self.run_dir / "archive.sqlite").resolve())

    def start(self, name: str, log_mode: str = "w"):
        import subprocess

        log = open(self.run_dir / f"{name}.log", log_mode)
        out = None if name.startswith("station-") else log
        self.procs[name] = subprocess.Popen(self.argv[name], stdout=out, stderr=log,
                                            env={**os.environ, "ONBOARD_STOP_WITH_PARENT": "1"})
        return self.procs[name]

    def sat_dir(self, sat_id: int) -> Path:
        return self.run_dir / f"sat{sat_id}"

    def close(self) -> None:
        if self.pg is not None:
            self.pg.stop()


def _read_archive(target: str) -> dict:
    """What the summary needs of the shared archive (PostgreSQL or SQLite), with the same queries."""
    from ground_link.archive import Db

    db = Db(target, read_only=True)
    try:
        rows = db.execute("SELECT satellite_id, product_id, station, kind, time_s, received_wall FROM products").fetchall()
        alerts = db.execute("SELECT satellite_id, product_id, station FROM alerts WHERE throttled = 0").fetchall()
        distinct = db.execute("SELECT count(*) FROM (SELECT DISTINCT satellite_id, product_id FROM products) AS d").fetchone()[0]
        alert_dups = db.execute("SELECT count(*) FROM (SELECT satellite_id, product_id FROM alerts GROUP BY satellite_id, "
                                "product_id HAVING count(*) > 1) AS d").fetchone()[0]
        packets = db.execute("SELECT station, count(*) FROM packets GROUP BY station").fetchall()
        # what the detections are scored on (payload_sim.hil.detection_scores), per satellite
        science = db.execute("SELECT satellite_id, kind, fields FROM products "
                             "WHERE kind IN ('FrameSummary', 'Detection')").fetchall()
    finally:
        db.close()
    return {"products": rows, "alerts": alerts, "distinct": distinct, "alert_dups": alert_dups,
            "packets": dict(packets), "dialect": db.dialect, "science": science}


def _detection_scores(launch: Launch, science: list) -> tuple[dict, dict[int, dict]]:
    """The alerts against each satellite's scene truth (its camera's truth.jsonl), as the
    single-satellite launcher scores them (payload_sim.hil.detection_scores): for the whole
    constellation, and per satellite. Frames are keyed (satellite, frame id): each satellite counts
    its frames from 0. Before, the summary had no detection_recall at all, so the launcher's
    `detection_recall >= 0.6` check passed as "not measured" and a constellation whose detectors
    were off (every product delivered, no ship or fire reported) said ok."""
    from payload_sim.hil import detection_scores

    truth: dict = {}
    summaries: list[dict] = []
    detections: list[dict] = []
    per_sat: dict[int, dict] = {}
    for sat in launch.sats:
        t: dict = {}
        path = launch.sat_dir(sat.id) / "truth.jsonl"
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    t[(sat.id, rec["frame_id"])] = rec
                except (ValueError, KeyError, TypeError):  # a line being written when the camera was stopped
                    continue
        s = [dict(f, frame_id=(sat.id, f["frame_id"])) for sid, kind, f in science
             if sid == sat.id and kind == "FrameSummary"]
        d = [dict(f, frame_id=(sat.id, f["frame_id"])) for sid, kind, f in science if sid == sat.id and kind == "Detection"]
        per_sat[sat.id] = detection_scores(t, s, d)
        truth |= t
        summaries += s
        detections += d
    return detection_scores(truth, summaries, detections), per_sat


def summarize(launch: Launch, wall_s: float, station_before: dict[str, dict], sat_done: dict[int, float]) -> dict:
    from flight.service import read_status

    sc = launch.sc
    rate, t0 = sc.scenario.clock_rate, launch.clock_start
    try:
        arch = _read_archive(launch.archive)
    except Exception as exc:  # noqa: BLE001 (an unreadable archive still gives a summary, and fails it)
        print(f"constellation: archive unreadable: {exc}", file=sys.stderr)
        arch = {"products": [], "alerts": [], "distinct": 0, "alert_dups": 0, "packets": {}, "dialect": None,
                "science": [], "unreadable": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
    science = []
    for sid, kind, fields in arch["science"]:
        try:
            f = json.loads(fields)
        except (TypeError, ValueError):  # counted as not delivered: its frame is not scored
            continue
        if isinstance(f, dict) and "frame_id" in f:
            science.append((sid, kind, f))
    scores, sat_scores = _detection_scores(launch, science)
    per_sat: dict[str, dict] = {}
    totals = dict.fromkeys(SAT_COUNTS, 0)
    pending_total = 0
    for sat in launch.sats:
        d = launch.sat_dir(sat.id)
        cam, fl, radio = read_status(d, "camera"), read_status(d, "flight"), read_status(d, "channel")
        mine = [r for r in arch["products"] if r[0] == sat.id]
        created, pending = fl.get("products_created", 0), fl.get("store_products") or 0
        row = {k: fl.get(k, 0) for k in SAT_COUNTS} | {"frames_captured": cam.get("frames_captured", 0)}
        row |= {"products_delivered": len(mine), "products_pending": pending,
                "products_lost": max(0, created - len(mine) - pending) + fl.get("products_lost", 0),
                "by_station": {n: sum(1 for r in mine if r[2] == n) for n in launch.stations},
                "downlinked_bytes": radio.get("down_bytes_out", 0),
                "retransmit_fraction": round(fl.get("packets_retransmitted", 0) / max(fl.get("packets_sent", 0), 1), 4),
                "done_at_s": sat_done.get(sat.id),
                **{k: sat_scores[sat.id][k] for k in ("objects_true", "objects_found", "detection_recall", "false_alarms")}}
        per_sat[str(sat.id)] = row
        for k in SAT_COUNTS:
            totals[k] += row[k]
        totals["products_lost"] += row["products_lost"] - fl.get("products_lost", 0)
        pending_total += pending
    per_station: dict[str, dict] = {}
    for name in launch.stations:
        st = read_status(launch.run_dir / name, "station")
        before = station_before.get(name, {})
        mine = [r for r in arch["products"] if r[2] == name]
        lat = [(r[5] - t0) * rate - r[4] for r in mine if r[4] is not None and r[5] is not None]
        per_station[name] = {
            "products_archived": len(mine),
            "by_satellite": {str(s.id): sum(1 for r in mine if r[0] == s.id) for s in launch.sats},
            "duplicates": st.get("duplicates", 0) + before.get("duplicates", 0),
            "packets_received": st.get("packets_received", 0) + before.get("packets_received", 0),
            "packets_bad": st.get("packets_bad", 0) + before.get("packets_bad", 0),
            "acks_sent": st.get("acks_sent", 0) + before.get("acks_sent", 0),
            "acks_shared": st.get("acks_shared", 0) + before.get("acks_shared", 0),
            "alerts": sum(1 for a in arch["alerts"] if a[2] == name),
            # capture (scenario s) to archived at this station (its received_wall on the scenario clock)
            "latency_s_p50": _percentile(lat, 50), "latency_s_p99": _percentile(lat, 99), "latency_s_max": _percentile(lat, 100),
            "restarted": bool(before),
        }
    delivered = len(arch["products"])
    return {
        "satellites": len(launch.sats), "stations": len(launch.stations), "archive": arch["dialect"],
        "frames_captured": totals["frames_captured"], "frames_processed": totals["frames_processed"],
        "frames_rejected": totals["frames_rejected"], "products_created": totals["products_created"],
        "products_delivered": delivered, "products_pending": pending_total, "products_lost": totals["products_lost"],
        # why the shared archive could not be read (None: it was): the run then fails saying so, not
        # only through the products it seems to have lost
        "archive_unreadable": arch.get("unreadable"),
        "products_distinct": arch["distinct"], "exactly_once": arch["distinct"] == delivered and arch["alert_dups"] == 0,
        "alerts": len(arch["alerts"]), "alerts_repeated": arch["alert_dups"],
        **scores,
        "duplicates_at_ground": sum(s["duplicates"] for s in per_station.values()),
        "acks_shared": sum(s["acks_shared"] for s in per_station.values()),
        "packets_sent": totals["packets_sent"], "packets_retransmitted": totals["packets_retransmitted"],
        "retransmit_fraction": round(totals["packets_retransmitted"] / max(totals["packets_sent"], 1), 4),
        "acks_rejected": totals["acks_rejected"],
        "commands_refused": totals["commands_rejected"] + totals["commands_failed"],
        "software_faults": totals["software_faults"],
        "per_satellite": per_sat, "per_station": per_station,
        "wall_s": round(wall_s, 1), "run_dir": str(launch.run_dir),
    }


LOS_GRACE_WALL_S = 3.0  # after a satellite's last LOS: its last acks and status files catch up


def _sat_finished(d: Path) -> tuple[bool, str]:
    from flight.service import read_status

    cam, fl = read_status(d, "camera"), read_status(d, "flight")
    captured = cam.get("frames_captured", 0)
    done_flight = fl.get("frames_processed", 0) + fl.get("frames_rejected", 0)
    ok = bool(cam.get("done")) and fl.get("eos", False) and done_flight >= captured and fl.get("store_products") == 0
    return ok, f"{captured}/{fl.get('frames_processed', 0)}/{fl.get('store_products', '-')}"


def keep_archive(launch: Launch, info: dict) -> str | None:
    """A throwaway PostgreSQL archive is deleted with its server at the end of the run: copy it
    into RUN_DIR/archive.sqlite first (same schema), and point constellation.json at the copy, so
    ground_link.query and ground_link.watch still read the run. The path, or None (not copied)."""
    from ground_link.archive import copy_archive

    if launch.pg is None:
        return None
    dest = launch.run_dir / "archive.sqlite"
    try:
        n = copy_archive(launch.archive, dest)
    except Exception as exc:  # noqa: BLE001 (the run's result stands; only the copy for the tools is missing)
        print(f"constellation: the archive could not be copied to {dest}: {exc}", file=sys.stderr)
        return None
    info |= {"archive": str(dest.resolve()), "dialect": "sqlite", "archive_during_run": launch.archive}
    (launch.run_dir / "constellation.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"constellation: archive copied to {dest} ({n} products): the throwaway PostgreSQL server is deleted",
          file=sys.stderr)
    return str(dest)


def run(args, scenario, expect: dict) -> int:
    """Run a constellation scenario (payload_sim.hil dispatches here); args as hil's."""
    import signal
    import time

    from flight.service import read_status
    from payload_sim.hil import Stop, _raise_stop, died, stop_all, wait_ready, write_summary

    run_dir = args.run_dir or Path("runs") / f"{scenario.scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    faults = scenario.extra.get("faults", {}) or {}
    kill_name, kill_at = faults.get("kill_station"), faults.get("kill_station_at_s")
    restart_at = faults.get("restart_station_at_s")
    try:
        launch = Launch(scenario, args.scenario, run_dir, args.overrides, args.json)
    except (ValueError, RuntimeError) as exc:
        print(f"constellation: {exc}", file=sys.stderr)
        return 2
    if kill_name is not None and kill_name not in launch.stations:
        print(f"constellation: faults.kill_station = {kill_name!r} is not one of {launch.stations}", file=sys.stderr)
        launch.close()
        return 2
    info = {  # for ground_link.watch, ground_link.query and the operator
        "archive": launch.archive, "dialect": "postgresql" if launch.archive.startswith("postgres") else "sqlite",
        "satellites": [s.id for s in launch.sats], "stations": launch.stations, "clock_start": launch.clock_start,
        "clock_rate": scenario.scenario.clock_rate, "epoch": scenario.scenario.epoch,
        "scenario": str(Path(args.scenario).resolve()), "feeds": launch.feeds,
        "overrides": list(args.overrides)}  # the console loads the same scenario (sensor, passes, partners)
    (run_dir / "constellation.json").write_text(json.dumps(info, indent=1) + "\n")
    # the operator console (--console, ground.console_port): one more process, on this run folder, so
    # on the shared archive constellation.json names (issue #18, docs/console.md); as in hil.py it
    # is optional (its death never fails the run), stops with the run or, with --console-stay,
    # serves the archive's copy afterwards until Ctrl-C
    from ground_link.console.launch import ConsoleProcess

    console = ConsoleProcess.start(scenario, run_dir, enabled=args.console or args.console_stay)
    print(f"constellation: scenario {scenario.scenario.name}: {len(launch.sats)} satellites x {len(launch.stations)} "
          f"stations ({', '.join(launch.stations)}), {scenario.scenario.frames} frames each, run folder {run_dir}",
          file=sys.stderr)
    if launch.feeds:
        print("constellation: alert feeds (topic alert; subscribe to all): "
              + ", ".join(f"{n} {u}" for n, u in launch.feeds.items()), file=sys.stderr)
    if any(launch.plan_windows.values()):
        print("constellation: contact plans preloaded into the flights' state folders (flight.use_contact_plan): "
              + ", ".join(f"sat{i} {n} windows" for i, n in launch.plan_windows.items()), file=sys.stderr)
    old = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.monotonic()
    code, failure = 0, None
    station_before: dict[str, dict] = {}
    sat_done: dict[int, float] = {}
    killed = restarted = False
    try:
        for sat in launch.sats:
            launch.start(f"radio{sat.id}")
        for name in launch.stations:
            launch.start(f"station-{name}")
        wait_ready(launch.procs, run_dir, ())  # nothing: status files live in subfolders
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
                (launch.run_dir / n / "station.status.json").exists() for n in launch.stations) :
            if any(p.poll() is not None for p in launch.procs.values()):
                break
            time.sleep(0.05)
        for sat in launch.sats:
            launch.start(f"flight{sat.id}")
        for sat in launch.sats:
            launch.start(f"camera{sat.id}")
        last_progress = 0.0
        while True:
            time.sleep(0.2)
            t_s = (time.time() - launch.clock_start) * scenario.scenario.clock_rate
            if kill_name and kill_at is not None and not killed and t_s >= kill_at:
                p = launch.procs.pop(f"station-{kill_name}")
                p.kill()
                p.wait()
                station_before[kill_name] = read_status(run_dir / kill_name, "station")
                killed = True
                print(f"constellation: fault: station {kill_name} SIGKILLed at t={t_s:.1f} s", file=sys.stderr, flush=True)
            if killed and restart_at is not None and not restarted and t_s >= restart_at:
                launch.start(f"station-{kill_name}", "a")
                restarted = True
                print(f"constellation: fault: station {kill_name} restarted at t={t_s:.1f} s", file=sys.stderr, flush=True)
            dead = [(n, p.returncode) for n, p in launch.procs.items() if p.poll() is not None]
            if dead:
                failure = died(run_dir, *dead[0])
                code = 1
                break
            progress = []
            for sat in launch.sats:
                ok, text = _sat_finished(launch.sat_dir(sat.id))
                if ok and sat.id not in sat_done:
                    sat_done[sat.id] = round(t_s, 1)
                progress.append(f"sat{sat.id} {text}{' done' if sat.id in sat_done else ''}")
            archived = sum(read_status(run_dir / n, "station").get("products_archived", 0) for n in launch.stations)
            if len(sat_done) == len(launch.sats):
                break
            # a satellite past its last pass in the run with products still on board can never
            # finish: fail now, saying why, instead of waiting for max_wall_s
            late = [f"sat{sat.id} (LOS {los:.0f} s): {text}" for sat, text in zip(launch.sats, progress, strict=True)
                    if sat.id not in sat_done and (los := launch.last_los.get(sat.id)) is not None
                    and t_s > los + LOS_GRACE_WALL_S * scenario.scenario.clock_rate]
            if late:
                failure, code = (f"past the last pass in the run with products still on board (nothing can bring "
                                 f"them down): {'; '.join(late)} (captured/processed/in store)"), 1
                break
            if time.monotonic() - t0 > scenario.scenario.max_wall_s:
                failure, code = (f"scenario did not finish within {scenario.scenario.max_wall_s:.0f} s: "
                                 f"{'  '.join(progress)} (captured/processed/in store)"), 1
                break
            if not args.quiet and time.monotonic() - last_progress > 2.0:
                print(f"constellation: {time.monotonic() - t0:5.1f}s t={t_s:7.0f}s  {'  '.join(progress)}  "
                      f"archived {archived} (since restarts)", file=sys.stderr, flush=True)
                last_progress = time.monotonic()
    except Stop as exc:
        failure, code = f"stopped by {exc}", 130
    finally:
        stop_all(launch.procs)
        for s, h in old.items():
            signal.signal(s, h)
    if failure:
        print(f"constellation: FAILED: {failure}", file=sys.stderr, flush=True)
    try:
        summary = summarize(launch, time.monotonic() - t0, station_before, sat_done)
        summary["archive_copy"] = keep_archive(launch, info)
    finally:
        launch.close()
    summary["station_killed"] = kill_name if killed else None
    if summary["archive_unreadable"] and code == 0:  # nothing in it can be counted or scored: not ok
        code, failure = 1, f"the shared archive could not be read: {summary['archive_unreadable']}"
        print(f"constellation: FAILED: {failure}", file=sys.stderr, flush=True)
    code = write_summary(summary, expect, code, failure, run_dir, "constellation")
    if console is not None:  # after keep_archive: constellation.json names the copy the console now reads
        console.finish(stay=args.console_stay and code != 130)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "radio":
        return radio_main(argv[1:])
    from payload_sim import hil

    return hil.main(argv)


if __name__ == "__main__":
    sys.exit(main())
