"""Windowed FAST synthesis with exact paste-back (``WindowedFastSynthesizer``).
Pure torch: no Lightning.

Why windows: a ``crop`` model was trained on square windows (``diffusion.crop.scale`` of the shorter image
side, grown to fit the defect) resized to the model resolution, so at synthesis time it must see the same
kind of window around the placed mask; everything outside the mask is copied from the source image with
``torch.where`` (never blended), so the background is bit-for-bit the source.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from fast_lightning.data.io import resize_tensor_image
from fast_lightning.data.mask_resize import resize_mask
from fast_lightning.data.windows import mask_bbox, place_window, window_side
from fast_lightning.schema import SOURCE_DETAIL_MODES, CropConfig
from fast_lightning.synthesis.base_synthesizer import SynthesisError
from fast_lightning.synthesis.contrast import draw_target, match_contrast

__all__ = ["Window", "WindowedFastSynthesizer", "visible_change"]


# ---- windows ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    """Region of the full-resolution image the model sees: rows y..y+h, columns x..x+w."""

    y: int
    x: int
    h: int
    w: int

    def slices(self) -> tuple[slice, slice]:
        return slice(self.y, self.y + self.h), slice(self.x, self.x + self.w)


def visible_change(generated: torch.Tensor, source: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B,1,R,R) bool: where the model visibly changed its window (``synthesis.visible_change``).

    Why: a model that repaints part of a mask with texture close to the part's surface leaves pixels a
    segmenter cannot see labelled as defect; it then learns to mark normal texture. Visible = the largest
    channel difference of the 3x3 box-blurred generated and source windows (model resolution, [0,1]
    intensities) exceeds ``threshold``; the blur keeps a repainted grain of the same texture below it.
    """
    blur = torch.nn.functional.avg_pool2d
    diff = (blur(generated.float(), 3, 1, 1, count_include_pad=False)
            - blur(source.float(), 3, 1, 1, count_include_pad=False)).abs()
    return diff.amax(1, keepdim=True) > float(threshold)


class WindowedFastSynthesizer:
    """FAST synthesis at full resolution for ``crop`` and ``full`` diffusion models.

    ``model``: FASTDiffusion (EMA weights), ``sampler``: any ``fast_lightning.sampling`` sampler,
    ``meta``: the dict of ``load_fast_diffusion`` (``window``, ``resolution``, ``config``). Per item the
    window is chosen from the mask (crop: ``window_side`` of the image centred on the mask bbox, no jitter:
    the training window rule, so the pixel scale matches training; full: the whole image), cropped and
    resized to the model resolution (image bicubic, mask with ``data.mask_resize.resize_mask``),
    all windows of the batch go through ONE sampler call, and each generated window is resized back and
    pasted only inside the mask. Parts of a mask that fall outside its window (a mask wider than the
    image's shorter side) are left unchanged and dropped from the returned mask, so labels stay exact.

    ``autocast_dtype``: e.g. ``torch.bfloat16`` to run the sampler under autocast (Lightning's predict loop
    already autocasts for ``bf16-mixed``, so leave it None there).

    ``visible_change`` (``synthesis.visible_change``): when set, the returned mask keeps only the placed-mask
    pixels the model visibly changed (:func:`visible_change`); the image is the same either way. None = the
    placed mask (the paper).

    ``source_detail`` (``synthesis.source_detail``): inside the mask, put back the source's detail finer than
    the model's pixels (the source window minus the same window seen at the model resolution). Why: a 64-px
    model painting a window 2-5x its size returns it smooth, so a large synthesized defect is a flat, blurred
    patch on a textured part, and a segmenter learns "smooth = defect" (magnetic tile's "uneven"). ``add``
    adds it as it is; ``scaled`` scales it by generated / source brightness (texture is multiplicative: a
    painted dark hole keeps little of the part's grain, a brightness change keeps all of it); ``none`` (the
    paper) leaves the model's output alone. A window that is not downsampled gets nothing added.

    ``contrast_targets`` (``synthesis.contrast_match=type``, built by
    :func:`fast_lightning.synthesis.contrast.real_contrast_targets`): per type id, real defects' contrasts
    against the part around them; each painted defect's mean is shifted to one of its type's, drawn with the
    item's generator (:mod:`fast_lightning.synthesis.contrast` says why). None (the paper) leaves it alone.
    """

    def __init__(self, model, sampler, meta: Mapping, autocast_dtype: torch.dtype | None = None,
                 visible_change: float | None = None, source_detail: str = "none",
                 contrast_targets: Mapping[int, torch.Tensor] | None = None) -> None:
        window = str(meta.get("window", "full"))
        if window not in ("crop", "full"):
            raise SynthesisError(f"checkpoint window mode must be 'crop' or 'full', got {window!r}")
        self.model = model
        self.sampler = sampler
        self.meta = dict(meta)
        self.window = window
        trained = dict((meta.get("config") or {}).get("diffusion") or {})  # the diffusion.* it was trained with
        self.resolution = int(meta.get("resolution") or trained["resolution"])
        crop = dict(trained.get("crop") or {})
        self.crop_scale = float(crop.get("scale", CropConfig.scale))
        self.defect_share = crop.get("defect_share")  # windows sized to the defect, as in training
        self.autocast_dtype = autocast_dtype
        self.visible_change = None if visible_change is None else float(visible_change)
        if source_detail not in SOURCE_DETAIL_MODES:
            raise SynthesisError(f"synthesis.source_detail={source_detail!r}: choose one of "
                                 f"{', '.join(SOURCE_DETAIL_MODES)}")
        self.source_detail = str(source_detail)
        self.contrast_targets = dict(contrast_targets) if contrast_targets else None
        self._warned_small = False

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def type_names(self) -> list[str]:
        return list(getattr(self.model, "type_names", []) or self.meta.get("type_names", []))

    def window_for(self, mask: torch.Tensor) -> Window:
        """The model's view of an image for this (1,H,W) mask."""
        h, w = mask.shape[-2:]
        if self.window == "full":
            return Window(0, 0, h, w)
        bbox = mask_bbox(mask)
        side = window_side(h, w, self.crop_scale, bbox, min_side=self.resolution, defect_share=self.defect_share)
        y, x = place_window(h, w, side, bbox, jitter=False)
        return Window(y, x, side, side)

    # -- the model call on a batch of model-size windows ----------------------------------------------
    @torch.no_grad()
    def run_windows(self, windows01: torch.Tensor, masks: torch.Tensor, cond: torch.Tensor,
                    generators: Sequence[torch.Generator]) -> torch.Tensor:
        """(B,C,R,R) [0,1] windows + (B,1,R,R) masks -> generated windows [0,1] on the model device."""
        device = self.device
        # generators: a latent backbone's VAE posterior noise of item i comes from generators[i] too
        background = self.model.to_model_space(windows01.to(device, torch.float32), list(generators))
        m = self.model.model_mask(masks.to(device, torch.float32), background)
        cond = torch.as_tensor(cond, dtype=torch.long).reshape(-1).to(device)
        ctx = (torch.autocast(device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
               else nullcontext())
        with ctx:
            x = self.sampler(self.model, background, m, cond, list(generators))
        return self.model.from_model_space(x.float()).float()

    # -- full-resolution items of any size ----------------------------------------------------------
    @torch.no_grad()
    def synthesize(self, images: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                   cond: torch.Tensor | Sequence[int], generators: Sequence[torch.Generator]
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Items (C,H,W) [0,1] + (1,H,W) {0,1} (sizes may differ between items) -> (images, masks) lists.

        Outputs keep each source's size, device and dtype; outside the returned mask they equal the source
        exactly. Item i depends only on its own inputs and ``generators[i]``.
        """
        n = len(images)
        if not (len(masks) == n and len(generators) == n):
            raise ValueError(f"got {n} images, {len(masks)} masks and {len(generators)} generators")
        cond = torch.as_tensor(cond, dtype=torch.long).reshape(-1)
        if cond.numel() != n:
            raise ValueError(f"cond must hold {n} type ids, got {cond.numel()}")
        if n == 0:
            return [], []
        R = self.resolution
        plans, wins, wmasks = [], [], []
        for img, m in zip(images, masks):
            if img.dim() != 3 or m.dim() != 3 or m.shape[0] != 1 or img.shape[-2:] != m.shape[-2:]:
                raise ValueError(f"need image (C,H,W) and mask (1,H,W) of the same size, got "
                                 f"{tuple(img.shape)} and {tuple(m.shape)}")
            win = self.window_for(m)
            if min(win.h, win.w) < R and not self._warned_small:
                self._warned_small = True
                warnings.warn(f"source image {tuple(img.shape[-2:])} is smaller than the diffusion model's "
                              f"{R} px: its {win.h}x{win.w} window is upsampled to the model (blurrier than the "
                              f"training windows); use larger source images or a smaller diffusion.resolution "
                              f"(reported once per run)", RuntimeWarning, stacklevel=2)
            ys, xs = win.slices()
            plans.append(win)
            wins.append(resize_tensor_image(img[None, :, ys, xs].float(), (R, R))[0].to(self.device))
            wmasks.append(resize_mask((m[None, :, ys, xs] > 0.5).float(), (R, R))[0].to(self.device))
        wins = torch.stack(wins)
        generated = self.run_windows(wins, torch.stack(wmasks), cond, generators)
        seen = self._visible(generated, wins)
        out_images, out_masks = [], []
        for i, (img, m, win) in enumerate(zip(images, masks, plans)):
            ys, xs = win.slices()
            back = resize_tensor_image(generated[i:i + 1], (win.h, win.w))[0]
            if self.source_detail != "none":
                back = self._with_detail(back, img[:, ys, xs], wins[i])
            back = back.to(img.device, img.dtype)
            canvas = img.clone()
            canvas[:, ys, xs] = back
            inside = torch.zeros_like(m, dtype=torch.bool)
            inside[:, ys, xs] = m[:, ys, xs] > 0.5
            out_images.append(self._matched(torch.where(inside, canvas, img), inside, int(cond[i]), generators[i]))
            if seen is not None:
                inside[:, ys, xs] &= resize_mask(seen[i:i + 1].float(), (win.h, win.w))[0].to(m.device) > 0.5
            out_masks.append(inside.to(m.dtype))
        return out_images, out_masks

    # -- batched fast path (same-size tensors, e.g. the segmentation working resolution) ----------------
    @torch.no_grad()
    def synthesize_tensors(self, normals: torch.Tensor, masks: torch.Tensor, cond: torch.Tensor | Sequence[int],
                           generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,C,H,W) [0,1] + (B,1,H,W) -> (images, masks) (B,...) on the normals' device.

        A ``full`` model resizes the whole batch in one call (no resize at all when H = W = resolution);
        a ``crop`` model needs per-item windows and goes through :meth:`synthesize` (one sampler call).
        """
        if normals.dim() != 4 or masks.dim() != 4 or masks.shape[0] != normals.shape[0] or masks.shape[1] != 1:
            raise ValueError(f"need normals (B,C,H,W) and masks (B,1,H,W), got {tuple(normals.shape)} and "
                             f"{tuple(masks.shape)}")
        if self.window == "crop":
            imgs, msks = self.synthesize(list(normals), list(masks), cond, generators)
            return torch.stack(imgs), torch.stack(msks)
        b, _, h, w = normals.shape
        R = self.resolution
        wins = resize_tensor_image(normals.float(), (R, R))
        wm = resize_mask((masks > 0.5).float(), (R, R))
        generated = self.run_windows(wins, wm, cond, generators)
        back = resize_tensor_image(generated, (h, w))
        if self.source_detail != "none":
            back = self._with_detail(back, normals, wins)
        back = back.to(normals.device, normals.dtype)
        inside = masks > 0.5
        images = torch.where(inside, back, normals)
        if self.contrast_targets:
            ids = torch.as_tensor(cond, dtype=torch.long).reshape(-1)
            images = torch.stack([self._matched(images[i], inside[i], int(ids[i]), generators[i])
                                  for i in range(b)])
        seen = self._visible(generated, wins.to(generated.device))
        if seen is not None:
            inside = inside & (resize_mask(seen.float(), (h, w)).to(masks.device) > 0.5)
        return images, inside.to(masks.dtype)

    def _with_detail(self, back: torch.Tensor, source: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """``back`` (the generated window at source size) plus the source's detail the model could not see:
        source - (``seen``, the source at the model resolution, resized back), times back / that for
        ``scaled``. No-op at the model's size."""
        size = tuple(source.shape[-2:])
        if tuple(seen.shape[-2:]) == size:
            return back
        batched = seen.dim() == 4
        low = resize_tensor_image((seen if batched else seen[None]).float(), size)
        low = (low if batched else low[0]).to(back.device)
        back = back.float()
        detail = source.to(back.device, torch.float32) - low
        if self.source_detail == "scaled":
            detail = detail * (back / low.clamp_min(0.05)).clamp(0.0, 2.0)
        return (back + detail).clamp(0.0, 1.0)

    def _matched(self, image: torch.Tensor, inside: torch.Tensor, type_id: int,
                 generator: torch.Generator) -> torch.Tensor:
        """``image`` with its painted region's contrast set to a real one of ``type_id`` (contrast_targets)."""
        target = draw_target(self.contrast_targets, type_id, generator)
        return image if target is None else match_contrast(image, inside, target)

    def _visible(self, generated: torch.Tensor, windows: torch.Tensor) -> torch.Tensor | None:
        if self.visible_change is None:
            return None
        return visible_change(generated, windows.to(generated.device), self.visible_change)
