"""The one rule for resizing a binary mask (``resize_mask``), shared by the data layer, FARM and every
synthesizer. Making masks (Perlin, real-mask banks, folders, the sampler) is synthesis and lives in
``fast_lightning.synthesis.mask_sources`` / ``synthesis.mask_sampler``; the data layer must not import synthesis.

Data layer: torch only, no model imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F

__all__ = ["Size", "as_hw", "resize_mask"]

Size = Union[int, Sequence[int]]


def as_hw(size: Size) -> tuple[int, int]:
    """int or (H, W) -> (H, W)."""
    if isinstance(size, int):
        h = w = size
    else:
        if len(size) != 2:
            raise ValueError(f"size must be an int or (H, W), got {size!r}")
        h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w



def resize_mask(mask: torch.Tensor, size: Size) -> torch.Tensor:
    """THE rule for changing the size of a binary mask, used by every path (diffusion training windows,
    the mask banks, every synthesizer, the denoiser/FARM mask input, segmenter labels and evaluation).

    ``mask``: (..., h, w) with values in {0,1} (thresholded at 0.5); returns float {0,1} of shape
    (..., H, W) on the same device. Upscaling is nearest (exact for binary masks). Downscaling keeps
    output pixels whose area coverage is >= 0.5 (so blobs keep their area: within a few % for blobs of
    radius >= 2 output pixels) OR'ed with a thin-structure keeper: pixels the mask touches (max pooling)
    that are not next to the interior of a thick region. A 1-px scratch therefore stays a connected line
    (8-connectivity) at any scale, while a blob does not grow the ring that pure max pooling would add.
    A non-empty mask never becomes empty (it falls back to max pooling). Known limit: where a thin tail
    leaves a thick blob, the tail can be cut off from the blob by one output pixel.
    """
    H, W = as_hw(size)
    lead = mask.shape[:-2]
    h, w = mask.shape[-2:]
    m = (mask.reshape(-1, 1, h, w) > 0.5).float()
    if (h, w) != (H, W):
        if h < H or w < W:  # grow the growing axis (nearest) first; then shrink the other, if any
            m = F.interpolate(m, size=(max(h, H), max(w, W)), mode="nearest")
        if tuple(m.shape[-2:]) != (H, W) and m.shape[0] > 0:
            coverage = F.adaptive_avg_pool2d(m, (H, W))
            touched = F.adaptive_max_pool2d(m, (H, W))
            fat = -F.max_pool2d(-touched, 3, 1, 1)  # erosion: touched cells whose 8 neighbours are touched
            near_fat = F.max_pool2d(fat, 3, 1, 1) > 0.5
            out = (coverage >= 0.5) | ((touched > 0.5) & ~near_fat)
            lost = ~out.flatten(1).any(1) & (touched > 0.5).flatten(1).any(1)
            out[lost] = touched[lost] > 0.5
            m = out.float()
        elif tuple(m.shape[-2:]) != (H, W):
            m = m.new_zeros(m.shape[0], 1, H, W)
    return m.reshape(*lead, H, W)

