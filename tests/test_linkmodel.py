"""The link model: seeded loss statistics, bursts, bit errors caught by the CRC, contact windows."""

import numpy as np
import pytest

from flight.clock import parse_epoch
from flight.config import ConfigError, LinkSection, load_scenario
from flight.products import FrameSummary, PacketError, decode_tm, encode_tm
from ground_link.channel import Direction, make_link
from ground_link.linkmodel import (
    BitErrors,
    ContactPlan,
    GilbertElliottLoss,
    RandomLoss,
    Window,
    make_contacts,
)

EPOCH = parse_epoch("2026-11-28T06:00:00Z")
N = 20_000


def runs_of_losses(losses: list[bool]) -> list[int]:
    runs, n = [], 0
    for lost in losses:
        if lost:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs + ([n] if n else [])


def test_random_loss_rate_is_within_tolerance():
    model = RandomLoss(0.2, np.random.default_rng(1))
    rate = sum(model.lost() for _ in range(N)) / N
    assert abs(rate - 0.2) < 4 * np.sqrt(0.2 * 0.8 / N)  # 4 sigma


def test_random_loss_is_reproducible_from_the_seed():
    m1, m2 = RandomLoss(0.3, np.random.default_rng(5)), RandomLoss(0.3, np.random.default_rng(5))
    assert [m1.lost() for _ in range(500)] == [m2.lost() for _ in range(500)]


def test_gilbert_elliott_losses_come_in_bursts_of_mean_length_1_over_p_bad_to_good():
    p_gb, p_bg = 0.02, 0.25
    model = GilbertElliottLoss(p_gb, p_bg, loss_good=0.0, loss_bad=1.0, rng=np.random.default_rng(2))
    losses = [model.lost() for _ in range(100_000)]
    runs = runs_of_losses(losses)
    assert abs(np.mean(runs) - 1 / p_bg) < 0.15 * (1 / p_bg)
    assert abs(np.mean(losses) - model.steady_state_loss()) < 0.015
    # a random loss at the same rate has much shorter runs: the GE model is bursty
    rnd = RandomLoss(float(np.mean(losses)), np.random.default_rng(3))
    assert np.mean(runs_of_losses([rnd.lost() for _ in range(100_000)])) < 1.2


def test_bit_errors_are_caught_by_the_crc():
    packet = encode_tm(FrameSummary(5, 1, 1.0, 16, 2, 0.1, 0, 0, 0, 12.0, 40.0, 49.0), 0, EPOCH, 1.0)
    errors = BitErrors(1e-3, np.random.default_rng(4))
    corrupted = 0
    for _ in range(2000):
        got, flips = errors.apply(packet)
        assert (got != packet) == (flips > 0) and len(got) == len(packet)
        if flips:
            corrupted += 1
            assert bin(int.from_bytes(got, "big") ^ int.from_bytes(packet, "big")).count("1") == flips
            with pytest.raises(PacketError):
                decode_tm(got)
        else:
            decode_tm(got)
    expected = 1 - (1 - 1e-3) ** (8 * len(packet))
    assert abs(corrupted / 2000 - expected) < 0.05


def test_contact_plan_up_down_and_next_aos():
    plan = ContactPlan([Window("b", 100.0, 150.0), Window("a", 10.0, 20.0), Window("c", 140.0, 400.0)])
    assert not plan.up(9.99) and plan.up(10.0) and plan.up(19.99) and not plan.up(20.0)
    assert plan.window_at(145.0).station in ("b", "c") and plan.window_at(200.0).station == "c"
    s = plan.state(50.0)
    assert s["link_up"] is False and s["next_aos_s"] == 100.0 and s["next_station"] == "b"
    assert plan.state(15.0) | {"scenario_s": 0} == {"link_up": True, "station": "a", "los_s": 20.0, "next_aos_s": 100.0,
                                                    "next_station": "b", "scenario_s": 0}
    assert plan.next_aos(500.0) is None and ContactPlan(None).up(-1e9)


def test_nothing_passes_outside_a_window_either_way():
    cfg = LinkSection(contacts="schedule", schedule=((10.0, 20.0),), delay_ms=0.0)
    down, up = make_link(cfg, make_contacts(load_scenario(None, ["link.contacts=\"schedule\"",
                                                                   "link.schedule=[[10.0, 20.0]]"])),
                         scenario_s=lambda wall: wall)
    for d in (down, up):
        for t in (0.0, 5.0, 9.9, 20.0, 30.0):
            d.offer(b"x" * 10, t)
        assert d.due(1e6) == [] and d.dropped_outside_contact == 5
        d.offer(b"x" * 10, 12.0)
        assert d.due(1e6) == [b"x" * 10] and d.packets_out == 0  # packets_out is counted by the sender


def test_a_packet_still_on_the_air_at_los_is_dropped():
    d = Direction("down", rate_bps=80.0, delay_s=0.0, queue_max=10, contacts=ContactPlan([Window("a", 0.0, 1.5)]))
    d.offer(b"x" * 10, 0.0)  # 10 bytes at 80 bit/s: on the air 0..1 s
    d.offer(b"x" * 10, 0.5)  # queued behind it: 1..2 s, LOS at 1.5 s
    assert len(d.due(10.0)) == 1 and d.dropped_outside_contact == 1


def test_lossy_direction_counts_lost_and_corrupted():
    cfg = LinkSection(loss_model="gilbert_elliott", ge_p_good_to_bad=0.05, ge_p_bad_to_good=0.3, ge_loss_bad=0.8,
                      bit_error_rate=1e-4, delay_ms=0.0, seed=11)
    down, _ = make_link(cfg)
    for i in range(5000):
        down.offer(bytes(60), float(i))
    got = down.due(1e9)
    assert len(got) + down.lost == 5000 and down.lost > 0 and down.corrupted > 0
    assert sum(p != bytes(60) for p in got) == down.corrupted
    again, _ = make_link(cfg)
    for i in range(5000):
        again.offer(bytes(60), float(i))
    assert again.due(1e9) == got  # same seed, same fate for every packet


def test_orbit_contacts_come_from_the_scenario_orbit():
    sc = load_scenario(None, ["link.contacts=\"orbit\"", "scenario.epoch=\"2026-11-01T00:00:00Z\"",
                              "scenario.max_wall_s=4000", "scenario.clock_rate=20.0"])
    plan = make_contacts(sc)
    assert plan.windows and all(w.station in ("baku", "astana") for w in plan.windows)
    w = plan.windows[0]
    assert plan.up((w.aos_s + w.los_s) / 2) and not plan.up(w.aos_s - 1.0)
    assert 60 < w.los_s - w.aos_s < 900  # a LEO pass lasts minutes


def test_bad_schedules_fail_fast():
    with pytest.raises(ConfigError, match="schedule"):
        load_scenario(None, ["link.contacts=\"schedule\""])
    with pytest.raises(ConfigError, match=r"schedule\[0\]"):
        load_scenario(None, ["link.schedule=[[20.0, 10.0]]"])
