"""Windowed FAST synthesis with exact paste-back, the mask sampler shared by every synthesis path, and the
two FAST segmentation synthesizers (online ``fast`` and on-disk ``fast_cached``). Pure torch: no Lightning.

Why windows: a ``crop`` model was trained on square windows (``diffusion.crop.scale`` of the shorter image
side, grown to fit the defect) resized to the model resolution, so at synthesis time it must see the same
kind of window around the placed mask; everything outside the mask is copied from the source image with
``torch.where`` (never blended), so the background is bit-for-bit the source.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from fast_lightning.data.masks import FolderMaskSource, MaskSampler, PerlinMaskSource, RealMaskBank, resize_mask
from fast_lightning.data.windows import mask_bbox, place_window, window_side
from fast_lightning.hardware import autocast_dtype

__all__ = [
    "SynthesisError",
    "Window",
    "AnomalySynthesizer",
    "TypedMaskSampler",
    "build_mask_sampler",
    "resolve_diffusion_checkpoint",
    "check_checkpoint_compatible",
    "derive_generators",
    "FastSegSynthesizer",
    "CachedSegSynthesizer",
    "read_manifest",
]

GeneratorArg = torch.Generator | Sequence[torch.Generator]


class SynthesisError(ValueError):
    """A synthesis problem the user can fix (missing checkpoint, mismatched class, bad option)."""


# ---- resizing helpers ---------------------------------------------------------------------------------

def _resize_image(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B,C,h,w) [0,1] -> (B,C,H,W): bicubic, antialiased when shrinking, clamped to [0,1]."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    shrink = x.shape[-2] > hw[0] or x.shape[-1] > hw[1]
    out = F.interpolate(x.float(), size=tuple(hw), mode="bicubic", align_corners=False, antialias=shrink)
    return out.clamp_(0.0, 1.0)


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


def _cfg_get(cfg, *keys, default=None):
    node = cfg
    for k in keys:
        if node is None:
            return default
        try:
            node = node.get(k) if hasattr(node, "get") else getattr(node, k)
        except Exception:  # omegaconf struct / missing attribute
            return default
    return default if node is None else node


class AnomalySynthesizer:
    """FAST synthesis at full resolution for ``crop`` and ``full`` diffusion models.

    ``model``: FASTDiffusion (EMA weights), ``sampler``: any ``fast_lightning.sampling`` sampler,
    ``meta``: the dict of ``load_fast_diffusion`` (``window``, ``resolution``, ``config``). Per item the
    window is chosen from the mask (crop: ``window_side`` of the image centred on the mask bbox, no jitter:
    the training window rule, so the pixel scale matches training; full: the whole image), cropped and
    resized to the model resolution (image bicubic, mask with ``data.masks.resize_mask``),
    all windows of the batch go through ONE sampler call, and each generated window is resized back and
    pasted only inside the mask. Parts of a mask that fall outside its window (a mask wider than the
    image's shorter side) are left unchanged and dropped from the returned mask, so labels stay exact.

    ``autocast_dtype``: e.g. ``torch.bfloat16`` to run the sampler under autocast (Lightning's predict loop
    already autocasts for ``bf16-mixed``, so leave it None there).
    """

    def __init__(self, model, sampler, meta: Mapping, autocast_dtype: torch.dtype | None = None) -> None:
        window = str(meta.get("window", "full"))
        if window not in ("crop", "full"):
            raise SynthesisError(f"checkpoint window mode must be 'crop' or 'full', got {window!r}")
        self.model = model
        self.sampler = sampler
        self.meta = dict(meta)
        self.window = window
        self.resolution = int(meta.get("resolution") or _cfg_get(meta.get("config"), "diffusion", "resolution"))
        self.crop_scale = float(_cfg_get(meta.get("config"), "diffusion", "crop", "scale", default=0.35))
        self.autocast_dtype = autocast_dtype
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
        side = window_side(h, w, self.crop_scale, bbox, min_side=self.resolution)
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
            wins.append(_resize_image(img[None, :, ys, xs].float(), (R, R))[0].to(self.device))
            wmasks.append(resize_mask((m[None, :, ys, xs] > 0.5).float(), (R, R))[0].to(self.device))
        generated = self.run_windows(torch.stack(wins), torch.stack(wmasks), cond, generators)
        out_images, out_masks = [], []
        for i, (img, m, win) in enumerate(zip(images, masks, plans)):
            ys, xs = win.slices()
            back = _resize_image(generated[i:i + 1], (win.h, win.w))[0].to(img.device, img.dtype)
            canvas = img.clone()
            canvas[:, ys, xs] = back
            inside = torch.zeros_like(m, dtype=torch.bool)
            inside[:, ys, xs] = m[:, ys, xs] > 0.5
            out_images.append(torch.where(inside, canvas, img))
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
        wins = _resize_image(normals.float(), (R, R))
        wm = resize_mask((masks > 0.5).float(), (R, R))
        generated = self.run_windows(wins, wm, cond, generators)
        back = _resize_image(generated, (h, w)).to(normals.device, normals.dtype)
        inside = masks > 0.5
        return torch.where(inside, back, normals), inside.to(masks.dtype)


# ---- mask sources ------------------------------------------------------------------------------------

class _LabelledSource:
    """Wraps a mask source: every draw also returns (description, anomaly type id); a real generator-train
    mask carries its type (1..K), other sources 0 = no type attached."""

    def __init__(self, source, name: str, type_ids: Sequence[int] | None = None,
                 labels: Sequence[str] | None = None) -> None:
        self.source, self.name = source, name
        self.type_ids = list(type_ids) if type_ids is not None else None
        self.labels = list(labels) if labels is not None else None

    def sample_labelled(self, size, generator: torch.Generator, foreground: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, tuple[str, int]]:
        if hasattr(self.source, "sample_with_index"):
            mask, k = self.source.sample_with_index(size, generator, foreground)
            tid = self.type_ids[k] if self.type_ids else 0
            label = f"{self.name}:{self.labels[k]}" if self.labels else self.name
            return mask, (label, tid)
        return self.source.sample(size, generator, foreground), (self.name, 0)

    def sample(self, size, generator: torch.Generator, foreground: torch.Tensor | None = None) -> torch.Tensor:
        return self.sample_labelled(size, generator, foreground)[0]

    def __repr__(self) -> str:
        return f"{self.name}={self.source!r}"


def mask_shape_features(mask: torch.Tensor) -> tuple[float, float]:
    """(log area fraction, log elongation) of a (1,H,W) mask: scale-free shape statistics used by
    ``synthesis.perlin_type=nearest``. Elongation = sqrt(largest / smallest second moment), >= 1."""
    m = mask.reshape(mask.shape[-2], mask.shape[-1]) > 0.5
    h, w = m.shape
    yx = torch.nonzero(m).double()
    if yx.shape[0] == 0:
        return math.log(1e-6), 0.0
    area = yx.shape[0] / float(h * w)
    if yx.shape[0] < 2:
        return math.log(area), 0.0
    cov = torch.cov(yx.T) + torch.eye(2, dtype=torch.float64) / 12.0  # a pixel's own extent
    ev = torch.linalg.eigvalsh(cov)
    return math.log(area), 0.5 * math.log(float(ev[-1] / ev[0]))


PERLIN_TYPE_RULES = ("random", "nearest")


class TypedDraw(NamedTuple):
    mask: torch.Tensor
    type_id: int
    source: str
    type_rule: str  # mask (a real mask's own type) | random | fixed | nearest | none (class without types)


class TypedMaskSampler(MaskSampler):
    """``MaskSampler`` that also tells where the accepted mask came from and which anomaly type it gets.

    ``draw`` returns (mask, type id, description, type rule); ``sample_typed`` the first three. A real generator-train mask keeps its
    own defect type (rule ``mask``); a Perlin or folder mask gets one by ``synthesis.perlin_type``:
    ``random`` (uniform over the class's types), a fixed type name (``fixed``), or ``nearest`` (the type
    whose real masks are closest in log area fraction and log elongation, standardised). Type id 0 with
    rule ``none`` only when the class has no anomaly types. Plain ``sample`` keeps the MaskSampler
    contract, so the baselines can use the same object.
    """

    def __init__(self, sources: Sequence, type_names: Sequence[str] = (), perlin_type: str = "random",
                 type_features: Mapping[int, Sequence[tuple[float, float]]] | None = None, **kwargs) -> None:
        super().__init__(sources, **kwargs)
        self.type_names = list(type_names)
        rule = str(perlin_type)
        if rule not in PERLIN_TYPE_RULES and rule not in self.type_names:
            raise SynthesisError(f"synthesis.perlin_type={rule!r}: choose random, nearest or one of the class's "
                                 f"anomaly types {self.type_names}")
        self.perlin_type = rule
        self._centres = None
        if rule == "nearest" and self.type_names:
            feats = {int(k): list(v) for k, v in (type_features or {}).items() if len(v)}
            if not feats:
                raise SynthesisError("synthesis.perlin_type=nearest needs generator-train masks with types; this "
                                     "split has none: use synthesis.perlin_type=random")
            every = torch.tensor([f for v in feats.values() for f in v], dtype=torch.float64)
            self._scale = every.std(0, unbiased=False).clamp_min(0.1) if every.shape[0] > 1 else torch.ones(2,
                                                                                                    dtype=torch.float64)
            self._centres = {k: torch.tensor(v, dtype=torch.float64).mean(0) for k, v in feats.items()}

    def choose_type(self, mask: torch.Tensor, generator: torch.Generator) -> tuple[int, str]:
        """Type id and rule for a mask that carries no type of its own."""
        if not self.type_names:
            return 0, "none"
        if self.perlin_type == "random":
            return 1 + int(torch.randint(len(self.type_names), (), generator=generator,
                                         device=generator.device)), "random"
        if self.perlin_type == "nearest":
            f = torch.tensor(mask_shape_features(mask.cpu()), dtype=torch.float64)
            dist = {k: float((((f - c) / self._scale) ** 2).sum()) for k, c in self._centres.items()}
            return min(dist, key=lambda k: (dist[k], k)), "nearest"
        return 1 + self.type_names.index(self.perlin_type), "fixed"

    def draw(self, size, generator: torch.Generator, foreground: torch.Tensor | None = None) -> TypedDraw:
        """An accepted mask with its type id, source description and how the type was chosen."""
        mask, info = self.sample_info(size, generator, foreground)
        label, tid = info if info is not None else ("custom", 0)
        if int(tid) > 0:
            return TypedDraw(mask, int(tid), str(label), "mask")
        tid, rule = self.choose_type(mask, generator)
        return TypedDraw(mask, tid, str(label), rule)

    def sample_typed(self, size, generator: torch.Generator, foreground: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, int, str]:
        """(mask, type id, source description): ``draw`` without the type rule."""
        d = self.draw(size, generator, foreground)
        return d.mask, d.type_id, d.source


MASK_SOURCES = ("real", "perlin", "folder")


def build_mask_sampler(cfg, split, size: int | tuple[int, int] | None = None,
                       sources: Sequence[str] | None = None, weights: Sequence[float] | None = None
                       ) -> TypedMaskSampler:
    """The one place that turns ``cfg.synthesis.masks`` into a mask sampler (``make synthesize`` and the
    segmentation synthesizers both call it).

    - ``real``: the generator-train split's masks (``data.io.load_mask``), augmented by ``RealMaskBank``
      (flips, rot90, small rotation/scale) and placed on the foreground; each keeps its defect type.
    - ``perlin``: DRAEM-style Perlin masks.
    - ``folder``: a user folder of masks (``synthesis.masks.folder``), augmented like real masks.
    ``size``: masks are loaded at this size once (``data.io.load_mask``: the one resize rule, so no real
    mask vanishes; a mask that is empty in its file is left out with a warning naming it); None keeps the
    files' native size (full-resolution synthesis: ``make synthesize`` and online ``fast``). Masks without
    a type of their own get one by ``synthesis.perlin_type`` (see ``TypedMaskSampler``). ``sources``/``weights`` override the config
    (e.g. a Perlin-only sampler for the DRAEM baseline). Empty, whole-foreground and out-of-range masks
    are rejected by MaskSampler (``min_area``/``max_area`` of the image).
    """
    from fast_lightning.data.io import load_mask

    mc = cfg.synthesis.masks
    names = [str(s) for s in (sources if sources is not None else mc.sources)]
    if weights is None:
        weights = list(mc.weights) if sources is None else [1.0] * len(names)
    weights = [float(w) for w in weights]
    if not names:
        raise SynthesisError("synthesis.masks.sources is empty; choose from real, perlin, folder")
    if len(weights) != len(names):
        raise SynthesisError(f"synthesis.masks.weights has {len(weights)} entries for {len(names)} sources "
                             f"{names}; give one weight per source")
    unknown = [s for s in names if s not in MASK_SOURCES]
    if unknown:
        raise SynthesisError(f"unknown mask source(s) {unknown} in synthesis.masks.sources; choose from "
                             f"{', '.join(MASK_SOURCES)}")
    bank_kw = dict(scale_range=tuple(float(v) for v in _cfg_get(mc, "real_scale_range", default=(0.5, 1.5))),
                   max_angle=float(_cfg_get(mc, "real_max_angle", default=15.0)))
    perlin_type = str(_cfg_get(cfg, "synthesis", "perlin_type", default="random"))
    real_masks: list[tuple] | None = None

    def load_real() -> list[tuple]:
        """(record, mask) of every usable generator-train mask; an empty one is reported once, by name."""
        nonlocal real_masks
        if real_masks is None:
            real_masks = []
            for r in (r for r in split.generator_train if r.mask):
                m = load_mask(r.mask, size)
                if bool((m > 0.5).any()):
                    real_masks.append((r, m))
                else:
                    warnings.warn(f"generator-train mask {r.mask} is empty (all black) and is left out of the "
                                  f"real mask bank", RuntimeWarning, stacklevel=3)
        return real_masks

    pairs = []
    for name, weight in zip(names, weights):
        if weight <= 0:
            continue
        if name == "real":
            if not any(r.mask for r in split.generator_train):
                raise SynthesisError("mask source 'real' needs generator-train defect masks, but the split has none; "
                                     "use synthesis.masks.sources=[perlin]")
            kept = load_real()
            if not kept:
                raise SynthesisError("every generator-train mask is empty; use synthesis.masks.sources=[perlin]")
            bank = RealMaskBank([m for _, m in kept], **bank_kw)
            src = _LabelledSource(bank, "real", [split.type_id(r.label) for r, _ in kept],
                                  [f"{r.label}/{Path(r.mask).name}" for r, _ in kept])
        elif name == "perlin":
            scales = tuple(int(v) for v in _cfg_get(mc, "perlin_scale_range", default=(0, 6)))
            src = _LabelledSource(PerlinMaskSource(scale_range=scales,
                                                   threshold=float(_cfg_get(mc, "perlin_threshold", default=0.5))),
                                  "perlin")
        else:
            folder = _cfg_get(mc, "folder")
            if not folder:
                raise SynthesisError("mask source 'folder' needs synthesis.masks.folder=<folder of mask images>")
            try:
                fsrc = FolderMaskSource(folder, size=size, **bank_kw)
            except (FileNotFoundError, ValueError) as exc:
                raise SynthesisError(f"synthesis.masks.folder: {exc}") from exc
            src = _LabelledSource(fsrc, "folder", None, [Path(folder).name] * len(fsrc))
        pairs.append((src, weight))
    if not pairs:
        raise SynthesisError(f"synthesis.masks.weights {weights} leave no mask source with a positive weight")
    features: dict[int, list] = {}
    if perlin_type == "nearest":
        for r, m in load_real():
            features.setdefault(split.type_id(r.label), []).append(mask_shape_features(m))
    return TypedMaskSampler(pairs, type_names=list(split.types), perlin_type=perlin_type, type_features=features,
                            min_area=float(mc.min_area), max_area=float(mc.max_area),
                            max_tries=int(_cfg_get(mc, "max_tries", default=50)))


# ---- checkpoints --------------------------------------------------------------------------------------

def resolve_diffusion_checkpoint(cfg) -> Path:
    """``synthesis.ckpt`` (file, run dir or ``latest`` link) or runs/diffusion/<class>/latest."""
    given = _cfg_get(cfg, "synthesis", "ckpt")
    path = Path(str(given)) if given else Path(str(cfg.run_root)) / "diffusion" / str(cfg.class_name) / "latest"
    real = Path(os.path.realpath(path))
    target = real / "checkpoints" / "last.ckpt" if real.is_dir() else real
    if not target.is_file():
        if given:
            raise SynthesisError(f"diffusion checkpoint not found: {given} (looked for {target}); pass CKPT=<.ckpt "
                                 f"file or diffusion run dir>")
        raise SynthesisError(f"no diffusion checkpoint for class {cfg.class_name!r}: {path} does not exist. Run "
                             f"`make train-diffusion CLASS={cfg.class_name}` first (same DATA and PROFILE), or pass "
                             f"CKPT=<checkpoint or run dir>")
    return Path(os.path.realpath(target))


def check_checkpoint_compatible(meta: Mapping, cfg, type_names: Sequence[str] | None = None) -> None:
    """Class, channels, model resolution and anomaly types of a diffusion checkpoint vs the current config."""
    where = meta.get("path", "the checkpoint")
    problems = []
    if cfg.class_name is not None and meta.get("class_name") != cfg.class_name:
        problems.append(f"it was trained for class {meta.get('class_name')!r} but CLASS={cfg.class_name!r}")
    if meta.get("channels") is not None and int(meta["channels"]) != int(cfg.data.channels):
        problems.append(f"it has {meta['channels']} image channels but data.channels={cfg.data.channels}")
    if meta.get("resolution") is not None and int(meta["resolution"]) != int(cfg.diffusion.resolution):
        problems.append(f"its resolution is {meta['resolution']} px but diffusion.resolution="
                        f"{cfg.diffusion.resolution} (use the PROFILE it was trained with, or "
                        f"diffusion.resolution={meta['resolution']})")
    if type_names is not None and list(meta.get("type_names", [])) != list(type_names):
        problems.append(f"its anomaly types {list(meta.get('type_names', []))} differ from the data's "
                        f"{list(type_names)}")
    if problems:
        raise SynthesisError(f"incompatible diffusion checkpoint {where}: " + "; ".join(problems))


# ---- segmentation synthesizers -------------------------------------------------------------------------

def derive_generators(generator: GeneratorArg, n: int) -> list[torch.Generator]:
    """n independent CPU generators: a list of n is used as is, one generator seeds n new ones."""
    if not isinstance(generator, torch.Generator):
        gens = list(generator)
        if len(gens) == n:
            return gens
        generator = gens[0]
    seeds = torch.randint(0, 2**62, (n,), generator=generator, device=generator.device).tolist()
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def _first_generator(generator: GeneratorArg) -> torch.Generator:
    return generator if isinstance(generator, torch.Generator) else list(generator)[0]


class FastSegSynthesizer:
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
    step, so pairs are kept in a ring buffer on the device. Each call synthesizes only ``refresh`` new pairs
    (from the current normals, replacing the oldest) and returns a random draw of B pairs from the pool.
    Trade-off: a pair is returned about B / refresh times on average, so ``refresh`` < B makes steps
    cheaper at the cost of reusing pairs (less diversity per step); ``refresh = B`` (or ``buffer_size=0``)
    gives fresh pairs at every step. The first calls fill the pool to at least B pairs.
    """

    native_input = True  # the DataModule passes ``records`` and ``hflip``

    def __init__(self, checkpoint, cfg, mask_sampler: MaskSampler, buffer_size: int = 0,
                 refresh: int | None = None, sampler=None, type_names: Sequence[str] | None = None,
                 normals: Sequence[str] | None = None) -> None:
        from fast_lightning.sampling import build_sampler

        if isinstance(checkpoint, tuple):
            model, meta = checkpoint
        else:
            from fast_lightning.diffusion.module import load_fast_diffusion

            model, meta = load_fast_diffusion(checkpoint)
            check_checkpoint_compatible(meta, cfg, type_names)
        model = model.eval().requires_grad_(False)
        sampler = sampler if sampler is not None else build_sampler(cfg.sampling)
        amp = autocast_dtype(str(_cfg_get(cfg, "trainer", "precision", default="32-true")))
        self.synth = AnomalySynthesizer(model, sampler, meta, autocast_dtype=amp)
        self.mask_sampler = mask_sampler
        self.num_types = len(self.synth.type_names)
        self.buffer_size = max(0, int(buffer_size or 0))
        self.refresh = None if not refresh else int(refresh)
        self.normals = list(normals) if normals is not None else None
        self.channels = int(_cfg_get(cfg, "data", "channels", default=3))
        self.foreground_mode = str(_cfg_get(cfg, "data", "foreground", default="auto"))
        self.foreground_dir = _cfg_get(cfg, "data", "foreground_dir", default=None) or None
        self._cache = None  # data.datasets.NativeCache: decoded full-resolution normals (uint8)
        self._foregrounds: dict[int, torch.Tensor] = {}
        self._pool_images: torch.Tensor | None = None
        self._pool_masks: torch.Tensor | None = None
        self._pool_types: torch.Tensor | None = None
        self.last_types = torch.zeros(0, dtype=torch.long)
        self._filled = 0
        self._next = 0

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
        out_images = torch.stack([_resize_image(x[None], hw)[0] for x in out_images])
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
            self._filled, self._next = 0, 0
        n_new = min(size, max(self.refresh, b - self._filled))
        src = torch.arange(n_new, device=normals.device) % b  # cycle the batch's normals when filling
        fg = None if foreground is None else foreground[src]
        rec = None if records is None else records.reshape(-1)[src.cpu()]
        flip = None if hflip is None else hflip.reshape(-1)[src.cpu()]
        images, masks, types = self.fresh(normals[src], fg, derive_generators(generator, n_new), rec, flip)
        slots = (self._next + torch.arange(n_new, device=normals.device)) % size
        self._pool_images[slots] = images
        self._pool_masks[slots] = masks
        self._pool_types[slots.cpu()] = types
        self._next = (self._next + n_new) % size
        self._filled = min(size, self._filled + n_new)
        g = _first_generator(generator)
        pick = torch.randperm(self._filled, generator=g, device=g.device)[:b].to(normals.device)
        self.last_types = self._pool_types[pick.cpu()].clone()
        return self._pool_images[pick].clone(), self._pool_masks[pick].clone()


def read_manifest(folder: str | Path) -> list[dict]:
    """Lines of ``<folder>/manifest.jsonl`` (a `make synthesize` run), sorted by index; broken lines skipped."""
    path = Path(folder) / "manifest.jsonl"
    if not path.is_file():
        raise SynthesisError(f"no manifest.jsonl in {folder}: pass a folder written by `make synthesize` "
                             f"(runs/synthetic/<class>/<run-id> or .../latest)")
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[int(row["index"])] = row
    return [rows[k] for k in sorted(rows)]


class CachedSegSynthesizer:
    """Pairs written by `make synthesize` (``synth=fast_cached``), resized to the working resolution and
    returned as random draws. The normals passed in are ignored: the cached pairs replace them (their
    backgrounds are other normal train images). Loaded once on CPU, moved to the batch's device once.
    """

    def __init__(self, folder: str | Path, resolution: int | tuple[int, int], channels: int = 3) -> None:
        from fast_lightning.data.io import load_image, load_mask

        hw = (int(resolution), int(resolution)) if isinstance(resolution, int) else tuple(int(v) for v in resolution)

        folder = Path(os.path.realpath(folder))
        rows = read_manifest(folder)
        images, masks = [], []
        for row in rows:
            img_p, mask_p = folder / row["image"], folder / row["mask"]
            if not (img_p.is_file() and mask_p.is_file()):
                continue
            m = resize_mask(load_mask(mask_p)[None], hw)[0]
            if not bool(m.any()):
                continue
            images.append(load_image(img_p, hw, channels))
            masks.append(m)
        if not images:
            raise SynthesisError(f"{folder} holds no complete (image, mask) pairs; run `make synthesize` first")
        self.folder = folder
        self.images = torch.stack(images)
        self.masks = torch.stack(masks)
        self._device_cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __call__(self, normals: torch.Tensor, foreground: torch.Tensor | None,
                 generator: GeneratorArg) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = normals.shape
        if self.images.shape[1] != c:
            raise ValueError(f"cached images have {self.images.shape[1]} channels, the batch has {c}")
        key = (str(normals.device), h, w)
        if self._device_cache is None or self._device_cache[0] != key:
            imgs = _resize_image(self.images, (h, w))
            msks = resize_mask(self.masks, (h, w))
            self._device_cache = (key, imgs.to(normals.device), msks.to(normals.device))
        _, imgs, msks = self._device_cache
        g = _first_generator(generator)
        idx = torch.randint(imgs.shape[0], (b,), generator=g, device=g.device).to(normals.device)
        return imgs[idx].to(normals.dtype), msks[idx].to(normals.dtype)
