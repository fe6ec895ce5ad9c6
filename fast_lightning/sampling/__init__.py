"""Samplers for FAST (pure torch + diffusers schedulers): AIAS and the DDPM / DDIM / DPM-Solver++ baselines.

All samplers share one contract (docs/ARCHITECTURE.md)::

    sampler = build_sampler(cfg.sampling)
    x = sampler(model, background, mask, cond, generators)   # model space, pasted back outside the mask
    sampler.nfe                                               # network evaluations of that call

Each sampler is a diffusers-shaped scheduler (AIAS: :class:`AIASScheduler`, usable in any diffusers pipeline)
run by the one loop in :class:`Sampler` that adds FARM injection and background re-noising.
"""

from __future__ import annotations

from collections.abc import Mapping

from fast_lightning.config import typed_group
from fast_lightning.sampling.aias import (
    VARIANTS,
    AIASSampler,
    AIASScheduler,
    aias_boundaries,
    segment_coefficients,
)
from fast_lightning.sampling.base import (
    RENOISE_MODES,
    Sampler,
    SamplingRun,
)
from fast_lightning.sampling.baseline_samplers import DDIMSampler, DDPMSampler, DPMSolverSampler
from fast_lightning.schema import SAMPLER_NAMES

SAMPLERS: dict[str, type[Sampler]] = {
    "aias": AIASSampler,
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "dpmsolver": DPMSolverSampler,
}


def build_sampler(cfg: Mapping) -> Sampler:
    """Build a sampler from the ``sampling`` config group (a Mapping or OmegaConf DictConfig).

    Keys (defaults in brackets): ``name`` in {aias, ddpm, ddim, dpmsolver} [aias], ``steps`` [10],
    ``variant`` exact|paper [exact] (aias), ``t_end`` [1] (aias), ``eta`` [0.0] (ddim),
    ``renoise`` every|band|none [every], ``renoise_band`` [[250, 750]], ``farm_inject`` [true],
    ``farm_min_t`` [2] (FARM only at timesteps t >= farm_min_t; 0 = every step, the old behaviour),
    ``guidance_scale`` [1.0] (classifier-free guidance on the type, 2 evaluations per step when != 1).
    ``ddpm`` always runs all T timesteps (``steps`` is validated but not used). Every known option is
    validated whichever sampler is chosen (``schema.validate``); unknown keys are a ConfigError.
    Errors are ConfigErrors (ValueErrors) that name the offending ``sampling.*`` key.
    """
    s = typed_group("sampling", cfg)  # types, ranges, allowed values, steps >= t_end + 2: the schema's rules
    common = dict(farm=bool(s.farm_inject), farm_min_t=int(s.farm_min_t), renoise=str(s.renoise),
                  renoise_band=tuple(s.renoise_band))
    guidance = float(s.guidance_scale)
    if s.name == "aias":
        return AIASSampler(steps=int(s.steps), variant=str(s.variant), t_end=int(s.t_end), **common).with_guidance(
            guidance)
    if s.name == "ddpm":
        return DDPMSampler(**common).with_guidance(guidance)
    if s.name == "ddim":
        return DDIMSampler(steps=int(s.steps), eta=float(s.eta), **common).with_guidance(guidance)
    return DPMSolverSampler(steps=int(s.steps), **common).with_guidance(guidance)


assert set(SAMPLERS) == set(SAMPLER_NAMES), "schema.SAMPLER_NAMES must list every sampler"


__all__ = [
    "Sampler",
    "SamplingRun",
    "AIASSampler",
    "AIASScheduler",
    "DDPMSampler",
    "DDIMSampler",
    "DPMSolverSampler",
    "build_sampler",
    "segment_coefficients",
    "aias_boundaries",
    "SAMPLERS",
    "VARIANTS",
    "RENOISE_MODES",
]
