"""models.export.merge_stem_columns and stem_over_cells: the faster stems give the same outputs
(INT8 bit for bit).

Graphs are built here with onnx.helper in the two forms the build writes (INT8 QDQ after
channels_last_uint8_input, FP32 with a dequantized uint8 input) and run in real onnxruntime
sessions before and after the rewrite."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from flight.inference import ModelCard, TileModel, model_path, to_cells  # noqa: E402
from models.export import CELLS_NODE, UINT8_INPUT, input_cell, merge_stem_columns, stem_over_cells  # noqa: E402


def _graph(k: int, out_c: int, seed: int, int8: bool, stride: int | None = None, pads: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    stride = k if stride is None else stride
    x = helper.make_tensor_value_info(UINT8_INPUT, TensorProto.UINT8, ["batch", 64, 64, 6])
    side = (64 + 2 * pads - k) // stride + 1
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out_c, side, side])
    inits = [numpy_helper.from_array(np.array(0.0054, np.float32), "in_scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "in_zp")]
    conv_attrs = dict(kernel_shape=[k, k], strides=[stride, stride], pads=[pads] * 4)
    if int8:  # QDQ: Transpose -> DQ -> Conv(DQ(int8 weights, per channel), DQ(int32 bias)) -> Q -> DQ
        w_scale = rng.uniform(0.001, 0.02, out_c).astype(np.float32)
        inits += [numpy_helper.from_array(rng.integers(-127, 128, (out_c, 6, k, k)).astype(np.int8), "w_q"),
                  numpy_helper.from_array(w_scale, "w_scale"),
                  numpy_helper.from_array(np.zeros(out_c, np.int8), "w_zp"),
                  numpy_helper.from_array(rng.integers(-5000, 5000, out_c).astype(np.int32), "b_q"),
                  numpy_helper.from_array(w_scale * np.float32(0.0054), "b_scale"),
                  numpy_helper.from_array(np.zeros(out_c, np.int32), "b_zp"),
                  numpy_helper.from_array(np.array(0.05, np.float32), "o_scale"),
                  numpy_helper.from_array(np.array(128, np.uint8), "o_zp")]
        nodes = [helper.make_node("Transpose", [UINT8_INPUT], ["x_q"], perm=[0, 3, 1, 2], name="tiles_to_nchw"),
                 helper.make_node("DequantizeLinear", ["x_q", "in_scale", "in_zp"], ["x"]),
                 helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=0),
                 helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b"], axis=0),
                 helper.make_node("Conv", ["x", "w", "b"], ["c"], **conv_attrs),
                 helper.make_node("QuantizeLinear", ["c", "o_scale", "o_zp"], ["c_q"]),
                 helper.make_node("DequantizeLinear", ["c_q", "o_scale", "o_zp"], ["y"])]
    else:  # FP32: DQ(uint8) -> Transpose -> Conv(float weights)
        inits += [numpy_helper.from_array(rng.normal(0, 0.3, (out_c, 6, k, k)).astype(np.float32), "w"),
                  numpy_helper.from_array(rng.normal(0, 0.1, out_c).astype(np.float32), "b")]
        nodes = [helper.make_node("DequantizeLinear", [UINT8_INPUT, "in_scale", "in_zp"], ["x_nhwc"]),
                 helper.make_node("Transpose", ["x_nhwc"], ["x"], perm=[0, 3, 1, 2], name="tiles_to_nchw"),
                 helper.make_node("Conv", ["x", "w", "b"], ["y"], **conv_attrs)]
    m = helper.make_model(helper.make_graph(nodes, "stem", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _run(path, tiles: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {UINT8_INPUT: tiles})[0]


@settings(max_examples=12, deadline=None)
@given(k=st.sampled_from([2, 4, 8]), out_c=st.sampled_from([1, 8, 16]), seed=st.integers(0, 2**32 - 1),
       int8=st.booleans())
def test_rewritten_stem_gives_the_same_outputs(tmp_path_factory, k, out_c, seed, int8):
    path = tmp_path_factory.mktemp("stem") / "m.onnx"
    onnx.save(_graph(k, out_c, seed, int8), str(path))
    tiles = np.random.default_rng(seed).integers(0, 256, (5, 64, 64, 6), dtype=np.uint8)  # the whole uint8 range
    before = _run(path, tiles)
    assert merge_stem_columns(path) == k
    after = _run(path, tiles)
    assert after.shape == before.shape
    if int8:
        assert np.array_equal(after, before)  # same integer products and sums
    else:
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    assert merge_stem_columns(path) is None  # once only
    assert np.array_equal(_run(path, tiles), after)
    # then over k x k cells: the file takes to_cells' layout, with the same outputs again
    assert stem_over_cells(path) == k
    assert input_cell(path) == k
    cells = _run(path, to_cells(tiles, k))
    if int8:
        assert np.array_equal(cells, before)
    else:
        np.testing.assert_allclose(cells, before, rtol=1e-5, atol=1e-5)
    assert stem_over_cells(path) is None and merge_stem_columns(path) is None  # once only, either way


def test_to_cells_puts_each_block_of_pixels_together():
    tiles = np.random.default_rng(2).integers(0, 256, (3, 64, 64, 6), dtype=np.uint8)
    for c in (2, 4, 8):
        got = to_cells(tiles, c)
        assert got.shape == (3, 64 // c, 64 // c, 6 * c * c) and got.flags.c_contiguous
        for n, cy, cx in [(0, 0, 0), (1, 3, 5), (2, 64 // c - 1, 64 // c - 1)]:
            block = tiles[n, cy * c:(cy + 1) * c, cx * c:(cx + 1) * c]  # (c, c, 6): rows, columns, bands
            assert np.array_equal(got[n, cy, cx], block.reshape(-1))
    assert to_cells(tiles, 1) is tiles


@pytest.mark.parametrize("stride,pads", [(1, 0), (2, 1)])
def test_other_stems_are_left_alone(tmp_path, stride, pads):
    path = tmp_path / "m.onnx"
    onnx.save(_graph(4, 8, 3, True, stride=stride, pads=pads), str(path))
    before = path.read_bytes()
    assert merge_stem_columns(path) is None
    assert stem_over_cells(path) is None  # only a merged stem goes over cells
    assert path.read_bytes() == before


@pytest.mark.parametrize("name", ["cloud_screen", "fire_detect", "ship_detect"])
def test_shipped_int8_files_have_the_fast_stem_and_fp32_files_the_plain_one(name):
    card = ModelCard.load(model_path(name))
    int8 = onnx.load(str(card.model_file("int8")))
    fp32 = onnx.load(str(card.model_file("fp32")))
    assert [n.op_type for n in int8.graph.node if n.name == CELLS_NODE] == ["Reshape"]
    assert card.int8_input_cell == input_cell(card.model_file("int8")) > 1
    assert not any(n.name in ("tiles_merge_columns", CELLS_NODE) for n in fp32.graph.node)
    assert input_cell(card.model_file("fp32")) == 1
    assert "stem" in card.info["quantization"]
    # both files take the same uint16 tiles through TileModel, and a wrong card cell is refused at load
    tiles = np.random.default_rng(4).integers(0, 9000, (8, 64, 64, 6), dtype=np.uint16)
    i8, f32 = TileModel(model_path(name)), TileModel(model_path(name), precision="fp32")
    assert i8.cell == card.int8_input_cell and f32.cell == 1
    assert np.abs(i8.run(tiles) - f32.run(tiles)).max() < 0.5  # the same model, quantized


def test_a_per_channel_step_before_the_stem_is_left_alone(tmp_path):
    # a per-band dequantization of the input would see the merged columns as other bands
    m = _graph(4, 8, 5, False)
    g = m.graph
    for init in g.initializer:
        if init.name == "in_scale":
            init.CopyFrom(numpy_helper.from_array(np.linspace(0.004, 0.006, 6).astype(np.float32), "in_scale"))
        if init.name == "in_zp":
            init.CopyFrom(numpy_helper.from_array(np.zeros(6, np.uint8), "in_zp"))
    next(n for n in g.node if n.op_type == "DequantizeLinear").attribute.append(helper.make_attribute("axis", 3))
    onnx.checker.check_model(m)
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    before = path.read_bytes()
    assert merge_stem_columns(path) is None
    assert path.read_bytes() == before
