"""Defect scale at the working resolution: kept share, median areas, the >10% vanished warning."""

from __future__ import annotations

import numpy as np
import pytest

import fast_lightning  # noqa: F401  (torchvision shim)
from fast_lightning.data.check import check_class
from fast_lightning.data.datasets import LabelledDataset
from fast_lightning.data.defect_scale import VANISHED_WARN_SHARE, defect_scale
from fast_lightning.data.records import read_class
from fast_lightning.data.split import make_split

from conftest import make_fake_mvtec, write_png


def _set_crack_masks(root, value: int) -> None:
    """Every `crack` mask of widget (40x48) becomes ONE pixel at (0, 0) (value 255) or empty (value 0)."""
    for mask in sorted((root / "widget" / "ground_truth" / "crack").glob("*_mask.png")):
        arr = np.zeros((40, 48), np.uint8)
        arr[0, 0] = value
        write_png(mask, arr)


@pytest.fixture
def tiny_scratches(tmp_path):
    """`crack` masks are single pixels (which nearest resizing to 8 px never sampled); `dent` masks 6x8 blocks."""
    make_fake_mvtec(tmp_path, n_defect=6)
    _set_crack_masks(tmp_path, 255)
    return tmp_path


def test_defect_scale_keeps_one_pixel_defects_per_type(tiny_scratches):
    split = make_split(read_class(tiny_scratches, "widget"))
    scale = defect_scale(split.real_test, 8)
    assert list(scale.types) == ["crack", "dent"]  # defect-free images are not counted
    crack, dent = scale.types["crack"], scale.types["dent"]
    assert crack.masks == dent.masks == 4  # 6 per type, the first 2 go to generator_train
    # the one mask rule keeps a 1-px defect as one working pixel (nearest lost all four)
    assert crack.kept == 4 and crack.median_area_px == 1.0 and crack.median_native_area_px == 1.0
    assert dent.kept == 4 and dent.kept_share == 1.0 and dent.median_native_area_px == 48.0
    assert crack.empty_native == dent.empty_native == 0
    assert 1.0 <= dent.median_area_px <= 4.0  # a 6x8 block at a 5x6 sampling step
    assert scale.vanished_share == 0.0 and scale.warning() is None
    ds = LabelledDataset([r for r in split.real_test if r.is_anomalous], resolution=8)
    assert sum(int(ds[i]["mask"].sum() > 0) for i in range(len(ds))) == scale.kept


def test_defect_scale_warns_when_more_than_a_tenth_vanish(tiny_scratches):
    _set_crack_masks(tiny_scratches, 0)  # empty mask files: the only masks the resize rule cannot keep
    split = make_split(read_class(tiny_scratches, "widget"))
    scale = defect_scale(split.real_test, 8)
    crack = scale.types["crack"]
    assert crack.kept == 0 and crack.median_area_px == 0.0 and crack.empty_native == 4
    assert scale.vanished_share == pytest.approx(0.5) and scale.vanished_share > VANISHED_WARN_SHARE
    msg = scale.warning()
    assert "4 of 8" in msg and "working size 8x8" in msg and "crack 4/4" in msg
    # the same resize rule as evaluation: LabelledDataset's masks are empty exactly for the vanished ones
    ds = LabelledDataset([r for r in split.real_test if r.is_anomalous], resolution=8)
    assert sum(int(ds[i]["mask"].sum() > 0) for i in range(len(ds))) == scale.kept
    j = scale.to_json()
    assert j["masks"] == 8 and j["kept"] == 4 and j["types"]["crack"]["kept"] == 0


def test_defect_scale_at_native_resolution_keeps_everything(tiny_scratches):
    split = make_split(read_class(tiny_scratches, "widget"))
    scale = defect_scale(split.real_test, 48)  # 40x48 -> 48x48 upsampling keeps every mask
    assert scale.kept == scale.masks == 8 and scale.warning() is None


def test_check_data_reports_defect_scale(tiny_scratches):
    report = check_class(tiny_scratches, "widget", progress=False, seg_scale=32)
    assert report.ok
    text = "\n".join(report.lines)
    assert "defect scale at the working size 32x32" in text and "crack" in text
    assert not any("empty at the working size 32x32" in w for w in report.warnings)  # 1-px cracks are kept
    _set_crack_masks(tiny_scratches, 0)
    vanished = check_class(tiny_scratches, "widget", progress=False, seg_scale=32)
    assert any("empty at the working size 32x32" in w for w in vanished.warnings)
    quiet = check_class(tiny_scratches, "widget", progress=False)  # no seg_scale: no table, no warning
    assert not any("defect scale" in line for line in quiet.lines)
    assert not any("data.seg_scale" in w for w in quiet.warnings)
