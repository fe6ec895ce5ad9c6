"""Synthesis: windowed FAST synthesis + paste-back, mask sources and samplers, the `make synthesize` writer,
and segmentation synthesizers (batched ``synth(normals, foreground, generator) -> (images, masks)``).

One job per module: ``windowed`` (WindowedFastSynthesizer, paste-back), ``mask_sources`` (Perlin, real-mask bank,
folder), ``mask_sampler`` (MaskSampler, TypedMaskSampler,
build_mask_sampler), ``checkpoints`` (which diffusion
checkpoint, and does it fit the config), ``fast_seg`` / ``cached`` (the two FAST segmentation synthesizers),
``baseline_synthesizers`` (DRAEM, CutPaste), ``real`` (real_third, real+synthesis mixes), ``registry``
(name -> class + builder, build_seg_synthesizer), ``predictor`` / ``writer`` (`make synthesize`).
``base_synthesizer.SegSynthesizer`` is the protocol every segmentation synthesizer follows (what it consumes,
whether it needs a diffusion model); ``base_synthesizer.TimedSynthesizer`` times any of them for the stage.

``build_seg_synthesizer(name, cfg, datamodule)`` is the one entry point the segmentation stage uses:
``fast`` (online FAST, pooled), ``fast_cached`` (pairs from `make synthesize`), and the baselines
``draem``, ``cutpaste``, ``real_third``, and any two of them joined by ``+`` (``real_third+fast``: real
labels plus synthesis in every batch, see ``MixedSynthesizer``). Model code is imported lazily, only for
the FAST synthesizers.
"""

from __future__ import annotations

from fast_lightning.synthesis.base_synthesizer import SegSynthesizer, SynthesisError, TimedSynthesizer
from fast_lightning.synthesis.baseline_synthesizers import (
    CutPasteSynthesizer,
    DraemSynthesizer,
    color_jitter,
    procedural_texture,
)
from fast_lightning.synthesis.cached import CachedSegSynthesizer, resolve_cached_dir
from fast_lightning.synthesis.checkpoints import (
    check_checkpoint_compatible,
    load_synthesis_model,
    resolve_diffusion_checkpoint,
)
from fast_lightning.synthesis.fast_seg import FastSegSynthesizer, derive_generators
from fast_lightning.synthesis.mask_sampler import MaskSampler, TypedMaskSampler, build_mask_sampler
from fast_lightning.synthesis.real import MixedSynthesizer, RealThirdSynthesizer
from fast_lightning.synthesis.registry import (
    SYNTHESIZERS,
    build_seg_synthesizer,
    check_seg_synth,
    needs_diffusion,
    synth_parts,
)
from fast_lightning.synthesis.windowed import WindowedFastSynthesizer, Window
from fast_lightning.synthesis.writer import read_manifest

__all__ = [
    "SYNTHESIZERS",
    "SegSynthesizer",
    "WindowedFastSynthesizer",
    "CachedSegSynthesizer",
    "CutPasteSynthesizer",
    "DraemSynthesizer",
    "FastSegSynthesizer",
    "MaskSampler",
    "MixedSynthesizer",
    "RealThirdSynthesizer",
    "SynthesisError",
    "TimedSynthesizer",
    "TypedMaskSampler",
    "Window",
    "build_mask_sampler",
    "build_seg_synthesizer",
    "check_checkpoint_compatible",
    "check_seg_synth",
    "color_jitter",
    "derive_generators",
    "load_synthesis_model",
    "needs_diffusion",
    "procedural_texture",
    "read_manifest",
    "resolve_cached_dir",
    "resolve_diffusion_checkpoint",
    "synth_parts",
]
