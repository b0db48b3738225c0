"""A small ring of recent frames as downsampled true-colour quicklooks, built strip by strip.

The raw frame is never whole in flight memory, so what the ground can ask for after the fact is
what this ring kept: each frame's red/green/blue reflectance averaged over factor x factor pixel
blocks, stretched to 8 bits. Memory is bounded: frames x 3 x (H/factor) x (W/factor) bytes. A
chip request of a recent frame is a crop of its quicklook, at the quicklook's resolution.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import BinaryIO

import cv2
import numpy as np

from flight.frames import BANDS, REFLECTANCE_SCALE, FrameMeta

RGB = [BANDS.index("red"), BANDS.index("green"), BANDS.index("blue")]
STRETCH = 255.0 / (0.4 * REFLECTANCE_SCALE)  # 0..0.4 reflectance -> 0..255, as flight.pipeline.encode_chip


class QuicklookRing:
    def __init__(self, frames: int, factor: int):
        self.frames, self.factor = frames, factor
        self.ring: OrderedDict[int, tuple[FrameMeta, np.ndarray]] = OrderedDict()
        self.meta: FrameMeta | None = None
        self.buf: np.ndarray | None = None
        self.carry: np.ndarray | None = None  # rows of the last strip not yet a whole block of factor rows

    def begin(self, meta: FrameMeta) -> None:
        f = self.factor
        ok = self.frames > 0 and meta.height % f == 0 and meta.width % f == 0
        self.meta = meta if ok else None
        self.buf = np.zeros((meta.height // f, meta.width // f, 3), np.uint8) if ok else None
        self.carry = None

    def add_strip(self, cal: np.ndarray, row0: int) -> None:
        """A calibrated strip (bands, rows, width) uint16 of the current frame, in row order. Strips
        need not be whole blocks of factor rows: the rows left over wait for the next strip."""
        if self.buf is None:
            return
        f = self.factor
        rgb = cal[RGB]
        if self.carry is not None:
            row0 -= self.carry.shape[1]
            rgb = np.concatenate([self.carry, rgb], axis=1)
            self.carry = None
        _, rows, width = rgb.shape
        whole = rows - rows % f
        if whole < rows:
            self.carry = rgb[:, whole:].copy()
        if whole == 0:
            return
        rgb = rgb[:, :whole].reshape(3, whole // f, f, width // f, f).mean(axis=(2, 4), dtype=np.float32)
        self.buf[row0 // f : (row0 + whole) // f] = np.clip(rgb * STRETCH, 0, 255).astype(np.uint8).transpose(1, 2, 0)

    def commit(self) -> None:
        if self.meta is not None and self.buf is not None:
            self.ring[self.meta.frame_id] = (self.meta, self.buf)
            self.ring.move_to_end(self.meta.frame_id)
            while len(self.ring) > self.frames:
                self.ring.popitem(last=False)
        self.drop()

    def drop(self) -> None:
        self.meta, self.buf, self.carry = None, None, None

    def clear(self) -> None:
        """Shed memory (memory pressure)."""
        self.ring.clear()
        self.drop()

    def get(self, frame_id: int | None) -> tuple[FrameMeta, np.ndarray] | None:
        """The quicklook of frame_id (None: the latest)."""
        if not self.ring:
            return None
        if frame_id is None:
            return next(reversed(self.ring.values()))
        return self.ring.get(frame_id)

    def nbytes(self) -> int:
        return sum(img.nbytes for _, img in self.ring.values())


def png(rgb: np.ndarray, max_bytes: int) -> tuple[np.ndarray, bytes] | None:
    """PNG of an (h, w, 3) RGB image, halved until it fits max_bytes; None if it never does."""
    img = rgb
    while min(img.shape[:2]) >= 4:
        ok, data = cv2.imencode(".png", np.ascontiguousarray(img[:, :, ::-1]))
        if ok and len(data) <= max_bytes:
            return img, data.tobytes()
        img = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return None


def crop(rgb: np.ndarray, factor: int, row_px: int, col_px: int, size_px: int) -> tuple[np.ndarray, int, int, int]:
    """Crop of a quicklook centred on full-resolution (row, col); returns (image, row0_px, col0_px, size_px)
    in full-resolution pixels (clipped to the frame)."""
    h, w = rgb.shape[:2]
    n = max(1, min(size_px // factor, h, w))
    r0 = int(np.clip(row_px // factor - n // 2, 0, h - n))
    c0 = int(np.clip(col_px // factor - n // 2, 0, w - n))
    return rgb[r0 : r0 + n, c0 : c0 + n], r0 * factor, c0 * factor, n * factor


class RecentFrames:
    """The last few frames at full resolution as 8-bit true colour, on mass memory (files), so the
    ground can ask for a full-resolution chip of a recent frame after the fact. Strips are appended
    to the frame's file as they are calibrated (nothing frame-sized in RAM); a chip is read back
    from its rows only. Disk use is bounded: frames x H x W x 3 bytes.

    The ring is optional: a mass-memory fault (full, read-only, I/O error, not mounted) drops the
    frame from the ring only, counted in `errors` (reason in `last_error`), and the frame itself
    goes on (an OSError from here used to fail every frame as a stage error, or the flight's start);
    a chip of a frame not held comes from its quicklook."""

    def __init__(self, folder, frames: int):
        from pathlib import Path

        self.folder, self.frames = Path(folder), frames
        self.ring: OrderedDict[int, FrameMeta] = OrderedDict()
        self.meta: FrameMeta | None = None
        self.file: BinaryIO | None = None
        self.errors = 0
        self.last_error = ""
        if frames:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                for stale in self.folder.glob("*.rgb"):  # a restart does not know what they were
                    stale.unlink()
            except OSError as exc:
                self._fault("clear", exc)

    def _fault(self, what: str, exc: OSError) -> None:
        self.errors += 1
        self.last_error = f"recent frames: {what}: {exc}"[:200]

    def _path(self, frame_id: int):
        return self.folder / f"{frame_id}.rgb"

    def begin(self, meta: FrameMeta) -> None:
        self.drop()
        if self.frames:
            try:
                self.file = open(self._path(meta.frame_id), "wb")
            except OSError as exc:
                self._fault(f"frame {meta.frame_id} not kept", exc)
                return
            self.meta = meta

    def add_strip(self, cal: np.ndarray, row0: int) -> None:
        if self.file is not None:
            rgb = np.clip(cal[RGB].astype(np.float32) * STRETCH, 0, 255).astype(np.uint8)
            try:
                self.file.write(np.ascontiguousarray(rgb.transpose(1, 2, 0)).tobytes())
            except OSError as exc:  # a partial file must never be read as the frame
                self._fault(f"frame {self.meta.frame_id if self.meta else '?'} not kept", exc)
                self.drop()

    def commit(self) -> None:
        if self.file is None or self.meta is None:
            return
        try:
            self.file.close()  # flushes the last buffered rows: a full disk can fail here
        except OSError as exc:
            self._fault(f"frame {self.meta.frame_id} not kept", exc)
            self.drop()
            return
        self.file = None
        self.ring[self.meta.frame_id] = self.meta
        while len(self.ring) > self.frames:
            old, _ = self.ring.popitem(last=False)
            self._unlink(old)
        self.meta = None

    def _unlink(self, frame_id: int) -> None:
        try:
            self._path(frame_id).unlink(missing_ok=True)
        except OSError as exc:
            self._fault(f"frame {frame_id} not deleted", exc)

    def drop(self) -> None:
        """Forget the frame in progress (rejected or aborted)."""
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass  # the file is deleted next: what it failed to write does not matter
            assert self.meta is not None  # set together with self.file in begin()
            self._unlink(self.meta.frame_id)
        self.meta, self.file = None, None

    def chip(self, frame_id: int, row_px: int, col_px: int, size_px: int) -> tuple[np.ndarray, int, int, int] | None:
        """Full-resolution crop centred on (row, col): (image, row0, col0, size), or None if the
        frame is not (or no longer) held."""
        meta = self.ring.get(frame_id)
        if meta is None:
            return None
        n = max(1, min(size_px, meta.height, meta.width))
        r0 = int(np.clip(row_px - n // 2, 0, meta.height - n))
        c0 = int(np.clip(col_px - n // 2, 0, meta.width - n))
        try:
            frame = np.memmap(self._path(frame_id), np.uint8, "r", shape=(meta.height, meta.width, 3))
            img = np.array(frame[r0 : r0 + n, c0 : c0 + n])
            del frame
        except (OSError, ValueError) as exc:  # deleted, unreadable or truncated behind our back: use the quicklook
            self._fault(f"frame {frame_id} unreadable", exc if isinstance(exc, OSError) else OSError(str(exc)))
            self.ring.pop(frame_id, None)
            return None
        return img, r0, c0, n
