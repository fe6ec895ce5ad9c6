"""Common sampler machinery: the one sampling loop, per-sample noise, FARM injection, re-noising, paste-back.

Every sampler in this package shares one calling convention (see docs/ARCHITECTURE.md)::

    x = sampler(model, background, mask, cond, generators)   # (B, C, h, w), model space
    sampler.nfe                                               # network evaluations of that call

``model`` is duck-typed so that this package never imports ``fast_lightning.diffusion``:

- ``model.schedule.alphas_cumprod`` (T,), ``model.schedule.num_train_timesteps``,
  ``model.schedule.q_sample(x0, t, eps)``, ``model.schedule.make_diffusers_scheduler(cls, **kw)``;
- ``model.predict_eps(x, t, cond, mask) -> eps_hat`` with ``t`` a LongTensor (B,);
- ``model.farm`` (``None`` when FARM is disabled) and ``model.farm_x0(x, mask, t) -> x0_an``.

Every sampler is a scheduler with the diffusers shape (``set_timesteps(n)``, ``timesteps``,
``step(eps, t, x, generator=...)``) plus :meth:`Sampler._sample`, the one loop that adds FARM injection and
background re-noising around it; AIAS's scheduler is :class:`~fast_lightning.sampling.AIASScheduler`.

Randomness: sample ``i`` draws ALL of its noise from ``generators[i]`` (a per-sample draw of shape
(C, h, w) in float32 on the generator's device, then stacked and moved to the working device/dtype), and
the draws happen in the same order whatever the batch size. Sample ``i`` is therefore identical whether it
is generated alone or inside a batch (as long as the network itself is batch-independent).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fast_lightning.errors import ConfigError
from fast_lightning.schema import RENOISE_MODES, SamplingConfig
DEFAULT_RENOISE_BAND = tuple(SamplingConfig().renoise_band)  # the schema is the one source of defaults
# FARM is injected only at timesteps t >= farm_min_t. 2 keeps it out of AIAS's refinement tail (t = 1, 0 for
# the default t_end = 1), as in the authors' code, and applies the same threshold to the baselines; 0 = at
# every step (the old behaviour, where FARM's blurry reconstruction became the final defect pixels).
DEFAULT_FARM_MIN_T = SamplingConfig.farm_min_t

ProgressFn = Callable[[int, int], None]


def check_renoise(renoise: str, band: Sequence[int | float]) -> tuple[str, tuple[float, float]]:
    """Validate the background re-noising options; errors name the config keys users edit."""
    if renoise not in RENOISE_MODES:
        raise ConfigError(f"sampling.renoise must be one of {list(RENOISE_MODES)}, got {renoise!r}")
    try:
        lo, hi = (float(v) for v in band)
    except (TypeError, ValueError):
        raise ConfigError(f"sampling.renoise_band must be two numbers [low, high], got {band!r}") from None
    if not lo < hi:
        raise ConfigError(f"sampling.renoise_band must satisfy low < high, got {band!r}")
    return renoise, (lo, hi)


def check_farm_min_t(value) -> int:
    """Validate ``sampling.farm_min_t`` (an int >= 0)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"sampling.farm_min_t must be an int >= 0 (0 = FARM at every step), got {value!r}")
    return value


def per_sample_randn(generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device | str,
                     dtype: torch.dtype) -> Tensor:
    """N(0, I) of shape (B, *shape): sample i drawn from generators[i] in float32 on its device, then cast.

    The one noise draw of the package (samplers and :class:`AIASScheduler`), so sample i's noise never
    depends on the batch it is in.
    """
    draws = [torch.randn(tuple(shape), generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return torch.stack(draws).to(device=device, dtype=dtype)


class SamplingRun:
    """State of one sampler call: validated inputs, noise source, NFE counter.

    :meth:`Sampler._sample` builds the one loop from these few operations, so FARM injection, background
    re-noising and per-sample randomness are identical for AIAS and the baselines.
    """

    def __init__(self, sampler: "Sampler", model, background: Tensor, mask: Tensor, cond: Tensor,
                 generators: Sequence[torch.Generator]):
        if background.dim() != 4:
            raise ValueError(f"background must be (B, C, h, w), got shape {tuple(background.shape)}")
        b, c, h, w = background.shape
        if mask.dim() != 4 or mask.shape[0] != b or mask.shape[1] != 1 or mask.shape[2:] != background.shape[2:]:
            raise ValueError(f"mask must be (B, 1, h, w) = ({b}, 1, {h}, {w}), got {tuple(mask.shape)}")
        if cond.dim() != 1 or cond.shape[0] != b:
            raise ValueError(f"cond must be a LongTensor (B,) with B={b}, got shape {tuple(cond.shape)}")
        if isinstance(generators, torch.Generator) or len(generators) != b:
            raise ValueError(f"generators must be a list of {b} torch.Generator (one per sample)")
        if not all(isinstance(g, torch.Generator) for g in generators):
            raise ValueError("generators must contain torch.Generator objects only")

        self.sampler = sampler
        self.model = model
        self.device = background.device
        self.dtype = background.dtype  # working dtype of every tensor (the model-space dtype)
        self.background = background
        self.mask = mask.to(device=self.device, dtype=self.dtype)
        self.cond = cond.to(self.device)
        self.generators = list(generators)
        self.shape = (c, h, w)
        self.batch = b
        self.T = int(model.schedule.num_train_timesteps)
        # Kernel math in float64 on CPU: the coefficients are scalars, tensors stay in the model dtype.
        self.alphas_cumprod = model.schedule.alphas_cumprod.detach().to("cpu", torch.float64)
        self.use_farm = bool(sampler.farm) and getattr(model, "farm", None) is not None
        self.nfe = 0
        self.total = 0  # expected NFE, set by the sampler for the progress callback

    # -- helpers -----------------------------------------------------------------------------------
    def abar(self, t: int) -> float:
        """abar at index t (alphas_cumprod[t]); t = -1 means fully clean (abar = 1)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def tvec(self, t: int) -> Tensor:
        return torch.full((self.batch,), int(t), dtype=torch.long, device=self.device)

    def randn(self) -> Tensor:
        """N(0, I) of shape (B, C, h, w): sample i from generators[i] (:func:`per_sample_randn`)."""
        return per_sample_randn(self.generators, self.shape, self.device, self.dtype)

    def farm_active(self, t: int) -> bool:
        """The one FARM rule for every sampler: FARM on, present, and ``t >= sampler.farm_min_t``."""
        return self.use_farm and int(t) >= self.sampler.farm_min_t

    # -- the shared steps --------------------------------------------------------------------------
    def inject(self, x: Tensor, t: int) -> Tensor:
        """FARM anomaly-aware noise: x_in = (1-M) x + M (sqrt(abar_t) FARM(x, M, t) + sqrt(1-abar_t) z).

        Returns ``x`` unchanged (and draws nothing) when FARM is off, absent, or ``t < farm_min_t``: the last
        steps are plain posterior steps, so the denoiser (not FARM's reconstruction) paints the final pixels.
        """
        if not self.farm_active(t):
            return x
        ab = self.abar(t)
        x0_an = self.model.farm_x0(x, self.mask, self.tvec(t)).to(self.dtype)
        x_an = math.sqrt(ab) * x0_an + math.sqrt(1.0 - ab) * self.randn()
        return (1 - self.mask) * x + self.mask * x_an

    def eps(self, x: Tensor, t: int) -> Tensor:
        """One network evaluation (counted in ``nfe``; reported to the progress callback). With classifier-free
        guidance (``guidance_scale`` s != 1) two, in one batched call: eps_null + s (eps_type - eps_null), the
        null condition being type 0 ("normal"); s = 1 is the plain conditional call."""
        s = self.sampler.guidance_scale
        if s == 1.0:
            out = self.model.predict_eps(x, self.tvec(t), self.cond, self.mask).to(self.dtype)
        else:
            both = self.model.predict_eps(torch.cat([x, x]), torch.cat([self.tvec(t)] * 2),
                                          torch.cat([self.cond, torch.zeros_like(self.cond)]),
                                          torch.cat([self.mask, self.mask])).to(self.dtype)
            cond, null = both.chunk(2)
            out = null + s * (cond - null)
            self.nfe += 1
        self.nfe += 1
        if self.sampler.progress is not None:
            self.sampler.progress(self.nfe, self.total)
        return out

    def renoise_active(self, t_e: int) -> bool:
        mode = self.sampler.renoise
        if mode == "none":
            return False
        if mode == "band":
            lo, hi = self.sampler.renoise_band
            return lo < t_e < hi
        return True

    def renoise(self, x: Tensor, t_e: int) -> Tensor:
        """Replace the non-mask region by q(x_{t_e} | background); t_e = -1 uses the clean background."""
        if not self.renoise_active(t_e):
            return x
        if t_e < 0:
            bg_t = self.background
        else:
            bg_t = self.model.schedule.q_sample(self.background, self.tvec(t_e), self.randn()).to(self.dtype)
        return (1 - self.mask) * bg_t + self.mask * x


class Sampler:
    """Base class: common options, the call contract and the one sampling loop.

    A sampler is a scheduler plus this loop. Subclasses only say which scheduler (``scheduler_cls`` and
    ``_scheduler_kwargs``, built on the model's betas by ``model.schedule.make_diffusers_scheduler``), how many
    timesteps to ask it for (``num_steps``) and, if needed, extra ``step`` arguments (``_step_kwargs``).

    Args:
        farm: inject FARM's anomaly-aware noise before the network evaluations at ``t >= farm_min_t`` (when
            ``model.farm`` is not None). The paper's ablation shows FARM is the component that matters most.
        farm_min_t: lowest timestep that gets FARM injection (default 2: none in AIAS's t = 1, 0 refinement
            tail, the same threshold for the baselines); 0 = before every evaluation (old behaviour).
        renoise: background re-noising of the non-mask region after each step from
            ``q_sample(background, t_e)``: ``"every"`` (paper, default), ``"band"`` (only while
            ``band[0] < t_e < band[1]``, as in the authors' code) or ``"none"``.
        renoise_band: the open interval used by ``"band"``; default (250, 750).
        progress: optional ``progress(done_nfe, total_nfe)`` called after every network evaluation.

    Sampling runs under ``torch.no_grad()`` (not inference_mode, so callers may still use the outputs in
    autograd later, e.g. as segmentation training inputs). The model's train/eval mode is not touched.
    """

    name = "base"
    scheduler_cls: type | None = None  # a diffusers-shaped scheduler class (ours or diffusers')

    def __init__(self, *, farm: bool = True, farm_min_t: int = DEFAULT_FARM_MIN_T, renoise: str = "every",
                 renoise_band: Sequence[int | float] = DEFAULT_RENOISE_BAND,
                 progress: ProgressFn | None = None):
        self.farm = bool(farm)
        self.farm_min_t = check_farm_min_t(farm_min_t)
        self.renoise, self.renoise_band = check_renoise(renoise, renoise_band)
        self.progress = progress
        self.nfe = 0
        self.guidance_scale = 1.0  # set by :meth:`with_guidance`

    def with_guidance(self, scale: float) -> "Sampler":
        """Classifier-free guidance scale for every sampler (``sampling.guidance_scale``); 1 = none."""
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
            raise ConfigError(f"sampling.guidance_scale must be a number >= 0 (1 = no guidance), got {scale!r}")
        self.guidance_scale = float(scale)
        return self

    @property
    def evals_per_step(self) -> int:
        """Network evaluations per timestep: 2 with guidance (conditional + null), else 1."""
        return 1 if self.guidance_scale == 1.0 else 2

    def min_steps(self) -> int:
        return 1

    def num_steps(self, num_train_timesteps: int) -> int:
        """The ``num_inference_steps`` passed to ``scheduler.set_timesteps`` (one network evaluation each)."""
        raise NotImplementedError

    def expected_nfe(self, num_train_timesteps: int) -> int:
        return self.num_steps(num_train_timesteps)

    def _scheduler_kwargs(self) -> dict:
        return {}

    def _step_kwargs(self) -> dict:
        return {}

    def make_scheduler(self, model):
        """A fresh scheduler on ``model``'s betas, timesteps not yet set (multistep schedulers keep state)."""
        return model.schedule.make_diffusers_scheduler(self.scheduler_cls, **self._scheduler_kwargs())

    def _sample(self, run: SamplingRun) -> Tensor:
        """The one loop: per timestep FARM injection -> eps -> ``scheduler.step`` -> background re-noising.

        Re-noising targets the next listed timestep (the level the network is told at the next evaluation;
        -1 = clean background after the last step); for AIAS that is exactly the segment end t_e.
        The per-sample generators go to every ``step``: schedulers that add noise (AIAS, DDPM, DDIM with
        eta > 0) draw sample i's noise from generators[i]; deterministic ones ignore them.
        Draw order per sample: x_T; then per step FARM z (if injected), the step's noise, re-noise eps.
        """
        n = self.num_steps(run.T)
        if n > run.T:
            raise ConfigError(f"sampling.steps must be <= T = {run.T} for {self.name}, got {n}")
        sched = self.make_scheduler(run.model)
        sched.set_timesteps(n)  # timesteps stay on CPU; the schedulers index their CPU tables with them
        timesteps = [int(t) for t in sched.timesteps]
        step_kwargs = dict(self._step_kwargs(), generator=run.generators)

        x = run.randn() * float(sched.init_noise_sigma)
        for i, t in enumerate(timesteps):
            t_next = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            x_in = run.inject(x, t)
            eps = run.eps(sched.scale_model_input(x_in, t), t)
            x = sched.step(eps, t, x_in, **step_kwargs).prev_sample.to(run.dtype)
            x = run.renoise(x, t_next)
        return x

    def __call__(self, model, background: Tensor, mask: Tensor, cond: Tensor,
                 generators: Sequence[torch.Generator]) -> Tensor:
        """Generate inside ``mask`` and paste back: ``mask * x + (1 - mask) * background``."""
        run = SamplingRun(self, model, background, mask, cond, generators)
        run.total = self.expected_nfe(run.T) * self.evals_per_step
        with torch.no_grad():
            x = self._sample(run)
            out = run.mask * x + (1 - run.mask) * background
        self.nfe = run.nfe
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(farm={self.farm}, farm_min_t={self.farm_min_t}, "
                f"renoise={self.renoise!r}, renoise_band={self.renoise_band})")
