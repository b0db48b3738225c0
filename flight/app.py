"""The flight process: frames in from the camera, products out to the radio, acks in from the ground.

    python -m flight SCENARIO.toml --calibration CAL.npz --run-dir DIR

It pins itself to the onboard-computer profile's cores, loads the models named by the cascade
(each checked against its card's sha256), then loops: frame strips through the pipeline, products
into the persistent store, due packets out within the downlink window, acknowledgements in.
Bad frames and bad uplink packets are counted and reported as events; the loop goes on.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import psutil
import zmq

from flight.calibrate import CalibrationProducts, Calibrator
from flight.clock import ScenarioClock
from flight.config import Scenario
from flight.dictionary import APID_PRIORITY, EVENTS, TELEMETRY_BY_NAME, Apid
from flight.inference import ModelError, TileModel, model_path
from flight.ingest import FrameRejected
from flight.pipeline import FramePipeline, FrameResult
from flight.products import (
    Detection,
    Event,
    FrameSummary,
    ImageChip,
    PacketError,
    decode_ack,
    encode_tm,
    housekeeping,
)
from flight.service import Service, common_args, setup
from flight.store import ProductStore, StoreFull


def apply_obc_profile(scenario: Scenario, log) -> list[int]:
    """Pin to the profile's cores (those this machine has) as an embedded board would be."""
    available = sorted(os.sched_getaffinity(0))
    cores = [c for c in scenario.obc.cores if c in available] or available[:1]
    if len(cores) < len(scenario.obc.cores):
        log(f"profile cores {list(scenario.obc.cores)}: only {cores} exist here")
    os.sched_setaffinity(0, cores)
    return cores


def load_models(scenario: Scenario, emit) -> dict[str, TileModel]:
    """Load every enabled cascade model. The cloud screen is required: refusing it stops start-up.
    A refused detector is reported and left out; the rest goes on."""
    models = {}
    for step in scenario.flight.cascade:
        if not step.enabled:
            continue
        try:
            m = TileModel(model_path(step.model), intra_op_threads=scenario.obc.threads,
                          batch_size=scenario.flight.batch_tiles)
        except (ModelError, OSError) as exc:
            emit("MODEL_REFUSED", model=step.model, reason=str(exc))
            if step.model == "cloud_screen":
                raise
            continue
        models[step.model] = m
        emit("MODEL_LOADED", model=step.model, version=m.card.version, sha8=m.card.sha256[:8])
    return models


class FlightApp:
    def __init__(self, scenario: Scenario, clock: ScenarioClock, calibration: Path, run_dir: Path):
        self.sc, self.clock, self.run_dir = scenario, clock, run_dir
        self.svc = Service("flight", run_dir)
        self.counts = dict(frames_captured=0, frames_processed=0, frames_rejected=0, packets_sent=0,
                           packets_retransmitted=0, products_acked=0, errors=0, uplink_rejected=0,
                           products_evicted=0, products_refused=0)
        self.store = ProductStore(run_dir / "flight_store.sqlite", scenario.flight.store_max_bytes)
        self.cores = apply_obc_profile(scenario, self.svc.log)
        self.emit("STARTED", profile=scenario.obc.profile)
        products = CalibrationProducts.load(calibration)
        self.pipeline = FramePipeline(scenario.flight, Calibrator(products), load_models(scenario, self.emit))
        self.proc = psutil.Process()
        self.proc.cpu_percent()
        self.last_latency_ms = 0.0
        self.eos = False
        self.next_hk_s = clock.now_s()

    # -- products ----------------------------------------------------------------------------------

    def _store(self, apid: Apid, time_s: float, make) -> None:
        """Store one product; `make(product_id)` builds it. Evictions become events."""
        def build(pid: int, seq: int) -> bytes:
            return encode_tm(make(pid), seq, self.clock.epoch, time_s)
        try:
            _, evicted = self.store.put(APID_PRIORITY[apid], apid, time_s, build)
        except StoreFull as exc:
            self.counts["products_refused"] += 1
            self.svc.log(f"product refused: {exc}")
            return
        for ev in evicted:
            self.counts["products_evicted"] += 1
            self.emit("STORE_EVICTED", product_id=ev.product_id, priority=ev.priority)

    def emit(self, name: str, frame_id: int = -1, **kw) -> None:
        d = EVENTS[name]
        msg = d.fmt.format(frame_id=frame_id, **kw)
        self.svc.log(f"EVENT {d.severity.name} {name}: {msg}")
        t = self.clock.now_s()
        self._store(Apid.EVENT, t, lambda pid: Event(pid, t, d.id, int(d.severity), frame_id, msg[:200]))

    def package(self, r: FrameResult) -> None:
        m = r.meta
        t0 = time.perf_counter()
        center = (float("nan"), float("nan"))
        if m.footprint is not None:
            from flight.geolocate import pixel_to_latlon
            center = pixel_to_latlon(m.footprint, m.height, m.width, m.height / 2, m.width / 2)
        for d in r.detections:
            self._store(Apid.DETECTION, m.capture_time_s, lambda pid, d=d: Detection(
                pid, m.frame_id, m.capture_time_s, d.class_id, round(d.confidence * 255), d.row_px, d.col_px,
                d.lat_deg, d.lon_deg, min(d.area_px, 65535)))
        for c in r.chips:
            self._store(Apid.IMAGE_CHIP, m.capture_time_s, lambda pid, c=c: ImageChip(
                pid, m.frame_id, m.capture_time_s, c.class_id, c.row_px, c.col_px, c.height_px, c.width_px, 3, c.png))
        from flight.dictionary import DetectionClass
        summary = lambda pid: FrameSummary(  # noqa: E731
            pid, m.frame_id, m.capture_time_s, r.tiles, r.cloudy_tiles, r.cloud_fraction, int(r.discarded),
            r.count(DetectionClass.SHIP), r.count(DetectionClass.FIRE), r.processing_ms, center[0], center[1])
        self._store(Apid.FRAME_SUMMARY, m.capture_time_s, summary)
        if r.discarded:
            self.emit("FRAME_DISCARDED_CLOUDY", frame_id=m.frame_id, cloud_pct=100 * r.cloud_fraction,
                      limit_pct=100 * self.sc.flight.cloud_discard_fraction)
        r.stage_ms["package"] += (time.perf_counter() - t0) * 1e3

    # -- inputs --------------------------------------------------------------------------------------

    def on_frame_message(self, parts: list[bytes]) -> None:
        kind = bytes(parts[0])
        p = self.pipeline
        try:
            if kind == b"frame":
                if p.meta is not None:  # the previous frame never finished
                    self.reject(p.meta.frame_id, "next frame began before the last strip")
                self.counts["frames_captured"] += 1
                p.begin(bytes(parts[1]))
            elif kind == b"strip":
                hdr = json.loads(bytes(parts[1]))
                if p.meta is None:
                    return  # strips of a frame already rejected: dropped silently, counted once
                p.strip(int(hdr["frame_id"]), int(hdr["row0"]), int(hdr["rows"]), memoryview(parts[2]))
                if p.ingest.complete:
                    t0 = time.perf_counter()
                    result = p.finish()
                    self.package(result)
                    self.last_latency_ms = result.processing_ms + (time.perf_counter() - t0) * 1e3
                    self.counts["frames_processed"] += 1
            elif kind == b"eos":
                self.eos = True
            else:
                raise FrameRejected(None, f"unknown message kind {kind[:16]!r}")
        except FrameRejected as exc:
            self.reject(exc.frame_id, exc.reason)
        except (ValueError, KeyError, IndexError, json.JSONDecodeError) as exc:
            self.reject(p.meta.frame_id if p.meta else None, f"malformed message: {exc!r}")
        except Exception as exc:  # a stage failed: count it against the error budget, go on
            self.counts["errors"] += 1
            fid = p.meta.frame_id if p.meta else -1
            self.emit("STAGE_ERROR", frame_id=fid, stage="pipeline", reason=repr(exc)[:150])
            self.pipeline.meta = None

    def reject(self, frame_id: int | None, reason: str) -> None:
        self.counts["frames_rejected"] += 1
        self.pipeline.meta = None
        self.pipeline.ingest.meta = None
        self.emit("FRAME_REJECTED", frame_id=frame_id if frame_id is not None else -1, reason=reason[:160])

    def on_uplink(self, packet: bytes) -> None:
        try:
            ids = decode_ack(packet)
        except PacketError as exc:
            self.counts["uplink_rejected"] += 1
            self.emit("BAD_UPLINK_PACKET", reason=str(exc)[:160])
            return
        self.counts["products_acked"] += self.store.ack(ids)

    # -- outputs -------------------------------------------------------------------------------------

    def pump_downlink(self, sock: zmq.Socket) -> None:
        now = time.time()
        sent = []
        for pid, packet, sends in self.store.due(now, self.sc.flight.retransmit_s, self.sc.flight.downlink_window):
            try:
                sock.send(packet, zmq.NOBLOCK)
            except zmq.Again:
                break
            sent.append(pid)
            self.counts["packets_sent"] += 1
            self.counts["packets_retransmitted"] += sends > 0
        if sent:
            self.store.mark_sent(sent, now)

    def housekeeping(self) -> None:
        t = self.clock.now_s()
        if t < self.next_hk_s:
            return
        self.next_hk_s = t + self.sc.flight.housekeeping_period_s
        values = {k: float(v) for k, v in self.counts.items() if k in TELEMETRY_BY_NAME}
        values.update(frame_latency_ms_last=self.last_latency_ms, rss_mib=self.proc.memory_info().rss / 2**20,
                      cpu_percent=self.proc.cpu_percent(), store_products=self.store.pending(),
                      store_bytes=self.store.bytes())
        channels = {TELEMETRY_BY_NAME[k].id: v for k, v in values.items()}
        self._store(Apid.HOUSEKEEPING, t, lambda pid: housekeeping(pid, t, channels))

    def status(self, force: bool = False) -> None:
        self.svc.write_status(dict(self.counts, eos=self.eos, store_products=self.store.pending(),
                                   peak_rss_mib=self.proc.memory_info().rss / 2**20 if force else None,
                                   cores=self.cores, last_latency_ms=self.last_latency_ms), force=force)

    def run(self) -> int:
        net = self.sc.network
        ctx = zmq.Context()
        frames = ctx.socket(zmq.PULL)
        frames.setsockopt(zmq.RCVHWM, 4)
        frames.connect(net.frames)
        down = ctx.socket(zmq.PUSH)
        down.setsockopt(zmq.SNDHWM, 1000)
        down.connect(net.space_in)
        up = ctx.socket(zmq.PULL)
        up.connect(net.space_out)
        poller = zmq.Poller()
        poller.register(frames, zmq.POLLIN)
        poller.register(up, zmq.POLLIN)
        try:
            while self.svc.running:
                events = dict(poller.poll(50))
                if frames in events:
                    self.on_frame_message(frames.recv_multipart(copy=False))
                while up.poll(0):
                    self.on_uplink(up.recv())
                self.pump_downlink(down)
                self.housekeeping()
                self.status()
            self.emit("STOPPING", reason=self.svc.stop_reason)
            self.status(force=True)
        finally:
            for s in (frames, down, up):
                s.close(linger=0)
            ctx.term()
            self.store.close()
        return 0


def main(argv: list[str] | None = None) -> int:
    p = common_args("Onboard payload flight software")
    p.add_argument("--calibration", type=Path, required=True, help="calibration products .npz")
    args = p.parse_args(argv)
    scenario, clock = setup(args)
    run_dir = args.run_dir or Path("runs/flight")
    run_dir.mkdir(parents=True, exist_ok=True)
    app = FlightApp(scenario, clock, args.calibration, run_dir)
    return app.run()


if __name__ == "__main__":
    sys.exit(main())
