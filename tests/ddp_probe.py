"""Helper for tests/test_ddp.py (not a test module): which global sample indices each DDP rank trains on.

Runs the real DataModule (stage=diffusion) and the real build_trainer with a one-parameter module, and
writes <out>/rank<k>.json = {"world", "sampler", "batches": [{"step", "index": [...]}, ...]}.
Usage: python tests/ddp_probe.py <out dir> key=value ...  (trainer.devices=2 trainer.strategy=ddp ...)
"""

import json
import sys
from pathlib import Path

import fast_lightning  # noqa: F401  (torchvision shim first)
import lightning as L
import torch

from fast_lightning.cli import end_process_group
from fast_lightning.config import load_config
from fast_lightning.data.datamodule import AnomalyDataModule
from fast_lightning.seeding import seed_everything
from fast_lightning.training import build_trainer


class Probe(L.LightningModule):
    def __init__(self, out: Path):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.out, self.seen = out, []

    def training_step(self, batch, batch_idx):
        self.seen.append({"step": int(self.global_step), "index": [int(i) for i in batch["index"]]})
        return (self.w * batch["image"].mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_end(self):
        (self.out / f"rank{self.global_rank}.json").write_text(json.dumps({
            "world": self.trainer.world_size,
            "sampler": type(self.trainer.train_dataloader.sampler).__name__,
            "batches": self.seen,
        }))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(sys.argv[2:])
    seed_everything(int(cfg.seed))
    dm = AnomalyDataModule(cfg, stage="diffusion")
    trainer = build_trainer(cfg, out, "probe", int(cfg.diffusion.max_steps), callbacks=[], enable_checkpointing=False)
    try:
        trainer.fit(Probe(out), datamodule=dm)
    finally:
        end_process_group()  # as the CLI does: an open gloo group can abort the interpreter's exit
