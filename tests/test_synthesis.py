"""Synthesis: windowed synthesis + exact paste-back, mask sampler, segmentation synthesizers, the writer,
and (slow) `synthesize` / `bench-sampling` end to end on a smoke-trained model."""

from __future__ import annotations

import json

import pytest
import torch

import fast_lightning  # noqa: F401
from fast_lightning.config import load_config
from fast_lightning.errors import ConfigError
from fast_lightning.data import make_split, read_class
from fast_lightning.sampling import build_sampler
from fast_lightning.synthesis import (
    WindowedFastSynthesizer,
    CachedSegSynthesizer,
    FastSegSynthesizer,
    SynthesisError,
    TypedMaskSampler,
    build_mask_sampler,
    build_seg_synthesizer,
)
from fast_lightning.synthesis.writer import SynthesisWriter, read_manifest

from conftest import SMOKE_TYPES, make_fake_mvtec, run_cli

TYPES = SMOKE_TYPES  # the smoke_model fixture's types


def make_synth(model, cfg, window: str, steps: int = 3) -> WindowedFastSynthesizer:
    meta = {"window": window, "resolution": int(cfg.diffusion.resolution), "config": cfg, "type_names": TYPES}
    return WindowedFastSynthesizer(model, build_sampler({"name": "aias", "steps": steps}), meta)


def items():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 40, 56, generator=g), torch.rand(3, 70, 30, generator=g), torch.rand(3, 36, 36, generator=g)]
    masks = [torch.zeros(1, *im.shape[-2:]) for im in images]
    masks[0][:, 10:15, 20:31] = 1
    masks[1][:, 50:52, 3:25] = 1  # thin
    masks[2][:, 5:9, 5:9] = 1
    masks[2][:, 25:30, 20:33] = 1  # two blobs
    return images, masks


def gens(indices):
    return [torch.Generator().manual_seed(1000 + i) for i in indices]


@pytest.mark.parametrize("window", ["crop", "full"])
def test_paste_back_is_exact_outside_the_mask(smoke_model, smoke_cfg, window):
    synth = make_synth(smoke_model, smoke_cfg, window)
    images, masks = items()
    out, out_masks = synth.synthesize(images, masks, [1, 2, 1], gens(range(3)))
    for img, m, o, om in zip(images, masks, out, out_masks):
        assert o.shape == img.shape and o.dtype == img.dtype
        assert torch.equal(om, m)  # every mask fits its window here
        outside = ~m.bool().expand_as(img)
        assert torch.equal(o[outside], img[outside])
        assert not torch.equal(o[~outside], img[~outside])
        assert float(o.min()) >= 0 and float(o.max()) <= 1


@pytest.mark.parametrize("window", ["crop", "full"])
def test_visible_change_keeps_the_image_and_labels_only_what_changed(smoke_model, smoke_cfg, window):
    """synthesis.visible_change: same pixels as the placed-mask run; the label is the placed mask AND the
    visible-change map (unit: threshold 0 keeps every changed pixel, a threshold above any change empties it)."""
    from fast_lightning.synthesis.windowed import visible_change
    images, masks = items()
    base = make_synth(smoke_model, smoke_cfg, window)
    ref, ref_masks = base.synthesize(images, masks, [1, 2, 1], gens(range(3)))
    for threshold, expect in ((0.0, "some"), (0.05, None), (1.0, "none")):
        synth = make_synth(smoke_model, smoke_cfg, window)
        synth.visible_change = threshold
        out, out_masks = synth.synthesize(images, masks, [1, 2, 1], gens(range(3)))
        for o, r, om, rm in zip(out, ref, out_masks, ref_masks):
            assert torch.equal(o, r)                   # the image does not depend on the label rule
            assert bool((om <= rm).all())              # a subset of the placed mask
            if expect == "none":
                assert float(om.sum()) == 0
            if expect == "some":
                assert float(om.sum()) > 0.5 * float(rm.sum())
    a = torch.zeros(1, 3, 8, 8)
    b = a.clone()
    b[:, 1, 2:5, 2:5] = 0.5                            # one channel, a 3x3 blob
    seen = visible_change(b, a, 0.1)
    assert seen.shape == (1, 1, 8, 8) and bool(seen[0, 0, 3, 3]) and not bool(seen[0, 0, 7, 7])
    b2 = a + 0.04 * (torch.arange(64).reshape(1, 1, 8, 8) % 2).float()   # fine grain: blurred below 0.05
    assert not bool(visible_change(b2.expand(1, 3, 8, 8), a, 0.05).any())


def test_visible_change_batched_path_matches(smoke_model, smoke_cfg):
    synth = make_synth(smoke_model, smoke_cfg, "full")
    synth.visible_change = 0.05
    g = torch.Generator().manual_seed(3)
    normals = torch.rand(2, 3, 32, 32, generator=g)
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 8:20, 6:24] = 1
    imgs, msks = synth.synthesize_tensors(normals, masks, [1, 2], gens(range(2)))
    base = make_synth(smoke_model, smoke_cfg, "full")
    ref_imgs, ref_msks = base.synthesize_tensors(normals, masks, [1, 2], gens(range(2)))
    assert torch.equal(imgs, ref_imgs) and bool((msks <= ref_msks).all())
    synth.visible_change = 1.0                          # above any change: nothing is labelled
    assert float(synth.synthesize_tensors(normals, masks, [1, 2], gens(range(2)))[1].sum()) == 0


def _detail_corr(x: torch.Tensor, ref: torch.Tensor, region: tuple[slice, slice]) -> float:
    """Correlation of the fine detail (image minus its 3x3 box blur) of ``x`` and ``ref`` inside ``region``."""
    def detail(t):
        blur = torch.nn.functional.avg_pool2d(t[None].float(), 3, 1, 1, count_include_pad=False)[0]
        return (t - blur)[:, region[0], region[1]].flatten()
    return float(torch.corrcoef(torch.stack([detail(x), detail(ref)]))[0, 1])


@pytest.mark.parametrize("window", ["crop", "full"])
def test_source_detail_keeps_the_parts_texture_inside_large_defects(smoke_model, smoke_cfg, window):
    """synthesis.source_detail: a 96-px window painted by the 32-px model comes back smooth; with the lever
    the source's fine stripes stay inside the mask, outside is the source either way, and a window the model
    sees at its own size is unchanged bit for bit."""
    stripes = 0.5 + 0.2 * ((torch.arange(96) % 2).float() * 2 - 1)
    img = stripes.expand(3, 96, 96).clone()
    mask = torch.zeros(1, 96, 96)
    mask[:, 24:72, 20:76] = 1
    inner = (slice(30, 66), slice(26, 70))
    off = make_synth(smoke_model, smoke_cfg, window)
    on = make_synth(smoke_model, smoke_cfg, window)
    on.source_detail = "add"
    (a,), _ = off.synthesize([img], [mask], [1], gens([0]))
    (b,), (bm,) = on.synthesize([img], [mask], [1], gens([0]))
    outside = ~mask.bool().expand_as(img)
    assert torch.equal(a[outside], img[outside]) and torch.equal(b[outside], img[outside]) and torch.equal(bm, mask)
    assert abs(_detail_corr(a, img, inner)) < 0.3 < 0.8 < _detail_corr(b, img, inner)
    assert float(b.min()) >= 0 and float(b.max()) <= 1
    small = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(5))
    m32 = torch.zeros(1, 32, 32)
    m32[:, 8:20, 6:24] = 1
    ref = off.synthesize([small], [m32], [2], gens([1]))[0][0]
    assert torch.equal(on.synthesize([small], [m32], [2], gens([1]))[0][0], ref)
    if window == "full":  # the batched path adds the same detail
        imgs, _ = on.synthesize_tensors(img[None], mask[None], [1], gens([0]))
        assert torch.allclose(imgs[0], b, atol=1e-5)


def test_scaled_source_detail_follows_the_painted_brightness(smoke_model, smoke_cfg):
    """``scaled``: the grain put back is the source's times generated / source brightness (a window painted at
    the source's brightness gets exactly ``add``'s, one painted half as bright half of it); other values are
    refused by name."""
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(2)
    source = 0.6 + 0.05 * torch.randn(3, 64, 64, generator=g)
    seen = torch.nn.functional.interpolate(source[None], size=(32, 32), mode="bilinear", antialias=True)[0]
    from fast_lightning.data.io import resize_tensor_image
    low = resize_tensor_image(seen[None], (64, 64))[0]
    same, dark = low.clone(), low / 2
    add = lambda back: WindowedFastSynthesizer._with_detail(SimpleNamespace(source_detail="add"), back, source, seen)  # noqa: E731
    scaled = lambda back: WindowedFastSynthesizer._with_detail(SimpleNamespace(source_detail="scaled"), back, source, seen)  # noqa: E731
    assert torch.allclose(scaled(same), add(same), atol=1e-6)
    grain = lambda out, back: float((out - back).std())  # noqa: E731
    assert grain(scaled(dark), dark) == pytest.approx(0.5 * grain(add(dark), dark), rel=0.05)
    meta = {"window": "crop", "resolution": int(smoke_cfg.diffusion.resolution), "config": smoke_cfg}
    with pytest.raises(SynthesisError, match="synthesis.source_detail='yes'"):
        WindowedFastSynthesizer(smoke_model, build_sampler({"name": "aias", "steps": 3}), meta, source_detail="yes")
    with pytest.raises(ConfigError, match="synthesis.source_detail"):
        load_config(["profile=smoke", "synthesis.source_detail=yes"])
    assert load_config(["profile=smoke", "synthesis.source_detail=scaled"]).synthesis.source_detail == "scaled"


def test_contrast_match_moves_only_the_painted_mean_to_a_real_contrast_of_the_type(smoke_model, smoke_cfg, tmp_path):
    """synthesis.contrast_match=type: an item of a type with real contrasts gets one of them (inside minus ring,
    per channel), its painted structure shifted, never changed outside the mask; a type without real contrasts
    and the lever off give the plain synthesis bit for bit; the real contrasts come from the generator-train
    defects (the fake class's dark blobs: strongly negative); other values are refused by name."""
    from fast_lightning.synthesis.contrast import defect_contrast, match_contrast, real_contrast_targets

    img = 0.3 + 0.4 * torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(1, 64, 64)
    mask[:, 20:40, 16:44] = 1
    shifted = match_contrast(img, mask, torch.tensor([0.1, -0.05, 0.0]))
    assert torch.allclose(defect_contrast(shifted, mask), torch.tensor([0.1, -0.05, 0.0]), atol=1e-5)
    inside = mask.bool().expand_as(img)
    assert torch.equal(shifted[~inside], img[~inside])
    delta = (shifted - img)[inside].reshape(3, -1)  # one shift per channel: the structure is kept
    assert float((delta - delta.mean(1, keepdim=True)).abs().max()) < 1e-5
    assert defect_contrast(img, torch.ones(1, 64, 64)) is None  # no ring: nothing to match against

    targets = {1: torch.tensor([[-0.05, -0.05, -0.05], [-0.08, -0.08, -0.08]])}
    plain = make_synth(smoke_model, smoke_cfg, "crop")
    matched = make_synth(smoke_model, smoke_cfg, "crop")
    matched.contrast_targets = targets
    (a1, a2), _ = plain.synthesize([img, img], [mask, mask], [1, 2], gens([0, 1]))
    (b1, b2), (m1, _) = matched.synthesize([img, img], [mask, mask], [1, 2], gens([0, 1]))
    got = defect_contrast(b1, mask)
    assert any(torch.allclose(got, row, atol=1e-3) for row in targets[1])  # the model saturates: clipping
    assert not torch.allclose(defect_contrast(a1, mask), got, atol=1e-2)
    assert torch.equal(b1[~inside], img[~inside]) and torch.equal(m1, mask)
    assert torch.equal(b2, a2)  # type 2 has no real contrasts
    assert torch.allclose(b1 - a1, (b1 - a1).where(inside, torch.zeros(())), atol=0)
    full = make_synth(smoke_model, smoke_cfg, "full")
    full.contrast_targets = targets  # the batched path matches too
    (imgs, _) = full.synthesize_tensors(img[None], mask[None], [1], gens([0]))
    assert any(torch.allclose(defect_contrast(imgs[0], mask), row, atol=1e-3) for row in targets[1])

    make_fake_mvtec(tmp_path)
    split = make_split(read_class(tmp_path, "widget"))
    cfg = load_config(["profile=smoke", "synthesis.contrast_match=type"])
    real = real_contrast_targets(cfg, split)
    assert set(real) == {split.type_id(r.label) for r in split.generator_train if r.mask}
    assert all(v.shape[1] == 3 and float(v.max()) < -0.3 for v in real.values())  # dark blobs on a bright disk
    assert real_contrast_targets(load_config(["profile=smoke"]), split) is None
    with pytest.raises(ConfigError, match="synthesis.contrast_match"):
        load_config(["profile=smoke", "synthesis.contrast_match=yes"])


def test_synthesize_resume_refuses_other_pair_settings_and_accepts_runs_saved_before_a_key(tmp_path):
    """The keys that decide what a pair looks like (source_detail, visible_change, contrast_match among them)
    must match to resume; a run saved before such a key existed resumes with its default."""
    from omegaconf import OmegaConf

    from fast_lightning.errors import UserError
    from fast_lightning.stages.synthesize_pairs import check_resume_settings

    cfg = load_config(["profile=smoke", "data_root=data"])
    saved = OmegaConf.create(OmegaConf.to_container(cfg))
    del saved.synthesis["contrast_match"], saved.synthesis["source_detail"]
    check_resume_settings(saved, cfg, tmp_path)
    for key, value in (("contrast_match", "type"), ("source_detail", "add"), ("visible_change", 0.1)):
        other = load_config(["profile=smoke", "data_root=data", f"synthesis.{key}={value}"])
        with pytest.raises(UserError, match=f"synthesis.{key}"):
            check_resume_settings(saved, other, tmp_path)


def test_thin_mask_survives_downscaling(smoke_model, smoke_cfg):
    synth = make_synth(smoke_model, smoke_cfg, "full")  # 150x120 -> 32x32: a 1-px line must still be synthesized
    img = torch.rand(3, 150, 120, generator=torch.Generator().manual_seed(1))
    m = torch.zeros(1, 150, 120)
    m[:, 75, 10:100] = 1
    (o,), _ = synth.synthesize([img], [m], [2], gens([0]))
    line = m.bool().expand_as(img)
    assert (o[line] != img[line]).float().mean() > 0.5
    assert torch.equal(o[~line], img[~line])


def test_crop_window_is_centred_on_the_mask_and_clips_oversized_masks(smoke_model, smoke_cfg):
    synth = make_synth(smoke_model, smoke_cfg, "crop")
    m = torch.zeros(1, 40, 120)
    m[:, 18:22, 5:115] = 1  # wider than the shorter side: cannot fit one square window
    win = synth.window_for(m)
    assert win.h == win.w == 40 and win.y == 0 and 40 <= win.x + 40 <= 120
    img = torch.rand(3, 40, 120)
    (o,), (om,) = synth.synthesize([img], [m], [1], gens([0]))
    assert bool((om <= m).all()) and 0 < om.sum() < m.sum()
    outside = ~om.bool().expand_as(img)
    assert torch.equal(o[outside], img[outside])
    small = torch.zeros(1, 400, 300)
    small[:, 100:110, 200:205] = 1
    w = synth.window_for(small)
    assert w.h == round(300 * float(smoke_cfg.diffusion.crop.scale)) and w.y <= 100 and w.y + w.h >= 110


@pytest.mark.parametrize("window", ["crop", "full"])
def test_item_does_not_depend_on_batch(smoke_model, smoke_cfg, window):
    synth = make_synth(smoke_model, smoke_cfg, window)
    images, masks = items()
    batched, _ = synth.synthesize(images, masks, [1, 2, 1], gens(range(3)))
    for i in (2, 0):
        (alone,), _ = synth.synthesize([images[i]], [masks[i]], [[1, 2, 1][i]], gens([i]))
        assert torch.allclose(alone, batched[i], atol=1e-5)


@pytest.mark.parametrize("window", ["crop", "full"])
def test_synthesize_tensors_batched_path(smoke_model, smoke_cfg, window):
    synth = make_synth(smoke_model, smoke_cfg, window)
    normals = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    masks = torch.zeros(3, 1, 32, 32)
    masks[:, :, 8:14, 10:20] = 1
    out, om = synth.synthesize_tensors(normals, masks, torch.tensor([1, 2, 1]), gens(range(3)))
    assert out.shape == normals.shape and om.shape == masks.shape
    outside = ~om.bool().expand_as(normals)
    assert torch.equal(out[outside], normals[outside])
    assert not torch.equal(out[~outside], normals[~outside])


@pytest.fixture(scope="module")
def fake_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthdata")
    make_fake_mvtec(root)
    return root, make_split(read_class(root, "widget"))


def test_build_mask_sampler_sources_types_and_errors(smoke_cfg, fake_split, tmp_path):
    _, split = fake_split
    ms = build_mask_sampler(smoke_cfg, split, 32, sources=["real"])
    assert isinstance(ms, TypedMaskSampler)
    fg = torch.zeros(1, 32, 32)
    fg[:, 4:28, 4:28] = 1
    for i in range(4):
        m, tid, label = ms.sample_typed(32, torch.Generator().manual_seed(i), fg)
        assert m.shape == (1, 32, 32) and m.sum() > 0 and bool((m <= fg).all())
        assert tid in (1, 2) and label.startswith("real:") and split.types[tid - 1] in label
    # Perlin masks get a type too (synthesis.perlin_type, default random): intended change of issue 10
    d = build_mask_sampler(smoke_cfg, split, None, sources=["perlin"]).draw((40, 56), torch.Generator().manual_seed(0))
    assert d.mask.shape == (1, 40, 56) and d.type_id in (1, 2) and d.source == "perlin" and d.type_rule == "random"
    folder = tmp_path / "masks"
    folder.mkdir()
    from fast_lightning.data.io import save_image

    blob = torch.zeros(1, 20, 20)
    blob[:, 5:12, 6:10] = 1
    save_image(blob, folder / "a.png")
    fcfg = load_config(["profile=smoke", f"synthesis.masks.folder={folder}"])
    m, tid, label = build_mask_sampler(fcfg, split, 32, sources=["folder"]).sample_typed(32, torch.Generator().manual_seed(0))
    assert m.sum() > 0 and label.startswith("folder")
    with pytest.raises(SynthesisError, match="synthesis.masks.folder"):
        build_mask_sampler(smoke_cfg, split, 32, sources=["folder"])
    with pytest.raises(SynthesisError, match="weights"):
        build_mask_sampler(load_config(["profile=smoke", "synthesis.masks.weights=[1.0]"]), split, 32)
    with pytest.raises(SynthesisError, match="unknown mask source"):
        build_mask_sampler(smoke_cfg, split, 32, sources=["blobs"])


def _fast_seg(smoke_model, smoke_cfg, split, **kw):
    meta = {"window": "crop", "resolution": 32, "config": smoke_cfg, "type_names": TYPES}
    return FastSegSynthesizer(smoke_model, meta, build_mask_sampler(smoke_cfg, split, 32),
                              build_sampler({"name": "aias", "steps": 3}), **kw)


@pytest.mark.parametrize("buffer_size,refresh", [(0, None), (8, 2)])
def test_fast_seg_synthesizer_contract(smoke_model, smoke_cfg, fake_split, buffer_size, refresh):
    _, split = fake_split
    syn = _fast_seg(smoke_model, smoke_cfg, split, buffer_size=buffer_size, refresh=refresh)
    normals = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    fg = torch.zeros(4, 1, 32, 32)
    fg[:, :, 6:26, 4:28] = 1
    for step in range(2):
        images, masks = syn(normals, fg, torch.Generator().manual_seed(step))
        assert images.shape == normals.shape and masks.shape == (4, 1, 32, 32)
        assert bool((masks.flatten(1).sum(1) > 0).all()) and bool((masks <= fg).all())
        if buffer_size == 0:  # pooled pairs may come from an earlier batch of normals (same here anyway)
            outside = ~masks.bool().expand_as(normals)
            assert torch.equal(images[outside], normals[outside])
    if buffer_size:
        assert syn._filled == 6  # 4 to fill the first batch, then `refresh` per call


def test_fast_seg_queued_refresh_makes_the_same_pairs_in_one_batch(smoke_model, smoke_cfg, fake_split):
    """seg_refresh_batch only groups the sampler calls: after the queue is flushed the pool holds the pairs an
    unqueued synthesizer made step by step (same sources, same per-pair generators)."""
    _, split = fake_split
    normals = [torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(10 + k)) for k in range(3)]
    fg = torch.zeros(4, 1, 32, 32)
    fg[:, :, 6:26, 4:28] = 1
    plain = _fast_seg(smoke_model, smoke_cfg, split, buffer_size=8, refresh=2)
    queued = _fast_seg(smoke_model, smoke_cfg, split, buffer_size=8, refresh=2, refresh_batch=4)
    for step, x in enumerate(normals):
        plain(x, fg, torch.Generator().manual_seed(step))
        queued(x, fg, torch.Generator().manual_seed(step))
        if step == 1:  # 4 pairs to fill the pool, 2 waiting in the queue
            assert (queued._filled, len(queued._queue), plain._filled) == (4, 2, 6)
    assert queued._filled == plain._filled == 8 and not queued._queue
    assert torch.equal(queued._pool_masks, plain._pool_masks)
    assert torch.equal(queued._pool_types, plain._pool_types)
    assert torch.allclose(queued._pool_images, plain._pool_images, atol=1e-4)
    with pytest.raises(ConfigError, match="seg_refresh_batch"):  # a user's setting: one line, no traceback
        _fast_seg(smoke_model, smoke_cfg, split, buffer_size=8, refresh=2, refresh_batch=9)


def test_fast_seg_fractional_refresh_adds_one_pair_every_other_step(smoke_model, smoke_cfg, fake_split):
    _, split = fake_split
    syn = _fast_seg(smoke_model, smoke_cfg, split, buffer_size=8, refresh=0.5)
    normals = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    fg = torch.ones(4, 1, 32, 32)
    filled = []
    for step in range(5):
        images, masks = syn(normals, fg, torch.Generator().manual_seed(step))
        assert images.shape == normals.shape
        filled.append(syn._filled)
    assert filled == [4, 4, 5, 5, 6]


def test_writer_resume_bookkeeping_and_cached_synthesizer(tmp_path):
    w = SynthesisWriter(tmp_path)
    w.prepare()
    img, m = torch.rand(3, 20, 24), torch.zeros(1, 20, 24)
    m[:, 4:9, 5:12] = 1
    for i, rank in ((2, 1), (0, 0), (1, 1)):
        w.write_pair({"index": i, "source": "x.png"}, img, m, rank=rank)
    (tmp_path / "images" / "000001.png").unlink()  # pair 1 lost its image: redo it
    with open(w.rank_manifest(0), "a") as fh:
        fh.write('{"index": 3, "ima')  # a line cut by a crash
    assert sorted(w.completed()) == [0, 2]
    rows = w.merge()
    assert [r["index"] for r in rows] == [0, 2] and not list(tmp_path.glob("manifest.rank*"))
    cached = CachedSegSynthesizer(tmp_path, resolution=16)
    assert len(cached) == 2
    normals = torch.zeros(5, 3, 16, 16)
    images, masks = cached(normals, None, torch.Generator().manual_seed(0))
    assert images.shape == (5, 3, 16, 16) and masks.shape == (5, 1, 16, 16) and bool((masks.flatten(1).sum(1) > 0).all())



def test_read_manifest_skips_the_lines_the_writer_skips(tmp_path):
    """One manifest reader: a line without an integer index is skipped by read_manifest exactly as by
    SynthesisWriter.completed (it used to raise KeyError in read_manifest)."""
    w = SynthesisWriter(tmp_path)
    w.prepare()
    img, m = torch.rand(3, 8, 8), torch.zeros(1, 8, 8)
    m[:, 2:5, 2:5] = 1
    for i in (1, 0):
        w.write_pair({"index": i, "source": "x.png"}, img, m)
    w.merge()
    with open(w.manifest_path, "a") as fh:
        fh.write('{"image": "images/000009.png"}\n{"index": "x"}\n\n')
    assert [r["index"] for r in read_manifest(tmp_path)] == [0, 1]
    assert sorted(w.completed()) == [0, 1]

def test_build_seg_synthesizer_baselines_and_missing_checkpoint(fake_split, tmp_path):
    from fast_lightning.data.datamodule import AnomalyDataModule
    from fast_lightning.synthesis import CutPasteSynthesizer, DraemSynthesizer, RealThirdSynthesizer

    root, _ = fake_split
    cfg = load_config(["profile=smoke", "class_name=widget", f"data_root={root}", f"run_root={tmp_path}"])
    dm = AnomalyDataModule(cfg)
    assert isinstance(build_seg_synthesizer("draem", cfg, dm), DraemSynthesizer)
    assert isinstance(build_seg_synthesizer("cutpaste", cfg, dm), CutPasteSynthesizer)
    real = build_seg_synthesizer("real_third", cfg, dm)
    assert isinstance(real, RealThirdSynthesizer) and len(real) == 2
    with pytest.raises(SynthesisError, match="make train-diffusion CLASS=widget"):
        build_seg_synthesizer("fast", cfg, dm)
    with pytest.raises(SynthesisError, match="make synthesize"):
        build_seg_synthesizer("fast_cached", cfg, dm)
    with pytest.raises(SynthesisError, match="unknown segmentation.synth"):
        build_seg_synthesizer("nope", cfg, dm)


# ---- end to end (real commands) ------------------------------------------------------------------------

@pytest.mark.slow
def test_synthesize_and_bench_end_to_end(tmp_path, capsys):
    from fast_lightning.cli import main
    from fast_lightning.data.io import load_image, load_mask

    data = tmp_path / "data"
    make_fake_mvtec(data)
    runs = tmp_path / "runs"
    common = ["class_name=widget", f"data_root={data}", f"run_root={runs}", "profile=smoke",
              "trainer.precision=32-true"]
    run_cli("train-diffusion", *common, "diffusion.max_steps=2", "diffusion.sample_every=0",
         "diffusion.num_log_samples=0")
    ckpt = runs / "diffusion" / "widget" / "latest"
    assert (ckpt / "checkpoints" / "last.ckpt").is_file()

    # first run: 3 pairs, then "interrupted" and resumed to 6
    run_cli("synthesize", *common, "synthesis.n=3", "synthesis.batch_size=2")
    run_dir = (runs / "synthetic" / "widget" / "latest").resolve()
    first = {i: (run_dir / "images" / f"{i:06d}.png").stat().st_mtime_ns for i in range(3)}
    run_cli("synthesize", *common, "synthesis.n=6", "synthesis.batch_size=4", f"resume={run_dir}")
    assert (runs / "synthetic" / "widget" / "latest").resolve() == run_dir
    rows = [json.loads(x) for x in (run_dir / "manifest.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(6))
    assert {i: (run_dir / "images" / f"{i:06d}.png").stat().st_mtime_ns for i in range(3)} == first
    for key in ("image", "mask", "source", "mask_source", "type", "sampler", "steps", "variant", "seed"):
        assert key in rows[0]
    for r in rows:
        syn = load_image(run_dir / r["image"])
        mask = load_mask(run_dir / r["mask"])
        src = load_image(r["source"])
        assert syn.shape == src.shape == (3, 40, 48) and mask.sum() > 0
        outside = ~mask.bool().expand_as(src)
        assert torch.equal(syn[outside], src[outside])
    for name in ("config.yaml", "split.json", "preview.png", "run.json"):
        assert (run_dir / name).is_file()

    # clear errors (in process: quicker)
    def err(*args):
        capsys.readouterr()
        assert main(["synthesize", *common, *args]) == 2
        return capsys.readouterr().err

    assert "synthesis.n" in err("synthesis.n=0")
    assert "STEPS=2" in err("sampling.steps=2")
    make_fake_mvtec(data, class_name="gadget", seed=1)
    msg = err("class_name=gadget", f"synthesis.ckpt={ckpt}")
    assert "'widget'" in msg and "'gadget'" in msg
    assert "channels" in err("data.channels=1")

    out = tmp_path / "bench.json"
    assert main(["bench-sampling", *common, f"out={out}", "batch=2", "ddpm_images=1", "repeats=1"]) == 0
    report = json.loads(out.read_text())
    assert set(report["samplers"]) >= {"aias-10-exact", "aias-10-paper", "aias-50-exact", "ddim-10", "ddim-50",
                                       "ddpm-1000"}
    for entry in report["samplers"].values():
        for key in ("nfe", "seconds_per_image", "images_per_second", "outside_denoiser_share", "overhead_vs_denoiser"):
            assert key in entry
    assert report["samplers"]["ddpm-1000"]["nfe"] == 1000 and report["samplers"]["aias-10-exact"]["nfe"] == 10
    assert "speedup_aias10_vs_ddpm1000" in report and len(report["checks"]) == 2
    assert out.with_suffix(".png").is_file()


def test_cached_pairs_report_the_type_of_each_draw(tmp_path):
    """fast_cached draws carry their manifest type ids (``last_types``), so `make fidelity` scores it per type."""
    import json

    import numpy as np
    from PIL import Image

    from fast_lightning.synthesis.cached import CachedSegSynthesizer

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rows = []
    for i, tid in enumerate([1, 2, 2]):
        Image.fromarray(np.full((16, 16, 3), 40 * (i + 1), np.uint8)).save(tmp_path / "images" / f"{i}.png")
        m = np.zeros((16, 16), np.uint8)
        m[4:10, 4:10] = 255
        Image.fromarray(m).save(tmp_path / "masks" / f"{i}.png")
        rows.append({"index": i, "image": f"images/{i}.png", "mask": f"masks/{i}.png", "type_id": tid})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    synth = CachedSegSynthesizer(tmp_path, 16)
    imgs, _ = synth(torch.zeros(64, 3, 16, 16), None, torch.Generator().manual_seed(0))
    level = (imgs[:, 0, 0, 0] * 255).round().long() // 40 - 1  # which pair each draw is
    assert synth.last_types.tolist() == [[1, 2, 2][int(k)] for k in level]
    assert set(synth.last_types.tolist()) == {1, 2}
