"""Safe by default (issue 22): checkpoints that cannot run code, run folders that cannot collide or escape,
masks read as the user meant. One test per case of the issue, named after it:

  wrong before (now fixed)                              unclear before (now clear)
  1 a checkpoint ran code (eval-seg, synthesize, RESUME) 5 DATA/CLASS with spaces through make
  2 RGBA masks read as whole-image defects               6 a truncated metrics.json reused by compare
  3 CLASS=../../x wrote outside runs/; SYNTH=unknown     7 a run_root that cannot be created
    left a stub run folder                               8 the resume hint ignored best.ckpt on disk
  4 two identical runs wrote into one folder             + dangling image symlinks, 000_mask.PNG next to 000.JPG
  faults: kill -9 during compare / benchmark / synthesize (slow)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import PROJECT_DIR, cli_env, make_fake_mvtec, run_cli
from fast_lightning.cli import main as cli
from fast_lightning.config import load_config
from fast_lightning.errors import ConfigError
from fast_lightning.errors import DataError, UserError

SMOKE = ["profile=smoke", "trainer.enable_progress_bar=false"]
TINY_SEG = ["segmentation.max_steps=2", "segmentation.val_every=2"]


def common(root: Path, run_root: Path, class_name: str = "widget") -> list[str]:
    return [*SMOKE, f"data_root={root}", f"class_name={class_name}", f"run_root={run_root}"]


def in_process(args: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli(args)
    return rc, capsys.readouterr().err


# ---- 1. checkpoints cannot run code ------------------------------------------------------------------------
class _WritesMarker:
    """Unpickling this creates the folder ``marker``: what a malicious checkpoint could do (or worse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def malicious_checkpoint(path: Path, marker: Path, kind: str = "segmentation") -> Path:
    torch.save({"state_dict": {}, "payload": _WritesMarker(marker),
                "fast_lightning": {"kind": kind, "class_name": "widget"}}, path)
    return path


def test_case01_a_malicious_checkpoint_never_runs_code_in_eval_seg_synthesize_or_resume(fake_mvtec, tmp_path,
                                                                                          capsys):
    marker = tmp_path / "pwned"
    evil = malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    runs = tmp_path / "runs"
    attempts = {
        "eval-seg": ["eval-seg", f"ckpt={evil}"],
        "synthesize": ["synthesize", *common(fake_mvtec, runs), f"synthesis.ckpt={evil}", "synthesis.n=1"],
        "train-seg RESUME": ["train-seg", *common(fake_mvtec, runs), f"resume={evil}", "segmentation.synth=cutpaste"],
        "train-diffusion RESUME": ["train-diffusion", *common(fake_mvtec, runs), f"resume={evil}"],
    }
    for name, args in attempts.items():
        rc, err = in_process(args, capsys)
        assert rc == 2 and "is not loaded: unpickling them could run code" in err, (name, err)
        assert "convert-checkpoint" in err and len(err.strip().splitlines()) == 1, (name, err)
        assert not marker.exists(), f"{name} ran code from the checkpoint"
    # a plain pickle file (not torch's zip format) is refused the same way
    import pickle

    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps({"state_dict": {}, "payload": _WritesMarker(marker)}))
    rc, err = in_process(["eval-seg", f"ckpt={raw}"], capsys)
    assert rc == 2 and not marker.exists(), err
    # Lightning's own load (fit/test ckpt_path) goes through the same reader
    from fast_lightning.runs import CheckpointError
    from fast_lightning.training import AtomicCheckpointIO

    with pytest.raises(CheckpointError):
        AtomicCheckpointIO().load_checkpoint(evil, weights_only=False)
    assert not marker.exists()
    # the pickle is real: trusting the file does run it (which is why trust is explicit and warned about)
    from fast_lightning.runs import read_checkpoint

    read_checkpoint(evil, trust=True)
    assert marker.is_dir()


def test_case01b_one_checkpoint_reader_in_the_package_and_never_weights_only_false():
    package = PROJECT_DIR / "fast_lightning"
    loads, unsafe = [], []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(|pickle\.loads?\(|allow_pickle=True", text):
            loads.append(f"{path.relative_to(package)}:{text[:m.start()].count(chr(10)) + 1}")
        if re.search(r"weights_only\s*=\s*False", text):
            unsafe.append(str(path.relative_to(package)))
    assert len(loads) == 1 and loads[0].startswith("runs.py:"), loads
    assert not unsafe, unsafe


def _old_style_checkpoint(path: Path, cfg) -> Path:
    """What fast-lightning wrote before run configs were plain containers: the OmegaConf object pickled in."""
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": 3, "hyper_parameters": {"config": cfg},
                "fast_lightning": {"kind": "segmentation", "class_name": "widget"}}, path)
    return path


def test_case01c_an_older_checkpoint_is_refused_with_the_conversion_command_which_needs_trust(tmp_path, capsys):
    from fast_lightning.runs import read_checkpoint, saved_run_config

    cfg = load_config(["profile=smoke", "class_name=widget"])
    old = _old_style_checkpoint(tmp_path / "old.ckpt", cfg)
    rc, err = in_process(["eval-seg", f"ckpt={old}"], capsys)
    assert rc == 2 and "older fast-lightning" in err
    assert f"python -m fast_lightning convert-checkpoint ckpt={old} trust_checkpoint=true" in err
    rc, err = in_process(["convert-checkpoint", f"ckpt={old}"], capsys)
    assert rc == 2 and "trust_checkpoint=true" in err
    before = old.read_bytes()
    rc, _ = in_process(["convert-checkpoint", f"ckpt={old}", "trust_checkpoint=true"], capsys)
    assert rc == 0
    assert (tmp_path / "old.ckpt.pickled").read_bytes() == before  # the original is kept
    ckpt = torch.load(old, weights_only=True)  # now plain data
    assert torch.equal(ckpt["state_dict"]["w"], torch.ones(2)) and ckpt["global_step"] == 3
    assert saved_run_config(read_checkpoint(old)).class_name == "widget"


def test_case01d_checkpoints_written_by_training_load_weights_only_and_resume_through_the_safe_reader(
        fake_mvtec, tmp_path, monkeypatch):
    from fast_lightning.commands import train_diffusion

    args = common(fake_mvtec, tmp_path / "runs") + ["diffusion.max_steps=2", "diffusion.checkpoint_every=1",
                                                    "diffusion.sample_every=0", "diffusion.num_log_samples=0",
                                                    "diffusion.num_train_timesteps=100"]
    assert train_diffusion.main(args) == 0
    run_dir = (tmp_path / "runs" / "diffusion" / "widget" / "latest").resolve()
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        torch.load(ckpt, map_location="cpu", weights_only=True)  # no allow-list needed
    seen = []
    original = torch.load

    def spy(*a, **k):
        seen.append(k.get("weights_only"))
        return original(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    resume = [a for a in args if not a.startswith("diffusion.max_steps")] + ["diffusion.max_steps=3",
                                                                             f"resume={run_dir}"]
    assert train_diffusion.main(resume) == 0
    assert seen and all(w is True for w in seen), seen  # RESUME checks and Lightning's fit(ckpt_path) alike
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


# ---- 2. masks with transparency ----------------------------------------------------------------------------
def _rgba_mask(defect: np.ndarray, colour: int) -> Image.Image:
    h, w = defect.shape
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = np.where(defect, 255, 0)
    return Image.fromarray(rgba, "RGBA")


def _replace_masks(root: Path, make) -> list[np.ndarray]:
    """Rewrite every defect mask of the fake class with ``make(defect bool array)``; returns the defects."""
    defects = []
    for path in sorted((root / "widget" / "ground_truth").rglob("*_mask.png")):
        defect = np.asarray(Image.open(path).convert("L")) > 0
        make(defect).save(path)
        defects.append(defect)
    return defects


@pytest.mark.parametrize("colour", [255, 0])
def test_case02_rgba_masks_with_the_defect_in_alpha_are_read_from_alpha(tmp_path, colour):
    from fast_lightning.data.check import check_class
    from fast_lightning.data.io import load_mask

    make_fake_mvtec(tmp_path)
    _replace_masks(tmp_path, lambda d: _rgba_mask(d, colour))
    path = next((tmp_path / "widget" / "ground_truth").rglob("*_mask.png"))
    mask = load_mask(path)[0].numpy()
    alpha = np.asarray(Image.open(path).getchannel("A")) > 0
    assert 0 < mask.sum() < mask.size and np.array_equal(mask > 0, alpha)
    report = check_class(tmp_path, "widget", progress=False)
    assert not report.errors and not any("covers" in w for w in report.warnings), report.warnings


def test_case02b_whole_image_masks_warn_and_ambiguous_or_empty_alpha_masks_are_named(tmp_path):
    from fast_lightning.data.check import check_class
    from fast_lightning.data.io import load_mask

    make_fake_mvtec(tmp_path)
    defects = _replace_masks(tmp_path, lambda d: Image.fromarray(np.full(d.shape, 255, np.uint8)))
    report = check_class(tmp_path, "widget", progress=False)
    assert sum("covers 100% of its image" in w for w in report.warnings) == len(defects)
    # colour and alpha disagree: refused, naming the file
    path = next((tmp_path / "widget" / "ground_truth").rglob("*_mask.png"))
    d = defects[0]
    rgba = np.zeros(d.shape + (4,), np.uint8)
    rgba[..., :3] = np.where(d, 0, 255)[..., None]
    rgba[..., 3] = np.where(d, 255, 0)
    Image.fromarray(rgba, "RGBA").save(path)
    with pytest.raises(DataError, match=f"ambiguous mask {re.escape(str(path))}.*alpha"):
        load_mask(path)
    # black everywhere, opaque: empty; the error says how alpha is read
    _replace_masks(tmp_path, lambda d: Image.fromarray(np.zeros(d.shape + (4,), np.uint8) + np.array(
        [0, 0, 0, 255], np.uint8), "RGBA"))
    report = check_class(tmp_path, "widget", progress=False)
    assert any("every defect mask" in e and "alpha channel" in e for e in report.errors), report.errors


def test_dangling_image_symlink_is_named_and_masks_match_case_insensitively(tmp_path):
    from fast_lightning.data.check import check_class
    from fast_lightning.data.records import read_class

    make_fake_mvtec(tmp_path)
    good = tmp_path / "widget" / "train" / "good"
    (good / "099.png").symlink_to(tmp_path / "gone.png")
    report = check_class(tmp_path, "widget", progress=False)
    assert any("099.png is a broken symbolic link" in e for e in report.errors), report.errors
    (good / "099.png").unlink()
    crack = tmp_path / "widget" / "test" / "crack"
    gt = tmp_path / "widget" / "ground_truth" / "crack"
    (crack / "000.png").rename(crack / "000.PNG")
    (gt / "000_mask.png").rename(gt / "000_MASK.PNG")
    index = read_class(tmp_path, "widget", strict=False)
    rec = next(r for r in index.test if r.image.endswith("000.PNG"))
    assert rec.mask == str(gt / "000_MASK.PNG") and not index.problems, index.problems


# ---- 3. run folders cannot escape run_root; nothing is created for an invalid run --------------------------
@pytest.mark.parametrize("override", ["class_name=../../x", "class_name=a/b", "run_id=../escape", "class_name=.."])
def test_case03_class_names_and_run_ids_that_leave_run_root_are_refused_before_anything_exists(
        tmp_path, override, capsys):
    root = tmp_path / "data" / "a" / "b"
    make_fake_mvtec(tmp_path / "x")  # CLASS=../../x would find this class folder
    make_fake_mvtec(root)
    runs = tmp_path / "work" / "runs"
    rc, err = in_process(["train-seg", *common(root, runs), "segmentation.synth=cutpaste", override], capsys)
    assert rc == 2 and "not a valid folder name" in err, err
    assert not runs.exists() and not (tmp_path / "work").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "x"]


def test_case03b_a_run_folder_resolving_outside_run_root_is_refused(fake_mvtec, tmp_path):
    from fast_lightning.runs import run_dir_for

    runs = tmp_path / "runs"
    (runs / "seg").mkdir(parents=True)
    (runs / "seg" / "widget").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    cfg = load_config(common(fake_mvtec, runs))
    with pytest.raises(ConfigError, match="outside run_root"):
        run_dir_for(cfg, "seg", "r1")


def test_case03c_an_unknown_synth_leaves_no_stub_run_folder(fake_mvtec, tmp_path, capsys):
    runs = tmp_path / "runs"
    rc, err = in_process(["train-seg", *common(fake_mvtec, runs), "segmentation.synth=unknown"], capsys)
    assert rc == 2 and "unknown segmentation.synth 'unknown'" in err
    assert not (runs / "seg").exists()


def test_case07_a_run_root_that_cannot_be_created_names_the_path_and_run_root(fake_mvtec, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    rc, err = in_process(["train-seg", *common(fake_mvtec, blocker / "runs"), "segmentation.synth=cutpaste"],
                         capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert str(blocker / "runs") in err and "run_root=" in err


# ---- 4. one writer per run folder --------------------------------------------------------------------------
HOLD = """
import sys, time
sys.path.insert(0, {project!r})
from fast_lightning.runs import lock_run_dir
lock_run_dir(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Start a process that holds the lock of a folder: yields start(folder) -> Popen."""
    procs = []

    def start(folder: Path) -> subprocess.Popen:
        folder.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", HOLD.format(project=str(PROJECT_DIR)), str(folder)],
                                stdout=subprocess.PIPE, text=True, env=cli_env())
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_case04_a_second_identical_run_refuses_while_the_first_holds_the_folder(fake_mvtec, tmp_path, holder,
                                                                                 capsys):
    runs = tmp_path / "runs"
    run_dir = runs / "seg" / "widget" / "dup"
    first = holder(run_dir)
    rc, err = in_process(["train-seg", *common(fake_mvtec, runs), "segmentation.synth=cutpaste", "run_id=dup"],
                         capsys)
    assert rc == 2 and f"run {run_dir} is in use by PID {first.pid}" in err, err
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing of the second run was written
    # the study steps (compare, benchmark: fixed run ids) take the same lock before reusing or redoing a run
    from fast_lightning.study import segmenter

    cfg = load_config(common(fake_mvtec, runs) + ["segmentation.synth=cutpaste"])
    (runs / "seg" / "widget" / "cmp").mkdir(parents=True)
    holder(runs / "seg" / "widget" / "cmp")
    with pytest.raises(UserError, match="is in use by PID"):
        segmenter(cfg, "cmp")


def test_case04b_a_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path, caplog):
    import logging

    from fast_lightning.runs import lock_run_dir, release_run_dir

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(f"{dead.pid}\n")
    with caplog.at_level(logging.INFO):
        lock_run_dir(tmp_path)
    try:
        assert f"taking over the stale lock of PID {dead.pid}" in caplog.text
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    finally:
        release_run_dir(tmp_path)
    assert (tmp_path / ".lock").read_text() == ""  # a clean release leaves no PID to call stale


def test_case04c_ddp_children_do_not_take_the_lock_of_rank_zeros_folder(tmp_path, holder, monkeypatch):
    from fast_lightning.runs import lock_run_dir

    holder(tmp_path / "run")  # rank 0
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert lock_run_dir(tmp_path / "run") is None  # no deadlock, no refusal: the child shares the folder


# ---- 5-8: unclear before ----------------------------------------------------------------------------------
def test_case05_data_and_class_with_spaces_pass_through_make(tmp_path):
    if not (PROJECT_DIR / ".venv" / ".installed").is_file():
        pytest.skip("make bootstraps .venv first; not here")
    root = tmp_path / "my data"
    make_fake_mvtec(root, "my widget")
    proc = subprocess.run(["make", "-s", "check-data", f"DATA={root}", "CLASS=my widget"], cwd=PROJECT_DIR,
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{root / 'my widget'} is OK" in proc.stdout


def test_case06_an_unreadable_metrics_json_or_missing_best_ckpt_is_redone_not_reused(tmp_path, capsys):
    from fast_lightning.study import reuse_or_run

    run_dir = tmp_path / "runs" / "seg" / "widget" / "compare-x"
    calls = []

    def fake_train(cfg):
        calls.append(sorted(p.name for p in run_dir.iterdir()))
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        (run_dir / "checkpoints" / "best.ckpt").write_bytes(b"x")
        (run_dir / "metrics.json").write_text(json.dumps({"checkpoint": str(run_dir / "checkpoints/best.ckpt")}))
        return 0

    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"old")
    (run_dir / "metrics.json").write_text('{"test": {"pixel_ap": 0.')  # cut by kill -9
    reuse_or_run("train-seg", run_dir, "metrics.json", fake_train, None)
    assert "metrics.json is unreadable" in capsys.readouterr().out and calls == [[".lock"]]  # emptied first
    reuse_or_run("train-seg", run_dir, "metrics.json", fake_train, None)
    assert "[reuse]" in capsys.readouterr().out and len(calls) == 1
    (run_dir / "checkpoints" / "best.ckpt").unlink()
    reuse_or_run("train-seg", run_dir, "metrics.json", fake_train, None)
    assert "checkpoints/best.ckpt missing" in capsys.readouterr().out and len(calls) == 2


def test_case08_the_resume_hint_reads_what_is_on_disk(tmp_path):
    from fast_lightning.training import explained_stops

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.ckpt").write_bytes(b"x")
    with pytest.raises(KeyboardInterrupt) as info:
        with explained_stops(tmp_path, f"make train-seg RESUME={tmp_path}"):
            raise KeyboardInterrupt
    msg = str(info.value)
    assert "best.ckpt" in msg and "no checkpoint was written" not in msg and "RESUME=" not in msg


# ---- faults: kill -9 ---------------------------------------------------------------------------------------
def _kill_when(proc: subprocess.Popen, ready, timeout: float = 400) -> None:
    end = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "finished before it could be killed"
        assert time.time() < end, "timed out waiting to kill"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["compare", "benchmark"])
def test_kill9_during_compare_or_benchmark_then_rerun_gives_the_table_of_an_uninterrupted_run(tmp_path, command):
    root = tmp_path / "data"
    make_fake_mvtec(root)
    table = "comparison.csv" if command == "compare" else "benchmark.csv"

    def args(runs: Path, out: Path) -> list[str]:
        where = common(root, runs) if command == "compare" else [*SMOKE, f"run_root={runs}", f"classes=widget@{root}"]
        return [command, *where, "synths=cutpaste,draem", "seeds=1", f"out={out}", *TINY_SEG]

    run_cli(*args(tmp_path / "clean_runs", tmp_path / "clean"))
    runs, out = tmp_path / "runs", tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "fast_lightning", *args(runs, out)], cwd=PROJECT_DIR,
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seg = runs / "seg" / "widget"
    # killed while the second segmenter runs: the first is finished, the second has a folder (no metrics.json)
    _kill_when(proc, lambda: any(p.name.endswith("draem-s0") and (p / "config.yaml").is_file()
                                 for p in (seg.iterdir() if seg.is_dir() else [])))
    again = run_cli(*args(runs, out))
    assert "[reuse] train-seg synth=cutpaste" in again.stdout
    assert "[redo]" in again.stdout and "unfinished" in again.stdout
    assert (out / table).read_text() == (tmp_path / "clean" / table).read_text()


@pytest.mark.slow
def test_kill9_during_synthesize_then_other_settings_into_that_folder_are_refused(fake_mvtec, tmp_path):
    runs = tmp_path / "runs"
    base = common(fake_mvtec, runs)
    run_cli("train-diffusion", *base, "diffusion.max_steps=2", "diffusion.checkpoint_every=2",
            "diffusion.sample_every=0", "diffusion.num_log_samples=0", "diffusion.num_train_timesteps=100")
    synth = [*base, "run_id=s1", "diffusion.num_train_timesteps=100", "synthesis.batch_size=1"]
    folder = runs / "synthetic" / "widget" / "s1"
    proc = subprocess.Popen([sys.executable, "-m", "fast_lightning", "synthesize", *synth, "synthesis.n=40"],
                            cwd=PROJECT_DIR, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: len(list((folder / "images").glob("*.png"))) >= 2 if (folder / "images").is_dir()
               else False)
    made = sorted(p.name for p in (folder / "images").glob("*.png"))
    other = run_cli("synthesize", *synth, "synthesis.n=40", "sampling.steps=3", expect=2)
    assert "cannot" in other.stderr.lower() or "differ" in other.stderr.lower(), other.stderr
    assert sorted(p.name for p in (folder / "images").glob("*.png")) == made  # nothing mixed in
    done = run_cli("synthesize", *synth, "synthesis.n=6")  # same settings, other N: resumed, never mixed
    record = json.loads((folder / "run.json").read_text())
    manifest = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert record["n"] == len(manifest) >= 6 and len({r["index"] for r in manifest}) == len(manifest)
    assert done.returncode == 0
