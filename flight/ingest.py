"""Ingest: validate frame headers and strips before anything downstream sees them.

The camera reads a frame out as a header followed by strips of rows (as a pushbroom sensor does),
so the flight software never needs a whole raw frame in memory. Every check raises
`FrameRejected` naming the frame and the problem; the caller emits an event, counts it and goes
on with the next frame.
"""

from __future__ import annotations

import numpy as np

from flight.frames import BANDS, DN_MAX, FrameMeta


class FrameRejected(Exception):
    def __init__(self, frame_id: int | None, reason: str):
        super().__init__(f"frame {frame_id}: {reason}")
        self.frame_id, self.reason = frame_id, reason


class FrameIngest:
    """Validates one frame at a time: header first, then strips in row order."""

    def __init__(self, tile_px: int, max_height: int = 16384, max_width: int = 16384):
        self.tile_px = tile_px
        self.max_height, self.max_width = max_height, max_width
        self.meta: FrameMeta | None = None
        self.next_row = 0

    def begin(self, header: bytes) -> FrameMeta:
        """Parse and check a frame header. An unfinished previous frame is rejected first by the caller."""
        self.meta, self.next_row = None, 0
        try:
            meta = FrameMeta.from_json(header)
        except ValueError as exc:
            raise FrameRejected(None, str(exc)) from None
        fid = meta.frame_id
        if meta.bands != BANDS:
            raise FrameRejected(fid, f"bands {list(meta.bands)} differ from the sensor's {list(BANDS)}")
        if meta.dtype != "uint16":
            raise FrameRejected(fid, f"dtype {meta.dtype} is not uint16")
        if not (0 < meta.height <= self.max_height and 0 < meta.width <= self.max_width):
            raise FrameRejected(fid, f"size {meta.height}x{meta.width} outside 1..{self.max_height}x{self.max_width}")
        if meta.height % self.tile_px or meta.width % self.tile_px:
            raise FrameRejected(fid, f"size {meta.height}x{meta.width} is not a multiple of the {self.tile_px}-pixel tile")
        if not (meta.gsd_m > 0 and np.isfinite(meta.capture_time_s) and meta.capture_time_s >= 0):
            raise FrameRejected(fid, f"contradictory metadata: gsd_m {meta.gsd_m}, capture_time_s {meta.capture_time_s}")
        fp = meta.footprint
        if fp is not None and not all(
            np.isfinite(v) and -90 <= la <= 90 and -180 <= lo <= 180 for la, lo in zip(fp.lat_deg, fp.lon_deg, strict=True) for v in (la, lo)
        ):
            raise FrameRejected(fid, f"footprint out of range: {fp}")
        self.meta = meta
        return meta

    def strip(self, frame_id: int, row0: int, rows: int, data: bytes | memoryview) -> np.ndarray:
        """Check one strip and return it as a (bands, rows, width) uint16 view of `data`."""
        meta = self.meta
        if meta is None:
            raise FrameRejected(frame_id, "strip without a frame header")
        if frame_id != meta.frame_id:
            raise FrameRejected(meta.frame_id, f"strip of frame {frame_id} arrived inside frame {meta.frame_id}")
        if row0 != self.next_row:
            raise FrameRejected(frame_id, f"strip starts at row {row0}, expected {self.next_row} (missing or reordered strip)")
        if rows <= 0 or rows % self.tile_px or row0 + rows > meta.height:
            raise FrameRejected(frame_id, f"strip rows {row0}+{rows} not whole tiles inside height {meta.height}")
        expected = len(meta.bands) * rows * meta.width * 2
        if len(data) != expected:
            raise FrameRejected(frame_id, f"strip at row {row0} is {len(data)} bytes, expected {expected} (truncated buffer)")
        strip = np.frombuffer(data, dtype="<u2").reshape(len(meta.bands), rows, meta.width)
        peak = int(strip.max())
        if peak > DN_MAX:
            raise FrameRejected(frame_id, f"value {peak} above 12 bits in strip at row {row0}")
        self.next_row = row0 + rows
        return strip

    @property
    def complete(self) -> bool:
        return self.meta is not None and self.next_row == self.meta.height
