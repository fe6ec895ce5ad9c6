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


def test_yaml_group_files_document_exactly_the_schema_defaults():
    """experiments/*.yaml are commented copies of fast_lightning/schema.py: they may not disagree or miss a key."""
    from fast_lightning.config import EXPERIMENTS_DIR
    from fast_lightning.schema import RootConfig

    schema = OmegaConf.to_container(OmegaConf.structured(RootConfig))
    root = OmegaConf.to_container(OmegaConf.load(EXPERIMENTS_DIR / "config.yaml"))
    for group, choice in root.pop("defaults").items():
        assert OmegaConf.to_container(OmegaConf.load(EXPERIMENTS_DIR / group / f"{choice}.yaml")) == schema[group], group
        root[group] = schema[group]
    assert root == schema


def test_null_only_where_the_schema_allows_it():
    assert load_config(["profile=smoke", "synthesis.seg_refresh=null"]).synthesis.seg_refresh is None
    with pytest.raises(ConfigError, match=r"'data\.resolution' expects int .*cannot be null"):
        load_config(["profile=smoke", "data.resolution=null"])


def test_saved_config_overrides_are_type_checked():
    saved = OmegaConf.create(OmegaConf.to_container(load_config(["profile=smoke"])))
    with pytest.raises(ConfigError, match=r"'sampling\.steps' expects int"):
        apply_overrides(saved, ["sampling.steps=many"])
    assert apply_overrides(saved, ["sampling.steps=7"]).sampling.steps == 7
