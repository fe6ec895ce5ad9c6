import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fast_lightning.config import load_config
from fast_lightning.data import make_split, read_class
from fast_lightning.errors import DataError
from fast_lightning.data.check import check_class
from fast_lightning.data.datamodule import AnomalyDataModule
from fast_lightning.data.datasets import GeneratorTrainDataset, StepSampler
from fast_lightning.data.io import load_image, load_mask
from fast_lightning.data.windows import mask_bbox, place_window, window_side
from conftest import make_fake_mvtec, run_cli, write_png


def test_mvtec_index_and_split(fake_mvtec):
    index = read_class(fake_mvtec, "widget")
    assert index.format == "mvtec"
    assert index.types == ["crack", "dent"]
    assert len(index.train_good) == 6 and len(index.defects) == 6
    split = make_split(index)
    # first ceil(3/3) = 1 image of each type goes to the generator, the other two to real test
    assert [Path(r.image).name for r in split.generator_train] == ["000.png", "000.png"]
    gen = {r.image for r in split.generator_train}
    assert not gen & {r.image for r in split.real_test}
    assert not {r.image for r in split.val} & {r.image for r in split.test}
    assert {r.image for r in split.val} | {r.image for r in split.test} == {r.image for r in split.real_test}
    assert split.type_id("good") == 0 and split.type_id("dent") == 2


def test_split_json_roundtrip(fake_mvtec, tmp_path):
    split = make_split(read_class(fake_mvtec, "widget"))
    path = split.save(tmp_path)
    data = json.loads(path.read_text())
    assert data["counts"]["generator_train"] == {"crack": 1, "dent": 1}
    assert len(data["test"]) + len(data["val"]) == 2 * 2 + 3


def test_mvtec3d_and_btad_layouts(tmp_path):
    # MVTec 3D-AD RGB: rgb/ + gt/ inside each type folder
    c3d = tmp_path / "m3d" / "cable_gland"
    img = np.zeros((20, 30, 3), np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:8, 5:9] = 255
    for i in range(2):
        write_png(c3d / "train" / "good" / "rgb" / f"{i:03d}.png", img)
        write_png(c3d / "test" / "good" / "rgb" / f"{i:03d}.png", img)
        write_png(c3d / "test" / "bent" / "rgb" / f"{i:03d}.png", img)
        write_png(c3d / "test" / "bent" / "gt" / f"{i:03d}.png", mask)
    idx = read_class(tmp_path / "m3d", "cable_gland")
    assert idx.format == "mvtec3d" and idx.types == ["bent"] and all(r.mask for r in idx.defects)
    # BTAD: ok / ko
    bt = tmp_path / "btad" / "01"
    for i in range(2):
        write_png(bt / "train" / "ok" / f"{i:04d}.bmp", img)
        write_png(bt / "test" / "ok" / f"{i:04d}.bmp", img)
        write_png(bt / "test" / "ko" / f"{i:04d}.bmp", img)
        write_png(bt / "ground_truth" / "ko" / f"{i:04d}.png", mask)
    idx = read_class(tmp_path / "btad", "01")
    assert idx.format == "btad" and idx.types == ["ko"] and len(idx.defects) == 2


def test_missing_class_lists_found_classes(fake_mvtec):
    with pytest.raises(DataError, match="widget"):
        read_class(fake_mvtec, "screw")


@pytest.mark.parametrize("breakage, fragment", [
    ("mask_missing", "without a mask"),
    ("orphan_mask", "mask without an image"),
    ("size_mismatch", "differs from its image"),
    ("corrupt", "corrupt"),
    ("empty_train", "no normal training images"),
])
def test_check_data_names_the_file(fake_mvtec, breakage, fragment):
    c = fake_mvtec / "widget"
    if breakage == "mask_missing":
        (c / "ground_truth" / "crack" / "001_mask.png").unlink()
        culprit = "001.png"
    elif breakage == "orphan_mask":
        write_png(c / "ground_truth" / "crack" / "077_mask.png", np.zeros((40, 48), np.uint8))
        culprit = "077_mask.png"
    elif breakage == "size_mismatch":
        write_png(c / "ground_truth" / "dent" / "002_mask.png", np.zeros((10, 10), np.uint8))
        culprit = "002_mask.png"
    elif breakage == "corrupt":
        (c / "test" / "good" / "001.png").write_bytes(b"not a png")
        culprit = "001.png"
    else:
        shutil.rmtree(c / "train" / "good")
        (c / "train" / "good").mkdir()
        culprit = "train/good"
    report = check_class(fake_mvtec, "widget", progress=False)
    assert not report.ok
    assert any(fragment in e and culprit in e for e in report.errors), report.errors


def test_check_data_cli_exit_codes(fake_mvtec):
    ok = run_cli("check-data", f"data_root={fake_mvtec}", "class_name=widget")
    assert "generator_train" in ok.stdout and "crack" in ok.stdout
    bad = run_cli("check-data", f"data_root={fake_mvtec}", "class_name=nope", expect=1)
    assert "widget" in bad.stderr


def test_non_binary_mask_warns_and_binarises(fake_mvtec):
    path = fake_mvtec / "widget" / "ground_truth" / "crack" / "000_mask.png"
    arr = np.zeros((40, 48), np.uint8)
    arr[10:20, 10:20] = 200
    arr[10:12, 10:12] = 60
    write_png(path, arr)
    report = check_class(fake_mvtec, "widget", progress=False)
    assert report.ok and any("non-binary" in w for w in report.warnings)
    m = load_mask(path)
    assert set(m.unique().tolist()) == {0.0, 1.0} and m.sum() == 96


def test_image_io_grayscale_and_resize(tmp_path):
    write_png(tmp_path / "g.png", (np.arange(30 * 50) % 255).reshape(30, 50).astype(np.uint8))
    img = load_image(tmp_path / "g.png", 32, channels=3)
    assert img.shape == (3, 32, 32) and 0 <= img.min() and img.max() <= 1
    assert torch.equal(img[0], img[1])
    assert load_image(tmp_path / "g.png", 16, channels=1).shape == (1, 16, 16)
    mask = np.zeros((30, 50), np.uint8)
    mask[:, 25:] = 255
    write_png(tmp_path / "m.png", mask)
    m = load_mask(tmp_path / "m.png", 32)
    assert m.shape == (1, 32, 32) and set(m.unique().tolist()) == {0.0, 1.0}


def test_windows_contain_the_defect():
    mask = torch.zeros(1, 100, 160)
    mask[:, 70:80, 140:150] = 1
    bbox = mask_bbox(mask)
    assert bbox == (70, 140, 80, 150)
    side = window_side(100, 160, 0.3, bbox)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        y, x = place_window(100, 160, side, bbox, g)
        assert 0 <= y <= 100 - side and 0 <= x <= 160 - side
        assert y <= 70 and y + side >= 80 and x <= 140 and x + side >= 150


@pytest.mark.parametrize("window", ["crop", "full"])
def test_generator_train_items(fake_mvtec, window):
    split = make_split(read_class(fake_mvtec, "widget"))
    ds = GeneratorTrainDataset(split.generator_train, split.normal_train, {"crack": 1, "dent": 2},
                               resolution=32, window=window, normal_weight=0.3, seed=3)
    items = [ds[i] for i in range(40)]
    conds = {int(x["cond"]) for x in items}
    assert conds == {0, 1, 2}
    for x in items:
        assert x["image"].shape == (3, 32, 32) and x["mask"].shape == (1, 32, 32)
        assert (x["mask"].sum() > 0) == (int(x["cond"]) > 0)
    again = ds[7]
    assert torch.equal(again["image"], items[7]["image"])  # item i depends only on (seed, i)


def test_step_sampler_resumes_the_same_stream():
    full = list(StepSampler(0, batch_size=4, max_steps=10))
    assert full == list(range(40))
    assert list(StepSampler(6, batch_size=4, max_steps=10)) == full[24:]
    # two ranks split each global step's block of B*W indices; together they cover it exactly
    r0, r1 = (list(StepSampler(1, 4, 3, num_replicas=2, rank=r)) for r in (0, 1))
    assert r0 == [8, 9, 10, 11, 16, 17, 18, 19] and r1 == [12, 13, 14, 15, 20, 21, 22, 23]


def test_datamodule_diffusion_and_segmentation(fake_mvtec, tmp_path):
    cfg = load_config(["profile=smoke", f"data_root={fake_mvtec}", "class_name=widget"])
    dm = AnomalyDataModule(cfg, stage="diffusion", run_dir=tmp_path)
    dm.setup()
    assert (tmp_path / "split.json").is_file()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (cfg.diffusion.optim.batch_size, 3, 32, 32)
    seg = AnomalyDataModule(cfg, stage="segmentation")
    val = next(iter(seg.val_dataloader()))
    # smoke: data.seg_scale=64 on the 40x48 fake class -> a 64x64 working size (sides rounded to 32)
    assert seg.working_size == (64, 64)
    assert val["image"].shape[1:] == (3, 64, 64) and val["mask"].shape[1] == 1
    test_paths = {r.image for r in seg.split.test}
    gen_paths = {r.image for r in seg.split.generator_train}
    assert not test_paths & gen_paths
    normal = next(iter(seg.train_dataloader()))
    assert normal["foreground"].shape == (cfg.segmentation.optim.batch_size, 1, 64, 64)  # cropped after synthesis

    def fake_synth(images, foreground, generator):
        masks = torch.zeros_like(foreground)
        masks[..., 4:8, 4:8] = 1
        return images * (1 - masks), masks

    fake_synth.native_input = False  # the SegSynthesizer protocol: works on the working-size batch
    fake_synth.batch_items = lambda batch, synth_ratio: int(round(batch * synth_ratio))  # items it replaces
    seg.synthesizer = fake_synth
    out = seg.synthesize_batch(normal)
    n = int(round(cfg.segmentation.optim.batch_size * cfg.segmentation.synth_ratio))
    assert out["mask"][:n].sum() > 0 and out["mask"][n:].sum() == 0


def test_real_tire_split(tire):
    root, name = tire
    split = make_split(read_class(root, name))
    counts = split.to_json()["counts"]
    assert counts["generator_train"] == {"combined": 2, "contamination": 10, "cut": 9, "hole": 9}
    assert sum(counts["val"].values()) + sum(counts["test"].values()) == 87 - 30 + 25
