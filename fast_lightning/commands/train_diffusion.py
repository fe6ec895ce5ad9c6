"""`make train-diffusion CLASS=<c> [DATA PROFILE RESUME]`: per-class foreground-aware diffusion model."""

from __future__ import annotations

from fast_lightning.commands.arguments import config_from_args
from fast_lightning.stages.fit_diffusion import run


def main(args: list[str]) -> int:
    return run(config_from_args(args))
