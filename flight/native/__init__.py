"""Native kernels of the frame pipeline (issue #16), loaded with ctypes; optional and checked.

Four kernels (``kernels.c``), each one pass where numpy and OpenCV need several:
- ``calibrate_rows``: the calibration's four passes over each band of a strip (expand the dark,
  expand the flat, subtract, multiply; about 21 ms of a 2048 x 2048 x 6 frame).
- ``tiles_u8``: a model's input straight from the calibrated block: tiles cut, bands interleaved
  and quantized to uint8 (tiles_of, then quantize_tiles: two passes over uint16 tiles).
- ``tile_sums``: per tile of a band, the sum and the largest value (the water index and the
  detectors' prescreen: three OpenCV reductions and their numpy follow-ups per tile row).
- ``heatmap_peaks``: a detector's peaks and their centroids (flight.inference.heatmap_peaks: some
  25 numpy calls per tile row), the same list to the bit.
The numpy/OpenCV path stays the reference: each kernel must give its results bit for bit. The
calibration kernel is checked against it on each band's own constants when a ``Calibrator`` is
made (flight.calibrate.native_differs: every offset and flat value, every 12-bit signal and the
16-bit range in steps), the tile kernel on each model's input quantization before its first use
(``tiles_u8_matches``: all 65536 values), and all in tests/test_native_kernels.py. The sums are
integers, exact either way.

``flight.native_kernels`` (config) chooses: "auto" uses the library when it loads and passes the
check, else the numpy/OpenCV path, and says why; "required" makes start-up fail instead (a board
whose latency budget counts on it); "off" never loads it. The library is built by ``make native``
into this folder as ``libflight_kernels.<machine>.so`` (``make native-aarch64`` cross-compiles the
board's); no C compiler, no library: "auto" runs as before. docs/design.md, "Native kernels".

ctypes, not a CPython extension: one library per machine type whatever the Python version, nothing
to build at install time, and a missing or broken file is an error the flight reports and survives.
The price is that ctypes checks no types or sizes: each ``NativeKernels`` method checks every
array (dtype, shape, positive strides, writability) before C touches it.
"""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path

import numpy as np

ABI_VERSION = 5  # kernels.c FK_ABI_VERSION: a library of another version is not used
MODES = ("auto", "required", "off")
CELLS = (1, 2, 4, 8)  # the tile kernel's layouts: plain, or cell x cell blocks (flight.inference.to_cells)
# kernels.c rounds by adding and taking away 2**23: exact while the product stays below 2**22
# (the largest is scale * 65535 DN * (255 + 896)); a scale above this (dn_per_reflectance < 176,
# far from any 12-bit sensor) keeps that band on the numpy/OpenCV path
MAX_SCALE = 2.0**22 / (65535 * (255 + 896))


def _tiles_constants_ok(alpha: float, beta: float) -> bool:
    """The tile kernel's range (its rounding by 2**23 is exact below 2**22, beta a uint8 zero point)."""
    return 0.0 < alpha and 0.0 <= beta <= 255.0 and alpha * 65535 + beta < 2.0**22


def library_path(machine: str | None = None) -> Path:
    return Path(__file__).with_name(f"libflight_kernels.{machine or platform.machine()}.so")


class NativeUnavailable(RuntimeError):
    """The library cannot be used: missing, unloadable, another ABI version, or failed its check."""


class NativeKernels:
    def __init__(self, path: Path | None = None):
        self.path = path or library_path()
        try:  # every symbol looked up here: a library that lacks one is refused, not a later AttributeError
            lib = ctypes.CDLL(str(self.path))
            version = lib.fk_abi_version
            cal, tiles, sums, peaks = lib.fk_calibrate_rows, lib.fk_tiles_u8, lib.fk_tile_sums, lib.fk_heatmap_peaks
        except (OSError, AttributeError) as exc:
            raise NativeUnavailable(f"{self.path.name}: cannot load ({exc})"[:300]) from None
        version.argtypes, version.restype = [], ctypes.c_int
        if version() != ABI_VERSION:
            raise NativeUnavailable(f"{self.path.name}: ABI version {version()}, the flight needs {ABI_VERSION}")
        cal.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_size_t, ctypes.c_int32, ctypes.c_float]
        cal.restype = None
        self._cal = cal
        tiles.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int32, ctypes.c_int32,
                          ctypes.c_void_p, ctypes.c_size_t, ctypes.c_float, ctypes.c_float, ctypes.c_void_p]
        tiles.restype = None
        self._tiles = tiles
        self._tiles_ok: dict[tuple[float, float], bool] = {}  # tiles_u8_matches, per (alpha, beta)
        sums.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int32, ctypes.c_size_t, ctypes.c_void_p,
                         ctypes.c_void_p]
        sums.restype = None
        self._sums = sums
        peaks.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int32, ctypes.c_int32, ctypes.c_float,
                          ctypes.c_double, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                          ctypes.c_size_t]
        peaks.restype = ctypes.c_size_t
        self._peaks = peaks

    def calibrate_rows(self, raw: np.ndarray, offset: np.ndarray, flat: np.ndarray, out: np.ndarray,
                       base: int, scale: float) -> None:
        """out = saturate_u16(round_half_even((scale * max(raw - base - offset, 0)) * (flat + 896)))
        in float32, element by element: what flight.calibrate's numpy/OpenCV passes compute."""
        shape = raw.shape
        for name, a, dtype in (("raw", raw, np.uint16), ("offset", offset, np.uint8), ("flat", flat, np.uint8),
                               ("out", out, np.uint16)):
            # C reads and writes raw.size elements of each: a wrong dtype, shape or layout would
            # reach past an array's end
            if not (isinstance(a, np.ndarray) and a.dtype == dtype and a.shape == shape and a.flags.c_contiguous):
                got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                raise ValueError(f"calibrate_rows: {name} must be C-contiguous {np.dtype(dtype)} {shape}, got {got}")
        if not out.flags.writeable:
            raise ValueError("calibrate_rows: out is read-only")
        if not (0 <= int(base) <= 65535 and 0.0 < float(scale) <= MAX_SCALE):
            raise ValueError(f"calibrate_rows: base {base} outside 0..65535 or scale {scale} outside (0, {MAX_SCALE:.4g}]")
        self._cal(raw.ctypes.data, offset.ctypes.data, flat.ctypes.data, out.ctypes.data, raw.size, int(base),
                  float(scale))

    def tiles_u8(self, block: np.ndarray, tile_px: int, cols: np.ndarray, alpha: float, beta: float,
                 out: np.ndarray, cell: int = 1) -> np.ndarray:
        """uint16 (6, rows >= tile_px, W) block -> uint8 (len(cols), tile_px, tile_px, 6) tiles of
        the tile columns ``cols``, q = saturate_u8(round_half_even(v * alpha + beta)) in float32:
        flight.inference.quantize_tiles of flight.pipeline.tiles_of's tiles, in one pass. With
        ``cell`` > 1 (2, 4 or 8) the same values in cell x cell blocks, as
        flight.inference.to_cells lays them out: (len(cols), tile_px / cell, tile_px / cell, 6 cell^2)."""
        if not (isinstance(block, np.ndarray) and block.dtype == np.uint16 and block.ndim == 3 and block.shape[0] == 6
                and block.strides[2] == 2 and min(block.strides[:2]) > 0 and block.strides[0] % 2 == 0
                and block.strides[1] % 2 == 0):  # a negative stride would wrap round in C's size_t
            got = f"{block.dtype} {block.shape} strides {block.strides}" if isinstance(block, np.ndarray) else type(block).__name__
            raise ValueError(f"tiles_u8: block must be uint16 (6, rows, W) with contiguous rows, got {got}")
        tp = int(tile_px)
        if not (1 <= tp <= 256 and block.shape[1] >= tp):
            raise ValueError(f"tiles_u8: tile_px {tile_px} outside 1..256 or above the block's {block.shape[1]} rows")
        if not (isinstance(cols, np.ndarray) and cols.dtype == np.int32 and cols.ndim == 1 and cols.flags.c_contiguous):
            raise ValueError("tiles_u8: cols must be a contiguous int32 vector")
        if cols.size and not (0 <= int(cols.min()) and (int(cols.max()) + 1) * tp <= block.shape[2]):
            raise ValueError(f"tiles_u8: tile columns {int(cols.min())}..{int(cols.max())} outside the block's "
                             f"{block.shape[2] // tp}")
        if not (isinstance(cell, (int, np.integer)) and not isinstance(cell, bool) and cell in CELLS and tp % cell == 0):
            raise ValueError(f"tiles_u8: cell {cell!r} must be one of {CELLS} and divide tile_px {tp}")
        c = int(cell)
        want = (cols.size, tp // c, tp // c, 6 * c * c)
        if not (isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == want and out.flags.c_contiguous
                and out.flags.writeable):
            got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            raise ValueError(f"tiles_u8: out must be writable C-contiguous uint8 {want}, got {got}")
        if not _tiles_constants_ok(alpha, beta):
            raise ValueError(f"tiles_u8: alpha {alpha} or beta {beta} outside the kernel's range")
        self._tiles(block.ctypes.data, block.strides[0] // 2, block.strides[1] // 2, tp, c, cols.ctypes.data,
                    cols.size, float(alpha), float(beta), out.ctypes.data)
        return out

    def tiles_u8_matches(self, alpha: float, beta: float) -> bool:
        """Whether tiles_u8 quantizes every uint16 value as cv2.convertScaleAbs does (the reference,
        flight.inference.quantize_tiles) for these constants: checked once per pair, 65536 values."""
        key = (float(alpha), float(beta))
        if key not in self._tiles_ok:
            import cv2  # the flight's reference path; imported here to keep this module's import light

            ok = _tiles_constants_ok(alpha, beta)
            if ok:
                # every value once in every band: one row of 16 tiles of 64 x 64
                block = np.ascontiguousarray(np.broadcast_to(np.arange(65536, dtype=np.uint16).reshape(64, 1024),
                                                             (6, 64, 1024)))
                got = self.tiles_u8(block, 64, np.arange(16, dtype=np.int32), alpha, beta,
                                    np.empty((16, 64, 64, 6), np.uint8))
                tiles = np.ascontiguousarray(block.reshape(6, 64, 16, 64).transpose(2, 1, 3, 0))  # tiles_of's layout
                want = cv2.convertScaleAbs(tiles.reshape(-1, 64 * 6), alpha=float(alpha), beta=float(beta))
                ok = bool(np.array_equal(got.reshape(want.shape), want))
            self._tiles_ok[key] = ok
        return self._tiles_ok[key]

    def tile_sums(self, band: np.ndarray, tile_px: int, with_max: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """uint16 (rows >= tile_px, W) band of a block -> per tile of its first tile row (W //
        tile_px tiles): the sum of its values (uint32, exact) and, with_max, its largest (uint16)."""
        if not (isinstance(band, np.ndarray) and band.dtype == np.uint16 and band.ndim == 2 and band.strides[1] == 2
                and band.strides[0] > 0 and band.strides[0] % 2 == 0):  # negative: would wrap round in C
            got = f"{band.dtype} {band.shape} strides {band.strides}" if isinstance(band, np.ndarray) else type(band).__name__
            raise ValueError(f"tile_sums: band must be uint16 (rows, W) with contiguous rows, got {got}")
        tp = int(tile_px)
        if not (1 <= tp <= 256 and band.shape[0] >= tp):
            raise ValueError(f"tile_sums: tile_px {tile_px} outside 1..256 or above the band's {band.shape[0]} rows")
        n = band.shape[1] // tp
        sums = np.empty(n, np.uint32)
        maxes = np.empty(n, np.uint16) if with_max else None
        self._sums(band.ctypes.data, band.strides[0] // 2, tp, n, sums.ctypes.data,
                   None if maxes is None else maxes.ctypes.data)
        return sums, maxes

    def heatmap_peaks(self, heatmaps: np.ndarray, threshold: float, stride: int) -> list[tuple[int, float, float, float]]:
        """flight.inference.heatmap_peaks(heatmaps, threshold, stride) (min_distance_cells 1): the
        same list of (tile, row px, column px, score), bit for bit, in one C pass."""
        h = heatmaps
        if not (isinstance(h, np.ndarray) and h.dtype == np.float32 and h.ndim == 3 and h.flags.c_contiguous):
            got = f"{h.dtype} {h.shape}" if isinstance(h, np.ndarray) else type(h).__name__
            raise ValueError(f"heatmap_peaks: heatmaps must be C-contiguous float32 (N, rows, cols), got {got}")
        if not (isinstance(stride, (int, np.integer)) and stride >= 1):
            raise ValueError(f"stride must be an int >= 1, got {stride!r}")
        n, rows, cols = h.shape
        if not (rows < 1 << 30 and cols < 1 << 30):
            raise ValueError(f"heatmap_peaks: {rows} x {cols} cells is too large")
        cap = n * rows * cols  # at most every cell
        tile, score = np.empty(cap, np.int32), np.empty(cap, np.float64)
        row, col = np.empty(cap, np.float64), np.empty(cap, np.float64)
        m = self._peaks(h.ctypes.data, n, rows, cols, float(np.float32(threshold)), float(stride), tile.ctypes.data,
                        row.ctypes.data, col.ctypes.data, score.ctypes.data, cap)
        assert m <= cap  # cap is every cell: the kernel cannot run out
        return list(zip(tile[:m].tolist(), row[:m].tolist(), col[:m].tolist(), score[:m].tolist(), strict=True))


def load(mode: str, path: Path | None = None) -> tuple[NativeKernels | None, str]:
    """The kernels for a ``flight.native_kernels`` mode (from ``path``, default ``library_path()``),
    and a line saying what is used and why.
    "required" raises NativeUnavailable where "auto" falls back."""
    if mode not in MODES:
        raise ValueError(f"native kernels mode {mode!r}, allowed {', '.join(MODES)}")
    if mode == "off":
        return None, "numpy/OpenCV (flight.native_kernels = off)"
    try:
        kernels = NativeKernels(path)
    except NativeUnavailable as exc:
        if mode == "required":
            raise
        return None, f"numpy/OpenCV: {exc}"
    return kernels, f"native ({kernels.path.name})"


def check_values() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw, offset, flat) rows for ``check_calibrate``: every flat value (one row each) against
    every 12-bit signal and the rest of the 16-bit range in steps of 61, with every offset value."""
    signal = np.concatenate([np.arange(4096), np.arange(4096, 65536, 61), [65535]]).astype(np.uint16)
    n = signal.size
    raw = np.broadcast_to(signal, (256, n))
    offset = np.broadcast_to((np.arange(n) % 256).astype(np.uint8), (256, n))
    flat = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None], (256, n))
    return raw, offset, flat
