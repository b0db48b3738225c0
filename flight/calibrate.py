"""Onboard radiometric calibration: raw 12-bit DN -> uint16 TOA reflectance * REFLECTANCE_SCALE.

Flight software: depends on numpy and cv2 only (never on payload_sim).

Per band b and pixel p, with ``raw`` and ``dark_dn`` in DN:

    reflectance_q[p] = round( max(raw[p] - dark_dn[p], 0) * G_b[p] / 2**s_b ),
    G_b[p]           = round( flat_gain_q[p] / 2**FLAT_Q_BITS * REFLECTANCE_SCALE / dn_per_reflectance[b] * 2**s_b )

``flat_gain_q`` is the per-pixel PRNU / vignetting correction (the inverse of the pixel's relative
response) in unsigned Q2.14 fixed point: value = flat_gain_q / 16384, range 0 .. 3.99994,
resolution 6.1e-5. ``G_b`` folds it with the absolute gain into one uint16 table per band, with the
largest shift ``s_b`` that keeps it below 65536, so the whole correction is one saturating
``cv2.subtract`` and one ``cv2.multiply`` per strip and band. Bad pixels (``bad_pixel_map`` = 1:
hot, dead, dead column) are then replaced by the mean of the nearest good pixels to their left and
right in the same row and band (within 4 pixels, else the nearest in the row), computed from the
donors' raw values with the same formula, so the result does not depend on how rows are split.

Work is done in strips of ``strip_rows`` rows: apart from the output, memory is one strip of
uint16 (plus the constant calibration tables, the size of one frame each).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from flight.frames import BANDS, REFLECTANCE_SCALE

FLAT_Q_BITS = 14  # flat_gain_q is unsigned Q2.14
FORMAT = "onboard-payload-calibration"
FORMAT_VERSION = 1
_REPAIR_REACH = 4  # how far to look for a good donor pixel


@dataclass(frozen=True)
class CalibrationProducts:
    """What the ground measured about the instrument, uplinked and loaded at start-up.

    dark_dn: uint16 (6, H, W) mean dark level (ADC offset + DSNU + dark current), DN.
    flat_gain_q: uint16 (6, H, W) per-pixel relative-response correction, Q2.14 (16384 = 1.0);
        0 where the pixel is dead.
    bad_pixel_map: uint8 (6, H, W), 1 = pixel to repair (hot, dead, dead column).
    dn_per_reflectance: per band, DN per unit TOA reflectance for a pixel of relative response 1.
    version: free text, e.g. "sim-2026-11-28"; frames carry it in FrameMeta.calibration_version.
    """

    version: str
    dark_dn: np.ndarray
    flat_gain_q: np.ndarray
    bad_pixel_map: np.ndarray
    dn_per_reflectance: tuple[float, ...]

    def __post_init__(self) -> None:
        nb = len(BANDS)
        for name, dtype in (("dark_dn", np.uint16), ("flat_gain_q", np.uint16), ("bad_pixel_map", np.uint8)):
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != 3 or arr.shape[0] != nb:
                got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
                raise ValueError(f"calibration products: {name} must be {np.dtype(dtype).name} ({nb}, H, W), got {got}")
        if not (self.dark_dn.shape == self.flat_gain_q.shape == self.bad_pixel_map.shape):
            raise ValueError(
                f"calibration products: shapes differ: dark_dn {self.dark_dn.shape}, "
                f"flat_gain_q {self.flat_gain_q.shape}, bad_pixel_map {self.bad_pixel_map.shape}"
            )
        gains = tuple(float(g) for g in self.dn_per_reflectance)
        if len(gains) != nb or not all(np.isfinite(g) and 10.0 <= g <= 65535.0 for g in gains):
            raise ValueError(
                f"calibration products: dn_per_reflectance must be {nb} values in 10..65535, got {self.dn_per_reflectance!r}"
            )
        object.__setattr__(self, "dn_per_reflectance", gains)
        if not isinstance(self.version, str) or not self.version:
            raise ValueError(f"calibration products: version must be a non-empty string, got {self.version!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.dark_dn.shape)  # type: ignore[return-value]

    def _meta(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "bands": list(BANDS),
            "shape": list(self.shape),
            "flat_q_bits": FLAT_Q_BITS,
            "dn_per_reflectance": list(self.dn_per_reflectance),
        }

    def _checksum(self, meta_json: str) -> int:
        crc = zlib.crc32(meta_json.encode())
        for arr in (self.dark_dn, self.flat_gain_q, self.bad_pixel_map):
            crc = zlib.crc32(np.ascontiguousarray(arr).view(np.uint8).reshape(-1), crc)  # type: ignore[arg-type]
        return crc

    def save(self, path: str | os.PathLike) -> None:
        """Write a versioned .npz (metadata JSON + CRC-32 over metadata and arrays), atomically."""
        path = Path(path)
        meta_json = json.dumps(self._meta(), sort_keys=True)
        crc = self._checksum(meta_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(
                    f,
                    meta=np.array(meta_json),
                    crc32=np.array(crc, dtype=np.uint32),
                    dark_dn=self.dark_dn,
                    flat_gain_q=self.flat_gain_q,
                    bad_pixel_map=self.bad_pixel_map,
                )
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @staticmethod
    def load(
        path: str | os.PathLike,
        expected_shape: tuple[int, int, int] | None = None,
        expected_version: str | None = None,
    ) -> CalibrationProducts:
        """Read products written by ``save``; ValueError naming the problem on anything wrong."""
        where = f"calibration file {os.fspath(path)!r}"
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = {"meta", "crc32", "dark_dn", "flat_gain_q", "bad_pixel_map"} - set(data.keys())
                if missing:
                    raise ValueError(f"{where}: missing {sorted(missing)}")
                meta_json = str(data["meta"])
                crc = int(data["crc32"])
                arrays = {k: data[k] for k in ("dark_dn", "flat_gain_q", "bad_pixel_map")}
        except ValueError as exc:
            if str(exc).startswith(where):
                raise
            raise ValueError(f"{where}: not a calibration .npz ({exc})") from exc
        except (OSError, EOFError, zipfile.BadZipFile, KeyError, zlib.error) as exc:
            raise ValueError(f"{where}: unreadable or truncated ({type(exc).__name__}: {exc})") from exc
        try:
            meta = json.loads(meta_json)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: metadata is not JSON ({exc})") from exc
        if meta.get("format") != FORMAT:
            raise ValueError(f"{where}: format {meta.get('format')!r}, expected {FORMAT!r}")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{where}: format_version {meta.get('format_version')!r}, this software reads {FORMAT_VERSION}")
        if tuple(meta.get("bands", ())) != BANDS:
            raise ValueError(f"{where}: bands {meta.get('bands')!r}, expected {list(BANDS)}")
        if meta.get("flat_q_bits") != FLAT_Q_BITS:
            raise ValueError(f"{where}: flat_q_bits {meta.get('flat_q_bits')!r}, expected {FLAT_Q_BITS}")
        try:
            products = CalibrationProducts(
                version=str(meta["version"]),
                dark_dn=arrays["dark_dn"],
                flat_gain_q=arrays["flat_gain_q"],
                bad_pixel_map=arrays["bad_pixel_map"],
                dn_per_reflectance=tuple(meta["dn_per_reflectance"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{where}: metadata incomplete ({exc!r})") from exc
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        if list(products.shape) != list(meta.get("shape", [])):
            raise ValueError(f"{where}: arrays are {products.shape}, metadata says {meta.get('shape')}")
        if products._checksum(meta_json) != crc:
            raise ValueError(f"{where}: CRC-32 mismatch, the file is corrupted")
        if expected_shape is not None and tuple(expected_shape) != products.shape:
            raise ValueError(f"{where}: products are for frames {products.shape}, expected {tuple(expected_shape)}")
        if expected_version is not None and products.version != expected_version:
            raise ValueError(f"{where}: version {products.version!r}, expected {expected_version!r}")
        return products


class Calibrator:
    """Raw uint16 DN (6, H, W) -> uint16 reflectance * 10000 (6, H, W), in strips of rows.

    ``calibrator(raw)`` does a whole frame; ``calibrator.calibrate_strip(raw_rows, row0)`` does
    rows ``row0 .. row0 + n`` of a frame as they arrive, with the same result bit for bit
    (bad-pixel repair only uses donors in the same row). One instance holds one strip buffer:
    use one instance per thread.
    """

    def __init__(self, products: CalibrationProducts, strip_rows: int = 128):
        if not (1 <= int(strip_rows) <= 1 << 16):
            raise ValueError(f"Calibrator: strip_rows={strip_rows!r} out of range, allowed 1..65536")
        self.products = products
        self.strip_rows = int(strip_rows)
        nb, h, w = products.shape
        self.shape = (nb, h, w)
        # combined per-pixel gain tables, one shift per band
        self._gain_q = np.empty((nb, h, w), np.uint16)
        self._scale: list[float] = []
        self._shift: list[int] = []
        for b in range(nb):
            factor = REFLECTANCE_SCALE / products.dn_per_reflectance[b] / (1 << FLAT_Q_BITS)
            peak = float(products.flat_gain_q[b].max()) * factor
            shift = 0
            while shift < 30 and peak * (1 << (shift + 1)) <= 65535.0:
                shift += 1
            g = products.flat_gain_q[b].astype(np.float64) * (factor * (1 << shift))
            np.rint(g, out=g)
            self._gain_q[b] = g.astype(np.uint16)
            self._shift.append(shift)
            self._scale.append(1.0 / (1 << shift))
        self._dark = products.dark_dn
        self._repairs = [self._plan_repairs(products.bad_pixel_map[b]) for b in range(nb)]
        self._tmp = np.empty((min(self.strip_rows, h), w), np.uint16)

    @staticmethod
    def _plan_repairs(bad: np.ndarray):
        """For each bad pixel: row, flat index, and two donor flat indices in the same row.

        Donors are the nearest good pixels to the left and to the right (within 4 pixels, else
        anywhere in the row); with only one side, both donors are that pixel.
        """
        h, w = bad.shape
        rows, cols = np.nonzero(bad)
        if rows.size == 0:
            z = np.zeros(0, np.int64)
            return z, z, z, z
        good = bad == 0
        donors = np.full((rows.size, 2), -1, np.int64)
        for side, sign in ((0, -1), (1, 1)):
            for d in range(1, _REPAIR_REACH + 1):
                cc = cols + sign * d
                ok = (donors[:, side] < 0) & (cc >= 0) & (cc < w)
                ok[ok] = good[rows[ok], cc[ok]]
                donors[ok, side] = cc[ok]
        for i in np.flatnonzero((donors[:, 0] < 0) & (donors[:, 1] < 0)):  # rare: search the row
            row_good = np.flatnonzero(good[rows[i]])
            left, right = row_good[row_good < cols[i]], row_good[row_good > cols[i]]
            donors[i, 0] = left[-1] if left.size else -1
            donors[i, 1] = right[0] if right.size else -1
        a = np.where(donors[:, 0] >= 0, donors[:, 0], donors[:, 1])
        b = np.where(donors[:, 1] >= 0, donors[:, 1], donors[:, 0])
        keep = a >= 0  # a row with no good pixel at all stays as computed
        rows, cols, a, b = rows[keep], cols[keep], a[keep], b[keep]
        return rows, rows * w + cols, rows * w + a, rows * w + b

    def _pointwise(self, band: int, raw_flat: np.ndarray, offset: int, idx: np.ndarray) -> np.ndarray:
        """The strip formula for a few pixels (repair donors); idx are frame flat indices."""
        r = raw_flat[idx - offset].astype(np.int64)
        d = self._dark[band].reshape(-1)[idx].astype(np.int64)
        g = self._gain_q[band].reshape(-1)[idx].astype(np.int64)
        v = np.maximum(r - d, 0) * g
        s = self._shift[band]
        v = (v + (1 << (s - 1) if s else 0)) >> s
        return np.minimum(v, 65535)

    def _rows(self, raw: np.ndarray, row0: int, out: np.ndarray) -> None:
        """Calibrate rows row0 .. row0 + n (raw and out are (6, n, W), C-contiguous)."""
        nb, n, w = raw.shape
        for b in range(nb):
            for s0 in range(0, n, self.strip_rows):
                s1 = min(s0 + self.strip_rows, n)
                g0, g1 = row0 + s0, row0 + s1
                t = self._tmp[: s1 - s0]
                cv2.subtract(raw[b, s0:s1], self._dark[b, g0:g1], dst=t)
                cv2.multiply(t, self._gain_q[b, g0:g1], dst=out[b, s0:s1], scale=self._scale[b], dtype=cv2.CV_16U)
            rows_b, bad_b, da, db = self._repairs[b]
            lo, hi = np.searchsorted(rows_b, (row0, row0 + n))
            if hi > lo:
                off = row0 * w
                raw_flat = raw[b].reshape(-1)
                fix = (self._pointwise(b, raw_flat, off, da[lo:hi]) + self._pointwise(b, raw_flat, off, db[lo:hi]) + 1) >> 1
                out[b].reshape(-1)[bad_b[lo:hi] - off] = fix

    def __call__(self, raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if not isinstance(raw, np.ndarray) or raw.dtype != np.uint16 or raw.shape != self.shape:
            got = f"{raw.dtype} {raw.shape}" if isinstance(raw, np.ndarray) else type(raw).__name__
            raise ValueError(f"Calibrator: raw frame must be uint16 {self.shape}, got {got}")
        if not raw.flags.c_contiguous:
            raw = np.ascontiguousarray(raw)
        if out is None:
            out = np.empty(self.shape, np.uint16)
        elif out.dtype != np.uint16 or out.shape != self.shape or not out.flags.c_contiguous:
            raise ValueError(f"Calibrator: out must be C-contiguous uint16 {self.shape}")
        self._rows(raw, 0, out)
        return out

    def calibrate_strip(self, raw: np.ndarray, row0: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``row0 .. row0 + n`` of a frame: uint16 (6, n, W) DN -> uint16 (6, n, W) reflectance."""
        nb, h, w = self.shape
        if (not isinstance(raw, np.ndarray) or raw.dtype != np.uint16 or raw.ndim != 3
                or raw.shape[0] != nb or raw.shape[2] != w):
            got = f"{raw.dtype} {raw.shape}" if isinstance(raw, np.ndarray) else type(raw).__name__
            raise ValueError(f"Calibrator: strip must be uint16 ({nb}, rows, {w}), got {got}")
        if not (0 <= row0 and row0 + raw.shape[1] <= h):
            raise ValueError(f"Calibrator: strip rows {row0}..{row0 + raw.shape[1]} outside the frame's 0..{h}")
        if not raw.flags.c_contiguous:
            raw = np.ascontiguousarray(raw)
        if out is None:
            out = np.empty(raw.shape, np.uint16)
        elif out.dtype != np.uint16 or out.shape != raw.shape or not out.flags.c_contiguous:
            raise ValueError(f"Calibrator: out must be C-contiguous uint16 {raw.shape}")
        self._rows(raw, int(row0), out)
        return out
