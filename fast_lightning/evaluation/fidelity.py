"""Fidelity of synthesized defects: how close they are to the real ones on what a segmenter learns from.

Why: the downstream benchmark (a segmenter per synthesizer x seed) takes over an hour; this measures the
synthesized defect itself in minutes. Both sides are cut the same way: a square window centred on the defect
(``data.windows`` rule: the defect's bbox times ``context``, so a ring of surrounding part is kept), resized
to ``size`` px. Two measures, per defect type:

- contrast statistics of the defect against a ring around it (``STATS``), compared real vs synthesized by
  the 1-D Wasserstein distance, also divided by the real values' std (``w1_norm``: comparable across stats);
- a classifier two-sample test: a small seeded CNN with a fixed step budget learns real vs synthesized
  windows on k-1 folds and scores the held-out fold; the pooled held-out AUROC is 0.5 when the two are
  indistinguishable and 1.0 when every synthesized window is told apart;
- the same test on the DEFECT only (``c2st_defect_auroc``): small patches centred on random defect pixels,
  minus the mean of the ring around the defect. The window test also sees the background, the mask's shape
  and where the defect sits, which are the same for every model sampled with the same seed (measured: three
  tire models of different budgets and settings scored 0.852-0.853 on windows); the patch test sees what the
  diffusion model paints and its contrast with the part around it;
- the defect's SIZE in the image (``w1_log_area``: W1 between real and synthesized log10 area fractions, in
  decades), when the caller passes each item's area. Every window above is scaled to its defect, so none of
  them can see size, and a segmenter does: a mask sampler that never drew magnetic tile's large "uneven"
  defects went unnoticed by all three;
- the defect's fine texture at the segmenter's own pixels (``fine_texture``: log of the gradient energy inside
  the defect over a ring's, on the working-size image, no resize; ``w1_fine_texture``: W1 real vs synthesized),
  when the caller passes it per item (``fine_texture_ratio``). Why: the windows above are scaled to the
  defect, so for a large defect they average away the part's grain; a segmenter sees it at 1:1, and a
  64-px model painting a large defect returns it without grain.

Pure torch + numpy (no Lightning): the command (``commands/fidelity.py``) gathers the windows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fast_lightning.data.mask_resize import resize_mask
from fast_lightning.data.windows import mask_bbox, place_window, window_side

__all__ = ["STATS", "defect_windows", "defect_patches", "window_stats", "fine_texture_ratio", "wasserstein_1d",
           "c2st_auroc", "compare_sets"]

STATS = ("intensity_diff", "gradient_ratio", "edge_strength")
# per-item scalars a caller may pass next to the windows: (item key, medians' entry, W1 entry, scale compared on)
ITEM_MEASURES = (("areas", "size", "w1_log_area", lambda x: np.log10(np.clip(x, 1e-6, 1))),
                 ("fine_texture", "fine_texture", "w1_fine_texture", lambda x: x))
ANY_TYPE = "all"  # the pooled entry next to the per-type ones


def defect_windows(images: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], size: int = 32,
                   context: float = 2.0) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Items (C,H,W) [0,1] + (1,H,W) -> (windows (N,C,s,s), masks (N,1,s,s), kept item indices).

    The window side is ``context`` x the defect bbox's longer side (``window_side`` with scale 0, at least
    8 px, capped by the image), centred on the defect; items with an empty mask are skipped."""
    wins, wmasks, kept = [], [], []
    for i, (img, m) in enumerate(zip(images, masks)):
        bbox = mask_bbox(m)
        if bbox is None:
            continue
        h, w = m.shape[-2:]
        side = window_side(h, w, 0.0, bbox, margin=context, min_side=8)
        y, x = place_window(h, w, side, bbox, jitter=False)
        crop = img[None, :, y:y + side, x:x + side].float()
        wins.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=side > size,
                                  align_corners=False)[0].clamp(0, 1))
        wmasks.append(resize_mask((m[None, :, y:y + side, x:x + side] > 0.5).float(), (size, size))[0])
        kept.append(i)
    if not wins:
        c = images[0].shape[0] if len(images) else 3
        return torch.zeros(0, c, size, size), torch.zeros(0, 1, size, size), kept
    return torch.stack(wins), torch.stack(wmasks), kept


def _dilate(m: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool2d(m, 2 * r + 1, stride=1, padding=r) if r > 0 else m


def _erode(m: torch.Tensor, r: int) -> torch.Tensor:
    return 1 - _dilate(1 - m, r)


def _gradient_energy(gray: torch.Tensor) -> torch.Tensor:
    """Squared forward-difference gradient magnitude of (..., H, W), zero-padded to the same size."""
    gx = F.pad(gray[..., :, 1:] - gray[..., :, :-1], (0, 1, 0, 0))
    gy = F.pad(gray[..., 1:, :] - gray[..., :-1, :], (0, 0, 0, 1))
    return gx ** 2 + gy ** 2


def _defect_and_ring(masks: torch.Tensor, ring: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(defect {0,1}, the ring of width r just outside it, r): THE ring both fidelity measures compare against
    (default width size/16, >= 1)."""
    r = max(1, masks.shape[-1] // 16) if ring is None else int(ring)
    m = (masks > 0.5).float()
    return m, (_dilate(m, r) - m).clamp(0, 1), r


def window_stats(windows: torch.Tensor, masks: torch.Tensor, ring: int | None = None) -> dict[str, np.ndarray]:
    """Per window (gray = channel mean): ``intensity_diff`` |mean(defect) - mean(ring)|; ``gradient_ratio``
    log of the mean squared gradient inside the eroded defect over the ring's outside the boundary band
    (texture energy, edges excluded); ``edge_strength``
    mean gradient magnitude on the mask boundary. ``ring``: its width in px (default size/16, >= 1).
    Windows whose defect or ring is empty give nan."""
    n = windows.shape[0]
    if n == 0:
        return {k: np.zeros(0) for k in STATS}
    m, ring_m, r = _defect_and_ring(masks, ring)
    gray = windows.float().mean(1, keepdim=True)
    inner = _erode(m, r)  # texture is measured away from the (resampled) edge
    outer = (_dilate(m, 2 * r) - _dilate(m, r)).clamp(0, 1)
    boundary = (_dilate(m, 1) - _erode(m, 1)).clamp(0, 1)
    energy = _gradient_energy(gray)

    def mean(x, w):
        area = w.flatten(1).sum(1)
        return torch.where(area > 0, (x * w).flatten(1).sum(1) / area.clamp_min(1), torch.full_like(area, float("nan")))

    eps = 1e-6
    out = {
        "intensity_diff": (mean(gray, m) - mean(gray, ring_m)).abs(),
        "gradient_ratio": torch.log((mean(energy, inner) + eps) / (mean(energy, outer) + eps)),
        "edge_strength": mean(energy.sqrt(), boundary),
    }
    return {k: v.double().numpy() for k, v in out.items()}


def fine_texture_ratio(image: torch.Tensor, mask: torch.Tensor, ring: int = 3) -> float:
    """log(mean squared gradient inside the defect eroded by 1 px / the same in a ``ring``-px band starting
    1 px outside it), on the (C,H,W) image as given (gray = channel mean): the grain a segmenter sees at its
    working size. nan when the eroded defect or the band is empty."""
    m = (mask.reshape(1, 1, *mask.shape[-2:]) > 0.5).float()
    energy = _gradient_energy(image.float().mean(0, keepdim=True)[None])
    inner = _erode(m, 1)
    band = (_dilate(m, 1 + ring) - _dilate(m, 1)).clamp(0, 1)
    if float(inner.sum()) == 0 or float(band.sum()) == 0:
        return float("nan")
    eps = 1e-8
    e_in = float((energy * inner).sum() / inner.sum())
    e_out = float((energy * band).sum() / band.sum())
    return float(np.log((e_in + eps) / (e_out + eps)))


def defect_patches(windows: torch.Tensor, masks: torch.Tensor, size: int = 8, per_window: int = 4, seed: int = 0,
                   ring: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(patches (N*k, C, size, size), owner window index (N*k,)): ``per_window`` patches per window centred on
    random defect pixels (kept inside the window), minus the per-channel mean of the ring around the defect,
    so a critic sees the painted defect and its contrast, not the background or the mask's outline."""
    n, c, s, _ = windows.shape
    if n == 0:
        return torch.zeros(0, c, size, size), torch.zeros(0, dtype=torch.long)
    g = torch.Generator().manual_seed(int(seed))
    m, ring_m, _ = _defect_and_ring(masks, ring)
    area = ring_m.flatten(1).sum(1).clamp_min(1)
    ring_mean = (windows.float() * ring_m).flatten(2).sum(2) / area[:, None]
    centred = windows.float() - ring_mean[:, :, None, None]
    half, patches, owner = size // 2, [], []
    for i in range(n):
        ys, xs = torch.nonzero(m[i, 0], as_tuple=True)
        if len(ys) == 0:
            continue
        for j in torch.randint(len(ys), (per_window,), generator=g).tolist():
            y0 = min(max(int(ys[j]) - half, 0), s - size)
            x0 = min(max(int(xs[j]) - half, 0), s - size)
            patches.append(centred[i, :, y0:y0 + size, x0:x0 + size])
            owner.append(i)
    if not patches:
        return torch.zeros(0, c, size, size), torch.zeros(0, dtype=torch.long)
    return torch.stack(patches), torch.tensor(owner)


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> float:
    """W1 between two empirical 1-D distributions: the area between their CDFs (nan values dropped)."""
    a, b = np.sort(np.asarray(a, float)[~np.isnan(a)]), np.sort(np.asarray(b, float)[~np.isnan(b)])
    if a.size == 0 or b.size == 0:
        return float("nan")
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(a, grid[:-1], side="right") / a.size
    cdf_b = np.searchsorted(b, grid[:-1], side="right") / b.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(grid)))


class _Critic(nn.Module):
    """The two-sample classifier: three conv blocks and a linear head (a few thousand weights)."""

    def __init__(self, channels: int, width: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree turns (the same per batch): the test must not hinge on orientation."""
    k = int(torch.randint(4, (), generator=g))
    x = torch.rot90(x, k, dims=(-2, -1))
    return x.flip(-1) if bool(torch.rand((), generator=g) < 0.5) else x


def c2st_auroc(real: torch.Tensor, synth: torch.Tensor, *, seed: int = 0, steps: int = 150, folds: int = 2,
               batch_size: int = 32, lr: float = 2e-3, real_groups: torch.Tensor | None = None,
               synth_groups: torch.Tensor | None = None) -> float:
    """Held-out AUROC of a seeded CNN telling ``synth`` windows (label 1) from ``real`` (label 0).

    Stratified ``folds``-fold: a fresh critic per fold trains ``steps`` Adam steps on the other folds (class-
    balanced batches, flips/rot90) and scores its fold; the AUROC pools all held-out scores. ``*_groups``
    (e.g. the window each patch came from) keep a group in one fold, so no defect is scored by a critic that
    trained on it. nan when a side has fewer than ``folds`` groups."""
    rg = torch.arange(real.shape[0]) if real_groups is None else torch.as_tensor(real_groups).long()
    sg = torch.arange(synth.shape[0]) if synth_groups is None else torch.as_tensor(synth_groups).long()
    if len(torch.unique(rg)) < folds or len(torch.unique(sg)) < folds:
        return float("nan")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a critic this small loses to thread sync (13 s on 1 thread vs 108 s on 2, shared CPU)
    try:
        return _c2st(real, synth, rg, sg, seed, steps, folds, batch_size, lr)
    finally:
        torch.set_num_threads(threads)


def _group_folds(groups: torch.Tensor, folds: int, g: torch.Generator) -> torch.Tensor:
    """Fold of each item: its group's, groups dealt round-robin in a seeded random order."""
    ids, inverse = torch.unique(groups, return_inverse=True)
    deal = torch.empty(len(ids), dtype=torch.long)
    deal[torch.randperm(len(ids), generator=g)] = torch.arange(len(ids)) % folds
    return deal[inverse]


def _c2st(real, synth, real_groups, synth_groups, seed, steps, folds, batch_size, lr) -> float:
    from torchmetrics.functional.classification import binary_auroc

    g = torch.Generator().manual_seed(int(seed))
    x = torch.cat([real, synth]).float()
    y = torch.cat([torch.zeros(real.shape[0]), torch.ones(synth.shape[0])])
    fold = torch.cat([_group_folds(real_groups, folds, g), _group_folds(synth_groups, folds, g)])
    scores = torch.empty(len(y))
    for k in range(folds):
        train, test = fold != k, fold == k
        pools = [torch.nonzero(train & (y == c)).flatten() for c in (0, 1)]
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, the global RNG left as it was
            torch.manual_seed(int(seed) * 1000 + k)
            critic = _Critic(x.shape[1])
        opt = torch.optim.Adam(critic.parameters(), lr=lr)
        half = max(1, batch_size // 2)
        for _ in range(int(steps)):
            pick = torch.cat([p[torch.randint(len(p), (half,), generator=g)] for p in pools])
            loss = F.binary_cross_entropy_with_logits(critic(_augment(x[pick], g)), y[pick])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            scores[test] = critic.eval()(x[test])
    return float(binary_auroc(scores, y.long(), thresholds=None))


def _type_sets(types: Sequence[str] | None, n: int, wanted: Sequence[str]) -> dict[str, np.ndarray]:
    """Indices per type: typed items by their type; untyped items (types None) stand for every type."""
    if types is None:
        every = np.arange(n)
        return {t: every for t in wanted} | {ANY_TYPE: every}
    types = list(types)
    out = {t: np.array([i for i, tt in enumerate(types) if tt == t], dtype=int) for t in wanted}
    return out | {ANY_TYPE: np.arange(n)}


def compare_sets(real: Mapping, synths: Mapping[str, Mapping], *, seed: int = 0, c2st_steps: int = 150,
                 folds: int = 2, per_type_c2st: bool = True) -> dict:
    """Real vs each synthesizer. ``real`` / ``synths[name]``: {"windows", "masks", "types"} (types: one name
    per window, or None when the synthesizer has no types). Returns per synthesizer and per type
    (plus ``all``): n, each stat's real/synth median, W1 and W1 / std(real), their mean ``w1_norm_mean``,
    and the two-sample ``c2st_auroc`` (windows) and ``c2st_defect_auroc`` (defect patches); with ``areas``
    (each window's defect area, a fraction of its image) on both sides also ``size`` (median areas) and
    ``w1_log_area``; likewise ``fine_texture`` (each item's ``fine_texture_ratio``) gives medians and
    ``w1_fine_texture``. The synthesizer's
    ``score`` is its pooled C2ST AUROC (lower = more realistic). Every synthesizer's classifier starts from
    the same seed (common random numbers), so its score does not depend on which others are listed with it
    and differences between synthesizers are not classifier-seed noise."""
    real_stats = window_stats(real["windows"], real["masks"])
    real_patches, real_owner = defect_patches(real["windows"], real["masks"], seed=seed)
    real_types = list(real["types"])
    names = sorted(set(real_types))
    real_sets = _type_sets(real_types, len(real_types), names)
    out = {}
    for name, syn in synths.items():
        stats = window_stats(syn["windows"], syn["masks"])
        patches, owner = defect_patches(syn["windows"], syn["masks"], seed=seed + 1)
        sets = _type_sets(syn.get("types"), syn["windows"].shape[0], names)
        per_type = {}
        for t, ridx in real_sets.items():
            sidx = sets.get(t, np.zeros(0, dtype=int))
            entry = {"n_real": int(len(ridx)), "n_synth": int(len(sidx)), "stats": {}}
            norms = []
            for k in STATS:
                a, b = real_stats[k][ridx], stats[k][sidx]
                w1 = wasserstein_1d(a, b)
                std = float(np.nanstd(real_stats[k])) if np.isfinite(real_stats[k]).any() else float("nan")
                norm = w1 / std if std > 0 else float("nan")
                entry["stats"][k] = {"real_median": _nanmedian(a), "synth_median": _nanmedian(b), "w1": w1,
                                     "w1_norm": norm}
                norms.append(norm)
            entry["w1_norm_mean"] = float(np.nanmean(norms)) if np.isfinite(norms).any() else float("nan")
            for item_key, median_key, w1_key, scale in ITEM_MEASURES:
                if real.get(item_key) is None or syn.get(item_key) is None:
                    continue
                a = np.asarray(real[item_key], float)[ridx]
                b = np.asarray(syn[item_key], float)[sidx]
                entry[median_key] = {"real_median": _nanmedian(a), "synth_median": _nanmedian(b)}
                entry[w1_key] = wasserstein_1d(scale(a), scale(b))
            if t == ANY_TYPE or per_type_c2st:
                entry["c2st_auroc"] = c2st_auroc(real["windows"][torch.as_tensor(ridx)],
                                                 syn["windows"][torch.as_tensor(sidx)],
                                                 seed=seed, steps=c2st_steps, folds=folds)
                rp = torch.isin(real_owner, torch.as_tensor(ridx, dtype=torch.long))
                sp = torch.isin(owner, torch.as_tensor(sidx, dtype=torch.long))
                entry["c2st_defect_auroc"] = c2st_auroc(real_patches[rp], patches[sp], seed=seed + 1,
                                                        steps=c2st_steps, folds=folds, real_groups=real_owner[rp],
                                                        synth_groups=owner[sp])
            per_type[t] = entry
        out[name] = {"score": per_type[ANY_TYPE].get("c2st_auroc"), "per_type": per_type}
    return out


def _nanmedian(x: np.ndarray) -> float:
    x = np.asarray(x, float)
    return float(np.nanmedian(x)) if np.isfinite(x).any() else float("nan")
