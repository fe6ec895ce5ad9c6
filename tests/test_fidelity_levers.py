"""The levers of issue 18, each shown to act and to equal today's behaviour at its default:
diffusion.mask_loss_weight, diffusion.cond_dropout + sampling.guidance_scale, diffusion.crop.defect_share,
diffusion.normal_pretrain_steps, segmentation.synth_loss_weight / synth_loss_until."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import SMOKE_TYPES, make_fake_mvtec


def _batch(model, b=3, res=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, 3, res, res, generator=g) * 2 - 1
    mask = torch.zeros(b, 1, res, res)
    mask[:, :, 8:16, 10:20] = 1
    cond = torch.tensor([1, 2, 1][:b])
    t = torch.tensor([10, 500, 900][:b])
    eps = torch.randn(x0.shape, generator=g)
    return x0, mask, cond, t, eps


def test_mask_loss_weight_one_is_todays_loss_and_w_scales_only_in_mask_terms(smoke_model):
    model = smoke_model
    x0, mask, cond, t, eps = _batch(model)
    assert model.mask_loss_weight == 1.0  # the default
    with torch.no_grad():
        base = model.training_losses(x0, mask, cond, t=t, eps=eps)
        x_t = model.schedule.q_sample(x0, t, eps)
        x_hat, _ = model.anomaly_aware_input(x_t, mask, t, eps)
        sq = (model.predict_eps(x_hat, t, cond, mask).float() - eps) ** 2
        assert torch.equal(base["loss_eps"], F.mse_loss(model.predict_eps(x_hat, t, cond, mask).float(), eps))
        try:
            model.mask_loss_weight = 4.0
            heavy = model.training_losses(x0, mask, cond, t=t, eps=eps)
            empty = model.training_losses(x0, torch.zeros_like(mask), cond, t=t, eps=eps)
            model.mask_loss_weight = 1.0
            empty1 = model.training_losses(x0, torch.zeros_like(mask), cond, t=t, eps=eps)
        finally:
            model.mask_loss_weight = 1.0
    expected = sq.mean() + 3.0 * (mask * sq).mean()  # (w - 1) more of exactly the in-mask terms
    assert heavy["loss_eps"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert heavy["loss_eps"] > base["loss_eps"] and torch.equal(heavy["loss_farm"], base["loss_farm"])
    assert empty["loss_eps"].item() == pytest.approx(empty1["loss_eps"].item(), rel=1e-6)  # no mask: no change


def test_mask_loss_weight_comes_from_the_config(smoke_cfg):
    from omegaconf import OmegaConf

    from fast_lightning.diffusion import build_fast_diffusion

    cfg = OmegaConf.merge(smoke_cfg.diffusion, {"mask_loss_weight": 5.0})
    assert build_fast_diffusion(cfg, 3, 2, SMOKE_TYPES).mask_loss_weight == 5.0


def test_cond_dropout_replaces_types_by_the_null_condition():
    from fast_lightning.diffusion.model import drop_condition

    cond = torch.tensor([1, 2, 1, 2] * 50)
    assert drop_condition(cond, 0.0, torch.Generator().manual_seed(0)) is cond  # off: nothing drawn
    assert torch.equal(drop_condition(cond, 1.0, torch.Generator().manual_seed(0)), torch.zeros_like(cond))
    half = drop_condition(cond, 0.5, torch.Generator().manual_seed(0))
    dropped = half == 0
    assert 60 < int(dropped.sum()) < 140 and torch.equal(half[~dropped], cond[~dropped])
    assert torch.equal(half, drop_condition(cond, 0.5, torch.Generator().manual_seed(0)))  # seeded


@pytest.mark.parametrize("name", ["aias", "ddim", "dpmsolver"])
def test_guidance_scale_one_is_no_guidance_and_zero_is_the_null_condition(smoke_cfg, smoke_model, name):
    from fast_lightning.sampling import build_sampler

    torch.manual_seed(0)
    bg = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:20, 8:20] = 1
    cond = torch.tensor([1, 2])

    def run(scale, c):
        sampler = build_sampler({**dict(smoke_cfg.sampling), "name": name, "steps": 4, "guidance_scale": scale})
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        return sampler(smoke_model, bg, mask, c, gens), sampler.nfe

    default = build_sampler({**dict(smoke_cfg.sampling), "name": name, "steps": 4})
    out_default = default(smoke_model, bg, mask, cond, [torch.Generator().manual_seed(i) for i in range(2)])
    one, nfe1 = run(1.0, cond)
    assert torch.equal(one, out_default) and nfe1 == default.nfe == 4  # scale 1: bit for bit, 1 eval per step
    zero, nfe0 = run(0.0, cond)
    null, _ = run(1.0, torch.zeros_like(cond))
    assert nfe0 == 8  # guided: conditional + null per step
    assert torch.allclose(zero, null, atol=1e-4)  # s = 0 leaves only the null prediction
    two, _ = run(2.0, cond)
    assert not torch.allclose(two, one, atol=1e-3)


def test_guidance_scale_is_validated(smoke_cfg):
    from fast_lightning.errors import ConfigError
    from fast_lightning.sampling import build_sampler

    with pytest.raises(ConfigError, match="sampling.guidance_scale"):
        build_sampler({**dict(smoke_cfg.sampling), "guidance_scale": -1})


def test_defect_share_sizes_windows_to_the_defect():
    from fast_lightning.data.windows import window_side

    bbox = (100, 100, 110, 120)  # a 10 x 20 px defect in a 1000 x 800 image
    assert window_side(1000, 800, 0.35, bbox, min_side=32) == 280  # today: 35% of the shorter side
    assert window_side(1000, 800, 0.35, bbox, min_side=32, defect_share=0.4) == 50  # 20 / 0.4
    assert window_side(1000, 800, 0.35, bbox, min_side=64, defect_share=0.4) == 64  # never below the model
    assert window_side(1000, 800, 0.35, None, min_side=32, defect_share=0.4) == 280  # normal windows: scale
    assert window_side(40, 40, 0.35, (0, 0, 30, 30), min_side=8, defect_share=0.5) == 40  # capped by the image


def _train_set(root, **kw):
    from fast_lightning.data.datasets import GeneratorTrainDataset
    from fast_lightning.data.records import read_class
    from fast_lightning.data.split import make_split

    split = make_split(read_class(root, "widget"))
    ids = {t: i + 1 for i, t in enumerate(split.types)}
    return GeneratorTrainDataset(split.generator_train, split.normal_train, ids, resolution=32, seed=0, **kw)


def test_defect_share_reaches_training_and_synthesis_windows(tmp_path, smoke_model):
    from fast_lightning.synthesis.windowed import WindowedFastSynthesizer

    make_fake_mvtec(tmp_path, size=(160, 160), n_defect=6)
    plain = _train_set(tmp_path, normal_weight=0.0)
    sized = _train_set(tmp_path, normal_weight=0.0, defect_share=0.5)
    share = [sum(float(ds[i]["mask"].mean()) for i in range(6)) for ds in (plain, sized)]
    assert share[1] > 2 * share[0]  # the defect fills much more of the model's window
    mask = torch.zeros(1, 160, 160)
    mask[:, 70:76, 70:78] = 1
    meta = {"window": "crop", "resolution": 32, "config": {"diffusion": {"resolution": 32, "crop": {"scale": 0.35}}}}
    assert WindowedFastSynthesizer(smoke_model, None, meta).window_for(mask).h == 56
    meta["config"]["diffusion"]["crop"]["defect_share"] = 0.5
    assert WindowedFastSynthesizer(smoke_model, None, meta).window_for(mask).h == 32  # 16 px, raised to the model's 32


def test_normal_pretrain_items_are_normal_and_the_rest_unchanged(tmp_path):
    make_fake_mvtec(tmp_path)
    plain = _train_set(tmp_path)
    pre = _train_set(tmp_path, normal_only_items=8)
    for i in range(8):
        assert int(pre[i]["cond"]) == 0 and float(pre[i]["mask"].sum()) == 0
    assert any(int(plain[i]["cond"]) > 0 for i in range(8))
    for i in range(8, 16):
        a, b = plain[i], pre[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"]) and a["cond"] == b["cond"]


def test_split_weighted_loss_weights_only_the_synthesized_items():
    from fast_lightning.segmentation.losses import DiceFocalLoss, split_weighted_loss

    loss_fn = DiceFocalLoss()
    torch.manual_seed(0)
    logits = torch.randn(4, 1, 16, 16, requires_grad=True)
    target = (torch.rand(4, 1, 16, 16) > 0.8).float()
    part = torch.tensor([False, False, True, True])
    two = split_weighted_loss(loss_fn, logits, target, part, 2.0)
    expect = loss_fn(logits[:2], target[:2]) + 2.0 * loss_fn(logits[2:], target[2:])
    assert two.item() == pytest.approx(expect.item(), rel=1e-6)
    zero = split_weighted_loss(loss_fn, logits, target, part, 0.0)
    (grad,) = torch.autograd.grad(zero, logits)
    assert grad[2:].abs().sum() == 0 and grad[:2].abs().sum() > 0  # weight 0: synthesized items ignored


def test_synth_loss_until_zeroes_the_items_from_b_after_its_share_of_the_run(monkeypatch):
    """synth=a+b: b's items weigh synth_loss_weight for the first synth_loss_until of max_steps, then 0; the
    default (1) keeps today's weight on every step; a share outside [0, 1] is refused naming the key."""
    from omegaconf import OmegaConf

    from fast_lightning.config import load_config
    from fast_lightning.errors import ConfigError
    from fast_lightning.segmentation.lightning_segmenter import SegmentationModule

    def module(*overrides):
        cfg = load_config(["profile=smoke", "class_name=widget", "segmentation.max_steps=10", *overrides])
        side = int(cfg.data.seg_scale)
        return SegmentationModule(OmegaConf.to_container(cfg.segmentation, resolve=True), int(cfg.data.channels),
                                  (side, side), "widget", "test")

    step = {"now": 0}
    monkeypatch.setattr(SegmentationModule, "global_step", property(lambda self: step["now"]))
    default = module()
    half = module("segmentation.synth_loss_until=0.5", "segmentation.synth_loss_weight=0.25")
    weights = []
    for s in range(10):
        step["now"] = s
        weights.append((default.second_weight(), half.second_weight()))
    assert [d for d, _ in weights] == [1.0] * 10
    assert [h for _, h in weights] == [0.25] * 5 + [0.0] * 5
    with pytest.raises(ConfigError, match="synth_loss_until"):
        load_config(["profile=smoke", "segmentation.synth_loss_until=1.5"])


def test_mixed_synthesizer_marks_the_items_from_b_for_the_loss(smoke_cfg):
    from fast_lightning.data.datamodule import AnomalyDataModule
    from fast_lightning.synthesis.baseline_synthesizers import CutPasteSynthesizer
    from fast_lightning.synthesis.real import MixedSynthesizer, RealThirdSynthesizer

    real = RealThirdSynthesizer(torch.rand(3, 3, 32, 32), (torch.rand(3, 1, 32, 32) > 0.7).float())
    mixed = MixedSynthesizer(real, CutPasteSynthesizer(), 0.5, 0.25)
    dm = AnomalyDataModule(smoke_cfg, synthesizer=mixed)
    batch = {"image": torch.rand(8, 3, 32, 32), "mask": torch.zeros(8, 1, 32, 32),
             "foreground": torch.ones(8, 1, 32, 32)}
    out = dm.synthesize_batch(batch)
    # synth_ratio 0.5 + second_ratio 0.25: the 4 real labels real_third alone would get, 2 from cutpaste on top
    # (in place of normals), then 2 normals
    assert out["from_second"].tolist() == [False, False, False, False, True, True, False, False]
    assert out["synthetic"].tolist() == [True] * 6 + [False] * 2
    assert torch.equal(out["image"][6:], batch["image"][6:])
    alone = AnomalyDataModule(smoke_cfg, synthesizer=real).synthesize_batch(batch)
    assert alone["synthetic"].tolist() == [True] * 4 + [False] * 4  # the same real share as in the mix
    none = AnomalyDataModule(smoke_cfg, synthesizer=MixedSynthesizer(real, CutPasteSynthesizer(), 0.5, 0.0))
    assert not none.synthesize_batch(batch)["from_second"].any()  # second_ratio 0: b unused


def test_mix_shares_are_capped_and_the_old_key_names_its_replacement():
    from fast_lightning.config import load_config
    from fast_lightning.errors import ConfigError
    from fast_lightning.synthesis.baseline_synthesizers import CutPasteSynthesizer
    from fast_lightning.synthesis.real import MixedSynthesizer

    cut = CutPasteSynthesizer()
    capped = MixedSynthesizer(cut, cut, 0.8, 0.3)
    assert capped.batch_items(10) == 10  # b takes only the 2 normal items left
    assert capped.split(10) == 8  # ...and a keeps its round(10 * 0.8), not a share worked back from the ratios
    capped.batch_items(10)
    capped(torch.rand(10, 3, 32, 32), torch.ones(10, 1, 32, 32), torch.Generator().manual_seed(0))
    assert capped.last_from_second.tolist() == [False] * 8 + [True] * 2
    assert capped.split(6) == round(6 * 0.8 / 1.1)  # a direct call on other item counts: in proportion
    assert MixedSynthesizer(cut, cut, 1.0, 0.25).batch_items(8) == 8
    with pytest.raises(ConfigError, match="segmentation.second_ratio"):
        load_config(["profile=smoke", "segmentation.real_ratio=0.5"])


def test_paper_preset_is_one_flag_away_and_overrides_still_win():
    from fast_lightning.config import load_config
    from fast_lightning.errors import ConfigError

    today = load_config(["profile=smoke"])
    paper = load_config(["profile=smoke", "preset=paper"])
    assert (today.sampling.variant, today.diffusion.window, today.diffusion.normal_weight) == ("exact", "crop", 0.25)
    assert (paper.sampling.variant, paper.diffusion.window, paper.diffusion.normal_weight) == ("paper", "full", 0.0)
    assert list(paper.synthesis.masks.sources) == ["real"] and paper.diffusion.resolution == 32  # profile kept
    assert today.synthesis.masks.real_augment and not paper.synthesis.masks.real_augment  # masks as drawn
    assert load_config(["profile=smoke", "preset=paper", "sampling.variant=exact"]).sampling.variant == "exact"
    with pytest.raises(ConfigError, match="unknown preset 'papr'.*paper"):
        load_config(["profile=smoke", "preset=papr"])


def test_guided_sampling_needs_a_model_trained_with_type_dropout(smoke_cfg):
    """Guidance on a model whose null condition never trained apart from "normal" is refused, naming the fix."""
    from omegaconf import OmegaConf

    from fast_lightning.synthesis import SynthesisError
    from fast_lightning.synthesis.checkpoints import check_checkpoint_compatible

    def meta(dropout):
        return {"path": "m.ckpt", "global_step": 5, "config": {"diffusion": {"cond_dropout": dropout}}}

    guided = OmegaConf.merge(smoke_cfg, {"sampling": {"guidance_scale": 2.0}})
    plain = OmegaConf.merge(smoke_cfg, {"sampling": {"guidance_scale": 1.0}})
    with pytest.raises(SynthesisError, match=r"cond_dropout=0.*sampling.guidance_scale=1"):
        check_checkpoint_compatible(meta(0.0), guided)
    with pytest.raises(SynthesisError, match="without classifier-free guidance"):
        check_checkpoint_compatible({"path": "old.ckpt", "global_step": 5}, guided)  # no config stored: unguided
    check_checkpoint_compatible(meta(0.1), guided)
    check_checkpoint_compatible(meta(0.0), plain)
