"""AIAS: Anomaly-Informed Accelerated Sampling (FAST, section 4 of docs/reference).

Within a window [t_e, t_s] the network's x0-prediction is assumed constant, so the t_s - t_e DDPM posterior
steps compose into ONE affine-Gaussian kernel ``x_te = Pi x_ts + Sigma x0_hat + sqrt(V) z``: one network
evaluation per segment instead of one per timestep.

:class:`AIASScheduler` is that kernel as a diffusers scheduler (usable in any diffusers pipeline, e.g.
``pipe.scheduler = AIASScheduler.from_config(pipe.scheduler.config)``); :class:`AIASSampler` runs it in the
package's one sampling loop (FARM injection, background re-noising).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, DDPMScheduler, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from fast_lightning.errors import ConfigError
from fast_lightning.schema import AIAS_VARIANTS
from fast_lightning.sampling.base import (
    DEFAULT_FARM_MIN_T,
    DEFAULT_RENOISE_BAND,
    ProgressFn,
    Sampler,
    per_sample_randn,
)

VARIANTS = AIAS_VARIANTS  # the schema's allowed values: one source


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ConfigError(f"sampling.variant must be one of {list(VARIANTS)}, got {variant!r}")
    return variant


def segment_coefficients(alphas_cumprod: Tensor, t_start: int, t_end: int,
                         variant: str = "exact") -> tuple[Tensor, Tensor, Tensor]:
    r"""Coefficients (Pi, Sigma, V) of the one-kernel jump ``x_{t_end} = Pi x_{t_start} + Sigma x0 + sqrt(V) z``.

    Convention: ``abar_t = alphas_cumprod[t]`` and the DDPM step "at t" maps x_t to x_{t-1}; ``t_end = -1``
    means fully clean (``abar_{-1} = 1``), so ``(t, t-1)`` with t = 0 is the last DDPM step (V = 0).
    The segment composes the steps t = t_start, ..., t_end + 1 of the one-step posterior
    ``q(x_{t-1} | x_t, x0) = N(A_t x0 + B_t x_t, s_t^2 I)`` with x0 frozen::

        A_t   = sqrt(abar_{t-1}) beta_t / (1 - abar_t)
        B_t   = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)
        s_t^2 = (1 - abar_{t-1}) beta_t / (1 - abar_t),     alpha_t = abar_t / abar_{t-1}, beta_t = 1 - alpha_t

    ``variant="exact"``: the true composition, equal to the non-adjacent posterior q(x_te | x_ts, x0)
    (DDIM with eta = 1); with ``s = t_start``, ``e = t_end``::

        Pi    = sqrt(abar_s / abar_e) (1 - abar_e) / (1 - abar_s)
        Sigma = sqrt(abar_e) (1 - abar_s / abar_e) / (1 - abar_s)
        V     = (1 - abar_e) / (1 - abar_s) * (1 - abar_s / abar_e)

    ``variant="paper"``: the sums as printed in the paper's Lemma 2 (and the authors' code), whose product
    index is reversed relative to the exact composition (i runs over t_e+1..t_s)::

        Pi    = prod_i B_i
        Sigma = sum_i A_i prod_{j=i+1..t_s} B_j
        V     = sum_i (prod_{j=i+1..t_s} B_j)^2 s_i^2

    Pi is the same in both; for a single step (t_end = t_start - 1) both variants equal the DDPM step.
    The paper variant injects too much noise in late segments (10-step grid, segment 125 -> 1 at T = 1000,
    scaled-linear betas: sqrt(V) = 0.2223 paper vs 0.0411 exact).

    Returns:
        (Pi, Sigma, V) as 0-d float64 tensors.
    """
    _check_variant(variant)
    ac = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
    T = ac.shape[0]
    t_start, t_end = int(t_start), int(t_end)
    if not (0 <= t_start < T and -1 <= t_end < t_start):
        raise ValueError(f"segment needs -1 <= t_end < t_start <= T-1 = {T - 1}, got {t_start} -> {t_end}")

    def abar(t: int) -> Tensor:
        return ac.new_tensor(1.0) if t < 0 else ac[t]

    if variant == "exact":
        a_s, a_e = abar(t_start), abar(t_end)
        ratio = a_s / a_e
        pi = torch.sqrt(ratio) * (1 - a_e) / (1 - a_s)
        sigma = torch.sqrt(a_e) * (1 - ratio) / (1 - a_s)
        var = (1 - a_e) / (1 - a_s) * (1 - ratio)
        return pi, sigma, var.clamp(min=0.0)

    # paper: vectorised over i = t_end+1 .. t_start (ascending)
    i = torch.arange(t_end + 1, t_start + 1)
    ab = ac[i]
    ab_prev = torch.where(i > 0, ac[(i - 1).clamp(min=0)], torch.ones_like(ab))
    alpha = ab / ab_prev
    beta = 1 - alpha
    A = torch.sqrt(ab_prev) * beta / (1 - ab)
    B = torch.sqrt(alpha) * (1 - ab_prev) / (1 - ab)
    s2 = (1 - ab_prev) * beta / (1 - ab)
    # suffix products prod_{j=i+1..t_start} B_j (empty product = 1 for i = t_start)
    suffix_incl = torch.flip(torch.cumprod(torch.flip(B, [0]), 0), [0])
    suffix = torch.cat([suffix_incl[1:], torch.ones(1, dtype=B.dtype)])
    pi = torch.prod(B)
    sigma = torch.sum(A * suffix)
    var = torch.sum(suffix ** 2 * s2)
    return pi, sigma, var


def aias_boundaries(T: int, steps: int, t_end: int = 1) -> list[int]:
    """Segment boundaries ``int(linspace(T-1, t_end, K))`` with ``K = steps - t_end``.

    The tail adds plain DDPM posterior steps at t = t_end, ..., 0, so NFE = (K - 1) + (t_end + 1) = steps.
    For the default t_end = 1 that is K = steps - 1 (10 steps -> 999, 874, 749, 624, 500, 375, 250, 125, 1,
    then t = 1 and t = 0). ``t_end = -1`` drops the tail (the last segment jumps straight to clean).
    The truncation (not rounding) matches the authors' grid. Needs K >= 2, i.e. steps >= t_end + 2
    (3 for the default) and steps <= T (K distinct integer boundaries).
    """
    T, steps, t_end = int(T), int(steps), int(t_end)
    if not -1 <= t_end < T - 1:
        raise ConfigError(f"sampling.t_end must satisfy -1 <= t_end < T-1 = {T - 1}, got {t_end}")
    minimum = t_end + 2
    if steps < minimum:
        raise ConfigError(f"sampling.steps must be >= {minimum} for AIAS with t_end={t_end} "
                         f"(at least one segment plus the tail), got {steps}")
    if steps > T:
        raise ConfigError(f"sampling.steps must be <= T = {T} for AIAS (steps = T is DDPM), got {steps}")
    K = steps - t_end
    start, stop = float(T - 1), float(t_end)
    # float64 linspace, floor with a tiny guard so exact integers never truncate down
    vals = [start + (stop - start) * k / (K - 1) for k in range(K)]
    bounds = [int(math.floor(v + 1e-9)) for v in vals]
    bounds[0], bounds[-1] = T - 1, t_end
    if any(a <= b for a, b in zip(bounds[:-1], bounds[1:])):  # cannot happen for steps <= T; keep a guard
        raise ConfigError(f"sampling.steps={steps} gives repeated AIAS boundaries for T={T}")
    return bounds


PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass
class AIASSchedulerOutput(BaseOutput):
    """``prev_sample``: x at the segment end t_e; ``pred_original_sample``: the x0_hat the kernel used."""

    prev_sample: Tensor
    pred_original_sample: Tensor | None = None


class AIASScheduler(SchedulerMixin, ConfigMixin):
    """AIAS as a diffusers scheduler: ``set_timesteps(n)`` plans n network evaluations, ``step`` jumps a segment.

    ``timesteps`` are the segment starts ``aias_boundaries(T, n, t_end)[:-1]`` followed by the tail steps
    t_end, ..., 0; ``step(model_output, t, sample)`` applies ``Pi sample + Sigma x0_hat + sqrt(V) z`` for the
    segment starting at t (coefficients from :func:`segment_coefficients`, float64). No x0 clipping (latents
    are unbounded). Stateless between steps, so the order of calls does not matter.

    Noise z (only when V > 0): ``generator`` may be one ``torch.Generator`` (diffusers' usual, drawn with
    ``randn_tensor``) or a list of one generator per sample, drawing sample i's (C, H, W) noise from
    ``generator[i]`` in float32 (:func:`~fast_lightning.sampling.base.per_sample_randn`), so a sample is
    identical alone or in a batch. ``from_config`` of another scheduler keeps its betas; options AIAS does not
    have (``clip_sample``, ``steps_offset``, ...) are ignored.

    Args:
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas: the training schedule, with
            diffusers' meaning (the betas are computed by diffusers' ``DDPMScheduler``, so they match any
            diffusers scheduler with the same config bit for bit).
        variant: ``"exact"`` (true composition of the posterior steps) or ``"paper"`` (the paper's Lemma 2).
        t_end: last segment boundary; the plain DDPM tail steps t_end, ..., 0 follow (-1 = no tail).
        prediction_type: what the network predicts: ``"epsilon"``, ``"sample"`` (x0) or ``"v_prediction"``.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, variant: str = "exact", t_end: int = 1,
                 prediction_type: str = "epsilon"):
        _check_variant(variant)
        if isinstance(t_end, bool) or not isinstance(t_end, int):
            raise ValueError(f"AIASScheduler t_end must be an int >= -1, got {t_end!r}")
        aias_boundaries(num_train_timesteps, t_end + 2, t_end)  # t_end in range for this T (error names it)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"AIASScheduler prediction_type must be one of {list(PREDICTION_TYPES)}, "
                             f"got {prediction_type!r}")
        try:
            self._ddpm = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start,
                                       beta_end=beta_end, beta_schedule=beta_schedule, trained_betas=trained_betas)
        except NotImplementedError as exc:
            raise ValueError(f"AIASScheduler beta_schedule={beta_schedule!r} is not a diffusers beta schedule "
                             f"({exc})") from None
        self.betas = self._ddpm.betas
        self.alphas_cumprod = self._ddpm.alphas_cumprod  # float32, as in every diffusers scheduler
        self._abar = self.alphas_cumprod.to(torch.float64)  # kernel math in float64
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.long)
        self.plan: list[tuple[int, int, float, float, float]] = []
        self._kernels: dict[int, tuple[float, float, float]] = {}

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Plan ``num_inference_steps`` evaluations: ``self.timesteps`` and the (t_s, t_e, Pi, Sigma, V) plan."""
        T, t_end = self.config.num_train_timesteps, self.config.t_end
        bounds = aias_boundaries(T, num_inference_steps, t_end)
        pairs = list(zip(bounds[:-1], bounds[1:])) + [(t, t - 1) for t in range(t_end, -1, -1)]
        self.plan = [(ts, te, *(float(c) for c in segment_coefficients(self._abar, ts, te, self.config.variant)))
                     for ts, te in pairs]
        self._kernels = {ts: (pi, sigma, var) for ts, _, pi, sigma, var in self.plan}
        self.timesteps = torch.tensor([ts for ts, _ in pairs], dtype=torch.long, device=device)
        self.num_inference_steps = int(num_inference_steps)

    def scale_model_input(self, sample: Tensor, timestep: int | Tensor | None = None) -> Tensor:
        return sample

    def _x0_hat(self, model_output: Tensor, sample: Tensor, ab: float) -> Tensor:
        kind = self.config.prediction_type
        if kind == "epsilon":
            return (sample - math.sqrt(1.0 - ab) * model_output) / math.sqrt(ab)
        if kind == "sample":
            return model_output
        return math.sqrt(ab) * sample - math.sqrt(1.0 - ab) * model_output  # v_prediction

    def step(self, model_output: Tensor, timestep: int | Tensor, sample: Tensor,
             generator: torch.Generator | Sequence[torch.Generator] | None = None,
             return_dict: bool = True) -> AIASSchedulerOutput | tuple[Tensor, Tensor]:
        """Jump the segment that starts at ``timestep``: ``Pi sample + Sigma x0_hat + sqrt(V) z``."""
        if self.num_inference_steps is None:
            raise ValueError("AIASScheduler.step called before set_timesteps(num_inference_steps)")
        t = int(timestep)
        if t not in self._kernels:
            raise ValueError(f"AIASScheduler.step: timestep {t} is not in scheduler.timesteps "
                             f"{[ts for ts, *_ in self.plan]}; call step with those values, in any order")
        pi, sigma, var = self._kernels[t]
        x0 = self._x0_hat(model_output, sample, float(self._abar[t]))
        prev = pi * sample + sigma * x0
        if var > 0.0:
            prev = prev + math.sqrt(var) * self._noise(sample, generator)
        if not return_dict:
            return prev, x0
        return AIASSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    @staticmethod
    def _noise(sample: Tensor, generator) -> Tensor:
        if isinstance(generator, (list, tuple)):
            if len(generator) != sample.shape[0]:
                raise ValueError(f"AIASScheduler.step: got {len(generator)} generators for a batch of "
                                 f"{sample.shape[0]}; pass one torch.Generator per sample (or a single one)")
            return per_sample_randn(generator, sample.shape[1:], sample.device, sample.dtype)
        noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=torch.float32)
        return noise.to(sample.dtype)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """q(x_t | x_0) on this schedule (diffusers' DDPM forward process on the same betas)."""
        return self._ddpm.add_noise(original_samples, noise, timesteps)


class AIASSampler(Sampler):
    """FAST's AIAS sampler: ``steps`` network evaluations in total (:class:`AIASScheduler` in the shared loop).

    Per segment [t_s -> t_e] (reference algorithm, section 4):

    1. FARM injection ``x_in = (1-M) x + M (sqrt(abar_ts) FARM(x, M, t_s) + sqrt(1-abar_ts) z)``;
    2. ``eps = predict_eps(x_in, t_s)``, ``x0_hat = (x_in - sqrt(1-abar_ts) eps) / sqrt(abar_ts)``;
    3. ``x = Pi x_in + Sigma x0_hat + sqrt(V) z``  -- the kernel multiplies ``x_in``: after injection,
       x_in IS the sample at t_s that the network saw, so x0_hat and the kernel refer to the same state
       (outside the mask x_in == x);
    4. background re-noising ``x = (1-M) q_sample(background, t_e) + M x`` (per ``renoise``).

    Then single DDPM posterior steps at t = t_end, ..., 0 (same operations; at t = 0 V = 0, no noise).
    Steps 1 and 4 are the shared loop (:meth:`Sampler._sample`), 2-3 are :meth:`AIASScheduler.step`.
    Step 1 runs only where ``t_s >= farm_min_t`` (default 2): every segment (they all start at t_s >= the
    last boundary above the tail), but none of the default t = 1, 0 tail, which are plain posterior steps as
    in the authors' code. With FARM in the tail the exact t = 0 kernel returns x0_hat of the injected input,
    i.e. FARM's (blurry) reconstruction would become the final defect pixels. ``farm_min_t=0`` restores that
    old behaviour; with ``t_end > 1`` raise ``farm_min_t`` to ``t_end + 1`` to keep the whole tail FARM-free.
    Noise draws per sample, in order: x_T; then per step: FARM z (only if FARM is injected at that step),
    kernel z (if V > 0), re-noise eps (if active and t_e >= 0). With ``steps = T`` and ``variant="exact"``
    this is exactly DDPM (same draws as :class:`~fast_lightning.sampling.DDPMSampler` with the same
    ``farm_min_t``).
    """

    name = "aias"
    scheduler_cls = AIASScheduler

    def __init__(self, steps: int = 10, variant: str = "exact", t_end: int = 1, *, farm: bool = True,
                 farm_min_t: int = DEFAULT_FARM_MIN_T, renoise: str = "every",
                 renoise_band: Sequence[int | float] = DEFAULT_RENOISE_BAND, progress: ProgressFn | None = None):
        super().__init__(farm=farm, farm_min_t=farm_min_t, renoise=renoise, renoise_band=renoise_band,
                         progress=progress)
        if isinstance(t_end, bool) or not isinstance(t_end, int) or t_end < -1:
            raise ConfigError(f"sampling.t_end must be an int >= -1, got {t_end!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < t_end + 2:
            raise ConfigError(f"sampling.steps must be an int >= {t_end + 2} for AIAS with t_end={t_end}, "
                             f"got {steps!r}")
        self.steps = steps
        self.variant = _check_variant(variant)
        self.t_end = t_end

    def min_steps(self) -> int:
        return self.t_end + 2

    def num_steps(self, num_train_timesteps: int) -> int:
        return self.steps

    def _scheduler_kwargs(self) -> dict:
        return dict(variant=self.variant, t_end=self.t_end)

    def __repr__(self) -> str:
        return (f"AIASSampler(steps={self.steps}, variant={self.variant!r}, t_end={self.t_end}, "
                f"farm={self.farm}, farm_min_t={self.farm_min_t}, renoise={self.renoise!r}, "
                f"renoise_band={self.renoise_band})")
