"""Onboard radiometric calibration: raw 12-bit DN -> uint16 TOA reflectance * REFLECTANCE_SCALE.

Flight software: depends on numpy and cv2 only (never on payload_sim).

Products (compact: 2 bytes per pixel and band in memory and before compression, plus 4 bytes per
bad pixel). Per band b and pixel p:

    dark[p]  = dark_base_dn[b] + dark_offset_dn[p]                 DN; dark_offset_dn uint8
    inv[p]   = (flat_q[p] + FLAT_Q_BIAS) * 2**-FLAT_Q_BITS         inverse relative response;
                                                                   flat_q uint8, FLAT_Q_BIAS = 896,
                                                                   FLAT_Q_BITS = 10: 0.875 .. 1.1240
    bad      = bad_pixels, sorted uint32 flat indices over (band, row, col)

Pixels whose dark is more than 255 DN above the band base (hot), or whose inverse response is
outside 0.875 .. 1.124 (dead, dead column, far-off response), are in ``bad_pixels``; their table
entries are clipped and never used. Flat quantization: the step is 2**-10 = 0.098 % of the
signal, so the error is at most 0.049 % of the signal and 0.028 % rms: 1/50 of the sensor noise
at reflectance 0.3 (1.5 %, SNR 64-69), 1/25 of the shot noise near saturation (0.7 %), below
the flat-field estimate's own noise (0.125 % rms); added in quadrature it raises the rms error
by < 0.1 % (measured: docs/world.md, "Calibration error"). The dark keeps whole DN, as before.

Calibration, per band b and pixel p, in strips of ``strip_rows`` rows:

    reflectance_q[p] = round( max(raw[p] - dark[p], 0) * (flat_q[p] + FLAT_Q_BIAS) * c_b ),
    c_b              = REFLECTANCE_SCALE / dn_per_reflectance[b] * 2**-FLAT_Q_BITS

per strip and band: dark_offset_dn + base and flat_q + FLAT_Q_BIAS are expanded into two
strip-sized uint16 buffers (numpy casting add: ~4x faster than cv2.add's mixed-depth path),
``cv2.subtract`` (saturating at 0) removes the dark, and one ``cv2.multiply`` (CV_16U, saturating,
round half to even, scale c_b) applies the flat and the absolute gain. No frame-sized table is
built: memory is the products (2 bytes per pixel-band: 48 MiB at 2048 x 2048 x 6) plus two
strip buffers (1 MiB at 128 rows x 2048). Bad pixels are then replaced by the mean of the
calibrated values of the nearest good pixels to their left and right in the same row and band
(within 4 pixels, else the nearest in the row), so the result does not depend on how rows are
split into strips.

File: ``save`` writes a versioned .npz (JSON metadata, CRC-32, the two uint8 tables and the index
list), deflate-compressed; at 2048 x 2048 x 6 with the default simulated sensor it is 29.7 MB
(50.4 MB of tables uncompressed; the format-1 uint16 file was 51.0 MB compressed, 126 MB raw).
``load`` checks the metadata first, then reads the arrays one at a time, each decompressed in
small chunks straight into its final buffer: peak memory while loading is the tables.

Table streaming (``Calibrator(path, tables="stream")``): the tables stay on mass memory, as on a
satellite's flash, and each strip reads just its rows with positioned reads (``os.preadv``) into
two strip-sized uint8 buffers, so resident memory does not grow with the frame. The table file
(``TableFile``, ``<products>.tables`` next to the .npz) holds the same products uncompressed:
a header (magic, JSON with its own CRC, the products' metadata verbatim and their CRC-32), then
dark_offset_dn (6, H, W) and flat_q (6, H, W) uint8, band by band, row-major (a strip of one band
is one contiguous read), then bad_pixels. Its CRC-32 is the .npz's (same metadata, same bytes), so
a table file made from other products is stale by CRC; the flight makes it from the .npz on first
load (streamed, 1 MiB at a time) and remakes it when it is missing, stale or fails its checks.
Not np.memmap: touched file-backed pages of a mapping count in RSS. Bad pixels and the repair
plan stay in RAM (4 + 32 bytes per bad pixel).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import struct
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import cv2
import numpy as np

from flight.frames import BANDS, REFLECTANCE_SCALE
from flight.native import MAX_SCALE as MAX_NATIVE_SCALE
from flight.native import NativeKernels
from flight.native import check_values as native_check_values

if TYPE_CHECKING:  # numpy's stubs give ndarray __buffer__ only for Python >= 3.12: cast("Buffer", ...) below
    from typing_extensions import Buffer

FLAT_Q_BITS = 10  # inverse response = (flat_q + FLAT_Q_BIAS) / 2**FLAT_Q_BITS
FLAT_Q_BIAS = 896  # flat_q 0 .. 255 -> 0.875 .. 1.12402, step 2**-10
FLAT_INV_MIN = FLAT_Q_BIAS / (1 << FLAT_Q_BITS)
FLAT_INV_MAX = (FLAT_Q_BIAS + 255) / (1 << FLAT_Q_BITS)
FORMAT = "onboard-payload-calibration"
FORMAT_VERSION = 2
_ARRAYS = ("dark_offset_dn", "flat_q", "bad_pixels")
_FLAT_BIAS_U16 = np.uint16(FLAT_Q_BIAS)
_REPAIR_REACH = 4  # how far to look for a good donor pixel
TABLES_FORMAT = "onboard-payload-calibration-tables"
TABLES_VERSION = 1
TABLES_SUFFIX = ".tables"
_TABLES_MAGIC = b"OBPCTBL\n"
_TABLES_ALIGN = 4096  # tables start on a page boundary
_CHUNK = 1 << 20  # bytes per read or write while converting and checking table files
REMAKE_RETRY_S = 10.0  # a table file that could not be remade is not tried again for this long (a 30 MB read)


@dataclass(frozen=True)
class CalibrationProducts:
    """What the ground measured about the instrument, uplinked and loaded at start-up.

    dark_base_dn: per band, the base dark level, DN (int).
    dark_offset_dn: uint8 (6, H, W), dark level above the base (ADC offset + DSNU + dark current
        = base + offset), DN; clipped at 255 (such pixels are in ``bad_pixels``).
    flat_q: uint8 (6, H, W), per-pixel relative-response correction: the inverse of the pixel's
        relative response is (flat_q + 896) / 1024, 0.875 .. 1.124 (out of range: bad pixel).
    bad_pixels: uint32 (n,), strictly increasing flat indices ``(band * H + row) * W + col`` of the
        pixels to repair (hot, dead, dead column, response out of range).
    dn_per_reflectance: per band, DN per unit TOA reflectance for a pixel of relative response 1.
    version: free text, e.g. "sim-2026-11-28"; frames carry it in FrameMeta.calibration_version.

    ``from_full`` builds them from full-precision ground measurements.
    """

    version: str
    dark_base_dn: tuple[int, ...]
    dark_offset_dn: np.ndarray
    flat_q: np.ndarray
    bad_pixels: np.ndarray
    dn_per_reflectance: tuple[float, ...]

    def __post_init__(self) -> None:
        nb = len(BANDS)
        for name in ("dark_offset_dn", "flat_q"):
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[0] != nb:
                got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
                raise ValueError(f"calibration products: {name} must be uint8 ({nb}, H, W), got {got}")
        if self.dark_offset_dn.shape != self.flat_q.shape:
            raise ValueError(
                f"calibration products: shapes differ: dark_offset_dn {self.dark_offset_dn.shape}, "
                f"flat_q {self.flat_q.shape}"
            )
        n_total = int(np.prod(self.dark_offset_dn.shape))
        if n_total >= 1 << 32:
            raise ValueError(f"calibration products: {self.dark_offset_dn.shape} too large for uint32 indices")
        bad = self.bad_pixels
        if not isinstance(bad, np.ndarray) or bad.dtype != np.uint32 or bad.ndim != 1:
            got = f"{bad.dtype} {bad.shape}" if isinstance(bad, np.ndarray) else type(bad).__name__
            raise ValueError(f"calibration products: bad_pixels must be uint32 (n,), got {got}")
        if bad.size and (int(bad[-1]) >= n_total or not bool(np.all(bad[1:] > bad[:-1]))):
            raise ValueError(
                f"calibration products: bad_pixels must be strictly increasing flat indices below {n_total}"
            )
        try:
            base = tuple(int(v) for v in self.dark_base_dn if float(v) == int(v))
        except (TypeError, ValueError, OverflowError):
            base = ()
        if len(base) != nb or len(tuple(self.dark_base_dn)) != nb or not all(0 <= v <= 65280 for v in base):
            raise ValueError(
                f"calibration products: dark_base_dn must be {nb} integers in 0..65280, got {self.dark_base_dn!r}"
            )
        object.__setattr__(self, "dark_base_dn", base)
        gains = tuple(float(g) for g in self.dn_per_reflectance)
        if len(gains) != nb or not all(np.isfinite(g) and 10.0 <= g <= 65535.0 for g in gains):
            raise ValueError(
                f"calibration products: dn_per_reflectance must be {nb} values in 10..65535, got {self.dn_per_reflectance!r}"
            )
        object.__setattr__(self, "dn_per_reflectance", gains)
        if not isinstance(self.version, str) or not self.version:
            raise ValueError(f"calibration products: version must be a non-empty string, got {self.version!r}")

    @classmethod
    def from_full(
        cls,
        version: str,
        dark_dn: np.ndarray,
        inverse_response: np.ndarray,
        bad_map: np.ndarray,
        dn_per_reflectance: tuple[float, ...],
    ) -> CalibrationProducts:
        """Compact full-precision ground products (ground side; works band by band).

        dark_dn: (6, H, W) integer dark level, DN. inverse_response: (6, H, W) float, the inverse
        of each pixel's relative response (non-finite where dead). bad_map: (6, H, W), nonzero =
        known bad. Adds to the bad pixels: dark more than 255 DN above the band minimum, inverse
        response that rounds outside 0.875 .. 1.124 or is not finite.
        """
        nb = len(BANDS)
        dark_dn, inverse_response, bad_map = (np.asarray(a) for a in (dark_dn, inverse_response, bad_map))
        if not (dark_dn.ndim == 3 and dark_dn.shape[0] == nb
                and dark_dn.shape == inverse_response.shape == bad_map.shape):
            raise ValueError(
                f"calibration products: from_full needs three ({nb}, H, W) arrays, got "
                f"{dark_dn.shape}, {inverse_response.shape}, {bad_map.shape}"
            )
        _, h, w = dark_dn.shape
        base: list[int] = []
        offset = np.empty(dark_dn.shape, np.uint8)
        flat = np.empty(dark_dn.shape, np.uint8)
        bad_parts = []
        for b in range(nb):
            d = dark_dn[b].astype(np.int64)
            lo = int(d.min())
            off = d - lo
            bad = (bad_map[b] != 0) | (off > 255)
            offset[b] = np.minimum(off, 255)
            del d, off
            inv = inverse_response[b].astype(np.float64)
            finite = np.isfinite(inv)
            q = np.rint(np.where(finite, inv, 0.0) * (1 << FLAT_Q_BITS)) - FLAT_Q_BIAS
            bad |= ~finite | (q < 0) | (q > 255)
            flat[b] = np.clip(q, 0, 255)
            del inv, q, finite
            base.append(lo)
            bad_parts.append(np.flatnonzero(bad).astype(np.uint32) + np.uint32(b * h * w))
        return cls(version=version, dark_base_dn=tuple(base), dark_offset_dn=offset, flat_q=flat,
                   bad_pixels=np.concatenate(bad_parts).astype(np.uint32), dn_per_reflectance=tuple(dn_per_reflectance))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.flat_q.shape)  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        """Memory held by the tables (2 bytes per pixel-band + 4 per bad pixel)."""
        return int(self.dark_offset_dn.nbytes + self.flat_q.nbytes + self.bad_pixels.nbytes)

    def bad_pixel_mask(self, band: int) -> np.ndarray:
        """bool (H, W), True where ``band`` has a bad pixel. Allocates a band-sized array: for
        ground tools and tests, not the flight path."""
        _, h, w = self.shape
        lo, hi = np.searchsorted(self.bad_pixels, (band * h * w, (band + 1) * h * w))
        mask = np.zeros(h * w, bool)
        mask[self.bad_pixels[lo:hi].astype(np.int64) - band * h * w] = True
        return mask.reshape(h, w)

    def _meta(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "bands": list(BANDS),
            "shape": list(self.shape),
            "flat_q_bits": FLAT_Q_BITS,
            "flat_q_bias": FLAT_Q_BIAS,
            "dark_base_dn": list(self.dark_base_dn),
            "dn_per_reflectance": list(self.dn_per_reflectance),
        }

    def _checksum(self, meta_json: str) -> int:
        crc = zlib.crc32(meta_json.encode())
        for name in _ARRAYS:
            arr = getattr(self, name)
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
                    **{name: getattr(self, name) for name in _ARRAYS},
                )
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def save_tables(self, path: str | os.PathLike) -> None:
        """Write the uncompressed table file that ``Calibrator(..., tables="stream")`` reads
        (layout: ``TableFile``), atomically. Its CRC-32 is the one ``save`` writes."""
        meta_json = json.dumps(self._meta(), sort_keys=True)
        with _atomic_write(Path(path)) as f:
            _write_tables(f, meta_json, self._checksum(meta_json), self)

    @staticmethod
    def load(
        path: str | os.PathLike,
        expected_shape: tuple[int, int, int] | None = None,
        expected_version: str | None = None,
    ) -> CalibrationProducts:
        """Read products written by ``save``; ValueError naming the problem on anything wrong.

        The metadata is checked before any table is read, and the tables are read one at a time
        (numpy decompresses each in small chunks into its final array): the peak memory of a load
        is the products themselves.
        """
        with _open_npz(path) as (where, data, meta_json, crc, meta):
            arrays = {name: data[name] for name in _ARRAYS}
        try:
            products = CalibrationProducts(
                version=str(meta["version"]),
                dark_base_dn=tuple(meta["dark_base_dn"]),
                dn_per_reflectance=tuple(meta["dn_per_reflectance"]),
                **arrays,
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


def _check_meta(where: str, meta_json: str) -> dict:
    try:
        meta = json.loads(meta_json)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: metadata is not JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{where}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{where}: format_version {meta.get('format_version')!r}, this software reads {FORMAT_VERSION}")
    if tuple(meta.get("bands", ())) != BANDS:
        raise ValueError(f"{where}: bands {meta.get('bands')!r}, expected {list(BANDS)}")
    if meta.get("flat_q_bits") != FLAT_Q_BITS or meta.get("flat_q_bias") != FLAT_Q_BIAS:
        raise ValueError(
            f"{where}: flat_q_bits/flat_q_bias {meta.get('flat_q_bits')!r}/{meta.get('flat_q_bias')!r}, "
            f"expected {FLAT_Q_BITS}/{FLAT_Q_BIAS}"
        )
    return meta


@contextlib.contextmanager
def _atomic_write(path: Path):
    """A temporary file next to ``path``, renamed onto it only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A crash mid-write left its temporary file (a table file's size, tens of MB) for good, one per
    # crash. Each writer holds a lock on its own; one nobody holds is abandoned and deleted. (Several
    # flights of a constellation may write the same file at once: deleting every *.tmp killed a
    # flight whose table was being written.)
    for stale in path.parent.glob(glob.escape(path.name) + "*.tmp"):
        with contextlib.suppress(OSError), open(stale, "rb") as g:
            fcntl.flock(g.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError (an OSError): in use
            stale.unlink()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    fcntl.flock(fd, fcntl.LOCK_EX)  # released when the file is closed or the process dies
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _tables_header(meta_json: str, crc: int, n_bad: int) -> bytes:
    head = json.dumps({"format": TABLES_FORMAT, "format_version": TABLES_VERSION, "products_meta": meta_json,
                       "crc32": crc, "n_bad": n_bad}, sort_keys=True).encode()
    raw = _TABLES_MAGIC + struct.pack("<II", len(head), zlib.crc32(head)) + head
    return raw + bytes(-len(raw) % _TABLES_ALIGN)


def _write_tables(f, meta_json: str, crc: int, products: CalibrationProducts) -> None:
    f.write(_tables_header(meta_json, crc, products.bad_pixels.size))
    for name in _ARRAYS:
        f.write(np.ascontiguousarray(getattr(products, name)).data)


def _npz_head(path: Path) -> tuple[str, int, dict, np.ndarray]:
    """Metadata JSON, CRC-32, checked metadata and bad pixels of a products .npz, without its
    tables (the members are read on demand)."""
    with _open_npz(path) as (_, data, meta_json, crc, meta):
        bad = data["bad_pixels"]
    return meta_json, crc, meta, bad


@contextlib.contextmanager
def _open_npz(path: str | os.PathLike) -> Iterator[tuple[str, Any, str, int, dict]]:
    """A products .npz opened with its metadata checked (members are read on demand): yields
    (where, members, metadata JSON, CRC-32, metadata). Any problem, also while reading members
    inside the block, comes out as a ValueError naming the file."""
    where = f"calibration file {os.fspath(path)!r}"
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"meta", "crc32", *_ARRAYS} - set(data.keys())
            if missing:
                raise ValueError(f"{where}: missing {sorted(missing)}")
            meta_json = str(data["meta"])
            yield where, data, meta_json, int(data["crc32"]), _check_meta(where, meta_json)
    except ValueError as exc:
        if str(exc).startswith(where):
            raise
        raise ValueError(f"{where}: not a calibration .npz ({exc})") from exc
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, zlib.error) as exc:
        raise ValueError(f"{where}: unreadable or truncated ({type(exc).__name__}: {exc})") from exc


def _products_head(where: str, meta: dict, bad: np.ndarray) -> CalibrationProducts:
    """Validate metadata and bad pixels with the products' own checks, the tables stood in for
    by zero-stride placeholders (no memory)."""
    try:
        shape = tuple(int(v) for v in meta["shape"])
        blank = np.broadcast_to(np.zeros((), np.uint8), shape)
        return CalibrationProducts(version=str(meta["version"]), dark_base_dn=tuple(meta["dark_base_dn"]),
                                   dark_offset_dn=blank, flat_q=blank, bad_pixels=bad,
                                   dn_per_reflectance=tuple(meta["dn_per_reflectance"]))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{where}: metadata incomplete ({exc!r})") from exc
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def tables_from_npz(npz: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Convert a products .npz into a table file, one MiB at a time (resident memory stays
    small whatever the frame size); ValueError if the .npz is bad, its CRC-32 included."""
    npz, dest = Path(npz), Path(dest)
    where = f"calibration file {os.fspath(npz)!r}"
    meta_json, crc, meta, bad = _npz_head(npz)
    head = _products_head(where, meta, bad)
    n = int(np.prod(head.shape))
    c = zlib.crc32(meta_json.encode())
    buf = memoryview(bytearray(_CHUNK))
    try:
        with zipfile.ZipFile(npz) as z, _atomic_write(dest) as f:
            f.write(_tables_header(meta_json, crc, bad.size))
            for name in _ARRAYS[:2]:
                with cast(zipfile.ZipExtFile, z.open(name + ".npy")) as m:  # mode "r": has readinto
                    version = np.lib.format.read_magic(m)
                    shape, fortran, dtype = (np.lib.format.read_array_header_1_0(m) if version == (1, 0)
                                             else np.lib.format.read_array_header_2_0(m))
                    if shape != head.shape or fortran or dtype != np.uint8:
                        raise ValueError(f"{where}: {name} is {dtype} {shape}, expected uint8 {head.shape}")
                    left = n
                    while left:
                        k = m.readinto(buf[: min(left, _CHUNK)])
                        if not k:
                            raise EOFError(f"{name} ends {left} bytes early")
                        c = zlib.crc32(cast("Buffer", buf[:k]), c)
                        f.write(buf[:k])
                        left -= k
            c = zlib.crc32(cast("Buffer", bad.view(np.uint8)), c)
            f.write(bad.data)
            if c != crc:
                raise ValueError(f"{where}: CRC-32 mismatch, the file is corrupted")
    except (EOFError, zipfile.BadZipFile, KeyError, zlib.error) as exc:
        raise ValueError(f"{where}: unreadable or truncated ({type(exc).__name__}: {exc})") from exc


class TableFile:
    """Calibration tables on mass memory, read a few rows at a time (``Calibrator`` "stream").

    Layout (little-endian): magic ``OBPCTBL\\n``; uint32 header length L and header CRC-32; L
    bytes of JSON header (format, format_version, products_meta: the products' metadata JSON as
    the .npz holds it, crc32: the products' CRC-32, n_bad); zeros up to a 4096-byte boundary; then
    dark_offset_dn (6, H, W) and flat_q (6, H, W) uint8, then bad_pixels (n_bad,) uint32.

    Opening checks everything (header, size, CRC-32 over metadata and all tables, read in 1 MiB
    chunks) and raises ValueError naming the file and the problem. Resident: the bad pixels and
    a 1 MiB check buffer while opening. Attributes as ``CalibrationProducts`` except the tables:
    version, shape, dark_base_dn, dn_per_reflectance, bad_pixels, plus meta_json and crc32.
    """

    def __init__(self, path: str | os.PathLike, file=None):
        self.path = os.fspath(path)
        where = f"calibration tables {self.path!r}"
        try:
            self._f = file if file is not None else open(path, "rb", buffering=0)
        except OSError as exc:
            raise ValueError(f"{where}: unreadable ({type(exc).__name__}: {exc})") from exc
        try:
            self._open(where)
        except BaseException:
            self.close()
            raise

    def _open(self, where: str) -> None:
        fd = self._f.fileno()
        size = os.fstat(fd).st_size
        fixed = os.pread(fd, 16, 0)
        if len(fixed) < 16 or fixed[:8] != _TABLES_MAGIC:
            raise ValueError(f"{where}: not a calibration table file (magic {fixed[:8]!r})")
        n_head, head_crc = struct.unpack("<II", fixed[8:])
        if n_head > _CHUNK:
            raise ValueError(f"{where}: header length {n_head} out of range, the file is corrupted")
        raw = os.pread(fd, n_head, 16)
        if len(raw) != n_head:
            raise ValueError(f"{where}: truncated in the header ({size} bytes)")
        if zlib.crc32(raw) != head_crc:
            raise ValueError(f"{where}: header CRC-32 mismatch, the file is corrupted")
        try:
            head = json.loads(raw)
            if head.get("format") != TABLES_FORMAT:
                raise ValueError(f"{where}: format {head.get('format')!r}, expected {TABLES_FORMAT!r}")
            if head.get("format_version") != TABLES_VERSION:
                raise ValueError(f"{where}: format_version {head.get('format_version')!r}, "
                                 f"this software reads {TABLES_VERSION}")
            self.meta_json, self.crc32, n_bad = str(head["products_meta"]), int(head["crc32"]), int(head["n_bad"])
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
            raise ValueError(f"{where}: header incomplete ({exc!r})") from exc
        meta = _check_meta(where, self.meta_json)
        shape = meta.get("shape")
        if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
            raise ValueError(f"{where}: shape {shape!r} in the metadata")
        self._data = 16 + n_head + (-(16 + n_head) % _TABLES_ALIGN)
        self._n = int(np.prod(shape))
        expect = self._data + 2 * self._n + 4 * n_bad
        if size != expect:
            raise ValueError(f"{where}: {'truncated' if size < expect else 'too long'}: "
                             f"{size} bytes, the header says {expect}")
        bad = np.empty(n_bad, "<u4")
        self._read_into(bad.view(np.uint8), self._data + 2 * self._n, where)
        head_p = _products_head(where, meta, bad.astype(np.uint32, copy=False))
        # CRC-32 over metadata and tables, as the .npz's: catches corruption on mass memory
        c = zlib.crc32(self.meta_json.encode())
        buf = np.empty(_CHUNK, np.uint8)
        for off in range(0, 2 * self._n, _CHUNK):
            k = min(_CHUNK, 2 * self._n - off)
            self._read_into(buf[:k], self._data + off, where)
            c = zlib.crc32(cast("Buffer", buf[:k]), c)
        if zlib.crc32(cast("Buffer", bad.view(np.uint8)), c) != self.crc32:
            raise ValueError(f"{where}: CRC-32 mismatch, the file is corrupted")
        self.version, self.shape = head_p.version, head_p.shape
        self.dark_base_dn, self.dn_per_reflectance = head_p.dark_base_dn, head_p.dn_per_reflectance
        self.bad_pixels = head_p.bad_pixels

    def _read_into(self, buf: np.ndarray, offset: int, where: str | None = None) -> None:
        """Fill ``buf`` (C-contiguous) from ``offset`` with positioned reads (no shared file position)."""
        mv = memoryview(cast("Buffer", buf)).cast("B")
        done = 0
        while done < len(mv):
            k = os.preadv(self._f.fileno(), [mv[done:]], offset + done)
            if k <= 0:
                raise ValueError(f"{where or f'calibration tables {self.path!r}'}: truncated at byte {offset + done}")
            done += k

    def check_step(self, offset: int, crc: int, max_bytes: int) -> tuple[int, int]:
        """Continue a CRC-32 pass over the tables: read up to ``max_bytes`` from table byte
        ``offset`` (start a pass with offset 0 and crc ``zlib.crc32(meta_json)``); returns the new
        offset and CRC. At ``offset == tables_bytes`` the pass is over: compare
        ``finish_check(crc)`` with ``crc32``."""
        k = min(max_bytes, self.tables_bytes - offset)
        buf = np.empty(k, np.uint8)
        self._read_into(buf, self._data + offset)
        return offset + k, zlib.crc32(cast("Buffer", buf), crc)

    @property
    def tables_bytes(self) -> int:
        return 2 * self._n

    def finish_check(self, crc: int) -> int:
        """The products' CRC-32 from a pass over the tables: the bad pixels in use are added."""
        return zlib.crc32(cast("Buffer", self.bad_pixels.astype("<u4").view(np.uint8)), crc)

    def read_rows(self, table: int, band: int, row0: int, out: np.ndarray) -> np.ndarray:
        """Rows ``row0 .. row0 + len(out)`` of one band of table 0 (dark_offset_dn) or 1 (flat_q)
        into ``out`` (uint8 (n, W), C-contiguous): one contiguous read."""
        nb, h, w = self.shape
        self._read_into(out, self._data + table * self._n + (band * h + row0) * w)
        return out

    def close(self) -> None:
        f, self._f = getattr(self, "_f", None), None
        if f is not None:
            f.close()

    @classmethod
    def for_products(cls, products: CalibrationProducts | str | os.PathLike) -> TableFile:
        """The table file for products in memory (an anonymous temporary file) or for a products
        .npz: ``<npz stem>.tables`` next to it, made or remade from the .npz when it is missing,
        stale (other products, by CRC-32) or fails its checks. The .npz's metadata is checked first."""
        if isinstance(products, CalibrationProducts):
            f = tempfile.TemporaryFile()
            meta_json = json.dumps(products._meta(), sort_keys=True)
            _write_tables(f, meta_json, products._checksum(meta_json), products)
            f.flush()
            return cls("<temporary>", file=f)
        npz = Path(products)
        meta_json, crc, _, _ = _npz_head(npz)
        path = npz.with_suffix(TABLES_SUFFIX)
        if path.exists():
            try:
                t = cls(path)
                if t.crc32 == crc and t.meta_json == meta_json:
                    return t
                t.close()
            except ValueError:
                pass  # bad or stale: the .npz is the uplinked, checked source; remake it
        tables_from_npz(npz, path)
        return cls(path)


def calibrate_rows_reference(raw: np.ndarray, offset: np.ndarray, flat: np.ndarray, base: int, scale: float,
                              out: np.ndarray, gain: np.ndarray) -> None:
    """One band's rows the numpy/OpenCV way, as ``Calibrator`` does without the native kernel (the
    reference the kernel is checked against): dark and flat expanded to uint16, the dark taken away
    (saturating at 0), then one multiply by flat and scale (float, round half to even, saturating)."""
    # uint8 -> uint16 expansion: numpy's casting add is ~4x faster here than cv2.add with
    # dtype=CV_16U (mixed-depth path): 2 vs 7-9 ms per 2048 x 2048 x 6 frame
    np.add(offset, np.uint16(base), out=out)
    np.add(flat, _FLAT_BIAS_U16, out=gain)
    cv2.subtract(raw, out, dst=out)
    cv2.multiply(out, gain, dst=out, scale=scale, dtype=cv2.CV_16U)


def native_differs(kernels: NativeKernels, base: int, scale: float) -> str:
    """"" when the native kernel gives the reference's results for a band's constants over
    ``flight.native.check_values`` (every flat and offset value, every 12-bit signal, the 16-bit
    range in steps: 2.1 M values, 1-3 ms), else the first difference or why it cannot run."""
    if not 0.0 < scale <= MAX_NATIVE_SCALE:
        return f"scale {scale:.6g} outside the kernel's (0, {MAX_NATIVE_SCALE:.4g}]"
    raw, offset, flat = native_check_values()
    for r0 in range(0, raw.shape[0], 16):  # 16 flat values at a time: buffers of 0.3 MB
        r, o, f = (np.ascontiguousarray(a[r0:r0 + 16]) for a in (raw, offset, flat))
        want, got = np.empty(r.shape, np.uint16), np.empty(r.shape, np.uint16)
        calibrate_rows_reference(r, o, f, base, scale, want, np.empty_like(want))
        kernels.calibrate_rows(r, o, f, got, base, scale)
        if not np.array_equal(want, got):
            k = tuple(int(i[0]) for i in np.nonzero(want != got))
            return (f"raw {r[k]} offset {o[k]} flat {f[k]} base {base}: {got[k]}, the reference {want[k]}")
    return ""


class Calibrator:
    """Raw uint16 DN (6, H, W) -> uint16 reflectance * 10000 (6, H, W), in strips of rows.

    ``calibrator(raw)`` does a whole frame; ``calibrator.calibrate_strip(raw_rows, row0)`` does
    rows ``row0 .. row0 + n`` of a frame as they arrive, with the same result bit for bit
    (bad-pixel repair only uses donors in the same row). Use one instance per thread.

    ``products``: ``CalibrationProducts`` or the path of a products .npz. ``tables``:
    "memory": the products' tables in RAM (2 bytes per pixel-band); "stream": read from a
    ``TableFile`` strip by strip (next to the .npz, made from it if needed; for products in
    memory, a temporary file), same output bit for bit. Besides that it holds two strip
    buffers (two more, uint8, in "stream") and the repair plan (a few int64 per bad pixel).
    ``kernels`` (flight.native): the native calibration kernel, used when it gives this
    calibration's results bit for bit (checked here, band by band: a few ms each);
    ``kernel_note`` says which path runs and why.
    """

    def __init__(self, products: CalibrationProducts | str | os.PathLike, strip_rows: int = 128,
                 tables: str = "memory", kernels: NativeKernels | None = None):
        if not (1 <= int(strip_rows) <= 1 << 16):
            raise ValueError(f"Calibrator: strip_rows={strip_rows!r} out of range, allowed 1..65536")
        if tables not in ("memory", "stream"):
            raise ValueError(f"Calibrator: tables={tables!r}, allowed 'memory' or 'stream'")
        self.strip_rows = int(strip_rows)
        self.tables = tables
        self.table_file: TableFile | None = None
        # the products .npz a damaged table file is remade from ("stream" from a path only)
        self._npz = None if isinstance(products, CalibrationProducts) else os.fspath(products)
        self.remakes: list[str] = []  # why the table file was remade, for the caller to report (take_remakes)
        self._next_remake = 0.0  # time.monotonic() before which a failed remake is not tried again
        self._scrub: tuple[int, int] | None = None  # (offset, crc) of a table-file check in progress
        src: TableFile | CalibrationProducts
        if tables == "stream":
            self.products = None  # the tables stay on mass memory
            src = self.table_file = TableFile.for_products(products)
            self._crc32 = src.crc32  # the products every remade table file must hold
        else:
            if not isinstance(products, CalibrationProducts):
                products = CalibrationProducts.load(products)
            self.products = src = products
            self._offset = products.dark_offset_dn
            self._flat = products.flat_q
        nb, h, w = src.shape
        self.shape = (nb, h, w)
        self.version = src.version
        self._base = [int(v) for v in src.dark_base_dn]  # 0 .. 65280 (CalibrationProducts checks)
        self._scale = [REFLECTANCE_SCALE / g / (1 << FLAT_Q_BITS) for g in src.dn_per_reflectance]
        bad = src.bad_pixels
        bounds = np.searchsorted(bad, np.arange(nb + 1, dtype=np.int64) * (h * w))
        self._repairs = [self._plan_repairs(bad[bounds[b]:bounds[b + 1]].astype(np.int64) - b * h * w, w)
                         for b in range(nb)]
        n = min(self.strip_rows, h)
        # the dark is expanded into the output rows themselves (overwritten by the result): one
        # strip-sized buffer fewer, memory that grows with the frame's width (issue #16)
        self._gain_buf = np.empty((n, w), np.uint16)
        if self.table_file is not None:  # the table rows of one band and strip, as read
            self._table_u8 = np.empty((n, w), np.uint8)
            self._flat_u8 = np.empty((n, w), np.uint8)
        # the native kernel, when given and it gives this calibration's results bit for bit
        # (flight/native): one pass instead of four; the numpy/OpenCV path otherwise
        self.kernels: NativeKernels | None = None
        self.kernel_note = "numpy/OpenCV"
        if kernels is not None:
            why = next((f"band {BANDS[b]}: {d}" for b in range(nb)
                        if (d := native_differs(kernels, self._base[b], self._scale[b]))), "")
            if why:
                self.kernel_note = f"numpy/OpenCV: the native kernel is not used: {why}"
            else:
                self.kernels, self.kernel_note = kernels, "native"

    def close(self) -> None:
        """Close the table file ("stream"); the calibrator is unusable afterwards."""
        if self.table_file is not None:
            self.table_file.close()

    # -- a table file damaged on mass memory ---------------------------------------------------

    def _tables(self) -> TableFile:
        if self.table_file is None:  # a remake failed: try again, at most every REMAKE_RETRY_S
            self._remake("the last remake failed")
        assert self.table_file is not None
        return self.table_file

    def _read_table(self, table: int, band: int, row0: int, out: np.ndarray) -> np.ndarray:
        """One strip of one table. A read that fails (the file truncated, removed or unreadable)
        remakes the file from the products .npz and reads again: before, every later frame
        failed at calibration until SAFE, with the good .npz beside it."""
        try:
            return self._tables().read_rows(table, band, row0, out)
        except (ValueError, OSError) as exc:
            if self._npz is None or self.table_file is None:
                raise
            self._remake(f"read failed ({type(exc).__name__}: {exc})")
            return self._tables().read_rows(table, band, row0, out)

    def _remake(self, reason: str) -> None:
        """Remake the table file from the .npz (checked by its CRC-32, and it must hold the same
        products); ValueError when that cannot be done now (the next try in REMAKE_RETRY_S)."""
        if self._npz is None:
            raise ValueError(f"calibration tables: {reason}; no products file to remake them from")
        now = time.monotonic()
        if now < self._next_remake:
            raise ValueError(f"calibration tables unavailable: {reason}; next remake in "
                             f"{self._next_remake - now:.0f} s")
        self._next_remake = now + REMAKE_RETRY_S
        old, self.table_file = self.table_file, None
        if old is not None:
            old.close()
        self._scrub = None
        path = Path(self._npz).with_suffix(TABLES_SUFFIX)
        with contextlib.suppress(OSError):
            path.unlink()  # for_products would reuse a file that still passes its checks
        try:
            new = TableFile.for_products(self._npz)
        except (ValueError, OSError) as exc:
            raise ValueError(f"calibration tables: {reason}; remaking them failed: {exc}") from exc
        if new.crc32 != self._crc32:
            new.close()
            raise ValueError(f"calibration tables: {reason}; the products file now holds other products")
        self.table_file = new
        self.remakes.append(reason)

    def take_remakes(self) -> list[str]:
        out, self.remakes = self.remakes, []
        return out

    def scrub_begin(self) -> None:
        """Start a CRC-32 pass over the table file ("stream"; nothing in "memory"), continued by
        scrub_step: bit errors on mass memory would otherwise calibrate frames wrongly for good."""
        if self.table_file is not None and self._scrub is None:
            self._scrub = (0, zlib.crc32(self.table_file.meta_json.encode()))

    @property
    def scrubbing(self) -> bool:
        return self._scrub is not None

    def scrub_step(self, max_bytes: int = 1 << 20) -> str | None:
        """Check up to max_bytes more of the table file. Returns None while the pass goes on,
        "" when it ended clean, or what was wrong (then the file has been remade, or ValueError
        when it cannot be)."""
        if self._scrub is None or self.table_file is None:
            return None
        t = self.table_file
        try:
            offset, crc = t.check_step(*self._scrub, max_bytes)
        except (ValueError, OSError) as exc:
            problem = f"read failed ({type(exc).__name__}: {exc})"
        else:
            if offset < t.tables_bytes:
                self._scrub = (offset, crc)
                return None
            self._scrub = None
            if t.finish_check(crc) == t.crc32:
                return ""
            problem = "CRC-32 mismatch: the table file changed on mass memory"
        self._next_remake = 0.0  # a scrub finding is acted on at once
        self._remake(problem)
        return problem

    @staticmethod
    def _plan_repairs(bad: np.ndarray, w: int):
        """For one band's sorted bad flat indices: row, flat index, and two donor flat indices in
        the same row.

        Donors are the nearest good pixels to the left and to the right (within 4 pixels, else
        anywhere in the row); with only one side, both donors are that pixel.
        """
        if bad.size == 0:
            z = np.zeros(0, np.int64)
            return z, z, z, z
        rows, cols = np.divmod(bad, w)

        def is_bad(flat: np.ndarray) -> np.ndarray:
            pos = np.minimum(np.searchsorted(bad, flat), bad.size - 1)
            return bad[pos] == flat

        donors = np.full((bad.size, 2), -1, np.int64)
        for side, sign in ((0, -1), (1, 1)):
            for d in range(1, _REPAIR_REACH + 1):
                cc = cols + sign * d
                ok = (donors[:, side] < 0) & (cc >= 0) & (cc < w)
                ok[ok] = ~is_bad(bad[ok] + sign * d)
                donors[ok, side] = cc[ok]
        for i in np.flatnonzero((donors[:, 0] < 0) & (donors[:, 1] < 0)):  # rare: search the row
            row_bad = set((bad[(bad >= rows[i] * w) & (bad < (rows[i] + 1) * w)] - rows[i] * w).tolist())
            left = next((c for c in range(int(cols[i]) - 1, -1, -1) if c not in row_bad), -1)
            right = next((c for c in range(int(cols[i]) + 1, w) if c not in row_bad), -1)
            donors[i] = left, right
        a = np.where(donors[:, 0] >= 0, donors[:, 0], donors[:, 1])
        b = np.where(donors[:, 1] >= 0, donors[:, 1], donors[:, 0])
        keep = a >= 0  # a row with no good pixel at all stays as computed
        rows, cols, a, b = rows[keep], cols[keep], a[keep], b[keep]
        return rows, rows * w + cols, rows * w + a, rows * w + b

    def _rows(self, raw: np.ndarray, row0: int, out: np.ndarray) -> None:
        """Calibrate rows row0 .. row0 + n (raw and out are (6, n, W), C-contiguous)."""
        nb, n, w = raw.shape
        for b in range(nb):
            base, scale = self._base[b], self._scale[b]
            for s0 in range(0, n, self.strip_rows):
                s1 = min(s0 + self.strip_rows, n)
                g0, g1 = row0 + s0, row0 + s1
                if self.tables == "memory":
                    offset, flat = self._offset[b, g0:g1], self._flat[b, g0:g1]
                else:  # two contiguous positioned reads
                    offset = self._read_table(0, b, g0, self._table_u8[: s1 - s0])
                    flat = self._read_table(1, b, g0, self._flat_u8[: s1 - s0])
                if self.kernels is not None:
                    self.kernels.calibrate_rows(raw[b, s0:s1], offset, flat, out[b, s0:s1], base, scale)
                else:  # the dark expanded into the output rows, as scratch until the multiply writes them
                    calibrate_rows_reference(raw[b, s0:s1], offset, flat, base, scale, out[b, s0:s1],
                                             self._gain_buf[: s1 - s0])
            rows_b, bad_b, da, db = self._repairs[b]
            lo, hi = np.searchsorted(rows_b, (row0, row0 + n))
            if hi > lo:  # donors are good pixels of the same rows: already calibrated above
                off = row0 * w
                flat_out = out[b].reshape(-1)
                fix = (flat_out[da[lo:hi] - off].astype(np.uint32) + flat_out[db[lo:hi] - off] + 1) >> 1
                flat_out[bad_b[lo:hi] - off] = fix

    def __call__(self, raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if not isinstance(raw, np.ndarray) or raw.dtype != np.uint16 or raw.shape != self.shape:
            got = f"{raw.dtype} {raw.shape}" if isinstance(raw, np.ndarray) else type(raw).__name__
            raise ValueError(f"Calibrator: raw frame must be uint16 {self.shape}, got {got}")
        return self.calibrate_strip(raw, 0, out)  # a whole frame is the strip of all its rows

    def calibrate_strip(self, raw: np.ndarray, row0: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``row0 .. row0 + n`` of a frame: uint16 (6, n, W) DN -> uint16 (6, n, W) reflectance."""
        nb, h, w = self.shape
        if (not isinstance(raw, np.ndarray) or raw.dtype != np.uint16 or raw.ndim != 3
                or raw.shape[0] != nb or raw.shape[2] != w):
            got = f"{raw.dtype} {raw.shape}" if isinstance(raw, np.ndarray) else type(raw).__name__
            raise ValueError(f"Calibrator: strip must be uint16 ({nb}, rows, {w}), got {got}")
        if not (0 <= row0 and row0 + raw.shape[1] <= h):
            raise ValueError(f"Calibrator: strip rows {row0}..{row0 + raw.shape[1]} outside the frame's 0..{h}")
        if raw.strides[1:] != (w * raw.itemsize, raw.itemsize):  # rows of each band contiguous is enough
            raw = np.ascontiguousarray(raw)
        if out is None:
            out = np.empty(raw.shape, np.uint16)
        elif out.dtype != np.uint16 or out.shape != raw.shape or not out.flags.c_contiguous:
            raise ValueError(f"Calibrator: out must be C-contiguous uint16 {raw.shape}")
        self._rows(raw, int(row0), out)
        return out
