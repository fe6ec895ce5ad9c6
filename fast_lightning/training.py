"""Trainer glue shared by both LightningModules: logger, checkpoint IO, resume, precision, callbacks.

One place decides how runs are logged (W&B offline by default), how checkpoints are written
(write-then-rename, so a full disk never destroys the previous checkpoint) and how RESUME is validated.
"""

from __future__ import annotations

import errno
import logging
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from fast_lightning.errors import UserError
from fast_lightning.evaluation.wandb_logging import identity as wandb_identity
from fast_lightning.evaluation.wandb_logging import wandb_mode
from fast_lightning.progress import SparseProgress, is_terminal
from fast_lightning.runs import atomic_write_bytes, newest_checkpoint, read_checkpoint


# Lightning notices that are expected here and only bury the useful output: the EMA copy is in eval mode on
# purpose, the diffusion module has no validation loop, and the sample stream is step-indexed (resumable).
# Segmentation metrics are computed from the all-gathered, de-duplicated set and are identical on every rank,
# so logging them without sync_dist is correct (Lightning's generic advice to sync is silenced too).
EXPECTED_WARNINGS = (
    r".*module\(s\) in eval mode.*", r".*isinstance\(treespec, LeafSpec\).*", r".*have no `validation_step`.*",
    r".*dataloader is not resumable.*", r".*does not have many workers.*", r".*exists and is not empty.*",
    r".*when logging on epoch level in distributed setting.*",
)


@contextmanager
def expected_warnings_silenced():
    """Ignore ``EXPECTED_WARNINGS`` inside the block only: importing the library leaves the process's warning
    filters untouched (the CLI wraps each command in this)."""
    with warnings.catch_warnings():
        for pattern in EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into memory, then write-then-rename: an interrupted or failed write leaves the old file.
    Reading goes through ``runs.read_checkpoint`` (safe, weights-only unless ``trust``), so Lightning's own
    loads (``fit(ckpt_path=RESUME)``, ``test(ckpt_path=best)``) cannot run code from a checkpoint either.

    ``run_config`` (the whole resolved run config, plain containers) is added to every checkpoint written,
    weights-only ones included, and read back by ``runs.saved_run_config``: the LightningModules only receive
    their own group."""

    def __init__(self, run_config: dict | None = None, trust: bool = False) -> None:
        super().__init__()
        self.run_config, self.trust = run_config, bool(trust)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location, trust=self.trust)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        import io

        if self.run_config is not None:
            checkpoint = {**checkpoint, "run_config": self.run_config}
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())


class StepTimer(Callback):
    """Where a training step's wall time goes: waiting for the batch (loading, transfer, on-device synthesis in
    ``on_after_batch_transfer``) vs the step itself. Validation passes are excluded."""

    def __init__(self) -> None:
        self.data_seconds = self.step_seconds = 0.0
        self.steps = 0
        self._batch_end: float | None = None
        self._batch_start: float | None = None

    @staticmethod
    def _now(pl_module) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        self._batch_end = self._now(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start = self._now(pl_module)
        if self._batch_end is not None:
            self.data_seconds += self._batch_start - self._batch_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batch_end = self._now(pl_module)
        if self._batch_start is not None:
            self.step_seconds += self._batch_end - self._batch_start
            self.steps += 1

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._batch_end = self._now(pl_module)

    @property
    def seconds(self) -> float:
        """Wall time of the training loop (data + step)."""
        return self.data_seconds + self.step_seconds

    def summary(self) -> dict:
        total = self.seconds
        return {"train_loop_seconds": round(total, 2), "data_wait_seconds": round(self.data_seconds, 2),
                "data_wait_share": round(self.data_seconds / total, 4) if total > 0 else None,
                "timed_steps": self.steps,
                "steps_per_second_in_loop": round(self.steps / total, 3) if total > 0 else None}


class Speedups(Callback):
    """Applies ``trainer.compile`` and ``trainer.channels_last`` (fast_lightning.speedups) to the module's
    ``speedup_targets()`` once training starts on its device; says what auto resolved to and, at the end,
    the compiled modules' first-call seconds (compile included). Names starting with "ema." get the layout only."""

    def __init__(self, compile, channels_last, max_steps: int) -> None:
        from fast_lightning import speedups

        speedups.check_choice(compile, "trainer.compile")
        speedups.check_choice(channels_last, "trainer.channels_last")
        self.compile, self.channels_last, self.max_steps = compile, channels_last, int(max_steps)
        self.states: list = []

    def on_fit_start(self, trainer, pl_module) -> None:
        from fast_lightning import speedups

        targets = getattr(pl_module, "speedup_targets", dict)()
        if not targets:
            return
        do_compile, why_c = speedups.resolve_compile(self.compile, pl_module.device.type, self.max_steps)
        layouts = self._layouts(targets, pl_module.device.type)
        if trainer.is_global_zero:
            said = "; ".join(dict.fromkeys(f"{'on' if on else 'off'} ({why})" for on, why in layouts.values()))
            logging.getLogger("fast_lightning").info(
                f"compile: {self.compile} -> {'on' if do_compile else 'off'} ({why_c}); channels_last: "
                f"{self.channels_last} -> {said}")
        self.states = []
        for name, module in targets.items():
            self.states += speedups.apply({name: module}, compile=do_compile and not name.startswith("ema."),
                                          channels_last=layouts[name][0])

    def on_test_start(self, trainer, pl_module) -> None:
        """The test pass gets the layout training had (idempotent after fit), so eval-seg, a test-only Trainer,
        scores a checkpoint exactly as its training run did."""
        from fast_lightning import speedups

        targets = getattr(pl_module, "speedup_targets", dict)()
        for name, (layout, _) in self._layouts(targets, pl_module.device.type).items():
            speedups.apply({name: targets[name]}, compile=False, channels_last=layout)

    def _layouts(self, targets: dict, device: str) -> dict:
        """name -> (channels_last?, why): ``trainer.channels_last`` resolved per module (speedups.CPU_CHANNELS_LAST)."""
        from fast_lightning import speedups

        return {name: speedups.resolve_channels_last(self.channels_last, device, name) for name in targets}

    def on_train_end(self, trainer, pl_module) -> None:
        from fast_lightning import speedups

        if self.states and trainer.is_global_zero:
            logging.getLogger("fast_lightning").info(f"compiled (first call s): {speedups.compile_summary(self.states)}")


class LogProgress(Callback):
    """Training progress as sparse plain lines (see fast_lightning.progress) when the output is not a terminal."""

    def __init__(self, kind: str, max_steps: int) -> None:
        self.kind, self.max_steps = kind, int(max_steps)
        self.bar = None

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.bar = SparseProgress(total=self.max_steps, initial=int(trainer.global_step),
                                      desc=f"train-{self.kind}", unit="steps")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.bar is None:
            return
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self.bar.set_postfix_str(f"loss {float(loss):.4g}")
        self.bar.update(int(trainer.global_step) - self.bar.n)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def step_timer(trainer: L.Trainer) -> StepTimer:
    return next(cb for cb in trainer.callbacks if isinstance(cb, StepTimer))




def check_logger_ready(cfg: DictConfig) -> None:
    """W&B online needs a key: say so before anything is created (wandb would fail after ~20 s, run dir made)."""
    if (str(cfg.logger.get("backend", "wandb")) != "wandb" or not cfg.logger.wandb.enabled
            or wandb_mode(cfg) != "online" or os.environ.get("WANDB_API_KEY")):
        return
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        if netrc.netrc(os.environ.get("NETRC")).authenticators(host):
            return
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    raise UserError(f"WANDB_MODE=online but no W&B API key is set (no WANDB_API_KEY, no {host} entry in ~/.netrc): "
                    "run `wandb login`, or use WANDB_MODE=offline (sync later with `wandb sync`)")


def build_logger(cfg: DictConfig, run_dir: Path, kind: str):
    """The logger of ``logger.backend``: wandb (offline unless asked; CSV when W&B is disabled, so loss curves
    exist offline), csv (run_dir/logs/metrics.csv), tensorboard (run_dir/tb) or none (False)."""
    backend = str(cfg.logger.get("backend", "wandb"))
    w = cfg.logger.wandb
    mode = wandb_mode(cfg)
    if backend == "none":
        return False
    if backend == "csv" or (backend == "wandb" and (not w.enabled or mode == "disabled")):
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="", version="logs")
    if backend == "tensorboard":
        try:
            from lightning.pytorch.loggers import TensorBoardLogger

            return TensorBoardLogger(save_dir=str(run_dir), name="", version="tb")
        except ModuleNotFoundError as exc:
            raise UserError("logger.backend=tensorboard needs tensorboard: pip install 'fast-lightning[tensorboard]' "
                            "(or use logger.backend=csv)") from exc
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_SILENT", "true")
    save_dir = Path(w.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    synth = str(cfg.segmentation.synth) if kind in ("seg", "eval-seg") else None  # grouped by class AND synthesizer
    return WandbLogger(
        name=f"{kind}/{cfg.class_name}/{run_dir.name}", save_dir=str(save_dir), project=str(w.project),
        entity=w.entity, offline=(mode == "offline"), config={"run_dir": str(run_dir)}, mode=mode,
        **wandb_identity(cfg, kind, synth),
    )


def log_hyperparams(logger, cfg: DictConfig) -> None:
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))


def gradient_clip_val(value: float | None) -> float | None:
    """Lightning's ``gradient_clip_val`` (L2 norm over all parameters) from ``diffusion.optim.grad_clip``; 0 or
    null = off. The value was checked (a finite number >= 0) by the schema when the config was built."""
    return float(value) if value else None


def build_trainer(cfg: DictConfig, run_dir: Path, kind: str, max_steps: int, callbacks: list,
                  checkpoint_every: int | None = None, val_every: int | None = None, **overrides) -> L.Trainer:
    t = cfg.trainer
    ckpt_dir = run_dir / "checkpoints"
    callbacks = list(callbacks)
    if checkpoint_every:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="step-{step:07d}", every_n_train_steps=int(checkpoint_every),
                                         save_top_k=1, monitor="step", mode="max", save_last=True,
                                         auto_insert_metric_name=False, save_on_train_epoch_end=False,
                                         # a resumed COPY of a run folder overwrites its names (same step), no
                                         # stray last-v1.ckpt next to last.ckpt
                                         enable_version_counter=False))
    callbacks.append(StepTimer())
    callbacks.append(Speedups(t.compile, t.channels_last, max_steps))
    progress_bar = bool(t.enable_progress_bar)
    if progress_bar and not is_terminal():  # logs get sparse lines, not hundreds of bar redraws
        callbacks.append(LogProgress(kind, max_steps))
        progress_bar = False
    logger = build_logger(cfg, run_dir, kind)
    kwargs = dict(
        accelerator=str(t.accelerator), devices=t.devices, strategy=t.strategy, num_nodes=int(t.num_nodes),
        precision=str(t.precision), max_steps=int(max_steps), max_epochs=-1, logger=logger, callbacks=callbacks,
        log_every_n_steps=int(t.log_every_n_steps), enable_progress_bar=progress_bar,
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO(OmegaConf.to_container(cfg, resolve=True), trust=bool(cfg.get("trust_checkpoint")))],
        enable_model_summary=False,
        fast_dev_run=bool(t.fast_dev_run), num_sanity_val_steps=0,
        **OmegaConf.to_container(t.get("extra") or OmegaConf.create({}), resolve=True),  # checked in config.py
    )
    if val_every:
        kwargs.update(val_check_interval=int(val_every), check_val_every_n_epoch=None)
    kwargs.update(overrides)
    trainer = L.Trainer(**kwargs)
    log_hyperparams(logger, cfg)
    return trainer


def finish_logger(trainer: L.Trainer | None) -> None:
    """Close the W&B run even when training failed (lightning-hydra-template does this in a finally)."""
    if trainer is None:
        return
    for logger in trainer.loggers:
        exp = getattr(logger, "_experiment", None)
        if exp is not None and hasattr(exp, "finish"):
            exp.finish()


def resume_command(cfg: DictConfig, target: str, run_dir: Path) -> str:
    """The exact make command that continues ``run_dir``."""
    return f"make {target} CLASS={cfg.class_name} DATA={cfg.data_root} PROFILE={cfg.profile} RESUME={run_dir}"


@contextmanager
def explained_stops(run_dir: Path, resume_command: str, trainer_of=lambda: None, progress=None):
    """Ctrl-C and a full disk end with one line that says where the work is and the exact command to resume,
    instead of Lightning's "attempting graceful shutdown" + exit 1 or an Errno 28 traceback."""
    def hint() -> str:
        """What is on disk decides the advice: a resumable state -> RESUME; weights only or nothing -> rerun."""
        if progress is not None:
            return f"{progress()}; continue with: {resume_command}"
        ckpt = newest_checkpoint(run_dir)
        if ckpt:
            return f"last checkpoint: {ckpt}; continue with: {resume_command}"
        on_disk = sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("*.ckpt"))
        if on_disk:  # e.g. only best.ckpt: weights without the optimizer/loop state RESUME needs
            return (f"{run_dir}/checkpoints holds {', '.join(on_disk)} (weights only, no training state to resume "
                    "from yet); run the same command again without RESUME to start over")
        return f"no checkpoint was written yet in {run_dir}; run the same command again without RESUME to start over"

    try:
        yield
    except SystemExit as exc:  # Lightning answers Ctrl-C with its own shutdown, then sys.exit(1)
        trainer = trainer_of()
        if trainer is None or not getattr(trainer, "interrupted", False):
            raise
        raise KeyboardInterrupt(f"interrupted; {hint()}") from exc
    except KeyboardInterrupt as exc:
        raise KeyboardInterrupt(f"interrupted; {hint()}") from exc
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        target = exc.filename or run_dir
        raise UserError(f"disk full while writing {target} (the file system holding {run_dir} has no space "
                        f"left); free space there, then continue with: {resume_command}") from exc
