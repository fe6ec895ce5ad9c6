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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fast_lightning import tables
from fast_lightning.cli import UserError
from fast_lightning.commands.common import pop_options
from fast_lightning.commands.sweep_file import (
    ARGS_MACRO,
    ENVVAR_MACRO,
    SweepSpec,
    sweep_error,
    import_sweeps,
    load_sweep,
    render_value,
)
from fast_lightning.config import PROJECT_ROOT
from fast_lightning.runs import atomic_write_text

OPTIONS = {"sweep": "", "trials": 0, "search_seed": 0, "report_root": "reports/sweeps"}


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


def trial_env() -> dict[str, str]:
    """Offline W&B unless the user chose a mode; this venv and the project importable first."""
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "offline")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(PROJECT_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


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
    header = ["rank", "trial", "status", spec.metric, *spec.swept, "seconds", "run_dir"]
    header += ["exit_code", "log"] if full else []
    rows = []
    for rank, t in enumerate(sort_trials(trials, spec.goal), 1):
        row = [str(rank) if t.metric is not None else "-", str(t.number), t.status, fmt(t.metric),
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
        tables.markdown_table(header, rows),
        "",
    ])
    md_path = atomic_write_text(report_dir / "summary.md", md)
    return csv_path, md_path


# ---- command ---------------------------------------------------------------------------------------------------
def main(args: list[str]) -> int:
    opts, overrides = pop_options(args, OPTIONS)
    spec = load_sweep(opts["sweep"], overrides)
    run_root = Path(str(spec.base.run_root))
    trials_wanted = int(opts["trials"])
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
          f"{trials_wanted} trial(s){f' of a {grid}-point grid' if grid else ''}; W&B mode {env['WANDB_MODE']}; "
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
            trial_args = [f"{k}={render_value(v)}" for k, v in params.items()]
            trial_args += [f"run_id={run_id}"] + ([] if "run_root" in params else [f"run_root={run_root}"])
            cmd = expand_command(spec.config, trial_args)
            shown = ", ".join(f"{k}={_fmt(params[k])}" for k in spec.swept)
            print(f"\n[sweep-local] trial {number}/{trials_wanted}: {shown}\n[sweep-local] $ {' '.join(cmd)}",
                  flush=True)
            trial = Trial(number=number, run_id=run_id, params=params, log=f"trials/{number:02d}.log")
            start = time.time()
            trial.returncode = run_streaming(cmd, env, report_dir / trial.log)
            trial.seconds = time.time() - start
            metrics_path = find_metrics(run_root, run_id)
            trial.run_dir = str(metrics_path.parent if metrics_path else find_run_dir(run_root, run_id) or "")
            trial.metric = read_metric(metrics_path, spec.metric)
            if trial.returncode != 0:
                trial.status, trial.metric = "failed", None
            elif trial.metric is None:
                trial.status = "no-metric"
            else:
                trial.status = "finished"
            result = f"{spec.metric}={_fmt(trial.metric)}" if trial.metric is not None else (
                f"exit code {trial.returncode}" if trial.returncode else
                f"no finite {spec.metric} in {metrics_path or f'{run_root}/*/*/{run_id}/metrics.json'}")
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
