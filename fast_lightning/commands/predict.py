"""`make predict CKPT=<seg run | .ckpt | exported .pt/.onnx> IMAGES=<folder | glob | file> [OUT=...] [THRESHOLD=val|<float>]`.

For every image, at the working size the model was trained at and mapped back to the image's native size
(``segmentation.predict``): maps/<name>.png (16-bit anomaly probability, or .npy with map_format=npy),
masks/<name>.png (0/255 at the threshold), overlays/<name>.png (image + heat map + mask contour), one row in
predictions.csv / predictions.json, and contact_sheet.png of the top-scoring images. Unreadable images are named
and skipped; every file is written atomically. Default OUT: predictions/<class>/<time>/.
"""

from __future__ import annotations

import csv
import glob
import heapq
import io
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fast_lightning.commands.arguments import pop_options
from fast_lightning.errors import UserError
from fast_lightning.evaluation.plots import save_grid
from fast_lightning.progress import progress
from fast_lightning.runs import atomic_write_bytes, atomic_write_json, atomic_write_text
from fast_lightning.segmentation.lightning_segmenter import heatmap
from fast_lightning.segmentation.predict import Prediction, load_segmenter

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
OPTIONS = {"ckpt": "", "images": "", "out": "", "threshold": "val", "batch_size": 8, "device": "auto",
           "map_format": "png", "top": 16, "trust_checkpoint": False}
OPTION_HELP = {
    "ckpt": "segmenter: train-seg run folder, its latest link, a .ckpt, or a file from `make export`",
    "images": "a folder (searched recursively), a glob pattern or one image file",
    "out": "output folder (default predictions/<class>/<date-time>)",
    "threshold": "val = the F1-optimal threshold stored in the checkpoint, or a probability in [0, 1]",
    "batch_size": "images per forward pass",
    "device": "auto (CUDA when available) | cpu | cuda | cuda:N",
    "map_format": "png (16-bit probability x 65535) | npy (float32)",
    "top": "images on the contact sheet (highest scores first)",
    "trust_checkpoint": "fully unpickle an older checkpoint you trust (default: safe weights-only read)",
}


def find_images(spec: str) -> tuple[list[Path], Path]:
    """(sorted image files, the folder names are made relative to) for a folder, glob or file."""
    p = Path(spec)
    if p.is_dir():
        files = [f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        base = p
    elif p.is_file():
        files, base = [p], p.parent
    else:
        files = [Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file()]
        base = Path(os.path.commonpath([str(f.parent) for f in files])) if files else Path(".")
    if not files:
        raise UserError(f"no images found for IMAGES={spec!r} (a folder, a glob like 'dir/*.png' or a file; "
                        f"suffixes {', '.join(IMAGE_SUFFIXES)})")
    return sorted(files), base


def output_name(path: Path, base: Path) -> str:
    """A unique flat file stem: the path relative to the input folder, '/' -> '__' (a/001.png -> a__001)."""
    rel = path.relative_to(base) if path.is_relative_to(base) else Path(path.name)
    return "__".join(rel.with_suffix("").parts)


def parse_threshold(value: str) -> float | None:
    if str(value).lower() == "val":
        return None
    try:
        thr = float(value)
    except ValueError:
        thr = -1.0
    if not 0.0 <= thr <= 1.0:
        raise UserError(f"THRESHOLD={value!r}: use 'val' (the stored validation threshold) or a number in [0, 1]")
    return thr


def contour(mask: torch.Tensor) -> torch.Tensor:
    """Boundary pixels of a bool (H, W) mask: the mask minus its 3x3 erosion."""
    m = mask.float()[None, None]
    eroded = -F.max_pool2d(-m, 3, stride=1, padding=1)
    return (m - eroded)[0, 0] > 0


def overlay(image: torch.Tensor, prob: torch.Tensor, mask: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """(3,H,W) image + heat map weighted by the probability + the mask contour in cyan."""
    heat = heatmap(prob[None])
    weight = alpha * prob[None].clamp(0, 1)
    out = image * (1 - weight) + heat * weight
    edge = contour(mask)
    out[:, edge] = torch.tensor([0.0, 1.0, 1.0])[:, None]
    return out.clamp(0, 1)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_prediction(pred: Prediction, out: Path, stem: str, map_format: str) -> torch.Tensor:
    """Write map, mask and overlay of one image; returns the overlay (for the contact sheet)."""
    if map_format == "npy":
        buf = io.BytesIO()
        np.save(buf, pred.prob.numpy().astype(np.float32))
        atomic_write_bytes(out / "maps" / f"{stem}.npy", buf.getvalue())
    else:
        atomic_write_bytes(out / "maps" / f"{stem}.png", _png((pred.prob.numpy() * 65535.0 + 0.5).astype(np.uint16)))
    atomic_write_bytes(out / "masks" / f"{stem}.png", _png(pred.mask.numpy().astype(np.uint8) * 255))
    view = overlay(pred.image, pred.prob, pred.mask)
    atomic_write_bytes(out / "overlays" / f"{stem}.png",
                       _png((view.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)))
    return view


def _thumb(view: torch.Tensor, side: int = 128) -> torch.Tensor:
    """Letterboxed square thumbnail (white margins) so images of any size share one sheet."""
    _, h, w = view.shape
    s = side / max(h, w)
    small = F.interpolate(view[None], size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
                          align_corners=False, antialias=True)[0]
    canvas = torch.ones(3, side, side)
    top, left = (side - small.shape[1]) // 2, (side - small.shape[2]) // 2
    canvas[:, top:top + small.shape[1], left:left + small.shape[2]] = small
    return canvas


def write_table(rows: list[dict], out: Path) -> None:
    text = io.StringIO()
    fields = list(rows[0]) if rows else ["image"]
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "predictions.csv", text.getvalue())

TAKES_CONFIG = False  # --help lists no config keys: the checkpoint carries them


def main(args: list[str]) -> int:
    opts, rest = pop_options(args, OPTIONS)
    if rest:
        raise UserError(f"predict takes only {', '.join(f'{k}=' for k in OPTIONS)}; got {' '.join(rest)} "
                        "(see `fast-lightning predict --help`)")
    if not opts["ckpt"] or not opts["images"]:
        raise UserError("predict needs CKPT=<segmenter run, .ckpt or exported file> and IMAGES=<folder, glob or file>")
    if opts["map_format"] not in ("png", "npy"):
        raise UserError(f"map_format={opts['map_format']!r}: choose png or npy")
    threshold = parse_threshold(str(opts["threshold"]))
    files, base = find_images(str(opts["images"]))
    seg = load_segmenter(str(opts["ckpt"]), str(opts["device"]), trust=bool(opts["trust_checkpoint"]))
    out = Path(opts["out"] or Path("predictions") / str(seg.class_name or "model") / time.strftime("%Y%m%d-%H%M%S"))
    thr = seg.threshold if threshold is None else threshold
    source = seg.threshold_source if threshold is None else "THRESHOLD given on the command line"
    h, w = seg.working_size
    print(f"predict {len(files)} image(s) with {seg.source} at the working size {h}x{w} px on {seg.device}, "
          f"threshold {thr:.4f} ({source}) -> {out}", flush=True)
    names = [output_name(f, base) for f in files]
    rows, failures, top = [], [], []
    bar = progress(total=len(files), desc="predict", unit="img")
    for k, result in enumerate(seg.predict(files, int(opts["batch_size"]), threshold, keep_image=True, names=names)):
        if isinstance(result, Prediction):
            view = write_prediction(result, out, result.name, str(opts["map_format"]))
            rows.append(result.row())
            item = (result.score, -k, _thumb(view))
            if len(top) < int(opts["top"]):
                heapq.heappush(top, item)
            elif int(opts["top"]) > 0:
                heapq.heappushpop(top, item)
        else:
            failures.append({"image": result.name, "path": result.path, "error": result.error})
            print(f"skipped {result.path}: {result.error}", file=sys.stderr)
        bar.update(1)
    bar.close()
    if top:
        best = sorted(top, reverse=True)
        save_grid(torch.stack([t for _, _, t in best]), min(8, len(best)), out / "contact_sheet.png", scale=1)
    write_table(rows, out)
    atomic_write_json(out / "predictions.json", {
        "checkpoint": seg.source, "class_name": seg.class_name, "working_size": [h, w], "threshold": thr,
        "threshold_source": source, "images": rows, "skipped": failures})
    print(f"wrote {len(rows)} prediction(s) to {out} (predictions.csv, maps/, masks/, overlays/"
          f"{', contact_sheet.png' if top else ''}); {len(failures)} unreadable image(s) skipped")
    return 1 if failures and not rows else 0
