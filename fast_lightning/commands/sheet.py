"""`make sheet CLASS=<c> [CKPT]`: synthesized defects at the scale the model works on, next to real ones.

Whole-image previews shrink a defect to a few pixels; this sheet shows each defect in the square window the model
sees (the training window rule), so texture and sharpness can be judged. Rows: real generator-train defects, then
one row per sampling setting, all on the same normal images, masks and noise (only the setting differs).

Options (key=value): rows="label:key=value,key=value;label:..." (sampling.* overrides; default compares the FARM
rule: FARM at every step, the old behaviour, vs FARM only in the AIAS segments), n=8, seed=0, tile=96,
out=reports/<class>/sheet.png.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from fast_lightning.errors import UserError
from fast_lightning.commands.arguments import config_from_args, pop_options

DEFAULT_ROWS = "FARM every step (old):farm_min_t=0;FARM segments only:farm_min_t=2"


def parse_rows(text: str) -> list[tuple[str, dict]]:
    """'label:key=value,key=value;...' -> [(label, {key: value})] with values parsed as YAML scalars."""
    from omegaconf import OmegaConf

    rows = []
    for chunk in filter(None, (c.strip() for c in str(text).split(";"))):
        label, sep, spec = chunk.rpartition(":")
        if not sep or not label:
            raise UserError(f"rows: {chunk!r} is not 'label:key=value,...'")
        over = OmegaConf.to_container(OmegaConf.from_dotlist([kv.strip() for kv in spec.split(",") if kv.strip()]))
        rows.append((label.strip(), over))
    if not rows:
        raise UserError("rows: give at least one 'label:key=value' setting")
    return rows


def _tile(image: torch.Tensor, window, size: int) -> torch.Tensor:
    ys, xs = window.slices()
    crop = image[None, :, ys, xs].float()
    if crop.shape[1] == 1:
        crop = crop.expand(-1, 3, -1, -1)
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)


OPTIONS = {"rows": DEFAULT_ROWS, "n": 8, "seed": 0, "tile": 96, "out": ""}


def main(args: list[str]) -> int:
    from fast_lightning.data.datamodule import load_split
    from fast_lightning.data.io import load_image, load_mask
    from fast_lightning.evaluation.plots import save_grid
    from fast_lightning.hardware import autocast_dtype
    from fast_lightning.sampling import build_sampler
    from fast_lightning.seeding import generator_for
    from fast_lightning.synthesis import (
        WindowedFastSynthesizer,
        SynthesisError,
    )
    from fast_lightning.synthesis.checkpoints import load_synthesis_model
    from fast_lightning.synthesis.predictor import synthesis_batch

    opts, rest = pop_options(args, OPTIONS)
    rows, n, seed, tile = parse_rows(str(opts["rows"])), int(opts["n"]), int(opts["seed"]), int(opts["tile"])
    if n < 1 or tile < 8:
        raise UserError(f"n must be >= 1 and tile >= 8, got n={n}, tile={tile}")
    cfg = config_from_args(rest)
    out = Path(str(opts["out"]) or f"reports/{cfg.class_name}/sheet.png")
    try:
        _, split = load_split(cfg)
        model, meta = load_synthesis_model(cfg, split.types)
        ckpt = meta["path"]
        images, masks, cond, _ = synthesis_batch(cfg, split, meta.get("type_names", []), n, seed)
    except SynthesisError as exc:
        raise UserError(str(exc)) from exc
    model = model.eval().requires_grad_(False)
    amp = autocast_dtype(str(cfg.trainer.precision))

    tiles, titles = [], []
    real = split.generator_train[:n]
    probe = WindowedFastSynthesizer(model, build_sampler(cfg.sampling), meta, autocast_dtype=amp)
    for rec in real:  # real defects in the window the model would see around them
        img = load_image(rec.image, None, int(cfg.data.channels), str(cfg.data.image_interpolation))
        tiles.append(_tile(img, probe.window_for(load_mask(rec.mask)), tile))
    tiles += [torch.ones(3, tile, tile)] * (n - len(real))
    titles.append("real (gen. third)")
    for label, over in rows:
        sampler = build_sampler({**dict(cfg.sampling), **over})
        synth = WindowedFastSynthesizer(model, sampler, meta, autocast_dtype=amp)
        gens = [generator_for("item", seed, i) for i in range(n)]  # the same per-item streams for every row
        out_images, out_masks = synth.synthesize(images, masks, cond, gens)
        tiles += [_tile(img, synth.window_for(m), tile) for img, m in zip(out_images, out_masks)]
        titles.append(label)
    tiles += [_tile(m.expand(3, -1, -1), probe.window_for(m), tile) for m in masks]
    titles.append("mask")
    save_grid(torch.stack(tiles), n, out, row_titles=titles, scale=1)
    print(f"sheet: {out}  ({cfg.class_name}, checkpoint {ckpt}, {n} windows per row)")
    return 0
