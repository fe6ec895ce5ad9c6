"""`make benchmark [CLASSES=...] [SYNTHS=...] [SEEDS=3] [PROFILE=cpu]`: the evidence table.

Runs `compare`'s study (``study.run_study``: same segmenter, budget and masks for every synthesizer, seeds,
finished runs reused) on a fixed suite of classes and writes ``reports/benchmark.{md,csv,json,png}`` plus
one sample sheet per class, with the issue's targets evaluated per class (met / not met / n/a):

- FAST's mean pixel AP and IoU exceed the better of DRAEM and CutPaste by more than one seed-std
  (the larger of the two groups' stds);
- FAST reaches >= 70% of real_third's pixel AP;
- real_third+fast beats real_third alone (pixel AP).

CLASSES: comma-separated ``class@data_root`` (default: tire and the full magnetic tile).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from fast_lightning.errors import UserError
from fast_lightning.commands.arguments import DEFAULT_CLASSES, config_from_args, parse_classes, pop_options
from fast_lightning.evaluation import wandb_logging
from fast_lightning.evaluation.catalog import headline_names, per_type_names
from fast_lightning.evaluation.reports import (
    aggregate,
    aggregate_per_type,
    bar_plot,
    markdown_table,
    per_type_sections,
    sample_sheet,
    text_table,
    write_csv,
)
from fast_lightning.runs import atomic_write_json, atomic_write_text
from fast_lightning.synthesis.registry import parse_synths
from fast_lightning.study import run_study, synthesizer_rows

DEFAULT_SYNTHS = "fast,draem,cutpaste,real_third,real_third+fast"
BASELINES = ("draem", "cutpaste")


def _mean_std(agg: dict, synth: str, metric: str) -> tuple[float, float] | None:
    if synth not in agg or agg[synth][metric][2] == 0 or math.isnan(agg[synth][metric][0]):
        return None
    mean, std, n = agg[synth][metric]
    return float(mean), (float(std) if n > 1 and not math.isnan(std) else 0.0)


def evaluate_targets(agg: dict[str, dict]) -> dict[str, dict]:
    """The issue's targets on one class's aggregate (synth -> metric -> (mean, std, n)):
    each -> {"status": "met" | "not met" | "n/a", "detail": str}."""
    out: dict[str, dict] = {}

    def put(key, ok, detail):
        out[key] = {"status": "n/a" if ok is None else ("met" if ok else "not met"), "detail": detail}

    for metric in ("pixel_ap", "iou"):
        fast = _mean_std(agg, "fast", metric)
        base = [(b, _mean_std(agg, b, metric)) for b in BASELINES]
        base = [(b, v) for b, v in base if v is not None]
        if fast is None or not base:
            put(f"fast_beats_baselines_{metric}", None, "needs fast and draem or cutpaste runs")
            continue
        best_name, best = max(base, key=lambda kv: kv[1][0])
        margin = max(fast[1], best[1])
        put(f"fast_beats_baselines_{metric}", fast[0] > best[0] + margin,
            f"fast {fast[0]:.4f} vs {best_name} {best[0]:.4f} + std {margin:.4f}")
    fast, real = _mean_std(agg, "fast", "pixel_ap"), _mean_std(agg, "real_third", "pixel_ap")
    if fast is None or real is None:
        put("fast_reaches_70pct_real", None, "needs fast and real_third runs")
    else:
        put("fast_reaches_70pct_real", fast[0] >= 0.7 * real[0],
            f"fast {fast[0]:.4f} vs 0.7 x real_third {0.7 * real[0]:.4f}")
    mix = _mean_std(agg, "real_third+fast", "pixel_ap")
    if mix is None or real is None:
        put("real_plus_fast_beats_real", None, "needs real_third+fast and real_third runs")
    else:
        put("real_plus_fast_beats_real", mix[0] > real[0], f"real_third+fast {mix[0]:.4f} vs real_third {real[0]:.4f}")
    return out


OPTIONS = {"classes": DEFAULT_CLASSES, "synths": DEFAULT_SYNTHS, "seeds": 3, "redo": False, "out": "reports"}


def main(args: list[str]) -> int:
    opts, rest = pop_options(args, OPTIONS)
    synths = parse_synths(opts["synths"])
    seeds = int(opts["seeds"])
    if seeds < 1:
        raise UserError(f"SEEDS must be >= 1, got {seeds}")
    redo = bool(opts["redo"])
    out = Path(str(opts["out"]))
    out.mkdir(parents=True, exist_ok=True)
    rest = [a for a in rest if not a.startswith(("class_name=", "data_root="))]
    start = time.time()
    md, combined, results = [], {}, {}
    for name, root in parse_classes(opts["classes"]):
        class_args = rest + [f"class_name={name}"] + ([f"data_root={root}"] if root else [])
        cfg = config_from_args(class_args)
        rows = run_study(cfg, synths, seeds, redo, tag="bench")
        agg = aggregate(rows, "synth", headline_names())
        per_type = {m: aggregate_per_type(rows, "synth", m) for m in per_type_names()}
        targets = evaluate_targets(agg)
        sheet = sample_sheet(synthesizer_rows(cfg, synths), out / f"benchmark_{name}_samples.png")
        first = rows[0]["metrics"]
        size = "x".join(str(v) for v in first.get("working_size") or [cfg.data.seg_scale] * 2)
        combined.update({f"{name}:{k}": v for k, v in agg.items()})
        results[name] = {"data_root": str(cfg.data_root), "working_size": first.get("working_size"),
                         "targets": targets, "runs": [r["run_dir"] for r in rows],
                         "aggregate": {s: {m: list(v) for m, v in vals.items()} for s, vals in agg.items()}}
        md += [f"## {name} (`{cfg.data_root}/{name}`)", "",
               f"- segmenter {first['arch']}/{first['encoder']}, profile `{cfg.profile}`, working size {size} px, "
               f"crops {cfg.segmentation.crop or 'none'}, {cfg.segmentation.max_steps} steps, {seeds} seed(s); "
               f"cells: mean ± std over seeds",
               "", markdown_table(agg, "synthesizer", headline_names()), "",
               *per_type_sections(per_type, "synthesizer"), "targets:", "",
               *[f"- {key}: **{t['status']}** ({t['detail']})" for key, t in targets.items()], "",
               f"![samples {name}]({Path(sheet).name})", ""]
        print(f"\n{name}")
        print(text_table(agg, "synthesizer", headline_names()))
        for key, t in targets.items():
            print(f"  {key}: {t['status']} ({t['detail']})")
    seconds = time.time() - start
    write_csv(combined, "class:synthesizer", out / "benchmark.csv", headline_names())
    bar_plot(combined, out / "benchmark.png", "benchmark: segmenters on real defects", headline_names())
    head = ["# Benchmark: segmenters trained per synthesizer, tested on REAL defects", "",
            f"- synthesizers {', '.join(synths)}; wall time {seconds / 60:.1f} min (finished runs reused)",
            "- metric definitions: docs/METRICS.md; targets: FAST > max(DRAEM, CutPaste) + 1 std on pixel AP and "
            "IoU; FAST >= 70% of real_third's pixel AP; real_third+fast > real_third", "",
            "![metrics](benchmark.png)", ""]
    atomic_write_text(out / "benchmark.md", "\n".join(head + md) + "\n")
    wandb_logging.log_report(cfg, "benchmark", out / "benchmark.csv", out / "benchmark.png",
                             [r for v in results.values() for r in v["runs"]],
                             tags=[f"class:{c}" for c in results] + [f"profile:{cfg.profile}"])
    atomic_write_json(out / "benchmark.json", {"synths": synths, "seeds": seeds, "seconds": round(seconds, 1),
                                               "classes": results})
    print(f"\nbenchmark: {out / 'benchmark.md'} (+ .csv, .json, .png, samples) in {seconds / 60:.1f} min")
    return 0
