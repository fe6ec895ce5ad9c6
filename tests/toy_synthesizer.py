"""A toy segmentation synthesizer, written the way a new one is added: this one module (a SegSynthesizer
subclass + its builder) and one registry line (tests/test_synth_registry.py adds the line)."""

from __future__ import annotations

import torch

from fast_lightning.synthesis.base_synthesizer import SegSynthesizer


class ToySquareSynthesizer(SegSynthesizer):
    """Paints a white ``side`` x ``side`` square at the top-left corner of each working-size normal image;
    counts its calls so a test can see it was used."""

    native_input = False
    needs_diffusion = False
    calls = 0

    def __init__(self, side: int) -> None:
        self.side = side

    def __call__(self, normals, foreground, generator, records=None, hflip=None):
        type(self).calls += 1
        masks = torch.zeros_like(normals[:, :1])
        masks[..., : self.side, : self.side] = 1
        return normals * (1 - masks) + masks, masks


class ToyDiffusionSynthesizer(ToySquareSynthesizer):
    """The same, declaring that it needs a diffusion model (what the study must then provide)."""

    needs_diffusion = True


def build_toy(cfg, datamodule) -> ToySquareSynthesizer:
    return ToySquareSynthesizer(side=max(2, datamodule.working_size[0] // 4))
