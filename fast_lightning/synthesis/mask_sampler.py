"""Mask sampling for synthesis: ``MaskSampler`` mixes weighted mask sources (``synthesis.mask_sources``)
and rejects unusable draws; ``TypedMaskSampler`` also attaches an anomaly type to each mask; and
``build_mask_sampler`` is the one place that turns ``cfg.synthesis.masks`` into such a sampler.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, Union

import torch

from fast_lightning.data.mask_resize import Size, as_hw
from fast_lightning.schema import MasksConfig
from fast_lightning.synthesis.base_synthesizer import SynthesisError, uniform as _uniform
from fast_lightning.synthesis.mask_sources import (
    FolderMaskSource,
    MaskSource,
    PerlinMaskSource,
    RealMaskBank,
    _out_device,
    _prepare_foreground,
)

__all__ = ["MaskSampler", "TypedDraw", "TypedMaskSampler", "MASK_SOURCES", "build_mask_sampler",
           "mask_shape_features"]

# ---- sampler ---------------------------------------------------------------------------------------------

SourceLike = Union[MaskSource, Callable[..., torch.Tensor]]


class MaskSampler:
    """Draws masks from weighted sources and rejects unusable ones.

    A draw is rejected when it is empty, covers the whole foreground (nothing normal left), or its area
    (fraction of all H*W pixels) is outside [min_area, max_area], unless its source keeps its own area
    limits (a ``RealMaskBank`` with ``area_range``: real defect sizes, see there). After ``max_tries`` rejections a
    RuntimeError explains which limits failed and what to change.
    """

    def __init__(self, sources: Sequence, min_area: float = MasksConfig.min_area, max_area: float = MasksConfig.max_area,
                 max_tries: int = MasksConfig.max_tries) -> None:
        pairs: list[tuple[SourceLike, float]] = []
        for item in sources:
            src, weight = item if isinstance(item, tuple) else (item, 1.0)
            if not (hasattr(src, "sample") or callable(src)):
                raise ValueError(f"mask source {src!r} has no sample(size, generator, foreground) method")
            if float(weight) < 0:
                raise ValueError(f"mask source weight must be >= 0, got {weight}")
            pairs.append((src, float(weight)))
        if not pairs or sum(w for _, w in pairs) <= 0:
            raise ValueError("MaskSampler needs at least one mask source with a positive weight")
        if not 0.0 <= min_area <= max_area <= 1.0:
            raise ValueError(f"need 0 <= min_area <= max_area <= 1, got min_area={min_area}, max_area={max_area}")
        self.sources = pairs
        self.min_area, self.max_area, self.max_tries = float(min_area), float(max_area), max(1, int(max_tries))
        self._weights = torch.tensor([w for _, w in pairs], dtype=torch.float64)

    def _draw(self, size: tuple[int, int], generator: torch.Generator, foreground: torch.Tensor | None):
        """(mask, info, whether the source keeps its own area limits): ``info`` is what a source's
        ``sample_labelled`` returns beside the mask (None else)."""
        k = 0
        if len(self.sources) > 1:
            u = _uniform(generator, 0.0, 1.0) * float(self._weights.sum())
            k = int(torch.searchsorted(torch.cumsum(self._weights, 0), torch.tensor(u, dtype=torch.float64), right=True))
            k = min(k, len(self.sources) - 1)
        src = self.sources[k][0]
        own_area = _keeps_own_area(src)
        if hasattr(src, "sample_labelled"):
            return (*src.sample_labelled(size, generator, foreground), own_area)
        fn = src.sample if hasattr(src, "sample") else src
        return fn(size, generator, foreground), None, own_area

    def sample(self, size: Size, generator: torch.Generator, foreground: torch.Tensor | None = None) -> torch.Tensor:
        """(1, H, W) float {0,1} on the foreground's device (CPU without foreground)."""
        return self.sample_info(size, generator, foreground)[0]

    def sample_info(self, size: Size, generator: torch.Generator, foreground: torch.Tensor | None = None):
        """(mask, info) of the accepted draw; ``info`` comes from the source's ``sample_labelled`` (e.g. its
        anomaly type), None for plain sources."""
        h, w = as_hw(size)
        fg = _prepare_foreground(foreground, h, w)
        fg_float = fg.float() if fg is not None else None
        fg_area = float(fg.sum()) if fg is not None else float(h * w)
        areas: list[float] = []
        reasons: set[str] = set()
        for _ in range(self.max_tries):
            mask, info, own_area = self._draw((h, w), generator, fg_float)
            mask = (mask > 0.5).reshape(1, h, w).to(_out_device(fg))
            if fg is not None:
                mask = mask & fg
            n = float(mask.sum())
            area = n / (h * w)
            areas.append(area)
            if n == 0:
                reasons.add("empty")
            elif n >= fg_area:
                reasons.add("covers the whole foreground")
            elif area < self.min_area and not own_area:
                reasons.add("too small")
            elif area > self.max_area and not own_area:
                reasons.add("too large")
            else:
                return mask.float(), info
        shown = ", ".join(f"{a:.4f}" for a in areas[:10]) + (" ..." if len(areas) > 10 else "")
        hint = ""
        if fg_area / (h * w) < self.min_area:
            hint = (f" The foreground covers only {fg_area / (h * w):.4f} of the image, less than min_area: "
                    "lower min_area or check the foreground estimation.")
        raise RuntimeError(
            f"MaskSampler could not draw an acceptable {h}x{w} mask in {self.max_tries} tries: the area must lie in "
            f"[min_area={self.min_area:.4g}, max_area={self.max_area:.4g}] of the image (rejections: "
            f"{', '.join(sorted(reasons))}; drawn areas: {shown}).{hint} Widen min_area/max_area, raise max_tries, "
            "or change the mask sources (Perlin scale_range/threshold, real-mask scale_range)."
        )

    def sample_batch(
        self,
        n: int,
        size: Size,
        generators: torch.Generator | Sequence[torch.Generator],
        foreground: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(n, 1, H, W) masks; one generator shared by all, or one generator per sample (per-index determinism)."""
        h, w = as_hw(size)
        gens = [generators] * n if isinstance(generators, torch.Generator) else list(generators)
        if len(gens) != n:
            raise ValueError(f"got {len(gens)} generators for {n} masks")
        if foreground is not None and (foreground.ndim != 4 or foreground.shape[0] != n):
            raise ValueError(f"foreground must be ({n}, 1, {h}, {w}), got {tuple(foreground.shape)}")
        masks = [self.sample((h, w), gens[i], None if foreground is None else foreground[i]) for i in range(n)]
        if not masks:
            dev = foreground.device if foreground is not None else torch.device("cpu")
            return torch.zeros(0, 1, h, w, device=dev)
        return torch.stack(masks, 0)


def _keeps_own_area(source) -> bool:
    inner = getattr(source, "source", source)
    return getattr(inner, "area_range", None) is not None


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


def _checked_sources(mc, sources: Sequence[str] | None, weights: Sequence[float] | None
                     ) -> tuple[list[str], list[float]]:
    """Source names and weights (the arguments, else ``synthesis.masks``), each source known, one weight each."""
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
    return names, weights


def _real_source(split, kept: list[tuple], bank_kw: dict) -> _LabelledSource:
    """The augmented bank of the usable generator-train masks ``kept`` ((record, mask) pairs), typed by label."""
    if not any(r.mask for r in split.generator_train):
        raise SynthesisError("mask source 'real' needs generator-train defect masks, but the split has none; "
                             "use synthesis.masks.sources=[perlin]")
    if not kept:
        raise SynthesisError("every generator-train mask is empty; use synthesis.masks.sources=[perlin]")
    bank = RealMaskBank([m for _, m in kept], **bank_kw)
    return _LabelledSource(bank, "real", [split.type_id(r.label) for r, _ in kept],
                           [f"{r.label}/{Path(r.mask).name}" for r, _ in kept])


def _perlin_source(mc) -> _LabelledSource:
    scales = tuple(int(v) for v in mc.perlin_scale_range)
    return _LabelledSource(PerlinMaskSource(scale_range=scales, threshold=float(mc.perlin_threshold)), "perlin")


def _folder_source(mc, size, bank_kw: dict) -> _LabelledSource:
    folder = mc.folder
    if not folder:
        raise SynthesisError("mask source 'folder' needs synthesis.masks.folder=<folder of mask images>")
    try:
        fsrc = FolderMaskSource(folder, size=size, **bank_kw)
    except (FileNotFoundError, ValueError) as exc:
        raise SynthesisError(f"synthesis.masks.folder: {exc}") from exc
    return _LabelledSource(fsrc, "folder", None, [Path(folder).name] * len(fsrc))


def build_mask_sampler(cfg, split, size: int | tuple[int, int] | None = None,
                       sources: Sequence[str] | None = None, weights: Sequence[float] | None = None
                       ) -> TypedMaskSampler:
    """The one place that turns ``cfg.synthesis.masks`` into a mask sampler (``make synthesize`` and the
    segmentation synthesizers both call it).

    - ``real``: the generator-train split's masks (``data.io.load_mask``), augmented by ``RealMaskBank``
      (flips, rot90, small rotation/scale) and placed on the foreground, or drawn as they are
      (``real_augment=false``); each keeps its defect type.
    - ``perlin``: DRAEM-style Perlin masks.
    - ``folder``: a user folder of masks (``synthesis.masks.folder``), augmented like real masks.
    ``size``: masks are loaded at this size once (``data.io.load_mask``: the one resize rule, so no real
    mask vanishes; a mask that is empty in its file is left out with a warning naming it); None keeps the
    files' native size (full-resolution synthesis: ``make synthesize`` and online ``fast``). Masks without
    a type of their own get one by ``synthesis.perlin_type`` (see ``TypedMaskSampler``). ``sources``/``weights``
    override the config (e.g. a Perlin-only sampler for the DRAEM baseline). Empty, whole-foreground and
    out-of-range masks are rejected by MaskSampler (``min_area``/``max_area`` of the image).
    """
    from fast_lightning.data.io import load_mask

    mc = cfg.synthesis.masks
    names, weights = _checked_sources(mc, sources, weights)
    bank_kw = dict(scale_range=tuple(float(v) for v in mc.real_scale_range),
                   max_angle=float(mc.real_max_angle),
                   area_range=(float(mc.min_area), float(mc.max_area)) if mc.real_keep_size else None,
                   augment=bool(mc.real_augment))
    perlin_type = str(cfg.synthesis.perlin_type)
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
            src = _real_source(split, load_real(), bank_kw)
        elif name == "perlin":
            src = _perlin_source(mc)
        else:
            src = _folder_source(mc, size, bank_kw)
        pairs.append((src, weight))
    if not pairs:
        raise SynthesisError(f"synthesis.masks.weights {weights} leave no mask source with a positive weight")
    features: dict[int, list] = {}
    if perlin_type == "nearest":
        for r, m in load_real():
            features.setdefault(split.type_id(r.label), []).append(mask_shape_features(m))
    return TypedMaskSampler(pairs, type_names=list(split.types), perlin_type=perlin_type, type_features=features,
                            min_area=float(mc.min_area), max_area=float(mc.max_area),
                            max_tries=int(mc.max_tries))
