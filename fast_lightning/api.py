"""The small Python API: synthesize defects with a trained diffusion model, apply a trained segmenter, and the
AIAS scheduler for diffusers pipelines. Everything the CLI does is reachable from here without make.

    from fast_lightning.api import load_synthesizer, synthesize, load_segmenter
    synth = load_synthesizer("runs/diffusion/widget/latest", steps=10)          # AIAS-10 by default
    pairs = synthesize(synth, ["good/000.png"], ["my_mask.png"], "crack", seed=0)  # [(image, mask)] tensors
    seg = load_segmenter("runs/seg/widget/latest")
    preds = list(seg.predict(["new/001.png"]))

Importing this module (or diffusers first, then this) is safe on CPU-only torch: ``fast_lightning`` applies its
torchvision shim on import, and the shim does nothing where torchvision's compiled ops load.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from PIL import Image

from fast_lightning.data.io import image_to_tensor, load_image, load_mask
from fast_lightning.errors import UserError
from fast_lightning.sampling import AIASScheduler
from fast_lightning.segmentation.predict import Prediction, Segmenter, load_segmenter, pick_device

__all__ = ["AIASScheduler", "Prediction", "Segmenter", "load_segmenter", "load_synthesizer", "synthesize"]


def load_synthesizer(ckpt: str | os.PathLike, device: str = "auto", **sampling):
    """An ``WindowedFastSynthesizer`` (windowed FAST synthesis + paste-back) from a train-diffusion checkpoint or run
    folder; ``sampling`` overrides the ``sampling`` config group (e.g. ``steps=10, name="ddim"``). An
    untrained checkpoint (global step 0) is refused, as `make synthesize` does."""
    from omegaconf import OmegaConf

    from fast_lightning.config import typed_merge
    from fast_lightning.diffusion.lightning_diffusion import load_fast_diffusion
    from fast_lightning.runs import CheckpointError
    from fast_lightning.sampling import build_sampler
    from fast_lightning.schema import SamplingConfig
    from fast_lightning.synthesis.checkpoints import check_checkpoint_compatible
    from fast_lightning.synthesis.windowed import WindowedFastSynthesizer

    try:
        model, meta = load_fast_diffusion(ckpt, map_location=pick_device(device))
    except CheckpointError as exc:
        raise UserError(str(exc)) from exc
    check_checkpoint_compatible(meta, meta["config"])  # the one untrained-checkpoint rule of synthesis
    cfg = typed_merge(OmegaConf.structured(SamplingConfig), OmegaConf.create(dict(sampling)), source="sampling=")
    synth = WindowedFastSynthesizer(model, build_sampler(cfg), meta)
    synth.channels = int(meta["config"].data.channels)
    return synth


def _as_image(item, channels: int) -> torch.Tensor:
    if isinstance(item, torch.Tensor):
        return item.float()
    if isinstance(item, Image.Image):
        return image_to_tensor(item, None, channels)
    return load_image(item, None, channels)


def _as_mask(item) -> torch.Tensor:
    if isinstance(item, torch.Tensor):
        return (item.float() > 0.5).float().reshape(1, *item.shape[-2:])
    if isinstance(item, Image.Image):
        return (image_to_tensor(item.convert("L"), None, 1) > 0.5).float()
    return load_mask(item)


def synthesize(synth, images: Sequence, masks: Sequence, anomaly_type: str | Sequence[str], seed: int = 0
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Paint defects of ``anomaly_type`` (one name, or one per image) inside ``masks`` on ``images`` (paths,
    PIL images or (C,H,W)/(1,H,W) tensors in [0, 1]; each image keeps its size). Returns (image, mask) pairs:
    outside the returned mask the image is the source exactly. Seeded: pair i draws its noise from (seed, i)."""
    from fast_lightning.seeding import generator_for

    if len(images) != len(masks):
        raise UserError(f"got {len(images)} images and {len(masks)} masks; give one mask per image")
    types = [anomaly_type] * len(images) if isinstance(anomaly_type, str) else list(anomaly_type)
    unknown = sorted(set(types) - set(synth.type_names))
    if unknown or len(types) != len(images):
        raise UserError(f"anomaly types {unknown or types} do not fit this model (it knows {synth.type_names}; "
                        "one name, or one per image)")
    channels = int(getattr(synth, "channels", 3))
    imgs = [_as_image(x, channels) for x in images]
    msks = [_as_mask(m) for m in masks]
    cond = [synth.type_names.index(t) + 1 for t in types]  # 0 = "normal", 1.. = the anomaly types
    gens = [generator_for("item", seed, i) for i in range(len(imgs))]
    out_images, out_masks = synth.synthesize(imgs, msks, cond, gens)
    return list(zip(out_images, out_masks))
