"""Mask sources (Perlin, real-mask bank, folder, sampler) and the baseline segmentation synthesizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import fast_lightning  # noqa: F401
from fast_lightning.synthesis.mask_sources import (
    FolderMaskSource,
    PerlinMaskSource,
    RealMaskBank,
    perlin_mask,
)
from fast_lightning.synthesis.mask_sampler import MaskSampler
from fast_lightning.synthesis import (
    CutPasteSynthesizer,
    DraemSynthesizer,
    RealThirdSynthesizer,
)

S = 32


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _foreground(n: int | None = None) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    disk = (((yy - S / 2) ** 2 + (xx - S / 2) ** 2) < (0.4 * S) ** 2).float()[None]
    return disk if n is None else disk.expand(n, 1, S, S).clone()


def _is_binary(m: torch.Tensor) -> bool:
    return bool(((m == 0) | (m == 1)).all()) and m.dtype == torch.float32


def _real_masks() -> list[torch.Tensor]:
    a = torch.zeros(1, 48, 48)
    a[:, 10:16, 5:40] = 1  # scratch-like bar
    b = torch.zeros(1, 40, 40)
    b[:, 15:25, 18:26] = 1  # blob
    return [a, b]


# ---- masks -----------------------------------------------------------------------------------------------

def test_perlin_mask_binary_inside_foreground_and_deterministic():
    fg = _foreground()
    for seed in range(5):
        m = perlin_mask(S, _gen(seed), foreground=fg)
        assert m.shape == (1, S, S) and _is_binary(m)
        assert bool((m <= fg).all())
        assert torch.equal(m, perlin_mask(S, _gen(seed), foreground=fg))
    assert not torch.equal(perlin_mask(S, _gen(0)), perlin_mask(S, _gen(1)))
    # non-empty for these seeds (the sampler below guarantees non-emptiness in general)
    assert all(perlin_mask(S, _gen(s), foreground=fg).sum() > 0 for s in range(5))


def test_real_mask_bank_inside_foreground_binary():
    fg = _foreground()
    bank = RealMaskBank(_real_masks())
    for seed in range(8):
        m, idx = bank.sample_with_index(S, _gen(seed), fg)
        assert m.shape == (1, S, S) and _is_binary(m) and idx in (0, 1)
        assert bool((m <= fg).all()) and m.sum() > 0
        assert torch.equal(m, bank.sample(S, _gen(seed), fg))
    free = bank.sample((S, S + 8), _gen(0))  # no foreground, non-square
    assert free.shape == (1, S, S + 8) and free.sum() > 0


def test_mask_sampler_rejects_out_of_range_areas():
    full = torch.ones(1, S, S)
    big = torch.zeros(1, S, S)
    big[:, :20] = 1  # 0.625 of the image
    good = torch.zeros(1, S, S)
    good[:, 10:14, 10:14] = 1  # 0.0156
    queue = [torch.zeros(1, S, S), full, big, good]

    def source(size, generator, foreground):
        return queue.pop(0)

    m = MaskSampler([(source, 1.0)], min_area=0.001, max_area=0.3, max_tries=5).sample(S, _gen(0))
    assert torch.equal(m, good) and not queue


def _big_mask() -> torch.Tensor:
    m = torch.zeros(1, S, S)
    m[:, 4:24, 2:22] = 1  # 400 px: 0.39 of the image
    return m


def test_real_masks_keep_real_sizes_beyond_the_random_masks_limits():
    """A real defect larger than max_area is drawn (at most its own size); without area_range it never is."""
    old = MaskSampler([RealMaskBank([_big_mask()], scale_range=(0.9, 1.5), max_angle=0.0)],
                      min_area=0.001, max_area=0.25, max_tries=5)
    with pytest.raises(RuntimeError, match="too large"):
        old.sample(S, _gen(0))
    bank = RealMaskBank([_big_mask()], scale_range=(0.9, 1.5), max_angle=0.0, area_range=(0.001, 0.25))
    sampler = MaskSampler([bank], min_area=0.001, max_area=0.25, max_tries=5)
    areas = [float(sampler.sample(S, _gen(seed)).mean()) for seed in range(6)]
    assert all(0.25 < a <= 0.39 * 1.05 for a in areas), areas  # never grown past its own 0.39
    assert min(areas) < 0.39 * 0.95  # the downward part of the scale range still acts


def test_real_mask_scale_is_clamped_into_the_area_range():
    small = torch.zeros(1, S, S)
    small[:, 10:14, 10:14] = 1  # 16 px: 0.0156
    grown = RealMaskBank([small], scale_range=(2.0, 2.0), max_angle=0.0, flip=False, rot90=False)
    capped = RealMaskBank([small], scale_range=(2.0, 2.0), max_angle=0.0, flip=False, rot90=False,
                          area_range=(0.0, 0.03))
    assert float(grown.sample(S, _gen(0)).sum()) == 64  # scale 2: 4x the area
    assert 16 < float(capped.sample(S, _gen(0)).sum()) <= 0.03 * S * S + 4  # clamped to scale sqrt(0.03/0.0156)
    shrunk = RealMaskBank([small], scale_range=(0.25, 0.25), max_angle=0.0, flip=False, rot90=False,
                          area_range=(0.01, 0.5))
    assert float(shrunk.sample(S, _gen(0)).sum()) >= 0.01 * S * S - 2  # not below min_area, where 0.25 would go
    with pytest.raises(ValueError, match="area_range"):
        RealMaskBank([small], area_range=(0.5, 0.1))


def test_real_masks_as_they_are_keep_place_orientation_and_size():
    """augment=False: every draw is the mask itself (the authors' code), only cut to the foreground; the
    augmented bank moves and turns the same band."""
    band = torch.zeros(1, S, S)
    band[:, 22:, :] = 1  # a full-width band along the bottom edge, like magnetic tile's "uneven"
    as_is = RealMaskBank([band], augment=False)
    for seed in range(6):
        assert torch.equal(as_is.sample(S, _gen(seed)), band)
    fg = _foreground()
    assert torch.equal(as_is.sample(S, _gen(0), fg), band * fg)
    augmented = RealMaskBank([band])
    assert any(not torch.equal(augmented.sample(S, _gen(seed)), band) for seed in range(6))


def test_mask_sampler_impossible_raises_clear_error():
    always_big = lambda size, generator, foreground: torch.ones(1, *size)  # noqa: E731
    with pytest.raises(RuntimeError, match=r"max_area=0\.3.*Widen min_area/max_area"):
        MaskSampler([always_big], max_area=0.3, max_tries=3).sample(S, _gen(0))
    tiny_fg = torch.zeros(1, S, S)
    tiny_fg[:, 0, 0] = 1
    with pytest.raises(RuntimeError, match="foreground covers only"):
        MaskSampler([PerlinMaskSource()], min_area=0.01, max_tries=3).sample(S, _gen(0), tiny_fg)


def test_mask_sampler_batch_mixture_non_empty_and_deterministic():
    fg = _foreground(4)
    sampler = MaskSampler([(PerlinMaskSource(), 1.0), (RealMaskBank(_real_masks()), 1.0)], max_area=0.5)
    masks = sampler.sample_batch(4, S, _gen(3), fg)
    assert masks.shape == (4, 1, S, S) and _is_binary(masks)
    assert bool((masks <= fg).all()) and bool((masks.flatten(1).sum(1) > 0).all())
    assert torch.equal(masks, sampler.sample_batch(4, S, _gen(3), fg))
    per_sample = sampler.sample_batch(2, S, [_gen(1), _gen(2)], fg[:2])
    assert torch.equal(per_sample[1], sampler.sample(S, _gen(2), fg[1]))


def test_folder_mask_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        FolderMaskSource(tmp_path / "missing_dir", S)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty_dir"):
        FolderMaskSource(empty, S)
    arr = np.zeros((64, 64), np.uint8)
    arr[20:40, 25:35] = 255
    Image.fromarray(arr).save(empty / "m0.png")
    src = FolderMaskSource(empty, S)
    m = src.sample(None, _gen(0), _foreground())
    assert m.shape == (1, S, S) and _is_binary(m) and m.sum() > 0


# ---- synthesizers ----------------------------------------------------------------------------------------

def _batch(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(123)
    base = torch.rand(n, 3, 1, 1, generator=g) * 0.5 + 0.25
    normals = (base + 0.1 * torch.rand(n, 3, S, S, generator=g)).clamp(0, 1)
    return normals, _foreground(n)


def _real_third() -> RealThirdSynthesizer:
    images, _ = _batch(2)
    masks = torch.zeros(2, 1, S, S)
    masks[0, :, 5:9, 5:20] = 1
    masks[1, :, 20:26, 12:15] = 1
    return RealThirdSynthesizer(images.flip(0), masks)


SYNTHS = {
    "draem_dataset": lambda: DraemSynthesizer(texture_source="dataset"),
    "draem_procedural": lambda: DraemSynthesizer(texture_source="procedural"),
    "draem_texture_bank": lambda: DraemSynthesizer(texture_bank=torch.rand(2, 3, 40, 40)),
    "draem_real_masks": lambda: DraemSynthesizer(MaskSampler([RealMaskBank(_real_masks())])),
    "cutpaste_patch": lambda: CutPasteSynthesizer("patch"),
    "cutpaste_scar": lambda: CutPasteSynthesizer("scar"),
    "cutpaste_both": lambda: CutPasteSynthesizer("both"),
    "real_third": _real_third,
}


@pytest.mark.parametrize("name", list(SYNTHS))
def test_synthesizer_contract(name):
    synth = SYNTHS[name]()
    normals, fg = _batch()
    images, masks = synth(normals, fg, _gen(7))
    assert images.shape == normals.shape and masks.shape == (3, 1, S, S)
    assert images.dtype == normals.dtype and _is_binary(masks)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert bool((masks.flatten(1).sum(1) > 0).all()), "every mask must be non-empty"
    again_images, again_masks = synth(normals, fg, _gen(7))
    assert torch.equal(images, again_images) and torch.equal(masks, again_masks), "not deterministic"
    if name == "real_third":
        return  # returns real pairs, ignores the normals by design
    assert bool((masks <= fg).all()), "mask leaves the foreground"
    outside = ~masks.bool().expand_as(images)
    assert torch.equal(images[outside], normals[outside]), "pixels outside the mask changed"
    assert not torch.equal(images, normals)


def test_per_sample_generators():
    normals, fg = _batch()
    synth = CutPasteSynthesizer("both")
    imgs, masks = synth(normals, fg, [_gen(1), _gen(2), _gen(3)])
    one_img, one_mask = synth(normals[1:2], fg[1:2], [_gen(2)])
    assert torch.equal(imgs[1:2], one_img) and torch.equal(masks[1:2], one_mask)


def test_real_third_returns_bank_pairs_with_flips():
    synth = _real_third()
    normals, fg = _batch(4)
    images, masks = synth(normals, fg, _gen(0))
    for img, m in zip(images, masks):
        matches = [
            torch.equal(img, f(synth.images[k])) and torch.equal(m, f(synth.masks[k].float()))
            for k in range(len(synth))
            for f in (lambda t: t, lambda t: t.flip(-1), lambda t: t.flip(-2), lambda t: t.flip(-1).flip(-2))
        ]
        assert any(matches)
