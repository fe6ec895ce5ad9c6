"""The one DataModule both LightningModules share.

- ``stage="diffusion"``: generator-train windows (defects of the first third + normal images).
- ``stage="segmentation"``: normal train images at the working size (``working_size``:
  ``data.seg_scale`` on the longer side with the class's aspect ratio), turned into
  (image, mask) pairs on the training device by an injected synthesizer (this module imports no model code),
  THEN cropped to ``segmentation.crop`` (a ``segmentation.crop_defect_share`` of the synthesized items
  centred on their defect), plus the REAL-test split for validation and test (disjoint, both unseen by any
  generator) as whole working-size images. Batches carry ``record`` (index into
  ``split.normal_train``) and ``hflip``. The synthesizer follows ``synthesis.base_synthesizer.SegSynthesizer`` (a
  duck-typed protocol here, since data/ imports no synthesis code): with ``native_input = True`` it receives
  them as ``synth(images, foreground, generator, records=..., hflip=...)`` and works on the full-resolution
  image; otherwise ``synth(images, foreground, generator)`` on the working-size batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from fast_lightning.data.datasets import (
    SEG_DIVISOR,
    GeneratorTrainDataset,
    LabelledDataset,
    NormalImageDataset,
    StepSampler,
    working_size,
)
from fast_lightning.data.foreground import warn_foreground_fallback
from fast_lightning.data.records import ClassIndex, read_class
from fast_lightning.data.split import Split, make_split
from fast_lightning.hardware import cuda_selected, dataloader_workers
from fast_lightning.errors import ConfigError
from fast_lightning.seeding import generator_for

Synthesizer = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def foreground_dir(cfg: DictConfig) -> str | None:
    """``data.foreground_dir`` as a path string, None when unset (null or empty)."""
    value = cfg.data.get("foreground_dir")
    return str(value) if value else None


def report_foreground(dataset: NormalImageDataset, class_name: str) -> tuple[int, int]:
    """Estimate every normal image's foreground (cached in ``dataset``) and warn once per class about the
    share that fell back to the whole image. Returns (fallbacks, images)."""
    n_fallback, n = dataset.survey_foreground()
    warn_foreground_fallback(class_name, n_fallback, n)
    return n_fallback, n


def crop_size(cfg: DictConfig, hw: tuple[int, int]) -> tuple[int, int] | None:
    """(h, w) of the training crop: ``segmentation.crop`` clipped to the working size; None = whole image."""
    side = cfg.segmentation.get("crop")
    if not side:
        return None
    side = int(side)
    if side < 1:
        raise ConfigError(f"segmentation.crop={side} must be a positive side in pixels (or null for the whole image)")
    h, w = min(side, hw[0]), min(side, hw[1])
    return None if (h, w) == tuple(hw) else (h, w)


def crop_batch(batch: dict, size: tuple[int, int], defect_share: float, generator: torch.Generator) -> dict:
    """Crop every item of a (synthesized) training batch to ``size``: items whose mask is non-empty are
    centred on a random defect pixel with probability ``defect_share`` (else, and for defect-free items, the
    crop is uniform over the image). Keys cropped: image, mask, foreground (when present)."""
    images = batch["image"]
    b, _, H, W = images.shape
    ch, cw = size
    masks = batch["mask"]
    tops, lefts = [], []
    for i in range(b):
        pixels = None
        if float(torch.rand((), generator=generator)) < defect_share:
            pixels = torch.nonzero(masks[i, 0] > 0.5).cpu()
        if pixels is not None and pixels.shape[0] > 0:
            y, x = pixels[int(torch.randint(pixels.shape[0], (), generator=generator))].tolist()
            top = min(max(y - ch // 2, 0), H - ch)
            left = min(max(x - cw // 2, 0), W - cw)
        else:
            top = int(torch.randint(H - ch + 1, (), generator=generator))
            left = int(torch.randint(W - cw + 1, (), generator=generator))
        tops.append(top)
        lefts.append(left)
    out = dict(batch)
    for key in ("image", "mask", "foreground"):
        if key in batch:
            t = batch[key]
            out[key] = torch.stack([t[i, :, y:y + ch, x:x + cw] for i, (y, x) in enumerate(zip(tops, lefts))])
    return out


def load_split(cfg: DictConfig) -> tuple[ClassIndex, Split]:
    """Index, file check (once per class and file state, cached under run_root/.cache) and split."""
    from fast_lightning.data.check import validate_class_files

    index = read_class(cfg.data_root, cfg.class_name)
    validate_class_files(index, Path(cfg.run_root) / ".cache" / "data-check")
    split = make_split(index, cfg.data.generator_fraction, cfg.data.val_fraction)
    return index, split


class AnomalyDataModule(L.LightningDataModule):
    def __init__(self, cfg: DictConfig, stage: str = "segmentation", synthesizer: Synthesizer | None = None,
                 run_dir: str | Path | None = None):
        super().__init__()
        if stage not in ("diffusion", "segmentation"):
            raise ValueError(f"stage must be 'diffusion' or 'segmentation', got {stage!r}")
        self.cfg, self.stage, self.synthesizer = cfg, stage, synthesizer
        self.run_dir = Path(run_dir) if run_dir else None
        self.index: ClassIndex | None = None
        self.split: Split | None = None
        self._foreground_reported = False
        self._working_size: tuple[int, int] | None = None

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        self.index, self.split = load_split(self.cfg)
        if self.run_dir is not None and self._is_rank_zero():
            self.split.save(self.run_dir)

    def _is_rank_zero(self) -> bool:
        trainer = getattr(self, "trainer", None)
        if trainer is None:  # before fit: a DDP child knows its rank from the launcher's environment
            from lightning.fabric.utilities.rank_zero import rank_zero_only

            return getattr(rank_zero_only, "rank", 0) == 0
        return trainer.is_global_zero

    @property
    def working_size(self) -> tuple[int, int]:
        """(H, W) of the segmenter's working image (training before cropping, validation, test, defect scale)."""
        if self._working_size is None:
            self.setup()
            data = self.cfg.data
            self._working_size = working_size(self.split.normal_train, int(data.seg_scale), SEG_DIVISOR)
        return self._working_size

    @property
    def type_names(self) -> list[str]:
        self.setup()
        return list(self.split.types)

    @property
    def type_ids(self) -> dict[str, int]:
        return {name: i + 1 for i, name in enumerate(self.type_names)}

    def _world_and_step(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return max(1, trainer.world_size), int(trainer.global_step)

    def _loader(self, dataset, batch_size: int, sampler=None, shuffle=False) -> DataLoader:
        workers = dataloader_workers(int(self.cfg.data.num_workers), on_cpu=not cuda_selected(self.cfg.trainer.accelerator))
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle, num_workers=workers,
                          persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(), drop_last=False)

    # ---- datasets ----------------------------------------------------------------------------------
    def diffusion_dataset(self, world: int = 1) -> GeneratorTrainDataset:
        """``world``: processes sharing the step-indexed stream (the normal pretraining phase counts items)."""
        self.setup()
        d = self.cfg.diffusion
        pretrain = int(d.get("normal_pretrain_steps", 0)) * int(d.optim.batch_size) * max(1, int(world))
        return GeneratorTrainDataset(
            self.split.generator_train, self.split.normal_train, self.type_ids, resolution=int(d.resolution),
            channels=int(self.cfg.data.channels), window=str(d.window), crop_scale=float(d.crop.scale),
            normal_weight=float(d.normal_weight), normal_crops=bool(d.crop.normal_crops),
            augment=dict(d.augment), seed=int(self.cfg.seed), defect_share=d.crop.get("defect_share"),
            normal_only_items=pretrain,
        )

    def normal_dataset(self) -> NormalImageDataset:
        self.setup()
        data = self.cfg.data
        ds = NormalImageDataset(self.split.normal_train, resolution=self.working_size,
                                channels=int(data.channels), foreground=str(data.foreground),
                                foreground_dir=foreground_dir(self.cfg),
                                interpolation=str(data.image_interpolation), seed=int(self.cfg.seed),
                                length=10**9)
        if not self._foreground_reported and self._is_rank_zero():
            self._foreground_reported = True
            report_foreground(ds, str(self.cfg.class_name))
        return ds

    def labelled_dataset(self, which: str) -> LabelledDataset:
        """which: val | test | generator_train (the real_third bank and the synthesis mask bank)."""
        self.setup()
        data = self.cfg.data
        return LabelledDataset(getattr(self.split, which), resolution=self.working_size,
                               channels=int(data.channels), interpolation=str(data.image_interpolation))

    # ---- loaders -----------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        world = max(1, trainer.world_size) if trainer is not None else 1
        rank = int(trainer.global_rank) if trainer is not None else 0
        if self.stage == "diffusion":
            batch, max_steps, dataset = int(self.cfg.diffusion.optim.batch_size), int(self.cfg.diffusion.max_steps), self.diffusion_dataset(world)
        else:
            batch, max_steps, dataset = int(self.cfg.segmentation.optim.batch_size), int(self.cfg.segmentation.max_steps), self.normal_dataset()
        # one global stream of sample indices; a resumed run starts where the interrupted one stopped
        sampler = StepSampler(lambda: self._world_and_step()[1], batch, max_steps + 1, num_replicas=world, rank=rank)
        return self._loader(dataset, batch, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.labelled_dataset("val"), int(self.cfg.data.eval_batch_size))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.labelled_dataset("test"), int(self.cfg.data.eval_batch_size))

    # ---- synthesis on the training device ------------------------------------------------------------
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        trainer = getattr(self, "trainer", None)
        if self.stage != "segmentation" or trainer is None or not trainer.training:
            return batch
        step, rank = int(trainer.global_step), int(trainer.global_rank)
        if self.synthesizer is not None:
            batch = self.synthesize_batch(batch, step=step, rank=rank)
        return self.crop_training_batch(batch, step=step, rank=rank)

    def crop_training_batch(self, batch: dict, step: int = 0, rank: int = 0) -> dict:
        """``segmentation.crop`` after synthesis (the synthesizer saw the whole working image)."""
        size = crop_size(self.cfg, tuple(batch["image"].shape[-2:]))
        if size is None:
            return batch
        g = generator_for("seg_crop", int(self.cfg.seed), step, rank)
        return crop_batch(batch, size, float(self.cfg.segmentation.crop_defect_share), g)

    def synthesize_batch(self, batch: dict, step: int = 0, rank: int = 0) -> dict:
        """Replace the first ``synth_ratio`` share of a normal batch by synthesized anomalies (a mix ``a+b``:
        plus ``second_ratio``, the synthesizer's ``batch_items``)."""
        images, foreground = batch["image"], batch["foreground"]
        n_syn = self.synthesizer.batch_items(images.shape[0], float(self.cfg.segmentation.synth_ratio))
        if n_syn == 0:
            return batch
        g = generator_for("seg_synthesis", int(self.cfg.seed), step, rank)
        if self.synthesizer.native_input and "record" in batch:
            # the synthesizer reads these normal-train records at full resolution (see FastSegSynthesizer)
            syn_img, syn_mask = self.synthesizer(images[:n_syn], foreground[:n_syn], g,
                                                 records=batch["record"][:n_syn].cpu(),
                                                 hflip=batch["hflip"][:n_syn].cpu())
        else:
            syn_img, syn_mask = self.synthesizer(images[:n_syn], foreground[:n_syn], g)
        batch = dict(batch)
        batch["image"] = torch.cat([syn_img.to(images.dtype), images[n_syn:]], 0)
        batch["mask"] = torch.cat([syn_mask.to(images.dtype), batch["mask"][n_syn:]], 0)
        batch["synthetic"] = torch.arange(images.shape[0], device=images.device) < n_syn
        second = getattr(self.synthesizer, "last_from_second", None)  # synth=a+b: the items from b
        if second is not None and len(second) == n_syn:
            batch["from_second"] = torch.cat([second.to(images.device),
                                              torch.zeros(images.shape[0] - n_syn, dtype=torch.bool,
                                                          device=images.device)])
        return batch
