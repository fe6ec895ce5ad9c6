"""Glue shared by the commands: config from argv and command options (the study steps: ``fast_lightning.study``)."""

from __future__ import annotations

import dataclasses
from typing import Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from fast_lightning.errors import UserError
from fast_lightning.config import load_config


def config_from_args(args: list[str], require_class: bool = True) -> DictConfig:
    """The resolved config of a command's key=value overrides; ``print_config=true`` prints it and exits 0
    (as LightningCLI's --print_config), before any check that needs data or a class."""
    printing = [a for a in args if a.partition("=")[0] == "print_config"]
    args = [a for a in args if a not in printing]
    cfg = load_config(args)
    if printing and parse_bool(printing[-1].partition("=")[2], "print_config"):
        from fast_lightning.config import to_yaml

        print(to_yaml(cfg), end="")
        raise SystemExit(0)
    if require_class and not cfg.class_name:
        raise UserError("no class given: pass CLASS=<name> (make) or class_name=<name>, with DATA=<dataset root>")
    return cfg


BOOL_WORDS = {"true": True, "1": True, "false": False, "0": False}


def parse_bool(value: str | bool, name: str) -> bool:
    """true/false/1/0 (any case) -> bool; anything else is a UserError naming the option (``redo=yes`` used to
    be silently false)."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word not in BOOL_WORDS:
        raise UserError(f"option {name} expects true/false/1/0, got {value!r}")
    return BOOL_WORDS[word]


def options_schema(names: dict[str, object]) -> type:
    """A dataclass for a command's own options (``name=default``): the default fixes the option's type
    (None: any string), so OmegaConf checks the values exactly like config keys."""
    fields = [(_field_name(k), type(v) if v is not None else Optional[str], dataclasses.field(default=v))
              for k, v in names.items()]
    return dataclasses.make_dataclass("CommandOptions", fields)


def _field_name(option: str) -> str:
    return option.replace(".", "__")  # `bench.batch` is an option name, not a nested key


def pop_options(args: list[str], names: dict[str, object]) -> tuple[dict[str, object], list[str]]:
    """Split command-specific options (``name=value``, not config keys) from config overrides.

    Values are checked against ``options_schema(names)`` by OmegaConf: ``seeds=abc`` is a UserError naming
    the option, its type and default. Values are merged as the raw strings typed, so a str option keeps
    exactly what was written (``redo=true`` stays "true").
    """
    given, rest = {}, []
    for item in args:
        key, sep, value = item.partition("=")
        if sep and key in names:
            given[key] = value
        else:
            rest.append(item)
    typed = OmegaConf.structured(options_schema(names))
    for key, value in given.items():
        if isinstance(names[key], bool):
            typed = OmegaConf.merge(typed, {_field_name(key): parse_bool(value, key)})
            continue
        try:
            typed = OmegaConf.merge(typed, {_field_name(key): value})
        except ValidationError as exc:
            default = names[key]
            raise UserError(f"option {key} expects {type(default).__name__} (default {default!r}), "
                            f"got {value!r}") from exc
    options = {key: typed[_field_name(key)] for key in names}
    return options, rest


# The demo segments whole square images (no crops): its 128-px parts carry large defects.
DEMO_SETTINGS = {
    "cpu": [  # sized for <= 10 min on a 2-core AVX2 CPU in fp32 (docs/MEASURED.md)
        "data.seg_scale=64", "segmentation.crop=null",
        "diffusion.resolution=48", "diffusion.window=crop", "diffusion.crop.scale=0.375",
        "diffusion.unet.block_out_channels=[16,32,64,64]", "diffusion.max_steps=500",
        "diffusion.checkpoint_every=100", "diffusion.sample_every=250",
        "synthesis.n=240", "synthesis.batch_size=16",
        "segmentation.optim.batch_size=8", "segmentation.max_steps=300", "segmentation.val_every=100",
    ],
    "gpu": [
        "data.seg_scale=128", "segmentation.crop=null", "diffusion.resolution=128", "diffusion.window=full",
        "diffusion.max_steps=4000", "synthesis.n=500", "segmentation.max_steps=2000",
    ],
    "smoke": [],
}


# the benchmark's classes (benchmark, gpu-check)
DEFAULT_CLASSES = "tire@../shared/data/mvtec3d_rgb,mt@../shared/data/magnetic_tile"


def parse_classes(text: str) -> list[tuple[str, str]]:
    """``class@root,...`` -> [(class, root)]; a bare class keeps the data_root of the config."""
    out = []
    for item in [s.strip() for s in str(text).split(",") if s.strip()]:
        name, _, root = item.partition("@")
        if not name:
            raise UserError(f"CLASSES={text!r}: empty class name in {item!r}; use class@data_root,...")
        out.append((name, root))
    if not out:
        raise UserError(f"CLASSES={text!r} names no class; use e.g. {DEFAULT_CLASSES}")
    return out
