"""THE weight-averaging rule (an exponential moving average of a network's weights), pure torch: the diffusion
model samples from its EMA, and the segmenter can evaluate and save its EMA (``segmentation.optim.ema_decay``)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_copy(model: nn.Module, memo: dict | None = None) -> nn.Module:
    """A frozen copy of ``model`` to average into (``memo``: parameters to share instead of copy)."""
    return copy.deepcopy(model, memo=memo).requires_grad_(False)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, updates: int, average_buffers: bool = False) -> None:
    """One EMA step after an optimizer step; ``updates`` = EMA steps taken before this one.

    Warm start: the decay is at most (1 + n) / (10 + n) at the n-th step, so a short run's average is not stuck
    near the random initialisation. Parameters shared between the two modules are their own average. Buffers are
    copied, or (``average_buffers``: BatchNorm statistics, which belong to the averaged weights) averaged when
    floating point.
    """
    n = int(updates) + 1
    decay = min(float(decay), (1 + n) / (10 + n))
    pairs = [(e, p) for e, p in zip(ema.parameters(), model.parameters()) if e is not p]
    if pairs:
        torch._foreach_lerp_([e for e, _ in pairs], [p.detach() for _, p in pairs], 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        if b_ema is b:
            continue
        if average_buffers and b.is_floating_point():
            b_ema.lerp_(b, 1.0 - decay)
        else:
            b_ema.copy_(b)
