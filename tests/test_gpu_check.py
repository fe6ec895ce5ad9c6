"""make gpu-check: the stage plan, the budget rules, and the whole plumbing at the smoke profile on CPU."""

from __future__ import annotations

import json

import pytest

from fast_lightning.commands import gpu_check
from fast_lightning.config import load_config
from fast_lightning.errors import UserError


def test_gpu_quick_profile_has_longer_budgets_than_cpu():
    quick, cpu = load_config(["profile=gpu-quick"]), load_config(["profile=cpu"])
    assert quick.diffusion.max_steps > cpu.diffusion.max_steps
    assert quick.segmentation.max_steps > cpu.segmentation.max_steps
    assert quick.diffusion.optim.batch_size >= cpu.diffusion.optim.batch_size


def test_stage_plan_and_budget(tmp_path):
    plan = gpu_check.stages("gpu-quick", tmp_path, "tire@/d/a,mt@/d/b", gpu_check.SYNTHS, ["seed=3"])
    assert [n for n, _ in plan] == ["bench-train", "benchmark", "bench-sampling"]
    train, bench, sampling = (cmd for _, cmd in plan)
    assert "profile=gpu" in train and "seed=3" in train
    assert {"profile=gpu-quick", "seeds=1", "classes=tire@/d/a,mt@/d/b",
            "synths=fast,draem,cutpaste,real_third"} <= set(bench)
    assert {"class_name=tire", "data_root=/d/a", f"run_root={tmp_path / 'runs'}"} <= set(sampling)
    assert all(str(tmp_path) in " ".join(cmd) for _, cmd in plan)  # everything under one folder
    assert gpu_check._limit("bench-train", 540) == gpu_check.BENCH_TRAIN_MAX_S
    assert gpu_check._limit("benchmark", 400) == 400 - gpu_check.SAMPLING_RESERVE_S
    with pytest.raises(UserError, match="profile"):
        gpu_check.main(["profile=cpu", f"out={tmp_path}"])
    with pytest.raises(UserError, match="budget_s"):
        gpu_check.main(["profile=smoke", "budget_s=10", f"out={tmp_path}"])


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_stage(fake_mvtec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "check"
    assert gpu_check.main(["profile=smoke", f"out={out}", f"classes=widget@{fake_mvtec}", "synths=fast,draem",
                           "budget_s=900"]) == 0
    report = json.loads((out / "gpu_check.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["bench-train", "benchmark", "bench-sampling"]
    assert all(s["rc"] == 0 and not s["timed_out"] for s in report["stages"]), report["stages"]
    for name in ("bench_train.json", "bench_sampling.json", "benchmark/benchmark.json"):
        assert (out / name).is_file(), name
    assert "benchmark/benchmark.json" in report["outputs"]
