"""SegmentationModule: an smp segmenter trained on synthesized anomalies, judged on REAL defects.

Design decisions (see docs/METRICS.md for the metric definitions):

- Input normalisation happens inside the module: images arrive in [0, 1] from the DataModule and are
  standardised with ImageNet mean/std (the statistics smp's pretrained encoders expect; harmless for random
  init). A checkpoint therefore needs no external preprocessing to be reused.
- The model outputs one LOGIT channel; every metric is fed ``sigmoid(logits.float())`` (probabilities in
  [0, 1]) because torchmetrics re-applies a sigmoid per batch to scores outside [0, 1].
- The pixel threshold for IoU / mIoU / Acc is the F1-optimal threshold on the VALIDATION split. It lives in
  the ``threshold`` buffer, so it is saved in every checkpoint and the test pass (and ``make eval-seg``) use
  the threshold chosen together with the weights they load; test images never influence it.
- Evaluation state is kept per image on CPU (probabilities float32, masks uint8, dataset index). Under DDP,
  Lightning gives each rank a DistributedSampler shard that is PADDED with repeated images; at epoch end the
  shards are all-gathered (via the strategy, so NCCL works), de-duplicated by dataset index and sorted, and
  every rank feeds the identical full set into ``SegmentationMetrics`` (no torchmetrics sync needed). The
  metrics and the threshold are therefore exact and identical on all ranks.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf

from fast_lightning.ema import ema_copy, update_ema
from fast_lightning.evaluation import wandb_logging
from fast_lightning.evaluation.catalog import metric_names
from fast_lightning.evaluation.metrics import SegmentationMetrics, per_type_metrics
from fast_lightning.schema import DataConfig
from fast_lightning.segmentation.losses import build_loss, split_weighted_loss
from fast_lightning.segmentation.models import build_segmenter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PANEL_ROWS = ("image", "ground truth", "predicted", "probability")


def heatmap(prob: torch.Tensor) -> torch.Tensor:
    """(1,H,W) probabilities -> (3,H,W) black-red-yellow-white map (easier to read than grey)."""
    p = prob.float().clamp(0, 1)
    return torch.cat([(3 * p).clamp(0, 1), (3 * p - 1).clamp(0, 1), (3 * p - 2).clamp(0, 1)], 0)


def pick_panel_indices(labels: list[str], n: int) -> list[int]:
    """A fixed, bounded, varied set of dataset indices: defect types round-robin, one good image last."""
    if n <= 0 or not labels:
        return []
    by_type: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_type.setdefault(lab, []).append(i)
    good = by_type.pop("good", [])
    want_good = 1 if good and n >= 2 and by_type else (n if not by_type else 0)
    chosen: list[int] = []
    queues = [list(v) for _, v in sorted(by_type.items())]
    while len(chosen) < n - want_good and any(queues):
        for q in queues:
            if q and len(chosen) < n - want_good:
                chosen.append(q.pop(0))
    chosen += good[: n - len(chosen)]
    return chosen


class SegmentationModule(L.LightningModule):
    """Binary anomaly segmenter (smp) with DiceFocal loss and exact real-defect metrics.

    Receives its own config group (``segmentation``) plus the image channels and the working size (H, W) from
    ``data.datasets.working_size``; both go into the checkpoint metadata, with the threshold and normalisation,
    so predict/export need nothing else. The command keeps the whole run config (added to every checkpoint by
    ``training.AtomicCheckpointIO``)."""

    def __init__(self, segmentation: dict, channels: int = DataConfig.channels,
                 working_size: tuple[int, int] | list[int] = (DataConfig.seg_scale, DataConfig.seg_scale),
                 class_name: str | None = None, synthesizer: str | None = None, type_names: list[str] | None = None,
                 image_interpolation: str = DataConfig.image_interpolation):
        super().__init__()
        self.save_hyperparameters()
        self.seg_cfg = s = OmegaConf.create(segmentation)
        channels = int(channels)
        self.channels = channels  # data.channels
        self.working_size = (int(working_size[0]), int(working_size[1]))  # data.datasets.working_size
        self.model = build_segmenter(str(s.arch), str(s.encoder), s.encoder_weights, in_channels=channels,
                                     allow_download=bool(s.get("allow_download", False)))
        self.loss_fn = build_loss(OmegaConf.to_container(s.loss, resolve=True))
        # segmentation.optim.ema_decay > 0: the weights' EMA is the network every evaluation uses (and, being a
        # submodule, every checkpoint holds); 0 = no EMA and the state_dict keys of a run without it
        self.ema_decay = float(s.optim.get("ema_decay", 0.0))
        self.ema = ema_copy(self.model) if self.ema_decay > 0 else None
        if self.ema is not None:
            self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        if channels == 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:  # grayscale: the mean of the RGB statistics for every channel
            mean, std = (sum(IMAGENET_MEAN) / 3,) * channels, (sum(IMAGENET_STD) / 3,) * channels
        self.norm_mean, self.norm_std = [float(v) for v in mean], [float(v) for v in std]
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        # F1-optimal pixel threshold on validation; saved in checkpoints, used by test / eval-seg
        self.register_buffer("threshold", torch.tensor(0.5, dtype=torch.float64))
        self.register_buffer("threshold_chosen", torch.tensor(False))
        self._eval_state: dict[str, list[torch.Tensor]] = {}
        self.val_metrics: dict[str, float] | None = None
        self.test_metrics: dict[str, float] | None = None
        self.test_counts: dict[str, int] | None = None  # images actually evaluated by the last test pass
        self.test_per_type: dict[str, dict[str, float]] | None = None  # pixel AP / IoU per defect type (test)
        self.val_history: list[dict] = []
        self.loaded_meta: dict | None = None
        self.panel_dir: Path | None = None   # PNG panels go here when set (the command sets run_dir/panels)
        self.panel_dataset = None            # labelled val dataset; defaults to trainer.datamodule's
        self._panel_cache: tuple[list[int], torch.Tensor, torch.Tensor, list[str]] | None = None

    # ---- model ---------------------------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    @property
    def inference_model(self) -> torch.nn.Module:
        """The network validation, test, predict and export run: the EMA when there is one, else the weights."""
        return self.ema if self.ema is not None else self.model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B,C,H,W) in [0,1] -> anomaly logits (B,1,H,W); training mode runs the trained weights."""
        net = self.model if self.training else self.inference_model
        return net(self.normalize(images))  # memory format: the weights' (training.Speedups)

    def on_fit_start(self) -> None:
        run = wandb_logging.lightning_run(self)
        if run is not None:
            wandb_logging.define_seg_metrics(run, metric_names())

    def speedup_targets(self) -> dict:
        """Modules ``trainer.compile`` / ``trainer.channels_last`` act on (training.Speedups)."""
        targets = {"segmenter": self.model}
        if self.ema is not None:
            targets["ema.segmenter"] = self.ema
        return targets

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel anomaly probability in [0, 1], float32."""
        return torch.sigmoid(self(images).float())

    def configure_optimizers(self):
        s = self.seg_cfg
        o = s.optim
        opt = torch.optim.AdamW(self.model.parameters(), lr=float(o.lr), weight_decay=float(o.weight_decay))
        total = max(1, int(s.max_steps))
        warmup = max(1, min(50, total // 20))

        def factor(step: int) -> float:  # short linear warmup, then cosine down to 5% of lr
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- training ------------------------------------------------------------------------------------
    def second_weight(self) -> float:
        """Loss weight of the items from b (synth=a+b) at this step: ``synth_loss_weight`` for the first
        ``synth_loss_until`` of the run, then 0, so the last steps fit a's items (the real defects) alone while
        the early ones learn from the synthesized defects too. Checkpoints from before the key read 1.0."""
        s = self.seg_cfg
        if self.global_step >= float(s.get("synth_loss_until", 1.0)) * int(s.max_steps):
            return 0.0
        return float(s.get("synth_loss_weight", 1.0))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images, masks = batch["image"], batch["mask"]
        logits = self(images)
        weight, second = self.second_weight(), batch.get("from_second")
        if weight != 1.0 and second is not None:  # synth=a+b: the items from b weighted (segmentation.synth_loss_weight)
            loss = split_weighted_loss(self.loss_fn, logits, masks, second, weight)
        else:
            loss = self.loss_fn(logits, masks)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite segmentation loss at step {self.global_step}; "
                                     "try a lower segmentation.optim.lr or trainer.precision=32-true")
        n = images.shape[0]
        synthetic = batch.get("synthetic")
        share = synthetic.float().mean() if synthetic is not None else images.new_zeros(())
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=n)
        self.log_dict({"train/synthetic_share": share.float(), "train/anomaly_pixel_share": masks.float().mean(),
                       "train/lr": float(self.trainer.optimizers[0].param_groups[0]["lr"])},
                      on_step=True, batch_size=n)
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        # EMA right after the weights change, before any callback (checkpointing) sees the step
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            update_ema(self.ema, self.model, self.ema_decay, int(self.ema_updates), average_buffers=True)
            self.ema_updates += 1

    # ---- evaluation state (per image, CPU) ------------------------------------------------------------
    def _reset_eval(self) -> None:
        self._eval_state = {"index": [], "probs": [], "masks": []}

    def _accumulate(self, batch: dict) -> None:
        probs = self.predict_proba(batch["image"])
        n = probs.shape[0]
        index = batch.get("index")
        if index is None:  # plain loaders without an index: number the images in arrival order
            start = sum(int(t.numel()) for t in self._eval_state["index"])
            index = torch.arange(start, start + n)
        self._eval_state["index"].append(torch.as_tensor(index).detach().long().cpu().view(-1))
        self._eval_state["probs"].append(probs.detach().cpu())
        self._eval_state["masks"].append((batch["mask"] > 0.5).to(torch.uint8).cpu())

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate a per-rank tensor over all ranks (ranks may hold different counts)."""
        world = int(self.trainer.world_size) if self._trainer is not None else 1
        if world == 1:
            return t
        dev = self.device
        counts = self.all_gather(torch.tensor([t.shape[0]], device=dev)).view(-1).cpu()
        m = int(counts.max())
        pad = torch.zeros((m - t.shape[0], *t.shape[1:]), dtype=t.dtype, device=dev)
        full = self.all_gather(torch.cat([t.to(dev), pad])).cpu()
        return torch.cat([full[r, : int(counts[r])] for r in range(world)])

    def _collect(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All ranks' images, de-duplicated by dataset index (DistributedSampler pads shards), sorted."""
        st = self._eval_state
        hw = self.working_size
        index = torch.cat(st["index"]) if st.get("index") else torch.zeros(0, dtype=torch.long)
        probs = torch.cat(st["probs"]) if st.get("probs") else torch.zeros(0, 1, *hw)
        masks = torch.cat(st["masks"]) if st.get("masks") else torch.zeros(0, 1, *hw, dtype=torch.uint8)
        index, probs, masks = self._gather(index), self._gather(probs.float()), self._gather(masks)
        order = torch.argsort(index, stable=True)
        index, probs, masks = index[order], probs[order], masks[order]
        keep = torch.ones_like(index, dtype=torch.bool)
        keep[1:] = index[1:] != index[:-1]
        return index[keep], probs[keep], masks[keep]

    def _metrics(self, probs: torch.Tensor, masks: torch.Tensor, choose_threshold: bool) -> dict[str, float]:
        metric = SegmentationMetrics(sync_on_compute=False)
        metric.update(probs, masks)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # degenerate sets -> nan, documented
            if choose_threshold:
                thr = metric.best_threshold() if int(masks.sum()) > 0 else float(self.threshold)
            else:
                thr = float(self.threshold)
            out = metric.compute(threshold=thr)
        return {k: float(out[k]) for k in metric_names()}

    def _eval_dataset(self, stage: str):
        loaders = getattr(self.trainer, f"{stage}_dataloaders") if self._trainer is not None else None
        loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
        return getattr(loader, "dataset", None)

    def _image_types(self, index: torch.Tensor, stage: str) -> list[str] | None:
        """Defect type of each evaluated image, from the ``stage`` dataset's records (None if it has none)."""
        records = getattr(self._eval_dataset(stage), "records", None)
        if records is None or (index.numel() and int(index.max()) >= len(records)):
            return None
        return [str(records[int(i)].label) for i in index]

    def _log_metrics(self, prefix: str, metrics: dict[str, float]) -> None:
        # identical values on every rank (computed from the gathered set): no sync_dist needed
        self.log_dict({f"{prefix}/{k}": float(metrics[k]) for k in metric_names()}, on_step=False, on_epoch=True,
                      sync_dist=False, batch_size=1)

    # ---- validation ------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._reset_eval()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._accumulate(batch)

    def on_validation_epoch_end(self) -> None:
        index, probs, masks = self._collect()
        self._reset_eval()
        if probs.shape[0] == 0:
            return
        has_defects = int(masks.sum()) > 0
        metrics = self._metrics(probs, masks, choose_threshold=True)
        if has_defects:
            self.threshold.fill_(float(metrics["iou_threshold"]))
            self.threshold_chosen.fill_(True)
        elif not bool(self.threshold_chosen):
            warnings.warn("the validation split holds no defect pixel: the IoU threshold stays at 0.5",
                          RuntimeWarning, stacklevel=2)
        self.val_metrics = metrics
        # per type too: a short run's validation AP per type is what `make fidelity`'s probe ranks by
        types = self._image_types(index, "val")
        per_type = per_type_metrics(probs, masks, types, float(self.threshold)) if types else None
        self.val_history.append(dict(metrics, step=int(self.global_step), num_images=int(probs.shape[0]),
                                     per_type=per_type))
        self._log_metrics("val", metrics)
        self.log("val/threshold", float(self.threshold), on_step=False, on_epoch=True, batch_size=1)
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self._log_panels(index, probs)

    # ---- test ------------------------------------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        self._reset_eval()
        if not bool(self.threshold_chosen):
            warnings.warn("testing a model whose threshold was never chosen on validation: IoU/mIoU/Acc use 0.5",
                          RuntimeWarning, stacklevel=2)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._accumulate(batch)

    def on_test_epoch_end(self) -> None:
        index, probs, masks = self._collect()
        self._reset_eval()
        if probs.shape[0] == 0:
            raise RuntimeError("the test split is empty: nothing to evaluate")
        self.test_metrics = self._metrics(probs, masks, choose_threshold=False)
        types = self._image_types(index, "test")
        self.test_per_type = per_type_metrics(probs, masks, types, float(self.threshold)) if types else None
        self.test_counts = {"images": int(masks.shape[0]), "defect_images": int((masks.flatten(1) > 0).any(1).sum())}
        self._log_metrics("test", self.test_metrics)
        wandb_logging.log_seg_test(self, index, probs, masks, types, self._eval_dataset("test"))

    # ---- image panels ----------------------------------------------------------------------------------
    def _panel_source(self) -> tuple[list[int], torch.Tensor, torch.Tensor, list[str]] | None:
        """Fixed panel images (loaded once): bounded by segmentation.num_log_images."""
        if self._panel_cache is not None:
            return self._panel_cache
        n = int(self.seg_cfg.num_log_images)
        ds = self.panel_dataset
        if ds is None:
            dm = getattr(self.trainer, "datamodule", None)
            if dm is None or not hasattr(dm, "labelled_dataset"):
                return None
            ds = dm.labelled_dataset("val")
        records = getattr(ds, "records", None)
        labels = [r.label for r in records] if records is not None else ["?"] * len(ds)
        idx = pick_panel_indices(labels, n)
        if not idx:
            return None
        items = [ds[i] for i in idx]
        images = torch.stack([x["image"] for x in items]).float()
        masks = torch.stack([x["mask"] for x in items]).float()
        self._panel_cache = (idx, images, masks, [labels[i] for i in idx])
        return self._panel_cache

    def _log_panels(self, index: torch.Tensor, probs: torch.Tensor) -> None:
        source = self._panel_source()
        if source is None:
            return
        idx, images, gt, labels = source
        pos = {int(v): k for k, v in enumerate(index.tolist())}
        if any(i not in pos for i in idx):
            return
        p = probs[[pos[i] for i in idx]]
        thr = float(self.threshold)
        rgb = images if images.shape[1] == 3 else images[:, :1].expand(-1, 3, -1, -1)
        rows = [rgb, gt.expand(-1, 3, -1, -1), (p >= thr).float().expand(-1, 3, -1, -1),
                torch.stack([heatmap(x) for x in p])]
        if self.panel_dir is not None:
            from fast_lightning.evaluation.plots import save_grid

            save_grid(torch.cat(rows), len(idx), Path(self.panel_dir) / f"step_{self.global_step:07d}.png",
                      row_titles=PANEL_ROWS)
        wandb_logging.log_seg_panels(self, "val/panels", images, gt, p, labels, idx, thr)

    # ---- checkpoint metadata -----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        s = self.seg_cfg
        type_names = self.hparams.get("type_names")
        if type_names is None:
            type_names = getattr(getattr(self._trainer, "datamodule", None), "type_names", None)
        checkpoint["fast_lightning"] = {
            "kind": "segmentation",
            "class_name": self.hparams.class_name,
            "type_names": type_names,
            "synthesizer": self.hparams.synthesizer,
            "arch": str(s.arch), "encoder": str(s.encoder),
            # what a consumer needs to feed the network (predict/export read these, see segmentation/predict.py)
            "working_size": list(self.working_size), "channels": self.channels,
            "image_interpolation": str(self.hparams.image_interpolation),
            "normalization": {"mean": self.norm_mean, "std": self.norm_std, "input_range": [0.0, 1.0]},
            "threshold": float(self.threshold), "threshold_chosen_on": "validation" if bool(self.threshold_chosen) else None,
            "val_metrics": dict(self.val_metrics) if self.val_metrics else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.loaded_meta = dict(checkpoint.get("fast_lightning") or {}, global_step=int(checkpoint.get("global_step", 0)))
