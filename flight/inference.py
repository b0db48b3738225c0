"""Flight runtime for the onboard models: model cards, verified loading, batched INT8 inference.

Runtime dependencies: numpy, onnxruntime and OpenCV (never torch or onnx).

A model is two files next to each other in the ``models`` package:
``<name>.card.json`` (what the model is, its input/output contract, its sha256) and the ONNX file
the card names. :class:`TileModel` checks the ONNX bytes against the card *before* any
onnxruntime session exists, so a corrupted or swapped model never runs.

Input convention: tiles are uint16 calibrated reflectance (reflectance * 10000), pixel-interleaved
(N, 64, 64, 6) ("NHWC"), bands blue, green, red, nir, swir16, swir22. The model input is those
tiles quantized to uint8, ``q = saturate(round(tiles * input_scale / input_quant.scale) +
input_quant.zero_point)`` (input_scale 1e-4 gives plain reflectance); the graphs dequantize and do
no further normalisation outside what is learned inside them. Why: the INT8 graph quantizes its
input anyway, and its convolutions run channels-last; handing it uint8 channels-last tiles removes
the float conversion, the in-graph quantization and two layout transposes (about 40 % of the
session time of these small models), and the three models share the one tile layout.

Position convention (heatmap_peaks): continuous pixel coordinates inside the tile, pixel (r, c)
covers [r, r+1) x [c, c+1), so its centre is (r + 0.5, c + 0.5) -- the same convention as
``flight.frames.Footprint``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast, runtime_checkable

import cv2
import numpy as np

# int8_input_cell's values: the layouts the native tile kernel writes (to_cells)
from flight.native import CELLS

TILE_PX = 64
KINDS = ("tile_fraction", "heatmap")
PRECISIONS = ("int8", "fp32")

# Keys every card must have, and optional keys the runtime knows (anything else is refused, so a
# typo such as "treshold" fails loudly instead of silently falling back to a default).
REQUIRED_KEYS = (
    "name", "version", "kind", "file", "sha256", "size_bytes", "input_name", "input_shape",
    "bands", "input_scale", "input_quant", "output_name", "stride", "threshold", "macs_per_tile",
)
OPTIONAL_KEYS = (
    "fp32_file", "fp32_sha256", "fp32_size_bytes", "description", "output", "input",
    "training", "metrics", "real_scene_metrics", "golden", "reproducibility", "quantization",
    "limitations", "format_version", "created_by", "prescreen", "int8_input_cell",
)
PRESCREEN_KEYS = {"band", "max_cut", "basis"}

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}\.onnx$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class ModelError(Exception):
    """A model cannot be used. Carries the model name, the file path and the reason."""

    def __init__(self, reason: str, *, model: str | None = None, path: str | Path | None = None,
                 key: str | None = None, value: object = None):
        self.reason = reason
        self.model = model
        self.path = str(path) if path is not None else None
        self.key = key
        self.value = value
        parts = [f"model {model!r}" if model else "model", f"({self.path})" if self.path else ""]
        if key is not None:
            parts.append(f"key {key!r} = {value!r}:")
        super().__init__(" ".join(p for p in parts if p) + f" {reason}")


class ModelOutputError(ValueError):
    """A model's output broke its card's contract at run time: another shape than the card's, NaN or
    infinity, or values far outside the card's 0..1. The model, not the frame, is at fault; the
    flight's guard (flight.app.GuardedModel) treats it as a failed call of that model."""


# How far outside 0..1 a fraction or probability may stray and still be clipped (INT8 rounding, a
# regression head's overshoot). Beyond it the model does not compute what its card says: clipping
# made +inf, 1e38 or a logit of 1.7 a confident detection in every cell and a fully cloudy tile,
# -inf a clear one, and NaN went through the clip into the cloud fraction, all without a word.
OUTPUT_SLACK = 0.25


def _bad(card_path, name, key, value, why) -> ModelError:
    return ModelError(why, model=name, path=card_path, key=key, value=value)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(float(v))


@dataclass(frozen=True)
class ModelCard:
    """Parsed and validated ``models/<name>.card.json``."""

    name: str
    version: str
    kind: str  # "tile_fraction" or "heatmap"
    file: str  # INT8 ONNX file, relative to the card's folder
    sha256: str
    size_bytes: int
    input_name: str
    input_shape: tuple  # (None, 64, 64, 6): tiles, rows, columns, bands
    bands: tuple[str, ...]
    input_scale: float  # reflectance = uint16 tile value * input_scale
    quant_scale: float  # model input (uint8) = round(reflectance / quant_scale) + quant_zero_point
    quant_zero_point: int
    output_name: str
    stride: int  # heatmap cell size in pixels; 64 for tile_fraction
    threshold: float  # decision threshold on the output
    macs_per_tile: int
    fp32_file: str | None = None
    fp32_sha256: str | None = None
    fp32_size_bytes: int | None = None
    # The detector prescreen validated with this version (models/prescreen.py): the band, and the
    # largest min_contrast that changed none of its validation results. None: never validated,
    # so the flight runs this model with no prescreen (FramePipeline.prescreen_cut).
    prescreen_band: str | None = None
    prescreen_max_cut: float | None = None
    # The INT8 file takes its tiles in cell x cell blocks, (N, 64/c, 64/c, 6c^2) (to_cells), so its
    # k x k stride-k stem runs as a 1 x 1 convolution (models.export.stem_over_cells); 1: as
    # input_shape says. The FP32 file always takes input_shape: its float kernels run the plain stem
    # faster (models/README.md).
    int8_input_cell: int = 1
    card_path: str | None = field(default=None, compare=False)
    info: Mapping = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def cells(self) -> int:
        """Heatmap side in cells (1 for tile_fraction)."""
        return TILE_PX // self.stride

    def input_cell(self, precision: str = "int8") -> int:
        """The cell of the file for ``precision`` takes its tiles in (1: plain): FP32 files are plain."""
        return self.int8_input_cell if precision == "int8" else 1

    def session_input_shape(self, precision: str = "int8") -> tuple:
        """The input shape of the file for ``precision``: input_shape, or its INT8 cells."""
        c = self.input_cell(precision)
        _, rows, cols, bands = self.input_shape
        return (None, rows // c, cols // c, bands * c * c)

    @property
    def output_shape(self) -> tuple:
        return (None,) if self.kind == "tile_fraction" else (None, self.cells, self.cells)

    @staticmethod
    def from_dict(obj, card_path: str | Path | None = None) -> ModelCard:
        if not isinstance(obj, dict):
            raise ModelError("card is not a JSON object", path=card_path)
        name = obj.get("name")
        shown = name if isinstance(name, str) else None
        for key in REQUIRED_KEYS:
            if key not in obj:
                raise _bad(card_path, shown, key, None, "missing required key")
        for key in obj:
            if key not in REQUIRED_KEYS and key not in OPTIONAL_KEYS:
                raise _bad(card_path, shown, key, obj[key], "unknown key")

        def req(key, ok, why):
            if not ok(obj[key]):
                raise _bad(card_path, shown, key, obj[key], why)
            return obj[key]

        req("name", lambda v: isinstance(v, str) and _NAME_RE.match(v), "must match [a-z][a-z0-9_]*")
        req("version", lambda v: isinstance(v, str) and 0 < len(v) <= 32, "must be a non-empty string")
        kind = req("kind", lambda v: v in KINDS, f"must be one of {KINDS}")
        req("file", lambda v: isinstance(v, str) and _FILE_RE.match(v) and v != f"{name}.card.json",
            "must be a plain .onnx file name in the card's folder")
        req("sha256", lambda v: isinstance(v, str) and _SHA_RE.match(v), "must be 64 lowercase hex digits")
        req("size_bytes", lambda v: _is_int(v) and 0 < v <= 64 << 20, "must be an int in 1..64 MiB")
        req("input_name", lambda v: isinstance(v, str) and v, "must be a non-empty string")
        shape = req("input_shape", lambda v: isinstance(v, list) and len(v) == 4 and v[0] is None
                    and all(_is_int(d) for d in v[1:]) and v[1:3] == [TILE_PX, TILE_PX] and v[3] > 0,
                    f"must be [null, {TILE_PX}, {TILE_PX}, bands] (tiles, rows, columns, bands)")
        bands = req("bands", lambda v: isinstance(v, list) and len(v) == shape[3]
                    and all(isinstance(b, str) and b for b in v) and len(set(v)) == len(v),
                    "must list one distinct band name per input channel")
        req("input_scale", lambda v: _is_num(v) and 0 < v <= 1, "must be a number in (0, 1]")
        quant = req("input_quant", lambda v: isinstance(v, dict) and set(v) == {"scale", "zero_point"}
                    and _is_num(v["scale"]) and 0 < v["scale"] < 1 and _is_int(v["zero_point"])
                    and 0 <= v["zero_point"] <= 255,
                    "must be {scale: number in (0, 1), zero_point: int 0..255}")
        req("output_name", lambda v: isinstance(v, str) and v, "must be a non-empty string")
        if kind == "tile_fraction":
            req("stride", lambda v: v == TILE_PX, f"must be {TILE_PX} for kind tile_fraction")
        else:
            req("stride", lambda v: _is_int(v) and 1 <= v < TILE_PX and TILE_PX % v == 0,
                f"must be an int dividing {TILE_PX} (1..32) for kind heatmap")
        req("threshold", lambda v: _is_num(v) and 0 < v < 1, "must be a number in (0, 1)")
        # bounded (a 64 x 64 tile model of 2**40 MACs would take minutes a tile): the benchmark's
        # MACs/s and roofline fractions are computed from it
        req("macs_per_tile", lambda v: _is_int(v) and 0 < v <= 1 << 40, "must be an int in 1..2**40")
        fp32 = {k: obj.get(k) for k in ("fp32_file", "fp32_sha256", "fp32_size_bytes")}
        if any(v is not None for v in fp32.values()):
            req("fp32_file", lambda v: isinstance(v, str) and _FILE_RE.match(v) and v != obj["file"],
                "must be a plain .onnx file name, different from 'file'")
            for k in ("fp32_sha256", "fp32_size_bytes"):
                if k not in obj:
                    raise _bad(card_path, shown, k, None, "required when fp32_file is given")
            req("fp32_sha256", lambda v: isinstance(v, str) and _SHA_RE.match(v), "must be 64 lowercase hex digits")
            req("fp32_size_bytes", lambda v: _is_int(v) and 0 < v <= 64 << 20, "must be an int in 1..64 MiB")
        pre = None
        if "prescreen" in obj:
            pre = req("prescreen", lambda v: isinstance(v, dict) and {"band", "max_cut"} <= set(v) <= PRESCREEN_KEYS
                      and v["band"] in bands and _is_num(v["max_cut"]) and 0 <= v["max_cut"] <= 65535
                      and isinstance(v.get("basis", ""), str),
                      "must be {band: one of the card's bands, max_cut: number 0..65535, basis: optional text}")
        cell = 1
        if "int8_input_cell" in obj:
            cell = req("int8_input_cell", lambda v: _is_int(v) and v in CELLS,
                       f"must be one of {CELLS}")
        info = {k: obj[k] for k in obj if k in OPTIONAL_KEYS and not k.startswith("fp32_")}
        return ModelCard(
            name=obj["name"], version=obj["version"], kind=kind, file=obj["file"],
            sha256=obj["sha256"], size_bytes=obj["size_bytes"], input_name=obj["input_name"],
            input_shape=tuple(shape), bands=tuple(bands), input_scale=float(obj["input_scale"]),
            quant_scale=float(quant["scale"]), quant_zero_point=int(quant["zero_point"]),
            output_name=obj["output_name"], stride=obj["stride"], threshold=float(obj["threshold"]),
            macs_per_tile=obj["macs_per_tile"], fp32_file=fp32["fp32_file"],
            fp32_sha256=fp32["fp32_sha256"], fp32_size_bytes=fp32["fp32_size_bytes"],
            prescreen_band=pre["band"] if pre else None,
            prescreen_max_cut=float(pre["max_cut"]) if pre else None, int8_input_cell=cell,
            card_path=str(card_path) if card_path is not None else None, info=info,
        )

    @staticmethod
    def load(path) -> ModelCard:
        path = Path(path)
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read card: {exc}", path=path) from exc
        try:
            obj = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"card is not JSON: {exc}", path=path) from exc
        return ModelCard.from_dict(obj, path)

    def model_file(self, precision: str = "int8") -> Path:
        if precision not in PRECISIONS:
            raise ModelError(f"precision must be one of {PRECISIONS}", model=self.name, key="precision", value=precision)
        if precision == "fp32" and self.fp32_file is None:
            raise ModelError("card has no fp32_file", model=self.name, path=self.card_path)
        base = Path(self.card_path).parent if self.card_path else Path(".")
        return base / (self.file if precision == "int8" else cast(str, self.fp32_file))  # not None: checked above


def model_path(name: str) -> Path:
    """Path of ``<name>.card.json`` in the installed ``models`` package."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ModelError("bad model name", model=str(name), key="name", value=name)
    import models  # the package holding the cards and ONNX files; imports nothing heavy

    # models.__path__ rather than __file__: an editable install can import it as a namespace
    # package (no __file__); the first existing folder is the package.
    dirs = [Path(p) for p in getattr(models, "__path__", []) if Path(p).is_dir()]
    if not dirs:
        raise ModelError("the models package has no folder", model=name)
    return dirs[0].resolve() / f"{name}.card.json"


def _dim_ok(actual, expected) -> bool:
    if expected is None:  # symbolic batch: ORT reports a str (or None)
        return actual is None or isinstance(actual, str)
    return actual == expected


class TileModel:
    """One onboard model, loaded and checked against its card.

    ``run`` is safe to call from several threads (no shared scratch buffers).
    """

    def __init__(self, card_path, intra_op_threads: int = 1, enable_cpu_mem_arena: bool = False,
                 batch_size: int = 64, precision: str = "int8"):
        import onnxruntime as ort

        self.card = ModelCard.load(card_path)
        card = self.card
        if not (_is_int(intra_op_threads) and intra_op_threads >= 1):
            raise ModelError("intra_op_threads must be an int >= 1", model=card.name, key="intra_op_threads", value=intra_op_threads)
        if not (_is_int(batch_size) and 1 <= batch_size <= 4096):
            raise ModelError("batch_size must be an int in 1..4096", model=card.name, key="batch_size", value=batch_size)
        self.batch_size = batch_size
        self.precision = precision
        path = card.model_file(precision)
        self.cell = card.input_cell(precision)  # the layout its file takes
        self.layout = card.session_input_shape(precision)[1:]  # its input per tile, in that layout
        self.path = path
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read model file: {exc}", model=card.name, path=path) from exc
        want_size = card.size_bytes if precision == "int8" else card.fp32_size_bytes
        want_sha = card.sha256 if precision == "int8" else card.fp32_sha256
        if len(blob) != want_size:
            raise ModelError(f"size {len(blob)} bytes, card says {want_size}", model=card.name, path=path)
        digest = hashlib.sha256(blob).hexdigest()
        if digest != want_sha:
            raise ModelError(f"sha256 {digest} does not match card {want_sha}", model=card.name, path=path)

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # at load time, on this CPU
        so.intra_op_num_threads = intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.enable_cpu_mem_arena = bool(enable_cpu_mem_arena)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(blob, sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"onnxruntime refused the model: {exc}", model=card.name, path=path) from exc
        del blob
        self._check_io()

    def _check_io(self) -> None:
        card, path = self.card, self.path
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        if len(ins) != 1 or ins[0].name != card.input_name:
            raise ModelError(f"inputs {[i.name for i in ins]}, card says [{card.input_name!r}]", model=card.name, path=path)
        if ins[0].type != "tensor(uint8)":
            raise ModelError(f"input type {ins[0].type}, expected tensor(uint8)", model=card.name, path=path)
        shape, want = list(ins[0].shape), (None, *self.layout)
        if len(shape) != 4 or not all(_dim_ok(a, e) for a, e in zip(shape, want, strict=True)):
            cells = f" (INT8 input in {self.cell} x {self.cell} cells)" if self.cell > 1 else ""
            raise ModelError(f"input shape {shape}, card says {list(want)}{cells}", model=card.name, path=path)
        match = [o for o in outs if o.name == card.output_name]
        if not match:
            raise ModelError(f"outputs {[o.name for o in outs]} lack card output {card.output_name!r}", model=card.name, path=path)
        oshape = list(match[0].shape)
        if len(oshape) != len(card.output_shape) or not all(_dim_ok(a, e) for a, e in zip(oshape, card.output_shape, strict=True)):
            raise ModelError(f"output shape {oshape}, card kind {card.kind} stride {card.stride} needs {list(card.output_shape)}",
                             model=card.name, path=path)
        if match[0].type != "tensor(float)":
            raise ModelError(f"output type {match[0].type}, expected tensor(float)", model=card.name, path=path)

    def run(self, tiles: np.ndarray | TileSource) -> np.ndarray:
        """uint16 (N, 64, 64, 6) reflectance tiles, or a TileSource that gives them already
        quantized for this card (in its file's cells) -> float32 (N,) fraction or (N, cells, cells)
        heatmap."""
        card = self.card
        expect = tuple(card.input_shape[1:])
        quantized = None
        if isinstance(tiles, TileSource):
            quantized = tiles.quantized(card.input_scale, card.quant_scale, card.quant_zero_point, self.cell)
            laid = self.layout
            if (not isinstance(quantized, np.ndarray) or quantized.dtype != np.uint8 or quantized.ndim != 4
                    or quantized.shape[1:] != laid or quantized.shape[0] != len(tiles)):
                got = (getattr(quantized, "dtype", type(quantized).__name__), getattr(quantized, "shape", None))
                raise ValueError(f"{card.name}: quantized tiles must be uint8 ({len(tiles)}, {', '.join(map(str, laid))}), "
                                 f"got {got}")
        elif not isinstance(tiles, np.ndarray) or tiles.dtype != np.uint16 or tiles.ndim != 4 or tiles.shape[1:] != expect:
            got = (getattr(tiles, "dtype", type(tiles).__name__), getattr(tiles, "shape", None))
            raise ValueError(f"{card.name}: tiles must be uint16 (N, {', '.join(map(str, expect))}), got {got}")
        n = len(tiles)
        out = np.empty((n,) + tuple(d for d in card.output_shape[1:]), dtype=np.float32)
        if n == 0:
            return out
        bs = self.batch_size
        feeds_name, out_name = card.input_name, [card.output_name]
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            if quantized is not None:
                x = quantized[start:stop]
            else:
                assert isinstance(tiles, np.ndarray)  # checked above
                x = to_cells(quantize_tiles(tiles[start:stop], card.quant_scale, card.quant_zero_point, card.input_scale),
                             self.cell)
            (y,) = self.session.run(out_name, {feeds_name: x})
            # the declared output shape is only checked at load: at run time a graph can return
            # more or fewer rows than tiles, or another rank; a reshape let (N, 1) or a transposed
            # (1, N) through, and its error named no model
            want = out[start:stop].shape
            if not isinstance(y, np.ndarray) or y.shape != want or y.dtype != np.float32:
                got = (getattr(y, "dtype", type(y).__name__), getattr(y, "shape", None))
                raise ModelOutputError(f"{card.name} {card.version}: output {got[0]} {got[1]} for {stop - start} tiles, "
                                       f"card says float32 {want}")
            out[start:stop] = y
        lo, hi = float(out.min()), float(out.max())  # a NaN makes both NaN (n > 0 here)
        if not (lo >= -OUTPUT_SLACK and hi <= 1.0 + OUTPUT_SLACK):
            nan, inf = int(np.isnan(out).sum()), int(np.isinf(out).sum())
            far = int(((out < -OUTPUT_SLACK) | (out > 1.0 + OUTPUT_SLACK)).sum()) - inf
            raise ModelOutputError(f"{card.name} {card.version}: output of {out.size} values has {nan} NaN, {inf} inf, "
                                   f"{far} outside [{-OUTPUT_SLACK:g}, {1 + OUTPUT_SLACK:g}]")
        np.clip(out, 0.0, 1.0, out=out)
        return out


@runtime_checkable
class TileSource(Protocol):
    """Tiles not yet cut out of their calibrated block (flight.pipeline.BlockTiles): a model takes
    them as its uint8 input, quantized for its own card, without uint16 tiles in between."""

    def __len__(self) -> int: ...

    def quantized(self, input_scale: float, scale: float, zero_point: int, cell: int = 1) -> np.ndarray:
        """uint8 (N, 64, 64, 6), or (N, 64/cell, 64/cell, 6 cell^2) in cells: to_cells(quantize_tiles(
        the uint16 tiles, scale, zero_point, input_scale), cell), bit for bit."""
        ...


def to_cells(tiles: np.ndarray, cell: int) -> np.ndarray:
    """(N, t, t, B) tiles -> (N, t/c, t/c, c*c*B): each c x c block of pixels (space to depth), its
    pixels row-major and bands innermost, the layout an INT8 file with ``int8_input_cell`` c takes
    (a k x k stride-k stem is then a 1 x 1 convolution: a plain matrix product in onnxruntime's
    channels-last kernels). One copy; the native tile kernel writes this layout directly."""
    if cell == 1:
        return tiles
    n, t, _, b = tiles.shape
    k = t // cell
    blocks = tiles.reshape(n, k, cell, k, cell, b).transpose(0, 1, 3, 2, 4, 5)
    return np.ascontiguousarray(blocks).reshape(n, k, k, cell * cell * b)


def quantize_tiles(tiles: np.ndarray, scale: float, zero_point: int, input_scale: float = 1e-4) -> np.ndarray:
    """uint16 tiles -> the model's uint8 input: saturate(round(tiles * input_scale / scale) + zero_point).

    One OpenCV pass (saturating, round-half-even like onnxruntime's QuantizeLinear); a numpy
    float round trip costs several times more."""
    flat = np.ascontiguousarray(tiles).reshape(-1, tiles.shape[-1] * tiles.shape[-2])
    return cv2.convertScaleAbs(flat, alpha=input_scale / scale, beta=float(zero_point)).reshape(tiles.shape)


_NEIGHBOUR_DR = np.array([-1, -1, -1, 0, 0, 0, 1, 1, 1])  # the 3x3 cells around a peak, in raster order
_NEIGHBOUR_DC = np.array([-1, 0, 1, -1, 0, 1, -1, 0, 1])


def heatmap_peaks(heatmaps: np.ndarray, threshold: float, stride: int,
                  min_distance_cells: int = 1) -> list[tuple[int, float, float, float]]:
    """Local maxima of per-tile heatmaps -> [(tile_index, row_px_in_tile, col_px_in_tile, score)].

    A cell is a peak when its value is >= ``threshold`` and is the maximum of the
    (2*min_distance_cells+1)^2 window around it (ties go to the first cell in raster order, so a
    plateau gives one peak). The position is the value-weighted centroid of the 3x3 cells around
    the peak (clipped at the tile edge), in continuous pixel units: cell i spans pixels
    [i*stride, (i+1)*stride), so a peak confined to one cell sits at (i + 0.5) * stride.
    Sorted by tile index, then descending score.
    """
    h = np.asarray(heatmaps, dtype=np.float32)
    if h.ndim != 3:
        raise ValueError(f"heatmaps must be (N, rows, cols), got shape {h.shape}")
    if not (isinstance(stride, (int, np.integer)) and stride >= 1):
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    d = int(min_distance_cells)
    if d < 1:
        raise ValueError(f"min_distance_cells must be >= 1, got {min_distance_cells!r}")
    n, rows, cols = h.shape
    if n == 0 or rows == 0 or cols == 0:
        return []
    above = h >= np.float32(threshold)
    hot = np.flatnonzero(above.reshape(n, -1).any(axis=1))  # tiles with a cell above threshold
    if hot.size == 0:
        return []
    hh, peak = h[hot], above[hot]
    padded = np.full((hot.size, rows + 2 * d, cols + 2 * d), -np.inf, np.float32)
    padded[:, d:d + rows, d:d + cols] = hh
    # above every earlier neighbour (raster order) and not below any later one: compared with the
    # maximum of each group (two comparisons instead of one per neighbour; NaN-safe alike, as a NaN
    # neighbour fails both ways)
    earlier: np.ndarray | None = None
    later: np.ndarray | None = None
    for dr in range(-d, d + 1):
        for dc in range(-d, d + 1):
            if dr == 0 and dc == 0:
                continue
            nb = padded[:, d + dr: d + dr + rows, d + dc: d + dc + cols]
            if dr < 0 or (dr == 0 and dc < 0):
                earlier = nb.copy() if earlier is None else np.maximum(earlier, nb, out=earlier)
            else:
                later = nb.copy() if later is None else np.maximum(later, nb, out=later)
    assert earlier is not None and later is not None  # d >= 1: both groups have cells
    peak &= hh > earlier
    peak &= hh >= later
    k, r, c = np.nonzero(peak)
    if k.size == 0:
        return []
    # Centroid of the 3x3 cells around every peak at once (the worst frame has ~500 peaks; a Python
    # loop per peak cost 14 ms a frame), the 9 cells gathered in one indexing: a loop over them cost
    # 60 small numpy calls per block. Cells outside the tile get weight 0, which is what clipping
    # the window at the tile edge does. cumsum adds left to right, in the loop's old order: the
    # same sums, bit for bit.
    w = np.zeros((hot.size, rows + 2, cols + 2))
    np.maximum(hh, 0.0, out=w[:, 1:-1, 1:-1])
    rn, cn = r[:, None] + _NEIGHBOUR_DR, c[:, None] + _NEIGHBOUR_DC  # (peaks, 9)
    wk = w[k[:, None], rn + 1, cn + 1]
    total = np.cumsum(wk, axis=1)[:, -1]
    rr_sum = np.cumsum(rn * wk, axis=1)[:, -1]
    cc_sum = np.cumsum(cn * wk, axis=1)[:, -1]
    weighted = total > 0
    safe = np.where(weighted, total, 1.0)
    rr = np.where(weighted, rr_sum / safe, r)
    cc = np.where(weighted, cc_sum / safe, c)
    score, t = hh[k, r, c], hot[k]
    order = np.lexsort((-score, t))  # stable: by tile, then descending score, then raster order
    return list(zip(t[order].tolist(), ((rr[order] + 0.5) * stride).tolist(),
                    ((cc[order] + 0.5) * stride).tolist(), score[order].astype(np.float64).tolist(), strict=True))


def merge_peaks(peaks: list[tuple], radius_px: float) -> list[tuple]:
    """Merge detections of one frame that are closer than ``radius_px`` (frame pixel units).

    ``peaks`` are tuples whose first three items are (row_px, col_px, score) in frame
    coordinates (anything after is kept). An object on a tile border is seen from both tiles and
    gives a peak in each; keep the strongest. Greedy, highest score first; returns that order.
    The detector cards were evaluated with the radius in their metrics ('merge_px')."""
    r2 = float(radius_px) ** 2
    order = sorted(peaks, key=lambda q: -q[2])
    # kept positions in arrays, each candidate checked against all of them at once: the same test
    # as a loop over the kept peaks, 3-7x faster with the hundreds of peaks of a busy frame
    rows, cols = np.empty(len(order)), np.empty(len(order))
    kept: list[tuple] = []
    for p in order:
        n = len(kept)
        if n and not ((rows[:n] - p[0]) ** 2 + (cols[:n] - p[1]) ** 2 > r2).all():
            continue
        rows[n], cols[n] = p[0], p[1]
        kept.append(p)
    return kept
