"""Hostile camera messages: every field of a frame header and a strip message over its whole type
range (huge, negative, 2**63, floats where integers go, NaN, nested, empty, wrong part counts).

Used by the camera when a scenario asks for it (`[faults] hostile_messages_per_frame = N`: N of
these go out before each real frame, through the real ZeroMQ socket) and by the in-process
property tests. Seeded: the same seed gives the same messages.
"""

from __future__ import annotations

import json
import random

# Values that break a packer, an allocator or a parser when a field trusts them.
HOSTILE_VALUES: list = [
    None, True, False, -1, 0, 1, 63, 65, 2**15, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1,
    2**63, -2**63, 2**64, -2**64, 10**30, 1.5, -0.0, 1e308, -1e308, 1e-308, float("nan"), float("inf"),
    float("-inf"), "", "7", "x" * 5000, "\u0000", "\udcff", [], [1, 2], {}, {"a": 1}, [[[[[[[[]]]]]]]],
]
HEADER_FIELDS = ("frame_id", "capture_time_s", "height", "width", "bands", "dtype", "gsd_m", "footprint",
                 "calibration_version", "extra")
STRIP_FIELDS = ("frame_id", "row0", "rows")


def _dumps(obj) -> bytes:
    return json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass")


def nested(depth: int) -> bytes:
    """A JSON array nested `depth` deep: json.loads raises RecursionError past about 1000."""
    return b"[" * depth + b"]" * depth


def hostile_message(rng: random.Random, header: dict, strip_bytes: int) -> list[bytes]:
    """One hostile message, built around a valid frame `header` (dict) and strip size."""
    kind = rng.randrange(10)
    if kind == 0:  # a header with one field replaced
        h = dict(header)
        h[rng.choice(HEADER_FIELDS)] = rng.choice(HOSTILE_VALUES)
        return [b"frame", _dumps(h)]
    if kind == 1:  # a header with a field missing, or extra junk
        h = dict(header)
        if rng.random() < 0.5:
            h.pop(rng.choice(HEADER_FIELDS), None)
        else:
            h["extra"] = {"k" * rng.randrange(1, 50): rng.choice(HOSTILE_VALUES)}
        return [b"frame", _dumps(h)]
    if kind == 2:  # not JSON, or deeply nested JSON, or not an object
        return [b"frame", rng.choice([rng.randbytes(rng.randrange(0, 300)), nested(rng.choice([10, 5000, 100_000])),
                                      b"[]", b"7", b'"frame"', b"null", b"{" * 3])]
    if kind == 3:  # a footprint with hostile corners
        h = dict(header)
        h["footprint"] = {"lat_deg": [rng.choice(HOSTILE_VALUES) for _ in range(rng.randrange(0, 6))],
                          "lon_deg": [rng.choice(HOSTILE_VALUES) for _ in range(4)]}
        return [b"frame", _dumps(h)]
    if kind in (4, 5):  # a strip header with hostile fields, alone or after a valid header
        s = {"frame_id": header["frame_id"], "row0": 0, "rows": 64}
        s[rng.choice(STRIP_FIELDS)] = rng.choice(HOSTILE_VALUES)
        return [b"strip", _dumps(s), bytes(strip_bytes)]
    if kind == 6:  # a strip of the wrong size, or with values above 12 bits
        s = {"frame_id": header["frame_id"], "row0": 0, "rows": 64}
        size = rng.choice([0, 1, strip_bytes - 1, strip_bytes + 1, strip_bytes])
        return [b"strip", _dumps(s), b"\xff" * size]
    if kind == 7:  # wrong number of parts, unknown kinds
        return rng.choice([[], [b""], [b"frame"], [b"strip"], [b"strip", b"{}"], [b"frame", b"{}", b"x"],
                           [rng.randbytes(rng.randrange(0, 40))], [b"FRAME", _dumps(header)]])
    if kind == 8:  # a strip header that is not JSON or nested
        return [b"strip", rng.choice([rng.randbytes(rng.randrange(0, 300)), nested(100_000), b"[]"]), bytes(strip_bytes)]
    # a valid header of a different size than the sensor's, or of a frame id out of range
    h = dict(header)
    h["height"], h["width"] = rng.choice([(64, 64), (128, 64), (16384, 16384), (header["height"] * 2, header["width"])])
    return [b"frame", _dumps(h)]


def hostile_messages(seed: int, n: int, header: dict, strip_bytes: int) -> list[list[bytes]]:
    rng = random.Random(seed)
    return [hostile_message(rng, header, strip_bytes) for _ in range(n)]
