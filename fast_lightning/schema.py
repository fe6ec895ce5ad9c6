"""Typed config schema: one dataclass per experiments/ group, holding every key's type and default.

Why: defaults used to live in the YAML files *and* in library signatures, and disagreed. Now this module is the
single source of defaults and types; ``load_config`` builds ``OmegaConf.structured(RootConfig)`` and merges the
group YAML files (documented copies of these defaults, kept equal by tests/test_config.py), the profile and the
command-line overrides onto it, so unknown keys and wrong types are rejected by OmegaConf's typed merge.
Pure python + omegaconf (no torch), so any layer may read a default from here. The value rules (minimums,
ranges, allowed values, cross-field rules) live here too, in ``validate``, which ``config.load_config`` /
``apply_overrides`` run once when a config is built and ``config.typed_group`` runs on a single group.
What each key means is documented next to it in experiments/<group>/default.yaml.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from fast_lightning.errors import ConfigError


def _list(*values):
    return field(default_factory=lambda: list(values))


@dataclass
class DataConfig:
    seg_scale: int = 64  # THE segmenter working size (longer side); see data.datasets.working_size
    channels: int = 3
    image_interpolation: str = "bicubic"
    foreground: str = "auto"
    foreground_dir: Optional[str] = None
    generator_fraction: float = 0.3333333333
    val_fraction: float = 0.3333333333
    eval_batch_size: int = 8  # validation/test batches (training batches: diffusion.optim / segmentation.optim)
    num_workers: int = 0


@dataclass
class CropConfig:
    scale: float = 0.35
    defect_share: Optional[float] = None  # null = window from `scale` (paper-era rule); else defect side / window side
    normal_crops: bool = True


@dataclass
class UNetConfig:
    block_out_channels: List[int] = _list(32, 64, 128, 128)
    layers_per_block: int = 1
    attention_levels: List[bool] = _list(False, False, True, True)
    mask_channel: bool = True
    dropout: float = 0.0


@dataclass
class FarmConfig:
    enabled: bool = True
    base_channels: int = 32
    time_dim: int = 128


@dataclass
class AugmentConfig:
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True


@dataclass
class OptimConfig:
    lr: float = 2.0e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: Optional[float] = 1.0  # 0 or null = off
    ema_decay: float = 0.999
    batch_size: int = 16


@dataclass
class DiffusionConfig:
    backbone: str = "pixel_unet"
    pretrained: Optional[str] = None
    latent_encode: str = "sample"
    context_tokens: int = 4
    unfreeze_unet: bool = False
    gradient_checkpointing: bool = False
    resolution: int = 64
    window: str = "crop"
    crop: CropConfig = field(default_factory=CropConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    farm: FarmConfig = field(default_factory=FarmConfig)
    adaptor: bool = False
    schedule: str = "scaled_linear"
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    lambda_eps: float = 2.0
    lambda_farm: float = 5.0
    normal_weight: float = 0.25
    normal_pretrain_steps: int = 0
    mask_loss_weight: float = 1.0
    cond_dropout: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    max_steps: int = 2000
    checkpoint_every: int = 250
    sample_every: int = 500
    num_log_samples: int = 4


@dataclass
class SamplingConfig:
    name: str = "aias"
    steps: int = 10
    variant: str = "exact"
    t_end: int = 1
    renoise: str = "every"
    renoise_band: List[int] = _list(250, 750)
    farm_inject: bool = True  # inject FARM while sampling (needs a model trained with diffusion.farm.enabled)
    farm_min_t: int = 2
    eta: float = 0.0
    guidance_scale: float = 1.0


@dataclass
class MasksConfig:
    sources: List[str] = _list("real", "perlin")
    weights: List[float] = _list(0.7, 0.3)
    folder: Optional[str] = None
    min_area: float = 0.0005
    max_area: float = 0.25
    max_tries: int = 50
    real_scale_range: List[float] = _list(0.5, 1.5)
    real_max_angle: float = 15.0
    real_keep_size: bool = True
    real_augment: bool = True
    perlin_scale_range: List[int] = _list(0, 6)
    perlin_threshold: float = 0.5


@dataclass
class SynthesisConfig:
    n: int = 500
    batch_size: int = 8
    ckpt: Optional[str] = None
    out_resolution: Optional[int] = None
    perlin_type: str = "random"
    masks: MasksConfig = field(default_factory=MasksConfig)
    seg_buffer_size: int = 64
    seg_refresh: Optional[float] = 2.0  # null = a full fresh batch every step; 0.5 = one pair every 2nd step
    seg_refresh_batch: Optional[int] = None  # new pairs synthesized together (queued); null = each step's own
    draem_masks: str = "perlin"
    draem_texture: str = "dataset"
    cutpaste_variant: str = "patch"
    fast_cached_dir: Optional[str] = None
    visible_change: Optional[float] = None  # label only what the model visibly changed; null = the placed mask
    source_detail: str = "none"  # none | add | scaled: the source's detail finer than the model's pixels, in the mask
    contrast_match: str = "none"  # none | type: the painted defect's mean set to a real one of its type (vs its ring)


@dataclass
class LossConfig:
    dice_weight: float = 1.0
    focal_weight: float = 1.0
    focal_gamma: float = 2.0


@dataclass
class SegmentationOptimConfig:
    """The segmenter's AdamW and batch, nested like ``diffusion.optim``."""

    lr: float = 5.0e-4
    weight_decay: float = 1.0e-4
    batch_size: int = 16
    ema_decay: float = 0.0  # 0 = off; > 0: validation, test, checkpoints' inference use the weights' EMA


@dataclass
class SegmentationConfig:
    synth: str = "draem"
    synth_ratio: float = 0.5
    second_ratio: float = 0.25  # synth=a+b: b's share of the batch, on top of a's synth_ratio (see the yaml)
    synth_loss_weight: float = 1.0
    synth_loss_until: float = 1.0  # synth=a+b: share of the run during which b's items count (then weight 0)
    crop: Optional[int] = None
    crop_defect_share: float = 0.5
    arch: str = "Unet"
    encoder: str = "resnet18"
    encoder_weights: Optional[str] = None
    allow_download: bool = False
    loss: LossConfig = field(default_factory=LossConfig)
    optim: SegmentationOptimConfig = field(default_factory=SegmentationOptimConfig)
    max_steps: int = 1500
    val_every: int = 250
    num_log_images: int = 6


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: int = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"  # auto | any Lightning precision (16 and 32 arrive as strings)
    compile: Any = "auto"  # auto | true | false (YAML bools too): torch.compile of denoiser, FARM, segmenter
    channels_last: Any = "auto"  # auto | true | false: memory format of the same modules (auto: on on CUDA only)
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    fast_dev_run: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)  # any other lightning.Trainer argument (config.TRAINER_*)


@dataclass
class WandbConfig:
    enabled: bool = True
    mode: str = "offline"
    project: str = "fast-lightning"
    entity: Optional[str] = None
    save_dir: str = "."
    log_model: bool = False  # best seg / last diffusion checkpoint as a W&B model artifact (a copy: opt-in)
    table_rows: int = 16  # rows of the synthesized-pairs tables (synthesize manifest, diffusion samples)
    dataset_copy: bool = False  # synthesize: upload the pairs into the dataset artifact instead of a reference


@dataclass
class LoggerConfig:
    backend: str = "wandb"  # wandb | csv | tensorboard | none
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class RootConfig:
    seed: int = 0
    class_name: Optional[str] = None
    data_root: str = "data/mvtec_ad"
    run_root: str = "runs"
    profile: str = "auto"
    preset: Optional[str] = None
    run_id: Optional[str] = None
    resume: Optional[str] = None
    trust_checkpoint: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


GROUPS = ("data", "diffusion", "sampling", "synthesis", "segmentation", "trainer", "logger")


# ---- value rules: checked once when a config is built -------------------------------------------------------
# allowed values (the libraries that implement them import these tuples: one source)
SAMPLER_NAMES = ("aias", "ddim", "ddpm", "dpmsolver")
AIAS_VARIANTS = ("exact", "paper")
RENOISE_MODES = ("every", "band", "none")
SOURCE_DETAIL_MODES = ("none", "add", "scaled")  # synthesis.source_detail
CONTRAST_MATCH_MODES = ("none", "type")  # synthesis.contrast_match
LOGGER_BACKENDS = ("wandb", "csv", "tensorboard", "none")

# Counts and sizes: no command starts (and no run directory is made) with a value that would fail later or,
# worse, run and produce nothing (max_steps=0). key -> (minimum, make variable or None); null is allowed
# where the default is null.
MINIMUMS = {
    "diffusion.resolution": (8, None), "diffusion.max_steps": (1, None), "diffusion.checkpoint_every": (0, None),
    "diffusion.sample_every": (0, None), "diffusion.num_log_samples": (0, None),
    "diffusion.optim.batch_size": (1, None), "diffusion.optim.warmup_steps": (0, None),
    "diffusion.num_train_timesteps": (2, None), "diffusion.unet.layers_per_block": (1, None),
    "diffusion.farm.base_channels": (1, None), "diffusion.farm.time_dim": (2, None),
    "sampling.steps": (1, "STEPS"), "sampling.t_end": (-1, None), "sampling.farm_min_t": (0, None),
    "synthesis.n": (1, "N"), "synthesis.batch_size": (1, None), "synthesis.out_resolution": (8, None),
    "synthesis.masks.max_tries": (1, None), "synthesis.seg_buffer_size": (0, None),
    "synthesis.seg_refresh_batch": (1, None),
    "segmentation.max_steps": (1, None), "segmentation.val_every": (1, None),
    "segmentation.optim.batch_size": (1, None), "segmentation.num_log_images": (0, None), "diffusion.normal_pretrain_steps": (0, None),
    "data.seg_scale": (32, None), "data.eval_batch_size": (1, None), "data.num_workers": (0, None),
    "trainer.num_nodes": (1, None), "trainer.log_every_n_steps": (1, None),
}
# numbers: key -> (low, high, low inclusive, high inclusive); None = unbounded on that side
RANGES = {
    "data.generator_fraction": (0.0, 1.0, False, False), "data.val_fraction": (0.0, 1.0, False, False),
    "diffusion.normal_weight": (0.0, 1.0, True, True), "diffusion.crop.scale": (0.0, 1.0, False, True),
    "diffusion.optim.ema_decay": (0.0, 1.0, True, False), "segmentation.synth_ratio": (0.0, 1.0, True, True),
    "segmentation.second_ratio": (0.0, 1.0, True, True), "segmentation.optim.ema_decay": (0.0, 1.0, True, False),
    "diffusion.unet.dropout": (0.0, 1.0, True, False), "diffusion.lambda_eps": (0.0, None, True, False),
    "diffusion.lambda_farm": (0.0, None, True, False), "diffusion.beta_start": (0.0, None, True, False),
    "diffusion.beta_end": (0.0, None, True, False), "sampling.eta": (0.0, None, True, False),
    "diffusion.crop.defect_share": (0.0, 1.0, False, True), "diffusion.cond_dropout": (0.0, 1.0, True, False),
    "diffusion.mask_loss_weight": (0.0, None, True, False), "sampling.guidance_scale": (0.0, None, True, False),
    "segmentation.synth_loss_weight": (0.0, None, True, False), "segmentation.synth_loss_until": (0.0, 1.0, True, True), "synthesis.seg_refresh": (0.0, None, False, False),
    "synthesis.visible_change": (0.0, 1.0, True, False),
}
# keys that were renamed or removed: the old name is refused with what replaces it (no silent aliasing: a saved
# config or a command line with the old key says what to write instead)
RENAMED = {
    "data.resolution": "data.seg_scale (the segmenter's one working-size key: longer side in px, a multiple of 32; "
                       "the aspect ratio is the median of the normal train images; square images give a square size)",
    "sampling.farm": "sampling.farm_inject (FARM at sampling time; diffusion.farm.enabled = the model has FARM)",
    "data.batch_size": "data.eval_batch_size (it only ever set the validation/test batch; training batches are "
                       "diffusion.optim.batch_size and segmentation.optim.batch_size)",
    # optimiser settings nest under <group>.optim in both trainers
    "segmentation.lr": "segmentation.optim.lr",
    "segmentation.weight_decay": "segmentation.optim.weight_decay",
    "segmentation.batch_size": "segmentation.optim.batch_size",
    # synthesizer options live in synthesis.* (segmentation.* keeps the training mix: synth, ratios, loss weight)
    "segmentation.fast_cached_dir": "synthesis.fast_cached_dir",
    "segmentation.real_ratio": "segmentation.second_ratio (synth=a+b no longer splits the synth_ratio share between a and "
                               "b: a keeps segmentation.synth_ratio of the batch as when alone, b adds second_ratio of "
                               "the batch in place of normal items, so synthesis does not dilute the real defects)",
}
CHOICES = {  # key -> (allowed values, make variable or None)
    "sampling.name": (SAMPLER_NAMES, "SAMPLER"), "sampling.variant": (AIAS_VARIANTS, "VARIANT"),
    "sampling.renoise": (RENOISE_MODES, None), "data.channels": ((1, 3), None),
    "logger.backend": (LOGGER_BACKENDS, None), "synthesis.source_detail": (SOURCE_DETAIL_MODES, None),
    "synthesis.contrast_match": (CONTRAST_MATCH_MODES, None),
}


def _name(key: str, var: str | None, value=None) -> str:
    return (f"{var}={value} ({key})" if value is not None else f"{var} ({key})") if var else f"'{key}'"


def _cross_field(cfg) -> list[str]:
    """Rules that relate keys; each returns a problem naming the keys, or nothing when a key is absent."""
    from omegaconf import OmegaConf

    def get(key):
        return OmegaConf.select(cfg, key, default=None)

    out = []
    name, steps, t_end, T = get("sampling.name"), get("sampling.steps"), get("sampling.t_end"), get(
        "diffusion.num_train_timesteps")
    if name == "aias" and steps is not None and t_end is not None and steps < t_end + 2:
        out.append(f"STEPS={steps} (sampling.steps) is too few for aias: it must be >= {t_end + 2} (sampling.t_end="
                   f"{t_end} + 2)")
    if t_end is not None and T is not None and t_end >= T - 1:
        out.append(f"sampling.t_end={t_end} must be < diffusion.num_train_timesteps - 1 = {T - 1}")
    clip = get("diffusion.optim.grad_clip")
    if clip is not None and not (clip >= 0 and math.isfinite(clip)):
        out.append(f"diffusion.optim.grad_clip must be a number >= 0 (0 or null = no clipping), got {clip!r}")
    if get("diffusion.schedule") != "cosine" and get("diffusion.beta_start") is not None:
        b0, b1 = get("diffusion.beta_start"), get("diffusion.beta_end")
        if not 0.0 < b0 < b1 < 1.0:
            out.append(f"diffusion.beta_start / diffusion.beta_end must satisfy 0 < beta_start < beta_end < 1, "
                       f"got {b0}, {b1}")
    blocks, attn = get("diffusion.unet.block_out_channels"), get("diffusion.unet.attention_levels")
    if blocks is not None and attn is not None and len(attn) != len(blocks):
        out.append(f"diffusion.unet.attention_levels has {len(attn)} entries but diffusion.unet.block_out_channels "
                   f"has {len(blocks)}; give one true/false per block")
    if blocks is not None and (len(blocks) == 0 or any(int(c) < 1 for c in blocks)):
        out.append(f"diffusion.unet.block_out_channels must be a non-empty list of integers >= 1, got {list(blocks)}")
    seg_scale = get("data.seg_scale")
    if seg_scale is not None and int(seg_scale) % 32:
        out.append(f"config key 'data.seg_scale' must be a multiple of 32 (e.g. 256), got {seg_scale}")
    band = get("sampling.renoise_band")
    if band is not None and (len(band) != 2 or not band[0] < band[1]):
        out.append(f"sampling.renoise_band must be two numbers [low, high] with low < high, got {list(band)}")
    return out


def validate(cfg, prefix: str = "") -> None:
    """ConfigError naming the key (and make variable) of the first value that breaks a rule above. ``cfg`` is a
    whole config, or one group when ``prefix`` names it (``"sampling"``): then only that group's rules run."""
    from omegaconf import OmegaConf

    root = OmegaConf.create({prefix: cfg}) if prefix else cfg
    mine = (lambda key: key.startswith(prefix + ".")) if prefix else (lambda key: True)
    for key, (low, var) in MINIMUMS.items():
        value = OmegaConf.select(root, key, default=None) if mine(key) else None
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer >= {low}, got {value!r}")
        if value < low:
            raise ConfigError(f"{_name(key, var)} must be >= {low}, got {value}")
    for key, (lo, hi, lo_in, hi_in) in RANGES.items():
        value = OmegaConf.select(root, key, default=None) if mine(key) else None
        if value is None:
            continue
        ok = (lo is None or (value >= lo if lo_in else value > lo)) and (
            hi is None or (value <= hi if hi_in else value < hi))
        if not ok or (isinstance(value, float) and math.isnan(value)):
            interval = f"{'[' if lo_in else '('}{lo}, {'inf' if hi is None else hi}{']' if hi_in else ')'}"
            raise ConfigError(f"config key '{key}' must lie in {interval}, got {value}")
    for key, (allowed, var) in CHOICES.items():
        value = OmegaConf.select(root, key, default=None) if mine(key) else None
        if value is not None and value not in allowed:
            raise ConfigError(f"{_name(key, var, value)}: must be one of {list(allowed)}")
    problems = _cross_field(root)
    if problems:
        raise ConfigError(problems[0])
