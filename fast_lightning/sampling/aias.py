"""AIAS: Anomaly-Informed Accelerated Sampling (FAST, section 4 of docs/reference).

Within a window [t_e, t_s] the network's x0-prediction is assumed constant, so the t_s - t_e DDPM posterior
steps compose into ONE affine-Gaussian kernel ``x_te = Pi x_ts + Sigma x0_hat + sqrt(V) z``: one network
evaluation per segment instead of one per timestep.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fast_lightning.sampling.base import (
    DEFAULT_FARM_MIN_T,
    DEFAULT_RENOISE_BAND,
    ProgressFn,
    Sampler,
    SamplingRun,
)

VARIANTS = ("exact", "paper")


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"sampling.variant must be one of {list(VARIANTS)}, got {variant!r}")
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
        raise ValueError(f"sampling.t_end must satisfy -1 <= t_end < T-1 = {T - 1}, got {t_end}")
    minimum = t_end + 2
    if steps < minimum:
        raise ValueError(f"sampling.steps must be >= {minimum} for AIAS with t_end={t_end} "
                         f"(at least one segment plus the tail), got {steps}")
    if steps > T:
        raise ValueError(f"sampling.steps must be <= T = {T} for AIAS (steps = T is DDPM), got {steps}")
    K = steps - t_end
    start, stop = float(T - 1), float(t_end)
    # float64 linspace, floor with a tiny guard so exact integers never truncate down
    vals = [start + (stop - start) * k / (K - 1) for k in range(K)]
    bounds = [int(math.floor(v + 1e-9)) for v in vals]
    bounds[0], bounds[-1] = T - 1, t_end
    if any(a <= b for a, b in zip(bounds[:-1], bounds[1:])):  # cannot happen for steps <= T; keep a guard
        raise ValueError(f"sampling.steps={steps} gives repeated AIAS boundaries for T={T}")
    return bounds


class AIASSampler(Sampler):
    """FAST's AIAS sampler: ``steps`` network evaluations in total.

    Per segment [t_s -> t_e] (reference algorithm, section 4):

    1. FARM injection ``x_in = (1-M) x + M (sqrt(abar_ts) FARM(x, M, t_s) + sqrt(1-abar_ts) z)``;
    2. ``eps = predict_eps(x_in, t_s)``, ``x0_hat = (x_in - sqrt(1-abar_ts) eps) / sqrt(abar_ts)``;
    3. ``x = Pi x_in + Sigma x0_hat + sqrt(V) z``  -- the kernel multiplies ``x_in``: after injection,
       x_in IS the sample at t_s that the network saw, so x0_hat and the kernel refer to the same state
       (outside the mask x_in == x);
    4. background re-noising ``x = (1-M) q_sample(background, t_e) + M x`` (per ``renoise``).

    Then single DDPM posterior steps at t = t_end, ..., 0 (same operations; at t = 0 V = 0, no noise).
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

    def __init__(self, steps: int = 10, variant: str = "exact", t_end: int = 1, *, farm: bool = True,
                 farm_min_t: int = DEFAULT_FARM_MIN_T, renoise: str = "every",
                 renoise_band: Sequence[int | float] = DEFAULT_RENOISE_BAND, progress: ProgressFn | None = None):
        super().__init__(farm=farm, farm_min_t=farm_min_t, renoise=renoise, renoise_band=renoise_band,
                         progress=progress)
        if isinstance(t_end, bool) or not isinstance(t_end, int) or t_end < -1:
            raise ValueError(f"sampling.t_end must be an int >= -1, got {t_end!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < t_end + 2:
            raise ValueError(f"sampling.steps must be an int >= {t_end + 2} for AIAS with t_end={t_end}, "
                             f"got {steps!r}")
        self.steps = steps
        self.variant = _check_variant(variant)
        self.t_end = t_end

    def min_steps(self) -> int:
        return self.t_end + 2

    def expected_nfe(self, num_train_timesteps: int) -> int:
        return self.steps

    def plan(self, alphas_cumprod: Tensor) -> list[tuple[int, int, float, float, float]]:
        """The (t_s, t_e, Pi, Sigma, V) of every network evaluation, segments then tail steps."""
        T = int(alphas_cumprod.shape[0])
        b = aias_boundaries(T, self.steps, self.t_end)
        pairs = list(zip(b[:-1], b[1:])) + [(t, t - 1) for t in range(self.t_end, -1, -1)]
        out = []
        for ts, te in pairs:
            pi, sigma, var = segment_coefficients(alphas_cumprod, ts, te, self.variant)
            out.append((ts, te, float(pi), float(sigma), float(var)))
        return out

    def _sample(self, run: SamplingRun) -> Tensor:
        plan = self.plan(run.alphas_cumprod)
        x = run.randn()
        for ts, te, pi, sigma, var in plan:
            x_in = run.inject(x, ts)
            eps = run.eps(x_in, ts)
            x0 = run.x0_hat(x_in, eps, ts)
            x = pi * x_in + sigma * x0
            if var > 0.0:
                x = x + math.sqrt(var) * run.randn()
            x = run.renoise(x, te)
        return x

    def __repr__(self) -> str:
        return (f"AIASSampler(steps={self.steps}, variant={self.variant!r}, t_end={self.t_end}, "
                f"farm={self.farm}, farm_min_t={self.farm_min_t}, renoise={self.renoise!r}, "
                f"renoise_band={self.renoise_band})")
