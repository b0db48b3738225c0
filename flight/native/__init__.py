"""Native kernels of the frame pipeline (issue #16), loaded with ctypes; optional and checked.

The calibration's four numpy/OpenCV passes over each band of a strip (expand the dark, expand the
flat, subtract, multiply) cost about 21 ms of a 2048 x 2048 x 6 frame; ``kernels.c`` does them in
one pass over the same arrays. The numpy/OpenCV path stays the reference: the kernel must give its
results bit for bit, which ``check_calibrate`` tests against it on each band's own constants when a
``Calibrator`` is made (every offset and flat value, every 12-bit signal and the 16-bit range in
steps), and tests/test_native_kernels.py over the whole 16-bit range.

``flight.native_kernels`` (config) chooses: "auto" uses the library when it loads and passes the
check, else the numpy/OpenCV path, and says why; "required" makes start-up fail instead (a board
whose latency budget counts on it); "off" never loads it. The library is built by ``make native``
into this folder as ``libflight_kernels.<machine>.so`` (``make native-aarch64`` cross-compiles the
board's); no C compiler, no library: "auto" runs as before. docs/design.md, "Native kernels".

ctypes, not a CPython extension: one library per machine type whatever the Python version, nothing
to build at install time, and a missing or broken file is an error the flight reports and survives.
The price is that ctypes checks no types or sizes: ``NativeKernels.calibrate_rows`` checks every
array before C touches it.
"""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path

import numpy as np

ABI_VERSION = 1  # kernels.c FK_ABI_VERSION: a library of another version is not used
MODES = ("auto", "required", "off")
# kernels.c rounds by adding and taking away 2**23: exact while the product stays below 2**22
# (the largest is scale * 65535 DN * (255 + 896)); a scale above this (dn_per_reflectance < 176,
# far from any 12-bit sensor) keeps that band on the numpy/OpenCV path
MAX_SCALE = 2.0**22 / (65535 * (255 + 896))


def library_path(machine: str | None = None) -> Path:
    return Path(__file__).with_name(f"libflight_kernels.{machine or platform.machine()}.so")


class NativeUnavailable(RuntimeError):
    """The library cannot be used: missing, unloadable, another ABI version, or failed its check."""


class NativeKernels:
    def __init__(self, path: Path | None = None):
        self.path = path or library_path()
        try:
            lib = ctypes.CDLL(str(self.path))
            version, cal = lib.fk_abi_version, lib.fk_calibrate_rows
        except (OSError, AttributeError) as exc:
            raise NativeUnavailable(f"{self.path.name}: cannot load ({exc})"[:300]) from None
        version.argtypes, version.restype = [], ctypes.c_int
        if version() != ABI_VERSION:
            raise NativeUnavailable(f"{self.path.name}: ABI version {version()}, the flight needs {ABI_VERSION}")
        cal.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_size_t, ctypes.c_int32, ctypes.c_float]
        cal.restype = None
        self._cal = cal

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
