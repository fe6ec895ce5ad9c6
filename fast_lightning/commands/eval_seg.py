"""`make eval-seg CKPT=<checkpoint | seg run dir | latest link> [ARGS="data_root=..."]`: re-test a segmenter.

The data module is rebuilt from the config stored in the checkpoint (key=value overrides allowed, e.g. a moved
``data_root``); the test pass uses the threshold stored in the checkpoint (chosen on validation during
training). Writes ``eval_metrics.json`` into the checkpoint's run directory.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from omegaconf import OmegaConf

from fast_lightning.errors import UserError
from fast_lightning.commands.arguments import pop_options
from fast_lightning.evaluation import wandb_logging
from fast_lightning.training import Speedups, build_logger, check_logger_ready, finish_logger, log_hyperparams
from fast_lightning.stages.fit_segmenter import (
    EVALUATED_ON,
    check_model_config,
    metric_table,
    per_type_table,
    report_defect_scale,
)
from fast_lightning.config import apply_overrides
from fast_lightning.data.datamodule import AnomalyDataModule
from fast_lightning.runs import atomic_write_json, run_dir_of_checkpoint, saved_run_config
from fast_lightning.segmentation.predict import load_seg_checkpoint

log = logging.getLogger(__name__)

# keys that define the network; a checkpoint cannot be evaluated with other values
MODEL_KEYS = ("segmentation.arch", "segmentation.encoder", "data.channels")


OPTIONS = {"ckpt": "", "trust_checkpoint": False, "print_config": False}
OPTION_HELP = {"ckpt": "segmenter checkpoint, train-seg run folder or its latest link (required)",
               "trust_checkpoint": "fully unpickle an older checkpoint you trust (default: safe weights-only read)",
               "print_config": "print the checkpoint's config with the overrides applied, then exit"}


def older_config(saved, ckpt_path):
    """A config saved before data.seg_scale became the one working-size key: its data.resolution only sized the
    square path, so with seg_scale set it is dropped (the working size came from seg_scale); a square-path run
    (seg_scale null) is a clear error, never a guessed size."""
    data = saved.get("data") or {}
    if "resolution" not in data:
        return saved
    if data.get("seg_scale") is None:
        raise UserError(f"{ckpt_path} was trained on the removed square path (data.resolution={data.resolution}, "
                        "data.seg_scale null): its working size cannot be rebuilt; retrain it with data.seg_scale")
    saved = OmegaConf.create(OmegaConf.to_container(saved))
    del saved.data["resolution"]
    log.info(f"{ckpt_path}: ignoring the removed key data.resolution (the working size came from data.seg_scale)")
    return saved


def main(args: list[str]) -> int:
    opts, overrides = pop_options(args, OPTIONS)
    if not opts["ckpt"]:
        raise UserError("no checkpoint given: make eval-seg CKPT=<checkpoint, seg run dir or runs/seg/<class>/latest>")
    # read before any config exists (the config comes from the checkpoint), so the trust flag is an option here
    ckpt_path, ckpt = load_seg_checkpoint(str(opts["ckpt"]), trust=bool(opts["trust_checkpoint"]))
    hp = ckpt["hyper_parameters"]
    saved = older_config(saved_run_config(ckpt), ckpt_path)
    OmegaConf.set_struct(saved, True)
    cfg = apply_overrides(saved, overrides)
    for key in MODEL_KEYS:
        if OmegaConf.select(cfg, key) != OmegaConf.select(saved, key):
            raise UserError(f"{key} cannot be overridden when evaluating a checkpoint "
                            f"(it was trained with {key}={OmegaConf.select(saved, key)})")
    if opts["print_config"]:
        from fast_lightning.config import to_yaml

        print(to_yaml(cfg), end="")
        return 0
    check_model_config(cfg)
    # the weights come from the checkpoint: never try to fetch pretrained encoder weights here
    cfg.segmentation.encoder_weights = None

    from fast_lightning.evaluation.catalog import metric_names
    from fast_lightning.segmentation.lightning_segmenter import SegmentationModule

    dm = AnomalyDataModule(cfg, stage="segmentation")
    dm.setup()
    stored = (ckpt.get("fast_lightning") or {}).get("working_size")
    if stored is not None and tuple(stored) != tuple(dm.working_size):
        log.warning(f"{ckpt_path} was trained at {stored[0]}x{stored[1]} px; this data gives the working size "
                    f"{dm.working_size[0]}x{dm.working_size[1]} (data.seg_scale={cfg.data.seg_scale}): metrics are "
                    "not comparable with the run's metrics.json")
    module = SegmentationModule(OmegaConf.to_container(cfg.segmentation, resolve=True), int(cfg.data.channels),
                                dm.working_size, hp.get("class_name"), hp.get("synthesizer"), hp.get("type_names"),
                                str(cfg.data.image_interpolation))
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise UserError(f"{ckpt_path} does not match its own config ({type(exc).__name__}: {exc})") from exc
    module.on_load_checkpoint(ckpt)

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
                        callbacks=[Speedups(t.compile, t.channels_last, 0)],  # training's layout: same numbers
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
        "seg_scale": int(cfg.data.seg_scale),
        "working_size": list(dm.working_size),
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
