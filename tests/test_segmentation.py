"""SegmentationModule (training, validation threshold, test), train-seg / eval-seg end to end.

Hand-computed metric values live in tests/test_metrics.py; here the module must feed them correctly: the
threshold is chosen on VALIDATION, stored in the checkpoint, and used unchanged by test and eval-seg.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

import fast_lightning  # noqa: F401  (torchvision shim)
from fast_lightning.config import load_config

from conftest import SEG_METRIC_KEYS as METRIC_KEYS
from conftest import check_seg_run, make_fake_mvtec, run_cli

# the hand-computed case of tests/test_metrics.py: best F1 0.75 at threshold 0.4
PROBS = torch.tensor([[0.9, 0.6, 0.3, 0.1], [0.7, 0.2, 0.2, 0.0], [0.5, 0.4, 0.05, 0.05]]).view(3, 1, 2, 2)
TARGET = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.float32).view(3, 1, 2, 2)


def smoke_cfg(*overrides: str):
    return load_config(["profile=smoke", "class_name=widget", "trainer.enable_progress_bar=false",
                        "logger.wandb.enabled=false", *overrides])


def make_module(*overrides: str):
    from fast_lightning.segmentation.lightning_segmenter import SegmentationModule

    cfg = smoke_cfg(*overrides)
    side = int(cfg.data.seg_scale)
    return SegmentationModule(OmegaConf.to_container(cfg.segmentation, resolve=True), int(cfg.data.channels),
                              (side, side), "widget", "test")


def tiny_trainer(tmp_path, **kw):
    import lightning as L

    base = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    base.update(kw)
    return L.Trainer(**base)


class Items(Dataset):
    def __init__(self, images, masks, repeat: int = 1):
        self.images, self.masks, self.repeat = images, masks, repeat

    def __len__(self):
        return len(self.images) * self.repeat

    def __getitem__(self, i):
        j = i % len(self.images)
        return {"image": self.images[j], "mask": self.masks[j], "index": j}


class ProbabilityIsTheImage(torch.nn.Module):
    """Stub segmenter: channel 0 of the (un-normalised) input IS the anomaly probability."""

    def forward(self, x):
        return torch.logit(x[:, :1].clamp(1e-6, 1 - 1e-6))


def stub_module(tmp_path):
    m = make_module()
    m.model = ProbabilityIsTheImage()
    m.mean.zero_()
    m.std.fill_(1.0)
    return m


# ---- unit: training, threshold, de-duplication ------------------------------------------------------------
@pytest.mark.slow  # 56 s measured (--durations, -m "not slow" run on the shared 2-core machine)
def test_training_step_loss_decreases(tmp_path):
    from lightning.pytorch.callbacks import Callback

    torch.manual_seed(0)
    module = make_module("segmentation.optim.lr=0.002", "segmentation.max_steps=20")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 32, 32, generator=g) * 0.3 + 0.5
    masks = torch.zeros(4, 1, 32, 32)
    masks[0, :, 4:12, 6:16] = 1
    masks[1, :, 18:26, 10:22] = 1
    masks[2, :, 8:20, 20:28] = 1
    images = torch.where(masks.bool(), images * 0.2, images)  # dark defects
    losses = []

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    loader = DataLoader(Items(images, masks, repeat=20), batch_size=4, shuffle=False)
    trainer = tiny_trainer(tmp_path, max_steps=20, callbacks=[Record()])
    trainer.fit(module, train_dataloaders=loader)
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert "train/loss" in trainer.callback_metrics and "train/synthetic_share" in trainer.callback_metrics


def test_ema_update_rule_warm_start_and_batchnorm_statistics():
    from fast_lightning.ema import ema_copy, update_ema

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = ema_copy(model)
    assert all(not p.requires_grad for p in ema.parameters())
    model(torch.randn(8, 3))  # moves the BatchNorm statistics
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    now = model.state_dict()
    update_ema(ema, model, decay=0.9, updates=100, average_buffers=True)  # 0.9 < (1+101)/(10+101): the decay holds
    for k, v in ema.state_dict().items():
        if k.endswith("num_batches_tracked"):
            assert torch.equal(v, now[k])  # integer buffers are copied
        else:
            assert torch.allclose(v, 0.9 * before[k] + 0.1 * now[k], atol=1e-6), k
    fresh = ema_copy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    update_ema(fresh, model, decay=0.999, updates=0)  # warm start: decay (1+1)/(10+1) at the first step
    w = 2 / 11
    assert torch.allclose(fresh[0].weight, w * (model[0].weight - 1) + (1 - w) * model[0].weight, atol=1e-6)
    assert torch.equal(fresh[1].running_mean, model[1].running_mean)  # without average_buffers: copied


def test_ema_off_is_the_trained_network_and_its_state_keys():
    module = make_module()
    assert module.ema is None and module.inference_model is module.model
    assert not any(k.startswith("ema") for k in module.state_dict())


def test_ema_on_trains_the_weights_and_evaluates_saves_the_average(tmp_path):
    torch.manual_seed(0)
    module = make_module("segmentation.optim.ema_decay=0.9", "segmentation.max_steps=6")
    g = torch.Generator().manual_seed(0)
    images, masks = torch.rand(4, 3, 32, 32, generator=g), torch.zeros(4, 1, 32, 32)
    masks[:2, :, 8:16, 8:16] = 1
    start = {k: v.clone() for k, v in module.ema.state_dict().items()}
    trainer = tiny_trainer(tmp_path, max_steps=6)
    trainer.fit(module, train_dataloaders=DataLoader(Items(images, masks, repeat=6), batch_size=4))
    assert int(module.ema_updates) == 6
    ema, raw = module.ema.state_dict(), module.model.state_dict()
    moved = [k for k in ema if ema[k].is_floating_point() and not torch.equal(ema[k], start[k])]
    apart = [k for k in ema if ema[k].is_floating_point() and not torch.equal(ema[k], raw[k])]
    assert moved and apart  # the average follows the weights without being them
    keys = module.state_dict()
    assert any(k.startswith("ema.") for k in keys) and "ema_updates" in keys  # every checkpoint holds the average
    x = torch.rand(2, 3, 32, 32)
    module.eval()
    with torch.no_grad():
        assert torch.equal(module(x), module.ema(module.normalize(x)))  # evaluation runs the average
        module.train()
        assert torch.equal(module(x), module.model(module.normalize(x)))  # training runs the weights


def test_forward_outputs_probabilities_and_normalises_inside():
    module = make_module().eval()
    x = torch.rand(2, 3, 32, 32)
    p = module.predict_proba(x)
    assert p.shape == (2, 1, 32, 32) and p.dtype == torch.float32
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    imagenet_mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    assert torch.allclose(module.normalize(imagenet_mean), torch.zeros(1, 3, 1, 1), atol=1e-6)


def test_threshold_chosen_on_validation_is_stored_and_used_in_test(tmp_path):
    module = stub_module(tmp_path)
    images = PROBS.expand(-1, 3, -1, -1).contiguous()
    val = DataLoader(Items(images, TARGET), batch_size=2)
    trainer = tiny_trainer(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.validate(module, dataloaders=val)
    assert float(module.threshold) == pytest.approx(0.4, abs=1e-5) and bool(module.threshold_chosen)
    v = module.val_metrics
    assert v["pixel_auroc"] == pytest.approx(24 / 27, abs=1e-5)
    assert v["pixel_ap"] == pytest.approx(1 / 3 + 2 / 9 + 1 / 5, abs=1e-5)
    assert v["pixel_f1_max"] == pytest.approx(0.75, abs=1e-5)
    assert v["iou"] == pytest.approx(3 / 5) and v["acc"] == pytest.approx(1.0)
    assert v["image_auroc"] == pytest.approx(0.5)

    # the threshold travels in the checkpoint (a buffer) and test uses it, not test's own optimum
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    fresh = stub_module(tmp_path)
    assert float(fresh.threshold) == 0.5
    state = torch.load(ckpt, weights_only=False)
    fresh.load_state_dict(state["state_dict"])
    assert float(fresh.threshold) == pytest.approx(0.4, abs=1e-5)
    assert state["fast_lightning"]["kind"] == "segmentation"
    # test on data whose own F1-optimal threshold differs: probs shifted up by 0.15
    test_images = (PROBS + 0.15).clamp(0, 1).expand(-1, 3, -1, -1).contiguous()
    test = DataLoader(Items(test_images, TARGET), batch_size=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_trainer(tmp_path).test(fresh, dataloaders=test)
    t = fresh.test_metrics
    assert t["iou_threshold"] == pytest.approx(0.4, abs=1e-5)
    # at 0.4 on shifted probs: positives 1 .75 .55 all >= .4 (TP 3); negatives >= .4: .85 .65 .45 (FP 3)
    # -> IoU 3/6. Test's own optimum (.55) or the default .5 would give 3/5.
    assert t["iou"] == pytest.approx(3 / 6) and t["acc"] == pytest.approx(1.0)
    assert t["pixel_f1_max_threshold"] == pytest.approx(0.55, abs=1e-5)  # test's own optimum, reported only


def test_test_pass_reports_aupro_and_per_type_metrics(tmp_path):
    """The module feeds AUPRO and the per-type metrics the evaluated images and their records' defect types."""
    from fast_lightning.data.records import Record
    from fast_lightning.evaluation.metrics import aupro, per_type_metrics

    module = stub_module(tmp_path)  # threshold 0.5 (never chosen): a warning, and a known value
    images = PROBS.expand(-1, 3, -1, -1).contiguous()

    class Labelled(Items):
        records = [Record("a.png", "a_mask.png", "crack", "test"), Record("b.png", None, "good", "test"),
                   Record("c.png", "c_mask.png", "dent", "test")]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_trainer(tmp_path).test(module, dataloaders=DataLoader(Labelled(images, TARGET), batch_size=2))
        expected = per_type_metrics(PROBS, TARGET, ["crack", "good", "dent"], 0.5)
    assert module.test_metrics["aupro"] == pytest.approx(aupro(PROBS, TARGET), abs=1e-6)
    assert list(module.test_per_type) == ["crack", "dent"]
    for name in ("crack", "dent"):
        assert module.test_per_type[name] == pytest.approx(expected[name], abs=1e-6)
    # crack = image A + good image B: at .5 TP 2 (.9 .6), FP 1 (.7) -> IoU 2/3
    assert module.test_per_type["crack"]["iou"] == pytest.approx(2 / 3)
    # a dataset without records (no defect types): no per-type block, the rest still works
    plain = stub_module(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny_trainer(tmp_path).test(plain, dataloaders=DataLoader(Items(images, TARGET), batch_size=2))
    assert plain.test_per_type is None and math.isfinite(plain.test_metrics["aupro"])


def test_eval_state_is_deduplicated_by_index():
    """DistributedSampler pads shards with repeated images: each image must count once."""
    module = stub_module(None)
    module._reset_eval()
    for idx in ([0, 1], [2, 0]):  # image 0 seen twice
        batch = {"image": PROBS[idx].expand(-1, 3, -1, -1), "mask": TARGET[idx], "index": torch.tensor(idx)}
        module._accumulate(batch)
    index, probs, masks = module._collect()
    assert index.tolist() == [0, 1, 2]
    assert torch.allclose(probs, PROBS, atol=1e-5) and torch.equal(masks.float(), TARGET)


def test_panel_indices_fixed_and_bounded():
    from fast_lightning.segmentation.lightning_segmenter import pick_panel_indices

    labels = ["crack", "crack", "dent", "good", "good", "dent"]
    assert pick_panel_indices(labels, 3) == [0, 2, 3]
    assert pick_panel_indices(labels, 100) == [0, 2, 1, 5, 3, 4]
    assert pick_panel_indices(labels, 0) == [] and pick_panel_indices(["good", "good"], 1) == [0]


# ---- command-line errors (no training) -----------------------------------------------------------------------
def cli_in_process(args, capsys):
    """The CLI's own main() in this process (exit code, stderr): quicker for errors that stop before work."""
    from fast_lightning.cli import main

    rc = main(args)
    return rc, capsys.readouterr().err


def test_bad_arch_names_the_key(tmp_path, capsys):
    make_fake_mvtec(tmp_path / "data")
    rc, err = cli_in_process(["train-seg", "profile=smoke", "class_name=widget", f"data_root={tmp_path / 'data'}",
                       f"run_root={tmp_path / 'runs'}", "segmentation.arch=NoSuchNet"], capsys)
    assert rc == 2 and "segmentation.arch" in err and "NoSuchNet" in err
    assert not (tmp_path / "runs").exists()


def test_resolution_not_divisible_gives_clear_error(tmp_path, capsys):
    make_fake_mvtec(tmp_path / "data")
    rc, err = cli_in_process(["train-seg", "profile=smoke", "class_name=widget", f"data_root={tmp_path / 'data'}",
                       f"run_root={tmp_path / 'runs'}", "segmentation.arch=PAN", "data.seg_scale=64"], capsys)
    assert rc == 2 and "data.seg_scale=64" in err and "PAN" in err and "too small" in err
    assert not (tmp_path / "runs").exists()


def test_eval_seg_rejects_missing_and_foreign_checkpoints(tmp_path, capsys):
    rc, err = cli_in_process(["eval-seg", f"ckpt={tmp_path / 'nope.ckpt'}"], capsys)
    assert rc == 2 and "not found" in err
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(b"not a checkpoint")
    rc, err = cli_in_process(["eval-seg", f"ckpt={bad}"], capsys)
    assert rc == 2 and "corrupt" in err
    other = tmp_path / "diffusion.ckpt"
    torch.save({"state_dict": {}, "fast_lightning": {"kind": "diffusion"}}, other)
    rc, err = cli_in_process(["eval-seg", f"ckpt={other}"], capsys)
    assert rc == 2 and "not a segmentation checkpoint" in err


# ---- end to end (subprocesses, tiny) -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("segdata")
    make_fake_mvtec(root)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("synth", ["draem", "cutpaste", "real_third"])
def test_train_seg_end_to_end_and_eval_reproduces(synth, fake_root, tmp_path):
    runs = tmp_path / "runs"
    run_cli("train-seg", "profile=smoke", "class_name=widget", f"data_root={fake_root}", f"run_root={runs}",
        f"segmentation.synth={synth}", "trainer.enable_progress_bar=false")
    latest = runs / "seg" / "widget" / "latest"
    assert latest.is_symlink()
    m = check_seg_run(latest.resolve(), synth)
    if synth != "draem":
        return
    run_cli("eval-seg", f"ckpt={latest}", "trainer.enable_progress_bar=false")
    e = json.loads((latest / "eval_metrics.json").read_text())
    assert e["threshold"] == pytest.approx(m["threshold"]) and e["split_matches_training"] is True
    for k in METRIC_KEYS:
        a, b = m["test"][k], e["test"][k]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-6), k


@pytest.mark.slow
def test_train_seg_with_ema_then_eval_seg_and_predict_reproduce_its_test(fake_root, tmp_path):
    """segmentation.optim.ema_decay > 0: the checkpoint's average is what test, eval-seg and predict run."""
    runs = tmp_path / "runs"
    run_cli("train-seg", "profile=smoke", "class_name=widget", f"data_root={fake_root}", f"run_root={runs}",
        "segmentation.synth=cutpaste", "segmentation.optim.ema_decay=0.9", "trainer.enable_progress_bar=false")
    latest = runs / "seg" / "widget" / "latest"
    m = check_seg_run(latest.resolve(), "cutpaste")
    from fast_lightning.runs import read_checkpoint

    state = read_checkpoint(latest / "checkpoints" / "best.ckpt")["state_dict"]
    assert int(state["ema_updates"]) == m["best_step"] and any(k.startswith("ema.") for k in state)
    run_cli("eval-seg", f"ckpt={latest}", "trainer.enable_progress_bar=false")
    e = json.loads((latest / "eval_metrics.json").read_text())
    for k in METRIC_KEYS:
        a, b = m["test"][k], e["test"][k]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-6), k
    from fast_lightning.api import load_segmenter

    module = load_segmenter(latest).net.__self__  # Segmenter.net: the module's predict_proba
    assert module.ema is not None and not module.training and module.inference_model is module.ema


@pytest.mark.slow
def test_train_seg_ddp_two_cpu_processes_matches_single_device_eval(fake_root, tmp_path):
    """Padded DistributedSampler shards + all-gather + de-dup give the same numbers as one device."""
    runs = tmp_path / "runs"
    run_cli("train-seg", "profile=smoke", "class_name=widget", f"data_root={fake_root}", f"run_root={runs}",
        "segmentation.synth=cutpaste", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
        "trainer.enable_progress_bar=false")
    runs_made = [p for p in (runs / "seg" / "widget").iterdir() if p.name != "latest"]
    assert len(runs_made) == 1  # both ranks wrote into the same run directory
    latest = runs / "seg" / "widget" / "latest"
    m = check_seg_run(latest.resolve(), "cutpaste")
    run_cli("eval-seg", f"ckpt={latest}", "trainer.enable_progress_bar=false")
    e = json.loads((latest / "eval_metrics.json").read_text())
    for k in METRIC_KEYS:
        assert m["test"][k] == pytest.approx(e["test"][k], abs=1e-6), k


@pytest.mark.slow
def test_train_seg_fast_from_smoke_diffusion(fake_root, tmp_path):
    runs = tmp_path / "runs"
    run_cli("train-diffusion", "profile=smoke", "class_name=widget", f"data_root={fake_root}", f"run_root={runs}",
        "trainer.enable_progress_bar=false")
    run_cli("train-seg", "profile=smoke", "class_name=widget", f"data_root={fake_root}", f"run_root={runs}",
        "segmentation.synth=fast", "trainer.enable_progress_bar=false")
    m = check_seg_run((runs / "seg" / "widget" / "latest").resolve(), "fast")
    info = m["synthesizer_info"]
    assert info["diffusion_checkpoint"].startswith(str(runs.resolve() / "diffusion" / "widget"))
    assert 0.0 <= m["synthesis_wait_share"] <= 1.0
