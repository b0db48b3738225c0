"""Flight runtime: model cards, verified loading, batched inference, heatmap peaks (no torch)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flight import inference
from flight.inference import ModelCard, ModelError, TileModel, heatmap_peaks, model_path

MODELS = Path(inference.__file__).resolve().parents[1] / "models"
CARDS = sorted(MODELS.glob("*.card.json"))
NAMES = [p.name.removesuffix(".card.json") for p in CARDS]


def _copy_model(tmp_path: Path, name: str = "cloud_screen") -> Path:
    card = ModelCard.load(model_path(name))
    for f in (f"{name}.card.json", card.file, card.fp32_file):
        if f:
            shutil.copy(MODELS / f, tmp_path / f)
    return tmp_path / f"{name}.card.json"


def _tiles(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 12000, size=(n, 64, 64, 6)).astype(np.uint16)


def test_cloud_model_is_installed():
    assert "cloud_screen" in NAMES
    p = model_path("cloud_screen")
    assert p.exists() and p.parent == MODELS


@pytest.mark.parametrize("name", NAMES)
def test_committed_cards_parse(name):
    card = ModelCard.load(model_path(name))
    assert card.name == name
    assert card.input_shape == (None, 64, 64, 6)
    assert 0 < card.quant_scale < 0.02 and 0 <= card.quant_zero_point <= 255
    assert card.bands == ("blue", "green", "red", "nir", "swir16", "swir22")
    assert card.input_scale == pytest.approx(1e-4)
    assert (MODELS / card.file).stat().st_size == card.size_bytes <= 256 * 1024
    assert card.kind in ("tile_fraction", "heatmap")


def test_flipped_byte_is_refused_before_a_session_exists(tmp_path, monkeypatch):
    card_path = _copy_model(tmp_path)
    card = ModelCard.load(card_path)
    onnx_file = tmp_path / card.file
    blob = bytearray(onnx_file.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    onnx_file.write_bytes(bytes(blob))
    import onnxruntime

    created = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: created.append(1))
    with pytest.raises(ModelError) as exc:
        TileModel(card_path)
    assert "sha256" in str(exc.value) and exc.value.model == "cloud_screen"
    assert exc.value.path == str(onnx_file)
    assert created == []


def test_truncated_model_is_refused(tmp_path):
    card_path = _copy_model(tmp_path)
    f = tmp_path / ModelCard.load(card_path).file
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ModelError, match="size"):
        TileModel(card_path)


def test_missing_model_file_is_refused(tmp_path):
    card_path = _copy_model(tmp_path)
    (tmp_path / ModelCard.load(card_path).file).unlink()
    with pytest.raises(ModelError, match="cannot read model file"):
        TileModel(card_path)


def _edit_card(card_path: Path, **changes) -> None:
    d = json.loads(card_path.read_text())
    for k, v in changes.items():
        if v is KeyError:
            del d[k]
        else:
            d[k] = v
    card_path.write_text(json.dumps(d))


@pytest.mark.parametrize(
    "key, value",
    [
        ("name", "Cloud Screen"),
        ("kind", "segmentation"),
        ("sha256", "abc"),
        ("size_bytes", -1),
        ("size_bytes", True),
        ("input_shape", [1, 64, 64, 6]),
        ("input_shape", [None, 6, 64, 64]),  # channels first: not the flight's layout
        ("input_shape", [None, 32, 32, 6]),
        ("input_quant", {"scale": 0.005}),
        ("input_quant", {"scale": 0.005, "zero_point": 300}),
        ("bands", ["blue", "green"]),
        ("input_scale", 0),
        ("input_scale", float("nan")),
        ("stride", 8),  # tile_fraction needs 64
        ("threshold", 1.5),
        ("threshold", "0.5"),
        ("macs_per_tile", 0),
        ("macs_per_tile", 2**63),
        ("macs_per_tile", 2**40 + 1),
        ("file", "../elsewhere.onnx"),
        ("treshold", 0.5),  # unknown key (typo)
        ("threshold", KeyError),  # missing key
        # the detector prescreen a version was validated with, over its fields' whole range
        ("prescreen", {"band": "thermal", "max_cut": 100}),
        ("prescreen", {"band": "nir"}),
        ("prescreen", {"band": "nir", "max_cut": -1}),
        ("prescreen", {"band": "nir", "max_cut": 2**63}),
        ("prescreen", {"band": "nir", "max_cut": float("nan")}),
        ("prescreen", {"band": "nir", "max_cut": float("inf")}),
        ("prescreen", {"band": "nir", "max_cut": "150"}),
        ("prescreen", {"band": "nir", "max_cut": True}),
        ("prescreen", {"band": "nir", "max_cut": [150]}),
        ("prescreen", {"band": "nir", "max_cut": 150, "basis": {"nested": 1}}),
        ("prescreen", {"band": "nir", "max_cut": 150, "cut": 150}),
        ("prescreen", {}),
        ("prescreen", []),
        ("prescreen", "nir 150"),
        # the INT8 file's input in cells: over the field's whole range
        ("int8_input_cell", 0),
        ("int8_input_cell", 3),
        ("int8_input_cell", 16),
        ("int8_input_cell", -4),
        ("int8_input_cell", 2**63),
        ("int8_input_cell", 4.0),
        ("int8_input_cell", True),
        ("int8_input_cell", "4"),
        ("int8_input_cell", [4]),
        ("int8_input_cell", {"cell": 4}),
        ("int8_input_cell", None),
    ],
)
def test_bad_card_is_refused_naming_the_key(tmp_path, key, value):
    card_path = _copy_model(tmp_path)
    _edit_card(card_path, **{key: value})
    with pytest.raises(ModelError) as exc:
        ModelCard.load(card_path)
    assert exc.value.key == key
    assert repr(key) in str(exc.value)


def test_a_card_s_prescreen_is_read_and_is_optional(tmp_path):
    card_path = _copy_model(tmp_path)
    _edit_card(card_path, prescreen={"band": "swir22", "max_cut": 4000, "basis": "validation"})
    card = ModelCard.load(card_path)
    assert (card.prescreen_band, card.prescreen_max_cut) == ("swir22", 4000.0)
    _edit_card(card_path, prescreen=KeyError)
    card = ModelCard.load(card_path)
    assert card.prescreen_band is None and card.prescreen_max_cut is None


def test_card_that_is_not_json_is_refused(tmp_path):
    p = tmp_path / "x.card.json"
    p.write_text("{not json")
    with pytest.raises(ModelError, match="not JSON"):
        ModelCard.load(p)


def test_card_io_mismatch_is_refused(tmp_path):
    card_path = _copy_model(tmp_path)
    _edit_card(card_path, input_name="wrong_input")
    with pytest.raises(ModelError, match="inputs"):
        TileModel(card_path)
    card_path = _copy_model(tmp_path)
    _edit_card(card_path, output_name="wrong_output")
    with pytest.raises(ModelError, match="outputs"):
        TileModel(card_path)


def test_a_card_whose_cell_is_not_its_file_s_layout_is_refused_at_load(tmp_path):
    """The INT8 file takes its tiles in the card's cells (its session's input shape): a card that
    says another layout would feed it the wrong pixels, so it is refused when loaded."""
    cell = ModelCard.load(model_path("cloud_screen")).int8_input_cell
    assert cell > 1
    for wrong in (KeyError, 1 if cell != 1 else 2, 8 if cell != 8 else 2):
        card_path = _copy_model(tmp_path)
        _edit_card(card_path, int8_input_cell=wrong)
        with pytest.raises(ModelError, match="input shape"):
            TileModel(card_path)
    card_path = _copy_model(tmp_path)
    _edit_card(card_path, int8_input_cell=cell)
    assert TileModel(card_path).cell == cell
    assert TileModel(card_path, precision="fp32").cell == 1  # the FP32 file keeps the plain layout


def test_heatmap_card_on_fraction_model_is_refused(tmp_path):
    card_path = _copy_model(tmp_path)
    _edit_card(card_path, kind="heatmap", stride=4)
    with pytest.raises(ModelError, match="output shape"):
        TileModel(card_path)


def test_bad_runtime_arguments(tmp_path):
    with pytest.raises(ModelError, match="batch_size"):
        TileModel(model_path("cloud_screen"), batch_size=0)
    with pytest.raises(ModelError, match="intra_op_threads"):
        TileModel(model_path("cloud_screen"), intra_op_threads=0)
    with pytest.raises(ModelError):
        model_path("../etc/passwd")


@pytest.fixture(scope="module")
def cloud():
    return TileModel(model_path("cloud_screen"))


def test_cloud_output_shape_and_range(cloud):
    out = cloud.run(_tiles(70))
    assert out.shape == (70,) and out.dtype == np.float32
    assert np.all((out >= 0) & (out <= 1))
    assert cloud.run(_tiles(0)).shape == (0,)


def test_batching_does_not_change_results(cloud):
    tiles = _tiles(70, seed=3)
    a = cloud.run(tiles)
    small = TileModel(model_path("cloud_screen"), batch_size=7)
    assert np.array_equal(a, small.run(tiles))


def test_cloud_separates_dark_land_from_bright_cloud(cloud):
    tiles = np.empty((2, 64, 64, 6), np.uint16)
    tiles[0] = np.array([700, 600, 500, 2500, 1500, 800], np.uint16)  # vegetation
    tiles[1] = np.array([7000, 6900, 6800, 6700, 4500, 3000], np.uint16)  # thick cloud
    frac = cloud.run(tiles)
    assert frac[0] < 0.2 and frac[1] > 0.8


@pytest.mark.parametrize("bad", [
    np.zeros((2, 64, 64, 6), np.float32),
    np.zeros((2, 64, 64, 4), np.uint16),
    np.zeros((2, 6, 64, 64), np.uint16),  # channels first
    np.zeros((64, 64, 6), np.uint16),
    [[1, 2, 3]],
])
def test_run_rejects_wrong_input(cloud, bad):
    with pytest.raises(ValueError):
        cloud.run(bad)


@pytest.mark.parametrize("name", [n for n in NAMES if ModelCard.load(model_path(n)).kind == "heatmap"])
def test_heatmap_output_shape_and_range(name):
    m = TileModel(model_path(name))
    out = m.run(_tiles(5))
    cells = 64 // m.card.stride
    assert out.shape == (5, cells, cells) and out.dtype == np.float32
    assert np.all((out >= 0) & (out <= 1))


def test_fp32_variant_loads_and_agrees(cloud):
    m32 = TileModel(model_path("cloud_screen"), precision="fp32")
    tiles = _tiles(64, seed=5)
    assert np.max(np.abs(m32.run(tiles) - cloud.run(tiles))) < 0.05


# ------------------------------------------------------------------------------ heatmap_peaks
def _blob(cells: int, r: float, c: float, sigma: float = 0.8, peak: float = 0.9) -> np.ndarray:
    cc = np.arange(cells) + 0.5
    return (peak * np.exp(-((cc[:, None] - r) ** 2 + (cc[None, :] - c) ** 2) / (2 * sigma**2))).astype(np.float32)


def test_peaks_found_at_the_right_place():
    stride = 2
    h = np.zeros((3, 32, 32), np.float32)
    h[0] = _blob(32, 10.3, 20.7)  # cell units: pixel = cell * stride
    h[0] += _blob(32, 25.5, 5.5, peak=0.6)
    h[2] = _blob(32, 3.5, 29.5, peak=0.45)
    peaks = heatmap_peaks(h, 0.5, stride)
    assert [p[0] for p in peaks] == [0, 0]
    (t0, r0, c0, s0), (t1, r1, c1, s1) = peaks
    assert s0 > s1
    assert abs(r0 - 10.3 * stride) < 0.6 and abs(c0 - 20.7 * stride) < 0.6
    assert abs(r1 - 25.5 * stride) < 0.3 and abs(c1 - 5.5 * stride) < 0.3
    assert len(heatmap_peaks(h, 0.4, stride)) == 3  # the weak one in tile 2 too


def test_single_cell_peak_sits_at_cell_centre():
    h = np.zeros((1, 16, 16), np.float32)
    h[0, 3, 7] = 0.9
    assert heatmap_peaks(h, 0.5, 4) == [(0, 14.0, 30.0, pytest.approx(0.9))]


def test_plateau_gives_one_peak_and_min_distance_suppresses():
    h = np.zeros((1, 16, 16), np.float32)
    h[0, 5, 5] = h[0, 5, 6] = 0.8
    assert len(heatmap_peaks(h, 0.5, 4)) == 1
    h[0, 5, 8] = 0.7  # 2 cells from the plateau: a peak at distance 1, suppressed at distance 3
    assert len(heatmap_peaks(h, 0.5, 4, min_distance_cells=1)) == 2
    assert len(heatmap_peaks(h, 0.5, 4, min_distance_cells=3)) == 1


def test_peaks_empty_and_bad_input():
    assert heatmap_peaks(np.zeros((0, 16, 16), np.float32), 0.5, 4) == []
    assert heatmap_peaks(np.zeros((2, 16, 16), np.float32), 0.5, 4) == []
    with pytest.raises(ValueError):
        heatmap_peaks(np.zeros((16, 16), np.float32), 0.5, 4)
    with pytest.raises(ValueError):
        heatmap_peaks(np.zeros((1, 16, 16), np.float32), 0.5, 0)


def _peaks_by_definition(h, thr, stride, d):
    """heatmap_peaks written out cell by cell: the docstring's rule, and the 3x3 centroid summed in
    raster order in float64."""
    out = []
    n, rows, cols = h.shape
    for t in range(n):
        found = []
        for i in range(rows):
            for j in range(cols):
                v = h[t, i, j]
                if not v >= np.float32(thr):
                    continue
                ok = True
                for di in range(-d, d + 1):
                    for dj in range(-d, d + 1):
                        if (di, dj) == (0, 0) or not (0 <= i + di < rows and 0 <= j + dj < cols):
                            continue
                        nb = h[t, i + di, j + dj]
                        ok &= bool(v > nb) if (di < 0 or (di == 0 and dj < 0)) else bool(v >= nb)
                if not ok:
                    continue
                tot = rs = cs = 0.0
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        inside = 0 <= i + di < rows and 0 <= j + dj < cols
                        wk = max(float(h[t, i + di, j + dj]), 0.0) if inside else 0.0
                        tot += wk
                        rs += (i + di) * wk
                        cs += (j + dj) * wk
                r, c = (rs / tot, cs / tot) if tot > 0 else (i, j)
                found.append((t, (r + 0.5) * stride, (c + 0.5) * stride, float(v)))
        out += sorted(found, key=lambda p: -p[3])  # stable: raster order among equal scores
    return out


@pytest.mark.parametrize("seed", range(12))
def test_peaks_match_their_cell_by_cell_definition_exactly(seed):
    """The vectorized heatmap_peaks gives the definition's peaks, positions and order bit for bit,
    with plateaus, ties, NaN and values outside 0..1 among the cells."""
    rng = np.random.default_rng(seed)
    stride = (1, 2, 4, 8)[seed % 4]
    cells = 64 // stride
    h = (rng.random((int(rng.integers(1, 6)), cells, cells)) ** 3).astype(np.float32)
    if seed % 2:
        h = np.round(h * 8) / np.float32(8)  # plateaus: equal neighbours
    odd = rng.random(h.shape) < 0.03
    h[odd] = rng.choice(np.array([np.nan, -0.5, 1.5, 0.75], np.float32), size=int(odd.sum()))
    thr, d = float(rng.uniform(0.05, 0.9)), int(rng.integers(1, 4))
    assert heatmap_peaks(h, thr, stride, d) == _peaks_by_definition(h, thr, stride, d)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.05, 0.95), st.sampled_from([1, 2, 4]), st.integers(1, 3))
def test_peaks_are_local_maxima_above_threshold(seed, thr, stride, dist):
    rng = np.random.default_rng(seed)
    cells = 64 // stride
    h = rng.random((2, cells, cells)).astype(np.float32) ** 3
    peaks = heatmap_peaks(h, thr, stride, dist)
    for t, r, c, s in peaks:
        assert s >= np.float32(thr)
        assert 0 <= r <= 64 and 0 <= c <= 64
        i, j = np.argwhere(h[t] == np.float32(s))[0] if np.sum(h[t] == np.float32(s)) == 1 else (None, None)
        if i is not None:
            win = h[t, max(i - dist, 0): i + dist + 1, max(j - dist, 0): j + dist + 1]
            assert s >= win.max()
    # every cell that is a strict maximum of its window and above threshold is reported
    strict = 0
    for t in range(2):
        for i in range(cells):
            for j in range(cells):
                win = h[t, max(i - dist, 0): i + dist + 1, max(j - dist, 0): j + dist + 1]
                if h[t, i, j] >= np.float32(thr) and h[t, i, j] == win.max() and np.sum(win == win.max()) == 1:
                    strict += 1
    assert len(peaks) >= strict


def _peaks_one_by_one(h, threshold, stride, d=1):
    """heatmap_peaks as it was before it was vectorised (a Python loop per peak): the reference."""
    n, rows, cols = h.shape
    padded = np.pad(h, ((0, 0), (d, d), (d, d)), constant_values=-np.inf)
    peak = h >= np.float32(threshold)
    for dr in range(-d, d + 1):
        for dc in range(-d, d + 1):
            if dr or dc:
                nb = padded[:, d + dr: d + dr + rows, d + dc: d + dc + cols]
                peak &= (h > nb) if (dr < 0 or (dr == 0 and dc < 0)) else (h >= nb)
    result = []
    for t, r, c in zip(*np.nonzero(peak), strict=True):
        r0, r1, c0, c1 = max(r - 1, 0), min(r + 2, rows), max(c - 1, 0), min(c + 2, cols)
        w = np.maximum(h[t, r0:r1, c0:c1], 0.0).astype(np.float64)
        total = w.sum()
        if total > 0:
            rr = (np.arange(r0, r1)[:, None] * w).sum() / total
            cc = (np.arange(c0, c1)[None, :] * w).sum() / total
        else:
            rr, cc = float(r), float(c)
        result.append((int(t), float((rr + 0.5) * stride), float((cc + 0.5) * stride), float(h[t, r, c])))
    result.sort(key=lambda p: (p[0], -p[3]))
    return result


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["random", "plateaus", "signed", "sparse"]),
       st.floats(-0.5, 1.0), st.sampled_from([1, 2, 4]), st.integers(1, 3), st.integers(1, 5))
def test_vectorised_peaks_equal_the_one_by_one_reference(seed, kind, thr, stride, dist, n):
    rng = np.random.default_rng(seed)
    cells = 64 // stride
    if kind == "random":
        h = rng.random((n, cells, cells))
    elif kind == "plateaus":  # ties everywhere: the raster-order rule and the stable sort decide
        h = rng.integers(0, 4, (n, cells, cells)) / 4.0
    elif kind == "signed":  # negative weights are clipped to 0; a threshold <= 0 gives all-zero windows
        h = rng.normal(0.0, 0.5, (n, cells, cells))
    else:
        h = np.where(rng.random((n, cells, cells)) < 0.03, rng.random((n, cells, cells)), 0.0)
    h = h.astype(np.float32)
    got = heatmap_peaks(h, thr, stride, dist)
    want = _peaks_one_by_one(h, thr, stride, dist)
    assert [(p[0], p[3]) for p in got] == [(p[0], p[3]) for p in want]
    np.testing.assert_allclose([p[1:3] for p in got], [p[1:3] for p in want], rtol=0, atol=1e-9)
    assert all(type(v) is int for v in [p[0] for p in got]) and all(type(v) is float for p in got for v in p[1:])


def test_merge_peaks_keeps_the_strongest_of_a_border_pair():
    from flight.inference import merge_peaks

    peaks = [(63.0, 10.0, 0.6, "a"), (66.0, 11.0, 0.9, "b"), (200.0, 10.0, 0.5, "c")]
    assert merge_peaks(peaks, 8.0) == [(66.0, 11.0, 0.9, "b"), (200.0, 10.0, 0.5, "c")]
    assert len(merge_peaks(peaks, 2.0)) == 3
    assert merge_peaks([], 8.0) == []


def _merge_one_by_one(peaks, radius_px):
    """merge_peaks as it was: a Python loop over the kept peaks (the reference)."""
    r2 = float(radius_px) ** 2
    kept = []
    for p in sorted(peaks, key=lambda q: -q[2]):
        if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 > r2 for q in kept):
            kept.append(p)
    return kept


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300), radius=st.sampled_from([0.0, 1.0, 8.0, 40.0]),
       grid=st.booleans())
def test_merge_peaks_matches_the_one_by_one_merge(seed, n, radius, grid):
    from flight.inference import merge_peaks

    rng = np.random.default_rng(seed)
    if grid:  # positions and scores on a coarse grid: exact ties of distance and of score
        pos = rng.integers(0, 20, (n, 2)) * 4.0
        score = rng.integers(1, 5, n) / 4.0
    else:
        pos = rng.uniform(-10, 2100, (n, 2))
        score = rng.uniform(0, 1, n)
    peaks = [(float(r), float(c), float(s), i) for i, ((r, c), s) in enumerate(zip(pos, score, strict=True))]
    assert merge_peaks(peaks, radius) == _merge_one_by_one(peaks, radius)


def test_quantize_tiles_matches_onnx_quantizelinear_rounding():
    # round half to even and saturation, as onnxruntime's QuantizeLinear on float reflectance
    from flight.inference import quantize_tiles

    rng = np.random.default_rng(5)
    tiles = rng.integers(0, 65535, size=(3, 64, 64, 6)).astype(np.uint16)
    scale, zp = 0.0054698, 3
    want = np.clip(np.rint(tiles.astype(np.float64) * 1e-4 / scale) + zp, 0, 255).astype(np.uint8)
    got = quantize_tiles(tiles, scale, zp)
    assert got.dtype == np.uint8 and got.shape == tiles.shape
    assert np.mean(got != want) < 1e-4 and np.abs(got.astype(int) - want).max() <= 1  # float32 vs float64 at exact halves
    assert got.max() == 255  # saturates


@pytest.mark.parametrize("name", NAMES)
def test_int8_graph_runs_no_transpose_or_input_quantization(name, tmp_path):
    # the uint8 channels-last input exists so that onnxruntime's layout optimizer removes every
    # input transpose and no QuantizeLinear runs on the input (models/README.md, runtime contract)
    import onnx
    import onnxruntime as ort

    card = ModelCard.load(model_path(name))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(MODELS / card.file), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert "QLinearConv" in ops
    assert "QuantizeLinear" not in ops
    nodes = onnx.load(str(tmp_path / "optimized.onnx")).graph.node
    first = [n for n in nodes if card.input_name in n.input]
    # the stem's column merge (models.export.merge_stem_columns) is a Reshape, free in memory: look past it
    views = {o for n in first if n.op_type == "Reshape" for o in n.output}
    first = [n for n in first if n.op_type != "Reshape"] + [n for n in nodes if views & set(n.input)]
    assert first and all(n.op_type != "Transpose" for n in first), [n.op_type for n in first]
