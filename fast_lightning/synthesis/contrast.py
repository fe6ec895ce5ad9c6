"""A synthesized defect's brightness against the part around it, set to a real defect's of the same type
(``synthesis.contrast_match``).

Why: on magnetic tile, real "uneven" regions keep almost the brightness of the tile around them (median
|inside - ring| 0.028) while the 64-px model paints them as patches 3-4x darker or brighter (0.100), and "uneven"
holds most of the class's defect pixels (`make fidelity`, 2026-12-04). This keeps the model's painted structure
and moves only its mean, per channel, to the contrast of a real generator-train defect of the same type drawn at
random, so each type keeps its own range (a dark blowhole stays dark, an uneven region stays faint).
"""

from __future__ import annotations

import logging
from typing import Mapping

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

RING_SHARE = 1 / 64  # ring width around the defect, as a share of the image's shorter side (>= 1 px)


def ring_width(h: int, w: int) -> int:
    return max(1, round(min(h, w) * RING_SHARE))


def defect_contrast(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """(C,) mean of ``image`` (C,H,W) inside ``mask`` (1,H,W) minus its mean on the ring just outside it;
    None when the defect or the ring is empty (a mask that covers the whole image)."""
    m = (mask.reshape(1, *mask.shape[-2:]) > 0.5).float()
    r = ring_width(*m.shape[-2:])
    ring = (F.max_pool2d(m[None], 2 * r + 1, stride=1, padding=r)[0] - m).clamp(0, 1)
    area, ring_area = float(m.sum()), float(ring.sum())
    if area == 0 or ring_area == 0:
        return None
    img = image.float()
    m, ring = m.to(img.device), ring.to(img.device)
    return (img * m).flatten(1).sum(1) / area - (img * ring).flatten(1).sum(1) / ring_area


def match_contrast(image: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, rounds: int = 4) -> torch.Tensor:
    """``image`` with the pixels inside ``mask`` shifted (one shift per channel) so its :func:`defect_contrast`
    is ``target``; the shift is corrected for the clipping to [0, 1] over a few ``rounds`` (exact unless the
    region saturates). Outside the mask it is unchanged."""
    current = defect_contrast(image, mask)
    if current is None:
        return image
    inside = mask.reshape(1, *mask.shape[-2:]).to(image.device) > 0.5
    base, target = image.float(), target.to(current.device, current.dtype)
    shift, out = torch.zeros_like(current), base
    for _ in range(max(1, int(rounds))):
        shift = shift + (target - current)
        out = torch.where(inside, (base + shift[:, None, None]).clamp(0.0, 1.0), base)
        current = defect_contrast(out, mask)
    return out.to(image.dtype)


def draw_target(targets: Mapping[int, torch.Tensor] | None, type_id: int,
                generator: torch.Generator) -> torch.Tensor | None:
    """One real contrast of type ``type_id`` (a row of ``targets[type_id]``), or None when that type has none."""
    if not targets or int(type_id) not in targets:
        return None
    rows = targets[int(type_id)]
    j = int(torch.randint(rows.shape[0], (1,), generator=generator, device=generator.device))
    return rows[j]


def real_contrast_targets(cfg, split) -> dict[int, torch.Tensor] | None:
    """``synthesis.contrast_match=type``: per defect type id, the (n, C) contrasts of the generator-train
    defects (images and masks at their native size, as synthesis runs); None for ``none``."""
    from fast_lightning.data.io import load_image, load_mask

    mode = str(cfg.synthesis.get("contrast_match", "none"))
    if mode == "none":
        return None
    rows: dict[int, list[torch.Tensor]] = {}
    for r in split.generator_train:
        if not r.mask:
            continue
        image = load_image(r.image, None, int(cfg.data.channels), str(cfg.data.image_interpolation))
        c = defect_contrast(image, load_mask(r.mask, tuple(image.shape[-2:])))
        if c is not None:
            rows.setdefault(split.type_id(r.label), []).append(c)
    out = {tid: torch.stack(v) for tid, v in rows.items()}
    log.info("synthesis.contrast_match=type: median real contrast (inside - ring, channel mean) per type: "
             + ", ".join(f"{split.types[tid - 1]} {float(v.mean(1).median()):+.3f} (n={len(v)})"
                         for tid, v in sorted(out.items())))
    return out
