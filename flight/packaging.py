"""Frame results -> downlink products: the pure part of `FlightApp.package`.

Kept free of the store, the clock and the process so the benchmark can build exactly the packets
the flight process would, in its own process, and time it. `FlightApp.package` stores each
(apid, time_s, make) with `make(product_id)`; `frame_packets` encodes them directly.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial

from flight.dictionary import EVENTS, Apid, DetectionClass
from flight.geolocate import pixel_to_latlon
from flight.pipeline import FrameResult
from flight.products import Detection, Event, FrameSummary, ImageChip, Product, encode_tm

Maker = Callable[[int], Product]  # product_id -> product (the store assigns the id)


def frame_products(r: FrameResult) -> list[tuple[Apid, float, Maker]]:
    """Detections, chips and the frame summary of one frame, in the order FlightApp stores them."""
    m = r.meta
    t = m.capture_time_s
    center = (float("nan"), float("nan"))
    if m.footprint is not None:
        center = pixel_to_latlon(m.footprint, m.height, m.width, m.height / 2, m.width / 2)
    out: list[tuple[Apid, float, Maker]] = []
    for d in r.detections:
        out.append((Apid.DETECTION, t, partial(
            Detection, frame_id=m.frame_id, capture_time_s=t, class_id=d.class_id, confidence_q=_confidence_q(d.confidence),
            row_px=d.row_px, col_px=d.col_px, lat_deg=d.lat_deg, lon_deg=d.lon_deg, area_px=min(d.area_px, 65535))))
    for c in r.chips:
        out.append((Apid.IMAGE_CHIP, t, partial(
            ImageChip, frame_id=m.frame_id, capture_time_s=t, class_id=c.class_id, row_px=c.row_px, col_px=c.col_px,
            height_px=c.height_px, width_px=c.width_px, bands=3, png=c.png)))
    out.append((Apid.FRAME_SUMMARY, t, partial(
        FrameSummary, frame_id=m.frame_id, capture_time_s=t, tiles=r.tiles, cloudy_tiles=r.cloudy_tiles,
        cloud_fraction=r.cloud_fraction, discarded=int(r.discarded), ships=r.count(DetectionClass.SHIP),
        fires=r.count(DetectionClass.FIRE), processing_ms=r.processing_ms, center_lat_deg=center[0],
        center_lon_deg=center[1])))
    return out


def _confidence_q(confidence: float) -> int:
    """Confidence in [0, 1] as the packet's u8 (a NaN from a broken model packs as 0, never raises)."""
    return int(min(255, max(0, round(confidence * 255)))) if confidence == confidence else 0


def discard_event_args(r: FrameResult, discard_fraction: float) -> dict | None:
    """Keyword arguments of the FRAME_DISCARDED_CLOUDY event when the frame was discarded."""
    if not r.discarded:
        return None
    return dict(frame_id=r.meta.frame_id, cloud_pct=100 * r.cloud_fraction, limit_pct=100 * discard_fraction)


def frame_packets(r: FrameResult, epoch: datetime, discard_fraction: float, first_id: int = 0,
                  first_seq: int = 0, event_time_s: float | None = None) -> list[bytes]:
    """Every TM packet one frame produces (products, plus the discard event), as the flight sends them."""
    packets = [encode_tm(make(first_id + i), first_seq + i, epoch, t) for i, (_, t, make) in enumerate(frame_products(r))]
    ev = discard_event_args(r, discard_fraction)
    if ev is not None:
        d = EVENTS["FRAME_DISCARDED_CLOUDY"]
        t = r.meta.capture_time_s if event_time_s is None else event_time_s
        n = len(packets)
        packets.append(encode_tm(Event(first_id + n, t, d.id, int(d.severity), r.meta.frame_id, d.fmt.format(**ev)[:200]),
                                 first_seq + n, epoch, t))
    return packets
