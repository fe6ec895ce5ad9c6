"""Typed config schema: one dataclass per experiments/ group, holding every key's type and default.

Why: defaults used to live in the YAML files *and* in library signatures, and disagreed. Now this module is the
single source of defaults and types; ``load_config`` builds ``OmegaConf.structured(RootConfig)`` and merges the
group YAML files (documented copies of these defaults, kept equal by tests/test_config.py), the profile and the
command-line overrides onto it, so unknown keys and wrong types are rejected by OmegaConf's typed merge.
Pure python + omegaconf (no torch), so any layer may read a default from here.
What each key means is documented next to it in experiments/<group>/default.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


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
    batch_size: int = 8
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
    farm: bool = True
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
    seg_refresh: Optional[int] = 2  # null = a full fresh batch every step
    draem_masks: str = "perlin"
    draem_texture: str = "dataset"
    cutpaste_variant: str = "patch"


@dataclass
class LossConfig:
    dice_weight: float = 1.0
    focal_weight: float = 1.0
    focal_gamma: float = 2.0


@dataclass
class SegmentationConfig:
    synth: str = "draem"
    synth_ratio: float = 0.5
    real_ratio: float = 0.5
    synth_loss_weight: float = 1.0
    crop: Optional[int] = None
    crop_defect_share: float = 0.5
    fast_cached_dir: Optional[str] = None
    arch: str = "Unet"
    encoder: str = "resnet18"
    encoder_weights: Optional[str] = None
    allow_download: bool = False
    loss: LossConfig = field(default_factory=LossConfig)
    lr: float = 5.0e-4
    weight_decay: float = 1.0e-4
    max_steps: int = 1500
    val_every: int = 250
    batch_size: int = 16
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


# keys that no longer exist -> what replaces them; a config naming one is a ConfigError that says so (no alias)
REMOVED_KEYS = {
    "data.resolution": "data.seg_scale (the segmenter's one working-size key: longer side in px, a multiple of 32; "
                       "the aspect ratio is the median of the normal train images; square images give a square size)",
}

GROUPS = ("data", "diffusion", "sampling", "synthesis", "segmentation", "trainer", "logger")
