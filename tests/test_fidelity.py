"""Fidelity score (evaluation/fidelity.py, `make fidelity`) and the rank-correlation tool."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch


def fabricated(n: int, seed: int, fill: str = "dark", size: int = 48):
    """n textured parts with one elliptic defect each: 'dark' (darker, textured like the real ones) or
    'white' (a flat white blob: a deliberately wrong synthesizer)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks = [], []
    for _ in range(n):
        base = 0.5 + 0.08 * torch.randn(3, size, size, generator=g)
        cy, cx = (torch.randint(14, size - 14, (2,), generator=g)).tolist()
        ry, rx = (torch.randint(3, 8, (2,), generator=g)).tolist()
        m = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).float()[None]
        defect = 0.15 + 0.08 * torch.randn(3, size, size, generator=g) if fill == "dark" else torch.ones(3, size, size)
        images.append(torch.where(m > 0, defect, base).clamp(0, 1))
        masks.append(m)
    return images, masks


def as_set(images, masks, types):
    from fast_lightning.evaluation.fidelity import defect_windows

    w, m, kept = defect_windows(images, masks, size=32)
    return {"windows": w, "masks": m, "types": None if types is None else [types[i] for i in kept]}


def test_wasserstein_1d_matches_known_values():
    from fast_lightning.evaluation.fidelity import wasserstein_1d

    assert wasserstein_1d(np.array([0.0, 1.0]), np.array([0.0, 1.0])) == 0.0
    assert wasserstein_1d(np.array([0.0]), np.array([2.5])) == pytest.approx(2.5)
    assert wasserstein_1d(np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(1.0)
    assert math.isnan(wasserstein_1d(np.array([np.nan]), np.array([1.0])))


def test_window_stats_see_contrast_texture_and_edges():
    from fast_lightning.evaluation.fidelity import defect_windows, window_stats

    dark = window_stats(*defect_windows(*fabricated(6, 0, "dark"))[:2])
    white = window_stats(*defect_windows(*fabricated(6, 0, "white"))[:2])
    assert np.all(white["intensity_diff"] > dark["intensity_diff"]) and np.all(dark["intensity_diff"] > 0.2)
    assert np.all(white["gradient_ratio"] < dark["gradient_ratio"])  # flat fill: no texture inside
    assert np.all(white["edge_strength"] > dark["edge_strength"])


def test_control_is_indistinguishable_and_wrong_synthesizer_is_separated():
    from fast_lightning.evaluation.fidelity import compare_sets

    types = ["a", "b"] * 20
    real = as_set(*fabricated(40, 0), types)
    synths = {"control": as_set(*fabricated(40, 1), types), "wrong": as_set(*fabricated(40, 2, "white"), None)}
    out = compare_sets(real, synths, seed=0, c2st_steps=60, per_type_c2st=False)
    control, wrong = out["control"], out["wrong"]
    assert abs(control["score"] - 0.5) < 0.2, control["score"]
    assert wrong["score"] > 0.95, wrong["score"]
    assert control["per_type"]["all"]["w1_norm_mean"] < 0.5 < wrong["per_type"]["all"]["w1_norm_mean"]
    assert set(wrong["per_type"]) == {"a", "b", "all"} and wrong["per_type"]["a"]["n_synth"] == 40  # untyped: all
    assert control["per_type"]["a"]["n_synth"] == 20 and "c2st_auroc" not in control["per_type"]["a"]
    again = compare_sets(real, synths, seed=0, c2st_steps=60, per_type_c2st=False)
    assert again["control"]["score"] == control["score"]  # seeded


@pytest.mark.slow
def test_fidelity_command_smoke(tmp_path):
    """`fidelity` end to end on the fake class with a 2-step diffusion model: FAST, DRAEM and the real-vs-real
    control; the JSON holds every synthesizer and type with values in range, the control is the closest."""
    from conftest import make_fake_mvtec
    from fast_lightning.commands import fidelity, train_diffusion

    data = tmp_path / "data"
    make_fake_mvtec(data, n_defect=12)
    common = ["profile=smoke", "class_name=widget", f"data_root={data}", f"run_root={tmp_path / 'runs'}",
              "trainer.enable_progress_bar=false", "diffusion.num_train_timesteps=100"]
    assert train_diffusion.main([*common, "diffusion.max_steps=2", "diffusion.checkpoint_every=2",
                                 "diffusion.sample_every=0"]) == 0
    out = tmp_path / "rep"
    assert fidelity.main([*common, "synths=fast,draem", "n=16", "steps=40", f"out={out}",
                          "per_type=false"]) == 0
    rep = json.loads((out / "fidelity.json").read_text())
    assert (out / "fidelity.png").stat().st_size > 0 and "real-vs-real control" in (out / "fidelity.md").read_text()
    res = rep["synthesizers"]
    assert list(res) == ["fast", "draem", "real_third"] and rep["control"] == "real_third"
    assert rep["real_windows"] == 8 and rep["working_size"] == [64, 64]
    assert set(res["fast"]["per_type"]) == {"crack", "dent", "all"}
    assert res["fast"]["per_type"]["crack"]["n_synth"] + res["fast"]["per_type"]["dent"]["n_synth"] == 16  # typed
    assert res["fast"]["nfe_per_image"] == 5  # AIAS, sampling.steps=5 at the smoke profile
    assert res["draem"]["per_type"]["crack"]["n_synth"] == 16  # untyped: compared with every type
    for r in res.values():
        assert 0.0 <= r["score"] <= 1.0
    control = res["real_third"]["per_type"]["all"]["w1_norm_mean"]
    assert control < res["draem"]["per_type"]["all"]["w1_norm_mean"]
    assert res["draem"]["score"] > 0.9 and res["real_third"]["score"] < 0.75
