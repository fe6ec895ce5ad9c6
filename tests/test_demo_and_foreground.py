"""Demo dataset (layout, exact masks, determinism, idempotence) and foreground estimation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fast_lightning.data.demo_dataset import (
    COMPLETE_MARKER,
    DEFECT_TYPES,
    DEMO_CLASS,
    PARAMS_FILE,
    DemoDatasetError,
    generate_demo_dataset,
    render_sample,
    to_uint8,
)
from fast_lightning.data.foreground import estimate_foreground

SMALL = dict(size=64, n_train=4, n_test_good=2, defects_per_type=3)  # fast variant for the I/O tests


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    """One full-default generation shared by the read-only tests."""
    root = tmp_path_factory.mktemp("demo")
    generate_demo_dataset(root)
    return root / DEMO_CLASS


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _as_tensor(image_u8_or_float: np.ndarray) -> torch.Tensor:
    a = np.asarray(image_u8_or_float)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)


def test_layout_pairs_and_masks(demo_root: Path):
    assert (demo_root / COMPLETE_MARKER).is_file()
    readme = (demo_root / "README.txt").read_text()
    assert "SYNTHETIC" in readme and "fast-lightning" in readme and '"seed": 0' in readme
    assert len(list((demo_root / "train" / "good").glob("*.png"))) == 60
    assert len(list((demo_root / "test" / "good").glob("*.png"))) == 12
    types = sorted(p.name for p in (demo_root / "test").iterdir() if p.name != "good")
    assert types == sorted(DEFECT_TYPES) and len(types) >= 3
    assert sorted(p.name for p in (demo_root / "ground_truth").iterdir()) == types
    for t in types:
        images = sorted((demo_root / "test" / t).glob("*.png"))
        assert len(images) == 9
        for img_path in images:
            mask_path = demo_root / "ground_truth" / t / f"{img_path.stem}_mask.png"
            assert mask_path.is_file()
            img, mask = Image.open(img_path), Image.open(mask_path)
            assert img.mode == "RGB" and mask.mode == "L"
            assert img.size == mask.size == (128, 128)
            m = np.asarray(mask)
            assert set(np.unique(m).tolist()) <= {0, 255}
            assert (m == 255).sum() >= 6, f"empty/tiny mask {mask_path}"


def test_deterministic_bytes(tmp_path: Path):
    a = generate_demo_dataset(tmp_path / "a", seed=3, **SMALL)
    b = generate_demo_dataset(tmp_path / "b", seed=3, **SMALL)
    c = generate_demo_dataset(tmp_path / "c", seed=4, **SMALL)
    assert _tree_hash(a) == _tree_hash(b)
    assert _tree_hash(a) != _tree_hash(c)


def test_written_images_match_renderer(demo_root: Path):
    on_disk = np.asarray(Image.open(demo_root / "test" / "hole" / "002.png"))
    sample = render_sample(0, 128, "hole", 2)
    assert np.array_equal(on_disk, to_uint8(sample.image))
    mask = np.asarray(Image.open(demo_root / "ground_truth" / "hole" / "002_mask.png")) > 0
    assert np.array_equal(mask, sample.mask)


def test_idempotent_and_mismatch(tmp_path: Path):
    folder = generate_demo_dataset(tmp_path, **SMALL)
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert generate_demo_dataset(tmp_path, **SMALL) == folder
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == stamps

    with pytest.raises(DemoDatasetError) as err:
        generate_demo_dataset(tmp_path, seed=1, **SMALL)
    assert str(folder) in str(err.value) and "overwrite=True" in str(err.value)

    generate_demo_dataset(tmp_path, seed=1, overwrite=True, **SMALL)
    assert json.loads((folder / PARAMS_FILE).read_text())["seed"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_overwrite_refuses_foreign_folder(tmp_path: Path):
    foreign = tmp_path / DEMO_CLASS
    (foreign / "train" / "good").mkdir(parents=True)
    (foreign / "train" / "good" / "real.png").write_bytes(b"not ours")
    with pytest.raises(DemoDatasetError, match="overwrite=True"):
        generate_demo_dataset(tmp_path, **SMALL)
    with pytest.raises(DemoDatasetError, match="Refusing"):
        generate_demo_dataset(tmp_path, overwrite=True, **SMALL)
    assert (foreign / "train" / "good" / "real.png").read_bytes() == b"not ours"


@pytest.mark.parametrize("defect_type", DEFECT_TYPES)
def test_mask_covers_exactly_the_altered_pixels(defect_type: str):
    for index in range(12):
        s = render_sample(7, 128, defect_type, index)
        diff = np.abs(to_uint8(s.image).astype(int) - to_uint8(s.clean).astype(int)).max(-1)
        changed = diff > 2  # > 2/255
        assert not (changed & ~s.mask).any(), "pixels altered outside the mask"
        assert s.mask.any()
        # The mask is not padded with untouched pixels: most of it is visibly changed.
        assert changed[s.mask].mean() > 0.6, (defect_type, index, changed[s.mask].mean())
        # ...and the defect is on the part.
        assert not (s.mask & ~s.geometry.disk_mask()).any()


def test_foreground_covers_the_part():
    for stream in ("train", "test_good"):
        for index in range(5):
            s = render_sample(0, 128, stream, index)
            fg = estimate_foreground(_as_tensor(to_uint8(s.image)))
            assert fg.shape == (1, 128, 128) and fg.dtype == torch.float32
            assert set(torch.unique(fg).tolist()) <= {0.0, 1.0}
            pred, disk = fg[0].numpy() > 0.5, s.geometry.disk_mask()
            iou = (pred & disk).sum() / (pred | disk).sum()
            assert iou > 0.9, (stream, index, iou)


def test_defect_masks_inside_foreground(demo_root: Path):
    for t in DEFECT_TYPES:
        for img_path in sorted((demo_root / "test" / t).glob("*.png")):
            img = np.asarray(Image.open(img_path))
            mask = np.asarray(Image.open(demo_root / "ground_truth" / t / f"{img_path.stem}_mask.png")) > 0
            fg = estimate_foreground(_as_tensor(img))[0].numpy() > 0.5
            assert fg.mean() < 0.9, "foreground should not be the whole image here"
            assert (fg[mask]).mean() > 0.99, (t, img_path.name)


def test_foreground_degenerate_cases_give_all_ones():
    rng = np.random.default_rng(0)
    texture = np.clip(0.5 + 0.15 * rng.standard_normal((96, 96, 3)), 0, 1)  # no background at all
    flat = np.full((64, 64, 3), 0.3)
    for img in (texture, flat):
        fg = estimate_foreground(_as_tensor(img))
        assert torch.equal(fg, torch.ones_like(fg))
    # A speck far below min_fraction is not an object either.
    speck = np.full((100, 100, 3), 0.1)
    speck[50:52, 50:52] = 0.9
    assert estimate_foreground(_as_tensor(speck)).min() == 1.0


def test_foreground_options_and_batch():
    s = render_sample(1, 96, "train", 0)
    x = _as_tensor(s.image)
    gray = x.mean(0, keepdim=True)
    assert estimate_foreground(gray).shape == (1, 96, 96)
    fixed = estimate_foreground(x, border=3, threshold=0.15)
    disk = torch.from_numpy(s.geometry.disk_mask())
    assert (fixed[0].bool() & disk).sum() / (fixed[0].bool() | disk).sum() > 0.9
    batch = estimate_foreground(torch.stack([x, x]))
    assert batch.shape == (2, 1, 96, 96) and torch.equal(batch[0], batch[1])


# ---------------------------------------------------------------------------------------- fallback warning
def _seg_datamodule(root, *extra):
    from fast_lightning.config import load_config
    from fast_lightning.data.datamodule import AnomalyDataModule

    cfg = load_config(["profile=smoke", f"data_root={root}", "class_name=widget", *extra])
    return AnomalyDataModule(cfg, stage="segmentation")


def test_foreground_fallback_warned_once_per_class_with_the_share(tmp_path, monkeypatch, caplog):
    import logging

    from conftest import make_fake_mvtec
    from fast_lightning.data import foreground

    monkeypatch.setattr(foreground, "_WARNED_CLASSES", set())
    cdir = make_fake_mvtec(tmp_path)  # 6 normal train images: a part on a plain dark background
    rng = np.random.default_rng(0)
    for name in ("001.png", "004.png"):  # two of them: texture everywhere, no plain border
        Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(cdir / "train" / "good" / name)
    dm = _seg_datamodule(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fast_lightning.data.foreground"):
        ds = dm.normal_dataset()
        dm.normal_dataset()
        _seg_datamodule(tmp_path).normal_dataset()  # a second DataModule for the same class: still once
    warnings = [r.getMessage() for r in caplog.records if "foreground of class 'widget'" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "2/6 normal train images (33%)" in warnings[0] and "data.foreground_dir" in warnings[0]
    fallbacks = [i for i in range(6) if ds.load(i)[1].min() == 1]
    assert fallbacks == [1, 4]


def test_no_fallback_warning_on_plain_backgrounds_or_when_off(fake_mvtec, monkeypatch, caplog):
    import logging

    from fast_lightning.data import foreground

    monkeypatch.setattr(foreground, "_WARNED_CLASSES", set())
    with caplog.at_level(logging.WARNING, logger="fast_lightning.data.foreground"):
        _seg_datamodule(fake_mvtec).normal_dataset()
    assert not [r for r in caplog.records if "foreground of class" in r.getMessage()]


# ---------------------------------------------------------------------------------------- data.foreground_dir
def test_foreground_masks_from_a_folder(fake_mvtec, tmp_path):
    folder = tmp_path / "fg"
    folder.mkdir()
    # masks at twice the image size (80x96): a left-half rectangle plus a 1-px vertical line on the right
    for i in range(6):
        m = np.zeros((80, 96), np.uint8)
        m[10:70, 4:40] = 255
        m[:, 80] = 255
        name = f"{i:03d}.png" if i % 2 == 0 else f"{i:03d}_mask.png"  # both naming styles
        Image.fromarray(m).save(folder / name)
    # a 32-px working scale (40x48 images -> 32x32; the smoke profile's is 64 px): the geometry below is in 32-px units
    dm = _seg_datamodule(fake_mvtec, f"data.foreground_dir={folder}", "data.seg_scale=32")
    ds = dm.normal_dataset()
    for i in range(6):
        img, fg = ds.load(i)
        assert fg.shape == (1, 32, 32) and set(fg.unique().tolist()) <= {0.0, 1.0}
        assert fg[0, 16, 5] == 1 and fg[0, 16, 20] == 0  # inside / outside the rectangle
        assert fg[0, :, 26:29].amax(dim=1).sum() >= 30  # the thin line survives the shrink (max-pooling)
        assert fg.mean() < 0.6  # not the estimate (the disk) and not the whole image
        disk = estimate_foreground(img)
        assert not torch.equal(fg, disk)


def test_foreground_dir_errors_name_folder_and_stem(fake_mvtec, tmp_path):
    from fast_lightning.errors import DataError

    folder = tmp_path / "fg"
    folder.mkdir()
    Image.fromarray(np.full((40, 48), 255, np.uint8)).save(folder / "000.png")
    with pytest.raises(DataError, match=r"'001'.*data\.foreground_dir=.*fg.*001\.png or 001_mask\.png"):
        _seg_datamodule(fake_mvtec, f"data.foreground_dir={folder}").normal_dataset()
    with pytest.raises(DataError, match=r"data\.foreground_dir=.*not a folder"):
        _seg_datamodule(fake_mvtec, f"data.foreground_dir={tmp_path / 'nope'}").normal_dataset()
    with pytest.raises(ValueError, match=r"data\.foreground=off.*data\.foreground_dir"):
        _seg_datamodule(fake_mvtec, "data.foreground='off'", f"data.foreground_dir={folder}").normal_dataset()


def test_resize_foreground_nearest_up_maxpool_down():
    from fast_lightning.data.foreground import resize_foreground

    m = torch.zeros(1, 4, 4)
    m[0, 1, 2] = 1
    up = resize_foreground(m, (8, 8))
    assert up.sum() == 4 and up[0, 2:4, 4:6].sum() == 4  # nearest: one pixel -> a 2x2 block
    big = torch.zeros(1, 64, 64)
    big[0, 40, 13] = 1  # a single pixel survives an 8x shrink
    down = resize_foreground(big, (8, 8))
    assert down.sum() == 1 and down[0, 5, 1] == 1
    mixed = resize_foreground(torch.ones(1, 3, 20), (6, 5))
    assert mixed.shape == (1, 6, 5) and mixed.min() == 1
