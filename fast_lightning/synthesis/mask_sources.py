"""Anomaly mask sources: Perlin masks, augmented real masks and a user folder of masks.

Every source returns a float32 ``(1, H, W)`` tensor with values in {0, 1} (1 = region to synthesize),
constrained to the foreground when one is given (an anomaly only makes sense on the object). All randomness
comes from the ``torch.Generator`` passed in, so a seed reproduces the mask exactly. Random numbers are
drawn on the generator's device and results returned on the foreground's device (CPU when none is given),
so a CPU generator can drive masks for GPU batches. ``synthesis.mask_sampler`` mixes them (``MaskSampler``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from fast_lightning.data.mask_resize import Size, as_hw, resize_mask
from fast_lightning.synthesis.base_synthesizer import coin as _coin, randint as _randint, uniform as _uniform

__all__ = [
    "MaskSource",
    "perlin_noise",
    "perlin_mask",
    "PerlinMaskSource",
    "RealMaskBank",
    "FolderMaskSource",
]

MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")


class MaskSource(Protocol):
    def sample(self, size: Size, generator: torch.Generator, foreground: torch.Tensor | None = None) -> torch.Tensor:
        ...


# ---- small helpers -------------------------------------------------------------------------------------


def _prepare_foreground(foreground: torch.Tensor | None, h: int, w: int) -> torch.Tensor | None:
    """(1,H,W) or (H,W) -> bool (1,H,W) on its own device; None stays None."""
    if foreground is None:
        return None
    fg = foreground
    if fg.ndim == 2:
        fg = fg[None]
    if fg.ndim != 3 or fg.shape[0] != 1 or tuple(fg.shape[-2:]) != (h, w):
        raise ValueError(f"foreground must be (1, {h}, {w}), got {tuple(foreground.shape)}")
    return fg > 0.5


def _out_device(foreground: torch.Tensor | None) -> torch.device:
    return foreground.device if foreground is not None else torch.device("cpu")


def _random_true_pixel(mask: torch.Tensor, generator: torch.Generator) -> tuple[int, int]:
    """Uniformly random (y, x) where the (1,H,W) or (H,W) bool mask is True (mask must be non-empty)."""
    idx = torch.nonzero(mask.reshape(mask.shape[-2], mask.shape[-1]).cpu(), as_tuple=False)
    k = _randint(generator, 0, idx.shape[0])
    return int(idx[k, 0]), int(idx[k, 1])


def _shift(mask: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate (..., H, W) by integer (dy, dx), filling with zeros (no wrap-around)."""
    h, w = mask.shape[-2:]
    out = torch.zeros_like(mask)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = mask[..., ys, xs]
    return out


def _binarize(soft: torch.Tensor) -> torch.Tensor:
    """>= 0.5, or any coverage when that would erase a thin mask entirely (after a rotation/scale warp)."""
    hard = soft >= 0.5
    if not bool(hard.any()) and bool((soft > 1e-3).any()):
        hard = soft > 1e-3
    return hard


# ---- Perlin ---------------------------------------------------------------------------------------------

def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(size: Size, res: tuple[float, float], generator: torch.Generator, angle: float = 0.0) -> torch.Tensor:
    """2-D gradient (Perlin) noise, (H, W) float in [-1, 1], on the generator's device.

    ``res`` = number of noise periods along (H, W). Rotation is applied to the sampling coordinates (not by
    resampling an image), so rotated noise has no interpolation artefacts and needs no cropping.
    """
    h, w = as_hw(size)
    dev = generator.device
    py = torch.arange(h, device=dev, dtype=torch.float32) + 0.5 - h / 2
    px = torch.arange(w, device=dev, dtype=torch.float32) + 0.5 - w / 2
    py, px = torch.meshgrid(py, px, indexing="ij")
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        py, px = c * py - s * px, s * py + c * px
    y = py / h * float(res[0])
    x = px / w * float(res[1])
    y = y - torch.floor(y.min())
    x = x - torch.floor(x.min())
    gh, gw = int(y.max()) + 2, int(x.max()) + 2
    theta = torch.rand(gh, gw, generator=generator, device=dev) * (2 * math.pi)
    grad = torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)  # (gh, gw, 2): (gy, gx)
    y0, x0 = torch.floor(y).long(), torch.floor(x).long()
    fy, fx = y - y0, x - x0

    def corner(dy: int, dx: int) -> torch.Tensor:
        g = grad[y0 + dy, x0 + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    u, v = _fade(fx), _fade(fy)
    top = torch.lerp(corner(0, 0), corner(0, 1), u)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), u)
    return math.sqrt(2.0) * torch.lerp(top, bottom, v)  # unit gradients peak at sqrt(2)/2: rescale to [-1, 1]


def perlin_mask(
    size: Size,
    generator: torch.Generator,
    scale_range: tuple[int, int] = (0, 6),
    threshold: float = 0.5,
    foreground: torch.Tensor | None = None,
    rotate: bool = True,
) -> torch.Tensor:
    """DRAEM-style Perlin mask: per-axis scale 2^k, k uniform in [scale_range[0], scale_range[1]) (default
    2^0..2^5 periods), optional random rotation in [-90, 90) degrees, ``noise > threshold``, AND foreground.

    May be empty (e.g. coarse noise that stays below the threshold): wrap in ``MaskSampler`` for area checks.
    """
    h, w = as_hw(size)
    lo, hi = int(scale_range[0]), int(scale_range[1])
    if hi <= lo or lo < 0:
        raise ValueError(f"scale_range must be (lo, hi) with 0 <= lo < hi, got {scale_range}")
    fg = _prepare_foreground(foreground, h, w)
    ry = 2 ** _randint(generator, lo, hi)
    rx = 2 ** _randint(generator, lo, hi)
    angle = math.radians(_uniform(generator, -90.0, 90.0)) if rotate else 0.0
    noise = perlin_noise((h, w), (ry, rx), generator, angle)
    mask = (noise > threshold)[None].to(_out_device(fg))
    if fg is not None:
        mask = mask & fg
    return mask.float()


class PerlinMaskSource:
    """``perlin_mask`` with fixed settings, as a mask source for ``MaskSampler``."""

    def __init__(self, scale_range: tuple[int, int] = (0, 6), threshold: float = 0.5, rotate: bool = True) -> None:
        self.scale_range, self.threshold, self.rotate = tuple(scale_range), float(threshold), bool(rotate)

    def sample(self, size: Size, generator: torch.Generator, foreground: torch.Tensor | None = None) -> torch.Tensor:
        return perlin_mask(size, generator, self.scale_range, self.threshold, foreground, self.rotate)

    def __repr__(self) -> str:
        return f"PerlinMaskSource(scale_range={self.scale_range}, threshold={self.threshold}, rotate={self.rotate})"


# ---- real masks -----------------------------------------------------------------------------------------

class RealMaskBank:
    """Real defect masks with geometric augmentation, placed on the foreground.

    Per draw: a random mask, random h/v flips and 90-degree rotation, a small rotation (+-max_angle degrees)
    and scale (scale_range) about the mask's centroid, then an integer translation that puts its centroid on
    a random foreground pixel (a random position when there is no foreground). If less than ``min_inside`` of
    the mask lands on the foreground, the translation is retried (max_tries); the best placement is kept.
    The result is ANDed with the foreground and re-binarised. Masks are resized once per output size.

    ``area_range`` (min, max fraction of the image): the scale drawn is clamped so the mask's area stays in it,
    or at the mask's own area where that lies outside. Why: a real mask is a real defect size, and rejecting
    the draws outside the random masks' limits removed the large types from the pool (45% of magnetic tile's
    "uneven" masks cover more than 0.25 of the image). ``MaskSampler`` then leaves such draws' area alone.

    ``augment=False`` draws each mask as it is: its own position, orientation and size (only ANDed with the
    foreground), as the authors' code does. Why: some defect types are defined by where and how they lie
    (magnetic tile's "uneven" is a full-width band along the top or bottom edge); rot90 and re-placement turn
    such a band into one no real part shows.
    """

    def __init__(
        self,
        masks: Sequence[torch.Tensor],
        scale_range: tuple[float, float] = (0.5, 1.5),
        max_angle: float = 15.0,
        flip: bool = True,
        rot90: bool = True,
        min_inside: float = 0.5,
        max_tries: int = 10,
        area_range: tuple[float, float] | None = None,
        augment: bool = True,
    ) -> None:
        kept: list[torch.Tensor] = []
        for i, m in enumerate(masks):
            if not isinstance(m, torch.Tensor):
                raise ValueError(f"mask {i} is not a tensor")
            t = m.detach().float().cpu()
            if t.ndim == 2:
                t = t[None]
            if t.ndim != 3 or t.shape[0] != 1:
                raise ValueError(f"mask {i} must be (1, h, w) or (h, w), got {tuple(m.shape)}")
            t = t > 0.5
            if bool(t.any()):
                kept.append(t.to(torch.uint8))
        if not kept:
            raise ValueError("RealMaskBank needs at least one non-empty mask (all given masks are empty)")
        if len(kept) < len(masks):
            warnings.warn(f"RealMaskBank: dropped {len(masks) - len(kept)} empty mask(s)", RuntimeWarning, stacklevel=2)
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be 0 < lo <= hi, got {scale_range}")
        self.masks = kept
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.max_angle, self.flip, self.rot90 = float(max_angle), bool(flip), bool(rot90)
        self.min_inside, self.max_tries = float(min_inside), max(1, int(max_tries))
        if area_range is not None and not 0.0 <= area_range[0] <= area_range[1] <= 1.0:
            raise ValueError(f"area_range must be 0 <= min <= max <= 1, got {area_range}")
        self.area_range = None if area_range is None else (float(area_range[0]), float(area_range[1]))
        self.augment = bool(augment)
        self._resized: dict[tuple[int, int], list[torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.masks)

    MAX_CACHED_SIZES = 16  # native-size synthesis meets many image sizes: keep the most recent ones

    def _at_size(self, index: int, h: int, w: int) -> torch.Tensor:
        if (h, w) not in self._resized and len(self._resized) >= self.MAX_CACHED_SIZES:
            self._resized.pop(next(iter(self._resized)))
        cache = self._resized.setdefault((h, w), [None] * len(self.masks))  # type: ignore[list-item]
        if cache[index] is None:
            cache[index] = resize_mask(self.masks[index], (h, w)).to(torch.uint8)
        return cache[index].float()

    def _transform(self, soft: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Flips, rot90, small rotation + scale about the centroid; result centred in the frame (bool)."""
        h, w = soft.shape[-2:]
        if self.flip and _coin(generator):
            soft = soft.flip(-1)
        if self.flip and _coin(generator):
            soft = soft.flip(-2)
        if self.rot90:
            k = _randint(generator, 0, 4) if h == w else 2 * _randint(generator, 0, 2)
            soft = torch.rot90(soft, k, dims=(-2, -1))
        angle = math.radians(_uniform(generator, -self.max_angle, self.max_angle)) if self.max_angle else 0.0
        scale = _uniform(generator, *self.scale_range)
        weights = soft[0]
        total = float(weights.sum())
        if self.area_range is not None:
            own = total / float(h * w)
            lo, hi = min(self.area_range[0], own), max(self.area_range[1], own)
            scale = min(max(scale, math.sqrt(lo / own)), math.sqrt(hi / own))
        ys = torch.arange(h, dtype=torch.float32)
        xs = torch.arange(w, dtype=torch.float32)
        cy = float((weights.sum(1) * ys).sum()) / total
        cx = float((weights.sum(0) * xs).sum()) / total
        # output pixel p -> source pixel c_src + R(-angle) (p - c_out) / scale
        oy, ox = torch.meshgrid(ys - (h - 1) / 2, xs - (w - 1) / 2, indexing="ij")
        c, s = math.cos(angle), math.sin(angle)
        sy = cy + (c * oy - s * ox) / scale
        sx = cx + (s * oy + c * ox) / scale
        grid = torch.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], dim=-1)[None]
        out = F.grid_sample(soft[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        return _binarize(out)

    def sample_with_index(
        self, size: Size, generator: torch.Generator, foreground: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, int]:
        """Like ``sample`` and also the index of the bank mask that was drawn (e.g. to look up its type)."""
        h, w = as_hw(size)
        fg = _prepare_foreground(foreground, h, w)
        fg_cpu = fg.cpu() if fg is not None else None
        if fg_cpu is not None and not bool(fg_cpu.any()):
            warnings.warn("RealMaskBank: empty foreground, placing the mask anywhere", RuntimeWarning, stacklevel=2)
            fg_cpu = None
        index = _randint(generator, 0, len(self.masks))
        if not self.augment:
            as_is = self._at_size(index, h, w) > 0.5
            if fg_cpu is not None:
                as_is = as_is & fg_cpu
            return as_is.to(_out_device(fg)).float(), index
        centred = self._transform(self._at_size(index, h, w), generator)
        if not bool(centred.any()):  # cannot happen for non-empty sources, kept as a guard
            return torch.zeros(1, h, w, device=_out_device(fg)), index
        yy, xx = torch.nonzero(centred[0], as_tuple=True)
        cy, cx = int(torch.round(yy.float().mean())), int(torch.round(xx.float().mean()))
        if fg_cpu is None:
            # random translation that keeps the whole mask inside the image
            dy = _randint(generator, -int(yy.min()), h - int(yy.max()))
            dx = _randint(generator, -int(xx.min()), w - int(xx.max()))
            placed = _shift(centred, dy, dx)
        else:
            best, best_inside = None, -1.0
            area = float(centred.sum())
            for _ in range(self.max_tries):
                ty, tx = _random_true_pixel(fg_cpu, generator)
                cand = _shift(centred, ty - cy, tx - cx)
                inside = float((cand & fg_cpu).sum()) / area
                if inside > best_inside:
                    best, best_inside = cand, inside
                if inside >= self.min_inside:
                    break
            placed = best & fg_cpu
        return placed.to(_out_device(fg)).float(), index

    def sample(self, size: Size, generator: torch.Generator, foreground: torch.Tensor | None = None) -> torch.Tensor:
        """(1, H, W) float {0,1}: an augmented real mask inside the foreground (may be empty only if the
        foreground is tiny; ``MaskSampler`` rejects such draws)."""
        return self.sample_with_index(size, generator, foreground)[0]


def _load_mask_png(path: Path, size: tuple[int, int] | None) -> torch.Tensor:
    from PIL import Image

    from fast_lightning.data.io import mask_pixels, mask_to_binary

    with Image.open(path) as img:
        img.load()
        arr = mask_to_binary(mask_pixels(img, path), path, warn=False)  # the one mask-channel rule
    t = torch.from_numpy(arr)[None]
    if size is not None:
        t = resize_mask(t, size)
    return t.to(torch.uint8)


class FolderMaskSource(RealMaskBank):
    """User-provided masks (PNG/BMP/TIF/JPG, white = anomaly) from a folder, augmented like ``RealMaskBank``.

    ``size`` resizes the masks once at load time (saves memory for large masks); ``sample(size=None)`` then
    draws at that size.
    """

    def __init__(self, folder: str | Path, size: Size | None = None, **bank_kwargs) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"mask folder {str(folder)!r} does not exist (or is not a folder)")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in MASK_EXTENSIONS and p.is_file())
        if not files:
            raise ValueError(f"mask folder {str(folder)!r} contains no mask images ({', '.join(MASK_EXTENSIONS)})")
        self.folder = folder
        self.size = as_hw(size) if size is not None else None
        masks = []
        for f in files:
            try:
                masks.append(_load_mask_png(f, self.size))
            except OSError as exc:
                raise ValueError(f"unreadable mask image {str(f)!r} in mask folder {str(folder)!r}: {exc}") from exc
        if not any(bool(m.any()) for m in masks):
            raise ValueError(f"every mask in mask folder {str(folder)!r} is empty (all black)")
        super().__init__(masks, **bank_kwargs)

    def sample_with_index(self, size: Size | None, generator: torch.Generator,
                          foreground: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
        if size is None:
            if self.size is None:
                raise ValueError("FolderMaskSource.sample needs a size (none was given at construction)")
            size = self.size
        return super().sample_with_index(size, generator, foreground)

    def sample(self, size: Size | None, generator: torch.Generator,
               foreground: torch.Tensor | None = None) -> torch.Tensor:
        return self.sample_with_index(size, generator, foreground)[0]
