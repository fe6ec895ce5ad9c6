"""Run-folder locks: one writer per run folder, so two identical commands (same ``run_id``, or two compares of the
same settings) never write into one folder. Low level: imports nothing from the package but its errors."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fast_lightning.errors import UserError

LOCK_FILE = ".lock"
_held: dict[str, int] = {}  # real run dir -> open fd holding its flock, for this process


class RunInUseError(UserError):
    """Another live process holds the run folder."""


def is_rank_zero() -> bool:
    """Only the first process of a distributed job locks: its other ranks share rank 0's folder on purpose."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "0") not in ("", "0"):
            return False
    return True


def lock_run_dir(run_dir: str | os.PathLike) -> Path | None:
    """Take the exclusive lock of a run folder for the life of this process (or ``release_run_dir``).

    flock on ``<run_dir>/.lock`` (the kernel drops it when the holder dies, kill -9 included), with the holder's
    PID written in it: a second process refuses with "run <dir> is in use by PID <n>"; a file left by a dead
    process is taken over with a message. Re-locking a folder this process holds is a no-op."""
    import fcntl

    if not is_rank_zero():
        return None
    key = os.path.realpath(run_dir)
    if key in _held:
        return Path(key) / LOCK_FILE
    path = Path(key) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunInUseError(f"run {run_dir} is in use by PID {holder} (another command is writing it); wait for it "
                            "to finish or stop it, or use another run_id") from None
    previous = os.pread(fd, 32, 0).decode(errors="replace").strip()
    if previous.isdigit() and int(previous) != os.getpid() and not _pid_alive(int(previous)):
        logging.getLogger("fast_lightning").info(
            f"run {run_dir}: taking over the stale lock of PID {previous} (no longer running)")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = fd
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_run_dir(run_dir: str | os.PathLike) -> None:
    """Drop this process's lock on ``run_dir``. The emptied file stays: a PID left in it means its process died
    holding the folder (what the "stale lock" message reports)."""
    fd = _held.pop(os.path.realpath(run_dir), None)
    if fd is not None:
        os.ftruncate(fd, 0)
        os.close(fd)


def release_all_run_dirs() -> None:
    """Drop every lock this process holds (the CLI calls it when a command ends)."""
    for key in list(_held):
        release_run_dir(key)
