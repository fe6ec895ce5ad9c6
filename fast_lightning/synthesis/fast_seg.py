"""The online FAST segmentation synthesizer (``synth=fast``): full-resolution windowed synthesis per batch,
optionally pooled in a ring buffer, plus ``derive_generators`` (one generator -> n per-item generators)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fast_lightning.data.mask_resize import resize_mask
from fast_lightning.errors import ConfigError
from fast_lightning.schema import DataConfig, SynthesisConfig
from fast_lightning.synthesis.base_synthesizer import GeneratorArg, SegSynthesizer
from fast_lightning.synthesis.mask_sampler import MaskSampler, TypedMaskSampler
from fast_lightning.data.io import resize_tensor_image
from fast_lightning.synthesis.windowed import WindowedFastSynthesizer

__all__ = ["FastSegSynthesizer", "build_fast_seg", "derive_generators", "first_generator"]


def derive_generators(generator: GeneratorArg, n: int) -> list[torch.Generator]:
    """n independent CPU generators: a list of n is used as is, one generator seeds n new ones."""
    if not isinstance(generator, torch.Generator):
        gens = list(generator)
        if len(gens) == n:
            return gens
        generator = gens[0]
    seeds = torch.randint(0, 2**62, (n,), generator=generator, device=generator.device).tolist()
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def first_generator(generator: GeneratorArg) -> torch.Generator:
    return generator if isinstance(generator, torch.Generator) else list(generator)[0]


class FastSegSynthesizer(SegSynthesizer):
    """Online FAST synthesizer for segmentation training (the DataModule contract
    ``synth(normals [0,1] (B,C,H,W), foreground (B,1,H,W), generator, records=None, hflip=None)
    -> (images, masks)``).

    Scale: with ``normals`` (the normal-train image paths) and the batch's ``records`` (indices into them)
    and ``hflip`` flags, each pair is synthesized on the FULL-RESOLUTION normal image (read once through a
    uint8 cache, with its own full-resolution foreground): the mask is drawn at native size, the window is
    cut with the training window rule (``data.windows.window_side``), resized DOWN to the model, sampled,
    resized back and pasted inside the mask, and only then brought to the working size of ``normals``
    (image bicubic, mask ``resize_mask``). So the model sees the pixel scale it was trained on. Without
    ``records`` the given tensors themselves are the source images (tests, ad-hoc use).

    Masks come from ``mask_sampler`` inside the foreground; the condition is the type attached to a real
    mask, else the one ``synthesis.perlin_type`` picks. ``last_types`` holds the type ids of the pairs the
    last call returned. Runs on the normals' device (the model follows it).

    Pool (``buffer_size`` > 0): synthesis costs ``steps`` network calls per pair, far more than a segmenter
    step, so pairs are kept in a ring buffer on the device. Each call adds ``refresh`` new pairs (from the
    current normals, replacing the oldest; a fractional ``refresh`` carries the remainder to the next call,
    so 0.5 is one pair every second step) and returns a random draw of B pairs from the pool.
    Trade-off: a pair is returned about B / refresh times on average, so ``refresh`` < B makes steps
    cheaper at the cost of reusing pairs (less diversity per step); ``refresh = B`` (or ``buffer_size=0``)
    gives fresh pairs at every step. The first calls fill the pool to at least B pairs.

    ``refresh_batch``: the sampler's images/s grows with its batch (AIAS-10 on a 2-core CPU: 2.9 images/s
    at batch 2, 4.8 at 16), so the new pairs' sources (normal image, flip, generator) are queued and
    synthesized together once ``refresh_batch`` are waiting. The pairs are the ones an unqueued run makes
    (each has its own generator), they only enter the pool up to ``refresh_batch / refresh`` steps later.
    """

    native_input = True  # the DataModule passes ``records`` and ``hflip``
    needs_diffusion = True

    def __init__(self, model, meta, mask_sampler: MaskSampler, sampler, *, autocast_dtype: torch.dtype | None = None,
                 channels: int = DataConfig.channels, foreground: str = DataConfig.foreground,
                 foreground_dir: str | None = DataConfig.foreground_dir,
                 buffer_size: int = SynthesisConfig.seg_buffer_size,
                 refresh: float | None = SynthesisConfig.seg_refresh,
                 refresh_batch: int | None = SynthesisConfig.seg_refresh_batch,
                 visible_change: float | None = SynthesisConfig.visible_change,
                 source_detail: str = SynthesisConfig.source_detail,
                 contrast_targets: dict | None = None,
                 normals: Sequence[str] | None = None) -> None:
        """``model``/``meta``: a loaded diffusion model and its checkpoint metadata (the registry loads and
        checks them); ``sampler``: the sampling scheduler; the rest are the data.* and synthesis.* values."""
        self.synth = WindowedFastSynthesizer(model.eval().requires_grad_(False), sampler, meta,
                                             autocast_dtype=autocast_dtype, visible_change=visible_change,
                                             source_detail=source_detail, contrast_targets=contrast_targets)
        self.mask_sampler = mask_sampler
        self.num_types = len(self.synth.type_names)
        self.buffer_size = max(0, int(buffer_size or 0))
        self.refresh = None if not refresh else float(refresh)
        self.refresh_batch = max(1, int(refresh_batch or 1))
        if self.buffer_size and self.refresh_batch > self.buffer_size:
            raise ConfigError(f"synthesis.seg_refresh_batch={self.refresh_batch} is larger than the pool "
                             f"(synthesis.seg_buffer_size={self.buffer_size}): the extra pairs would be thrown "
                             "away; lower seg_refresh_batch or raise seg_buffer_size")
        self.normals = list(normals) if normals is not None else None
        self.channels = int(channels)
        self.foreground_mode = str(foreground)
        self.foreground_dir = foreground_dir or None
        self._cache = None  # data.datasets.NativeCache: decoded full-resolution normals (uint8)
        self._foregrounds: dict[int, torch.Tensor] = {}
        self._pool_images: torch.Tensor | None = None
        self._pool_masks: torch.Tensor | None = None
        self._pool_types: torch.Tensor | None = None
        self.last_types = torch.zeros(0, dtype=torch.long)
        self._filled = 0
        self._next = 0
        self._credit = 0.0   # fractional refresh carried to the next call
        self._queue: list[tuple] = []  # sources waiting for a batched refresh: (normal, fg, record, flip, gen)

    # -- full-resolution sources -------------------------------------------------------------------------
    def native(self, record: int, hflip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(image (C,H,W) [0,1], foreground (1,H,W)) of normal record ``record`` at its own resolution
        (decoded once, kept as uint8 on CPU), flipped like the working-scale batch item."""
        from fast_lightning.data.datasets import NativeCache, foreground_mask

        if self.normals is None:
            raise ValueError("FastSegSynthesizer was built without the normal image paths (normals=...), so it "
                             "cannot read records at full resolution")
        if self._cache is None:
            self._cache = NativeCache(self.channels)
        path = self.normals[record]
        img = self._cache.image(path).float() / 255.0
        if record not in self._foregrounds:
            fg = foreground_mask(img, self.foreground_mode, path, self.foreground_dir)
            self._foregrounds[record] = (fg > 0.5).to(torch.uint8)
        fg = self._foregrounds[record].float()
        if hflip:
            img, fg = img.flip(-1), fg.flip(-1)
        return img, fg

    # -- fresh pairs ------------------------------------------------------------------------------------
    def _mask_and_type(self, hw: tuple[int, int], foreground: torch.Tensor | None,
                       g: torch.Generator) -> tuple[torch.Tensor, int]:
        if isinstance(self.mask_sampler, TypedMaskSampler):
            m, tid, _ = self.mask_sampler.sample_typed(hw, g, foreground)
        else:
            m, tid = self.mask_sampler.sample(hw, g, foreground), 0
        if tid == 0 and self.num_types > 0:  # a plain MaskSampler: uniform type
            tid = 1 + int(torch.randint(self.num_types, (), generator=g))
        return m, tid

    def fresh(self, normals: torch.Tensor, foreground: torch.Tensor | None, gens: Sequence[torch.Generator],
              records: torch.Tensor | None = None, hflip: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """len(gens) new pairs (images, masks, type ids) at the working size of ``normals`` (no pool)."""
        if self.synth.device != normals.device:
            self.synth.model.to(normals.device)
        n, hw = normals.shape[0], tuple(normals.shape[-2:])
        if records is None:
            sources = [(normals[i], None if foreground is None else foreground[i]) for i in range(n)]
        else:
            flips = [False] * n if hflip is None else [bool(f) for f in hflip.reshape(-1).tolist()]
            sources = [self.native(int(r), f) for r, f in zip(records.reshape(-1).tolist(), flips)]
        images, masks, cond = [], [], []
        for (img, fg), g in zip(sources, gens):
            m, tid = self._mask_and_type(tuple(img.shape[-2:]), None if fg is None else fg.cpu(), g)
            images.append(img.to(normals.device, torch.float32))
            masks.append(m.to(normals.device))
            cond.append(tid)
        cond = torch.tensor(cond, dtype=torch.long)
        out_images, out_masks = self.synth.synthesize(images, masks, cond, gens)
        out_images = torch.stack([resize_tensor_image(x[None], hw)[0] for x in out_images])
        out_masks = torch.stack([resize_mask(m, hw) for m in out_masks])
        return out_images.to(normals.dtype), out_masks.to(normals.dtype), cond

    # -- the DataModule contract ------------------------------------------------------------------------
    def __call__(self, normals: torch.Tensor, foreground: torch.Tensor | None, generator: GeneratorArg,
                 records: torch.Tensor | None = None, hflip: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if normals.dim() != 4:
            raise ValueError(f"normals must be (B, C, H, W), got {tuple(normals.shape)}")
        if records is not None and self.normals is None:
            records = None  # built without paths: synthesize on the given tensors
        b = normals.shape[0]
        if self.buffer_size == 0 or self.refresh is None or self.refresh >= max(self.buffer_size, b):
            images, masks, types = self.fresh(normals, foreground, derive_generators(generator, b), records, hflip)
            self.last_types = types
            return images, masks
        size = max(self.buffer_size, b)
        shape = (size, *normals.shape[1:])
        if (self._pool_images is None or tuple(self._pool_images.shape) != shape
                or self._pool_images.device != normals.device):
            self._pool_images = torch.zeros(shape, device=normals.device, dtype=normals.dtype)
            self._pool_masks = torch.zeros((size, 1, *normals.shape[-2:]), device=normals.device,
                                           dtype=normals.dtype)
            self._pool_types = torch.zeros(size, dtype=torch.long)
            self._filled, self._next, self._credit, self._queue = 0, 0, 0.0, []
        self._credit += self.refresh
        n_new = min(size, max(int(self._credit), b - self._filled - len(self._queue)))
        self._credit = max(0.0, self._credit - n_new)
        if n_new > 0:
            self._enqueue(normals, foreground, generator, records, hflip, n_new)
        if self._queue and (len(self._queue) >= self.refresh_batch or self._filled < b):
            self._add_to_pool(self._synthesize_queue())
        g = first_generator(generator)
        pick = torch.randperm(self._filled, generator=g, device=g.device)[:b].to(normals.device)
        self.last_types = self._pool_types[pick.cpu()].clone()
        return self._pool_images[pick].clone(), self._pool_masks[pick].clone()

    def _enqueue(self, normals, foreground, generator, records, hflip, n_new: int) -> None:
        """Queue ``n_new`` sources from this batch (its normals cycled when n_new > B), each with its generator."""
        gens = derive_generators(generator, n_new)
        for k in range(n_new):
            i = k % normals.shape[0]
            self._queue.append((normals[i].clone(), None if foreground is None else foreground[i].clone(),
                                None if records is None else records.reshape(-1)[i],
                                None if hflip is None else hflip.reshape(-1)[i], gens[k]))

    def _synthesize_queue(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        queue, self._queue = self._queue, []
        normals, fgs, recs, flips, gens = zip(*queue)
        fg = None if fgs[0] is None else torch.stack(fgs)
        rec = None if recs[0] is None else torch.stack(recs)
        flip = None if flips[0] is None else torch.stack(flips)
        return self.fresh(torch.stack(normals), fg, list(gens), rec, flip)

    def _add_to_pool(self, pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        images, masks, types = pairs
        size = self._pool_images.shape[0]
        images, masks, types = images[-size:], masks[-size:], types[-size:]
        slots = (self._next + torch.arange(images.shape[0], device=images.device)) % size
        self._pool_images[slots] = images
        self._pool_masks[slots] = masks
        self._pool_types[slots.cpu()] = types
        self._next = (self._next + images.shape[0]) % size
        self._filled = min(size, self._filled + images.shape[0])


def build_fast_seg(cfg, datamodule) -> FastSegSynthesizer:
    """``synth=fast``: the diffusion model of ``synthesis.ckpt`` / ``latest`` (``load_synthesis_model``),
    full-resolution synthesis (masks at native size), then the working size."""
    from fast_lightning.hardware import autocast_dtype
    from fast_lightning.sampling import build_sampler
    from fast_lightning.synthesis.checkpoints import load_synthesis_model
    from fast_lightning.synthesis.contrast import real_contrast_targets
    from fast_lightning.synthesis.mask_sampler import build_mask_sampler

    split, syn = datamodule.split, cfg.synthesis
    model, meta = load_synthesis_model(cfg, list(split.types))
    return FastSegSynthesizer(model, meta, build_mask_sampler(cfg, split, None), build_sampler(cfg.sampling),
                              autocast_dtype=autocast_dtype(str(cfg.trainer.precision)),
                              channels=int(cfg.data.channels), foreground=str(cfg.data.foreground),
                              foreground_dir=cfg.data.foreground_dir, buffer_size=int(syn.seg_buffer_size),
                              refresh=syn.seg_refresh, refresh_batch=syn.seg_refresh_batch,
                              visible_change=syn.visible_change, source_detail=str(syn.source_detail),
                              contrast_targets=real_contrast_targets(cfg, split),
                              normals=[r.image for r in split.normal_train])
