"""Shared fixtures: a seeded fake MVTec tree, the real shared data (skipped if absent), and ``run_cli``, the one
way tests start ``python -m fast_lightning``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fast_lightning  # noqa: F401  (torchvision shim before anything else)

os.environ.setdefault("WANDB_MODE", "disabled")
PROJECT_DIR = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_DIR.parent / "shared" / "data"


def run_cli(*args, cwd=None, env=None, timeout=600, expect=0) -> subprocess.CompletedProcess:
    """``python -m fast_lightning <args>`` as a user starts it (one thread, W&B off, this checkout first on the
    path); asserts the exit code ``expect`` (None: any) and shows the output's tail when it differs."""
    full_env = dict(os.environ, PYTHONPATH=str(PROJECT_DIR), OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "fast_lightning", *map(str, args)], cwd=cwd or PROJECT_DIR,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
    if expect is not None:
        assert proc.returncode == expect, f"exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_fake_mvtec(root: Path, class_name: str = "widget", size=(40, 48), types=("crack", "dent"),
                    n_train=6, n_good=3, n_defect=3, seed=0, grayscale=False) -> Path:
    """Tiny MVTec AD tree: a bright disk on a dark background, defects are dark blobs with masks."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    disk = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (min(h, w) * 0.4) ** 2

    def part():
        img = np.full((h, w, 3), 20, np.uint8)
        img[disk] = (170 + rng.integers(-20, 20, size=(disk.sum(), 3))).astype(np.uint8)
        return img[..., 0] if grayscale else img

    cdir = root / class_name
    for i in range(n_train):
        write_png(cdir / "train" / "good" / f"{i:03d}.png", part())
    for i in range(n_good):
        write_png(cdir / "test" / "good" / f"{i:03d}.png", part())
    for t in types:
        for i in range(n_defect):
            img = part()
            mask = np.zeros((h, w), np.uint8)
            cy, cx = h // 2 + rng.integers(-4, 4), w // 2 + rng.integers(-4, 4)
            mask[cy - 3:cy + 3, cx - 4:cx + 4] = 255
            img[mask > 0] = 0
            write_png(cdir / "test" / t / f"{i:03d}.png", img)
            write_png(cdir / "ground_truth" / t / f"{i:03d}_mask.png", mask)
    return cdir


@pytest.fixture
def fake_mvtec(tmp_path) -> Path:
    """Returns the dataset root; the class is 'widget'."""
    make_fake_mvtec(tmp_path)
    return tmp_path


def shared_class(dataset: str, class_name: str) -> tuple[Path, str]:
    root = SHARED_DATA / dataset
    if not (root / class_name).is_dir():
        pytest.skip(f"shared data not available: {root / class_name}")
    return root, class_name


@pytest.fixture
def tire():
    return shared_class("mvtec3d_rgb", "tire")
