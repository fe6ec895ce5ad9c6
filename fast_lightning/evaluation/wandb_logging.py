"""What W&B receives beyond Lightning's scalars: mask overlays, sample/worst-image tables, artifacts, summaries.

Every function here is a no-op without a W&B run (``WANDB_MODE=disabled``, ``logger.wandb.enabled=false``,
non-zero ranks), so the LightningModules and commands call them unconditionally. ``wandb`` itself is imported
only when a run exists. Runs are named so W&B's built-in grouping works: ``group`` = job + class (+ synthesizer
for segmenters), tags = class, synthesizer, profile, seed, so a report draws mean +- std per synthesizer.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from fast_lightning.evaluation import catalog

MASK_LABELS = {"ground_truth": {1: "defect (ground truth)"}, "prediction": {1: "defect (predicted)"}}


# ---- runs ---------------------------------------------------------------------------------------------------
def wandb_mode(cfg) -> str:
    """The W&B mode in force: env WANDB_MODE wins over logger.wandb.mode."""
    return os.environ.get("WANDB_MODE") or str(cfg.logger.wandb.mode)


def enabled(cfg) -> bool:
    """W&B is the chosen logger.backend, enabled, and not WANDB_MODE=disabled."""
    return (str(cfg.logger.get("backend", "wandb")) == "wandb" and bool(cfg.logger.wandb.enabled)
            and wandb_mode(cfg) != "disabled")


GROUP_OF = {"eval-seg": "seg"}  # an evaluation joins the group of the runs it evaluates


def identity(cfg, kind: str, synth: str | None = None) -> dict[str, Any]:
    """group / job_type / tags of a run of ``kind`` (seg, diffusion, synthesize, eval-seg, compare, ...)."""
    cls = str(cfg.class_name)
    tags = [f"class:{cls}", f"profile:{cfg.profile}", f"seed:{int(cfg.seed)}"]
    if synth:
        tags.insert(1, f"synth:{synth}")
    group = f"{GROUP_OF.get(kind, kind)}-{cls}" + (f"-{synth}" if synth else "")
    return {"group": group, "job_type": kind, "tags": tags}


def start_run(cfg, kind: str, name: str, synth: str | None = None, config: dict | None = None,
              tags: Sequence[str] | None = None):
    """A W&B run for a command that has no Lightning logger (synthesize, study summaries); None when W&B is
    off. The caller finishes it (``finish``, also on errors); ``tags`` replace the class/profile/seed tags."""
    if not enabled(cfg):
        return None
    import wandb
    from omegaconf import OmegaConf

    os.environ.setdefault("WANDB_SILENT", "true")
    w = cfg.logger.wandb
    save_dir = Path(str(w.save_dir))
    save_dir.mkdir(parents=True, exist_ok=True)
    full = OmegaConf.to_container(cfg, resolve=True)
    full.update(config or {})
    ident = identity(cfg, kind, synth)
    if tags is not None:
        ident["tags"] = list(tags)
    return wandb.init(project=str(w.project), entity=w.entity, dir=str(save_dir), mode=wandb_mode(cfg),
                      name=name, config=full, reinit="create_new", **ident)


def finish(run) -> None:
    if run is not None:
        run.finish()


def trainer_run(trainer):
    """The wandb run of a Trainer's WandbLogger (global rank 0 only), else None."""
    if trainer is None or not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            return logger.experiment
    return None


def lightning_run(module):
    """The wandb run behind a LightningModule's WandbLogger (global rank 0 only), else None."""
    return trainer_run(getattr(module, "_trainer", None))


# ---- media --------------------------------------------------------------------------------------------------
def _hwc(image: torch.Tensor):
    """(C,H,W) in [0,1] -> (H,W,3) uint8 numpy."""
    x = image.detach().float().cpu().clamp(0, 1)
    if x.shape[0] != 3:
        x = x[:1].expand(3, -1, -1)
    return (x.permute(1, 2, 0).numpy() * 255).round().astype("uint8")


def mask_array(mask: torch.Tensor):
    """(1,H,W) or (H,W) mask -> (H,W) uint8 class ids (0 background, 1 defect), what W&B's masks= takes."""
    m = mask.detach().float().cpu()
    return (m.reshape(m.shape[-2:]) > 0.5).to(torch.uint8).numpy()


def overlay(image: torch.Tensor, gt: torch.Tensor | None = None, pred: torch.Tensor | None = None,
            caption: str | None = None):
    """wandb.Image with the ground truth and the prediction as two toggleable mask layers."""
    import wandb

    masks = {}
    for key, m in (("ground_truth", gt), ("prediction", pred)):
        if m is not None:
            masks[key] = {"mask_data": mask_array(m), "class_labels": MASK_LABELS[key]}
    return wandb.Image(_hwc(image), masks=masks or None, caption=caption)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]):
    import wandb

    return wandb.Table(columns=list(columns), data=[list(r) for r in rows])


def _num(v) -> float | None:
    """JSON-safe number for tables (nan -> None: W&B tables reject nan in numeric columns)."""
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) or math.isinf(v) else v


# ---- segmentation -------------------------------------------------------------------------------------------
def define_seg_metrics(run, keys: Sequence[str]) -> None:
    """Live summaries of validation metrics are their best so far (max); the final summary is overwritten by
    ``log_seg_summary`` with the best checkpoint's values."""
    for k in keys:  # x axis: Lightning's trainer/global_step, as for every other metric of the run
        run.define_metric(f"val/{k}", step_metric="trainer/global_step",
                          summary={True: "max", False: "min"}.get(catalog.higher_is_better(k), "last"))


def log_seg_panels(module, key: str, images, gts, probs, labels, indices, threshold: float) -> None:
    """Fixed validation images with ground-truth and prediction (probability >= threshold) mask layers."""
    run = lightning_run(module)
    if run is None:
        return
    panels = [overlay(img, gt, p >= threshold, caption=f"{lab} #{i} (pred@{threshold:.3f})")
              for img, gt, p, lab, i in zip(images, gts, probs, labels, indices)]
    run.log({key: panels, "trainer/global_step": int(module.global_step)})


WORST_COLUMNS = ("index", "defect type", "image", "pixel_ap", "iou", "max_prob")


def worst_rows(per_image: list[dict], n: int) -> list[dict]:
    """The n defect images with the lowest pixel AP (missed defects), then the ceil(n/2) defect-free images
    with the highest probability (the strongest false alarms)."""
    n = max(0, int(n))
    defects = sorted((r for r in per_image if not math.isnan(r["pixel_ap"])), key=lambda r: r["pixel_ap"])
    clean = sorted((r for r in per_image if math.isnan(r["pixel_ap"])), key=lambda r: -r["max_prob"])
    return defects[:n] + clean[: (n + 1) // 2]


def log_seg_test(module, index, probs, masks, types, dataset) -> None:
    """Test pass: worst-image table (overlays, per-image AP / IoU, type), per-type table, threshold."""
    run = lightning_run(module)
    if run is None:
        return
    from fast_lightning.evaluation.metrics import per_image_metrics

    thr = float(module.threshold)
    per_image = per_image_metrics(probs, masks, thr)
    for pos, (r, i) in enumerate(zip(per_image, index.tolist())):
        r.update(index=int(i), pos=pos, type=str(types[pos]) if types else "?")
    n = int(module.seg_cfg.num_log_images) if dataset is not None else 0
    rows = []
    for r in worst_rows(per_image, n):
        pos = r["pos"]
        img = dataset[r["index"]]["image"]
        image = overlay(img, masks[pos], probs[pos] >= thr, caption=f"{r['type']} #{r['index']}")
        rows.append([r["index"], r["type"], image, _num(r["pixel_ap"]), _num(r["iou"]), _num(r["max_prob"])])
    log = {"test/worst_images": table(WORST_COLUMNS, rows), "test/threshold": thr,
           "trainer/global_step": int(module.global_step)}
    if module.test_per_type:
        names = catalog.per_type_names()
        log["test/per_type"] = table(["defect type", "images", "defect_images", *names],
                                     [[t, v["images"], v["defect_images"], *(_num(v[k]) for k in names)]
                                      for t, v in module.test_per_type.items()])
    run.log(log)


def log_seg_summary(trainer, val: dict | None, test: dict | None, threshold: float, best_step: int,
                    defect_scale: dict | None) -> None:
    """Final summary = the best checkpoint's validation metrics (what a sweep ranks by, what metrics.json says),
    test metrics, the chosen threshold; the defect-scale table."""
    run = trainer_run(trainer)
    if run is None:
        return
    summary = {f"val/{k}": v for k, v in (val or {}).items()}
    summary.update({f"test/{k}": v for k, v in (test or {}).items()})
    summary.update({"threshold": float(threshold), "best_step": int(best_step)})
    run.summary.update(summary)
    if defect_scale:
        rows = [[k, str(v)] for k, v in defect_scale.items() if not isinstance(v, (list, dict))]
        run.log({"data/defect_scale": table(["quantity", "value"], rows)})


def log_checkpoint(trainer, cfg, path: Path, aliases: Sequence[str] = ("best",), metadata: dict | None = None) -> None:
    """The checkpoint as a W&B model artifact with the run config attached (opt-in: logger.wandb.log_model)."""
    run = trainer_run(trainer)
    if run is None or not bool(cfg.logger.wandb.log_model) or not path or not Path(path).is_file():
        return
    import wandb
    from omegaconf import OmegaConf

    art = wandb.Artifact(f"model-{run.id}", type="model",
                         metadata={"run_config": OmegaConf.to_container(cfg, resolve=True), **(metadata or {})})
    art.add_file(str(path), name=Path(path).name)
    run.log_artifact(art, aliases=list(aliases))


# ---- diffusion ----------------------------------------------------------------------------------------------
SAMPLE_COLUMNS = ("type", "synthesized", "normal", "sampler", "steps")


def log_diffusion_samples(module, grid: torch.Tensor, n: int, seconds: float) -> None:
    """Sample table (one row per fixed log image: type, synthesized image with its mask layer, the normal
    image, sampler and AIAS steps) and the sampling speed; ``grid`` is DiffusionModule.sample_grid's."""
    run = lightning_run(module)
    if run is None:
        return
    normal, mask, synth = grid[:n], grid[n:2 * n], grid[2 * n:3 * n]
    names = list(module.hparams.type_names)
    cond = module.log_batch["cond"].view(-1).tolist()
    s = module.sampling_cfg
    rows = [[names[int(c) - 1] if 0 < int(c) <= len(names) else "normal", overlay(synth[k], gt=mask[k, :1]),
             overlay(normal[k]), str(s.get("name")), s.get("steps")] for k, c in enumerate(cond[:n])]
    run.log({"samples/table": table(SAMPLE_COLUMNS, rows), "samples/seconds_per_image": seconds / max(1, n),
             "trainer/global_step": int(module.global_step)})


# ---- study reports (compare, benchmark, ablate) -------------------------------------------------------------
def csv_table_rows(path: Path) -> tuple[list[str], list[list]]:
    """A report CSV as (header, rows), numeric cells as floats (the W&B table then sorts and plots them)."""
    import csv

    with open(path, newline="") as fh:
        header, *body = list(csv.reader(fh))

    def cell(v: str):
        try:
            return float(v)
        except ValueError:
            return v

    return header, [[cell(v) for v in row] for row in body]


def log_report(cfg, kind: str, csv_path: Path, plot_path: Path | None = None, runs: Sequence[str] = (),
               tags: Sequence[str] | None = None) -> str | None:
    """One summary run per report: the comparison CSV as a wandb.Table (same rows and columns), the plot as an
    image, the per-seed run folders in the summary. Returns the run's folder (None when W&B is off)."""
    run = start_run(cfg, kind, f"{kind}/{cfg.class_name}", tags=tags)
    if run is None:
        return None
    import wandb

    try:
        header, rows = csv_table_rows(Path(csv_path))
        log = {f"{kind}/table": table(header, rows)}
        if plot_path is not None and Path(plot_path).is_file():
            log[f"{kind}/plot"] = wandb.Image(str(plot_path))
        run.log(log)
        run.summary.update({"report_csv": str(csv_path), "runs": list(runs)})
        return str(Path(run.dir).parent)
    finally:
        finish(run)


# ---- synthesize ---------------------------------------------------------------------------------------------
MANIFEST_COLUMNS = ("index", "type", "pair", "sampler", "steps", "mask_source")


def log_synthesis(cfg, run_dir: Path, rows: list[dict], summary: dict) -> str | None:
    """A synthesize run: the first ``logger.wandb.table_rows`` manifest pairs as a table (image with its mask
    layer), the whole synthetic set as a dataset artifact (a reference to the folder unless
    ``logger.wandb.dataset_copy``). Returns the run's folder (None when W&B is off)."""
    run = start_run(cfg, "synthesize", f"synthesize/{cfg.class_name}/{Path(run_dir).name}",
                    config={"run_dir": str(run_dir)})
    if run is None:
        return None
    import wandb
    from fast_lightning.data.io import load_image, load_mask

    w = cfg.logger.wandb
    try:
        data = []
        for r in rows[: max(0, int(w.table_rows))]:
            image = load_image(Path(run_dir) / r["image"], channels=3)
            mask = load_mask(Path(run_dir) / r["mask"])
            pair = overlay(image, gt=mask, caption=f"{r.get('type')} #{r['index']}")
            data.append([int(r["index"]), r.get("type"), pair, r.get("sampler"), r.get("steps"), r.get("mask_source")])
        run.log({"synthesize/manifest": table(MANIFEST_COLUMNS, data)})
        art = wandb.Artifact(f"synthetic-{cfg.class_name}-{Path(run_dir).name}", type="dataset",
                             metadata={"run_dir": str(run_dir), **summary})
        if bool(w.dataset_copy):
            art.add_dir(str(run_dir))
        else:
            art.add_reference(Path(run_dir).resolve().as_uri(), name="pairs")
        run.log_artifact(art)
        run.summary.update(summary)
        return str(Path(run.dir).parent)
    finally:
        finish(run)
