"""What every synthesis module shares: the user-fixable error type and a tolerant config lookup."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["SynthesisError", "GeneratorArg", "cfg_get"]

GeneratorArg = torch.Generator | Sequence[torch.Generator]


class SynthesisError(ValueError):
    """A synthesis problem the user can fix (missing checkpoint, mismatched class, bad option)."""


def cfg_get(cfg, *keys, default=None):
    """cfg.k1.k2..., or ``default`` when a key is missing or None (works on dicts and configs)."""
    node = cfg
    for k in keys:
        if node is None:
            return default
        try:
            node = node.get(k) if hasattr(node, "get") else getattr(node, k)
        except Exception:  # omegaconf struct / missing attribute
            return default
    return default if node is None else node
