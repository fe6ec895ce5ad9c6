"""THE list of segmentation metrics: name, direction, label, whether it is reported per defect type.

Every consumer reads this list at call time (the segmenter's logged/stored metrics, the console tables, the
compare / benchmark / ablate / demo reports, CSVs and plots), so adding a metric is one ``Metric`` entry
plus its computation: either inside ``SegmentationMetrics.compute`` (the built-in ones) or a ``compute``
function given here, ``compute(probs (N,1,H,W) [0,1], masks (N,1,H,W) {0,1}, threshold) -> float``, which
``SegmentationMetrics`` and ``per_type_metrics`` call. Definitions: docs/METRICS.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Metric", "METRICS", "metric_names", "report_names", "headline_names", "per_type_names", "spec", "label",
           "higher_is_better"]


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # column header in tables and plots
    higher_is_better: bool | None = True  # None: not a score (a threshold): never "best", never a report column
    report: bool = True  # a column of the comparison reports (compare, benchmark, ablate, demo)
    per_type: bool = False  # also reported per defect type (that type's images + all defect-free ones)
    per_type_label: str = ""  # heading of its per-type table (default: label)
    headline: bool = False  # in the short lists (benchmark tables, demo console, ablation plot)
    compute: Callable[[torch.Tensor, torch.Tensor, float], float] | None = None  # None: SegmentationMetrics


METRICS: list[Metric] = [
    Metric("pixel_auroc", "pixel AUROC", headline=True),
    Metric("pixel_ap", "pixel AP", per_type=True, headline=True),
    Metric("aupro", "AUPRO@0.3", headline=True),
    Metric("pixel_f1_max", "best F1"),
    Metric("pixel_f1_max_threshold", "best-F1 threshold", higher_is_better=None, report=False),
    Metric("iou", "IoU@val-thr", per_type=True, per_type_label="IoU at the validation threshold", headline=True),
    Metric("miou", "mIoU (anomaly)", report=False),
    Metric("acc", "Acc (anomaly)"),
    Metric("iou_threshold", "IoU threshold", higher_is_better=None, report=False),
    Metric("image_auroc", "image AUROC", headline=True),
]


def metric_names() -> tuple[str, ...]:
    """Every metric a segmenter run computes, logs (``val/<name>``, ``test/<name>``) and stores."""
    return tuple(m.name for m in METRICS)


def report_names() -> tuple[str, ...]:
    """The columns of the comparison reports."""
    return tuple(m.name for m in METRICS if m.report and m.higher_is_better is not None)


def headline_names() -> tuple[str, ...]:
    """The short list where space is tight (benchmark tables, the demo's console table, the ablation plot)."""
    return tuple(m.name for m in METRICS if m.headline and m.report)


def per_type_names() -> tuple[str, ...]:
    return tuple(m.name for m in METRICS if m.per_type)


def spec(name: str) -> Metric | None:
    return next((m for m in METRICS if m.name == name), None)


def label(name: str) -> str:
    m = spec(name)
    return m.label if m else name


def per_type_label(name: str) -> str:
    m = spec(name)
    return (m.per_type_label or m.label) if m else name


def higher_is_better(name: str) -> bool | None:
    m = spec(name)
    return m.higher_is_better if m else True
