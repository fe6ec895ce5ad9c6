"""End-to-end studies at smoke size: compare / ablate through their real entry points, and the study's cache
keys (the quick demo and compare runs: tests/test_entry_points.py)."""

import csv

import pytest

from fast_lightning import study
from fast_lightning.commands import ablate, compare
from fast_lightning.stages import fit_diffusion


def _common(tmp_path, data_root, class_name="widget"):
    return ["profile=smoke", f"data_root={data_root}", f"class_name={class_name}", f"run_root={tmp_path / 'runs'}",
            "trainer.enable_progress_bar=false"]


@pytest.mark.slow  # trains a diffusion model and 4 segmenters
def test_compare_writes_report_and_reuses_runs(fake_mvtec, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = _common(tmp_path, fake_mvtec) + ["synths=fast,draem,cutpaste,real_third", "seeds=1"]
    assert compare.main(args) == 0
    out = tmp_path / "reports" / "widget"
    for name in ("comparison.md", "comparison.csv", "comparison.png", "samples.png"):
        assert (out / name).is_file(), name
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["synthesizer"] for r in rows] == ["fast", "draem", "cutpaste", "real_third"]
    for r in rows:
        v = float(r["pixel_auroc_mean"])
        assert 0 <= v <= 1, r  # the fake class has real defect pixels: the AUROC is defined
    assert "pixel AUROC" in (out / "comparison.md").read_text()
    capsys.readouterr()
    assert compare.main(args) == 0  # second call reuses every finished run
    assert capsys.readouterr().out.count("[reuse]") == 4


def test_compare_rejects_unknown_synthesizer(fake_mvtec, tmp_path):
    from fast_lightning.errors import UserError

    with pytest.raises(UserError, match="SYNTHS"):
        compare.main(_common(tmp_path, fake_mvtec) + ["synths=draem,gan"])


@pytest.mark.slow  # trains a diffusion model and a segmenter per AIAS setting and FARM variant
def test_ablate_smoke(fake_mvtec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ablate.main(_common(tmp_path, fake_mvtec) + ["steps=2,5"]) == 0
    out = tmp_path / "reports" / "widget"
    text = (out / "ablation.md").read_text()
    assert "AIAS-2" in text and "AIAS-5" in text and "FARM off" in text and "FARM in tail (old)" in text
    old_rule = tmp_path / "runs" / "synthetic" / "widget"
    (syn,) = [p for p in old_rule.iterdir() if p.name.endswith("farmintailold")]
    assert "farm_min_t: 0" in (syn / "config.yaml").read_text()
    assert (out / "ablation.png").is_file()


def test_compare_trains_a_model_when_latest_does_not_match_the_profile(fake_mvtec, tmp_path, monkeypatch):
    """`latest` from another profile (64 px) must not be used by a smoke (32 px) study: train one instead."""
    import os

    import torch

    from fast_lightning.commands.arguments import config_from_args

    old = tmp_path / "runs" / "diffusion" / "widget" / "cpu-run" / "checkpoints"
    old.mkdir(parents=True)
    torch.save({"state_dict": {}, "global_step": 1, "fast_lightning": {"kind": "diffusion", "class_name": "widget",
                                                     "resolution": 64, "channels": 3}}, old / "last.ckpt")
    os.symlink("cpu-run", tmp_path / "runs" / "diffusion" / "widget" / "latest")
    calls = []

    def fake_train(cfg):
        run_dir = tmp_path / "runs" / "diffusion" / "widget" / str(cfg.run_id)
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text("{}")
        calls.append(cfg)
        return 0

    monkeypatch.setattr(fit_diffusion, "run", fake_train)
    monkeypatch.chdir(tmp_path)
    rest = _common(tmp_path, fake_mvtec) + ["run_root=runs"]  # relative, as in the shipped config
    ckpt = study.ensure_diffusion(config_from_args(rest), redo=False)
    assert len(calls) == 1 and ckpt.parent.parent.name.startswith("auto-")
    # one spelling whichever way the model was found (a relative run_root or `latest`): pools are named by it
    assert ckpt.is_absolute() and ckpt == ckpt.resolve()


def test_compare_does_not_reuse_latest_trained_with_other_model_settings(fake_mvtec, tmp_path, monkeypatch):
    """`latest` that fits class/resolution/channels but was trained with another diffusion.lambda_farm is not
    reused (one diffusion key); the same model settings reuse it."""
    import os

    import torch
    from omegaconf import OmegaConf

    from fast_lightning.commands.arguments import config_from_args

    rest = _common(tmp_path, fake_mvtec)
    cfg = config_from_args(rest)
    run = tmp_path / "runs" / "diffusion" / "widget" / "earlier"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}, "global_step": 1, "fast_lightning": {"kind": "diffusion", "class_name": "widget", "channels": 3,
                                                     "resolution": int(cfg.diffusion.resolution)}},
               run / "checkpoints" / "last.ckpt")
    os.symlink("earlier", run.parent / "latest")
    trained = []
    monkeypatch.setattr(study, "diffusion_model", lambda c, run_id, redo=False, label="": trained.append(run_id) or run / "x.ckpt")

    OmegaConf.save(config_from_args(rest + ["segmentation.max_steps=3"]), run / "config.yaml")
    assert study.ensure_diffusion(cfg) == (run / "checkpoints" / "last.ckpt").resolve() and not trained
    OmegaConf.save(config_from_args(rest + ["diffusion.lambda_farm=0.5"]), run / "config.yaml")
    study.ensure_diffusion(cfg)
    assert trained == [f"auto-{study.diffusion_key(cfg)}"]


def test_study_keys(fake_mvtec, tmp_path):
    """settings_key of a config equals the hash of the same settings given as arguments plus overrides (run
    names stay as they were), a pool's key ignores the segmenter's settings, and the diffusion key ignores
    segmentation / sampling / synthesis settings."""
    from fast_lightning.config import apply_overrides, load_config

    rest = _common(tmp_path, fake_mvtec)
    extra = ["synthesis.ckpt=/x/last.ckpt", "segmentation.synth=draem", "seed=1"]
    cfg = load_config(rest)
    assert study.settings_key(apply_overrides(cfg, extra)) == study.settings_key(load_config(rest + extra))
    assert study.settings_key(apply_overrides(cfg, ["segmentation.max_steps=3"])) != study.settings_key(cfg)
    pool = study.settings_key(cfg, study.POOL_IGNORES)  # a pool's name ignores the segmenter, not the sampler
    seg_only = ["segmentation.optim.ema_decay=0.9", "segmentation.max_steps=3", "seed=2"]
    assert study.settings_key(load_config(rest + seg_only), study.POOL_IGNORES) == pool
    assert study.settings_key(load_config(rest + ["sampling.steps=7"]), study.POOL_IGNORES) != pool
    same = ["segmentation.max_steps=3", "sampling.steps=5", "synthesis.n=7", "run_id=x"]
    assert study.diffusion_key(load_config(rest + same)) == study.diffusion_key(cfg)
    assert study.diffusion_key(load_config(rest + ["diffusion.lambda_farm=0.5"])) != study.diffusion_key(cfg)
