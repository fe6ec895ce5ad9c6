"""THE way synthesis gets its diffusion model: which checkpoint (``synthesis.ckpt`` or the class's ``latest``
run), whether it fits the current config (class, channels, resolution, anomaly types) and has trained at all,
and loading it (``load_synthesis_model``, used by every synthesizer, `make synthesize`, sheet, bench-sampling;
the study steps apply the same check to the metadata alone)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from fast_lightning.runs import CheckpointError, last_checkpoint, resolve_checkpoint, resolve_run_path
from fast_lightning.synthesis.base_synthesizer import SynthesisError

__all__ = ["resolve_diffusion_checkpoint", "check_checkpoint_compatible", "load_synthesis_model"]


def resolve_diffusion_checkpoint(cfg) -> Path:
    """``synthesis.ckpt`` (file, run dir or ``latest`` link) or runs/diffusion/<class>/latest."""
    given = cfg.synthesis.ckpt
    path = Path(str(given)) if given else Path(str(cfg.run_root)) / "diffusion" / str(cfg.class_name) / "latest"
    try:
        return resolve_checkpoint(path, periodic=False)  # the one run-dir -> last.ckpt rule (runs.py)
    except CheckpointError:
        real = resolve_run_path(path)
        target = last_checkpoint(real) if real.is_dir() else real
    if given:
        raise SynthesisError(f"diffusion checkpoint not found: {given} (looked for {target}); pass CKPT=<.ckpt "
                             f"file or diffusion run dir>")
    raise SynthesisError(f"no diffusion checkpoint for class {cfg.class_name!r}: {path} does not exist. Run "
                         f"`make train-diffusion CLASS={cfg.class_name}` first (same DATA and PROFILE), or pass "
                         f"CKPT=<checkpoint or run dir>")


def check_checkpoint_compatible(meta: Mapping, cfg, type_names: Sequence[str] | None = None) -> None:
    """Class, channels, model resolution, anomaly types and guidance (a guided sampler needs a model trained with
    type dropout) of a diffusion checkpoint vs the current config, and THE untrained rule: a checkpoint that has not trained a single step is never used for synthesis."""
    where = meta.get("path", "the checkpoint")
    if int(meta.get("global_step") or 0) < 1:
        raise SynthesisError(f"diffusion checkpoint {where} has not trained a single step (global_step 0): train one "
                             f"with `make train-diffusion CLASS={cfg.class_name}` or pass CKPT=<a trained run>")
    problems = []
    if cfg.class_name is not None and meta.get("class_name") != cfg.class_name:
        problems.append(f"it was trained for class {meta.get('class_name')!r} but CLASS={cfg.class_name!r}")
    if meta.get("channels") is not None and int(meta["channels"]) != int(cfg.data.channels):
        problems.append(f"it has {meta['channels']} image channels but data.channels={cfg.data.channels}")
    if meta.get("resolution") is not None and int(meta["resolution"]) != int(cfg.diffusion.resolution):
        problems.append(f"its resolution is {meta['resolution']} px but diffusion.resolution="
                        f"{cfg.diffusion.resolution} (use the PROFILE it was trained with, or "
                        f"diffusion.resolution={meta['resolution']})")
    if type_names is not None and list(meta.get("type_names", [])) != list(type_names):
        problems.append(f"its anomaly types {list(meta.get('type_names', []))} differ from the data's "
                        f"{list(type_names)}")
    guidance = float((cfg.get("sampling") or {}).get("guidance_scale", 1.0))
    trained = dict((meta.get("config") or {}).get("diffusion") or {})
    if guidance != 1.0 and not float(trained.get("cond_dropout") or 0.0) > 0.0:
        # its null condition was never trained apart from "normal": guidance would extrapolate noise
        problems.append(f"it was trained without classifier-free guidance (diffusion.cond_dropout=0) but "
                        f"sampling.guidance_scale={guidance:g}: sample it with sampling.guidance_scale=1 "
                        f"(make ... ARGS=\"sampling.guidance_scale=1\") or retrain with diffusion.cond_dropout > 0")
    if problems:
        raise SynthesisError(f"incompatible diffusion checkpoint {where}: " + "; ".join(problems))


def load_synthesis_model(cfg, type_names: Sequence[str] | None, ckpt: str | Path | None = None,
                         map_location="cpu"):
    """(FASTDiffusion with EMA weights, meta) of ``ckpt`` (default: ``resolve_diffusion_checkpoint(cfg)``),
    refused with a SynthesisError unless it fits ``cfg`` and the data's anomaly types and has trained."""
    from fast_lightning.diffusion.lightning_diffusion import load_fast_diffusion

    model, meta = load_fast_diffusion(ckpt if ckpt is not None else resolve_diffusion_checkpoint(cfg), map_location,
                                      trust=bool(cfg.get("trust_checkpoint")))
    check_checkpoint_compatible(meta, cfg, type_names)
    return model, meta
