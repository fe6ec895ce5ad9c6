"""Baseline samplers (DDPM, DDIM, DPM-Solver++) through diffusers schedulers, same contract as AIAS.

The schedulers come from ``model.schedule.make_diffusers_scheduler(cls, **kw)`` so they share the model's
betas; they are rebuilt and ``set_timesteps`` is called at every call (multistep schedulers keep state).
FARM injection happens before every network evaluation at that step's t when ``t >= farm_min_t`` (the rule
shared with AIAS, :meth:`SamplingRun.farm_active`), and the background is re-noised
to the NEXT timestep the network will see (-1 after the last step = clean background), exactly as in AIAS.

Randomness: the initial noise, FARM noise and re-noising noise are drawn by :class:`SamplingRun`
(per sample). The scheduler's own variance noise (DDPM, DDIM with eta > 0) is drawn by diffusers from
``step(generator=[g_0, ..., g_{B-1}])``: diffusers' ``randn_tensor`` draws a (1, C, h, w) tensor from each
generator in turn (on the generator's device, then moves it) and treats a one-element list like a single
generator, so sample i's draws do not depend on the batch size. Generators must live on the CPU (or on the
sample's device).
"""

from __future__ import annotations

from collections.abc import Sequence

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import Tensor

from fast_lightning.sampling.base import (
    DEFAULT_FARM_MIN_T,
    DEFAULT_RENOISE_BAND,
    ProgressFn,
    Sampler,
    SamplingRun,
)


def _check_steps(steps, minimum: int = 1) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < minimum:
        raise ValueError(f"sampling.steps must be an int >= {minimum}, got {steps!r}")
    return steps


class _DiffusersSampler(Sampler):
    """Generic loop over a diffusers scheduler's timesteps with FARM injection and re-noising."""

    scheduler_cls: type = None
    uses_step_noise = False  # pass the per-sample generator list to scheduler.step

    def _scheduler_kwargs(self) -> dict:
        return {}

    def _step_kwargs(self) -> dict:
        return {}

    def _num_steps(self, T: int) -> int:
        raise NotImplementedError

    def expected_nfe(self, num_train_timesteps: int) -> int:
        return self._num_steps(num_train_timesteps)

    def make_scheduler(self, model):
        """The configured diffusers scheduler for ``model`` (fresh instance, timesteps not yet set)."""
        return model.schedule.make_diffusers_scheduler(self.scheduler_cls, **self._scheduler_kwargs())

    def _sample(self, run: SamplingRun) -> Tensor:
        n = self._num_steps(run.T)
        if n > run.T:
            raise ValueError(f"sampling.steps must be <= T = {run.T} for {self.name}, got {n}")
        sched = self.make_scheduler(run.model)
        sched.set_timesteps(n)  # timesteps stay on CPU; the schedulers index their CPU tables with them
        timesteps = [int(t) for t in sched.timesteps]
        step_kwargs = dict(self._step_kwargs())
        if self.uses_step_noise:
            step_kwargs["generator"] = run.generators

        x = run.randn() * float(sched.init_noise_sigma)
        for i, t in enumerate(timesteps):
            t_next = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            x_in = run.inject(x, t)
            eps = run.eps(sched.scale_model_input(x_in, t), t)
            x = sched.step(eps, t, x_in, **step_kwargs).prev_sample.to(run.dtype)
            x = run.renoise(x, t_next)
        return x


class DDPMSampler(_DiffusersSampler):
    """Ancestral DDPM over all T timesteps (posterior variance beta-tilde, "fixed_small"); NFE = T."""

    name = "ddpm"
    scheduler_cls = DDPMScheduler
    uses_step_noise = True

    def __init__(self, *, farm: bool = True, farm_min_t: int = DEFAULT_FARM_MIN_T,
                 renoise: str = "every",
                 renoise_band: Sequence[int | float] = DEFAULT_RENOISE_BAND,
                 progress: ProgressFn | None = None):
        super().__init__(farm=farm, farm_min_t=farm_min_t, renoise=renoise, renoise_band=renoise_band,
                         progress=progress)

    def _scheduler_kwargs(self) -> dict:
        return dict(variance_type="fixed_small", clip_sample=False, thresholding=False,
                    prediction_type="epsilon")

    def _num_steps(self, T: int) -> int:
        return T


class DDIMSampler(_DiffusersSampler):
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
            raise ValueError(f"sampling.eta must be a number >= 0, got {eta!r}")
        self.eta = float(eta)
        self.uses_step_noise = self.eta > 0

    def _scheduler_kwargs(self) -> dict:
        return dict(timestep_spacing="trailing", clip_sample=False, thresholding=False,
                    set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon")

    def _step_kwargs(self) -> dict:
        return dict(eta=self.eta)

    def _num_steps(self, T: int) -> int:
        return self.steps

    def __repr__(self) -> str:
        return (f"DDIMSampler(steps={self.steps}, eta={self.eta}, farm={self.farm}, "
                f"farm_min_t={self.farm_min_t}, renoise={self.renoise!r})")


class DPMSolverSampler(_DiffusersSampler):
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

    def _num_steps(self, T: int) -> int:
        return self.steps

    def __repr__(self) -> str:
        return (f"DPMSolverSampler(steps={self.steps}, farm={self.farm}, "
                f"farm_min_t={self.farm_min_t}, renoise={self.renoise!r})")
