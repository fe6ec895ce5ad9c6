"""Sweep files, `sweep-local` (no server) end to end, and `sweep` without a W&B login."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from fast_lightning.errors import UserError
from fast_lightning.commands import sweep_local
from fast_lightning.commands.sweep_local import Trial, expand_command, load_sweep, sort_trials
from fast_lightning.config import PROJECT_ROOT, load_config

from conftest import run_cli

SEG = PROJECT_ROOT / "experiments" / "sweeps" / "seg.yaml"
SYNTH = PROJECT_ROOT / "experiments" / "sweeps" / "synthesis.yaml"
# every shipped sweep file, and always the two the docs name (a missing one fails in load_sweep)
SWEEPS = sorted(set((PROJECT_ROOT / "experiments" / "sweeps").glob("*.yaml")) | {SEG, SYNTH})


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


TINY = """
name: tiny
program: fast_lightning
command: [python, -m, fast_lightning, train-diffusion, "${args_no_hyphens}"]
method: grid
metric: {name: final/train/loss, goal: minimize}
parameters:
  diffusion.window: {values: [crop, full, bogus]}   # bogus passes the type check, fails in the trial
  diffusion.max_steps: {value: 2}
"""


# ---- the shipped sweep files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_file_parameters_are_config_keys(path):
    spec = load_sweep(path, ["class_name=widget"])  # validates every value of every parameter
    assert "${args_no_hyphens}" in spec.config["command"] and "${args}" not in spec.config["command"]
    for name in spec.swept:
        node = load_config(["class_name=widget"])
        for part in name.split("."):
            assert part in node, f"{path.name}: {name} is not a config key"
            node = node[part]


@pytest.mark.parametrize("name", ["seg", "synthesis"])
def test_sweeps_optimise_a_validation_metric_train_seg_logs(name):
    from fast_lightning.evaluation.catalog import metric_names

    spec = load_sweep(PROJECT_ROOT / "experiments" / "sweeps" / f"{name}.yaml", ["class_name=widget"])
    section, key = spec.metric.split("/")
    assert section == "val" and key in metric_names() and spec.goal == "maximize"


def test_seg_sweep_covers_the_issue_parameters():
    spec = load_sweep(PROJECT_ROOT / "experiments" / "sweeps" / "seg.yaml", ["class_name=widget"])
    assert set(spec.swept) == {"segmentation.synth", "segmentation.arch", "segmentation.encoder", "segmentation.optim.lr",
                               "segmentation.synth_ratio"}
    assert "fast" in spec.config["parameters"]["segmentation.synth"]["values"]
    assert spec.config["early_terminate"]["type"] == "hyperband"
    assert spec.config["parameters"]["segmentation.arch"]["values"] == ["Unet", "FPN", "UnetPlusPlus"]
    syn = load_sweep(PROJECT_ROOT / "experiments" / "sweeps" / "synthesis.yaml", ["class_name=widget"])
    assert set(syn.swept) == {"sampling.steps", "sampling.variant", "diffusion.lambda_farm"}
    assert syn.grid_size() == 24


def test_args_match_what_the_wandb_agent_passes():
    """Our ${args_no_hyphens} must be byte-identical to the W&B agent's, so both drivers run the same trial."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    params = {"segmentation.arch": "FPN", "segmentation.optim.lr": 0.0003, "sampling.steps": 5, "data.channels": 3,
              "segmentation.encoder_weights": "imagenet", "diffusion.farm.enabled": False}
    theirs = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})["args_no_hyphens"]
    ours = [f"{k}={sweep_local.render_value(v)}" for k, v in params.items()]
    assert ours == theirs
    load_config(["class_name=widget", *ours])  # and the config accepts them
    cmd = expand_command(load_sweep(SEG, ["class_name=widget"]).config, ours, interpreter="PY")
    assert cmd[:3] == ["PY", "-m", "fast_lightning"] and cmd[-len(ours):] == ours


# ---- validation happens before anything runs ---------------------------------------------------------------------
@pytest.mark.parametrize("body, message", [
    ("method: grid\nmetric: {name: a}\nparameters: {seed: {values: [1, 2]}}\n", "missing command"),
    ("command: [python, '${args_no_hyphens}']\nmethod: grid\nparameters: {seed: {values: [1, 2]}}\n", "missing metric"),
    ("command: [python, '${args}']\nmethod: grid\nmetric: {name: a}\nparameters: {seed: {values: [1, 2]}}\n",
     "must contain ${args_no_hyphens}"),
    ("command: [python, '${args}', '${args_no_hyphens}']\nmethod: grid\nmetric: {name: a}\n"
     "parameters: {seed: {values: [1, 2]}}\n", "uses ${args}"),
    ("command: [python, '${args_no_hyphens}']\nmethod: grid\nmetric: {name: a}\n"
     "parameters: {segmentation.lrr: {values: [0.1]}}\n", "unknown config key 'segmentation.lrr'"),
    ("command: [python, '${args_no_hyphens}']\nmethod: grid\nmetric: {name: a}\n"
     "parameters: {segmentation.lr: {values: [0.1]}}\n", "no longer exists: use segmentation.optim.lr"),
    ("command: [python, '${args_no_hyphens}']\nmethod: grid\nmetric: {name: a}\n"
     "parameters: {segmentation.optim.lr: {values: [0.1, fast]}}\n", "segmentation.optim.lr = 'fast'"),
    ("command: [python, '${args_no_hyphens}']\nmethod: annealing\nmetric: {name: a}\n"
     "parameters: {seed: {values: [1, 2]}}\n", "method must be one of"),
    ("command: [python, '${args_no_hyphens}']\nmethod: grid\nmetric: {name: a, goal: up}\n"
     "parameters: {seed: {values: [1, 2]}}\n", "metric.goal"),
])
def test_bad_sweep_files_fail_naming_the_file(tmp_path, body, message):
    path = _write(tmp_path / "bad.yaml", body)
    with pytest.raises(UserError) as err:
        sweep_local.main([f"sweep={path}", "class_name=widget", f"report_root={tmp_path / 'reports'}"])
    assert str(path) in str(err.value) and message in str(err.value)
    assert not (tmp_path / "reports").exists()


def test_missing_class_and_reserved_keys_are_refused(tmp_path):
    path = _write(tmp_path / "tiny.yaml", TINY)
    with pytest.raises(UserError, match="no class given"):
        load_sweep(path, [])
    with pytest.raises(UserError, match="run_id= cannot be given"):
        load_sweep(path, ["class_name=widget", "run_id=x"])
    with pytest.raises(UserError, match="needs a trial count"):
        sweep_local.main([f"sweep={SEG}", "class_name=widget", f"report_root={tmp_path}"])


def test_overrides_pin_parameters(tmp_path):
    spec = load_sweep(SEG, ["class_name=widget", "segmentation.arch=Unet", "data_root=elsewhere"])
    assert spec.fixed["segmentation.arch"] == "Unet" and "segmentation.arch" not in spec.swept
    assert spec.fixed["data_root"] == "elsewhere" and spec.base.data_root == "elsewhere"
    with pytest.raises(UserError, match="no parameter varies"):
        load_sweep(_write(tmp_path / "tiny.yaml", TINY), ["class_name=widget", "diffusion.window=full"])


def test_sort_trials_by_goal_failures_last():
    trials = [Trial(1, "a", {}, "finished", 0.5), Trial(2, "b", {}, "failed"), Trial(3, "c", {}, "finished", 0.2),
              Trial(4, "d", {}, "no-metric")]
    assert [t.number for t in sort_trials(trials, "minimize")] == [3, 1, 2, 4]
    assert [t.number for t in sort_trials(trials, "maximize")] == [1, 3, 2, 4]


def test_flatten_reads_nested_metrics(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"val": {"pixel_ap": 0.25, "iou": NaN}, "final": {"train/loss": 1.5}, "test": null}')
    assert sweep_local.read_metric(path, "val/pixel_ap") == 0.25
    assert sweep_local.read_metric(path, "final/train/loss") == 1.5
    assert sweep_local.read_metric(path, "val/iou") is None  # non-finite is no metric
    assert sweep_local.read_metric(path, "test/pixel_ap") is None


# ---- end to end -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_local_end_to_end(fake_mvtec, tmp_path):
    """3-point grid with TRIALS=5: two trials finish, one fails, the grid runs out, the summary is sorted."""
    path = _write(tmp_path / "tiny.yaml", TINY)
    reports, runs = tmp_path / "reports", tmp_path / "runs"
    proc = run_cli("sweep-local", f"sweep={path}", "trials=5", f"report_root={reports}", "profile=smoke",
                   "class_name=widget", f"data_root={fake_mvtec}", f"run_root={runs}",
                   "trainer.enable_progress_bar=false")
    out = proc.stdout + proc.stderr
    assert "grid exhausted after 3 trial(s)" in out and "sorted by final/train/loss (minimize)" in out
    (report,) = reports.iterdir()
    rows = list(csv.DictReader(open(report / "summary.csv")))
    assert [r["status"] for r in rows] == ["finished", "finished", "failed"]
    losses = [float(r["final/train/loss"]) for r in rows[:2]]
    assert losses == sorted(losses)
    assert rows[2]["diffusion.window"] == "bogus" and rows[2]["exit_code"] == "2"
    for r in rows[:2]:
        assert (Path(r["run_dir"]) / "metrics.json").is_file()
        assert Path(r["run_dir"]).name.startswith("sweep-tiny-")
    assert "| rank | trial | status | final/train/loss | diffusion.window |" in (report / "summary.md").read_text()
    assert "must be 'full' or 'crop'" in (report / "trials" / f"{rows[2]['trial'].zfill(2)}.log").read_text()


def test_sweep_trial_cache_key():
    from fast_lightning.study import diffusion_key

    base = ["class_name=widget", "profile=smoke"]
    key = diffusion_key(load_config(base))
    for same in (["sampling.steps=5"], ["sampling.variant=paper"], ["segmentation.optim.lr=0.01"], ["run_id=x"]):
        assert diffusion_key(load_config(base + same)) == key, same
    for other in (["diffusion.lambda_farm=1.0"], ["seed=3"], ["data.seg_scale=96"]):
        assert diffusion_key(load_config(base + other)) != key, other


# ---- W&B server path --------------------------------------------------------------------------------------------
def test_sweep_offline_says_what_to_do(capsys, monkeypatch):
    from fast_lightning.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    code = main(["sweep", f"sweep={PROJECT_ROOT / 'experiments/sweeps/seg.yaml'}", "class_name=widget"])
    err = capsys.readouterr().err
    assert code == 2
    assert "WANDB_MODE=offline" in err and "wandb login" in err and "make sweep-local" in err


def test_sweep_not_logged_in_says_what_to_do(tmp_path):
    env = {k: None for k in os.environ if k.startswith("WANDB_")}  # no W&B settings at all, not even the mode
    env.update(WANDB_MODE=None, HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path), NETRC=str(tmp_path / "netrc"))
    proc = run_cli("sweep", "sweep=experiments/sweeps/seg.yaml", "class_name=widget", env=env, cwd=PROJECT_ROOT,
                   timeout=120, expect=2)
    assert "not logged in" in proc.stderr and "make sweep-local" in proc.stderr


def test_bayes_proposals_after_failures_are_plain_values():
    from fast_lightning.commands.sweep_local import _sweep_run, propose

    spec = load_sweep(SEG, ["class_name=widget"])
    assert spec.method == "bayes"
    history = []
    for number, (status, metric) in enumerate([("failed", None), ("finished", 0.3), ("no-metric", None)], 1):
        config, _ = propose(spec, history)
        history.append(_sweep_run(spec, Trial(number, f"r{number}", {}, status, metric), config))
    config, _ = propose(spec, history)
    lr = config["segmentation.optim.lr"]["value"]
    assert type(lr) is float and 1e-4 <= lr <= 3e-3
    assert config["segmentation.arch"]["value"] in ("Unet", "FPN", "UnetPlusPlus")
    load_config([f"{k}={sweep_local.render_value(v['value'])}" for k, v in config.items()])


@pytest.mark.slow
def test_synthesis_sweep_trains_one_model_for_sampler_settings(fake_mvtec, tmp_path):
    """synthesis.yaml's first two grid points differ only in sampling.variant: one diffusion model, two segmenters."""
    runs = tmp_path / "runs"
    proc = run_cli("sweep-local", f"sweep={SYNTH}", "trials=2", f"report_root={tmp_path / 'reports'}",
                   "profile=smoke", "class_name=widget", f"data_root={fake_mvtec}", f"run_root={runs}",
                   "diffusion.max_steps=2", "segmentation.max_steps=2", "trainer.enable_progress_bar=false")
    out = proc.stdout + proc.stderr
    assert out.count("reusing diffusion model") == 1
    (model,) = [p for p in (runs / "diffusion" / "widget").iterdir() if p.name.startswith("sweep-cache-")]
    (report,) = (tmp_path / "reports").iterdir()
    rows = list(csv.DictReader(open(report / "summary.csv")))
    assert [r["status"] for r in rows] == ["finished", "finished"]
    assert {r["sampling.variant"] for r in rows} == {"exact", "paper"}
    for r in rows:
        seg = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
        assert seg["synthesizer"] == "fast" and seg["val"]["pixel_ap"] == pytest.approx(float(r["val/pixel_ap"]))
        assert Path(seg["synthesizer_info"]["diffusion_checkpoint"]).resolve().is_relative_to(model.resolve())


# ---- SEEDS=k and the trial plot (a stand-in trial command: seconds, no training) -------------------------------
FAKE_TRIAL = """
import json, pathlib, sys
args = dict(a.split("=", 1) for a in sys.argv[1:])
lr, seed = float(args["segmentation.optim.lr"]), int(args.get("seed", 0))
out = pathlib.Path(args["run_root"]) / "seg" / "widget" / args["run_id"]
out.mkdir(parents=True)
# lr 0.001 is best on average, although lr 0.002 wins on seed 0
value = {0.001: [0.5, 0.7], 0.002: [0.6, 0.3], 0.003: [0.2, 0.2]}[lr][seed]
(out / "metrics.json").write_text(json.dumps({"val": {"pixel_ap": value}}))
"""


@pytest.mark.slow  # 11 short subprocesses (2 sweep-local, 9 stand-in trials)
def test_sweep_local_seeds_rank_the_mean_and_plot_the_best(tmp_path):
    script = _write(tmp_path / "trial.py", FAKE_TRIAL)
    path = _write(tmp_path / "s.yaml", f"""
name: seeds
command: ["${{interpreter}}", "{script}", "${{args_no_hyphens}}"]
method: grid
metric: {{name: val/pixel_ap, goal: maximize}}
parameters:
  segmentation.optim.lr: {{values: [0.001, 0.002, 0.003]}}
""")
    reports = tmp_path / "reports"
    proc = run_cli("sweep-local", f"sweep={path}", "seeds=2", f"report_root={reports}", "class_name=widget",
                   f"run_root={tmp_path / 'runs'}")
    assert "x 2 seeds (mean ranked" in proc.stdout
    (report,) = reports.iterdir()
    rows = list(csv.DictReader(open(report / "summary.csv")))
    assert [r["segmentation.optim.lr"] for r in rows] == ["0.001", "0.002", "0.003"]
    assert [float(r["val/pixel_ap (mean)"]) for r in rows] == pytest.approx([0.6, 0.45, 0.2])
    assert rows[0]["per seed"] == "0.5 0.7"
    assert len(list((tmp_path / "runs" / "seg" / "widget").iterdir())) == 6  # 3 trials x 2 seeds
    assert (report / "trials.png").is_file() and "trials.png" in (report / "summary.md").read_text()
    # one seed: lr 0.002 would have won
    proc = run_cli("sweep-local", f"sweep={path}", f"report_root={tmp_path / 'one'}", "class_name=widget",
                   f"run_root={tmp_path / 'runs1'}")
    (report,) = (tmp_path / "one").iterdir()
    assert next(csv.DictReader(open(report / "summary.csv")))["segmentation.optim.lr"] == "0.002"


def test_sweep_local_seeds_refuses_a_swept_seed(tmp_path):
    path = _write(tmp_path / "s.yaml", TINY.replace("diffusion.max_steps: {value: 2}", "seed: {values: [0, 1]}"))
    with pytest.raises(UserError, match="SEEDS=2 runs each trial on seed=0..1"):
        sweep_local.main([f"sweep={path}", "seeds=2", "class_name=widget"])
