"""Hardware-aware defaults: precision=auto, threads, DataLoader workers, sparse progress, bench-train."""

from __future__ import annotations

import io
import json

import pytest
import torch

from fast_lightning import hardware
from fast_lightning.config import load_config
from fast_lightning.errors import ConfigError
from fast_lightning.progress import SparseProgress

from conftest import run_cli


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _cpu(monkeypatch, flags: set[str], capability: str) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: set(flags))
    monkeypatch.setattr(hardware, "torch_cpu_capability", lambda: capability)


def test_auto_is_fp32_on_a_cpu_without_native_bf16(monkeypatch, no_cuda):
    # AMD Zen 3: AVX2 only; bf16 autocast is emulated there (~15x slower than fp32)
    _cpu(monkeypatch, {"avx2", "fma"}, "AVX2")
    assert hardware.resolve_precision("auto", "auto")[0] == "32-true"
    assert load_config(["profile=cpu"]).trainer.precision == "32-true"


def test_auto_is_bf16_on_a_cpu_with_native_bf16(monkeypatch, no_cuda):
    _cpu(monkeypatch, {"avx2", "avx512f", "avx512_bf16"}, "AVX512")
    assert hardware.resolve_precision("auto", "cpu")[0] == "bf16-mixed"
    _cpu(monkeypatch, {"avx2", "avx512f", "amx_bf16", "amx_tile"}, "AMX")
    assert hardware.resolve_precision("auto", "cpu")[0] == "bf16-mixed"
    assert load_config(["profile=cpu"]).trainer.precision == "bf16-mixed"


def test_bf16_flag_without_avx512_dispatch_counts_as_emulated(monkeypatch, no_cuda):
    # a bf16-capable CPU running torch with ATEN_CPU_CAPABILITY=avx2 takes the emulated path
    _cpu(monkeypatch, {"avx2", "avx512f", "avx512_bf16"}, "AVX2")
    assert hardware.resolve_precision("auto", "cpu")[0] == "32-true"


def test_explicit_precision_is_honoured_and_invalid_is_an_error(monkeypatch, no_cuda):
    _cpu(monkeypatch, {"avx2"}, "AVX2")
    assert load_config(["profile=cpu", "trainer.precision=bf16-mixed"]).trainer.precision == "bf16-mixed"
    with pytest.raises(ConfigError, match="trainer.precision"):
        load_config(["profile=cpu", "trainer.precision=bf17"])


def test_auto_on_cuda_picks_bf16_or_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hardware.resolve_precision("auto", "auto")[0] == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert hardware.resolve_precision("auto", "gpu")[0] == "16-mixed"
    # an explicit CPU accelerator follows the CPU rule even where a GPU exists
    _cpu(monkeypatch, {"avx2"}, "AVX2")
    assert hardware.resolve_precision("auto", "cpu")[0] == "32-true"


def test_cuda_bf16_counts_native_support_only(monkeypatch):
    """A T4/V100 reports bf16 'supported' through emulation: auto must pick 16-mixed there, bf16 on Ampere+."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")

    def fake(native: bool):
        def is_bf16_supported(including_emulation: bool = True):
            return native or including_emulation
        return is_bf16_supported

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", fake(native=False))  # pre-Ampere: emulation only
    assert hardware.resolve_precision("auto", "gpu")[0] == "16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", fake(native=True))  # Ampere and later
    assert hardware.resolve_precision("auto", "gpu")[0] == "bf16-mixed"


def test_autocast_dtype_follows_the_resolved_precision():
    assert hardware.autocast_dtype("bf16-mixed") is torch.bfloat16
    assert hardware.autocast_dtype("16-mixed") is torch.float16
    assert hardware.autocast_dtype("32-true") is None


def test_resolved_precision_is_what_the_run_config_records(monkeypatch, no_cuda, tmp_path):
    from fast_lightning.runs import save_config

    _cpu(monkeypatch, {"avx2"}, "AVX2")
    cfg = load_config(["profile=smoke", "class_name=x"])
    saved = save_config(cfg, tmp_path).read_text()
    assert "precision: 32-true" in saved and "auto" not in saved.split("precision:")[1].splitlines()[0]


def test_usable_cores_respects_affinity_and_cgroup_quota(monkeypatch):
    hardware.usable_cores.cache_clear()
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(hardware, "_cgroup_cpu_limit", lambda: 1.5)
    try:
        assert hardware.usable_cores() == 2
        hardware.usable_cores.cache_clear()
        monkeypatch.setattr(hardware, "_cgroup_cpu_limit", lambda: None)
        assert hardware.usable_cores() == 4
        # CPU training: workers never take every core from the math; GPU: capped at the cores
        assert hardware.dataloader_workers(8, on_cpu=True) == 3
        assert hardware.dataloader_workers(8, on_cpu=False) == 4
        assert hardware.dataloader_workers(0, on_cpu=True) == 0
    finally:
        hardware.usable_cores.cache_clear()


def test_sparse_progress_writes_a_dozen_lines_for_752_images():
    out = io.StringIO()
    bar = SparseProgress(range(752), desc="checking tire", unit="img", file=out)
    assert sum(1 for _ in bar) == 752
    lines = out.getvalue().splitlines()
    assert 9 <= len(lines) <= 12, lines
    assert "\r" not in out.getvalue()
    assert lines[-1].startswith("checking tire: 752/752 img (100%)")


def test_training_logs_sparse_lines_when_output_is_not_a_terminal(fake_mvtec, tmp_path):
    """train-diffusion under a pipe (CI logs, `make ... > log`): plain progress lines, no bar redraws."""
    proc = run_cli("train-diffusion", "class_name=widget", f"data_root={fake_mvtec}", "profile=smoke",
                   f"run_root={tmp_path / 'runs'}", "diffusion.sample_every=0", "diffusion.num_log_samples=0",
                   timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("train-diffusion:")]
    assert lines and lines[-1].startswith("train-diffusion: 6/6 steps (100%)"), proc.stderr[-2000:]
    assert "\r" not in proc.stderr
    assert "precision: auto -> " in proc.stderr  # the resolved precision is announced once
    summary = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("{")))
    assert 0.0 <= summary["data_wait_share"] < 1.0


def test_bench_train_writes_json_and_plot(tmp_path):
    from fast_lightning.commands import bench_train

    out = tmp_path / "bench_train.json"
    # T=20 keeps DDPM-T short; compile is covered by tests/test_speedups.py (minutes on a 2-core CPU)
    assert bench_train.main(["profile=smoke", "steps=1", "warmup=0", f"out={out}", "variants=channels_last",
                             "sampling_batch=1", "diffusion.num_train_timesteps=20", "gemm_n=512"]) == 0
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 1000
    names = [w["name"] for w in report["workloads"]]
    assert names == ["diffusion (smoke)", "segmenter (smoke)"]
    assert set(report["gemm_peak"]["cpu"]) == {"32-true", "bf16-mixed"}
    assert all(p["flops_per_second"] > 0 for p in report["gemm_peak"]["cpu"].values())
    for w in report["workloads"]:
        assert set(w["steps_per_second"]) >= {"32-true", "bf16-mixed"}
        assert all(v > 0 for v in w["steps_per_second"].values())
        assert w["auto"] == hardware.resolve_precision("auto", "cpu")[0]
        assert w["fastest"] == max(w["steps_per_second"], key=w["steps_per_second"].get)
        assert w["flops_per_step"] > 0
        fp32_layout = {"channels_last 32-true"} if w["auto"] != "32-true" else set()
        assert set(w["variants"]) == {"32-true", "bf16-mixed", "channels_last"} | fp32_layout
        assert w["variants"]["channels_last"]["channels_last"] is True
        for v in w["variants"].values():
            peak = report["gemm_peak"]["cpu"][v["precision"]]["flops_per_second"]
            assert v["share_of_peak"] == pytest.approx(w["flops_per_step"] * v["steps_per_second"] / peak, rel=1e-3)
        # CPU auto: eager; channels_last for the segmenter only (speedups.CPU_CHANNELS_LAST)
        assert w["default"] == ("channels_last" if w["name"].startswith("segmenter") else w["auto"])
        assert w["top_ops"] and all(0 < op["share"] <= 1 for op in w["top_ops"])
        assert any("conv" in op["op"] for op in w["top_ops"])
    split = report["workloads"][0]["sampling"]
    assert set(split["samplers"]) == {"aias-10", "ddpm-20"}
    assert split["nfe_ratio_limit"] == pytest.approx(split["samplers"]["ddpm-20"]["nfe"] / split["samplers"]["aias-10"]["nfe"])
    assert 0.0 <= split["samplers"]["aias-10"]["outside_denoiser_share"] <= 1.0
    assert split["aias10_vs_ddpm_speedup"] > 0
    assert "sampling" not in report["workloads"][1]
    assert report["cpu_model"] and "bf16 flags" in report["isa"]
