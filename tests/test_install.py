"""Install and CLI surface: pyproject metadata, `pip install .` into a fresh venv, --help, print_config, booleans."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import install_package

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# import name -> distribution name, where they differ
DISTS = {"PIL": "pillow", "yaml": "PyYAML", "segmentation_models_pytorch": "segmentation-models-pytorch"}


def _third_party_imports() -> set[str]:
    names = set()
    for path in (ROOT / "fast_lightning").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("fast_lightning", "__future__")}


def _dist(requirement: str) -> str:
    for sep in "<>=!~[ ;":
        requirement = requirement.split(sep)[0]
    return requirement.lower().replace("_", "-")


def test_pyproject_lists_every_package_and_ships_the_configs():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fast_lightning").rglob("__init__.py")}
    assert on_disk <= listed, f"add to pyproject.toml [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert PYPROJECT["tool"]["setuptools"]["package-dir"]["fast_lightning.experiments"] == "experiments"
    assert PYPROJECT["project"]["scripts"]["fast-lightning"] == "fast_lightning.cli:main"


def test_pyproject_declares_what_the_package_imports_and_nothing_for_tests():
    runtime = {_dist(r) for r in PYPROJECT["project"]["dependencies"]}
    optional = {_dist(r) for extra in PYPROJECT["project"]["optional-dependencies"].values() for r in extra}
    needed = {_dist(DISTS.get(n, n)) for n in _third_party_imports()}
    assert needed <= runtime | optional, f"undeclared imports: {sorted(needed - runtime - optional)}"
    assert {"pyyaml", "huggingface-hub"} <= runtime and "pytest" not in runtime
    assert {"onnx", "onnxruntime"} <= {_dist(r) for r in PYPROJECT["project"]["optional-dependencies"]["onnx"]}


def test_every_command_answers_help(capsys):
    from fast_lightning.cli import main
    from fast_lightning.commands import COMMANDS

    for name in COMMANDS:
        assert main([name, "--help"]) == 0, name
        out = capsys.readouterr().out
        assert out.startswith(f"usage: fast-lightning {name}"), name
    main(["train-seg", "-h"])
    out = capsys.readouterr().out
    # defaults and types from the schema, descriptions from experiments/<group>/default.yaml
    assert "data.seg_scale" in out and "int = 64" in out and "THE segmenter working size" in out
    assert "segmentation.synth" in out and "diffusion.lambda_farm" not in out  # only the groups it reads
    main(["compare", "--help"])
    assert "redo" in capsys.readouterr().out and "bool (true/false/1/0) = false"
    main(["predict", "--help"])
    out = capsys.readouterr().out
    assert "threshold" in out and "val = the F1-optimal threshold" in out and "data.seg_scale" not in out


def test_print_config_prints_the_resolved_config_and_exits(capsys, tmp_path):
    from fast_lightning.cli import main

    assert main(["check-data", "profile=smoke", "data.seg_scale=128", "print_config=true"]) == 0
    out = capsys.readouterr().out
    assert "seg_scale: 128" in out and "profile: smoke" in out and "check-data:" not in out
    assert main(["train-seg", "profile=smoke", "--print-config", f"run_root={tmp_path / 'r'}"]) == 0
    assert "segmentation:" in capsys.readouterr().out and not (tmp_path / "r").exists()


def test_boolean_options_and_keys_take_true_false_1_0_and_nothing_else():
    from fast_lightning.commands.arguments import pop_options
    from fast_lightning.config import load_config
    from fast_lightning.errors import ConfigError, UserError

    for word, want in (("1", True), ("TRUE", True), ("0", False), ("false", False)):
        assert pop_options([f"redo={word}"], {"redo": False})[0]["redo"] is want
    with pytest.raises(UserError, match="option redo expects true/false/1/0, got 'yes'"):
        pop_options(["redo=yes"], {"redo": False})
    assert load_config(["profile=smoke", "trainer.fast_dev_run=1"]).trainer.fast_dev_run is True
    assert load_config(["profile=smoke", "data.channels=1"]).data.channels == 1  # ints stay ints
    with pytest.raises(ConfigError, match="trainer.fast_dev_run' expects bool"):
        load_config(["profile=smoke", "trainer.fast_dev_run=2"])


def test_diffusers_imported_before_fast_lightning_works():
    """The torchvision-on-CPU shim must not require importing fast_lightning first."""
    code = ("import diffusers, diffusers.models\nimport fast_lightning\n"
            "from fast_lightning.segmentation.predict import load_segmenter\nimport segmentation_models_pytorch\n"
            "print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv_gives_a_working_console_script(tmp_path):
    """`pip install --no-deps .` into a new venv that sees this venv's packages (pip, setuptools and the
    dependencies) through a .pth file: offline, seconds, no downloads; then `fast-lightning demo --help` and a
    config print run from outside the source tree. The source is copied first so the build writes nothing here."""
    exe, py, env, site, work = install_package(tmp_path)
    shown = subprocess.run([str(exe), "demo", "--help"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0 and shown.stdout.startswith("usage: fast-lightning demo"), shown.stderr[-2000:]
    where = subprocess.run([str(py), "-c", "import fast_lightning, fast_lightning.config as c; "
                            "print(fast_lightning.__file__); print(c.EXPERIMENTS_DIR)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=300).stdout.split()
    assert where[0].startswith(site) and where[1].startswith(site)  # the installed copy and its packaged configs
    cfg = subprocess.run([str(exe), "check-data", "profile=smoke", "print_config=true"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert cfg.returncode == 0 and "seg_scale: 64" in cfg.stdout, cfg.stderr[-2000:]


def test_trainer_passthrough_reaches_lightning_and_is_checked(tmp_path):
    from fast_lightning.config import load_config
    from fast_lightning.errors import ConfigError
    from fast_lightning.training import build_trainer

    cfg = load_config(["profile=smoke", "class_name=widget", "trainer.accumulate_grad_batches=3",
                       "trainer.limit_val_batches=0.5", "logger.backend=none"])
    assert dict(cfg.trainer.extra) == {"accumulate_grad_batches": 3, "limit_val_batches": 0.5}
    trainer = build_trainer(cfg, tmp_path, "seg", 2, callbacks=[])
    assert trainer.accumulate_grad_batches == 3 and trainer.limit_val_batches == 0.5 and trainer.logger is None
    with pytest.raises(ConfigError, match="trainer.accumulate_grad_batch is not a lightning.Trainer argument"):
        load_config(["profile=smoke", "trainer.accumulate_grad_batch=3"])
    with pytest.raises(ConfigError, match="trainer.max_steps is set by fast-lightning; use .*segmentation.max_steps"):
        load_config(["profile=smoke", "trainer.max_steps=3"])


def test_logger_backends(tmp_path):
    from fast_lightning.config import load_config
    from fast_lightning.errors import ConfigError
    from fast_lightning.training import build_logger

    base = ["profile=smoke", "class_name=widget"]
    csv_logger = build_logger(load_config(base + ["logger.backend=csv"]), tmp_path, "seg")
    assert type(csv_logger).__name__ == "CSVLogger" and Path(csv_logger.log_dir) == tmp_path / "logs"
    off = build_logger(load_config(base + ["logger.wandb.enabled=false"]), tmp_path, "seg")
    assert type(off).__name__ == "CSVLogger"  # W&B disabled: loss curves still land in a CSV
    assert build_logger(load_config(base + ["logger.backend=none"]), tmp_path, "seg") is False
    with pytest.raises(ConfigError, match="logger.backend"):
        load_config(base + ["logger.backend=mlflow"])
