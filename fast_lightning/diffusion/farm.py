"""FARM: Foreground-Aware Reconstruction Module (FAST, Xu et al. 2025, section 3 of our reference notes).

Predicts an "anomaly-only" clean estimate x0_an from the noisy sample x_t, the mask and t. The training loss
pulls x0_an towards M * x0, and its re-noised version replaces x_t inside the mask (anomaly-aware noise), so
the denoiser learns to paint anomalies where the mask says.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fast_lightning.diffusion.denoiser import resize_mask
from fast_lightning.schema import DiffusionConfig, FarmConfig
from fast_lightning.errors import ConfigError


def sinusoidal_table(num_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Classic transformer/DDPM sinusoidal embedding table (num_positions, dim): [sin | cos]."""
    half = dim // 2
    freqs = torch.exp(-math.log(base) * torch.arange(half, dtype=torch.float64) / max(half, 1))
    args = torch.arange(num_positions, dtype=torch.float64)[:, None] * freqs[None]
    table = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(num_positions, 1, dtype=torch.float64)], dim=1)
    return table.to(torch.float32)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    # bias-free conv: the following BatchNorm has its own shift
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FARM(nn.Module):
    """Encoder (no skips) -> soft-masked bottleneck at s/4 + time projection -> mask-guided decoder.

    Args: ``in_channels`` C of x_t, ``size`` spatial size s of x_t (divisible by 4; the background gate f_bg
    predicts one value per s/4 x s/4 cell), ``base_channels`` w (paper reference 64; default from the schema), ``time_dim`` (128),
    ``num_train_timesteps`` T (rows of the trainable time embedding).

    M_d (mask at s/4) uses the project's one mask resize rule (``data.mask_resize.resize_mask``): area coverage
    >= 0.5 plus a thin-structure keeper, so thin defects still get M~ = 1 cells (not suppressed by the
    background gate) while blobs are not inflated by a max-pooling ring.
    """

    def __init__(
        self,
        in_channels: int,
        size: int,
        base_channels: int = FarmConfig.base_channels,
        time_dim: int = FarmConfig.time_dim,
        num_train_timesteps: int = DiffusionConfig.num_train_timesteps,
    ) -> None:
        super().__init__()
        size = int(size)
        if size < 4 or size % 4:
            raise ConfigError(
                f"FARM needs a spatial size divisible by 4 (it works at size/4), got size={size}; "
                f"choose diffusion.resolution (the model-space size) as a multiple of 4"
            )
        w = int(base_channels)
        c = int(in_channels)
        self.in_channels = c
        self.size = size
        self.base_channels = w
        self.time_dim = int(time_dim)
        self.num_train_timesteps = int(num_train_timesteps)
        self.bottleneck = size // 4

        self.encoder = nn.Sequential(
            _conv_bn_relu(c, w), _conv_bn_relu(w, w), nn.MaxPool2d(2),
            _conv_bn_relu(w, 2 * w), _conv_bn_relu(2 * w, 2 * w), nn.MaxPool2d(2),
            _conv_bn_relu(2 * w, 4 * w), _conv_bn_relu(4 * w, 4 * w),
            nn.Conv2d(4 * w, 4 * w, 1),
        )  # fmt: skip
        # trainable time embedding initialised from the sinusoidal table
        self.time_embed = nn.Embedding(self.num_train_timesteps, self.time_dim)
        with torch.no_grad():
            self.time_embed.weight.copy_(sinusoidal_table(self.num_train_timesteps, self.time_dim))
        self.time_proj = nn.Linear(self.time_dim, 4 * w)
        self.bg_gate = nn.Sequential(
            nn.Linear(self.time_dim, 4 * w), nn.ReLU(inplace=True), nn.Linear(4 * w, self.bottleneck**2)
        )
        self.dec_in = nn.Conv2d(4 * w, 4 * w, 1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec1 = _conv_bn_relu(4 * w + 1, 2 * w)
        self.dec2 = _conv_bn_relu(2 * w + 1, w)
        self.dec_out = nn.Conv2d(w + 1, c, 3, padding=1)

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(
                f"FARM was built for {self.size}x{self.size} inputs, got {tuple(x.shape[-2:])}"
            )

    def _tau(self, t: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(t, device=device).long().reshape(-1)
        if t.numel() == 1 and batch != 1:
            t = t.expand(batch)
        return self.time_embed(t)

    def _soft_mask(self, mask_d: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.bg_gate(tau)).view(-1, 1, self.bottleneck, self.bottleneck)
        return mask_d + (1.0 - mask_d) * gate.to(mask_d.dtype)

    def soft_mask(self, mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """M~ = M_d + (1 - M_d) sigmoid(f_bg(tau)) at s/4: exactly 1 where M_d = 1, in (0,1) elsewhere."""
        mask_d = resize_mask(mask, self.bottleneck)
        return self._soft_mask(mask_d, self._tau(t, mask.shape[0], mask.device))

    def forward(self, x_t: torch.Tensor, mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self._check(x_t)
        b = x_t.shape[0]
        mask = resize_mask(mask, self.size).to(x_t.dtype)
        tau = self._tau(t, b, x_t.device)
        feat = self.encoder(x_t)
        m_tilde = self._soft_mask(resize_mask(mask, self.bottleneck), tau)
        z = m_tilde * feat + self.time_proj(tau)[:, :, None, None].to(feat.dtype)
        h = self.up(self.dec_in(z))
        h = self.dec1(torch.cat([h, resize_mask(mask, self.size // 2).to(h.dtype)], dim=1))
        h = self.up(h)
        h = self.dec2(torch.cat([h, mask.to(h.dtype)], dim=1))
        return self.dec_out(torch.cat([h, mask.to(h.dtype)], dim=1))
