"""Torch datasets over split records. Every random choice of item i is drawn from a generator seeded by
(seed, i): items do not depend on workers, and a resumed run sees the same stream as an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler

from fast_lightning.data.foreground import estimate_foreground, is_fallback, load_foreground_mask
from fast_lightning.data.io import load_image, load_mask, open_image, pil_to_tensor, resize_tensor_image, to_uint8
from fast_lightning.data.mask_resize import resize_mask
from fast_lightning.data.records import Record
from fast_lightning.errors import DataError
from fast_lightning.data.windows import mask_bbox, place_window, window_side
from fast_lightning.errors import ConfigError
from fast_lightning.seeding import generator_for


SEG_DIVISOR = 32  # working sides are multiples of this: what smp's strictest decoders need (models.required_divisor)


def working_size(records: list[Record], seg_scale: int, divisor: int = SEG_DIVISOR) -> tuple[int, int]:
    """(H, W) of the segmenter's working image for a class: THE one rule (train-seg, eval-seg, check-data; the
    result is stored in the segmenter checkpoint, which predict and export read).

    The longer side is ``seg_scale`` (data.seg_scale) and the aspect ratio is the median H/W of ``records``
    (the normal-train images; headers only), both sides rounded to ``divisor``. One size per run keeps batches
    stackable and the metrics exact; images of another aspect ratio (magnetic tile crops vary) are stretched
    to it, at training and at prediction alike.
    """
    scale = int(seg_scale)
    if scale < divisor or scale % divisor:
        raise ConfigError(f"data.seg_scale={seg_scale} must be a positive multiple of {divisor} (e.g. 256)")
    if not records:
        return scale, scale
    ratios = []
    for rec in records:
        with Image.open(rec.image) as im:  # header only: no decode
            w, h = im.size
        ratios.append(h / w)
    ratio = float(sorted(ratios)[len(ratios) // 2])
    if ratio >= 1:
        h, w = scale, max(divisor, int(round(scale / ratio / divisor)) * divisor)
    else:
        h, w = max(divisor, int(round(scale * ratio / divisor)) * divisor), scale
    return h, w


def as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


class NativeCache:
    """Decoded full-resolution images/masks kept in memory as uint8, per worker process.

    Both return uint8 views: callers crop first and convert only the window to float (converting a whole
    full-resolution image per item cost more than the crop itself).
    """

    def __init__(self, channels: int):
        self.channels = channels
        self._images: dict[str, torch.Tensor] = {}
        self._masks: dict[str, torch.Tensor] = {}

    def image(self, path: str) -> torch.Tensor:
        if path not in self._images:
            t = pil_to_tensor(open_image(path), self.channels)
            self._images[path] = to_uint8(t)
        return self._images[path]

    def mask(self, path: str | None, like: tuple[int, int]) -> torch.Tensor:
        if path is None:
            return torch.zeros(1, *like, dtype=torch.uint8)
        if path not in self._masks:
            m = load_mask(path).to(torch.uint8)
            if m.shape[-2:] != like:
                m = resize_mask(m.float(), like).to(torch.uint8)
            self._masks[path] = m
        return self._masks[path]


def augment_pair(image, mask, generator, hflip=True, vflip=True, rot90=True):
    if hflip and torch.rand((), generator=generator) < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    if vflip and torch.rand((), generator=generator) < 0.5:
        image, mask = image.flip(-2), mask.flip(-2)
    if rot90:
        k = int(torch.randint(4, (1,), generator=generator))
        if k:
            image, mask = torch.rot90(image, k, (-2, -1)), torch.rot90(mask, k, (-2, -1))
    return image.contiguous(), mask.contiguous()


class StepSampler(DistributedSampler):
    """Step-indexed sample stream: at training step s, rank r of W trains on global indices
    ``s*B*W + r*B ... s*B*W + (r+1)*B - 1``. The stream depends only on the step, so a resumed run (even
    under DDP, or an epoch Lightning restarts after a mid-epoch resume) continues exactly where the
    interrupted one stopped. ``step`` is read at every ``__iter__``. Being a DistributedSampler, Lightning
    uses it as is instead of wrapping it in a shuffling DistributedSamplerWrapper.
    """

    def __init__(self, step, batch_size: int, max_steps: int, num_replicas: int = 1, rank: int = 0):
        # DistributedSampler.__init__ needs a dataset and an initialised process group; we need neither
        self._step = step if callable(step) else (lambda: int(step))
        self.batch_size, self.max_steps = int(batch_size), int(max_steps)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch, self.shuffle, self.drop_last, self.seed = 0, False, False, 0

    def __iter__(self):
        b, w = self.batch_size, self.num_replicas
        for s in range(int(self._step()), self.max_steps):
            base = s * b * w + self.rank * b
            yield from range(base, base + b)

    def __len__(self) -> int:
        return max(0, self.max_steps - int(self._step())) * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # the stream is step-indexed: epochs change nothing


class GeneratorTrainDataset(Dataset):
    """Diffusion training items: defect windows from the generator-train split + normal windows.

    ``window='full'``: the whole image at ``resolution``; ``window='crop'``: a square window of
    ``crop_scale`` x shorter side around the defect (random placement), resized to ``resolution``.
    """

    def __init__(self, defects: list[Record], normals: list[Record], type_ids: dict[str, int], *, resolution: int,
                 channels: int = 3, window: str = "crop", crop_scale: float = 0.35, normal_weight: float = 0.25,
                 normal_crops: bool = True, augment: dict | None = None, seed: int = 0, length: int = 10**9,
                 defect_share: float | None = None, normal_only_items: int = 0):
        if window not in ("full", "crop"):
            raise ConfigError(f"diffusion.window must be 'full' or 'crop', got {window!r}")
        if not defects:
            raise DataError("the generator-train split holds no defect images: nothing to learn anomalies from")
        self.defects, self.normals, self.type_ids = defects, normals, type_ids
        self.resolution, self.window, self.crop_scale = resolution, window, crop_scale
        self.normal_weight = normal_weight if normals else 0.0
        self.normal_crops = normal_crops
        self.defect_share = defect_share
        # learn the surface first: items of the first steps (diffusion.normal_pretrain_steps) are all normal
        self.normal_only_items = int(normal_only_items) if normals else 0
        self.augment = dict(augment or {})
        self.seed, self.length = seed, length
        self.cache = NativeCache(channels)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        g = generator_for("item", self.seed, index)
        normal = bool(torch.rand((), generator=g) < self.normal_weight) or index < self.normal_only_items
        pool = self.normals if normal else self.defects
        rec = pool[int(torch.randint(len(pool), (1,), generator=g))]
        image = self.cache.image(rec.image)
        h, w = image.shape[-2:]
        mask = self.cache.mask(rec.mask, (h, w))
        if self.window == "crop" and (not normal or self.normal_crops):
            bbox = None if normal else mask_bbox(mask)
            side = window_side(h, w, self.crop_scale, bbox, min_side=self.resolution, defect_share=self.defect_share)
            y, x = place_window(h, w, side, bbox, generator=g)
            image, mask = image[:, y:y + side, x:x + side], mask[:, y:y + side, x:x + side]
        # bicubic antialiased image (always, even when enlarging); the mask with resize_mask, the rule synthesis
        # uses too (a thin scratch the bicubic image still shows stays in the mask)
        size = (self.resolution, self.resolution)
        image, mask = resize_tensor_image(image.float() / 255.0, size, antialias=True), resize_mask(mask.float(), size)
        image, mask = augment_pair(image, mask, g, **self.augment)
        return {"image": image, "mask": mask, "cond": torch.tensor(self.type_ids.get(rec.label, 0)), "index": index}


class NormalImageDataset(Dataset):
    """Normal train images at the working size with their foreground (segmenter training input), plus
    ``record`` (index into ``normals``) and ``hflip`` so the synthesizer can use the full-resolution image.
    ``resolution``: an int (square) or (H, W), see ``working_size``."""

    def __init__(self, normals: list[Record], *, resolution: int | tuple[int, int], channels: int = 3, foreground: str = "auto",
                 foreground_dir: str | None = None, interpolation: str = "bicubic", augment: bool = True,
                 seed: int = 0, length: int | None = None):
        if not normals:
            raise DataError("no normal training images")
        check_foreground_options(foreground, foreground_dir)
        self.normals, self.resolution, self.channels = normals, as_size(resolution), channels
        self.foreground, self.foreground_dir = foreground, foreground_dir
        self.interpolation, self.augment = interpolation, augment
        self.seed = seed
        self.length = length or len(normals)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.length

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i not in self._cache:
            rec = self.normals[i]
            img = load_image(rec.image, self.resolution, self.channels, self.interpolation)
            fg = foreground_mask(img, self.foreground, rec.image, self.foreground_dir)
            self._cache[i] = (img, fg)
        return self._cache[i]

    def survey_foreground(self) -> tuple[int, int]:
        """Load every image's foreground once (cached; a missing data.foreground_dir mask fails here, early)
        and count those ESTIMATED as the whole image: (fallbacks, images); 0 fallbacks for off / folder masks."""
        n = len(self.normals)
        if self.foreground == "off":
            return 0, n
        fallbacks = sum(is_fallback(self.load(i)[1]) for i in range(n))
        return (0 if self.foreground_dir else fallbacks), n

    def __getitem__(self, index: int) -> dict:
        g = generator_for("item", self.seed, index)
        i = int(torch.randint(len(self.normals), (1,), generator=g)) if self.length != len(self.normals) else index
        img, fg = self.load(i)
        flip = bool(self.augment and torch.rand((), generator=g) < 0.5)  # the only augmentation: h-flip
        if flip:
            img, fg = img.flip(-1).contiguous(), fg.flip(-1).contiguous()
        # record + hflip let a synthesizer (online fast) read the same image at full resolution
        return {"image": img, "mask": torch.zeros_like(fg), "foreground": fg, "index": index,
                "record": i, "hflip": flip}


def check_foreground_options(mode: str, folder: str | None) -> None:
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"data.foreground must be auto, on or off, got {mode!r}")
    if folder and mode == "off":
        raise ConfigError(f"data.foreground=off ignores data.foreground_dir={folder!r}: set data.foreground=auto "
                         "to use the folder's masks, or data.foreground_dir=null")


def foreground_mask(image: torch.Tensor, mode: str, path: str | Path | None = None,
                    folder: str | Path | None = None) -> torch.Tensor:
    """(1,H,W) foreground of ``image`` (loaded from ``path``): all ones (off), the user's mask for the image's
    file stem from ``folder`` (data.foreground_dir), else the border-colour estimate."""
    check_foreground_options(mode, str(folder) if folder else None)
    if mode == "off":
        return torch.ones(1, *image.shape[-2:])
    if folder:
        if path is None:
            raise ConfigError("foreground_mask: data.foreground_dir needs the image's path (masks match by file stem)")
        return load_foreground_mask(folder, Path(path).stem, tuple(image.shape[-2:]))
    return estimate_foreground(image)


class LabelledDataset(Dataset):
    """Real images with their masks at the working size (validation / test / real_third bank); ``resolution``:
    an int (square) or (H, W)."""

    def __init__(self, records: list[Record], *, resolution: int | tuple[int, int], channels: int = 3,
                 interpolation: str = "bicubic"):
        self.records, self.channels, self.interpolation = records, channels, interpolation
        self.resolution = as_size(resolution)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        img = load_image(rec.image, self.resolution, self.channels, self.interpolation)
        mask = load_mask(rec.mask, self.resolution)
        return {"image": img, "mask": mask, "label": int(rec.is_anomalous), "index": index}

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self[i] for i in range(len(self))]
        if not items:
            return torch.zeros(0, self.channels, *self.resolution), torch.zeros(0, 1, *self.resolution)
        return torch.stack([x["image"] for x in items]), torch.stack([x["mask"] for x in items])
