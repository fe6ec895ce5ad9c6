"""Callbacks of a segmentation training run: a last validation at max_steps and the sample sheet of the first
training batch (the synthesis timer is ``synthesis.base_synthesizer.TimedSynthesizer``)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["FinalValidation", "SampleSheet"]


class FinalValidation(Callback):
    """Validate (and so checkpoint) at the last step even when max_steps is not a multiple of val_every."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True


class SampleSheet(Callback):
    """samples.png: the first training batch exactly as the segmenter saw it (image row, mask row)."""

    def __init__(self, path: Path, max_items: int = 16):
        self.path, self.max_items, self.done = Path(path), max_items, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.done:
            return
        self.done = True
        if not trainer.is_global_zero:
            return
        from fast_lightning.evaluation.plots import save_grid

        n = min(self.max_items, batch["image"].shape[0])
        img = batch["image"][:n].detach().float().cpu().clamp(0, 1)
        if img.shape[1] != 3:
            img = img[:, :1].expand(-1, 3, -1, -1)
        mask = batch["mask"][:n].detach().float().cpu().expand(-1, 3, -1, -1)
        save_grid(torch.cat([img, mask]), n, self.path, row_titles=("image", "mask"))
