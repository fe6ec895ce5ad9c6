"""AUPRO: the per-region overlap metric (mean overlap of each connected defect region, integrated over the
false-positive rate up to ``max_fpr`` and normalised), computed from score maps and masks with numpy/scipy.
Split from ``metrics`` (pixel/image metrics accumulated by the torchmetrics Metric), which re-exports it."""

from __future__ import annotations

import warnings

import numpy as np
import torch

__all__ = ["AUPRO_MAX_FPR", "AUPRO_LEVELS", "aupro", "pro_curve", "integrate_pro", "label_regions"]

AUPRO_MAX_FPR = 0.3
AUPRO_LEVELS = 1000


def _as_numpy_maps(probs, masks) -> tuple[np.ndarray, np.ndarray]:
    """(N,1,H,W) / (N,H,W) / (H,W) tensors or arrays -> float32 scores and bool masks of shape (N,H,W)."""
    p = probs.detach().float().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs, np.float32)
    m = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if p.shape != m.shape:
        raise ValueError(f"shape mismatch: probs {p.shape} vs masks {m.shape}")
    if p.ndim == 4:
        if p.shape[1] != 1:
            raise ValueError(f"expected (N, 1, H, W) maps, got {p.shape}")
        p, m = p[:, 0], m[:, 0]
    elif p.ndim == 2:
        p, m = p[None], m[None]
    elif p.ndim != 3:
        raise ValueError(f"expected (N, 1, H, W), (N, H, W) or (H, W) maps, got {p.shape}")
    if np.isnan(p).any():
        raise ValueError("probs contain NaN")
    return np.ascontiguousarray(p, dtype=np.float32), m > 0.5


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components (8-connectivity) of every image's mask, numbered 1..R across the whole set.

    Returns (labels (N,H,W) int32 with 0 = defect-free pixel, areas (R,) in pixels).
    """
    from scipy import ndimage

    structure = np.ones((3, 3), dtype=bool)
    labels = np.zeros(masks.shape, dtype=np.int32)
    offset = 0
    for i in range(masks.shape[0]):
        lab, n = ndimage.label(masks[i], structure=structure)
        if n:
            labels[i] = np.where(lab > 0, lab + offset, 0)
            offset += n
    areas = np.bincount(labels.ravel(), minlength=offset + 1)[1:]
    return labels, areas


def pro_curve(probs, masks, max_fpr: float = AUPRO_MAX_FPR, levels: int = AUPRO_LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) points of the per-region-overlap curve, sorted by ascending FPR, starting at (0, 0).

    Thresholds: ``levels`` quantiles of the defect-free scores that put the FPR on a uniform grid over
    [0, max_fpr] (plus a few coarser ones up to FPR 1), each also taken just above its value so that tied
    scores give the same corners as the exact curve. A pixel counts when ``prob >= t``. One pass assigns
    every pixel to its threshold bin and two weighted histograms give FPR and PRO at all thresholds:
    O(pixels * log(thresholds)) time, O(pixels) memory.
    """
    scores, gt = _as_numpy_maps(probs, masks)
    labels, areas = label_regions(gt)
    n_regions = int(areas.size)
    n_neg = int(gt.size - areas.sum())
    if n_regions == 0 or n_neg == 0:
        raise ValueError("the PRO curve needs at least one defect region and one defect-free pixel")
    q = np.concatenate([1.0 - np.linspace(0.0, max_fpr, levels + 1), np.linspace(1.0 - max_fpr, 0.0, 15)])
    neg_scores = scores[labels == 0]
    # the grid only places thresholds (FPR and PRO are then counted exactly at each): a strided sample of at
    # most 2M defect-free scores places them well and keeps the quantile cheap; the exact max keeps FPR 0
    sample = neg_scores[:: max(1, -(-neg_scores.size // 2**21))]
    base = np.quantile(sample, np.clip(q, 0.0, 1.0), method="inverted_cdf").astype(np.float32)
    base = np.unique(np.concatenate([base, [neg_scores.max(), scores.min()]]))
    thresholds = np.unique(np.concatenate([base, np.nextafter(base, np.float32(np.inf))]))  # ascending
    region_weight = np.concatenate([[0.0], 1.0 / (n_regions * areas.astype(np.float64))])
    # bin j holds pixels with thresholds[j-1] <= score < thresholds[j]; bin 0 = below every threshold.
    # Chunks of images bound the temporary memory.
    m = thresholds.size + 1
    fp, pro_w = np.zeros(m), np.zeros(m)
    chunk = max(1, 2**22 // max(1, scores[0].size))
    for start in range(0, scores.shape[0], chunk):
        bins = np.searchsorted(thresholds, scores[start:start + chunk].ravel(), side="right")
        lab = labels[start:start + chunk].ravel()
        neg = lab == 0
        fp += np.bincount(bins[neg], minlength=m)
        pro_w += np.bincount(bins[~neg], weights=region_weight[lab[~neg]], minlength=m)
    fpr = np.cumsum(fp[::-1])[::-1][1:] / n_neg
    pro = np.cumsum(pro_w[::-1])[::-1][1:]
    fpr = np.concatenate([[0.0], fpr[::-1]])  # threshold descending = FPR ascending; (0, 0) above all scores
    pro = np.concatenate([[0.0], np.minimum(pro[::-1], 1.0)])
    return fpr, pro


def integrate_pro(fpr: np.ndarray, pro: np.ndarray, max_fpr: float = AUPRO_MAX_FPR) -> float:
    """Trapezoid area under (fpr, pro) for FPR in [0, max_fpr] (linear interpolation at max_fpr) / max_fpr."""
    keep = int(np.searchsorted(fpr, max_fpr, side="right"))  # points with fpr <= max_fpr
    x, y = fpr[:keep], pro[:keep]
    if x[-1] < max_fpr and keep < fpr.size:
        x0, x1, y0, y1 = fpr[keep - 1], fpr[keep], pro[keep - 1], pro[keep]
        y_end = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        x, y = np.append(x, max_fpr), np.append(y, y_end)
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return area / max_fpr


def aupro(probs, masks, max_fpr: float = AUPRO_MAX_FPR, levels: int = AUPRO_LEVELS) -> float:
    """Normalised area under the per-region-overlap curve up to ``max_fpr`` (MVTec AD): 1 = perfect.

    PRO(t) = mean over all ground-truth regions (8-connected components of every image's mask) of the share of
    the region's pixels with ``prob >= t``; FPR(t) = share of defect-free pixels (outside every region, of
    every image) with ``prob >= t``. Uninformative scores (constant or random) give about
    ``max_fpr / 2`` (0.15 at 0.3). nan with a warning when there is no region or no defect-free pixel.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must lie in (0, 1], got {max_fpr}")
    scores, gt = _as_numpy_maps(probs, masks)
    if not gt.any() or gt.all():
        warnings.warn("aupro needs at least one defect region and one defect-free pixel; it is nan",
                      RuntimeWarning, stacklevel=2)
        return float("nan")
    fpr, pro = pro_curve(scores, gt, max_fpr, levels)
    return integrate_pro(fpr, pro, max_fpr)


# ---- per defect type -----------------------------------------------------------------------------------------
