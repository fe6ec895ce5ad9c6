"""The registry of segmentation synthesizers: ``build_seg_synthesizer(name, cfg, datamodule)`` is the one
entry point the segmentation stage uses; ``synth_parts`` validates a ``segmentation.synth`` value."""

from __future__ import annotations

import os
from pathlib import Path

from fast_lightning.errors import UserError
from fast_lightning.hardware import autocast_dtype
from fast_lightning.synthesis.baselines import CutPasteSynthesizer, DraemSynthesizer
from fast_lightning.synthesis.cached import CachedSegSynthesizer
from fast_lightning.synthesis.checkpoints import check_checkpoint_compatible, resolve_diffusion_checkpoint
from fast_lightning.synthesis.common import SynthesisError
from fast_lightning.synthesis.fast_seg import FastSegSynthesizer
from fast_lightning.synthesis.masks import build_mask_sampler
from fast_lightning.synthesis.real import MixedSynthesizer, RealThirdSynthesizer

__all__ = ["SYNTHESIZERS", "SEG_SYNTHESIZERS", "synth_parts", "resolve_cached_dir", "check_seg_synth",
           "build_seg_synthesizer"]

# the baselines (no diffusion model needed)
SYNTHESIZERS: dict[str, type] = {
    "draem": DraemSynthesizer,
    "cutpaste": CutPasteSynthesizer,
    "real_third": RealThirdSynthesizer,
}
SEG_SYNTHESIZERS = ("fast", "fast_cached", *SYNTHESIZERS)


def synth_parts(name: str) -> list[str]:
    """The members of a segmentation.synth value: ``fast`` -> [fast]; ``real_third+fast`` -> both.
    Raises SynthesisError naming the key for unknown members or more than two."""
    parts = [p.strip() for p in str(name).split("+")]
    bad = [p for p in parts if p not in SEG_SYNTHESIZERS]
    if bad or len(parts) > 2 or len(set(parts)) != len(parts):
        raise SynthesisError(f"unknown segmentation.synth {name!r}: use one of {', '.join(SEG_SYNTHESIZERS)} or two "
                             "different ones joined by '+' (e.g. real_third+fast)")
    return parts


def resolve_cached_dir(cfg) -> Path:
    """``segmentation.fast_cached_dir`` or runs/synthetic/<class>/latest (must hold a manifest.jsonl)."""
    given = cfg.segmentation.get("fast_cached_dir")
    folder = Path(str(given)) if given else Path(str(cfg.run_root)) / "synthetic" / str(cfg.class_name) / "latest"
    real = Path(os.path.realpath(folder))
    if not (real / "manifest.jsonl").is_file():
        hint = (f"segmentation.fast_cached_dir={given} holds no manifest.jsonl" if given else
                f"{folder} does not exist or holds no manifest.jsonl")
        raise SynthesisError(f"synth=fast_cached needs pairs from `make synthesize CLASS={cfg.class_name}`: {hint}")
    return real


def check_seg_synth(name: str, cfg) -> None:
    """Pre-flight of ``build_seg_synthesizer`` that reads nothing big: the name, and that the diffusion checkpoint
    / cached pairs it needs exist. train-seg calls it before its run folder is made (no stub folder)."""
    parts = synth_parts(name)
    if "fast" in parts:
        resolve_diffusion_checkpoint(cfg)
    if "fast_cached" in parts:
        resolve_cached_dir(cfg)


def build_seg_synthesizer(name: str, cfg, datamodule):
    """The segmentation synthesizer ``name`` for ``cfg`` (outputs at the working size of the batch it gets,
    ``datamodule.working_size``; ``fast`` synthesizes on the full-resolution normals the DataModule names by
    record index). ``a+b``: a MixedSynthesizer, ``segmentation.real_ratio`` of the items from ``a``.

    ``datamodule``: an AnomalyDataModule (its split gives the generator-train masks / real pairs).
    """
    parts = synth_parts(name)
    if len(parts) == 2:
        first, second = (build_seg_synthesizer(p, cfg, datamodule) for p in parts)
        return MixedSynthesizer(first, second, float(cfg.segmentation.real_ratio), names=parts)
    datamodule.setup()
    split = datamodule.split
    size = datamodule.working_size
    syn = cfg.synthesis
    if name == "fast":
        from fast_lightning.diffusion.module import load_fast_diffusion
        from fast_lightning.sampling import build_sampler

        trust = bool(cfg.get("trust_checkpoint"))
        model, meta = load_fast_diffusion(resolve_diffusion_checkpoint(cfg), trust=trust)
        check_checkpoint_compatible(meta, cfg, list(split.types))
        # full-resolution synthesis (masks at native size), then the working size: see FastSegSynthesizer
        return FastSegSynthesizer(model, meta, build_mask_sampler(cfg, split, None), build_sampler(cfg.sampling),
                                  autocast_dtype=autocast_dtype(str(cfg.trainer.precision)),
                                  channels=int(cfg.data.channels), foreground=str(cfg.data.foreground),
                                  foreground_dir=cfg.data.foreground_dir, buffer_size=int(syn.seg_buffer_size),
                                  refresh=syn.seg_refresh, normals=[r.image for r in split.normal_train])
    if name == "fast_cached":
        return CachedSegSynthesizer(resolve_cached_dir(cfg), size, int(cfg.data.channels))
    if name == "draem":
        masks = (build_mask_sampler(cfg, split, size) if str(syn.draem_masks) == "configured"
                 else build_mask_sampler(cfg, split, size, sources=["perlin"]))
        return DraemSynthesizer(mask_sampler=masks, texture_source=str(syn.draem_texture))
    if name == "cutpaste":
        return CutPasteSynthesizer(variant=str(syn.cutpaste_variant))
    if name == "real_third":
        images, masks = datamodule.labelled_dataset("generator_train").stacked()
        return RealThirdSynthesizer(images, masks)
    raise SynthesisError(f"unknown segmentation.synth {name!r}; choose from {', '.join(SEG_SYNTHESIZERS)}")


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
        raise UserError(f"SYNTHS={text!r}: unknown {bad or 'empty list'}; choose from {', '.join(SEG_SYNTHESIZERS)} "
                        "or two of them joined by '+' (e.g. real_third+fast)")
    return names
