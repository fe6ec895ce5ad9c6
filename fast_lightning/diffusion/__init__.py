"""Diffusion core (pure torch): noise schedule, denoiser backbones, FARM, Adaptor and FASTDiffusion."""

from fast_lightning.diffusion.adaptor import Adaptor
from fast_lightning.diffusion.denoiser import (
    DENOISER_REGISTRY,
    Denoiser,
    PixelUNetDenoiser,
    build_denoiser,
    parameter_count,
    register_denoiser,
    resize_mask,
)
from fast_lightning.diffusion.farm import FARM, sinusoidal_table
from fast_lightning.diffusion.model import FASTDiffusion, build_fast_diffusion
from fast_lightning.diffusion.schedule import SCHEDULE_KINDS, NoiseSchedule

__all__ = [
    "Adaptor",
    "DENOISER_REGISTRY",
    "Denoiser",
    "FARM",
    "FASTDiffusion",
    "NoiseSchedule",
    "PixelUNetDenoiser",
    "SCHEDULE_KINDS",
    "build_denoiser",
    "build_fast_diffusion",
    "parameter_count",
    "register_denoiser",
    "resize_mask",
    "sinusoidal_table",
]
