"""Segmentation: smp model factory and losses (the segmenter LightningModule lives beside them)."""

from fast_lightning.segmentation.losses import DiceFocalLoss, build_loss
from fast_lightning.segmentation.models import available_archs, build_segmenter, check_resolution, required_divisor

__all__ = ["DiceFocalLoss", "build_loss", "available_archs", "build_segmenter", "check_resolution", "required_divisor"]
