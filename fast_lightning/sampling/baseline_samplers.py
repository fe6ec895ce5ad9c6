"""Baseline samplers (DDPM, DDIM, DPM-Solver++): diffusers schedulers in the one loop of :class:`Sampler`.

Each class only names its diffusers scheduler and options; the scheduler is built on the model's betas
(``model.schedule.make_diffusers_scheduler``) and the shared loop adds FARM injection (``t >= farm_min_t``)
and background re-noising to the next listed timestep, exactly as for AIAS.

Randomness: the initial noise, FARM noise and re-noising noise are drawn by :class:`SamplingRun`
(per sample). The scheduler's own variance noise (DDPM, DDIM with eta > 0) is drawn by diffusers from
``step(generator=[g_0, ..., g_{B-1}])`` (the loop passes it to every step; deterministic steps ignore it):
diffusers' ``randn_tensor`` draws a (1, C, h, w) tensor from each generator in turn (on the generator's device, then moves it) and treats a one-element list like a single
generator, so sample i's draws do not depend on the batch size. Generators must live on the CPU (or on the
sample's device).
"""

from __future__ import annotations

from collections.abc import Sequence

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from fast_lightning.errors import ConfigError
from fast_lightning.sampling.base import (
    DEFAULT_FARM_MIN_T,
    DEFAULT_RENOISE_BAND,
    ProgressFn,
    Sampler,
)


def _check_steps(steps, minimum: int = 1) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < minimum:
        raise ConfigError(f"sampling.steps must be an int >= {minimum}, got {steps!r}")
    return steps


class DDPMSampler(Sampler):
    """Ancestral DDPM over all T timesteps (posterior variance beta-tilde, "fixed_small"); NFE = T."""

    name = "ddpm"
    scheduler_cls = DDPMScheduler

    def __init__(self, *, farm: bool = True, farm_min_t: int = DEFAULT_FARM_MIN_T,
                 renoise: str = "every",
                 renoise_band: Sequence[int | float] = DEFAULT_RENOISE_BAND,
                 progress: ProgressFn | None = None):
        super().__init__(farm=farm, farm_min_t=farm_min_t, renoise=renoise, renoise_band=renoise_band,
                         progress=progress)

    def _scheduler_kwargs(self) -> dict:
        return dict(variance_type="fixed_small", clip_sample=False, thresholding=False,
                    prediction_type="epsilon")

    def num_steps(self, num_train_timesteps: int) -> int:
        return num_train_timesteps


class DDIMSampler(Sampler):
    """DDIM with "trailing" timestep spacing (good few-step behaviour); ``eta`` > 0 adds variance noise.

    diffusers' DDIM jumps to ``t - T // steps``; when T is not a multiple of ``steps`` that can differ by one
    from the next listed timestep (e.g. T=1000, 3 steps: 999, 666, 332). Re-noising uses the next listed
    timestep, i.e. the level the network is told at the next evaluation.
    """

    name = "ddim"
    scheduler_cls = DDIMScheduler

    def __init__(self, steps: int = 50, eta: float = 0.0, *, farm: bool = True,
                 farm_min_t: int = DEFAULT_FARM_MIN_T, renoise: str = "every",
                 renoise_band: Sequence[int | float] = DEFAULT_RENOISE_BAND,
                 progress: ProgressFn | None = None):
        super().__init__(farm=farm, farm_min_t=farm_min_t, renoise=renoise, renoise_band=renoise_band,
                         progress=progress)
        self.steps = _check_steps(steps)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or eta < 0:
            raise ConfigError(f"sampling.eta must be a number >= 0, got {eta!r}")
        self.eta = float(eta)

    def _scheduler_kwargs(self) -> dict:
        return dict(timestep_spacing="trailing", clip_sample=False, thresholding=False,
                    set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon")

    def _step_kwargs(self) -> dict:
        return dict(eta=self.eta)

    def num_steps(self, num_train_timesteps: int) -> int:
        return self.steps

    def __repr__(self) -> str:
        return (f"DDIMSampler(steps={self.steps}, eta={self.eta}, farm={self.farm}, "
                f"farm_min_t={self.farm_min_t}, renoise={self.renoise!r})")


class DPMSolverSampler(Sampler):
    """DPM-Solver++ (2nd-order multistep, "trailing" spacing, deterministic); NFE = steps."""

    name = "dpmsolver"
    scheduler_cls = DPMSolverMultistepScheduler

    def __init__(self, steps: int = 20, *, farm: bool = True, farm_min_t: int = DEFAULT_FARM_MIN_T,
                 renoise: str = "every",
                 renoise_band: Sequence[int | float] = DEFAULT_RENOISE_BAND,
                 progress: ProgressFn | None = None):
        super().__init__(farm=farm, farm_min_t=farm_min_t, renoise=renoise, renoise_band=renoise_band,
                         progress=progress)
        self.steps = _check_steps(steps)

    def _scheduler_kwargs(self) -> dict:
        return dict(algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing",
                    thresholding=False, prediction_type="epsilon", lower_order_final=True)

    def num_steps(self, num_train_timesteps: int) -> int:
        return self.steps

    def __repr__(self) -> str:
        return (f"DPMSolverSampler(steps={self.steps}, farm={self.farm}, "
                f"farm_min_t={self.farm_min_t}, renoise={self.renoise!r})")
