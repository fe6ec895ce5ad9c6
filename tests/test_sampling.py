"""Tests for fast_lightning.sampling: AIAS kernel algebra, sampler contract, baselines, config errors.

The model is a tiny deterministic fake following the duck-typed interface the samplers program against
(schedule / predict_eps / farm / farm_x0), so these tests never depend on fast_lightning.diffusion.
"""

import math

import pytest
import torch

import fast_lightning  # noqa: F401  (compat shim first)
from diffusers import DDPMScheduler

from fast_lightning.sampling import (
    SAMPLERS,
    AIASSampler,
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    Sampler,
    aias_boundaries,
    build_sampler,
    segment_coefficients,
)

SCHED_KW = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def _alphas_cumprod(T):
    return DDPMScheduler(num_train_timesteps=T, **SCHED_KW).alphas_cumprod.float()


@pytest.fixture(scope="module")
def ac1000():
    return _alphas_cumprod(1000)


class FakeSchedule:
    def __init__(self, T):
        s = DDPMScheduler(num_train_timesteps=T, **SCHED_KW)
        self.betas = s.betas.float()
        self.alphas_cumprod = s.alphas_cumprod.float()
        self.num_train_timesteps = T

    def q_sample(self, x0, t, eps):
        ab = self.alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1).to(x0.dtype)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def make_diffusers_scheduler(self, cls, **kw):
        return cls(num_train_timesteps=self.num_train_timesteps, **SCHED_KW, **kw)


class FakeModel:
    """predict_eps: fixed random 1x1 conv over (x, mask) + tanh of t and cond; FARM: a fixed smooth map."""

    def __init__(self, T=50, C=3, farm=True):
        g = torch.Generator().manual_seed(1234)
        self.schedule = FakeSchedule(T)
        self.w = torch.randn(C, C, generator=g) * 0.4
        self.wm = torch.randn(C, generator=g) * 0.3
        self.farm = torch.nn.Identity() if farm else None
        self.T = T
        self.calls = 0

    def predict_eps(self, x, t, cond, mask):
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        self.calls += 1
        h = torch.einsum("oc,bchw->bohw", self.w, x) + self.wm.view(1, -1, 1, 1) * mask
        tt = torch.tanh(t.float() / self.T).view(-1, 1, 1, 1)
        return torch.tanh(h) + 0.2 * tt + 0.05 * cond.float().view(-1, 1, 1, 1)

    def farm_x0(self, x, mask, t):
        tt = (t.float() / self.T).view(-1, 1, 1, 1)
        return mask * (0.5 * torch.tanh(x) - 0.3 + 0.1 * tt)


def _inputs(B=2, C=3, S=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    background = torch.rand(B, C, S, S, generator=g) * 2 - 1
    mask = torch.zeros(B, 1, S, S)
    mask[:, :, 2:6, 3:7] = 1
    cond = torch.arange(1, B + 1, dtype=torch.long)
    return background, mask, cond


def _gens(B, seed=7):
    return [torch.Generator().manual_seed(seed + i) for i in range(B)]


def _posterior_step(ac, t):
    """Single DDPM posterior step at t (x_t -> x_{t-1}): (B_t, A_t, s_t^2) in float64."""
    ab = float(ac[t])
    abp = float(ac[t - 1]) if t > 0 else 1.0
    alpha = ab / abp
    beta = 1 - alpha
    return (math.sqrt(alpha) * (1 - abp) / (1 - ab), math.sqrt(abp) * beta / (1 - ab),
            (1 - abp) * beta / (1 - ab))


# ---------------------------------------------------------------------------------------- coefficients
@pytest.mark.parametrize("ts,te", [(999, 874), (500, 375), (125, 1), (10, 9), (3, -1), (0, -1)])
def test_exact_kernel_equals_composed_posterior_steps(ac1000, ts, te):
    ac = ac1000.double()
    p, s, v = 1.0, 0.0, 0.0  # x = p x_ts + s x0 + N(0, v)
    for t in range(ts, te, -1):
        B, A, s2 = _posterior_step(ac, t)
        p, s, v = B * p, B * s + A, B * B * v + s2
    pi, sigma, var = segment_coefficients(ac1000, ts, te, "exact")
    for got in (pi, sigma, var):
        assert got.dtype == torch.float64 and got.dim() == 0
    assert pi.item() == pytest.approx(p, rel=1e-9, abs=1e-12)
    assert sigma.item() == pytest.approx(s, rel=1e-9, abs=1e-12)
    assert var.item() == pytest.approx(v, rel=1e-8, abs=1e-12)


def test_single_step_variants_coincide_and_match_ddpm(ac1000):
    for t in (999, 400, 1, 0):
        B, A, s2 = _posterior_step(ac1000.double(), t)
        for variant in ("exact", "paper"):
            pi, sigma, var = segment_coefficients(ac1000, t, t - 1, variant)
            assert (pi.item(), sigma.item(), var.item()) == pytest.approx((B, A, s2), rel=1e-9, abs=1e-14)


def test_paper_variant_reproduces_reference_numbers(ac1000):
    b = aias_boundaries(1000, 10)
    ts, te = b[-2], b[-1]
    assert (ts, te) == (125, 1)
    pi_p, sig_p, var_p = segment_coefficients(ac1000, ts, te, "paper")
    pi_e, sig_e, var_e = segment_coefficients(ac1000, ts, te, "exact")
    # reference: last segment std 0.222 (paper) vs 0.041 (exact); measured 0.22233 / 0.04106
    assert var_p.sqrt().item() == pytest.approx(0.2223, abs=5e-4)
    assert var_e.sqrt().item() == pytest.approx(0.0411, abs=5e-4)
    assert pi_p.item() == pytest.approx(pi_e.item(), rel=1e-9)  # Pi is the same product in both
    assert sig_p.item() == pytest.approx(0.98760, abs=1e-4)
    assert sig_e.item() == pytest.approx(0.98849, abs=1e-4)
    # the printed index only differs for multi-step segments; first segment differs less
    _, _, v1p = segment_coefficients(ac1000, 999, 874, "paper")
    _, _, v1e = segment_coefficients(ac1000, 999, 874, "exact")
    assert v1p.sqrt().item() == pytest.approx(0.8610, abs=5e-4)
    assert v1e.sqrt().item() == pytest.approx(0.8584, abs=5e-4)


def test_exact_tail_to_clean_and_errors(ac1000):
    pi, sigma, var = segment_coefficients(ac1000, 125, -1, "exact")
    assert (pi.item(), sigma.item(), var.item()) == pytest.approx((0.0, 1.0, 0.0), abs=1e-12)
    with pytest.raises(ValueError, match="sampling.variant"):
        segment_coefficients(ac1000, 10, 5, "ddim")
    with pytest.raises(ValueError):
        segment_coefficients(ac1000, 5, 10, "exact")
    with pytest.raises(ValueError):
        segment_coefficients(ac1000, 1000, 10, "exact")


def test_boundaries():
    assert aias_boundaries(1000, 10) == [999, 874, 749, 624, 500, 375, 250, 125, 1]
    assert len(aias_boundaries(1000, 50)) == 49
    assert aias_boundaries(1000, 3) == [999, 1]
    assert aias_boundaries(50, 50) == list(range(49, 0, -1))
    assert aias_boundaries(1000, 10, t_end=-1)[-1] == -1 and len(aias_boundaries(1000, 10, t_end=-1)) == 11
    with pytest.raises(ValueError, match=r"sampling.steps.*>= 3"):
        aias_boundaries(1000, 2)
    with pytest.raises(ValueError, match="sampling.steps"):
        aias_boundaries(50, 51)


# ---------------------------------------------------------------------------------------- samplers
def _own_ddpm_loop(model, background, mask, cond, generators):
    """Reference ancestral DDPM (posterior beta-tilde), no FARM / re-noising, same per-sample draws."""
    ac = model.schedule.alphas_cumprod.double()

    def randn():
        return torch.stack([torch.randn(background.shape[1:], generator=g) for g in generators])

    x = randn()
    for t in range(model.schedule.num_train_timesteps - 1, -1, -1):
        ab = float(ac[t])
        eps = model.predict_eps(x, torch.full((x.shape[0],), t, dtype=torch.long), cond, mask)
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        B, A, s2 = _posterior_step(ac, t)
        x = B * x + A * x0
        if t > 0:
            x = x + math.sqrt(s2) * randn()
    return mask * x + (1 - mask) * background


def test_aias_with_every_timestep_is_ddpm():
    T = 40
    model = FakeModel(T=T)
    bg, mask, cond = _inputs(B=2)
    ref = _own_ddpm_loop(model, bg, mask, cond, _gens(2))
    out = AIASSampler(steps=T, variant="exact", farm=False, renoise="none")(model, bg, mask, cond, _gens(2))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # with FARM and re-noising the draws still align with the diffusers DDPM baseline under the same FARM
    # rule: the default (no FARM at t < 2) and the old one (FARM at every step, farm_min_t=0)
    old = AIASSampler(steps=T, variant="exact", farm_min_t=0)(model, bg, mask, cond, _gens(2))
    torch.testing.assert_close(old, DDPMSampler(farm_min_t=0)(model, bg, mask, cond, _gens(2)),
                               atol=1e-4, rtol=1e-4)
    a = AIASSampler(steps=T, variant="exact")(model, bg, mask, cond, _gens(2))
    d = DDPMSampler()(model, bg, mask, cond, _gens(2))
    torch.testing.assert_close(a, d, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(a, old, atol=1e-3)  # the rule changes the final pixels
    # and the paper variant is exact for unit segments too
    p = AIASSampler(steps=T, variant="paper")(model, bg, mask, cond, _gens(2))
    torch.testing.assert_close(a, p, atol=1e-5, rtol=1e-5)


ALL_SAMPLERS = [
    lambda: AIASSampler(steps=5),
    lambda: AIASSampler(steps=5, variant="paper", renoise="band", renoise_band=(10, 40)),
    lambda: DDPMSampler(),
    lambda: DDIMSampler(steps=5),
    lambda: DDIMSampler(steps=5, eta=1.0),
    lambda: DPMSolverSampler(steps=5),
]


@pytest.mark.parametrize("make", ALL_SAMPLERS)
def test_contract_paste_back_determinism_per_index(make):
    model = FakeModel(T=50)
    bg, mask, cond = _inputs(B=3)
    out = make()(model, bg, mask, cond, _gens(3))
    assert out.shape == bg.shape and out.dtype == bg.dtype and torch.isfinite(out).all()
    keep = (mask == 0).expand_as(bg)
    assert torch.equal(out[keep], bg[keep])
    inside = (mask == 1).expand_as(bg)
    assert (out[inside] - bg[inside]).abs().mean() > 1e-2
    again = make()(model, bg, mask, cond, _gens(3))
    assert torch.equal(out, again)
    alone = make()(model, bg[:1], mask[:1], cond[:1], _gens(1))
    torch.testing.assert_close(alone[0], out[0], atol=1e-5, rtol=1e-5)
    other_seed = make()(model, bg, mask, cond, _gens(3, seed=99))
    assert not torch.allclose(other_seed, out)


@pytest.mark.parametrize("steps", [3, 5, 10, 50])
def test_aias_nfe(steps):
    model = FakeModel(T=50)
    bg, mask, cond = _inputs(B=1)
    seen = []
    s = AIASSampler(steps=steps, progress=lambda done, total: seen.append((done, total)))
    s(model, bg, mask, cond, _gens(1))
    assert s.nfe == steps == model.calls
    assert seen[-1] == (steps, steps)


def test_baseline_nfe_and_farm_switch():
    bg, mask, cond = _inputs(B=1)
    for sampler, expected in [(DDIMSampler(steps=7), 7), (DPMSolverSampler(steps=6), 6), (DDPMSampler(), 50)]:
        model = FakeModel(T=50)
        sampler(model, bg, mask, cond, _gens(1))
        assert sampler.nfe == expected == model.calls
    # FARM off (flag) == FARM absent (model.farm is None)
    a = AIASSampler(steps=5, farm=False)(FakeModel(T=50), bg, mask, cond, _gens(1))
    b = AIASSampler(steps=5)(FakeModel(T=50, farm=False), bg, mask, cond, _gens(1))
    c = AIASSampler(steps=5)(FakeModel(T=50), bg, mask, cond, _gens(1))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def _farm_spy(model):
    """Record the timestep of every model.farm_x0 call (the sampler passes t as a (B,) LongTensor)."""
    seen, real = [], model.farm_x0

    def spy(x, mask, t):
        assert bool((t == t[0]).all())
        seen.append(int(t[0]))
        return real(x, mask, t)

    model.farm_x0 = spy
    return seen


@pytest.mark.parametrize("T", [50, 1000])
def test_aias_farm_only_in_segments(T):
    """AIAS-10 (t_end=1): FARM once per segment (8), never in the t = 1, 0 tail; farm_min_t=0 = old (10)."""
    bg, mask, cond = _inputs(B=2)
    model = FakeModel(T=T)
    seen = _farm_spy(model)
    sampler = AIASSampler(steps=10)
    sampler(model, bg, mask, cond, _gens(2))
    segment_starts = aias_boundaries(T, 10, 1)[:-1]
    assert seen == segment_starts and len(seen) == 8 and min(seen) > 1
    assert sampler.nfe == 10 == model.calls  # the tail still evaluates the network, just without FARM

    model = FakeModel(T=T)
    seen = _farm_spy(model)
    AIASSampler(steps=10, farm_min_t=0)(model, bg, mask, cond, _gens(2))
    assert seen == segment_starts + [1, 0]


@pytest.mark.parametrize("make,farm_min_t", [
    (lambda m: DDPMSampler(farm_min_t=m), 2),
    (lambda m: DDPMSampler(farm_min_t=m), 10),
    (lambda m: DDIMSampler(steps=50, farm_min_t=m), 2),
    (lambda m: DDIMSampler(steps=7, eta=1.0, farm_min_t=m), 20),
    (lambda m: DPMSolverSampler(steps=50, farm_min_t=m), 2),
])
def test_baselines_no_farm_below_farm_min_t(make, farm_min_t):
    T = 50
    bg, mask, cond = _inputs(B=1)
    model = FakeModel(T=T)
    seen = _farm_spy(model)
    sampler = make(farm_min_t)
    sampler(model, bg, mask, cond, _gens(1))
    sched = sampler.make_scheduler(model)
    sched.set_timesteps(sampler.expected_nfe(T))
    timesteps = [int(t) for t in sched.timesteps]
    assert any(t < farm_min_t for t in timesteps)  # the rule is actually exercised
    assert seen == [t for t in timesteps if t >= farm_min_t]
    # farm_min_t=0: FARM before every evaluation again (the old behaviour)
    model = FakeModel(T=T)
    seen = _farm_spy(model)
    make(0)(model, bg, mask, cond, _gens(1))
    assert seen == timesteps


def test_farm_min_t_from_config_and_validated():
    assert build_sampler({"name": "aias"}).farm_min_t == 2  # default: no FARM in the refinement tail
    assert build_sampler({"name": "ddim", "farm_min_t": 0}).farm_min_t == 0
    for bad in (-1, 1.5, "x"):
        with pytest.raises(ValueError, match=r"sampling\.farm_min_t"):
            build_sampler({"name": "aias", "farm_min_t": bad})
    with pytest.raises(ValueError, match=r"sampling\.farm_min_t"):
        DDIMSampler(steps=5, farm_min_t=-3)


def test_steps_above_T_rejected_at_call():
    model = FakeModel(T=50)
    bg, mask, cond = _inputs(B=1)
    for s in (AIASSampler(steps=51), DDIMSampler(steps=51)):
        with pytest.raises(ValueError, match="sampling.steps"):
            s(model, bg, mask, cond, _gens(1))
    with pytest.raises(ValueError, match="generators"):
        AIASSampler(steps=3)(model, bg, mask, cond, _gens(2))


# ---------------------------------------------------------------------------------------- build_sampler
def test_build_sampler():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(dict(name="aias", steps=10, variant="paper", renoise="band",
                                renoise_band=[250, 750], farm_inject=True, t_end=1, eta=0.0))
    s = build_sampler(cfg)
    assert isinstance(s, AIASSampler) and s.steps == 10 and s.variant == "paper" and s.renoise == "band"
    assert isinstance(build_sampler({"name": "ddim", "steps": 20, "eta": 0.5}), DDIMSampler)
    assert isinstance(build_sampler({"name": "dpmsolver", "steps": 20}), DPMSolverSampler)
    assert isinstance(build_sampler({"name": "ddpm", "steps": 10}), DDPMSampler)
    for name, cls in SAMPLERS.items():  # build_sampler dispatches on sampling.name
        assert type(build_sampler({"name": name, "steps": 10})) is cls and issubclass(cls, Sampler)


@pytest.mark.parametrize("cfg,key", [
    ({"name": "plms"}, r"sampling\.name.*aias.*ddim.*ddpm.*dpmsolver"),
    ({"name": "aias", "steps": 0}, r"sampling\.steps"),
    ({"name": "ddim", "steps": 0}, r"sampling\.steps"),
    ({"name": "aias", "steps": 2}, r"sampling\.steps.*3"),
    ({"name": "aias", "steps": 2.5}, r"sampling\.steps"),
    ({"name": "aias", "variant": "fast"}, r"sampling\.variant"),
    ({"name": "aias", "renoise": "sometimes"}, r"sampling\.renoise"),
    ({"name": "aias", "renoise_band": [750, 250]}, r"sampling\.renoise_band"),
    ({"name": "ddim", "eta": -1}, r"sampling\.eta"),
])
def test_build_sampler_errors_name_the_key(cfg, key):
    with pytest.raises(ValueError, match=key):
        build_sampler(cfg)


# ---------------------------------------------------------------------------------------- frozen AIAS loop
def _old_aias_loop(model, bg, mask, cond, gens, steps, variant="exact", t_end=1, farm_min_t=2,
                   renoise="every", band=(250, 750)):
    """Frozen copy of AIASSampler's own loop before AIAS became a scheduler (same ops, same draw order).

    The shared-loop AIASSampler must reproduce it bit for bit: x_T; per step FARM z (if injected), kernel z
    (if V > 0), re-noise eps (if active and t_e >= 0).
    """
    ac = model.schedule.alphas_cumprod.detach().to("cpu", torch.float64)
    T = int(model.schedule.num_train_timesteps)

    def randn():
        return torch.stack([torch.randn(bg.shape[1:], generator=g, dtype=torch.float32) for g in gens])

    def abar(t):
        return 1.0 if t < 0 else float(ac[t])

    def tvec(t):
        return torch.full((bg.shape[0],), int(t), dtype=torch.long)

    b = aias_boundaries(T, steps, t_end)
    pairs = list(zip(b[:-1], b[1:])) + [(t, t - 1) for t in range(t_end, -1, -1)]
    x = randn()
    for ts, te in pairs:
        pi, sigma, var = (float(v) for v in segment_coefficients(ac, ts, te, variant))
        x_in = x
        if model.farm is not None and ts >= farm_min_t:
            ab = abar(ts)
            x_an = math.sqrt(ab) * model.farm_x0(x, mask, tvec(ts)) + math.sqrt(1.0 - ab) * randn()
            x_in = (1 - mask) * x + mask * x_an
        eps = model.predict_eps(x_in, tvec(ts), cond, mask)
        ab = abar(ts)
        x0 = (x_in - math.sqrt(1.0 - ab) * eps) / math.sqrt(ab)
        x = pi * x_in + sigma * x0
        if var > 0.0:
            x = x + math.sqrt(var) * randn()
        if renoise == "every" or (renoise == "band" and band[0] < te < band[1]):
            bg_t = bg if te < 0 else model.schedule.q_sample(bg, tvec(te), randn())
            x = (1 - mask) * bg_t + mask * x
    return mask * x + (1 - mask) * bg


@pytest.mark.parametrize("kw", [
    dict(steps=10),
    dict(steps=5, variant="paper"),
    dict(steps=6, t_end=-1, renoise="band", band=(10, 40)),
    dict(steps=8, t_end=3, farm_min_t=0, renoise="none"),
    dict(steps=50, farm_min_t=4),
])
def test_aias_bit_identical_to_frozen_loop(kw):
    model = FakeModel(T=50)
    bg, mask, cond = _inputs(B=3)
    ref = _old_aias_loop(model, bg, mask, cond, _gens(3), **kw)
    band = kw.pop("band", (250, 750))
    out = AIASSampler(**kw, renoise_band=band)(model, bg, mask, cond, _gens(3))
    assert torch.equal(out, ref)


# ---------------------------------------------------------------------------------------- AIASScheduler
def _aias_scheduler(T=50, **kw):
    from fast_lightning.sampling import AIASScheduler

    return AIASScheduler(num_train_timesteps=T, **SCHED_KW, **kw)


def test_scheduler_timesteps_are_the_aias_plan_and_from_config_keeps_betas():
    from fast_lightning.sampling import AIASScheduler

    ddpm = DDPMScheduler(num_train_timesteps=1000, **SCHED_KW, clip_sample=True, variance_type="fixed_small")
    s = AIASScheduler.from_config(ddpm.config, variant="paper")
    assert s.config.variant == "paper" and s.config.t_end == 1 and s.order == 1 and s.init_noise_sigma == 1.0
    assert torch.equal(s.alphas_cumprod, ddpm.alphas_cumprod)  # same betas, bit for bit
    s.set_timesteps(10)
    assert s.timesteps.tolist() == [999, 874, 749, 624, 500, 375, 250, 125, 1, 0]
    assert s.timesteps.dtype == torch.long
    ts, te, pi, sigma, var = s.plan[-3]
    assert (ts, te) == (125, 1)
    assert (pi, sigma, var) == tuple(float(c) for c in segment_coefficients(ddpm.alphas_cumprod, 125, 1, "paper"))
    s2 = _aias_scheduler(T=1000, t_end=-1)
    s2.set_timesteps(10)
    assert s2.timesteps.tolist() == aias_boundaries(1000, 10, -1)[:-1]
    # a round trip through the config keeps the AIAS options
    again = AIASScheduler.from_config(s.config)
    again.set_timesteps(10)
    assert again.plan == s.plan


def test_scheduler_step_kernel_noise_and_errors():
    s = _aias_scheduler(T=50)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(eps, 49, x)
    s.set_timesteps(5)
    t = s.timesteps[0]  # a tensor, as pipelines pass it
    ts, te, pi, sigma, var = s.plan[0]
    ab = float(s.alphas_cumprod[ts])
    x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    out = s.step(eps, t, x, generator=_gens(2))
    torch.testing.assert_close(out.pred_original_sample, x0)
    z = torch.stack([torch.randn(3, 4, 4, generator=g) for g in _gens(2)])
    torch.testing.assert_close(out.prev_sample, pi * x + sigma * x0 + math.sqrt(var) * z)
    # per-sample generators: sample 1 alone == sample 1 in the batch; one generator == a list of one
    alone = s.step(eps[1:], t, x[1:], generator=_gens(2)[1:]).prev_sample
    assert torch.equal(alone[0], out.prev_sample[1])
    single = s.step(eps[:1], t, x[:1], generator=_gens(1)[0]).prev_sample
    assert torch.equal(single, s.step(eps[:1], t, x[:1], generator=_gens(1)).prev_sample)
    # the last tail step (t = 0) is deterministic: V = 0, returns x0_hat
    prev, pred = s.step(eps, 0, x, return_dict=False)
    torch.testing.assert_close(prev, pred)
    # v-prediction / x0-prediction reach the same kernel output for the same underlying x0
    v = math.sqrt(ab) * eps - math.sqrt(1 - ab) * x0
    for kind, model_out in (("v_prediction", v), ("sample", x0)):
        sv = _aias_scheduler(T=50, prediction_type=kind)
        sv.set_timesteps(5)
        torch.testing.assert_close(sv.step(model_out, t, x, generator=_gens(2)).prev_sample, out.prev_sample,
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not in scheduler.timesteps"):
        s.step(eps, 18, x)
    with pytest.raises(ValueError, match="one torch.Generator per sample"):
        s.step(eps, t, x, generator=_gens(3))
    with pytest.raises(ValueError, match="variant"):
        _aias_scheduler(variant="ddim")
    with pytest.raises(ValueError, match="t_end"):
        _aias_scheduler(T=50, t_end=49)
    with pytest.raises(ValueError, match="prediction_type"):
        _aias_scheduler(prediction_type="flow")
    # add_noise is q(x_t | x_0) on the same schedule
    tt = torch.tensor([3, 40])
    ab_t = s.alphas_cumprod[tt].view(-1, 1, 1, 1)
    torch.testing.assert_close(s.add_noise(x, eps, tt), ab_t.sqrt() * x + (1 - ab_t).sqrt() * eps)


class _UNetModel(FakeModel):
    """The duck-typed model interface around a diffusers UNet2DModel (eps-prediction, no cond, no FARM)."""

    def __init__(self, unet, T):
        self.schedule = FakeSchedule(T)
        self.unet = unet
        self.farm = None
        self.calls = 0

    def predict_eps(self, x, t, cond, mask):
        self.calls += 1
        return self.unet(x, t).sample


def test_aias_scheduler_in_a_diffusers_pipeline_equals_aias_sampler():
    """AIASScheduler in diffusers' own DDPMPipeline == our AIASSampler (FARM off, no re-noising), same noise."""
    from diffusers import DDPMPipeline, UNet2DModel

    from fast_lightning.sampling import AIASScheduler

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.eval()
    T, B, steps = 50, 2, 6
    scheduler = AIASScheduler.from_config(FakeSchedule(T).make_diffusers_scheduler(DDPMScheduler).config)
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        images = pipe(batch_size=B, generator=_gens(B), num_inference_steps=steps, output_type="pt").images

    model = _UNetModel(unet, T)
    bg = torch.zeros(B, 3, 8, 8)
    mask = torch.ones(B, 1, 8, 8)  # generate everywhere: the paste-back keeps the sampler's x
    sampler = AIASSampler(steps=steps, farm=False, renoise="none")
    x = sampler(model, bg, mask, torch.zeros(B, dtype=torch.long), _gens(B))
    assert sampler.nfe == model.calls == steps
    ours = (x / 2 + 0.5).clamp(0, 1)  # the pipeline's own output conversion
    torch.testing.assert_close(images, ours, atol=1e-6, rtol=0)
    assert images.std() > 0.05  # a real image, not a constant
