import inspect

import pytest
from omegaconf import OmegaConf

from fast_lightning.config import apply_overrides, load_config
from fast_lightning.errors import ConfigError


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
    with pytest.raises(ConfigError, match=r"'data\.seg_scale' expects int .*cannot be null"):
        load_config(["profile=smoke", "data.seg_scale=null"])


def test_removed_working_size_key_names_its_replacement():
    """data.resolution was a second working-size key; it is gone, and naming it says which key replaced it."""
    with pytest.raises(ConfigError, match=r"'data\.resolution' no longer exists: use data\.seg_scale"):
        load_config(["profile=smoke", "data.resolution=64"])
    with pytest.raises(ConfigError, match=r"'data\.seg_scale' must be a multiple of 32"):
        load_config(["profile=smoke", "data.seg_scale=48"])


def test_saved_config_overrides_are_type_checked():
    saved = OmegaConf.create(OmegaConf.to_container(load_config(["profile=smoke"])))
    with pytest.raises(ConfigError, match=r"'sampling\.steps' expects int"):
        apply_overrides(saved, ["sampling.steps=many"])
    assert apply_overrides(saved, ["sampling.steps=7"]).sampling.steps == 7


def _default(fn, name):
    return inspect.signature(fn).parameters[name].default


def test_library_defaults_are_the_schema_defaults():
    """Objects built without the config (library use, tests) behave like the config's defaults."""
    from fast_lightning.sampling import AIASSampler
    from fast_lightning.schema import DataConfig, MasksConfig, SamplingConfig, SynthesisConfig
    from fast_lightning.synthesis import FastSegSynthesizer, MaskSampler
    from fast_lightning.synthesis.mask_sources import PerlinMaskSource, RealMaskBank

    masks, sampling, synthesis, data = MasksConfig(), SamplingConfig(), SynthesisConfig(), DataConfig()
    pairs = [
        ((MaskSampler.__init__, "min_area"), masks.min_area),
        ((MaskSampler.__init__, "max_area"), masks.max_area),
        ((MaskSampler.__init__, "max_tries"), masks.max_tries),
        ((RealMaskBank.__init__, "scale_range"), tuple(masks.real_scale_range)),
        ((RealMaskBank.__init__, "max_angle"), masks.real_max_angle),
        ((PerlinMaskSource.__init__, "scale_range"), tuple(masks.perlin_scale_range)),
        ((PerlinMaskSource.__init__, "threshold"), masks.perlin_threshold),
        ((AIASSampler.__init__, "steps"), sampling.steps),
        ((AIASSampler.__init__, "variant"), sampling.variant),
        ((AIASSampler.__init__, "t_end"), sampling.t_end),
        ((AIASSampler.__init__, "farm"), sampling.farm_inject),
        ((AIASSampler.__init__, "farm_min_t"), sampling.farm_min_t),
        ((AIASSampler.__init__, "renoise"), sampling.renoise),
        ((AIASSampler.__init__, "renoise_band"), tuple(sampling.renoise_band)),
        ((FastSegSynthesizer.__init__, "buffer_size"), synthesis.seg_buffer_size),
        ((FastSegSynthesizer.__init__, "refresh"), synthesis.seg_refresh),
        ((FastSegSynthesizer.__init__, "refresh_batch"), synthesis.seg_refresh_batch),
        ((FastSegSynthesizer.__init__, "channels"), data.channels),
        ((FastSegSynthesizer.__init__, "foreground"), data.foreground),
    ]
    wrong = [(f"{fn.__qualname__}({name}=...)", _default(fn, name), want) for (fn, name), want in pairs
             if _default(fn, name) != want]
    assert not wrong, f"library defaults that disagree with fast_lightning/schema.py: {wrong}"


def test_every_profile_loads_with_the_one_working_size_key():
    from fast_lightning.config import PROFILES

    for profile in PROFILES:  # a profile still naming data.resolution would be a ConfigError here
        assert load_config([f"profile={profile}"]).data.seg_scale % 32 == 0, profile


@pytest.mark.parametrize("old,new", [("sampling.farm=false", "sampling.farm_inject"),
                                     ("data.batch_size=4", "data.eval_batch_size")])
def test_renamed_keys_are_refused_with_the_new_name(old, new):
    """No silent aliasing: an old key (command line, saved config, or a group handed to a library) names its
    replacement."""
    from omegaconf import OmegaConf

    from fast_lightning.config import typed_group

    with pytest.raises(ConfigError, match=f"no longer exists: use {new}"):
        load_config(["profile=smoke", old])
    cfg = load_config(["profile=smoke"])
    saved = OmegaConf.to_container(cfg)
    group, _, leaf = old.partition("=")[0].partition(".")
    saved[group][leaf] = saved[group].pop(new.partition(".")[2])
    with pytest.raises(ConfigError, match=f"no longer exists: use {new}"):
        apply_overrides(OmegaConf.create(saved), ["seed=1"])
    if group == "sampling":
        with pytest.raises(ConfigError, match=f"no longer exists: use {new}"):
            typed_group("sampling", {"farm": False})


MOVED_KEYS = [("segmentation.lr", "segmentation.optim.lr", 0.001),
              ("segmentation.weight_decay", "segmentation.optim.weight_decay", 0.0),
              ("segmentation.batch_size", "segmentation.optim.batch_size", 4),
              ("segmentation.fast_cached_dir", "synthesis.fast_cached_dir", "runs/synthetic/x")]


@pytest.mark.parametrize("old,new,value", MOVED_KEYS)
def test_moved_keys_are_refused_with_the_new_place(old, new, value):
    """Keys moved into a nested group (optimiser settings under <group>.optim, synthesizer options under
    synthesis.*): the old place, on the command line or in a saved config, names the new one; the new one works."""
    with pytest.raises(ConfigError, match=f"config key '{old}' no longer exists: use {new}"):
        load_config(["profile=smoke", f"{old}={value}"])
    cfg = load_config(["profile=smoke", f"{new}={value}"])
    assert OmegaConf.select(cfg, new) == value
    saved = OmegaConf.create(OmegaConf.to_container(cfg))  # a run's config.yaml written before the move
    OmegaConf.update(saved, old, value, force_add=True)
    with pytest.raises(ConfigError, match=f"no longer exists: use {new}"):
        apply_overrides(saved, ["seed=1"])
