"""Denoiser backbones: the eps-prediction network behind FARM and the samplers.

FARM, the loss and every sampler talk to the backbone only through the :class:`Denoiser` contract, so the latent
backbone (``diffusion/latent.py``: a local LDM folder with a VAE) is one more builder in ``DENOISER_REGISTRY``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from math import gcd
from typing import Any

import torch
from torch import nn

from fast_lightning.data.mask_resize import resize_mask  # the one mask resize rule (re-exported for FARM/Adaptor)
from fast_lightning.errors import ConfigError


def parameter_count(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class Denoiser(nn.Module):
    """Backbone contract: ``forward(x_t, t, cond, mask) -> eps_hat`` in the backbone's (latent) space.

    - ``x_t``: (B, latent_channels, latent_size, latent_size); ``t``: LongTensor (B,);
      ``cond``: LongTensor (B,) with 0 = normal, 1..K = anomaly type (None -> all normal);
      ``mask``: (B,1,h,w) {0,1}, 1 = region to synthesize (resized to the latent size by the backbone).
    - ``encode(images in [-1,1]) -> latents`` and ``decode(latents) -> images in [-1,1]``; identity for
      pixel-space backbones (the defaults here).
    """

    image_channels: int
    image_size: int
    latent_channels: int
    latent_size: int
    num_types: int

    def forward(  # pragma: no cover - abstract
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, images: torch.Tensor, generator=None) -> torch.Tensor:
        """``generator`` (one, or one per image) feeds a stochastic encoder (a VAE posterior sample)."""
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of pretrained, frozen parts: left out of checkpoints, restored from their source."""
        return ()


def _auto_norm_groups(widths: Sequence[int], cap: int = 32) -> int:
    """Largest group count <= min(cap, smallest width) dividing every width (GroupNorm needs divisibility)."""
    g = min(cap, min(widths))
    while g > 1 and any(w % g for w in widths):
        g -= 1
    return max(g, 1)


def _auto_head_dim(widths: Sequence[int]) -> int:
    """Attention head size dividing every attended width (heads = width // head_dim)."""
    common = 0
    for w in widths:
        common = gcd(common, int(w))
    for d in (64, 32, 16, 8, 4, 2, 1):
        if common % d == 0:
            return d
    return 1


class PixelUNetDenoiser(Denoiser):
    """diffusers ``UNet2DModel`` trained from scratch in pixel space.

    Anomaly type enters as a class embedding (K+1 entries, 0 = normal, added to the time embedding); the
    mask is optionally concatenated as an extra input channel, because a from-scratch model does not learn
    from FARM alone where it should paint.
    """

    def __init__(
        self,
        image_channels: int = 3,
        size: int = 64,
        block_out_channels: Sequence[int] = (32, 64, 128, 128),
        layers_per_block: int = 1,
        attention_levels: Sequence[bool] = (False, False, True, True),
        num_types: int = 1,
        mask_channel: bool = True,
        dropout: float = 0.0,
        norm_num_groups: int | None = None,
        attention_head_dim: int | None = None,
    ) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        block_out_channels = tuple(int(c) for c in block_out_channels)
        attention_levels = tuple(bool(a) for a in attention_levels)
        if len(block_out_channels) != len(attention_levels):
            raise ConfigError(
                f"diffusion.unet.attention_levels has {len(attention_levels)} entries but "
                f"diffusion.unet.block_out_channels has {len(block_out_channels)}; give one per block"
            )
        factor = 2 ** (len(block_out_channels) - 1)
        if size % factor:
            raise ConfigError(
                f"diffusion.resolution={size} must be divisible by {factor} "
                f"(2**(len(diffusion.unet.block_out_channels)-1))"
            )
        if num_types < 0:
            raise ValueError(f"num_types must be >= 0, got {num_types}")
        self.image_channels = self.latent_channels = int(image_channels)
        self.image_size = self.latent_size = int(size)
        self.num_types = int(num_types)
        self.mask_channel = bool(mask_channel)
        if norm_num_groups is None:
            norm_num_groups = _auto_norm_groups(block_out_channels)
        if any(c % norm_num_groups for c in block_out_channels):
            raise ConfigError(
                f"diffusion.unet.norm_num_groups={norm_num_groups} must divide every block width "
                f"{block_out_channels}"
            )
        if attention_head_dim is None:
            attended = [c for c, a in zip(block_out_channels, attention_levels) if a]
            attention_head_dim = _auto_head_dim(attended + [block_out_channels[-1]])  # + mid block
        self.unet = UNet2DModel(
            sample_size=self.image_size,
            in_channels=self.image_channels + (1 if self.mask_channel else 0),
            out_channels=self.image_channels,
            block_out_channels=block_out_channels,
            layers_per_block=int(layers_per_block),
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)),
            dropout=float(dropout),
            norm_num_groups=int(norm_num_groups),
            attention_head_dim=int(attention_head_dim),
            num_class_embeds=self.num_types + 1,
        )

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        b = x_t.shape[0]
        if cond is None:
            cond = torch.zeros(b, dtype=torch.long, device=x_t.device)
        t = torch.as_tensor(t, device=x_t.device).long().reshape(-1)
        if t.numel() == 1 and b != 1:
            t = t.expand(b)
        inp = x_t
        if self.mask_channel:
            if mask is None:
                mask = x_t.new_zeros(b, 1, *x_t.shape[-2:])
            m = resize_mask(mask, x_t.shape[-2:]).to(x_t.dtype)
            inp = torch.cat([x_t, m], dim=1)
        return self.unet(inp, t, class_labels=cond.long()).sample


DenoiserBuilder = Callable[[Mapping[str, Any], int, int, int], Denoiser]
"""(cfg_unet, image_channels, size, num_types) -> Denoiser"""

DENOISER_REGISTRY: dict[str, DenoiserBuilder] = {}


def register_denoiser(name: str) -> Callable[[DenoiserBuilder], DenoiserBuilder]:
    """Decorator registering a backbone builder under ``diffusion.backbone=<name>``."""

    def deco(fn: DenoiserBuilder) -> DenoiserBuilder:
        DENOISER_REGISTRY[name] = fn
        return fn

    return deco


@register_denoiser("pixel_unet")
def _build_pixel_unet(cfg: Mapping[str, Any], image_channels: int, size: int, num_types: int) -> Denoiser:
    cfg = cfg or {}
    return PixelUNetDenoiser(
        image_channels=image_channels,
        size=size,
        block_out_channels=tuple(cfg.get("block_out_channels", (32, 64, 128, 128))),
        layers_per_block=int(cfg.get("layers_per_block", 1)),
        attention_levels=tuple(bool(a) for a in cfg.get("attention_levels", (False, False, True, True))),
        num_types=num_types,
        mask_channel=bool(cfg.get("mask_channel", True)),
        dropout=float(cfg.get("dropout", 0.0)),
        norm_num_groups=cfg.get("norm_num_groups", None),
        attention_head_dim=cfg.get("attention_head_dim", None),
    )


def build_denoiser(
    cfg_unet: Mapping[str, Any], backbone: str, image_channels: int, size: int, num_types: int
) -> Denoiser:
    """Build the backbone named by ``diffusion.backbone`` (see ``DENOISER_REGISTRY``)."""
    if backbone not in DENOISER_REGISTRY:
        raise ConfigError(
            f"diffusion.backbone={backbone!r} is not a known denoiser backbone; known: {sorted(DENOISER_REGISTRY)}"
        )
    return DENOISER_REGISTRY[backbone](cfg_unet, int(image_channels), int(size), int(num_types))
