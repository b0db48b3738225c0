"""A short flight run that can be repeated on another CPU architecture and compared byte for byte
(issue #15, `make verify-aarch64`, scripts/verify_aarch64.sh).

    python -m payload_sim.verify_aarch64 prepare DIR          # x86: render frames, calibration, key
    python -m payload_sim.verify_aarch64 run DIR --out X.json # any arch: flight only, in-process
        [--native auto|required|off]                          # flight.native_kernels (default auto)
    python -m payload_sim.verify_aarch64 compare A.json B.json

``prepare`` needs the simulator (payload_sim, sgp4). ``run`` imports only the flight software
(flight.*, numpy, onnxruntime, cv2, zmq, spacepackets): it is what runs under qemu-aarch64. It
feeds the prepared frames (strips, as the camera sends them) to ``flight.app.FlightApp`` without
sockets, on a frozen scenario clock, and writes every science packet it stored (frame summaries,
detections, image chips) as hex with its SHA-256. ``compare`` exits 1 unless both runs produced
the same packets. Timings under emulation mean nothing: nothing here measures time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

# a small scene of the demo scenario: the three models run (clouds, land with fires, sea with ships)
SCENARIO = "payload_sim/scenarios/demo.toml"
OVERRIDES = ["sensor.height=512", "sensor.width=512", "sensor.strip_rows=64", "obc.cores=[0]", "obc.threads=1"]
FRAMES = 6
SCIENCE_APIDS = (0x101, 0x102, 0x103)  # FRAME_SUMMARY, DETECTION, IMAGE_CHIP (flight.dictionary.Apid)


def _comparable(apid: int, packet: bytes) -> bytes:
    """The packet with what legitimately differs between runs zeroed: a frame summary's
    processing_ms (a measured time) and, with it, the packet's CRC."""
    if apid != 0x101:
        return packet
    import dataclasses

    from flight.products import decode_tm

    tm, product = decode_tm(packet)
    src = bytes(tm.source_data)
    at = packet.rindex(src)
    return packet[:at] + dataclasses.replace(product, processing_ms=0.0).pack() + packet[at + len(src) : -2] + bytes(2)


def prepare(out: Path, frames: int = FRAMES) -> None:
    import numpy as np

    from flight.clock import ScenarioClock, parse_epoch
    from flight.config import load_scenario
    from flight.security import write_mission_key
    from payload_sim.camera import CALIBRATION_VERSION, frame_meta, make_orbit, make_sensor, render

    out.mkdir(parents=True, exist_ok=True)
    key = write_mission_key(out / "mission.key")
    overrides = OVERRIDES + [f"security.command_key_file={json.dumps(str(key.resolve()))}"]
    sc = load_scenario(SCENARIO, overrides)
    sensor = make_sensor(sc)
    sensor.calibration_products(CALIBRATION_VERSION).save(out / "calibration.npz")
    clock = ScenarioClock(parse_epoch(sc.scenario.epoch), sc.scenario.clock_rate, 0.0)
    orbit = make_orbit(sc, clock)
    headers, raws = [], {}
    for fid in range(frames):
        _, raw = render(sc, sensor, fid)
        headers.append(frame_meta(sc, orbit, fid).to_json().decode())
        raws[f"f{fid}"] = raw
    np.savez(out / "frames.npz", **raws)
    (out / "plan.json").write_text(json.dumps({"scenario": SCENARIO, "overrides": overrides, "headers": headers,
                                               "capture_interval_s": sc.scenario.capture_interval_s}))
    print(f"verify: prepared {frames} frames of {sc.sensor.height}x{sc.sensor.width}x6 in {out}", file=sys.stderr)


def run(prepared: Path, out: Path, native: str = "auto") -> dict:
    import platform

    import numpy as np
    import onnxruntime

    from flight.app import FlightApp
    from flight.clock import ScenarioClock, parse_epoch
    from flight.config import load_scenario

    plan = json.loads((prepared / "plan.json").read_text())
    sc = load_scenario(plan["scenario"], plan["overrides"] + [f"flight.native_kernels={json.dumps(native)}"])

    class FrozenClock(ScenarioClock):  # scenario time moves only when told: packets are reproducible
        t = 0.0

        def now_s(self) -> float:
            return self.t

    clock = FrozenClock(parse_epoch(sc.scenario.epoch), sc.scenario.clock_rate, 0.0)
    raws = np.load(prepared / "frames.npz")
    rows = sc.sensor.strip_rows
    with tempfile.TemporaryDirectory(prefix="verify-flight-") as tmp:
        root = Path(tmp)
        (root / "store_epoch").write_text("1\n")  # the same store epoch (product ids) on every run
        app = FlightApp(sc, clock, prepared / "calibration.npz", root)
        try:
            for fid, header in enumerate(plan["headers"]):
                clock.t = fid * plan["capture_interval_s"]
                raw = raws[f"f{fid}"]
                app.on_frame_message([b"frame", header.encode()])
                for r in range(0, raw.shape[1], rows):
                    strip = np.ascontiguousarray(raw[:, r : r + rows])
                    app.on_frame_message([b"strip", json.dumps({"frame_id": fid, "row0": r, "rows": strip.shape[1]}).encode(),
                                          strip.tobytes()])
            packets = [(int(a), bytes(p)) for a, p in app.store.db.execute(
                f"SELECT apid, packet FROM products WHERE apid IN ({','.join(map(str, SCIENCE_APIDS))}) ORDER BY id")]
            counts = dict(app.counts)
            kernel = app.native_summary()
        finally:
            app.watchdog.close()
            app.store.close()
    result = {
        "machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__, "frames": len(plan["headers"]), "native_kernels": kernel,
        "frames_processed": counts["frames_processed"], "errors": counts["errors"],
        "packets": [{"apid": a, "sha256": hashlib.sha256(_comparable(a, p)).hexdigest(), "hex": p.hex()} for a, p in packets],
    }
    out.write_text(json.dumps(result, indent=1))
    by_apid = {a: sum(1 for x, _ in packets if x == a) for a in SCIENCE_APIDS}
    print(f"verify: {result['machine']} onnxruntime {result['onnxruntime']}, native kernels: {kernel}: "
          f"{result['frames_processed']}/{result['frames']} "
          f"frames processed, errors {result['errors']}, science packets {len(packets)} "
          f"(summaries {by_apid[0x101]}, detections {by_apid[0x102]}, chips {by_apid[0x103]})", file=sys.stderr)
    return result


def compare(a_path: Path, b_path: Path) -> bool:
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    ok = True
    for key in ("frames", "frames_processed", "errors"):
        if a[key] != b[key]:
            print(f"verify: DIFFERENT {key}: {a['machine']} {a[key]} vs {b['machine']} {b[key]}", file=sys.stderr)
            ok = False
    if a["frames_processed"] != a["frames"] or a["errors"]:
        print(f"verify: reference run incomplete: {a['frames_processed']}/{a['frames']} frames, {a['errors']} errors",
              file=sys.stderr)
        ok = False
    ha, hb = [p["sha256"] for p in a["packets"]], [p["sha256"] for p in b["packets"]]
    if a["frames"] < 1 or not ha:  # two empty runs are "the same" and verified nothing
        print(f"verify: nothing to compare: {a['frames']} frames, {len(ha)} science packets", file=sys.stderr)
        ok = False
    if ha != hb:
        ok = False
        diff = [i for i, (x, y) in enumerate(zip(ha, hb, strict=False)) if x != y]
        print(f"verify: DIFFERENT science packets: {len(ha)} vs {len(hb)}; first differing index "
              f"{diff[:5]} apids {[a['packets'][i]['apid'] for i in diff[:5]]}", file=sys.stderr)
    if ok:
        print(f"verify: SAME {len(ha)} science packets byte for byte (frame summaries: all but processing_ms and CRC): "
              f"{a['machine']} (onnxruntime {a['onnxruntime']}, native kernels: {a.get('native_kernels', '?')}) "
              f"and {b['machine']} (onnxruntime {b['onnxruntime']}, native kernels: {b.get('native_kernels', '?')})",
              file=sys.stderr)
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prepare")
    s.add_argument("dir", type=Path)
    s.add_argument("--frames", type=_frames, default=FRAMES, help=f"1..{MAX_FRAMES} (default {FRAMES})")
    s = sub.add_parser("run")
    s.add_argument("dir", type=Path)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--native", choices=("auto", "required", "off"), default="auto",
                   help="flight.native_kernels for this run (default auto)")
    s = sub.add_parser("compare")
    s.add_argument("a", type=Path)
    s.add_argument("b", type=Path)
    args = p.parse_args(argv)
    try:  # a missing or malformed prepared folder or result file: one line and exit 2, not a traceback
        if args.cmd == "prepare":
            prepare(args.dir, args.frames)
            return 0
        if args.cmd == "run":
            r = run(args.dir, args.out, args.native)
            return 0 if r["frames_processed"] == r["frames"] and r["frames"] > 0 and not r["errors"] else 1
        return 0 if compare(args.a, args.b) else 1
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        print(f"verify: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


MAX_FRAMES = 1000


def _frames(text: str) -> int:
    """--frames: at least one (0 or a negative count prepared nothing and then verified nothing)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= n <= MAX_FRAMES:
        raise argparse.ArgumentTypeError(f"{n} is out of range 1..{MAX_FRAMES}")
    return n


if __name__ == "__main__":
    sys.exit(main())
