"""Raw frames and their metadata: the contract between the camera and the flight software.

A raw frame is band-sequential uint16 of shape (bands, height, width) holding 12-bit DN.
Calibrated frames keep the same layout as uint16 reflectance scaled by REFLECTANCE_SCALE
(the Sentinel-2 L1C convention), so data stays integer until the model input.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir16", "swir22")
DN_BITS = 12
DN_MAX = (1 << DN_BITS) - 1
REFLECTANCE_SCALE = 10_000  # uint16 reflectance = reflectance * REFLECTANCE_SCALE


@dataclass(frozen=True)
class Footprint:
    """Ground corners of a nadir frame, degrees, in pixel order:
    top-left (row 0, col 0), top-right (row 0, col W), bottom-right (row H, col W), bottom-left (row H, col 0).
    Corner coordinates are those of the outer pixel edges, so pixel (r, c) centre is at (r + 0.5, c + 0.5)."""

    lat_deg: tuple[float, float, float, float]
    lon_deg: tuple[float, float, float, float]


@dataclass(frozen=True)
class FrameMeta:
    """What the camera tells the flight software about one frame (never the ground truth)."""

    frame_id: int
    capture_time_s: float  # scenario time: seconds since the scenario epoch
    height: int
    width: int
    bands: tuple[str, ...] = BANDS
    dtype: str = "uint16"
    gsd_m: float = 10.0
    footprint: Footprint | None = None
    calibration_version: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return len(self.bands) * self.height * self.width * 2

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @staticmethod
    def from_json(data: bytes) -> FrameMeta:
        """Parse metadata; raises ValueError with the reason on anything malformed. Types are
        strict (a frame id is a JSON integer, not a string or a float) and sizes bounded, so no
        hostile header can reach a packer or an allocator; value ranges are ingest's job."""
        if len(data) > MAX_HEADER_BYTES:
            raise ValueError(f"frame metadata is {len(data)} bytes, at most {MAX_HEADER_BYTES}")
        obj = parse_json_object(data, "frame metadata")
        try:
            fp = obj.get("footprint")
            footprint = None
            if fp is not None:
                lat, lon = _floats(fp["lat_deg"], "lat_deg"), _floats(fp["lon_deg"], "lon_deg")
                if len(lat) != 4 or len(lon) != 4:
                    raise ValueError("footprint needs 4 corners")
                footprint = Footprint(lat, lon)  # type: ignore[arg-type]
            bands = obj.get("bands", list(BANDS))
            if not isinstance(bands, list) or len(bands) > 64 or not all(isinstance(b, str) and len(b) <= 32 for b in bands):
                raise ValueError("bands must be a list of at most 64 short names")
            extra = obj.get("extra", {})
            if not isinstance(extra, dict):
                raise ValueError("extra must be an object")
            return FrameMeta(
                frame_id=json_int(obj["frame_id"], "frame_id"),
                capture_time_s=json_float(obj["capture_time_s"], "capture_time_s"),
                height=json_int(obj["height"], "height"),
                width=json_int(obj["width"], "width"),
                bands=tuple(bands),
                dtype=_short_str(obj.get("dtype", "uint16"), "dtype"),
                gsd_m=json_float(obj.get("gsd_m", 10.0), "gsd_m"),
                footprint=footprint,
                calibration_version=_short_str(obj.get("calibration_version", ""), "calibration_version"),
                extra=extra,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"frame metadata malformed: {exc!r}") from exc


MAX_HEADER_BYTES = 16384  # a real header is about 400 bytes


def parse_json_object(data: bytes | memoryview, what: str) -> dict:
    """A JSON object from untrusted bytes; ValueError on anything else. json.loads raises
    RecursionError on deeply nested input, which is malformed input like any other."""
    try:
        obj = json.loads(bytes(data))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{what} is not JSON: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} is not a JSON object")
    return obj


def json_int(v, name: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{name} must be an integer, got {type(v).__name__}")
    return v


def json_float(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{name} must be a number, got {type(v).__name__}")
    try:
        return float(v)
    except OverflowError:  # an integer too large for a float
        raise ValueError(f"{name} out of range") from None


def _floats(v, name: str) -> tuple[float, ...]:
    if not isinstance(v, list) or len(v) > 4:
        raise ValueError(f"{name} must be a list of 4 numbers")
    return tuple(json_float(x, name) for x in v)


def _short_str(v, name: str, max_len: int = 64) -> str:
    if not isinstance(v, str) or len(v) > max_len:
        raise ValueError(f"{name} must be a string of at most {max_len} characters")
    return v
