"""Segmentation training pairs with REAL labels: ``RealThirdSynthesizer`` (the generator-train third's real
defect pairs, an upper-bound reference, not a synthesizer) and ``MixedSynthesizer`` (real labels plus a
synthesizer in every batch, ``segmentation.synth=a+b``). Same batched interface as ``baselines``; by design
``RealThirdSynthesizer`` ignores the normals and returns real pairs."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fast_lightning.data.mask_resize import resize_mask
from fast_lightning.synthesis.base_synthesizer import GeneratorArg, SegSynthesizer, batch_generators as _generators, randint as _ri, uniform as _u

__all__ = ["RealThirdSynthesizer", "MixedSynthesizer"]


# ---- real third -----------------------------------------------------------------------------------------

class RealThirdSynthesizer(SegSynthesizer):
    """Upper-bound reference: ignores the normals and returns random REAL generator-train (image, mask)
    pairs with random h/v flips. This uses real defect labels, which the synthetic methods do not see.

    Stored on CPU, moved to the batch's device once and cached; resized to the batch's resolution if needed.
    """

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, flip: bool = True) -> None:
        if images.ndim != 4 or masks.ndim != 4 or masks.shape[1] != 1:
            raise ValueError(f"need images (N,C,H,W) and masks (N,1,H,W), got {tuple(images.shape)}, {tuple(masks.shape)}")
        if images.shape[0] != masks.shape[0] or images.shape[-2:] != masks.shape[-2:]:
            raise ValueError(f"images {tuple(images.shape)} and masks {tuple(masks.shape)} do not pair up")
        binary = masks.detach().cpu() > 0.5
        keep = binary.flatten(1).any(1)
        if not bool(keep.any()):
            raise ValueError("RealThirdSynthesizer needs at least one image with a non-empty mask")
        if not bool(keep.all()):
            warnings.warn(f"RealThirdSynthesizer: dropped {int((~keep).sum())} pair(s) with empty masks",
                          RuntimeWarning, stacklevel=2)
        self.images = images.detach().cpu()[keep].float().clamp(0, 1)
        self.masks = binary[keep]
        self.flip = bool(flip)
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def _bank(self, device: torch.device, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        key = (str(device), hw)
        if key not in self._cache:
            imgs, msk = self.images, self.masks.float()
            if tuple(imgs.shape[-2:]) != hw:
                imgs = F.interpolate(imgs, size=hw, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
                msk = resize_mask(msk, hw)  # the one mask resize rule: thin defects survive
            self._cache = {key: (imgs.to(device), msk.to(device))}
        return self._cache[key]

    def __call__(self, normals: torch.Tensor, foreground: torch.Tensor | None,
                 generator: GeneratorArg) -> tuple[torch.Tensor, torch.Tensor]:
        if normals.ndim != 4:
            raise ValueError(f"normals must be (B, C, H, W), got {tuple(normals.shape)}")
        b, c, h, w = normals.shape
        if self.images.shape[1] != c:
            raise ValueError(f"real images have {self.images.shape[1]} channels, the batch has {c}")
        imgs, msk = self._bank(normals.device, (h, w))
        gens = _generators(generator, b)
        out_i, out_m = [], []
        for i in range(b):
            g = gens[i]
            k = _ri(g, 0, imgs.shape[0])
            x, m = imgs[k], msk[k]
            if self.flip and _u(g) < 0.5:
                x, m = x.flip(-1), m.flip(-1)
            if self.flip and _u(g) < 0.5:
                x, m = x.flip(-2), m.flip(-2)
            out_i.append(x)
            out_m.append(m)
        return torch.stack(out_i).to(normals.dtype), torch.stack(out_m).to(normals.dtype)


# ---- real labels plus synthesis ----------------------------------------------------------------------------

class MixedSynthesizer(SegSynthesizer):
    """Two synthesizers in one batch (``segmentation.synth=a+b``, e.g. ``real_third+fast``).

    ``first`` keeps the round(B * synth_ratio) items it has alone and ``second`` adds round(B * ``second_ratio``)
    in place of normal items (:meth:`batch_items`). Why not split one share: at a fixed step budget, halving the
    real defects per batch cost the real-label segmenter most of its AP (docs/MEASURED.md, "mixing"). Each
    member keeps its own behaviour (no logic duplicated). ``native_input`` members (online fast) receive their
    slice of ``records``/``hflip``. ``last_types`` is concatenated when both members report it."""

    def __init__(self, first, second, synth_ratio: float = 0.5, second_ratio: float = 0.25,
                 names: Sequence[str] | None = None) -> None:
        for key, value in (("synth_ratio", synth_ratio), ("second_ratio", second_ratio)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"segmentation.{key}={value} must lie in [0, 1]")
        self.parts = [first, second]
        self.synth_ratio, self.second_ratio = float(synth_ratio), float(second_ratio)
        self.names = list(names) if names else [type(first).__name__, type(second).__name__]
        self.native_input = any(p.native_input for p in self.parts)
        self.needs_diffusion = any(p.needs_diffusion for p in self.parts)
        self.last_from_second = torch.zeros(0, dtype=torch.bool)  # which items of the last call came from b
        self._planned = (-1, 0)  # (items, of them from the first member) of the last batch_items

    def batch_items(self, batch: int, synth_ratio: float | None = None) -> int:
        """The first member's round(batch * synth_ratio) plus the second's round(batch * second_ratio), capped
        by the normal items left (synth_ratio 1: b gets none). The next call on that many items splits them
        exactly so (the DataModule asks this, then synthesizes the items it returned)."""
        s = self.synth_ratio if synth_ratio is None else float(synth_ratio)
        first = int(round(batch * s))
        total = first + min(int(round(batch * self.second_ratio)), batch - first)  # b only takes normal items
        self._planned = (total, first)
        return total

    def split(self, b: int) -> int:
        """Of ``b`` items, those that come from the first member: as ``batch_items`` planned them, else (a
        direct call on ``b`` items, e.g. `make fidelity`) in proportion to the two shares."""
        planned_total, planned_first = self._planned
        if planned_total == b:
            return planned_first
        total = self.synth_ratio + self.second_ratio
        return int(round(b * self.synth_ratio / total)) if total > 0 else 0

    def __call__(self, normals: torch.Tensor, foreground: torch.Tensor | None, generator: GeneratorArg,
                 records: torch.Tensor | None = None, hflip: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        b = normals.shape[0]
        k = self.split(b)
        gens = None if isinstance(generator, torch.Generator) else _generators(generator, b)
        images, masks = [], []
        for part, sl in zip(self.parts, (slice(0, k), slice(k, b))):
            if sl.stop - sl.start == 0:
                continue
            g = generator if gens is None else gens[sl]
            fg = None if foreground is None else foreground[sl]
            kwargs = {}
            if part.native_input and records is not None:
                kwargs = {"records": records[sl], "hflip": None if hflip is None else hflip[sl]}
            img, m = part(normals[sl], fg, g, **kwargs)
            images.append(img.to(normals.dtype))
            masks.append(m.to(normals.dtype))
        self.last_from_second = torch.arange(b) >= k
        return torch.cat(images), torch.cat(masks)


def build_real_third(cfg, datamodule) -> RealThirdSynthesizer:
    """``synth=real_third``: the generator-train third's real pairs at the working size."""
    images, masks = datamodule.labelled_dataset("generator_train").stacked()
    return RealThirdSynthesizer(images, masks)
