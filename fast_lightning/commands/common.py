"""Glue shared by the commands: config from argv and command options (the study steps: ``fast_lightning.study``)."""

from __future__ import annotations

from omegaconf import DictConfig

from fast_lightning.cli import UserError
from fast_lightning.config import load_config


def config_from_args(args: list[str], require_class: bool = True) -> DictConfig:
    cfg = load_config(args)
    if require_class and not cfg.class_name:
        raise UserError("no class given: pass CLASS=<name> (make) or class_name=<name>, with DATA=<dataset root>")
    return cfg


def pop_options(args: list[str], names: dict[str, object]) -> tuple[dict[str, object], list[str]]:
    """Split command-specific options (``name=value``, not config keys) from config overrides."""
    options = dict(names)
    rest = []
    for item in args:
        key, sep, value = item.partition("=")
        if sep and key in names:
            default = names[key]
            try:
                options[key] = type(default)(value) if default is not None and not isinstance(default, bool) else value
            except ValueError as exc:
                raise UserError(f"option {key} expects {type(default).__name__}, got {value!r}") from exc
        else:
            rest.append(item)
    return options, rest
