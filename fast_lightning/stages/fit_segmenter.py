"""The `train-seg` stage as a library function, ``run(cfg)``: called by ``commands/train_seg.py`` and by the
study steps (``fast_lightning.study``), so nothing below commands/ imports a command.

`make train-seg CLASS=<c> [SYNTH ARCH ENCODER DATA PROFILE RESUME]`: segmenter on synthesized anomalies.

Training pairs come from the chosen synthesizer (made on the training device from normal images); the
threshold is chosen on the validation part of the REAL-test split; test metrics are computed ONCE, on the
best checkpoint (val/pixel_ap), on the remaining real-test images. Writes runs/seg/<class>/<run-id>/ with
config.yaml, split.json, metrics.json, samples.png, panels/ and checkpoints/{best,last}.ckpt.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from fast_lightning import tables
from fast_lightning.evaluation import wandb_logging
from fast_lightning.errors import UserError
from fast_lightning.data.datamodule import AnomalyDataModule, load_split
from fast_lightning.resume import accept_resume
from fast_lightning.runs import (
    atomic_write_json,
    last_checkpoint,
    lock_run_dir,
    save_config,
    training_run_dir,
    update_latest,
)
from fast_lightning.seeding import seed_everything
from fast_lightning.segmentation.callbacks import FinalValidation, SampleSheet
from fast_lightning.training import (
    build_trainer,
    check_logger_ready,
    explained_stops,
    finish_logger,
    resume_command,
    step_timer,
)

log = logging.getLogger(__name__)

EVALUATED_ON = "real-test split (never seen by any generator)"
MONITOR = "val/pixel_ap"


# ---- helpers shared with eval-seg ---------------------------------------------------------------------------
def check_model_config(cfg: DictConfig) -> None:
    """Arch / encoder / resolution problems as UserErrors naming the config keys, before any work is done."""
    from fast_lightning.segmentation.models import check_resolution

    s = cfg.segmentation
    try:
        check_resolution(int(cfg.data.seg_scale), str(s.arch), str(s.encoder))
        if s.get("crop"):  # the working size itself is rounded to data.datasets.SEG_DIVISOR
            check_resolution(int(s.crop), str(s.arch), str(s.encoder))
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def report_defect_scale(dm: AnomalyDataModule) -> dict:
    """Log how many real-test defects survive the working size (warn above 10% vanished); JSON for metrics.json."""
    from fast_lightning.data.defect_scale import defect_scale

    scale = defect_scale(dm.split.real_test, dm.working_size)
    for line in scale.lines():
        log.info(line)
    if scale.warning():
        log.warning(scale.warning())
    return scale.to_json()


def per_type_table(per_type: dict | None) -> str:
    """Test metrics per defect type (the catalog's per-type ones; each type + all defect-free test images)."""
    from fast_lightning.evaluation.catalog import label, per_type_names

    if not per_type:
        return "per-type metrics: none (the test dataset carries no defect types)"
    names = per_type_names()
    rows = [[name, str(v["images"]), str(v["defect_images"]), *(f"{v[m]:.4f}" for m in names)]
            for name, v in per_type.items()]
    return tables.text_table(["defect type", "images", "defects", *(label(m) for m in names)], rows, align="<>",
                             min_widths=[0, 6, 7] + [9] * len(names), rule=None)


def synth_info(synth, cfg: DictConfig) -> dict:
    """What produced the training pairs: class, diffusion checkpoint + sampler (fast), folder (fast_cached)."""
    inner = getattr(synth, "synth", synth)
    info: dict = {"implementation": type(inner).__name__}
    meta = getattr(getattr(inner, "synth", None), "meta", None)
    if isinstance(meta, dict):
        info["diffusion_checkpoint"] = meta.get("path")
        info["diffusion_global_step"] = meta.get("global_step")
        info["sampler"] = {"name": str(cfg.sampling.name), "steps": int(cfg.sampling.steps)}
    if getattr(inner, "folder", None) is not None:
        info["cached_dir"] = str(inner.folder)
    return info


def as_floats(metrics: dict | None) -> dict | None:
    """Plain floats for JSON (nan stays nan: undefined on that split, see docs/METRICS.md)."""
    if metrics is None:
        return None
    return {k: (float(v) if isinstance(v, float) else v) for k, v in metrics.items()}


def metric_table(rows: dict[str, dict | None], keys) -> str:
    """One column per split (val, test), one row per metric; nan = undefined there, - = not computed."""
    def cell(v) -> str:
        return f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else ("nan" if v is not None else "-")

    body = [[k, *(cell((rows[n] or {}).get(k)) for n in rows)] for k in keys]
    return tables.text_table(["metric", *rows], body, align="<>", min_widths=[24] + [12] * len(rows), gap="",
                             rule=None)


# ---- command ----------------------------------------------------------------------------------------------
def _run_dir(cfg: DictConfig) -> tuple[Path, Path | None]:
    """(run dir, checkpoint to resume from). DDP children reuse the launcher's run dir via the environment."""
    ckpt_path = None
    if cfg.resume:
        ckpt_path, run_dir = accept_resume(cfg, "segmentation")  # checks first: a refused RESUME writes nothing
        lock_run_dir(run_dir)
        save_config(cfg, run_dir)
    else:
        load_split(cfg)  # the data check runs before any run directory exists (cached: setup() repeats it)
        run_dir = training_run_dir(cfg, "seg")
    return run_dir, ckpt_path



def _callbacks(run_dir: Path) -> tuple[ModelCheckpoint, list]:
    """best.ckpt: weights + threshold only (a third of the size: no optimizer state), what test/eval-seg use;
    last.ckpt: the full training state, what RESUME uses; then the last validation and the sample sheet.
    -> (the best-checkpoint callback, all callbacks)."""
    ckpt_cb = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=MONITOR, mode="max",
                              save_top_k=1, save_weights_only=True, auto_insert_metric_name=False,
                              save_on_train_epoch_end=False, enable_version_counter=False)
    last_cb = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_top_k=0, save_last=True,
                              save_on_train_epoch_end=False, enable_version_counter=False)
    return ckpt_cb, [ckpt_cb, last_cb, FinalValidation(), SampleSheet(run_dir / "samples.png")]


def _checked_data(cfg: DictConfig, run_dir: Path):
    """The DataModule, set up; refused when the real-test split leaves no validation or test image.
    -> (datamodule, split counts, defect scale report)."""
    dm = AnomalyDataModule(cfg, stage="segmentation", run_dir=run_dir)
    dm.setup()
    counts = dm.split.counts(dm.cfg.data_root)
    if counts["val_images"] == 0 or counts["test_images"] == 0:
        raise UserError(f"the real-test split of {cfg.class_name} gives {counts['val_images']} validation and "
                        f"{counts['test_images']} test images; both must be non-empty (data.val_fraction="
                        f"{cfg.data.val_fraction}, data.generator_fraction={cfg.data.generator_fraction})")
    if counts["val_defect_images"] == 0:
        log.warning("the validation split holds no defect image: the IoU threshold stays 0.5 and val metrics are nan")
    return dm, counts, report_defect_scale(dm)


def _summary(cfg: DictConfig, dm, module, trainer, synth, synth_name: str, counts: dict, scale, val_metrics: dict,
             best_step: int, checkpoint, start: float, fit_seconds: float) -> dict:
    """metrics.json: what was trained on what, the test metrics (best checkpoint, validation threshold), timing."""
    s = cfg.segmentation
    timer = step_timer(trainer)
    return {
        "kind": "segmentation",
        "class_name": str(cfg.class_name),
        "data_root": str(cfg.data_root),
        "seg_scale": int(cfg.data.seg_scale),
        "working_size": list(dm.working_size),
        "synthesizer": synth_name,
        "synthesizer_info": synth_info(synth, cfg),
        "arch": str(s.arch),
        "encoder": str(s.encoder),
        "encoder_weights": s.encoder_weights,
        "profile": str(cfg.profile),
        "precision": str(cfg.trainer.precision),
        "evaluated_on": EVALUATED_ON,
        "threshold": float(module.threshold),
        "threshold_source": "F1-optimal pixel threshold on the validation split (best checkpoint)",
        "test": as_floats(module.test_metrics),
        "test_per_type": module.test_per_type,
        "val": val_metrics,
        "val_per_type": next((h.get("per_type") for h in reversed(module.val_history) if h["step"] == best_step), None),
        "best_step": best_step,
        "train_steps": int(trainer.global_step),
        "checkpoint": str(checkpoint),
        "counts": counts,
        "test_images_evaluated": module.test_counts,
        "defect_scale": scale,
        "seconds": round(time.time() - start, 1),
        "fit_seconds": round(fit_seconds, 1),
        **timer.summary(),
        "synthesis_seconds": round(synth.seconds, 2),
        "synthesis_wait_share": round(synth.seconds / timer.seconds, 4) if timer.seconds > 0 else None,
        "peak_gpu_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "metric_notes": "values in [0,1]; nan = undefined on this split (see docs/METRICS.md); "
                        "iou/miou/acc at the validation threshold, the rest threshold-free",
    }


def _print_results(run_dir: Path, summary: dict, counts: dict) -> None:
    from fast_lightning.evaluation.catalog import metric_names

    print(metric_table({"val (best)": summary["val"], "test": summary["test"]}, metric_names()))
    print(per_type_table(summary["test_per_type"]))
    print(f"threshold {summary['threshold']:.4f} (chosen on val); test: {counts['test_images']} real images "
          f"({counts['test_defect_images']} with defects); synthesis wait share {summary['synthesis_wait_share']}")
    print(f"segmentation run: {run_dir}  (metrics: {run_dir / 'metrics.json'}, checkpoint: {summary['checkpoint']})")


def run(cfg: DictConfig) -> int:
    """Train and test one segmenter for ``cfg`` (the study steps call this with a config)."""
    check_logger_ready(cfg)  # before any run directory exists
    s = cfg.segmentation
    check_model_config(cfg)
    synth_name = str(s.synth)
    from fast_lightning.synthesis import check_seg_synth

    check_seg_synth(synth_name, cfg)  # an unknown SYNTH or a missing model: refused before any run folder exists
    run_dir, ckpt_path = _run_dir(cfg)
    seed_everything(int(cfg.seed))
    start = time.time()

    dm, counts, scale = _checked_data(cfg, run_dir)

    from fast_lightning.synthesis import TimedSynthesizer, build_seg_synthesizer

    synth = TimedSynthesizer(build_seg_synthesizer(synth_name, cfg, dm), synth_name)
    dm.synthesizer = synth

    from fast_lightning.segmentation.lightning_segmenter import SegmentationModule

    module = SegmentationModule(OmegaConf.to_container(cfg.segmentation, resolve=True), int(cfg.data.channels),
                                dm.working_size, str(cfg.class_name), synth_name, dm.type_names,
                                str(cfg.data.image_interpolation))
    module.panel_dir = run_dir / "panels"
    max_steps = int(s.max_steps)
    val_every = max(1, min(int(s.val_every), max_steps))
    ckpt_cb, callbacks = _callbacks(run_dir)
    log.info(f"segmenter {s.arch}/{s.encoder} for {cfg.class_name} on synth={synth_name}: "
             f"{counts['train_normal_images']} normal train images, val {counts['val_images']}, "
             f"test {counts['test_images']} real images at {dm.working_size[0]}x{dm.working_size[1]} px "
             f"(training crops {s.get('crop') or 'none'}) -> {run_dir}")
    trainer = None
    try:
        trainer = build_trainer(cfg, run_dir, "seg", max_steps, callbacks=callbacks, val_every=val_every)
        with explained_stops(run_dir, resume_command(cfg, "train-seg", run_dir), lambda: trainer):
            trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)
        fit_seconds = time.time() - start
        last = last_checkpoint(run_dir)
        if not last.exists():  # no validation ran (e.g. fast_dev_run): still leave a checkpoint behind
            trainer.save_checkpoint(last)
        best = ckpt_cb.best_model_path if ckpt_cb.best_model_path and Path(ckpt_cb.best_model_path).is_file() else None
        # the ONE test pass: best checkpoint (weights + its validation threshold), real-test images
        trainer.test(module, datamodule=dm, ckpt_path=best)
        meta = module.loaded_meta or {}
        val_metrics = as_floats(meta.get("val_metrics") if best else module.val_metrics)
        best_step = int(meta.get("global_step", trainer.global_step)) if best else int(trainer.global_step)
        wandb_logging.log_seg_summary(trainer, val_metrics, as_floats(module.test_metrics), float(module.threshold),
                                      best_step, scale)
        wandb_logging.log_checkpoint(trainer, cfg, best or last, metadata={"val": val_metrics, "best_step": best_step})
    finally:
        finish_logger(trainer)
    if not trainer.is_global_zero:
        return 0
    summary = _summary(cfg, dm, module, trainer, synth, synth_name, counts, scale, val_metrics, best_step,
                       best or last, start, fit_seconds)
    atomic_write_json(run_dir / "metrics.json", summary)
    update_latest(run_dir)
    _print_results(run_dir, summary, counts)
    return 0
