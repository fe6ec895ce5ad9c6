"""`make ablate CLASS=<c>`: the paper's ablations against downstream metrics on real defects.

- AIAS steps: the same FARM model sampled with AIAS-{2,5,10,50} and DDPM-1000 (``steps=2,5,10,50,ddpm``).
- FARM on/off: a second diffusion model trained with ``diffusion.farm.enabled=false`` (plain masked DDPM
  loss), sampled with AIAS-10 without FARM injection.
- FARM in the tail (old behaviour): the FARM model sampled with AIAS-10 and ``sampling.farm_min_t=0``
  (FARM injected before every evaluation, including the t = 1, 0 refinement steps), next to the default
  (no FARM below ``farm_min_t`` = 2). Option ``farm_tail=false`` drops this row.
Each variant: ``make synthesize`` (N pairs) -> ``make train-seg SYNTH=fast_cached`` with identical settings.
"""

from __future__ import annotations

import time
from pathlib import Path

from fast_lightning.errors import UserError
from fast_lightning.commands.arguments import config_from_args, pop_options
from fast_lightning.config import apply_overrides
from fast_lightning.evaluation import wandb_logging
from fast_lightning.evaluation.catalog import headline_names
from fast_lightning.evaluation.reports import (
    aggregate,
    line_plot,
    markdown_table,
    read_metrics,
    text_table,
    write_csv,
)
from fast_lightning.runs import atomic_write_text
from fast_lightning.study import diffusion_key, diffusion_model, segmenter, settings_key, synthetic_pairs


FARM_TAIL_LABEL = "AIAS-10, FARM in tail (old)"


def parse_steps(text: str) -> list[str]:
    items = [s.strip().lower() for s in str(text).split(",") if s.strip()]
    for s in items:
        if s != "ddpm" and (not s.isdigit() or int(s) < 2):
            raise UserError(f"steps={text!r}: each entry is an integer >= 2 or 'ddpm'")
    return items


def sampling_args(step: str) -> list[str]:
    if step == "ddpm":
        return ["sampling.name=ddpm"]
    n = int(step)
    # AIAS needs t_end + 2 evaluations: 2 steps = one kernel 999 -> 0 plus the final posterior step
    return ["sampling.name=aias", f"sampling.steps={n}"] + (["sampling.t_end=0"] if n < 3 else [])


OPTIONS = {"steps": "2,5,10,50,ddpm", "farm": True, "farm_tail": True, "seeds": 1, "redo": False}


def main(args: list[str]) -> int:
    opts, rest = pop_options(args, OPTIONS)
    steps = parse_steps(opts["steps"])
    redo = bool(opts["redo"])
    seeds = int(opts["seeds"])
    cfg = config_from_args(rest)
    start = time.time()
    key = settings_key(cfg)
    cls = str(cfg.class_name)
    models = {"farm": cfg, "nofarm": apply_overrides(cfg, ["diffusion.farm.enabled=false"])}

    variants: list[tuple[str, list[str], str]] = []  # (label, extra args, diffusion model: farm | nofarm)
    for s in steps:
        label = "DDPM-1000" if s == "ddpm" else f"AIAS-{s}"
        variants.append((label, sampling_args(s), "farm"))
    step_labels = [v[0] for v in variants]  # the rows of the steps plot
    if opts["farm_tail"]:
        variants.append((FARM_TAIL_LABEL, sampling_args("10") + ["sampling.farm_min_t=0"], "farm"))
    if opts["farm"]:
        variants.append(("AIAS-10, FARM off", ["sampling.name=aias", "sampling.steps=10", "sampling.farm_inject=false"],
                         "nofarm"))

    ckpts = {}
    for model, model_cfg in models.items():
        if any(v[2] == model for v in variants):
            ckpts[model] = diffusion_model(model_cfg, f"ablate-{diffusion_key(model_cfg)}-{model}", redo,
                                           label=f"train-diffusion ({'FARM off' if model == 'nofarm' else 'FARM on'})")

    rows = []
    for label, extra, model in variants:
        variant_cfg = apply_overrides(cfg, extra)  # synthesis/seg settings: the model comes from its checkpoint
        tag = label.lower().replace(" ", "").replace(",", "-").replace("(", "").replace(")", "")
        syn_id = f"ablate-{key}-{tag}"
        syn_dir = synthetic_pairs(variant_cfg, syn_id, ckpts[model], redo, label=f"synthesize {label}")
        for seed in range(seeds):
            seg_dir = segmenter(apply_overrides(variant_cfg, ["segmentation.synth=fast_cached",
                                                              f"synthesis.fast_cached_dir={syn_dir}", f"seed={seed}"]),
                                f"{syn_id}-s{seed}", redo, label=f"train-seg on {label} seed {seed}")
            m = read_metrics(seg_dir)
            rows.append({"variant": label, "test": m["test"], "run_dir": str(seg_dir), "metrics": m})

    agg = aggregate(rows, "variant")
    out = Path("reports") / cls
    out.mkdir(parents=True, exist_ok=True)
    write_csv(agg, "variant", out / "ablation.csv")
    metrics = headline_names()
    line_plot([lbl.split("-")[-1] if "AIAS" in lbl else "DDPM" for lbl in step_labels],
              {m: [agg[lbl][m][0] for lbl in step_labels] for m in metrics}, out / "ablation.png",
              f"{cls}: segmenter on FAST pairs vs sampler steps (real-test defects)", "AIAS steps")
    md = [f"# {cls}: ablations (FAST synthesis -> segmenter -> real defects)", "",
          f"- profile `{cfg.profile}`, {cfg.synthesis.n} synthetic pairs per variant, {seeds} seed(s), identical "
          "segmenter settings; metrics on the real-test split (docs/METRICS.md)",
          "- FARM is injected at timesteps t >= `sampling.farm_min_t` (default 2: not in the t = 1, 0 refinement "
          f"tail); '{FARM_TAIL_LABEL}' injects it at every step (farm_min_t=0)", "",
          markdown_table(agg, "variant"), "", "![steps](ablation.png)", "",
          *[f"- {r['variant']}: `{r['run_dir']}`" for r in rows]]
    atomic_write_text(out / "ablation.md", "\n".join(md) + "\n")
    wandb_logging.log_report(cfg, "ablate", out / "ablation.csv", out / "ablation.png", [r["run_dir"] for r in rows])
    print(text_table(agg, "variant"))
    print(f"\nreport: {out / 'ablation.md'} (+ .csv, .png) in {(time.time() - start) / 60:.1f} min")
    return 0
