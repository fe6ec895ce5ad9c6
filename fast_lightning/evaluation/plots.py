"""Image grids and figures written next to runs and reports (PNG, atomic): ``save_grid``, ``save_figure``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from fast_lightning.data.io import save_png, to_uint8 as quantise
from fast_lightning.runs import atomic_write_bytes


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(C,H,W) [0,1] -> HxWx3 uint8 (``data.io.to_uint8``: the one quantisation)."""
    arr = img.detach().float().cpu()
    if arr.shape[0] == 1:
        arr = arr.expand(3, -1, -1)
    return quantise(arr).permute(1, 2, 0).numpy()


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """A matplotlib figure -> PNG bytes -> atomic write; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def save_grid(images: torch.Tensor, ncols: int, path: str | Path, row_titles: Sequence[str] | None = None,
              scale: int | None = None, pad: int = 2) -> Path:
    """Tile (N,C,H,W) row-major with ``ncols`` per row; optional titles in a left margin."""
    n, _, h, w = images.shape
    scale = scale or max(1, 96 // max(h, 1))
    rows = (n + ncols - 1) // ncols
    margin = 110 if row_titles else 0
    H, W = h * scale, w * scale
    canvas = Image.new("RGB", (margin + ncols * (W + pad) + pad, rows * (H + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, ncols)
        tile = Image.fromarray(to_uint8(images[i])).resize((W, H), Image.NEAREST)
        canvas.paste(tile, (margin + pad + c * (W + pad), pad + r * (H + pad)))
    for r, title in enumerate(row_titles or []):
        draw.text((4, pad + r * (H + pad) + H // 2 - 6), str(title), fill=(0, 0, 0))
    return save_png(canvas, path)
