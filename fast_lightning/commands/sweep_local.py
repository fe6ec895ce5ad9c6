"""`make sweep-local SWEEP=<yaml> TRIALS=n [CLASS DATA PROFILE ARGS]`: a W&B sweep YAML without a server.

The same file drives `make sweep` (W&B agent) and this command, so a search tried locally can be moved to
a server unchanged. Proposals come from the `sweeps` package (W&B's open-source random / grid / bayes
search); each trial is an ordinary run started with the YAML's `command` in a subprocess, so a crashing
trial is recorded as failed and the sweep goes on. The metric is read back from the trial's
metrics.json (nested sections flattened as "section/key", e.g. val/pixel_ap), the file every training
command writes; W&B logs stay offline unless WANDB_MODE says otherwise.

Everything the sweep needs is validated before the first trial starts (``sweep_file.load_sweep``: the YAML's
structure, and every swept value as a config override), so a typo costs seconds, not a trial. This module:
proposing and running trials, and the summary.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fast_lightning import tables
from fast_lightning.errors import UserError
from fast_lightning.commands.arguments import pop_options
from fast_lightning.commands.sweep_file import (
    ARGS_MACRO,
    ENVVAR_MACRO,
    SweepSpec,
    sweep_error,
    import_sweeps,
    load_sweep,
    render_value,
    trial_env,
)
from fast_lightning.runs import atomic_write_text

OPTIONS = {"sweep": "", "trials": 0, "search_seed": 0, "report_root": "reports/sweeps", "seeds": 1}


# ---- trials ---------------------------------------------------------------------------------------------------
def expand_command(config: dict, args: list[str], interpreter: str = sys.executable) -> list[str]:
    """The YAML's command with W&B's macros filled in as the agent would (interpreter: this venv's python)."""
    out: list[str] = []
    for chunk in map(str, config["command"]):
        if chunk == ARGS_MACRO:
            out.extend(args)
        elif chunk == "${env}":
            continue  # /usr/bin/env only resolves the next word on PATH; the child env's PATH does that
        elif chunk == "${interpreter}":
            out.append(interpreter)
        elif chunk == "${program}":
            out.append(str(config["program"]))
        else:
            out.append(ENVVAR_MACRO.sub(lambda m: os.environ.get(m.group(1), m.group(1)), chunk))
    return out


def run_streaming(cmd: list[str], env: dict, log_path: Path) -> int:
    """Run cmd, echo its output live and keep a copy in log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                log.write(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait(timeout=30)
            raise
        return proc.wait()


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}/"))
    elif prefix:
        out[prefix[:-1]] = obj
    return out


def find_metrics(run_root: Path, run_id: str) -> Path | None:
    """<run_root>/<kind>/<class>/<run_id>/metrics.json; the newest if several kinds used the id."""
    hits = [p for p in Path(run_root).glob(f"*/*/{run_id}/metrics.json") if p.is_file()]
    return max(hits, key=lambda p: p.stat().st_mtime) if hits else None


def find_run_dir(run_root: Path, run_id: str) -> Path | None:
    """A trial's run directory even when it failed before writing metrics.json."""
    hits = [p for p in Path(run_root).glob(f"*/*/{run_id}") if p.is_dir()]
    return max(hits, key=lambda p: p.stat().st_mtime) if hits else None


def read_metric(path: Path | None, name: str) -> float | None:
    if path is None:
        return None
    try:
        value = flatten(json.loads(path.read_text())).get(name)
    except (OSError, ValueError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


@dataclass
class Trial:
    number: int
    run_id: str
    params: dict[str, Any]
    status: str = "pending"            # finished | failed | no-metric
    metric: float | None = None
    returncode: int | None = None
    seconds: float = 0.0
    run_dir: str = ""
    log: str = ""
    seed_values: list = field(default_factory=list)  # the metric of each seed (SEEDS=k)


def _sweep_run(spec: SweepSpec, trial: Trial, config: dict):
    sweeps = import_sweeps()
    RunState, SweepRun = sweeps.RunState, sweeps.SweepRun
    ok = trial.status == "finished"
    metrics = {spec.metric: trial.metric} if ok else {}
    return SweepRun(name=trial.run_id, config=config, state=RunState.finished if ok else RunState.failed,
                    summary_metrics=metrics, history=[metrics] if ok else [])


def propose(spec: SweepSpec, history: list) -> tuple[dict | None, str]:
    """The next parameter set (sweeps' config format) or None when a grid is exhausted."""
    import warnings

    sweeps = import_sweeps()
    with warnings.catch_warnings():  # the bayes search's GP fit warns about length scales on few points
        warnings.simplefilter("ignore")
        try:
            run = sweeps.next_run(spec.config, history, validate=True)
            note = ""
        except Exception as exc:  # bayes with no usable metric yet (all trials failed): fall back to random
            if spec.method != "bayes":
                raise sweep_error(spec.path, f"the {spec.method} search cannot propose a trial: {exc}") from exc
            run = sweeps.next_run(dict(spec.config, method="random"), history, validate=True)
            note = f"bayes could not propose ({type(exc).__name__}: {exc}); random proposal instead"
    if run is None:
        return None, note
    # numpy scalars -> python values (str() of them is what W&B's agent would pass, too)
    return {k: {"value": getattr(v["value"], "item", lambda: v["value"])()} for k, v in run.config.items()}, note


# ---- summary ---------------------------------------------------------------------------------------------------
def sort_trials(trials: list[Trial], goal: str) -> list[Trial]:
    """Trials with a metric first, best first; then the rest in trial order."""
    scored = [t for t in trials if t.metric is not None]
    rest = [t for t in trials if t.metric is None]
    scored.sort(key=lambda t: (t.metric if goal == "minimize" else -t.metric, t.number))
    return scored + sorted(rest, key=lambda t: t.number)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def summary_rows(spec: SweepSpec, trials: list[Trial], full: bool = False) -> tuple[list[str], list[list[str]]]:
    """Sorted table rows; ``full``: exact values plus exit code and log path (the CSV)."""
    fmt = (lambda v: "" if v is None else str(v)) if full else _fmt  # noqa: E731
    multi = any(len(t.seed_values) > 1 for t in trials)  # SEEDS=k: the metric is the mean; show each seed
    header = ["rank", "trial", "status", spec.metric + (" (mean)" if multi else ""),
              *(["per seed"] if multi else []), *spec.swept, "seconds", "run_dir"]
    header += ["exit_code", "log"] if full else []
    rows = []
    for rank, t in enumerate(sort_trials(trials, spec.goal), 1):
        per_seed = [" ".join(fmt(v) or "-" for v in t.seed_values)] if multi else []
        row = [str(rank) if t.metric is not None else "-", str(t.number), t.status, fmt(t.metric), *per_seed,
               *[fmt(t.params.get(k)) for k in spec.swept], f"{t.seconds:.1f}", t.run_dir]
        rows.append(row + ([fmt(t.returncode), t.log] if full else []))
    return header, rows


def write_summary(spec: SweepSpec, trials: list[Trial], report_dir: Path, command: list[str],
                  started: str, finished: bool) -> tuple[Path, Path]:
    buf = io.StringIO()
    csv_header, csv_rows = summary_rows(spec, trials, full=True)
    csv.writer(buf, lineterminator="\n").writerows([csv_header, *csv_rows])
    csv_path = atomic_write_text(report_dir / "summary.csv", buf.getvalue())
    header, rows = summary_rows(spec, trials)
    fixed = ", ".join(f"`{k}={render_value(v)}`" for k, v in spec.fixed.items()) or "none"
    done = sum(t.status == "finished" for t in trials)
    md = "\n".join([
        f"# Sweep `{spec.name}` ({'complete' if finished else 'in progress / interrupted'})",
        "",
        f"- sweep file: `{spec.path}`",
        f"- method: {spec.method}; metric: `{spec.metric}` ({spec.goal}); trials: {len(trials)} "
        f"({done} finished, {len(trials) - done} without a metric)",
        f"- fixed parameters: {fixed}",
        f"- trial command: `{' '.join(command)}`",
        f"- started {started}; metric read from each run's metrics.json (sections flattened as section/key); "
        "per-trial output in `trials/<n>.log`",
        "",
        "![metric per trial](trials.png)",
        "",
        tables.markdown_table(header, rows),
        "",
    ])
    md_path = atomic_write_text(report_dir / "summary.md", md)
    trial_plot(spec, trials, report_dir / "trials.png")
    return csv_path, md_path


def trial_plot(spec: SweepSpec, trials: list[Trial], path: Path) -> Path | None:
    """The metric per trial in run order, the best trial marked (what summary.md ranks first)."""
    scored = [t for t in trials if t.metric is not None]
    if not scored:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fast_lightning.evaluation.plots import save_figure

    best = sort_trials(trials, spec.goal)[0]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.4 * len(trials) + 2), 3.2))
    ax.plot([t.number for t in scored], [t.metric for t in scored], "o-", color="tab:blue", label="trial")
    for t in scored:
        if len(t.seed_values) > 1:
            ax.scatter([t.number] * len(t.seed_values), t.seed_values, s=10, color="tab:gray", zorder=1)
    ax.scatter([best.number], [best.metric], s=160, marker="*", color="tab:red", zorder=3,
               label=f"best: trial {best.number}")
    ax.set_xticks([t.number for t in trials])
    ax.set_xlabel("trial" + (" (dots: each seed, line: their mean)" if any(len(t.seed_values) > 1 for t in scored)
                             else ""))
    ax.set_ylabel(spec.metric)
    ax.set_title(f"sweep {spec.name}: {spec.metric} ({spec.goal})")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


# ---- command ---------------------------------------------------------------------------------------------------
def main(args: list[str]) -> int:
    opts, overrides = pop_options(args, OPTIONS)
    spec = load_sweep(opts["sweep"], overrides)
    run_root = Path(str(spec.base.run_root))
    trials_wanted = int(opts["trials"])
    seeds = int(opts["seeds"])
    if seeds < 1:
        raise UserError(f"SEEDS={opts['seeds']}: the number of seeds per trial must be >= 1")
    if seeds > 1 and "seed" in spec.config["parameters"]:
        raise UserError(f"SEEDS={seeds} runs each trial on seed=0..{seeds - 1}: remove `seed` from the sweep "
                        "parameters (or the ARGS) or use SEEDS=1")
    grid = spec.grid_size()
    if trials_wanted <= 0:
        if grid is None:
            raise UserError(f"method {spec.method} needs a trial count: pass TRIALS=<n> (trials=<n>)")
        trials_wanted = grid

    import random

    import numpy as np

    random.seed(int(opts["search_seed"]))  # the sweeps package draws from the global generators
    np.random.seed(int(opts["search_seed"]))

    stamp = time.strftime("%Y%m%d-%H%M%S")
    report_dir = Path(opts["report_root"]) / f"{spec.name}-{stamp}"
    suffix = 1
    while report_dir.exists():
        suffix += 1
        report_dir = Path(opts["report_root"]) / f"{spec.name}-{stamp}-{suffix}"
    env = trial_env()
    template = expand_command(spec.config, [ARGS_MACRO])
    print(f"[sweep-local] {spec.path}: method {spec.method}, metric {spec.metric} ({spec.goal}), "
          f"{trials_wanted} trial(s){f' of a {grid}-point grid' if grid else ''}"
          f"{f' x {seeds} seeds (mean ranked; {seeds}x the runs)' if seeds > 1 else ''}; W&B mode {env['WANDB_MODE']}; "
          f"report -> {report_dir}", flush=True)

    trials: list[Trial] = []
    history: list = []
    try:
        for number in range(1, trials_wanted + 1):
            config, note = propose(spec, history)
            if config is None:
                print(f"[sweep-local] grid exhausted after {len(trials)} trial(s)", flush=True)
                break
            if note:
                print(f"[sweep-local] {note}", flush=True)
            params = {k: v["value"] for k, v in config.items()}
            run_id = f"sweep-{report_dir.name}-{number:02d}"  # unique like the report dir
            shown = ", ".join(f"{k}={_fmt(params[k])}" for k, v in params.items() if k in spec.swept)
            print(f"\n[sweep-local] trial {number}/{trials_wanted}: {shown}", flush=True)
            trial = Trial(number=number, run_id=run_id, params=params, log=f"trials/{number:02d}.log")
            start = time.time()
            values, results = [], []
            for k in range(seeds):  # SEEDS=k: the same parameters on seed=0..k-1, the mean is the trial's metric
                rid = run_id if seeds == 1 else f"{run_id}-s{k}"
                trial_args = [f"{key}={render_value(v)}" for key, v in params.items()]
                trial_args += [f"run_id={rid}"] + ([] if "run_root" in params else [f"run_root={run_root}"])
                trial_args += [f"seed={k}"] if seeds > 1 else []
                cmd = expand_command(spec.config, trial_args)
                print(f"[sweep-local] $ {' '.join(cmd)}", flush=True)
                log_name = trial.log if seeds == 1 else f"trials/{number:02d}-s{k}.log"
                code = run_streaming(cmd, env, report_dir / log_name)
                metrics_path = find_metrics(run_root, rid)
                trial.run_dir = trial.run_dir or str(metrics_path.parent if metrics_path else
                                                     find_run_dir(run_root, rid) or "")
                value = read_metric(metrics_path, spec.metric)
                trial.returncode = code if code else trial.returncode or code
                values.append(value if code == 0 else None)
                results.append(f"{spec.metric}={_fmt(value)}" if code == 0 and value is not None else (
                    f"exit code {code}" if code else
                    f"no finite {spec.metric} in {metrics_path or f'{run_root}/*/*/{rid}/metrics.json'}"))
            trial.seconds = time.time() - start
            trial.seed_values = values
            if trial.returncode:
                trial.status, trial.metric = "failed", None
            elif any(v is None for v in values):
                trial.status = "no-metric"
            else:
                trial.status, trial.metric = "finished", sum(values) / len(values)
            result = "; ".join(results) + (f"; mean {_fmt(trial.metric)}" if seeds > 1 and trial.metric is not None else "")
            print(f"[sweep-local] trial {number} {trial.status}: {result} ({trial.seconds:.0f} s)", flush=True)
            trials.append(trial)
            history.append(_sweep_run(spec, trial, config))
            write_summary(spec, trials, report_dir, template, stamp, finished=False)
    except KeyboardInterrupt:
        if trials:
            write_summary(spec, trials, report_dir, template, stamp, finished=False)
            print(f"\n[sweep-local] interrupted; summary of {len(trials)} trial(s): {report_dir / 'summary.md'}",
                  file=sys.stderr)
        raise

    if not trials:
        raise UserError(f"sweep {spec.path} proposed no trial")
    csv_path, md_path = write_summary(spec, trials, report_dir, template, stamp, finished=True)
    header, rows = summary_rows(spec, trials)
    print(f"\n[sweep-local] {spec.name}: {len(trials)} trial(s), sorted by {spec.metric} ({spec.goal})")
    print(tables.text_table(header, rows))
    print(f"summary: {md_path}  (csv: {csv_path})")
    if not any(t.status == "finished" for t in trials):
        print(f"error: no trial produced {spec.metric}; see {report_dir / 'trials'}", file=sys.stderr)
        return 1
    return 0
