"""Segmentation loss on logits: Dice (region overlap, robust to the tiny defect/background ratio) plus
Focal (per-pixel, focuses on hard pixels), both from smp so they match common practice."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fast_lightning.errors import ConfigError

__all__ = ["DiceFocalLoss", "build_loss", "split_weighted_loss"]

_LOSS_KEYS = {"name", "dice_weight", "focal_weight", "focal_gamma", "focal_alpha"}


class DiceFocalLoss(nn.Module):
    """``dice_weight * Dice + focal_weight * Focal`` for binary masks, on LOGITS (B,1,H,W).

    focal_alpha=None weighs classes equally (Dice already counters the class imbalance); a float alpha
    weighs positive (anomaly) pixels by alpha and background by 1-alpha, as in smp/RetinaNet.
    """

    def __init__(self, dice_weight: float = 1.0, focal_weight: float = 1.0, focal_alpha: float | None = None,
                 focal_gamma: float = 2.0) -> None:
        super().__init__()
        import fast_lightning  # noqa: F401  (torchvision shim)
        from segmentation_models_pytorch.losses import DiceLoss, FocalLoss

        if dice_weight < 0 or focal_weight < 0 or dice_weight + focal_weight <= 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0 (dice={dice_weight}, focal={focal_weight})")
        if focal_alpha is not None and not 0.0 <= float(focal_alpha) <= 1.0:
            raise ValueError(f"focal_alpha must be in [0, 1] or null, got {focal_alpha}")
        self.dice_weight, self.focal_weight = float(dice_weight), float(focal_weight)
        self.dice = DiceLoss(mode="binary", from_logits=True)
        self.focal = FocalLoss(mode="binary", alpha=focal_alpha, gamma=float(focal_gamma))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
        logits = logits.float()  # losses in fp32 even under bf16 autocast
        target = target.to(logits.dtype)
        loss = logits.new_zeros(())
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits, target)
        if self.focal_weight:
            loss = loss + self.focal_weight * self.focal(logits, target)
        return loss


def build_loss(cfg: Mapping[str, Any] | None = None) -> DiceFocalLoss:
    """DiceFocalLoss from a mapping with optional keys dice_weight, focal_weight, focal_gamma, focal_alpha
    (and name="dice_focal"); unknown keys raise so typos do not pass silently."""
    cfg = dict(cfg or {})
    unknown = set(cfg) - _LOSS_KEYS
    if unknown:
        raise ConfigError(f"unknown segmentation loss keys {sorted(unknown)}; allowed: {sorted(_LOSS_KEYS)}")
    name = cfg.pop("name", "dice_focal")
    if name not in ("dice_focal", None):
        raise ConfigError(f"segmentation.loss.name={name!r} is unknown; valid values: dice_focal")
    return DiceFocalLoss(
        dice_weight=float(cfg.get("dice_weight", 1.0)),
        focal_weight=float(cfg.get("focal_weight", 1.0)),
        focal_alpha=None if cfg.get("focal_alpha") is None else float(cfg["focal_alpha"]),
        focal_gamma=float(cfg.get("focal_gamma", 2.0)),
    )


def split_weighted_loss(loss_fn, logits: torch.Tensor, target: torch.Tensor, part: torch.Tensor,
                        weight: float) -> torch.Tensor:
    """``loss(rest) + weight * loss(part)`` over the items of a batch (``part``: bool (B,)).

    Why: in ``real_third+fast`` the synthesized items must not dilute the real defects; a weight below 1
    lowers their pull on the segmenter (0: they are ignored). Each side is one loss call (Dice over its own
    items); a side without items contributes 0."""
    part = part.to(device=logits.device, dtype=torch.bool).reshape(-1)
    loss = logits.new_zeros((), dtype=torch.float32)
    if bool((~part).any()):
        loss = loss + loss_fn(logits[~part], target[~part])
    if bool(part.any()) and weight:
        loss = loss + float(weight) * loss_fn(logits[part], target[part])
    return loss
