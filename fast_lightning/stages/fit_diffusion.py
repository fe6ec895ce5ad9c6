"""The `train-diffusion` stage as a library function, ``run(cfg)``: called by ``commands/train_diffusion.py`` and by the
study steps (``fast_lightning.study``), so nothing below commands/ imports a command.

`make train-diffusion CLASS=<c> [DATA PROFILE RESUME]`: per-class foreground-aware diffusion model."""

from __future__ import annotations

import json
import logging
import resource
import time

import torch
from omegaconf import DictConfig, OmegaConf

from fast_lightning.errors import UserError
from fast_lightning.data.datamodule import AnomalyDataModule, load_split
from fast_lightning.evaluation import wandb_logging
from fast_lightning.diffusion.denoiser import parameter_count
from fast_lightning.diffusion.lightning_diffusion import DiffusionModule, NonFiniteLossError
from fast_lightning.resume import accept_resume
from fast_lightning.runs import (
    atomic_write_json,
    last_checkpoint,
    lock_run_dir,
    read_checkpoint,
    save_config,
    training_run_dir,
    update_latest,
)
from fast_lightning.seeding import seed_everything
from fast_lightning.training import (
    build_trainer,
    check_logger_ready,
    explained_stops,
    finish_logger,
    gradient_clip_val,
    resume_command,
    step_timer,
)

log = logging.getLogger(__name__)


def pick_log_batch(dm: AnomalyDataModule, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n normal windows and n defect masks (with their types) for the fixed sample grid."""
    ds = dm.diffusion_dataset()
    normals, masks, conds = [], [], []
    for i in range(10_000):
        item = ds[i]
        if int(item["cond"]) == 0 and len(normals) < n:
            normals.append(item["image"])
        elif int(item["cond"]) > 0 and len(masks) < n:
            masks.append(item["mask"])
            conds.append(item["cond"])
        if len(normals) == n and len(masks) == n:
            break
    if not normals:  # normal_weight = 0: use defect windows' images as backgrounds
        normals = [ds[i]["image"] for i in range(n)]
    k = min(len(normals), len(masks))
    return torch.stack(normals[:k]), torch.stack(masks[:k]), torch.stack(conds[:k])



def run(cfg: DictConfig) -> int:
    """Train one diffusion model for ``cfg`` (the study steps call this with a config)."""
    check_logger_ready(cfg)  # before any run directory exists
    grad_clip = gradient_clip_val(cfg.diffusion.optim.grad_clip)
    ckpt_path = None
    if cfg.resume:
        ckpt_path, run_dir = accept_resume(cfg, "diffusion")  # checks first: a refused RESUME writes nothing
        log.info(f"resuming from {ckpt_path}")
        lock_run_dir(run_dir)
        save_config(cfg, run_dir)
    else:
        load_split(cfg)  # the data check runs before any run directory exists (cached: setup() repeats it)
        run_dir = training_run_dir(cfg, "diffusion")
    seed_everything(int(cfg.seed))
    dm = AnomalyDataModule(cfg, stage="diffusion", run_dir=run_dir)
    dm.setup()
    module = DiffusionModule(OmegaConf.to_container(cfg.diffusion, resolve=True), int(cfg.data.channels),
                             dm.type_names, str(cfg.class_name), seed=int(cfg.seed),
                             sampling=OmegaConf.to_container(cfg.sampling, resolve=True),
                             log_every_n_steps=int(cfg.trainer.log_every_n_steps))
    module.sample_dir = run_dir / "samples"
    if int(cfg.diffusion.num_log_samples) > 0:
        module.set_log_batch(*pick_log_batch(dm, int(cfg.diffusion.num_log_samples)))
    params = {"denoiser": parameter_count(module.model.denoiser),
              "farm": parameter_count(module.model.farm) if module.model.farm is not None else 0}
    log.info(f"diffusion model for {cfg.class_name}: {params} parameters, types {dm.type_names}, "
             f"window={cfg.diffusion.window} at {cfg.diffusion.resolution}px -> {run_dir}")
    trainer = None
    start = time.time()
    trust = bool(cfg.get("trust_checkpoint"))
    start_step = 0 if ckpt_path is None else int(read_checkpoint(ckpt_path, trust=trust).get("global_step", 0))
    try:
        trainer = build_trainer(cfg, run_dir, "diffusion", int(cfg.diffusion.max_steps), callbacks=[],
                                checkpoint_every=int(cfg.diffusion.checkpoint_every),
                                gradient_clip_val=grad_clip, gradient_clip_algorithm="norm")
        with explained_stops(run_dir, resume_command(cfg, "train-diffusion", run_dir), lambda: trainer):
            trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)
        wandb_logging.log_checkpoint(trainer, cfg, last_checkpoint(run_dir), aliases=("last",),
                                     metadata={"global_step": int(trainer.global_step)})
    except NonFiniteLossError as exc:
        last = last_checkpoint(run_dir)
        kept = f"the last good checkpoint is kept: {last}" if last.exists() else "no checkpoint had been written yet"
        raise UserError(f"{exc}; {kept}") from exc
    finally:
        finish_logger(trainer)
    # collective (barrier inside) under DDP: every rank calls it, only rank 0 writes
    with explained_stops(run_dir, resume_command(cfg, "train-diffusion", run_dir)):
        trainer.save_checkpoint(last_checkpoint(run_dir))
    if trainer.is_global_zero:
        elapsed = time.time() - start
        steps = int(trainer.global_step) - start_step
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        summary = {
            "kind": "diffusion", "class_name": cfg.class_name, "data_root": str(cfg.data_root), "profile": cfg.profile,
            "global_step": int(trainer.global_step), "steps_this_run": steps, "seconds": round(elapsed, 1),
            "steps_per_second": round(steps / elapsed, 3) if elapsed > 0 else None,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_gpu_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
            "precision": str(cfg.trainer.precision), "torch_threads": torch.get_num_threads(),
            **step_timer(trainer).summary(),
            "parameters": params, "type_names": dm.type_names, "final": metrics,
            "note": "training losses on the generator-train split (not a test metric)",
        }
        atomic_write_json(run_dir / "metrics.json", summary)
        if int(cfg.diffusion.num_log_samples) > 0:
            module.sample_dir = run_dir / "samples"
            module.to(trainer.strategy.root_device)
            module.log_samples_to_disk("final")
        if int(trainer.global_step) >= 1:  # `latest` only ever names a model that trained
            update_latest(run_dir)
        print(json.dumps({k: summary[k] for k in ("global_step", "steps_per_second", "data_wait_share", "precision",
                                                  "peak_rss_mb")}))
        print(f"diffusion run: {run_dir}  (checkpoint: {last_checkpoint(run_dir)})")
    return 0
