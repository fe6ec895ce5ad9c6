"""SegmentationMetrics against a case small enough to compute by hand."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

import fast_lightning  # noqa: F401
from fast_lightning.evaluation import SegmentationMetrics, best_threshold

# Three 2x2 images (pixel order row-major):
#   A: probs [.9, .6, .3, .1]   target [1, 1, 0, 0]    image score .9, label 1
#   B: probs [.7, .2, .2, .0]   target [0, 0, 0, 0]    image score .7, label 0  (defect-free)
#   C: probs [.5, .4, .05, .05] target [0, 1, 0, 0]   image score .5, label 1
# Positives: .9 .6 .4 (3); negatives: .3 .1 .7 .2 .2 .0 .5 .05 .05 (9).
# pixel AUROC = P(pos > neg): .9 beats 9, .6 beats 8 (not .7), .4 beats 7 (not .7/.5) -> 24/27 = 0.888...
# Descending: .9P .7N .6P .5N .4P .3N ...  PR points (TP, FP) -> (P, R):
#   t=.9 (1,0) -> (1, 1/3)   t=.7 (1,1) -> (1/2, 1/3)   t=.6 (2,1) -> (2/3, 2/3)
#   t=.5 (2,2) -> (1/2, 2/3) t=.4 (3,2) -> (3/5, 1)     lower thresholds: R=1, P<3/5
# AP = sum dR * P = 1/3*1 + 1/3*2/3 + 1/3*3/5 = 0.755...
# F1: .9 -> .5, .7 -> .4, .6 -> 2/3, .5 -> 4/7, .4 -> .75, .3 -> 2/3  => best F1 .75 at threshold .4
# threshold .5 (p >= .5 is anomalous): TP {.9,.6}=2, FP {.7,.5}=2, FN {.4}=1 -> IoU 2/5, Acc (recall) 2/3
# threshold .4: TP 3, FP 2, FN 0 -> IoU 3/5, Acc 1
# image AUROC: positive images A(.9), C(.5) vs negative B(.7): A>B yes, C>B no -> 1/2
PROBS = torch.tensor([[0.9, 0.6, 0.3, 0.1], [0.7, 0.2, 0.2, 0.0], [0.5, 0.4, 0.05, 0.05]]).view(3, 1, 2, 2)
TARGET = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.float32).view(3, 1, 2, 2)


def _metrics(batches=((PROBS, TARGET),)) -> SegmentationMetrics:
    m = SegmentationMetrics()
    for p, t in batches:
        m.update(p, t)
    return m


def test_hand_computed_values():
    out = _metrics().compute()
    assert out["pixel_auroc"] == pytest.approx(24 / 27)
    assert out["pixel_ap"] == pytest.approx(1 / 3 + 2 / 9 + 1 / 5)
    assert out["pixel_f1_max"] == pytest.approx(0.75)
    assert out["pixel_f1_max_threshold"] == pytest.approx(0.4)
    assert out["iou"] == pytest.approx(2 / 5)
    assert out["miou"] == pytest.approx(2 / 5)
    assert out["acc"] == pytest.approx(2 / 3)
    assert out["image_auroc"] == pytest.approx(0.5)
    assert out["iou_threshold"] == 0.5
    assert all(isinstance(v, float) for v in out.values())


def test_threshold_argument_and_no_stale_cache():
    m = _metrics()
    at_04 = m.compute(threshold=0.4)
    assert at_04["iou"] == pytest.approx(3 / 5) and at_04["acc"] == pytest.approx(1.0)
    assert m.compute()["iou"] == pytest.approx(2 / 5)  # a second compute with another threshold is not cached
    assert best_threshold(PROBS, TARGET) == pytest.approx(0.4)
    assert m.best_threshold() == pytest.approx(0.4)


def test_matches_torchmetrics_and_accumulates_across_batches():
    m = _metrics([(PROBS[:1], TARGET[:1]), (PROBS[1:], TARGET[1:])])
    out = m.compute()
    flat_p, flat_t = PROBS.flatten(), TARGET.flatten().long()
    assert out["pixel_auroc"] == pytest.approx(float(binary_auroc(flat_p, flat_t)))
    assert out["pixel_ap"] == pytest.approx(float(binary_average_precision(flat_p, flat_t)))
    assert out == pytest.approx(_metrics().compute())


def test_logits_and_bad_shapes_rejected():
    m = SegmentationMetrics()
    with pytest.raises(ValueError, match="logits"):
        m.update(PROBS * 6 - 3, TARGET)
    with pytest.raises(ValueError, match="shape"):
        m.update(PROBS, TARGET[:, :, :1])
    with pytest.raises(ValueError, match="0, 1"):
        m.update(PROBS, TARGET * 2)


def test_all_negative_target_gives_nan_and_warning():
    m = _metrics([(PROBS, torch.zeros_like(TARGET))])
    with pytest.warns(RuntimeWarning) as record:
        out = m.compute()
    messages = " ".join(str(w.message) for w in record)
    assert "no anomalous pixel" in messages and "image_auroc" in messages
    for key in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "acc", "image_auroc"):
        assert math.isnan(out[key]), key
    assert out["iou"] == 0.0  # false alarms on defect-free images are still counted: TP/(TP+FP+FN) = 0/FP


def test_good_images_only_add_false_positives():
    clean_good = (torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = _metrics([(PROBS[:1], TARGET[:1])]).compute()
        more = _metrics([(PROBS[:1], TARGET[:1]), clean_good]).compute()
    assert more["iou"] == base["iou"] == 1.0  # A alone at 0.5: TP 2, FP 0, FN 0
    noisy_good = (torch.full((1, 1, 2, 2), 0.8), torch.zeros(1, 1, 2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        worse = _metrics([(PROBS[:1], TARGET[:1]), noisy_good]).compute()
    assert worse["iou"] == pytest.approx(2 / 6)  # 4 false positives on the good image


def test_compute_before_update_raises():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="before any update"):
            SegmentationMetrics().compute()
