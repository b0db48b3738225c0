"""Numbers from the child results: statistics, budget checks with the stage that holds each back,
the Markdown report and the plots. Every speed claim is a ratio of two runs of this same harness
on this same machine."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from benchmarks.profiles import BUDGET_KEYS

STAGES = ("receive", "ingest", "calibrate", "tile", "screen", "detect", "localize", "package")


def timed(run: dict) -> list[dict]:
    return [r for r in run["records"] if not r["warmup"]]


def latency(run: dict) -> dict:
    lat = np.array([r["latency_ms"] for r in timed(run)])
    return {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "max": float(lat.max()), "mean": float(lat.mean()), "n": int(lat.size)}


def stage_p50(run: dict) -> dict:
    recs = timed(run)
    return {s: float(np.median([r["stage_ms"].get(s, 0.0) for r in recs])) for s in STAGES}


def stage_p99(run: dict) -> dict:
    recs = timed(run)
    return {s: float(np.percentile([r["stage_ms"].get(s, 0.0) for r in recs], 99)) for s in STAGES}


def ms_per_tile(run: dict) -> dict[str, float]:
    recs = timed(run)
    out = {}
    for name in run["macs_per_tile"]:
        tiles = sum(r["model_tiles"][name] for r in recs)
        if tiles:
            out[name] = sum(r["model_ms"][name] for r in recs) / tiles
    return out


def inference_cost_ms(run: dict, ref: dict) -> float:
    """Model time per frame of `run` at the reference run's tile counts: a runtime or precision
    whose results differ sends other tiles down the cascade; this compares the same work."""
    recs = timed(ref)
    per = ms_per_tile(run)
    return sum(per[n] * sum(r["model_tiles"][n] for r in recs) / len(recs) for n in per)


def paired_int8_vs_fp32(model_rows: dict, ref: dict) -> dict | None:
    """INT8 vs FP32 model time per frame from the per-model (interleaved) timing, weighted by the
    reference run's tiles per model: {ratio, int8_ms, fp32_ms, per_model}; None without both."""
    recs = timed(ref)
    int8 = fp32 = 0.0
    per = {}
    for n, row in model_rows.items():
        a, b = row.get("ort_int8_ms_per_tile"), row.get("ort_fp32_ms_per_tile")
        if a is None or b is None or not recs:
            return None
        tiles = sum(r["model_tiles"].get(n, 0) for r in recs) / len(recs)
        int8, fp32 = int8 + a * tiles, fp32 + b * tiles
        per[n] = b / a
    if not per or int8 <= 0:
        return None
    return {"ratio": fp32 / int8, "int8_ms": int8, "fp32_ms": fp32, "per_model": per}


def achieved_gmacs(run: dict) -> float:
    macs = run["macs_per_tile"]
    recs = timed(run)
    total_macs = sum(macs[n] * t for r in recs for n, t in r["model_tiles"].items())
    total_s = sum(sum(r["model_ms"].values()) for r in recs) / 1e3
    return total_macs / total_s / 1e9 if total_s > 0 else float("nan")


def model_throughput(run: dict, int8_roofline_gmacs: float | None) -> dict[str, dict]:
    """Per model in this run: tiles and ms per frame, ms per tile, achieved GMAC/s (card MACs x tiles
    it really ran / time inside its run(): input quantization included, unless the native kernels
    made the input in the tile stage) and its fraction of the
    INT8 roofline; "all" is the inference stage as a whole (the MAC-weighted mix)."""
    recs = timed(run)
    out = {}
    for name in [*run["macs_per_tile"], "all"]:
        names = list(run["macs_per_tile"]) if name == "all" else [name]
        tiles = {n: sum(r["model_tiles"][n] for r in recs) for n in names}
        ms = sum(r["model_ms"][n] for r in recs for n in names)
        macs = sum(run["macs_per_tile"][n] * tiles[n] for n in names)
        gmacs = macs / (ms / 1e3) / 1e9 if ms > 0 else None
        out[name] = {"tiles_per_frame": sum(tiles.values()) / len(recs), "ms_per_frame": ms / len(recs),
                     "ms_per_tile": ms / sum(tiles.values()) if sum(tiles.values()) else None, "gmacs": gmacs,
                     "roofline_fraction": gmacs / int8_roofline_gmacs if gmacs and int8_roofline_gmacs else None}
    return out


def cadence(run: dict) -> float:
    return len(timed(run)) / run["timed_wall_s"]


def reduction(run: dict) -> dict:
    recs = timed(run)
    raw, pkt = sum(r["raw_bytes"] for r in recs), sum(r["packet_bytes"] for r in recs)
    return {"raw_bytes_per_frame": raw / len(recs), "packet_bytes_per_frame": pkt / len(recs),
            "packets_per_frame": sum(r["packets"] for r in recs) / len(recs), "ratio": raw / pkt if pkt else float("inf")}


def rss_growth_mib(run: dict) -> float:
    """Resident memory after the last timed frame minus after the first: a leak shows here."""
    recs = timed(run)
    return recs[-1]["memory_mib"]["rss"] - recs[0]["memory_mib"]["rss"]


PHASES = {"imports": "loading the libraries", "calibration_loaded": "loading the calibration tables",
          "models_loaded": "loading the models", "after_first_frame": "processing the first frame"}


def peak_when(run: dict) -> str:
    """When the process reached its peak resident memory: a start-up phase or a frame."""
    ph = run["rss_mib"]
    peak = ph["end"]["hwm"]
    for key, what in PHASES.items():
        if ph[key]["hwm"] >= peak - 0.5:
            return what
    for r in run["records"]:
        if r["memory_mib"]["hwm"] >= peak - 0.5:
            return f"frame {r['frame']} (distinct frame {r['distinct']}{', warm-up' if r['warmup'] else ''})"
    return "the end of the run"


def memory_story(run: dict) -> str:
    """What the peak is made of (resident after each start-up phase) and when it was reached."""
    ph = run["rss_mib"]
    peak = ph["end"]["hwm"]
    parts = {"interpreter and libraries": ph["imports"]["rss"],
             "calibration tables (per-pixel, frame-sized)": ph["calibration_loaded"]["rss"] - ph["imports"]["rss"],
             "model sessions": ph["models_loaded"]["rss"] - ph["calibration_loaded"]["rss"],
             "transients and frame processing": peak - ph["models_loaded"]["rss"]}
    top = max(parts, key=parts.get)
    when = peak_when(run)
    return (f"memory: {top} ({parts[top]:.0f} of {peak:.0f} MiB; " + ", ".join(f"{k} {v:.0f}" for k, v in parts.items())
            + f"); the peak was reached {'while' if when in PHASES.values() else 'during'} {when}")


def per_distinct(run: dict) -> dict[int, dict]:
    """Per distinct frame: cloud fraction (ours and the scene's truth) and median times."""
    out: dict[int, dict] = {}
    truth = {int(k): v for k, v in run.get("truth_cloud_fraction", {}).items()}
    for r in timed(run):
        d = out.setdefault(r["distinct"], {"cloud_fraction": r["cloud_fraction"], "truth_cloud_fraction": truth.get(r["distinct"]),
                                           "screen_ms": [], "latency_ms": []})
        d["screen_ms"].append(r["stage_ms"]["tile"] + r["stage_ms"]["screen"])
        d["latency_ms"].append(r["latency_ms"])
    for d in out.values():
        d["screen_ms"] = float(np.median(d["screen_ms"]))
        d["latency_ms"] = float(np.median(d["latency_ms"]))
    return out


def per_frame(run: dict, frames: list[dict]) -> list[dict]:
    """Per distinct frame of the cycled set: its scene, whether it is the worst case, our and the
    true cloud fraction, detections, tiles per model, and its own latency p50 / p99 / max."""
    out = []
    for f in frames:
        recs = [r for r in timed(run) if r["distinct"] == f["distinct"]]
        if not recs:
            continue
        lat = np.array([r["latency_ms"] for r in recs])
        out.append({"distinct": f["distinct"], "scene": f.get("scene", {}), "worst_case": bool(f.get("worst_case")),
                    "objects": f.get("objects"), "cloud_fraction": recs[0]["cloud_fraction"],
                    "truth_cloud_fraction": f.get("truth_cloud_fraction"), "detections": recs[0]["detections"],
                    "model_tiles": recs[0]["model_tiles"], "n": int(lat.size),
                    "latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p99": float(np.percentile(lat, 99)),
                    "latency_ms_max": float(lat.max()),
                    "stage_ms_p50": {st: float(np.median([r["stage_ms"].get(st, 0.0) for r in recs])) for st in STAGES}})
    return out


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def budget_value(result: dict, name: str) -> float | None:
    """A budget's measurement as a finite number; None when it is missing, None, NaN, infinite or
    not a number (then it was not measured, and is never within its budget)."""
    try:
        value = _get(result, BUDGET_KEYS[name][0])
    except (KeyError, TypeError):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def check_budgets(result: dict, budgets: dict, main: dict) -> tuple[dict, dict]:
    """within_budget per budget, and for each miss the stage (or memory phase) that holds it back.
    A budget whose measurement is missing or not finite is not within it ("not measured"): a None
    used to raise TypeError out of the harness (a traceback instead of exit 2), and an infinite
    cadence (no wall time) would have passed."""
    within, held = {}, {}
    for name, limit in budgets.items():
        key, upper = BUDGET_KEYS[name]
        value = budget_value(result, name)
        if value is None:
            within[name] = False
            try:
                raw = _get(result, key)
            except (KeyError, TypeError):
                raw = "missing"
            held[name] = f"not measured ({key} = {raw})"
            continue
        ok = value <= limit if upper else value >= limit
        within[name] = bool(ok)
        if not ok:
            held[name] = holds_back(name, main, result)
    return within, held


def holds_back(name: str, main: dict, result: dict) -> str:
    recs = timed(main)
    if name == "peak_rss_mib":
        return memory_story(main)
    if name in ("latency_p99_ms", "latency_max_ms"):
        lat = np.array([r["latency_ms"] for r in recs])
        cut = lat.max() if name == "latency_max_ms" else np.percentile(lat, 99)
        slow = [r for r in recs if r["latency_ms"] >= cut]
        ms = {s: float(np.mean([r["stage_ms"].get(s, 0.0) for r in slow])) for s in STAGES}
        total = float(np.mean([r["latency_ms"] for r in slow]))
        where = "in the slowest frames"
    else:  # p50 and cadence: the typical frame
        ms = stage_p50(main)
        total = result["latency_ms"]["p50"]
        where = "in the median frame"
    top = max(ms, key=ms.get)
    return f"stage '{top}': {ms[top]:.1f} ms of {total:.1f} ms ({100 * ms[top] / total:.0f} %) {where}"


# -- output --------------------------------------------------------------------------------------


def _f(v, fmt=".1f", none="n/a"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, fmt)


def _scene(scene: dict) -> str:
    names = {"cloud_cover": "cloud cover", "water_fraction": "water", "ships": "ships", "fires": "fires"}
    return ", ".join(f"{names.get(k, k)} {v:g}" for k, v in scene.items())


SPEED_DRIFT_PCT = 10.0  # the roofline moving by more than this across the main run is reported


def speed_drift(before: dict | None, after: dict | None) -> tuple[float | None, str | None]:
    """Change of the INT8 roofline from before to after the main run, in percent, and a note when
    it is larger than SPEED_DRIFT_PCT: these hosts' speed moves by up to 30 % within minutes
    (docs/benchmarks.md), which a run's latencies carry and its same-run ratios mostly do not."""
    if not before or not after or not before.get("int8_gmacs") or not after.get("int8_gmacs"):
        return None, None
    pct = 100.0 * (after["int8_gmacs"] / before["int8_gmacs"] - 1.0)
    if abs(pct) <= SPEED_DRIFT_PCT:
        return pct, None
    return pct, (f"the machine's speed changed during the main run: the INT8 roofline measured "
                 f"{before['int8_gmacs']:.1f} GMAC/s before it and {after['int8_gmacs']:.1f} after ({pct:+.0f} %); "
                 f"its latencies are not comparable with another run's, its same-run ratios less affected")


def arena_detail(main: dict, other: dict, flight_arena: bool = False) -> str:
    """The memory arena as the flight sets it (the main run) against the other setting over the
    same frames: the other run's frames are the main run's first ones (both cycle the distinct
    frames from the start), so the main run's high-water mark and latencies over just those
    frames are what it compares with."""
    n = len(other["records"])
    same = main["records"][:n]
    if len(same) < n:
        return f"arena-{'off' if flight_arena else 'on'} run longer than the main run: not compared"
    warm = sum(1 for r in other["records"] if r["warmup"])
    main_p50 = float(np.percentile([r["latency_ms"] for r in same[warm:]], 50))
    other_p50 = latency(other)["p50"]
    return (f"enable_cpu_mem_arena, over the same {n} frames ({warm} warm-up): peak RSS {flight_arena} "
            f"{same[-1]['memory_mib']['hwm']:.1f} MiB (the main run after its first {n} frames), {not flight_arena} "
            f"{other['peak_rss_mib']:.1f} MiB; latency p50 {main_p50:.1f} vs {other_p50:.1f} ms. The flight uses "
            f"{flight_arena} (flight.onnx_memory_arena; whole main run: peak {main['peak_rss_mib']:.1f} MiB over "
            f"{len(main['records'])} frames).")


def markdown(res: dict) -> str:
    m, p = res["machine"], res["profile"]
    lines = [
        f"# Benchmark: profile `{p['name']}`{' (SMOKE: a few small frames, not a measurement)' if res['smoke'] else ''}",
        "",
        f"Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['memory_gib']} GiB, "
        f"ISA {', '.join(m['isa']) or '?'}; Python {m['python']}, onnxruntime {m['onnxruntime']}, OpenCV {m['opencv']}. "
        f"Load average at start {', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}. "
        + ("CPU steal on the measuring core(s) during the main run: "
           f"{res['cpu_steal_pct_main']:.1f} % of their time (time the hypervisor gave them to others; 0 on a quiet host)."
           if res.get("cpu_steal_pct_main") is not None else "CPU steal: not readable here."),
        f"Profile: {p['description']}. Cores {res['cores_used']} ({res['cores_note'] or 'as the profile asks'}), "
        f"{p['threads']} onnxruntime thread(s). Board it stands for: {p['board']} -- CPU speed here differs; "
        "the budgets apply to this machine.",
        f"Frame {' x '.join(map(str, res['frame_shape']))} (bands x rows x cols), {p['bits']}-bit, "
        f"{res['frames_timed']} timed frames after {p['warmup']} warm-up, {len(res['per_frame'])} distinct frames cycled "
        f"({len(p['cloud_cover'])} cloud covers{' and the worst case' if p.get('worst_case') else ''}).",
        f"Memory ceiling {p['memory_ceiling_mib']} MiB: {res['memory_limit']['note']}",
        f"Run: {res['started']}, {res['duration_s']:.0f} s.",
        "",
        "## Budgets",
        "",
        "| budget | measured | limit | within | held back by |",
        "|---|---|---|---|---|",
    ]
    for name, limit in res["budgets"].items():
        key, upper = BUDGET_KEYS[name]
        lines.append(f"| {name} | {_f(budget_value(res, name))} | {'<=' if upper else '>='} {limit:g} | "
                     f"{'yes' if res['within_budget'][name] else '**NO**'} | {res['held_back'].get(name, '')} |")
    lines += ["", "## Per stage (ms per frame, reference frame, INT8, onnxruntime)", "",
              "| stage | p50 | p99 | share of p50 sum |", "|---|---|---|---|"]
    total = sum(res["stage_ms"].values()) or 1.0
    for s in STAGES:
        lines.append(f"| {s} | {res['stage_ms'][s]:.2f} | {res['stage_ms_p99'][s]:.2f} | {100 * res['stage_ms'][s] / total:.0f} % |")
    lat = res["latency_ms"]
    lines += ["", f"End to end: p50 {_f(lat['p50'])} ms, p99 {_f(lat['p99'])} ms, max {_f(lat['max'])} ms; "
              f"sustained {_f(res['cadence_fps'], '.2f')} frames/s; peak RSS {_f(res['peak_rss_mib'])} MiB.",
              "`receive` is the copy of each strip into the flight process's buffer (the camera hand-off); it is "
              "part of the end-to-end time.", ""]
    lines += ["## Comparisons (ratios of runs in this same harness run; > 1 means the first named is faster)", "",
              "| comparison | ratio | baseline | detail |", "|---|---|---|---|"]
    for c in res["comparisons"]:
        lines.append(f"| {c['name']} | {_f(c.get('ratio'), '.2f')} | {c['baseline']} | {c['detail']} |")
    rf = res.get("roofline") or {}
    lines += ["", "## Roofline (single core, onnxruntime, measured in this run)", "",
              f"INT8 MatMulInteger {_f(rf.get('int8_gmacs'))} GMAC/s, FP32 MatMul {_f(rf.get('fp32_gmacs'))} GMAC/s "
              f"({rf.get('n', '?')}^3, best of {rf.get('int8_runs', '?')}/{rf.get('fp32_runs', '?')} runs). "
              f"Inference stage achieved {_f(res.get('achieved_gmacs'))} GMAC/s = "
              f"{_f(100 * res['roofline_fraction'] if res.get('roofline_fraction') is not None else None)} % of the INT8 roofline."]
    ra = res.get("roofline_after") or {}
    if ra.get("int8_gmacs") and res.get("machine_speed_change_pct") is not None:
        lines.append(f"Measured again after the main run: INT8 {ra['int8_gmacs']:.1f} GMAC/s "
                     f"({res['machine_speed_change_pct']:+.1f} %; over {SPEED_DRIFT_PCT:g} % is reported in the notes).")
    lines.append("")
    mt = res.get("model_throughput") or {}
    if mt:
        iso = res.get("models") or {}
        where = ("input made in the tile stage: cut and quantized by the native kernel, flight/native"
                 if res.get("native_tiles") else "input quantization included")
        lines += [f"Each model's own MACs/s: in the main run (card MACs x the tiles it ran / its time inside `run()`, {where}), "
                  "and isolated (batches of tiles of the reference frame, input made as in the main run; per-model table below).", "",
                  "| model | MACs/tile | tiles/frame | ms/frame | ms/tile | GMAC/s | % INT8 roofline | isolated GMAC/s | isolated % |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, t in mt.items():
            row = iso.get(name, {})
            lines.append(f"| {'inference stage (all)' if name == 'all' else name} | {row.get('macs_per_tile', '') if name != 'all' else ''} | "
                         f"{t['tiles_per_frame']:.0f} | {t['ms_per_frame']:.1f} | {_f(t['ms_per_tile'], '.4f')} | {_f(t['gmacs'])} | "
                         f"{_f(100 * t['roofline_fraction'] if t['roofline_fraction'] is not None else None)} | "
                         f"{_f(row.get('ort_int8_gmacs'))} | "
                         f"{_f(100 * row['ort_int8_roofline_fraction'] if row.get('ort_int8_roofline_fraction') is not None else None)} |")
        lines.append("")
    if res.get("models"):
        lines += ["## Per model (ms per tile, batch of tiles from the reference frame)", "",
                  "| model | MACs/tile | ORT INT8 | ORT FP32 | OpenCV INT8 | OpenCV FP32 | note |", "|---|---|---|---|---|---|---|"]
        for name, row in res["models"].items():
            notes = "; ".join(f"{k.removesuffix('_error')}: {v}" for k, v in row.items() if k.endswith("_error"))
            diffs = ", ".join(f"{k.removesuffix('_max_abs_diff_vs_ort')} vs ORT max |diff| {v:.2g}" for k, v in row.items()
                              if k.endswith("_max_abs_diff_vs_ort"))
            lines.append(f"| {name} | {row.get('macs_per_tile', '?')} | {_f(row.get('ort_int8_ms_per_tile'), '.3f')} | "
                         f"{_f(row.get('ort_fp32_ms_per_tile'), '.3f')} | {_f(row.get('cv2_int8_ms_per_tile'), '.3f')} | "
                         f"{_f(row.get('cv2_fp32_ms_per_tile'), '.3f')} | {'; '.join(x for x in (diffs, notes) if x)} |")
        lines.append("")
    lines += ["## Scaling (INT8, one fresh process per size)", "",
              "| frame | pixels | latency p50 ms | ms per Mpixel | peak RSS MiB |", "|---|---|---|---|---|"]
    for s in res["scaling"]:
        lines.append(f"| {s['height']} x {s['width']} | {s['pixels']} | {s['latency_ms_p50']:.1f} | "
                     f"{s['latency_ms_p50'] / (s['pixels'] / 1e6):.1f} | {s['peak_rss_mib']:.1f} |")
    red = res["reduction"]
    lines += ["", "## Data reduction", "",
              f"Raw {red['raw_bytes_per_frame'] / 2**20:.1f} MiB per frame -> {red['packet_bytes_per_frame']:.0f} bytes "
              f"in {red['packets_per_frame']:.1f} packets: ratio {res['reduction_ratio']:.0f} : 1.", "",
              "## The distinct frames (cycled; each frame's own latency)", ""]
    wc = res.get("worst_case_frame")
    if wc:
        lines += [f"Worst case for latency: frame {wc['distinct']} ({_scene(wc['scene'])}: {wc['detections']} detections kept, "
                  f"tiles {', '.join(f'{n} {t}' for n, t in wc['model_tiles'].items())}): p50 {wc['latency_ms_p50']:.1f} ms, "
                  f"p99 {wc['latency_ms_p99']:.1f} ms, max {wc['latency_ms_max']:.1f} ms over {wc['n']} frames. It is cycled with the "
                  "others in the main run, so the latency budgets above cover it.", ""]
    lines += ["| frame | scene | cloud fraction ours | truth | detections | p50 ms | p99 ms | max ms | detect p50 | localize p50 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for f in res["per_frame"]:
        lines.append(f"| {f['distinct']}{' (worst case)' if f['worst_case'] else ''} | {_scene(f['scene'])} | {f['cloud_fraction']:.3f} | "
                     f"{_f(f['truth_cloud_fraction'], '.3f')} | {f['detections']} | {f['latency_ms_p50']:.1f} | "
                     f"{f['latency_ms_p99']:.1f} | {f['latency_ms_max']:.1f} | {f['stage_ms_p50']['detect']:.1f} | "
                     f"{f['stage_ms_p50']['localize']:.1f} |")
    ph = res["rss_phases_mib"]
    lines += ["", "## Memory", "",
              "| after | resident MiB | anonymous | file-backed (libraries) | peak so far |", "|---|---|---|---|---|"]
    for key in ("start", "imports", "calibration_loaded", "models_loaded", "after_first_frame", "end"):
        m = ph[key]
        lines.append(f"| {key.replace('_', ' ')} | {m['rss']:.0f} | {m['anon']:.0f} | {m['file']:.0f} | {m['hwm']:.0f} |")
    lines += ["", f"{res['memory_story']}. Resident memory changed by {res['rss_growth_mib']:+.1f} MiB from the first to "
              "the last timed frame (a leak would show here).", ""]
    pc = res.get("library_page_cache")
    if pc:  # file-backed pages mapped depend on how the libraries came into the page cache (benchmarks/pagecache.py)
        kept = f"; still mapped by the harness, so left as they were: {', '.join(pc['mapped_by_harness'])}" if pc["mapped_by_harness"] else ""
        errs = f"; {pc['errors']} could not be dropped ({pc['first_error']})" if pc["errors"] else ""
        lines += [f"Before the children ran, {pc['files']} shared libraries ({pc['bytes'] / 2**20:.0f} MiB) were written back "
                  "and dropped from the page cache, so each child maps them from disk as a board does after boot, not as "
                  f"an install left them (a fresh install added about 35 MiB of file-backed pages){kept}{errs}.", ""]
    lines += [res["arena"]["detail"], "",
              "## DLR ukis-csmask", ""]
    u = res["ukis_csmask"]
    lines.append(res["ukis_detail"] if u is None else
                 f"{res['ukis_detail']} Speedup of our screening {u['speedup']:.0f}x; frame cloud fraction differs by "
                 f"{u['cloud_fraction_diff_pp']:.1f} percentage points on average.")
    if u:
        lines += ["", "| frame | ukis s | ours (tile + screen) ms | cloud ukis | cloud ours | truth |", "|---|---|---|---|---|---|"]
        for f in u["frames"]:
            lines.append(f"| {f['distinct']} | {f['ukis_ms'] / 1e3:.1f} | {f['ours_screen_ms']:.1f} | {f['ukis_cloud_fraction']:.3f} | "
                         f"{f['ours_cloud_fraction']:.3f} | {_f(f['truth_cloud_fraction'], '.3f')} |")
    if res["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    lines += ["", "Plots: `latency_hist.png`, `stages.png`, `scaling.png`.", ""]
    return "\n".join(lines)


def plots(res: dict, runs: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = runs["main"]
    lat = [r["latency_ms"] for r in timed(main)]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(lat, bins=40, color="#4477aa")
    for v, label, style in ((res["latency_ms"]["p50"], "p50", "-"), (res["latency_ms"]["p99"], "p99", "--")):
        ax.axvline(v, color="k", linestyle=style, label=f"{label} {v:.1f} ms")
    if "latency_p99_ms" in res["budgets"]:
        ax.axvline(res["budgets"]["latency_p99_ms"], color="r", label=f"p99 budget {res['budgets']['latency_p99_ms']:g} ms")
    ax.set_xlabel("end-to-end latency per frame (ms)")
    ax.set_ylabel("frames")
    ax.set_title(f"{res['profile']['name']}: {' x '.join(map(str, res['frame_shape']))}, {res['machine']['cpu_model']}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency_hist.png", dpi=100)
    plt.close(fig)

    variants = [(k, runs[k]) for k in ("main", "fp32", "cv2", "arena") if runs.get(k)]
    labels = {"main": "ORT INT8", "fp32": "ORT FP32", "cv2": f"OpenCV {res.get('cv2_precision', '')}".strip(), "arena": f"ORT INT8 arena {'off' if res.get('arena', {}).get('flight_uses') else 'on'}"}
    fig, ax = plt.subplots(figsize=(8, 3 + 0.3 * len(variants)))
    colors = plt.get_cmap("tab10")
    for i, (_, run) in enumerate(variants):
        left = 0.0
        for j, s in enumerate(STAGES):
            v = stage_p50(run)[s]
            ax.barh(i, v, left=left, color=colors(j), label=s if i == 0 else None)
            left += v
    ax.set_yticks(range(len(variants)), [labels[k] for k, _ in variants])
    ax.set_xlabel("p50 ms per frame, by stage")
    ax.legend(ncol=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "stages.png", dpi=100)
    plt.close(fig)

    sc = res["scaling"]
    if sc:
        fig, ax = plt.subplots(figsize=(7, 4))
        px = np.array([s["pixels"] for s in sc]) / 1e6
        ax.plot(px, [s["latency_ms_p50"] for s in sc], "o-", label="latency p50 (ms)")
        ax.plot(px, px * sc[-1]["latency_ms_p50"] / px[-1], ":", color="gray", label="linear through the largest")
        ax.set_xlabel("frame size (Mpixel)")
        ax.set_ylabel("ms")
        ax2 = ax.twinx()
        ax2.plot(px, [s["peak_rss_mib"] for s in sc], "s--", color="#cc6677", label="peak RSS (MiB)")
        ax2.set_ylabel("MiB")
        ax2.set_ylim(0, max(s["peak_rss_mib"] for s in sc) * 1.3)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper left")
        fig.tight_layout()
        fig.savefig(out / "scaling.png", dpi=100)
        plt.close(fig)
