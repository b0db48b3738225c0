"""The flight processing chain, wired in one place.

ingest -> calibrate -> tile -> screen (cloud) -> detect (cascade) -> localize -> package

A frame arrives as a header and strips of rows; each strip is calibrated, cut into tiles and
screened as it arrives, so memory is bounded by the strip, not the frame. Results are gathered
per frame and handed out as one `FrameResult` when the last strip is in. The process around it
(`flight.app`) turns results into packets; the benchmark drives this class directly.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar, cast

import cv2
import numpy as np

from flight.config import CascadeStep, FlightSection
from flight.dictionary import DetectionClass
from flight.frames import BANDS, REFLECTANCE_SCALE, FrameMeta
from flight.geolocate import pixel_to_latlon
from flight.inference import (
    ModelCard,
    TileSource,
    heatmap_peaks,
    merge_peaks,
    quantize_tiles,
    to_cells,
)
from flight.ingest import FrameIngest
from flight.native import NativeKernels

GREEN, RED, NIR = BANDS.index("green"), BANDS.index("red"), BANDS.index("nir")
BLUE = BANDS.index("blue")
STAGES = ("ingest", "calibrate", "tile", "screen", "detect", "localize", "package")
MODEL_CLASS = {"ship_detect": DetectionClass.SHIP, "fire_detect": DetectionClass.FIRE}
# tiles of a tile row handled together (2048 px at 64 px tiles): wider frames go in blocks, so the
# interleaved rows and the tiles do not grow with frame width (issue #16: memory flat 1024-4096 px)
BLOCK_TILES = 32
CALIBRATED_BLOCK_BYTES = 3 << 20  # calibrated rows held at once: a 128-row strip of a 2048-px frame


@dataclass(frozen=True)
class FoundObject:
    class_id: int
    confidence: float
    row_px: float
    col_px: float
    lat_deg: float
    lon_deg: float
    area_px: int


@dataclass(frozen=True)
class Chip:
    class_id: int
    row_px: float
    col_px: float
    height_px: int
    width_px: int
    png: bytes


@dataclass
class FrameResult:
    meta: FrameMeta
    tiles: int
    cloudy_tiles: int
    cloud_fraction: float
    discarded: bool
    detections: list[FoundObject]
    chips: list[Chip]
    stage_ms: dict[str, float]
    tile_cloud: np.ndarray = field(repr=False)  # (rows, cols) tile cloud fractions, for quicklooks and tests

    @property
    def processing_ms(self) -> float:
        return sum(self.stage_ms.values())

    def count(self, cls: DetectionClass) -> int:
        return sum(1 for d in self.detections if d.class_id == cls)


def tiles_of(image: np.ndarray, tile_px: int, scratch: StripBuffers | None = None) -> np.ndarray:
    """(bands, rows, W) strip or frame -> (tiles, t, t, bands), row-major, contiguous: the models'
    channels-last tile layout. Rows and columns beyond whole tiles are dropped. OpenCV interleaves
    the bands in one pass (3x faster than a numpy transpose copy). With ``scratch`` the interleaved
    rows and the tiles go into its reused arrays (the result is overwritten by the next call)."""
    bands, rows, width = image.shape
    r, c = rows // tile_px, width // tile_px
    crop = image[:, : r * tile_px, : c * tile_px]
    shape = (r * c, tile_px, tile_px, bands)
    if scratch is None:
        bil = cv2.merge(list(crop)) if bands > 1 else crop[0][..., None]  # (rows, W, bands)
        bil = bil.reshape(r * tile_px, c * tile_px, bands)  # cv2.merge drops a trailing axis of 1
        return np.ascontiguousarray(bil.reshape(r, tile_px, c, tile_px, bands).transpose(0, 2, 1, 3, 4)).reshape(shape)
    bil = scratch.get("interleaved", (r * tile_px, c * tile_px, bands), image.dtype)
    if bands > 1:
        bil = cv2.merge(list(crop), bil).reshape(bil.shape)  # into bil; the result taken in case OpenCV made its own
    else:
        bil[..., 0] = crop[0]
    out = scratch.get("tiles", shape, image.dtype)
    np.copyto(out.reshape(r, c, tile_px, tile_px, bands), bil.reshape(r, tile_px, c, tile_px, bands).transpose(0, 2, 1, 3, 4))
    return out


class BlockTiles:
    """The tiles of a calibrated (bands, rows, W) block (whole tile rows), or some of them, not yet
    cut out (an inference.TileSource), row-major as tiles_of orders them. With the native kernel
    (flight.native) each model takes them cut, interleaved and quantized for its own card in one
    pass over the block (one kernel call per tile row), which
    replaces tiles_of's two passes and quantize_tiles' third; where the kernel does not reproduce a
    card's quantization bit for bit (checked once per card constants), the uint16 tiles are cut
    and quantized the numpy/OpenCV way. Each in the layout the model's file takes (plain, or in
    cells: inference.to_cells). Results are cached per quantization and layout: the tile stage
    prepares the cloud screen's, which its run() then takes."""

    def __init__(self, block: np.ndarray, tile_px: int, kernels: NativeKernels, scratch: StripBuffers | None = None,
                 tiles: np.ndarray | None = None, buffer: str = "screen_input"):
        self.block, self.tile_px, self.kernels, self.scratch, self.buffer = block, tile_px, kernels, scratch, buffer
        self.per_row = block.shape[2] // tile_px
        count = block.shape[1] // tile_px * self.per_row
        self.tiles = np.arange(count, dtype=np.int64) if tiles is None else np.asarray(tiles, np.int64)
        self._cache: dict[tuple[float, int, float, int], np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.tiles.size)

    def __getitem__(self, idx: np.ndarray) -> BlockTiles:
        """The tiles at these positions (a detector's selection); their input goes to another buffer."""
        return BlockTiles(self.block, self.tile_px, self.kernels, self.scratch, self.tiles[idx], "detect_input")

    def quantized(self, input_scale: float, scale: float, zero_point: int, cell: int = 1) -> np.ndarray:
        key = (float(input_scale), int(zero_point), float(scale), int(cell))
        if key not in self._cache:
            alpha, beta = input_scale / scale, float(zero_point)
            if self.kernels.tiles_u8_matches(alpha, beta):
                side, bands = self.tile_px // cell, self.block.shape[0] * cell * cell
                shape = (len(self), side, side, bands)
                out = np.empty(shape, np.uint8) if self.scratch is None else self.scratch.get(self.buffer, shape, np.uint8)
                tp, rows = self.tile_px, self.tiles // self.per_row
                cols = (self.tiles % self.per_row).astype(np.int32)
                # one kernel call per run of tiles in one tile row (a selection in order: one per row)
                starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if rows.size else rows
                for s, e in zip(starts.tolist(), [*starts[1:].tolist(), rows.size], strict=True):
                    r = int(rows[s])
                    self.kernels.tiles_u8(self.block[:, r * tp:(r + 1) * tp], tp, cols[s:e], alpha, beta, out[s:e], cell)
                self._cache[key] = out
            else:
                self._cache[key] = to_cells(quantize_tiles(self.uint16(), scale, zero_point, input_scale), cell)
        return self._cache[key]

    def uint16(self) -> np.ndarray:
        """The uint16 tiles (tiles_of's), for a model without the kernel's quantization."""
        tiles = tiles_of(self.block, self.tile_px)
        return tiles if len(self) == len(tiles) else tiles[self.tiles]


class StripBuffers:
    """Strip-sized arrays made once and reused strip after strip (calibrated strip, interleaved
    rows, tiles): each name keeps one flat buffer, handed out as a view of the size asked for and
    remade only when a larger one is asked (a wider frame), so a frame's narrower last block of
    tiles reuses it too. With onnxruntime's memory arena on, arrays made afresh for every strip
    come from new pages each time (calibrate and tile 2-3x slower, docs/benchmarks.md); reused
    ones cost nothing and keep the peak lower."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buf = self.arrays.get(name)
        if buf is None or buf.size < n:
            self.arrays.pop(name, None)  # free the old one before making the new
            buf = self.arrays[name] = np.empty(n, np.uint8)
        return buf[:n].view(dtype).reshape(shape)


def tile_means(image: np.ndarray, tile_px: int, band: int) -> np.ndarray:
    """Mean of one band per tile of a (bands, rows, W) strip or frame, row-major like ``tiles_of``."""
    _, rows, width = image.shape
    r, c = rows // tile_px, width // tile_px
    # Column sums of each tile row (OpenCV, one pass), then 64-column groups: exact integer sums
    # in float64; about 2x faster than numpy's mean over a strided 4-D view (7.2 -> 3.4 ms a frame).
    out = np.empty((r, c), np.float64)
    for i in range(r):
        cols = cv2.reduce(image[band, i * tile_px:(i + 1) * tile_px, : c * tile_px], 0, cv2.REDUCE_SUM,
                          dtype=cv2.CV_64F)
        out[i] = cols.reshape(c, tile_px).sum(axis=1)
    return (out / np.float64(tile_px * tile_px)).astype(np.float32).reshape(-1)


def ndwi(green_mean: np.ndarray, nir_mean: np.ndarray) -> np.ndarray:
    return (green_mean - nir_mean) / np.maximum(green_mean + nir_mean, 1.0)


def tile_ndwi(image: np.ndarray, tile_px: int) -> np.ndarray:
    """Mean normalized difference water index per tile (green vs nir) of a (bands, rows, W) strip
    or frame, row-major like ``tiles_of``; water is > ~0.2."""
    return ndwi(tile_means(image, tile_px, GREEN), tile_means(image, tile_px, NIR))


def tile_contrast(image: np.ndarray, tile_px: int, band: int, band_mean: np.ndarray | None = None) -> np.ndarray:
    """Per tile, its brightest pixel in ``band`` minus its mean in that band (reflectance x 10000),
    row-major like ``tiles_of``: the detectors' prescreen (CascadeStep.min_contrast,
    models/prescreen.py). Open water is dark and even in the NIR, where every hull and wake is
    brighter; land is far below a fire's swir22 glow."""
    _, rows, width = image.shape
    r, c = rows // tile_px, width // tile_px
    if band_mean is None:
        band_mean = tile_means(image, tile_px, band)
    top = np.empty((r, c), np.float32)
    for i in range(r):
        cols = cv2.reduce(image[band, i * tile_px:(i + 1) * tile_px, : c * tile_px], 0, cv2.REDUCE_MAX)
        top[i] = cols.reshape(c, tile_px).max(axis=1)
    return top.reshape(-1) - band_mean


class TileStats:
    """Per-tile statistics of one band or another of a block of whole tile rows, each band's
    computed once: its mean (the water index) and brightest minus mean (the prescreen). With the
    native kernel (flight.native) one pass per band gives both; without, OpenCV reductions
    (tile_means, tile_contrast). The same values either way: the sums are exact integers."""

    def __init__(self, block: np.ndarray, tile_px: int, kernels: NativeKernels | None):
        self.block, self.tile_px, self.kernels = block, tile_px, kernels
        self._mean: dict[int, np.ndarray] = {}
        self._top: dict[int, np.ndarray] = {}

    def mean(self, band: int) -> np.ndarray:
        if band not in self._mean:
            if self.kernels is None:
                self._mean[band] = tile_means(self.block, self.tile_px, band)
            else:
                tp = self.tile_px
                parts = [self.kernels.tile_sums(self.block[band, r:r + tp], tp, with_max=True)
                         for r in range(0, self.block.shape[1] - tp + 1, tp)]  # one call per tile row
                sums = np.concatenate([p[0] for p in parts])
                top = np.concatenate([cast(np.ndarray, p[1]) for p in parts])
                self._mean[band] = (sums.astype(np.float64) / np.float64(tp * tp)).astype(np.float32)
                self._top[band] = top.astype(np.float32)
        return self._mean[band]

    def contrast(self, band: int) -> np.ndarray:
        mean = self.mean(band)
        if self.kernels is None:
            return tile_contrast(self.block, self.tile_px, band, mean)
        return self._top[band] - mean


def encode_chip(strip: np.ndarray, row: float, col: float, size: int, max_bytes: int) -> tuple[np.ndarray, bytes] | None:
    """True-colour 8-bit PNG crop centred on (row, col) of a calibrated strip, shrunk until it fits."""
    while size >= 8:
        half = size // 2
        r0 = int(np.clip(round(row) - half, 0, max(strip.shape[1] - size, 0)))
        c0 = int(np.clip(round(col) - half, 0, max(strip.shape[2] - size, 0)))
        crop = strip[[RED, GREEN, BLUE], r0 : r0 + size, c0 : c0 + size]
        # 0..0.4 reflectance stretched to 8 bits: what an operator wants to see of land and sea
        rgb = np.clip(crop.astype(np.float32) * (255.0 / (0.4 * REFLECTANCE_SCALE)), 0, 255).astype(np.uint8)
        ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb.transpose(1, 2, 0)[:, :, ::-1]))
        if ok and len(png) <= max_bytes:
            return crop, png.tobytes()
        size //= 2
    return None


class StripCalibrator(Protocol):
    """What the pipeline calls of its calibrator (calibrate.Calibrator, or a wrapper around one)."""

    @property
    def shape(self) -> tuple[int, int, int]: ...  # (bands, height, width) the products are for

    def calibrate_strip(self, raw: np.ndarray, row0: int, out: np.ndarray | None = None) -> np.ndarray: ...


class TilePredictor(Protocol):
    """What the pipeline uses of a model (inference.TileModel, or a wrapper around one)."""

    @property
    def card(self) -> ModelCard: ...

    @property
    def cell(self) -> int: ...  # the layout its file takes (inference.TileModel.cell)

    def run(self, tiles: np.ndarray | TileSource) -> np.ndarray: ...


M = TypeVar("M", bound=TilePredictor)


class FramePipeline(Generic[M]):
    def __init__(self, cfg: FlightSection, calibrator: StripCalibrator, models: dict[str, M],
                 reuse_buffers: bool = False, kernels: NativeKernels | None = None):
        """``kernels`` (flight.native): the models take their input as BlockTiles, cut and quantized
        in one native pass (every model must accept an inference.TileSource, as TileModel does);
        None: uint16 tiles from tiles_of."""
        if "cloud_screen" not in models:
            raise ValueError("the cloud_screen model is required")
        self.cfg = cfg
        self.kernels = kernels
        self.scratch = StripBuffers() if reuse_buffers else None
        self.calibrator = calibrator
        self.models = models
        self.ingest = FrameIngest(cfg.tile_px)
        # a frame of another size cannot be calibrated: refused as input at its header, not failed
        # in calibration (a stage error charged to the error budget)
        self.ingest.frame_shape = (calibrator.shape[1], calibrator.shape[2])
        self.disabled: set[str] = set()  # models switched off at run time (by command or after a fault)
        self._reset()

    def _reset(self) -> None:
        self.meta: FrameMeta | None = None
        self.stage_ms: dict[str, float] = defaultdict(float)
        self.tile_rows: list[np.ndarray] = []
        self.found: list[tuple[int, float, float, float, int]] = []  # class, score, row, col, area
        # per found peak: (tile row, block column, cascade step, peak of the call): finish() puts the
        # peaks in the order of tile rows taken one at a time, whatever blocks the calls took, so that
        # equal scores rank (and merge) as they always did
        self.found_at: list[tuple[int, int, int, int]] = []
        self.chip_wants: list[tuple[tuple[int, int, int, int], int, float, float, int, float]] = []  # _encode_chips
        self.chips: list[Chip] = []

    # -- the three calls a frame goes through ------------------------------------------------------

    def begin(self, header: bytes) -> FrameMeta:
        self._reset()
        t0 = time.perf_counter()
        self.meta = self.ingest.begin(header)
        self.stage_ms["ingest"] += (time.perf_counter() - t0) * 1e3
        return self.meta

    def strip(self, frame_id: int, row0: int, rows: int, data: bytes | memoryview) -> None:
        t0 = time.perf_counter()
        raw = self.ingest.strip(frame_id, row0, rows, data)
        self.stage_ms["ingest"] += (time.perf_counter() - t0) * 1e3
        tp = self.cfg.tile_px
        bands, _, width = raw.shape
        # calibrated in blocks of at most CALIBRATED_BLOCK_BYTES (whole tile rows): a wide frame's
        # strip is not calibrated whole, so memory stays flat with width (issue #16); at 2048 px
        # and below a 128-row strip is one block, as before
        block = max(tp, CALIBRATED_BLOCK_BYTES // (bands * width * 2) // tp * tp)
        for b0 in range(0, rows, block):
            part = raw[:, b0 : b0 + block]  # each band's rows still contiguous: no copy
            t1 = time.perf_counter()
            out = None if self.scratch is None else self.scratch.get("calibrated", part.shape, np.uint16)
            cal = self.calibrator.calibrate_strip(part, row0 + b0, out)
            self.stage_ms["calibrate"] += (time.perf_counter() - t1) * 1e3
            self._tile_rows(cal, row0 + b0)

    def finish(self) -> FrameResult:
        meta = self.meta
        assert meta is not None and self.ingest.complete, "finish() before the last strip"
        t0 = time.perf_counter()
        order = sorted(range(len(self.found)), key=self.found_at.__getitem__)
        self.found = [self.found[i] for i in order]
        cloud = np.stack(self.tile_rows)
        frac = float(cloud.mean())
        limit = self.cfg.max_detections_per_frame
        found = sorted(self._merged(limit), key=lambda f: -f[1])[:limit]
        # every detection located in one call: 64 scalar calls cost 3.6 ms on the worst frame, the
        # array call 0.2 ms, with the same values bit for bit (the same numpy loops)
        lats = lons = [float("nan")] * len(found)
        if meta.footprint is not None and found:
            lat_a, lon_a = pixel_to_latlon(meta.footprint, meta.height, meta.width,
                                           np.array([f[2] for f in found]), np.array([f[3] for f in found]))
            lats, lons = lat_a.tolist(), lon_a.tolist()
        detections = [FoundObject(cls, score, row, col, lat, lon, area)
                      for (cls, score, row, col, area), lat, lon in zip(found, lats, lons, strict=True)]
        self.stage_ms["localize"] += (time.perf_counter() - t0) * 1e3
        # compared as float32, as the tiles' own thresholds are and as the summary packs it: the
        # float32 mean widened to float64 made a frame exactly at the discard level (0.7f =
        # 0.699999988) kept, while its summary said 0.7
        discarded = bool(np.float32(frac) >= np.float32(self.cfg.cloud_discard_fraction))
        cloudy_at = self.models["cloud_screen"].card.threshold
        result = FrameResult(
            meta=meta,
            tiles=cloud.size,
            cloudy_tiles=int((cloud >= cloudy_at).sum()),
            cloud_fraction=frac,
            discarded=discarded,
            detections=detections,
            chips=[] if discarded else self.chips,
            stage_ms={s: self.stage_ms.get(s, 0.0) for s in STAGES},
            tile_cloud=cloud,
        )
        self.meta = None
        return result

    def _merged(self, limit: int) -> list[tuple[int, float, float, float, int]]:
        """One detection per object: an object on a tile border peaks in both tiles, so peaks of
        the same class closer than merge_px are merged, keeping the strongest.

        Only the strongest ``limit`` of each class can reach the frame's list. Greedy merging goes
        down the peaks by score, so merging the strongest m peaks gives the first kept peaks of
        merging them all: m doubles until ``limit`` are kept. Same list as merging every peak, at a
        fraction of the cost on a frame with hundreds of peaks (merging is quadratic)."""
        out = []
        for cls in {f[0] for f in self.found}:
            peaks = sorted(((row, col, score, area) for c, score, row, col, area in self.found if c == cls),
                           key=lambda q: -q[2])  # merge_peaks' own (stable) order
            m = 2 * limit
            while True:
                kept = merge_peaks(peaks[:m], self.cfg.merge_px)
                if len(kept) >= limit or m >= len(peaks):
                    break
                m *= 2
            out += [(cls, score, row, col, area) for row, col, score, area in kept[:limit]]
        return out

    # -- per tile row ----------------------------------------------------------------------------

    def _tile_rows(self, cal: np.ndarray, row0: int) -> None:
        """The tile rows of a calibrated block together (a 128-row strip: two), in blocks of at most
        BLOCK_TILES columns: the tile arrays are then the same size for any frame width above the
        block (memory flat with frame width). Each model call takes every tile of a block: a call
        starts with its weights and buffers out of the cache after the other stages' passes, which
        cost cloud_screen 19 instead of 13 us a tile at 32 tiles a call, against 64
        (docs/benchmarks.md, eleventh round)."""
        tp = self.cfg.tile_px
        rows, cols = cal.shape[1] // tp, cal.shape[2] // tp
        clouds = [self._tile_block(cal, row0, c0 * tp, min(c0 + BLOCK_TILES, cols) * tp).reshape(rows, -1)
                  for c0 in range(0, cols, BLOCK_TILES)]
        grid = clouds[0] if len(clouds) == 1 else np.concatenate(clouds, axis=1)
        self.tile_rows.extend(np.ascontiguousarray(row) for row in grid)
        self._encode_chips(cal)

    def _tile_block(self, cal: np.ndarray, row0: int, col0: int, col1: int) -> np.ndarray:
        cfg, ms = self.cfg, self.stage_ms
        block = cal[:, :, col0:col1]
        t0 = time.perf_counter()
        screen = self.models["cloud_screen"]
        tiles: np.ndarray | BlockTiles
        if self.kernels is None:
            tiles = tiles_of(block, cfg.tile_px, self.scratch)
        else:  # the screen's input made here, in the tile stage, as tiles_of's uint16 tiles were
            tiles = BlockTiles(block, cfg.tile_px, self.kernels, self.scratch)
            card = screen.card
            tiles.quantized(card.input_scale, card.quant_scale, card.quant_zero_point, screen.cell)
        t1 = time.perf_counter()
        cloud = screen.run(tiles)
        t2 = time.perf_counter()
        ms["tile"] += (t1 - t0) * 1e3
        ms["screen"] += (t2 - t1) * 1e3
        steps = [s for s in cfg.cascade[1:] if s.enabled and s.model in self.models and s.model not in self.disabled]
        if steps:
            clear = cloud < cfg.clear_tile_max_cloud
            stats = TileStats(block, cfg.tile_px, self.kernels)  # per band, computed once for the steps that ask
            water = ndwi(stats.mean(GREEN), stats.mean(NIR)) > cfg.water_ndwi_min
            for n, step in enumerate(steps):
                select = clear & self._where(step, water)
                cut, _ = self.prescreen_cut(step)
                if cut > 0:  # nothing brighter than its surroundings: nothing to find
                    select &= stats.contrast(BANDS.index(step.contrast_band)) >= cut
                self._detect(step, n, tiles, cal, row0, col0, select)
        ms["detect"] += (time.perf_counter() - t2) * 1e3
        return cloud

    def prescreen_cut(self, step: CascadeStep) -> tuple[float, str]:
        """The prescreen cut applied for a cascade step, and why it differs from the configured
        one ("" when it does not). A cut is only as good as the model version it was validated
        with (models/prescreen.py): a cut that spares no object for one detector may hide the
        weaker objects a new version finds. So the loaded model's card bounds it: never above the
        card's ``prescreen.max_cut``, and none at all in another band or for a card without one."""
        want = step.min_contrast
        model = self.models.get(step.model)
        if want <= 0 or model is None:
            return 0.0, ""
        card = model.card
        if card.prescreen_band is None or card.prescreen_max_cut is None:
            return 0.0, f"card of {card.name} {card.version} validates no prescreen"
        if card.prescreen_band != step.contrast_band:
            return 0.0, f"card of {card.name} {card.version} validates the prescreen in {card.prescreen_band}, not {step.contrast_band}"
        if want > card.prescreen_max_cut:
            return card.prescreen_max_cut, f"card of {card.name} {card.version} validates cuts up to {card.prescreen_max_cut:g}"
        return want, ""

    def prescreen_limits(self) -> list[tuple[CascadeStep, float, str]]:
        """The enabled cascade steps whose configured prescreen the loaded models do not allow:
        (step, cut applied, reason). The flight reports each when models are loaded or replaced."""
        out = []
        for step in self.cfg.cascade[1:]:
            if step.enabled:
                cut, why = self.prescreen_cut(step)
                if why:
                    out.append((step, cut, why))
        return out

    @staticmethod
    def _where(step: CascadeStep, water: np.ndarray) -> np.ndarray:
        if step.when == "clear_water":
            return water
        if step.when == "clear_land":
            return ~water
        return np.ones_like(water)

    def _detect(self, step: CascadeStep, step_no: int, tiles: np.ndarray | BlockTiles, cal: np.ndarray, row0: int,
                col0: int, select: np.ndarray) -> None:
        """Run a detector on the selected tiles (row-major) of a block starting at column col0 of
        the calibrated rows ``cal`` (frame row row0); peaks and chips in frame coordinates."""
        idx = np.flatnonzero(select)
        if idx.size == 0:
            return
        model = self.models[step.model]
        heat = model.run(tiles if idx.size == len(tiles) else tiles[idx])  # all selected (open water): no copy
        cls = MODEL_CLASS.get(step.model, 0)
        tp = self.cfg.tile_px
        card = model.card  # once: a guarded model makes its card on each access
        hot_px = (heat >= card.threshold).sum(axis=(1, 2)) * card.stride**2  # per tile, once
        chips_wanted = (DetectionClass(cls).name.lower() if cls else step.model) in self.cfg.chip_classes
        peaks = (heatmap_peaks(heat, card.threshold, card.stride) if self.kernels is None  # the same list
                 else self.kernels.heatmap_peaks(np.ascontiguousarray(heat, np.float32), card.threshold, card.stride))
        per_row = len(select) // (cal.shape[1] // tp)  # tiles per tile row of the block
        for seq, (k, r, c, score) in enumerate(peaks):
            tile_row, tile_col = divmod(int(idx[k]), per_row)
            self.found_at.append((row0 // tp + tile_row, col0, step_no, seq))
            row, col = row0 + tile_row * tp + r, col0 + tile_col * tp + c
            area = int(hot_px[k])
            self.found.append((int(cls), float(score), float(row), float(col), area))
            if chips_wanted and len(self.chips) < self.cfg.chips_per_frame:
                self.chip_wants.append((self.found_at[-1], int(cls), row, col, tile_row, r))

    def _encode_chips(self, cal: np.ndarray) -> None:
        """The chips of a calibrated block's peaks, in found_at order (the first chips_per_frame of
        the frame whatever blocks the calls took), each cut from its object's own tile row as when
        tile rows went one at a time: the same chips."""
        wants, self.chip_wants = sorted(self.chip_wants), []
        tp = self.cfg.tile_px
        for _, cls, row, col, tile_row, r in wants:
            if len(self.chips) >= self.cfg.chips_per_frame:
                break
            t0 = time.perf_counter()
            chip = encode_chip(cal[:, tile_row * tp:(tile_row + 1) * tp], r, col, self.cfg.chip_px, self.cfg.chip_max_bytes)
            if chip is not None:
                crop, png = chip
                self.chips.append(Chip(cls, float(row), float(col), crop.shape[1], crop.shape[2], png))
            self.stage_ms["package"] += (time.perf_counter() - t0) * 1e3
