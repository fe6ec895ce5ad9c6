"""Object foreground estimation, so that synthetic defects land on the part, not on the background.

Idea: industrial object images are shot on a fairly plain background that fills the image border. The
foreground is what differs from the border colour: colour distance to the median border colour, an Otsu
(or given) threshold with hysteresis, then morphology (closing, hole filling, largest component(s)).
Texture classes (carpet, tiles: no background) are detected as degenerate and get an all-ones mask, which
means "anywhere is on the object".
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

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
