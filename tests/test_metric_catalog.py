"""Metrics are declared once (evaluation.catalog.METRICS): adding one = one entry + its computation, and it then
appears in SegmentationMetrics, the per-type metrics, the logged/stored run metrics and the compare report."""

import csv
import math

import pytest

from conftest import smoke_compare_args
import torch

from fast_lightning.evaluation import catalog
from fast_lightning.evaluation.aupro import aupro
from fast_lightning.evaluation.metrics import SegmentationMetrics, per_type_metrics

TOY = catalog.Metric("toy_mean_prob", "mean prob", higher_is_better=False, per_type=True,
                     compute=lambda probs, masks, thr: float(probs.mean()))


@pytest.fixture
def toy_metric(monkeypatch):
    monkeypatch.setattr(catalog, "METRICS", [*catalog.METRICS, TOY])  # the one new definition


def _maps(seed=0, n=4, size=16):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(n, 1, size, size, generator=g)
    masks = torch.zeros(n, 1, size, size)
    masks[:2, :, 4:9, 3:7] = 1
    return probs, masks


def test_aupro_is_computed_inside_segmentation_metrics():
    probs, masks = _maps()
    m = SegmentationMetrics()
    m.update(probs[:2], masks[:2])
    m.update(probs[2:], masks[2:])  # accumulated over updates like every other metric
    assert m.compute()["aupro"] == aupro(probs, masks)


def test_every_declared_metric_is_computed_and_reported_by_name():
    probs, masks = _maps()
    m = SegmentationMetrics()
    m.update(probs, masks)
    assert set(catalog.metric_names()) <= set(m.compute())
    assert set(catalog.report_names()) <= set(catalog.metric_names())
    assert "iou_threshold" not in catalog.report_names()  # a threshold is not a score


def test_a_toy_metric_is_computed_per_set_and_per_type(toy_metric):
    probs, masks = _maps()
    m = SegmentationMetrics()
    m.update(probs, masks)
    assert m.compute()["toy_mean_prob"] == pytest.approx(float(probs.mean()))
    per_type = per_type_metrics(probs, masks, ["crack", "crack", "good", "good"], 0.5)
    assert per_type["crack"]["toy_mean_prob"] == pytest.approx(float(probs.mean()))  # crack + all good images
    assert "toy_mean_prob" in catalog.report_names() and "toy_mean_prob" in catalog.per_type_names()


def test_lower_is_better_metrics_bold_the_smallest_mean(toy_metric):
    from fast_lightning.evaluation.reports import markdown_table

    agg = {"a": {"toy_mean_prob": (0.2, 0.0, 1)}, "b": {"toy_mean_prob": (0.7, 0.0, 1)}}
    table = markdown_table(agg, "synth", ["toy_mean_prob"])
    assert "**0.200**" in table and "**0.700**" not in table and "mean prob" in table


@pytest.mark.slow
def test_a_toy_metric_appears_in_a_smoke_compare_report(toy_metric, data_root, tmp_path):
    from fast_lightning.commands import compare
    from fast_lightning.evaluation.reports import read_metrics

    out = tmp_path / "reports"
    assert compare.main(smoke_compare_args(data_root, tmp_path / "runs", out, "cutpaste")) == 0
    with open(out / "comparison.csv") as f:
        (row,) = list(csv.DictReader(f))
    (run_dir,) = [p for p in (tmp_path / "runs" / "seg" / "widget").iterdir() if not p.is_symlink()]
    m = read_metrics(run_dir)
    assert 0.0 <= m["test"]["toy_mean_prob"] <= 1.0 and not math.isnan(m["val"]["toy_mean_prob"])
    assert float(row["toy_mean_prob_mean"]) == pytest.approx(m["test"]["toy_mean_prob"], abs=1e-6)
    md = (out / "comparison.md").read_text()
    assert "mean prob" in md.splitlines()[[i for i, l in enumerate(md.splitlines()) if l.startswith("| synthesizer")][0]]
    assert "**mean prob per defect type**" in md
