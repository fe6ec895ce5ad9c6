"""Lightning glue for `make synthesize`: an index dataset, a predict-only LightningModule and two callbacks.

Why Lightning's predict loop: it already shards a dataset across GPUs/nodes under DDP (each rank gets its
own indices through the distributed sampler) and handles devices and precision, so no home-made process
pool is needed. Every random choice of pair i (normal image, mask, type, sampler noise) comes from
generators seeded by (seed, i): pair i is the same whatever the batch size, worker count or rank count.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from torch.utils.data import Dataset

from fast_lightning.data.datasets import foreground_mask
from fast_lightning.data.io import bit_depth, load_image
from fast_lightning.data.mask_resize import resize_mask
from fast_lightning.seeding import generator_for
from fast_lightning.synthesis.base_synthesizer import SynthesisError
from fast_lightning.data.io import resize_tensor_image
from fast_lightning.synthesis.windowed import WindowedFastSynthesizer
from fast_lightning.synthesis.writer import SynthesisWriter


class SynthesisIndexDataset(Dataset):
    """Item k = pair ``indices[k]``: a normal image at full resolution (synthesis always runs there, at the
    pixel scale the model was trained on; ``out_resolution`` only resizes the finished pair), a mask from
    the mask sampler on that image's foreground, and an anomaly type (the real mask's own, else the one
    ``synthesis.perlin_type`` picks; ``type_rule`` says which)."""

    def __init__(self, indices: Sequence[int], normals: Sequence[str], mask_sampler, type_names: Sequence[str],
                 *, seed: int = 0, channels: int = 3, out_resolution: int | None = None,
                 foreground: str = "auto", foreground_dir: str | None = None,
                 interpolation: str = "bicubic") -> None:
        if not normals:
            raise SynthesisError("no normal train images to synthesize on (the split's normal-train set is empty)")
        self.indices = [int(i) for i in indices]
        self.normals = list(normals)
        self.mask_sampler = mask_sampler
        self.type_names = list(type_names)
        self.seed, self.channels, self.out_resolution = int(seed), int(channels), out_resolution
        self.foreground, self.foreground_dir, self.interpolation = foreground, foreground_dir, interpolation

    def __len__(self) -> int:
        return len(self.indices)

    def item(self, index: int) -> dict:
        g = generator_for("item", self.seed, index)
        path = self.normals[int(torch.randint(len(self.normals), (1,), generator=g))]
        image = load_image(path, None, self.channels, self.interpolation)  # full resolution: training's scale
        fg = foreground_mask(image, self.foreground, path, self.foreground_dir)
        try:
            if hasattr(self.mask_sampler, "draw"):
                mask, tid, source, rule = self.mask_sampler.draw(tuple(image.shape[-2:]), g, fg)
            else:
                mask, tid, source, rule = self.mask_sampler.sample(tuple(image.shape[-2:]), g, fg), 0, "custom", "random"
        except RuntimeError as exc:  # MaskSampler gave up: name the image and the config keys
            raise SynthesisError(f"pair {index}, normal image {path}: {exc} (keys: synthesis.masks.min_area, "
                                 f"synthesis.masks.max_area, synthesis.masks.sources)") from exc
        if tid == 0 and self.type_names:  # a plain mask sampler: uniform type
            tid = 1 + int(torch.randint(len(self.type_names), (1,), generator=g))
        return {"index": int(index), "image": image, "mask": mask, "cond": int(tid), "source": os.path.abspath(path),
                "mask_source": source, "type_rule": rule, "out_resolution": self.out_resolution,
                "bit_depth": bit_depth(path)}

    def __getitem__(self, k: int) -> dict:
        return self.item(self.indices[k])


def synthesis_dataset(cfg, split, indices: Sequence[int], type_names: Sequence[str],
                      mask_sampler=None, seed: int | None = None) -> SynthesisIndexDataset:
    """Pairs ``indices`` of `make synthesize` under ``cfg``: the one definition of a synthesis input (normal
    image, mask, type), shared by synthesis, bench-sampling and the fidelity sheet."""
    from fast_lightning.data.datamodule import foreground_dir
    from fast_lightning.synthesis.mask_sampler import build_mask_sampler

    out_res = cfg.synthesis.out_resolution
    return SynthesisIndexDataset(
        indices, [r.image for r in split.normal_train],
        mask_sampler if mask_sampler is not None else build_mask_sampler(cfg, split, size=None),
        list(type_names), seed=int(cfg.seed if seed is None else seed), channels=int(cfg.data.channels),
        out_resolution=int(out_res) if out_res else None, foreground=str(cfg.data.foreground),
        foreground_dir=foreground_dir(cfg), interpolation=str(cfg.data.image_interpolation))


def synthesis_batch(cfg, split, type_names: Sequence[str], n: int, seed: int
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, list[str]]:
    """(images, masks, type ids, source paths) of pairs 0..n-1 of `make synthesize` with ``seed``: a fixed
    batch for speed benchmarks and sheets (full resolution, like synthesis itself)."""
    ds = synthesis_dataset(cfg, split, range(n), type_names, seed=seed)
    items = [ds.item(i) for i in range(n)]
    return ([it["image"] for it in items], [it["mask"] for it in items],
            torch.tensor([it["cond"] for it in items], dtype=torch.long), [it["source"] for it in items])


def collate_items(items: list[dict]) -> list[dict]:
    """Keep items separate: full-resolution images may differ in size."""
    return list(items)


class SynthesisPredictor(L.LightningModule):
    """Predict-only module: ``predict_step`` synthesizes a batch of items (windows batched into one
    sampler call) and returns the pairs on CPU with their manifest fields; :class:`PairWriter` saves them."""

    def __init__(self, model, sampler, meta: dict, seed: int, run_fields: dict | None = None,
                 visible_change: float | None = None, source_detail: str = "none",
                 contrast_targets: dict | None = None) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)  # a submodule: Lightning moves it to the device
        self.synth = WindowedFastSynthesizer(self.model, sampler, meta, visible_change=visible_change,
                                             source_detail=source_detail, contrast_targets=contrast_targets)
        self.seed = int(seed)
        self.run_fields = dict(run_fields or {})
        self.type_names = self.synth.type_names

    def predict_step(self, batch: list[dict], batch_idx: int = 0) -> list[dict]:
        gens = [generator_for("synthesis_noise", self.seed, it["index"]) for it in batch]
        cond = torch.tensor([it["cond"] for it in batch], dtype=torch.long)
        images, masks = self.synth.synthesize([it["image"] for it in batch], [it["mask"] for it in batch],
                                              cond, gens)
        out = []
        for it, img, m in zip(batch, images, masks):
            tid = int(it["cond"])
            if it.get("out_resolution"):  # resize the finished pair (image bicubic, mask: the one rule)
                r = int(it["out_resolution"])
                img, m = resize_tensor_image(img[None].float(), (r, r))[0], resize_mask(m, r)
            h, w = img.shape[-2:]
            out.append({
                "row": {
                    "index": int(it["index"]), "source": it["source"], "mask_source": it["mask_source"],
                    "type": self.type_names[tid - 1] if 0 < tid <= len(self.type_names) else "normal",
                    "type_id": tid, "type_rule": it.get("type_rule", "mask"), **self.run_fields,
                    "height": int(h), "width": int(w), "bit_depth": int(it.get("bit_depth", 8)),
                    "area": round(float(m.float().mean()), 6),
                },
                "image": img.detach().float().cpu(), "mask": m.detach().float().cpu(),
            })
        return out


class PairWriter(BasePredictionWriter):
    """Writes each batch as soon as it is predicted (PNGs, then this rank's manifest line)."""

    def __init__(self, writer: SynthesisWriter) -> None:
        super().__init__(write_interval="batch")
        self.writer = writer

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        for pair in prediction:
            self.writer.write_pair(pair["row"], pair["image"], pair["mask"], rank=trainer.global_rank)


class ImagesProgress(Callback):
    """A progress bar in images (all ranks, estimated from rank 0) with images/s; rank 0 only."""

    def __init__(self, total: int, initial: int = 0) -> None:
        self.total, self.initial = int(total), int(initial)
        self.bar = None
        self.start = 0.0
        self.count = 0

    def on_predict_start(self, trainer, pl_module) -> None:
        self.start, self.count = time.time(), 0
        if trainer.is_global_zero:
            from fast_lightning.progress import progress

            self.bar = progress(total=self.total, initial=self.initial, unit="img", desc="synthesize")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        n = len(batch) * max(1, trainer.world_size)
        self.count += n
        if self.bar is not None:
            self.bar.update(min(n, self.bar.total - self.bar.n))

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    @property
    def images_per_second(self) -> float:
        elapsed = time.time() - self.start
        return self.count / elapsed if elapsed > 0 else 0.0
