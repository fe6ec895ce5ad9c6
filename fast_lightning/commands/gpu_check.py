"""`make gpu-check`: everything worth knowing from one short GPU loan, in <= 9 minutes, under one folder.

Why: a GPU comes to this team rarely and with ~15 minutes of device time in all (start-up included), so
the figures it should produce are planned here, in priority order, each stage a subprocess with its own
time limit out of one budget (``budget_s``): a stage that runs over is stopped and recorded, the next one
still runs, and ``gpu_check.json`` says what finished.

1. ``bench-train profile=gpu``: steps/s, FLOPs, share of the GEMM peak, eager vs channels_last vs compile.
2. ``benchmark profile=gpu-quick``: tire + magnetic tile; fast, draem, cutpaste, real_third; 1 seed
   (the gpu-quick profile: longer diffusion and segmenter budgets than the cpu profile, sized to fit).
3. ``bench-sampling`` on the first class's diffusion model from stage 2 (AIAS vs DDIM vs DDPM).

Options (key=value): out=reports/gpu_check, profile=gpu-quick (smoke: the same plumbing in seconds on
CPU), budget_s=540, classes=<benchmark default>, synths=fast,draem,cutpaste,real_third. Any other
key=value is passed to every stage as a config override.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fast_lightning.commands.arguments import DEFAULT_CLASSES, parse_classes, pop_options
from fast_lightning.errors import UserError
from fast_lightning.runs import atomic_write_json

SYNTHS = "fast,draem,cutpaste,real_third"
SAMPLING_RESERVE_S = 60  # kept back from the benchmark for bench-sampling
BENCH_TRAIN_MAX_S = 150


def stages(profile: str, out: Path, classes: str, synths: str, rest: list[str]) -> list[tuple[str, list[str]]]:
    """(name, fast_lightning command line) in run order."""
    first, root = parse_classes(classes)[0]
    smoke = profile == "smoke"
    # smoke: the same commands at test size (bench-train's sampling split has its own test)
    train = ["bench-train", f"profile={'smoke' if smoke else 'gpu'}", f"out={out / 'bench_train.json'}"]
    train += ["steps=1", "warmup=0", "variants=none", "sampling=false", "gemm_n=256"] if smoke else []
    runs = out / "runs"
    return [
        ("bench-train", train + rest),
        ("benchmark", ["benchmark", f"profile={profile}", f"classes={classes}", f"synths={synths}", "seeds=1",
                       f"out={out / 'benchmark'}", f"run_root={runs}",
                       *(["diffusion.num_train_timesteps=50"] if smoke else []), *rest]),  # smoke: DDPM-50
        ("bench-sampling", ["bench-sampling", f"profile={profile}", f"class_name={first}",
                            *([f"data_root={root}"] if root else []), f"run_root={runs}",
                            f"out={out / 'bench_sampling.json'}", *(["repeats=1", "batch=1"] if smoke else []), *rest]),
    ]


def _limit(name: str, left: float) -> float:
    if name == "bench-train":
        return min(BENCH_TRAIN_MAX_S, left - SAMPLING_RESERVE_S)
    if name == "benchmark":
        return left - SAMPLING_RESERVE_S
    return left


def main(args: list[str]) -> int:
    opts, rest = pop_options(args, {"out": "reports/gpu_check", "profile": "gpu-quick", "budget_s": 540,
                                    "classes": DEFAULT_CLASSES, "synths": SYNTHS})
    profile, budget = str(opts["profile"]), float(opts["budget_s"])
    if profile not in ("gpu-quick", "smoke"):
        raise UserError(f"gpu-check runs profile=gpu-quick (or smoke for a CPU plumbing check), got {profile!r}")
    if budget < 3 * SAMPLING_RESERVE_S:
        raise UserError(f"gpu-check needs budget_s >= {3 * SAMPLING_RESERVE_S} seconds, got {budget:g}")
    out = Path(str(opts["out"]))
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "offline")
    package_root = str(Path(__file__).resolve().parents[2])  # the stages import this checkout from any cwd
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    start = time.monotonic()
    results = []
    for name, cmd in stages(profile, out, str(opts["classes"]), str(opts["synths"]), rest):
        left = budget - (time.monotonic() - start)
        limit = _limit(name, left)
        log = out / "logs" / f"{name}.log"
        entry = {"stage": name, "command": "python -m fast_lightning " + " ".join(cmd), "log": str(log),
                 "limit_s": round(limit, 1)}
        if limit < 5:
            entry.update(rc=None, seconds=0.0, timed_out=True, note="no budget left")
            results.append(entry)
            continue
        t0 = time.monotonic()
        print(f"[gpu-check] {name} (limit {limit:.0f} s): {entry['command']}", flush=True)
        with open(log, "w") as fh:
            try:
                rc = subprocess.run([sys.executable, "-m", "fast_lightning", *cmd], stdout=fh,
                                    stderr=subprocess.STDOUT, env=env, timeout=limit).returncode
                timed_out = False
            except subprocess.TimeoutExpired:
                rc, timed_out = None, True
        entry.update(rc=rc, seconds=round(time.monotonic() - t0, 1), timed_out=timed_out)
        print(f"[gpu-check] {name}: {'timed out' if timed_out else f'exit {rc}'} after {entry['seconds']} s "
              f"(log {log})", flush=True)
        results.append(entry)
    import torch

    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "profile": profile, "budget_s": budget, "seconds": round(time.monotonic() - start, 1),
              "stages": results, "outputs": sorted(str(p.relative_to(out)) for p in out.rglob("*.json")
                                                   if "runs" not in p.relative_to(out).parts)}
    atomic_write_json(out / "gpu_check.json", report)
    failed = [r["stage"] for r in results if r["rc"] != 0]
    print(json.dumps({r["stage"]: ("timed out" if r["timed_out"] else r["rc"]) for r in results}))
    print(f"gpu-check: {out / 'gpu_check.json'} ({report['seconds']} s of {budget:g})")
    if failed:
        raise UserError(f"gpu-check: {', '.join(failed)} did not finish cleanly; see the logs in {out / 'logs'}")
    return 0
