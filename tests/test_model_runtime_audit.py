"""Run-time audit of the onboard models: a model that loaded and passed its golden vectors, then
misbehaves on real frames.

Each hostile model is a real ONNX graph (onnx.helper) honouring the card's input contract (uint8
(N, 64, 64, 6) named as the card says, the card's output name and declared shape), installed the way
the flight installs models: an upload bundle (card, ONNX, golden vectors) sent over authenticated
commands and activated on probation, or a version already active in the flight's models folder when
the FlightApp starts (no probation). Its golden tiles are zeros, on which it answers a sane value, so
it verifies; on real tiles (any quantized value >= `trigger`) it answers the hostile value, another
shape, raises inside onnxruntime, or loops for a while. Frames are the simulator's 256 x 256 scenes,
fed strip by strip to a real FlightApp (no sockets); products are read back from its store and
decoded from their packets.

What a flight engineer expects, whatever the model does:
- the flight goes on: the next frame is processed; a frame is only lost when the cloud screen itself
  cannot screen it (it cannot be switched off);
- products already stored stay, every product made decodes from its packet (nothing is lost in
  packing), no summary carries a NaN or out-of-range cloud fraction, no detection comes from a NaN
  or infinite score;
- the problem is counted once (`errors`, the error budget) and reported (MODEL_RUN_FAILED), and the
  guard acts as flight.app.GuardedModel intends: a new version on probation is rolled back and the
  call repeated with the previous version (the frame keeps its results), a detector past probation is
  disabled, a cloud screen past probation costs its frame and, failing on, the error budget (SAFE).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from ops_util import MODELS, flight_apps
from test_model_update import Uplink, last_report
from test_modes import feed_frame

from flight.dictionary import EVENTS, Mode
from flight.inference import OUTPUT_SLACK, ModelCard, ModelOutputError, TileModel
from flight.model_update import (
    CARD,
    GOLDEN,
    MAGIC,
    ONNX,
    ModelStore,
    ModelUpdateError,
    golden_bytes,
    verify_model_dir,
)
from flight.products import Detection, Event, FrameSummary, decode_tm

CASCADE = ('flight.cascade=[{model="cloud_screen"}, {model="ship_detect", when="clear_water"},'
           ' {model="fire_detect", when="clear_land"}]')
EVENT_NAME = {d.id: name for name, d in EVENTS.items()}
CELLS = 16  # heatmap side of the packaged detectors (stride 4)
FACTORY = {n: ModelCard.load(MODELS / f"{n}.card.json").version for n in ("cloud_screen", "fire_detect", "ship_detect")}


# --- hostile graphs and their bundles ---------------------------------------------------------------------


def _const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name + "_value"))


def hostile_onnx(kind: str, output_name: str, value: float = 0.9, normal: float = 0.05, trigger: int = 1,
                 mutate: str | None = None, spin: int = 0, out_type: int = TensorProto.FLOAT,
                 input_name: str = "tiles_u8") -> bytes:
    """A graph answering `normal` on tiles whose quantized values all stay below `trigger` (the zero
    golden tiles) and `value` on the others; `mutate` changes the output's shape (only when some tile
    of the batch triggers, so the golden run passes), raises inside onnxruntime, or runs a loop of
    `spin` 64 x 64 matrix products per call."""
    inner = () if kind == "tile_fraction" else (CELLS, CELLS)
    n = [helper.make_node("Cast", [input_name], ["xf"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMax", ["xf"], ["m"], axes=[1, 2, 3], keepdims=0),
         _const("trig", np.float32(trigger)),
         helper.make_node("GreaterOrEqual", ["m", "trig"], ["cond"])]
    if kind == "heatmap":
        n += [_const("ax12", np.array([1, 2], np.int64)), helper.make_node("Unsqueeze", ["cond", "ax12"], ["c"])]
    else:
        n += [helper.make_node("Identity", ["cond"], ["c"])]
    n += [_const("hv", np.full(inner, value, np.float32)), _const("nv", np.full(inner, normal, np.float32)),
          helper.make_node("Where", ["c", "hv", "nv"], ["y"]),
          # k = 1 when a tile of the batch triggers, else 0; n1 = [rows]
          helper.make_node("Cast", ["cond"], ["ci"], to=TensorProto.INT64),
          helper.make_node("ReduceMax", ["ci"], ["k"], keepdims=0),
          _const("z1", np.array([0], np.int64)), _const("one1", np.array([1], np.int64)),
          _const("ax0", np.array([0], np.int64)), helper.make_node("Unsqueeze", ["k", "ax0"], ["k1"]),
          helper.make_node("Shape", ["y"], ["ys"]), helper.make_node("Slice", ["ys", "z1", "one1"], ["n1"])]
    out = "y"
    if mutate == "rows_plus":  # one row more than tiles
        n += [helper.make_node("Slice", ["y", "z1", "k1"], ["extra"]), helper.make_node("Concat", ["y", "extra"], ["o"], axis=0)]
        out = "o"
    elif mutate == "double":  # twice the rows
        n += [helper.make_node("Mul", ["n1", "k1"], ["nk"]), helper.make_node("Slice", ["y", "z1", "nk"], ["extra"]),
              helper.make_node("Concat", ["y", "extra"], ["o"], axis=0)]
        out = "o"
    elif mutate == "zero":  # no row at all
        n += [helper.make_node("Sub", ["one1", "k1"], ["k0"]), helper.make_node("Mul", ["n1", "k0"], ["nk"]),
              helper.make_node("Slice", ["y", "z1", "nk"], ["o"])]
        out = "o"
    elif mutate == "extra_dim":  # a trailing axis of 1: (N, 1) or (N, 16, 16, 1)
        n += [helper.make_node("Slice", ["one1", "z1", "k1"], ["tail"]),
              helper.make_node("Concat", ["ys", "tail"], ["shape"], axis=0), helper.make_node("Reshape", ["y", "shape"], ["o"])]
        out = "o"
    elif mutate == "transposed":  # (1, N) for a fraction
        n += [helper.make_node("Slice", ["one1", "z1", "k1"], ["head"]),
              helper.make_node("Concat", ["head", "n1"], ["shape"], axis=0), helper.make_node("Reshape", ["y", "shape"], ["o"])]
        out = "o"
    elif mutate == "raise":  # Gather out of bounds for the triggered tiles: onnxruntime raises
        n += [helper.make_node("Cast", ["cond"], ["idx"], to=TensorProto.INT64),
              _const("table", np.full((1,) + inner, normal, np.float32)),
              helper.make_node("Gather", ["table", "idx"], ["o"], axis=0)]
        out = "o"
    elif mutate == "slow":  # a loop of `spin` products when a tile triggers: slow on real frames only
        body = helper.make_graph(
            [helper.make_node("MatMul", ["a_in", "w"], ["a_mm"]), helper.make_node("Tanh", ["a_mm"], ["a_out"]),
             helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info("a_in", TensorProto.FLOAT, [64, 64])],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("a_out", TensorProto.FLOAT, [64, 64])],
            [numpy_helper.from_array(np.eye(64, dtype=np.float32) * 0.5, "w")])
        n += [_const("spin", np.int64(spin)), helper.make_node("Mul", ["k", "spin"], ["trips"]),
              _const("true", np.array(True)), _const("a0", np.zeros((64, 64), np.float32)),
              helper.make_node("Loop", ["trips", "true", "a0"], ["a_end"], body=body),
              helper.make_node("ReduceMin", ["a_end"], ["zero"], keepdims=0),  # 0: the output is unchanged
              helper.make_node("Add", ["y", "zero"], ["o"])]
        out = "o"
    if out_type != TensorProto.FLOAT:
        n.append(helper.make_node("Cast", [out], ["oc"], to=out_type))
        out = "oc"
    n.append(helper.make_node("Identity", [out], [output_name]))
    shape = ["batch"] if kind == "tile_fraction" else ["batch", CELLS, CELLS]
    g = helper.make_graph(n, "hostile", [helper.make_tensor_value_info(input_name, TensorProto.UINT8, ["batch", 64, 64, 6])],
                          [helper.make_tensor_value_info(output_name, out_type, shape)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def hostile_parts(name: str, version: str, graph_kind: str | None = None, **graph) -> tuple[bytes, bytes, bytes]:
    """(card JSON, ONNX, golden .npz) of a hostile version of a packaged model: the packaged card
    (same kind, names, input quantization and threshold) for the new file; no fp32 file, the plain
    input layout (no int8_input_cell) and no validated prescreen (the detector runs on every clear tile of its kind). `graph_kind`: a graph
    of the other kind's output shape under this card."""
    card = json.loads((MODELS / f"{name}.card.json").read_text())
    blob = hostile_onnx(graph_kind or card["kind"], card["output_name"], **graph)
    for k in ("fp32_file", "fp32_sha256", "fp32_size_bytes", "prescreen", "int8_input_cell"):  # a plain-input graph
        card.pop(k, None)
    card.update(version=version, sha256=hashlib.sha256(blob).hexdigest(), size_bytes=len(blob))
    inner = () if card["kind"] == "tile_fraction" else (CELLS, CELLS)
    want = np.clip(np.full((2,) + inner, graph.get("normal", 0.05), np.float32), 0, 1)
    gold = golden_bytes(np.zeros((2, 64, 64, 6), np.uint16), want, card["sha256"])
    return json.dumps(card).encode(), blob, gold


def hostile_bundle(name: str, version: str, **graph) -> bytes:
    parts = zip((CARD, ONNX, GOLDEN), hostile_parts(name, version, **graph), strict=True)
    return MAGIC + b"".join(struct.pack(">BI", k, len(b)) + b for k, b in parts)


# --- the flight around them ---------------------------------------------------------------------------------


@pytest.fixture
def flight(tmp_path, monkeypatch):
    with flight_apps(tmp_path, monkeypatch, ["sensor.strip_rows=128", CASCADE, "ops.error_budget=100"], 1000.0) as (make, key):
        yield make, key


def start(make, extra=()):
    """A FlightApp whose frame results are also kept (a spy on finish, the real call underneath)."""
    app, sc = make(list(extra))
    app.results = []
    finish = app.pipeline.finish
    app.pipeline.finish = lambda: app.results.append(finish()) or app.results[-1]
    return app, sc


def upload(app, key, name: str, data: bytes) -> None:
    """UPLOAD_BEGIN / CHUNK / ACTIVATE over authenticated commands: the new version on probation."""
    if not hasattr(app, "uplink"):  # one command counter per flight: a second Uplink's commands are replays
        app.uplink = Uplink(app, key)
    send = app.uplink
    send("UPLOAD_ACTIVATE", upload_id=send.upload(data, model=name))
    assert last_report(app).report == 7, last_report(app).message  # COMPLETED: it verified
    assert app.pipeline.models[name].model.card.version == json.loads(_card_of(data))["version"]


def _card_of(bundle: bytes) -> bytes:
    (size,) = struct.unpack_from(">I", bundle, len(MAGIC) + 1)
    return bundle[len(MAGIC) + 5 : len(MAGIC) + 5 + size]


def preinstall(tmp_path, name: str, version: str, **graph) -> None:
    """The hostile version already active in the flight's models folder when it starts (an upload
    of an earlier pass, probation long over): what the FlightApp then loads and verifies."""
    store = ModelStore(tmp_path / "models")
    kind = ModelCard.load(MODELS / f"{name}.card.json").kind
    store.install_bundle(name, hostile_bundle(name, version, **graph), kind)


def products(app) -> list:
    """Every product in the store, decoded from its packet (a packet that does not decode fails here)."""
    return [decode_tm(p)[1] for (p,) in app.store.db.execute("SELECT packet FROM products ORDER BY id")]


def events(app) -> list[tuple[str, str]]:
    return [(EVENT_NAME[p.event_id], p.message) for p in products(app) if isinstance(p, Event)]


def named(app, event: str) -> list[str]:
    return [m for e, m in events(app) if e == event]


def check_products(app) -> tuple[list[FrameSummary], list[Detection]]:
    """What must hold whatever a model did: nothing lost in packing, no software fault, summaries with
    a measured cloud fraction in 0..1 and consistent counts, detections from finite scores."""
    assert app.counts["products_lost"] == 0 and app.counts["software_faults"] == 0, app.counts
    ps = products(app)
    sums = [p for p in ps if isinstance(p, FrameSummary)]
    dets = [p for p in ps if isinstance(p, Detection)]
    for s in sums:
        assert 0.0 <= s.cloud_fraction <= 1.0, s  # also false for NaN
        assert 0 <= s.cloudy_tiles <= s.tiles == 16, s
    for d in dets:
        assert 0 <= d.confidence_q <= 255 and np.isfinite([d.row_px, d.col_px]).all(), d
        assert 0 <= d.row_px < 256 and 0 <= d.col_px < 256, d
    return sums, dets


def frame_view(r) -> tuple:
    """What a frame result says, for comparing two runs of the same frame."""
    return (r.tile_cloud.tolist(), r.discarded, [(d.class_id, d.row_px, d.col_px, d.confidence, d.area_px) for d in r.detections])


# --- the runtime check itself ---------------------------------------------------------------------------------


def _tile_model(tmp_path, name: str, **graph) -> TileModel:
    card, blob, _ = hostile_parts(name, "9.9.9", **graph)
    c = json.loads(card)
    (tmp_path / c["file"]).write_bytes(blob)
    (tmp_path / f"{name}.card.json").write_bytes(card)
    return TileModel(tmp_path / f"{name}.card.json")


BAD_VALUES = [np.nan, np.inf, -np.inf, 1e38, -1e38, -0.7, 1.7, 1.0 + OUTPUT_SLACK + 1e-3]
BAD_SHAPES = ["rows_plus", "double", "zero", "extra_dim", "transposed"]


@pytest.mark.parametrize("name", ["cloud_screen", "fire_detect"])
def test_tile_model_refuses_outputs_that_break_its_card_and_keeps_sane_ones(tmp_path, name):
    """TileModel.run is where a model's output meets its card. NaN, +-inf, values far outside 0..1
    (1e38, a logit of 1.7 or -0.7) and an output of another shape than the card's (a row more or
    fewer than tiles, (N, 1), (1, N)) raise ModelOutputError naming the model. Before: NaN passed
    the clip, +inf / 1e38 / 1.7 became 1.0 and -inf / -0.7 became 0.0, (N, 1) and (1, N) were
    reshaped silently; only a wrong row count raised, as a bare numpy reshape error. Small
    overshoots (INT8 rounding, a regression head) are still clipped, and tiles below the trigger
    still give the sane value."""
    rng = np.random.default_rng(7)
    tiles = rng.integers(100, 3000, size=(5, 64, 64, 6)).astype(np.uint16)
    zeros = np.zeros((3, 64, 64, 6), np.uint16)
    for value in BAD_VALUES:
        m = _tile_model(tmp_path, name, value=value)
        assert np.all(m.run(zeros) == np.float32(0.05))
        with pytest.raises(ModelOutputError, match=f"{name} 9.9.9: output of"):
            m.run(tiles)
    for mutate in BAD_SHAPES if name == "cloud_screen" else ["rows_plus", "double", "zero", "extra_dim"]:
        m = _tile_model(tmp_path, name, mutate=mutate)
        assert m.run(zeros).shape[0] == 3
        with pytest.raises(ModelOutputError, match="card says float32"):
            m.run(tiles)
    for value, want in ((1.0 + OUTPUT_SLACK / 2, 1.0), (-OUTPUT_SLACK / 2, 0.0)):
        out = _tile_model(tmp_path, name, value=value).run(tiles)
        assert np.all(out == np.float32(want))


def test_a_model_whose_golden_run_breaks_its_card_is_refused_at_verification(tmp_path):
    """The golden run goes through the same check: a model answering NaN on its golden tiles is
    refused naming the output (it was refused before too, as 'golden vectors differ', since NaN !=
    NaN, even with NaN in the golden file)."""
    card, blob, _ = hostile_parts("cloud_screen", "9.9.9", value=np.nan, trigger=0)
    c = json.loads(card)
    (tmp_path / c["file"]).write_bytes(blob)
    (tmp_path / "cloud_screen.card.json").write_bytes(card)
    (tmp_path / "golden.npz").write_bytes(golden_bytes(np.zeros((2, 64, 64, 6), np.uint16),
                                                        np.full(2, np.nan, np.float32), c["sha256"]))
    with pytest.raises(ModelUpdateError, match="golden run failed: ModelOutputError.*NaN"):
        verify_model_dir(tmp_path, "cloud_screen")


@pytest.mark.parametrize("name,out_type,graph_kind,why", [
    ("cloud_screen", TensorProto.INT32, None, "output type tensor\\(int32\\)"),
    ("cloud_screen", TensorProto.DOUBLE, None, "output type tensor\\(double\\)"),
    ("fire_detect", TensorProto.DOUBLE, None, "output type tensor\\(double\\)"),
    ("cloud_screen", TensorProto.FLOAT, "heatmap", "output shape \\['batch', 16, 16\\]"),
    ("fire_detect", TensorProto.FLOAT, "tile_fraction", "output shape \\['batch'\\]"),
])
def test_an_upload_with_another_output_type_or_rank_is_refused_and_nothing_changes(flight, name, out_type, graph_kind, why):
    """Wrong dtype (int32, float64) or an output rank the card's kind does not allow (a heatmap
    under a fraction card and the reverse): onnxruntime loads such graphs, TileModel's load check
    refuses them, so the upload fails with MODEL_UPDATE_FAILED and the active version runs on (was
    already so; kept as a regression test: the run-time checks below rely on it)."""
    make, key = flight
    app, sc = start(make)
    before = app.model_store.active[name]
    data = hostile_bundle(name, "9.0.0", out_type=out_type, graph_kind=graph_kind)
    send = Uplink(app, key)
    send("UPLOAD_ACTIVATE", upload_id=send.upload(data, model=name))
    assert last_report(app).report == 8
    assert app.model_store.active[name] == before
    (reason,) = named(app, "MODEL_UPDATE_FAILED")
    assert "load refused" in reason
    assert re.search(why, reason), reason
    feed_frame(app, sc, 0)
    assert app.counts["frames_processed"] == 1 and app.counts["errors"] == 0 and app.modes.mode == Mode.NOMINAL
    check_products(app)


# --- through the flight: a new version on probation --------------------------------------------------------------

HOSTILE = [dict(value=v) for v in BAD_VALUES[:7]] + [dict(mutate=m) for m in ("rows_plus", "double", "zero", "extra_dim", "raise")]
HOSTILE_IDS = [f"value={c['value']:g}" if "value" in c else c["mutate"] for c in HOSTILE]


@pytest.mark.parametrize("name", ["cloud_screen", "fire_detect"])
@pytest.mark.parametrize("graph", HOSTILE, ids=HOSTILE_IDS)
def test_a_new_version_misbehaving_on_real_frames_is_rolled_back_and_the_frame_keeps_its_results(flight, name, graph):
    """A new version on probation answers NaN / +-inf / 1e38 / out-of-range values / a wrong shape
    on real tiles, or raises inside onnxruntime. Expected: MODEL_RUN_FAILED (the reason names the
    output's defect) and MODEL_ROLLED_BACK to the packaged version, counted once (errors 1,
    models_rolled_back 1, DEGRADED), and the call repeated with the packaged version, so the frame's
    cloud map, discard decision and detections are exactly those of the packaged models. Before:
    NaN reached the frame summary as the cloud fraction (all tiles not cloudy, none screened clear),
    +inf / 1e38 / 1.7 discarded cloud-free frames as 100 % cloudy or made a full-confidence fire of
    4096 px in every clear land tile, -inf / -0.7 screened every tile clear, (N, 1) was accepted;
    all of it without an event, an error or a rollback."""
    make, key = flight
    app, sc = start(make)
    feed_frame(app, sc, 0)  # the reference: the packaged models on this frame
    upload(app, key, name, hostile_bundle(name, "9.0.0", **graph))
    feed_frame(app, sc, 0)
    assert app.counts["frames_processed"] == 2 and app.counts["frames_rejected"] == 0
    assert frame_view(app.results[1]) == frame_view(app.results[0])
    assert app.model_store.active[name].version == FACTORY[name]
    assert app.counts["errors"] == 1 and app.counts["models_rolled_back"] == 1 and app.modes.mode == Mode.DEGRADED
    (failed,) = named(app, "MODEL_RUN_FAILED")
    assert f"{name} 9.0.0" in failed
    if "value" in graph:
        assert "ModelOutputError" in failed and "output of" in failed
    elif graph["mutate"] != "raise":
        assert "ModelOutputError" in failed and "card says float32" in failed
    assert len(named(app, "MODEL_ROLLED_BACK")) == 1
    feed_frame(app, sc, 3)  # and the flight goes on with the packaged version
    assert app.counts["frames_processed"] == 3 and app.counts["errors"] == 1
    sums, _ = check_products(app)
    assert len(sums) == 3


def test_a_new_version_whose_rollback_target_fails_too_keeps_the_detector_s_frame(flight):
    """Two bad fire_detect versions uploaded one after the other: 9.0.1 fails on probation and is
    rolled back to 9.0.0, which verifies (its golden tiles are fine) but fails on the same frame too.
    Expected: both failures reported and counted (2 MODEL_RUN_FAILED, errors 2), the detector then
    disabled (9.0.0 has no probation left: it was the one rolled back to), and the frame processed
    without fire detections. Before: the repeated call ran outside the guard, its exception left the
    pipeline as a STAGE_ERROR and the frame was rejected with all its products."""
    make, key = flight
    app, sc = start(make)
    upload(app, key, "fire_detect", hostile_bundle("fire_detect", "9.0.0", mutate="raise"))
    upload(app, key, "fire_detect", hostile_bundle("fire_detect", "9.0.1", value=np.inf))
    feed_frame(app, sc, 0)
    assert app.counts["frames_processed"] == 1 and app.counts["frames_rejected"] == 0
    assert not named(app, "STAGE_ERROR")
    assert [("9.0.1" in m, "9.0.0" in m) for m in named(app, "MODEL_RUN_FAILED")] == [(True, False), (False, True)]
    assert app.counts["errors"] == 2 and app.model_store.active["fire_detect"].version == "9.0.0"
    assert "fire_detect" in app.pipeline.disabled and len(named(app, "MODEL_DISABLED")) == 1
    sums, dets = check_products(app)
    assert len(sums) == 1 and sums[0].fires == 0 and not dets
    feed_frame(app, sc, 3)
    assert app.counts["frames_processed"] == 2 and app.counts["errors"] == 2


def test_a_new_cloud_screen_whose_rollback_target_fails_too_costs_the_frame_once_per_failure(flight):
    """The same for the cloud screen, which cannot be switched off: 9.0.1 fails, is rolled back to
    9.0.0, which fails on the same tiles. The frame cannot be screened: rejected (FRAME_REJECTED
    naming the model), each model failure counted once (errors 2, no STAGE_ERROR on top), and the
    next frame is tried again with 9.0.0."""
    make, key = flight
    app, sc = start(make)
    upload(app, key, "cloud_screen", hostile_bundle("cloud_screen", "9.0.0", value=np.nan))
    upload(app, key, "cloud_screen", hostile_bundle("cloud_screen", "9.0.1", mutate="zero"))
    feed_frame(app, sc, 0)
    assert app.counts["frames_processed"] == 0 and app.counts["frames_rejected"] == 1
    assert len(named(app, "MODEL_RUN_FAILED")) == 2 and not named(app, "STAGE_ERROR")
    assert app.counts["errors"] == 2
    (rejected,) = named(app, "FRAME_REJECTED")
    assert "model cloud_screen failed" in rejected
    check_products(app)


# --- through the flight: a version past probation (already active at start-up) ---------------------------------


@pytest.mark.parametrize("graph", HOSTILE, ids=HOSTILE_IDS)
def test_a_detector_misbehaving_past_probation_is_disabled_and_the_frames_go_on(tmp_path, flight, graph):
    """fire_detect 9.0.0 already active when the flight starts (verified, no probation) misbehaves
    on the first clear land tiles. Expected: MODEL_RUN_FAILED and MODEL_DISABLED once, errors 1,
    DEGRADED, the frame processed with no fire (nothing made from NaN / inf / 1e38), the next frame
    too, without calling the disabled detector again. Before: +inf, 1e38 and 1.7 gave a
    full-confidence 4096 px fire in every clear land tile (6 over two frames), NaN / -inf / -0.7
    silently found nothing, (N, 1) was accepted, and none of it was reported."""
    preinstall(tmp_path, "fire_detect", "9.0.0", **graph)
    make, _ = flight
    app, sc = start(make)
    assert app.pipeline.models["fire_detect"].model.card.version == "9.0.0"
    for fid in (0, 3):
        feed_frame(app, sc, fid)
    assert app.counts["frames_processed"] == 2 and app.counts["frames_rejected"] == 0
    assert "fire_detect" in app.pipeline.disabled and app.modes.mode == Mode.DEGRADED
    assert len(named(app, "MODEL_RUN_FAILED")) == 1 and len(named(app, "MODEL_DISABLED")) == 1
    assert app.counts["errors"] == 1
    sums, dets = check_products(app)
    assert len(sums) == 2 and all(s.fires == 0 for s in sums)
    assert not [d for d in dets if d.class_id == 2]


@pytest.mark.parametrize("graph", HOSTILE, ids=HOSTILE_IDS)
def test_a_cloud_screen_misbehaving_past_probation_costs_its_frames_counted_once_each(tmp_path, flight, graph):
    """cloud_screen 9.0.0 already active at start-up misbehaves on every real frame. It cannot be
    disabled (the frame cannot be screened without it), so each frame is rejected: one
    MODEL_RUN_FAILED and one error per frame (the error budget then takes the flight to SAFE as for
    any repeated fault), no summary with a NaN or clipped cloud fraction. Before: NaN frames were
    'processed' with a NaN cloud fraction in the summary, +inf / 1e38 / 1.7 discarded cloud-free
    frames as 100 % cloud and -inf / -0.7 screened every tile clear, all unreported; a wrong row
    count or an onnxruntime error was charged twice (MODEL_RUN_FAILED and STAGE_ERROR)."""
    preinstall(tmp_path, "cloud_screen", "9.0.0", **graph)
    make, _ = flight
    app, sc = start(make)
    for fid in (0, 3):
        feed_frame(app, sc, fid)
    assert app.counts["frames_processed"] == 0 and app.counts["frames_rejected"] == 2
    assert len(named(app, "MODEL_RUN_FAILED")) == 2 and not named(app, "STAGE_ERROR")
    assert app.counts["errors"] == 2 and len(app.modes.errors) == 2 and app.modes.mode == Mode.DEGRADED
    assert not named(app, "FRAME_DISCARDED_CLOUDY")
    sums, _ = check_products(app)
    assert not sums


def test_a_cloud_screen_failing_on_some_frames_only_takes_the_flight_to_safe_at_the_budget(tmp_path, flight):
    """Outputs that vary per frame: cloud_screen 9.0.0 (past probation) answers NaN only on tiles
    whose quantized values reach 150 (frames 0 and 1 of this scenario have such tiles, frames 2-4
    do not). Expected: the good frames processed with finite summaries, the bad ones rejected, each
    failure counted once, and with ops.error_budget = 2 the third failure (frame 7) takes the flight
    to SAFE (ERROR_BUDGET_EXCEEDED). Before: the NaN frames were processed with NaN in their
    summaries and nothing was counted, so the flight never left NOMINAL."""
    preinstall(tmp_path, "cloud_screen", "9.0.0", value=np.nan, trigger=150)
    make, _ = flight
    app, sc = start(make, ["ops.error_budget=2"])
    for fid in (0, 2, 3, 1, 4):
        feed_frame(app, sc, fid)
    assert app.counts["frames_processed"] == 3 and app.counts["frames_rejected"] == 2
    assert app.counts["errors"] == 2 and app.modes.mode == Mode.DEGRADED
    sums, _ = check_products(app)
    assert sorted(s.frame_id for s in sums) == [2, 3, 4]
    feed_frame(app, sc, 7)
    assert app.modes.mode == Mode.SAFE and named(app, "ERROR_BUDGET_EXCEEDED")
    check_products(app)


def test_a_detector_failing_on_a_later_frame_only_is_disabled_then_and_earlier_results_stay(tmp_path, flight):
    """fire_detect 9.0.0 (past probation) answers +inf only on tiles reaching 110 (quantized): its
    clear land tiles stay below that in frames 0 and 4, not in frame 3. The frames before keep their
    products; frame 3 is processed without fire detections and the detector disabled there; frame 2
    after it is processed without it. Before: frame 3 got a full-confidence fire per clear land
    tile, unreported, and the detector stayed on."""
    preinstall(tmp_path, "fire_detect", "9.0.0", value=np.inf, normal=0.0, trigger=110)
    make, _ = flight
    app, sc = start(make)
    for fid in (0, 4):
        feed_frame(app, sc, fid)
    before = products(app)
    assert app.counts["errors"] == 0 and "fire_detect" not in app.pipeline.disabled
    feed_frame(app, sc, 3)
    assert "fire_detect" in app.pipeline.disabled and app.counts["errors"] == 1
    feed_frame(app, sc, 2)
    assert app.counts["frames_processed"] == 4 and products(app)[: len(before)] == before
    sums, dets = check_products(app)
    assert [s.frame_id for s in sums] == [0, 4, 3, 2] and not [d for d in dets if d.class_id == 2]


# --- exactly at the thresholds ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.5, 0.7])
def test_cloud_outputs_exactly_at_the_thresholds_count_as_reached(tmp_path, flight, value):
    """The card says 'cloudy when >= threshold' (0.5) and a frame is discarded when its cloud
    fraction is '>= cloud_discard_fraction' (0.7). A cloud screen answering exactly 0.5 on every
    tile makes every tile cloudy and keeps the frame; exactly 0.7 discards it (the summary packs
    0.7 as float32 and says discarded, with its event). Before: the frame fraction, a float32 mean
    widened to float64 (0.699999988), was compared with 0.7 as float64, so a frame exactly at the
    discard level was kept while its summary said 0.7."""
    preinstall(tmp_path, "cloud_screen", "9.0.0", value=value)
    make, _ = flight
    app, sc = start(make)
    feed_frame(app, sc, 0)
    r = app.results[-1]
    assert r.cloudy_tiles == r.tiles == 16 and app.counts["errors"] == 0
    (s,), _ = check_products(app)
    assert s.cloud_fraction == np.float32(value) and s.cloudy_tiles == 16
    discard = value == 0.7
    assert r.discarded == discard and s.discarded == int(discard)
    assert len(named(app, "FRAME_DISCARDED_CLOUDY")) == int(discard)


@pytest.mark.parametrize("below", [False, True])
def test_a_heatmap_exactly_at_the_threshold_is_a_detection_and_just_below_is_none(tmp_path, flight, below):
    """fire_detect answering its card threshold (0.35 as float32) in every cell of a real tile:
    one detection per clear land tile (a plateau gives one peak), confidence 0.35, area the whole
    tile; one float32 step below: nothing. Checked to be consistent between heatmap_peaks and the
    pipeline's hot-pixel area (both compare in float32); no defect found."""
    thr = np.float32(ModelCard.load(MODELS / "fire_detect.card.json").threshold)
    value = float(np.nextafter(thr, np.float32(0)) if below else thr)
    preinstall(tmp_path, "fire_detect", "9.0.0", value=value, normal=0.0)
    make, _ = flight
    app, sc = start(make)
    feed_frame(app, sc, 0)
    _, dets = check_products(app)
    fires = [d for d in dets if d.class_id == 2]
    assert app.counts["errors"] == 0
    if below:
        assert not fires
    else:
        assert fires and all(d.confidence_q == round(0.35 * 255) and d.area_px == 4096 for d in fires)


# --- slow models: the stage watchdog ---------------------------------------------------------------------------------


def _spin_for(seconds: float) -> int:
    """Loop trips that take about `seconds` on this machine (measured, so a slow CI core still trips)."""
    blob = hostile_onnx("tile_fraction", "frac", mutate="slow", spin=2000)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1  # as the flight runs its models (TileModel): two threads would share the core
    s = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
    x = np.ones((1, 64, 64, 6), np.uint8)
    s.run(None, {"tiles_u8": x})  # the first run pays one-time costs: timed, it undercounted the trips
    times = []
    for _ in range(3):  # the fastest: a busy moment would undercount them too (the call then beat the limit)
        t0 = time.perf_counter()
        s.run(None, {"tiles_u8": x})
        times.append(time.perf_counter() - t0)
    per_trip = max(min(times) / 2000, 1e-7)
    return int(seconds / per_trip)


def test_a_slow_detector_is_aborted_by_the_watchdog_disabled_and_the_frame_kept(tmp_path, flight):
    """fire_detect 9.0.0 takes about 0.6 s a call on real tiles (a loop inside the graph), the
    watchdog limit is 0.2 s. The call inside onnxruntime cannot be interrupted, but it is abandoned
    when it returns: STAGE_WATCHDOG, the detector disabled, the frame kept, one error. (The guard
    exists and works; no defect found.)"""
    preinstall(tmp_path, "fire_detect", "9.0.0", mutate="slow", spin=_spin_for(0.6))
    make, _ = flight
    app, sc = start(make, ["ops.watchdog_limit_s=0.2"])
    t0 = time.perf_counter()
    feed_frame(app, sc, 0)
    assert time.perf_counter() - t0 < 3.0
    assert app.counts["frames_processed"] == 1 and app.counts["watchdog_trips"] == 1 and app.counts["errors"] == 1
    assert "fire_detect" in app.pipeline.disabled and named(app, "STAGE_WATCHDOG")
    check_products(app)


@pytest.mark.parametrize("name", ["fire_detect", "cloud_screen"])
def test_a_new_version_too_slow_on_probation_is_rolled_back_and_the_frame_keeps_its_results(tmp_path, flight, name):
    """An upload that verifies but takes about 0.6 s a call on real tiles against a 0.2 s watchdog
    limit (too slow for this board). Before: on probation as after it, a detector was disabled
    until ENABLE_MODEL and a cloud screen cost its frame (each frame, until SAFE), with the good
    version beside it. Now a version on probation is rolled back like one that fails, the call is
    repeated with the previous version, and the frame keeps that version's results."""
    make, key = flight
    app, sc = start(make, ["ops.watchdog_limit_s=0.2", CASCADE])
    upload(app, key, name, hostile_bundle(name, "9.1.0", mutate="slow", spin=_spin_for(0.6)))
    feed_frame(app, sc, 0)
    assert app.counts["frames_processed"] == 1 and app.counts["frames_rejected"] == 0
    assert app.pipeline.models[name].model.card.version == FACTORY[name] and name not in app.pipeline.disabled
    assert app.counts["watchdog_trips"] == 1 and app.counts["models_rolled_back"] == 1
    assert named(app, "STAGE_WATCHDOG") and any("too slow on probation" in m for m in named(app, "MODEL_ROLLED_BACK"))
    assert app.modes.mode == Mode.DEGRADED  # one fault, as for a failed new version
    feed_frame(app, sc, 1)
    assert app.counts["frames_processed"] == 2 and app.counts["watchdog_trips"] == 1
    check_products(app)
