"""Run directories, atomic writes, ``latest`` links and checkpoints (which file a path means, reading it): the
low-level reproducibility glue every layer shares. Imports nothing from data/ or diffusion/ (the data layer
writes through it); whether a RESUME fits a checkpoint is decided above them, in ``fast_lightning.resume``."""

from __future__ import annotations

import errno
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fast_lightning.config import check_path_part
from fast_lightning.errors import ConfigError, UserError
from fast_lightning.locks import LOCK_FILE, RunInUseError, lock_run_dir, release_all_run_dirs, release_run_dir  # noqa: F401


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
    """runs/<kind>/<class>/<run-id>; a class name or run id that would leave ``run_root`` is a ConfigError."""
    check_path_part(cfg.class_name, "class_name (CLASS)")
    run_id = run_id or cfg.get("run_id") or new_run_id()
    check_path_part(run_id, "run_id")
    root = Path(cfg.run_root)
    run_dir = root / kind / str(cfg.class_name) / str(run_id)
    real_root, real = os.path.realpath(root), os.path.realpath(run_dir)
    if os.path.commonpath([real_root, real]) != real_root:
        raise ConfigError(f"run folder {run_dir} resolves to {real}, outside run_root={root}: refusing to write there")
    return run_dir


def create_run_dir(cfg: DictConfig, kind: str, run_id: str | None = None) -> Path:
    """runs/<kind>/<class>/<run-id>/, locked for this process (``lock_run_dir``), with the resolved config."""
    run_dir = run_dir_for(cfg, kind, run_id)
    make_run_dir(run_dir, cfg.run_root)
    lock_run_dir(run_dir)
    save_config(cfg, run_dir)
    return run_dir


def make_run_dir(run_dir: Path, run_root) -> Path:
    """mkdir -p, with a one-line error naming the folder and ``run_root=`` when it cannot be made/written."""
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable", str(run_dir))
    except (PermissionError, FileExistsError, NotADirectoryError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"cannot create or write the run folder {run_dir} ({reason}); choose another place with "
                        f"run_root=<writable folder> (now run_root={run_root})") from exc
    return Path(run_dir)


def training_run_dir(cfg: DictConfig, kind: str) -> Path:
    """A new run directory, except in a DDP child that Lightning re-launched (LOCAL_RANK > 0): it reuses rank 0's,
    passed through the environment, since its own random run id would differ (only rank 0 holds the lock).
    torchrun/SLURM ranks start independently and share a directory only through an explicit ``run_id``."""
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


def read_checkpoint(path: str | os.PathLike, map_location="cpu", trust: bool = False) -> dict:
    """The checkpoint dict of ``path`` (file, run dir or ``latest``), or a CheckpointError naming the file.

    THE one ``torch.load`` of the package. Safe by default (``weights_only``): tensors and plain containers
    only, so a shared checkpoint cannot run code when read. ``trust=True`` (config ``trust_checkpoint=true``)
    fully unpickles, with a warning: only for files the user made or trusts (e.g. to convert an old one)."""
    import pickle

    import torch

    path = resolve_checkpoint(path)
    if trust:
        import logging

        logging.getLogger("fast_lightning").warning(
            f"trust_checkpoint=true: fully unpickling {path}; a checkpoint loaded this way can run any code it "
            "contains, so use this only for files you made or trust")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if trust or not zipfile_ok(path):
            raise CheckpointError(f"corrupt or unreadable checkpoint {path}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0]}") from exc
        raise CheckpointError(unsafe_checkpoint_message(path)) from None
    except Exception as exc:
        raise CheckpointError(f"corrupt or unreadable checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a fast-lightning/Lightning checkpoint (no state_dict)")
    return ckpt


def zipfile_ok(path: Path) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def unsafe_globals(path: Path) -> list[str]:
    """The Python types a checkpoint would import when unpickled (read from the pickle, nothing executed)."""
    import torch

    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001  (only used to word an error)
        return []


def unsafe_checkpoint_message(path: Path) -> str:
    names = unsafe_globals(path)
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "") if names else "unknown types"
    old = any(n.startswith("omegaconf.") for n in names)
    return (f"{path} holds Python objects beyond tensors and plain data ({shown}), so it is not loaded: unpickling "
            f"them could run code. {'It looks like a checkpoint from an older fast-lightning. ' if old else ''}"
            f"If you trust the file, convert it once with `python -m fast_lightning convert-checkpoint ckpt={path} "
            f"trust_checkpoint=true` (or load it as is with trust_checkpoint=true)")


def run_dir_of_checkpoint(path: Path) -> Path:
    path = Path(path)
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def saved_run_config(ckpt: dict) -> DictConfig:
    """The whole resolved run config a checkpoint was trained with (``run_config``, stored by the trainer;
    checkpoints written before that kept it as the module's ``config`` hyperparameter)."""
    saved = ckpt.get("run_config")
    if saved is None:
        saved = (ckpt.get("hyper_parameters") or {}).get("config") or {}
    return OmegaConf.create(saved)
