"""The registry of segmentation synthesizers: name -> (class, builder). ``build_seg_synthesizer(name, cfg,
datamodule)`` is the one entry point the segmentation stage uses; ``synth_parts`` validates a
``segmentation.synth`` value; ``needs_diffusion`` answers, from the classes' protocol attributes
(``SegSynthesizer.native_input`` / ``needs_diffusion``), whether a study must provide a diffusion model first.

Adding a synthesizer = one module (a ``SegSynthesizer`` subclass and its ``build(cfg, datamodule)``) + one
line in ``SYNTHESIZERS`` (+ its options in the ``synthesis`` schema group).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fast_lightning.errors import UserError
from fast_lightning.synthesis.baseline_synthesizers import (
    CutPasteSynthesizer,
    DraemSynthesizer,
    build_cutpaste,
    build_draem,
)
from fast_lightning.synthesis.cached import CachedSegSynthesizer, build_cached, resolve_cached_dir
from fast_lightning.synthesis.checkpoints import resolve_diffusion_checkpoint
from fast_lightning.synthesis.base_synthesizer import SegSynthesizer, SynthesisError
from fast_lightning.synthesis.fast_seg import FastSegSynthesizer, build_fast_seg
from fast_lightning.synthesis.real import MixedSynthesizer, RealThirdSynthesizer, build_real_third

__all__ = ["Registered", "SYNTHESIZERS", "synth_parts", "needs_diffusion", "needs_pairs", "check_seg_synth",
           "build_seg_synthesizer", "parse_synths"]


@dataclass(frozen=True)
class Registered:
    """One registry entry: the synthesizer class (its protocol attributes) and how to build it for a config."""

    cls: type[SegSynthesizer]
    build: Callable[..., SegSynthesizer]  # (cfg, datamodule) -> synthesizer
    preflight: Callable[..., object] | None = None  # (cfg) -> raises when what it needs is missing; cheap


SYNTHESIZERS: dict[str, Registered] = {
    "fast": Registered(FastSegSynthesizer, build_fast_seg, resolve_diffusion_checkpoint),  # online FAST, native size
    "fast_cached": Registered(CachedSegSynthesizer, build_cached, resolve_cached_dir),  # pairs of `make synthesize`
    "draem": Registered(DraemSynthesizer, build_draem),
    "cutpaste": Registered(CutPasteSynthesizer, build_cutpaste),
    "real_third": Registered(RealThirdSynthesizer, build_real_third),  # real labels: reference, not synthesis
}


def synth_parts(name: str) -> list[str]:
    """The members of a segmentation.synth value: ``fast`` -> [fast]; ``real_third+fast`` -> both.
    Raises SynthesisError naming the key for unknown members or more than two."""
    parts = [p.strip() for p in str(name).split("+")]
    bad = [p for p in parts if p not in SYNTHESIZERS]
    if bad or len(parts) > 2 or len(set(parts)) != len(parts):
        raise SynthesisError(f"unknown segmentation.synth {name!r}: use one of {', '.join(SYNTHESIZERS)} or two "
                             "different ones joined by '+' (e.g. real_third+fast)")
    return parts


def needs_diffusion(name: str) -> bool:
    """Whether ``segmentation.synth=name`` needs a trained diffusion model (asked of the classes, not the name)."""
    return any(SYNTHESIZERS[p].cls.needs_diffusion for p in synth_parts(name))


def needs_pairs(name: str) -> bool:
    """Whether ``segmentation.synth=name`` reads synthesized pairs from disk (a pool of `make synthesize`)."""
    return any(SYNTHESIZERS[p].cls.needs_pairs for p in synth_parts(name))


def check_seg_synth(name: str, cfg) -> None:
    """Pre-flight of ``build_seg_synthesizer`` that reads nothing big: the name, and each member's registered
    ``preflight`` (the diffusion checkpoint / cached pairs it needs exist). train-seg calls it before its run
    folder is made (no stub folder)."""
    for part in synth_parts(name):
        if SYNTHESIZERS[part].preflight is not None:
            SYNTHESIZERS[part].preflight(cfg)


def build_seg_synthesizer(name: str, cfg, datamodule) -> SegSynthesizer:
    """The segmentation synthesizer ``name`` for ``cfg`` (outputs at the working size of the batch it gets,
    ``datamodule.working_size``; ``native_input`` ones synthesize on the full-resolution normals the
    DataModule names by record index). ``a+b``: a MixedSynthesizer, ``a`` on ``segmentation.synth_ratio`` of
    the batch, ``b`` on ``segmentation.second_ratio`` more.

    ``datamodule``: an AnomalyDataModule (its split gives the generator-train masks / real pairs).
    """
    parts = synth_parts(name)
    if len(parts) == 2:
        first, second = (build_seg_synthesizer(p, cfg, datamodule) for p in parts)
        return MixedSynthesizer(first, second, float(cfg.segmentation.synth_ratio),
                                float(cfg.segmentation.second_ratio), names=parts)
    datamodule.setup()
    return SYNTHESIZERS[name].build(cfg, datamodule)


def parse_synths(text: str) -> list[str]:
    """Comma-separated segmentation.synth values; each is a synthesizer or two joined by '+'."""
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    bad = []
    for name in names:
        try:
            synth_parts(name)
        except SynthesisError:
            bad.append(name)
    if not names or bad:
        raise UserError(f"SYNTHS={text!r}: unknown {bad or 'empty list'}; choose from {', '.join(SYNTHESIZERS)} "
                        "or two of them joined by '+' (e.g. real_third+fast)")
    return names
