"""What every synthesis module shares: the user-fixable error type and the scalar
random draws (always on the generator's device, so a CPU generator drives GPU batches reproducibly)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fast_lightning.errors import UserError

__all__ = ["SynthesisError", "GeneratorArg", "uniform", "randint", "coin", "batch_generators"]

GeneratorArg = torch.Generator | Sequence[torch.Generator]


class SynthesisError(UserError, ValueError):
    """A synthesis problem the user can fix (missing checkpoint, mismatched class, bad option)."""


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
