"""Bad input, interruptions and faults the product survives: one test per case, named after the case.

Each case was tried as a demanding new user would (issue 13). Data is a tiny fake MVTec tree made in the test
(tests/conftest.py); runs are smoke-profile and a few steps. The list of cases is the test names below:

  wrong before (now fixed)                     unclear before (now a one-line error)
  1 refused RESUME wrote into the run          DATA=<a file>
  2 train-seg RESUME across classes            Ctrl-C during training
  3 max_steps=0 / negative                     disk full (+ resume from step-*.ckpt)
  4 mask size != image size in training        manifest with a cut last line
  5 faint masks became empty                   WANDB_MODE=online without a key
  6 16-bit images contrast-stretched           corrupt images found only mid-training
  7 class with only test/good                  Lightning notices printed twice + advert
  8 option invalid for another sampler
  9 synthesize RESUME with a smaller N
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import make_fake_mvtec
from fast_lightning.errors import UserError
from fast_lightning.config import load_config
from fast_lightning.errors import ConfigError
from fast_lightning.errors import DataError


def common(root: Path, run_root: Path, class_name: str = "widget") -> list[str]:
    return ["profile=smoke", f"data_root={root}", f"class_name={class_name}", f"run_root={run_root}",
            "trainer.enable_progress_bar=false", "diffusion.sample_every=0", "diffusion.num_log_samples=0"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_run(run_root: Path, kind: str, folder: str, root: Path, class_name: str, type_names, *overrides) -> Path:
    """A run directory as a finished training leaves it: config.yaml, split.json, checkpoints/last.ckpt."""
    cfg = load_config(["profile=smoke", f"data_root={root}", f"class_name={class_name}", *overrides])
    run_dir = run_root / folder / class_name / "20260101-000000-abcd"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run_dir / "split.json").write_text('{"class_name": "%s"}\n' % class_name)
    (run_dir / "metrics.json").write_text("{}\n")
    torch.save({"state_dict": {}, "global_step": 2,
                "hyper_parameters": {"config": OmegaConf.to_container(cfg, resolve=True)},
                "fast_lightning": {"kind": kind, "class_name": class_name, "type_names": list(type_names)}},
               run_dir / "checkpoints" / "last.ckpt")
    return run_dir


@pytest.fixture
def two_classes(tmp_path) -> Path:
    root = tmp_path / "data"
    make_fake_mvtec(root, "widget")
    make_fake_mvtec(root, "gadget", types=("scratch",), seed=1)
    return root


# ---- wrong before ------------------------------------------------------------------------------------------
def test_case01_refused_diffusion_resume_leaves_the_named_run_untouched(two_classes, tmp_path):
    from fast_lightning.commands import train_diffusion
    from fast_lightning.runs import CheckpointError

    runs = tmp_path / "runs"
    run_dir = fake_run(runs, "diffusion", "diffusion", two_classes, "widget", ["crack", "dent"])
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match="class 'widget' != CLASS='gadget'"):
        train_diffusion.main(common(two_classes, runs, "gadget") + [f"resume={run_dir}"])
    assert snapshot(run_dir) == before


def test_case02_train_seg_resume_across_classes_or_architectures_is_refused(two_classes, tmp_path):
    from fast_lightning.commands import train_seg
    from fast_lightning.runs import CheckpointError

    runs = tmp_path / "runs"
    run_dir = fake_run(runs, "segmentation", "seg", two_classes, "widget", ["crack", "dent"])
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match="class 'widget' != CLASS='gadget'.*anomaly types"):
        train_seg.main(common(two_classes, runs, "gadget") + [f"resume={run_dir}"])
    with pytest.raises(CheckpointError, match="segmentation.arch: checkpoint has Unet, now FPN"):
        train_seg.main(common(two_classes, runs) + [f"resume={run_dir}", "segmentation.arch=FPN"])
    with pytest.raises(CheckpointError, match="data.seg_scale: checkpoint has 64, now 96"):
        train_seg.main(common(two_classes, runs) + [f"resume={run_dir}", "data.seg_scale=96"])
    with pytest.raises(CheckpointError, match="'diffusion' checkpoint, not 'segmentation'"):
        diff = fake_run(tmp_path / "other", "diffusion", "diffusion", two_classes, "widget", ["crack", "dent"])
        train_seg.main(common(two_classes, runs) + [f"resume={diff}"])
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_case03_step_counts_are_validated_before_any_run_directory(fake_mvtec, tmp_path, steps):
    from fast_lightning.commands import train_diffusion

    runs = tmp_path / "runs"
    with pytest.raises(ConfigError, match="'diffusion.max_steps' must be >= 1"):
        train_diffusion.main(common(fake_mvtec, runs) + [f"diffusion.max_steps={steps}"])
    assert not runs.exists()
    for key, var in (("synthesis.n", "N"), ("sampling.steps", "STEPS"), ("segmentation.optim.batch_size", None)):
        with pytest.raises(ConfigError, match=f"{var or key}.*must be >= 1"):
            load_config(["profile=smoke", f"{key}=0"])
    with pytest.raises(ConfigError, match="data.val_fraction"):
        load_config(["profile=smoke", "data.val_fraction=1.5"])


def _break_mask_size(root: Path) -> Path:
    mask = root / "widget" / "ground_truth" / "crack" / "001_mask.png"
    Image.open(mask).resize((20, 20)).save(mask)
    return mask


def test_case04_mask_size_mismatch_stops_training_at_start(fake_mvtec, tmp_path, capsys):
    from fast_lightning.commands import check_data, train_diffusion

    mask = _break_mask_size(fake_mvtec)
    runs = tmp_path / "runs"
    with pytest.raises(DataError, match=f"mask size 20x20 differs.*{mask}"):
        train_diffusion.main(common(fake_mvtec, runs))
    assert not (runs / "diffusion").exists()
    assert check_data.main([f"data_root={fake_mvtec}", "class_name=widget"]) == 1
    assert str(mask) in capsys.readouterr().err


def test_case05_faint_masks_fail_check_data_and_never_binarise_to_empty(fake_mvtec, tmp_path, capsys):
    from fast_lightning.commands import check_data, train_diffusion
    from fast_lightning.data.io import mask_to_binary

    assert mask_to_binary(np.array([[0, 100], [100, 0]], np.uint8)).sum() == 2  # half the mask's maximum
    for mask in (fake_mvtec / "widget" / "ground_truth").rglob("*.png"):
        arr = np.asarray(Image.open(mask))
        Image.fromarray(np.where(arr > 0, 100, 0).astype(np.uint8)).save(mask)
    assert check_data.main([f"data_root={fake_mvtec}", "class_name=widget"]) == 1
    err = capsys.readouterr().err
    assert "faint mask (brightest value 100 of 255)" in err and "000_mask.png" in err
    with pytest.raises(DataError, match="faint mask"):
        train_diffusion.main(common(fake_mvtec, tmp_path / "runs"))


def test_case05b_a_class_whose_defect_masks_are_all_empty_is_refused_naming_them(fake_mvtec, tmp_path):
    from fast_lightning.data.check import file_problems
    from fast_lightning.commands import train_diffusion
    from fast_lightning.data.records import read_class

    masks = sorted((fake_mvtec / "widget" / "ground_truth").rglob("*.png"))
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(masks[0])
    errors, warns = file_problems(read_class(fake_mvtec, "widget"))
    assert not errors and any(str(masks[0]) in w for w in warns)  # one empty mask: a warning (real mt has 4)
    for mask in masks:
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(mask)
    with pytest.raises(DataError, match="every defect mask of widget is empty .*_mask.png"):
        train_diffusion.main(common(fake_mvtec, tmp_path / "runs"))


def test_case06_16bit_images_use_the_type_range_not_their_own_maximum(tmp_path):
    from fast_lightning.data.io import load_image

    path = tmp_path / "deep.png"
    arr = np.full((8, 8), 1000, np.uint16)
    arr[0, 0] = 13107  # 0.2 of the 16-bit range
    Image.fromarray(arr).save(path)
    img = load_image(path, channels=1)
    assert abs(float(img.max()) - 0.2) < 1e-6  # a per-image stretch made this 1.0
    assert abs(float(img[0, 1, 1]) - 1000 / 65535) < 1e-6  # and 8-bit quantisation made it 0
    assert load_image(path, channels=3).shape == (3, 8, 8)

    # synthesis pastes the source back: a 16-bit source keeps its depth, background bit for bit
    from fast_lightning.data.io import bit_depth
    from fast_lightning.synthesis.writer import SynthesisWriter

    writer = SynthesisWriter(tmp_path / "run")
    writer.prepare()
    out = img.clone()
    out[:, 4:, 4:] = 0.5  # "synthesized" inside the mask
    writer.write_pair({"index": 0, "bit_depth": bit_depth(path)}, out, (out == 0.5).float())
    written = np.asarray(Image.open(tmp_path / "run" / "images" / "000000.png"))
    assert written.dtype == np.uint16 and (written[:4, :4] == arr[:4, :4]).all()


def test_case07_class_with_only_good_test_images_fails_check_data(tmp_path, capsys):
    from fast_lightning.commands import check_data

    make_fake_mvtec(tmp_path, types=())
    assert check_data.main([f"data_root={tmp_path}", "class_name=widget"]) == 1
    assert "no defect images" in capsys.readouterr().err


def test_case08_an_option_invalid_for_any_sampler_is_an_error(tmp_path):
    from fast_lightning.stages.synthesize_pairs import make_sampler
    from fast_lightning.sampling import build_sampler

    with pytest.raises(ValueError, match="sampling.variant"):
        build_sampler({"name": "ddim", "variant": "foo"})
    with pytest.raises(ValueError, match="sampling.eta"):
        build_sampler({"name": "aias", "eta": -1})
    with pytest.raises(ValueError, match="sampling.renoise"):
        build_sampler({"name": "ddpm", "renoise": "sometimes"})
    with pytest.raises(UserError, match="VARIANT=foo"):
        make_sampler(load_config(["profile=smoke", "sampling.name=ddim", "sampling.variant=foo"]))


def test_case09_synthesize_resume_with_smaller_n_keeps_the_record_consistent(fake_mvtec, tmp_path, caplog):
    from fast_lightning.commands import synthesize, train_diffusion

    runs = tmp_path / "runs"
    args = common(fake_mvtec, runs) + ["trainer.precision=32-true"]
    assert train_diffusion.main(args + ["diffusion.max_steps=1"]) == 0
    assert synthesize.main(args + ["synthesis.n=4", "sampling.steps=3"]) == 0
    run_dir = (runs / "synthetic" / "widget" / "latest").resolve()
    with caplog.at_level(logging.WARNING):
        assert synthesize.main(args + ["synthesis.n=2", "sampling.steps=3", f"resume={run_dir}"]) == 0
    assert "already holds 4 pairs" in caplog.text
    info = json.loads((run_dir / "run.json").read_text())
    rows = (run_dir / "manifest.jsonl").read_text().splitlines()
    assert info["n"] == len(rows) == 4
    # case 3, second half: a checkpoint that never trained a step is never used for synthesis
    ckpt = torch.load(runs / "diffusion" / "widget" / "latest" / "checkpoints" / "last.ckpt", weights_only=False)
    ckpt["global_step"] = 0
    torch.save(ckpt, tmp_path / "untrained.ckpt")
    with pytest.raises(UserError, match="has not trained a single step"):
        synthesize.main(args + ["synthesis.n=2", f"synthesis.ckpt={tmp_path / 'untrained.ckpt'}"])


# ---- unclear before ----------------------------------------------------------------------------------------
def test_data_path_that_is_a_file_says_so(tmp_path):
    from fast_lightning.data.records import read_class

    a_file = tmp_path / "data.zip"
    a_file.write_bytes(b"x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        read_class(a_file, "widget")


class _Trainer:
    interrupted = True


def test_ctrl_c_during_training_names_the_checkpoint_and_the_resume_command(tmp_path):
    from fast_lightning.training import explained_stops

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step-0000003.ckpt").write_bytes(b"x")
    with pytest.raises(KeyboardInterrupt) as info:
        with explained_stops(tmp_path, f"make train-diffusion CLASS=w RESUME={tmp_path}", lambda: _Trainer()):
            raise SystemExit(1)  # what Lightning does after "attempting graceful shutdown"
    assert "step-0000003.ckpt" in str(info.value) and f"RESUME={tmp_path}" in str(info.value)
    with pytest.raises(SystemExit):  # a SystemExit that is not Lightning's Ctrl-C passes through
        with explained_stops(tmp_path, "cmd", lambda: None):
            raise SystemExit(3)


def test_disk_full_says_which_folder_and_resume_falls_back_to_the_newest_intact_step(tmp_path, caplog):
    from fast_lightning.runs import resolve_checkpoint
    from fast_lightning.training import explained_stops

    with pytest.raises(UserError, match=f"disk full.*{tmp_path}.*RESUME="):
        with explained_stops(tmp_path, f"make synthesize RESUME={tmp_path}"):
            raise OSError(errno.ENOSPC, "No space left on device")
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    torch.save({"state_dict": {}}, ckpts / "step-0000002.ckpt")
    (ckpts / "step-0000004.ckpt").write_bytes(b"PK\x03\x04 cut by a full disk")
    with caplog.at_level(logging.WARNING):
        assert resolve_checkpoint(tmp_path).name == "step-0000002.ckpt"
    assert "last.ckpt is missing" in caplog.text


def test_disk_full_during_training_ends_with_the_resume_command(fake_mvtec, tmp_path, monkeypatch):
    from fast_lightning import training
    from fast_lightning.commands import train_diffusion

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(training, "atomic_write_bytes", full)  # every checkpoint write hits a full disk
    with pytest.raises(UserError, match="disk full.*continue with: make train-diffusion CLASS=widget .*RESUME="):
        train_diffusion.main(common(fake_mvtec, tmp_path / "runs") + ["diffusion.max_steps=2",
                                                                      "diffusion.checkpoint_every=1"])


def test_manifest_with_a_cut_last_line_is_repaired_and_reported_once(tmp_path, caplog):
    from fast_lightning.synthesis.writer import SynthesisWriter

    writer = SynthesisWriter(tmp_path)
    writer.prepare()
    img, mask = torch.rand(3, 8, 8), torch.ones(1, 8, 8)
    writer.write_pair({"index": 0}, img, mask)
    part = writer.rank_manifest(0)
    part.write_text(part.read_text() + '{"index": 1, "ima')  # a crash mid-line, no trailing newline
    writer.write_pair({"index": 2}, img, mask)
    with caplog.at_level(logging.WARNING):
        assert sorted(writer.completed()) == [0, 2]
        writer.completed()
    assert caplog.text.count("cut manifest line") == 1


def test_wandb_online_without_a_key_fails_before_creating_anything(fake_mvtec, tmp_path, monkeypatch):
    from fast_lightning.commands import train_diffusion

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    runs = tmp_path / "runs"
    with pytest.raises(UserError, match="wandb login.*WANDB_MODE=offline"):
        train_diffusion.main(common(fake_mvtec, runs))
    assert not runs.exists()


def test_corrupt_image_is_found_at_start_and_a_pass_is_cached(fake_mvtec, tmp_path):
    from fast_lightning.data.check import validate_class_files
    from fast_lightning.data.datamodule import load_split
    from fast_lightning.data.records import read_class

    cfg = load_config(["profile=smoke", f"data_root={fake_mvtec}", "class_name=widget", f"run_root={tmp_path / 'r'}"])
    load_split(cfg)
    stamps = list((tmp_path / "r" / ".cache" / "data-check").glob("widget-*.ok"))
    assert len(stamps) == 1
    bad = fake_mvtec / "widget" / "train" / "good" / "003.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated: the header survives, the data does not
    with pytest.raises(DataError, match=f"corrupt image: {bad}"):
        load_split(cfg)
    with pytest.raises(DataError, match="corrupt"):
        validate_class_files(read_class(fake_mvtec, "widget"))


def test_lightning_notices_are_printed_once_without_adverts():
    import logging as lg

    from fast_lightning.cli import _NoAdverts, quiet_lightning_logging

    quiet_lightning_logging()
    assert not lg.getLogger("lightning").handlers and lg.getLogger("lightning").propagate
    make = lambda msg: lg.LogRecord("lightning.pytorch", lg.INFO, __file__, 1, msg, None, None)  # noqa: E731
    assert not _NoAdverts().filter(make("💡 Tip: For seamless cloud logging and experiment tracking, try ..."))
    assert _NoAdverts().filter(make("GPU available: False, used: False"))
