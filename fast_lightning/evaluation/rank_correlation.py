"""Does the fidelity score predict downstream pixel AP? Spearman rank correlation between the two.

Why: a fidelity score is only worth steering by if it ranks synthesizers (and defect types) the way the
benchmark does. Inputs are what the project already writes: segmenter run folders (``metrics.json``: class,
synthesizer, test pixel AP overall and per type; ``benchmark.json`` lists them), ``comparison.csv`` of
`make compare` (reports/<class>/, overall only) and ``fidelity.json`` of `make fidelity`. Pairs are matched on
(class, synthesizer[, type]); AP is the mean over seeds. For the realism measures a NEGATIVE rho means the score
predicts AP (lower classifier AUROC / distance = more realistic = higher AP); for the probe (``probe_val_ap``: a
short segmenter run's pixel AP on the real validation defects, higher = better) a POSITIVE rho does
(``HIGHER_IS_BETTER``). Pure python + numpy.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

__all__ = ["rankdata", "spearman", "ap_from_runs", "ap_from_csv", "fidelity_scores", "correlate", "MEASURES"]

MEASURES = ("c2st_auroc", "c2st_defect_auroc", "w1_norm_mean", "w1_log_area", "w1_fine_texture", "probe_val_ap")
HIGHER_IS_BETTER = frozenset({"probe_val_ap"})  # the sign of rho that means "predicts AP" flips for these


def rankdata(x: Iterable[float]) -> np.ndarray:
    """Ranks 1..n, ties get their average rank."""
    x = np.asarray(list(x), float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x: Iterable[float], y: Iterable[float]) -> float:
    """Pearson correlation of the ranks; nan for fewer than 3 pairs or a constant side."""
    x, y = list(x), list(y)
    if len(x) != len(y):
        raise ValueError(f"spearman needs pairs, got {len(x)} and {len(y)} values")
    if len(x) < 3:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _put(table: dict, key: tuple, value) -> None:
    if value is not None and not (isinstance(value, float) and math.isnan(value)):
        table.setdefault(key, []).append(float(value))


def ap_from_runs(run_dirs: Iterable[str | Path]) -> dict[tuple, float]:
    """Mean test pixel AP per (class, synth) and per (class, synth, type) over the runs' metrics.json."""
    values: dict[tuple, list[float]] = {}
    for run in run_dirs:
        m = json.loads((Path(run) / "metrics.json").read_text())
        key = (str(m["class_name"]), str(m["synthesizer"]))
        _put(values, key, (m.get("test") or {}).get("pixel_ap"))
        for t, v in (m.get("test_per_type") or {}).items():
            _put(values, key + (str(t),), (v or {}).get("pixel_ap"))
    return {k: float(np.mean(v)) for k, v in values.items() if v}


def ap_from_csv(path: str | Path, class_name: str | None = None) -> dict[tuple, float]:
    """(class, synth) -> pixel_ap_mean of a comparison.csv (class = its folder name unless given) or of a
    benchmark.csv (rows keyed ``class:synthesizer``), so a committed report can stand in for its run folders."""
    path = Path(path)
    out = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("pixel_ap_mean") in (None, "", "nan"):
                continue
            if "class:synthesizer" in row:
                cls, _, synth = row["class:synthesizer"].partition(":")
            else:
                cls, synth = class_name or path.parent.name, row["synthesizer"]
            out[(cls, synth)] = float(row["pixel_ap_mean"])
    return out


def fidelity_scores(reports: Iterable[Mapping]) -> dict[str, dict[tuple, float]]:
    """measure -> {(class, synth): value, (class, synth, type): value} from fidelity.json contents."""
    out: dict[str, dict[tuple, float]] = {m: {} for m in MEASURES}
    for rep in reports:
        cls = str(rep["class_name"])
        for synth, res in rep["synthesizers"].items():
            for t, entry in res["per_type"].items():
                key = (cls, synth) if t == "all" else (cls, synth, t)
                for m in MEASURES:
                    v = entry.get(m)
                    if v is not None and not math.isnan(v):
                        out[m][key] = float(v)
    return out


def _row(pairs: list[tuple[tuple, float, float]], higher_is_better: bool = False) -> dict:
    rho = spearman([p[1] for p in pairs], [p[2] for p in pairs])
    predicts = (rho > 0 if higher_is_better else rho < 0) if not math.isnan(rho) else None
    return {"n": len(pairs), "rho": rho, "predicts_ap": predicts,
            "pairs": [{"key": list(k), "score": s, "pixel_ap": a} for k, s, a in pairs]}


def correlate(ap: Mapping[tuple, float], scores: Mapping[str, Mapping[tuple, float]],
              exclude: Iterable[str] = ("real_third",)) -> dict:
    """Per measure: Spearman rho over all (class, synth) pairs, per class, over all (class, synth, type)
    pairs, per class over its (synth, type) pairs and per synthesizer (its classes x types). Synthesizers in
    ``exclude`` (the real-label control; ``name@tag`` variants too) and keys missing on either side are left out."""
    skip = set(exclude)
    out = {}
    for measure, table in scores.items():
        keys = [k for k in table if k in ap and k[1].partition("@")[0] not in skip]  # name@tag: a variant
        overall = sorted((k, table[k], ap[k]) for k in keys if len(k) == 2)
        typed = sorted((k, table[k], ap[k]) for k in keys if len(k) == 3)
        row = lambda pairs: _row(pairs, measure in HIGHER_IS_BETTER)  # noqa: E731
        res = {"overall": row(overall), "per_type_pairs": row(typed), "per_class": {}, "per_class_types": {},
               "per_synthesizer": {}}
        for cls in sorted({k[0] for k in keys}):
            res["per_class"][cls] = row([p for p in overall if p[0][0] == cls])
            # within one class, its (synthesizer, type) pairs: the steering question, free of the between-class
            # effect that dominates the pooled rows
            res["per_class_types"][cls] = row([p for p in typed if p[0][0] == cls])
        for synth in sorted({k[1] for k, _, _ in typed}):
            res["per_synthesizer"][synth] = row([p for p in typed if p[0][1] == synth])
        # per (class, type), across synthesizers: does the score pick the better synthesizer FOR a type? Free of
        # type difficulty, which the (synthesizer, type) pairs share with every score; "mean" averages the rhos
        within = {f"{c}/{t}": row([p for p in typed if p[0][0] == c and p[0][2] == t])
                  for c, t in sorted({(k[0], k[2]) for k, _, _ in typed})}
        rhos = [r["rho"] for r in within.values() if not math.isnan(r["rho"])]
        res["per_type_across_synthesizers"] = {"mean_rho": float(np.mean(rhos)) if rhos else float("nan"),
                                               "n_types": len(rhos), "types": within}
        out[measure] = res
    return out


def markdown(result: Mapping) -> str:
    def f(r):
        return "n/a" if math.isnan(r["rho"]) else f"{r['rho']:+.2f}"

    lines = ["# Fidelity score vs downstream pixel AP (Spearman rank correlation)", "",
             "rho < 0: the score predicts AP (lower = more realistic = higher AP); for `probe_val_ap` (a short "
             "segmenter run's AP on the real validation defects) rho > 0 does. n = matched pairs; fewer than "
             "3 pairs give n/a.", ""]
    for measure, res in result.items():
        lines += [f"## {measure}", "", "| group | n | rho |", "|---|---|---|",
                  f"| all (class, synthesizer) | {res['overall']['n']} | {f(res['overall'])} |",
                  f"| all (class, synthesizer, type) | {res['per_type_pairs']['n']} | {f(res['per_type_pairs'])} |"]
        lines += [f"| class {c} | {r['n']} | {f(r)} |" for c, r in res["per_class"].items()]
        lines += [f"| class {c} (synthesizer, type) | {r['n']} | {f(r)} |"
                  for c, r in res.get("per_class_types", {}).items()]
        lines += [f"| synthesizer {s} (per type) | {r['n']} | {f(r)} |" for s, r in res["per_synthesizer"].items()]
        across = res.get("per_type_across_synthesizers") or {}
        if across.get("n_types"):
            lines.append(f"| each (class, type) across synthesizers: mean rho over {across['n_types']} types | "
                         f"{across['n_types']} | {f({'rho': across['mean_rho']})} |")
        lines.append("")
    return "\n".join(lines)
