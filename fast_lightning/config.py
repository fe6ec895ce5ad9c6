"""Configuration: experiments/ config groups + a profile + command-line dotlist overrides.

Types and defaults come from one place, the dataclasses in fast_lightning/schema.py; the YAML files
(documented copies of those defaults, a test keeps them equal), the profile and the overrides are merged onto
``OmegaConf.structured(RootConfig)``, so ``lr=abc`` or an unknown ``--lr`` is an error naming the key (see
engineering notes on W&B sweeps) instead of being accepted silently.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException
from omegaconf.nodes import BooleanNode, FloatNode, IntegerNode, StringNode

from fast_lightning.errors import ConfigError
from fast_lightning.schema import RENAMED, DiffusionConfig, RootConfig, SamplingConfig, validate

_GROUP_CLASSES = {"diffusion": DiffusionConfig, "sampling": SamplingConfig}

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# the source tree's experiments/ (make, pip install -e .), else the copy `pip install .` put in the package
EXPERIMENTS_DIR = next((d for d in (PROJECT_ROOT / "experiments", Path(__file__).resolve().parent / "experiments")
                        if (d / "config.yaml").is_file()), PROJECT_ROOT / "experiments")
PROFILES = ("smoke", "cpu", "gpu", "gpu-quick")
__all__ = ["ConfigError", "load_config", "apply_overrides", "base_config", "typed_merge"]


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
    """The typed schema (fast_lightning/schema.py) with config.yaml and its group files merged on top."""
    path = experiments_dir / "config.yaml"
    root = _load_yaml(path)
    defaults = root.pop("defaults", {})
    cfg = typed_merge(OmegaConf.structured(RootConfig), root, source=str(path))
    for group, choice in defaults.items():
        group_path = experiments_dir / group / f"{choice}.yaml"
        cfg = typed_merge(cfg, OmegaConf.create({group: _load_yaml(group_path)}), source=str(group_path))
    return cfg


# Trainer arguments the framework sets itself: passing one through trainer.extra is an error naming the real key
TRAINER_MANAGED = {
    "max_steps": "diffusion.max_steps / segmentation.max_steps", "max_epochs": "the max_steps keys",
    "logger": "logger.backend", "callbacks": "(set by the commands)", "plugins": "(set by the commands)",
    "default_root_dir": "run_root", "val_check_interval": "segmentation.val_every",
    "check_val_every_n_epoch": "segmentation.val_every", "gradient_clip_val": "diffusion.optim.grad_clip",
    "enable_checkpointing": "(set by the commands)", "num_sanity_val_steps": "(set by the commands)",
}


def _trainer_passthrough(item: str) -> str:
    """``trainer.<name>=v`` for a name the schema's trainer group lacks -> ``trainer.extra.<name>=v``."""
    from fast_lightning.schema import TrainerConfig

    key, _, value = item.partition("=")
    parts = key.split(".")
    if len(parts) == 2 and parts[0] == "trainer" and parts[1] not in TrainerConfig.__dataclass_fields__:
        return f"trainer.extra.{parts[1]}={value}"
    return item


def check_trainer_extra(cfg: DictConfig) -> None:
    """Every trainer.extra name must be a lightning.Trainer argument the framework does not set itself."""
    extra = cfg.trainer.get("extra") or {}
    if not extra:
        return
    import inspect

    from lightning import Trainer

    accepted = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    for name in extra:
        if name in TRAINER_MANAGED:
            raise ConfigError(f"trainer.{name} is set by fast-lightning; use {TRAINER_MANAGED[name]}")
        if name not in accepted:
            near = ", ".join(sorted(n for n in accepted if n[:4] == str(name)[:4])) or "see lightning.Trainer"
            raise ConfigError(f"trainer.{name} is not a lightning.Trainer argument (close: {near})")


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
        clean.append(_trainer_passthrough(item))
    return clean


def _type_name(value) -> str:
    if isinstance(value, (DictConfig, dict)):
        return "mapping"
    if isinstance(value, (ListConfig, list, tuple)):
        return "list"
    return type(value).__name__


_NODE_TYPES = {BooleanNode: "bool", IntegerNode: "int", FloatNode: "float", StringNode: "str"}


def _expected(node) -> str:
    """The schema type of a config node, in words ("float", "int or null", "list", "mapping")."""
    if isinstance(node, DictConfig):
        name = "mapping"
    elif isinstance(node, ListConfig):
        name = "list"
    else:
        name = next((n for cls, n in _NODE_TYPES.items() if isinstance(node, cls)), "any value")
    return f"{name} or null" if node._is_optional() and name != "any value" else name


def _node(cfg: DictConfig, key: str):
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    return parent, (parent._get_node(leaf) if isinstance(parent, DictConfig) and leaf in parent else None)


def _strict_scalars(reference: DictConfig, patch: DictConfig, prefix: str = "") -> None:
    """OmegaConf coerces 3 -> True for a bool and True -> "True" for a str; a typo in a flag must be an error."""
    for key in patch.keys():
        if key not in reference:
            continue  # the typed merge names the unknown key
        ref_node, new = reference._get_node(key), patch._get_node(key)
        if isinstance(ref_node, DictConfig) and isinstance(new, DictConfig):
            _strict_scalars(ref_node, new, prefix=f"{prefix}{key}.")
            continue
        value = patch[key]
        if isinstance(ref_node, BooleanNode) and type(value) is int and value in (0, 1):
            patch[key] = value = bool(value)  # key=1 / key=0 from the command line: the same as true / false
        wrong = (isinstance(ref_node, BooleanNode) and value is not None and not isinstance(value, bool)) or (
            isinstance(ref_node, StringNode) and isinstance(value, bool)) or (
            isinstance(ref_node, ListConfig) and ref_node._metadata.element_type is bool
            and isinstance(value, ListConfig) and not all(isinstance(v, bool) for v in value))
        if wrong:
            default = None if ref_node._is_none() else ref_node._value()
            raise ConfigError(f"config key '{prefix}{key}' expects {_expected(ref_node)} (default {default!r}), "
                              f"got {value!r} ({_type_name(value)})")


def typed_merge(cfg: DictConfig, patch: DictConfig, source: str = "command line") -> DictConfig:
    """``OmegaConf.merge`` onto the typed config, with its errors turned into a ConfigError naming the key,
    the expected type and default, the value given and where it came from (a file or the command line)."""
    _strict_scalars(cfg, patch)
    try:
        return OmegaConf.merge(cfg, patch)
    except OmegaConfBaseException as exc:
        key = str(exc.full_key or exc.key or "")
        where = f" ({source})" if source != "command line" else ""
        if isinstance(exc, ConfigKeyError):
            renamed = RENAMED.get(key) or RENAMED.get(key.partition(".")[2])  # typed_group nests one level
            if renamed:
                raise ConfigError(f"config key '{key}'{where} no longer exists: use {renamed}") from None
            parent, _ = _node(cfg, key)
            near = ", ".join(sorted(str(k) for k in parent.keys())) if isinstance(parent, DictConfig) else ""
            raise ConfigError(f"unknown config key '{key}'{where} (known keys here: {near})") from None
        base_key = key.split("[", 1)[0]
        _, node = _node(cfg, base_key)
        value = OmegaConf.select(patch, base_key, default=None) if isinstance(patch, DictConfig) else None
        if node is None:
            raise ConfigError(f"config key '{key}'{where}: {str(exc).splitlines()[0]}") from None
        default = None if node._is_none() else OmegaConf.to_container(node) if isinstance(
            node, (DictConfig, ListConfig)) else node._value()
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value)
        if value is None and not node._is_optional():
            raise ConfigError(f"config key '{key}'{where} expects {_expected(node)} (default {default!r}) "
                              "and cannot be null") from None
        detail = f" ({str(exc).splitlines()[0]})" if "[" in key else ""
        raise ConfigError(f"config key '{key}'{where} expects {_expected(node)} (default {default!r}), "
                          f"got {value!r} ({_type_name(value)}){detail}") from None


def load_config(
    overrides: Iterable[str] = (),
    profile: str | None = None,
    experiments_dir: Path = EXPERIMENTS_DIR,
) -> DictConfig:
    """Resolved config: schema, groups, then profile, then overrides. ``profile=...`` may come in the overrides."""
    overrides = _parse_overrides(list(overrides))
    cfg = base_config(experiments_dir)
    patch = OmegaConf.from_dotlist(overrides) if overrides else OmegaConf.create({})
    typed_merge(cfg, patch)  # a bad override is reported before the profile is looked at
    chosen = profile or patch.get("profile") or os.environ.get("PROFILE") or cfg.profile
    resolved = resolve_profile(str(chosen))
    prof_path = experiments_dir / "profile" / f"{resolved}.yaml"
    cfg = typed_merge(cfg, _load_yaml(prof_path), source=str(prof_path))
    preset = patch.get("preset") or cfg.preset
    if preset:
        cfg = typed_merge(cfg, _load_yaml(preset_path(str(preset), experiments_dir)), source=f"preset {preset}")
    cfg = typed_merge(cfg, patch)
    cfg.profile = resolved
    resolve_hardware(cfg)
    OmegaConf.set_struct(cfg, True)
    validate_values(cfg)
    check_trainer_extra(cfg)
    return cfg


def preset_path(name: str, experiments_dir: Path = EXPERIMENTS_DIR) -> Path:
    """experiments/preset/<name>.yaml; an unknown name is a ConfigError listing the presets."""
    folder = experiments_dir / "preset"
    known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
    if name not in known:
        raise ConfigError(f"unknown preset {name!r} (option PRESET / preset=); known: {', '.join(known) or 'none'}")
    return folder / f"{name}.yaml"


_announced: set[str] = set()


def resolve_hardware(cfg: DictConfig) -> DictConfig:
    """Replace ``trainer.precision: auto`` by what this machine runs fastest; say so once per process.

    The resolved value is what the run's config.yaml records, so every reader (Trainer, synthesis, benches)
    sees the same precision.
    """
    from fast_lightning.hardware import resolve_precision
    from fast_lightning.speedups import check_choice

    for key in ("compile", "channels_last"):  # auto | true | false; resolved per run (device, length)
        cfg.trainer[key] = check_choice(cfg.trainer[key], f"trainer.{key}")
    requested = str(cfg.trainer.precision)
    resolved, why = resolve_precision(requested, str(cfg.trainer.accelerator))
    cfg.trainer.precision = resolved
    message = f"precision: {requested} -> {resolved} ({why})" if requested != resolved else ""
    if message and message not in _announced:
        _announced.add(message)
        logging.getLogger("fast_lightning").info(message)
    return cfg


def check_path_part(value, key: str) -> None:
    """A class name or run id becomes one folder name inside ``run_root``: no separators, no ``..``."""
    if value is None or value == "":  # unset (the command asks for CLASS itself)
        return
    text = str(value)
    if not text.strip() or text in (".", "..") or any(c in text for c in "/\\\0"):
        raise ConfigError(f"{key}={text!r} is not a valid folder name: it becomes one folder under run_root, so it "
                          "may not be empty, '.' or '..', nor contain '/' or '\\'")


def validate_values(cfg: DictConfig) -> None:
    """The schema's value rules (``schema.validate``) and the folder-name check, run once when a config is built."""
    validate(cfg)
    check_path_part(cfg.class_name, "class_name (CLASS)")
    check_path_part(cfg.get("run_id"), "run_id")


def typed_group(group: str, raw) -> DictConfig:
    """One config group (a plain mapping or a DictConfig, e.g. what a library function was handed) put onto its
    schema dataclass and checked by the schema's rules for that group: typed attribute access, ConfigErrors
    naming ``<group>.<key>``. Missing keys take the schema defaults."""
    cls = _GROUP_CLASSES[group]
    if OmegaConf.is_config(raw) and OmegaConf.get_type(raw) is cls:
        typed = raw
    else:
        patch = OmegaConf.create(OmegaConf.to_container(raw, resolve=True) if OmegaConf.is_config(raw)
                                 else dict(raw or {}))
        typed = typed_merge(OmegaConf.create({group: OmegaConf.structured(cls)}), OmegaConf.create({group: patch}))
        typed = typed[group]
    validate(typed, prefix=group)
    return typed


def apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Overrides on an already-resolved config (used when re-running from a saved config).

    A saved (untyped) config is first put onto the schema, so overrides are type-checked as in ``load_config``.
    """
    overrides = _parse_overrides(list(overrides))
    if not overrides:
        return cfg
    if OmegaConf.get_type(cfg) is not RootConfig:
        cfg = typed_merge(OmegaConf.structured(RootConfig), cfg, source="saved config")
    merged = typed_merge(cfg, OmegaConf.from_dotlist(overrides))
    resolve_hardware(merged)
    OmegaConf.set_struct(merged, True)
    validate_values(merged)
    check_trainer_extra(merged)
    return merged


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
