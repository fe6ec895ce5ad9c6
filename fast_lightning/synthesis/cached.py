"""The on-disk FAST segmentation synthesizer (``synth=fast_cached``): pairs written by `make synthesize`,
read through the run's manifest."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fast_lightning.data.mask_resize import resize_mask
from fast_lightning.synthesis.base_synthesizer import GeneratorArg, SegSynthesizer, SynthesisError
from fast_lightning.synthesis.fast_seg import first_generator as _first_generator
from fast_lightning.data.io import resize_tensor_image
from fast_lightning.synthesis.writer import read_manifest

__all__ = ["CachedSegSynthesizer", "read_manifest", "resolve_cached_dir", "build_cached"]


class CachedSegSynthesizer(SegSynthesizer):
    """Pairs written by `make synthesize` (``synth=fast_cached``), resized to the working resolution and
    returned as random draws. The normals passed in are ignored: the cached pairs replace them (their
    backgrounds are other normal train images). Loaded once on CPU, moved to the batch's device once.
    """

    def __init__(self, folder: str | Path, resolution: int | tuple[int, int], channels: int = 3) -> None:
        from fast_lightning.data.io import load_image, load_mask

        hw = (int(resolution), int(resolution)) if isinstance(resolution, int) else tuple(int(v) for v in resolution)

        folder = Path(os.path.realpath(folder))
        rows = read_manifest(folder)
        images, masks = [], []
        for row in rows:
            img_p, mask_p = folder / row["image"], folder / row["mask"]
            if not (img_p.is_file() and mask_p.is_file()):
                continue
            m = resize_mask(load_mask(mask_p)[None], hw)[0]
            if not bool(m.any()):
                continue
            images.append(load_image(img_p, hw, channels))
            masks.append(m)
        if not images:
            raise SynthesisError(f"{folder} holds no complete (image, mask) pairs; run `make synthesize` first")
        self.folder = folder
        self.images = torch.stack(images)
        self.masks = torch.stack(masks)
        self._device_cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __call__(self, normals: torch.Tensor, foreground: torch.Tensor | None,
                 generator: GeneratorArg) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = normals.shape
        if self.images.shape[1] != c:
            raise ValueError(f"cached images have {self.images.shape[1]} channels, the batch has {c}")
        key = (str(normals.device), h, w)
        if self._device_cache is None or self._device_cache[0] != key:
            imgs = resize_tensor_image(self.images, (h, w))
            msks = resize_mask(self.masks, (h, w))
            self._device_cache = (key, imgs.to(normals.device), msks.to(normals.device))
        _, imgs, msks = self._device_cache
        g = _first_generator(generator)
        idx = torch.randint(imgs.shape[0], (b,), generator=g, device=g.device).to(normals.device)
        return imgs[idx].to(normals.dtype), msks[idx].to(normals.dtype)


def resolve_cached_dir(cfg) -> Path:
    """``synthesis.fast_cached_dir`` or runs/synthetic/<class>/latest (must hold a manifest.jsonl)."""
    given = cfg.synthesis.get("fast_cached_dir")
    folder = Path(str(given)) if given else Path(str(cfg.run_root)) / "synthetic" / str(cfg.class_name) / "latest"
    real = Path(os.path.realpath(folder))
    if not (real / "manifest.jsonl").is_file():
        hint = (f"synthesis.fast_cached_dir={given} holds no manifest.jsonl" if given else
                f"{folder} does not exist or holds no manifest.jsonl")
        raise SynthesisError(f"synth=fast_cached needs pairs from `make synthesize CLASS={cfg.class_name}`: {hint}")
    return real


def build_cached(cfg, datamodule) -> CachedSegSynthesizer:
    """``synth=fast_cached``: the pairs of ``resolve_cached_dir(cfg)`` at the working size."""
    return CachedSegSynthesizer(resolve_cached_dir(cfg), datamodule.working_size, int(cfg.data.channels))
