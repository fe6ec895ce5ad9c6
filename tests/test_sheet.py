"""`make sheet`: defects in the model's window, one row per sampling setting, same masks and noise."""

from __future__ import annotations

import pytest
from PIL import Image

from conftest import make_fake_mvtec, run_cli


def test_parse_rows_reads_labels_and_typed_values():
    from fast_lightning.cli import UserError
    from fast_lightning.commands.sheet import DEFAULT_ROWS, parse_rows

    assert parse_rows("a:farm_min_t=0,steps=5;b: farm_min_t=2") == [("a", {"farm_min_t": 0, "steps": 5}),
                                                                   ("b", {"farm_min_t": 2})]
    assert [over for _, over in parse_rows(DEFAULT_ROWS)] == [{"farm_min_t": 0}, {"farm_min_t": 2}]
    for bad in ("no-colon", ";;", ":farm_min_t=0"):
        with pytest.raises(UserError, match="rows"):
            parse_rows(bad)


def test_sheet_has_real_row_one_row_per_setting_and_masks(tmp_path):
    make_fake_mvtec(tmp_path / "data")
    common = ["class_name=widget", f"data_root={tmp_path / 'data'}", f"run_root={tmp_path / 'runs'}", "profile=smoke"]
    run_cli("train-diffusion", *common, "diffusion.max_steps=2", "diffusion.sample_every=0",
            "diffusion.num_log_samples=0")
    out = tmp_path / "sheet.png"
    proc = run_cli("sheet", *common, "n=3", "tile=16", f"out={out}",
                   "rows=old:farm_min_t=0;new:farm_min_t=2;ddim:name=ddim,steps=4")
    assert str(out) in proc.stdout
    w, h = Image.open(out).size
    # 5 rows (real, old, new, ddim, mask) of 16-px tiles with 2-px padding, 3 columns plus a title margin
    assert h == 5 * 16 + 6 * 2 and w > 3 * 16
    bad = run_cli("sheet", *common, "rows=x:farm_min_t=-1", f"out={out}", expect=2)
    assert "farm_min_t" in bad.stderr
