"""The benchmark harness: per-frame latency and memory budgets, against baselines in the same run.

    .venv/bin/python -m benchmarks.harness --profile default           # full run (make bench)
    .venv/bin/python -m benchmarks.harness --profile default --smoke   # seconds; used by the tests

Every measurement runs in a fresh, pinned child process (benchmarks/child.py); frames are
generated before any timing (benchmarks/frames.py). Results go to benchmarks/results/
(latest.json, latest.md, PNG plots); a smoke run writes to runs/bench-smoke/ unless --out is given.
Exit status: 0 all budgets met (always 0 for --smoke), 1 a budget exceeded (each named on stderr
with the stage that holds it back), 2 the harness could not measure (also when a budget's measurement
is missing or not finite, --smoke included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import pagecache

# pagecache uses the standard library only. As a program (make bench), drop the libraries' cached
# pages before this process maps any of them: the harness maps numpy and OpenCV itself, and pages a
# process maps cannot be dropped (pagecache.py).
PAGE_CACHE_AT_START = pagecache.drop_libraries() if __name__ == "__main__" else None

from benchmarks import report  # noqa: E402
from benchmarks.frames import REPO, calibration_file, frame_set, prune_cache  # noqa: E402
from benchmarks.profiles import BUDGETS_FILE, Profile, load_profile, machine  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


class ChildFailed(RuntimeError):
    pass


class CeilingExceeded(ChildFailed):
    """The cgroup killed a child at the profile's memory ceiling: a budget failure, not a harness one."""


# -- memory ceiling ------------------------------------------------------------------------------


class MemoryLimit:
    """A cgroup v2 memory.max for the measuring children, where this machine lets us make one."""

    def __init__(self, ceiling_mib: int):
        self.ceiling_mib, self.path, self.note = ceiling_mib, None, ""
        try:
            self.path = self._make()
            self.note = f"enforced by cgroup v2 memory.max at {self.path} (a child over it is killed)"
        except OSError as exc:
            self.note = f"NOT enforced ({exc}); peak RSS is measured against the ceiling instead"

    def _make(self) -> Path:
        mount = next((line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
                      if line.split()[2] == "cgroup2"), None)
        if mount is None:
            raise OSError("no cgroup v2 mount")
        rel = next((line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::")), "/")
        here = Path(mount) / rel.lstrip("/")
        controllers = (here / "cgroup.controllers").read_text().split()
        if "memory" not in controllers:
            raise OSError(f"cgroup v2 at {here} has no memory controller (controllers: {' '.join(controllers) or 'none'}; "
                          "the memory controller is on a cgroup v1 hierarchy here)")
        if "memory" not in (here / "cgroup.subtree_control").read_text().split():
            (here / "cgroup.subtree_control").write_text("+memory")
        path = here / f"onboard-bench-{os.getpid()}"
        path.mkdir()
        try:
            (path / "memory.max").write_text(str(self.ceiling_mib * 2**20))
            if (path / "memory.swap.max").exists():
                (path / "memory.swap.max").write_text("0")  # a board has no swap
        except OSError:
            path.rmdir()
            raise
        return path

    def preexec(self):
        if self.path is None:
            return None
        procs = self.path / "cgroup.procs"
        return lambda: procs.write_text(str(os.getpid()))

    def oom_killed(self) -> bool:
        try:
            ev = dict(line.split() for line in (self.path / "memory.events").read_text().splitlines())
            return int(ev.get("oom_kill", 0)) > 0
        except (OSError, TypeError):
            return False

    def close(self) -> None:
        if self.path is not None:
            try:
                self.path.rmdir()
            except OSError:
                pass


# -- children ------------------------------------------------------------------------------------


class Runner:
    def __init__(self, profile: Profile, bar, limit: MemoryLimit, tmp: Path):
        self.p, self.bar, self.limit, self.tmp = profile, bar, limit, tmp
        self.cores, self.cores_note = profile.cores_here()
        self.n = 0

    def run(self, spec: dict) -> dict:
        """Run one child; stream its progress into the bar; return its JSON result."""
        self.n += 1
        spec = dict(spec, cores=self.cores, threads=self.p.threads, out=str(self.tmp / f"result-{self.n}.json"))
        spec_path = self.tmp / f"spec-{self.n}.json"
        spec_path.write_text(json.dumps(spec))
        err_path = self.tmp / f"stderr-{self.n}.txt"
        with open(err_path, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "benchmarks.child", str(spec_path)], cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=err, text=True, preexec_fn=self.limit.preexec())
            for line in proc.stdout:
                if line.startswith("@p "):
                    self.bar.update(int(line[3:]))
            rc = proc.wait()
        if rc != 0:
            tail = err_path.read_text()[-2000:]
            if rc == -9 and self.limit.oom_killed():
                raise CeilingExceeded(f"{spec['kind']} killed by the cgroup: memory ceiling {self.p.memory_ceiling_mib} MiB exceeded")
            raise ChildFailed(f"{spec['kind']} child exited {rc}:\n{tail}")
        return json.loads(Path(spec["out"]).read_text())


def _pin_self(child_cores: list[int]) -> None:
    """Keep the harness's own process off the measured core(s) when the machine has others."""
    others = sorted(os.sched_getaffinity(0) - set(child_cores))
    if others:
        os.sched_setaffinity(0, others)


def available_models(scenario: str) -> tuple[list[str], list[str]]:
    from flight.config import load_scenario
    from flight.inference import model_path

    names = [s.model for s in load_scenario(REPO / scenario).flight.cascade if s.enabled]
    have = [n for n in names if model_path(n).exists()]
    return have, [n for n in names if n not in have]


def ukis_status() -> str | None:
    """None when ukis-csmask can run offline, else why it is skipped."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("ukis_csmask")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return "ukis-csmask is not installed (optional extra: pip install -e '.[ukis]'); comparison skipped"
    weights = Path(spec.origin).parent / "model_4b_l1c.onnx"
    if not weights.exists():
        return f"ukis-csmask has no bundled 4-band weights ({weights.name}) and would download them; comparison skipped"
    return None


# -- the run -------------------------------------------------------------------------------------


def measure(profile: Profile, out: Path) -> tuple[dict, int]:
    from tqdm import tqdm

    started = datetime.now(UTC).isoformat(timespec="seconds")
    t_begin = time.perf_counter()
    p = profile
    notes: list[str] = []
    models, missing = available_models(p.scenario)
    if "cloud_screen" not in models:
        raise ChildFailed("models/cloud_screen.card.json not found: build the models first (make models)")
    if missing:
        notes.append(f"models missing, left out of the cascade: {', '.join(missing)}")
    from flight.config import load_scenario

    flight = load_scenario(REPO / p.scenario).flight
    batch_tiles = flight.batch_tiles
    arena = flight.onnx_memory_arena  # the main run measures what flies; one run compares the other setting
    ukis_skip = ukis_status() if p.ukis_frames else "ukis_frames = 0 in this profile (smoke runs skip it: 40 MB model, seconds per frame)"

    # Frames first, before anything is timed
    print(f"benchmark: profile {p.name}{' (smoke)' if p.smoke else ''}: generating frames (cached in runs/bench-cache)...",
          file=sys.stderr)
    prune_cache()  # frames from an older simulator would only fill the disk
    covers = [(k, {"cloud_cover": cc}) for k, cc in enumerate(p.cloud_cover)]
    worst = len(covers) if p.worst_case else None  # the worst-case frame is cycled with the typical ones
    ref_frames = covers + ([(worst, dict(p.worst_case))] if p.worst_case else [])
    sizes = {(p.height, p.width): ref_frames,
             **{(s, s): covers[::2] for s in p.scaling_sizes if (s, s) != (p.height, p.width)}}
    cals = {hw: str(calibration_file(*hw)) for hw in sizes}
    sets = {hw: frame_set(p.seed, cv, *hw, min(p.strip_rows, hw[0]), worst_case=worst) for hw, cv in sizes.items()}

    # one page-cache state for the libraries every child maps, whatever installed them (pagecache.py)
    runs_page_cache = PAGE_CACHE_AT_START or pagecache.drop_libraries()
    limit = MemoryLimit(p.memory_ceiling_mib)
    n_models = len(models)
    units = (6 + 4 * n_models + (p.warmup + p.frames) + 4 * (2 + p.compare_frames)
             + len(p.scaling_sizes) * (2 + p.scaling_frames) + (0 if ukis_skip else p.ukis_frames))
    bar = tqdm(total=units, desc=f"bench {p.name}", unit="step", file=sys.stderr, disable=None)
    runs: dict = {"page_cache": runs_page_cache}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            rn = Runner(p, bar, limit, Path(tmp))
            _pin_self(rn.cores)
            ref = sets[(p.height, p.width)]
            runs["frames"] = ref

            def pipeline(frames, warmup, n, **kw):
                h = frames[0]["height"]
                spec = dict(kind="pipeline", frames=frames, calibration=cals[(h, frames[0]["width"])],
                            strip_rows=min(p.strip_rows, h), scenario=str(REPO / p.scenario), models=models,
                            batch_tiles=batch_tiles, warmup=warmup, n=n, precision="int8", backend="ort", arena=arena)
                spec.update(kw)
                return rn.run(spec)

            def optional(name, fn):
                try:
                    return fn()
                except ChildFailed as exc:
                    notes.append(f"{name} failed: {str(exc).strip().splitlines()[-1]}")
                    return None

            bar.set_postfix_str("roofline")
            def roofline():
                return rn.run(dict(kind="roofline", n=p.roofline_n, min_s=0.2 if p.smoke else 1.0))

            runs["roofline"] = optional("roofline", roofline)
            bar.set_postfix_str("per-model")
            runs["models"] = optional("per-model timing", lambda: rn.run(dict(
                kind="models", frames=ref[:1], calibration=cals[(p.height, p.width)], strip_rows=min(p.strip_rows, p.height),
                scenario=str(REPO / p.scenario), models=models, batch_tiles=batch_tiles, tiles=min(256, (p.height // 64) * (p.width // 64)),
                min_s=0.1 if p.smoke else 0.5, arena=arena)))
            bar.set_postfix_str("calibrate")
            runs["calibrate"] = optional("calibration kernel timing", lambda: rn.run(dict(
                kind="calibrate", frames=ref[:2], calibration=cals[(p.height, p.width)],
                strip_rows=min(p.strip_rows, p.height), scenario=str(REPO / p.scenario), min_s=0.2 if p.smoke else 1.0)))
            bar.set_postfix_str("main INT8")
            steal0 = cpu_steal(rn.cores)
            runs["main"] = pipeline(ref, p.warmup, p.frames)
            bar.set_postfix_str("roofline again")
            # the same measurement after the main run: did the machine's speed change during it?
            runs["roofline_after"] = optional("roofline after the main run", roofline)
            runs["main_steal_pct"] = steal_pct(steal0, cpu_steal(rn.cores))
            bar.set_postfix_str("FP32")
            runs["fp32"] = optional("FP32 run", lambda: pipeline(ref, 2, p.compare_frames, precision="fp32"))
            # OpenCV on the INT8 files when it loads them all, otherwise on FP32 (said in the report)
            mrows = (runs["models"] or {}).get("models", {})
            cv2_prec = "int8" if mrows and all("cv2_int8_ms_per_tile" in r for r in mrows.values()) else "fp32"
            bar.set_postfix_str(f"OpenCV {cv2_prec}")
            runs["cv2"] = optional("OpenCV DNN run", lambda: pipeline(ref, 2, p.compare_frames, backend="cv2", precision=cv2_prec))
            bar.set_postfix_str(f"arena {'off' if arena else 'on'}")
            runs["arena"] = optional(f"arena-{'off' if arena else 'on'} run", lambda: pipeline(ref, 2, p.compare_frames, arena=not arena))
            bar.set_postfix_str("numpy/OpenCV path")
            runs["numpy_path"] = optional("numpy/OpenCV path run", lambda: pipeline(ref, 2, p.compare_frames, native="off"))
            runs["scaling"] = {}
            for s in p.scaling_sizes:
                bar.set_postfix_str(f"scaling {s}")
                typical = [f for f in sets[(s, s)] if not f["worst_case"]]  # scaling compares like with like
                runs["scaling"][s] = optional(f"scaling {s}", lambda typical=typical: pipeline(typical, 2, p.scaling_frames))
            runs["ukis"] = None
            if not ukis_skip:
                bar.set_postfix_str("ukis-csmask")
                runs["ukis"] = optional("ukis-csmask", lambda: rn.run(dict(
                    kind="ukis", frames=ref[: p.ukis_frames], calibration=cals[(p.height, p.width)],
                    strip_rows=min(p.strip_rows, p.height))))
                if runs["ukis"] is None:
                    ukis_skip = "ukis-csmask failed (see notes)"
    finally:
        bar.close()
        limit.close()

    res = assemble(p, runs, models, cv2_prec, ukis_skip, notes, rn, limit)
    res["started"], res["duration_s"] = started, time.perf_counter() - t_begin
    write(res, runs, out)
    failed = [k for k, ok in res["within_budget"].items() if not ok]
    # a budget with no finite measurement is the harness failing to measure (exit 2), even for
    # --smoke, which exists to check that the harness works: it used to raise TypeError (None) or,
    # in a smoke run, exit 0
    if any(report.budget_value(res, k) is None for k in res["budgets"]):
        return res, 2
    return res, (1 if failed and not p.smoke else 0)


def cpu_steal(cores: list[int]) -> tuple[int, int] | None:
    """(steal, total) clock ticks of these cores so far, from /proc/stat; None where it cannot be read.
    Steal is time the hypervisor ran something else on the core: on a VM, the sign of a noisy host."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    want = {f"cpu{c}" for c in cores}
    steal = total = 0
    for line in lines:
        f = line.split()
        if f and f[0] in want and len(f) > 8:
            ticks = [int(x) for x in f[1:9]]  # user nice system idle iowait irq softirq steal
            steal, total = steal + ticks[7], total + sum(ticks)
    return (steal, total) if total else None


def steal_pct(before, after) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


def _ratio(a, b):
    return a / b if a is not None and b else None


def assemble(p: Profile, runs: dict, models: list[str], cv2_prec: str, ukis_skip, notes, rn: Runner, limit) -> dict:
    main = runs["main"]
    lat = report.latency(main)
    res: dict = {
        "machine": machine(),
        "profile": {k: getattr(p, k) for k in ("name", "description", "board", "cores", "threads", "memory_ceiling_mib",
                                               "height", "width", "bands", "bits", "strip_rows", "warmup", "frames",
                                               "cloud_cover", "worst_case", "scenario")},
        "smoke": p.smoke,
        "cores_used": rn.cores, "cores_note": rn.cores_note,
        "memory_limit": {"enforced": limit.path is not None, "ceiling_mib": p.memory_ceiling_mib, "note": limit.note},
        "frame_shape": [p.bands, p.height, p.width],
        "frames_timed": lat["n"],
        "models_used": models,
        "latency_ms": {k: lat[k] for k in ("p50", "p99", "max", "mean")},
        "stage_ms": report.stage_p50(main),
        "stage_ms_p99": report.stage_p99(main),
        "peak_rss_mib": main["peak_rss_mib"],
        "rss_phases_mib": main["rss_mib"],
        "library_page_cache": runs.get("page_cache"),
        "cadence_fps": report.cadence(main),
        "cpu_steal_pct_main": runs.get("main_steal_pct"),
        "notes": notes,
    }
    if rn.cores_note:
        notes.append(rn.cores_note)
    # Comparisons: each a ratio of two runs of this harness on this machine, same frames
    comps = []
    # Speed ratios at the same work: model ms per tile, weighted by the main run's tiles per model
    inf_int8 = report.inference_cost_ms(main, main)
    fp32 = runs.get("fp32")
    res["int8_vs_fp32_speedup"] = _ratio(report.inference_cost_ms(fp32, main), inf_int8) if fp32 else None
    if fp32:
        e2e = _ratio(report.latency(fp32)["p50"], lat["p50"])
        comps.append({"name": "INT8 vs FP32 (onnxruntime), inference stages", "ratio": res["int8_vs_fp32_speedup"],
                      "baseline": "same models, *.fp32.onnx",
                      "detail": f"model time {inf_int8:.1f} vs {report.inference_cost_ms(fp32, main):.1f} ms/frame; "
                                f"end to end p50 {e2e:.2f}x"})
    # The same ratio from the per-model timing, where INT8 and FP32 alternate pass by pass (so the
    # machine's drift between the main and the FP32 runs, minutes apart, is not in it)
    mrows = (runs.get("models") or {}).get("models", {})
    paired = report.paired_int8_vs_fp32(mrows, main)
    res["int8_vs_fp32_speedup_interleaved"] = paired["ratio"] if paired else None
    if paired:
        comps.append({"name": "INT8 vs FP32 (onnxruntime), per-model timing, interleaved", "ratio": paired["ratio"],
                      "baseline": "same models, *.fp32.onnx, alternating passes over the same tiles",
                      "detail": f"model time {paired['int8_ms']:.1f} vs {paired['fp32_ms']:.1f} ms/frame at the main "
                                f"run's tiles per model ({', '.join(f'{n} {r:.2f}x' for n, r in paired['per_model'].items())})"})
    cv = runs.get("cv2")
    ort_base = main if cv2_prec == "int8" else fp32
    res["ort_vs_cv2dnn_speedup"] = (_ratio(report.inference_cost_ms(cv, main), report.inference_cost_ms(ort_base, main))
                                    if cv and ort_base else None)
    res["cv2_precision"] = cv2_prec
    if cv and ort_base:
        why = "" if cv2_prec == "int8" else " (OpenCV could not load the QDQ INT8 files: compared on FP32)"
        comps.append({"name": "onnxruntime vs OpenCV DNN, inference stages", "ratio": res["ort_vs_cv2dnn_speedup"],
                      "baseline": f"cv2.dnn.readNetFromONNX, same {cv2_prec.upper()} files{why}",
                      "detail": f"model time {report.inference_cost_ms(ort_base, main):.1f} vs "
                                f"{report.inference_cost_ms(cv, main):.1f} ms/frame; end to end p50 "
                                f"{_ratio(report.latency(cv)['p50'], report.latency(ort_base)['p50']):.2f}x"})
        if cv2_prec != "int8":
            notes.append("OpenCV DNN could not load the QDQ INT8 model files; the onnxruntime vs OpenCV comparison uses FP32")
    # The calibrate stage: native kernel vs the numpy/OpenCV path, alternating over the same frames
    cb = runs.get("calibrate")
    res["calibration_kernel"] = main.get("calibration_kernel")
    res["calibrate"] = cb
    if cb and "error" not in cb:
        ms = cb["ms_per_frame"]
        res["native_vs_numpy_calibrate_speedup"] = _ratio(ms["numpy"], ms["native"])
        comps.append({"name": "native kernel vs numpy/OpenCV, calibrate stage", "ratio": res["native_vs_numpy_calibrate_speedup"],
                      "baseline": "flight.calibrate's numpy/OpenCV passes, same frames, alternating",
                      "detail": f"{ms['native']:.1f} vs {ms['numpy']:.1f} ms/frame over {cb['frames']} frames each; "
                                f"{cb['values_differing']} values differ; the main run uses: {main.get('calibration_kernel')}"})
        if cb["values_differing"]:
            notes.append(f"the native calibration kernel's output differs from the numpy/OpenCV path in "
                         f"{cb['values_differing']} values: it must not fly")
    elif cb:
        notes.append(f"native calibration kernel not measured: {cb['error']}")
    npr = runs.get("numpy_path")
    if npr and main.get("native_tiles"):
        st_main, st_np = report.stage_p50(main), report.stage_p50(npr)
        parts = ("calibrate", "tile", "screen", "detect")
        res["native_vs_numpy_e2e_speedup"] = _ratio(report.latency(npr)["p50"], lat["p50"])
        comps.append({"name": "native kernels vs numpy/OpenCV, end to end", "ratio": res["native_vs_numpy_e2e_speedup"],
                      "baseline": "flight.native_kernels = off, same frames (a separate run: the machine's drift is in it)",
                      "detail": "p50 " + f"{lat['p50']:.1f} vs {report.latency(npr)['p50']:.1f} ms; stages p50 "
                                + ", ".join(f"{k} {st_main.get(k, 0):.1f} vs {st_np.get(k, 0):.1f}" for k in parts)})
    rf = runs.get("roofline")
    res["roofline"] = rf
    res["roofline_after"] = runs.get("roofline_after")
    res["machine_speed_change_pct"], drift_note = report.speed_drift(rf, res["roofline_after"])
    if drift_note:
        notes.append(drift_note)
    res["achieved_gmacs"] = report.achieved_gmacs(main)
    res["roofline_fraction"] = _ratio(res["achieved_gmacs"], rf["int8_gmacs"]) if rf else None
    if rf:
        comps.append({"name": "inference stage vs INT8 roofline", "ratio": res["roofline_fraction"],
                      "baseline": f"MatMulInteger {rf['n']}^3, one core",
                      "detail": f"{res['achieved_gmacs']:.1f} of {rf['int8_gmacs']:.1f} GMAC/s (FP32 roofline {rf['fp32_gmacs']:.1f})"})
    res["model_throughput"] = report.model_throughput(main, rf["int8_gmacs"] if rf else None)
    res["native_tiles"] = bool(main.get("native_tiles", False))
    for name, row in mrows.items():
        row["macs_per_tile"] = main["macs_per_tile"].get(name)
        if row.get("ort_int8_ms_per_tile") and row["macs_per_tile"]:  # the same model alone, batches of one frame's tiles
            row["ort_int8_gmacs"] = row["macs_per_tile"] / row["ort_int8_ms_per_tile"] / 1e6
            row["ort_int8_roofline_fraction"] = row["ort_int8_gmacs"] / rf["int8_gmacs"] if rf else None
        diff = row.get("cv2_int8_max_abs_diff_vs_ort")
        if diff is not None and diff > 0.01:  # same file, two runtimes: a speed ratio means little if results differ
            notes.append(f"OpenCV DNN runs {name}'s INT8 file but its outputs differ from onnxruntime's by up to {diff:.2g} "
                         f"(FP32 files agree to {row.get('cv2_fp32_max_abs_diff_vs_ort', float('nan')):.1g}): "
                         "its INT8 speed is comparable, its INT8 results are not")
    res["models"] = mrows
    # Data reduction
    res["reduction"] = report.reduction(main)
    res["reduction_ratio"] = res["reduction"]["ratio"]
    # Arena
    ar = runs.get("arena")  # the other setting's run
    flight_arena = bool(main.get("arena", False))
    other_peak = ar["peak_rss_mib"] if ar else None
    res["arena"] = {"flight_uses": flight_arena,
                    "off_peak_rss_mib": other_peak if flight_arena else main["peak_rss_mib"],
                    "on_peak_rss_mib": main["peak_rss_mib"] if flight_arena else other_peak,
                    "detail": report.arena_detail(main, ar, flight_arena) if ar
                    else f"arena-{'off' if flight_arena else 'on'} run failed (see notes)"}
    # Scaling
    res["scaling"] = [{"height": s, "width": s, "pixels": s * s, "latency_ms_p50": report.latency(r)["p50"],
                       "peak_rss_mib": r["peak_rss_mib"]} for s, r in runs["scaling"].items() if r]
    # ukis-csmask: speed and frame cloud-fraction agreement on the same frames
    u = runs.get("ukis")
    res["ukis_csmask"] = None
    res["ukis_detail"] = ukis_skip or ""
    if u:
        ours = report.per_distinct(main)
        rows = [(f, ours[f["distinct"]]) for f in u["frames"] if f["distinct"] in ours]
        res["ukis_csmask"] = {
            "speedup": sum(f["ms"] for f, _ in rows) / sum(o["screen_ms"] for _, o in rows),
            "cloud_fraction_diff_pp": 100 * sum(abs(f["cloud_fraction"] - o["cloud_fraction"]) for f, o in rows) / len(rows),
            "frames": [{"distinct": f["distinct"], "ukis_ms": f["ms"], "ours_screen_ms": o["screen_ms"],
                        "ukis_cloud_fraction": f["cloud_fraction"], "ours_cloud_fraction": o["cloud_fraction"],
                        "truth_cloud_fraction": o["truth_cloud_fraction"]} for f, o in rows],
            "ukis_peak_rss_mib": u["peak_rss_mib"], "model": u["model"],
        }
        res["ukis_detail"] = (f"ukis-csmask {u['model']} (4 bands, U-Net) on {len(rows)} of the same calibrated frames, one core: "
                              f"{sum(f['ms'] for f, _ in rows) / len(rows) / 1e3:.1f} s per frame and {u['peak_rss_mib']:.0f} MiB peak, "
                              f"vs our tile + screen stages {sum(o['screen_ms'] for _, o in rows) / len(rows):.1f} ms per frame. "
                              "Its cloud fraction counts pixels of class cloud (shadows excluded); it was trained for ~30 m pixels, ours are 10 m.")
        comps.append({"name": "our cloud screening vs ukis-csmask", "ratio": res["ukis_csmask"]["speedup"],
                      "baseline": "ukis-csmask 4-band model, same frames",
                      "detail": f"cloud fraction differs by {res['ukis_csmask']['cloud_fraction_diff_pp']:.1f} pp on average"})
    res["comparisons"] = comps
    res["per_frame"] = report.per_frame(main, runs["frames"])
    res["worst_case_frame"] = next((f for f in res["per_frame"] if f["worst_case"]), None)
    res["rss_growth_mib"] = report.rss_growth_mib(main)
    res["memory_story"] = report.memory_story(main)
    res["peak_when"] = report.peak_when(main)
    res["budgets"] = p.budgets
    res["within_budget"], res["held_back"] = report.check_budgets(res, p.budgets, main)
    return res


def write(res: dict, runs: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    (out / "latest.md").write_text(report.markdown(res))
    report.plots(res, runs, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default", help="a profile in benchmarks/budgets.toml")
    ap.add_argument("--smoke", action="store_true", help="a few small frames: checks the harness works, not a measurement")
    ap.add_argument("--budgets", type=Path, default=None, help="profiles file (default benchmarks/budgets.toml)")
    ap.add_argument("--out", type=Path, help="results folder (default benchmarks/results, runs/bench-smoke for --smoke)")
    args = ap.parse_args(argv)
    try:
        profile = load_profile(args.profile, args.smoke, args.budgets or BUDGETS_FILE)
        out = args.out or (REPO / "runs" / "bench-smoke" if args.smoke else RESULTS)
        if out.exists() and not out.is_dir():  # found only when writing, after the whole measurement
            raise ValueError(f"--out {out} exists and is not a folder")
        res, rc = measure(profile, out)
    except CeilingExceeded as exc:
        print(f"BUDGET EXCEEDED: {exc}", file=sys.stderr)
        return 0 if args.smoke else 1
    except (ChildFailed, ValueError, OSError) as exc:
        print(f"benchmark: cannot measure: {exc}", file=sys.stderr)
        return 2
    lat = res["latency_ms"]
    f = report._f  # "n/a" for a value not measured (a None here used to be a traceback)
    print(f"benchmark {profile.name}: p50 {f(lat.get('p50'))} ms, p99 {f(lat.get('p99'))} ms, max {f(lat.get('max'))} ms, "
          f"peak RSS {f(res.get('peak_rss_mib'))} MiB, {f(res.get('cadence_fps'), '.2f')} frames/s -> {out / 'latest.md'}")
    for name, ok in res["within_budget"].items():
        if report.budget_value(res, name) is None:
            print(f"benchmark: cannot measure: budget {name}: {res['held_back'][name]}", file=sys.stderr)
        elif not ok:
            print(f"BUDGET EXCEEDED{' (smoke: not enforced)' if profile.smoke else ''}: {name} = "
                  f"{report._get(res, report.BUDGET_KEYS[name][0]):.1f}, limit {res['budgets'][name]:g}; "
                  f"held back by {res['held_back'][name]}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
