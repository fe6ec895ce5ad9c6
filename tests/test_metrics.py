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


# ---- AUPRO ------------------------------------------------------------------------------------------------------
import numpy as np  # noqa: E402

from fast_lightning.evaluation.metrics import aupro, per_type_metrics, pro_curve  # noqa: E402

# One 1x13 image: region A = pixels 0-1 (scores .9, .5), region B = pixel 3 (.7), ten defect-free pixels
# (.05 .8 .6 .4 .35 .3 .25 .2 .15 .1). Thresholds from the top (PRO = mean over the 2 regions):
#   .9: A half in -> PRO .25, FPR 0      .8: FPR .1       .7: B in -> PRO (.5 + 1)/2 = .75
#   .6: FPR .2                          .5: A full -> PRO 1      .4: FPR .3
# area over FPR [0, .3] = .1*.25 + .1*.75 + .1*1 = .2 -> AUPRO = .2/.3 = 2/3
# up to FPR .15 (interpolated inside the flat .75 step): (.025 + .05*.75)/.15 = 5/12
HAND_SCORES = np.array([[0.9, 0.5, 0.05, 0.7, 0.8, 0.6, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1]], np.float32)
HAND_MASK = np.array([[1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]], np.uint8)


def test_aupro_hand_computed():
    assert aupro(HAND_SCORES, HAND_MASK) == pytest.approx(2 / 3)
    assert aupro(HAND_SCORES, HAND_MASK, max_fpr=0.15) == pytest.approx(5 / 12)
    # the same pixels split over two (N,1,H,W) images give the same regions and the same value
    two = torch.from_numpy(np.stack([HAND_SCORES[:, :7], HAND_SCORES[:, 6:]])[:, None].copy())
    two_m = torch.from_numpy(np.stack([HAND_MASK[:, :7], np.zeros_like(HAND_MASK[:, 6:])])[:, None].copy())
    two[1, 0, 0, 0] = 0.01  # pixel 6 (.4) is in both halves: its copy becomes an extra negative below all others
    # now 11 negatives: .8 -> FPR 1/11, .6 -> 2/11, .4 -> 3/11, .35 -> 4/11 > .3; PRO steps as above
    # area to .3 = (1/11)*.25 + (1/11)*.75 + (1/11)*1 + (.3 - 3/11)*1
    expected = (0.25 / 11 + 0.75 / 11 + 1 / 11 + (0.3 - 3 / 11) * 1.0) / 0.3
    assert aupro(two, two_m) == pytest.approx(expected)


def test_aupro_properties():
    gt = np.zeros((2, 8, 8), np.uint8)
    gt[0, 1:4, 1:4] = 1
    gt[1, 5:7, 2:6] = 1
    assert aupro(gt.astype(np.float32), gt) == pytest.approx(1.0)  # perfect separation
    assert aupro(1.0 - gt.astype(np.float32), gt) == pytest.approx(0.0)  # every region scores below all negatives
    # constant scores: one threshold takes the curve from (0, 0) to (1, 1); the chord at FPR .3 gives .15
    assert aupro(np.full(gt.shape, 0.4, np.float32), gt) == pytest.approx(0.15)
    # random scores: PRO ~ FPR -> ~ .15 as well
    rng = np.random.default_rng(0)
    big = np.zeros((4, 64, 64), np.uint8)
    big[:, 10:30, 10:30] = 1
    assert aupro(rng.random(big.shape).astype(np.float32), big) == pytest.approx(0.15, abs=0.02)
    # scores scaled monotonically do not change the value
    s = rng.random(gt.shape).astype(np.float32)
    assert aupro(s, gt) == pytest.approx(aupro(s**2, gt))
    with pytest.warns(RuntimeWarning, match="aupro"):
        assert math.isnan(aupro(s, np.zeros_like(gt)))


def test_aupro_regions_are_8_connected():
    # a diagonal chain (0,0) (1,1) (2,2) plus (2,3) is ONE 4-pixel region under 8-connectivity
    # (4-connectivity would give three regions: {(0,0)}, {(1,1)}, {(2,2), (2,3)})
    gt = np.zeros((1, 5, 5), np.uint8)
    gt[0, 0, 0] = gt[0, 1, 1] = gt[0, 2, 2] = gt[0, 2, 3] = 1
    s = np.zeros((1, 5, 5), np.float32)
    s[0, 0, 0] = s[0, 1, 1] = 1.0
    fpr, pro = pro_curve(s, gt)
    assert fpr[1] == 0.0 and pro[1] == pytest.approx(2 / 4)  # 4-connectivity: (1 + 1 + 0) / 3


def _exact_aupro(scores: np.ndarray, gt: np.ndarray, max_fpr: float = 0.3) -> float:
    """Brute force: every distinct score is a threshold (reference for the binned implementation)."""
    from scipy import ndimage

    regions = []
    for i in range(gt.shape[0]):
        lab, n = ndimage.label(gt[i], structure=np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    neg = gt == 0
    pts = [(0.0, 0.0)]
    for t in np.unique(scores)[::-1]:
        above = scores >= t
        pts.append(((above & neg).sum() / neg.sum(), np.mean([above[i][r].mean() for i, r in regions])))
    x, y = np.array(pts).T
    k = np.searchsorted(x, max_fpr, side="right")
    yk = y[k - 1] + (y[k] - y[k - 1]) * (max_fpr - x[k - 1]) / (x[k] - x[k - 1]) if x[k - 1] < max_fpr else y[k - 1]
    xs, ys = np.append(x[:k], max_fpr), np.append(y[:k], yk)
    return float(np.trapezoid(ys, xs) / max_fpr)


def test_aupro_matches_brute_force_including_ties():
    rng = np.random.default_rng(1)
    gt = np.zeros((3, 16, 16), np.uint8)
    gt[0, 2:6, 3:9] = 1
    gt[0, 10:12, 10:15] = 1
    gt[2, 7:13, 1:4] = 1
    scores = np.clip(rng.normal(0.3, 0.15, gt.shape) + 0.25 * gt, 0, 1).astype(np.float32)
    assert aupro(scores, gt) == pytest.approx(_exact_aupro(scores, gt), abs=2e-3)
    coarse = np.round(scores * 8) / 8  # heavy ties (like saturated or bf16 probabilities)
    assert aupro(coarse, gt) == pytest.approx(_exact_aupro(coarse, gt), abs=1e-9)


# ---- per defect type -------------------------------------------------------------------------------------------
def test_per_type_metrics_use_the_type_plus_all_good_images():
    # images (1x4 each): crack 1 [.9 .1 .1 .1] gt [1 0 0 0]; dent [.6 .7 .1 .1] gt [1 0 0 0];
    # good [.8 .0 .0 .0]; crack 2 [.2 .1 .1 .1] gt all 0 (mask vanished at the working resolution)
    probs = torch.tensor([[0.9, 0.1, 0.1, 0.1], [0.6, 0.7, 0.1, 0.1], [0.8, 0, 0, 0], [0.2, 0.1, 0.1, 0.1]])
    target = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    out = per_type_metrics(probs.view(4, 1, 1, 4), target.view(4, 1, 1, 4), ["crack", "dent", "good", "crack"], 0.5)
    assert list(out) == ["crack", "dent"]
    # crack = images 0, 3 + good: one positive (.9) above every negative -> AP 1; at .5: TP 1, FP 1 (.8) -> IoU 1/2
    assert out["crack"]["pixel_ap"] == pytest.approx(1.0) and out["crack"]["iou"] == pytest.approx(1 / 2)
    assert out["crack"]["images"] == 3 and out["crack"]["defect_images"] == 1
    # dent = image 1 + good: positive .6 below negatives .8 and .7 -> AP = 1/3; at .5: TP 1, FP 2 -> IoU 1/3
    assert out["dent"]["pixel_ap"] == pytest.approx(1 / 3) and out["dent"]["iou"] == pytest.approx(1 / 3)
    assert out["dent"]["images"] == 2
    with pytest.raises(ValueError, match="type labels"):
        per_type_metrics(probs.view(4, 1, 1, 4), target.view(4, 1, 1, 4), ["crack"], 0.5)


def test_per_type_report_tables():
    from fast_lightning.evaluation.reports import aggregate_per_type, per_type_sections

    def run(synth, ap_crack, ap_dent):
        return {"synth": synth, "metrics": {"test_per_type": {"crack": {"pixel_ap": ap_crack, "iou": 0.1},
                                                              "dent": {"pixel_ap": ap_dent, "iou": 0.2}}}}

    rows = [run("fast", 0.5, 0.2), run("fast", 0.7, 0.4), run("draem", 0.1, 0.3), {"synth": "old", "metrics": {}}]
    agg = aggregate_per_type(rows, "synth")
    assert agg["fast"]["crack"] == pytest.approx((0.6, math.sqrt(0.02), 2))
    assert agg["draem"]["dent"] == pytest.approx((0.3, 0.0, 1))
    assert agg["old"]["crack"][2] == 0  # a run from before per-type metrics: n/a, not zero
    text = "\n".join(per_type_sections({"pixel_ap": agg}, "synthesizer"))
    assert "pixel AP per defect type" in text and "| synthesizer | crack | dent |" in text
    assert "0.600 ± 0.141" in text and "n/a" in text
