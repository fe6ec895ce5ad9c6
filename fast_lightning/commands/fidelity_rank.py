"""`make fidelity-rank`: does the fidelity score predict the benchmark's pixel AP? Spearman per class,
synthesizer and type (evaluation/rank_correlation.py) -> reports/fidelity_rank.{json,md}.

Options (key=value, comma-separated lists): runs= benchmark.json files and/or segmenter run folders
(default reports/benchmark.json), csv= comparison.csv files (reports/<class>/comparison.csv, overall AP only),
fidelity= fidelity.json files (default reports/*/fidelity.json), out=reports.
"""

from __future__ import annotations

import json
from pathlib import Path

from fast_lightning.commands.arguments import pop_options
from fast_lightning.errors import UserError


def _paths(text: str) -> list[Path]:
    return [Path(p.strip()) for p in str(text or "").split(",") if p.strip()]


def run_folders(items: list[Path]) -> list[Path]:
    """Segmenter run folders from benchmark.json files (their ``classes.*.runs``) and folders given as is."""
    runs = []
    for p in items:
        if p.is_file() and p.suffix == ".json":
            data = json.loads(p.read_text())
            runs += [Path(r) for c in (data.get("classes") or {}).values() for r in c.get("runs", [])]
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
    runs_in = _paths(opts["runs"]) or [p for p in [out / "benchmark.json"] if p.is_file()]
    fid = _paths(opts["fidelity"]) or sorted(out.glob("*/fidelity.json"))
    missing = [str(p) for p in [*runs_in, *_paths(opts["csv"]), *fid] if not p.exists()]
    if missing:
        raise UserError(f"fidelity-rank: not found: {', '.join(missing)}")
    if not fid or not (runs_in or opts["csv"]):
        raise UserError("fidelity-rank needs fidelity.json files (make fidelity) and benchmark runs or comparison "
                        f"CSVs (make benchmark / make compare); found {len(fid)} fidelity report(s) under {out}")
    ap = ap_from_runs(run_folders(runs_in))
    for path in _paths(opts["csv"]):
        ap.update({k: v for k, v in ap_from_csv(path).items() if k not in ap})
    result = correlate(ap, fidelity_scores(json.loads(p.read_text()) for p in fid))
    atomic_write_json(out / "fidelity_rank.json", {"fidelity": [str(p) for p in fid], "runs": [str(p) for p in runs_in],
                                                   "csv": [str(p) for p in _paths(opts["csv"])], "result": result})
    atomic_write_text(out / "fidelity_rank.md", markdown(result))
    print(markdown(result))
    print(f"fidelity-rank: {out / 'fidelity_rank.md'} (+ .json)")
    return 0
