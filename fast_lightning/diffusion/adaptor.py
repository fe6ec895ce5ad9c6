"""Optional Adaptor (FAST authors' code, not in the paper): a mask-aware correction of the predicted noise.

eps_final = ConvStack(concat(eps_hat, mask repeated C times)). It is not residual and not zero-initialised,
as in the reference; off by default (``diffusion.adaptor=false``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fast_lightning.diffusion.denoiser import resize_mask


class Adaptor(nn.Module):
    """2C -> 64 -> 128 -> 256 -> 256 -> 64 (conv3x3-BN-ReLU each) -> conv1x1 -> C."""

    def __init__(self, channels: int, hidden: Sequence[int] = (64, 128, 256, 256, 64)) -> None:
        super().__init__()
        self.channels = int(channels)
        layers: list[nn.Module] = []
        cin = 2 * self.channels
        for cout in hidden:
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        layers.append(nn.Conv2d(cin, self.channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, eps_hat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(eps_hat.dtype)
        m = resize_mask(m, eps_hat.shape[-2:])
        return self.net(torch.cat([eps_hat, m.expand(-1, self.channels, -1, -1)], dim=1))
