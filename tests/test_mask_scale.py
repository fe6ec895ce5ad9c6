"""Issue 10: one mask resize rule on every path (thin scratches stay connected lines, blob areas hold), and
synthesis windows at the pixel scale the diffusion model was trained on."""

from __future__ import annotations

import statistics
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

import fast_lightning  # noqa: F401
from fast_lightning.config import load_config
from fast_lightning.data import make_split, read_class
from fast_lightning.data.datamodule import AnomalyDataModule
from fast_lightning.data.datasets import GeneratorTrainDataset, LabelledDataset
from fast_lightning.data.mask_resize import resize_mask
from fast_lightning.synthesis.mask_sampler import MaskSampler
from fast_lightning.data.records import Record
from fast_lightning.data.split import Split
from fast_lightning.sampling import build_sampler
from fast_lightning.synthesis import (
    FastSegSynthesizer,
    RealThirdSynthesizer,
    WindowedFastSynthesizer,
    build_mask_sampler,
)
from fast_lightning.synthesis.predictor import SynthesisIndexDataset, SynthesisPredictor

from conftest import SMOKE_TYPES, make_fake_mvtec, write_png

S = 1024
SIZES = (256, 64, 32)
TYPES = SMOKE_TYPES  # the smoke_model fixture's types


def scratch() -> torch.Tensor:
    m = torch.zeros(1, S, S)
    i = torch.arange(100, 900)
    m[0, i, i + 37] = 1  # 1-px diagonal (8-connected)
    return m


def disk() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    return (((yy - 500.3) ** 2 + (xx - 470.7) ** 2) < 160 ** 2).float()[None]


def components(m: torch.Tensor) -> int:
    arr = (m.reshape(m.shape[-2], m.shape[-1]) > 0.5).cpu().numpy()
    return int(ndimage.label(arr, structure=np.ones((3, 3)))[1])


def check_scratch(m: torch.Tensor, size: int) -> None:
    assert tuple(m.shape[-2:]) == (size, size)
    assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
    assert m.sum() > 0 and components(m) == 1, f"scratch at {size} px: {components(m)} component(s)"
    # a thin line stays thin: about one pixel per row of its extent
    assert m.sum() <= 2 * (800 * size / S) + 4


def check_disk(m: torch.Tensor, size: int) -> None:
    assert components(m) == 1
    ratio = float(m.float().mean()) / float(disk().mean())
    assert 0.75 <= ratio <= 1.25, f"disk area at {size} px is {ratio:.3f} x the source's"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    img = (np.random.default_rng(0).random((S, S, 3)) * 255).astype(np.uint8)
    write_png(root / "img.png", img)
    write_png(root / "scratch.png", (scratch()[0].numpy() * 255).astype(np.uint8))
    write_png(root / "disk.png", (disk()[0].numpy() * 255).astype(np.uint8))
    write_png(root / "empty.png", np.zeros((64, 64), np.uint8))
    return root


def make_meta(cfg, window="crop"):
    return {"window": window, "resolution": int(cfg.diffusion.resolution), "config": cfg, "type_names": TYPES}


# ---- the rule itself ------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
def test_resize_mask_keeps_thin_lines_and_blob_areas(size):
    check_scratch(resize_mask(scratch(), size), size)
    check_disk(resize_mask(disk(), size), size)
    both = resize_mask(torch.stack([scratch(), disk()]), size)  # batched (B,1,H,W) = per item
    assert torch.equal(both[0], resize_mask(scratch(), size)) and torch.equal(both[1], resize_mask(disk(), size))


def test_resize_mask_upscaling_is_exact_and_shapes():
    small = resize_mask(disk(), 32)
    assert torch.equal(resize_mask(resize_mask(small, 128), 32), small)  # nearest up, then down: unchanged
    assert resize_mask(torch.zeros(1, 50, 70), (20, 30)).sum() == 0
    assert resize_mask(scratch()[0], (64, 200)).shape == (64, 200)  # (H,W), mixed shrink/grow
    assert components(resize_mask(scratch()[0], (64, 200))) == 1


# ---- every path that uses it ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
def test_diffusion_training_window_masks(files, size):
    for name, check in (("scratch", check_scratch), ("disk", check_disk)):
        ds = GeneratorTrainDataset([Record(str(files / "img.png"), str(files / f"{name}.png"), "crack", "test")], [],
                                   {"crack": 1}, resolution=size, window="full", normal_weight=0.0,
                                   augment={"hflip": False, "vflip": False, "rot90": False})
        check(ds[0]["mask"], size)
    crop = GeneratorTrainDataset([Record(str(files / "img.png"), str(files / "scratch.png"), "crack", "test")], [],
                                 {"crack": 1}, resolution=size, window="crop", normal_weight=0.0)
    m = crop[0]["mask"]
    assert m.sum() > 0 and components(m) == 1


@pytest.mark.parametrize("size", SIZES)
def test_mask_bank_and_eval_labels(files, smoke_cfg, size):
    recs = [Record(str(files / "img.png"), str(files / f"{n}.png"), "crack", "test") for n in ("scratch", "disk")]
    split = Split(class_name="x", root=str(files), types=["crack"], generator_train=recs)
    bank = build_mask_sampler(smoke_cfg, split, size, sources=["real"]).sources[0][0].source
    assert len(bank) == 2
    check_scratch(bank.masks[0].float(), size)
    check_disk(bank.masks[1].float(), size)
    labels = LabelledDataset(recs, resolution=size)
    check_scratch(labels[0]["mask"], size)
    check_disk(labels[1]["mask"], size)


def test_real_keep_size_reaches_the_mask_bank(files, smoke_cfg):
    recs = [Record(str(files / "img.png"), str(files / "disk.png"), "crack", "test")]
    split = Split(class_name="x", root=str(files), types=["crack"], generator_train=recs)
    mc = smoke_cfg.synthesis.masks
    bank = build_mask_sampler(smoke_cfg, split, 32, sources=["real"]).sources[0][0].source
    assert mc.real_keep_size and bank.area_range == (mc.min_area, mc.max_area)
    off = smoke_cfg.copy()
    off.synthesis.masks.real_keep_size = False
    assert build_mask_sampler(off, split, 32, sources=["real"]).sources[0][0].source.area_range is None
    assert bank.augment
    off.synthesis.masks.real_augment = False
    assert not build_mask_sampler(off, split, 32, sources=["real"]).sources[0][0].source.augment


def test_mask_bank_reports_an_unusable_mask_by_name(files, smoke_cfg):
    recs = [Record(str(files / "img.png"), str(files / n), "crack", "test") for n in ("scratch.png", "empty.png")]
    split = Split(class_name="x", root=str(files), types=["crack"], generator_train=recs)
    with pytest.warns(RuntimeWarning, match="empty.png"):
        sampler = build_mask_sampler(smoke_cfg, split, 32, sources=["real"])
    assert len(sampler.sources[0][0].source) == 1


@pytest.mark.parametrize("size", SIZES)
def test_synthesizer_masks(files, smoke_cfg, smoke_model, size):
    # real_third bank
    img = torch.rand(2, 3, S, S, generator=torch.Generator().manual_seed(0))
    real = RealThirdSynthesizer(img, torch.stack([scratch(), disk()]), flip=False)
    _, bank_masks = real._bank(torch.device("cpu"), (size, size))
    check_scratch(bank_masks[0], size)
    check_disk(bank_masks[1], size)
    # online fast: the mask the segmenter gets at its working size, synthesized at 1024 px
    sampler = MaskSampler([lambda hw, g, fg: scratch()], min_area=0.0, max_area=1.0)
    syn = FastSegSynthesizer(smoke_model, make_meta(smoke_cfg, "full"), sampler, build_sampler({"name": "aias", "steps": 3}),
                             buffer_size=0, normals=[str(files / "img.png")])
    out, masks = syn(torch.zeros(1, 3, size, size), None, torch.Generator().manual_seed(0),
                     records=torch.tensor([0]), hflip=torch.tensor([False]))
    check_scratch(masks[0], size)
    assert syn.last_types.tolist()[0] in (1, 2)


@pytest.mark.parametrize("window", ["full", "crop"])
def test_model_input_mask_keeps_a_scratch(files, smoke_cfg, smoke_model, window):
    sampler = build_sampler({"name": "aias", "steps": 3})
    synth = WindowedFastSynthesizer(smoke_model, sampler, make_meta(smoke_cfg, window))
    seen = []
    run = synth.run_windows
    synth.run_windows = lambda w, m, c, g: (seen.append(m), run(w, m, c, g))[1]
    image = torch.rand(3, S, S, generator=torch.Generator().manual_seed(1))
    out, om = synth.synthesize([image], [scratch()], [1], [torch.Generator().manual_seed(0)])
    m = seen[0][0]
    assert m.shape[-1] == int(smoke_cfg.diffusion.resolution) and m.sum() > 0 and components(m) == 1
    outside = ~om[0].bool().expand_as(image)
    assert torch.equal(out[0][outside], image[outside])


# ---- synthesis at the model's pixel scale -------------------------------------------------------------

@pytest.fixture(scope="module")
def scale_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    make_fake_mvtec(root, size=(256, 256), types=tuple(TYPES))
    cfg = load_config(["profile=smoke", "class_name=widget", f"data_root={root}",
                       "synthesis.masks.sources=[real]", "synthesis.masks.weights=[1.0]"])
    return cfg, make_split(read_class(root, "widget"))


def training_scale(cfg, monkeypatch) -> float:
    """Median source px per model px of the windows the diffusion model trains on."""
    import fast_lightning.data.datasets as datasets

    sides = []
    real = datasets.window_side
    monkeypatch.setattr(datasets, "window_side", lambda *a, **k: sides.append(real(*a, **k)) or sides[-1])
    ds = AnomalyDataModule(cfg, stage="diffusion").diffusion_dataset()
    for i in range(16):
        ds[i]
    return statistics.median(sides) / int(cfg.diffusion.resolution)


def record_windows(monkeypatch) -> list:
    seen = []
    real = WindowedFastSynthesizer.window_for
    monkeypatch.setattr(WindowedFastSynthesizer, "window_for", lambda self, m: seen.append(real(self, m)) or seen[-1])
    return seen


def test_online_fast_uses_the_training_pixel_scale(scale_data, smoke_model, monkeypatch):
    cfg, split = scale_data
    train = training_scale(cfg, monkeypatch)
    assert train > 2.0  # 0.35 x 256 px windows for a 32 px model
    seen = record_windows(monkeypatch)
    syn = FastSegSynthesizer(smoke_model, make_meta(cfg), build_mask_sampler(cfg, split, None),
                             build_sampler({"name": "aias", "steps": 3}), buffer_size=0,
                             normals=[r.image for r in split.normal_train])
    dm = AnomalyDataModule(cfg, stage="segmentation", synthesizer=syn)
    ds = dm.normal_dataset()
    items = [ds[i] for i in range(4)]
    batch = {k: (torch.stack([it[k] for it in items]) if isinstance(items[0][k], torch.Tensor)
                 else torch.tensor([it[k] for it in items])) for k in items[0]}
    out = dm.synthesize_batch(batch)
    assert out["image"].shape == batch["image"].shape and out["mask"][: len(seen)].flatten(1).sum(1).gt(0).all()
    ratios = [w.h / int(cfg.diffusion.resolution) for w in seen]
    assert seen and all(abs(r / train - 1) <= 0.10 for r in ratios), (ratios, train)


def test_make_synthesize_path_uses_the_training_pixel_scale(scale_data, smoke_model, monkeypatch):
    cfg, split = scale_data
    train = training_scale(cfg, monkeypatch)
    seen = record_windows(monkeypatch)
    ms = build_mask_sampler(cfg, split, None)
    ds = SynthesisIndexDataset(range(3), [r.image for r in split.normal_train], ms, TYPES, out_resolution=64)
    pred = SynthesisPredictor(smoke_model, build_sampler({"name": "aias", "steps": 3}), make_meta(cfg), seed=0)
    pairs = pred.predict_step([ds[k] for k in range(3)])
    ratios = [w.h / int(cfg.diffusion.resolution) for w in seen]
    assert len(ratios) == 3 and all(abs(r / train - 1) <= 0.10 for r in ratios), (ratios, train)
    for p in pairs:  # out_resolution resizes the finished pair only
        assert p["image"].shape == (3, 64, 64) and p["mask"].sum() > 0 and p["row"]["type_rule"] == "mask"


def test_small_sources_are_reported_once(smoke_cfg, smoke_model):
    synth = WindowedFastSynthesizer(smoke_model, build_sampler({"name": "aias", "steps": 3}), make_meta(smoke_cfg))
    small = [torch.rand(3, 20, 24), torch.rand(3, 20, 24)]
    masks = [torch.zeros(1, 20, 24), torch.zeros(1, 20, 24)]
    for m in masks:
        m[:, 5:9, 5:9] = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        synth.synthesize(small, masks, [1, 1], [torch.Generator().manual_seed(i) for i in range(2)])
        synth.synthesize(small, masks, [1, 1], [torch.Generator().manual_seed(i) for i in range(2)])
    assert sum("smaller than the diffusion model" in str(w.message) for w in caught) == 1


# ---- Perlin types ---------------------------------------------------------------------------------------

def test_perlin_type_rules(scale_data):
    from fast_lightning.synthesis import SynthesisError

    cfg, split = scale_data
    fg = torch.ones(1, 64, 64)

    def types(rule):
        c = load_config(["profile=smoke", f"synthesis.perlin_type={rule}"])
        ms = build_mask_sampler(c, split, 64, sources=["perlin"])
        draws = [ms.draw(64, torch.Generator().manual_seed(i), fg) for i in range(24)]
        return [d.type_id for d in draws], {d.type_rule for d in draws}

    ids, rules = types("random")
    assert set(ids) == {1, 2} and rules == {"random"}
    ids, rules = types("dent")
    assert set(ids) == {2} and rules == {"fixed"}
    ids, rules = types("nearest")
    assert set(ids) <= {1, 2} and rules == {"nearest"}
    with pytest.raises(SynthesisError, match="synthesis.perlin_type"):
        types("scratchy")
