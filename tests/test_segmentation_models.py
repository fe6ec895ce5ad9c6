"""smp segmenter factory and the Dice+Focal loss."""

from __future__ import annotations

import pytest
import torch

import fast_lightning  # noqa: F401
from fast_lightning.segmentation import (
    DiceFocalLoss,
    build_loss,
    build_segmenter,
    check_resolution,
    required_divisor,
)


@pytest.mark.parametrize("arch", ["Unet", "FPN"])
def test_forward_64px(arch):
    torch.manual_seed(0)
    model = build_segmenter(arch, "resnet18", encoder_weights=None, in_channels=3).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 1, 64, 64)
    assert torch.isfinite(out).all()


def test_single_channel_input():
    model = build_segmenter("Unet", in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_unknown_arch_and_encoder_are_named():
    with pytest.raises(ValueError, match=r"segmentation\.arch.*unet"):
        build_segmenter("NoSuchNet")
    with pytest.raises(ValueError, match=r"segmentation\.encoder.*resnet18"):
        build_segmenter("Unet", encoder="no_such_encoder")


def test_missing_pretrained_weights_fail_fast_and_clearly(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache: weights not available
    offline_before = constants.HF_HUB_OFFLINE
    from fast_lightning.errors import UserError

    with pytest.raises(UserError, match="encoder_weights=null.*segmentation.allow_download=true"):
        build_segmenter("Unet", "resnet18", encoder_weights="imagenet")
    assert constants.HF_HUB_OFFLINE == offline_before  # the forced offline mode is restored afterwards
    # the config keys reach the model: encoder_weights from the local cache only unless allow_download=true
    from fast_lightning.config import load_config
    from fast_lightning.segmentation.lightning_segmenter import SegmentationModule

    cfg = load_config(["profile=smoke", "segmentation.encoder_weights=imagenet"])
    assert cfg.segmentation.allow_download is False
    with pytest.raises(UserError, match="local Hugging Face cache"):
        SegmentationModule(dict(cfg.segmentation), 3, (64, 64))


def test_required_divisor_and_resolution_check():
    assert required_divisor("Unet") == 1
    assert required_divisor("FPN") == 32
    check_resolution(50, "Unet")
    check_resolution(64, "FPN")
    with pytest.raises(ValueError, match=r"data\.seg_scale.*32"):
        check_resolution(100, "FPN")


def test_dice_focal_decreases_toward_target():
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(2, 1, 16, 16, generator=g) > 0.8).float()
    loss = DiceFocalLoss()
    values = [float(loss(a * (2 * target - 1), target)) for a in (-2.0, 0.0, 1.0, 3.0, 6.0)]
    assert all(x > y for x, y in zip(values, values[1:])), values


def test_build_loss_keys():
    loss = build_loss({"dice_weight": 0.5, "focal_weight": 2.0, "focal_gamma": 1.0})
    assert loss.dice_weight == 0.5 and loss.focal_weight == 2.0
    with pytest.raises(ValueError, match="unknown"):
        build_loss({"dice_wieght": 1.0})
    with pytest.raises(ValueError, match="shape"):
        loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
