"""One quick end-to-end test per entry point ("fast_dev_run style"): the real command, in process, on the fake
class with the smallest settings the config allows, asserting what it writes. One tiny diffusion model (2 steps)
is trained once per module and shared by the commands that need one.

| entry point      | test                                                                                    |
|------------------|-----------------------------------------------------------------------------------------|
| train-diffusion  | test_train_diffusion (the shared model of the ``diffusion_run`` fixture)                |
| synthesize       | test_synthesize                                                                         |
| train-seg        | test_train_seg (synth=fast on the shared model)                                         |
| eval-seg         | test_eval_seg                                                                           |
| compare          | test_compare                                                                            |
| demo             | test_demo                                                                               |
| bench-sampling   | test_bench_sampling                                                                     |
| sheet            | test_sheet                                                                              |
| bench-train      | tests/test_hardware.py::test_bench_train_writes_json_and_plot                           |
| benchmark        | tests/test_benchmark.py::test_benchmark_smoke                                           |
| check-data       | tests/test_data_layer.py::test_check_data_cli_exit_codes (through ``run_cli``)          |

Longer runs of the same commands (resume, DDP, reuse of finished runs, all synthesizers) are marked slow in
test_synthesis.py, test_segmentation.py, test_experiments.py and test_ddp.py.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import SEG_METRIC_KEYS, check_seg_run

T = 100  # diffusion.num_train_timesteps of the shared model: DDPM-T in bench-sampling stays quick
COMMON = ["profile=smoke", "class_name=widget", "trainer.enable_progress_bar=false"]
TINY_DIFFUSION = ["diffusion.max_steps=2", "diffusion.checkpoint_every=2", "diffusion.sample_every=0",
                  f"diffusion.num_train_timesteps={T}"]
TINY_SEG = ["segmentation.max_steps=2", "segmentation.val_every=2"]


def quiet(fn, args: list[str]) -> tuple[int, str]:
    """``fn(args)`` with stdout captured (module fixtures have no capsys): (exit code, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = fn(args)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def diffusion_run(data_root, tmp_path_factory):
    """`train-diffusion` for 2 steps: (its run dir, its printed summary). Every test below that needs a diffusion
    model passes this run as synthesis.ckpt."""
    from fast_lightning.commands import train_diffusion

    runs = tmp_path_factory.mktemp("entry_runs")
    code, out = quiet(train_diffusion.main, [*COMMON, f"data_root={data_root}", f"run_root={runs}", *TINY_DIFFUSION])
    assert code == 0, out
    summary = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    return (runs / "diffusion" / "widget" / "latest").resolve(), summary


def model_args(data_root, diffusion_run, run_root) -> list[str]:
    return [*COMMON, f"data_root={data_root}", f"run_root={run_root}", f"synthesis.ckpt={diffusion_run[0]}",
            f"diffusion.num_train_timesteps={T}"]


def test_train_diffusion(diffusion_run):
    from fast_lightning.diffusion.lightning_diffusion import load_fast_diffusion

    run_dir, printed = diffusion_run
    assert printed["global_step"] == 2
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["kind"] == "diffusion" and m["global_step"] == m["steps_this_run"] == 2
    assert m["type_names"] == ["crack", "dent"] and m["parameters"]["denoiser"] > 0 and m["parameters"]["farm"] > 0
    assert m["final"] and all(math.isfinite(v) for v in m["final"].values()), m["final"]
    model, meta = load_fast_diffusion(run_dir)  # the checkpoint loads: EMA weights + metadata
    assert meta["global_step"] == 2 and meta["class_name"] == "widget" and meta["type_names"] == ["crack", "dent"]
    assert int(model.num_train_timesteps) == T
    assert list((run_dir / "samples").glob("*final*.png")), "no final sample grid"


def test_synthesize(data_root, diffusion_run, tmp_path):
    from fast_lightning.commands import synthesize
    from fast_lightning.data.io import load_image, load_mask

    args = model_args(data_root, diffusion_run, tmp_path) + ["synthesis.n=3", "synthesis.batch_size=3"]
    assert quiet(synthesize.main, args)[0] == 0
    run_dir = (tmp_path / "synthetic" / "widget" / "latest").resolve()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["pairs"] == summary["new_this_run"] == 3
    rows = [json.loads(line) for line in (run_dir / "manifest.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert json.loads((run_dir / "run.json").read_text())["checkpoint"] == str(diffusion_run[0] / "checkpoints" /
                                                                               "last.ckpt")
    changed = 0
    for r in rows:
        syn, src, mask = load_image(run_dir / r["image"]), load_image(r["source"]), load_mask(run_dir / r["mask"])
        assert syn.shape == src.shape == (3, 40, 48) and mask.sum() > 0
        outside = ~mask.bool().expand_as(src)
        assert torch.equal(syn[outside], src[outside])  # only the masked pixels are synthesized
        changed += int(not torch.equal(syn[~outside], src[~outside]))
    assert changed == 3
    assert Image.open(run_dir / "preview.png").size[0] > 0


@pytest.fixture(scope="module")
def seg_run(data_root, diffusion_run, tmp_path_factory) -> Path:
    """`train-seg` for 2 steps on synth=fast (online synthesis with the shared model): its run dir."""
    from fast_lightning.commands import train_seg

    runs = tmp_path_factory.mktemp("entry_seg")
    args = model_args(data_root, diffusion_run, runs) + ["segmentation.synth=fast", *TINY_SEG]
    code, out = quiet(train_seg.main, args)
    assert code == 0, out
    return runs / "seg" / "widget" / "latest"


def test_train_seg(seg_run, diffusion_run):
    from fast_lightning.commands.eval_seg import load_seg_checkpoint

    m = check_seg_run(seg_run.resolve(), "fast")  # metrics in [0,1], split disjoint, checkpoints, panels
    assert m["train_steps"] == 2 and 0.0 <= m["test"]["pixel_ap"] <= 1.0
    assert m["synthesizer_info"]["diffusion_checkpoint"] == str(diffusion_run[0] / "checkpoints" / "last.ckpt")
    assert m["synthesizer_info"]["diffusion_global_step"] == 2
    path, ckpt = load_seg_checkpoint(str(seg_run))  # best.ckpt loads as a segmentation checkpoint
    assert path.name == "best.ckpt" and float(ckpt["state_dict"]["threshold"]) == pytest.approx(m["threshold"])


def test_eval_seg(seg_run):
    from fast_lightning.commands import eval_seg

    assert quiet(eval_seg.main, [f"ckpt={seg_run}", "trainer.enable_progress_bar=false"])[0] == 0
    m = json.loads((seg_run / "metrics.json").read_text())
    e = json.loads((seg_run / "eval_metrics.json").read_text())
    assert e["kind"] == "segmentation-eval" and e["split_matches_training"] is True
    assert e["threshold"] == pytest.approx(m["threshold"])
    assert e["test_images_evaluated"]["images"] == m["counts"]["test_images"]
    for k in SEG_METRIC_KEYS:  # the same checkpoint on the same split: the same numbers
        a, b = m["test"][k], e["test"][k]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-6), k


def test_compare(data_root, tmp_path):
    from fast_lightning.commands import compare

    out = tmp_path / "reports"
    args = [*COMMON, f"data_root={data_root}", f"run_root={tmp_path / 'runs'}", "synths=cutpaste", "seeds=1",
            f"out={out}", *TINY_SEG]
    assert quiet(compare.main, args)[0] == 0
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["synthesizer"] for r in rows] == ["cutpaste"]
    (run_dir,) = [p for p in (tmp_path / "runs" / "seg" / "widget").iterdir() if not p.is_symlink()]
    m = check_seg_run(run_dir, "cutpaste")
    assert float(rows[0]["pixel_ap_mean"]) == pytest.approx(m["test"]["pixel_ap"], abs=1e-4)
    assert f"cutpaste seed 0: `{run_dir}`" in (out / "comparison.md").read_text()
    for png in ("comparison.png", "samples.png"):
        assert Image.open(out / png).size[0] > 100, png


def test_demo(tmp_path, monkeypatch):
    from fast_lightning.commands import demo

    monkeypatch.chdir(tmp_path)  # the report goes to ./reports
    runs = tmp_path / "runs"
    args = ["profile=smoke", f"root={tmp_path / 'demo'}", f"run_root={runs}", "trainer.enable_progress_bar=false",
            *TINY_DIFFUSION, "diffusion.num_log_samples=0", "synthesis.n=4", *TINY_SEG]
    code, out = quiet(demo.main, args)
    assert code == 0 and "[5/5] report" in out
    (syn,) = [p for p in (runs / "synthetic" / "demo_part").iterdir() if not p.is_symlink()]
    assert json.loads((syn / "summary.json").read_text())["pairs"] == 4
    metrics = {}
    for p in (q for q in (runs / "seg" / "demo_part").iterdir() if not q.is_symlink()):
        m = json.loads((p / "metrics.json").read_text())
        metrics[m["synthesizer"]] = m
    assert set(metrics) == set(demo.DEMO_SYNTHS)
    for m in metrics.values():
        assert m["train_steps"] == 2 and 0.0 <= m["test"]["pixel_ap"] <= 1.0
    assert metrics["fast_cached"]["synthesizer_info"]["cached_dir"] == str(syn)
    report = (tmp_path / "reports" / "demo_part" / "demo.md").read_text()
    for label in ("fast (AIAS-10)", "draem", "cutpaste"):
        assert f"| {label}" in report, label


def test_bench_sampling(data_root, diffusion_run, tmp_path):
    from fast_lightning.commands import bench_sampling

    out = tmp_path / "bench.json"
    args = model_args(data_root, diffusion_run, tmp_path) + [f"out={out}", "batch=1", "ddpm_images=1", "repeats=1"]
    assert quiet(bench_sampling.main, args)[0] == 0
    report = json.loads(out.read_text())
    samplers = report["samplers"]
    assert set(samplers) == {"aias-10-exact", "aias-10-paper", "aias-50-exact", "ddim-10", "ddim-50", f"ddpm-{T}"}
    assert samplers[f"ddpm-{T}"]["nfe"] == T and samplers["aias-10-exact"]["nfe"] == 10
    assert all(s["seconds_per_image"] > 0 and 0.0 <= s["outside_denoiser_share"] < 1.0 for s in samplers.values())
    assert report["checkpoint_step"] == 2 and report[f"speedup_aias10_vs_ddpm{T}"] > 0
    assert len(report["checks"]) == 2 and Image.open(out.with_suffix(".png")).size[0] > 100


def test_sheet(data_root, diffusion_run, tmp_path, capsys):
    """Rows: real defects, one per sampling setting, masks; a bad setting is a usage error naming the key."""
    from fast_lightning.cli import main

    out = tmp_path / "sheet.png"
    args = ["sheet", *model_args(data_root, diffusion_run, tmp_path), "n=3", "tile=16", f"out={out}"]
    assert main([*args, "rows=old:farm_min_t=0;new:farm_min_t=2;ddim:name=ddim,steps=4"]) == 0
    assert str(out) in capsys.readouterr().out
    w, h = Image.open(out).size
    # 5 rows (real, old, new, ddim, mask) of 16-px tiles with 2-px padding, 3 columns plus a title margin
    assert h == 5 * 16 + 6 * 2 and w > 3 * 16
    assert main([*args, "rows=x:farm_min_t=-1"]) == 2
    assert "farm_min_t" in capsys.readouterr().err
