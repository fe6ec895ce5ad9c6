"""The Python API (fast_lightning.api): synthesize onto given images and masks with a trained diffusion model."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from conftest import make_fake_mvtec, write_png


@pytest.fixture(scope="module")
def diffusion_ckpt(tmp_path_factory):
    from fast_lightning.commands import train_diffusion

    root = tmp_path_factory.mktemp("api_data")
    make_fake_mvtec(root)
    runs = tmp_path_factory.mktemp("api_runs")
    with contextlib.redirect_stdout(io.StringIO()):
        code = train_diffusion.main(["profile=smoke", "class_name=widget", f"data_root={root}", f"run_root={runs}",
                                     "diffusion.max_steps=2", "diffusion.checkpoint_every=2",
                                     "diffusion.sample_every=0", "diffusion.num_train_timesteps=100",
                                     "trainer.enable_progress_bar=false", "logger.backend=none"])
    assert code == 0
    return runs / "diffusion" / "widget" / "latest", root


def test_api_synthesizes_inside_the_given_masks_only(diffusion_ckpt, tmp_path):
    from fast_lightning.api import load_synthesizer, synthesize
    from fast_lightning.data.io import load_image
    from fast_lightning.errors import UserError

    ckpt, root = diffusion_ckpt
    synth = load_synthesizer(ckpt, device="cpu", steps=3)
    assert synth.type_names == ["crack", "dent"]
    src = sorted((root / "widget" / "train" / "good").glob("*.png"))[:2]
    mask = np.zeros((40, 48), np.uint8)
    mask[10:20, 12:30] = 255
    write_png(tmp_path / "m.png", mask)
    big = torch.rand(3, 64, 80)  # a tensor input of another size
    big_mask = torch.zeros(1, 64, 80)
    big_mask[:, 30:40, 20:50] = 1
    pairs = synthesize(synth, [src[0], big], [tmp_path / "m.png", big_mask], ["crack", "dent"], seed=3)
    for (image, m), source in zip(pairs, [load_image(src[0]), big]):
        assert image.shape == source.shape and m.shape == (1, *source.shape[-2:])
        outside = (m < 0.5).expand_as(source)
        assert torch.equal(image[outside], source[outside])  # the source, bit for bit, outside the mask
        assert m.sum() > 0 and not torch.equal(image, source)
    again = synthesize(synth, [src[0], big], [tmp_path / "m.png", big_mask], ["crack", "dent"], seed=3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(again, pairs))  # seeded: the same call, the same pairs
    other = synthesize(synth, [src[0], big], [tmp_path / "m.png", big_mask], ["crack", "dent"], seed=4)
    assert not torch.equal(other[0][0], pairs[0][0])
    with pytest.raises(UserError, match="do not fit this model"):
        synthesize(synth, [src[0]], [tmp_path / "m.png"], "scratch")
