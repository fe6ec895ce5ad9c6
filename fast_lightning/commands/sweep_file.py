"""A sweep file (W&B sweep YAML) read and validated before any trial runs: its structure, every parameter
name as a config key, and every swept value as a config override (struct mode + type check + the semantic
checks of its group), so a typo costs seconds, not a trial. Used by `sweep-local` and `sweep` alike."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fast_lightning.config import EXPERIMENTS_DIR, PROJECT_ROOT, load_config
from fast_lightning.errors import ConfigError, UserError

ARGS_MACRO = "${args_no_hyphens}"
KNOWN_MACROS = {"${env}", "${interpreter}", "${program}", ARGS_MACRO}
ENVVAR_MACRO = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")  # W&B's agent substitutes these from the environment
METHODS = ("grid", "random", "bayes")
RESERVED = ("run_id", "resume")  # sweep-local names each trial's run; resuming has no meaning for a new trial


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


def sweep_error(path: Path, msg: str) -> UserError:
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

    shipped = ", ".join(sorted(p.name for p in (EXPERIMENTS_DIR / "sweeps").glob("*.yaml")))
    if not str(path):
        raise UserError(f"no sweep file given: pass SWEEP=experiments/sweeps/<name>.yaml (shipped: {shipped})")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file not found: {path}; pass SWEEP=experiments/sweeps/<name>.yaml (shipped: {shipped})")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise sweep_error(path, f"not valid YAML: {exc}") from exc
    if not isinstance(config, dict):
        raise sweep_error(path, "expected a mapping with command, method, metric and parameters")
    missing = [k for k in ("command", "method", "metric", "parameters") if k not in config]
    if missing:
        raise sweep_error(path, f"missing {', '.join(missing)} (W&B sweep format: command with {ARGS_MACRO}, "
                          "method grid|random|bayes, metric {name, goal}, parameters)")
    if config["method"] not in METHODS:
        raise sweep_error(path, f"method must be one of {', '.join(METHODS)}, got {config['method']!r}")
    metric = config["metric"]
    if not isinstance(metric, dict) or not metric.get("name"):
        raise sweep_error(path, "metric needs a name (e.g. val/pixel_ap) and a goal (minimize | maximize)")
    if metric.get("goal", "minimize") not in ("minimize", "maximize"):
        raise sweep_error(path, f"metric.goal must be minimize or maximize, got {metric.get('goal')!r}")
    command = config["command"]
    if not isinstance(command, list) or not all(isinstance(c, (str, int, float)) for c in command):
        raise sweep_error(path, "command must be a list of strings")
    if ARGS_MACRO not in command:
        raise sweep_error(path, f"command must contain {ARGS_MACRO} (config overrides are key=value, no hyphens)")
    for chunk in map(str, command):
        for macro in re.findall(r"\$\{[^}]*\}", chunk):
            if macro not in KNOWN_MACROS and not ENVVAR_MACRO.fullmatch(macro):
                hint = " (gives --key=value, which the config rejects)" if macro == "${args}" else ""
                raise sweep_error(path, f"command uses {macro}{hint}; use {ARGS_MACRO}")
    if "${program}" in command and not config.get("program"):
        raise sweep_error(path, "command uses ${program} but the file sets no program")
    params = config["parameters"]
    if not isinstance(params, dict) or not params:
        raise sweep_error(path, "parameters must be a non-empty mapping of config keys")
    for name, spec in params.items():
        if not isinstance(spec, dict):
            raise sweep_error(path, f"parameter {name!r} must be a mapping (value:, values: or min:/max:)")
        if "parameters" in spec:
            raise sweep_error(path, f"parameter {name!r} is nested; use flat dotted config keys "
                                    "(e.g. segmentation.optim.lr)")
        if name in RESERVED:
            raise sweep_error(path, f"parameter {name!r} is set per trial by the sweep driver; remove it")

    for item in overrides:
        key, value = parse_override(item)
        if key in RESERVED:
            raise UserError(f"{key}= cannot be given to a sweep: every trial is a new run named by the sweep")
        params[key] = {"value": value}

    try:
        import_sweeps().SweepConfig(config)  # W&B's JSON schema: distributions, bounds, value lists
    except Exception as exc:  # jsonschema.ValidationError and friends
        raise sweep_error(path, f"not a valid W&B sweep: {getattr(exc, 'message', exc)}") from exc

    spec = SweepSpec(path=path, config=config)
    for name, p in params.items():
        if "value" in p:
            spec.fixed[name] = p["value"]
        else:
            spec.swept.append(name)
    if not spec.swept:
        raise sweep_error(path, "no parameter varies (every parameter has a single value)")
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
    if any(k.startswith(("segmentation.arch", "segmentation.encoder", "data.seg_scale")) for k in keys):
        from fast_lightning.segmentation.models import check_resolution

        check_resolution(int(cfg.data.seg_scale), str(cfg.segmentation.arch), str(cfg.segmentation.encoder))


def validate_parameters(spec: SweepSpec):
    """Every parameter name must be a config key and every swept value must pass its type check (and the
    semantic checks of its group), each value tried with the fixed parameters, before any trial runs."""
    fixed = [f"{k}={render_value(v)}" for k, v in spec.fixed.items()]
    keys = list(spec.config["parameters"])
    try:
        cfg = load_config(fixed)
        semantic_check(cfg, spec.fixed)
    except (ConfigError, ValueError) as exc:
        raise sweep_error(spec.path, f"fixed parameters / overrides: {exc}") from exc
    for name in spec.swept:
        for value in _candidate_values(name, spec.config["parameters"][name]):
            try:
                semantic_check(load_config(fixed + [f"{name}={render_value(value)}"]), keys)
            except (ConfigError, ValueError) as exc:
                raise sweep_error(spec.path, f"parameter {name} = {value!r}: {exc}") from exc
    if not cfg.class_name:
        raise UserError(f"sweep {spec.path}: no class given; pass CLASS=<name> DATA=<root> (make) or "
                        "class_name=... data_root=..., or fix them in the YAML (class_name: {value: ...})")
    spec.base = cfg
    return cfg


def trial_env() -> dict[str, str]:
    """Offline W&B unless the user chose a mode; this venv and the project importable first."""
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "offline")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(PROJECT_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env
