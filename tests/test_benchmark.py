"""`benchmark`: targets evaluated from seed aggregates, and a smoke-profile run on the fake class."""

from __future__ import annotations

import json

import pytest

from fast_lightning.errors import UserError
from fast_lightning.commands import benchmark
from fast_lightning.evaluation.catalog import headline_names


def _agg(**means):
    """synth -> {metric: (mean, std, n)} with the same mean for AP and IoU, std 0.01, 3 seeds."""
    return {s: {m: (v, 0.01, 3) for m in headline_names()} for s, v in means.items()}


def test_targets_met_and_not_met():
    met = benchmark.evaluate_targets(_agg(fast=0.30, draem=0.10, cutpaste=0.20, real_third=0.40,
                                          **{"real_third+fast": 0.45}))
    assert {k: v["status"] for k, v in met.items()} == {
        "fast_beats_baselines_pixel_ap": "met", "fast_beats_baselines_iou": "met",
        "fast_reaches_70pct_real": "met", "real_plus_fast_beats_real": "met"}
    # within one std of the better baseline; below 70% of real; the mix does not help
    bad = benchmark.evaluate_targets(_agg(fast=0.205, draem=0.10, cutpaste=0.20, real_third=0.40,
                                          **{"real_third+fast": 0.39}))
    assert bad["fast_beats_baselines_pixel_ap"]["status"] == "not met"
    assert bad["fast_reaches_70pct_real"]["status"] == "not met"
    assert bad["real_plus_fast_beats_real"]["status"] == "not met"
    assert benchmark.evaluate_targets(_agg(draem=0.1))["fast_reaches_70pct_real"]["status"] == "n/a"
    # the pooled FAST row (the default suite) is the one the targets read when present
    pooled = benchmark.evaluate_targets(_agg(fast=0.05, fast_cached=0.30, draem=0.10, cutpaste=0.20, real_third=0.40,
                                             **{"real_third+fast_cached": 0.45, "real_third+fast": 0.1}))
    assert {v["status"] for v in pooled.values()} == {"met"}
    assert pooled["real_plus_fast_beats_real"]["detail"].startswith("real_third+fast_cached 0.4500")


def test_parse_classes():
    assert benchmark.parse_classes("tire@a/b, mt") == [("tire", "a/b"), ("mt", "")]
    with pytest.raises(UserError, match="CLASSES"):
        benchmark.parse_classes(" , ")


def test_benchmark_smoke(fake_mvtec, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "reports"
    args = ["profile=smoke", f"run_root={tmp_path / 'runs'}", f"classes=widget@{fake_mvtec}",
            "synths=draem,cutpaste", "seeds=1", f"out={out}"]
    assert benchmark.main(args) == 0
    for name in ("benchmark.md", "benchmark.csv", "benchmark.png", "benchmark.json", "benchmark_widget_samples.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "benchmark.json").read_text())
    targets = result["classes"]["widget"]["targets"]
    assert targets["fast_reaches_70pct_real"]["status"] == "n/a"  # no fast / real_third in this smoke suite
    assert set(result["classes"]["widget"]["aggregate"]) == {"draem", "cutpaste"}
    md = (out / "benchmark.md").read_text()
    assert "## widget" in md and "targets:" in md and "wall time" in md
    # a second run reuses the finished runs
    capsys.readouterr()
    assert benchmark.main(args) == 0
    assert capsys.readouterr().out.count("[reuse] train-seg") == 2
