"""Working scale, crops after synthesis, real+synthesis mixes and foreground-constrained baselines."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from fast_lightning.data.datamodule import crop_batch, crop_size
from fast_lightning.data.datasets import working_size
from fast_lightning.data.records import Record
from fast_lightning.synthesis import CutPasteSynthesizer, DraemSynthesizer, MixedSynthesizer, RealThirdSynthesizer
from fast_lightning.synthesis import SynthesisError, synth_parts
from fast_lightning.synthesis.registry import parse_synths
from conftest import write_png
import numpy as np


def _records(tmp_path, shapes):
    recs = []
    for i, (h, w) in enumerate(shapes):
        p = tmp_path / f"{i}.png"
        write_png(p, np.zeros((h, w, 3), np.uint8))
        recs.append(Record(image=str(p), mask=None, label="good", origin="train"))
    return recs


def test_working_size_keeps_aspect_and_rounds_to_32(tmp_path):
    recs = _records(tmp_path, [(400, 600), (410, 600), (900, 600)])  # median H/W = 410/600
    assert working_size(recs, 256) == (160, 256)   # 256 * 0.683 = 175 -> 160
    square = _records(tmp_path / "s", [(128, 128)])
    assert working_size(square, 64) == (64, 64)    # square images: a square working size
    tall = _records(tmp_path / "t", [(600, 300)])
    assert working_size(tall, 256) == (256, 128)
    with pytest.raises(ValueError, match="data.seg_scale"):
        working_size(recs, 100)


def test_crops_are_centred_on_the_defect_for_the_configured_share():
    b, H, W = 8, 64, 96
    masks = torch.zeros(b, 1, H, W)
    masks[:, :, 50:53, 85:90] = 1  # a defect near the corner
    batch = {"image": torch.rand(b, 3, H, W), "mask": masks, "foreground": torch.ones(b, 1, H, W)}
    out = crop_batch(batch, (32, 32), 1.0, torch.Generator().manual_seed(0))
    assert out["image"].shape == (b, 3, 32, 32) and out["foreground"].shape == (b, 1, 32, 32)
    assert bool((out["mask"].flatten(1).sum(1) > 0).all())  # every crop holds its defect
    none = crop_batch(batch, (32, 32), 0.0, torch.Generator().manual_seed(0))
    assert int((none["mask"].flatten(1).sum(1) > 0).sum()) < b  # uniform crops mostly miss it
    cfg = OmegaConf.create({"segmentation": {"crop": 128}})
    assert crop_size(cfg, (96, 256)) == (96, 128) and crop_size(cfg, (128, 128)) is None


def test_mixed_synthesizer_takes_real_share_first():
    real_img = torch.full((2, 3, 16, 16), 0.25)
    real_mask = torch.zeros(2, 1, 16, 16)
    real_mask[:, :, 4:8, 4:8] = 1
    mix = MixedSynthesizer(RealThirdSynthesizer(real_img, real_mask), CutPasteSynthesizer(), 0.5, 0.5)
    assert mix.batch_items(8) == 8 and mix.split(4) == 2
    normals = torch.rand(4, 3, 16, 16)
    imgs, masks = mix(normals, torch.ones(4, 1, 16, 16), torch.Generator().manual_seed(0))
    assert imgs.shape == normals.shape and masks.shape == (4, 1, 16, 16)
    assert torch.allclose(imgs[:2], torch.full_like(imgs[:2], 0.25))      # real pairs
    assert not torch.allclose(imgs[2:], torch.full_like(imgs[2:], 0.25))  # synthesized on the normals
    assert bool((masks.flatten(1).sum(1) > 0).all())
    assert synth_parts("real_third+fast") == ["real_third", "fast"]
    with pytest.raises(SynthesisError, match="segmentation.synth"):
        synth_parts("real_third+nope")
    assert parse_synths("fast,real_third+draem") == ["fast", "real_third+draem"]


@pytest.mark.parametrize("synth", [CutPasteSynthesizer(variant="patch"), CutPasteSynthesizer(variant="scar"),
                                   DraemSynthesizer(texture_source="procedural")])
def test_baseline_anomalies_stay_on_a_disk_foreground(synth):
    n, size = 6, 64
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disk = (((yy - 32) ** 2 + (xx - 32) ** 2) < 14 ** 2).float()[None, None].expand(n, 1, -1, -1).contiguous()
    # background: bright stripes; object: a flat grey, so a background source would show in the pasted content
    normals = torch.where(disk.bool(), torch.full((n, 3, size, size), 0.5),
                          (torch.arange(size) % 2).float().expand(n, 3, size, size))
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    images, masks = synth(normals, disk, gens)
    changed = (images != normals).any(1, keepdim=True)
    assert bool(masks.flatten(1).any(1).all())
    assert not bool((masks.bool() & ~disk.bool()).any())    # every anomaly pixel on the object
    assert not bool((changed & ~disk.bool()).any())         # nothing outside the object changes
    if isinstance(synth, CutPasteSynthesizer) and synth.variant == "patch":
        # the source patch is centred on the object: most pasted content is (jittered) object grey, not the
        # 0/1 background stripes (a source anywhere in the image would be mostly background here)
        inside = images[masks.expand_as(images).bool()]
        assert float(((inside > 0.3) & (inside < 0.7)).float().mean()) > 0.6
