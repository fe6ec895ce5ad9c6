"""Importing the library must leave the process alone: no warning filters changed (they are applied only
around a command, by cli.main through training.expected_warnings_silenced)."""

import subprocess
import sys
import textwrap
import warnings

from conftest import PROJECT_DIR

CHECK = textwrap.dedent("""
    import importlib, pkgutil, sys, warnings
    import torch  # torch's own import may add filters; fast_lightning's must not
    before = list(warnings.filters)
    import fast_lightning
    assert warnings.filters == before, "import fast_lightning changed warnings.filters"
    for lib in ("torchvision", "lightning", "diffusers", "segmentation_models_pytorch", "torchmetrics",
                "matplotlib", "wandb", "sweeps"):
        try:
            importlib.import_module(lib)
        except ImportError:
            pass
    before = list(warnings.filters)
    for m in pkgutil.walk_packages(fast_lightning.__path__, "fast_lightning."):
        if m.name.endswith("__main__"):
            continue  # runs the CLI
        importlib.import_module(m.name)
        changed = [f for f in warnings.filters if f not in before]
        assert not changed, f"importing {m.name} added warning filters {changed}"
    print("unchanged")
""")


def test_importing_every_module_leaves_warning_filters_untouched():
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("unchanged")


def test_expected_warnings_are_silenced_only_inside_the_block():
    from fast_lightning.training import expected_warnings_silenced

    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with expected_warnings_silenced():
            warnings.warn("The dataloader, train_dataloader, does not have many workers which may be a bottleneck.")
        warnings.warn("The dataloader, train_dataloader, does not have many workers which may be a bottleneck.")
    assert len(seen) == 1
    assert warnings.filters == before


def test_cli_prints_user_errors_in_one_line_and_bugs_with_a_traceback(fake_mvtec):
    from conftest import run_cli

    bad = run_cli("check-data", f"data_root={fake_mvtec}", "class_name=widget", "data.seg_scale=abc", expect=2)
    assert "config key 'data.seg_scale' expects int" in bad.stderr and "Traceback" not in bad.stderr
    opt = run_cli("compare", "seeds=abc", expect=2)
    assert opt.stderr.strip() == "error: option seeds expects int (default 3), got 'abc'"


def test_a_plain_value_error_is_not_reported_as_a_user_error(monkeypatch, capsys):
    """cli.main lets a plain ValueError (a bug) propagate with its traceback instead of a one-line message."""
    import types

    import pytest

    from fast_lightning import cli

    def broken(args):
        raise ValueError("shape mismatch inside the library")

    monkeypatch.setitem(cli.COMMANDS, "broken", ("fake_broken_cmd", "test"))
    monkeypatch.setitem(sys.modules, "fake_broken_cmd", types.SimpleNamespace(main=broken))
    with pytest.raises(ValueError, match="shape mismatch"):
        cli.main(["broken"])
