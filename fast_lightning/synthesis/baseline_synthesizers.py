"""Baseline segmentation synthesizers (DRAEM-style, CutPaste), one batched interface (real labels: ``real``).

``synth(normals [0,1] (B,C,H,W), foreground (B,1,H,W) | None, generator) -> (images [0,1], masks {0,1})``
runs on the tensors' device (the DataModule calls it after the batch reached the training device).
``generator`` is one ``torch.Generator`` for the batch or a list with one per sample; random numbers are
drawn on the generator's device, so a CPU generator reproduces the same batch on any device.

Guarantees (tested): every mask is non-empty and inside the foreground (an empty foreground is treated
as the whole image, with a warning), and every pixel outside the mask equals the input bit for bit
(outputs are composed with ``torch.where``, never by arithmetic blending outside the mask).

Written from the papers' descriptions (FAST_method.md section 7), not from the authors' code.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fast_lightning.synthesis.base_synthesizer import GeneratorArg, SegSynthesizer
from fast_lightning.synthesis.base_synthesizer import batch_generators as _generators
from fast_lightning.synthesis.base_synthesizer import randint as _ri
from fast_lightning.synthesis.base_synthesizer import uniform as _u
from fast_lightning.synthesis.mask_sources import PerlinMaskSource, perlin_noise
from fast_lightning.synthesis.mask_sampler import MaskSampler

__all__ = ["DraemSynthesizer", "CutPasteSynthesizer", "color_jitter", "procedural_texture"]

# ---- helpers ---------------------------------------------------------------------------------------------

def _rand(g: torch.Generator, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=g, device=g.device).to(device)


def _randn(g: torch.Generator, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=g, device=g.device).to(device)


def _check_batch(normals: torch.Tensor, foreground: torch.Tensor | None) -> torch.Tensor:
    """Validate shapes and return a bool (B,1,H,W) foreground where empty ones become the whole image."""
    if normals.ndim != 4:
        raise ValueError(f"normals must be (B, C, H, W), got {tuple(normals.shape)}")
    b, _, h, w = normals.shape
    if foreground is None:
        return torch.ones(b, 1, h, w, dtype=torch.bool, device=normals.device)
    if tuple(foreground.shape) != (b, 1, h, w):
        raise ValueError(f"foreground must be ({b}, 1, {h}, {w}), got {tuple(foreground.shape)}")
    fg = (foreground > 0.5).to(normals.device)
    empty = ~fg.flatten(1).any(1)
    if bool(empty.any()):
        warnings.warn(f"{int(empty.sum())} sample(s) have an empty foreground; using the whole image for them",
                      RuntimeWarning, stacklevel=3)
        fg = fg | empty.view(b, 1, 1, 1)
    return fg


def _random_fg_pixel(fg: torch.Tensor, g: torch.Generator) -> tuple[int, int]:
    idx = torch.nonzero(fg.reshape(fg.shape[-2], fg.shape[-1]), as_tuple=False)
    k = _ri(g, 0, idx.shape[0])
    return int(idx[k, 0]), int(idx[k, 1])


def _to_gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-3] == 3:
        r, gch, b = x.unbind(-3)
        return (0.299 * r + 0.587 * gch + 0.114 * b).unsqueeze(-3)
    return x.mean(-3, keepdim=True)


def color_jitter(x: torch.Tensor, g: torch.Generator, brightness: float = 0.2, contrast: float = 0.2,
                 saturation: float = 0.2, channel_shift: float = 0.05) -> torch.Tensor:
    """Random brightness, contrast, saturation (RGB) and per-channel shift of a (C,h,w) image, clamped to [0,1]."""
    c = x.shape[0]
    y = x * _u(g, 1 - brightness, 1 + brightness)
    mean = y.mean()
    y = mean + (y - mean) * _u(g, 1 - contrast, 1 + contrast)
    if c == 3 and saturation:
        gray = _to_gray(y)
        y = gray + (y - gray) * _u(g, 1 - saturation, 1 + saturation)
    if channel_shift:
        y = y + (_rand(g, (c, 1, 1), x.device) * 2 - 1) * channel_shift
    return y.clamp(0, 1)


def _random_geometry(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random h/v flip and 90-degree rotation (square images) of (C,h,w)."""
    if _u(g) < 0.5:
        x = x.flip(-1)
    if _u(g) < 0.5:
        x = x.flip(-2)
    if x.shape[-1] == x.shape[-2]:
        x = torch.rot90(x, _ri(g, 0, 4), dims=(-2, -1))
    return x


def _random_resized_crop(x: torch.Tensor, g: torch.Generator, out_hw: tuple[int, int],
                         area: tuple[float, float] = (0.2, 1.0)) -> torch.Tensor:
    """Crop a random region covering ``area`` of (C,h,w) and resize it to out_hw (bilinear)."""
    _, h, w = x.shape
    a = _u(g, *area)
    ch = max(1, min(h, int(round(h * math.sqrt(a)))))
    cw = max(1, min(w, int(round(w * math.sqrt(a)))))
    y0, x0 = _ri(g, 0, h - ch + 1), _ri(g, 0, w - cw + 1)
    crop = x[:, y0:y0 + ch, x0:x0 + cw]
    return F.interpolate(crop[None], size=out_hw, mode="bilinear", align_corners=False)[0].clamp(0, 1)


def procedural_texture(channels: int, size: tuple[int, int], g: torch.Generator,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """A random (C,H,W) texture in [0,1]: two random colours mixed by fractal Perlin noise, plus grain and,
    sometimes, stripes. Stands in for DTD, which cannot be downloaded here."""
    h, w = size
    device = torch.device(device)
    base = 2 ** _ri(g, 1, 5)
    field = torch.zeros(h, w, device=g.device)
    amp, total = 1.0, 0.0
    for octave in range(4):
        res = base * 2 ** octave
        field += amp * perlin_noise((h, w), (res, res), g, angle=_u(g, 0, math.pi))
        total += amp
        amp *= 0.5
    field = (field / total).to(device)
    field = (field - field.min()) / (field.max() - field.min() + 1e-8)
    c1 = _rand(g, (channels, 1, 1), device)
    c2 = _rand(g, (channels, 1, 1), device)
    tex = c1 + (c2 - c1) * field[None]
    if _u(g) < 0.3:
        period = _u(g, 4.0, max(5.0, h / 4))
        theta = _u(g, 0, math.pi)
        yy, xx = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                                torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
        stripes = torch.sin((math.cos(theta) * yy + math.sin(theta) * xx) * (2 * math.pi / period))
        tex = tex + 0.15 * stripes[None]
    tex = tex + _u(g, 0.0, 0.08) * _randn(g, (channels, h, w), device)
    return tex.clamp(0, 1)


# ---- DRAEM ----------------------------------------------------------------------------------------------

class DraemSynthesizer(SegSynthesizer):
    """DRAEM-style: a Perlin (or any) mask M, a texture T and x' = (1-M) x + (1-beta) M T + beta M x.

    texture_source:
      - "dataset": T is another image of the same batch (or of ``texture_bank`` (N,C,h,w), e.g. normal train
        images) with random flips/rot90, colour jitter and a random resized crop;
      - "procedural": T is a random Perlin/colour-noise texture (``procedural_texture``).
    The original uses DTD textures; DTD cannot be downloaded here, so these are the offline substitutes.
    beta ~ U(beta_range) per sample (DRAEM: [0.1, 1)); beta near 1 gives a faint defect.
    """

    def __init__(self, mask_sampler: MaskSampler | None = None, texture_source: str = "dataset",
                 beta_range: tuple[float, float] = (0.1, 1.0), texture_bank: torch.Tensor | None = None) -> None:
        if texture_source not in ("dataset", "procedural"):
            raise ValueError(f"texture_source must be 'dataset' or 'procedural', got {texture_source!r}")
        if not 0.0 <= beta_range[0] <= beta_range[1] <= 1.0:
            raise ValueError(f"beta_range must satisfy 0 <= lo <= hi <= 1, got {beta_range}")
        if texture_bank is not None and (texture_bank.ndim != 4 or texture_bank.shape[0] == 0):
            raise ValueError(f"texture_bank must be a non-empty (N, C, H, W) tensor, got {tuple(texture_bank.shape)}")
        self.mask_sampler = mask_sampler if mask_sampler is not None else MaskSampler([(PerlinMaskSource(), 1.0)])
        self.texture_source = texture_source
        self.beta_range = (float(beta_range[0]), float(beta_range[1]))
        self.texture_bank = texture_bank.detach().cpu() if texture_bank is not None else None

    def _texture(self, normals: torch.Tensor, i: int, g: torch.Generator) -> torch.Tensor:
        b, c, h, w = normals.shape
        if self.texture_source == "procedural":
            return procedural_texture(c, (h, w), g, normals.device)
        if self.texture_bank is not None:
            src = self.texture_bank[_ri(g, 0, self.texture_bank.shape[0])].to(normals.device, normals.dtype)
            if src.shape[0] != c:
                raise ValueError(f"texture_bank has {src.shape[0]} channels, images have {c}")
        else:
            j = i if b == 1 else (i + _ri(g, 1, b)) % b  # another image of the batch
            src = normals[j]
        src = _random_geometry(src, g)
        src = color_jitter(src, g, brightness=0.3, contrast=0.3, saturation=0.3, channel_shift=0.1)
        return _random_resized_crop(src, g, (h, w))

    def __call__(self, normals: torch.Tensor, foreground: torch.Tensor | None,
                 generator: GeneratorArg) -> tuple[torch.Tensor, torch.Tensor]:
        fg = _check_batch(normals, foreground)
        b, _, h, w = normals.shape
        gens = _generators(generator, b)
        masks = self.mask_sampler.sample_batch(b, (h, w), gens, fg.float()).to(normals.device)
        out = torch.empty_like(normals)
        for i in range(b):
            g = gens[i]
            tex = self._texture(normals, i, g).to(normals.dtype)
            beta = _u(g, *self.beta_range)
            blended = ((1 - beta) * tex + beta * normals[i]).clamp(0, 1)
            out[i] = torch.where(masks[i].bool(), blended, normals[i])
        return out, masks.to(normals.dtype)


# ---- CutPaste -------------------------------------------------------------------------------------------

class CutPasteSynthesizer(SegSynthesizer):
    """CutPaste: cut a region of the same image, colour-jitter it and paste it onto the foreground.

    - "patch": rectangle covering ``area_range`` of the image with aspect ratio (h/w) log-uniform in
      ``aspect_range``, cut centred on a random foreground pixel (so its content is the object, not the
      background) and pasted centred on another random foreground pixel (both kept inside the image).
    - "scar": thin rectangle, width U(scar_width_range) px at ``reference_size`` (scaled to the resolution,
      at least 1 px), length U(scar_length_range) x min(H, W), randomly rotated, bilinearly resampled from
      around a random foreground pixel.
    - "both": each sample picks one of the two at random.
    The mask is the pasted region AND the foreground; pixels outside it are untouched.
    """

    def __init__(self, variant: str = "patch", area_range: tuple[float, float] = (0.02, 0.15),
                 aspect_range: tuple[float, float] = (0.3, 3.3), scar_width_range: tuple[float, float] = (2, 16),
                 scar_length_range: tuple[float, float] = (0.10, 0.25), reference_size: int = 256,
                 jitter: float = 0.1) -> None:
        if variant not in ("patch", "scar", "both"):
            raise ValueError(f"variant must be 'patch', 'scar' or 'both', got {variant!r}")
        if not 0 < area_range[0] <= area_range[1] <= 1:
            raise ValueError(f"area_range must satisfy 0 < lo <= hi <= 1, got {area_range}")
        if not 0 < aspect_range[0] <= aspect_range[1]:
            raise ValueError(f"aspect_range must satisfy 0 < lo <= hi, got {aspect_range}")
        self.variant = variant
        self.area_range = (float(area_range[0]), float(area_range[1]))
        self.aspect_range = (float(aspect_range[0]), float(aspect_range[1]))
        self.scar_width_range = (float(scar_width_range[0]), float(scar_width_range[1]))
        self.scar_length_range = (float(scar_length_range[0]), float(scar_length_range[1]))
        self.reference_size = int(reference_size)
        self.jitter = float(jitter)

    def _jitter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        j = self.jitter
        return color_jitter(x, g, brightness=j, contrast=j, saturation=j, channel_shift=j / 2)

    def _patch(self, x: torch.Tensor, fg: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        _, h, w = x.shape
        area = _u(g, *self.area_range) * h * w
        aspect = math.exp(_u(g, math.log(self.aspect_range[0]), math.log(self.aspect_range[1])))
        ph = max(1, min(h, int(round(math.sqrt(area * aspect)))))
        pw = max(1, min(w, int(round(math.sqrt(area / aspect)))))
        cy, cx = _random_fg_pixel(fg, g)  # source on the object too
        sy, sx = min(max(cy - ph // 2, 0), h - ph), min(max(cx - pw // 2, 0), w - pw)
        patch = self._jitter(x[:, sy:sy + ph, sx:sx + pw], g)
        ty, tx = _random_fg_pixel(fg, g)
        y0 = min(max(ty - ph // 2, 0), h - ph)  # clamping keeps (ty, tx) inside the rectangle
        x0 = min(max(tx - pw // 2, 0), w - pw)
        mask = torch.zeros(1, h, w, dtype=torch.bool, device=x.device)
        mask[:, y0:y0 + ph, x0:x0 + pw] = True
        mask &= fg
        pasted = x.clone()
        pasted[:, y0:y0 + ph, x0:x0 + pw] = patch
        return torch.where(mask, pasted, x), mask

    def _scar(self, x: torch.Tensor, fg: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        _, h, w = x.shape
        side = min(h, w)
        width = max(1.0, _u(g, *self.scar_width_range) * side / self.reference_size)
        length = max(width, _u(g, *self.scar_length_range) * side)
        theta = _u(g, 0.0, math.pi)
        ty, tx = _random_fg_pixel(fg, g)
        # source centre: a random foreground pixel (the content is the object), kept where the unrotated scar
        # fits as far as the image allows
        cy, cx = _random_fg_pixel(fg, g)
        sy = min(max(float(cy), min(length / 2, h / 2)), max(h - length / 2, h / 2))
        sx = min(max(float(cx), min(width / 2, w / 2)), max(w - width / 2, w / 2))
        yy, xx = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float32),
                                torch.arange(w, device=x.device, dtype=torch.float32), indexing="ij")
        dy, dx = yy - ty, xx - tx
        c, s = math.cos(theta), math.sin(theta)
        along = c * dy + s * dx
        across = -s * dy + c * dx
        mask = ((along.abs() <= length / 2) & (across.abs() <= width / 2))[None] & fg  # contains (ty, tx)
        src_y, src_x = sy + along, sx + across
        grid = torch.stack([(2 * src_x + 1) / w - 1, (2 * src_y + 1) / h - 1], dim=-1)[None]
        content = F.grid_sample(x[None].float(), grid, mode="bilinear", padding_mode="border",
                                align_corners=False)[0].to(x.dtype)
        content = self._jitter(content, g)
        return torch.where(mask, content, x), mask

    def __call__(self, normals: torch.Tensor, foreground: torch.Tensor | None,
                 generator: GeneratorArg) -> tuple[torch.Tensor, torch.Tensor]:
        fg = _check_batch(normals, foreground)
        b = normals.shape[0]
        gens = _generators(generator, b)
        images, masks = [], []
        for i in range(b):
            g = gens[i]
            kind = self.variant if self.variant != "both" else ("patch" if _u(g) < 0.5 else "scar")
            fn = self._patch if kind == "patch" else self._scar
            img, m = fn(normals[i], fg[i], g)
            images.append(img)
            masks.append(m)
        return torch.stack(images), torch.stack(masks).to(normals.dtype)


# ---- builders (synthesis.registry) ----------------------------------------------------------------------

def build_draem(cfg, datamodule) -> DraemSynthesizer:
    """``synth=draem``: masks from the configured sources (``synthesis.draem_masks=configured``) or Perlin only."""
    from fast_lightning.synthesis.mask_sampler import build_mask_sampler

    syn, split, size = cfg.synthesis, datamodule.split, datamodule.working_size
    masks = (build_mask_sampler(cfg, split, size) if str(syn.draem_masks) == "configured"
             else build_mask_sampler(cfg, split, size, sources=["perlin"]))
    return DraemSynthesizer(mask_sampler=masks, texture_source=str(syn.draem_texture))


def build_cutpaste(cfg, datamodule) -> CutPasteSynthesizer:
    """``synth=cutpaste``."""
    return CutPasteSynthesizer(variant=str(cfg.synthesis.cutpaste_variant))
