"""The `synthesize` stage as a library function, ``run(cfg)``: called by ``commands/synthesize.py`` and by the
study steps (``fast_lightning.study``), so nothing below commands/ imports a command. What it writes, how it
resumes and how it shards: the command's docstring (``fast_lightning/commands/synthesize.py``)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from fast_lightning.errors import UserError
from fast_lightning.data.datamodule import foreground_dir, load_split, report_foreground
from fast_lightning.data.datasets import NormalImageDataset, working_size
from fast_lightning.evaluation import wandb_logging
from fast_lightning.hardware import cuda_selected, dataloader_workers
from fast_lightning.runs import (
    atomic_write_json,
    lock_run_dir,
    make_run_dir,
    resolve_run_path,
    run_dir_for,
    save_config,
    update_latest,
)
from fast_lightning.schema import SynthesisConfig
from fast_lightning.training import explained_stops, resume_command

log = logging.getLogger(__name__)

RUN_DIR_ENV = "FAST_LIGHTNING_SYNTH_RUN_DIR"  # lets DDP worker processes find rank 0's run directory
# keys that decide what pair i looks like: a resumed run must keep them
FIXED_KEYS = ("class_name", "seed", "data.channels", "data.foreground", "data.foreground_dir",
              "data.image_interpolation", "sampling", "synthesis.masks", "synthesis.perlin_type",
              "synthesis.out_resolution", "synthesis.visible_change", "synthesis.source_detail",
              "synthesis.contrast_match")
# a run saved before one of these keys existed had the schema default (so such a run still resumes)
ADDED_LATER = ("synthesis.visible_change", "synthesis.source_detail", "synthesis.contrast_match")


def make_sampler(cfg):
    """build_sampler with errors phrased for the make variables (STEPS, SAMPLER, VARIANT)."""
    from fast_lightning.sampling import build_sampler

    s = cfg.sampling
    try:
        return build_sampler(s)
    except ValueError as exc:
        if "steps" in str(exc):
            raise UserError(f"STEPS={s.steps} is not valid for SAMPLER={s.name}"
                            f"{' VARIANT=' + str(s.variant) if s.name == 'aias' else ''}: {exc}") from exc
        raise UserError(f"sampling options (SAMPLER={s.name}, VARIANT={s.variant}): {exc}") from exc


def _select(cfg, key: str):
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def check_resume_settings(saved, cfg, run_dir: Path) -> None:
    diffs = []
    for key in FIXED_KEYS:
        a, b = _select(saved, key), _select(cfg, key)
        if a is None and key in ADDED_LATER:
            a = getattr(SynthesisConfig, key.split(".", 1)[1])
        if a != b:
            diffs.append(f"{key}: run has {a!r}, now {b!r}")
    if os.path.realpath(str(saved.data_root)) != os.path.realpath(str(cfg.data_root)):
        diffs.append(f"data_root: run has {saved.data_root!r}, now {cfg.data_root!r}")
    if diffs:
        raise UserError(f"cannot resume {run_dir} with different settings (pairs would not match): "
                        + "; ".join(diffs) + ". Re-run the same command with RESUME=..., or drop RESUME to start "
                        "a new run.")


def _torchrun_run_id(cfg) -> str | None:
    """Under torchrun every rank runs this command from the start: they must agree on the run directory
    (``run_id=`` when given, else a name derived from the rendezvous and the resolved config)."""
    if cfg.get("run_id") or int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    import hashlib

    key = "|".join([os.environ.get("TORCHELASTIC_RUN_ID", ""), os.environ.get("MASTER_ADDR", ""),
                    os.environ.get("MASTER_PORT", ""), OmegaConf.to_yaml(cfg)])
    return "ddp-" + hashlib.sha1(key.encode()).hexdigest()[:10]


def write_preview(run_dir: Path, rows: list[dict], channels: int, n: int = 8) -> Path | None:
    """preview.png: rows source | mask | synthesized for the first n pairs (tiles resized to one size)."""
    import torch.nn.functional as F

    from fast_lightning.data.io import load_image, load_mask
    from fast_lightning.evaluation.plots import save_grid

    rows = rows[:n]
    if not rows:
        return None
    h0, w0 = int(rows[0]["height"]), int(rows[0]["width"])
    th = min(128, h0)
    tw = max(1, round(th * w0 / h0))
    tiles = {"source": [], "mask": [], "synthesized": []}
    for r in rows:
        size = (int(r["height"]), int(r["width"]))
        src = load_image(r["source"], size, channels)
        syn = load_image(run_dir / r["image"], None, channels)
        msk = load_mask(run_dir / r["mask"]).expand(syn.shape[0], -1, -1)
        for key, img in (("source", src), ("mask", msk), ("synthesized", syn)):
            img = img[None].float()
            if channels == 1:
                img = img.expand(-1, 3, -1, -1)
            tiles[key].append(F.interpolate(img, size=(th, tw), mode="bilinear", antialias=True,
                                            align_corners=False)[0].clamp(0, 1))
    grid = torch.stack(tiles["source"] + tiles["mask"] + tiles["synthesized"])
    return save_grid(grid, len(rows), run_dir / "preview.png", row_titles=("source", "mask", "synthesized"))



def _open_run(cfg) -> tuple[Path, dict, str | None]:
    """Which run folder this call writes (a DDP worker's, a resumed one, an existing run_id, or a new one) and
    the run.json it already holds; a resumed run must keep the settings that decide the pairs."""
    worker_run = os.environ.get(RUN_DIR_ENV)  # set: this is a DDP worker started by rank 0
    saved_info: dict = {}
    if worker_run:
        run_dir = Path(worker_run)
        saved_info = json.loads((run_dir / "run.json").read_text())
    elif cfg.resume:
        run_dir = resolve_run_path(cfg.resume)
        if not (run_dir / "config.yaml").is_file() or not (run_dir / "run.json").is_file():
            raise UserError(f"RESUME={cfg.resume} is not a synthesis run directory (no config.yaml/run.json in "
                            f"{run_dir}); pass runs/synthetic/<class>/<run-id>")
        saved_info = json.loads((run_dir / "run.json").read_text())
        check_resume_settings(OmegaConf.load(run_dir / "config.yaml"), cfg, run_dir)
    else:
        run_dir = run_dir_for(cfg, "synthetic", _torchrun_run_id(cfg))
        if (run_dir / "run.json").is_file() and (run_dir / "config.yaml").is_file():
            # an explicit run_id that already exists continues that run, under the same rules as RESUME
            saved_info = json.loads((run_dir / "run.json").read_text())
            check_resume_settings(OmegaConf.load(run_dir / "config.yaml"), cfg, run_dir)
    return run_dir, saved_info, worker_run


def _load_model_and_masks(cfg, saved_info: dict, run_dir: Path):
    """(checkpoint, split, model, meta, mask sampler); a resumed run keeps its checkpoint. Checked before the
    run folder is made, so a bad setting leaves nothing behind."""
    from fast_lightning.synthesis import SynthesisError, build_mask_sampler, resolve_diffusion_checkpoint
    from fast_lightning.synthesis.checkpoints import load_synthesis_model

    try:
        if saved_info.get("checkpoint") and not cfg.synthesis.ckpt:
            ckpt = Path(saved_info["checkpoint"])  # a resumed run keeps its model even if latest moved
            if not ckpt.is_file():
                raise UserError(f"the run's diffusion checkpoint {ckpt} no longer exists; pass CKPT=...")
        else:
            ckpt = resolve_diffusion_checkpoint(cfg)
            if saved_info.get("checkpoint") and str(ckpt) != saved_info["checkpoint"]:
                raise UserError(f"cannot resume {run_dir}: it used checkpoint {saved_info['checkpoint']}, "
                                f"CKPT gives {ckpt}")
        _, split = load_split(cfg)
        model, meta = load_synthesis_model(cfg, split.types, ckpt)
        mask_sampler = build_mask_sampler(cfg, split, size=None)  # masks at native size: synthesis runs there
    except SynthesisError as exc:
        raise UserError(str(exc)) from exc
    return ckpt, split, model, meta, mask_sampler


def _write_run_files(cfg, run_dir: Path, writer, split, ckpt: Path, meta: dict, sampler, run_fields: dict,
                     n: int, saved_info: dict) -> None:
    """config.yaml, the split, run.json (how to resume) and the writer's folders (rank 0 only)."""
    out_res = cfg.synthesis.out_resolution
    writer.prepare()
    save_config(cfg, run_dir)
    split.save(run_dir)
    atomic_write_json(run_dir / "run.json", {
        "kind": "synthetic", "class_name": cfg.class_name, "checkpoint": str(ckpt),
        "checkpoint_step": meta.get("global_step"), "model_window": meta.get("window"),
        "model_resolution": meta.get("resolution"), "type_names": meta.get("type_names"),
        "sampler_repr": repr(sampler), **run_fields, "n": n,
        "out_resolution": int(out_res) if out_res else None, "created": saved_info.get("created") or
        time.strftime("%Y-%m-%d %H:%M:%S"),
        "resume": f"make synthesize CLASS={cfg.class_name} ... RESUME={run_dir}",
    })


def _report_start(cfg, run_dir: Path, split, ckpt: Path, meta: dict, sampler, n: int, done, pending) -> None:
    """What is about to run, how to resume it, and one warning if the foreground estimate fails on part of
    the class."""
    log.info(f"synthesize {n} pairs for {cfg.class_name} with {sampler!r} (model: {meta.get('window')} window "
             f"at {meta.get('resolution')} px, {ckpt}) -> {run_dir}")
    if done:
        log.info(f"resuming: {len(done)} pair(s) already complete, {len(pending)} to go")
    log.info(f"interrupted? continue with RESUME={run_dir}")
    if pending:
        report_foreground(NormalImageDataset(
            split.normal_train, resolution=working_size(split.normal_train, int(cfg.data.seg_scale)),
            channels=int(cfg.data.channels),
            foreground=str(cfg.data.foreground), foreground_dir=foreground_dir(cfg),
            interpolation=str(cfg.data.image_interpolation), augment=False), str(cfg.class_name))


def _predict_pending(cfg, run_dir: Path, writer, split, model, meta: dict, sampler, mask_sampler, run_fields: dict,
                     pending: list[int], n: int, progress, worker_run: str | None):
    """Lightning's predict loop over the pending indices (the PairWriter callback writes each pair);
    returns (trainer, seconds)."""
    from fast_lightning.synthesis.contrast import real_contrast_targets
    from fast_lightning.synthesis.predictor import PairWriter, SynthesisPredictor, collate_items, synthesis_dataset

    dataset = synthesis_dataset(cfg, split, pending, list(meta.get("type_names", [])), mask_sampler)
    workers = dataloader_workers(int(cfg.data.num_workers), on_cpu=not cuda_selected(cfg.trainer.accelerator))
    loader = torch.utils.data.DataLoader(dataset, batch_size=int(cfg.synthesis.batch_size), shuffle=False,
                                         num_workers=workers, collate_fn=collate_items, persistent_workers=False)
    module = SynthesisPredictor(model, sampler, meta, int(cfg.seed), run_fields,
                                visible_change=cfg.synthesis.visible_change,
                                source_detail=str(cfg.synthesis.source_detail),
                                contrast_targets=real_contrast_targets(cfg, split))
    t = cfg.trainer
    trainer = L.Trainer(accelerator=str(t.accelerator), devices=t.devices, strategy=t.strategy,
                        num_nodes=int(t.num_nodes), precision=str(t.precision), logger=False,
                        callbacks=[PairWriter(writer), progress], enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        default_root_dir=str(run_dir))
    os.environ[RUN_DIR_ENV] = str(run_dir)
    start = time.time()
    try:
        with explained_stops(run_dir, resume_command(cfg, "synthesize", run_dir), lambda: trainer,
                             progress=lambda: f"{len(writer.completed())} of {n} pairs are complete in {run_dir}"):
            trainer.predict(module, dataloaders=loader, return_predictions=False)
    finally:
        if not worker_run:
            os.environ.pop(RUN_DIR_ENV, None)
    return trainer, time.time() - start


def _finish(cfg, run_dir: Path, writer, n: int, made: int, seconds: float) -> None:
    """Merge the shards into the manifest, check every pair is there, preview, latest link, summary."""
    rows = writer.merge()
    missing = [i for i in range(n) if i not in {r["index"] for r in rows}]
    if missing:
        raise UserError(f"{len(missing)} pair(s) were not written (first: {missing[:5]}); re-run with "
                        f"RESUME={run_dir}")
    write_preview(run_dir, rows, int(cfg.data.channels))
    update_latest(run_dir)
    rate = made / seconds if seconds > 0 else None
    summary = {"pairs": len(rows), "new_this_run": made, "seconds": round(seconds, 2),
               "images_per_second": round(rate, 3) if rate else None, "run_dir": str(run_dir)}
    atomic_write_json(run_dir / "summary.json", summary)
    wandb_logging.log_synthesis(cfg, run_dir, rows, summary)
    print(json.dumps(summary))
    print(f"synthetic pairs: {run_dir}  (manifest: {writer.manifest_path}, preview: {run_dir / 'preview.png'})")


def run(cfg) -> int:
    """Synthesize ``cfg.synthesis.n`` pairs for ``cfg`` (the study steps call this with a config): open the run
    folder, load the model and masks, record the run, predict the pending pairs, merge and summarise."""
    from fast_lightning.synthesis.predictor import ImagesProgress
    from fast_lightning.synthesis.writer import SynthesisWriter

    n = int(cfg.synthesis.n)  # counts are validated by load_config
    sampler = make_sampler(cfg)
    run_dir, saved_info, worker_run = _open_run(cfg)
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    writes_run_files = not worker_run and rank == 0
    ckpt, split, model, meta, mask_sampler = _load_model_and_masks(cfg, saved_info, run_dir)

    if writes_run_files:  # everything was checked: now the folder is made and held (one writer per run folder)
        make_run_dir(run_dir, cfg.run_root)
        lock_run_dir(run_dir)
    writer = SynthesisWriter(run_dir)
    done = writer.completed()
    if done and max(done) + 1 > n:
        have = max(done) + 1
        log.warning(f"N={n} but {run_dir} already holds {len(done)} pairs (indices up to {have - 1}): they are kept "
                    f"and the run records n={have}; start a new run (no RESUME) for a set of {n}")
        n = have
    s = cfg.sampling
    run_fields = {"sampler": str(s.name), "steps": int(sampler.expected_nfe(model.num_train_timesteps)),
                  "variant": str(s.variant) if s.name == "aias" else None, "seed": int(cfg.seed)}
    pending = [i for i in range(n) if i not in done]
    if writes_run_files:
        _write_run_files(cfg, run_dir, writer, split, ckpt, meta, sampler, run_fields, n, saved_info)
        _report_start(cfg, run_dir, split, ckpt, meta, sampler, n, done, pending)

    progress = ImagesProgress(total=n, initial=n - len(pending))
    seconds = 0.0
    if pending:
        trainer, seconds = _predict_pending(cfg, run_dir, writer, split, model, meta, sampler, mask_sampler,
                                            run_fields, pending, n, progress, worker_run)
        trainer.strategy.barrier()
        if not trainer.is_global_zero:
            return 0
    elif not writes_run_files:
        return 0
    _finish(cfg, run_dir, writer, n, len(pending), seconds)
    return 0
