"""The flight process: frames in from the camera, products out to the radio, commands and acks in.

    python -m flight SCENARIO.toml --calibration CAL.npz --run-dir DIR

It pins itself to the onboard-computer profile's cores, loads the mission key (start-up fails
without one), loads the models of the cascade from its writable model folder (seeded from the
packaged models, each verified by hash and golden vectors), then loops: frame strips through the
pipeline, products into the persistent store, due packets out within the downlink window,
acknowledgements and authenticated telecommands in, housekeeping, memory and model-file checks.
Run time never stops on a bad input or a failed stage: it counts it, reports an event, changes
mode where the fault protection says so (flight.modes) and goes on. docs/operations.md has the
commands, modes and the model upload protocol.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import psutil
import zmq

from flight.acks import AckAuth, AckError
from flight.calibrate import Calibrator
from flight.clock import ScenarioClock
from flight.commands import Command, CommandAuth, CommandError, command_name, parse_command
from flight.config import ConfigError, FlightSection, Scenario
from flight.contacts import (
    ContactPlan,
    ContactPlanError,
    keep_plan_file,
    load_plan_file,
    parse_plan,
)
from flight.dictionary import (
    APID_PRIORITY,
    EVENTS,
    FRAME_ID_MAX,
    LATEST_FRAME,
    PARAMS,
    PARAMS_BY_NAME,
    TELEMETRY_BY_NAME,
    AckFlag,
    Apid,
    Mode,
    Reason,
    ReportKind,
)
from flight.faults import InjectedFaults
from flight.frames import MAX_HEADER_BYTES, parse_json_object
from flight.inference import TileSource
from flight.ingest import FrameRejected
from flight.model_update import ModelStore, ModelUpdateError, Uploads, ranges, version_number
from flight.modes import EventLimiter, ModeManager, StageStuck, StageWatchdog
from flight.native import NativeUnavailable
from flight.native import load as load_native_kernels
from flight.packaging import discard_event_args, frame_products
from flight.pipeline import STAGES, FramePipeline, FrameResult
from flight.products import (
    CommandReport,
    Event,
    ImageChip,
    encode_tm,
    housekeeping,
)
from flight.quicklook import QuicklookRing, RecentFrames, crop, png
from flight.retransmit import LinkTimer
from flight.sdnotify import Notifier
from flight.security import SecureContext, load_mission_key, resolve
from flight.service import Service, common_args, setup
from flight.store import ProductStore, StoreFull

REQUIRED_MODEL = "cloud_screen"
REQUESTED_CHIP_CLASS = 0  # ImageChip.class_id of a chip the ground asked for
QUICKLOOK_CLASS = 255  # ImageChip.class_id of a whole-frame quicklook (height/width: the frame's)
KNOWN_MODELS = ("cloud_screen", "ship_detect", "fire_detect")  # those with telemetry channels


class CommandFailed(Exception):
    """An accepted command could not be executed: the reason goes into the FAILED report."""


def apply_obc_profile(scenario: Scenario, log) -> list[int]:
    """Pin to the profile's cores (those this machine has) as an embedded board would be."""
    available = sorted(os.sched_getaffinity(0))
    cores = [c for c in scenario.obc.cores if c in available] or available[:1]
    if len(cores) < len(scenario.obc.cores):
        log(f"profile cores {list(scenario.obc.cores)}: only {cores} exist here")
    os.sched_setaffinity(0, cores)
    return cores


class OpsState:
    """What the flight must remember across restarts besides products: the last accepted command
    counter (so a replay stays a replay) and what commands changed. One JSON file, replaced
    atomically after fsync."""

    def __init__(self, path: Path):
        self.path = path
        self.prev = path.with_name(path.name + ".prev")  # the copy before the last save
        self.restored: str | None = None  # why the previous copy had to be used
        self._load({})
        if path.exists() or self.prev.exists():  # unreadable both: refuse to start rather than forget the counter
            try:
                self._load(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError, AttributeError, KeyError, ArithmeticError) as exc:
                try:
                    self._load(json.loads(self.prev.read_text()))
                except (OSError, ValueError, TypeError, AttributeError, KeyError, ArithmeticError):
                    raise ValueError(f"{path} and its previous copy unreadable ({exc}): repair it or restore "
                                     "the last counter") from None
                self.restored = f"{exc}"[:100]

    def _load(self, d: dict) -> None:
        """Every field checked against what the flight will do with it: a damaged file (Infinity
        crashed start-up with OverflowError; an unknown parameter crashed it later; a NaN
        housekeeping period made a packet every loop turn; a huge counter refused every command
        for good) is unreadable (ValueError), so the previous copy is used, or start-up refuses."""
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")

        def integer(v, lo: int, hi: int, what: str) -> int:
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"{what} {str(v)[:24]} is not an integer in [{lo}, {hi}]")
            return v

        def number(v, lo: float, hi: float, what: str) -> float:
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:  # NaN fails too
                raise ValueError(f"{what} {str(v)[:24]} is not a number in [{lo}, {hi}]")
            return float(v)

        def mapping(key: str) -> dict:
            v = d.get(key, {})
            if not isinstance(v, dict):
                raise ValueError(f"{key} is not an object")
            return v

        def listing(key: str) -> list:
            v = d.get(key, [])
            if not isinstance(v, list):
                raise ValueError(f"{key} is not a list")
            return v

        u64 = 2**64 - 1
        self.last_counter = integer(d.get("last_counter", 0), 0, u64, "last_counter")
        self.params: dict = {}
        for name, v in mapping("params").items():
            p = PARAMS_BY_NAME.get(name)
            if p is None:
                raise ValueError(f"params: unknown parameter {str(name)[:32]!r}")
            self.params[name] = p.type(number(v, p.lo, p.hi, f"params.{name}"))
        self.disabled: list = listing("disabled")
        if not all(isinstance(m, str) for m in self.disabled):
            raise ValueError("disabled: not a list of model names")
        # detectors switched off by a fault, with their automatic retries (FlightApp.disable_model):
        # {model: {"retries": automatic re-enables used since the last ENABLE_MODEL, "retry_at_s":
        # scenario time of the next one, or null}}. A file without it (an earlier version's) has
        # none: its disabled models stay off until ENABLE_MODEL, as they did; an earlier version
        # ignores it.
        self.model_recovery: dict[str, dict] = {}
        for name, r in mapping("model_recovery").items():
            if not isinstance(r, dict) or set(r) != {"retries", "retry_at_s"}:
                raise ValueError(f"model_recovery.{str(name)[:32]} is not {{retries, retry_at_s}}")
            at = r["retry_at_s"]
            self.model_recovery[name] = {
                "retries": integer(r["retries"], 0, 2**31 - 1, f"model_recovery.{name}.retries"),
                "retry_at_s": None if at is None else number(at, -1e12, 1e12, f"model_recovery.{name}.retry_at_s")}
        self.thresholds: dict = {str(k): number(v, 0.001, 0.999, f"thresholds.{k}") for k, v in mapping("thresholds").items()}
        self.priorities: dict = {}
        for k, v in mapping("priorities").items():
            apid = int(k)  # ValueError for a key that is not a number
            if apid not in APID_PRIORITY:
                raise ValueError(f"priorities: {k} is not a product type")
            self.priorities[apid] = integer(v, 0, 4, f"priorities.{k}")
        self.ack_counters: dict[int, int] = {  # per ack source id
            integer(int(k), 0, 2**16 - 1, "ack source"): integer(v, 0, u64, f"ack_counters.{k}")
            for k, v in mapping("ack_counters").items()}
        # the mode and the error budget's window survive a restart (a reset must not clear SAFE)
        self.mode = Mode(integer(d.get("mode", 0), 0, max(Mode), "mode"))
        self.error_times: list[float] = [number(t, -math.inf, math.inf, "error time") for t in listing("error_times")]
        if not all(math.isfinite(t) for t in self.error_times):
            raise ValueError("error_times: not finite")

    def save(self) -> None:
        """Write, fsync, keep the current file as the previous copy (a hard link: no moment
        without one), then rename the new one into place."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"last_counter": self.last_counter, "params": self.params, "disabled": sorted(self.disabled),
                       "thresholds": self.thresholds, "priorities": {str(k): v for k, v in self.priorities.items()},
                       "mode": int(self.mode), "error_times": self.error_times[-1000:],
                       "ack_counters": {str(k): v for k, v in self.ack_counters.items()},
                       "model_recovery": self.model_recovery}, f)
            f.flush()
            os.fsync(f.fileno())
        if self.path.exists():
            link = self.prev.with_name(self.prev.name + ".tmp")
            link.unlink(missing_ok=True)
            os.link(self.path, link)
            os.replace(link, self.prev)
        os.replace(tmp, self.path)


UPLINK_PER_TURN = 200  # uplink packets handled per main-loop turn, at most (FlightApp.drain_uplink)
CALIBRATION_SCRUB_BYTES = 1 << 20  # of the calibration table file checked per main-loop turn (~0.4 ms from cache)


class _Unpackable(Exception):
    """A product's values do not fit its packet (raised while building it, before it is stored)."""


class CalibrateTap:
    """The calibrator as the pipeline sees it: timed by the watchdog, and each calibrated strip
    feeds the quicklook ring on its way."""

    def __init__(self, calibrator: Calibrator, app: FlightApp):
        self.calibrator, self.app = calibrator, app

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.calibrator.shape

    def calibrate_strip(self, raw: np.ndarray, row0: int, out: np.ndarray | None = None) -> np.ndarray:
        with self.app.watchdog.stage("calibrate"):
            cal = self.calibrator.calibrate_strip(raw, row0, out)
        for reason in self.calibrator.take_remakes():  # a damaged table file, remade from the products file
            self.app.calibration_tables_fault(f"{reason}; remade from the products file")
        self.app.quicklooks.add_strip(cal, row0)
        self.app.recent.add_strip(cal, row0)
        return cal


class RequiredModelFailed(Exception):
    """The cloud screen failed at run time and nothing replaced it: the frame cannot be screened.
    Already counted and reported (MODEL_RUN_FAILED) by FlightApp.model_failed; the frame handler
    only rejects the frame (a second STAGE_ERROR fault used to charge one failure twice to the
    error budget, so SAFE came after half the failures it is set for)."""

    def __init__(self, name: str, exc: Exception):
        super().__init__(f"model {name} failed: {exc!r}")
        self.name, self.exc = name, exc


class GuardedModel:
    """A model as the pipeline sees it: each call watched by the stage watchdog and open to the
    scenario's injected faults. A detector that fails or gets stuck is switched off and answers
    'nothing found' for that call, so the frame goes on; a failure of a new version on probation
    rolls it back and the call is repeated with the previous one. An output that breaks the card
    (inference.ModelOutputError: NaN, inf, far outside 0..1, another shape) is such a failure."""

    def __init__(self, app: FlightApp, name: str, model, probation: int = 0):
        self.app, self.name, self.model, self.probation = app, name, model, probation
        self.stage = "screen" if name == REQUIRED_MODEL else "detect"
        self.threshold: float | None = None

    @property
    def card(self):
        c = self.model.card
        return c if self.threshold is None else dataclasses.replace(c, threshold=self.threshold)

    @property
    def cell(self) -> int:
        return self.model.cell

    def _empty(self, n: int) -> np.ndarray:
        return np.zeros((n,) + tuple(self.model.card.output_shape[1:]), np.float32)

    def run(self, tiles: np.ndarray | TileSource) -> np.ndarray:
        app = self.app
        while True:  # at most twice: a replacement has no probation, so its own failure ends here
            try:
                with app.watchdog.stage(self.stage):
                    app.faults.model_call(self.name, self.model.card.version, app.frame_id())
                    return self.model.run(tiles)
            except StageStuck as exc:
                replacement = app.model_stuck(self, exc)
                if replacement is not None:  # a new version too slow for this board: the previous one, again
                    self.model, self.probation = replacement, 0
                    app.models_changed()
                    continue
                if self.name == REQUIRED_MODEL:
                    raise
                app.stage_stuck(exc, model=self.name)
                return self._empty(len(tiles))
            except Exception as exc:  # onnxruntime and numpy raise their own types
                replacement = app.model_failed(self, exc)
                if replacement is not None:
                    self.model, self.probation = replacement, 0
                    app.models_changed()  # the version it rolled back to may validate another cut
                    # repeated through the same guard: the version rolled back to may fail too (an
                    # older upload just as bad); its exception escaped the guard and cost a
                    # detector's frame as a STAGE_ERROR
                    continue
                if self.name == REQUIRED_MODEL:
                    raise RequiredModelFailed(self.name, exc) from exc
                return self._empty(len(tiles))


class FlightApp:
    def __init__(self, scenario: Scenario, clock: ScenarioClock, calibration: Path, run_dir: Path):
        self.sc, self.clock, self.run_dir = scenario, clock, run_dir
        ops, sec = scenario.ops, scenario.security
        # first, before anything opens: "required" without a library that loads fails start-up here
        try:
            self.native_kernels, self.native_note = load_native_kernels(scenario.flight.native_kernels)
        except NativeUnavailable as exc:
            raise ConfigError("flight.native_kernels", scenario.flight.native_kernels, str(exc)) from None
        self.state_dir = resolve(ops.state_dir, run_dir) if ops.state_dir else run_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.svc = Service("flight", run_dir)
        self.counts = dict(frames_captured=0, frames_processed=0, frames_rejected=0, packets_sent=0,
                           packets_retransmitted=0, products_acked=0, errors=0, uplink_rejected=0,
                           products_evicted=0, products_refused=0, commands_accepted=0, commands_rejected=0,
                           commands_forged=0, commands_replayed=0, commands_out_of_window=0, commands_failed=0,
                           watchdog_trips=0, models_rolled_back=0, input_rejected=0, software_faults=0,
                           events_suppressed=0, strips_dropped=0, products_lost=0, products_created=0,
                           acks_rejected=0, models_auto_enabled=0)
        # the epoch file lives with the flight state, outside the store: it survives the store's loss
        self.store = ProductStore(resolve(ops.store_dir, run_dir) / "flight_store.sqlite", scenario.flight.store_max_bytes,
                                  epoch_path=self.state_dir / "store_epoch", ram_max_bytes=ops.store_ram_max_bytes,
                                  log=self.svc.log)
        self.store_full = False
        self._reporting_evictions = False
        self.cores = apply_obc_profile(scenario, self.svc.log)
        # start-up fails fast: no key, bad faults table, no usable cloud screen
        self.ops_state = OpsState(self.state_dir / "ops_state.json")
        mission_key = load_mission_key(sec, run_dir)
        self.auth = CommandAuth(mission_key, self.ops_state.last_counter, sec.counter_window, sec.command_time_window_s)
        self.ack_auth = AckAuth(mission_key, self.ops_state.ack_counters, sec.command_time_window_s)  # flight.acks
        self.faults = InjectedFaults.from_extra(scenario.extra)
        self.priority = {int(k): int(v) for k, v in APID_PRIORITY.items()} | self.ops_state.priorities
        self.event_limiter = EventLimiter(ops.event_burst, ops.event_window_s)
        self.modes = ModeManager(ops.error_budget, ops.error_window_s, self.emit, self.save_mode)
        self.watchdog = StageWatchdog(ops.watchdog_limit_s)
        self.quicklooks = QuicklookRing(ops.quicklook_frames, ops.quicklook_factor)
        self.recent = RecentFrames(self.state_dir / "recent_frames", ops.recent_frames_full_res)
        self.recent_errors_seen, self.recent_fault_reported = 0, False
        self.emit("STARTED", profile=scenario.obc.profile)
        self.report_recent_frames()  # its folder may already have failed to clear
        if self.ops_state.restored:
            self.emit("STATE_RESTORED", file=self.ops_state.path.name, reason=self.ops_state.restored)
        self.modes.restore(self.ops_state.mode, self.ops_state.error_times, clock.now_s())
        if self.modes.mode != Mode.NOMINAL or self.modes.errors:
            self.emit("MODE_RESTORED", mode=self.modes.mode.name, errors=len(self.modes.errors))
        arena = scenario.flight.onnx_memory_arena  # not a commandable parameter: one value for both uses below
        self.model_store = ModelStore(self.state_dir / "models", scenario.obc.threads, scenario.flight.batch_tiles,
                                      arena=arena, log=self.svc.log)
        if self.model_store.corrupt_index:
            self.emit("MODEL_CORRUPTED", model="*", version="-", reason=self.model_store.corrupt_index)
        for name, previous, adopted in self.model_store.factory_updates:  # this release's packaged models
            if isinstance(adopted, str):
                self.emit("MODEL_REFUSED", model=name, reason=f"this release's packaged model: {adopted}"[:160])
            else:
                self.emit("MODEL_ACTIVATED", model=name, version=adopted.version, sha8=adopted.sha256[:8],
                          previous=f"{previous} (previous release)")
        self.uploads = Uploads(self.state_dir / "models" / "uploads", ops.upload_max_bytes, log=self.svc.log)
        cfg = scenario.flight
        for name, value in self.ops_state.params.items():  # parameters set by command survive a restart
            cfg = dataclasses.replace(cfg, **{name: value})
        # the arena needs the strip arrays reused (else fresh pages every strip); without it reuse
        # only holds them between frames (2-4 MiB more at the peak): docs/benchmarks.md
        self.calibrator = self.make_calibrator(calibration, cfg)
        # the native kernels also cut and quantize the models' input (BlockTiles), as they load
        self.pipeline = FramePipeline(cfg, CalibrateTap(self.calibrator, self),
                                      self.load_models(), reuse_buffers=arena, kernels=self.native_kernels)
        self.pipeline.disabled |= {m for m in self.ops_state.disabled if m != REQUIRED_MODEL}
        self.native_reported = ""
        self.report_native()
        cascade = {s.model for s in scenario.flight.cascade[1:]}
        for name in list(self.ops_state.model_recovery):  # retries only for detectors of this cascade
            r = self.ops_state.model_recovery[name]
            if name not in cascade:
                del self.ops_state.model_recovery[name]
            elif name not in self.pipeline.disabled:
                r["retry_at_s"] = None  # on already: nothing to retry
        self.pending_models: dict[str, GuardedModel] = {}  # activated, swapped in between frames
        self.prescreen_reported: dict[str, tuple | None] = {}  # per model: (version, cut, reason) last reported
        self.report_prescreen()
        self.proc = psutil.Process()
        self.proc.cpu_percent()
        self.last_latency_ms = 0.0
        self.last_stage_ms: dict[str, float] = {}
        self.last_uplink: float | None = None
        self.frame_heard = time.monotonic()  # the last camera message (check_frame_stall)
        self.eos = False
        self.next_hk_s = clock.now_s()
        self.next_scrub_s = clock.now_s() + ops.model_scrub_period_s
        self.next_memory_check = 0.0
        self.link_timer = LinkTimer.from_config(cfg, scenario.link)  # adaptive retransmission (issue #12)
        from flight.filetransfer import FileService  # issue #13: file transfers (CFDP)
        self.files = FileService(self)
        self.plan_ended_reported = False
        self.contact_plan = self.load_contact_plan()

    # -- the contact plan (flight/contacts.py) -----------------------------------------------------------

    def load_contact_plan(self) -> ContactPlan:
        """The plan kept in the state folder (preloaded before launch, or the last one uplinked)."""
        if not self.sc.flight.use_contact_plan:
            return ContactPlan()
        try:
            plan = load_plan_file(self.state_dir, self.clock)
        except (ContactPlanError, OSError) as exc:  # a bad file never stops the flight: it sends without a plan
            self.counts["input_rejected"] += 1
            self.emit("CONTACT_PLAN_REFUSED", source="state folder", reason=str(exc)[:140])
            return ContactPlan()
        if plan.windows:
            self.emit_plan_loaded(plan, "state folder")
        return plan

    def make_calibrator(self, calibration, cfg: FlightSection) -> Calibrator:
        """The calibrator, with the native kernel loaded at start-up when it reproduces this
        calibration bit for bit; if not, "required" fails start-up and "auto" runs the numpy/OpenCV
        path (NATIVE_KERNELS, once the models are loaded, says which runs and why)."""
        calibrator = Calibrator(calibration, tables=cfg.calibration_tables, kernels=self.native_kernels)
        note = self.native_note
        if self.native_kernels is not None and calibrator.kernels is None:  # on the numpy/OpenCV path
            note = calibrator.kernel_note
            if cfg.native_kernels == "required":
                calibrator.close()
                raise ConfigError("flight.native_kernels", cfg.native_kernels, note)
        self.calibration_note = note
        return calibrator

    def native_summary(self) -> str:
        """What the native kernels do in this flight, for the NATIVE_KERNELS event: the calibration,
        and the models' input (cut and quantized by the kernel where it reproduces the card's
        quantization bit for bit, flight.pipeline.BlockTiles; the numpy/OpenCV way otherwise)."""
        k = self.native_kernels
        if k is None:
            return f"model input numpy/OpenCV; calibration {self.calibration_note}"  # the event keeps 160 characters
        cards = {name: m.card for name, m in self.pipeline.models.items()}
        slow = [n for n, c in cards.items() if not k.tiles_u8_matches(c.input_scale / c.quant_scale, float(c.quant_zero_point))]
        inputs = "native" if not slow else f"numpy/OpenCV for {', '.join(slow)} (quantization not reproduced), native for the rest"
        return f"model input {inputs}; calibration {self.calibration_note}"

    def report_native(self) -> None:
        """NATIVE_KERNELS at start-up, and again whenever what the kernels do changes: a model
        swapped in or rolled back to whose input quantization the tile kernel does not reproduce
        (its input then comes the numpy/OpenCV way), or one that brings it back."""
        note = self.native_summary()
        if note != self.native_reported:
            self.emit("NATIVE_KERNELS", note=note[:160])
            self.native_reported = note

    def models_changed(self) -> None:
        """What depends on the loaded models' cards, reported again after any of them changed."""
        self.report_prescreen()
        self.report_native()

    def emit_plan_loaded(self, plan: ContactPlan, source: str) -> None:
        self.plan_ended_reported = False
        self.emit("CONTACT_PLAN_LOADED", source=source, windows=len(plan.windows),
                  first=self.utc_text(plan.windows[0].aos_s), last=self.utc_text(plan.ends_s))

    def utc_text(self, t_s: float | None) -> str:
        return "-" if t_s is None else self.clock.utc(t_s).strftime("%Y-%m-%dT%H:%M:%SZ")

    def send_cutoff(self, now: float) -> float | None:
        """Until when (link time, `now`'s scale: time.monotonic()) a packet may leave the radio:
        None = no limit (no plan in force); -inf = not at all (a planned gap). Near LOS the packet
        must also be acknowledged before it, so the cutoff is LOS less a round trip and the clock
        margin."""
        plan = self.contact_plan
        t = self.clock.now_s()
        if not plan.governs(t):
            if plan.windows and not self.plan_ended_reported:
                self.plan_ended_reported = True
                self.emit("CONTACT_PLAN_ENDED", last=self.utc_text(plan.ends_s))
            return None
        contact = plan.contact_at(t)
        if contact is None:
            return float("-inf")
        aos, los = contact
        timer = self.link_timer
        rtt = timer.srtt_s if timer.srtt_s is not None else timer.rto_s
        # a pass shorter than a few round trips still carries products (their acks may come in a
        # later pass): never keep more than a quarter of it back
        rtt = min(rtt, (los - aos) / self.clock.rate / 4)
        # the plan is in on-board (wall-based) time; the link runs on the monotonic clock
        return self.clock.wall_time_of(los - self.cfg.contact_margin_s) - time.time() + now - rtt

    @property
    def cfg(self):
        return self.pipeline.cfg

    def guarded(self, handler: str, call) -> None:
        """The last-resort handler around each main-loop step: an exception that escaped the
        step's own handling is a software fault. It is logged with its traceback, counted against
        the error budget and reported; the process goes on with the next step."""
        try:
            self.faults.handler_call(handler)
            call()
        except Exception as exc:  # noqa: BLE001 (nothing may stop the main loop)
            self.counts["software_faults"] += 1
            self.counts["errors"] += 1
            self.svc.log(f"software fault in {handler}: {traceback.format_exc()}")
            try:
                self.emit("SOFTWARE_FAULT", handler=handler, reason=repr(exc)[:150])
                self.modes.fault(self.clock.now_s(), f"software fault in {handler}")
            except Exception as again:  # noqa: BLE001 (reporting itself failed: the log has it)
                self.svc.log(f"could not report the fault: {again!r}")

    def save_mode(self, mode: Mode, error_times: list[float]) -> None:
        self.ops_state.mode, self.ops_state.error_times = mode, error_times
        try:
            self.ops_state.save()
        except OSError as exc:  # read-only or full storage: the mode holds in memory, said in the log
            self.svc.log(f"mode not persisted: {exc}")

    def frame_id(self) -> int:
        m = self.pipeline.meta
        return m.frame_id if m is not None else -1

    # -- models ----------------------------------------------------------------------------------------

    def load_models(self) -> dict[str, GuardedModel]:
        """Every enabled cascade model, verified. One that fails verification is rolled back to an
        older version or the factory copy (DEGRADED); one not onboard at all is left out. Without a
        cloud screen the flight cannot work: start-up fails."""
        models = {}
        for step in self.sc.flight.cascade:
            if not step.enabled:
                continue
            name = step.model
            try:
                model = self.model_store.load(name)
            except ModelUpdateError as exc:
                model = None
                if name in self.model_store.active:
                    model = self.replace_damaged(name, exc, f"failed verification at start-up: {exc.reason}")
                else:
                    self.emit("MODEL_REFUSED", model=name, reason=exc.reason[:150])
                if model is None:
                    if name == REQUIRED_MODEL:
                        raise
                    continue
            models[name] = GuardedModel(self, name, model)
            self.apply_threshold(models[name])
            a = self.model_store.active[name]
            self.emit("MODEL_LOADED", model=name, version=a.version, sha8=a.sha256[:8])
        return models

    def apply_threshold(self, guard: GuardedModel) -> None:
        guard.threshold = self.ops_state.thresholds.get(guard.name)

    def replace_damaged(self, name: str, exc: ModelUpdateError, reason: str, fault: bool = True):
        """The active stored copy of a model failed to load: MODEL_CORRUPTED, then the previous
        verified version or the factory copy (the loaded model, or None when impossible)."""
        self.emit("MODEL_CORRUPTED", model=name, version=self.model_store.active[name].version, reason=exc.reason[:150])
        return self.roll_back(name, reason, fault)

    def roll_back(self, name: str, reason: str, fault: bool = True):
        """Previous verified version (or factory copy) of a model: the loaded model, or None."""
        before = self.model_store.active.get(name)
        if fault:
            self.modes.fault(self.clock.now_s(), f"model {name}: {reason}")
        try:
            active, model, skipped = self.model_store.rollback(name)
        except ModelUpdateError as exc:
            self.emit("MODEL_REFUSED", model=name, reason=f"rollback impossible: {exc.reason}"[:160])
            return None
        self.counts["models_rolled_back"] += 1
        self.emit("MODEL_ROLLED_BACK", model=name, from_version=before.version if before else "-",
                  to_version=active.version + (" (factory copy)" if active.factory else ""), reason=reason[:100])
        return model

    def swap_model(self, name: str, model, probation: int = 0) -> None:
        """Make `model` the one the pipeline uses from the next frame on (never mid-frame)."""
        guard = GuardedModel(self, name, model, probation)
        self.apply_threshold(guard)
        self.pending_models[name] = guard
        self.apply_pending_models()

    def apply_pending_models(self) -> None:
        if self.pipeline.meta is not None or not self.pending_models:
            return
        for name, guard in self.pending_models.items():
            self.pipeline.models[name] = guard
        self.pending_models.clear()
        self.models_changed()

    def report_prescreen(self) -> None:
        """One event per cascade step whose configured prescreen the loaded model's card does not
        validate (FramePipeline.prescreen_cut), each time that changes (a new model version)."""
        limits = {step.model: (step, cut, why) for step, cut, why in self.pipeline.prescreen_limits()}
        for step in self.pipeline.cfg.cascade[1:]:
            guard = self.pipeline.models.get(step.model)
            version = guard.card.version if guard is not None else "-"
            state = (version, limits[step.model][1:]) if step.model in limits else None
            if self.prescreen_reported.get(step.model) != state and state is not None:
                _, cut, why = limits[step.model]
                self.emit("PRESCREEN_LIMITED", model=step.model, version=version, band=step.contrast_band,
                          requested=step.min_contrast, applied=cut, reason=why[:100])
            self.prescreen_reported[step.model] = state

    def model_failed(self, guard: GuardedModel, exc: Exception):
        """A model raised at run time. Returns a replacement to use at once, or None."""
        name, version = guard.name, guard.model.card.version
        self.counts["errors"] += 1
        self.emit("MODEL_RUN_FAILED", frame_id=self.frame_id(), model=name, version=version, reason=repr(exc)[:120])
        a = self.model_store.active.get(name)
        if guard.probation > 0 and a is not None and a.history:
            model = self.roll_back(name, f"{version} failed at run time on probation")
            if model is not None:
                return model
        else:
            self.modes.fault(self.clock.now_s(), f"model {name} failed")
        if name != REQUIRED_MODEL:
            self.disable_model(name, f"failed at run time: {exc!r}"[:100], retry=True)
        return None

    def model_stuck(self, guard: GuardedModel, exc: StageStuck):
        """A model call ran past the watchdog limit. A new version on probation is rolled back, as
        for a failure, and the caller repeats the call with the previous version: before, a slow
        upload was a disabled detector (until ENABLE_MODEL) or, for the cloud screen, a lost frame
        each time until SAFE, with the good version beside it. Returns the replacement, or None
        (the caller then treats it as stuck)."""
        a = self.model_store.active.get(guard.name)
        if not (guard.probation > 0 and a is not None and a.history):
            return None
        model = self.roll_back(guard.name, f"{guard.model.card.version} too slow on probation "
                                           f"({exc.elapsed_s:.2f} s, limit {exc.limit_s:g} s)")
        if model is not None:  # else stage_stuck counts and reports it, as for any stuck call
            self.counts["watchdog_trips"] += 1
            self.counts["errors"] += 1
            self.emit("STAGE_WATCHDOG", frame_id=self.frame_id(), stage=f"{exc.stage} ({guard.name})",
                      elapsed_s=exc.elapsed_s, limit_s=exc.limit_s)
        return model

    def stage_stuck(self, exc: StageStuck, model: str | None = None) -> None:
        self.counts["watchdog_trips"] += 1
        self.counts["errors"] += 1
        self.emit("STAGE_WATCHDOG", frame_id=self.frame_id(), stage=exc.stage + (f" ({model})" if model else ""),
                  elapsed_s=exc.elapsed_s, limit_s=exc.limit_s)
        self.modes.fault(self.clock.now_s(), f"stage {exc.stage} stuck")
        if model is not None and model != REQUIRED_MODEL:
            self.disable_model(model, "stuck past the watchdog limit", retry=True)

    def disable_model(self, name: str, reason: str, retry: bool = False) -> None:
        """Switch a detector off. `retry`: switched off by a fault (a run-time failure or a
        watchdog trip), so it is switched on again automatically after ops.model_retry_s, at most
        ops.model_retries times until ENABLE_MODEL (retry_models); the event says when, or that
        its retries are used up. Switched off by command (retry False): until ENABLE_MODEL."""
        if name in self.pipeline.disabled:
            return
        self.pipeline.disabled.add(name)
        self.ops_state.disabled = sorted(self.pipeline.disabled)
        if retry:
            reason = f"{reason[:96]}; {self.schedule_retry(name)}"
        self.save_state("disabled models")
        self.emit("MODEL_DISABLED", model=name, reason=reason)

    def schedule_retry(self, name: str) -> str:
        """The next automatic re-enable of a detector a fault switched off (ops_state.model_recovery,
        saved with the disabled list): due ops.model_retry_s from now, unless its retries since the
        last ENABLE_MODEL are used up. Returns what the MODEL_DISABLED event says about it."""
        ops = self.sc.ops
        if ops.model_retries == 0:  # automatic retries off: as before, nothing recorded
            return "off until ENABLE_MODEL (ops.model_retries = 0)"
        r = self.ops_state.model_recovery.setdefault(name, {"retries": 0, "retry_at_s": None})
        if r["retries"] >= ops.model_retries:
            r["retry_at_s"] = None
            return f"its {r['retries']} automatic retries used: off until ENABLE_MODEL"
        r["retry_at_s"] = at = self.clock.now_s() + ops.model_retry_s
        return f"automatic retry {r['retries'] + 1} of {ops.model_retries} in {ops.model_retry_s:g} s at {self.utc_text(at)}"

    def retry_models(self) -> None:
        """Switch on again each detector a fault switched off whose cool-down is over (between
        frames only, like a model swap). Mission time, as the other on-board timers; a retry time
        more than one cool-down ahead (the clock stepped back, or restarted from another start) is
        brought back to one cool-down from now. The count is not reset by frames that go well: only
        ENABLE_MODEL resets it, so a detector that keeps failing is retried ops.model_retries times
        in all, then stays off until the ground has looked."""
        recovery = self.ops_state.model_recovery
        if self.pipeline.meta is not None or not any(r["retry_at_s"] is not None for r in recovery.values()):
            return
        t, cool = self.clock.now_s(), self.sc.ops.model_retry_s
        for name, r in list(recovery.items()):
            at = r["retry_at_s"]
            if at is None:
                continue
            if name not in self.pipeline.disabled:  # on again by other means
                r["retry_at_s"] = None
                continue
            if at > t + cool:
                r["retry_at_s"] = t + cool
                continue
            if t < at:
                continue
            r["retries"] += 1
            r["retry_at_s"] = None
            try:
                self.enable_or_repair(name)
            except ModelUpdateError as exc:  # could not be loaded: a failed retry. An error, not a new
                # mode fault: the failure that switched the model off was counted when it happened
                self.counts["errors"] += 1
                self.emit("MODEL_REFUSED", model=name, reason=f"automatic retry: {exc.reason}"[:160])
                self.ops_state.disabled = sorted(self.pipeline.disabled)
                self.emit("MODEL_DISABLED", model=name, reason=f"not loadable; {self.schedule_retry(name)}")
                self.save_state("model retries")
                continue
            self.counts["models_auto_enabled"] += 1
            self.save_state("enabled models")
            self.emit("MODEL_ENABLED", model=f"{name} (automatic retry {r['retries']} of {self.sc.ops.model_retries}, "
                                            f"{cool:g} s after its fault)")

    def enable_or_repair(self, name: str) -> None:
        """An automatic retry: switch the detector on; when its stored copy fails to load, roll it
        back to an older version or the factory copy, as at start-up, and switch that on. Before, a
        retry only loaded the damaged copy again, so a detector whose start-up repair had failed
        (storage read-only then) used up its retries even after the storage came back. No mode
        fault: the failed load already counts as the retry's error when this fails too.
        ModelUpdateError when neither works."""
        try:
            self.enable_model(name)
        except ModelUpdateError as exc:
            if name not in self.model_store.active:
                raise
            model = self.replace_damaged(name, exc, f"failed to load at its automatic retry: {exc.reason}", fault=False)
            if model is None:
                raise
            self.swap_model(name, model)
            self.pipeline.disabled.discard(name)
            self.ops_state.disabled = sorted(self.pipeline.disabled)

    def enable_model(self, name: str) -> None:
        """Switch a cascade model on, loading it if it was not (ModelUpdateError when it cannot be)."""
        if name not in self.pipeline.models:
            self.swap_model(name, self.model_store.load(name))
        self.pipeline.disabled.discard(name)
        self.ops_state.disabled = sorted(self.pipeline.disabled)

    def calibration_tables_fault(self, reason: str) -> None:
        """The calibration table file failed a read or a scrub (remade, or not: the reason says).
        A storage fault like a corrupted model file: counted, reported; frames go on if remade."""
        self.counts["errors"] += 1
        self.emit("CALIBRATION_TABLES_FAULT", reason=reason[:160])

    def scrub_calibration(self) -> None:
        """One step (CALIBRATION_SCRUB_BYTES) of the table file's scrub pass, started with the
        models' scrub: the main loop is never held for the whole file (50 MB at 2048 px)."""
        try:
            problem = self.calibrator.scrub_step(CALIBRATION_SCRUB_BYTES)
        except ValueError as exc:  # found damaged and not remade: the next frames fail and say so
            self.calibration_tables_fault(str(exc))
            return
        if problem:
            self.calibration_tables_fault(f"scrub: {problem}; remade from the products file")

    def scrub_models(self) -> None:
        """Re-hash the active model files: a file corrupted on disk is rolled back before the next
        start would find it (the running session was loaded from good bytes). The calibration
        table file is checked too, a step per call."""
        self.scrub_calibration()
        t = self.clock.now_s()
        if self.next_scrub_s > t + self.sc.ops.model_scrub_period_s:  # the clock stepped back (as housekeeping)
            self.next_scrub_s = t
        if not self.sc.ops.model_scrub_period_s or t < self.next_scrub_s:
            return
        self.next_scrub_s = t + self.sc.ops.model_scrub_period_s
        self.calibrator.scrub_begin()
        for name in list(self.pipeline.models):
            problem = self.model_store.scrub(name)
            if problem is None:
                continue
            self.counts["errors"] += 1
            self.emit("MODEL_CORRUPTED", model=name, version=self.model_store.active[name].version, reason=problem)
            model = self.roll_back(name, "model file corrupted on disk")
            if model is not None:
                self.swap_model(name, model)

    # -- products ----------------------------------------------------------------------------------

    def _store(self, apid: Apid, time_s: float, make) -> None:
        """Store one product; `make(product_id)` builds it. Evictions and refusals become events."""
        def build(pid: int, seq: int) -> bytes:
            try:
                return encode_tm(make(pid), seq, self.clock.epoch, time_s)
            except (ValueError, OverflowError, struct.error) as exc:
                raise _Unpackable(exc) from exc
        try:
            _, evicted = self.store.put(self.priority.get(int(apid), 4), apid, time_s, build)
        except _Unpackable as exc:
            # A value that does not fit its packet is a defect upstream. Only this product is lost
            # (built before the store's transaction: nothing half-written); the frame's other
            # products and the flight go on, and it is a software fault like any other.
            self.counts["products_lost"] += 1
            self.counts["software_faults"] += 1
            self.counts["errors"] += 1
            self.svc.log(f"product of apid {int(apid):#x} not packable: {traceback.format_exc()}")
            if apid != Apid.EVENT:  # an event that cannot be packed is not reported by another event
                self.emit("SOFTWARE_FAULT", handler=f"packing apid {int(apid):#x}", reason=repr(exc.__cause__)[:150])
            self.modes.fault(self.clock.now_s(), f"product of apid {int(apid):#x} not packable")
            return
        except StoreFull as exc:
            # lost: the disk could not write and the RAM buffer was full too; refused: the full store's policy
            self.counts["products_lost" if exc.lost else "products_refused"] += 1
            self.svc.log(f"product {'lost' if exc.lost else 'refused'}: {exc}")
            if not self.store_full:  # once per episode; the event may itself find no room
                self.store_full = True
                self.modes.fault(self.clock.now_s(), "store full", count=False)
                self.emit("STORE_FULL", reason=str(exc)[:150])
            return
        self.counts["products_created"] += 1
        self.counts["products_evicted"] += len(evicted)
        # One event per eviction, but an eviction event that itself evicts is only counted (else each
        # event evicts the next one: an endless cascade), and once the store is full the STORE_FULL
        # event has said it: evictions are then counted in telemetry only.
        if evicted and not self._reporting_evictions and not self.store_full:
            self._reporting_evictions = True
            try:
                for ev in evicted:
                    self.emit("STORE_EVICTED", product_id=ev.product_id, priority=ev.priority)
            finally:
                self._reporting_evictions = False

    def persist_ack_counters(self) -> None:
        """Write the accepted ack counters at most once a second after a change (docs/operations.md:
        why that is enough). Checked on every ack and every loop turn: checked on acks only, the
        last counter of a burst stayed unwritten until the next ack, which may come a pass later."""
        if self.ack_auth.persist_due():
            try:
                self.ops_state.save()
            except OSError as exc:  # kept in memory; the next save writes it
                self.ack_auth.dirty = True
                self.svc.log(f"ack counters not persisted: {exc}")

    def store_maintenance(self) -> None:
        """Let the store retry a failing disk (it limits its own rate) and report what it found:
        its events, and DEGRADED when the store was quarantined or cannot write. Also writes ack
        counters left unwritten by the once-a-second limit."""
        self.persist_ack_counters()
        self.store.maintain(time.monotonic())
        for _ in range(3):  # emitting may itself find the disk failing: one more round says so
            events = self.store.take_events()
            if not events:
                return
            for name, kw in events:
                if name == "STORE_EVICTED":  # moving RAM products to a full disk: as in _store
                    self.counts["products_evicted"] += 1
                    if self._reporting_evictions or self.store_full:
                        continue
                    self._reporting_evictions = True
                    try:
                        self.emit(name, **kw)
                    finally:
                        self._reporting_evictions = False
                    continue
                if name in ("STORE_QUARANTINED", "STORE_DEGRADED"):
                    self.modes.fault(self.clock.now_s(), name.lower().replace("_", " "), count=False)
                self.emit(name, **kw)

    def emit(self, event: str, frame_id: int = -1, **kw) -> None:
        d = EVENTS[event]
        if not (isinstance(frame_id, int) and -1 <= frame_id <= FRAME_ID_MAX):  # must fit the event's i32 field
            kw["reason"] = f"{kw.get('reason', '')} (frame id {str(frame_id)[:24]} out of range)"
            frame_id = -1
        msg = d.fmt.format(frame_id=frame_id, **kw)
        t = self.clock.now_s()
        if not self.event_limiter.allow(event, t):
            self.counts["events_suppressed"] += 1
            return
        self.svc.log(f"EVENT {d.severity.name} {event}: {msg}")
        self._store(Apid.EVENT, t, lambda pid: Event(pid, t, d.id, int(d.severity), frame_id, msg[:200]))

    def report(self, counter: int, opcode: int, kind: ReportKind, code: Reason = Reason.OK, message: str = "") -> None:
        t = self.clock.now_s()
        self._store(Apid.COMMAND_REPORT, t, lambda pid: CommandReport(pid, t, counter, opcode, int(kind), int(code), message[:200]))

    def package(self, r: FrameResult) -> None:
        t0 = time.perf_counter()
        for apid, t, make in frame_products(r):
            self._store(apid, t, make)
        ev = discard_event_args(r, self.cfg.cloud_discard_fraction)
        if ev is not None:
            self.emit("FRAME_DISCARDED_CLOUDY", **ev)
        r.stage_ms["package"] += (time.perf_counter() - t0) * 1e3

    # -- frames ------------------------------------------------------------------------------------

    def on_frame_message(self, parts: list) -> None:
        """One message from the camera. Everything about the message itself is checked by ingest
        against the range it will be packed into (FrameRejected: input rejected, never a fault);
        an exception from a stage after ingest accepted the data is the software's own fault."""
        p = self.pipeline
        try:
            kind = bytes(parts[0])[:16] if parts else b""
            if kind == b"frame":
                if p.meta is not None:  # the previous frame never finished
                    self.reject(p.meta.frame_id, "next frame began before the last strip")
                self.counts["frames_captured"] += 1
                self.apply_pending_models()
                self.retry_models()  # a detector whose cool-down is over takes part in this frame
                if len(parts) != 2:
                    raise FrameRejected(None, f"frame message has {len(parts)} parts, expected 2")
                if self.modes.mode == Mode.SAFE:
                    self.reject(_peek_frame_id(bytes(parts[1])), "SAFE mode: processing is off", hostile=False)
                    return
                meta = p.begin(bytes(parts[1]))
                self.quicklooks.begin(meta)
                self.recent.begin(meta)
                self.report_recent_frames()
            elif kind == b"strip":
                if len(parts) != 3:
                    raise FrameRejected(p.meta.frame_id if p.meta else None, f"strip message has {len(parts)} parts, expected 3")
                frame_id, row0, rows = p.ingest.strip_header(parts[1])
                if p.meta is not None and self.modes.mode == Mode.SAFE:
                    # SAFE came mid-frame (memory, error budget, command): before, the frame's other
                    # strips were still processed (under memory pressure too); now it stops here
                    self.reject(p.meta.frame_id, "SAFE mode: processing is off (entered mid-frame)")
                if p.meta is None:
                    self.counts["strips_dropped"] += 1  # strips of a frame already rejected (or of none)
                    return
                p.strip(frame_id, row0, rows, memoryview(parts[2]))
                if p.ingest.complete:
                    self.finish_frame()
            elif kind == b"eos":
                self.eos = True
            else:
                raise FrameRejected(None, f"unknown message kind {kind!r}")
        except FrameRejected as exc:
            self.reject(exc.frame_id, exc.reason, hostile=True)
        except StageStuck as exc:
            fid = self.frame_id()
            self.stage_stuck(exc)
            self.reject(fid, f"stage {exc.stage} aborted by the watchdog")
        except RequiredModelFailed as exc:  # counted and reported by model_failed: the frame only
            self.reject(self.frame_id(), str(exc))
        except Exception as exc:  # a stage failed on accepted data: count it against the error budget, go on
            self.counts["errors"] += 1
            fid = self.frame_id()
            self.emit("STAGE_ERROR", frame_id=fid, stage="pipeline", reason=repr(exc)[:150])
            self.modes.fault(self.clock.now_s(), "stage error")
            self.reject(fid, f"stage error: {exc!r}")
        finally:  # when the message was done with: a slow strip is not a stalled camera
            self.frame_heard = time.monotonic()

    def finish_frame(self) -> None:
        p = self.pipeline
        t0 = time.perf_counter()
        with self.watchdog.stage("localize"):
            result = p.finish()
        self.quicklooks.commit()
        self.recent.commit()
        self.report_recent_frames()
        self.package(result)
        self.last_latency_ms = result.processing_ms + (time.perf_counter() - t0) * 1e3
        self.last_stage_ms = dict(result.stage_ms)
        self.counts["frames_processed"] += 1
        for g in p.models.values():
            g.probation = max(0, g.probation - 1)
        self.apply_pending_models()

    def report_recent_frames(self) -> None:
        """One event per episode of mass-memory faults of the full-resolution ring (the first
        frame it could not keep; a frame kept again ends the episode); telemetry counts them all."""
        errors = self.recent.errors
        if errors > self.recent_errors_seen and not self.recent_fault_reported:
            self.emit("RECENT_FRAMES_FAULT", reason=self.recent.last_error[:140])
            self.recent_fault_reported = True
        elif errors == self.recent_errors_seen and self.recent.meta is None and self.recent.ring:
            self.recent_fault_reported = False  # the last frame was kept: the next fault is news
        self.recent_errors_seen = errors

    def check_frame_stall(self) -> None:
        """A frame in progress with no camera message for ops.frame_stall_s (the camera stopped or
        its link broke mid-frame) is dropped and reported: before, it stayed open for good, with
        no result, no report, and model swaps waiting for the frame to end never applied."""
        if self.pipeline.meta is None:
            return
        quiet = time.monotonic() - self.frame_heard
        if quiet > self.sc.ops.frame_stall_s:
            got = self.pipeline.ingest.next_row
            self.reject(self.pipeline.meta.frame_id, f"no strip for {quiet:.0f} s after {got} of "
                                                     f"{self.pipeline.meta.height} rows: the camera stopped mid-frame")
            self.apply_pending_models()

    def reject(self, frame_id: int | None, reason: str, hostile: bool = False) -> None:
        """Drop the frame in progress. `hostile`: the input itself was bad (counted as rejected
        input, never against the error budget)."""
        self.counts["frames_rejected"] += 1
        self.counts["input_rejected"] += hostile
        self.pipeline.meta = None
        self.pipeline.ingest.meta = None
        self.quicklooks.drop()
        self.recent.drop()
        self.emit("FRAME_REJECTED", frame_id=frame_id if frame_id is not None else -1, reason=reason[:160])

    # -- uplink ------------------------------------------------------------------------------------

    def on_uplink(self, packet: bytes) -> None:
        apid = ((packet[0] & 0x07) << 8 | packet[1]) if len(packet) >= 2 else None
        if apid == Apid.COMMAND:
            self.on_command(packet)
            return
        if apid == Apid.FILE_DATA:  # CFDP PDUs (flight.filetransfer): never acks, never commands
            self.files.on_packet(packet)
            return
        try:
            ids = self.ack_auth.accept(packet, self.clock.now_s())
        except AckError as exc:  # nothing deleted, no counter moved
            if exc.parsed:  # an ack refused for its MAC, ranges, counter or issue time
                self.counts["acks_rejected"] += 1
                self.emit("ACK_REJECTED", kind=exc.kind, reason=exc.reason[:160])
            else:  # not an ack at all (bit errors, junk)
                self.counts["uplink_rejected"] += 1
                self.emit("BAD_UPLINK_PACKET", reason=str(exc)[:160])
            return
        self.persist_ack_counters()
        now = time.monotonic()
        self.last_uplink = now
        removed, rtts_s = self.store.ack_with_samples(ids, now)  # round trips of once-sent packets (Karn)
        self.link_timer.on_samples(rtts_s)
        self.link_timer.on_acked(now)
        self.counts["products_acked"] += removed

    def on_command(self, packet: bytes) -> None:
        now = self.clock.now_s()
        try:
            sc = parse_command(packet)
        except CommandError as exc:  # not even a command packet: nothing to report against
            self.counts["uplink_rejected"] += 1
            self.counts["commands_rejected"] += 1
            self.emit("BAD_UPLINK_PACKET", reason=f"command packet: {exc.reason}"[:160])
            return
        try:
            self.auth.check(sc, now)
        except CommandError as exc:  # never executed, counter not moved
            self.counts["commands_rejected"] += 1
            key = {Reason.BAD_MAC: "commands_forged", Reason.REPLAY: "commands_replayed"}.get(exc.code, "commands_out_of_window")
            self.counts[key] += 1
            self.emit("COMMAND_AUTH_FAILED", counter=sc.counter, kind=exc.code.name, reason=exc.reason[:140])
            self.report(sc.counter, sc.opcode, ReportKind.REJECTED, exc.code, exc.reason)
            return
        self.last_uplink = time.monotonic()
        try:
            cmd = self.auth.accept(sc)
        except CommandError as exc:
            self.counts["commands_rejected"] += 1
            self.emit("COMMAND_REJECTED", counter=sc.counter, name=command_name(sc.opcode), reason=exc.reason[:140])
            self.report(sc.counter, sc.opcode, ReportKind.REJECTED, exc.code, exc.reason)
            return
        finally:  # the counter is on disk before anything executes: a restart cannot make a replay valid
            self.ops_state.last_counter = self.auth.last_counter
            # on storage that cannot write (a full disk) the command still runs, with the counter
            # kept in memory (a replay is refused until a restart, after one only inside the time
            # window), and its report says so: refusing every command would also refuse
            # CLEAR_STORE, the ground's way to free the disk
            unsaved = self.save_state("command counter")
        self.counts["commands_accepted"] += 1
        quiet = cmd.name == "UPLOAD_CHUNK"  # hundreds per upload: counted, events only for failures
        if cmd.wants(AckFlag.ACCEPTANCE):
            self.report(cmd.counter, cmd.opcode, ReportKind.ACCEPTED)
        if not quiet:
            self.emit("COMMAND_ACCEPTED", counter=cmd.counter, name=cmd.name)
        try:
            detail = getattr(self, f"cmd_{cmd.name.lower()}")(cmd) or "done"
        except Exception as exc:  # CommandFailed, ModelUpdateError, or a bug: reported, never fatal
            reason = exc.reason if isinstance(exc, ModelUpdateError) else str(exc)
            if not isinstance(exc, CommandFailed | ModelUpdateError):
                self.counts["errors"] += 1
                reason = f"internal error: {exc!r}"
            self.counts["commands_failed"] += 1
            self.emit("COMMAND_FAILED", counter=cmd.counter, name=cmd.name, reason=reason[:140])
            self.report(cmd.counter, cmd.opcode, ReportKind.FAILED, Reason.EXECUTION, reason)
            return
        detail += unsaved
        if cmd.wants(AckFlag.COMPLETION):
            self.report(cmd.counter, cmd.opcode, ReportKind.COMPLETED, Reason.OK, detail)
        if not quiet:
            self.emit("COMMAND_COMPLETED", counter=cmd.counter, name=cmd.name, detail=detail[:120])

    def save_state(self, what: str) -> str:
        """Write ops_state.json after a change already in effect. On storage that cannot write (a
        full disk) the change holds in memory until a restart: logged and counted, and the note
        returned ("" when saved) goes into the command's report. Raising here left a command's
        change in effect but reported it FAILED, or failed a frame whose stuck model was switched off."""
        try:
            self.ops_state.save()
            return ""
        except OSError as exc:
            self.counts["state_not_saved"] = self.counts.get("state_not_saved", 0) + 1
            self.svc.log(f"{what} not persisted: {exc}")
            return f" ({what} not saved: {exc.strerror or exc}; holds until a restart)"[:100]

    # -- command handlers: return a short text for the completion report, raise CommandFailed ------

    def cmd_noop(self, cmd: Command) -> str:
        return "noop"

    def cmd_set_param(self, cmd: Command) -> str:
        p = PARAMS[cmd.args["param"]]
        value = p.type(cmd.args["value"])
        old = getattr(self.cfg, p.name)
        self.pipeline.cfg = dataclasses.replace(self.cfg, **{p.name: value})
        self.ops_state.params[p.name] = value
        unsaved = self.save_state(p.name)
        self.emit("PARAMETER_SET", name=p.name, value=value, old=old)
        return f"{p.name} = {value} (was {old}){unsaved}"

    def _cascade_model(self, name: str) -> str:
        if name not in {s.model for s in self.sc.flight.cascade}:
            raise CommandFailed(f"{name} is not in the cascade {[s.model for s in self.sc.flight.cascade]}")
        return name

    def cmd_enable_model(self, cmd: Command) -> str:
        name = self._cascade_model(cmd.args["model"])
        try:
            self.enable_model(name)
        except ModelUpdateError as exc:
            raise CommandFailed(f"cannot load {name}: {exc.reason}") from None
        r = self.ops_state.model_recovery.pop(name, None)  # the ground has looked: automatic retries anew
        unsaved = self.save_state("enabled models")
        self.emit("MODEL_ENABLED", model=name)
        return f"{name} enabled" + (f" (automatic retries reset, {r['retries']} used)" if r else "") + unsaved

    def cmd_disable_model(self, cmd: Command) -> str:
        name = self._cascade_model(cmd.args["model"])
        if name == REQUIRED_MODEL:
            raise CommandFailed(f"{REQUIRED_MODEL} is required (use SET_MODE SAFE to stop processing)")
        # off until ENABLE_MODEL, also when a fault had switched it off first: no automatic retry
        r = self.ops_state.model_recovery.pop(name, None)
        cancelled = r is not None and r["retry_at_s"] is not None and name in self.pipeline.disabled
        if name in self.pipeline.disabled:
            unsaved = self.save_state("disabled models") if r is not None else ""
            if cancelled:
                self.emit("MODEL_DISABLED", model=name, reason="commanded (its automatic retry cancelled)")
        else:
            self.disable_model(name, "commanded")
            unsaved = ""
        return f"{name} disabled" + (" (automatic retry cancelled)" if cancelled else "") + unsaved

    def cmd_set_mode(self, cmd: Command) -> str:
        self.modes.command(Mode(cmd.args["mode"]))
        if self.modes.mode != Mode.SAFE:
            self.store_full = False
        return f"mode {self.modes.mode.name}"

    def _quicklook(self, frame_id: int):
        got = self.quicklooks.get(None if frame_id == LATEST_FRAME else frame_id)
        if got is None:
            raise CommandFailed(f"frame {frame_id} is not among the recent frames {list(self.quicklooks.ring)}")
        return got

    def cmd_request_quicklook(self, cmd: Command) -> str:
        meta, rgb = self._quicklook(cmd.args["frame_id"])
        out = png(rgb, self.sc.ops.quicklook_max_bytes)
        if out is None:
            raise CommandFailed("quicklook does not fit quicklook_max_bytes")
        img, data = out
        self._store(Apid.IMAGE_CHIP, meta.capture_time_s, lambda pid: ImageChip(
            pid, meta.frame_id, meta.capture_time_s, QUICKLOOK_CLASS, meta.height / 2, meta.width / 2,
            meta.height, meta.width, 3, data))
        return f"frame {meta.frame_id} quicklook {img.shape[1]}x{img.shape[0]} px, {len(data)} bytes"

    def cmd_request_chip(self, cmd: Command) -> str:
        meta, rgb = self._quicklook(cmd.args["frame_id"])
        a = cmd.args
        if a["row_px"] >= meta.height or a["col_px"] >= meta.width:
            raise CommandFailed(f"({a['row_px']}, {a['col_px']}) is outside frame {meta.frame_id} ({meta.height}x{meta.width})")
        # full resolution from mass memory while the frame is held there, else from its quicklook
        full = self.recent.chip(meta.frame_id, a["row_px"], a["col_px"], a["size_px"])
        f = 1 if full is not None else self.quicklooks.factor
        img, r0, c0, size = full if full is not None else crop(rgb, f, a["row_px"], a["col_px"], a["size_px"])
        out = png(img, self.sc.ops.quicklook_max_bytes)
        if out is None:
            raise CommandFailed("chip does not fit quicklook_max_bytes")
        data = out[1]
        self._store(Apid.IMAGE_CHIP, meta.capture_time_s, lambda pid: ImageChip(
            pid, meta.frame_id, meta.capture_time_s, REQUESTED_CHIP_CLASS, r0 + size / 2, c0 + size / 2, size, size, 3, data))
        return f"frame {meta.frame_id} chip at ({r0}, {c0}) {size} px (1/{f} resolution), {len(data)} bytes"

    def cmd_dump_telemetry(self, cmd: Command) -> str:
        self.housekeeping(force=True)
        return f"housekeeping sent, mode {self.modes.mode.name}"

    def cmd_clear_store(self, cmd: Command) -> str:
        n = self.store.clear(cmd.args["min_priority"])
        self.store_full = False
        self.emit("STORE_CLEARED", detail=f"{n} products of priority >= {cmd.args['min_priority']} deleted")
        return f"{n} products deleted"

    def cmd_reprioritize(self, cmd: Command) -> str:
        apid, prio = cmd.args["apid"], cmd.args["priority"]
        if apid not in self.priority:
            raise CommandFailed(f"apid {apid:#x} is not a product type {sorted(hex(a) for a in self.priority)}")
        self.priority[apid] = prio
        self.ops_state.priorities[apid] = prio
        unsaved = self.save_state("priorities")
        n = self.store.reprioritize(apid, prio)
        self.emit("STORE_CLEARED", detail=f"apid {apid:#x} now priority {prio} ({n} waiting products moved)")
        return f"apid {apid:#x} priority {prio}, {n} waiting products{unsaved}"

    def cmd_upload_begin(self, cmd: Command) -> str:
        name = self._cascade_model(cmd.args["model"])
        m, held = self.uploads.begin(name, cmd.args["size_bytes"], cmd.args["chunk_bytes"], cmd.args["sha256"])
        self.emit("UPLOAD_PROGRESS", upload_id=m.upload_id, model=name, received=held, chunks=m.chunks,
                  state="resumed" if held else "begun")
        return f"upload {m.upload_id:08x}: {held}/{m.chunks} chunks held"

    def cmd_upload_chunk(self, cmd: Command) -> str:
        m, held, new = self.uploads.chunk(cmd.args["upload_id"], cmd.args["index"], cmd.args["data"])
        if held == m.chunks and new:
            self.emit("UPLOAD_PROGRESS", upload_id=m.upload_id, model=m.model, received=held, chunks=m.chunks, state="complete")
        return f"{held}/{m.chunks}"

    def cmd_upload_status(self, cmd: Command) -> str:
        uid = cmd.args["upload_id"]
        m = self.uploads.meta(uid)
        missing = self.uploads.missing(uid)
        return f"upload {uid:08x} {m.model}: received={m.chunks - len(missing)}/{m.chunks} missing={ranges(missing, 40)}"

    def cmd_upload_activate(self, cmd: Command) -> str:
        uid = cmd.args["upload_id"]
        m, data = self.uploads.assemble(uid)  # incomplete or wrong hash: fails, the upload stays
        current = self.pipeline.models.get(m.model)
        before = self.model_store.active.get(m.model)
        try:
            active, model = self.model_store.install_bundle(m.model, data, current.model.card.kind if current else None)
        except ModelUpdateError as exc:
            self.uploads.abort(uid)  # the bytes were what was announced and they are bad: start again
            self.emit("MODEL_UPDATE_FAILED", model=m.model, upload_id=uid, reason=exc.reason[:140])
            raise
        self.uploads.abort(uid)
        self.swap_model(m.model, model, probation=self.sc.ops.model_probation_frames)
        self.emit("MODEL_ACTIVATED", model=m.model, version=active.version, sha8=active.sha256[:8],
                  previous=before.version if before else "none")
        return f"{m.model} {active.version} active (sha256 {active.sha256[:8]})"

    def cmd_upload_activate_file(self, cmd: Command) -> str:
        """A bundle received by file transfer (CFDP, flight.filetransfer), named by its SHA-256:
        re-hashed, then the same staging, verification and atomic activation as UPLOAD_ACTIVATE.
        The file is deleted either way (a bad bundle is sent again, not retried)."""
        import hashlib

        name = self._cascade_model(cmd.args["model"])
        sha = bytes(cmd.args["sha256"]).hex()
        uid = int(sha[:8], 16)
        path = self.files.received_file(sha)
        if path is None:
            raise CommandFailed(f"no received file with sha256 {sha[:16]} (transfer not finished, or already used)")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha:
            self.files.consume(sha)
            raise CommandFailed(f"received file {sha[:16]} changed on board (sha256 differs): deleted")
        current = self.pipeline.models.get(name)
        before = self.model_store.active.get(name)
        try:
            active, model = self.model_store.install_bundle(name, data, current.model.card.kind if current else None)
        except ModelUpdateError as exc:
            self.files.consume(sha)
            self.emit("MODEL_UPDATE_FAILED", model=name, upload_id=uid, reason=exc.reason[:140])
            raise
        self.files.consume(sha)
        self.swap_model(name, model, probation=self.sc.ops.model_probation_frames)
        self.emit("MODEL_ACTIVATED", model=name, version=active.version, sha8=active.sha256[:8],
                  previous=before.version if before else "none")
        return f"{name} {active.version} active (sha256 {active.sha256[:8]}; bundle {sha[:8]})"

    def cmd_load_contact_plan(self, cmd: Command) -> str:
        """A contact plan received by file transfer: parsed and checked whole, then kept and used;
        a bad one is refused and the plan in use stays. The file is deleted either way."""
        sha = bytes(cmd.args["sha256"]).hex()
        path = self.files.received_file(sha)
        if path is None:
            raise CommandFailed(f"no received file with sha256 {sha[:16]} (transfer not finished, or already used)")
        data = path.read_bytes()
        self.files.consume(sha)
        try:
            plan = ContactPlan(parse_plan(data, self.clock))
        except ContactPlanError as exc:
            self.emit("CONTACT_PLAN_REFUSED", source=f"file {sha[:8]}", reason=str(exc)[:140])
            raise CommandFailed(f"contact plan refused: {exc}") from None
        if not plan.windows:
            raise CommandFailed("contact plan has no windows (the plan in use stays)")
        keep_plan_file(self.state_dir, data)
        if self.sc.flight.use_contact_plan:
            self.contact_plan = plan
        self.emit_plan_loaded(plan, f"file {sha[:8]}")
        return f"contact plan: {len(plan.windows)} windows until {self.utc_text(plan.ends_s)}" + (
            "" if self.sc.flight.use_contact_plan else " (kept; flight.use_contact_plan is off)")

    def cmd_upload_abort(self, cmd: Command) -> str:
        uid = cmd.args["upload_id"]
        if not self.uploads.exists(uid):
            self.uploads.meta(uid)  # raises: no such upload
        self.uploads.abort(uid)  # a damaged one too: else it would hold one of the few upload slots for good
        return "aborted"

    def cmd_rollback_model(self, cmd: Command) -> str:
        name = self._cascade_model(cmd.args["model"])
        model = self.roll_back(name, "commanded", fault=False)
        if model is None:
            raise CommandFailed(f"no version of {name} to roll back to")
        self.swap_model(name, model)
        a = self.model_store.active[name]
        return f"{name} {a.version} active"

    def cmd_set_model_threshold(self, cmd: Command) -> str:
        name = self._cascade_model(cmd.args["model"])
        self.ops_state.thresholds[name] = cmd.args["threshold"]
        unsaved = self.save_state("thresholds")
        for g in (self.pipeline.models.get(name), self.pending_models.get(name)):
            if g is not None:
                self.apply_threshold(g)
        self.emit("PARAMETER_SET", name=f"{name}.threshold", value=cmd.args["threshold"], old="card")
        return f"{name} threshold {cmd.args['threshold']}{unsaved}"

    # -- outputs -------------------------------------------------------------------------------------

    def pump_downlink(self, sock: zmq.Socket) -> None:
        """Hand due packets to the radio while its queue holds less than radio_queue_max_s of
        airtime (the rest waits in the store, most important first); each packet's timer runs
        from when the queue model says it has left the radio."""
        # Link time is monotonic, like the store's send state: on wall time, a clock stepped back
        # (NTP, a GPS fix) held the radio model "full" and every packet's timer for the whole step.
        now = time.monotonic()
        timer = self.link_timer
        if not timer.has_room(now):
            return
        cutoff = self.send_cutoff(now)  # the contact plan: outside a window everything waits in the store
        if cutoff is not None and timer.leaves_at(0, now) >= cutoff:
            return
        sent, left_wall, timed_out = [], [], False
        resends = timer.resends_allowed(now)  # None: any; while the link is silent, one probe per timeout
        for pid, packet, sends, sent_wall in self.store.due(now, timer.rto_s, self.cfg.downlink_window,
                                                            expired=resends != 0):
            if not timer.has_room(now) or (cutoff is not None and timer.leaves_at(len(packet), now) > cutoff):
                break
            if sent_wall > 0 and resends is not None:  # an expired packet while silent: the probe
                if resends == 0:
                    continue
                resends -= 1
                timer.on_probe(now)
            try:
                sock.send(packet, zmq.NOBLOCK)
            except zmq.Again:
                break
            sent.append(pid)
            left_wall.append(timer.enqueue(len(packet), now))
            timed_out |= sent_wall > 0  # 0: never sent, or released at once by an ack (fast retransmission)
            self.counts["packets_sent"] += 1
            self.counts["packets_retransmitted"] += sends > 0
        if sent:
            self.store.mark_sent(sent, now, left_wall=left_wall)
        if timed_out:
            timer.on_timeout(now)

    def telemetry(self) -> dict[str, float]:
        t = self.clock.now_s()
        values = {k: float(v) for k, v in self.counts.items() if k in TELEMETRY_BY_NAME}
        values.update(frame_latency_ms_last=self.last_latency_ms, rss_mib=self.proc.memory_info().rss / 2**20,
                      cpu_percent=self.proc.cpu_percent(), store_products=self.store.pending(),
                      store_bytes=self.store.bytes(), mode=int(self.modes.mode),
                      errors_in_window=self.modes.errors_in_window(t), models_disabled=len(self.pipeline.disabled),
                      uplink_age_s=time.monotonic() - self.last_uplink if self.last_uplink else -1.0,
                      upload_chunks_received=sum(self.uploads.received(u) for u in self.uploads.open_ids()),
                      quicklooks_held=len(self.quicklooks.ring), rto_s=self.link_timer.rto_s,
                      store_state=self.store.state, store_ram_products=self.store.ram_products,
                      store_epoch=self.store.epoch, recent_frames_errors=self.recent.errors)
        for s in STAGES:
            values[f"stage_{s}_ms_last"] = self.last_stage_ms.get(s, 0.0)
        for name in KNOWN_MODELS:
            g = self.pipeline.models.get(name)
            a = self.model_store.active.get(name)
            on = g is not None and a is not None and name not in self.pipeline.disabled
            values[f"model_{name}_version"] = version_number(a.version) if on and a is not None else -1.0
            values[f"model_{name}_sha24"] = float(int(a.sha256[:6], 16)) if on and a is not None else -1.0
        return values

    def housekeeping(self, force: bool = False) -> None:
        t = self.clock.now_s()
        if self.next_hk_s > t + self.cfg.housekeeping_period_s:  # the clock stepped back: else none for the whole step
            self.next_hk_s = t
        if t < self.next_hk_s and not force:
            return
        self.next_hk_s = t + self.cfg.housekeeping_period_s
        channels = {TELEMETRY_BY_NAME[k].id: v for k, v in self.telemetry().items()}
        self._store(Apid.HOUSEKEEPING, t, lambda pid: housekeeping(pid, t, channels))
        if self.store_full and self.store.bytes() < 0.9 * self.store.max_bytes:
            self.store_full = False

    def check_memory(self) -> None:
        now = time.monotonic()
        if now < self.next_memory_check:
            return
        self.next_memory_check = now + 1.0
        rss = self.proc.memory_info().rss / 2**20
        ops, limit = self.sc.ops, self.sc.obc.memory_mib
        if self.modes.memory(rss, ops.memory_degraded_fraction * limit, ops.memory_safe_fraction * limit):
            self.quicklooks.clear()  # shed what is optional first

    def status(self, force: bool = False) -> None:
        self.svc.write_status(lambda: dict(
            self.counts, eos=self.eos, store_products=self.store.pending(), status_write_errors=self.svc.status_errors,
            peak_rss_mib=self.proc.memory_info().rss / 2**20 if force else None, cores=self.cores,
            last_latency_ms=self.last_latency_ms, mode=self.modes.mode.name, last_counter=self.auth.last_counter,
            disabled=sorted(self.pipeline.disabled), model_recovery=self.ops_state.model_recovery,
            models={n: self.model_store.active[n].version for n in self.pipeline.models if n in self.model_store.active},
            uploads={f"{u:08x}": self.uploads.received(u) for u in self.uploads.open_ids()},
            quicklooks=list(self.quicklooks.ring), contact_plan_windows=len(self.contact_plan.windows)), force=force)

    def stop_cleanly(self) -> None:
        """After the main loop, before the store closes. A frame still streaming is rejected with
        the reason (it was counted captured: silently dropped, captured != processed + rejected
        and nothing said why). The ack counters accepted since the last (rate-limited) save are
        written: kept in memory only, a restarted flight took a replay of those acks as new."""
        if self.pipeline.meta is not None:
            self.reject(self.pipeline.meta.frame_id, f"flight stopping ({self.svc.stop_reason}) mid-frame")
        if self.ack_auth.dirty:
            self.ack_auth.dirty = False
            self.ops_state.save()

    def drain_uplink(self, up: zmq.Socket) -> int:
        """The uplink packets waiting, at most UPLINK_PER_TURN of them: a flood faster than they can
        be handled (junk, forged acks) leaves the rest for the next turn instead of starving the
        frames, the downlink and systemd's watchdog. A real link brings a few per turn (an ack is
        7.5 ms of airtime at 64 kbit/s, a turn about 50 ms). Returns how many were taken."""
        n = 0
        while n < UPLINK_PER_TURN and up.poll(0):
            self.guarded("on_uplink", lambda: self.on_uplink(up.recv()))
            n += 1
        return n

    def run(self) -> int:
        net = self.sc.network
        ctx = SecureContext(self.sc.security, "flight", self.run_dir)
        frames = ctx.socket(zmq.PULL)
        frames.setsockopt(zmq.RCVHWM, 4)
        ctx.client(frames, "camera")
        frames.connect(net.frames)
        down = ctx.socket(zmq.PUSH)
        down.setsockopt(zmq.SNDHWM, 1000)
        ctx.client(down, "channel")
        down.connect(net.space_in)
        up = ctx.socket(zmq.PULL)
        ctx.client(up, "channel")
        up.connect(net.space_out)
        poller = zmq.Poller()
        poller.register(frames, zmq.POLLIN)
        poller.register(up, zmq.POLLIN)
        notifier = Notifier()  # systemd Type=notify + WatchdogSec (deploy/onboard-flight.service); no-op elsewhere
        notifier.ready(f"flight up, profile {self.sc.obc.profile}")
        try:
            while self.svc.running:
                notifier.watchdog()  # rate-limited; a turn stuck (e.g. inside onnxruntime) starves systemd's watchdog
                events = dict(poller.poll(50))
                if frames in events:
                    self.guarded("on_frame_message", lambda: self.on_frame_message(frames.recv_multipart(copy=False)))
                self.drain_uplink(up)
                self.guarded("apply_pending_models", self.apply_pending_models)
                self.guarded("retry_models", self.retry_models)
                self.guarded("pump_downlink", lambda: self.pump_downlink(down))
                self.guarded("housekeeping", self.housekeeping)
                self.guarded("check_memory", self.check_memory)
                self.guarded("check_frame_stall", self.check_frame_stall)
                self.guarded("scrub_models", self.scrub_models)
                self.guarded("store_maintenance", self.store_maintenance)
                self.guarded("status", self.status)
            self.guarded("stop_cleanly", self.stop_cleanly)
            self.emit("STOPPING", reason=self.svc.stop_reason)
            notifier.stopping(f"stopping: {self.svc.stop_reason}")
            self.guarded("status", lambda: self.status(force=True))  # a full disk must not turn a clean stop into a traceback
        finally:
            for s in (frames, down, up):
                s.close(linger=0)
            ctx.term()
            self.watchdog.close()
            self.store.close()
        return 0


def _peek_frame_id(header: bytes) -> int | None:
    """The frame id of a header not processed (SAFE mode), when it is a valid one; else None."""
    try:
        fid = parse_json_object(header[:MAX_HEADER_BYTES + 1], "header").get("frame_id") if len(header) <= MAX_HEADER_BYTES else None
    except ValueError:
        return None
    return fid if isinstance(fid, int) and not isinstance(fid, bool) and 0 <= fid <= FRAME_ID_MAX else None


DEFAULT_CONFIG = Path("/etc/onboard-payload/flight.toml")  # deploy/flight.toml; used when no scenario is given


def main(argv: list[str] | None = None) -> int:
    p = common_args("Onboard payload flight software")
    p.add_argument("--config", type=Path, default=None,
                   help=f"flight configuration TOML (a scenario file); default: {DEFAULT_CONFIG} when no scenario "
                        "is given and that file exists, else built-in defaults")
    p.add_argument("--calibration", type=Path, required=True, help="calibration products .npz")
    args = p.parse_args(argv)
    if args.config is not None and args.scenario is not None:
        p.error("give a scenario or --config, not both")
    if args.config is not None:
        args.scenario = str(args.config)
    elif args.scenario is None and DEFAULT_CONFIG.is_file():
        args.scenario = str(DEFAULT_CONFIG)
    scenario, clock = setup(args)
    run_dir = args.run_dir or Path("runs/flight")
    run_dir.mkdir(parents=True, exist_ok=True)
    app = FlightApp(scenario, clock, args.calibration, run_dir)
    return app.run()


if __name__ == "__main__":
    sys.exit(main())
