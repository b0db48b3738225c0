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
        """Parse metadata; raises ValueError with the reason on anything malformed."""
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"frame metadata is not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise ValueError("frame metadata is not a JSON object")
        try:
            fp = obj.get("footprint")
            footprint = None
            if fp is not None:
                lat, lon = tuple(map(float, fp["lat_deg"])), tuple(map(float, fp["lon_deg"]))
                if len(lat) != 4 or len(lon) != 4:
                    raise ValueError("footprint needs 4 corners")
                footprint = Footprint(lat, lon)  # type: ignore[arg-type]
            return FrameMeta(
                frame_id=int(obj["frame_id"]),
                capture_time_s=float(obj["capture_time_s"]),
                height=int(obj["height"]),
                width=int(obj["width"]),
                bands=tuple(str(b) for b in obj.get("bands", BANDS)),
                dtype=str(obj.get("dtype", "uint16")),
                gsd_m=float(obj.get("gsd_m", 10.0)),
                footprint=footprint,
                calibration_version=str(obj.get("calibration_version", "")),
                extra=dict(obj.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(Infinity)
            raise ValueError(f"frame metadata malformed: {exc!r}") from exc
