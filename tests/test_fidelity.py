"""Fidelity score (evaluation/fidelity.py, `make fidelity`) and the rank-correlation tool."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch


def fabricated(n: int, seed: int, fill: str = "dark", size: int = 48, base_level: float = 0.5):
    """n textured parts with one elliptic defect each: 'dark' (0.35 darker than the part, textured like the
    real ones) or 'white' (a flat white blob: a deliberately wrong synthesizer)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks = [], []
    for _ in range(n):
        base = base_level + 0.08 * torch.randn(3, size, size, generator=g)
        cy, cx = (torch.randint(14, size - 14, (2,), generator=g)).tolist()
        ry, rx = (torch.randint(3, 8, (2,), generator=g)).tolist()
        m = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).float()[None]
        dark = base_level - 0.35 + 0.08 * torch.randn(3, size, size, generator=g)
        defect = dark if fill == "dark" else torch.ones(3, size, size)
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
    second = compare_sets(real, {"wrong": synths["wrong"], "control": synths["control"]}, seed=0, c2st_steps=60,
                          per_type_c2st=False)
    assert second["control"]["per_type"]["all"] == control["per_type"]["all"]  # nor on the others listed


def test_size_measure_sees_what_the_scaled_windows_cannot():
    """Windows are scaled to their defect, so ten-times-larger defects look the same to every window measure;
    ``w1_log_area`` (given each item's area in its image) reads one decade."""
    from fast_lightning.evaluation.fidelity import compare_sets

    wins, masks = fabricated(20, 0)
    real = as_set(wins, masks, ["a"] * 20) | {"areas": np.full(20, 0.002)}
    same = as_set(wins, masks, None) | {"areas": np.full(20, 0.002)}
    larger = as_set(wins, masks, None) | {"areas": np.full(20, 0.02)}
    out = compare_sets(real, {"same": same, "larger": larger, "no_areas": as_set(wins, masks, None)}, seed=0,
                       c2st_steps=5, per_type_c2st=False)
    assert out["same"]["per_type"]["all"]["w1_log_area"] == pytest.approx(0.0)
    assert out["larger"]["per_type"]["a"]["w1_log_area"] == pytest.approx(1.0)
    assert out["larger"]["per_type"]["all"]["size"] == {"real_median": pytest.approx(0.002),
                                                         "synth_median": pytest.approx(0.02)}
    assert out["larger"]["per_type"]["all"]["w1_norm_mean"] == out["same"]["per_type"]["all"]["w1_norm_mean"]
    assert "w1_log_area" not in out["no_areas"]["per_type"]["all"]


def test_fine_texture_sees_a_smooth_defect_on_a_grainy_part():
    """``fine_texture_ratio`` at the image's own pixels: a defect that keeps the part's grain reads ~0, the same
    defect painted smooth reads far below; W1 between them is that gap and 0 for identical sets."""
    from fast_lightning.evaluation.fidelity import compare_sets, fine_texture_ratio

    g = torch.Generator().manual_seed(0)
    part = 0.5 + 0.1 * torch.randn(3, 64, 64, generator=g)
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 12:52] = 1
    grainy = part.clone()
    grainy[:, 16:48, 12:52] -= 0.2                     # darker, grain kept
    smooth = part.clone()
    smooth[:, 16:48, 12:52] = 0.3                      # darker, flat
    assert abs(fine_texture_ratio(grainy, mask)) < 0.3
    assert fine_texture_ratio(smooth, mask) < -5
    assert fine_texture_ratio(part, torch.zeros(1, 64, 64)) != fine_texture_ratio(part, torch.zeros(1, 64, 64))  # nan
    wins, masks = fabricated(20, 0)
    real = as_set(wins, masks, ["a"] * 20) | {"fine_texture": np.zeros(20)}
    out = compare_sets(real, {"same": as_set(wins, masks, None) | {"fine_texture": np.zeros(20)},
                              "smooth": as_set(wins, masks, None) | {"fine_texture": np.full(20, -3.0)}},
                       seed=0, c2st_steps=5, per_type_c2st=False)
    assert out["same"]["per_type"]["all"]["w1_fine_texture"] == pytest.approx(0.0)
    assert out["smooth"]["per_type"]["a"]["w1_fine_texture"] == pytest.approx(3.0)
    assert out["smooth"]["per_type"]["all"]["fine_texture"]["synth_median"] == pytest.approx(-3.0)


def test_defect_patch_test_sees_the_defect_not_the_background():
    """The same defects (0.35 darker than their part) on a brighter part: the window critic tells them apart by
    the background, the defect-patch critic (patches minus the ring mean) does not; a wrong defect fails both."""
    from fast_lightning.evaluation.fidelity import compare_sets, defect_patches

    real = as_set(*fabricated(40, 0), ["a"] * 40)
    synths = {"bright_part": as_set(*fabricated(40, 1, base_level=0.8), None),
              "wrong": as_set(*fabricated(40, 2, "white"), None)}
    out = compare_sets(real, synths, seed=0, c2st_steps=60, per_type_c2st=False)
    shifted, wrong = out["bright_part"]["per_type"]["all"], out["wrong"]["per_type"]["all"]
    assert shifted["c2st_auroc"] > 0.9, shifted
    assert abs(shifted["c2st_defect_auroc"] - 0.5) < 0.2, shifted
    assert wrong["c2st_defect_auroc"] > 0.9, wrong
    patches, owner = defect_patches(real["windows"], torch.ones_like(real["masks"]) * real["masks"], per_window=3)
    assert patches.shape == (3 * len(real["windows"]), 3, 8, 8) and owner.tolist()[:6] == [0, 0, 0, 1, 1, 1]


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
                          "per_type=false", "probe=2"]) == 0
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
    assert all(0.0 <= r["per_type"]["all"]["w1_log_area"] < 10 for r in res.values())
    assert "W1 log10 area" in (out / "fidelity.md").read_text() and "W1 fine texture" in (out / "fidelity.md").read_text()
    assert all(r["per_type"]["all"]["w1_fine_texture"] >= 0.0 for r in res.values())
    # the probe: a 2-step segmenter per synthesizer on exactly its 16 pairs, AP read on the REAL validation split
    probe_root = tmp_path / "runs" / "fidelity_probe"
    assert rep["probe_steps"] == 2 and not (tmp_path / "runs" / "seg").exists()  # runs/seg/<class>/latest untouched
    for name, r in res.items():
        p = r["probe"]
        assert p["steps"] == 2 and p["pairs"] == 16 and 0.0 <= p["val_pixel_ap"] <= 1.0
        assert set(p["val_per_type"]) == {"crack", "dent"}
        assert r["per_type"]["all"]["probe_val_ap"] == p["val_pixel_ap"]
        assert r["per_type"]["dent"]["probe_val_ap"] == p["val_per_type"]["dent"]
        m = json.loads((probe_root / "seg" / "widget" / name / "metrics.json").read_text())
        assert m["train_steps"] == 2 and m["synthesizer"] == "fast_cached" and m["val"]["pixel_ap"] == p["val_pixel_ap"]
        rows = (probe_root / "pairs" / "widget" / name / "manifest.jsonl").read_text().splitlines()
        assert len(rows) == 16
    fast_types = [json.loads(r)["type_id"] for r in
                  (probe_root / "pairs" / "widget" / "fast" / "manifest.jsonl").read_text().splitlines()]
    assert set(fast_types) <= {1, 2} and len(set(fast_types)) == 2  # FAST's pairs keep their defect type
    assert "probe val AP" in (out / "fidelity.md").read_text()
    control = res["real_third"]["per_type"]["all"]["w1_norm_mean"]
    assert control < res["draem"]["per_type"]["all"]["w1_norm_mean"]
    assert res["draem"]["score"] > 0.9 and res["real_third"]["score"] < 0.75


# ---- rank correlation: arithmetic on a fabricated input (a unit test of the functions, not a result) ----------

def test_spearman_arithmetic():
    from fast_lightning.evaluation.rank_correlation import rankdata, spearman

    assert rankdata([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [9, 7, 5, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)  # 1 - 6*4/(5*24)
    assert math.isnan(spearman([1, 2], [1, 2])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_fidelity_rank_command_matches_runs_and_reports(tmp_path, capsys):
    """Fabricated metrics.json / fidelity.json: two classes x three synthesizers (+ the control, left out)."""
    from fast_lightning.commands import fidelity_rank

    auroc = {"fast": 0.6, "draem": 0.8, "cutpaste": 0.9, "real_third": 0.5}
    ap = {"fast": 0.3, "draem": 0.2, "cutpaste": 0.25, "real_third": 0.9}
    runs = []
    for cls, shift in (("tire", 0.0), ("mt", 0.1)):
        for synth in auroc:
            for seed in (0, 1):
                run = tmp_path / "runs" / f"{cls}-{synth}-{seed}"
                run.mkdir(parents=True)
                per_type = {"crack": {"pixel_ap": ap[synth] + shift + 0.01 * seed},
                            "hole": {"pixel_ap": ap[synth] + shift - 0.1}}
                (run / "metrics.json").write_text(json.dumps({
                    "class_name": cls, "synthesizer": synth, "test": {"pixel_ap": ap[synth] + shift + 0.02 * seed},
                    "test_per_type": per_type}))
                runs.append(str(run))
        rep = {"class_name": cls, "synthesizers": {
            s: {"score": a, "per_type": {"all": {"c2st_auroc": a, "w1_norm_mean": 1 - a},
                                         "crack": {"c2st_auroc": a, "w1_norm_mean": 1.0},
                                         "hole": {"c2st_auroc": 1.1 - a, "w1_norm_mean": 1.0}}}
            for s, a in auroc.items()}}
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "fidelity.json").write_text(json.dumps(rep))
    bench = tmp_path / "benchmark.json"
    bench.write_text(json.dumps({"classes": {"tire": {"runs": runs[:8]}, "mt": {"runs": runs[8:]}}}))
    assert fidelity_rank.main([f"runs={bench}", f"out={tmp_path}"]) == 0
    res = json.loads((tmp_path / "fidelity_rank.json").read_text())["result"]
    c2st = res["c2st_auroc"]
    assert c2st["overall"]["n"] == 6 and {p["key"][1] for p in c2st["overall"]["pairs"]} == {"fast", "draem", "cutpaste"}
    # AP order fast > cutpaste > draem, AUROC order fast < draem < cutpaste: per class rho = -0.5
    assert c2st["per_class"]["tire"]["rho"] == pytest.approx(-0.5) and c2st["per_class"]["tire"]["predicts_ap"]
    pair = next(p for p in c2st["overall"]["pairs"] if p["key"] == ["mt", "fast"])
    assert pair == {"key": ["mt", "fast"], "score": 0.6, "pixel_ap": pytest.approx(0.41)}  # mean over 2 seeds
    assert c2st["per_type_pairs"]["n"] == 12 and set(c2st["per_synthesizer"]) == {"fast", "draem", "cutpaste"}
    # within tire, its 6 (synthesizer, type) pairs: hole's AUROC is 1.1 - a, so the order only partly agrees
    assert c2st["per_class_types"]["tire"]["n"] == 6
    assert c2st["per_class_types"]["tire"]["rho"] == pytest.approx(1 - 6 * 8 / (6 * 35))
    assert res["w1_norm_mean"]["per_class"]["tire"]["rho"] == pytest.approx(0.5)
    # per (class, type) across the 3 synthesizers: crack follows -AUROC (rho -0.5), hole's 1.1 - a flips it (+0.5)
    across = c2st["per_type_across_synthesizers"]
    assert across["n_types"] == 4 and across["types"]["tire/crack"]["rho"] == pytest.approx(-0.5)
    assert across["types"]["tire/hole"]["rho"] == pytest.approx(0.5) and across["mean_rho"] == pytest.approx(0.0)
    assert "rank correlation" in (tmp_path / "fidelity_rank.md").read_text()
    # the probe is higher-is-better: the same order as AP is rho = +1 and counts as predicting it
    from fast_lightning.evaluation.rank_correlation import correlate
    probe = correlate({("tire", s): a for s, a in ap.items()},
                      {"probe_val_ap": {("tire", s): a / 2 for s, a in ap.items()}})["probe_val_ap"]["per_class"]["tire"]
    assert probe["rho"] == pytest.approx(1.0) and probe["predicts_ap"] and probe["n"] == 3  # control left out
    # @tag keeps a second model's rows apart: the same fast runs and report, renamed fast@b, add pairs
    assert fidelity_rank.main([f"runs={bench},{bench}@b", f"fidelity={tmp_path / 'tire' / 'fidelity.json'},"
                               f"{tmp_path / 'tire' / 'fidelity.json'}@b", f"out={tmp_path}"]) == 0
    tagged = json.loads((tmp_path / "fidelity_rank.json").read_text())["result"]["c2st_auroc"]
    assert tagged["per_class"]["tire"]["n"] == 6 and "mt" not in tagged["per_class"]
    assert {p["key"][1] for p in tagged["per_class"]["tire"]["pairs"]} >= {"fast", "fast@b", "draem@b"}
    # ... and so does a csv=file@tag (its rows were once taken untagged, silently)
    csv = tmp_path / "tire" / "comparison.csv"
    csv.write_text("synthesizer,pixel_ap_mean,pixel_ap_std\nfast,0.9,0.0\ndraem,0.1,0.0\ncutpaste,0.5,0.0\n")
    assert fidelity_rank.main([f"csv={csv}@c", f"fidelity={tmp_path / 'tire' / 'fidelity.json'}@c",
                               f"out={tmp_path}"]) == 0
    from_csv = json.loads((tmp_path / "fidelity_rank.json").read_text())
    assert from_csv["csv"] == [f"{csv}@c"]
    keys = {p["key"][1] for p in from_csv["result"]["c2st_auroc"]["per_class"]["tire"]["pairs"]}
    assert keys == {"fast@c", "draem@c", "cutpaste@c"}
    # a listed run folder that is gone is left out by name; the other seed still counts
    import shutil
    shutil.rmtree(runs[9])  # mt, fast, seed 1
    assert fidelity_rank.main([f"runs={bench}", f"out={tmp_path}"]) == 0
    assert runs[9] in capsys.readouterr().out
    gone = json.loads((tmp_path / "fidelity_rank.json").read_text())["result"]["c2st_auroc"]
    pair = next(p for p in gone["overall"]["pairs"] if p["key"] == ["mt", "fast"])
    assert pair["pixel_ap"] == pytest.approx(0.40)  # seed 0 alone


def test_ap_from_csv_reads_comparison_and_benchmark_formats(tmp_path):
    """A committed benchmark.csv (``class:synthesizer`` rows) stands in for its run folders."""
    from fast_lightning.evaluation.rank_correlation import ap_from_csv

    (tmp_path / "tire").mkdir()
    comp = tmp_path / "tire" / "comparison.csv"
    comp.write_text("synthesizer,pixel_ap_mean,pixel_ap_std\nfast,0.25,0.01\ndraem,nan,nan\n")
    assert ap_from_csv(comp) == {("tire", "fast"): 0.25}
    bench = tmp_path / "benchmark.csv"
    bench.write_text("class:synthesizer,pixel_ap_mean,pixel_ap_std\ntire:fast,0.021,0.01\nmt:draem,0.103,0.02\n")
    assert ap_from_csv(bench) == {("tire", "fast"): 0.021, ("mt", "draem"): 0.103}
