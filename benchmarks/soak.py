"""Long memory soak: `python -m benchmarks.soak --frames 20000`.

Runs the benchmark profile's frames (its typical frames and its worst case, cycled) through
FramePipeline for many frames in two child processes side by side, one per memory variant:

- ``off``: onnxruntime's memory arena off, strip arrays made per strip (the flight's default);
- ``arena``: the arena on and the strip arrays reused (``flight.onnx_memory_arena = true``).

Each child appends its resident memory every ``--every`` frames to ``<out>/<variant>.jsonl`` as it
goes; at the end ``<out>/soak.json`` summarises each variant (first, last and peak resident
memory, and the growth over the second half, where a slow leak shows) and ``<out>/soak.png``
plots resident memory against frames. Both children share the given cores: this measures memory,
not speed (the per-frame time in the log is only a sanity check).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.frames import REPO, calibration_file, frame_set
from benchmarks.harness import available_models
from benchmarks.profiles import load_profile
from flight.config import load_scenario

VARIANTS = {"off": {"arena": False, "reuse": False}, "arena": {"arena": True, "reuse": True}}


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written
            break
    return rows


def summary(rows: list[dict]) -> dict:
    """First and last samples, the peak, and the growth of the last half of the run (MiB)."""
    if not rows:
        return {"samples": 0}
    half = rows[len(rows) // 2]
    return {"samples": len(rows), "frames": rows[-1]["frame"] + 1, "wall_s": rows[-1]["s"],
            "rss_first_mib": round(rows[0]["rss"], 1), "rss_last_mib": round(rows[-1]["rss"], 1),
            "rss_max_mib": round(max(r["rss"] for r in rows), 1), "hwm_mib": round(rows[-1]["hwm"], 1),
            "second_half_growth_mib": round(rows[-1]["rss"] - half["rss"], 2),
            "mean_frame_ms": rows[-1]["mean_frame_ms"]}


def plot(logs: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for name, rows in logs.items():
        if rows:
            ax.plot([r["frame"] for r in rows], [r["rss"] for r in rows], label=f"{name}: resident")
            ax.plot([r["frame"] for r in rows], [r["hwm"] for r in rows], ls=":", label=f"{name}: peak so far")
    ax.set_xlabel("frames processed")
    ax.set_ylabel("MiB")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--smoke", action="store_true", help="the profile's smoke frames: checks the soak works, not a measurement")
    ap.add_argument("--frames", type=int, default=20000, help="frames per variant")
    ap.add_argument("--every", type=int, default=100, help="frames between memory samples")
    ap.add_argument("--cores", default="1", help="cores the children share, e.g. 1 or 0,1")
    ap.add_argument("--variants", default="off,arena", help=f"among {sorted(VARIANTS)}")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "soak")
    args = ap.parse_args(argv)
    try:  # an unknown profile or a bad budgets.toml is a usage error, not a traceback
        p = load_profile(args.profile, args.smoke)
    except (ValueError, OSError) as exc:
        ap.error(str(exc))
    variants = args.variants.split(",")
    # a variant named twice started two children on one log and lost track of the first (left running)
    if set(variants) - set(VARIANTS) or len(set(variants)) != len(variants) or args.frames < 1 or not 1 <= args.every <= args.frames:
        ap.error(f"--variants: distinct names among {sorted(VARIANTS)}; --frames >= 1, --every in 1..--frames (else no memory sample)")
    try:
        wanted = [int(c) for c in args.cores.split(",")]
    except ValueError:
        ap.error(f"--cores must be comma-separated core numbers, got {args.cores!r}")
    cores = [c for c in wanted if c in os.sched_getaffinity(0)] or sorted(os.sched_getaffinity(0))
    covers = [(k, {"cloud_cover": cc}) for k, cc in enumerate(p.cloud_cover)]
    worst = len(covers) if p.worst_case else None
    frames = frame_set(p.seed, covers + ([(worst, dict(p.worst_case))] if p.worst_case else []),
                       p.height, p.width, p.strip_rows, worst_case=worst)
    models, _ = available_models(p.scenario)  # the scenario's cascade, as the benchmark runs it
    batch = load_scenario(REPO / p.scenario).flight.batch_tiles
    args.out.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name in variants:
        log = args.out / f"{name}.jsonl"
        log.unlink(missing_ok=True)
        spec = dict(kind="soak", frames=frames, calibration=str(calibration_file(p.height, p.width)),
                    strip_rows=p.strip_rows, scenario=str(REPO / p.scenario), models=models,
                    batch_tiles=batch, threads=p.threads, precision="int8", backend="ort", cores=cores,
                    n=args.frames, every=args.every, log=str(log), out=str(args.out / f"{name}.result.json"),
                    **VARIANTS[name])
        spec_path = args.out / f"{name}.spec.json"
        spec_path.write_text(json.dumps(spec))
        procs[name] = subprocess.Popen([sys.executable, "-m", "benchmarks.child", str(spec_path)], cwd=REPO)
    title = f"{p.height} x {p.width} px, {len(frames)} frames cycled, profile {p.name}"
    try:
        while any(pr.poll() is None for pr in procs.values()):
            time.sleep(1 if args.smoke else 30)
            logs = {n: read_log(args.out / f"{n}.jsonl") for n in variants}
            print(" | ".join(f"{n}: frame {r[-1]['frame']} rss {r[-1]['rss']:.1f} MiB" for n, r in logs.items() if r),
                  file=sys.stderr, flush=True)
    finally:
        for pr in procs.values():
            if pr.poll() is None:
                pr.terminate()
    logs = {n: read_log(args.out / f"{n}.jsonl") for n in variants}
    res = {"profile": p.name, "frames_per_variant": args.frames, "variants": VARIANTS,
           "summary": {n: summary(r) for n, r in logs.items()},
           "exit_codes": {n: pr.returncode for n, pr in procs.items()}}
    (args.out / "soak.json").write_text(json.dumps(res, indent=1))
    plot(logs, args.out / "soak.png", title)
    print(json.dumps(res["summary"], indent=1))
    return 0 if all(pr.returncode == 0 for pr in procs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
