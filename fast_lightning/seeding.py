"""Every random stream of a run comes from ``generator_for(stream, seed, *keys)``: the one seeding rule.

Why named streams: the same run seed drives several independent choices (which normal image and mask an
item gets, the sampler's noise for a synthesis pair, the diffusion step's t and noise, the segmentation batch's
synthesis and crops). Each stream is a pure function of (run seed, its keys), so item i or step s is the same
whatever the batch size, worker count, rank count or resume point, and two streams never share a state.

The integer formulas are the ones the project has always used (changing them would change every synthesized
pair and trained model); they live here, next to each other, instead of inline at each call site.
Pure torch + stdlib, so the data layer and the model layer can both use it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import torch

__all__ = ["STREAMS", "stream_seed", "generator_for", "seed_everything"]

_MOD = 2**63 - 1


def _item(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % _MOD


# stream -> (keys after the run seed, seed formula)
STREAMS: dict[str, tuple[tuple[str, ...], Callable[..., int]]] = {
    # one item of a dataset: masks, crops, flips, which normal image a synthesis pair uses
    "item": (("index",), _item),
    # the sampler's noise for synthesis pair `index` (separate from the item stream that picked image and mask)
    "synthesis_noise": (("index",), lambda s, i: (_item(s, i) * 7919 + 104_729) % _MOD),
    # diffusion training step: t, eps and a VAE posterior sample
    "diffusion_step": (("step", "rank"), lambda s, step, rank: s * 1_000_003 + step * 7 + rank * 104_729),
    # the diffusion module's sample grid, one generator per shown item
    "sample_grid": (("index",), lambda s, i: s + i),
    # segmentation step: which synthesizer draws a batch uses
    "seg_synthesis": (("step", "rank"), lambda s, step, rank: s * 7919 + step * 131 + rank),
    # segmentation step: the training crops taken after synthesis
    "seg_crop": (("step", "rank"), lambda s, step, rank: s * 7919 + step * 131 + rank + 104_729),
    # `make fidelity`: the synthesizer's draws for compared pair `index` (apart from every training stream)
    "fidelity": (("index",), lambda s, i: (_item(s, i) * 15_485_863 + 32_452_843) % _MOD),
    # one-off draws seeded by the run seed alone (sample sheets of a study)
    "run": ((), lambda s: s),
}


def stream_seed(stream: str, seed: int, *keys: int) -> int:
    """The integer seed of ``stream`` for run seed ``seed`` and the stream's keys (see ``STREAMS``)."""
    try:
        names, formula = STREAMS[stream]
    except KeyError:
        raise ValueError(f"unknown random stream {stream!r}; streams: {', '.join(STREAMS)}") from None
    if len(keys) != len(names):
        raise ValueError(f"stream {stream!r} takes the keys {names}, got {len(keys)} value(s)")
    return int(formula(int(seed), *(int(k) for k in keys)))


def generator_for(stream: str, seed: int, *keys: int) -> torch.Generator:
    """A fresh CPU generator for ``stream`` (e.g. ``generator_for("item", seed, i)``); CPU streams drive GPU
    batches too (``synthesis.base_synthesizer`` draws on the generator's device), so results do not depend on the
    device."""
    return torch.Generator().manual_seed(stream_seed(stream, seed, *keys))


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch globally (model initialisation, library internals); each DDP rank gets its
    own stream (seed + rank). Our own random choices use ``generator_for`` instead."""
    import numpy as np

    value = int(seed) + int(rank)
    random.seed(value)
    np.random.seed(value % (2**32))
    torch.manual_seed(value)
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    return value
