"""The camera: synthetic (or real) scenes through the sensor model, read out as strips.

    python -m payload_sim.camera SCENARIO.toml --run-dir DIR

For each capture it waits for the capture time on the scenario clock, renders the scene for
(seed, frame_id), exposes it through the sensor model and sends a header and strips of rows over
ZeroMQ to the flight software. Ground truth (cloud fraction, objects) never goes to the flight: it
is written to DIR/truth.jsonl for the launcher and the tests. A final `eos` message marks the end
of the scenario.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import zmq

from flight.clock import ScenarioClock
from flight.config import Scenario
from flight.frames import FrameMeta
from flight.security import SecureContext
from flight.service import Service, common_args, setup
from payload_sim.hostile import hostile_messages
from payload_sim.orbit import DEFAULT_TLE, Orbit
from payload_sim.scenes import Scene, real_scene, synthetic_scene
from payload_sim.sensor import Sensor, SensorConfig

CALIBRATION_VERSION = "cal-1"


def make_orbit(scenario: Scenario, clock: ScenarioClock) -> Orbit:
    orbit = scenario.extra.get("orbit", {})
    return Orbit(orbit.get("tle1", DEFAULT_TLE[0]), orbit.get("tle2", DEFAULT_TLE[1]), clock.epoch)


def make_sensor(scenario: Scenario) -> Sensor:
    return Sensor(SensorConfig(), scenario.sensor.height, scenario.sensor.width)


def capture_time(scenario: Scenario, frame_id: int) -> float:
    return scenario.scenario.start_s + frame_id * scenario.scenario.capture_interval_s


def render(scenario: Scenario, sensor: Sensor, frame_id: int) -> tuple[Scene, np.ndarray]:
    """Scene and raw frame for one capture, deterministic from (scenario seed, frame id)."""
    s = scenario.sensor
    if s.source == "synthetic":
        scene = synthetic_scene(scenario.scenario.seed, frame_id, s.height, s.width, s.gsd_m, cloud_cover=s.cloud_cover)
    else:
        scene = real_scene(s.source)
        if scene.reflectance.shape[1:] != (s.height, s.width):
            raise ValueError(f"real scene {s.source} is {scene.reflectance.shape[1:]}, sensor is {s.height}x{s.width}")
    rng = np.random.default_rng([scenario.scenario.seed, frame_id, 1])
    return scene, sensor.expose(scene.reflectance, rng)


def frame_meta(scenario: Scenario, orbit: Orbit, frame_id: int) -> FrameMeta:
    s = scenario.sensor
    t = capture_time(scenario, frame_id)
    return FrameMeta(frame_id=frame_id, capture_time_s=t, height=s.height, width=s.width, gsd_m=s.gsd_m,
                     footprint=orbit.footprint(t, s.height, s.width, s.gsd_m), calibration_version=CALIBRATION_VERSION)


def truth_record(scene: Scene, meta: FrameMeta, raw: np.ndarray) -> dict:
    return {"frame_id": meta.frame_id, "capture_time_s": meta.capture_time_s, "raw_bytes": raw.nbytes,
            "cloud_fraction": scene.cloud_fraction, "objects": [asdict(o) for o in scene.objects]}


def corrupt_frame(frame_id: int, header: bytes, strips: list[bytes]) -> tuple[bytes, list[bytes]]:
    """Fault injection: a frame the flight software must reject (the kind cycles with the id)."""
    kind = frame_id % 3
    if kind == 0:  # a value above 12 bits in the last strip
        last = np.frombuffer(strips[-1], dtype="<u2").copy()
        last[len(last) // 2] = 0xFFFF
        strips[-1] = last.tobytes()
    elif kind == 1:  # a truncated strip buffer
        strips[-1] = strips[-1][:-2]
    else:  # contradictory metadata
        meta = json.loads(header)
        meta["bands"] = meta["bands"][:4]
        header = json.dumps(meta).encode()
    return header, strips


def send_parts(sock: zmq.Socket, parts: list, svc: Service) -> bool:
    """Send unless stopping; the flight may be busy, so wait on the socket with a timeout."""
    while svc.running:
        if sock.poll(100, zmq.POLLOUT):
            sock.send_multipart(parts, copy=False)
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    args = common_args("Simulated camera: scenes -> sensor -> raw strips").parse_args(argv)
    scenario, clock = setup(args)
    from payload_sim.hil import check_sim_sections

    try:  # started on its own (not by the launcher, which checks first): [faults], [orbit], a real source
        check_sim_sections(scenario)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_dir = args.run_dir or Path("runs/camera")
    run_dir.mkdir(parents=True, exist_ok=True)
    svc = Service("camera", run_dir)
    sensor, orbit = make_sensor(scenario), make_orbit(scenario, clock)
    ctx = SecureContext(scenario.security, "camera", run_dir)  # CURVE server when security.curve
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 8)
    ctx.serve(sock)
    sock.bind(scenario.network.frames)
    rows = scenario.sensor.strip_rows
    corrupt = set(scenario.extra.get("faults", {}).get("corrupt_frames", []))
    hostile_per_frame = int(scenario.extra.get("faults", {}).get("hostile_messages_per_frame", 0))
    hostile_sent = 0
    sent = raw_bytes = 0
    try:
        with open(run_dir / "truth.jsonl", "w") as truth:
            for fid in range(scenario.scenario.frames):
                if not svc.running:
                    break
                scene, raw = render(scenario, sensor, fid)
                meta = frame_meta(scenario, orbit, fid)
                while svc.running and (delay := clock.wall_time_of(meta.capture_time_s) - time.time()) > 0:
                    time.sleep(min(delay, 0.1))
                header = meta.to_json()
                strips = [np.ascontiguousarray(raw[:, r : r + rows]).tobytes() for r in range(0, meta.height, rows)]
                if fid in corrupt:
                    header, strips = corrupt_frame(fid, header, strips)
                for msg in hostile_messages(scenario.scenario.seed * 100_003 + fid, hostile_per_frame,
                                            json.loads(meta.to_json()), len(strips[0])):
                    if not send_parts(sock, msg or [b""], svc):  # ZeroMQ cannot send a message of no parts
                        break
                    hostile_sent += 1
                if not send_parts(sock, [b"frame", header], svc):
                    break
                for k, data in enumerate(strips):
                    hdr = json.dumps({"frame_id": fid, "row0": k * rows, "rows": rows}).encode()
                    if not send_parts(sock, [b"strip", hdr, data], svc):
                        break
                truth.write(json.dumps(truth_record(scene, meta, raw)) + "\n")
                truth.flush()
                sent += 1
                raw_bytes += raw.nbytes
                svc.write_status({"frames_captured": sent, "raw_bytes": raw_bytes, "hostile_messages": hostile_sent,
                                  "done": False}, force=True)
            if svc.running:
                send_parts(sock, [b"eos", json.dumps({"frames": sent}).encode()], svc)
        svc.write_status({"frames_captured": sent, "raw_bytes": raw_bytes, "hostile_messages": hostile_sent,
                          "done": svc.running}, force=True)
        svc.log(f"{sent} frames sent, {raw_bytes / 2**20:.1f} MiB raw")
        # Stay up until stopped so the launcher reads "done" from a live process and the
        # last strips are not cut off by closing the socket.
        while svc.running:
            time.sleep(0.1)
    finally:
        sock.close(linger=0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
