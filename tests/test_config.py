import pytest
from omegaconf import OmegaConf

from fast_lightning.config import ConfigError, apply_overrides, load_config


def test_profiles_resolve_and_override():
    cfg = load_config(["profile=smoke", "diffusion.optim.lr=0.001", "class_name=tire"])
    assert cfg.profile == "smoke"
    assert cfg.diffusion.resolution == 32
    assert cfg.diffusion.optim.lr == pytest.approx(0.001)
    assert cfg.class_name == "tire"


def test_auto_profile_is_cpu_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load_config([]).profile == "cpu"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("diffusion.optim.lrr=1", "diffusion.optim.lrr"),
        ("diffusion.optim.lr=abc", "diffusion.optim.lr"),
        ("seed=1.5", "seed"),
        ("diffusion.farm.enabled=3", "diffusion.farm.enabled"),
        ("--lr=1", "without hyphens"),
        ("profile=huge", "profile"),
        ("diffusion.unet.block_out_channels=5", "diffusion.unet.block_out_channels"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config([override])


def test_config_is_struct_and_null_defaults_accept_values():
    cfg = load_config(["profile=smoke", "synthesis.ckpt=runs/x.ckpt"])
    assert cfg.synthesis.ckpt == "runs/x.ckpt"
    with pytest.raises(Exception):
        cfg.not_a_key = 1
    again = apply_overrides(cfg, ["sampling.steps=20"])
    assert again.sampling.steps == 20
    assert OmegaConf.is_struct(again)
