"""Unit tests of the pure-torch diffusion core (tiny 32 px configs, CPU, a few seconds)."""

from __future__ import annotations

import copy

import pytest
import torch

import fast_lightning  # noqa: F401  (installs the torchvision shim first)
from fast_lightning.diffusion import (
    FARM,
    Adaptor,
    FASTDiffusion,
    NoiseSchedule,
    PixelUNetDenoiser,
    build_denoiser,
    build_fast_diffusion,
    parameter_count,
)

TINY = {
    "backbone": "pixel_unet",
    "resolution": 32,
    "unet": {
        "block_out_channels": [16, 32],
        "layers_per_block": 1,
        "attention_levels": [False, True],
        "mask_channel": True,
        "dropout": 0.0,
    },
    "farm": {"enabled": True, "base_channels": 8, "time_dim": 32},
    "adaptor": False,
    "schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "lambda_eps": 2.0,
    "lambda_farm": 5.0,
}


def tiny_cfg(**overrides):
    cfg = copy.deepcopy(TINY)
    for dotted, value in overrides.items():
        node = cfg
        *path, last = dotted.split("__")
        for key in path:
            node = node[key]
        node[last] = value
    return cfg


def box_masks(b: int, size: int = 32) -> torch.Tensor:
    m = torch.zeros(b, 1, size, size)
    for i in range(b):
        o = 4 + 3 * i
        m[i, :, o : o + 12, o + 2 : o + 10] = 1.0
    return m


def fixed_batch(b: int = 4, c: int = 3, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, c, size, size, generator=g) * 2 - 1
    mask = box_masks(b, size)
    cond = torch.arange(b) % 3  # 0..K with K = 2
    t = torch.randint(50, 950, (b,), generator=g)
    eps = torch.randn(b, c, size, size, generator=g)
    return x0, mask, cond, t, eps


# ------------------------------------------------------------------ FARM
@pytest.mark.parametrize("channels", [3, 4])
def test_farm_output_shape(channels):
    farm = FARM(channels, 32, base_channels=8, time_dim=32)
    x = torch.randn(2, channels, 32, 32)
    out = farm(x, box_masks(2), torch.tensor([0, 999]))
    assert out.shape == x.shape


def test_farm_soft_mask_is_one_inside_and_open_interval_outside():
    torch.manual_seed(0)
    farm = FARM(3, 32, base_channels=8, time_dim=32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:16, 8:24] = 1.0
    mask[1, :, 30, :] = 1.0  # a 1 px line: max pooling must keep it at /4
    soft = farm.soft_mask(mask, torch.tensor([10, 500]))
    assert soft.shape == (2, 1, 8, 8)
    inside = torch.nn.functional.adaptive_max_pool2d(mask, 8) > 0.5
    assert inside[1, 0, 7].all()  # thin defect survived the downsampling
    assert torch.equal(soft[inside], torch.ones_like(soft[inside]))
    outside = soft[~inside]
    assert outside.numel() > 0
    assert (outside > 0).all() and (outside < 1).all()


@pytest.mark.parametrize("size", [30, 34, 2])
def test_farm_rejects_size_not_divisible_by_4(size):
    with pytest.raises(ValueError, match="divisible by 4"):
        FARM(3, size, base_channels=8)


def test_farm_reference_parameter_count():
    # the paper reports ~1.86M parameters for FARM on 4x32x32 latents with w=64
    assert abs(parameter_count(FARM(4, 32, base_channels=64, time_dim=128)) - 1.86e6) < 0.01e6
    assert abs(parameter_count(Adaptor(4)) - 1.11e6) < 0.01e6


# ------------------------------------------------------------------ schedule
@pytest.mark.parametrize(
    "kind, diffusers_name",
    [("scaled_linear", "scaled_linear"), ("cosine", "squaredcos_cap_v2"), ("linear", "linear")],
)
def test_schedule_matches_diffusers(kind, diffusers_name):
    from diffusers import DDIMScheduler, DDPMScheduler

    sched = NoiseSchedule(1000, kind, 0.00085, 0.012)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule=diffusers_name)
    assert sched.alphas_cumprod.dtype == torch.float32
    assert torch.equal(sched.alphas_cumprod, ref.alphas_cumprod)
    assert torch.equal(sched.betas, ref.betas)
    assert torch.allclose(sched.alphas_cumprod_f64, ref.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)
    ddim = sched.make_diffusers_scheduler(DDIMScheduler, timestep_spacing="trailing")
    assert torch.equal(ddim.alphas_cumprod, sched.alphas_cumprod)
    assert ddim.config.clip_sample is False and ddim.config.timestep_spacing == "trailing"
    dpm = sched.make_diffusers_scheduler("DPMSolverMultistepScheduler")
    assert torch.equal(dpm.alphas_cumprod, sched.alphas_cumprod)
    # AIAS takes its abar from the scheduler built here: bit-equal to the schedule's (AIAS outputs unchanged)
    from fast_lightning.sampling import AIASScheduler

    aias = sched.make_diffusers_scheduler(AIASScheduler, variant="paper")
    assert torch.equal(aias.alphas_cumprod, sched.alphas_cumprod) and aias.config.variant == "paper"


def test_schedule_q_sample_buffers_and_bad_kind():
    sched = NoiseSchedule()
    x0, eps = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 500, 999])
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(sched.q_sample(x0, t, eps), abar.sqrt() * x0 + (1 - abar).sqrt() * eps)
    assert torch.allclose(sched.predict_x0(sched.q_sample(x0, t, eps), t, eps), x0, atol=1e-3)
    assert "alphas_cumprod" not in sched.state_dict()  # derived from config, not checkpointed
    sched.to(torch.bfloat16)
    assert sched.alphas_cumprod.dtype == torch.float32  # schedule precision survives low-precision casts
    with pytest.raises(ValueError, match=r"diffusion\.schedule.*cosine"):
        NoiseSchedule(kind="sigmoid")


# ------------------------------------------------------------------ denoiser
def test_denoiser_contract_and_registry():
    den = build_denoiser(TINY["unet"], "pixel_unet", image_channels=3, size=32, num_types=2)
    assert isinstance(den, PixelUNetDenoiser)
    assert den.latent_channels == 3 and den.latent_size == 32
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(den.encode(x), x) and torch.equal(den.decode(x), x)
    out = den(x, torch.tensor([1, 500, 999]), torch.tensor([0, 1, 2]), box_masks(3))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match=r"diffusion\.backbone.*pixel_unet"):
        build_denoiser(TINY["unet"], "ldm_kl8", 3, 32, 2)


# ------------------------------------------------------------------ FASTDiffusion
def test_model_space_roundtrip_and_cond_range():
    model = build_fast_diffusion(TINY, image_channels=3, num_types=2, type_names=["crack", "scratch"])
    img = torch.rand(3, 3, 32, 32)
    x = model.to_model_space(img)
    assert x.min() >= -1 and x.max() <= 1
    assert torch.allclose(model.from_model_space(x), img, atol=1e-6)
    x0, mask, _, t, eps = fixed_batch(3)
    for cond in (torch.tensor([0, 1, 2]), torch.zeros(3, dtype=torch.long), torch.full((3,), 2)):
        out = model.training_losses(x0, mask, cond, t=t, eps=eps)
        assert torch.isfinite(out["loss"])
        assert set(out) == {"loss", "loss_eps", "loss_farm", "t"}
    eps_hat = model.predict_eps(x0, t, torch.tensor([0, 1, 2]), mask)
    assert eps_hat.shape == x0.shape
    assert model.farm_x0(x0, mask, t).shape == x0.shape


def test_training_losses_random_t_eps_reproducible():
    model = build_fast_diffusion(TINY, 3, 2, ["a", "b"]).eval()
    x0, mask, cond, _, _ = fixed_batch(4)
    a = model.training_losses(x0, mask, cond, generator=torch.Generator().manual_seed(3))
    b = model.training_losses(x0, mask, cond, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a["t"], b["t"]) and torch.equal(a["loss"], b["loss"])
    assert a["t"].min() >= 0 and a["t"].max() < 1000


def _overfit(model: FASTDiffusion, steps: int = 80, lr: float = 2e-3) -> tuple[list[float], list[float]]:
    x0, mask, cond, t, eps = fixed_batch(4)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses, farm_losses = [], []
    model.train()
    for _ in range(steps):
        out = model.training_losses(x0, mask, cond, t=t, eps=eps)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
        farm_losses.append(out["loss_farm"].item())
    return losses, farm_losses


def test_training_overfits_fixed_batch():
    torch.manual_seed(0)
    model = build_fast_diffusion(TINY, 3, 2, ["a", "b"])
    losses, farm_losses = _overfit(model)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    assert farm_losses[-1] < 0.5 * farm_losses[0]


def test_farm_disabled_gives_zero_farm_loss_and_trains():
    torch.manual_seed(0)
    model = build_fast_diffusion(tiny_cfg(farm__enabled=False), 3, 2, ["a", "b"])
    assert model.farm is None
    losses, farm_losses = _overfit(model, steps=60)
    assert all(v == 0.0 for v in farm_losses)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    with pytest.raises(RuntimeError, match="FARM is disabled"):
        model.farm_x0(torch.zeros(1, 3, 32, 32), torch.zeros(1, 1, 32, 32), torch.tensor([5]))


def test_farm_gets_gradient_through_eps_term_alone():
    torch.manual_seed(0)
    model = build_fast_diffusion(tiny_cfg(lambda_farm=0.0), 3, 2, ["a", "b"])
    x0, mask, cond, t, eps = fixed_batch(4)
    out = model.training_losses(x0, mask, cond, t=t, eps=eps)
    out["loss"].backward()
    grads = {n: p.grad for n, p in model.farm.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    assert float(grads["dec_out.weight"].abs().sum()) > 0
    assert float(grads["bg_gate.2.weight"].abs().sum()) > 0  # background gate learns too


def test_adaptor_option():
    model = build_fast_diffusion(tiny_cfg(adaptor=True), 3, 2, ["a", "b"])
    assert isinstance(model.adaptor, Adaptor)
    x0, mask, cond, t, eps = fixed_batch(2)
    assert model.predict_eps(x0, t, cond, mask).shape == x0.shape


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"unet__attention_levels": [False, True, True]}, "diffusion.unet.attention_levels"),
        ({"resolution": 30}, "diffusion.resolution"),
        (
            {"resolution": 36, "unet__block_out_channels": [8, 16, 16, 16], "unet__attention_levels": [False] * 4},
            "diffusion.resolution",
        ),
        ({"backbone": "nope"}, "diffusion.backbone"),
        ({"schedule": "sigmoid"}, "diffusion.schedule"),
        ({"unet__block_out_channels": []}, "diffusion.unet.block_out_channels"),
        ({"farm__base_channels": 0}, "diffusion.farm.base_channels"),
        ({"lambda_eps": -1.0}, "diffusion.lambda_eps"),
        ({"unet__attention_levels": ["yes", "no"]}, "diffusion.unet.attention_levels"),
    ],
)
def test_build_rejects_bad_config(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_fast_diffusion(tiny_cfg(**overrides), 3, 2, ["a", "b"])


def test_build_accepts_omegaconf_and_records_config():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(TINY)
    OmegaConf.set_struct(cfg, True)
    model = build_fast_diffusion(cfg, 1, 0, [])
    assert model.config["resolution"] == 32 and model.type_names == []
    x0 = torch.rand(2, 1, 32, 32) * 2 - 1
    out = model.training_losses(x0, box_masks(2), torch.zeros(2, dtype=torch.long))
    assert torch.isfinite(out["loss"])
