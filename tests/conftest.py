"""Shared fixtures: a seeded fake MVTec tree, the real shared data (skipped if absent), the smoke config and an
untrained smoke diffusion model, ``check_seg_run`` (what a finished train-seg run must hold) and ``run_cli``, the
one way tests start ``python -m fast_lightning``."""

from __future__ import annotations

import json
import math
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


# variables a launcher (Lightning DDP, torchrun) sets for its children: a test's command must not inherit them
LAUNCHER_ENV = ("FAST_LIGHTNING_", "MASTER_", "LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK")


def cli_env(env: dict | None = None) -> dict:
    """The environment of a command a test starts: one thread, W&B off, this checkout first on the path, no
    launcher variables; ``env`` adds keys (a value of None removes the key)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_ENV)}
    full.update(PYTHONPATH=str(PROJECT_DIR), OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    return full


def run_cli(*args, cwd=None, env=None, timeout=600, expect=0, launcher=()) -> subprocess.CompletedProcess:
    """``python -m fast_lightning <args>`` as a user starts it (environment: ``cli_env(env)``); ``launcher``
    goes between the interpreter and ``-m fast_lightning`` (e.g. ``-m torch.distributed.run --nproc-per-node=2``).
    Asserts the exit code ``expect`` (None: any) and shows the output's tail when it differs."""
    argv = [sys.executable, *map(str, launcher), "-m", "fast_lightning", *map(str, args)]
    proc = subprocess.run(argv, cwd=cwd or PROJECT_DIR, env=cli_env(env), capture_output=True, text=True,
                          timeout=timeout)
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


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The fake 'widget' class shared by a module's tests (read-only: runs go elsewhere)."""
    root = tmp_path_factory.mktemp("data")
    make_fake_mvtec(root)
    return root


SMOKE_TYPES = ["crack", "dent"]  # the fake class's defect types


@pytest.fixture(scope="module")
def smoke_cfg():
    """The smoke profile's config (no class): the tiny model and sampler settings unit tests build on."""
    from fast_lightning.config import load_config

    return load_config(["profile=smoke"])


@pytest.fixture(scope="module")
def smoke_model(smoke_cfg):
    """An untrained, seeded smoke-size diffusion model for SMOKE_TYPES, in eval mode."""
    import torch

    from fast_lightning.diffusion import build_fast_diffusion

    torch.manual_seed(0)
    return build_fast_diffusion(smoke_cfg.diffusion, 3, len(SMOKE_TYPES), SMOKE_TYPES).eval()


def shared_class(dataset: str, class_name: str) -> tuple[Path, str]:
    root = SHARED_DATA / dataset
    if not (root / class_name).is_dir():
        pytest.skip(f"shared data not available: {root / class_name}")
    return root, class_name


@pytest.fixture
def tire():
    return shared_class("mvtec3d_rgb", "tire")


SEG_METRIC_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_f1_max_threshold", "iou", "miou", "acc",
                   "iou_threshold", "image_auroc", "aupro")


def check_seg_run(run_dir: Path, synth: str) -> dict:
    """A finished train-seg run on the fake class: metrics.json (every metric in [0,1] or an allowed nan, the
    split disjoint, all test images evaluated), split.json, checkpoints, sample sheet and panels."""
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["synthesizer"] == synth and m["evaluated_on"].startswith("real-test")
    for part in ("test", "val"):
        assert set(SEG_METRIC_KEYS) <= set(m[part]), part
        for k, v in m[part].items():
            assert (0.0 <= v <= 1.0) or (math.isnan(v) and k in ("image_auroc",)), (part, k, v)
    assert 0.0 <= m["threshold"] <= 1.0 and m["test"]["iou_threshold"] == pytest.approx(m["threshold"])
    c = m["counts"]
    assert c["val_test_disjoint"] and c["eval_disjoint_from_generator_train"]
    assert c["test_images"] > 0 and c["val_images"] > 0 and m["test_images_evaluated"]["images"] == c["test_images"]
    assert set(m["test_per_type"]) == {"crack", "dent"}  # the fake class's defect types
    for v in m["test_per_type"].values():
        assert 0.0 <= v["pixel_ap"] <= 1.0 and v["images"] > v["defect_images"] > 0
    # the best step's validation per type (what `make fidelity probe=` ranks by): each type's val images + all good
    assert set(m["val_per_type"]) == {"crack", "dent"}
    val_defects = sum(v["defect_images"] for v in m["val_per_type"].values())
    assert val_defects == c["val_defect_images"]
    for v in m["val_per_type"].values():
        assert 0.0 <= v["pixel_ap"] <= 1.0 and v["images"] - v["defect_images"] == c["val_images"] - val_defects
    scale = m["defect_scale"]
    assert scale["size"] == m["working_size"] and scale["masks"] == c["val_defect_images"] + c["test_defect_images"]
    split = json.loads((run_dir / "split.json").read_text())
    gen = {r["image"] for r in split["generator_train"]}
    val, test = {r["image"] for r in split["val"]}, {r["image"] for r in split["test"]}
    assert not (val & test) and not ((val | test) & gen)
    assert len(test) == c["test_images"] and len(gen) == c["generator_train_images"]
    for name in ("config.yaml", "samples.png", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "panels").glob("step_*.png"))
    return m


def install_package(tmp_path: Path):
    """`pip install --no-deps .` into a new venv that sees the running venv's packages (pip, setuptools and the
    dependencies) through a .pth file: offline, seconds, no downloads. The source is copied first so the build
    writes nothing into the checkout. Returns (console script, python, env, site-packages, a work folder outside
    the source tree)."""
    import os
    import shutil
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_DIR / name, src / name)
    for name in ("fast_lightning", "experiments"):
        shutil.copytree(PROJECT_DIR / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([str(py), "-c", purelib], check=True, capture_output=True, text=True).stdout.strip()
    shared = subprocess.run([sys.executable, "-c", purelib], check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "shared_venv.pth").write_text(shared + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    done = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    return venv / "bin" / "fast-lightning", py, env, site, work


def smoke_compare_args(data_root, run_root, out, synths: str) -> list[str]:
    """`compare` on the fake 'widget' class at the smoke profile, one seed, a 2-step segmenter."""
    return ["profile=smoke", "class_name=widget", "trainer.enable_progress_bar=false", f"data_root={data_root}",
            f"run_root={run_root}", f"synths={synths}", "seeds=1", f"out={out}",
            "segmentation.max_steps=2", "segmentation.val_every=2"]
