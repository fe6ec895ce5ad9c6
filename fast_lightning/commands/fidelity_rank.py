"""`make fidelity-rank`: does the fidelity score predict the benchmark's pixel AP? Spearman per class,
synthesizer and type (evaluation/rank_correlation.py) -> reports/fidelity_rank.{json,md}.

Options (key=value, comma-separated lists): runs= benchmark.json files and/or segmenter run folders
(default reports/benchmark.json), csv= comparison.csv files (reports/<class>/comparison.csv, overall AP only),
fidelity= fidelity.json files (default reports/*/fidelity.json), out=reports. A ``@tag`` after a runs=, csv= or
fidelity= path renames its synthesizers to ``<name>@<tag>``, so two models' rows (e.g. the pool of a 900- and
of a 2700-step diffusion model, both ``fast_cached``) stay apart: ``runs=a/benchmark.json,b/benchmark.json@2700``.
"""

from __future__ import annotations

import json
from pathlib import Path

from fast_lightning.commands.arguments import pop_options
from fast_lightning.errors import UserError


def _tagged(text: str) -> list[tuple[Path, str]]:
    """(path, tag) per comma-separated ``path[@tag]``; a tag has no ``/`` (so a folder named a@b stays whole)."""
    out = []
    for item in (p.strip() for p in str(text or "").split(",")):
        if not item:
            continue
        head, at, tag = item.rpartition("@")
        out.append((Path(head), tag) if at and tag and "/" not in tag and head else (Path(item), ""))
    return out


def _retag(table: dict[tuple, float], tag: str) -> dict[tuple, float]:
    return {(k[0], f"{k[1]}@{tag}", *k[2:]) if tag else k: v for k, v in table.items()}


def run_folders(items: list[Path]) -> list[Path]:
    """Segmenter run folders from benchmark.json files (their ``classes.*.runs``) and folders given as is.

    A run a benchmark.json lists but whose folder has no metrics.json any more (deleted, or a checkout without
    runs/) is left out with a line naming it, so the other seeds still count; a folder given as is must exist."""
    runs = []
    for p in items:
        if p.is_file() and p.suffix == ".json":
            data = json.loads(p.read_text())
            for r in (Path(r) for c in (data.get("classes") or {}).values() for r in c.get("runs", [])):
                if (r / "metrics.json").is_file():
                    runs.append(r)
                else:
                    print(f"fidelity-rank: {r} (listed in {p}) has no metrics.json; its run is left out of the "
                          f"means (or pass the report's csv= instead)")
        elif (p / "metrics.json").is_file():
            runs.append(p)
        else:
            raise UserError(f"runs: {p} is neither a benchmark.json nor a run folder with metrics.json")
    return runs


def main(args: list[str]) -> int:
    from fast_lightning.evaluation.rank_correlation import (
        ap_from_csv,
        ap_from_runs,
        correlate,
        fidelity_scores,
        markdown,
    )
    from fast_lightning.runs import atomic_write_json, atomic_write_text

    opts, rest = pop_options(args, {"runs": "", "csv": "", "fidelity": "", "out": "reports"})
    if rest:
        raise UserError(f"fidelity-rank takes runs=, csv=, fidelity=, out=; got {' '.join(rest)}")
    out = Path(str(opts["out"]))
    runs_in = _tagged(opts["runs"]) or [(p, "") for p in [out / "benchmark.json"] if p.is_file()]
    fid = _tagged(opts["fidelity"]) or [(p, "") for p in sorted(out.glob("*/fidelity.json"))]
    csvs = _tagged(opts["csv"])
    missing = [str(p) for p, _ in [*runs_in, *csvs, *fid] if not p.exists()]
    if missing:
        raise UserError(f"fidelity-rank: not found: {', '.join(missing)}")
    if not fid or not (runs_in or csvs):
        raise UserError("fidelity-rank needs fidelity.json files (make fidelity) and benchmark runs or comparison "
                        f"CSVs (make benchmark / make compare); found {len(fid)} fidelity report(s) under {out}")
    by_tag: dict[str, list[Path]] = {}  # runs of one tag average together (seeds spread over several files)
    for path, tag in runs_in:
        by_tag.setdefault(tag, []).append(path)
    ap = {}
    for tag, paths in by_tag.items():
        ap.update(_retag(ap_from_runs(run_folders(paths)), tag))
    for path, tag in csvs:
        ap.update({k: v for k, v in _retag(ap_from_csv(path), tag).items() if k not in ap})
    scores: dict[str, dict[tuple, float]] = {}
    for path, tag in fid:
        for measure, table in fidelity_scores([json.loads(path.read_text())]).items():
            scores.setdefault(measure, {}).update(_retag(table, tag))
    result = correlate(ap, scores)
    named = lambda pairs: [f"{p}@{t}" if t else str(p) for p, t in pairs]  # noqa: E731
    atomic_write_json(out / "fidelity_rank.json", {"fidelity": named(fid), "runs": named(runs_in),
                                                   "csv": named(csvs), "result": result})
    atomic_write_text(out / "fidelity_rank.md", markdown(result))
    print(markdown(result))
    print(f"fidelity-rank: {out / 'fidelity_rank.md'} (+ .json)")
    return 0
