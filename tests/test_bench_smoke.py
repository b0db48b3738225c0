"""The benchmark harness keeps working: a smoke run reports every key (not a timing assertion)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.profiles import ProfileError, load_profile

REPO = Path(__file__).resolve().parents[1]

KEYS = ("machine", "profile", "frame_shape", "latency_ms", "stage_ms", "peak_rss_mib", "cadence_fps",
        "int8_vs_fp32_speedup", "ort_vs_cv2dnn_speedup", "roofline_fraction", "reduction_ratio", "scaling",
        "ukis_csmask", "budgets", "within_budget")


def test_smoke_run_reports_every_key(tmp_path):
    if not (REPO / "models" / "cloud_screen.card.json").exists():
        pytest.skip("models/cloud_screen.card.json not built yet")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.harness", "--profile", "default", "--smoke", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "latest.json").read_text())
    missing = [k for k in KEYS if k not in res]
    assert not missing, missing
    assert res["smoke"] is True
    assert set(res["latency_ms"]) >= {"p50", "p99", "max"}
    assert set(res["stage_ms"]) >= {"ingest", "calibrate", "screen", "package"}
    assert res["machine"]["cpu_model"] and res["machine"]["logical_cpus"] >= 1
    assert set(res["within_budget"]) == set(res["budgets"])
    assert all({"pixels", "latency_ms_p50", "peak_rss_mib"} <= set(s) for s in res["scaling"]) and res["scaling"]
    assert res["peak_rss_mib"] > 10 and res["reduction_ratio"] > 1
    # the libraries' page cache was put in one state before the children mapped them (pagecache.py)
    pc = res["library_page_cache"]
    assert pc["files"] > 10 and pc["bytes"] > 2**20 and pc["errors"] == 0
    assert "dropped from the page cache" in (tmp_path / "latest.md").read_text()
    # the latency worst case is one of the cycled frames, reported on its own
    worst = [f for f in res["per_frame"] if f["worst_case"]]
    assert len(worst) == 1 and worst[0] == res["worst_case_frame"] and worst[0]["n"] >= 1
    assert worst[0]["scene"] == load_profile("default").worst_case and {"latency_ms_p99", "latency_ms_max"} <= set(worst[0])
    # each model's own MACs/s and roofline fraction, next to the inference stage as a whole
    assert set(res["model_throughput"]) == set(res["models_used"]) | {"all"}
    assert all(t["gmacs"] > 0 and 0 < t["roofline_fraction"] for t in res["model_throughput"].values() if t["tiles_per_frame"])
    assert res["model_throughput"]["all"]["gmacs"] == pytest.approx(res["achieved_gmacs"])
    for name in ("latest.md", "latency_hist.png", "stages.png", "scaling.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    # how noisy the host was during the main run, where /proc/stat says
    steal = res["cpu_steal_pct_main"]
    assert steal is None or 0.0 <= steal <= 100.0
    assert res["int8_vs_fp32_speedup_interleaved"] > 0
    assert "CPU steal" in (tmp_path / "latest.md").read_text()


def test_cpu_steal_is_a_share_of_the_measured_cores_time():
    from benchmarks.harness import cpu_steal, steal_pct

    now = cpu_steal([0])
    if Path("/proc/stat").exists():
        assert now is not None and now[1] > 0 and 0 <= now[0] <= now[1]
    assert cpu_steal([10_000]) is None  # a core this machine lacks: nothing to say
    assert steal_pct((10, 1000), (60, 2000)) == pytest.approx(5.0)
    assert steal_pct((10, 1000), (10, 1000)) is None and steal_pct(None, (1, 2)) is None


def _run(lat, stages):
    recs = [{"frame": i, "distinct": 0, "warmup": False, "latency_ms": t, "stage_ms": dict(s), "memory_mib": {"rss": 100.0, "hwm": 200.0}}
            for i, (t, s) in enumerate(zip(lat, stages, strict=True))]
    phases = {"start": 10, "imports": 60, "calibration_loaded": 160, "models_loaded": 170, "after_first_frame": 180, "end": 180}
    hwm = {"start": 10, "imports": 60, "calibration_loaded": 200, "models_loaded": 200, "after_first_frame": 200, "end": 200}
    return {"records": recs, "timed_wall_s": sum(lat) / 1e3,
            "rss_mib": {k: {"rss": v, "anon": v, "file": 0, "hwm": hwm[k]} for k, v in phases.items()}}


def test_missed_budget_names_the_stage_holding_it_back():
    fast = {"receive": 1, "ingest": 1, "calibrate": 10, "tile": 2, "screen": 50, "detect": 20, "localize": 0, "package": 1}
    slow = dict(fast, detect=300)  # two frames where detection explodes: it holds back p99 and max
    main = _run([85] * 98 + [375] * 2, [fast] * 98 + [slow] * 2)
    res = {"latency_ms": report.latency(main), "peak_rss_mib": 200.0, "cadence_fps": report.cadence(main)}
    budgets = {"latency_p50_ms": 50, "latency_p99_ms": 200, "latency_max_ms": 300, "peak_rss_mib": 192, "cadence_fps": 5}
    within, held = report.check_budgets(res, budgets, main)
    assert within == {"latency_p50_ms": False, "latency_p99_ms": False, "latency_max_ms": False, "peak_rss_mib": False,
                      "cadence_fps": True}
    assert "'screen'" in held["latency_p50_ms"]
    assert "'detect'" in held["latency_p99_ms"] and "'detect'" in held["latency_max_ms"]
    assert "calibration tables" in held["peak_rss_mib"] and "while loading the calibration" in held["peak_rss_mib"]


def test_profiles_load_and_bad_values_fail_fast(tmp_path):
    for name in ("default", "quad-a72", "jetson", "zynq"):
        p = load_profile(name)
        assert p.frames >= 200 and p.budgets
    d = load_profile("default")
    assert (d.height, d.width, d.bands, d.bits, d.threads) == (2048, 2048, 6, 12, 1)
    assert d.budgets["latency_p99_ms"] == 200 and d.budgets["peak_rss_mib"] == 192 and d.budgets["cadence_fps"] == 5
    bad = tmp_path / "b.toml"
    bad.write_text((REPO / "benchmarks" / "budgets.toml").read_text().replace("threads = 1", "threads = 0", 1))
    with pytest.raises(ProfileError, match="default.threads"):
        load_profile("default", path=bad)
    with pytest.raises(ProfileError, match="profile"):
        load_profile("no-such-board")
    assert d.worst_case == {"cloud_cover": 0.0, "water_fraction": 1.0, "ships": 500}
    bad.write_text((REPO / "benchmarks" / "budgets.toml").read_text().replace("ships = 500", "ships = 501", 1))
    with pytest.raises(ProfileError, match="default.worst_case.ships"):
        load_profile("default", path=bad)


def test_frame_packets_decode_to_the_frame_products():
    import numpy as np

    from flight.clock import parse_epoch
    from flight.dictionary import Apid
    from flight.frames import Footprint, FrameMeta
    from flight.packaging import frame_packets
    from flight.pipeline import Chip, FoundObject, FrameResult
    from flight.products import decode_tm

    meta = FrameMeta(7, 12.5, 128, 128, footprint=Footprint((45.0, 45.0, 44.99, 44.99), (7.0, 7.01, 7.01, 7.0)))
    det = FoundObject(2, 0.9, 10.0, 20.0, 45.0, 7.0, 30)
    res = FrameResult(meta, 4, 3, 0.75, True, [det], [Chip(2, 10.0, 20.0, 8, 8, b"png")], {"screen": 1.0}, np.zeros((2, 2)))
    packets = frame_packets(res, parse_epoch("2026-11-28T06:00:00Z"), 0.7, first_id=100, first_seq=5)
    products = [decode_tm(p)[1] for p in packets]
    assert [p.APID for p in products] == [Apid.DETECTION, Apid.IMAGE_CHIP, Apid.FRAME_SUMMARY, Apid.EVENT]
    assert [p.product_id for p in products] == [100, 101, 102, 103]
    assert products[0].confidence_q == round(0.9 * 255) and products[1].png == b"png"
    assert products[2].frame_id == 7 and products[2].discarded == 1 and products[2].fires == 1
    assert "75% cloud >= 70%" in products[3].message


def test_arena_comparison_uses_the_same_frames_of_the_main_run():
    main = _run([100.0 + i for i in range(10)], [{"screen": 1.0}] * 10)
    for i, r in enumerate(main["records"]):
        r["memory_mib"] = {"rss": 100.0, "hwm": 100.0 + 5 * i}  # the main run's peak keeps rising
    main["peak_rss_mib"] = 145.0
    arena = _run([50.0, 50.0, 90.0, 92.0], [{"screen": 1.0}] * 4)
    arena["records"][0]["warmup"] = arena["records"][1]["warmup"] = True
    arena["peak_rss_mib"] = 111.0
    text = report.arena_detail(main, arena)
    assert "same 4 frames (2 warm-up)" in text
    assert "False 115.0 MiB" in text and "True 111.0 MiB" in text  # main after 4 frames, not its whole-run 145
    assert "latency p50 102.5 vs 91.0 ms" in text  # main frames 2 and 3 against the arena's timed frames
    assert "not compared" in report.arena_detail(_run([1.0], [{}]), arena)
    # the flight with the arena on: the main run is the arena's, the other run has it off
    text = report.arena_detail(main, arena, flight_arena=True)
    assert "True 115.0 MiB" in text and "False 111.0 MiB" in text and "The flight uses True" in text
    assert "latency p50 102.5 vs 91.0 ms" in text


def test_interleaved_int8_vs_fp32_is_weighted_by_the_main_runs_tiles():
    main = _run([100.0, 100.0], [{"screen": 1.0}] * 2)
    for r in main["records"]:
        r["model_tiles"] = {"a": 100, "b": 10}
    rows = {"a": {"ort_int8_ms_per_tile": 0.01, "ort_fp32_ms_per_tile": 0.03},
            "b": {"ort_int8_ms_per_tile": 0.1, "ort_fp32_ms_per_tile": 0.1}}
    got = report.paired_int8_vs_fp32(rows, main)
    assert got["int8_ms"] == pytest.approx(2.0) and got["fp32_ms"] == pytest.approx(4.0)
    assert got["ratio"] == pytest.approx(2.0) and got["per_model"] == pytest.approx({"a": 3.0, "b": 1.0})
    del rows["b"]["ort_fp32_ms_per_tile"]  # a model FP32 could not time: no ratio rather than a partial one
    assert report.paired_int8_vs_fp32(rows, main) is None


def test_soak_smoke_run_logs_memory_for_both_variants_and_plots_it(tmp_path):
    if not (REPO / "models" / "cloud_screen.card.json").exists():
        pytest.skip("models/cloud_screen.card.json not built yet")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--smoke", "--frames", "6", "--every", "2", "--cores", "0",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "soak.json").read_text())
    assert res["exit_codes"] == {"off": 0, "arena": 0}
    for name in ("off", "arena"):
        s = res["summary"][name]
        assert s["frames"] == 6 and s["samples"] == 4  # frames 0, 2, 4 and the last
        assert 10 < s["rss_first_mib"] <= s["hwm_mib"] and s["rss_max_mib"] <= s["hwm_mib"]
    assert (tmp_path / "soak.png").stat().st_size > 5000


def test_a_change_of_machine_speed_during_the_main_run_is_noted():
    pct, note = report.speed_drift({"int8_gmacs": 200.0}, {"int8_gmacs": 210.0})
    assert pct == pytest.approx(5.0) and note is None  # within SPEED_DRIFT_PCT: no note
    pct, note = report.speed_drift({"int8_gmacs": 200.0}, {"int8_gmacs": 150.0})
    assert pct == pytest.approx(-25.0) and "200.0 GMAC/s before it and 150.0 after (-25 %)" in note
    assert report.speed_drift({"int8_gmacs": 200.0}, None) == (None, None)  # the second measurement failed
    assert report.speed_drift(None, {"int8_gmacs": 150.0}) == (None, None)
    assert report.speed_drift({"int8_gmacs": 0.0}, {"int8_gmacs": 150.0}) == (None, None)
