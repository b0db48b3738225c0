"""The mission dictionary: every packet type, event and telemetry channel, declared once.

Flight builds packets from it and the ground decodes with it; `ground_link.xtce` exports it for
other ground systems. Numeric ids are stable: never renumber, only append.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

# --- packets --------------------------------------------------------------------------------
# Telemetry (flight -> ground): ECSS PUS-C TM packets with a CDS short time code and CRC-16.
# One APID per product type, so a ground system can route and count them without decoding.


class Apid(IntEnum):
    FRAME_SUMMARY = 0x101
    DETECTION = 0x102
    IMAGE_CHIP = 0x103
    HOUSEKEEPING = 0x104
    EVENT = 0x105
    # Telecommand (ground -> flight)
    GROUND_ACK = 0x181
    # appended (issue #7, flight operations)
    COMMAND_REPORT = 0x106  # TM: PUS service 1 verification reports of telecommands
    COMMAND = 0x182  # TC: authenticated telecommands (flight.commands)
    # appended (issue #13, file transfer: flight.filetransfer). CFDP PDUs in space packets without
    # secondary header; not products (no store, no product acks: CFDP recovers its own losses)
    FILE_DATA = 0x183  # TC: CFDP PDUs ground -> flight (Metadata, File Data, EOF, ACK of Finished); bulk on the uplink
    FILE_REPLY = 0x107  # TM: CFDP PDUs flight -> ground (ACK of EOF, NAK, Finished)


PRODUCT_SERVICE = 200  # mission-specific PUS service for payload products
ACK_SERVICE = 201  # mission-specific PUS service for product acknowledgements
HOUSEKEEPING_SERVICE = 3  # PUS housekeeping
HOUSEKEEPING_SUBTYPE = 25  # housekeeping parameter report
EVENT_SERVICE = 5  # PUS event reporting; subtype = severity (1 info .. 4 high)
TIMESTAMP_LEN = 7  # CDS short: 2 bytes day, 4 bytes ms of day


class Priority(IntEnum):
    """Downlink order (lower goes first); the store evicts the highest number first."""

    ALERT = 0
    EVENT = 1
    SUMMARY = 2
    CHIP = 3
    TELEMETRY = 4


APID_PRIORITY = {
    Apid.DETECTION: Priority.ALERT,
    Apid.EVENT: Priority.EVENT,
    Apid.FRAME_SUMMARY: Priority.SUMMARY,
    Apid.IMAGE_CHIP: Priority.CHIP,
    Apid.HOUSEKEEPING: Priority.TELEMETRY,
    Apid.COMMAND_REPORT: Priority.EVENT,
}


class DetectionClass(IntEnum):
    SHIP = 1
    FIRE = 2


# --- events -----------------------------------------------------------------------------------


class Severity(IntEnum):
    INFO = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4


@dataclass(frozen=True)
class EventDef:
    id: int
    name: str
    severity: Severity
    fmt: str  # str.format template over the event's keyword arguments


EVENTS: dict[str, EventDef] = {
    e.name: e
    for e in (
        EventDef(1, "FRAME_REJECTED", Severity.MEDIUM, "frame {frame_id} rejected: {reason}"),
        EventDef(2, "FRAME_DISCARDED_CLOUDY", Severity.INFO, "frame {frame_id} {cloud_pct:.0f}% cloud >= {limit_pct:.0f}%: discarded"),
        EventDef(3, "MODEL_LOADED", Severity.INFO, "model {model} {version} loaded (sha256 {sha8})"),
        EventDef(4, "MODEL_REFUSED", Severity.HIGH, "model {model} refused: {reason}"),
        EventDef(5, "STAGE_ERROR", Severity.HIGH, "stage {stage} failed on frame {frame_id}: {reason}"),
        EventDef(6, "STORE_EVICTED", Severity.MEDIUM, "store full: evicted product {product_id} (priority {priority})"),
        EventDef(7, "BAD_UPLINK_PACKET", Severity.LOW, "uplink packet dropped: {reason}"),
        EventDef(8, "STARTED", Severity.INFO, "flight software started, profile {profile}"),
        EventDef(9, "STOPPING", Severity.INFO, "flight software stopping: {reason}"),
        # appended (issue #7): commands, modes, faults, model updates
        EventDef(10, "COMMAND_ACCEPTED", Severity.INFO, "command {counter} {name} accepted"),
        EventDef(11, "COMMAND_REJECTED", Severity.MEDIUM, "command {counter} {name} rejected: {reason}"),
        EventDef(12, "COMMAND_AUTH_FAILED", Severity.HIGH, "command {counter} refused ({kind}): {reason}"),
        EventDef(13, "COMMAND_COMPLETED", Severity.INFO, "command {counter} {name} completed: {detail}"),
        EventDef(14, "COMMAND_FAILED", Severity.MEDIUM, "command {counter} {name} failed: {reason}"),
        EventDef(15, "MODE_CHANGED", Severity.HIGH, "mode {old} -> {new}: {reason}"),
        EventDef(16, "STAGE_WATCHDOG", Severity.HIGH, "stage {stage} stuck {elapsed_s:.2f} s > limit {limit_s:.2f} s on frame {frame_id}: aborted"),
        EventDef(17, "ERROR_BUDGET_EXCEEDED", Severity.HIGH, "{errors} errors in {window_s:.0f} s exceed the budget of {budget}"),
        EventDef(18, "MEMORY_PRESSURE", Severity.HIGH, "resident memory {rss_mib:.0f} MiB >= {limit_mib:.0f} MiB ({level})"),
        EventDef(19, "MODEL_DISABLED", Severity.MEDIUM, "model {model} disabled: {reason}"),
        EventDef(20, "MODEL_ENABLED", Severity.INFO, "model {model} enabled"),
        EventDef(21, "MODEL_ACTIVATED", Severity.INFO, "model {model} {version} active (sha256 {sha8}), was {previous}"),
        EventDef(22, "MODEL_UPDATE_FAILED", Severity.HIGH, "model {model} update {upload_id:08x} failed: {reason}"),
        EventDef(23, "MODEL_ROLLED_BACK", Severity.HIGH, "model {model} rolled back {from_version} -> {to_version}: {reason}"),
        EventDef(24, "MODEL_CORRUPTED", Severity.HIGH, "model {model} {version} corrupted on disk: {reason}"),
        EventDef(25, "STORE_FULL", Severity.HIGH, "store full, products refused: {reason}"),
        EventDef(26, "PARAMETER_SET", Severity.INFO, "parameter {name} = {value} (was {old})"),
        EventDef(27, "UPLOAD_PROGRESS", Severity.INFO, "upload {upload_id:08x} {model}: {received}/{chunks} chunks {state}"),
        EventDef(28, "STORE_CLEARED", Severity.MEDIUM, "store: {detail}"),
        EventDef(29, "MODEL_RUN_FAILED", Severity.HIGH, "model {model} {version} failed at run time on frame {frame_id}: {reason}"),
        # appended (issue #12): robustness
        EventDef(30, "SOFTWARE_FAULT", Severity.HIGH, "unexpected error in {handler}: {reason} (kept running)"),
        EventDef(31, "STORE_QUARANTINED", Severity.HIGH, "store unreadable ({reason}): kept as {moved}, fresh store epoch {epoch}"),
        EventDef(32, "STORE_DEGRADED", Severity.HIGH, "store cannot write ({reason}): products held in RAM (at most {limit_bytes} bytes)"),
        EventDef(33, "STORE_RECOVERED", Severity.INFO, "store writable again: {moved} products moved from RAM to the store"),
        EventDef(34, "ACK_REJECTED", Severity.HIGH, "acknowledgement refused ({kind}): {reason}"),
        EventDef(35, "MODE_RESTORED", Severity.INFO, "restarted in mode {mode} ({errors} errors in the budget window)"),
        EventDef(36, "INPUT_REJECTED", Severity.LOW, "{source} input rejected: {reason}"),
        EventDef(37, "STATE_RESTORED", Severity.HIGH, "{file} unreadable ({reason}): restored from its previous copy"),
        # appended (issue #13): file transfers (CFDP)
        EventDef(38, "FILE_RECEIVED", Severity.INFO, "file {name} received: {size} bytes, sha256 {sha8}, transaction {seq} in {took_s:.0f} s"),
        EventDef(39, "FILE_TRANSFER_FAILED", Severity.MEDIUM, "file transfer {seq} failed: {reason}"),
        # appended (issue #13): the onboard contact plan (flight/contacts.py)
        EventDef(40, "CONTACT_PLAN_LOADED", Severity.INFO, "contact plan from {source}: {windows} windows, {first} to {last}"),
        EventDef(41, "CONTACT_PLAN_REFUSED", Severity.MEDIUM, "contact plan from {source} refused: {reason}"),
        EventDef(42, "CONTACT_PLAN_ENDED", Severity.MEDIUM, "contact plan ended at {last}: sending as without a plan until a new one is loaded"),
        # appended (issue #16): a detector prescreen the loaded model's card does not validate
        EventDef(43, "PRESCREEN_LIMITED", Severity.MEDIUM, "{model} {version}: prescreen {band} cut {requested:g} -> {applied:g}: {reason}"),
        EventDef(44, "RECENT_FRAMES_FAULT", Severity.MEDIUM, "{reason}: frames go on; chips of recent frames come from quicklooks"),
        # appended: the calibration table file failed a read or a scrub; remade from the products file, or not
        EventDef(45, "CALIBRATION_TABLES_FAULT", Severity.MEDIUM, "calibration table file: {reason}"),
        # appended (issue #16): at start-up, what the native kernels do (flight.native_kernels), and why not
        EventDef(46, "NATIVE_KERNELS", Severity.INFO, "native kernels: {note}"),
    )
}
EVENTS_BY_ID = {e.id: e for e in EVENTS.values()}


# --- telemetry channels ---------------------------------------------------------------------


@dataclass(frozen=True)
class Channel:
    id: int
    name: str  # units live in the name
    description: str
    # appended (issue #13): limits for ground displays, exported as XTCE alarm ranges. (lo, hi),
    # inclusive, None for an open end: a value outside `warn` is a warning (yellow), outside `alarm`
    # critical (red). None: no limit.
    warn: tuple[float | None, float | None] | None = None
    alarm: tuple[float | None, float | None] | None = None


TELEMETRY: tuple[Channel, ...] = (
    Channel(1, "frames_captured", "frames announced by the camera"),
    Channel(2, "frames_processed", "frames that went through the whole pipeline"),
    Channel(3, "frames_rejected", "frames rejected at ingest or by a stage", warn=(None, 0)),
    Channel(4, "frame_latency_ms_last", "ingest-to-packets wall time of the last frame"),
    Channel(5, "rss_mib", "resident memory of the flight process", warn=(None, 435.2), alarm=(None, 486.4)),  # 85 % / 95 % of the default obc.memory_mib 512: DEGRADED / SAFE
    Channel(6, "cpu_percent", "CPU use of the flight process since the last report"),
    Channel(7, "store_products", "products waiting for a ground acknowledgement"),
    Channel(8, "store_bytes", "bytes of products waiting in the store"),
    Channel(9, "packets_sent", "packets handed to the radio, retransmissions included"),
    Channel(10, "packets_retransmitted", "packets sent again after no acknowledgement"),
    Channel(11, "products_acked", "products acknowledged by the ground"),
    Channel(12, "errors", "stage errors counted against the error budget", warn=(None, 0)),
    Channel(13, "uplink_rejected", "uplink packets dropped as malformed", warn=(None, 0)),
    # appended (issue #7)
    Channel(14, "mode", "operating mode: 0 NOMINAL, 1 DEGRADED, 2 SAFE", warn=(0, 0), alarm=(0, 1)),
    Channel(15, "commands_accepted", "telecommands that passed authentication and argument checks"),
    Channel(16, "commands_rejected", "telecommands rejected, every reason", warn=(None, 0)),
    Channel(17, "commands_forged", "telecommands with a bad MAC (forged or altered)", alarm=(None, 0)),
    Channel(18, "commands_replayed", "telecommands with a counter already used", warn=(None, 0)),
    Channel(19, "commands_out_of_window", "telecommands outside the counter or time window", warn=(None, 0)),
    Channel(20, "commands_failed", "accepted telecommands whose execution failed", warn=(None, 0)),
    Channel(21, "watchdog_trips", "stage calls aborted by the watchdog", warn=(None, 0)),
    Channel(22, "errors_in_window", "errors counted in the error-budget window", warn=(None, 0), alarm=(None, 2)),  # at the default ops.error_budget 3, one more gives SAFE
    Channel(23, "models_rolled_back", "automatic or commanded model rollbacks", warn=(None, 0)),
    Channel(24, "models_disabled", "models switched off (by command or after a fault)", warn=(None, 0)),
    Channel(25, "stage_ingest_ms_last", "ingest time of the last frame"),
    Channel(26, "stage_calibrate_ms_last", "calibration time of the last frame"),
    Channel(27, "stage_tile_ms_last", "tiling time of the last frame"),
    Channel(28, "stage_screen_ms_last", "cloud screening time of the last frame"),
    Channel(29, "stage_detect_ms_last", "detector time of the last frame"),
    Channel(30, "stage_localize_ms_last", "localization time of the last frame"),
    Channel(31, "stage_package_ms_last", "packaging time of the last frame"),
    Channel(32, "model_cloud_screen_version", "active cloud_screen version (major*10000+minor*100+patch; -1 none)", alarm=(0, None)),
    Channel(33, "model_cloud_screen_sha24", "first 24 bits of the active cloud_screen sha256"),
    Channel(34, "model_ship_detect_version", "active ship_detect version (major*10000+minor*100+patch; -1 none)", warn=(0, None)),
    Channel(35, "model_ship_detect_sha24", "first 24 bits of the active ship_detect sha256"),
    Channel(36, "model_fire_detect_version", "active fire_detect version (major*10000+minor*100+patch; -1 none)", warn=(0, None)),
    Channel(37, "model_fire_detect_sha24", "first 24 bits of the active fire_detect sha256"),
    Channel(38, "uplink_age_s", "wall seconds since the last good uplink packet (-1 never)"),
    Channel(39, "upload_chunks_received", "chunks received of the upload in progress"),
    Channel(40, "quicklooks_held", "recent frames held as quicklooks"),
    Channel(41, "products_evicted", "products evicted from the full store", warn=(None, 0)),
    Channel(42, "products_refused", "products refused by the full store", alarm=(None, 0)),
    # appended (issue #12)
    Channel(43, "input_rejected", "hostile or malformed input rejected (frame messages, uplink packets): never a fault", warn=(None, 0)),
    Channel(44, "software_faults", "unexpected exceptions caught by the last-resort handler", alarm=(None, 0)),
    Channel(45, "store_state", "product store: 0 on disk, 1 disk failing (new products held in RAM), 2 RAM only", warn=(0, 0), alarm=(0, 1)),
    Channel(46, "store_ram_products", "products held in RAM while the store cannot write", warn=(None, 0)),
    Channel(47, "products_lost", "products that could be kept neither on disk nor in RAM", alarm=(None, 0)),
    Channel(48, "acks_rejected", "acknowledgements refused: bad MAC, replayed or out of the time window", warn=(None, 0)),
    Channel(49, "rto_s", "current retransmission timeout (wall seconds, adaptive)"),
    Channel(50, "store_epoch", "store epoch: the high 32 bits of every product id"),
    Channel(51, "products_created", "products put into the store (or RAM buffer)"),
    Channel(52, "events_suppressed", "input-driven events not sent because their type exceeded ops.event_burst in ops.event_window_s"),
    Channel(53, "recent_frames_errors", "frames the full-resolution ring on mass memory could not keep (full, read-only, I/O error)", warn=(None, 0)),
)
TELEMETRY_BY_ID = {c.id: c for c in TELEMETRY}
TELEMETRY_BY_NAME = {c.name: c for c in TELEMETRY}


# --- telecommands (appended, issue #7) ------------------------------------------------------------
# PUS TC packets on Apid.COMMAND, service 8 (function management) subtype 1. Application data:
#   counter u64 | issued_s u32 | opcode u16 | arguments (fixed, big-endian) [| tail bytes] | HMAC-SHA256 (32 bytes)
# The MAC covers every byte of the packet before it (primary and secondary headers included), see
# flight.commands. Verification reports go down as PUS service 1 TM on Apid.COMMAND_REPORT.

COMMAND_SERVICE = 8
COMMAND_SUBTYPE = 1
VERIFICATION_SERVICE = 1


class ReportKind(IntEnum):
    """PUS service 1 message subtypes used for command verification."""

    ACCEPTED = 1
    REJECTED = 2
    COMPLETED = 7
    FAILED = 8


class AckFlag(IntEnum):
    """PUS TC acknowledgement flags (secondary header): which success reports the sender wants.
    Failures are always reported."""

    ACCEPTANCE = 0b1000
    COMPLETION = 0b0001


class Reason(IntEnum):
    """Why a command was rejected or failed (the `code` of a verification report)."""

    OK = 0
    BAD_PACKET = 1
    BAD_MAC = 2  # forged or altered
    REPLAY = 3  # counter already used
    COUNTER_WINDOW = 4  # counter too far ahead
    TIME_WINDOW = 5  # issued too long ago or in the future
    UNKNOWN_OPCODE = 6
    BAD_ARGUMENT = 7
    EXECUTION = 8  # accepted, then failed while executing
    NO_KEY = 9


class Mode(IntEnum):
    NOMINAL = 0  # everything runs
    DEGRADED = 1  # a model or stage failed: it is off, the rest goes on
    SAFE = 2  # no processing: telemetry and commanding only


@dataclass(frozen=True)
class Arg:
    name: str
    code: str  # struct code: B H I Q d, or Ns for a NUL-padded name
    lo: float | None = None
    hi: float | None = None


@dataclass(frozen=True)
class CommandDef:
    opcode: int
    name: str
    args: tuple[Arg, ...]
    description: str
    tail: str | None = None  # name of a trailing bytes argument
    tail_max: int = 0

    @property
    def layout(self) -> str:
        return ">" + "".join(a.code for a in self.args)


MODEL_NAME = Arg("model", "16s")
# a model name that fits MODEL_NAME (16 bytes, NUL-padded): what commands and config accept (fullmatch)
MODEL_NAME_PATTERN = r"[a-z][a-z0-9_]{0,15}"
# Frame ids travel as u32 (summaries, detections, chips, command arguments) and as i32 in events
# (-1 = no frame): every frame id the flight accepts fits both, and 0xFFFFFFFF means "latest".
FRAME_ID_MAX = 2**31 - 1
LATEST_FRAME = 0xFFFFFFFF  # frame_id argument: the most recent frame
MAX_CHUNK_BYTES = 1024
# a PNG (chip or quicklook) in one IMAGE_CHIP TM packet: the packet's data field is at most 65536
# bytes and the headers take 56, so 65487.. overflows at packing time; 60000 leaves a margin
PNG_MAX_BYTES = 60000

COMMANDS: dict[str, CommandDef] = {
    c.name: c
    for c in (
        CommandDef(1, "NOOP", (), "do nothing; proves the uplink and authentication"),
        CommandDef(2, "SET_PARAM", (Arg("param", "B", 1, 255), Arg("value", "d")),
                   "set an onboard parameter (PARAMS: id, range)"),
        CommandDef(3, "ENABLE_MODEL", (MODEL_NAME,), "switch a cascade model on"),
        CommandDef(4, "DISABLE_MODEL", (MODEL_NAME,), "switch a cascade detector off (cloud_screen cannot be)"),
        CommandDef(5, "SET_MODE", (Arg("mode", "B", 0, 2),), "change mode: 0 NOMINAL, 1 DEGRADED, 2 SAFE (recovery)"),
        CommandDef(6, "REQUEST_QUICKLOOK", (Arg("frame_id", "I", 0, 0xFFFFFFFF),),
                   "downlink a downsampled true-colour quicklook of a recent frame (0xFFFFFFFF: latest)"),
        CommandDef(7, "REQUEST_CHIP", (Arg("frame_id", "I", 0, 0xFFFFFFFF), Arg("row_px", "I", 0, 65535),
                                       Arg("col_px", "I", 0, 65535), Arg("size_px", "H", 8, 4096)),
                   "downlink a crop of a recent frame's quicklook centred on (row, col) in frame pixels"),
        CommandDef(8, "DUMP_TELEMETRY", (), "send a housekeeping report now"),
        CommandDef(9, "CLEAR_STORE", (Arg("min_priority", "B", 1, 4),),
                   "delete waiting products of this priority and less important (alerts cannot be cleared)"),
        CommandDef(10, "REPRIORITIZE", (Arg("apid", "H", 0, 0x7FF), Arg("priority", "B", 0, 4)),
                   "downlink priority of a product type, for waiting and future products"),
        CommandDef(11, "UPLOAD_BEGIN", (MODEL_NAME, Arg("size_bytes", "I", 1, 2**31 - 1),
                                        Arg("chunk_bytes", "H", 64, MAX_CHUNK_BYTES), Arg("sha256", "32s")),
                   "start (or resume) a model upload; upload_id = first 4 bytes of the sha256"),
        CommandDef(12, "UPLOAD_CHUNK", (Arg("upload_id", "I"), Arg("index", "I")),
                   "one chunk of an upload (any order, repeats harmless)", tail="data", tail_max=MAX_CHUNK_BYTES),
        CommandDef(13, "UPLOAD_STATUS", (Arg("upload_id", "I"),), "report received and missing chunks"),
        CommandDef(14, "UPLOAD_ACTIVATE", (Arg("upload_id", "I"),),
                   "check the sha256, stage, verify (load + golden vectors) and activate atomically"),
        CommandDef(15, "ROLLBACK_MODEL", (MODEL_NAME,), "go back to the previous verified version of a model"),
        CommandDef(16, "SET_MODEL_THRESHOLD", (MODEL_NAME, Arg("threshold", "d", 0.001, 0.999)),
                   "override a detector's decision threshold"),
        CommandDef(17, "UPLOAD_ABORT", (Arg("upload_id", "I"),), "forget an upload and its chunks"),
        # appended (issue #13): activation of a bundle received by file transfer (CFDP, flight.filetransfer)
        CommandDef(18, "UPLOAD_ACTIVATE_FILE", (MODEL_NAME, Arg("sha256", "32s")),
                   "verify (hash, card, golden vectors) and activate atomically the model bundle received by file transfer with this SHA-256"),
        CommandDef(19, "LOAD_CONTACT_PLAN", (Arg("sha256", "32s"),),
                   "use the contact plan (JSON, UTC windows) received by file transfer with this SHA-256: nothing is sent outside its windows"),
    )
}
COMMANDS_BY_OPCODE = {c.opcode: c for c in COMMANDS.values()}


@dataclass(frozen=True)
class ParamDef:
    id: int
    name: str  # a FlightSection field
    type: type
    lo: float
    hi: float


PARAMS: dict[int, ParamDef] = {
    p.id: p
    for p in (
        ParamDef(1, "cloud_discard_fraction", float, 0.0, 1.0),
        ParamDef(2, "clear_tile_max_cloud", float, 0.0, 1.0),
        ParamDef(3, "water_ndwi_min", float, -1.0, 1.0),
        ParamDef(4, "chip_px", int, 8, 256),
        ParamDef(5, "chips_per_frame", int, 0, 64),
        ParamDef(6, "chip_max_bytes", int, 256, PNG_MAX_BYTES),
        ParamDef(7, "max_detections_per_frame", int, 0, 10000),
        ParamDef(8, "housekeeping_period_s", float, 0.1, 86400.0),
    )
}
PARAMS_BY_NAME = {p.name: p for p in PARAMS.values()}
