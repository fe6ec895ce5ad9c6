"""Comparison tables (mean and spread over seeds), bar plots and sample sheets for reports/.

Everything is written atomically; numbers come from the runs' metrics.json files (real-test split). Which
metrics, their labels and directions: ``evaluation.catalog`` (``metrics=None`` = its report columns).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Sequence

import torch

from fast_lightning import tables
from fast_lightning.evaluation import catalog
from fast_lightning.evaluation.plots import save_figure, save_grid
from fast_lightning.runs import atomic_write_text



def read_metrics(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan"), 0
    mean = sum(vals) / len(vals)
    std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
    return mean, std, len(vals)


def aggregate(rows: list[dict], group_key: str, metrics: Sequence[str] | None = None) -> dict[str, dict]:
    """rows: {group_key: name, 'test': {metric: value}} -> name -> metric -> (mean, std, n)."""
    metrics = catalog.report_names() if metrics is None else metrics
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(row[group_key]), []).append(row)
    return {name: {m: _mean_std([(r.get("test") or {}).get(m) for r in rs]) for m in metrics}
            for name, rs in groups.items()}


def aggregate_per_type(rows: list[dict], group_key: str, metric: str = "pixel_ap") -> dict[str, dict]:
    """rows: {group_key: name, 'metrics': metrics.json} -> name -> defect type -> (mean, std, n) of ``metric``.

    Uses each run's ``test_per_type`` block; runs written before it existed contribute nothing.
    """
    groups: dict[str, list[dict]] = {}
    for row in rows:
        per_type = (row.get("metrics") or {}).get("test_per_type") or {}
        groups.setdefault(str(row[group_key]), []).append(per_type)
    types = sorted({t for runs in groups.values() for pt in runs for t in pt})
    return {name: {t: _mean_std([(pt.get(t) or {}).get(metric) for pt in runs]) for t in types}
            for name, runs in groups.items()}


def _fmt(mean: float, std: float, n: int) -> str:
    if n == 0:
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"


def markdown_table(agg: dict[str, dict], first_col: str, metrics: Sequence[str] | None = None,
                   higher_is_better: bool | None = None) -> str:
    """Mean ± std per group and metric (``tables.markdown_table``); the best mean per column in bold (best by the
    catalog's direction of each metric, or ``higher_is_better`` for columns that are not metrics, e.g. types)."""
    metrics = catalog.report_names() if metrics is None else metrics

    def best_of(m):
        up = catalog.higher_is_better(m) if higher_is_better is None else higher_is_better
        means = [v[m][0] for v in agg.values() if v[m][2]]
        return None if up is None or not means else (max(means) if up else min(means))

    best = {m: best_of(m) for m in metrics}
    rows = []
    for name, vals in agg.items():
        cells = []
        for m in metrics:
            cell = _fmt(*vals[m])
            if vals[m][2] and best[m] is not None and vals[m][0] == best[m] and len(agg) > 1:
                cell = f"**{cell}**"
            cells.append(cell)
        rows.append([name, *cells])
    return tables.markdown_table([first_col, *(catalog.label(m) for m in metrics)], rows)


def per_type_columns(agg: dict[str, dict]) -> list[str]:
    """The defect types present in a per-type aggregate (sorted)."""
    return sorted({t for vals in agg.values() for t in vals})


def per_type_sections(per_type: dict[str, dict[str, dict]], first_col: str) -> list[str]:
    """Markdown lines: one table of per-defect-type test values per metric; nothing when no run has them."""
    out: list[str] = []
    for metric, agg in per_type.items():
        columns = per_type_columns(agg)
        if not columns:
            continue
        out += [f"**{catalog.per_type_label(metric)} per defect type** (each type's test images + all defect-free "
                "test images; mean ± std over seeds)", "",
                markdown_table(agg, first_col, metrics=columns, higher_is_better=catalog.higher_is_better(metric)), ""]
    return out


def text_table(agg: dict[str, dict], first_col: str, metrics: Sequence[str] | None = None) -> str:
    """Mean ± std per group and metric for the console (``tables.text_table``)."""
    metrics = catalog.report_names() if metrics is None else metrics
    rows = [[name, *(_fmt(*vals[m]) for m in metrics)] for name, vals in agg.items()]
    return tables.text_table([first_col, *(catalog.label(m) for m in metrics)], rows, align="<>",
                             min_widths=[0] + [15] * len(metrics), rule="full")


def write_csv(agg: dict[str, dict], first_col: str, path: Path, metrics: Sequence[str] | None = None) -> Path:
    metrics = catalog.report_names() if metrics is None else metrics
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([first_col] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")] + ["n_runs"])
    for name, vals in agg.items():
        n = max(v[2] for v in vals.values())
        writer.writerow([name] + [f"{vals[m][i]:.6f}" for m in metrics for i in (0, 1)] + [n])
    return atomic_write_text(path, buf.getvalue())


def bar_plot(agg: dict[str, dict], path: Path, title: str, metrics: Sequence[str] | None = None) -> Path:
    """Grouped bars (mean ± std over seeds) per metric. Keys ``group:label`` (benchmark: ``class:synth``) get one
    panel per group, and a label keeps its colour in every panel so synthesizers compare at a glance."""
    metrics = catalog.report_names() if metrics is None else metrics
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[str]] = {}
    for name in agg:
        group, _, label = name.rpartition(":")
        groups.setdefault(group, []).append(label)
    labels = list(dict.fromkeys(label for members in groups.values() for label in members))
    colors = {label: plt.get_cmap("tab10")(k % 10) for k, label in enumerate(labels)}
    panel_w = max(6.0, 1.3 * len(metrics) + 2)
    fig, axes = plt.subplots(1, len(groups), figsize=(panel_w * len(groups), 4.2), squeeze=False, sharey=True)
    for ax, (group, members) in zip(axes[0], groups.items()):
        width = 0.8 / max(1, len(members))
        for i, label in enumerate(members):
            vals = agg[f"{group}:{label}" if group else label]
            means = [vals[m][0] for m in metrics]
            stds = [vals[m][1] if vals[m][2] > 1 else 0.0 for m in metrics]
            xs = [j + (i - (len(members) - 1) / 2) * width for j in range(len(metrics))]
            ax.bar(xs, [0 if math.isnan(v) else v for v in means], width, yerr=stds, capsize=3, label=label,
                   color=colors[label])
        ax.set_xticks(range(len(metrics)), [catalog.label(m) for m in metrics], rotation=15)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{title}: {group}" if group else title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test metric (real defects)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[label]) for label in labels]
    fig.legend(handles, labels, fontsize=8, ncol=min(6, len(labels)), loc="lower center")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return save_figure(fig, path)


def line_plot(xs: Sequence, series: dict[str, Sequence[float]], path: Path, title: str, xlabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    labels = [str(x) for x in xs]
    for name, ys in series.items():
        ax.plot(labels, ys, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test metric (real defects)")
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def outline(images: torch.Tensor, masks: torch.Tensor, color=(1.0, 0.1, 0.1)) -> torch.Tensor:
    """Draw each mask's boundary on its image (so a sheet shows where the defect is without hiding it)."""
    import torch.nn.functional as F

    img = images.detach().float().cpu().clone()
    if img.shape[1] == 1:
        img = img.expand(-1, 3, -1, -1).clone()
    m = (masks.detach().float().cpu() > 0.5).float()
    dil = F.max_pool2d(m, 3, 1, 1)
    ero = -F.max_pool2d(-m, 3, 1, 1)
    edge = (dil - ero).clamp(0, 1)
    col = torch.tensor(color).view(1, 3, 1, 1)
    return img * (1 - edge) + col * edge


def sample_sheet(rows: list[tuple[str, torch.Tensor, torch.Tensor]], path: Path, ncols: int = 6) -> Path:
    """One row per source: (title, images (N,C,H,W) [0,1], masks (N,1,H,W)); masks outlined in red."""
    tiles, titles = [], []
    for title, images, masks in rows:
        n = min(ncols, images.shape[0])
        shown = outline(images[:n], masks[:n])
        if n < ncols:
            shown = torch.cat([shown, torch.ones(ncols - n, 3, *shown.shape[-2:])])
        tiles.append(shown)
        titles.append(title)
    return save_grid(torch.cat(tiles), ncols, path, row_titles=titles)
