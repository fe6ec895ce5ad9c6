"""What every synthesis module shares: the user-fixable error type, the synthesizer protocol (and the timing
wrapper the segmentation stage puts around any synthesizer), and the scalar random draws (always on the
generator's device, so a CPU generator drives GPU batches reproducibly)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from fast_lightning.errors import UserError

__all__ = ["SynthesisError", "SegSynthesizer", "TimedSynthesizer", "GeneratorArg", "uniform", "randint", "coin",
           "batch_generators"]

GeneratorArg = torch.Generator | Sequence[torch.Generator]


class SynthesisError(UserError, ValueError):
    """A synthesis problem the user can fix (missing checkpoint, mismatched class, bad option)."""


class SegSynthesizer:
    """THE segmentation-synthesizer protocol: the DataModule calls
    ``synth(normals [0,1] (B,C,H,W), foreground (B,1,H,W), generator, records=None, hflip=None)
    -> (images [0,1], masks {0,1})`` on each training batch (``records``/``hflip`` only when ``native_input``). Two class attributes say what it needs:

    - ``native_input``: True -> it synthesizes on the FULL-RESOLUTION normal images the batch names
      (``records`` indices into ``split.normal_train``, ``hflip`` flags) and returns pairs at the batch's
      working size; False -> it works on the working-scale batch tensors it is given (records ignored).
    - ``needs_diffusion``: True -> building it needs a trained diffusion checkpoint (``synthesis.ckpt`` or
      the class's ``latest``); the study steps train one first when none fits.
    - ``needs_pairs``: True -> it reads pairs written by `make synthesize` (``synthesis.fast_cached_dir`` or
      the class's ``latest``); unless a folder is given, the study steps synthesize one pool first (from the
      diffusion model above) and every seed of the study trains on that same pool.

    A new synthesizer subclasses this, gets a builder ``build(cfg, datamodule)`` and one line in
    ``synthesis.registry.SYNTHESIZERS``.
    """

    native_input: bool = False
    needs_diffusion: bool = False
    needs_pairs: bool = False

    def batch_items(self, batch: int, synth_ratio: float) -> int:
        """How many of a training batch's ``batch`` items it replaces (the first ones), given
        ``segmentation.synth_ratio``; a mix adds its second member's share on top."""
        return int(round(batch * float(synth_ratio)))

    def __call__(self, normals: torch.Tensor, foreground: torch.Tensor | None, generator: GeneratorArg,
                 records: torch.Tensor | None = None, hflip: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class TimedSynthesizer:
    """Wraps the injected synthesizer to measure the time training waits for synthesis (rank-local)."""

    def __init__(self, synth, name: str):
        self.synth, self.name = synth, name
        self.native_input, self.needs_diffusion = synth.native_input, synth.needs_diffusion  # the protocol
        self.seconds, self.calls = 0.0, 0

    def __call__(self, normals, foreground, generator, **kwargs):  # kwargs: records/hflip (native_input only)
        cuda = normals.is_cuda
        if cuda:
            torch.cuda.synchronize(normals.device)
        start = time.perf_counter()
        out = self.synth(normals, foreground, generator, **kwargs)
        if cuda:
            torch.cuda.synchronize(normals.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out

    def __getattr__(self, item):  # describe(), nfe, ... of the wrapped synthesizer
        return getattr(self.synth, item)


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
