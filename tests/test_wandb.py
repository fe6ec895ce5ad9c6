"""W&B dashboards: offline runs written in a temp dir and read back (tests/wandb_offline.py): mask overlays,
tables, summaries, groups/tags, artifacts; nothing logged with WANDB_MODE=disabled. Never synced."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import fast_lightning  # noqa: F401  (torchvision shim)
from fast_lightning.config import load_config
from fast_lightning.evaluation import wandb_logging

from conftest import run_cli
from wandb_offline import offline_runs


def wandb_env(tmp_path: Path) -> dict:
    """Offline W&B with every folder it writes (runs, artifact staging, cache, settings) inside tmp_path."""
    return {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
            "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
            "WANDB_SILENT": "true"}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    for k, v in wandb_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    return tmp_path


def cfg_for(tmp_path, *overrides):
    return load_config(["profile=smoke", "class_name=widget", f"logger.wandb.save_dir={tmp_path}", *overrides])


class FakeModule:
    """What the segmentation logging reads from a SegmentationModule, with a given wandb run."""

    def __init__(self, run, threshold=0.5, n=2, per_type=None):
        self.run, self.global_step = run, 7
        self.threshold = torch.tensor(threshold)
        self.seg_cfg = SimpleNamespace(num_log_images=n)
        self.test_per_type = per_type


def mask_png(run, rel: str) -> np.ndarray:
    return np.asarray(Image.open(run.folder / "files" / rel))


# ---- unit: overlays, tables, disabled ----------------------------------------------------------------------------
def test_panel_overlay_masks_equal_ground_truth_and_prediction(offline, monkeypatch):
    import wandb

    run = wandb.init(mode="offline", dir=str(offline), project="t")
    monkeypatch.setattr(wandb_logging, "lightning_run", lambda module: module.run)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 16, 16, generator=g)
    gts = (torch.rand(2, 1, 16, 16, generator=g) > 0.7).float()
    probs = torch.rand(2, 1, 16, 16, generator=g)
    wandb_logging.log_seg_panels(FakeModule(run), "val/panels", images, gts, probs, ["crack", "good"], [4, 9], 0.6)
    run.finish()
    back = offline_runs(offline)[-1]
    panel = back.rows_with("val/panels")[-1]["val/panels"]
    assert panel["captions"] == ["crack #4 (pred@0.600)", "good #9 (pred@0.600)"]
    for k in range(2):
        layers = panel["all_masks"][k]
        assert set(layers) == {"ground_truth", "prediction"}
        np.testing.assert_array_equal(mask_png(back, layers["ground_truth"]["path"]), gts[k, 0].numpy().astype(np.uint8))
        np.testing.assert_array_equal(mask_png(back, layers["prediction"]["path"]),
                                      (probs[k, 0] >= 0.6).numpy().astype(np.uint8))
        shown = np.asarray(Image.open(back.folder / "files" / panel["filenames"][k]))
        np.testing.assert_array_equal(shown, (images[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def test_worst_images_table_rows_columns_and_order(offline, monkeypatch):
    import wandb

    run = wandb.init(mode="offline", dir=str(offline), project="t")
    monkeypatch.setattr(wandb_logging, "lightning_run", lambda module: module.run)
    masks = torch.zeros(5, 1, 4, 4)
    masks[0, 0, :2, :2] = masks[1, 0, 2:, 2:] = masks[2, 0, 0, :] = 1
    probs = torch.full((5, 1, 4, 4), 0.1)
    probs[0] = masks[0] * 0.9             # image 0 found perfectly (AP 1)
    probs[1, 0, :2, :2] = 0.95            # image 1: confident in the wrong place (lowest AP)
    probs[2] = masks[2] * 0.8 + 0.05      # image 2: found, one false alarm above it (AP 4/5)
    probs[2, 0, 3, 3] = 0.9
    probs[3, 0, 0, 0] = 0.99              # defect-free image 3: strong false alarm
    probs[4, 0, 0, 0] = 0.3               # defect-free image 4: weak
    index = torch.tensor([10, 11, 12, 13, 14])
    types = ["crack", "dent", "crack", "good", "good"]
    dataset = {int(i): {"image": torch.rand(3, 4, 4)} for i in index}
    per_type = {"crack": {"images": 4, "defect_images": 2, "pixel_ap": 1.0, "iou": 0.5},
                "dent": {"images": 3, "defect_images": 1, "pixel_ap": float("nan"), "iou": 0.0}}
    wandb_logging.log_seg_test(FakeModule(run, threshold=0.5, n=2, per_type=per_type), index, probs, masks, types,
                               dataset)
    run.finish()
    back = offline_runs(offline)[-1]
    worst = back.table("test/worst_images")
    assert worst["columns"] == list(wandb_logging.WORST_COLUMNS)
    # the 2 defect images with the lowest AP (11 first), then ceil(2/2) = 1 defect-free image: the strongest alarm
    assert [r[0] for r in worst["data"]] == [11, 12, 13]
    assert [r[1] for r in worst["data"]] == ["dent", "crack", "good"]
    assert worst["data"][2][3] is None and worst["data"][1][3] == pytest.approx(0.8)
    assert worst["data"][0][4] == pytest.approx(0.0) and worst["data"][2][5] == pytest.approx(0.99)
    cell = worst["data"][0][2]  # image 11 with its two mask layers
    gt = np.asarray(Image.open(worst["media"][cell["masks"]["ground_truth"]["path"]]))
    np.testing.assert_array_equal(gt, masks[1, 0].numpy().astype(np.uint8))
    per = back.table("test/per_type")
    assert per["columns"] == ["defect type", "images", "defect_images", "pixel_ap", "iou"]
    assert per["data"] == [["crack", 4, 2, 1.0, 0.5], ["dent", 3, 1, None, 0.0]]
    assert back.summary["test/threshold"] == pytest.approx(0.5)


def test_disabled_mode_logs_nothing_and_fails_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = cfg_for(tmp_path)
    assert wandb_logging.start_run(cfg, "compare", "x") is None
    report = tmp_path / "r.csv"
    report.write_text("synthesizer,pixel_ap_mean\ndraem,0.5\n")
    assert wandb_logging.log_report(cfg, "compare", report) is None
    assert wandb_logging.log_synthesis(cfg, tmp_path, [], {}) is None
    module = SimpleNamespace(_trainer=None)
    wandb_logging.log_seg_panels(module, "val/panels", [], [], [], [], [], 0.5)  # no run: no-op
    wandb_logging.log_seg_summary(None, {"pixel_ap": 1.0}, None, 0.5, 1, None)
    from fast_lightning.training import build_logger

    # W&B off: no W&B logger; the run keeps a CSV log (logger.backend=wandb falls back to csv, issue 20)
    assert type(build_logger(cfg, tmp_path / "run", "seg")).__name__ == "CSVLogger"
    assert not (tmp_path / "wandb").exists()


def test_identity_groups_by_class_and_synthesizer(tmp_path):
    cfg = cfg_for(tmp_path, "seed=2", "segmentation.synth=cutpaste")
    ident = wandb_logging.identity(cfg, "seg", "cutpaste")
    assert ident == {"group": "seg-widget-cutpaste", "job_type": "seg",
                     "tags": ["class:widget", "synth:cutpaste", "profile:smoke", "seed:2"]}
    assert wandb_logging.identity(cfg, "eval-seg", "cutpaste")["group"] == "seg-widget-cutpaste"


def test_checkpoint_artifact_is_opt_in_and_carries_the_run_config(offline):
    from lightning.pytorch.loggers import WandbLogger

    ckpt = offline / "best.ckpt"
    ckpt.write_bytes(b"weights")
    for flag in ("false", "true"):
        logger = WandbLogger(save_dir=str(offline), offline=True, project="t", name=f"log_model-{flag}")
        trainer = SimpleNamespace(is_global_zero=True, loggers=[logger])
        cfg = cfg_for(offline, f"logger.wandb.log_model={flag}")
        wandb_logging.log_checkpoint(trainer, cfg, ckpt, metadata={"best_step": 3})
        logger.experiment.finish()
    off, on = sorted(offline_runs(offline), key=lambda r: r.name)
    assert not [a for a in off.artifacts if a["type"] == "model"]
    (model,) = [a for a in on.artifacts if a["type"] == "model"]
    assert list(model["entries"]) == ["best.ckpt"] and model["metadata"]["best_step"] == 3
    assert model["metadata"]["run_config"]["class_name"] == "widget"
    assert model["metadata"]["run_config"]["logger"]["wandb"]["log_model"] is True


# ---- end to end: compare -> per-seed seg run + summary run, eval-seg linked ----------------------------------------
@pytest.mark.slow
def test_compare_smoke_offline_runs_match_reports(data_root, tmp_path):
    env = wandb_env(tmp_path)
    out, runs = tmp_path / "reports", tmp_path / "runs"
    run_cli("compare", "profile=smoke", "class_name=widget", f"data_root={data_root}", f"run_root={runs}",
            "synths=draem", "seeds=1", f"out={out}", f"logger.wandb.save_dir={tmp_path}",
            "trainer.enable_progress_bar=false", env=env)
    seg, summary = offline_runs(tmp_path)
    # the per-seed run: grouped by class and synthesizer, tagged
    assert (seg.group, seg.job_type) == ("seg-widget-draem", "seg")
    assert {"class:widget", "synth:draem", "profile:smoke", "seed:0"} <= set(seg.tags)
    run_dir = next((runs / "seg" / "widget").glob("compare-*"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the summary is the best checkpoint's validation value (= metrics.json), and the best of the curve
    assert seg.summary["val/pixel_ap"] == metrics["val"]["pixel_ap"]
    curve = [h["val/pixel_ap"] for h in seg.rows_with("val/pixel_ap") if "val/pixel_ap" in h and "epoch" in h]
    assert len(curve) >= 2 and max(curve) == pytest.approx(metrics["val"]["pixel_ap"], rel=1e-6)
    assert seg.summary["test/pixel_ap"] == metrics["test"]["pixel_ap"]
    assert seg.summary["threshold"] == metrics["threshold"] and seg.summary["best_step"] == metrics["best_step"]
    panel = seg.rows_with("val/panels")[-1]["val/panels"]
    assert panel["count"] == 2 and all(set(m) == {"ground_truth", "prediction"} for m in panel["all_masks"])
    worst = seg.table("test/worst_images")
    assert worst["columns"] == list(wandb_logging.WORST_COLUMNS) and worst["data"]
    assert {r[1] for r in worst["data"]} <= {"crack", "dent", "good"}
    assert [r[0] for r in seg.table("test/per_type")["data"]] == ["crack", "dent"]
    # the summary run: the comparison table equals reports/<class>/comparison.csv, the plot is there
    assert (summary.group, summary.job_type) == ("compare-widget", "compare")
    with open(out / "comparison.csv", newline="") as fh:
        header, *rows = list(csv.reader(fh))
    table = summary.table("compare/table")
    assert table["columns"] == header
    assert [[str(c) if isinstance(c, str) else c for c in r] for r in table["data"]] == \
        [[c if i == 0 else float(c) for i, c in enumerate(r)] for r in rows]
    assert summary.rows_with("compare/plot")[-1]["compare/plot"]["_type"] == "image-file"
    assert summary.summary["runs"] == [str(run_dir)]

    # eval-seg: a run linked to the evaluated one (same group), its test metrics in the summary
    run_cli("eval-seg", f"ckpt={run_dir}", f"logger.wandb.save_dir={tmp_path}", "trainer.enable_progress_bar=false",
            env=env)
    ev = offline_runs(tmp_path)[-1]
    assert (ev.group, ev.job_type) == ("seg-widget-draem", "eval-seg")
    evaluated = json.loads((run_dir / "eval_metrics.json").read_text())
    assert ev.summary["test/pixel_ap"] == pytest.approx(evaluated["test"]["pixel_ap"])
    assert ev.table("test/worst_images")["data"]


# ---- diffusion samples + synthesize ------------------------------------------------------------------------------
@pytest.mark.slow
def test_diffusion_samples_table_and_synthesize_artifact(data_root, tmp_path):
    env = wandb_env(tmp_path)
    runs = tmp_path / "runs"
    common = ["profile=smoke", "class_name=widget", f"data_root={data_root}", f"run_root={runs}",
              f"logger.wandb.save_dir={tmp_path}", "trainer.enable_progress_bar=false"]
    run_cli("train-diffusion", *common, "logger.wandb.log_model=true", env=env)
    diff = offline_runs(tmp_path)[-1]
    assert (diff.group, diff.job_type) == ("diffusion-widget", "diffusion")
    (model,) = [a for a in diff.artifacts if a["type"] == "model"]  # opt-in: the last checkpoint + run config
    assert list(model["entries"]) == ["last.ckpt"] and model["metadata"]["global_step"] == 6
    assert model["metadata"]["run_config"]["diffusion"]["max_steps"] == 6
    samples = diff.table("samples/table")
    assert samples["columns"] == list(wandb_logging.SAMPLE_COLUMNS)
    assert len(samples["data"]) == 2 and {r[0] for r in samples["data"]} <= {"crack", "dent"}
    assert all(r[3] == "aias" and r[4] == 5 for r in samples["data"])
    assert all("ground_truth" in r[1]["masks"] for r in samples["data"])
    assert diff.rows_with("samples/seconds_per_image")[-1]["samples/seconds_per_image"] > 0

    run_cli("synthesize", *common, "synthesis.n=5", "logger.wandb.table_rows=3", env=env)
    syn = offline_runs(tmp_path)[-1]
    assert (syn.group, syn.job_type) == ("synthesize-widget", "synthesize")
    syn_dir = (runs / "synthetic" / "widget" / "latest").resolve()
    manifest = [json.loads(line) for line in (syn_dir / "manifest.jsonl").read_text().splitlines()]
    table = syn.table("synthesize/manifest")
    assert table["columns"] == list(wandb_logging.MANIFEST_COLUMNS)
    assert [r[0] for r in table["data"]] == [0, 1, 2] and [r[1] for r in table["data"]] == [m["type"] for m in manifest[:3]]
    cell = table["data"][0][2]
    mask = np.asarray(Image.open(table["media"][cell["masks"]["ground_truth"]["path"]]))
    np.testing.assert_array_equal(mask, (np.asarray(Image.open(syn_dir / manifest[0]["mask"]).convert("L")) > 127))
    dataset = next(a for a in syn.artifacts if a["type"] == "dataset")
    refs = [e["ref"] for e in dataset["entries"].values()]
    assert refs and all(r.startswith(syn_dir.as_uri()) for r in refs)  # a reference to the folder, not a copy
    assert syn.summary["pairs"] == 5


# ---- sweeps: both drivers rank by the same number ---------------------------------------------------------------
def test_both_sweep_drivers_pick_the_same_best_trial(offline):
    """Three trials whose LAST validation ranks differently from their BEST: the W&B summary (what a W&B sweep
    optimises) and metrics.json (what sweep-local reads) both hold the best checkpoint's value."""
    from lightning.pytorch.loggers import WandbLogger

    from fast_lightning.commands import sweep_local

    curves = {1: [0.2, 0.6, 0.3], 2: [0.4, 0.5, 0.5], 3: [0.1, 0.2, 0.55]}
    local = []
    for n, curve in curves.items():
        logger = WandbLogger(save_dir=str(offline), offline=True, project="t", name=f"trial-{n}")
        trainer = SimpleNamespace(is_global_zero=True, loggers=[logger])
        wandb_logging.define_seg_metrics(logger.experiment, ["pixel_ap"])
        for step, v in enumerate(curve):
            logger.log_metrics({"val/pixel_ap": v}, step=step)
        best = max(curve)  # ModelCheckpoint(monitor=val/pixel_ap, mode=max) keeps this step; train-seg reports it
        path = offline / f"trial-{n}" / "metrics.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"val": {"pixel_ap": best}}))
        wandb_logging.log_seg_summary(trainer, {"pixel_ap": best}, None, 0.5, curve.index(best), None)
        logger.experiment.finish()
        local.append(sweep_local.Trial(number=n, run_id=f"trial-{n}", params={}, status="finished",
                                       metric=sweep_local.read_metric(path, "val/pixel_ap")))
    summaries = {int(r.name.split("-")[1]): r.summary["val/pixel_ap"] for r in offline_runs(offline)}
    assert summaries == {n: max(c) for n, c in curves.items()}
    w_and_b_best = max(summaries, key=summaries.get)            # the W&B sweep's goal: maximize the summary
    local_best = sweep_local.sort_trials(local, "maximize")[0].number
    assert w_and_b_best == local_best == 1
    last = {n: c[-1] for n, c in curves.items()}
    assert max(last, key=last.get) != 1  # ranking by the last logged value would have picked another trial
