"""FASTDiffusion: denoiser + FARM + schedule (+ optional Adaptor) and the FAST training loss. Pure torch.

The LightningModule wraps this object; samplers only use ``predict_eps``, ``farm_x0``/``anomaly_aware_input``
and ``schedule``, so everything method-specific lives here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fast_lightning.diffusion.adaptor import Adaptor
from fast_lightning.diffusion.denoiser import DENOISER_REGISTRY, Denoiser, build_denoiser, resize_mask
from fast_lightning.diffusion.farm import FARM
from fast_lightning.diffusion.latent import latent_options  # also registers diffusion.backbone=latent
from fast_lightning.diffusion.schedule import SCHEDULE_KINDS, NoiseSchedule
from fast_lightning.errors import ConfigError
from fast_lightning.schema import DiffusionConfig


class FASTDiffusion(nn.Module):
    """FAST generator. All tensors in model space ([-1,1] pixels, or latents for a latent backbone).

    ``farm=None`` is the "FARM off" ablation: x_hat_t = x_t and loss_farm = 0 (plain masked DDPM).
    """

    def __init__(
        self,
        denoiser: Denoiser,
        farm: FARM | None,
        schedule: NoiseSchedule,
        adaptor: Adaptor | None = None,
        type_names: Sequence[str] = (),
        lambda_eps: float = DiffusionConfig.lambda_eps,
        lambda_farm: float = DiffusionConfig.lambda_farm,
        config: Mapping[str, Any] | None = None,
        mask_loss_weight: float = DiffusionConfig.mask_loss_weight,
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.farm = farm
        self.schedule = schedule
        self.adaptor = adaptor
        self.type_names = list(type_names)
        self.lambda_eps = float(lambda_eps)
        self.lambda_farm = float(lambda_farm)
        self.mask_loss_weight = float(mask_loss_weight)  # in-mask eps terms; 1 = plain MSE (bit for bit)
        self.config = dict(config or {})  # resolved build config, for checkpoints / meta

    # ---------------------------------------------------------------- conversions
    @property
    def num_types(self) -> int:
        return len(self.type_names)

    @property
    def num_train_timesteps(self) -> int:
        return self.schedule.num_train_timesteps

    def to_model_space(self, images01: torch.Tensor, generator=None) -> torch.Tensor:
        """[0,1] images -> [-1,1] -> denoiser.encode (identity in pixel space; a VAE posterior sample for the
        latent backbone, drawn from ``generator``: one, one per image, or None for the global RNG)."""
        return self.denoiser.encode(images01 * 2.0 - 1.0, generator=generator)

    def from_model_space(self, x: torch.Tensor) -> torch.Tensor:
        """denoiser.decode -> [-1,1] -> [0,1], clamped."""
        return ((self.denoiser.decode(x) + 1.0) / 2.0).clamp(0.0, 1.0)

    def model_mask(self, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Image-resolution mask -> model-space resolution (max pooling keeps thin defects)."""
        return resize_mask(mask, like.shape[-2:]).to(like.dtype)

    # ---------------------------------------------------------------- checkpoints
    def frozen_state_keys(self) -> set[str]:
        """state_dict keys of the pretrained, frozen backbone parts (empty for the pixel backbone)."""
        prefixes = tuple("denoiser." + p for p in self.denoiser.frozen_prefixes())
        return {k for k in self.state_dict(keep_vars=True) if prefixes and k.startswith(prefixes)}

    def load_trained_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Strict load of a checkpoint's trained parts; only the frozen keys may be absent (they keep the
        weights read from the pretrained folder)."""
        own = self.state_dict()
        full = dict(state)
        for k in self.frozen_state_keys():
            full.setdefault(k, own[k])
        self.load_state_dict(full)

    # ---------------------------------------------------------------- network calls
    def predict_eps(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, mask: torch.Tensor
    ) -> torch.Tensor:
        """Denoiser eps, then the Adaptor correction if the model has one."""
        eps = self.denoiser(x, t, cond, mask)
        if self.adaptor is not None:
            eps = self.adaptor(eps, self.model_mask(mask, eps))
        return eps

    def farm_x0(self, x: torch.Tensor, mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """FARM's anomaly-only clean estimate x0_an (same shape as x). Raises if FARM is disabled."""
        if self.farm is None:
            raise RuntimeError("FARM is disabled in this model (diffusion.farm.enabled=false); check model.farm")
        return self.farm(x, self.model_mask(mask, x), t)

    def anomaly_aware_input(
        self, x_t: torch.Tensor, mask: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """FARM injection: x_hat_t = (1-M) x_t + M (sqrt(abar_t) x0_an + sqrt(1-abar_t) eps).

        Training passes the eps that produced x_t; samplers pass fresh noise. Returns (x_hat_t, x0_an), or
        (x_t, None) when FARM is disabled.
        """
        if self.farm is None:
            return x_t, None
        m = self.model_mask(mask, x_t)
        x0_an = self.farm(x_t, m, t)
        x_an_t = self.schedule.q_sample(x0_an, t, eps)
        return (1.0 - m) * x_t + m * x_an_t, x0_an

    # ---------------------------------------------------------------- loss
    def training_losses(
        self,
        x0: torch.Tensor,
        mask: torch.Tensor,
        cond: torch.Tensor | None,
        t: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """FAST loss: lambda_eps * MSE(eps, eps_hat(x_hat_t)) + lambda_farm * MSE(x0_an, M * x0).

        ``mask_loss_weight`` w != 1 multiplies the in-mask per-pixel terms of the eps MSE by w (the mean is
        still over all pixels): defect pixels are a few percent of a window and would otherwise barely count.

        x0 is in model space; mask is (B,1,H,W) {0,1} (resized to x0's size). t ~ U{0..T-1} and eps ~ N(0,I)
        unless given; ``generator`` (on any device) makes them reproducible. FARM is not detached: it learns
        from both terms (through the denoiser input for the eps term).
        """
        b = x0.shape[0]
        if t is None:
            g_dev = generator.device if generator is not None else x0.device
            t = torch.randint(0, self.num_train_timesteps, (b,), generator=generator, device=g_dev)
        t = torch.as_tensor(t).to(x0.device).long().reshape(-1)
        if t.numel() == 1 and b != 1:
            t = t.expand(b)
        if eps is None:
            g_dev = generator.device if generator is not None else x0.device
            eps = torch.randn(x0.shape, generator=generator, device=g_dev, dtype=x0.dtype)
        eps = eps.to(device=x0.device, dtype=x0.dtype)
        m = self.model_mask(mask, x0)

        x_t = self.schedule.q_sample(x0, t, eps)
        x_hat_t, x0_an = self.anomaly_aware_input(x_t, m, t, eps)
        eps_hat = self.predict_eps(x_hat_t, t, cond, m)
        if self.mask_loss_weight == 1.0:
            loss_eps = F.mse_loss(eps_hat.float(), eps.float())
        else:
            weight = 1.0 + (self.mask_loss_weight - 1.0) * (m > 0.5).float()
            loss_eps = (weight * (eps_hat.float() - eps.float()) ** 2).mean()
        if x0_an is None:
            loss_farm = loss_eps.new_zeros(())
        else:
            loss_farm = F.mse_loss(x0_an.float(), (m * x0).float())
        loss = self.lambda_eps * loss_eps + self.lambda_farm * loss_farm
        return {"loss": loss, "loss_eps": loss_eps, "loss_farm": loss_farm, "t": t}


def drop_condition(cond: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Classifier-free guidance training: each type id becomes 0 (the "normal"/null condition) with
    probability ``p`` (draws from ``generator`` on the CPU); ``p = 0`` returns ``cond`` and draws nothing."""
    if p <= 0:
        return cond
    drop = torch.rand(cond.shape, generator=generator) < p
    return torch.where(drop.to(cond.device), torch.zeros_like(cond), cond)


# -------------------------------------------------------------------- factory
def _typed_diffusion(cfg: Mapping[str, Any] | None):
    """The ``diffusion`` group on its schema (``config.typed_group``: types, ranges and cross-field rules checked
    there, missing keys from the schema). A partial mapping that sets ``unet.block_out_channels`` but not
    ``attention_levels`` gets attention on the two deepest blocks."""
    from omegaconf import OmegaConf

    from fast_lightning.config import typed_group

    if cfg is not None and not OmegaConf.is_config(cfg):
        cfg = OmegaConf.create(dict(cfg))
    unet = (cfg.get("unet") or {}) if cfg is not None else {}
    if cfg is not None and "block_out_channels" in unet and "attention_levels" not in unet:
        n = len(unet["block_out_channels"])
        cfg = OmegaConf.merge(cfg, {"unet": {"attention_levels": [False] * max(n - 2, 0) + [True] * min(n, 2)}})
    return typed_group("diffusion", cfg)


def _check_model_pieces(d, resolution: int) -> None:
    """The checks that need the model's pieces: known backbone and schedule, a pixel UNet's resolution divisible
    by its depth and by FARM's /4 (the latent backbone checks sizes against its own autoencoder)."""
    backbone = str(d.backbone)
    if backbone not in DENOISER_REGISTRY:
        raise ConfigError(
            f"diffusion.backbone={backbone!r} is not a known denoiser backbone; known: {sorted(DENOISER_REGISTRY)}"
        )
    blocks = d.unet.block_out_channels
    factor = 2 ** (len(blocks) - 1)
    pixel = backbone == "pixel_unet"
    if pixel and resolution % factor:
        raise ConfigError(
            f"diffusion.resolution={resolution} must be divisible by {factor} = 2**(number of UNet blocks - 1) "
            f"(diffusion.unet.block_out_channels has {len(blocks)} blocks)"
        )
    if pixel and resolution % 4:
        raise ConfigError(f"diffusion.resolution={resolution} must be divisible by 4 (FARM works at resolution/4)")
    kind = str(d.schedule)
    if kind not in SCHEDULE_KINDS:
        raise ConfigError(
            f"diffusion.schedule={kind!r} is not a known noise schedule; allowed values: {sorted(SCHEDULE_KINDS)}"
        )


def _resolved_config(d, resolution: int, image_channels: int, type_names: list[str]) -> dict[str, Any]:
    """The plain dict stored with the model (checkpoint metadata): every value that shapes it, resolved."""
    resolved = {
        "backbone": str(d.backbone),
        "resolution": resolution,
        "unet": {
            "block_out_channels": [int(c) for c in d.unet.block_out_channels],
            "layers_per_block": int(d.unet.layers_per_block),
            "attention_levels": [bool(a) for a in d.unet.attention_levels],
            "mask_channel": bool(d.unet.mask_channel),
            "dropout": float(d.unet.dropout),
            "norm_num_groups": None,
            "attention_head_dim": None,
        },
        "farm": {"enabled": bool(d.farm.enabled), "base_channels": int(d.farm.base_channels),
                 "time_dim": int(d.farm.time_dim)},
        "adaptor": bool(d.adaptor),
        "schedule": str(d.schedule),
        "num_train_timesteps": int(d.num_train_timesteps),
        "beta_start": float(d.beta_start),
        "beta_end": float(d.beta_end),
        "lambda_eps": float(d.lambda_eps),
        "lambda_farm": float(d.lambda_farm),
        "image_channels": image_channels,
        "type_names": list(type_names),
    }
    if resolved["backbone"] == "latent":
        resolved["latent"] = latent_options(d)
    return resolved


def build_fast_diffusion(
    cfg: Mapping[str, Any],
    image_channels: int,
    num_types: int,
    type_names: Sequence[str],
) -> FASTDiffusion:
    """Build FASTDiffusion from the ``diffusion`` config group (plain Mapping or OmegaConf DictConfig; the schema
    checks every value, ``DiffusionConfig`` lists the keys). Checks that need the model's pieces (the known
    backbones and schedules, sizes divisible by the UNet depth and by FARM's /4) stay here; they raise a
    ConfigError naming the ``diffusion.*`` key."""
    d = _typed_diffusion(cfg)
    resolution, image_channels, num_types = int(d.resolution), int(image_channels), int(num_types)
    _check_model_pieces(d, resolution)
    type_names = [str(n) for n in type_names]
    if len(type_names) != num_types:
        raise ValueError(f"type_names has {len(type_names)} entries but num_types={num_types}")
    resolved = _resolved_config(d, resolution, image_channels, type_names)
    backbone, farm_cfg, steps = resolved["backbone"], resolved["farm"], resolved["num_train_timesteps"]
    denoiser = build_denoiser(resolved.get(backbone, resolved["unet"]), backbone, image_channels, resolution,
                              num_types)
    if backbone != "pixel_unet" and denoiser.latent_size % 4:
        raise ConfigError(
            f"diffusion.resolution={resolution} gives {denoiser.latent_size}x{denoiser.latent_size} latents; FARM "
            f"needs a multiple of 4: use a multiple of {4 * (resolution // denoiser.latent_size)}"
        )
    farm = (
        FARM(denoiser.latent_channels, denoiser.latent_size, farm_cfg["base_channels"], farm_cfg["time_dim"], steps)
        if farm_cfg["enabled"] else None
    )
    adaptor = Adaptor(denoiser.latent_channels) if resolved["adaptor"] else None
    schedule = NoiseSchedule(steps, resolved["schedule"], resolved["beta_start"], resolved["beta_end"])
    return FASTDiffusion(denoiser, farm, schedule, adaptor, type_names, resolved["lambda_eps"],
                         resolved["lambda_farm"], config=resolved, mask_loss_weight=float(d.mask_loss_weight))
