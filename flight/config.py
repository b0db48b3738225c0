"""Typed, validated scenario configuration.

One TOML file names everything a run needs (orbit, sensor, onboard computer, flight software,
link, ground, network). Each section is a frozen dataclass whose fields carry their allowed range;
loading fails fast with the key, the value and what was allowed. Unknown keys are errors too, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from flight.dictionary import MODEL_NAME_PATTERN, PNG_MAX_BYTES


class ConfigError(ValueError):
    """A configuration value is missing, mistyped or out of range. Carries the dotted key."""

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"config {key} = {value!r}: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


def rng(lo: float | None = None, hi: float | None = None, choices: tuple | None = None) -> dict:
    """Field metadata: the allowed range (inclusive) or set of choices."""
    return {"lo": lo, "hi": hi, "choices": choices}


def _check_scalar(key: str, value: Any, typ: Any, meta: dict) -> Any:
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:  # TOML integers have no size limit: 10**400 is not a float
            raise ConfigError(key, value, "must be a float (too large)") from None
    if typ in (int, float, str, bool) and (type(value) is not typ):
        raise ConfigError(key, value, f"must be {typ.__name__}")
    if typ is float and math.isnan(value):  # NaN passes every range comparison: refused by name
        raise ConfigError(key, value, "must be a number, not NaN")
    if typ is str and "\0" in value:  # every path and endpoint: open() and zmq raise a bare ValueError on a NUL
        raise ConfigError(key, value, "must not contain a NUL character")
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(key, value, f"must be one of {list(choices)}")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ConfigError(key, value, f"must be in [{lo}, {hi}]")
    return value


def _convert(key: str, value: Any, typ: Any, meta: dict) -> Any:
    origin = typing.get_origin(typ)
    args: Sequence[Any]  # a list of union members, or a tuple's type arguments
    if dataclasses.is_dataclass(typ):
        return build(cast(type, typ), value, key)  # a dataclass type here: hints are classes, not instances
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _convert(key, value, args[0], meta)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(key, value, "must be a list")
        args = typing.get_args(typ)
        item = args[0]
        return tuple(_convert(f"{key}[{i}]", v, item, meta) for i, v in enumerate(value))
    if origin is dict or typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, value, "must be a table")
        return dict(value)
    return _check_scalar(key, value, typ, meta)


def build(cls: type, data: Any, section: str) -> Any:
    """Build dataclass `cls` from a TOML table, validating every key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(section, data, "must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(f"{section}.{name}", data[name], f"unknown key; known keys: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{section}.{name}" if section else name
        if name in data:
            kwargs[name] = _convert(key, data[name], hints[name], dict(f.metadata))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(key, None, "is required")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check:
        check(section)
    return obj


# ---------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class ScenarioSection:
    name: str = "demo"
    seed: int = field(default=42, metadata=rng(0, 2**31 - 1))
    epoch: str = "2026-11-28T06:00:00Z"
    clock_rate: float = field(default=10.0, metadata=rng(0.001, 100000.0))
    frames: int = field(default=20, metadata=rng(0, 1_000_000))
    capture_interval_s: float = field(default=10.0, metadata=rng(0.001, 86400.0))
    start_s: float = field(default=0.0, metadata=rng(0.0, 1e7))  # scenario time of the first capture
    max_wall_s: float = field(default=600.0, metadata=rng(1.0, 86400.0))  # the launcher gives up after this
    # what scenario time 0 is when a process is given no --clock-start: "process", the moment it
    # starts (a simulation, a lab run), or "epoch", the epoch itself in real UTC: the on-board time
    # of a real flight, continuous across restarts (under "process" a restart by systemd set the
    # mission time back to the epoch: timestamps, contact plan and command time windows broke)
    clock_anchor: str = field(default="process", metadata=rng(choices=("process", "epoch")))

    def validate(self, section: str) -> None:
        from flight.clock import parse_epoch

        try:
            epoch = parse_epoch(self.epoch)
        except (ValueError, OverflowError) as exc:  # OverflowError: year 1 or 9999 shifted by its offset
            raise ConfigError(f"{section}.epoch", self.epoch, str(exc)) from None
        # every scenario time up to 2**31 s must fit a CCSDS CDS short time code (days since 1958, u16)
        if not 1958 <= epoch.year <= 2068:
            raise ConfigError(f"{section}.epoch", self.epoch, "must be in 1958..2068 (CCSDS CDS time codes end in 2137)")
        if self.clock_anchor == "epoch" and self.clock_rate != 1.0:
            raise ConfigError(f"{section}.clock_anchor", self.clock_anchor,
                              f"'epoch' is real time since the epoch: needs clock_rate 1.0, not {self.clock_rate}")
        # ... and a run reaches scenario time clock_rate * max_wall_s at most: within range each allowed
        # (100000 x 86400 s), the first packet after 2**31 s failed to pack ('H' format, the CDS day)
        if self.clock_rate * self.max_wall_s > 2**31:
            raise ConfigError(f"{section}.max_wall_s", self.max_wall_s, f"with clock_rate {self.clock_rate} a run would "
                              f"reach scenario time {self.clock_rate * self.max_wall_s:.3g} s; at most 2**31 s")


@dataclass(frozen=True)
class SensorSection:
    height: int = field(default=1024, metadata=rng(64, 16384))
    width: int = field(default=1024, metadata=rng(64, 16384))
    gsd_m: float = field(default=10.0, metadata=rng(0.1, 1000.0))
    strip_rows: int = field(default=128, metadata=rng(8, 4096))  # rows per strip message (pushbroom readout)
    source: str = "synthetic"  # "synthetic" or a path to a real-scene .npz
    cloud_cover: float | None = field(default=None, metadata=rng(0.0, 1.0))  # None: drawn per frame

    def validate(self, section: str) -> None:
        if self.height % self.strip_rows:
            raise ConfigError(f"{section}.strip_rows", self.strip_rows, f"must divide height {self.height}")


@dataclass(frozen=True)
class ObcSection:
    """The simulated onboard computer the flight process runs inside."""

    profile: str = "generic-1core"
    cores: tuple[int, ...] = (0,)  # CPU affinity; cores absent on this machine are dropped with a warning
    threads: int = field(default=1, metadata=rng(1, 64))  # onnxruntime intra-op threads
    memory_mib: int = field(default=512, metadata=rng(64, 65536))  # ceiling, reported against peak RSS


@dataclass(frozen=True)
class CascadeStep:
    model: str  # card name under models/
    when: str = field(default="all", metadata=rng(choices=("all", "clear_water", "clear_land")))
    enabled: bool = True
    # prescreen: skip tiles whose brightest pixel in contrast_band is less than min_contrast above
    # the tile's mean in that band (reflectance x 10000; 0 = run on every selected tile). Chosen per
    # model version by models/prescreen.py (ship_detect 2.1.1: nir 150; fire_detect 2.0.1: swir22 4000)
    contrast_band: str = field(default="nir", metadata=rng(choices=("blue", "green", "red", "nir", "swir16", "swir22")))
    min_contrast: float = field(default=0.0, metadata=rng(0.0, 65535.0))


@dataclass(frozen=True)
class FlightSection:
    tile_px: int = field(default=64, metadata=rng(16, 512))
    batch_tiles: int = field(default=64, metadata=rng(1, 4096))
    cloud_discard_fraction: float = field(default=0.7, metadata=rng(0.0, 1.0))
    clear_tile_max_cloud: float = field(default=0.3, metadata=rng(0.0, 1.0))  # detectors skip cloudier tiles
    water_ndwi_min: float = field(default=0.2, metadata=rng(-1.0, 1.0))  # tile mean NDWI above this = water
    cascade: tuple[CascadeStep, ...] = (CascadeStep("cloud_screen"),)
    chips_per_frame: int = field(default=2, metadata=rng(0, 64))
    chip_px: int = field(default=32, metadata=rng(8, 256))
    chip_max_bytes: int = field(default=4096, metadata=rng(256, PNG_MAX_BYTES))  # a chip's PNG must fit one TM packet
    chip_classes: tuple[str, ...] = ("fire",)
    max_detections_per_frame: int = field(default=64, metadata=rng(0, 10000))
    merge_px: float = field(default=8.0, metadata=rng(0.0, 512.0))  # same-class peaks closer than this are one object
    store_max_bytes: int = field(default=64 * 1024 * 1024, metadata=rng(4096, 2**40))
    downlink_window: int = field(default=64, metadata=rng(1, 100000))  # unacknowledged packets in flight
    # Adaptive retransmission (flight/retransmit.py, docs/link.md): the timeout is learned from
    # round trips (RFC 6298, Karn's rule) and runs from when a packet has left the radio.
    retransmit_s: float = field(default=2.0, metadata=rng(0.01, 3600.0))  # initial timeout, wall s, before any round trip
    rto_min_s: float = field(default=1.0, metadata=rng(0.01, 3600.0))  # RFC 6298's floor: covers the ground's ack period
    rto_max_s: float = field(default=60.0, metadata=rng(0.01, 86400.0))  # back-off ceiling (RFC 6298: >= 60 s; > ground.ack_period_s)
    radio_rate_bps: float = field(default=0.0, metadata=rng(0.0, 1e10))  # transmitter bit rate; 0 = link.downlink_rate_bps
    # airtime queued in the radio at once: > the loop's longest stall (a 2048^2 frame, p99 0.2 s) so
    # the radio never idles; small so an alert waits little (4 kbit/s: 0.7 s median vs 4.2 s at 2 s)
    radio_queue_max_s: float = field(default=0.5, metadata=rng(0.01, 3600.0))
    # while nothing is acknowledged for a whole timeout (a contact gap), re-send one packet per
    # timeout instead of every expired one (false: every expired packet, the behaviour before #12)
    probe_when_silent: bool = True
    # the onboard contact plan (flight/contacts.py, issue #13): nothing goes to the radio outside its
    # windows, nor near LOS what could not be acknowledged before it; false: the plan is ignored
    # (and the launcher preloads none): the flight finds gaps by silence only
    use_contact_plan: bool = True
    contact_margin_s: float = field(default=1.0, metadata=rng(0.0, 3600.0))  # scenario s kept clear before LOS (clock error)
    housekeeping_period_s: float = field(default=30.0, metadata=rng(0.1, 86400.0))  # scenario seconds
    # "stream": calibration tables read strip by strip from a file next to the .npz (RSS flat with
    # frame size, +0.8 ms per 2048^2 frame); "memory": held in RAM (2 bytes per pixel-band)
    calibration_tables: str = field(default="stream", metadata=rng(choices=("stream", "memory")))
    # onnxruntime's CPU memory arena, with the pipeline's strip arrays reused (docs/benchmarks.md,
    # ninth round): flat over a 16,000-frame soak at 98.5 MiB, where off crept to 108.7 MiB (its
    # +1.3 MiB in the second half), at the same speed; off frees each run's buffers (the NOTES.md setting)
    onnx_memory_arena: bool = True
    # the native kernels (flight/native, issue #16: calibration, the models' input, tile statistics
    # and peaks, each one pass where numpy/OpenCV take several, the same results bit for bit; 15-30
    # ms less per 2048^2 frame): "auto" uses each where it loads and matches the numpy/OpenCV path,
    # else that path, with a NATIVE_KERNELS event saying what runs and why; "required": start-up
    # fails when the library does not load or its calibration does not match; "off": never loaded
    native_kernels: str = field(default="auto", metadata=rng(choices=("auto", "required", "off")))

    def validate(self, section: str) -> None:
        for i, step in enumerate(self.cascade):
            # a model is commanded by a 16-byte name (ENABLE_MODEL, UPLOAD_BEGIN, ...): one that does
            # not fit could never be addressed, and "../x" is no model name at all
            if not re.fullmatch(MODEL_NAME_PATTERN, step.model):
                raise ConfigError(f"{section}.cascade[{i}].model", step.model,
                                  "must be a model name: a-z, 0-9, _, at most 16 characters, first a letter")
        if not self.cascade or self.cascade[0].model != "cloud_screen":
            raise ConfigError(f"{section}.cascade", self.cascade, "must start with the cloud_screen model")
        names = [step.model for step in self.cascade]
        for i, name in enumerate(names):
            if name in names[:i]:  # one set of models by name: a second step would run it twice
                raise ConfigError(f"{section}.cascade[{i}].model", name, "each model at most once in the cascade")
        # settings of the screen step that would be silently ignored: the screen sees every tile
        screen = self.cascade[0]
        for key, value, ok in (("min_contrast", screen.min_contrast, screen.min_contrast == 0),
                               ("when", screen.when, screen.when == "all"), ("enabled", screen.enabled, screen.enabled)):
            if not ok:
                raise ConfigError(f"{section}.cascade[0].{key}", value,
                                  "the cloud screen runs on every tile: when, enabled and a prescreen apply to detector steps only")
        # a chip is made for a detection class (ship, fire) or a detector without one (its model name):
        # any other entry silently makes no chips
        chip_names = {"ship", "fire"} | {step.model for step in self.cascade[1:]}
        for i, name in enumerate(self.chip_classes):
            if name not in chip_names:
                raise ConfigError(f"{section}.chip_classes[{i}]", name, f"must be one of {sorted(chip_names)}")
        if self.rto_min_s > self.rto_max_s:
            raise ConfigError(f"{section}.rto_min_s", self.rto_min_s, f"must be <= rto_max_s ({self.rto_max_s})")


@dataclass(frozen=True)
class LinkSection:
    downlink_rate_bps: float = field(default=1_000_000.0, metadata=rng(100.0, 1e10))
    uplink_rate_bps: float = field(default=64_000.0, metadata=rng(100.0, 1e10))
    delay_ms: float = field(default=5.0, metadata=rng(0.0, 600_000.0))
    queue_max_packets: int = field(default=100_000, metadata=rng(1, 10_000_000))
    # Loss: "none", "random" (independent, loss_rate) or "gilbert_elliott" (bursty two-state chain)
    loss_model: str = field(default="none", metadata=rng(choices=("none", "random", "gilbert_elliott")))
    loss_rate: float = field(default=0.0, metadata=rng(0.0, 1.0))
    ge_p_good_to_bad: float = field(default=0.01, metadata=rng(0.0, 1.0))  # per packet
    ge_p_bad_to_good: float = field(default=0.3, metadata=rng(0.0, 1.0))
    ge_loss_good: float = field(default=0.0, metadata=rng(0.0, 1.0))
    ge_loss_bad: float = field(default=0.5, metadata=rng(0.0, 1.0))
    bit_error_rate: float = field(default=0.0, metadata=rng(0.0, 0.1))  # per bit, flipped in the packet
    # Contact windows: "always" (link always up), "orbit" (from the orbit and ground stations of the
    # scenario) or "schedule" (the explicit [aos_s, los_s] pairs below, scenario seconds)
    contacts: str = field(default="always", metadata=rng(choices=("always", "orbit", "schedule")))
    # scenario seconds; within a CDS time code's reach of the epoch, as the flight's contact plan
    # (flight/contacts.py): inf or 1e300 crashed the launcher's plan writer (datetime overflow)
    schedule: tuple[tuple[float, ...], ...] = field(default=(), metadata=rng(-2.0**31, 2.0**31))
    seed: int = field(default=7, metadata=rng(0, 2**31 - 1))  # loss and bit errors are reproducible
    # appended (issue #13, uplink flow control and file transfer; docs/link.md, docs/operations.md)
    uplink_loss_rate: float | None = field(default=None, metadata=rng(0.0, 1.0))  # random loss on the uplink only; None: as the downlink
    uplink_bulk_queue_s: float = field(default=1.5, metadata=rng(0.05, 600.0))  # airtime of bulk data (file PDUs) the ground keeps queued at most

    def validate(self, section: str) -> None:
        for i, pair in enumerate(self.schedule):
            if len(pair) != 2 or not pair[0] < pair[1]:
                raise ConfigError(f"{section}.schedule[{i}]", list(pair), "must be [aos_s, los_s] with aos_s < los_s")
        if self.contacts == "schedule" and not self.schedule:
            raise ConfigError(f"{section}.schedule", [], 'contacts = "schedule" needs at least one [aos_s, los_s] pair')


@dataclass(frozen=True)
class AlertRule:
    """A detection raises an alert at the ground when it matches every condition of a rule (the
    first matching rule, in file order, gives the severity)."""

    class_name: str = field(default="fire", metadata=rng(choices=("ship", "fire", "cloud")))
    min_confidence: float = field(default=0.5, metadata=rng(0.0, 1.0))
    severity: str = field(default="warning", metadata=rng(choices=("info", "warning", "critical")))
    area_px_min: int = field(default=0, metadata=rng(0, 65535))
    area_px_max: int = field(default=65535, metadata=rng(0, 65535))
    region: tuple[float, ...] = ()  # [lat0_deg, lon0_deg, lat1_deg, lon1_deg]; empty = anywhere
    # Repeats: an alert of the same class within throttle_km and throttle_s (scenario seconds) of one
    # already shown is archived and counted as throttled but not shown again. 0 turns it off.
    throttle_km: float = field(default=5.0, metadata=rng(0.0, 20000.0))
    throttle_s: float = field(default=600.0, metadata=rng(0.0, 1e7))

    def validate(self, section: str) -> None:
        if self.area_px_min > self.area_px_max:
            raise ConfigError(f"{section}.area_px_min", self.area_px_min, f"must be <= area_px_max {self.area_px_max}")
        if self.region:
            if len(self.region) != 4:
                raise ConfigError(f"{section}.region", list(self.region), "must be [lat0_deg, lon0_deg, lat1_deg, lon1_deg]")
            lat0, lon0, lat1, lon1 = self.region
            if not (-90 <= lat0 <= lat1 <= 90):
                raise ConfigError(f"{section}.region", list(self.region), "latitudes must satisfy -90 <= lat0 <= lat1 <= 90")
            if not (-180 <= lon0 <= 180 and -180 <= lon1 <= 180):
                raise ConfigError(f"{section}.region", list(self.region), "longitudes must be in [-180, 180] (lon0 > lon1 crosses 180)")


@dataclass(frozen=True)
class GroundSection:
    alerts: tuple[AlertRule, ...] = (
        AlertRule("fire", 0.5, "critical"),
        AlertRule("ship", 0.5, "info"),
    )
    ack_period_s: float = field(default=0.2, metadata=rng(0.001, 60.0))  # wall seconds between acks
    alerts_file: str = ""  # also append alerts as JSON lines here (relative: to the run folder); "" = off
    # Operator console (issue #14, ground_link/console, docs/console.md): the launcher starts it on
    # this loopback port; 0 = a free port, -1 = off (`python -m payload_sim.hil --console` = 0)
    console_port: int = field(default=-1, metadata=rng(-1, 65535))
    partners_file: str = ""  # partner logins and access rules (ground_link/partners.py); "" = the demo's


@dataclass(frozen=True)
class NetworkSection:
    """ZeroMQ endpoints. The camera and the link channel bind; flight and station connect."""

    frames: str = "tcp://127.0.0.1:7101"  # camera PUSH -> flight PULL
    space_in: str = "tcp://127.0.0.1:7102"  # flight PUSH -> channel (downlink in)
    space_out: str = "tcp://127.0.0.1:7103"  # channel -> flight PULL (uplink out)
    ground_out: str = "tcp://127.0.0.1:7104"  # channel -> station PULL (downlink out)
    ground_in: str = "tcp://127.0.0.1:7105"  # station PUSH -> channel (uplink in)
    feed: str = ""  # station PUB of alerts (topic b"alert") for other tools; "" = no feed


@dataclass(frozen=True)
class OpsSection:
    """Flight operations and fault protection (docs/operations.md): modes, error budget, watchdog,
    memory pressure, quicklook ring, model updates."""

    state_dir: str = ""  # flight state (models, uploads, command counter); "" = the run folder
    error_budget: int = field(default=3, metadata=rng(0, 100000))  # more errors than this in the window: SAFE
    error_window_s: float = field(default=600.0, metadata=rng(1.0, 1e7))  # scenario seconds
    watchdog_limit_s: float = field(default=5.0, metadata=rng(0.01, 3600.0))  # wall seconds one stage call may take
    # wall seconds without a strip before a frame in progress is dropped: a camera that stopped
    # mid-frame held it open for good (no result, pending model swaps never applied, no report)
    frame_stall_s: float = field(default=10.0, metadata=rng(0.1, 86400.0))
    memory_degraded_fraction: float = field(default=0.85, metadata=rng(0.1, 1.0))  # of obc.memory_mib: DEGRADED
    memory_safe_fraction: float = field(default=0.95, metadata=rng(0.1, 1.0))  # of obc.memory_mib: SAFE
    quicklook_frames: int = field(default=4, metadata=rng(0, 64))  # recent frames kept as quicklooks
    quicklook_factor: int = field(default=8, metadata=rng(choices=(1, 2, 4, 8, 16, 32, 64)))  # downsampling
    quicklook_max_bytes: int = field(default=32768, metadata=rng(1024, PNG_MAX_BYTES))  # PNG size limit per packet
    recent_frames_full_res: int = field(default=4, metadata=rng(0, 64))  # frames kept at full resolution on mass memory, for chips
    model_scrub_period_s: float = field(default=60.0, metadata=rng(0.0, 1e7))  # re-hash model files; 0 = off
    model_probation_frames: int = field(default=10, metadata=rng(0, 100000))  # run-time failure: roll back
    # a detector switched off by a run-time fault or a watchdog trip (not by DISABLE_MODEL) is switched
    # on again after model_retry_s scenario seconds (the on-board clock), at most model_retries times
    # until ENABLE_MODEL resets the count; 0 retries: off until ENABLE_MODEL (the behaviour before)
    model_retry_s: float = field(default=300.0, metadata=rng(1.0, 1e7))
    model_retries: int = field(default=3, metadata=rng(0, 100))
    upload_max_bytes: int = field(default=16 * 1024 * 1024, metadata=rng(1024, 2**31 - 1))
    # input-driven events (rejected frames, bad uplink packets, refused commands and acks): at most
    # this many of one type per window; the rest are counted in telemetry (events_suppressed)
    event_burst: int = field(default=100, metadata=rng(1, 1_000_000))
    event_window_s: float = field(default=60.0, metadata=rng(1.0, 1e7))  # scenario seconds
    # appended (issue #13): file transfers (CFDP, flight/filetransfer.py)
    file_inactivity_s: float = field(default=7200.0, metadata=rng(1.0, 1e8))  # scenario s without a PDU before an open transfer is given up
    files_kept: int = field(default=4, metadata=rng(1, 64))  # received files kept on board (oldest deleted first)
    # product store folder; "" = the run folder, relative: to the run folder. Not created: a missing
    # mount runs the store RAM-only (issue #12) until the folder appears
    store_dir: str = ""
    store_ram_max_bytes: int = field(default=4 * 1024 * 1024, metadata=rng(4096, 2**31 - 1))  # RAM buffer while the store cannot write

    def validate(self, section: str) -> None:
        if self.memory_degraded_fraction > self.memory_safe_fraction:
            raise ConfigError(f"{section}.memory_degraded_fraction", self.memory_degraded_fraction,
                              f"must be <= memory_safe_fraction {self.memory_safe_fraction}")


@dataclass(frozen=True)
class SecuritySection:
    """Command authentication and link encryption (docs/operations.md). Key material never lives in
    the scenario: only the paths to it (environment variables FLIGHT_MISSION_KEY / _FILE override)."""

    command_key_file: str = ""  # hex mission key (HMAC-SHA256); relative paths: to the run folder
    counter_window: int = field(default=1000, metadata=rng(1, 2**32))  # accepted: last < counter <= last + window
    command_time_window_s: float = field(default=600.0, metadata=rng(0.0, 1e7))  # |now - issued|; 0 = off
    curve: bool = True  # CURVE encryption and authentication on every ZeroMQ link; off only in a lab scenario
    curve_dir: str = ""  # per-run certificates; "" = RUN_DIR/curve
    ack_source_id: int = field(default=1, metadata=rng(1, 2**16 - 1))  # the station's PUS source id in its acks (flight.acks)


# --- issue #18: a constellation of satellites and a ground of several stations (docs/ground.md) ---


@dataclass(frozen=True)
class StationLink:
    """One satellite a station talks to: the link's ground-side endpoints (the channel of that
    (satellite, station) pair) and the satellite's mission key, which signs the acks to it."""

    satellite_id: int = field(metadata=rng(1, 65535))
    ground_out: str = ""  # channel -> station PULL (downlink out)
    ground_in: str = ""  # station PUSH -> channel (uplink in)
    command_key_file: str = ""  # that satellite's mission key; "" = security.command_key_file


@dataclass(frozen=True)
class StationSection:
    """Who this station is and where it archives. The defaults are the single-station ground:
    satellite 1 behind network.ground_out/ground_in, an SQLite archive in the run folder."""

    name: str = ""  # recorded with each product, packet and alert it archives; "" = unnamed
    satellite_id: int = field(default=1, metadata=rng(1, 65535))  # the satellite of network.ground_* (no links)
    archive: str = ""  # "" = RUN_DIR/archive.sqlite; an SQLite path, or postgresql://... (shared)
    links: tuple[StationLink, ...] = ()  # a constellation: one link per satellite (network.ground_* unused)
    # acks also carry the ids of the satellite's products other stations archived in the last
    # shared_ack_s wall seconds, while this station hears the satellite (0 = off)
    shared_ack_s: float = field(default=30.0, metadata=rng(0.0, 86400.0))

    def validate(self, section: str) -> None:
        ids = [link.satellite_id for link in self.links]
        if len(set(ids)) != len(ids):  # the station keys its sockets and keys by satellite: a second link replaced the first
            raise ConfigError(f"{section}.links", ids, "one link per satellite: satellite ids must be unique")


@dataclass(frozen=True)
class SatelliteSpec:
    """One satellite of a constellation: its own flight process, orbit, mission key and products."""

    id: int = field(metadata=rng(1, 65535))
    name: str = ""  # "" = "sat<id>"
    tle1: str = ""  # "" = orbit.tle1 (or the default TLE)
    tle2: str = ""
    seed: int | None = field(default=None, metadata=rng(0, 2**31 - 1))  # scenes; None = scenario.seed + id
    command_key_file: str = ""  # "" = the launcher writes one per satellite


@dataclass(frozen=True)
class ConstellationSection:
    """N satellites x M stations (payload_sim.constellation). Empty: the single-satellite run."""

    satellites: tuple[SatelliteSpec, ...] = ()
    stations: tuple[str, ...] = ()  # names of [[ground_stations]] that run a station; () = all of them
    # "postgresql": a throwaway local server (falls back to a shared SQLite file when PostgreSQL is
    # absent, saying so), "sqlite", or a postgresql:// URL of a running server
    archive: str = "postgresql"

    def validate(self, section: str) -> None:
        ids = [s.id for s in self.satellites]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{section}.satellites", ids, "satellite ids must be unique")
        if self.archive not in ("postgresql", "sqlite") and not self.archive.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"{section}.archive", self.archive, 'must be "postgresql", "sqlite" or a postgresql:// URL')


@dataclass(frozen=True)
class Scenario:
    scenario: ScenarioSection = ScenarioSection()
    sensor: SensorSection = SensorSection()
    obc: ObcSection = ObcSection()
    flight: FlightSection = FlightSection()
    link: LinkSection = LinkSection()
    ground: GroundSection = GroundSection()
    network: NetworkSection = NetworkSection()
    ops: OpsSection = OpsSection()
    security: SecuritySection = SecuritySection()
    station: StationSection = StationSection()  # issue #18
    constellation: ConstellationSection = ConstellationSection()  # issue #18
    extra: dict = field(default_factory=dict)  # sections owned by the simulator (orbit, stations, faults)


KNOWN_SECTIONS = {f.name for f in dataclasses.fields(Scenario)} - {"extra"}
SIM_SECTIONS = {"orbit", "ground_stations", "faults", "expect"}


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` overrides (value parsed as TOML, else taken as a string)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(item, raw, "override must look like section.key=value")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


def load_scenario(path: str | Path | None, overrides: list[str] | None = None) -> Scenario:
    """Load and validate a scenario file (None = all defaults)."""
    data: dict = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(str(path), None, f"cannot read scenario: {exc}") from exc
    data = apply_overrides(data, overrides or [])
    unknown = set(data) - KNOWN_SECTIONS - SIM_SECTIONS
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(name, data[name], f"unknown section; known: {sorted(KNOWN_SECTIONS | SIM_SECTIONS)}")
    kwargs = {name: build(typing.get_type_hints(Scenario)[name], data.get(name), name) for name in KNOWN_SECTIONS}
    extra = {k: v for k, v in data.items() if k in SIM_SECTIONS}
    sc = Scenario(**kwargs, extra=extra)
    check_packable(sc)
    return sc


def check_packable(sc: Scenario) -> None:
    """Cross-section limits from the packet fields values end up in: fail at start-up, never at
    packing time. A frame summary counts its tiles in a u16."""
    tiles = (sc.sensor.height // sc.flight.tile_px) * (sc.sensor.width // sc.flight.tile_px)
    if tiles > 0xFFFF:
        raise ConfigError("sensor.height", sc.sensor.height, f"with sensor.width {sc.sensor.width} and flight.tile_px "
                          f"{sc.flight.tile_px} a frame has {tiles} tiles; the frame summary holds at most 65535")
