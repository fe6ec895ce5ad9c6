"""Training and synthesis under Lightning DDP: 2 CPU processes, gloo backend (what a multi-GPU run does, minus
NCCL). Every command is a real subprocess, exactly as a user would start it; see docs/SCALE.md."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import cli_env, run_cli
from fast_lightning.config import PROJECT_ROOT

DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.enable_progress_bar=false"]
SMOKE = ["profile=smoke", "class_name=widget"]
STEPS = 3


def _run(*args: str, cwd: Path, launcher=()) -> str:
    """``python [launcher] -m fast_lightning <args>`` (conftest.run_cli, exit 0 asserted): stdout + stderr."""
    proc = run_cli(*args, cwd=cwd, launcher=launcher)
    return proc.stdout + proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())


@pytest.fixture(scope="module")
def ddp_diffusion(data_root, tmp_path_factory):
    """One `train-diffusion` under DDP with 2 processes (Lightning launches the second one)."""
    runs = tmp_path_factory.mktemp("ddp_runs")
    out = _run("train-diffusion", *SMOKE, f"data_root={data_root}", f"run_root={runs}",
               f"diffusion.max_steps={STEPS}", *DDP, cwd=runs)
    return runs, out


@pytest.mark.slow  # starts 2 DDP processes
def test_train_diffusion_ddp_two_processes(ddp_diffusion):
    runs, out = ddp_diffusion
    assert "MEMBER: 2/2" in out and "distributed_backend=gloo" in out
    (run_dir,) = _run_dirs(runs / "diffusion" / "widget")  # the second rank made no run directory of its own
    assert (runs / "diffusion" / "widget" / "latest").resolve() == run_dir.resolve()
    for name in ("config.yaml", "split.json", "metrics.json", "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == STEPS
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == STEPS


@pytest.mark.slow  # starts 2 DDP processes
def test_train_seg_ddp_two_processes(data_root, tmp_path):
    """The segmenter too: one run dir, test set evaluated once (DistributedSampler padding deduplicated)."""
    out = _run("train-seg", *SMOKE, f"data_root={data_root}", f"run_root={tmp_path}",
               f"segmentation.max_steps={STEPS}", *DDP, cwd=tmp_path)
    assert "MEMBER: 2/2" in out
    (run_dir,) = _run_dirs(tmp_path / "seg" / "widget")
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["train_steps"] == STEPS and m["test"] and m["val"]
    assert m["test_images_evaluated"]["images"] == m["counts"]["test_images"]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_split_written_by_rank_zero_only(monkeypatch, data_root, tmp_path):
    """Before fit a DDP child has no trainer yet: the launcher's rank decides who writes split.json."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from fast_lightning.config import load_config
    from fast_lightning.data.datamodule import AnomalyDataModule

    cfg = load_config([*SMOKE, f"data_root={data_root}"])
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    AnomalyDataModule(cfg, stage="diffusion", run_dir=tmp_path / "r1").setup()
    assert not (tmp_path / "r1" / "split.json").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    AnomalyDataModule(cfg, stage="diffusion", run_dir=tmp_path / "r0").setup()
    assert (tmp_path / "r0" / "split.json").is_file()


@pytest.fixture(scope="module")
def probe(data_root, tmp_path_factory):
    """Global sample indices per rank and step, from the real DataModule + build_trainer under DDP."""
    out = tmp_path_factory.mktemp("ddp_probe")
    # a test script, not `python -m fast_lightning`: started directly, in the environment run_cli gives commands
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "tests" / "ddp_probe.py"), str(out), *SMOKE,
                           f"data_root={data_root}", f"diffusion.max_steps={STEPS}", *DDP], env=cli_env(), cwd=out,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow  # starts 2 DDP processes
def test_ranks_get_disjoint_samples(probe):
    assert [p["world"] for p in probe] == [2, 2]
    steps = [[b["step"] for b in p["batches"]] for p in probe]
    assert steps[0] == steps[1] == list(range(STEPS))
    seen = []
    for s in range(STEPS):
        a, b = (set(p["batches"][s]["index"]) for p in probe)
        assert not a & b, f"step {s}: both ranks trained on {sorted(a & b)}"
        seen += sorted(a | b)
    assert len(seen) == len(set(seen)), "a sample index was used twice in one run"


@pytest.mark.slow  # starts 2 DDP processes
def test_step_indexed_stream_under_ddp(probe):
    batch = len(probe[0]["batches"][0]["index"])
    for s in range(STEPS):
        union = sorted(set(probe[0]["batches"][s]["index"]) | set(probe[1]["batches"][s]["index"]))
        assert union == list(range(s * batch * 2, (s + 1) * batch * 2))


@pytest.mark.slow  # starts 2 DDP processes
def test_synthesize_ddp_writes_each_index_once(ddp_diffusion, data_root):
    runs, _ = ddp_diffusion
    n = 7  # odd: the shards differ in size, nothing may be padded or repeated
    out = _run("synthesize", *SMOKE, f"data_root={data_root}", f"run_root={runs}", f"synthesis.n={n}",
               "synthesis.batch_size=2", "run_id=syn-ddp", *DDP, cwd=runs)
    assert "MEMBER: 2/2" in out
    run_dir = runs / "synthetic" / "widget" / "syn-ddp"
    rows = [json.loads(line) for line in (run_dir / "manifest.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(n))  # merged, sorted, each index exactly once
    assert not list(run_dir.glob("manifest.rank*.jsonl")), "per-rank manifest parts were not merged"
    for r in rows:
        assert (run_dir / r["image"]).is_file() and (run_dir / r["mask"]).is_file()
    assert sorted(p.name for p in (run_dir / "images").iterdir()) == [f"{i:06d}.png" for i in range(n)]
    assert json.loads((run_dir / "summary.json").read_text())["pairs"] == n
    assert _run_dirs(runs / "synthetic" / "widget") == [run_dir]


@pytest.mark.slow  # starts 2 DDP processes
def test_torchrun_single_node_two_processes(data_root, tmp_path):
    """The docs' torchrun line with --nnodes=1 --nproc-per-node=2 (multi-node differs only in rendezvous)."""
    torchrun = ["-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2", "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{_free_port()}"]
    out = _run("train-diffusion", *SMOKE, f"data_root={data_root}", f"run_root={tmp_path}",
               f"diffusion.max_steps={STEPS}", "trainer.num_nodes=1", "run_id=torchrun", *DDP, cwd=tmp_path,
               launcher=torchrun)
    assert "MEMBER: 2/2" in out
    (run_dir,) = _run_dirs(tmp_path / "diffusion" / "widget")
    assert run_dir.name == "torchrun" and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == STEPS
