"""`make eval-seg CKPT=<checkpoint | seg run dir | latest link> [ARGS="data_root=..."]`: re-test a segmenter.

The data module is rebuilt from the config stored in the checkpoint (key=value overrides allowed, e.g. a moved
``data_root``); the test pass uses the threshold stored in the checkpoint (chosen on validation during
training). Writes ``eval_metrics.json`` into the checkpoint's run directory.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import lightning as L
from omegaconf import OmegaConf

from fast_lightning.errors import UserError
from fast_lightning.commands.common import pop_options
from fast_lightning.evaluation import wandb_logging
from fast_lightning.training import build_logger, check_logger_ready, finish_logger, log_hyperparams
from fast_lightning.stages.fit_segmenter import (
    EVALUATED_ON,
    check_model_config,
    metric_table,
    per_type_table,
    report_defect_scale,
)
from fast_lightning.config import apply_overrides
from fast_lightning.data.datamodule import AnomalyDataModule
from fast_lightning.runs import (
    CheckpointError,
    atomic_write_json,
    read_checkpoint,
    resolve_checkpoint,
    run_dir_of_checkpoint,
    saved_run_config,
)

log = logging.getLogger(__name__)

# keys that define the network; a checkpoint cannot be evaluated with other values
MODEL_KEYS = ("segmentation.arch", "segmentation.encoder", "data.channels")


def resolve_seg_checkpoint(path: str) -> Path:
    """A .ckpt file, or a seg run dir / ``latest`` link -> its checkpoints/best.ckpt (else last.ckpt)."""
    p = Path(os.path.realpath(path))
    if p.is_dir() and (p / "checkpoints" / "best.ckpt").is_file():
        return p / "checkpoints" / "best.ckpt"
    return resolve_checkpoint(path)


def load_seg_checkpoint(path: str, trust: bool = False) -> tuple[Path, dict]:
    try:
        ckpt_path = resolve_seg_checkpoint(path)
        ckpt = read_checkpoint(ckpt_path, trust=trust)
    except CheckpointError as exc:
        raise UserError(str(exc)) from exc
    meta = ckpt.get("fast_lightning") or {}
    if meta.get("kind") != "segmentation":
        raise UserError(f"{ckpt_path} is not a segmentation checkpoint (kind={meta.get('kind')!r}); pass a "
                        "checkpoint or run directory written by `make train-seg` (runs/seg/<class>/...)")
    if not saved_run_config(ckpt):
        raise UserError(f"{ckpt_path} holds no saved run config (run_config): cannot rebuild its data")
    return ckpt_path, ckpt


def main(args: list[str]) -> int:
    opts, overrides = pop_options(args, {"ckpt": "", "trust_checkpoint": False})
    if not opts["ckpt"]:
        raise UserError("no checkpoint given: make eval-seg CKPT=<checkpoint, seg run dir or runs/seg/<class>/latest>")
    # read before any config exists (the config comes from the checkpoint), so the trust flag is an option here
    ckpt_path, ckpt = load_seg_checkpoint(str(opts["ckpt"]), trust=bool(opts["trust_checkpoint"]))
    hp = ckpt["hyper_parameters"]
    saved = saved_run_config(ckpt)
    OmegaConf.set_struct(saved, True)
    cfg = apply_overrides(saved, overrides)
    for key in MODEL_KEYS:
        if OmegaConf.select(cfg, key) != OmegaConf.select(saved, key):
            raise UserError(f"{key} cannot be overridden when evaluating a checkpoint "
                            f"(it was trained with {key}={OmegaConf.select(saved, key)})")
    check_model_config(cfg)
    # the weights come from the checkpoint: never try to fetch pretrained encoder weights here
    cfg.segmentation.encoder_weights = None

    from fast_lightning.evaluation.catalog import metric_names
    from fast_lightning.segmentation.module import SegmentationModule

    module = SegmentationModule(OmegaConf.to_container(cfg.segmentation, resolve=True), int(cfg.data.channels),
                                int(cfg.data.resolution), hp.get("class_name"), hp.get("synthesizer"))
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise UserError(f"{ckpt_path} does not match its own config ({type(exc).__name__}: {exc})") from exc
    module.on_load_checkpoint(ckpt)

    dm = AnomalyDataModule(cfg, stage="segmentation")
    dm.setup()
    counts = dm.split.counts(dm.cfg.data_root)
    scale = report_defect_scale(dm)
    run_dir = run_dir_of_checkpoint(ckpt_path)
    split_file = run_dir / "split.json"
    same_split = None
    if split_file.is_file():
        import json

        saved_test = [r["image"] for r in json.loads(split_file.read_text()).get("test", [])]
        same_split = saved_test == [r.image for r in dm.split.test]
        if not same_split:
            log.warning(f"the test split differs from the one saved at training time ({split_file}): "
                        "metrics are not comparable with the run's metrics.json")
    t = cfg.trainer
    check_logger_ready(cfg)
    # a W&B run linked to the evaluated one: same group (seg-<class>-<synth>), job_type eval-seg
    logger = build_logger(cfg, run_dir, "eval-seg")
    trainer = L.Trainer(accelerator=str(t.accelerator), devices=1, precision=str(t.precision), logger=logger,
                        enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=bool(t.enable_progress_bar), default_root_dir=str(run_dir))
    start = time.time()
    try:
        log_hyperparams(logger, cfg)
        trainer.test(module, datamodule=dm)
        wandb_logging.log_seg_summary(trainer, None, module.test_metrics, float(module.threshold),
                                      int(ckpt.get("global_step", 0)), scale)
    finally:
        finish_logger(trainer)
    meta = ckpt["fast_lightning"]
    result = {
        "kind": "segmentation-eval",
        "checkpoint": str(ckpt_path),
        "global_step": int(ckpt.get("global_step", 0)),
        "class_name": str(cfg.class_name),
        "data_root": str(cfg.data_root),
        "resolution": int(cfg.data.resolution),
        "synthesizer": meta.get("synthesizer"),
        "arch": str(cfg.segmentation.arch),
        "encoder": str(cfg.segmentation.encoder),
        "evaluated_on": EVALUATED_ON,
        "threshold": float(module.threshold),
        "threshold_source": "stored in the checkpoint (F1-optimal on the validation split during training)"
        if bool(module.threshold_chosen) else "default 0.5 (no validation threshold in this checkpoint)",
        "test": module.test_metrics,
        "test_per_type": module.test_per_type,
        "counts": counts,
        "test_images_evaluated": module.test_counts,
        "defect_scale": scale,
        "split_matches_training": same_split,
        "overrides": list(overrides),
        "seconds": round(time.time() - start, 1),
    }
    atomic_write_json(run_dir / "eval_metrics.json", result)
    print(metric_table({"test": module.test_metrics}, metric_names()))
    print(per_type_table(module.test_per_type))
    print(f"threshold {result['threshold']:.4f} ({result['threshold_source']}); "
          f"{counts['test_images']} real test images ({counts['test_defect_images']} with defects)")
    print(f"wrote {run_dir / 'eval_metrics.json'}")
    return 0
