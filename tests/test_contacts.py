"""The onboard contact plan (flight/contacts.py, issue #13): parsing, hostile plans, and the plan
sent up at a UHF-class 9.6 kbit/s uplink to a running flight by the operator's command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from e2e_util import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ops_util import OPS_BASE, Run

from flight.clock import ScenarioClock
from flight.contacts import (
    MAX_WINDOWS,
    PLAN_FILE,
    ContactPlan,
    ContactPlanError,
    parse_plan,
    plan_json,
)
from flight.dictionary import EVENTS

EPOCH = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)
CLOCK = ScenarioClock(EPOCH, 10.0, 0.0)
EV = {name: e.id for name, e in EVENTS.items()}


def plan(*windows: tuple[str, float, float]) -> ContactPlan:
    return ContactPlan(parse_plan(plan_json(list(windows), EPOCH), CLOCK))


def test_a_plan_round_trips_through_its_utc_file_and_answers_in_scenario_seconds():
    p = plan(("baku", 190.0, 400.0), ("astana", 0.0, 140.0))
    assert [(w.station, w.aos_s, w.los_s) for w in p.windows] == [("astana", 0.0, 140.0), ("baku", 190.0, 400.0)]
    assert p.los_after(10.0) == 140.0 and p.los_after(139.999) == 140.0
    assert p.los_after(140.0) is None and p.los_after(-5.0) is None  # LOS exclusive; before the first AOS: a gap
    assert p.next_aos(150.0) == 190.0 and p.next_aos(400.0) is None
    assert p.governs(399.0) and not p.governs(400.0)  # after its last LOS a plan no longer silences the flight
    assert p.ends_s == 400.0


def test_overlapping_passes_of_two_stations_join_into_one_contact():
    p = plan(("astana", 100.0, 300.0), ("baku", 250.0, 500.0), ("baku", 40.0, 120.0), ("x", 600.0, 700.0))
    assert p.los_after(50.0) == 500.0  # 40-120, 100-300 and 250-500 overlap: one contact until 500
    assert p.los_after(280.0) == 500.0
    assert p.los_after(550.0) is None and p.los_after(650.0) == 700.0
    inside = plan(("a", 0.0, 1000.0), ("b", 100.0, 200.0))  # a short pass inside a long one
    assert inside.los_after(150.0) == 1000.0 and inside.los_after(500.0) == 1000.0
    assert p.contact_at(280.0) == (250.0, 500.0) and p.contact_at(550.0) is None


def test_no_plan_governs_nothing():
    p = ContactPlan()
    assert not p.governs(0.0) and p.ends_s is None and p.los_after(0.0) is None


@pytest.mark.parametrize("doc, reason", [
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "expected"),
    (b'{"windows": {}}', "expected"),
    (b'{"windows": [7]}', "windows[0]"),
    (b'{"windows": [{"station": "a", "aos": "2026-11-28T06:10:00Z", "los": "2026-11-28T06:00:00Z"}]}', "before los"),
    (b'{"windows": [{"station": "a", "aos": "2026-11-28T06:10:00", "los": "2026-11-28T07:00:00Z"}]}', "timezone"),
    (b'{"windows": [{"station": "a", "aos": 0, "los": 10}]}', "ISO-8601"),
    (b'{"windows": [{"station": "a", "aos": "9999-12-31T00:00:00Z", "los": "9999-12-31T01:00:00Z"}]}', "too far"),
    (b'{"windows": [{"station": "' + b"x" * 40 + b'", "aos": "2026-11-28T06:00:00Z", "los": "2026-11-28T07:00:00Z"}]}',
     "station"),
    (b'{"windows": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "plan is"),  # too big before any parsing
    (b'{"windows": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", "not JSON"),  # nesting past the parser's limit
    (json.dumps({"windows": [{"station": "a", "aos": "2026-11-28T06:00:00Z", "los": "2026-11-28T07:00:00Z"}]
                 * (MAX_WINDOWS + 1)}).encode(), "windows (at most"),
])
def test_bad_plans_are_refused_with_a_one_line_reason(doc, reason):
    with pytest.raises(ContactPlanError) as e:
        parse_plan(doc, CLOCK)
    assert reason in str(e.value) and "\n" not in str(e.value)


JSON = st.recursive(st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                    | st.floats(allow_nan=True) | st.text(max_size=40),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=20)
TIMES = st.one_of(st.text(max_size=45), st.integers(min_value=-(2**64), max_value=2**64), st.floats(),
                  st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
                  st.sampled_from(["2026-11-28T06:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
                                   "2026-11-28T06:00:00+14:00", "nan", ""]))
WINDOW = st.fixed_dictionaries({"station": st.one_of(st.text(max_size=40), JSON), "aos": TIMES, "los": TIMES})


@settings(max_examples=800, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.one_of(JSON, st.fixed_dictionaries({"windows": st.lists(st.one_of(WINDOW, JSON), max_size=6)})))
def test_hostile_plans_give_a_plan_or_a_clear_refusal_never_a_crash(doc):
    """Every field over its type's whole range (huge, negative, NaN, nested, empty)."""
    try:
        data = json.dumps(doc).encode()
    except ValueError:
        return
    try:
        windows = parse_plan(data, CLOCK)
    except ContactPlanError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    p = ContactPlan(windows)  # what was accepted is usable: finite, ordered, within the clock's reach
    for w in p.windows:
        assert -(2**31) <= w.aos_s < w.los_s <= 2**31 and isinstance(w.station, str)
        assert p.los_after(w.aos_s) is not None and p.governs(w.aos_s)


# --- end to end: a new plan sent up at 9.6 kbit/s -------------------------------------------------------


def test_operator_sends_a_contact_plan_at_9600_bit_s_and_the_flight_keeps_to_it(tmp_path):
    """The launcher preloads the run's plan; the operator replaces it with `commander contact-plan`
    (file transfer + LOAD_CONTACT_PLAN at 9.6 kbit/s with 10 % uplink loss); a plan with a gap
    makes the flight hold every product in its store over that gap (the channel drops nothing
    outside contact); a bad plan is refused and the plan in use stays; once a plan has ended the
    flight sends again without one."""
    run_dir = tmp_path / "run"
    base = [o for o in OPS_BASE if not o.startswith(("link.uplink_rate_bps", "scenario.max_wall_s"))]
    over = base + ["link.uplink_rate_bps=9600.0", "scenario.frames=1000", "scenario.max_wall_s=300",
                   'link.loss_model="random"', "link.loss_rate=0.0", "link.uplink_loss_rate=0.1",
                   'link.contacts="schedule"', "link.schedule=[[0.0, 1000000.0]]"]
    with Run(run_dir, over) as run:
        run.wait_status(lambda s: s.get("frames_processed", 0) >= 1, 60, "a frame")
        assert (run_dir / PLAN_FILE).is_file()  # preloaded before launch
        run.wait_event(EV["CONTACT_PLAN_LOADED"], 20, "state folder")
        assert run.status()["contact_plan_windows"] == 1
        c = run.commander
        # a planned gap the link does not have (the channel is always up here): if the flight sends
        # nothing inside it, its products must pile up in the store and leave after it
        now = c.clock.now_s()
        gap = (now + 150.0, now + 300.0)  # scenario s: starts after the plan is up (about 10 wall s)
        new = plan_json([("baku", 0.0, gap[0]), ("astana", gap[1], now + 500.0)], c.clock.epoch)
        path = tmp_path / "plan.json"
        path.write_bytes(new)
        cli = subprocess.run([sys.executable, "-m", "ground_link.commander", "--run-dir", str(run_dir), "contact-plan",
                              str(path), "--timeout-s", "120"], cwd=REPO, capture_output=True, text=True, timeout=150)
        assert cli.returncode == 0, cli.stderr[-2000:]
        rep = json.loads(cli.stdout.strip().splitlines()[-1])
        assert rep["kind"] == "COMPLETED" and "2 windows" in rep["message"], rep
        assert (run_dir / PLAN_FILE).read_bytes() == new  # kept: a restarted flight uses it
        run.wait_status(lambda s: s.get("contact_plan_windows") == 2, 10, "the new plan in use")
        # inside the gap the store grows and nothing is sent; after it, everything leaves
        while c.clock.now_s() < gap[0] + 20.0:
            time.sleep(0.1)
        sent_in_gap = run.status()["packets_sent"]
        while c.clock.now_s() < gap[1] - 10.0:
            time.sleep(0.1)
        held = run.status()
        assert held["packets_sent"] == sent_in_gap and held["store_products"] >= 8, held  # 12 frames' products wait
        run.wait_status(lambda s: s["store_products"] <= 2, 30, "the store drained after the gap")
        # a bad plan: refused by the flight, the plan in use stays
        bad = subprocess.run([sys.executable, "-m", "ground_link.commander", "--run-dir", str(run_dir), "contact-plan",
                              str(REPO / "pyproject.toml"), "--timeout-s", "120"], cwd=REPO, capture_output=True,
                             text=True, timeout=150)
        assert bad.returncode == 1 and "contact plan refused: not JSON" in bad.stdout, (bad.stdout, bad.stderr[-800:])
        run.wait_event(EV["CONTACT_PLAN_REFUSED"], 10, "not JSON")
        assert run.status()["contact_plan_windows"] == 2 and (run_dir / PLAN_FILE).read_bytes() == new
        # the plan ends: the flight says so and sends without it
        while c.clock.now_s() < now + 510.0:
            time.sleep(0.1)
        run.wait_event(EV["CONTACT_PLAN_ENDED"], 10)
        before = run.status()["packets_sent"]
        run.wait_status(lambda s: s["packets_sent"] > before, 30, "sends after the plan ended")
        ch = run.status("channel")
        assert ch["down_dropped_outside_contact"] == 0 and run.status()["commands_out_of_window"] == 0

