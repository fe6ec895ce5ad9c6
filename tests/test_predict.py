"""predict / export / Python API on a tiny trained segmenter (smoke profile, 2 steps, cutpaste: no diffusion).

The fake class is 40x96 px (not square): the smoke working scale 64 gives a 32x64 working size, so a wrong
working size, a lost native size or a mask that is not the thresholded map all show.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import install_package, make_fake_mvtec, write_png

SIZE = (40, 96)


def cli_in_process(args, capsys):
    """The CLI's main() in this process: (exit code, stderr)."""
    from fast_lightning.cli import main

    rc = main(args)
    return rc, capsys.readouterr().err


def quiet(fn, args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = fn(args)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    from fast_lightning.commands import train_seg

    root = tmp_path_factory.mktemp("pred_data")
    make_fake_mvtec(root, size=SIZE)
    runs = tmp_path_factory.mktemp("pred_runs")
    code, out = quiet(train_seg.main, ["profile=smoke", "class_name=widget", f"data_root={root}", f"run_root={runs}",
                                       "segmentation.synth=cutpaste", "segmentation.max_steps=2",
                                       "segmentation.val_every=2", "trainer.enable_progress_bar=false",
                                       "logger.wandb.enabled=false"])
    assert code == 0, out
    return (runs / "seg" / "widget" / "latest").resolve()


@pytest.fixture
def images(seg_run, tmp_path) -> Path:
    """Mixed inputs: the class's RGB test images, a grey, an RGBA, a 16-bit image of other sizes, one corrupt."""
    folder = tmp_path / "new"
    data = Path(json.loads((seg_run / "metrics.json").read_text())["data_root"]) / "widget" / "test"
    (folder / "rgb").mkdir(parents=True)
    for i, src in enumerate(sorted(data.rglob("*.png"))[:3]):
        Image.open(src).save(folder / "rgb" / f"{i}.png")
    rng = np.random.default_rng(0)
    write_png(folder / "grey.png", rng.integers(0, 255, (50, 70), dtype=np.uint8))
    write_png(folder / "rgba.png", rng.integers(0, 255, (33, 45, 4), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 65535, (64, 48), dtype=np.uint16)).save(folder / "deep.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_checkpoint_stores_what_predict_needs(seg_run):
    from fast_lightning.segmentation.predict import load_seg_checkpoint

    _, ckpt = load_seg_checkpoint(seg_run)
    meta = ckpt["fast_lightning"]
    assert meta["working_size"] == [32, 64] and meta["channels"] == 3 and meta["image_interpolation"] == "bicubic"
    assert meta["type_names"] == ["crack", "dent"] and meta["class_name"] == "widget"
    assert len(meta["normalization"]["mean"]) == 3
    assert json.loads((seg_run / "metrics.json").read_text())["working_size"] == [32, 64]


def test_predict_command_writes_native_size_maps_and_thresholded_masks(seg_run, images, tmp_path, capsys):
    out = tmp_path / "pred"
    rc, err = cli_in_process(["predict", f"ckpt={seg_run}", f"images={images}", f"out={out}", "map_format=npy",
                              "batch_size=2"], capsys)
    assert rc == 0, err
    assert "broken.png" in err  # named and skipped; the rest still written
    summary = json.loads((out / "predictions.json").read_text())
    thr = float(summary["threshold"])
    stored = json.loads((seg_run / "metrics.json").read_text())["threshold"]
    assert thr == pytest.approx(stored) and summary["working_size"] == [32, 64]
    assert [s["image"] for s in summary["skipped"]] == ["broken"]
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 6 and {r["image"] for r in rows} == {"deep", "grey", "rgba", "rgb__0", "rgb__1", "rgb__2"}
    native = {"grey": (50, 70), "rgba": (33, 45), "deep": (64, 48), "rgb__0": SIZE}
    for row in rows:
        prob = np.load(out / "maps" / f"{row['image']}.npy")
        mask = np.asarray(Image.open(out / "masks" / f"{row['image']}.png")) > 0
        assert prob.shape == mask.shape == (int(row["height"]), int(row["width"]))
        if row["image"] in native:
            assert prob.shape == native[row["image"]]
        assert np.array_equal(mask, prob >= thr)  # the mask IS the thresholded map
        assert int(row["defect_area_px"]) == int(mask.sum())
        assert float(row["defect_area_percent"]) == pytest.approx(100 * mask.mean(), abs=1e-3)
        assert Image.open(out / "overlays" / f"{row['image']}.png").size == (prob.shape[1], prob.shape[0])
    assert (out / "contact_sheet.png").is_file()


def test_api_sees_images_as_the_evaluation_path_does(seg_run):
    """Score of a test image through the API == the max probability of the trained module on the same image
    from the evaluation dataset (same working size, interpolation, channels and normalisation)."""
    from fast_lightning.data.datasets import LabelledDataset
    from fast_lightning.data.records import read_class
    from fast_lightning.data.split import make_split
    from fast_lightning.segmentation.predict import load_seg_checkpoint, load_segmenter, module_from_checkpoint

    seg = load_segmenter(seg_run, device="cpu")
    root = Path(json.loads((seg_run / "metrics.json").read_text())["data_root"])
    recs = make_split(read_class(root, "widget")).real_test[:3]
    ds = LabelledDataset(recs, resolution=tuple(seg.working_size), channels=3)
    module = module_from_checkpoint(*load_seg_checkpoint(seg_run))
    preds = list(seg.predict([r.image for r in recs], batch_size=2))
    for i, p in enumerate(preds):
        ref = module.predict_proba(ds[i]["image"][None])
        assert p.score == pytest.approx(float(ref.max()), abs=1e-6)
        assert p.size == SIZE and torch.equal(p.mask, p.prob >= seg.threshold)
    forced = next(iter(seg.predict([recs[0].image], threshold=0.0)))
    assert bool(forced.mask.all()) and forced.regions == 1


def test_predict_rejects_bad_threshold_and_missing_images(seg_run, tmp_path, capsys):
    rc, err = cli_in_process(["predict", f"ckpt={seg_run}", f"images={tmp_path}", "threshold=high"], capsys)
    assert rc == 2 and "THRESHOLD='high'" in err
    rc, err = cli_in_process(["predict", f"ckpt={seg_run}", f"images={tmp_path / 'none'}/*.png"], capsys)
    assert rc == 2 and "no images found" in err


def test_old_checkpoint_without_working_size_is_a_clear_error(seg_run, tmp_path):
    from fast_lightning.errors import UserError
    from fast_lightning.segmentation.predict import load_segmenter

    ckpt = torch.load(seg_run / "checkpoints" / "best.ckpt", weights_only=False)  # test-made file, trusted
    del ckpt["fast_lightning"]["working_size"]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    with pytest.raises(UserError, match="lacks working_size"):
        load_segmenter(old, device="cpu")


def test_torchscript_export_parity_and_predict_reads_it(seg_run, images, tmp_path, capsys):
    from fast_lightning.segmentation.export import PARITY_ATOL, example_batch, exportable
    from fast_lightning.segmentation.predict import load_segmenter

    out = tmp_path / "model.pt"
    rc, err = cli_in_process(["export", f"ckpt={seg_run}", "format=torchscript", f"out={out}"], capsys)
    assert rc == 0, err
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["working_size"] == [32, 64] and info["parity_max_abs_diff"] <= PARITY_ATOL
    net, meta = exportable(seg_run)
    scripted = torch.jit.load(str(out))
    for size in ([32, 64], [64, 96] if info["dynamic_hw"] else [32, 64]):
        x = example_batch(meta, 3, tuple(size), seed=7)
        with torch.no_grad():
            assert float((scripted(x) - net(x)).abs().max()) <= PARITY_ATOL
    exported, native = load_segmenter(out, "cpu"), load_segmenter(seg_run, "cpu")
    assert exported.threshold == pytest.approx(native.threshold) and exported.working_size == (32, 64)
    files = sorted((images / "rgb").glob("*.png"))
    for a, b in zip(exported.predict(files), native.predict(files)):
        assert (a.prob - b.prob).abs().max() <= PARITY_ATOL


def test_onnx_export_needs_the_extra_or_matches(seg_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from fast_lightning.segmentation.export import PARITY_ATOL
    from fast_lightning.segmentation.predict import load_segmenter

    out = tmp_path / "model.onnx"
    rc, err = cli_in_process(["export", f"ckpt={seg_run}", "format=onnx", f"out={out}"], capsys)
    assert rc == 0, err
    assert json.loads(out.with_suffix(".json").read_text())["parity_max_abs_diff"] <= PARITY_ATOL
    assert load_segmenter(out, "cpu").working_size == (32, 64)


def test_onnx_without_the_extra_says_what_to_install(seg_run, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as when the extra is absent
    rc, err = cli_in_process(["export", f"ckpt={seg_run}", "format=onnx", f"out={tmp_path / 'm.onnx'}"], capsys)
    assert rc == 2 and "fast-lightning[onnx]" in err and not (tmp_path / "m.onnx").exists()


def test_eval_seg_prints_the_checkpoint_config(seg_run, capsys):
    from fast_lightning.cli import main

    assert main(["eval-seg", f"ckpt={seg_run}", "--print-config", "data.num_workers=0"]) == 0
    out = capsys.readouterr().out
    assert "seg_scale: 64" in out and "synth: cutpaste" in out and not (seg_run / "eval_metrics.json").exists()


def test_eval_seg_reads_configs_saved_with_the_removed_key(seg_run, tmp_path):
    from omegaconf import OmegaConf

    from fast_lightning.commands.eval_seg import older_config
    from fast_lightning.errors import UserError
    from fast_lightning.runs import saved_run_config
    from fast_lightning.segmentation.predict import load_seg_checkpoint

    saved = saved_run_config(load_seg_checkpoint(seg_run)[1])
    old = OmegaConf.create(OmegaConf.to_container(saved))
    old.data.resolution = 32  # what a config written before the one-key change holds
    assert "resolution" not in older_config(old, "x.ckpt").data and older_config(saved, "x.ckpt") is saved
    old.data.seg_scale = None
    with pytest.raises(UserError, match="removed square path"):
        older_config(old, "x.ckpt")


@pytest.mark.slow
def test_the_installed_console_script_predicts(seg_run, tmp_path):
    """`pip install .` then `fast-lightning predict` from outside the source tree: the packaged configs and the
    checkpoint's own metadata are all it needs; its masks are the ones the in-tree predictor writes."""
    import subprocess

    exe, _, env, _, work = install_package(tmp_path)
    data = Path(json.loads((seg_run / "metrics.json").read_text())["data_root"]) / "widget" / "test"
    out = tmp_path / "pred"
    env = {**env, "WANDB_MODE": "disabled"}
    done = subprocess.run([str(exe), "predict", f"ckpt={seg_run}", f"images={data}", f"out={out}"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    n_images = len([p for p in data.rglob("*.png") if "ground_truth" not in p.parts])
    assert len(rows) == n_images > 0
    from fast_lightning.segmentation.predict import load_segmenter

    seg = load_segmenter(seg_run)
    first = next(p for p in sorted(data.rglob("*.png")) if "ground_truth" not in p.parts)
    (pred,) = list(seg.predict([first]))
    row = next(r for r in rows if Path(r["path"]).resolve() == first.resolve())
    assert float(row["score"]) == pytest.approx(float(pred.score), abs=1e-5)
    assert int(row["defect_area_px"]) == pred.area_px
