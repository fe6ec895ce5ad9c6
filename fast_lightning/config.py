"""Configuration: experiments/ config groups + a profile + command-line dotlist overrides.

Overrides are merged in struct mode with an explicit type check, because plain YAML configs would
otherwise accept ``lr=abc`` or create ``--lr`` silently (see engineering notes on W&B sweeps).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"
PROFILES = ("smoke", "cpu", "gpu")


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message names the key or file."""


def _load_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml errors carry line numbers
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    return cfg if cfg is not None else OmegaConf.create({})


def resolve_profile(profile: str) -> str:
    if profile == "auto":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r} (option PROFILE / profile=); choose auto, {', '.join(PROFILES)}")
    return profile


def base_config(experiments_dir: Path = EXPERIMENTS_DIR) -> DictConfig:
    root = _load_yaml(experiments_dir / "config.yaml")
    defaults = root.pop("defaults", {})
    for group, choice in defaults.items():
        root[group] = _load_yaml(experiments_dir / group / f"{choice}.yaml")
    return root


def _parse_overrides(overrides: Sequence[str]) -> list[str]:
    clean = []
    for item in overrides:
        if item.startswith("-"):
            raise ConfigError(
                f"override {item!r} starts with '-': use key=value without hyphens "
                "(W&B sweeps must use ${args_no_hyphens})"
            )
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        clean.append(item)
    return clean


def _type_name(value) -> str:
    if isinstance(value, (DictConfig, dict)):
        return "mapping"
    if isinstance(value, (ListConfig, list, tuple)):
        return "list"
    return type(value).__name__


def _check_types(reference: DictConfig, patch: DictConfig, prefix: str = "") -> None:
    """Every key of ``patch`` must exist in ``reference`` with a compatible type."""
    for key in patch.keys():
        full = f"{prefix}{key}"
        if key not in reference:
            near = ", ".join(sorted(str(k) for k in reference.keys()))
            raise ConfigError(f"unknown config key '{full}' (known keys here: {near})")
        ref_node = reference._get_node(key)
        new = patch[key]
        ref = None if ref_node is None or ref_node._is_none() else reference[key]
        if ref is None or new is None:
            continue  # null defaults accept any value; anything may be set to null
        if isinstance(ref, DictConfig):
            if not isinstance(new, DictConfig):
                raise ConfigError(f"config key '{full}' is a mapping, got {new!r}")
            _check_types(ref, new, prefix=f"{full}.")
            continue
        ok = {
            bool: lambda v: isinstance(v, bool),
            int: lambda v: isinstance(v, int) and not isinstance(v, bool),
            float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            str: lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool),
        }
        if isinstance(ref, ListConfig):
            if not isinstance(new, ListConfig):
                raise ConfigError(f"config key '{full}' expects a list like {list(ref)}, got {new!r}")
            continue
        check = ok.get(type(ref))
        if check is not None and not check(new):
            raise ConfigError(
                f"config key '{full}' expects {type(ref).__name__} (default {ref!r}), got {new!r} ({_type_name(new)})"
            )


def load_config(
    overrides: Iterable[str] = (),
    profile: str | None = None,
    experiments_dir: Path = EXPERIMENTS_DIR,
) -> DictConfig:
    """Resolved config: groups, then profile, then overrides. ``profile=...`` may come in the overrides."""
    overrides = _parse_overrides(list(overrides))
    cfg = base_config(experiments_dir)
    patch = OmegaConf.from_dotlist(overrides) if overrides else OmegaConf.create({})
    _check_types(cfg, patch)
    chosen = profile or patch.get("profile") or os.environ.get("PROFILE") or cfg.profile
    resolved = resolve_profile(str(chosen))
    prof = _load_yaml(experiments_dir / "profile" / f"{resolved}.yaml")
    _check_types(cfg, prof, prefix="")
    cfg = OmegaConf.merge(cfg, prof, patch)
    cfg.profile = resolved
    resolve_hardware(cfg)
    OmegaConf.set_struct(cfg, True)
    validate_values(cfg)
    return cfg


_announced: set[str] = set()


def resolve_hardware(cfg: DictConfig) -> DictConfig:
    """Replace ``trainer.precision: auto`` by what this machine runs fastest; say so once per process.

    The resolved value is what the run's config.yaml records, so every reader (Trainer, synthesis, benches)
    sees the same precision.
    """
    from fast_lightning.hardware import resolve_precision

    requested = str(cfg.trainer.precision)
    resolved, why = resolve_precision(requested, str(cfg.trainer.accelerator))
    cfg.trainer.precision = resolved
    message = f"precision: {requested} -> {resolved} ({why})" if requested != resolved else ""
    if message and message not in _announced:
        _announced.add(message)
        logging.getLogger("fast_lightning").info(message)
    return cfg


# Counts and sizes, checked once when the config is built so that no command starts (and no run directory
# is made) with a value that would fail later or, worse, run and produce nothing (max_steps=0).
# key -> (minimum, make variable or None); a null value is allowed where the default is null.
MINIMUMS = {
    "diffusion.resolution": (8, None), "diffusion.max_steps": (1, None), "diffusion.checkpoint_every": (0, None),
    "diffusion.sample_every": (0, None), "diffusion.num_log_samples": (0, None),
    "diffusion.optim.batch_size": (1, None), "diffusion.optim.warmup_steps": (0, None),
    "diffusion.num_train_timesteps": (2, None), "diffusion.unet.layers_per_block": (1, None),
    "diffusion.farm.base_channels": (1, None), "diffusion.farm.time_dim": (1, None),
    "sampling.steps": (1, "STEPS"), "sampling.t_end": (-1, None),
    "synthesis.n": (1, "N"), "synthesis.batch_size": (1, None), "synthesis.out_resolution": (8, None),
    "synthesis.masks.max_tries": (1, None), "synthesis.seg_buffer_size": (0, None), "synthesis.seg_refresh": (1, None),
    "segmentation.max_steps": (1, None), "segmentation.val_every": (1, None), "segmentation.batch_size": (1, None),
    "segmentation.num_log_images": (0, None),
    "data.resolution": (8, None), "data.batch_size": (1, None), "data.num_workers": (0, None),
    "trainer.num_nodes": (1, None), "trainer.log_every_n_steps": (1, None),
}
# shares: key -> (low, high, low inclusive, high inclusive)
RANGES = {
    "data.generator_fraction": (0.0, 1.0, False, False), "data.val_fraction": (0.0, 1.0, False, False),
    "diffusion.normal_weight": (0.0, 1.0, True, True), "diffusion.crop.scale": (0.0, 1.0, False, True),
    "diffusion.optim.ema_decay": (0.0, 1.0, True, False), "segmentation.synth_ratio": (0.0, 1.0, True, True),
}


def validate_values(cfg: DictConfig) -> None:
    """ConfigError naming the key (and make variable) of the first count/size/share out of range."""
    for key, (low, var) in MINIMUMS.items():
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer >= {low}, got {value!r}")
        if value < low:
            name = f"{var} ({key})" if var else f"'{key}'"
            raise ConfigError(f"{name} must be >= {low}, got {value}")
    for key, (lo, hi, lo_in, hi_in) in RANGES.items():
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        ok = (value >= lo if lo_in else value > lo) and (value <= hi if hi_in else value < hi)
        if not ok:
            interval = f"{'[' if lo_in else '('}{lo}, {hi}{']' if hi_in else ')'}"
            raise ConfigError(f"config key '{key}' must lie in {interval}, got {value}")
    if int(cfg.data.channels) not in (1, 3):
        raise ConfigError(f"config key 'data.channels' must be 1 or 3, got {cfg.data.channels}")


def apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Overrides on an already-resolved config (used when re-running from a saved config)."""
    overrides = _parse_overrides(list(overrides))
    if not overrides:
        return cfg
    patch = OmegaConf.from_dotlist(overrides)
    _check_types(cfg, patch)
    merged = OmegaConf.merge(cfg, patch)
    resolve_hardware(merged)
    OmegaConf.set_struct(merged, True)
    validate_values(merged)
    return merged


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
