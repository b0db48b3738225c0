"""Adaptive retransmission (issue #12): the RFC 6298 timer, Karn's rule, back-off, the transmitter
queue model; the real pump_downlink against the link emulator's transmitter in simulated time; and
the real launcher at 4 kbit/s (default settings, against the old fixed 2 s timer in the same run)
and at 9.6 kbit/s with 10 % loss."""

import json
import math
import os
import sqlite3
import struct
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from e2e_util import REPO, hil_command, kill_leftovers
from hypothesis import given, settings
from hypothesis import strategies as st
from test_downlink_e2e import check_exactly_once

import flight.app
from flight.app import FlightApp
from flight.config import ConfigError, load_scenario
from flight.dictionary import APID_PRIORITY, Apid
from flight.products import decode_tm
from flight.retransmit import LinkTimer
from flight.store import ProductStore
from ground_link.channel import Direction
from ground_link.linkmodel import RandomLoss

# The old behaviour: a fixed 2 s timer from the moment a packet is handed to the radio (a radio
# "faster than light" makes the queue model say every packet has left at once).
# the behaviour before issue #12: a fixed 2 s timer from the send, no radio queue model, no probing
FIXED_2S = ["flight.rto_min_s=2", "flight.rto_max_s=2", "flight.retransmit_s=2", "flight.radio_rate_bps=1e10",
            "flight.probe_when_silent=false"]


def timer(rate_bps=4000.0, initial=2.0, lo=1.0, hi=60.0, queue_s=0.5, probe=True) -> LinkTimer:
    return LinkTimer(initial, lo, hi, rate_bps, queue_s, probe_when_silent=probe)


# -- the timer ------------------------------------------------------------------------------------


def test_first_sample_sets_srtt_and_rttvar_as_rfc6298_says():
    t = timer(lo=0.1)
    assert t.rto_s == 2.0  # the initial timeout until a round trip is measured
    t.on_sample(0.3)
    assert (t.srtt_s, t.rttvar_s) == (0.3, 0.15)
    assert t.rto_s == pytest.approx(0.3 + 4 * 0.15)


@given(st.lists(st.floats(0.0, 100.0), min_size=1, max_size=40))
def test_rto_follows_rfc6298_and_stays_within_its_bounds(samples):
    t = timer(lo=1.0, hi=60.0)
    srtt, rttvar = samples[0], samples[0] / 2
    for r in samples[1:]:
        rttvar = 0.75 * rttvar + 0.25 * abs(srtt - r)
        srtt = 0.875 * srtt + 0.125 * r
    t.on_samples(samples)
    assert t.srtt_s == pytest.approx(srtt) and t.rttvar_s == pytest.approx(rttvar)
    assert t.rto_s == pytest.approx(min(max(srtt + 4 * rttvar, 1.0), 60.0))
    assert 1.0 <= t.rto_s <= 60.0


def test_short_round_trips_are_clamped_to_the_floor_and_long_ones_to_the_ceiling():
    t = timer(lo=1.0, hi=60.0)
    t.on_samples([0.2] * 20)
    assert t.rto_s == 1.0
    t.on_samples([500.0] * 5)
    assert t.rto_s == 60.0
    t2 = timer()
    t2.on_sample(-0.05)  # a queue model running a little late never gives a negative round trip
    assert t2.srtt_s == 0.0


def test_back_off_doubles_once_per_timeout_period_and_a_fresh_sample_ends_it():
    t = timer(initial=1.0, lo=1.0, hi=5.0)
    t.on_timeout(100.0)
    assert t.rto_s == 2.0
    for dt in (0.0, 0.5, 1.9):  # a burst of expiries within one period is one back-off
        t.on_timeout(100.0 + dt)
    assert t.rto_s == 2.0
    t.on_timeout(102.0)
    assert t.rto_s == 4.0
    t.on_timeout(106.0)
    assert t.rto_s == 5.0  # the ceiling
    t.on_sample(0.25)  # RFC 6298 5.7: the next valid sample recomputes the timeout
    assert t.rto_s == 1.0


@given(st.lists(st.floats(0.0, 30.0), min_size=1, max_size=50))
def test_back_off_never_doubles_twice_within_one_timeout(gaps_s):
    t = timer(initial=1.0, lo=1.0, hi=1e6)
    now, last_double, rto = 1000.0, None, t.rto_s
    for gap in gaps_s:
        now += gap
        t.on_timeout(now)
        if t.rto_s != rto:
            assert t.rto_s == 2 * rto
            assert last_double is None or now - last_double >= rto
            last_double, rto = now, t.rto_s


@given(st.lists(st.tuples(st.floats(0.0, 5.0), st.integers(20, 4200)), min_size=1, max_size=60),
       st.sampled_from([4000.0, 9600.0, 64000.0, 1e6]))
def test_queue_model_matches_the_link_emulators_transmitter(sends, rate_bps):
    """Each packet's left_wall is when ground_link.channel's transmitter finishes sending it."""
    t, radio = timer(rate_bps), Direction("down", rate_bps, 0.005, 10**6)
    now, lefts = 1000.0, []
    for gap_s, nbytes in sends:
        now += gap_s
        lefts.append(t.enqueue(nbytes, now))
        radio.offer(bytes(nbytes), now)
        assert lefts[-1] >= now + nbytes * 8 / rate_bps - 1e-9
        assert t.queued_s(now) == pytest.approx(lefts[-1] - now)
    if hasattr(radio, "_serve"):  # a transmitter that puts waiting packets on the air lazily
        radio._serve(math.inf)
    on_air = sorted(radio.queue, key=lambda e: e[1])  # (deliver_at, seq, packet, sent_end_wall)
    assert lefts == pytest.approx([e[3] for e in on_air])


def test_the_queue_cap_holds_packets_back_but_never_blocks_a_long_one():
    t = timer(rate_bps=4000.0, queue_s=0.5)
    assert t.has_room(0.0)
    t.enqueue(2000, 0.0)  # a chip: 4 s of airtime, longer than the cap, still goes
    assert not t.has_room(0.0) and not t.has_room(3.5)
    assert t.has_room(3.6)  # less than 0.5 s left on the air


def test_radio_rate_is_the_links_unless_the_flight_overrides_it():
    sc = load_scenario(None, ["link.downlink_rate_bps=4000"])
    t = LinkTimer.from_config(sc.flight, sc.link)
    assert (t.rate_bps, t.rto_s, t.rto_min_s, t.rto_max_s, t.queue_max_s) == (4000.0, 2.0, 1.0, 60.0, 0.5)
    sc = load_scenario(None, ["link.downlink_rate_bps=4000", "flight.radio_rate_bps=3800"])
    assert LinkTimer.from_config(sc.flight, sc.link).rate_bps == 3800.0
    for bad in (["flight.rto_min_s=5", "flight.rto_max_s=2"], ["flight.radio_rate_bps=-1"],
                ["flight.radio_queue_max_s=0"], ["flight.rto_max_s=0"]):
        with pytest.raises(ConfigError):
            load_scenario(None, bad)


def test_karn_round_trips_come_only_from_packets_sent_once(tmp_path):
    s = ProductStore(tmp_path / "s.db", 10**6)
    a = s.put(1, Apid.FRAME_SUMMARY, 0.0, lambda pid, seq: bytes(60))[0]
    b = s.put(1, Apid.FRAME_SUMMARY, 0.0, lambda pid, seq: bytes(60))[0]
    s.mark_sent([a, b], 100.0, left_wall=[100.2, 100.4])
    s.mark_sent([a], 103.0, left_wall=[103.1])  # a timed out and went again
    removed, samples = s.ack_with_samples([a, b], 103.5)
    assert removed == 2
    assert samples == [pytest.approx(103.5 - 100.4)]  # only b's: a's ack may answer either send


# -- the real pump_downlink against the link emulator's transmitter, in simulated time ------------

T0 = 1_000_000.0  # wall seconds (the store reads sent_wall = 0 as "never sent")
FLIGHT_STEP_S = 0.05  # the flight's run loop polls every 50 ms
ACK_PERIOD_S = 0.2  # ground.ack_period_s
DELAY_S = 0.005  # link.delay_ms
UPLINK_BPS = 64000.0  # the demo's uplink
SIZES = {Apid.FRAME_SUMMARY: 63, Apid.DETECTION: 58, Apid.IMAGE_CHIP: 2000, Apid.EVENT: 84, Apid.HOUSEKEEPING: 294}


def workload(frames: int) -> list[tuple[Apid, int]]:
    """Products with the sizes measured through the launcher: a summary per frame, a detection and a
    chip every fourth frame, an event every other frame, housekeeping every fifth."""
    out = []
    for i in range(frames):
        out.append(Apid.FRAME_SUMMARY)
        out += [Apid.DETECTION, Apid.IMAGE_CHIP] if i % 4 == 0 else []
        out += [Apid.EVENT] if i % 2 == 0 else []
        out += [Apid.HOUSEKEEPING] if i % 5 == 0 else []
    return [(a, SIZES[a]) for a in out]


def simulate(tmp_path: Path, monkeypatch, rate_bps: float, t: LinkTimer, products, late=(), loss=0.0, seed=0,
             horizon_s=400.0) -> dict:
    """The flight's pump_downlink and ack handling with a ProductStore, the link emulator's Direction
    as the radio (serialisation, delay, random loss) and a ground that acks every 0.2 s over a
    64 kbit/s uplink with the same loss. `late`: (seconds after start, apid, size) put later."""
    store = ProductStore(tmp_path / f"sim-{len(list(tmp_path.iterdir()))}.db", 2**30)
    rng = np.random.default_rng(seed)
    down = Direction("down", rate_bps, DELAY_S, 10**6, loss=RandomLoss(loss, rng))
    up_loss = RandomLoss(loss, rng)
    now = [T0]
    monkeypatch.setattr(flight.app, "time", SimpleNamespace(time=lambda: now[0], monotonic=lambda: now[0]))
    sock: Any = SimpleNamespace(send=lambda packet, flags=0: down.offer(packet, now[0]))
    app: Any = SimpleNamespace(link_timer=t, store=store, cfg=SimpleNamespace(downlink_window=64),
                          counts=dict(packets_sent=0, packets_retransmitted=0),
                          send_cutoff=lambda _now: None)  # no contact plan: the gaps here are unplanned

    def put(apid, size):
        return store.put(APID_PRIORITY[apid], apid, 0.0, lambda pid, seq: struct.pack(">Q", pid).ljust(size, b"\0"))[0]

    ids = {put(a, n): a for a, n in products}
    pending_late = sorted(late)
    delivered: dict[int, float] = {}
    to_ack: list[int] = []
    acks: list[tuple[float, list[int]]] = []
    lost_ack_ids = duplicates = 0
    next_ack = T0 + ACK_PERIOD_S
    while now[0] < T0 + horizon_s:
        while pending_late and T0 + pending_late[0][0] <= now[0]:
            _, a, n = pending_late.pop(0)
            ids[put(a, n)] = a
        for packet in down.due(now[0]):
            pid = struct.unpack(">Q", packet[:8])[0]
            duplicates += pid in delivered
            delivered.setdefault(pid, now[0])
            to_ack.append(pid)
        if now[0] >= next_ack:
            if to_ack:
                if up_loss.lost():
                    lost_ack_ids += len(to_ack)
                else:
                    acks.append((now[0] + DELAY_S + (14 + 4 * len(to_ack)) * 8 / UPLINK_BPS, to_ack))
                to_ack = []
            next_ack += ACK_PERIOD_S
        while acks and acks[0][0] <= now[0]:  # FlightApp.on_uplink's ack line
            removed, rtts_s = store.ack_with_samples(acks.pop(0)[1], now[0])
            t.on_samples(rtts_s)
        FlightApp.pump_downlink(app, sock)
        if not pending_late and store.pending() == 0:
            break
        now[0] += FLIGHT_STEP_S
    unique_bytes = sum(SIZES[ids[p]] for p in delivered)
    done_s = max(delivered.values()) - T0
    return dict(products=len(ids), delivered=delivered, sent=app.counts["packets_sent"],
                retransmitted=app.counts["packets_retransmitted"], duplicates=duplicates, lost=down.lost,
                lost_ack_ids=lost_ack_ids, done_s=done_s, goodput_ratio=unique_bytes * 8 / done_s / rate_bps,
                left=store.pending(), ids=ids)


def test_sim_4kbps_sends_each_packet_once_and_keeps_the_radio_busy(tmp_path, monkeypatch):
    products = workload(40)  # 23 kB: 47 s of airtime at 4 kbit/s
    new = simulate(tmp_path, monkeypatch, 4000.0, timer(4000.0), products)
    old = simulate(tmp_path, monkeypatch, 4000.0, timer(1e10, 2.0, 2.0, 2.0, probe=False), products)
    print(f"\nsim 4 kbit/s, {len(products)} products: adaptive {new['sent']} sends, {new['retransmitted']} "
          f"resent, done {new['done_s']:.1f} s, goodput {new['goodput_ratio']:.3f} of the link; fixed 2 s: "
          f"{old['sent']} sends, {old['retransmitted']} resent, {len(old['delivered'])} delivered, "
          f"done {old['done_s']:.1f} s, goodput {old['goodput_ratio']:.3f}")
    assert new["left"] == 0 and len(new["delivered"]) == len(products)
    assert new["retransmitted"] == 0 and new["duplicates"] == 0  # no loss: any resend would be spurious
    assert new["goodput_ratio"] > 0.97  # the radio never idles while the store has work
    assert old["retransmitted"] > len(products)  # the collapse of issue #12, reproduced
    assert new["goodput_ratio"] > 1.5 * old["goodput_ratio"]


@settings(max_examples=12, deadline=None)
@given(loss=st.floats(0.0, 0.3), seed=st.integers(0, 2**31 - 1), rate_bps=st.sampled_from([4000.0, 9600.0, 64000.0]))
def test_sim_lossy_link_delivers_everything_and_resends_only_what_loss_explains(tmp_path_factory, loss, seed, rate_bps):
    tmp = tmp_path_factory.mktemp("sim")
    with pytest.MonkeyPatch.context() as mp:
        r = simulate(tmp, mp, rate_bps, timer(rate_bps), workload(12), loss=loss, seed=seed)
    assert r["left"] == 0 and len(r["delivered"]) == r["products"]
    # every resend replaces a copy lost on the downlink or a product whose ack was lost on the
    # uplink; a timer running out on a packet still queued or in flight would break this
    assert r["retransmitted"] <= r["lost"] + r["lost_ack_ids"]
    assert r["duplicates"] <= r["lost_ack_ids"]


def test_sim_an_alert_overtakes_queued_chips(tmp_path, monkeypatch):
    chips = [(Apid.IMAGE_CHIP, 2000)] * 20  # 80 s of airtime at 4 kbit/s
    late = [(5.0, Apid.DETECTION, 58)]
    capped = simulate(tmp_path, monkeypatch, 4000.0, timer(4000.0, queue_s=0.5), chips, late)
    uncapped = simulate(tmp_path, monkeypatch, 4000.0, timer(4000.0, queue_s=3600.0), chips, late)

    def alert_s(r):
        pid = next(p for p, a in r["ids"].items() if a == Apid.DETECTION)
        return r["delivered"][pid] - T0 - 5.0

    # waits at most for the chip on the air (4 s) and the cap; without the cap, for every chip
    assert alert_s(capped) <= 4.0 + 0.5 + 0.2
    assert alert_s(uncapped) > 60.0


# -- end to end: the real launcher ---------------------------------------------------------------

RATE_4K = 4000.0
# The demo's scenario (20 scenario s per wall s, a capture every 10 s, 64 kbit/s uplink, 5 ms delay,
# acks every 0.2 s) with 256 x 256 frames: 32 frames make about 19 kB, more than the link carries
# while they are captured, so the radio always has work (about 40 s at 4 kbit/s).
E2E = ["scenario.frames=32", "sensor.height=256", "sensor.width=256"]


def run_both(root: Path, runs: dict[str, list[str]], timeout_s: float) -> dict[str, dict]:
    """Run several launchers at once (the link, not the CPU, is the bottleneck here)."""
    procs = {name: subprocess.Popen(hil_command(root / name, sets), cwd=REPO, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
             for name, sets in runs.items()}
    out = {}
    try:
        deadline = time.monotonic() + timeout_s
        for name, p in procs.items():
            _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out[name] = dict(code=p.returncode, err=err, summary=json.loads((root / name / "summary.json").read_text()))
    finally:
        for name, p in procs.items():
            if p.poll() is None:
                p.kill()
            assert not kill_leftovers(root / name), f"processes of {name} left behind"
    return out


def archive_timeline(run_dir: Path, rate_bps: float) -> tuple[float, list[tuple[float, int, int]]]:
    """(when the first packet started on the air, [(arrival wall, product id, bytes)] of every good
    packet in arrival order)."""
    db = sqlite3.connect(run_dir / "archive.sqlite")
    try:
        rows = db.execute("SELECT received_wall, length(raw), ok, raw FROM packets ORDER BY id").fetchall()
    finally:
        db.close()
    start = rows[0][0] - rows[0][1] * 8 / rate_bps
    return start, [(w, decode_tm(raw)[1].product_id, n) for w, n, ok, raw in rows if ok]


def goodput(run_dir: Path, rate_bps: float, window_s: float | None = None) -> tuple[float, float, float]:
    """(bytes of distinct products archived per wall second, as a fraction of the link rate; the
    window, from the first packet on the air to the last arrival or `window_s`; link utilisation)."""
    start, packets = archive_timeline(run_dir, rate_bps)
    end = start + window_s if window_s is not None else packets[-1][0]
    first: dict[int, int] = {}
    air = 0
    for w, pid, n in packets:
        if w <= end:
            first.setdefault(pid, n)
            air += n
    span = end - start
    return sum(first.values()) * 8 / span / rate_bps, span, air * 8 / span / rate_bps


def summary_latency_s(run_dir: Path) -> list[float]:
    """Capture to archive of every frame summary, wall seconds."""
    st_ = json.loads((run_dir / "station.status.json").read_text())
    db = sqlite3.connect(run_dir / "archive.sqlite")
    try:
        rows = db.execute("SELECT time_s, received_wall FROM products WHERE kind = 'FrameSummary'").fetchall()
    finally:
        db.close()
    return sorted(w - (st_["clock_start"] + t / st_["clock_rate"]) for t, w in rows)


def test_e2e_4kbps_default_settings_goodput_near_the_link_rate_against_a_fixed_2s_timer(tmp_path):
    base = E2E + [f"link.downlink_rate_bps={RATE_4K}"]
    res = run_both(tmp_path, {"adaptive": base + ["scenario.max_wall_s=100"],
                              "fixed2s": base + FIXED_2S + ["scenario.max_wall_s=55"]}, timeout_s=150)
    new, old = res["adaptive"], res["fixed2s"]
    assert new["code"] == 0, new["err"][-3000:]
    s = new["summary"]
    created, got = check_exactly_once(tmp_path / "adaptive", tmp_path / "adaptive" / "flight_store.sqlite")
    ratio, span_s, util = goodput(tmp_path / "adaptive", RATE_4K)
    old_ratio, _, old_util = goodput(tmp_path / "fixed2s", RATE_4K, window_s=span_s)  # the same wall time
    o = old["summary"]
    print(f"\n4 kbit/s, default settings: {len(got)} of {created} products archived once, {s['packets_sent']} sends, "
          f"{s['packets_retransmitted']} resent, goodput {ratio:.3f} of the link over {span_s:.1f} s "
          f"(utilisation {util:.3f}); fixed 2 s timer, same workload, same run: {o['products_delivered']} "
          f"archived in {o['wall_s']} s (ok={o['ok']}), {o['packets_sent']} sends, {o['packets_retransmitted']} "
          f"resent, {o['duplicates_at_ground']} duplicates, goodput {old_ratio:.3f} over the same {span_s:.1f} s "
          f"(utilisation {old_util:.3f}); adaptive / fixed = {ratio / old_ratio:.2f}")
    # No loss on this link, so every resend is spurious. The queue model starts each timer when the
    # packet has left the radio, and measured round trips are 0.02-0.25 s against a 1 s floor: the
    # measured count is 0; 2 % allows for a process descheduled on a busy 2-core machine.
    assert s["packets_retransmitted"] <= 0.02 * s["packets_sent"]
    # Measured 0.985-0.996: the radio never idles while the store has work (the queue cap is refilled every
    # 50 ms loop; one packet of a few hundred bytes is 0.1-0.6 s of airtime at this rate).
    assert ratio >= 0.9, ratio
    # The old timer re-sends what is still queued: measured 0.49-0.57 of the link in the same time.
    assert o["packets_retransmitted"] > 0.5 * o["packets_sent"]
    assert ratio >= 1.3 * old_ratio


def test_e2e_9600bps_with_10pct_loss_recovers_every_loss_promptly(tmp_path):
    sets = E2E + ["link.downlink_rate_bps=9600", 'link.loss_model="random"', "link.loss_rate=0.1", "link.seed=11",
                  "scenario.max_wall_s=60"]
    res = run_both(tmp_path, {"run": sets}, timeout_s=90)["run"]
    run_dir = tmp_path / "run"
    assert res["code"] == 0, res["err"][-3000:]
    s = res["summary"]
    created, got = check_exactly_once(run_dir, run_dir / "flight_store.sqlite")
    chan = json.loads((run_dir / "channel.status.json").read_text())
    lat = summary_latency_s(run_dir)
    ratio, span_s, util = goodput(run_dir, 9600.0)
    print(f"\n9.6 kbit/s, 10 % loss both ways: {len(got)} of {created} products archived once, {s['packets_sent']} "
          f"sends, {s['packets_retransmitted']} resent, down lost {chan['down_lost']}, acks lost {chan['up_lost']}, "
          f"{s['duplicates_at_ground']} duplicates; summary capture->archive median {lat[len(lat) // 2]:.2f} s, "
          f"max {lat[-1]:.2f} s; goodput {ratio:.3f} of the link (utilisation {util:.3f}), wall {s['wall_s']} s")
    assert chan["down_lost"] > 0 and s["packets_retransmitted"] > 0  # the loss was real and repaired
    # Fast retransmission (the next ack) or a 1-4 s timeout recovers each loss: measured max 3.7-6.2 s
    # against 2.7 s without loss; the fixed 2 s timer took 15.5 s and had not finished after 120 s.
    assert lat[-1] <= 10.0, lat


def test_a_silent_link_is_probed_with_one_resend_per_timeout():
    t = timer()
    t.on_acked(100.0)
    assert t.resends_allowed(100.5) is None  # acks arrive: every expired packet may go again
    assert t.silent(103.0) and t.resends_allowed(103.0) == 1  # nothing back for a whole timeout
    t.on_probe(103.0)
    assert t.resends_allowed(103.5) == 0 and t.resends_allowed(103.0 + t.rto_s) == 1
    t.on_acked(104.0)
    assert t.resends_allowed(104.1) is None
    assert timer(probe=False).resends_allowed(1e6) is None  # the behaviour before issue #12
