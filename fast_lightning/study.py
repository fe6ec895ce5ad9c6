"""The study steps the experiment commands share (compare, demo, ablate, benchmark; the sweeps use the key):
a diffusion model, synthetic pairs and segmenters for a config, each reusing a finished run with the same
settings (``redo`` recomputes).

Two keys name the runs. ``diffusion_key`` covers only what shapes the diffusion model (class, seed, data.*,
diffusion.*, the dataset's real path, precision): changing a segmenter or sampler setting never retrains it,
and a ``latest`` model trained with other model settings is never reused. ``settings_key`` covers the whole
resolved config minus what a study varies (seed, run id, synthesizer) and names segmenter runs; a pool of
synthesized pairs is named by it without the ``segmentation`` group (``POOL_IGNORES``), so a segmenter setting
reuses the pool.
The steps take configs, not argument lists, and call the stages' entry points (``fast_lightning.stages``,
``run(cfg)``), which the commands call too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from fast_lightning.errors import UserError
from fast_lightning.config import apply_overrides
from fast_lightning.locks import LOCK_FILE, is_rank_zero, lock_run_dir, release_run_dir
from fast_lightning.runs import last_checkpoint, run_dir_for
from fast_lightning.seeding import generator_for

MODEL_KEYS = ("class_name", "seed", "data", "diffusion")
STUDY_VARIES = ("seed", "run_id", "segmentation.synth")
POOL_IGNORES = (*STUDY_VARIES, "segmentation")  # the segmenter's settings never change what a pool holds


# ---- keys ---------------------------------------------------------------------------------------------------
def settings_key(cfg: DictConfig, drop: Iterable[str] = STUDY_VARIES) -> str:
    """Short hash of the resolved config minus the keys a study varies: identical settings reuse runs."""
    c = OmegaConf.to_container(cfg, resolve=True)
    for key in drop:
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return hashlib.sha1(repr(sorted(_flatten(c).items())).encode()).hexdigest()[:8]


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def diffusion_key(cfg: DictConfig) -> str:
    """THE diffusion cache key: hash of the settings that decide the diffusion model (not sampling,
    segmentation, synthesis or run names)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    keyed = {k: c[k] for k in MODEL_KEYS}
    keyed["data_root"] = os.path.realpath(str(cfg.data_root))
    keyed["precision"] = c["trainer"]["precision"]
    return hashlib.sha1(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---- steps --------------------------------------------------------------------------------------------------
def unfinished(run_dir: Path, done_file: str) -> str | None:
    """Why ``run_dir`` is not a finished run (None when it is): ``done_file`` missing or not readable JSON (a
    kill -9 mid-write), or the checkpoint it names (a segmenter's ``best.ckpt``) missing from the folder."""
    done = Path(run_dir) / done_file
    if not done.is_file():
        return f"no {done_file}"
    try:
        summary = json.loads(done.read_text())
    except (OSError, ValueError) as exc:
        return f"{done_file} is unreadable ({type(exc).__name__})"
    missing = []
    named = summary.get("checkpoint") if isinstance(summary, dict) else None
    if isinstance(named, str) and not (Path(run_dir) / "checkpoints" / Path(named).name).is_file():
        missing.append(f"checkpoints/{Path(named).name}")  # looked up in the folder: runs/ may have moved
    return f"{', '.join(missing)} missing" if missing else None


def _clear(run_dir: Path) -> None:
    """Empty an unfinished run folder (its lock file stays: this process holds it)."""
    import shutil

    for entry in Path(run_dir).iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def reuse_or_run(label: str, run_dir: Path, done_file: str, fn, cfg: DictConfig, redo: bool = False,
                 clean: bool = True) -> Path:
    """Run ``fn(cfg)`` unless ``run_dir`` is a finished earlier run with the same settings (``unfinished``).

    The folder is locked first (another compare writing it: refused, "in use by PID"). An unfinished one (killed
    mid-run) is emptied and redone with a message when ``clean`` (training runs: left-over checkpoints would mix
    in), else handed to ``fn`` as is (synthesis resumes its own pairs and refuses other settings)."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        lock_run_dir(run_dir)
    try:
        why = unfinished(run_dir, done_file)
        if not redo and why is None:
            print(f"[reuse] {label}: {run_dir}")
            return run_dir
        # a DDP child re-running the study finds rank 0's folder in progress: only rank 0 may empty it
        leftovers = is_rank_zero() and run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir())
        if leftovers:
            action = "emptied and started again" if clean else "continued"
            print(f"[redo]  {label}: {run_dir} is {'redone (redo=true)' if redo else f'unfinished ({why})'}: {action}")
            if clean:
                _clear(run_dir)
        print(f"[run]   {label} -> {run_dir}", flush=True)
        code = fn(cfg)
        if code not in (0, None) or unfinished(run_dir, done_file) is not None:
            raise UserError(f"{label} failed (exit {code}); see the output above and {run_dir}")
    finally:
        release_run_dir(run_dir)
    return run_dir


def diffusion_model(cfg: DictConfig, run_id: str, redo: bool = False, label: str = "train-diffusion") -> Path:
    """The last checkpoint of diffusion run ``run_id`` for ``cfg``, trained now unless it finished before."""
    from fast_lightning.stages import fit_diffusion

    run_dir = run_dir_for(cfg, "diffusion", run_id)
    reuse_or_run(label, run_dir, "metrics.json", fit_diffusion.run, apply_overrides(cfg, [f"run_id={run_id}"]), redo)
    return last_checkpoint(run_dir)


def synthetic_pairs(cfg: DictConfig, run_id: str, ckpt: Path, redo: bool = False, label: str = "synthesize") -> Path:
    """The folder of synthesis run ``run_id`` (pairs from diffusion checkpoint ``ckpt``), made now unless done."""
    from fast_lightning.stages import synthesize_pairs

    run_dir = run_dir_for(cfg, "synthetic", run_id)
    reuse_or_run(label, run_dir, "summary.json", synthesize_pairs.run,
                 apply_overrides(cfg, [f"synthesis.ckpt={ckpt}", f"run_id={run_id}"]), redo, clean=False)
    return run_dir


def segmenter(cfg: DictConfig, run_id: str, redo: bool = False, label: str = "train-seg") -> Path:
    """The folder of segmentation run ``run_id`` for ``cfg`` (its metrics.json), trained now unless done."""
    from fast_lightning.stages import fit_segmenter

    run_dir = run_dir_for(cfg, "seg", run_id)
    reuse_or_run(label, run_dir, "metrics.json", fit_segmenter.run, apply_overrides(cfg, [f"run_id={run_id}"]), redo)
    return run_dir


def usable_latest(cfg: DictConfig) -> tuple[Path | None, str]:
    """(checkpoint, "") for ``synthesis.ckpt`` or runs/diffusion/<class>/latest when it fits ``cfg`` (class,
    channels, resolution; for ``latest`` also the same ``diffusion_key``), else (None, why not). An explicit
    ``synthesis.ckpt`` that does not fit raises."""
    from fast_lightning.synthesis import SynthesisError, check_checkpoint_compatible, resolve_diffusion_checkpoint
    from fast_lightning.runs import read_checkpoint

    try:
        ckpt = resolve_diffusion_checkpoint(cfg)
        raw = read_checkpoint(ckpt, trust=bool(cfg.get("trust_checkpoint")))
        meta = dict(raw.get("fast_lightning", {}), path=str(ckpt), global_step=int(raw.get("global_step", 0)))
        check_checkpoint_compatible(meta, cfg)  # the synthesis rule, on the metadata alone (no weights loaded)
    except SynthesisError as exc:
        if cfg.synthesis.ckpt:
            raise
        return None, str(exc)
    if not cfg.synthesis.ckpt:
        saved = ckpt.parent.parent / "config.yaml"
        try:
            same = diffusion_key(OmegaConf.load(saved)) == diffusion_key(cfg)
        except (OSError, KeyError, ValueError, TypeError, AttributeError) as exc:
            return None, f"cannot read the model settings of {ckpt} from {saved}: {exc}"
        if not same:
            return None, (f"{ckpt} was trained with other model settings (class, seed, data.* or diffusion.*: "
                          f"diffusion key differs)")
    return ckpt, ""


def ensure_diffusion(cfg: DictConfig, redo: bool = False, prefix: str = "auto") -> Path:
    """A diffusion checkpoint matching these settings: synthesis.ckpt, else runs/diffusion/<c>/latest when it
    fits (``usable_latest``), else the run ``<prefix>-<diffusion_key>`` (trained now unless finished).

    Always the resolved absolute path: the pool and segmenter runs are named by a hash of the config that holds
    it, so the same model reached through ``latest`` or through its run name must be spelled the same."""
    ckpt, reason = usable_latest(cfg)
    if ckpt is None:
        print(f"no usable diffusion checkpoint ({reason}): training one for these settings ({cfg.profile} profile)")
        ckpt = diffusion_model(cfg, f"{prefix}-{diffusion_key(cfg)}", redo)
    return Path(ckpt).resolve()


def run_study(cfg: DictConfig, synths: list[str], seeds: int, redo: bool, tag: str) -> list[dict]:
    """One segmenter per synthesizer and seed under identical settings (compare, benchmark): rows of
    {synth, seed, test metrics, run_dir, metrics}."""
    from fast_lightning.evaluation.reports import read_metrics
    from fast_lightning.synthesis.registry import needs_diffusion, needs_pairs

    pool = any(needs_pairs(s) for s in synths) and not cfg.synthesis.get("fast_cached_dir")
    if pool or any(needs_diffusion(s) for s in synths):
        cfg = apply_overrides(cfg, [f"synthesis.ckpt={ensure_diffusion(cfg, redo)}"])
    if pool:  # one pool of synthesized pairs for every seed: the model and sampler are the same
        pairs = synthetic_pairs(cfg, f"pool-{settings_key(cfg, POOL_IGNORES)}", Path(cfg.synthesis.ckpt), redo,
                                label=f"synthesize pool of {cfg.synthesis.n}")
        cfg = apply_overrides(cfg, [f"synthesis.fast_cached_dir={pairs}"])
    key = settings_key(cfg)
    rows = []
    for synth in synths:
        for seed in range(seeds):
            run_dir = segmenter(apply_overrides(cfg, [f"segmentation.synth={synth}", f"seed={seed}"]),
                                f"{tag}-{key}-{synth}-s{seed}", redo, label=f"train-seg synth={synth} seed={seed}")
            m = read_metrics(run_dir)
            rows.append({"synth": synth, "seed": seed, "test": m["test"], "run_dir": str(run_dir), "metrics": m})
    return rows


def synthesizer_rows(cfg: DictConfig, synths: list[str], n: int = 6) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Real generator-train defects vs each synthesizer's output on the same normal images (sample sheets)."""
    from fast_lightning.data.datamodule import AnomalyDataModule
    from fast_lightning.synthesis import build_seg_synthesizer

    dm = AnomalyDataModule(cfg, stage="segmentation")
    dm.setup()
    real_imgs, real_masks = dm.labelled_dataset("generator_train").stacked()
    rows = [("real (gen. third)", real_imgs[:n], real_masks[:n])]
    ds = dm.normal_dataset()
    items = [ds.load(i % len(ds.normals)) for i in range(n)]
    normals = torch.stack([x[0] for x in items])
    fg = torch.stack([x[1] for x in items])
    for name in synths:
        synth = build_seg_synthesizer(name, cfg, dm)
        g = generator_for("run", int(cfg.seed))
        with torch.no_grad():
            imgs, masks = synth(normals, fg, g)
        rows.append((name, imgs.float(), masks.float()))
    return rows
