"""`make sweep-local SWEEP=<yaml> TRIALS=n [CLASS DATA PROFILE ARGS]`: a W&B sweep YAML without a server.

The same file drives `make sweep` (W&B agent) and this command, so a search tried locally can be moved to
a server unchanged. Proposals come from the `sweeps` package (W&B's open-source random / grid / bayes
search); each trial is an ordinary run started with the YAML's `command` in a subprocess, so a crashing
trial is recorded as failed and the sweep goes on. The metric is read back from the trial's
metrics.json (nested sections flattened as "section/key", e.g. val/pixel_ap), the file every training
command writes; W&B logs stay offline unless WANDB_MODE says otherwise.

Everything the sweep needs is validated before the first trial starts: the YAML's structure, and every
swept value as a config override (struct mode + type check), so a typo costs seconds, not a trial.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fast_lightning import tables
from fast_lightning.cli import UserError
from fast_lightning.commands.common import pop_options
from fast_lightning.config import PROJECT_ROOT, ConfigError, load_config
from fast_lightning.runs import atomic_write_text

ARGS_MACRO = "${args_no_hyphens}"
KNOWN_MACROS = {"${env}", "${interpreter}", "${program}", ARGS_MACRO}
ENVVAR_MACRO = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")  # W&B's agent substitutes these from the environment
METHODS = ("grid", "random", "bayes")
RESERVED = ("run_id", "resume")  # sweep-local names each trial's run; resuming has no meaning for a new trial
OPTIONS = {"sweep": "", "trials": 0, "search_seed": 0, "report_root": "reports/sweeps"}


def import_sweeps():
    """The `sweeps` package, imported without its pydantic-v1 config deprecation warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import sweeps
        import sweeps.params  # noqa: F401  (HyperParameter, used for validation)
    return sweeps


# ---- the sweep file ------------------------------------------------------------------------------------------
def render_value(value: Any) -> str:
    """A parameter value as W&B's agent writes it into `key=value` (str()), except None -> null."""
    return "null" if value is None else str(value)


def _candidate_values(name: str, spec: dict) -> list:
    """Values that represent a parameter's range for validation: every category, both bounds."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    hp = import_sweeps().params.HyperParameter(name, spec)
    return [hp.ppf(0.0), hp.ppf(0.5), hp.ppf(1.0)]


@dataclass
class SweepSpec:
    path: Path
    config: dict                       # the sweep in W&B's format, user overrides merged as fixed parameters
    fixed: dict[str, Any] = field(default_factory=dict)   # parameters with a single value
    swept: list[str] = field(default_factory=list)       # parameters that vary, in file order
    base: Any = None                                     # resolved config of the fixed parameters

    @property
    def name(self) -> str:
        raw = str(self.config.get("name") or self.path.stem)
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).strip("-") or "sweep"

    @property
    def metric(self) -> str:
        return str(self.config["metric"]["name"])

    @property
    def goal(self) -> str:
        return str(self.config["metric"].get("goal", "minimize"))

    @property
    def method(self) -> str:
        return str(self.config["method"])

    def grid_size(self) -> int | None:
        if self.method != "grid":
            return None
        size = 1
        for spec in self.config["parameters"].values():
            if "values" in spec:
                size *= len(spec["values"])
            elif "min" in spec and "max" in spec and isinstance(spec["min"], int):
                size *= int(spec["max"]) - int(spec["min"]) + 1
        return size


def _fail(path: Path, msg: str) -> UserError:
    return UserError(f"sweep file {path}: {msg}")


def parse_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"argument {item!r} is not key=value")
    return key, value


def load_sweep(path: str | os.PathLike, overrides: list[str] = (), validate_keys: bool = True) -> SweepSpec:
    """Read, check and complete a sweep YAML; ``overrides`` (key=value) become fixed parameters.

    Fixed values stay the user's strings, so a trial receives exactly what was typed (`null`, `1e-3`, ...).
    """
    import yaml

    shipped = ", ".join(sorted(p.name for p in (PROJECT_ROOT / "experiments" / "sweeps").glob("*.yaml")))
    if not str(path):
        raise UserError(f"no sweep file given: pass SWEEP=experiments/sweeps/<name>.yaml (shipped: {shipped})")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file not found: {path}; pass SWEEP=experiments/sweeps/<name>.yaml (shipped: {shipped})")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise _fail(path, f"not valid YAML: {exc}") from exc
    if not isinstance(config, dict):
        raise _fail(path, "expected a mapping with command, method, metric and parameters")
    missing = [k for k in ("command", "method", "metric", "parameters") if k not in config]
    if missing:
        raise _fail(path, f"missing {', '.join(missing)} (W&B sweep format: command with {ARGS_MACRO}, "
                          "method grid|random|bayes, metric {name, goal}, parameters)")
    if config["method"] not in METHODS:
        raise _fail(path, f"method must be one of {', '.join(METHODS)}, got {config['method']!r}")
    metric = config["metric"]
    if not isinstance(metric, dict) or not metric.get("name"):
        raise _fail(path, "metric needs a name (e.g. val/pixel_ap) and a goal (minimize | maximize)")
    if metric.get("goal", "minimize") not in ("minimize", "maximize"):
        raise _fail(path, f"metric.goal must be minimize or maximize, got {metric.get('goal')!r}")
    command = config["command"]
    if not isinstance(command, list) or not all(isinstance(c, (str, int, float)) for c in command):
        raise _fail(path, "command must be a list of strings")
    if ARGS_MACRO not in command:
        raise _fail(path, f"command must contain {ARGS_MACRO} (config overrides are key=value, no hyphens)")
    for chunk in map(str, command):
        for macro in re.findall(r"\$\{[^}]*\}", chunk):
            if macro not in KNOWN_MACROS and not ENVVAR_MACRO.fullmatch(macro):
                hint = " (gives --key=value, which the config rejects)" if macro == "${args}" else ""
                raise _fail(path, f"command uses {macro}{hint}; use {ARGS_MACRO}")
    if "${program}" in command and not config.get("program"):
        raise _fail(path, "command uses ${program} but the file sets no program")
    params = config["parameters"]
    if not isinstance(params, dict) or not params:
        raise _fail(path, "parameters must be a non-empty mapping of config keys")
    for name, spec in params.items():
        if not isinstance(spec, dict):
            raise _fail(path, f"parameter {name!r} must be a mapping (value:, values: or min:/max:)")
        if "parameters" in spec:
            raise _fail(path, f"parameter {name!r} is nested; use flat dotted config keys (e.g. segmentation.lr)")
        if name in RESERVED:
            raise _fail(path, f"parameter {name!r} is set per trial by the sweep driver; remove it")

    for item in overrides:
        key, value = parse_override(item)
        if key in RESERVED:
            raise UserError(f"{key}= cannot be given to a sweep: every trial is a new run named by the sweep")
        params[key] = {"value": value}

    try:
        import_sweeps().SweepConfig(config)  # W&B's JSON schema: distributions, bounds, value lists
    except Exception as exc:  # jsonschema.ValidationError and friends
        raise _fail(path, f"not a valid W&B sweep: {getattr(exc, 'message', exc)}") from exc

    spec = SweepSpec(path=path, config=config)
    for name, p in params.items():
        if "value" in p:
            spec.fixed[name] = p["value"]
        else:
            spec.swept.append(name)
    if not spec.swept:
        raise _fail(path, "no parameter varies (every parameter has a single value)")
    if validate_keys:
        validate_parameters(spec)
    return spec


def semantic_check(cfg, keys) -> None:
    """Checks beyond types for the groups a sweep touches (sampler step counts, arch vs resolution);
    ValueError names the key. Cheap, and only imports what the swept keys need."""
    keys = list(keys)
    if any(k.startswith("sampling.") for k in keys):
        from fast_lightning.sampling import build_sampler

        build_sampler(cfg.sampling)
    if any(k.startswith(("segmentation.arch", "segmentation.encoder", "data.resolution")) for k in keys):
        from fast_lightning.segmentation.models import check_resolution

        check_resolution(int(cfg.data.resolution), str(cfg.segmentation.arch), str(cfg.segmentation.encoder))


def validate_parameters(spec: SweepSpec):
    """Every parameter name must be a config key and every swept value must pass its type check (and the
    semantic checks of its group), each value tried with the fixed parameters, before any trial runs."""
    fixed = [f"{k}={render_value(v)}" for k, v in spec.fixed.items()]
    keys = list(spec.config["parameters"])
    try:
        cfg = load_config(fixed)
        semantic_check(cfg, spec.fixed)
    except (ConfigError, ValueError) as exc:
        raise _fail(spec.path, f"fixed parameters / overrides: {exc}") from exc
    for name in spec.swept:
        for value in _candidate_values(name, spec.config["parameters"][name]):
            try:
                semantic_check(load_config(fixed + [f"{name}={render_value(value)}"]), keys)
            except (ConfigError, ValueError) as exc:
                raise _fail(spec.path, f"parameter {name} = {value!r}: {exc}") from exc
    if not cfg.class_name:
        raise UserError(f"sweep {spec.path}: no class given; pass CLASS=<name> DATA=<root> (make) or "
                        "class_name=... data_root=..., or fix them in the YAML (class_name: {value: ...})")
    spec.base = cfg
    return cfg


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
                raise _fail(spec.path, f"the {spec.method} search cannot propose a trial: {exc}") from exc
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
