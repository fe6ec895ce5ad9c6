"""Evaluation: exact pixel/image metrics for anomaly segmentation (reports and plots live beside them)."""

from fast_lightning.evaluation.metrics import SegmentationMetrics, best_threshold, validate_inputs

__all__ = ["SegmentationMetrics", "best_threshold", "validate_inputs"]
