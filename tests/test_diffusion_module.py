"""The real train-diffusion entry point at smoke size: resume equality, EMA, divergence, checkpoint safety."""

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch

from fast_lightning.errors import UserError
from fast_lightning.commands import train_diffusion
from fast_lightning.stages import fit_diffusion
from fast_lightning.diffusion.lightning_diffusion import load_fast_diffusion
from fast_lightning.runs import CheckpointError
from fast_lightning.training import AtomicCheckpointIO


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
    copy = part.with_name(part.name + "-copy")  # a user's copy of a run folder resumes without stray last-v1.ckpt
    shutil.copytree(part, copy)
    run(fake_mvtec, tmp_path / "b", "diffusion.max_steps=4", "diffusion.checkpoint_every=2", f"resume={copy}")
    assert sorted(f.name for f in (copy / "checkpoints").glob("*.ckpt")) == ["last.ckpt", "step-0000002.ckpt",
                                                                            "step-0000004.ckpt"]
    assert state(copy)[0] == 4 and (part / "checkpoints" / "step-0000002.ckpt").is_file()  # the original is kept
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


# ---------------------------------------------------------------------------------------- gradient clipping
@pytest.mark.parametrize("value,expected", [(1.0, 1.0), (0.25, 0.25), (3, 3.0), (0, None), (0.0, None),
                                            (None, None)])
def test_gradient_clip_val_off_and_on(value, expected):
    from fast_lightning.training import gradient_clip_val

    assert gradient_clip_val(value) == expected


@pytest.mark.parametrize("value", ["-1.0", "-0.01", "abc", "inf", "nan"])
def test_bad_grad_clip_is_refused_when_the_config_is_built(value):
    from fast_lightning.config import load_config
    from fast_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match=r"diffusion\.optim\.grad_clip"):
        load_config(["profile=smoke", f"diffusion.optim.grad_clip={value}"])


def _one_clipped_step(tmp_path, clip):
    """One optimizer step of a tiny module through the real build_trainer; the gradient norm the optimizer used."""
    import lightning as L

    from fast_lightning.config import load_config
    from fast_lightning.training import build_trainer

    class RecordingSGD(torch.optim.SGD):
        seen: list = []

        def step(self, closure=None):
            with torch.enable_grad():
                loss = closure()
            grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            RecordingSGD.seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
            super().step()
            return loss

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return 1e3 * self.lin(batch[0]).sum()  # gradient norm in the thousands

        def configure_optimizers(self):
            return RecordingSGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            x = torch.ones(8, 4)
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=8)

    RecordingSGD.seen = []
    cfg = load_config(["profile=smoke", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                       "logger.wandb.enabled=false"])
    module = Tiny()
    before = module.lin.weight.detach().clone()
    trainer = build_trainer(cfg, tmp_path, "probe", 1, callbacks=[], enable_checkpointing=False,
                            gradient_clip_val=clip, gradient_clip_algorithm="norm")
    assert trainer.gradient_clip_val == clip
    trainer.fit(module)
    return RecordingSGD.seen[0], float((module.lin.weight.detach() - before).norm())


def test_grad_clip_bounds_the_gradient_norm_of_a_step(tmp_path):
    norm_off, update_off = _one_clipped_step(tmp_path / "off", None)
    norm_on, update_on = _one_clipped_step(tmp_path / "on", 0.5)
    assert norm_off > 100  # unclipped
    assert norm_on == pytest.approx(0.5, rel=1e-4)  # clipped to the configured norm
    assert update_on < update_off / 100


def test_train_diffusion_passes_grad_clip_to_the_trainer(fake_mvtec, tmp_path, monkeypatch):
    from fast_lightning.errors import ConfigError

    seen = {}

    class Stop(Exception):
        pass

    def fake_build_trainer(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(fit_diffusion, "build_trainer", fake_build_trainer)
    base = ["profile=smoke", f"data_root={fake_mvtec}", "class_name=widget", f"run_root={tmp_path}",
            "diffusion.num_log_samples=0"]
    with pytest.raises(Stop):
        train_diffusion.main(base + ["diffusion.optim.grad_clip=0.7"])
    assert seen["gradient_clip_val"] == 0.7 and seen["gradient_clip_algorithm"] == "norm"
    with pytest.raises(Stop):
        train_diffusion.main(base + ["diffusion.optim.grad_clip=0"])
    assert seen["gradient_clip_val"] is None
    with pytest.raises(ConfigError, match=r"diffusion\.optim\.grad_clip"):
        train_diffusion.main(base + ["diffusion.optim.grad_clip=-1"])
