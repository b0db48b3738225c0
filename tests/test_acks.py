"""Authenticated product acknowledgements (flight.acks, issue #12): the encoding round-trips over the
whole u64 id range, and a forged, replayed, altered, late or malformed ack deletes nothing and
raises nothing but AckError. About 5,000 generated cases per run."""

import hashlib
import hmac
import os
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from spacepackets.ecss.tc import PusTc
from spacepackets.ecss.tm import PusTm

from flight.acks import (
    ACK_SUBTYPE,
    COUNT_MAX,
    HEADER,
    MAX_ACK_IDS,
    MAX_ACK_PACKET_BYTES,
    MAX_ACK_RANGES,
    RANGE,
    U64_MAX,
    Ack,
    AckAuth,
    AckError,
    ack_key,
    batches,
    encode_ack,
    open_ack,
    parse_ack,
    range_ids,
    to_ranges,
)
from flight.commands import encode_command
from flight.dictionary import ACK_SERVICE, Apid
from flight.products import PRODUCT_ID_MAX, PacketError

KEY = bytes(range(32))
WINDOW = 600.0
u64 = st.integers(0, U64_MAX)
u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 2**16 - 1)
BOUNDARIES = [0, 1, 2**32 - 1, 2**32, 2**32 + 1, 2**63 - 1, 2**63, U64_MAX]


def crc_fixed(packet: bytes) -> bytes:
    """The packet with its CRC-16 recomputed (an attacker who alters a packet does this)."""
    from fastcrc import crc16  # what spacepackets uses: CRC-16/CCITT-FALSE

    body = packet[:-2]
    return body + crc16.ibm_3740(body).to_bytes(2, "big")


def raw_ack(body: bytes, key: bytes = KEY, source: int = 1, seq: int = 0, derive: bool = True) -> bytes:
    """An ack-shaped packet with any application data before the MAC, signed like encode_ack
    (with the mission key itself when derive is False: what a command MAC would be)."""

    def tc(app: bytes) -> bytes:
        return PusTc(service=ACK_SERVICE, message_subtype=ACK_SUBTYPE, apid=Apid.GROUND_ACK, app_data=app,
                     seq_count=seq, source_id=source).pack()

    signed = tc(body + bytes(32))[:-34]
    return tc(body + hmac.new(ack_key(key) if derive else key, signed, hashlib.sha256).digest())


# strategies built once (building them inside a composite on every draw costs more than the test)
COUNTS = st.lists(st.one_of(st.integers(1, 3), st.integers(1, MAX_ACK_IDS)), min_size=1, max_size=MAX_ACK_RANGES)
GAP = st.one_of(st.integers(0, 2), st.integers(0, 2**62))
HOSTILE_RANGES = st.lists(st.tuples(st.one_of(st.sampled_from(BOUNDARIES), u64), st.one_of(st.sampled_from([0, 1, COUNT_MAX]), u16)),
                          max_size=MAX_ACK_RANGES + 5)
HOSTILE_N = st.one_of(st.sampled_from([0, MAX_ACK_RANGES + 1, 2**16 - 1]), u16)
HOSTILE_COUNTER = st.one_of(st.sampled_from([0, 1, U64_MAX]), u64)
HOSTILE_ISSUED = st.one_of(st.sampled_from([0, 2**32 - 1]), u32)
EXTRA = st.binary(min_size=1, max_size=12)
SOURCE = st.one_of(st.just(1), u16)
SIGNER = st.sampled_from(["key", "key", "key", "other", "raw"])
SEQ = st.integers(0, 2**14 - 1)
DRIFT = st.one_of(st.integers(-700, 700), st.floats(-1e7, 1e7))


@st.composite
def valid_ranges(draw, max_id: int = U64_MAX) -> list[tuple[int, int]]:
    """1..MAX_ACK_RANGES ascending, disjoint runs (adjacent or far apart) of at most MAX_ACK_IDS ids
    in all, the last id at most max_id; the start often on a boundary."""
    counts, total = [], 0
    for c in draw(COUNTS):
        c = min(c, MAX_ACK_IDS - total)
        if not c:
            break
        counts.append(c)
        total += c
    gaps = [draw(GAP) for _ in counts[1:]]
    if total + sum(gaps) > max_id:
        gaps = [1] * len(gaps)
    span = total + sum(gaps)  # ids from the first to the last, both included
    start = draw(st.one_of(st.sampled_from([0, 2**32 - span // 2, 2**32, max_id - span + 1]), u64))
    start = max(0, min(start, max_id - span + 1))
    out, first = [], start
    for c, gap in zip(counts, [*gaps, 0], strict=True):
        out.append((first, c))
        first += c + gap
    assert out[-1][0] + out[-1][1] - 1 <= max_id
    return out


VALID = valid_ranges()
VALID_PRODUCT_IDS = valid_ranges(PRODUCT_ID_MAX)


# --- encoding -----------------------------------------------------------------------------------


@settings(max_examples=800, deadline=None)
@given(ranges=valid_ranges(), source=st.integers(0, 2**16 - 1), counter=u64, issued=u32, seq=u16)
@example(ranges=[(0, 1)], source=0, counter=0, issued=0, seq=0)
@example(ranges=[(U64_MAX, 1)], source=2**16 - 1, counter=U64_MAX, issued=2**32 - 1, seq=2**16 - 1)
@example(ranges=[(0, 1), (2**32, 1), (2**63 - 1, 1), (U64_MAX, 1)], source=1, counter=1, issued=1, seq=1)
@example(ranges=[(2**32 - 125, 250)], source=1, counter=1, issued=1, seq=1)  # across the 32-bit boundary
@example(ranges=[(U64_MAX - 249, 250)], source=1, counter=1, issued=1, seq=1)
def test_an_ack_round_trips_over_the_whole_u64_range(ranges, source, counter, issued, seq):
    packet = encode_ack(KEY, source, counter, issued, ranges, seq)
    assert len(packet) <= MAX_ACK_PACKET_BYTES
    ack = open_ack(packet, KEY)
    assert ack == Ack(source, counter, issued, tuple(ranges))
    assert ack.ids == range_ids(ranges)
    assert PusTc.unpack(packet).seq_count == seq & 0x3FFF


@settings(max_examples=500, deadline=None)
@given(ids=st.lists(st.one_of(st.sampled_from(BOUNDARIES), st.integers(0, 600), u64), max_size=700),
       max_ranges=st.integers(1, MAX_ACK_RANGES), max_ids=st.integers(1, MAX_ACK_IDS))
def test_batches_cover_every_id_once_in_bounded_acks(ids, max_ranges, max_ids):
    got = batches(ids, max_ranges, max_ids)
    assert [i for b in got for i in range_ids(b)] == sorted(set(ids))
    for b in got:
        assert 1 <= len(b) <= max_ranges and sum(c for _, c in b) <= max_ids
        open_ack(encode_ack(KEY, 1, 1, 1, b), KEY)  # every batch is a valid ack


def test_consecutive_ids_compress():
    ids = list(range((5 << 32) | 1, ((5 << 32) | 1) + 250))
    assert to_ranges(ids) == [((5 << 32) | 1, 250)]
    assert to_ranges(range(COUNT_MAX + 3)) == [(0, COUNT_MAX), (COUNT_MAX, 3)]
    packet = encode_ack(KEY, 1, 2**52, 1000, batches(ids)[0])
    # 6 + 5 header bytes, 14 counter/time/n, one 10-byte range, 32 MAC, 2 CRC; the u32-list ack was 1,015 bytes
    assert len(packet) == 69


@pytest.mark.parametrize("ranges", [[], [(1, 0)], [(5, 1), (5, 1)], [(5, 3), (6, 1)], [(9, 1), (5, 1)],
                                    [(U64_MAX, 2)], [(0, MAX_ACK_IDS + 1)], [(i * 2, 1) for i in range(MAX_ACK_RANGES + 1)],
                                    [(-1, 1)], [(2**64, 1)]])
def test_the_ground_refuses_to_encode_what_the_flight_would_refuse(ranges):
    with pytest.raises(ValueError):
        encode_ack(KEY, 1, 1, 1, ranges)


# --- authentication -----------------------------------------------------------------------------


def fresh(counters=None) -> AckAuth:
    return AckAuth(KEY, {} if counters is None else counters, WINDOW)


def test_authentic_ack_is_accepted_once_and_replays_are_refused():
    counters: dict[int, int] = {}
    auth = fresh(counters)
    a = encode_ack(KEY, 1, 1000, 50, [(10, 3)])
    assert auth.accept(a, 50.0) == [10, 11, 12] and counters == {1: 1000}
    for again in (a, encode_ack(KEY, 1, 999, 50, [(10, 3)]), encode_ack(KEY, 1, 1000, 51, [(20, 1)])):
        with pytest.raises(AckError) as e:
            auth.accept(again, 50.0)
        assert (e.value.kind, e.value.parsed) == ("REPLAY", True)
    assert counters == {1: 1000}
    assert auth.accept(encode_ack(KEY, 2, 5, 50, [(20, 1)]), 50.0) == [20]  # another station: its own counter
    assert auth.accept(encode_ack(KEY, 1, 1001, 50, [(21, 1)]), 50.0) == [21]
    assert counters == {1: 1001, 2: 5}


def test_forged_late_and_command_keyed_acks_are_refused_without_moving_the_counter():
    counters = {1: 100}
    auth = fresh(counters)
    cases = {
        "BAD_MAC": [encode_ack(os.urandom(32), 1, 200, 50, [(1, 250)]),  # another key
                    raw_ack(HEADER.pack(200, 50, 1) + RANGE.pack(1, 250), derive=False)],  # the command key's MAC
        "TIME_WINDOW": [encode_ack(KEY, 1, 200, 50 + 601, [(1, 1)]), encode_ack(KEY, 1, 201, 2**32 - 1, [(1, 1)])],
        "BAD_PACKET": [encode_ack(KEY, 1, 200, 50, [(PRODUCT_ID_MAX, 2)]),  # ids no store holds
                       encode_ack(KEY, 1, 200, 50, [(U64_MAX, 1)])],
    }
    for kind, packets in cases.items():
        for p in packets:
            with pytest.raises(AckError) as e:
                auth.accept(p, 50.0)
            assert (e.value.kind, e.value.parsed) == (kind, True), e.value
    assert counters == {1: 100}
    # exactly at the window's edge is still fresh
    assert auth.accept(encode_ack(KEY, 1, 300, 650, [(1, 1)]), 50.0) == [1]
    assert auth.accept(encode_ack(KEY, 1, 301, 0, [(PRODUCT_ID_MAX, 1)]), 600.0) == [PRODUCT_ID_MAX]


def test_an_ack_key_is_not_the_command_key_and_a_command_is_not_an_ack():
    assert ack_key(KEY) != KEY
    cmd = encode_command(KEY, 1, 50, "NOOP")
    with pytest.raises(AckError) as e:
        fresh().accept(cmd, 50.0)
    assert (e.value.kind, e.value.parsed) == ("BAD_PACKET", False)


# --- hostile acks -------------------------------------------------------------------------------


@st.composite
def hostile(draw):
    """Every field over its whole type range: n as declared (u16) vs ranges actually present, counts
    0..65535, any first id, extra or missing bytes, any source id, signed with the key or not."""
    kind = draw(st.integers(0, 3))
    ranges = draw(VALID if kind == 0 else HOSTILE_RANGES if kind == 3 else VALID_PRODUCT_IDS)
    often = st.integers(0, 4)  # a field broken one time in five: the rest of the checks get their turn
    n = len(ranges) if draw(often) else draw(HOSTILE_N)
    counter, issued = draw(HOSTILE_COUNTER), draw(HOSTILE_ISSUED)
    extra = b"" if draw(often) else draw(EXTRA)
    source, signer = draw(SOURCE), draw(SIGNER)
    body = HEADER.pack(counter, issued, n) + b"".join(RANGE.pack(f, c) for f, c in ranges) + extra
    key = KEY if signer != "other" else bytes(32)
    packet = raw_ack(body, key, source, draw(SEQ), derive=signer != "raw")
    cut = None if draw(often) else draw(st.integers(0, len(packet) + 8))
    if cut == len(packet):  # cut at its own length: the packet is whole
        cut = None
    if cut is not None:  # truncated, or extra bytes after the packet
        packet = packet[:cut] if cut <= len(packet) else packet + bytes(cut - len(packet))
    now = issued + draw(DRIFT)
    return packet, now, dict(ranges=ranges, n=n, counter=counter, issued=issued, extra=extra, signer=signer, cut=cut,
                             source=source)


def expected(packet: bytes, now: float, f: dict, last: int) -> list[int] | str:
    """What the flight must do with a hostile ack: the ids, or the kind of refusal."""
    ranges = f["ranges"]
    if f["cut"] is not None or f["extra"] or f["n"] != len(ranges) or not 1 <= len(ranges) <= MAX_ACK_RANGES:
        return "BAD_PACKET"
    if f["signer"] != "key":
        return "BAD_MAC"
    ids, end = 0, -1
    for first, count in ranges:
        if not 1 <= count <= COUNT_MAX or first <= end or first + count - 1 > PRODUCT_ID_MAX:
            return "BAD_PACKET"
        end, ids = first + count - 1, ids + count
    if ids > MAX_ACK_IDS:
        return "BAD_PACKET"
    if f["counter"] <= last:
        return "REPLAY"
    if abs(now - f["issued"]) > WINDOW:
        return "TIME_WINDOW"
    return range_ids(ranges)


@settings(max_examples=2000, deadline=None)
@given(case=hostile(), last=st.sampled_from([0, 0, 1000, U64_MAX]))
def test_hostile_acks_over_every_field_range_raise_only_ack_error(case, last):
    packet, now, f = case
    counters = {f["source"]: last}
    auth = fresh(dict(counters))
    want = expected(packet, now, f, last)
    try:
        got = auth.accept(packet, now)
    except AckError as exc:
        assert exc.kind == want, (exc, f)
        assert auth.counters == counters  # a refusal moves nothing
        return
    assert got == want, f
    assert all(0 <= i <= PRODUCT_ID_MAX for i in got) and len(got) <= MAX_ACK_IDS


@settings(max_examples=1000, deadline=None)
@given(ranges=valid_ranges(PRODUCT_ID_MAX), counter=st.integers(1, U64_MAX), pos=st.integers(0, 2000),
       bit=st.integers(0, 7), fix_crc=st.booleans())
def test_an_ack_altered_anywhere_is_refused(ranges, counter, pos, bit, fix_crc):
    good = encode_ack(KEY, 1, counter, 100, ranges)
    assert fresh().accept(good, 100.0) == range_ids(ranges)
    bad = bytearray(good)
    limit = len(bad) - 2 if fix_crc else len(bad)  # fixing the CRC after flipping a CRC bit restores the packet
    bad[pos % limit] ^= 1 << bit
    altered = crc_fixed(bytes(bad)) if fix_crc else bytes(bad)
    auth = fresh()
    with pytest.raises(AckError) as e:
        auth.accept(altered, 100.0)
    assert e.value.kind in ("BAD_MAC", "BAD_PACKET") and auth.counters == {}
    if not fix_crc:
        assert e.value.kind == "BAD_PACKET"  # the CRC catches a bit error before anything else


@settings(max_examples=600, deadline=None)
@given(data=st.one_of(st.binary(max_size=1200), st.binary(max_size=64).map(lambda b: encode_ack(KEY, 1, 5, 5, [(1, 1)])[:11] + b)))
def test_random_bytes_raise_ack_error_only(data):
    with pytest.raises(AckError):
        fresh().accept(data, 5.0)
    try:
        parse_ack(data)
    except AckError as exc:
        assert isinstance(exc, PacketError) and exc.kind == "BAD_PACKET" and not exc.parsed


def test_a_tm_packet_on_the_uplink_is_not_an_ack():
    tm = PusTm(service=ACK_SERVICE, message_subtype=1, apid=Apid.GROUND_ACK, source_data=b"x" * 20, timestamp=b"").pack()
    with pytest.raises(AckError, match="BAD_PACKET"):
        fresh().accept(tm, 0.0)
    with pytest.raises(AckError, match="BAD_PACKET"):
        fresh().accept(raw_ack(struct.pack(">QIH", 5, 5, 1)), 5.0)  # says one range, holds none


def test_counters_are_due_for_persisting_at_most_once_per_period():
    auth = fresh()
    assert not auth.persist_due(0.0)  # nothing changed
    auth.accept(encode_ack(KEY, 1, 1, 5, [(1, 1)]), 5.0)
    assert auth.persist_due(10.0) and not auth.persist_due(10.1)
    auth.accept(encode_ack(KEY, 1, 2, 5, [(2, 1)]), 5.0)
    assert not auth.persist_due(10.5)  # within the period: waits
    assert auth.persist_due(11.0) and not auth.persist_due(12.0)


# --- the flight process's uplink path (in process, no sockets) ----------------------------------


def test_the_flight_deletes_only_on_authentic_fresh_acks_and_keeps_its_counter_across_a_restart(tmp_path, monkeypatch):
    import json

    from ops_util import flight_apps

    from flight.dictionary import EVENTS
    from flight.products import decode_tm

    def held(app) -> list[int]:
        return sorted(r[0] for r in app.store.db.execute("SELECT id FROM products"))

    def ack_events(app) -> list[str]:
        rows = app.store.db.execute("SELECT packet FROM products WHERE apid = ?", (int(Apid.EVENT),)).fetchall()
        events = [decode_tm(r[0])[1] for r in rows]
        return [e.message for e in events if e.event_id == EVENTS["ACK_REJECTED"].id]

    with flight_apps(tmp_path, monkeypatch, ["scenario.clock_rate=1.0"], 500.0) as (make, key):
        app, _ = make()
        ids = held(app)  # start-up events: STARTED, MODEL_LOADED ...
        assert len(ids) >= 2
        t = int(app.clock.now_s())
        counter = 10**15
        for forged in (encode_ack(os.urandom(32), 1, counter, t, to_ranges(ids)),  # another key
                       encode_ack(KEY, 1, counter, t, to_ranges(ids)),  # another mission's key
                       encode_ack(key, 1, counter, t + 3600, to_ranges(ids))):  # late
            app.on_uplink(forged)
        assert app.counts["acks_rejected"] == 3 and set(ids) <= set(held(app))
        assert [m.split(")")[0] for m in ack_events(app)] == ["acknowledgement refused (BAD_MAC", "acknowledgement refused (BAD_MAC",
                                                               "acknowledgement refused (TIME_WINDOW"]
        genuine = encode_ack(key, 1, counter, t, to_ranges(ids[:1]))
        app.on_uplink(genuine)
        assert ids[0] not in held(app) and app.counts["products_acked"] == 1
        assert json.loads((tmp_path / "ops_state.json").read_text())["ack_counters"] == {"1": counter}  # first one: at once
        app.on_uplink(genuine)  # replayed
        app.on_uplink(encode_ack(key, 1, counter - 1, t, to_ranges(ids[1:])))  # an older genuine one
        assert app.counts["acks_rejected"] == 5 and set(ids[1:]) <= set(held(app))
        app.on_uplink(b"\x18\x81" + bytes(30))  # not an ack at all: a malformed uplink packet
        assert app.counts["uplink_rejected"] == 1 and app.counts["acks_rejected"] == 5

        again, _ = make()  # a restarted flight on the same state: the counter is remembered
        again.on_uplink(genuine)
        assert again.counts["acks_rejected"] == 1 and set(ids[1:]) <= set(held(again))
        again.on_uplink(encode_ack(key, 1, counter + 1, t, to_ranges(ids[1:2])))
        assert ids[1] not in held(again)
