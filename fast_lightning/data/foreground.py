"""Object foreground estimation, so that synthetic defects land on the part, not on the background.

Idea: industrial object images are shot on a fairly plain background that fills the image border. The
foreground is what differs from the border colour: colour distance to the median border colour, an Otsu
(or given) threshold with hysteresis, then morphology (closing, hole filling, largest component(s)).
Texture classes (carpet, tiles: no background) are detected as degenerate and get an all-ones mask, which
means "anywhere is on the object". Callers report how often that happens (:func:`warn_foreground_fallback`,
once per class); where the estimate is not good enough, the user passes masks from a folder (:func:`load_foreground_mask`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from fast_lightning.data.io import mask_pixels, mask_to_binary, open_image
from fast_lightning.errors import DataError

log = logging.getLogger(__name__)
_WARNED_CLASSES: set[str] = set()  # warn_foreground_fallback: once per class and process

FOREGROUND_MASK_NAMES = ("{stem}.png", "{stem}_mask.png")  # data.foreground_dir: one mask per normal image
MAX_FRACTION = 0.98  # a foreground covering more than this is not an object on a background
BORDER_NOISY = 0.35  # if this share of the border band is "foreground", the border is not a background


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu threshold: maximises the between-class variance of the histogram."""
    lo, hi = float(values.min()), float(values.max())
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        m0 = s0 / w0
        m1 = (s0[-1] - s0) / w1
        between = w0 * w1 * (m0 - m1) ** 2
    between[~np.isfinite(between)] = -1
    return float(edges[int(np.argmax(between)) + 1])


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius + radius  # a slightly full disk


def _foreground_np(img: np.ndarray, border: int | None, threshold: float | None, min_fraction: float):
    """img (H, W, C) float32 -> (H, W) bool; all True when degenerate."""
    h, w, _ = img.shape
    ones = np.ones((h, w), bool)
    b = border if border is not None else max(2, int(round(0.04 * min(h, w))))
    b = int(min(max(b, 1), max(1, min(h, w) // 4)))
    band = np.zeros((h, w), bool)
    band[:b], band[-b:], band[:, :b], band[:, -b:] = True, True, True, True

    bg = np.median(img[band], axis=0)
    dist = np.sqrt(((img - bg) ** 2).mean(-1))  # RMS over channels: in [0, 1] for C = 1 and C = 3
    if float(dist.max()) - float(dist.min()) < 1e-3 and threshold is None:
        return ones  # flat image: nothing to separate
    # Light smoothing: sensor noise / background grain must not punch holes or add speckles.
    dist = ndimage.gaussian_filter(dist, sigma=max(0.5, min(h, w) / 200.0), mode="nearest")
    if threshold is not None:
        fg = dist > threshold
    else:
        high = _otsu(dist.ravel())
        strong = dist > high
        if float(strong[band].mean()) > BORDER_NOISY:
            return ones  # the border is textured like the rest: no plain background (texture class)
        # Hysteresis: pixels above the background's own noise level join when connected to a strong
        # region. Otsu alone splits off specular highlights on dark objects (rubber on a dark cloth).
        noise = float(np.quantile(dist[band], 0.99))
        low = min(0.5 * high, max(1.5 * noise, 0.2 * high))
        weak_lab, n_weak = ndimage.label(dist > low)
        keep = np.zeros(n_weak + 1, bool)
        keep[np.unique(weak_lab[strong])] = True
        keep[0] = False
        fg = keep[weak_lab]

    # Closing (padded so the image edge does not erode the object), then fill the part's interior holes.
    r = max(1, int(round(min(h, w) / 64)))
    fg = ndimage.binary_closing(np.pad(fg, r), structure=_disk(r))[r:-r, r:-r]
    fg = ndimage.binary_fill_holes(fg)

    # Keep the largest component and any others of comparable size (multi-object classes).
    lab, n = ndimage.label(fg)
    if n > 1:
        sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        big = np.flatnonzero(sizes >= 0.2 * sizes.max()) + 1
        fg = np.isin(lab, big)
    fraction = float(fg.mean())
    if fraction < min_fraction or fraction > MAX_FRACTION:
        return ones
    return fg


def estimate_foreground(
    image: torch.Tensor,
    border: int | None = None,
    threshold: float | None = None,
    min_fraction: float = 0.02,
) -> torch.Tensor:
    """Foreground mask of an image: (C,H,W) in [0,1] -> (1,H,W) float32 in {0,1} (also (B,C,H,W) -> (B,1,H,W)).

    border: width in pixels of the band whose median colour is the background (default 4% of the short
    side). threshold: on the RMS colour distance to that colour, in [0, 1] (default: Otsu). Returns all ones
    when the result is degenerate - covering < min_fraction or > 98% of the image, a flat image, or a border
    that is not a plain background (texture classes) - so callers can always multiply by it.
    """
    if image.dim() == 4:
        return torch.stack([estimate_foreground(x, border, threshold, min_fraction) for x in image])
    if image.dim() != 3:
        raise ValueError(f"estimate_foreground expects (C,H,W) or (B,C,H,W), got shape {tuple(image.shape)}")
    img = image.detach().to("cpu", torch.float32).permute(1, 2, 0).numpy()
    fg = _foreground_np(img, border, threshold, float(min_fraction))
    return torch.from_numpy(fg.astype(np.float32))[None].to(image.device)


def is_fallback(foreground: torch.Tensor) -> bool:
    """True when a foreground is the whole image (the estimate's "no plain background" answer)."""
    return bool((foreground > 0.5).all())


def resize_foreground(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1,h,w) {0,1} -> (1,H,W): nearest when enlarging, max-pooling when shrinking (thin parts survive)."""
    h, w = mask.shape[-2:]
    H, W = int(size[0]), int(size[1])
    m = mask[None].float()
    if h < H or w < W:
        m = F.interpolate(m, size=(max(h, H), max(w, W)), mode="nearest")
    if tuple(m.shape[-2:]) != (H, W):
        m = F.adaptive_max_pool2d(m, (H, W))
    return (m[0] > 0.5).float()


def load_foreground_mask(folder: str | Path, stem: str, size: tuple[int, int]) -> torch.Tensor:
    """The user's foreground mask for the image named ``stem`` (``data.foreground_dir``), as (1,H,W) {0,1}.

    Looks for ``<stem>.png`` then ``<stem>_mask.png`` in ``folder``; white (or any nonzero) = foreground.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data.foreground_dir={str(folder)!r} is not a folder; pass a folder with one mask PNG per "
                        "normal train image, or set data.foreground_dir=null to estimate the foreground")
    for pattern in FOREGROUND_MASK_NAMES:
        path = folder / pattern.format(stem=stem)
        if path.is_file():
            arr = mask_to_binary(mask_pixels(open_image(path), path), path, warn=False)
            return resize_foreground(torch.from_numpy(arr)[None], size)
    names = " or ".join(p.format(stem=stem) for p in FOREGROUND_MASK_NAMES)
    raise DataError(f"no foreground mask for image {stem!r} in data.foreground_dir={str(folder)!r} "
                    f"(looked for {names}); add it, or set data.foreground_dir=null to estimate the foreground")


def warn_foreground_fallback(class_name: str, n_fallback: int, n_images: int) -> bool:
    """Log ONE warning per class when the estimate fell back to "whole image" for some normal images.

    Returns True when it warned. Silent when nothing fell back or the class was already reported.
    """
    if n_fallback <= 0 or n_images <= 0 or class_name in _WARNED_CLASSES:
        return False
    _WARNED_CLASSES.add(class_name)
    share = n_fallback / n_images
    log.warning(
        f"warning: foreground of class {class_name!r}: the image border is not a plain background in "
        f"{n_fallback}/{n_images} normal train images ({100 * share:.0f}%); those use the whole image as "
        "foreground, so synthetic defects may land off the object (expected for texture classes). Pass masks "
        "with data.foreground_dir=<folder> (one <stem>.png or <stem>_mask.png per normal image), or set "
        "data.foreground=off to silence this."
    )
    return True
