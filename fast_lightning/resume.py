"""THE config-vs-checkpoint RESUME rule: which settings a resumed run must share with its checkpoint, checked
against the config and the data split BEFORE a command writes anything into the run.

Sits above data/ and diffusion/ (it reads the split and a latent backbone's fingerprint); the low-level
checkpoint reading it uses lives in ``fast_lightning.runs``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fast_lightning.runs import (
    CheckpointError,
    read_checkpoint,
    resolve_checkpoint,
    run_dir_of_checkpoint,
    saved_run_config,
)

# settings a resumed run must share with its checkpoint (the model's shape and what it was trained on)
RESUME_KEYS = {
    "diffusion": ("data.channels", "diffusion.resolution", "diffusion.window", "diffusion.backbone", "diffusion.unet",
                  "diffusion.farm", "diffusion.adaptor", "diffusion.num_train_timesteps"),
    "segmentation": ("data.channels", "data.seg_scale", "segmentation.arch", "segmentation.encoder"),
}


def check_resume_compatible(ckpt: dict, cfg: DictConfig, kind: str, type_names: list[str], path) -> None:
    """The one config-vs-checkpoint check of RESUME for both kinds: kind, class, anomaly types, architecture
    and working resolution. Raises CheckpointError listing every difference."""
    meta = ckpt.get("fast_lightning") or {}
    problems = []
    if meta.get("kind") != kind:
        problems.append(f"it is a {meta.get('kind')!r} checkpoint, not {kind!r}")
    if meta.get("class_name") != cfg.class_name:
        problems.append(f"class {meta.get('class_name')!r} != CLASS={cfg.class_name!r}")
    if meta.get("type_names") is not None and list(meta["type_names"]) != list(type_names):
        problems.append(f"anomaly types {meta.get('type_names')} != data's {list(type_names)}")
    saved = saved_run_config(ckpt)
    if kind in RESUME_KEYS and meta.get("kind") == kind:
        for key in RESUME_KEYS[kind]:
            a, b = OmegaConf.select(saved, key), OmegaConf.select(cfg, key)
            a = OmegaConf.to_container(a) if OmegaConf.is_config(a) else a
            b = OmegaConf.to_container(b) if OmegaConf.is_config(b) else b
            if a != b:
                problems.append(f"{key}: checkpoint has {a}, now {b}")
    if kind == "diffusion" and OmegaConf.select(saved, "diffusion.backbone") == "latent":
        problems += _latent_resume_problems(meta, saved, cfg)
    if problems:
        raise CheckpointError(f"cannot resume from {path}: " + "; ".join(problems) +
                              ". Use the run's own settings (its config.yaml) or start a new run without RESUME. "
                              "Nothing was written.")


def _latent_resume_problems(meta: dict, saved: DictConfig, cfg: DictConfig) -> list[str]:
    """A latent-backbone run resumes only with the same trained parts and the same pretrained folder."""
    problems = [f"{key}: checkpoint has {OmegaConf.select(saved, key)}, now {OmegaConf.select(cfg, key)}"
                for key in ("diffusion.context_tokens", "diffusion.unfreeze_unet")
                if OmegaConf.select(saved, key) != OmegaConf.select(cfg, key)]
    if meta.get("pretrained_fingerprint") and cfg.diffusion.get("backbone") == "latent":
        from fast_lightning.diffusion.latent import pretrained_fingerprint

        fp = pretrained_fingerprint(cfg.diffusion.pretrained)
        if fp != meta["pretrained_fingerprint"]:
            problems.append(f"diffusion.pretrained={cfg.diffusion.pretrained} (fingerprint {fp}) is not the folder "
                            f"it was trained with ({meta.get('pretrained')}, fingerprint {meta['pretrained_fingerprint']})")
    return problems


def accept_resume(cfg: DictConfig, kind: str) -> tuple[Path, Path]:
    """(checkpoint, run dir) for RESUME=..., checked against cfg and the data BEFORE anything is written, so a
    refused RESUME leaves the run it names untouched."""
    from fast_lightning.data.datamodule import load_split

    ckpt_path = resolve_checkpoint(cfg.resume)
    ckpt = read_checkpoint(ckpt_path, trust=bool(cfg.get("trust_checkpoint")))
    _, split = load_split(cfg)
    check_resume_compatible(ckpt, cfg, kind, split.types, ckpt_path)
    return ckpt_path, run_dir_of_checkpoint(ckpt_path)
