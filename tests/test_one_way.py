"""The one-way-per-job helpers (issue 12): table renderer, uint8 quantisation, split disjointness check."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fast_lightning import tables
from fast_lightning.data.io import save_image, to_uint8
from fast_lightning.data.records import Record
from fast_lightning.errors import DataError
from fast_lightning.data.split import Split


def test_text_table_aligns_columns_with_minimum_widths_and_rules():
    out = tables.text_table(["name", "value"], [["a", "1.5"], ["longer", "22"]], align="<>", min_widths=[0, 6],
                            rule="columns")
    assert out.splitlines() == ["name     value", "------  ------", "a          1.5", "longer      22"]
    full = tables.text_table(["k", "v"], [["x", "1"]], align="<>", min_widths=[0, 4], rule="full")
    assert full.splitlines() == ["k     v", "-------", "x     1"]
    assert tables.text_table(["a", "b"], [], rule=None) == "a  b"


def test_markdown_table_escapes_pipes_in_cells():
    assert tables.markdown_table(["a", "b"], [["x|y", "1"]]) == "| a | b |\n|---|---|\n| x\\|y | 1 |"


def test_to_uint8_rounds_half_up_like_the_png_writer(tmp_path):
    x = torch.tensor([[[0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0, 1.3, -0.2]]])
    q = to_uint8(x)
    assert q.dtype == torch.uint8 and q.reshape(-1).tolist() == [0, 1, 2, 128, 255, 255, 0]
    assert np.array_equal(to_uint8(x.numpy()), q.numpy())
    img = torch.rand(3, 5, 7)
    save_image(img, tmp_path / "x.png")
    on_disk = np.asarray(Image.open(tmp_path / "x.png"))
    assert np.array_equal(on_disk, to_uint8(img).permute(1, 2, 0).numpy())


def test_split_counts_refuses_an_evaluation_image_in_training(tmp_path):
    good = Record(str(tmp_path / "a.png"), None, "good", "test")
    bad = Record(str(tmp_path / "b.png"), str(tmp_path / "b_mask.png"), "crack", "test")
    split = Split("widget", str(tmp_path), ["crack"], generator_train=[bad], val=[good], test=[bad],
                  normal_train=[])
    with pytest.raises(DataError, match=r"not disjoint: 1 evaluation image\(s\) in generator_train .*data_root=/d"):
        split.counts("/d")
    ok = Split("widget", str(tmp_path), ["crack"], generator_train=[], val=[good], test=[bad], normal_train=[])
    assert ok.counts()["test_defect_images"] == 1 and ok.counts()["val_images"] == 1


def test_one_tensor_image_resize_in_the_data_layer():
    """Every image-tensor resize goes through data.io.resize_tensor_image: no other module interpolates images."""
    root = Path(__file__).resolve().parents[1] / "fast_lightning"
    others = [str(p.relative_to(root)) for p in root.rglob("*.py")
              if p.name != "io.py" and 'mode="bicubic"' in p.read_text(encoding="utf-8")]
    assert others == [], f"bicubic image resize outside data/io.py: {others}"


def test_resize_tensor_image_shapes_antialias_and_identity():
    import torch.nn.functional as F

    from fast_lightning.data.io import resize_tensor_image

    x = torch.rand(2, 3, 12, 20, generator=torch.Generator().manual_seed(0))
    assert resize_tensor_image(x, (12, 20)) is x  # already the size: untouched
    small = resize_tensor_image(x, (6, 10))
    assert torch.equal(small, F.interpolate(x, size=(6, 10), mode="bicubic", antialias=True).clamp(0, 1))
    big = resize_tensor_image(x, (24, 40))  # enlarging: plain bicubic unless antialias=True is asked for
    assert torch.equal(big, F.interpolate(x, size=(24, 40), mode="bicubic").clamp(0, 1))
    assert not torch.equal(big, resize_tensor_image(x, (24, 40), antialias=True))
    one = resize_tensor_image(x[0], (6, 10))  # (C,H,W) in, (C,H,W) out, same pixels as the batched call
    assert one.shape == (3, 6, 10) and torch.equal(one, small[0])
    assert float(big.min()) >= 0.0 and float(big.max()) <= 1.0


def test_module_file_names_are_unique_across_packages():
    """A file name says its job once: no two library modules share one. The only repeats allowed are a command
    module named after its command (commands/predict.py drives segmentation/predict.py)."""
    from fast_lightning.commands import COMMANDS

    root = Path(__file__).resolve().parents[1] / "fast_lightning"
    seen: dict[str, list[str]] = {}
    for p in root.rglob("*.py"):
        if p.name not in ("__init__.py", "__main__.py"):
            seen.setdefault(p.stem, []).append(str(p.parent.relative_to(root)))
    commands = {module.rsplit(".", 1)[1] for module, _ in COMMANDS.values()}
    repeats = {stem: dirs for stem, dirs in seen.items() if len(dirs) > 1}
    bad = {stem: dirs for stem, dirs in repeats.items()
           if not (stem in commands and dirs.count("commands") == 1 and len(dirs) == 2)}
    assert bad == {}, f"module file names repeated across packages: {bad}"
