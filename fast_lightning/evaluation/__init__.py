"""Evaluation: exact pixel/image metrics for anomaly segmentation (reports and plots live beside them)."""

from fast_lightning.evaluation.metrics import (
    SegmentationMetrics,
    aupro,
    best_threshold,
    per_type_metrics,
    validate_inputs,
)

__all__ = ["SegmentationMetrics", "aupro", "best_threshold", "per_type_metrics", "validate_inputs"]
