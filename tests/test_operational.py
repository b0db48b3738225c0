"""models.operational: the detectors end to end through the real flight pipeline, scored against
the simulator's truth (a measurement tool; its results are in models/results/operational.json)."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from models import operational as op


def test_every_visible_object_is_found_or_missed_for_one_reason_and_false_alarms_are_far_from_all():
    o = lambda kind, row, col, **kw: SimpleNamespace(kind=kind, row=row, col=col, occluded=kw.get("occluded", False),  # noqa: E731
                                                    length_px=kw.get("length", 6.0), pixels=kw.get("pixels", 10))
    scene = SimpleNamespace(objects=[o("ship", 10, 10), o("ship", 10, 80), o("ship", 80, 10), o("ship", 80, 80),
                                     o("ship", 20, 20, occluded=True), o("ship", 30, 30, length=2.0),
                                     o("fire", 100, 100, pixels=1), o("wake", 10, 12)])
    d = lambda cls, row, col: SimpleNamespace(class_id=cls, row_px=row, col_px=col)  # noqa: E731
    result = SimpleNamespace(detections=[d(1, 10, 10 + op.MATCH_PX), d(1, 60, 60), d(2, 10, 80)],
                             tile_cloud=np.array([[0.0, 0.0], [0.6, 0.1]]))
    searched = {("ship_detect", 0, 0), ("ship_detect", 0, 1)}
    c: Counter = Counter()
    op.score_frame(scene, result, searched, 64, 0.3, c)
    assert c["ship_visible"] == 4 and c["ship_found"] == 1  # the occluded and the 2 px ship do not count
    assert c["ship_missed_on_searched_tile"] == 1  # (10, 80): only a fire detection there
    assert c["ship_missed_tile_cloudy"] == 1 and c["ship_missed_tile_other"] == 1
    assert c["ship_detections"] == 2 and c["ship_false_alarms"] == 1  # (60, 60)
    assert c["fire_visible"] == 0 and c["fire_detections"] == 1 and c["fire_false_alarms"] == 0  # near a ship


@pytest.mark.timeout(300)
def test_a_demo_frame_and_a_test_like_scene_through_the_real_pipeline(tmp_path):
    out = tmp_path / "op.json"
    assert op.main(["--demo-frames", "1", "--test-scenes", "1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["models"]["ship_detect"] and r["overrides"] == []
    for part in ("demo", "ship_test_like"):
        for kind in ("ship", "fire"):
            s = r[part][kind]
            missed = s["missed_on_searched_tile"] + s["missed_tile_cloudy"] + s["missed_tile_other"]
            assert s["found"] + missed == s["visible"]
            assert 0 <= s["false_alarms"] <= s["detections"]
    ships = r["ship_test_like"]["ship"]
    assert ships["visible"] >= 8 and ships["found"] >= 1 and ships["tiles_run"] >= 1  # a dense ship scene
    with pytest.raises(SystemExit):
        op.main(["--demo-frames", "0"])
