"""Ingest: validate frame headers and strips before anything downstream sees them.

The camera reads a frame out as a header followed by strips of rows (as a pushbroom sensor does),
so the flight software never needs a whole raw frame in memory. Every check raises
`FrameRejected` naming the frame and the problem; the caller emits an event, counts it and goes
on with the next frame.
"""

from __future__ import annotations

import numpy as np

from flight.dictionary import FRAME_ID_MAX
from flight.frames import BANDS, DN_MAX, FrameMeta, json_int, parse_json_object

# Capture times are packed as CCSDS CDS short time codes (16-bit day count from 1958, so up to
# 2137) counted from the scenario epoch; config limits the epoch so that this many seconds fit.
MAX_CAPTURE_TIME_S = 2**31 - 1
MAX_GSD_M = 100_000.0
MAX_STRIP_HEADER_BYTES = 256


class FrameRejected(Exception):
    def __init__(self, frame_id: int | None, reason: str):
        super().__init__(f"frame {frame_id}: {reason}")
        self.frame_id, self.reason = frame_id, reason


class FrameIngest:
    """Validates one frame at a time: header first, then strips in row order."""

    def __init__(self, tile_px: int, max_height: int = 16384, max_width: int = 16384):
        self.tile_px = tile_px
        self.max_height, self.max_width = max_height, max_width
        # (height, width) the calibration products are for: other frames cannot be calibrated
        self.frame_shape: tuple[int, int] | None = None
        self.meta: FrameMeta | None = None
        self.next_row = 0

    def begin(self, header: bytes) -> FrameMeta:
        """Parse and check a frame header. An unfinished previous frame is rejected first by the caller."""
        self.meta, self.next_row = None, 0
        try:
            meta = FrameMeta.from_json(header)
        except ValueError as exc:
            raise FrameRejected(None, str(exc)) from None
        if not 0 <= meta.frame_id <= FRAME_ID_MAX:  # the id itself is hostile: no event may carry it
            raise FrameRejected(None, f"frame_id {meta.frame_id} outside 0..{FRAME_ID_MAX}")
        fid = meta.frame_id
        if meta.bands != BANDS:
            raise FrameRejected(fid, f"bands {list(meta.bands)} differ from the sensor's {list(BANDS)}")
        if meta.dtype != "uint16":
            raise FrameRejected(fid, f"dtype {meta.dtype} is not uint16")
        if not (0 < meta.height <= self.max_height and 0 < meta.width <= self.max_width):
            raise FrameRejected(fid, f"size {meta.height}x{meta.width} outside 1..{self.max_height}x{self.max_width}")
        if self.frame_shape is not None and (meta.height, meta.width) != tuple(self.frame_shape):
            raise FrameRejected(fid, f"size {meta.height}x{meta.width} differs from the calibrated sensor's "
                                     f"{self.frame_shape[0]}x{self.frame_shape[1]}")
        if meta.height % self.tile_px or meta.width % self.tile_px:
            raise FrameRejected(fid, f"size {meta.height}x{meta.width} is not a multiple of the {self.tile_px}-pixel tile")
        if not (0 < meta.gsd_m <= MAX_GSD_M and np.isfinite(meta.capture_time_s) and 0 <= meta.capture_time_s <= MAX_CAPTURE_TIME_S):
            raise FrameRejected(fid, f"contradictory metadata: gsd_m {meta.gsd_m}, capture_time_s {meta.capture_time_s}")
        fp = meta.footprint
        if fp is not None and not all(
            np.isfinite(v) and -90 <= la <= 90 and -180 <= lo <= 180 for la, lo in zip(fp.lat_deg, fp.lon_deg, strict=True) for v in (la, lo)
        ):
            raise FrameRejected(fid, f"footprint out of range: {fp}")
        self.meta = meta
        return meta

    def strip_header(self, data: bytes | memoryview) -> tuple[int, int, int]:
        """(frame_id, row0, rows) of a strip message header, each checked against its range."""
        meta = self.meta
        fid = meta.frame_id if meta is not None else None
        if len(data) > MAX_STRIP_HEADER_BYTES:
            raise FrameRejected(fid, f"strip header is {len(data)} bytes, at most {MAX_STRIP_HEADER_BYTES}")
        try:
            hdr = parse_json_object(data, "strip header")
            frame_id, row0, rows = (json_int(hdr[k], k) for k in ("frame_id", "row0", "rows"))
        except (KeyError, ValueError) as exc:
            raise FrameRejected(fid, f"strip header malformed: {exc}") from None
        if not (0 <= frame_id <= FRAME_ID_MAX and 0 <= row0 <= self.max_height and 0 <= rows <= self.max_height):
            raise FrameRejected(fid, f"strip header out of range: frame {frame_id} rows {row0}+{rows}")
        return frame_id, row0, rows

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
