"""`make compare CLASS=<c> [SYNTHS=fast,draem,cutpaste,real_third] [SEEDS=3]`: one segmenter per synthesizer
and seed under identical settings -> reports/<CLASS>/comparison.{md,csv,png} + a sample sheet.

Runs are named by a hash of their settings, so re-running reuses finished runs (``redo=true`` recomputes);
the study steps are ``fast_lightning.study``.
"""

from __future__ import annotations

import time
from pathlib import Path

from fast_lightning.errors import UserError
from fast_lightning.commands.arguments import config_from_args, pop_options
from fast_lightning.evaluation import wandb_logging
from fast_lightning.evaluation.catalog import per_type_label, per_type_names
from fast_lightning.evaluation.reports import (
    aggregate,
    aggregate_per_type,
    per_type_columns,
    per_type_sections,
    bar_plot,
    markdown_table,
    sample_sheet,
    text_table,
    write_csv,
)
from fast_lightning.runs import atomic_write_text
from fast_lightning.study import run_study, synthesizer_rows
from fast_lightning.synthesis.registry import parse_synths

DEFAULT_SYNTHS = "fast,draem,cutpaste,real_third"


OPTIONS = {"synths": DEFAULT_SYNTHS, "seeds": 3, "redo": False, "out": ""}


def main(args: list[str]) -> int:
    opts, rest = pop_options(args, OPTIONS)
    cfg = config_from_args(rest)
    synths = parse_synths(opts["synths"])
    seeds = int(opts["seeds"])
    if seeds < 1:
        raise UserError(f"SEEDS must be >= 1, got {seeds}")
    redo = bool(opts["redo"])
    start = time.time()
    rows = run_study(cfg, synths, seeds, redo, tag="compare")
    agg = aggregate(rows, "synth")
    per_type = {m: aggregate_per_type(rows, "synth", m) for m in per_type_names()}
    out = Path(opts["out"] or Path("reports") / str(cfg.class_name))
    out.mkdir(parents=True, exist_ok=True)
    first = rows[0]["metrics"]
    counts = first.get("counts", {})
    title = (f"{cfg.class_name}: segmenter {first['arch']}/{first['encoder']} trained on each synthesizer, "
             f"tested on real defects ({seeds} seed{'s' if seeds > 1 else ''})")
    write_csv(agg, "synthesizer", out / "comparison.csv")
    bar_plot(agg, out / "comparison.png", title)
    sheet = sample_sheet(synthesizer_rows(cfg, synths), out / "samples.png")
    md = [
        f"# {title}", "",
        f"- data: `{cfg.data_root}/{cfg.class_name}`, profile `{cfg.profile}`, working size "
        f"{'x'.join(str(v) for v in first.get('working_size') or [cfg.data.seg_scale] * 2)} px, training crops "
        f"{cfg.segmentation.crop or 'none'}, {cfg.segmentation.max_steps} steps per run, synthetic share "
        f"{cfg.segmentation.synth_ratio} of each batch (a+b mixes: b adds {cfg.segmentation.second_ratio})",
        f"- evaluated on: {first.get('evaluated_on')}: {counts.get('test_images')} test images "
        f"({counts.get('test_defect_images')} with defects); threshold for IoU/Acc chosen on "
        f"{counts.get('val_images')} separate validation images",
        *([f"- defect scale: {first['defect_scale']['kept']} of {first['defect_scale']['masks']} real-test defect "
           f"masks stay non-empty at {first['defect_scale']['resolution']} px"] if first.get("defect_scale") else []),
        "- cells: mean ± sample std over seeds; best per column in bold; `real_third` trains on the generator "
        "third's REAL labels (an upper-bound reference, not a synthesizer)", "",
        markdown_table(agg, "synthesizer"), "",
        *per_type_sections(per_type, "synthesizer"),
        f"![metrics]({(out / 'comparison.png').name})  ", f"![samples]({Path(sheet).name})", "",
        "Metric definitions: docs/METRICS.md. Runs:", "",
        *[f"- {r['synth']} seed {r['seed']}: `{r['run_dir']}`" for r in rows],
    ]
    atomic_write_text(out / "comparison.md", "\n".join(md) + "\n")
    wandb_logging.log_report(cfg, "compare", out / "comparison.csv", out / "comparison.png", [r["run_dir"] for r in rows])
    print()
    print(title)
    print(text_table(agg, "synthesizer"))
    for metric, agg_type in per_type.items():
        if any(agg_type.values()):
            print(f"\n{per_type_label(metric)} per defect type (each type + all defect-free test images)")
            print(text_table(agg_type, "synthesizer", metrics=per_type_columns(agg_type)))
    print(f"\nreport: {out / 'comparison.md'} (+ .csv, .png, samples.png) in {time.time() - start:.0f} s")
    return 0


__all__ = ["main", "run_study", "synthesizer_rows"]
