"""Run directories, atomic writes, ``latest`` links and seeding: the reproducibility glue."""

from __future__ import annotations

import json
import os
import random
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fast_lightning.errors import UserError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def json_default(obj):
    """numpy/torch scalars and paths in JSON files."""
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def run_dir_for(cfg: DictConfig, kind: str, run_id: str | None = None) -> Path:
    return Path(cfg.run_root) / kind / str(cfg.class_name) / (run_id or cfg.get("run_id") or new_run_id())


def create_run_dir(cfg: DictConfig, kind: str, run_id: str | None = None) -> Path:
    """runs/<kind>/<class>/<run-id>/ with the resolved config saved in it."""
    run_dir = run_dir_for(cfg, kind, run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    return run_dir


def training_run_dir(cfg: DictConfig, kind: str) -> Path:
    """A new run directory, except in a DDP child that Lightning re-launched (LOCAL_RANK > 0): it reuses rank 0's,
    passed through the environment, since its own random run id would differ. torchrun/SLURM ranks start
    independently and share a directory only through an explicit ``run_id``."""
    env = f"FAST_LIGHTNING_{kind.upper()}_RUN_DIR"
    inherited = os.environ.get(env)
    if (inherited and not cfg.get("run_id") and os.environ.get("LOCAL_RANK", "0") != "0"
            and "TORCHELASTIC_RUN_ID" not in os.environ
            and Path(inherited).parent == run_dir_for(cfg, kind, "x").parent):
        run_dir = Path(inherited)
    else:
        run_dir = create_run_dir(cfg, kind)
    os.environ[env] = str(run_dir)
    return run_dir


def save_config(cfg: DictConfig, run_dir: Path) -> Path:
    return atomic_write_text(Path(run_dir) / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


def update_latest(run_dir: Path) -> Path:
    """Point <parent>/latest at run_dir (relative symlink, replaced atomically)."""
    run_dir = Path(run_dir)
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{secrets.token_hex(3)}"
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, link)
    return link


def resolve_run_path(path: str | os.PathLike) -> Path:
    """Follow a ``latest`` link (or any symlink) to the real run directory or file."""
    return Path(os.path.realpath(path))


class CheckpointError(UserError, ValueError):
    """Corrupt or mismatched checkpoint; never silently replaced by a fresh start."""


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    """THE run-dir -> checkpoint rule: a run's full training state is ``<run_dir>/checkpoints/last.ckpt``."""
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def newest_checkpoint(run_dir: Path) -> Path | None:
    """last.ckpt, else the newest step-*.ckpt of a run (None when none was written yet)."""
    last = last_checkpoint(run_dir)
    if last.is_file():
        return last
    steps = sorted(last.parent.glob("step-*.ckpt"))
    return steps[-1] if steps else None


def resolve_checkpoint(path: str | os.PathLike, periodic: bool = True) -> Path:
    """A checkpoint file, or a run directory (-> ``last_checkpoint``; with ``periodic``, else the newest intact
    step-*.ckpt, with a warning: a disk that filled up while last.ckpt was being replaced must not strand the
    run), or a ``latest`` link. Raises CheckpointError naming what it looked for."""
    p = resolve_run_path(path)
    if p.is_dir():
        last = last_checkpoint(p)
        if not last.is_file() and periodic:
            import logging
            import zipfile

            steps = sorted(last.parent.glob("step-*.ckpt"), reverse=True)
            intact = [c for c in steps if zipfile.is_zipfile(c)]  # torch.save writes a zip archive
            if intact:
                logging.getLogger("fast_lightning.training").warning(
                    f"{last} is missing; resuming from the newest intact periodic checkpoint {intact[0].name}")
                last = intact[0]
        p = last
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (looked for {p}); pass a .ckpt file or a run directory")
    return resolve_run_path(p)


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch; each DDP rank gets its own stream (seed + rank)."""
    import numpy as np
    import torch

    value = int(seed) + int(rank)
    random.seed(value)
    np.random.seed(value % (2**32))
    torch.manual_seed(value)
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    return value
