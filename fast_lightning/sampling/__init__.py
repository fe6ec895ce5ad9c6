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

from fast_lightning.sampling.aias import (
    VARIANTS,
    AIASSampler,
    AIASScheduler,
    aias_boundaries,
    segment_coefficients,
)
from fast_lightning.sampling.base import (
    DEFAULT_FARM_MIN_T,
    DEFAULT_RENOISE_BAND,
    RENOISE_MODES,
    Sampler,
    SamplingRun,
)
from fast_lightning.sampling.baselines import DDIMSampler, DDPMSampler, DPMSolverSampler
from fast_lightning.errors import ConfigError

SAMPLERS: dict[str, type[Sampler]] = {
    "aias": AIASSampler,
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "dpmsolver": DPMSolverSampler,
}


def _as_int(value, key: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be an int, got {value!r}")
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be an int, got {value!r}") from None
    if out != value:
        raise ConfigError(f"{key} must be an int, got {value!r}")
    return out


def build_sampler(cfg: Mapping) -> Sampler:
    """Build a sampler from the ``sampling`` config group (a Mapping or OmegaConf DictConfig).

    Keys (defaults in brackets): ``name`` in {aias, ddpm, ddim, dpmsolver} [aias], ``steps`` [10],
    ``variant`` exact|paper [exact] (aias), ``t_end`` [1] (aias), ``eta`` [0.0] (ddim),
    ``renoise`` every|band|none [every], ``renoise_band`` [[250, 750]], ``farm`` [true],
    ``farm_min_t`` [2] (FARM only at timesteps t >= farm_min_t; 0 = every step, the old behaviour),
    ``guidance_scale`` [1.0] (classifier-free guidance on the type, 2 evaluations per step when != 1).
    ``ddpm`` always runs all T timesteps (``steps`` is validated but not used). Every known option is
    validated whichever sampler is chosen; unknown keys are ignored.
    Errors are ValueErrors that name the offending ``sampling.*`` key.
    """
    get = cfg.get
    name = str(get("name", "aias")).lower()
    if name not in SAMPLERS:
        raise ConfigError(f"sampling.name must be one of {sorted(SAMPLERS)}, got {get('name')!r}")
    steps = _as_int(get("steps", 10), "sampling.steps")
    if steps < 1:
        raise ConfigError(f"sampling.steps must be >= 1, got {steps}")
    renoise_band = get("renoise_band", DEFAULT_RENOISE_BAND)
    if renoise_band is not None and not isinstance(renoise_band, (str, bytes)):
        renoise_band = tuple(renoise_band)
    farm_min_t = _as_int(get("farm_min_t", DEFAULT_FARM_MIN_T), "sampling.farm_min_t")
    common = dict(farm=bool(get("farm", True)), farm_min_t=farm_min_t, renoise=str(get("renoise", "every")),
                  renoise_band=renoise_band)

    # every option is validated whichever sampler uses it: a typo never passes silently (VARIANT=foo with ddim)
    t_end = _as_int(get("t_end", 1), "sampling.t_end")
    if t_end < -1:
        raise ConfigError(f"sampling.t_end must be >= -1, got {t_end}")
    variant = str(get("variant", "exact"))
    if variant not in VARIANTS:
        raise ConfigError(f"sampling.variant must be one of {list(VARIANTS)}, got {variant!r} (checked for every "
                         "sampler, though only aias uses it)")
    if common["renoise"] not in RENOISE_MODES:
        raise ConfigError(f"sampling.renoise must be one of {list(RENOISE_MODES)}, got {common['renoise']!r}")
    eta = get("eta", 0.0)
    try:
        eta = float(eta)
    except (TypeError, ValueError):
        raise ConfigError(f"sampling.eta must be a number >= 0, got {eta!r}") from None
    if eta < 0:
        raise ConfigError(f"sampling.eta must be a number >= 0, got {eta!r}")

    guidance = get("guidance_scale", 1.0)
    guidance = float(guidance) if isinstance(guidance, (int, float)) and not isinstance(guidance, bool) else guidance
    if name == "aias":
        if steps < t_end + 2:
            raise ConfigError(f"sampling.steps must be >= {t_end + 2} for aias (t_end={t_end}), got {steps}")
        return AIASSampler(steps=steps, variant=variant, t_end=t_end, **common).with_guidance(guidance)
    if name == "ddpm":
        return DDPMSampler(**common).with_guidance(guidance)
    if name == "ddim":
        return DDIMSampler(steps=steps, eta=eta, **common).with_guidance(guidance)
    return DPMSolverSampler(steps=steps, **common).with_guidance(guidance)


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
