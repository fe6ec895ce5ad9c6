"""The synthesizer registry is a real registry: a new synthesizer is one module (tests/toy_synthesizer.py) plus
one line in ``SYNTHESIZERS``, and then works in compare / train-seg; the study asks the protocol
(``needs_diffusion``), not the name, whether a diffusion model must be provided."""

import csv

import pytest

from conftest import smoke_compare_args

from fast_lightning.synthesis import registry
from fast_lightning.synthesis.registry import Registered
from toy_synthesizer import ToyDiffusionSynthesizer, ToySquareSynthesizer, build_toy


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(registry.SYNTHESIZERS, "toy", Registered(ToySquareSynthesizer, build_toy))  # the one line
    monkeypatch.setitem(registry.SYNTHESIZERS, "toy_diff", Registered(ToyDiffusionSynthesizer, build_toy))


def test_needs_diffusion_is_asked_of_the_protocol(toy_registered):
    assert registry.needs_diffusion("fast") and registry.needs_diffusion("real_third+fast")
    assert not registry.needs_diffusion("draem") and not registry.needs_diffusion("toy")
    assert registry.needs_diffusion("toy_diff") and registry.needs_diffusion("toy+toy_diff")
    assert registry.parse_synths("toy,real_third+toy") == ["toy", "real_third+toy"]


def test_study_provides_a_diffusion_model_only_when_a_synthesizer_needs_one(toy_registered, fake_mvtec, tmp_path,
                                                                           monkeypatch):
    from fast_lightning import study
    from fast_lightning.commands.arguments import config_from_args

    class Provided(Exception):
        pass

    def ensure(cfg, redo=False):
        raise Provided

    monkeypatch.setattr(study, "ensure_diffusion", ensure)
    monkeypatch.setattr(study, "segmenter", lambda *a, **k: pytest.fail("no segmenter expected"))
    cfg = config_from_args(["profile=smoke", f"data_root={fake_mvtec}", "class_name=widget", f"run_root={tmp_path}"])
    with pytest.raises(Provided):
        study.run_study(cfg, ["toy_diff"], 1, False, tag="t")
    assert study.run_study(cfg, [], 1, False, tag="t") == []  # nothing to train, nothing provided


@pytest.mark.slow
def test_a_toy_synthesizer_added_by_one_registry_line_works_in_compare(toy_registered, data_root, tmp_path,
                                                                      monkeypatch):
    from fast_lightning.commands import compare

    monkeypatch.setattr("fast_lightning.study.ensure_diffusion", lambda *a, **k: pytest.fail("toy needs no model"))
    ToySquareSynthesizer.calls = 0
    out = tmp_path / "reports"
    assert compare.main(smoke_compare_args(data_root, tmp_path / "runs", out, "toy")) == 0
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["synthesizer"] for r in rows] == ["toy"]
    assert ToySquareSynthesizer.calls >= 2  # it made the training pairs (and the sample sheet row)
    assert "toy" in (out / "comparison.md").read_text()
