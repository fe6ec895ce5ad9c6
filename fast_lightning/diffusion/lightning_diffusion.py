"""DiffusionModule: the Lightning wrapper around FASTDiffusion (EMA, warmup, logging, checkpoints).

Randomness of step s (t, eps) comes from a generator seeded by (seed, s, rank): together with the
DataModule's step-indexed sample stream, a resumed run continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import grad_norm
from omegaconf import OmegaConf

from fast_lightning.diffusion.model import FASTDiffusion, build_fast_diffusion, drop_condition
from fast_lightning.ema import ema_copy, update_ema
from fast_lightning.evaluation import wandb_logging
from fast_lightning.schema import TrainerConfig
from fast_lightning.seeding import generator_for


class NonFiniteLossError(RuntimeError):
    """Training diverged; the last good checkpoint is kept."""


class DiffusionModule(L.LightningModule):
    """Receives its own config group (``diffusion``) plus the few run values it needs; the command keeps the
    whole run config (added to every checkpoint by ``training.AtomicCheckpointIO``)."""

    def __init__(self, diffusion: dict, channels: int, type_names: list[str], class_name: str, seed: int = 0,
                 sampling: dict | None = None, log_every_n_steps: int = TrainerConfig.log_every_n_steps):
        super().__init__()
        self.save_hyperparameters()
        self.diffusion_cfg = OmegaConf.create(diffusion)
        self.sampling_cfg = OmegaConf.create(sampling if sampling is not None else {})
        self.channels, self.seed, self.log_every = int(channels), int(seed), max(1, int(log_every_n_steps))
        self.model: FASTDiffusion = build_fast_diffusion(self.diffusion_cfg, self.channels, len(type_names), type_names)
        # the EMA shares the frozen pretrained parameters (latent backbone) instead of copying 1.4B weights
        shared = {id(p): p for p in self.model.parameters() if not p.requires_grad}
        self.ema: FASTDiffusion = ema_copy(self.model, memo=shared).eval()
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.log_batch: dict | None = None  # fixed images for the sample grid
        self.sample_dir: Path | None = None

    # ---- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.diffusion_cfg.optim
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=float(o.lr), weight_decay=float(o.weight_decay))
        warmup = max(1, int(o.warmup_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def speedup_targets(self) -> dict:
        """Modules ``trainer.compile`` / ``trainer.channels_last`` act on (training.Speedups); EMA: layout only."""
        return {"denoiser": self.model.denoiser, "farm": self.model.farm,
                "ema.denoiser": self.ema.denoiser, "ema.farm": self.ema.farm}

    def step_generator(self) -> torch.Generator:
        return generator_for("diffusion_step", self.seed, int(self.global_step), int(self.global_rank))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        g = self.step_generator()
        x0 = self.model.to_model_space(batch["image"], generator=g)  # g feeds a VAE posterior sample, if any
        t = torch.randint(0, self.model.num_train_timesteps, (x0.shape[0],), generator=g).to(self.device)
        eps = torch.randn(x0.shape, generator=g).to(self.device, x0.dtype)
        cond = drop_condition(batch["cond"], float(self.diffusion_cfg.get("cond_dropout", 0.0)), g)  # after t, eps
        out = self.model.training_losses(x0, batch["mask"], cond, t=t, eps=eps)
        if not torch.isfinite(out["loss"]):
            raise NonFiniteLossError(
                f"non-finite loss at step {self.global_step} (loss_eps={float(out['loss_eps']):.4g}, "
                f"loss_farm={float(out['loss_farm']):.4g}); try a lower diffusion.optim.lr or fp32 precision"
            )
        self.log_dict({"train/loss": out["loss"], "train/loss_eps": out["loss_eps"],
                       "train/loss_farm": out["loss_farm"]}, prog_bar=True, on_step=True, batch_size=x0.shape[0])
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)
        return out["loss"]

    def on_before_optimizer_step(self, optimizer) -> None:
        # logged before Lightning clips (diffusion.optim.grad_clip -> Trainer gradient_clip_val): the raw norm
        if self.global_step % self.log_every == 0:
            norms = grad_norm(self.model, norm_type=2)
            total = norms.get("grad_2.0_norm_total")
            if total is not None:
                self.log("train/grad_norm", total, on_step=True)

    def optimizer_step(self, *args, **kwargs) -> None:
        # EMA right after the weights change, before any callback (checkpointing) sees the step
        super().optimizer_step(*args, **kwargs)
        self.update_ema()

    def update_ema(self) -> None:
        update_ema(self.ema, self.model, float(self.diffusion_cfg.optim.ema_decay), int(self.ema_updates))
        self.ema_updates += 1

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        every = int(self.diffusion_cfg.sample_every)
        if every and self.global_step % every == 0 and self.global_step > 0:
            self.log_samples()

    # ---- sample grid -------------------------------------------------------------------------------
    def set_log_batch(self, normals: torch.Tensor, masks: torch.Tensor, cond: torch.Tensor) -> None:
        self.log_batch = {"image": normals, "mask": masks, "cond": cond}

    @torch.no_grad()
    def sample_grid(self, sampler=None) -> torch.Tensor:
        """Rows: normal image | mask | synthesized (EMA, current sampler) | FARM's x0_an at t=T/2."""
        from fast_lightning.sampling import build_sampler

        if self.log_batch is None:
            raise RuntimeError("set_log_batch() first")
        sampler = sampler or build_sampler(self.sampling_cfg)
        b = {k: v.to(self.device) for k, v in self.log_batch.items()}
        ema = self.ema.eval()
        background = ema.to_model_space(b["image"])
        gens = [generator_for("sample_grid", self.seed, i) for i in range(background.shape[0])]
        out = ema.from_model_space(sampler(ema, background, ema.model_mask(b["mask"], background), b["cond"], gens))
        if ema.farm is not None:
            t = torch.full((background.shape[0],), ema.num_train_timesteps // 2, device=self.device, dtype=torch.long)
            noisy = ema.schedule.q_sample(background, t, torch.randn_like(background))
            farm = ema.from_model_space(ema.farm_x0(noisy, b["mask"], t))
        else:
            farm = torch.zeros_like(out)
        mask_rgb = b["mask"].expand_as(out)
        return torch.cat([b["image"], mask_rgb, out, farm], dim=0).float().cpu()

    GRID_ROWS = ("normal", "mask", "synthesized", "FARM x0_an")

    def log_samples_to_disk(self, name: str) -> torch.Tensor | None:
        if self.log_batch is None or self.sample_dir is None:
            return None
        from fast_lightning.evaluation.plots import save_grid

        grid = self.sample_grid()
        n = self.log_batch["image"].shape[0]
        # grid rows are stacked per kind: show each kind as one row
        save_grid(grid, n, self.sample_dir / f"{name}.png", row_titles=self.GRID_ROWS)
        return grid

    def log_samples(self) -> None:
        if self.log_batch is None or not self.trainer.is_global_zero:
            return
        start = time.perf_counter()
        grid = self.log_samples_to_disk(f"step_{self.global_step:07d}")
        if grid is None:
            grid = self.sample_grid()
        n = self.log_batch["image"].shape[0]
        wandb_logging.log_diffusion_samples(self, grid, n, time.perf_counter() - start)
        for logger in self.loggers:
            if hasattr(logger, "log_image"):
                rows = [grid[i * n:(i + 1) * n] for i in range(4)]
                images = [torch.cat(list(r), dim=-1) for r in rows]
                logger.log_image("samples", images=images, caption=list(self.GRID_ROWS),
                                 step=self.global_step)

    # ---- checkpoint metadata -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["fast_lightning"] = {
            "kind": "diffusion",
            "class_name": self.hparams.class_name,
            "type_names": list(self.hparams.type_names),
            "resolution": int(self.diffusion_cfg.resolution),
            "window": str(self.diffusion_cfg.window),
            "channels": self.channels,
            **pretrained_meta(self.model),
        }
        # pretrained frozen weights are not stored: the checkpoint holds the folder path and its fingerprint
        frozen = {f"{prefix}.{k}" for k in self.model.frozen_state_keys() for prefix in ("model", "ema")}
        if frozen:
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Before Lightning's strict load: refuse another pretrained folder, put back the frozen weights."""
        check_pretrained_matches(checkpoint.get("fast_lightning", {}), self.model, "resume")
        sd = checkpoint["state_dict"]
        for prefix, model in (("model", self.model), ("ema", self.ema)):
            own = model.state_dict()
            for k in model.frozen_state_keys():
                sd.setdefault(f"{prefix}.{k}", own[k])


def pretrained_meta(model: FASTDiffusion) -> dict[str, Any]:
    """Checkpoint metadata identifying a pretrained backbone (empty for backbones trained from scratch)."""
    fp = getattr(model.denoiser, "fingerprint", None)
    return {} if fp is None else {"pretrained": model.denoiser.pretrained, "pretrained_fingerprint": fp}


def check_pretrained_matches(meta: dict, model: FASTDiffusion, action: str) -> None:
    """The pretrained folder behind ``model`` must be the one the checkpoint was trained with."""
    from fast_lightning.runs import CheckpointError

    want, have = meta.get("pretrained_fingerprint"), pretrained_meta(model)
    if want is None and not have:
        return
    if want != have.get("pretrained_fingerprint"):
        raise CheckpointError(
            f"cannot {action}: the checkpoint was trained on the pretrained folder {meta.get('pretrained')!r} "
            f"(fingerprint {want}) but diffusion.pretrained={have.get('pretrained')!r} has fingerprint "
            f"{have.get('pretrained_fingerprint')} (a different model or different files). Point "
            f"diffusion.pretrained at the folder the checkpoint was trained with."
        )


def load_fast_diffusion(path, map_location="cpu", trust: bool = False) -> tuple[FASTDiffusion, dict]:
    """EMA weights of a diffusion checkpoint (file, run dir or ``latest`` link) + its metadata (``trust``: see
    ``runs.read_checkpoint``)."""
    from fast_lightning.runs import CheckpointError, read_checkpoint, resolve_checkpoint, saved_run_config

    ckpt = read_checkpoint(path, map_location="cpu", trust=trust)
    meta = ckpt.get("fast_lightning", {})
    if meta.get("kind") != "diffusion":
        raise CheckpointError(f"{resolve_checkpoint(path)} is not a diffusion checkpoint (kind={meta.get('kind')!r})")
    hp = ckpt["hyper_parameters"]
    cfg = saved_run_config(ckpt)  # current and older checkpoints alike
    model = build_fast_diffusion(cfg.diffusion, int(cfg.data.channels), len(hp["type_names"]), hp["type_names"])
    check_pretrained_matches(meta, model, f"load {resolve_checkpoint(path)}")
    state = {k[len("ema."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("ema.")}
    try:
        model.load_trained_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {resolve_checkpoint(path)} does not match its own config: {exc}") from exc
    meta = dict(meta, config=cfg, path=str(resolve_checkpoint(path)), global_step=int(ckpt.get("global_step", 0)))
    return model.eval().to(map_location), meta
