"""What every synthesis module shares: the user-fixable error type, a tolerant config lookup, and the scalar
random draws (always on the generator's device, so a CPU generator drives GPU batches reproducibly)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fast_lightning.errors import UserError

__all__ = ["SynthesisError", "GeneratorArg", "cfg_get", "uniform", "randint", "coin", "batch_generators"]

GeneratorArg = torch.Generator | Sequence[torch.Generator]


class SynthesisError(UserError, ValueError):
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


def uniform(generator: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator, device=generator.device))


def randint(generator: torch.Generator, low: int, high: int) -> int:
    """Integer in [low, high)."""
    return int(torch.randint(low, high, (), generator=generator, device=generator.device))


def coin(generator: torch.Generator, p: float = 0.5) -> bool:
    return float(torch.rand((), generator=generator, device=generator.device)) < p


def batch_generators(generator: GeneratorArg, n: int) -> list[torch.Generator]:
    """One generator shared by the n items of a batch, or the list of n given (one per item)."""
    if isinstance(generator, torch.Generator):
        return [generator] * n
    gens = list(generator)
    if len(gens) != n:
        raise ValueError(f"got {len(gens)} generators for a batch of {n}")
    return gens
