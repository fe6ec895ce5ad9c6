"""Pixel- and image-level anomaly segmentation metrics, computed exactly over a whole evaluation set.

Why a custom Metric: the FAST paper reports mIoU and Acc *of the anomaly class only* (background excluded),
which no library metric computes as-is, and users also expect the industry-standard localisation metrics
(pixel AUROC / AP / best F1, image AUROC). All of them are computed from one accumulated state: every
pixel's probability (float32 by default, exact curves) and its target (uint8), plus per-image max scores.

Conventions (see docs/ARCHITECTURE.md):
- ``probs`` are probabilities in [0, 1] (apply ``sigmoid`` to the segmenter's logits first). torchmetrics
  silently applies a sigmoid to any batch whose scores leave [0, 1], which corrupts curves accumulated over
  mixed batches, so out-of-range inputs are rejected here instead.
- A pixel is predicted anomalous when ``prob >= threshold`` (the same rule torchmetrics uses for its curves,
  so ``pixel_f1_max_threshold`` can be fed back as the IoU threshold).
- Degenerate sets give ``nan`` plus a warning, never a made-up number.

Memory: 5M pixels cost ~25 MB of state (float32 + uint8) and a few seconds to compute on CPU.
State lives on CPU (``compute_on_cpu=True``). Under multi-GPU DDP the list states are all-gathered at
``compute()``; with the NCCL backend pass ``process_group=torch.distributed.new_group(backend="gloo")``
(CPU tensors) or evaluate on a single device.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc, binary_precision_recall_curve
from torchmetrics.utilities.data import dim_zero_cat

from fast_lightning.evaluation import catalog
from fast_lightning.evaluation.aupro import aupro, pro_curve  # noqa: F401  (part of this module's API)

__all__ = ["SegmentationMetrics", "aupro", "best_threshold", "per_type_metrics", "pro_curve", "validate_inputs"]

DEFAULT_THRESHOLD = 0.5


def validate_inputs(probs: torch.Tensor, target: torch.Tensor) -> None:
    """Raise ValueError unless probs (B,1,H,W) in [0,1] and target (B,1,H,W) in {0,1} match."""
    if not isinstance(probs, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise ValueError("probs and target must be torch tensors")
    if probs.shape != target.shape:
        raise ValueError(f"shape mismatch: probs {tuple(probs.shape)} vs target {tuple(target.shape)}")
    if probs.ndim != 4 or probs.shape[1] != 1:
        raise ValueError(f"expected (B, 1, H, W) tensors, got {tuple(probs.shape)}")
    if probs.numel() == 0:
        raise ValueError("empty batch")
    p = probs.detach()
    if p.is_floating_point():
        if torch.isnan(p).any():
            raise ValueError("probs contain NaN")
        lo, hi = float(p.min()), float(p.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"probs must lie in [0, 1] (got min {lo:.4g}, max {hi:.4g}): feed probabilities, not logits "
                "(apply torch.sigmoid to the segmenter output)"
            )
    elif p.dtype != torch.bool:
        raise ValueError(f"probs must be a floating point tensor of probabilities, got {p.dtype}")
    t = target.detach()
    if t.dtype != torch.bool and not bool(((t == 0) | (t == 1)).all()):
        raise ValueError("target must be a binary mask with values in {0, 1} (1 = anomaly)")


def _f1_curve(preds: torch.Tensor, target: torch.Tensor) -> tuple[float, float, float]:
    """(average precision, best F1, its threshold) from one exact precision-recall curve.

    AP uses the same step-wise formula as torchmetrics' BinaryAveragePrecision:
    AP = sum_k (R_k - R_{k-1}) * P_k. Requires at least one positive pixel.
    """
    precision, recall, thresholds = binary_precision_recall_curve(preds, target, thresholds=None, validate_args=False)
    precision, recall = precision.double(), recall.double()
    ap = float(-torch.sum((recall[1:] - recall[:-1]) * precision[:-1]))
    # the last (precision=1, recall=0) point has no threshold
    p, r = precision[:-1], recall[:-1]
    f1 = torch.where(p + r > 0, 2 * p * r / (p + r), torch.zeros_like(p))
    k = int(torch.argmax(f1))
    return ap, float(f1[k]), float(thresholds[k])


def best_threshold(probs: torch.Tensor, target: torch.Tensor) -> float:
    """F1-optimal pixel threshold (``prob >= t`` is anomalous); use it on validation to set the IoU threshold.

    Falls back to 0.5 with a warning when ``target`` has no positive pixel (no F1 is defined then).
    """
    validate_inputs(probs, target)
    preds = probs.detach().flatten().float().cpu()
    tgt = target.detach().flatten().to(torch.uint8).cpu()
    if int(tgt.sum()) == 0:
        warnings.warn("best_threshold: no anomalous pixel in target; falling back to 0.5", RuntimeWarning, stacklevel=2)
        return DEFAULT_THRESHOLD
    return _f1_curve(preds, tgt.long())[2]


class SegmentationMetrics(Metric):
    """Exact anomaly-segmentation metrics over all pixels of all images seen by ``update``.

    ``compute(threshold=None)`` returns floats in [0, 1] (not percent):

    - ``pixel_auroc``: BinaryAUROC over all pixels (exact, no binning).
    - ``pixel_ap``: average precision over all pixels (BinaryAveragePrecision formula).
    - ``pixel_f1_max`` / ``pixel_f1_max_threshold``: best F1 over the exact PR curve and its threshold.
    - ``iou``: IoU of the ANOMALY class at ``threshold`` (default 0.5), TP/(TP+FP+FN) accumulated over every
      pixel of the set (background class excluded). Images without defects only add FP/TN pixels: a clean
      prediction on a good image costs nothing, a false alarm adds to FP.
    - ``miou``: the FAST paper's "mIoU", which is the IoU of the anomaly class over the dataset (background
      excluded), i.e. identical to ``iou``; kept under the paper's name for comparison with its tables.
    - ``acc``: the FAST paper's "Acc" = pixel recall of the anomaly class TP/(TP+FN) at ``threshold``
      (background excluded; NOT overall pixel accuracy, which would be dominated by background).
    - ``image_auroc``: AUROC of per-image scores (max pixel prob) against labels (mask has any positive pixel).
    - ``iou_threshold``: the threshold used for iou/miou/acc.
    - ``aupro``: per-region overlap up to FPR 0.3 (``evaluation.aupro``), on the accumulated maps.
    - every metric of ``evaluation.catalog.METRICS`` that brings its own ``compute`` function.

    Degenerate sets: no positive pixel -> pixel_auroc/ap/f1 and acc are nan (warning); no negative pixel ->
    pixel_auroc is nan; only one image label present -> image_auroc is nan; iou is nan only when there is
    neither a positive target nor a positive prediction (0/0).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, pred_dtype: torch.dtype = torch.float32, **kwargs: Any) -> None:
        """pred_dtype=torch.float16 halves memory but quantises scores (ties change AUROC slightly)."""
        kwargs.setdefault("compute_on_cpu", True)
        kwargs.setdefault("compute_with_cache", False)  # compute() takes a threshold: never return a stale cache
        super().__init__(**kwargs)
        if pred_dtype not in (torch.float32, torch.float16, torch.float64):
            raise ValueError(f"pred_dtype must be float16/32/64, got {pred_dtype}")
        self.pred_dtype = pred_dtype
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("image_scores", default=[], dist_reduce_fx="cat")
        self.add_state("image_labels", default=[], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        validate_inputs(probs, target)
        p = probs.detach()
        t = target.detach()
        self.preds.append(p.to(device="cpu", dtype=self.pred_dtype))  # maps (B,1,H,W): AUPRO needs the regions
        self.target.append(t.to(device="cpu", dtype=torch.uint8))
        self.image_scores.append(p.flatten(1).amax(dim=1).to(device="cpu", dtype=torch.float32))
        self.image_labels.append((t.flatten(1) > 0).any(dim=1).to(device="cpu", dtype=torch.uint8))

    def _maps(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(probs (N,1,H,W) float32, masks (N,1,H,W) uint8) of every update, None when sizes differ."""
        if isinstance(self.preds, list) and len(self.preds) == 0:
            raise RuntimeError("SegmentationMetrics.compute() called before any update()")
        if isinstance(self.preds, list) and len({tuple(p.shape[1:]) for p in self.preds}) > 1:
            return None
        return dim_zero_cat(self.preds).float().cpu(), dim_zero_cat(self.target).to(torch.uint8).cpu()

    def _gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every pixel's probability (float32) and target (uint8), flat."""
        if isinstance(self.preds, list) and len(self.preds) == 0:
            raise RuntimeError("SegmentationMetrics.compute() called before any update()")
        if isinstance(self.preds, list):
            preds = torch.cat([p.flatten() for p in self.preds]).float().cpu()
            target = torch.cat([t.flatten() for t in self.target]).to(torch.uint8).cpu()
        else:  # synced across processes: already one tensor
            preds, target = self.preds.flatten().float().cpu(), self.target.flatten().to(torch.uint8).cpu()
        return preds, target

    def best_threshold(self) -> float:
        """F1-optimal threshold over the accumulated pixels (0.5 with a warning if there is no positive).

        Gathers the states of all DDP processes like ``compute`` does (no-op on a single process).
        """
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self.sync_on_compute, should_unsync=True):
            preds, target = self._gathered()
        if int(target.sum()) == 0:
            warnings.warn("best_threshold: no anomalous pixel seen; falling back to 0.5", RuntimeWarning, stacklevel=2)
            return DEFAULT_THRESHOLD
        return _f1_curve(preds, target.long())[2]

    def compute(self, threshold: float | None = None) -> dict[str, float]:  # type: ignore[override]
        thr = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        if not 0.0 <= thr <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {thr}")
        preds, target = self._gathered()
        nan = float("nan")
        n_pos = int(target.sum())
        n_neg = int(target.numel()) - n_pos
        tgt_long = target.long()

        out: dict[str, float] = {}
        if n_pos == 0:
            warnings.warn(
                "SegmentationMetrics: no anomalous pixel in the evaluation set; pixel_auroc, pixel_ap, "
                "pixel_f1_max and acc are nan",
                RuntimeWarning,
                stacklevel=2,
            )
            out.update(pixel_auroc=nan, pixel_ap=nan, pixel_f1_max=nan, pixel_f1_max_threshold=nan)
        else:
            if n_neg == 0:
                warnings.warn("SegmentationMetrics: no normal pixel in the evaluation set; pixel_auroc is nan",
                              RuntimeWarning, stacklevel=2)
                out["pixel_auroc"] = nan
            else:
                out["pixel_auroc"] = float(binary_auroc(preds, tgt_long, thresholds=None, validate_args=False))
            ap, f1, f1_thr = _f1_curve(preds, tgt_long)
            out.update(pixel_ap=ap, pixel_f1_max=f1, pixel_f1_max_threshold=f1_thr)

        pred_pos = preds >= thr
        pos = target.bool()
        tp = int((pred_pos & pos).sum())
        fp = int((pred_pos & ~pos).sum())
        fn = n_pos - tp
        iou = tp / (tp + fp + fn) if (tp + fp + fn) > 0 else nan
        out["iou"] = iou
        out["miou"] = iou
        out["acc"] = tp / n_pos if n_pos > 0 else nan
        out["iou_threshold"] = thr

        scores = dim_zero_cat(self.image_scores).float().cpu()
        labels = dim_zero_cat(self.image_labels).long().cpu()
        n_img_pos = int(labels.sum())
        if n_img_pos == 0 or n_img_pos == labels.numel():
            warnings.warn(
                "SegmentationMetrics: image_auroc needs both defective and defect-free images; it is nan",
                RuntimeWarning,
                stacklevel=2,
            )
            out["image_auroc"] = nan
        else:
            out["image_auroc"] = float(binary_auroc(scores, labels, thresholds=None, validate_args=False))
        out.update(self._map_metrics(thr))
        return {k: float(v) for k, v in out.items()}

    def _map_metrics(self, thr: float) -> dict[str, float]:
        """AUPRO and the catalog's metrics with their own ``compute``: they need the (N,1,H,W) maps."""
        maps = self._maps()
        extra = [m for m in catalog.METRICS if m.compute is not None]
        if maps is None:
            warnings.warn("SegmentationMetrics: images of different sizes; aupro and map metrics are nan",
                          RuntimeWarning, stacklevel=3)
            return {"aupro": float("nan"), **{m.name: float("nan") for m in extra}}
        probs, masks = maps
        return {"aupro": aupro(probs, masks), **{m.name: float(m.compute(probs, masks, thr)) for m in extra}}


def per_type_metrics(probs: torch.Tensor, masks: torch.Tensor, types: Sequence[str], threshold: float,
                     good: str = "good") -> dict[str, dict[str, float]]:
    """Pixel AP and IoU (at ``threshold``), and every per-type catalog metric with its own ``compute``, for each
    defect type: that type's images plus ALL defect-free images.

    ``types[i]`` is image i's defect type (``good`` for defect-free images). The defect-free images are shared
    by every type so each type is judged against the same false alarms. Returns
    ``{type: {pixel_ap, iou, images, defect_images}}`` in sorted type order; AP is nan (no warning) when the
    type's masks all vanished at the working resolution.
    """
    extra = [m for m in catalog.METRICS if m.per_type and m.compute is not None]
    validate_inputs(probs, masks)
    if len(types) != probs.shape[0]:
        raise ValueError(f"{len(types)} type labels for {probs.shape[0]} images")
    labels = np.asarray([str(t) for t in types])
    good_idx = np.flatnonzero(labels == good)
    out: dict[str, dict[str, float]] = {}
    for name in sorted(set(labels.tolist()) - {good}):
        idx = torch.from_numpy(np.concatenate([np.flatnonzero(labels == name), good_idx]))
        p = probs[idx].detach().flatten().float().cpu()
        t = (masks[idx].detach().flatten() > 0).cpu()
        n_pos = int(t.sum())
        ap = _f1_curve(p, t.long())[0] if n_pos > 0 else float("nan")
        pred = p >= float(threshold)
        tp = int((pred & t).sum())
        fp = int((pred & ~t).sum())
        denom = tp + fp + (n_pos - tp)
        out[name] = {
            "pixel_ap": float(ap),
            "iou": tp / denom if denom > 0 else float("nan"),
            "images": int(idx.numel()),
            "defect_images": int((masks[idx].flatten(1) > 0).any(1).sum()),
        }
        for m in extra:
            out[name][m.name] = float(m.compute(probs[idx].float(), masks[idx], float(threshold)))
    return out


def per_image_metrics(probs: torch.Tensor, masks: torch.Tensor, threshold: float) -> list[dict[str, float]]:
    """Pixel AP and IoU (at ``threshold``) of each image alone, plus its highest probability (to rank the worst
    images in the W&B test table). AP is nan for a defect-free image; its IoU is 1 when nothing is predicted
    there and 0 otherwise (any false alarm is a total miss of an empty target)."""
    validate_inputs(probs, masks)
    out = []
    for p, m in zip(probs.detach().float().cpu(), masks.detach().cpu()):
        p, t = p.flatten(), m.flatten() > 0
        pred = p >= float(threshold)
        union = int((pred | t).sum())
        out.append({"pixel_ap": _f1_curve(p, t.long())[0] if bool(t.any()) else float("nan"),
                    "iou": int((pred & t).sum()) / union if union else 1.0,
                    "max_prob": float(p.max()) if p.numel() else float("nan")})
    return out
