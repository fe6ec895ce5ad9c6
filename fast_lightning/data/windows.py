"""Square windows around defects: shared by crop-window diffusion training and windowed synthesis.

A crop model spends its capacity where the anomaly is and sees small defects at full detail; the
background outside the window is pasted back unchanged at synthesis time.
"""

from __future__ import annotations

import math

import torch


def mask_bbox(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) exclusive of the non-zero region of a (1,H,W) or (H,W) mask."""
    m = mask.reshape(mask.shape[-2], mask.shape[-1]) > 0.5
    rows = torch.nonzero(m.any(dim=1)).flatten()
    cols = torch.nonzero(m.any(dim=0)).flatten()
    if rows.numel() == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def window_side(height: int, width: int, scale: float, bbox: tuple[int, int, int, int] | None = None,
                margin: float = 1.25, min_side: int = 8, defect_share: float | None = None) -> int:
    """Window side in source pixels: ``scale`` of the shorter side, grown to fit the defect with a margin,
    and at least ``min_side`` (the model resolution: a window is never upsampled to the model when the image
    has the pixels), capped by the shorter side. Diffusion training and every synthesis path call this, so
    the model sees the same pixel scale (source px per model px) when it samples as when it was trained.

    ``defect_share`` (``diffusion.crop.defect_share``): windows sized to the defect instead, the bbox's longer
    side / defect_share (a small defect then fills a useful share of the model's pixels; the rest is context);
    windows without a defect keep ``scale``."""
    if defect_share is not None and bbox is not None:
        top, left, bottom, right = bbox
        side = max(8, int(min_side), int(math.ceil(max(bottom - top, right - left) / float(defect_share))))
        return min(side, min(height, width))
    side = max(8, int(min_side), int(round(min(height, width) * scale)))
    if bbox is not None:
        top, left, bottom, right = bbox
        side = max(side, int(math.ceil(max(bottom - top, right - left) * margin)))
    return min(side, min(height, width))


def place_window(height: int, width: int, side: int, bbox: tuple[int, int, int, int] | None,
                 generator: torch.Generator | None = None, jitter: bool = True) -> tuple[int, int]:
    """Top-left corner of a ``side`` window inside the image that contains ``bbox`` (random when jitter)."""
    def pick(lo: int, hi: int) -> int:
        lo, hi = max(lo, 0), max(min(hi, 10**9), 0)
        if hi <= lo:
            return lo
        if not jitter:
            return (lo + hi) // 2
        return lo + int(torch.randint(hi - lo + 1, (1,), generator=generator))

    if bbox is None:
        return pick(0, height - side), pick(0, width - side)
    top, left, bottom, right = bbox
    y = pick(max(0, bottom - side), min(top, height - side))
    x = pick(max(0, right - side), min(left, width - side))
    if not jitter:  # centre on the defect
        y = min(max(0, (top + bottom - side) // 2), height - side)
        x = min(max(0, (left + right - side) // 2), width - side)
    return y, x
