"""`make demo`: the main job on the embedded demo class, end to end, with a results table.

demo data -> train diffusion (FARM) -> synthesize with AIAS-10 -> segmenters on fast / draem / cutpaste with
the same budget -> table + report. Steps already done with the same settings are reused (``redo=true``
recomputes). The demo class is SYNTHETIC (procedural parts and defects); the numbers say so.
"""

from __future__ import annotations

import time
from pathlib import Path

from fast_lightning.commands.arguments import DEMO_SETTINGS, config_from_args, pop_options
from fast_lightning.config import apply_overrides
from fast_lightning.data.demo_dataset import DEMO_CLASS, DEMO_ROOT, generate_demo_dataset
from fast_lightning.evaluation.catalog import headline_names
from fast_lightning.evaluation.reports import (
    aggregate,
    bar_plot,
    markdown_table,
    read_metrics,
    sample_sheet,
    text_table,
)
from fast_lightning.runs import atomic_write_text, run_dir_for
from fast_lightning.study import (
    diffusion_key,
    diffusion_model,
    segmenter,
    settings_key,
    synthesizer_rows,
    synthetic_pairs,
)

DEMO_SYNTHS = ("fast_cached", "draem", "cutpaste")


OPTIONS = {"redo": False, "root": DEMO_ROOT}


def main(args: list[str]) -> int:
    opts, rest = pop_options(args, OPTIONS)
    redo = bool(opts["redo"])
    start = time.time()
    root = Path(opts["root"])
    print(f"[1/5] demo dataset (synthetic, procedural): {generate_demo_dataset(root)}")
    base = [f"class_name={DEMO_CLASS}", f"data_root={root}"] + rest
    profile = config_from_args(base).profile
    base = [f"class_name={DEMO_CLASS}", f"data_root={root}", f"profile={profile}", *DEMO_SETTINGS[profile], *rest]
    cfg = config_from_args(base)
    key = settings_key(cfg)

    print(f"[2/5] diffusion model (FARM, {cfg.diffusion.window} window at {cfg.diffusion.resolution} px, "
          f"{cfg.diffusion.max_steps} steps, {profile} profile)")
    diff_id = f"demo-{diffusion_key(cfg)}"
    diff_dir = run_dir_for(cfg, "diffusion", diff_id)
    ckpt = diffusion_model(cfg, diff_id, redo)

    print(f"[3/5] synthesize {cfg.synthesis.n} pairs with AIAS-{cfg.sampling.steps} ({cfg.sampling.variant} kernel)")
    syn_dir = synthetic_pairs(cfg, f"demo-{key}", ckpt, redo)

    print(f"[4/5] segmenters ({cfg.segmentation.arch}/{cfg.segmentation.encoder}, {cfg.segmentation.max_steps} steps each)"
          f" on {', '.join(DEMO_SYNTHS)}")
    rows = []
    for synth in DEMO_SYNTHS:
        run_dir = segmenter(apply_overrides(cfg, [f"segmentation.synth={synth}", f"synthesis.fast_cached_dir={syn_dir}"]),
                            f"demo-{key}-{synth}", redo, label=f"train-seg synth={synth}")
        m = read_metrics(run_dir)
        label = "fast (AIAS-10)" if synth == "fast_cached" else synth
        rows.append({"synth": label, "test": m["test"], "metrics": m, "run_dir": str(run_dir)})

    print("[5/5] report")
    agg = aggregate(rows, "synth")
    out = Path("reports") / DEMO_CLASS
    out.mkdir(parents=True, exist_ok=True)
    cfg_sheet = apply_overrides(cfg, [f"synthesis.fast_cached_dir={syn_dir}"])
    sample_sheet(synthesizer_rows(cfg_sheet, list(DEMO_SYNTHS)), out / "demo_samples.png")
    title = "demo_part (SYNTHETIC demo data): segmenter trained per synthesizer, tested on held-out demo defects"
    bar_plot(agg, out / "demo_results.png", title)
    counts = rows[0]["metrics"].get("counts", {})
    md = [f"# {title}", "",
          f"- profile `{profile}`; same segmenter, seed and budget for every synthesizer; "
          f"test: {counts.get('test_images')} images ({counts.get('test_defect_images')} with defects) of the demo "
          "class's real-test split, never seen by the generator", "",
          markdown_table(agg, "synthesizer"), "",
          "![results](demo_results.png)  ", "![samples](demo_samples.png)", "",
          f"Diffusion run: `{diff_dir}`; synthetic pairs: `{syn_dir}`.", "",
          *[f"- {r['synth']}: `{r['run_dir']}`" for r in rows]]
    atomic_write_text(out / "demo.md", "\n".join(md) + "\n")
    print()
    print(title)
    print(text_table(agg, "synthesizer", headline_names()))
    print(f"\nreport: {out / 'demo.md'}  plots: {out / 'demo_results.png'}, {out / 'demo_samples.png'}")
    print(f"synthetic pairs: {syn_dir}/images  sample grids: {diff_dir}/samples")
    print("W&B offline runs: ./wandb/offline-run-*  (upload with `wandb sync wandb/offline-run-*`)")
    print(f"done in {(time.time() - start) / 60:.1f} min")
    return 0
