"""The real train-diffusion entry point at smoke size: resume equality, EMA, divergence, checkpoint safety."""

import errno
import os
from pathlib import Path

import pytest
import torch

from fast_lightning.cli import UserError
from fast_lightning.commands import train_diffusion
from fast_lightning.diffusion.module import load_fast_diffusion
from fast_lightning.training import AtomicCheckpointIO, CheckpointError


def run(fake_mvtec, run_root, *extra):
    args = ["profile=smoke", f"data_root={fake_mvtec}", "class_name=widget", f"run_root={run_root}",
            "trainer.enable_progress_bar=false", "diffusion.sample_every=0", "diffusion.num_log_samples=0", *extra]
    assert train_diffusion.main(args) == 0
    return Path(os.path.realpath(Path(run_root) / "diffusion" / "widget" / "latest"))


def state(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["global_step"], ckpt["state_dict"]


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(fake_mvtec, tmp_path):
    full = run(fake_mvtec, tmp_path / "a", "diffusion.max_steps=4", "diffusion.checkpoint_every=2")
    part = run(fake_mvtec, tmp_path / "b", "diffusion.max_steps=2", "diffusion.checkpoint_every=2")
    resumed = run(fake_mvtec, tmp_path / "b", "diffusion.max_steps=4", "diffusion.checkpoint_every=2", f"resume={part}")
    assert resumed == part  # resume continues in the same run directory
    step_a, sd_a = state(full)
    step_b, sd_b = state(resumed)
    assert step_a == step_b == 4
    assert sd_a.keys() == sd_b.keys()
    for key in sd_a:
        assert torch.allclose(sd_a[key].float(), sd_b[key].float(), atol=1e-6), key
    # the EMA is a real average: it differs from the raw weights after training
    diffs = [not torch.equal(sd_a[k], sd_a["ema." + k[len("model."):]]) for k in sd_a
             if k.startswith("model.") and sd_a[k].dtype.is_floating_point and "running" not in k]
    assert any(diffs)
    for name in ("config.yaml", "split.json", "metrics.json"):
        assert (full / name).is_file()
    model, meta = load_fast_diffusion(full)
    assert meta["class_name"] == "widget" and meta["type_names"] == ["crack", "dent"]
    ema_weight = next(v for k, v in sd_a.items() if k.startswith("ema."))
    assert torch.equal(next(iter(model.state_dict().values())), ema_weight)


@pytest.mark.slow
def test_bad_resume_is_an_error_never_a_fresh_start(fake_mvtec, tmp_path):
    first = run(fake_mvtec, tmp_path, "diffusion.max_steps=2", "diffusion.checkpoint_every=2")
    with pytest.raises(CheckpointError, match="diffusion.farm"):
        run(fake_mvtec, tmp_path, "diffusion.max_steps=3", "diffusion.farm.base_channels=16", f"resume={first}")
    ckpt = first / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        run(fake_mvtec, tmp_path, "diffusion.max_steps=3", f"resume={first}")
    with pytest.raises(CheckpointError, match="not found"):
        run(fake_mvtec, tmp_path, f"resume={tmp_path / 'nowhere'}")


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(fake_mvtec, tmp_path, monkeypatch):
    from fast_lightning.diffusion.model import FASTDiffusion

    original = FASTDiffusion.training_losses
    calls = {"n": 0}

    def exploding(self, *a, **k):
        out = original(self, *a, **k)
        calls["n"] += 1
        if calls["n"] > 2:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(FASTDiffusion, "training_losses", exploding)
    with pytest.raises(UserError, match="non-finite loss.*last good checkpoint"):
        run(fake_mvtec, tmp_path, "diffusion.max_steps=6", "diffusion.checkpoint_every=2")
    run_dir = next((tmp_path / "diffusion" / "widget").iterdir())
    step, sd = state(run_dir)
    assert step == 2 and all(torch.isfinite(v).all() for v in sd.values() if v.dtype.is_floating_point)


def test_disk_full_while_checkpointing_keeps_previous(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert torch.equal(torch.load(path, weights_only=False)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind
