"""`make fidelity CLASS=<c> [CKPT] [SYNTHS=fast,draem,cutpaste]`: how real do the synthesized defects look?

Compares each synthesizer's defects with the class's REAL generator-train defects, per defect type, at the
segmenter's working size (what the segmenter learns from), in minutes instead of a benchmark's hour:
contrast statistics against a ring around the defect (Wasserstein distance real vs synthesized) and a
classifier two-sample test (held-out AUROC, 0.5 = indistinguishable). See evaluation/fidelity.py.

The synthesized pairs come from the segmentation synthesizers themselves (``build_seg_synthesizer``, the
pool of ``fast`` switched off so every pair is fresh) on the normal-train images of the DataModule; the
control row ``real_third`` (real pairs against real pairs) shows the floor of both measures for this class.

The probe (``probe=<steps>``, off by default) asks the question the benchmark asks, at a fraction of its cost:
a segmenter trained for that many steps on each synthesizer's n pairs (written as a pool, so every synthesizer
gets the same pairs budget), scored on the REAL validation defects (never the test split) by pixel AP, overall
and per type. Its run folders go under ``<run_root>/fidelity_probe/`` so ``runs/seg/<class>/latest`` is left alone.

Options (key=value): synths=fast,draem,cutpaste, n=64 (pairs per synthesizer), size=32 (window px),
steps=150 (classifier steps per fold), folds=2, per_type=true (a classifier per type too), control=true,
probe=0 (segmenter steps of the probe; 0 = no probe), seed=0, out=reports/<class>.
Writes fidelity.json, fidelity.md, fidelity.png.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from fast_lightning.commands.arguments import config_from_args, pop_options
from fast_lightning.errors import UserError

CONTROL = "real_third"


def gather(synth, dataset, n: int, batch: int, seed: int, type_names: list[str]) -> dict:
    """``n`` pairs of ``synth`` on the dataset's normal items 0..n-1 (per-item generators), at working size:
    {"images", "masks", "types" (names, or None for an untyped synthesizer), "seconds", "nfe_per_image"}."""
    from fast_lightning.seeding import generator_for

    images, masks, types, start = [], [], [], time.time()
    for lo in range(0, n, batch):
        items = [dataset[i] for i in range(lo, min(n, lo + batch))]
        normals = torch.stack([it["image"] for it in items])
        fg = torch.stack([it["foreground"] for it in items])
        gens = [generator_for("fidelity", seed, lo + k) for k in range(len(items))]
        kwargs = {}
        if synth.native_input:  # the SegSynthesizer protocol
            kwargs = {"records": torch.tensor([int(it["record"]) for it in items]),
                      "hflip": torch.tensor([bool(it["hflip"]) for it in items])}
        img, m = synth(normals, fg, gens, **kwargs)
        images += list(img.float().cpu())
        masks += list(m.float().cpu())
        last = getattr(synth, "last_types", None)
        if last is not None and len(last) == len(items) and type_names:
            types += [type_names[int(t) - 1] if 0 < int(t) <= len(type_names) else "normal" for t in last]
    sampler = getattr(getattr(synth, "synth", None), "sampler", None)
    return {"images": images, "masks": masks, "types": types if len(types) == len(images) else None,
            "seconds": time.time() - start, "nfe_per_image": getattr(sampler, "nfe", None)}


def probe(cfg, name: str, got: dict, type_names: list[str], steps: int, seed: int) -> dict:
    """Train a segmenter for ``steps`` on ``got``'s pairs (written as a fast_cached pool) and read its pixel AP on
    the real validation defects: {"steps", "pairs", "val_pixel_ap", "val_iou", "val_per_type", "run_dir",
    "seconds"}. The test split is evaluated by the stage as always, but never read here."""
    from fast_lightning.config import apply_overrides
    from fast_lightning.runs import run_dir_for
    from fast_lightning.study import segmenter
    from fast_lightning.synthesis.writer import SynthesisWriter

    start = time.time()
    root = Path(str(cfg.run_root)) / "fidelity_probe"
    base = apply_overrides(cfg, [f"run_root={root}", f"seed={seed}"])
    pairs_dir = run_dir_for(base, "pairs", name)
    shutil.rmtree(pairs_dir, ignore_errors=True)  # this call's pairs only: never a mix with an earlier call's
    writer = SynthesisWriter(pairs_dir)
    writer.prepare()
    types = got["types"] or [None] * len(got["images"])
    for i, (image, mask, t) in enumerate(zip(got["images"], got["masks"], types)):
        type_id = type_names.index(t) + 1 if t in type_names else 0
        writer.write_pair({"index": i, "type": t, "type_id": type_id}, image.clamp(0, 1), (mask > 0.5).float())
    writer.merge()
    run_cfg = apply_overrides(base, ["segmentation.synth=fast_cached", f"synthesis.fast_cached_dir={pairs_dir}",
                                     f"segmentation.max_steps={steps}", f"segmentation.val_every={steps}"])
    run_dir = segmenter(run_cfg, name, redo=True, label=f"fidelity probe {name}")
    m = json.loads((run_dir / "metrics.json").read_text())
    val = m.get("val") or {}
    per_type = {t: v.get("pixel_ap") for t, v in (m.get("val_per_type") or {}).items()}
    return {"steps": steps, "pairs": len(got["images"]), "val_pixel_ap": val.get("pixel_ap"),
            "val_iou": val.get("iou"), "val_per_type": per_type, "run_dir": str(run_dir),
            "seconds": round(time.time() - start, 1)}


def _areas(masks, kept: list[int]) -> list[float]:
    """Each kept item's defect area as a fraction of its (working-size) image."""
    return [float((masks[i] > 0.5).float().mean()) for i in kept]


def _fine_texture(images, masks, kept: list[int]) -> list[float]:
    """Each kept item's ``fine_texture_ratio`` on its working-size image."""
    from fast_lightning.evaluation.fidelity import fine_texture_ratio

    return [fine_texture_ratio(images[i], masks[i]) for i in kept]


def markdown(report: dict) -> str:
    from fast_lightning.tables import markdown_table

    def f(v):
        return "n/a" if v is None or v != v else f"{v:.3f}"

    def pct(v):
        return "n/a" if v is None or v != v else f"{100 * v:.2f}"

    lines = [f"# Fidelity: {report['class_name']}", "",
             f"Synthesized defects vs the real generator-train defects, {report['window_px']}-px windows at the "
             f"working size {report['working_size']}; classifier two-sample AUROC (0.5 = indistinguishable, "
             "lower = more realistic) on the windows and on defect patches (minus the ring's mean: the painted "
             "defect, not its background or outline), W1 / std(real) per contrast statistic (0 = same "
             "distribution), and the defect's size in the image: median area (% of the image) real / synth and "
             "W1 of log10 area (in decades; 1 = ten times too large or small), and the defect's fine texture at the "
             "working size's own pixels: median log(gradient energy inside / ring) real / synth (0 = as grainy as "
             "the part around it) and its W1. "
             f"`{CONTROL}` is the real-vs-real control."
             + (f" Probe: a segmenter trained {report['probe_steps']} steps on each synthesizer's pairs, pixel AP on "
                "the REAL validation defects (higher = teaches more; not the test split)." if report.get("probe_steps")
                else ""), ""]
    for name, res in report["synthesizers"].items():
        rows = []
        for t, e in res["per_type"].items():
            size, fine = e.get("size") or {}, e.get("fine_texture") or {}
            rows.append([t, str(e["n_real"]), str(e["n_synth"]), f(e.get("c2st_auroc")), f(e.get("c2st_defect_auroc")),
                         f(e["w1_norm_mean"]),
                         *(f(e["stats"][k]["w1_norm"]) for k in report["stats"]),
                         f"{pct(size.get('real_median'))} / {pct(size.get('synth_median'))}", f(e.get("w1_log_area")),
                         f"{f(fine.get('real_median'))} / {f(fine.get('synth_median'))}", f(e.get("w1_fine_texture")),
                         f(e.get("probe_val_ap"))])
        extra = f", {res['nfe_per_image']} network evaluations per image" if res.get("nfe_per_image") else ""
        if res.get("probe"):
            extra += (f"; probe: val pixel AP {f(res['probe']['val_pixel_ap'])} after {res['probe']['steps']} "
                      f"segmenter steps on these {res['probe']['pairs']} pairs, {res['probe']['seconds']:.0f} s")
        lines += [f"## {name} (score {f(res['score'])}; {res['seconds']:.0f} s to synthesize{extra})", "",
                  markdown_table(["type", "real", "synth", "C2ST AUROC", "C2ST defect AUROC", "W1/std mean",
                                  *(f"W1/std {k}" for k in report["stats"]), "area % real / synth",
                                  "W1 log10 area", "fine texture real / synth", "W1 fine texture",
                                  "probe val AP"], rows), ""]
    lines += ["![fidelity](fidelity.png)", ""]
    return "\n".join(lines)


def plot(report: dict, real: dict, sets: dict, path: Path, strip: int = 8) -> Path:
    """Histograms of each statistic per type (real vs each synthesizer) above a strip of windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fast_lightning.evaluation.fidelity import window_stats
    from fast_lightning.evaluation.plots import save_figure, to_uint8

    stats = report["stats"]
    types = list(next(iter(report["synthesizers"].values()))["per_type"]) if report["synthesizers"] else ["all"]
    rows = [("real", real)] + list(sets.items())
    fig = plt.figure(figsize=(3 * len(types), 2.2 * len(stats) + 1.1 * len(rows)))
    grid = fig.add_gridspec(len(stats) + 1, len(types), height_ratios=[2.2] * len(stats) + [1.1 * len(rows)])
    values = {name: window_stats(s["windows"], s["masks"]) for name, s in rows}
    for i, k in enumerate(stats):
        for j, t in enumerate(types):
            ax = fig.add_subplot(grid[i, j])
            for name, s in rows:
                v = values[name][k]
                if t != "all" and s.get("types") is not None:
                    v = v[[n_ == t for n_ in s["types"]]]
                v = v[v == v]
                if len(v):
                    ax.hist(v, bins=15, histtype="step", density=True, label=name, lw=2 if name == "real" else 1)
            ax.set_title(f"{t}: {k}", fontsize=8)
            ax.tick_params(labelsize=6)
            if i == 0 and j == 0:
                ax.legend(fontsize=6)
    ax = fig.add_subplot(grid[len(stats), :])
    tiles = []
    for _, s in rows:
        w = s["windows"][:strip]
        w = w.expand(-1, 3, -1, -1) if w.shape[1] == 1 else w
        pad = torch.ones(strip - w.shape[0], *w.shape[1:]) if w.shape[0] < strip else w[:0]
        tiles.append(torch.cat(list(torch.cat([w, pad])), dim=-1))
    ax.imshow(to_uint8(torch.cat(tiles, dim=-2)))
    size = rows[0][1]["windows"].shape[-1]
    ax.set_yticks([size * (r + 0.5) for r in range(len(rows))], [n for n, _ in rows], fontsize=7)
    ax.set_xticks([])
    return save_figure(fig, path)


def main(args: list[str]) -> int:
    from fast_lightning.data.datamodule import AnomalyDataModule
    from fast_lightning.evaluation.fidelity import STATS, compare_sets, defect_windows
    from fast_lightning.runs import atomic_write_json, atomic_write_text
    from fast_lightning.synthesis import SynthesisError
    from fast_lightning.synthesis.registry import build_seg_synthesizer, synth_parts

    opts, rest = pop_options(args, {"synths": "fast,draem,cutpaste", "n": 64, "size": 32, "steps": 150,
                                    "folds": 2, "per_type": "true", "control": "true", "probe": 0, "seed": 0,
                                    "out": ""})
    n, size, steps, folds = int(opts["n"]), int(opts["size"]), int(opts["steps"]), int(opts["folds"])
    probe_steps = int(opts["probe"])
    if n < folds or size < 8 or steps < 1 or folds < 2 or probe_steps < 0:
        raise UserError(f"fidelity needs n >= folds >= 2, size >= 8, steps >= 1 and probe >= 0; got n={n}, "
                        f"folds={folds}, size={size}, steps={steps}, probe={probe_steps}")
    names = [s.strip() for s in str(opts["synths"]).split(",") if s.strip()]
    if str(opts["control"]).lower() == "true" and CONTROL not in names:
        names.append(CONTROL)
    cfg = config_from_args(rest + ["synthesis.seg_buffer_size=0"])  # every pair fresh, none drawn twice
    out = Path(str(opts["out"]) or f"reports/{cfg.class_name}")
    start = time.time()
    dm = AnomalyDataModule(cfg)
    dm.setup()
    type_names = list(dm.split.types)
    gen_train = dm.labelled_dataset("generator_train")
    r_images, r_masks = gen_train.stacked()
    labels = [rec.label for rec in dm.split.generator_train]
    rw, rm, kept = defect_windows(list(r_images), list(r_masks), size=size)
    if len(kept) < folds:
        raise UserError(f"{cfg.class_name}: only {len(kept)} generator-train defect(s) with a mask; the "
                        f"classifier test needs at least folds={folds}")
    real = {"windows": rw, "masks": rm, "types": [labels[i] for i in kept], "areas": _areas(r_masks, kept),
            "fine_texture": _fine_texture(r_images, r_masks, kept)}
    normals = dm.normal_dataset()
    sets, timing, probes = {}, {}, {}
    for name in names:
        try:
            synth_parts(name)
            synth = build_seg_synthesizer(name, cfg, dm)
        except SynthesisError as exc:
            raise UserError(f"fidelity, synthesizer {name!r}: {exc}") from exc
        got = gather(synth, normals, n, int(cfg.segmentation.optim.batch_size), int(opts["seed"]), type_names)
        w, m, k = defect_windows(got["images"], got["masks"], size=size)
        sets[name] = {"windows": w, "masks": m, "types": None if got["types"] is None else [got["types"][i] for i in k],
                      "areas": _areas(got["masks"], k), "fine_texture": _fine_texture(got["images"], got["masks"], k)}
        timing[name] = {"seconds": round(got["seconds"], 1), "nfe_per_image": got["nfe_per_image"]}
        print(f"fidelity: {name}: {w.shape[0]} defect windows in {got['seconds']:.0f} s")
        if probe_steps:
            probes[name] = probe(cfg, name, got, type_names, probe_steps, int(opts["seed"]))
            print(f"fidelity: {name}: probe val pixel AP {probes[name]['val_pixel_ap']:.4f} after {probe_steps} "
                  f"steps ({probes[name]['seconds']:.0f} s)")
    results = compare_sets(real, sets, seed=int(opts["seed"]), c2st_steps=steps, folds=folds,
                           per_type_c2st=str(opts["per_type"]).lower() == "true")
    for name in results:
        results[name].update(timing[name])
        if name in probes:
            results[name]["probe"] = probes[name]
            for t, entry in results[name]["per_type"].items():  # the rank tool reads measures per type entry
                entry["probe_val_ap"] = probes[name]["val_pixel_ap"] if t == "all" else probes[name]["val_per_type"].get(t)
    report = {"class_name": str(cfg.class_name), "data_root": str(cfg.data_root), "profile": str(cfg.profile),
              "checkpoint": str(cfg.synthesis.ckpt) if "fast" in names else None,
              "working_size": list(dm.working_size), "window_px": size, "n_per_synthesizer": n,
              "classifier": {"steps": steps, "folds": folds, "seed": int(opts["seed"])}, "probe_steps": probe_steps,
              "stats": list(STATS),
              "control": CONTROL if CONTROL in names else None, "real_windows": int(rw.shape[0]),
              "synthesizers": results}
    report["seconds"] = round(time.time() - start, 1)
    plot(report, real, sets, out / "fidelity.png")
    atomic_write_json(out / "fidelity.json", report)
    atomic_write_text(out / "fidelity.md", markdown(report))
    for name, res in results.items():
        whole = res["per_type"]["all"]
        print(f"  {name:<12} C2ST AUROC {res['score']:.3f}  defect {whole.get('c2st_defect_auroc', float('nan')):.3f}  "
              f"W1/std {whole['w1_norm_mean']:.3f}  W1 log10 area {whole.get('w1_log_area', float('nan')):.3f}  "
              f"W1 fine texture {whole.get('w1_fine_texture', float('nan')):.3f}"
              + (f"  probe val AP {whole['probe_val_ap']:.4f}" if whole.get("probe_val_ap") is not None else ""))
    print(f"fidelity: {out / 'fidelity.md'} (+ .json, .png) in {report['seconds']:.0f} s")
    return 0
