"""Build-time tools: ONNX export, onnxruntime preprocess, static INT8 QDQ quantization, MAC
counting, and layer-by-layer FP32-vs-INT8 comparison.

Needs torch (export only), onnx and onnxruntime. Never imported by the flight runtime.
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
from pathlib import Path

import numpy as np

INPUT_NAME = "reflectance"  # float NCHW input of the exported torch graph (internal after the rewrite)
UINT8_INPUT = "tiles_u8"  # what flies: uint8 (N, 64, 64, 6), see channels_last_uint8_input
INPUT_SCALE = 1e-4  # model input = uint16 reflectance * 1e-4
OPSET = 17


def sha256_file(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------- export
def export_onnx(model, path, output_name: str, opset: int = OPSET) -> Path:
    """torch module (float32 reflectance in) -> ONNX with a dynamic batch axis.

    Uses the TorchScript exporter (dynamo=False): it gives a small, plain graph of standard ops,
    and it is deterministic byte for byte for the same weights.
    """
    import torch

    path = Path(path)
    model = model.eval().cpu()
    x = torch.zeros(2, 6, 64, 64, dtype=torch.float32)
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(path), input_names=[INPUT_NAME], output_names=[output_name],
            dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    import onnx

    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    m.producer_name = "onboard-payload models"
    m.producer_version = ""
    m.doc_string = ""
    onnx.save(m, str(path))
    return path


def preprocess(src, dst) -> Path:
    """onnxruntime's quantization preprocess: onnx optimizer + shape inference (symbolic shape
    inference needs sympy, which is installed; it is skipped if it fails)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    except Exception:  # noqa: BLE001 - fall back as NOTES.md says
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return Path(dst)


class TileReader:
    """CalibrationDataReader over uint16 tiles from the training distribution."""

    def __init__(self, tiles: np.ndarray, batch: int = 64):
        from onnxruntime.quantization import CalibrationDataReader  # noqa: F401 - duck-typed

        self.tiles, self.batch, self.i = tiles, batch, 0

    def get_next(self):
        if self.i >= len(self.tiles):
            return None
        # channels-last uint16 tiles -> the float graph's (N, 6, 64, 64) reflectance
        x = np.ascontiguousarray(np.moveaxis(self.tiles[self.i: self.i + self.batch], -1, 1), dtype=np.float32)
        x *= np.float32(INPUT_SCALE)
        self.i += self.batch
        return {INPUT_NAME: x}

    def rewind(self):
        self.i = 0

    def __iter__(self):  # qdq_loss_debug.collect_activations iterates the reader
        self.rewind()
        while (batch := self.get_next()) is not None:
            yield batch


def quantize(fp32_path, int8_path, calib_tiles: np.ndarray, input_range: tuple[float, float] | None = None,
             calibrate_method: str = "MinMax", nodes_to_exclude=None) -> Path:
    """Static INT8 QDQ quantization, per-channel weights (int8, symmetric), uint8 activations.

    ``input_range`` pins the quantization range of the model input (reflectance) instead of taking
    it from the calibration batch, so a rare saturated pixel in calibration data cannot stretch it.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if input_range is not None:
        extra["TensorQuantOverrides"] = {INPUT_NAME: [{"rmin": np.float32(input_range[0]), "rmax": np.float32(input_range[1])}]}
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        preprocess(fp32_path, pre)
        quantize_static(
            str(pre), str(int8_path), TileReader(calib_tiles),
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, calibrate_method),
            nodes_to_exclude=nodes_to_exclude, extra_options=extra,
        )
    import onnx

    m = onnx.load(str(int8_path))
    m.producer_name = "onboard-payload models"
    m.producer_version = ""
    onnx.save(m, str(int8_path))
    return Path(int8_path)


# ------------------------------------------------------------------------- flight input contract
def channels_last_uint8_input(int8_src, fp32_src, int8_dst, fp32_dst) -> tuple[float, int]:
    """Rewrite both files to take the flight's tiles as they are: uint8 (N, 64, 64, 6).

    INT8: the input QuantizeLinear is removed and the uint8 input is transposed to NCHW in its
    place; onnxruntime's layout transformer then cancels that transpose against the one it puts
    before its channels-last QLinearConv, so no transpose runs at all. FP32: the same uint8 input
    is dequantized with the same scale and zero point, then transposed, so both files see
    identical inputs and differ only in the model's arithmetic. Returns (scale, zero_point)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m8 = onnx.load(str(int8_src))
    g = m8.graph
    q = next(n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == INPUT_NAME)
    inits = {t.name: t for t in g.initializer}
    scale = float(numpy_helper.to_array(inits[q.input[1]]))
    zp = int(numpy_helper.to_array(inits[q.input[2]])) if len(q.input) > 2 else 0
    g.node.remove(q)
    g.node.insert(0, helper.make_node("Transpose", [UINT8_INPUT], [q.output[0]], perm=[0, 3, 1, 2], name="tiles_to_nchw"))
    new_in = helper.make_tensor_value_info(UINT8_INPUT, TensorProto.UINT8, ["batch", 64, 64, 6])
    old_in = next(i for i in g.input if i.name == INPUT_NAME)
    g.input.remove(old_in)
    g.input.insert(0, new_in)
    onnx.checker.check_model(m8)
    onnx.save(m8, str(int8_dst))

    m32 = onnx.load(str(fp32_src))
    g = m32.graph
    old_in = next(i for i in g.input if i.name == INPUT_NAME)
    g.input.remove(old_in)
    g.input.insert(0, new_in)
    g.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), "tiles_u8_scale"),
                          numpy_helper.from_array(np.array(zp, np.uint8), "tiles_u8_zero_point")])
    g.node.insert(0, helper.make_node("Transpose", ["tiles_f32_nhwc"], [INPUT_NAME], perm=[0, 3, 1, 2], name="tiles_to_nchw"))
    g.node.insert(0, helper.make_node("DequantizeLinear", [UINT8_INPUT, "tiles_u8_scale", "tiles_u8_zero_point"],
                                      ["tiles_f32_nhwc"], name="tiles_dequantize"))
    onnx.checker.check_model(m32)
    onnx.save(m32, str(fp32_dst))
    return scale, zp


def merge_stem_columns(path) -> int | None:
    """Rewrite the stem of a flight-input model file in place so onnxruntime runs it faster, with
    the same results (INT8: bit for bit; FP32: to float rounding). Returns the merge factor, or
    None when the file has no such stem (or was rewritten already).

    The stem is a k x k convolution with stride k over the 6-band tiles. onnxruntime's
    channels-last QLinearConv gathers a 6-byte run per kernel tap for it, which made it 30-75 % of
    a model's time though it holds 5-25 % of the MACs (docs/benchmarks.md). The k pixels side by
    side under one kernel row are adjacent in memory, so the input is reshaped (free, no copy) from
    (N, 64, 64, 6) to (N, 64, 64 / k, 6 k) and the stem becomes a k x 1 convolution over 6 k
    channels: the same products, summed over the same weights, in k runs of 6 k bytes. Weights
    are only reordered (per-output-channel scales unchanged), the model's input contract stays
    uint8 (N, 64, 64, 6).
    """
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    if any(n.name in ("tiles_merge_columns", CELLS_NODE) for n in g.node):
        return None
    users = [n for n in g.node if UINT8_INPUT in n.input]
    convs = [n for n in g.node if n.op_type == "Conv"]
    if len(users) != 1 or not convs:
        return None
    stem = convs[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in stem.attribute}
    k = attrs.get("kernel_shape", [0])[0]
    if not (attrs.get("kernel_shape") == [k, k] and attrs.get("strides") == [k, k] and k > 1 and 64 % k == 0
            and attrs.get("group", 1) == 1 and not any(attrs.get("pads", [0])) and set(attrs.get("dilations", [1])) == {1}):
        return None
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name: t for t in g.initializer}
    # Between the input and the stem only the NHWC -> NCHW transpose and per-tensor dequantization
    # may stand: anything per channel or per pixel would see the merged columns and compute
    # something else. The tensors on that path lose their recorded shapes below.
    chain, t = [], stem.input[0]
    while t != UINT8_INPUT:
        node = producer.get(t)
        if node is None:
            return None
        if node.op_type == "Transpose":
            if [helper.get_attribute_value(a) for a in node.attribute if a.name == "perm"] != [[0, 3, 1, 2]]:
                return None
        elif node.op_type == "DequantizeLinear":
            if any(i not in inits or np.size(numpy_helper.to_array(inits[i])) != 1 for i in node.input[1:]):
                return None
        else:
            return None
        chain.append(t)
        t = node.input[0]
    if sum(producer[c].op_type == "Transpose" for c in chain) != 1:
        return None
    wname = stem.input[1]
    if wname not in inits:  # INT8: the weight is DequantizeLinear(int8 initializer, per output channel)
        wdq = producer[wname]
        if wdq.op_type != "DequantizeLinear" or wdq.input[0] not in inits:
            return None
        wname = wdq.input[0]
    w = numpy_helper.to_array(inits[wname])
    out_c, bands = w.shape[:2]
    # new input channel dc * bands + b at kernel row dr <- old weight [o, b, dr, dc]
    merged = np.ascontiguousarray(w.transpose(0, 3, 1, 2).reshape(out_c, k * bands, k, 1))
    inits[wname].CopyFrom(numpy_helper.from_array(merged, wname))
    for a in stem.attribute:
        if a.name in ("kernel_shape", "strides"):
            a.CopyFrom(helper.make_attribute(a.name, [k, 1]))
    g.initializer.append(numpy_helper.from_array(np.array([-1, 64, 64 // k, k * bands], np.int64), "tiles_merged_shape"))
    users[0].input[list(users[0].input).index(UINT8_INPUT)] = "tiles_merged"
    g.node.insert(0, helper.make_node("Reshape", [UINT8_INPUT, "tiles_merged_shape"], ["tiles_merged"],
                                      name="tiles_merge_columns"))
    for vi in [v for v in g.value_info if v.name in chain]:  # shapes on that path are stale now
        g.value_info.remove(vi)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return k


CELLS_NODE = "tiles_cells"  # the Reshape of stem_over_cells' input (its mark: a file is rewritten once)


def stem_over_cells(path) -> int | None:
    """Rewrite a merge_stem_columns file in place so its stem is a 1 x 1 convolution over tiles
    taken in k x k cells: input (N, 64/k, 64/k, 6 k^2) (flight.inference.to_cells), each cell's
    pixels row-major, bands innermost. Returns k, or None when the file has no merged stem.

    The k x 1 convolution over 6k channels still makes onnxruntime gather k rows 64 pixels apart
    per output; a 1 x 1 convolution in channels-last is one matrix product over contiguous cells.
    That layout cannot be made from (N, 64, 64, 6) by a Reshape (a graph Transpose cost more than
    it saved: docs/benchmarks.md, ninth round), so the file takes it as input, and the flight's
    native tile kernel writes it directly (numpy: one copy, inference.to_cells). Weights are only
    reordered, so the integer products and sums are the same: outputs bit for bit those of the
    plain stem. The card records k as ``int8_input_cell``."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    merge = [n for n in g.node if n.name == "tiles_merge_columns"]
    if len(merge) != 1 or list(merge[0].input)[0] != UINT8_INPUT:
        return None
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    stem = next(n for n in g.node if n.op_type == "Conv")
    attrs = {a.name: helper.get_attribute_value(a) for a in stem.attribute}
    k = attrs["kernel_shape"][0]
    if attrs["kernel_shape"] != [k, 1] or attrs["strides"] != [k, 1]:
        return None
    wname = stem.input[1]
    if wname not in inits:  # INT8: DequantizeLinear(int8 initializer, per output channel)
        wname = producer[wname].input[0]
    w = numpy_helper.to_array(inits[wname])  # (O, 6k, k, 1): [o, dc * 6 + b, dr, 0]
    bands = w.shape[1] // k
    # new input channel (dr * k + dc) * bands + b <- merged weight [o, dc * bands + b, dr, 0]
    cells = np.ascontiguousarray(w[..., 0].transpose(0, 2, 1).reshape(w.shape[0], k * k * bands, 1, 1))
    inits[wname].CopyFrom(numpy_helper.from_array(cells, wname))
    for a in stem.attribute:
        if a.name in ("kernel_shape", "strides"):
            a.CopyFrom(helper.make_attribute(a.name, [1, 1]))
    side = 64 // k
    shape_name = merge[0].input[1]
    inits[shape_name].CopyFrom(numpy_helper.from_array(np.array([-1, side, side, k * k * bands], np.int64), shape_name))
    merge[0].name = CELLS_NODE  # a no-op now; kept so the path to the stem is the one merge_stem_columns checked
    dims = g.input[0].type.tensor_type.shape.dim
    dims[1].dim_value, dims[2].dim_value, dims[3].dim_value = side, side, k * k * bands
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return k


def input_cell(path) -> int:
    """The cell of an INT8 file's input (stem_over_cells' k; 1 for (N, 64, 64, 6))."""
    import onnx

    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return 64 // dims[1].dim_value


def flight_files(model, output_name: str, calib_tiles: np.ndarray, int8_dst, fp32_dst, work,
                 calibrate_method: str = "MinMax") -> tuple[float, int]:
    """A trained torch model -> the two files the flight loads: ONNX export, static QDQ
    quantization, the uint8 channels-last input on both, the INT8 stem over merged columns and then
    over k x k cells (its input in cells: the card's int8_input_cell). The float-input graphs stay in ``work`` (float_input.fp32.onnx, float_input.int8.onnx: MAC
    count and layer comparisons). Returns the input quantization (scale, zero point)."""
    float_fp32, float_int8 = Path(work) / "float_input.fp32.onnx", Path(work) / "float_input.int8.onnx"
    export_onnx(model, float_fp32, output_name)
    quantize(float_fp32, float_int8, calib_tiles, calibrate_method=calibrate_method)
    quant = channels_last_uint8_input(float_int8, float_fp32, int8_dst, fp32_dst)
    merge_stem_columns(int8_dst)  # INT8 only: the FP32 file runs its plain stem faster
    stem_over_cells(int8_dst)
    return quant


# ------------------------------------------------------------------------------------------- MACs
def count_macs(path) -> int:
    """Multiply-accumulates for one 64x64 tile (batch 1), from the ONNX graph with shapes inferred.

    Counts Conv / ConvTranspose / Gemm / MatMul (the work); elementwise ops, pooling and
    activations are not counted."""
    import onnx
    from onnx import helper, shape_inference

    m = onnx.load(str(path))
    for vi in list(m.graph.input) + list(m.graph.output):
        dim = vi.type.tensor_type.shape.dim
        if dim and not dim[0].HasField("dim_value"):
            dim[0].dim_value = 1
    m = shape_inference.infer_shapes(m)
    shapes = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    inits = {t.name: list(t.dims) for t in m.graph.initializer}
    macs = 0
    for node in m.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            w = inits[node.input[1]]
            out = shapes[node.output[0]]
            groups = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
            if node.op_type == "Conv":
                macs += math.prod(out) * math.prod(w[1:])
            else:
                inp = shapes[node.input[0]]
                macs += math.prod(inp) * w[1] * math.prod(w[2:]) // max(groups, 1) * 1
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes.get(node.input[0]) or inits.get(node.input[0])
            out = shapes[node.output[0]]
            macs += math.prod(out) * a[-1]
    return int(macs)


# --------------------------------------------------------------------------- FP32 vs INT8 compare
def compare_layers(fp32_path, int8_path, tiles: np.ndarray, max_tiles: int = 128) -> list[tuple[str, float]]:
    """Per-tensor signal-to-quantization-noise ratio (dB) of every quantized activation, INT8 vs
    FP32, on ``tiles``; lowest first. Use it when INT8 and FP32 decisions disagree too much: the
    first tensor with a low SQNR is where the precision is lost."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    tiles = tiles[:max_tiles]
    with tempfile.TemporaryDirectory() as tmp:
        f_aug, q_aug = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        modify_model_output_intermediate_tensors(str(fp32_path), str(f_aug))
        modify_model_output_intermediate_tensors(str(int8_path), str(q_aug))
        f_act = collect_activations(str(f_aug), TileReader(tiles))
        q_act = collect_activations(str(q_aug), TileReader(tiles))
    match = create_activation_matching(q_act, f_act)
    err = compute_activation_error(match)
    rows = [(name, float(e.get("xmodel_err", e.get("qdq_err", float("nan"))))) for name, e in err.items()]
    rows.sort(key=lambda r: (math.isnan(r[1]), r[1]))
    return rows


def write_golden(path, tiles: np.ndarray, int8_out: np.ndarray, fp32_out: np.ndarray | None) -> Path:
    """Golden vectors: a few uint16 input tiles and the model outputs, compressed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"tiles": tiles.astype(np.uint16), "int8": int8_out.astype(np.float32)}
    if fp32_out is not None:
        arrays["fp32"] = fp32_out.astype(np.float32)
    np.savez_compressed(path, **arrays)
    return path
