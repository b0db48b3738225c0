"""The launcher's `ok` and the operator's alerts: detections scored against the scene truth
(payload_sim.hil.detection_scores). Before, a run whose detectors had gone quiet (disabled, a
broken upload) said ok: every product arrived, none of the alerts it should have raised did."""

from __future__ import annotations

import pytest

from payload_sim.hil import (
    DETECTION_RECALL_MIN,
    MATCH_PX,
    RECALL_MIN_OBJECTS,
    check,
    default_expectations,
    detection_scores,
)
from payload_sim.testing import DEMO, HilRun


def ship(row, col, length=6.0, occluded=False):
    return {"kind": "ship", "row": row, "col": col, "length_px": length, "pixels": 10, "occluded": occluded}


def fire(row, col, pixels=12, occluded=False):
    return {"kind": "fire", "row": row, "col": col, "length_px": 5.0, "pixels": pixels, "occluded": occluded}


def det(fid, class_id, row, col):
    return {"frame_id": fid, "class_id": class_id, "row_px": row, "col_px": col}


def test_objects_are_found_within_the_match_radius_by_their_own_class_only():
    truth = {0: {"objects": [ship(100, 100 + 20 * k) for k in range(6)] + [fire(500, 100 + 20 * k) for k in range(6)]},
             1: {"objects": [ship(10, 10), fire(50, 50)]}}  # frame 1 discarded as cloudy: not scored
    summaries = [{"frame_id": 0, "discarded": 0}, {"frame_id": 1, "discarded": 1}]
    dets = [det(0, 1, 100 + MATCH_PX, 100),  # ship 0 at exactly the radius: found
            det(0, 1, 100, 120 + MATCH_PX + 0.5),  # beyond it: ship 1 missed, and a false alarm
            det(0, 2, 100, 140),  # a fire where ship 2 is: ship 2 missed (wrong class), not a false alarm
            det(0, 2, 500, 100), det(0, 2, 502, 121),  # fires 0 and 1
            det(0, 1, 900, 900),  # far from everything: a false alarm
            det(1, 1, 10, 10)]  # in the discarded frame: not scored
    s = detection_scores(truth, summaries, dets)
    assert s["objects_true"] == 12 and s["objects_found"] == 3 and s["detection_recall"] == round(3 / 12, 4)
    assert s["ship_recall"] is None and s["fire_recall"] is None  # 6 each: fewer than RECALL_MIN_OBJECTS
    assert s["detections_scored"] == 6 and s["false_alarms"] == 2


def test_hidden_and_tiny_objects_are_not_counted_and_few_objects_are_not_measured():
    objects = [ship(100, 100, occluded=True), ship(200, 200, length=2.5), fire(300, 300, pixels=1),
               {"kind": "wake", "row": 1, "col": 1}] + [ship(600, 10 * k) for k in range(RECALL_MIN_OBJECTS - 1)]
    s = detection_scores({0: {"objects": objects}}, [{"frame_id": 0, "discarded": 0}], [])
    assert s["objects_true"] == RECALL_MIN_OBJECTS - 1 and s["detection_recall"] is None
    assert s["false_alarms"] == 0


def test_recall_not_measured_passes_its_check_and_says_so_other_missing_values_fail():
    rows = check({"detection_recall": None, "products_lost": None},
                 {"detection_recall": (">=", DETECTION_RECALL_MIN), "products_lost": ("==", 0.0)})
    assert rows[0]["ok"] and rows[0]["note"] == "not measured"
    assert not rows[1]["ok"]
    low = check({"detection_recall": DETECTION_RECALL_MIN - 0.01}, {"detection_recall": (">=", DETECTION_RECALL_MIN)})
    assert not low[0]["ok"]


def test_the_recall_expectation_is_dropped_only_where_the_scenario_breaks_a_model_on_purpose():
    from flight.config import load_scenario

    assert default_expectations(load_scenario(DEMO, []))["detection_recall"] == (">=", DETECTION_RECALL_MIN)
    broken = load_scenario(DEMO, [])
    broken.extra["faults"] = {"fail_model": "ship_detect"}
    assert "detection_recall" not in default_expectations(broken)


@pytest.mark.timeout(240)
def test_a_run_whose_detectors_are_off_is_not_ok(tmp_path):
    """The demo with both detector steps disabled (as a bad configuration or an operator's
    DISABLE_MODEL would leave them): every product arrives, so every other check passes, but no
    ship or fire is reported. Before, the summary said ok."""
    text = DEMO.read_text()
    scenario = tmp_path / "quiet.toml"
    scenario.write_text(text.replace('model = "ship_detect"', 'model = "ship_detect"\nenabled = false')
                        .replace('model = "fire_detect"', 'model = "fire_detect"\nenabled = false'))
    with HilRun(tmp_path / "run", ["scenario.frames=12"], scenario=scenario) as run:
        code = run.finish(200)
    summary = run.summary()
    assert code == 1, run.err[-2000:]
    assert not summary["ok"] and "detection_recall = 0.0" in summary["failure"]
    assert summary["objects_true"] >= RECALL_MIN_OBJECTS and summary["objects_found"] == 0
    assert summary["products_lost"] == 0 and summary["software_faults"] == 0


def test_a_constellation_expects_each_satellite_to_act_on_the_scenario_faults():
    """Every satellite's camera corrupts the frames `faults.corrupt_frames` names and every flight
    raises in the `faults.raise_in` steps, and the constellation's summary adds them up. The
    expectations counted them once, so such a constellation failed though each satellite did just
    what it was told (noticed by the ok-flags audit)."""
    from flight.config import load_scenario
    from payload_sim.testing import REPO

    sc = load_scenario(REPO / "payload_sim" / "scenarios" / "constellation.toml", [])
    n = len(sc.constellation.satellites)
    assert n >= 2
    sc.extra["faults"] = {"corrupt_frames": [2, 5], "raise_in": ["status", "housekeeping", "status"]}
    e = default_expectations(sc)
    assert e["frames_rejected"] == ("==", 2.0 * n) and e["software_faults"] == ("==", 2.0 * n)
    single = load_scenario(DEMO, [])
    single.extra["faults"] = sc.extra["faults"]
    e = default_expectations(single)
    assert e["frames_rejected"] == ("==", 2.0) and e["software_faults"] == ("==", 2.0)
