"""diffusion.backbone=latent on a tiny random LDM saved in diffusers layout (no downloaded weights):
the model contract, what trains and what stays frozen, checkpoints, resume, synthesize and bench-sampling."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import fast_lightning  # noqa: F401
from fast_lightning.commands import train_diffusion
from fast_lightning.stages import fit_diffusion
from fast_lightning.config import load_config
from fast_lightning.diffusion import build_fast_diffusion
from fast_lightning.diffusion.latent import PretrainedFolderError, pretrained_fingerprint
from fast_lightning.diffusion.lightning_diffusion import DiffusionModule, load_fast_diffusion
from fast_lightning.runs import CheckpointError

from conftest import make_fake_mvtec

TYPES = ["crack", "dent"]
SCALE = 0.5  # not the LDM's 0.18215: proves the factor is read from the autoencoder config


def make_tiny_ldm(folder: Path, seed: int = 0) -> Path:
    """Random AutoencoderKL (f=4, 4 latent channels) + UNet2DConditionModel (cross_attention_dim 32)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4, sample_size=32,
                  scaling_factor=SCALE).save_pretrained(folder / "vae")
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                         layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                         attention_head_dim=8, norm_num_groups=8).save_pretrained(folder / "unet")
    return folder


@pytest.fixture(scope="session")
def ldm(tmp_path_factory) -> Path:
    return make_tiny_ldm(tmp_path_factory.mktemp("ldm") / "tiny-ldm")


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("latent_data")
    make_fake_mvtec(root)
    return root


def latent_args(ldm: Path) -> list[str]:
    return ["diffusion.backbone=latent", f"diffusion.pretrained={ldm}", "diffusion.adaptor=true"]


def build(ldm: Path, *extra: str):
    cfg = load_config(["profile=smoke", *latent_args(ldm), *extra])
    return build_fast_diffusion(cfg.diffusion, 3, len(TYPES), TYPES)


# ---- model contract ---------------------------------------------------------------------------------

def test_latent_model_contract(ldm):
    model = build(ldm)
    den = model.denoiser
    assert (den.latent_channels, den.latent_size, den.scaling_factor) == (4, 8, SCALE)
    assert den.type_tokens.shape == (len(TYPES) + 1, 4, 32)  # "normal" + one set per type, K=4 default
    trainable = {n.split(".")[0] if not n.startswith("denoiser.") else n for n, p in model.named_parameters()
                 if p.requires_grad}
    assert trainable == {"farm", "adaptor", "denoiser.type_tokens"}

    images = torch.rand(3, 3, 32, 32)
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(3)]  # noqa: E731
    z = model.to_model_space(images, gens())
    assert z.shape == (3, 4, 8, 8)
    # posterior sample: per-image generators make item i independent of its batch
    # (batched convolutions round differently: allclose, not equal)
    assert torch.allclose(model.to_model_space(images[1:2], gens()[1:2]), z[1:2], atol=1e-5)
    assert not torch.allclose(model.to_model_space(images[1:2], gens()[2:3]), z[1:2], atol=1e-3)
    mode = build(ldm, "diffusion.latent_encode=mode")
    mode.load_state_dict(model.state_dict())
    post = mode.denoiser.vae.encode(images * 2 - 1).latent_dist
    assert torch.allclose(mode.to_model_space(images), post.mode() * SCALE, atol=1e-6)
    assert not torch.allclose(z, post.mode() * SCALE)
    assert model.from_model_space(z).shape == (3, 3, 32, 32)

    mask = torch.zeros(3, 1, 32, 32)
    mask[:, :, 4:9, 10:24] = 1
    out = model.training_losses(z, mask, torch.tensor([0, 1, 2]))
    assert torch.isfinite(out["loss"]) and float(out["loss_farm"].detach()) > 0
    # type tokens really condition the UNet
    t = torch.full((3,), 500)
    e1 = model.predict_eps(z, t, torch.tensor([1, 1, 1]), mask)
    e2 = model.predict_eps(z, t, torch.tensor([2, 2, 2]), mask)
    assert not torch.allclose(e1, e2)


def test_unfreeze_unet_and_gradient_checkpointing(ldm):
    model = build(ldm, "diffusion.unfreeze_unet=true", "diffusion.gradient_checkpointing=true",
                  "diffusion.context_tokens=2")
    assert model.denoiser.type_tokens.shape[1] == 2
    assert all(p.requires_grad for p in model.denoiser.unet.parameters())
    assert not any(p.requires_grad for p in model.denoiser.vae.parameters())
    assert model.frozen_state_keys() and all(k.startswith("denoiser.vae.") for k in model.frozen_state_keys())
    assert model.denoiser.unet.is_gradient_checkpointing
    z = model.to_model_space(torch.rand(2, 3, 32, 32))
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:20, 8:20] = 1
    model.training_losses(z, mask, torch.tensor([1, 2]))["loss"].backward()
    assert model.denoiser.unet.conv_in.weight.grad is not None and model.farm.dec_out.weight.grad is not None


def test_clear_errors_for_bad_folders(ldm, tmp_path):
    with pytest.raises(PretrainedFolderError, match="diffusion.pretrained"):
        build_fast_diffusion(load_config(["profile=smoke", "diffusion.backbone=latent"]).diffusion, 3, 2, TYPES)
    broken = tmp_path / "broken"
    shutil.copytree(ldm / "vae", broken / "vae")
    with pytest.raises(PretrainedFolderError, match=r"missing unet/config.json.*huggingface-cli download"):
        build(broken)
    with pytest.raises(ValueError, match="diffusion.latent_encode"):
        build(ldm, "diffusion.latent_encode=median")
    with pytest.raises(ValueError, match="multiple of 16"):
        build(ldm, "diffusion.resolution=40")


# ---- training, checkpoints, resume --------------------------------------------------------------------

class RecordingModule(DiffusionModule):
    """Keeps the trained module and its initial weights for inspection."""

    made: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.initial = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        RecordingModule.made.append(self)


def train(data, runs, ldm, *extra):
    args = ["profile=smoke", f"data_root={data}", "class_name=widget", f"run_root={runs}", "trainer.precision=32-true",
            "trainer.enable_progress_bar=false", "diffusion.sample_every=0", "diffusion.num_log_samples=0",
            *latent_args(ldm), *extra]
    assert train_diffusion.main(args) == 0
    return Path(os.path.realpath(Path(runs) / "diffusion" / "widget" / "latest"))


@pytest.mark.slow
def test_train_only_farm_adaptor_tokens_change(data, ldm, tmp_path, monkeypatch):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    monkeypatch.setattr(fit_diffusion, "DiffusionModule", RecordingModule)
    RecordingModule.made.clear()
    run_dir = train(data, tmp_path, ldm, "diffusion.max_steps=3", "diffusion.num_log_samples=2",
                    "diffusion.sample_every=3")
    module = RecordingModule.made[-1]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and all(map(lambda v: v == v and abs(v) < 1e6, metrics["final"].values()))
    assert (run_dir / "samples" / "final.png").is_file()  # the sample grid decodes latents

    now = module.model.state_dict()
    changed = {k for k in now if not torch.equal(now[k], module.initial[k])}
    assert any(k.startswith("farm.") for k in changed) and any(k.startswith("adaptor.") for k in changed)
    assert "denoiser.type_tokens" in changed
    assert all(k.startswith(("farm.", "adaptor.", "denoiser.type_tokens")) for k in changed), changed
    # frozen weights are bit-identical to the folder's, and the EMA shares them instead of copying
    vae = AutoencoderKL.from_pretrained(ldm / "vae", local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(ldm / "unet", local_files_only=True)
    for ref, got in ((vae, module.model.denoiser.vae), (unet, module.model.denoiser.unet)):
        for (n, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
            assert torch.equal(a, b), n
    assert module.ema.denoiser.unet.conv_in.weight is module.model.denoiser.unet.conv_in.weight

    # the checkpoint holds only the trained parts + the folder and its fingerprint
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert not [k for k in ckpt["state_dict"] if ".denoiser.vae." in k or ".denoiser.unet." in k]
    assert "ema.denoiser.type_tokens" in ckpt["state_dict"]
    meta = ckpt["fast_lightning"]
    assert meta["pretrained_fingerprint"] == pretrained_fingerprint(ldm)
    model, _ = load_fast_diffusion(run_dir)
    assert torch.equal(model.denoiser.type_tokens, ckpt["state_dict"]["ema.denoiser.type_tokens"])


@pytest.mark.slow
def test_resume_and_wrong_folder(data, ldm, tmp_path):
    full = train(data, tmp_path / "a", ldm, "diffusion.max_steps=4", "diffusion.checkpoint_every=2")
    part = train(data, tmp_path / "b", ldm, "diffusion.max_steps=2", "diffusion.checkpoint_every=2")
    resumed = train(data, tmp_path / "b", ldm, "diffusion.max_steps=4", "diffusion.checkpoint_every=2",
                    f"resume={part}")
    sd_a = torch.load(full / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    sd_b = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        assert torch.allclose(sd_a[k].float(), sd_b[k].float(), atol=1e-5), k

    other = make_tiny_ldm(tmp_path / "other-ldm", seed=1)  # same architecture, other weights
    with pytest.raises(CheckpointError, match="fingerprint"):
        train(data, tmp_path / "b", other, "diffusion.max_steps=5", f"resume={resumed}")
    # the folder the checkpoint points at changed under it: loading for synthesis refuses too
    ckpt_path = full / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    ckpt["run_config"]["diffusion"]["pretrained"] = str(other)  # the run config the model is rebuilt from
    torch.save(ckpt, tmp_path / "pointed_elsewhere.ckpt")
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_fast_diffusion(tmp_path / "pointed_elsewhere.ckpt")


# ---- synthesis and benchmark --------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("window", ["crop", "full"])
def test_synthesize_and_bench_with_latent_backbone(data, ldm, tmp_path, window):
    from fast_lightning.cli import main
    from fast_lightning.data.io import load_image, load_mask

    runs = tmp_path / "runs"
    train(data, runs, ldm, "diffusion.max_steps=2", f"diffusion.window={window}")
    common = ["class_name=widget", f"data_root={data}", f"run_root={runs}", "profile=smoke",
              "trainer.precision=32-true", *latent_args(ldm), f"diffusion.window={window}"]
    assert main(["synthesize", *common, "synthesis.n=4", "synthesis.batch_size=4"]) == 0
    run_dir = (runs / "synthetic" / "widget" / "latest").resolve()
    rows = [json.loads(x) for x in (run_dir / "manifest.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    changed_inside = 0
    for r in rows:
        syn, mask, src = load_image(run_dir / r["image"]), load_mask(run_dir / r["mask"]), load_image(r["source"])
        assert syn.shape == src.shape == (3, 40, 48) and mask.sum() > 0
        inside = mask.bool().expand_as(src)
        assert torch.equal(syn[~inside], src[~inside])  # background bit-exact
        changed_inside += int(not torch.equal(syn[inside], src[inside]))
    assert changed_inside == 4  # the mask region really is generated

    if window == "crop":
        out = tmp_path / "bench.json"
        assert main(["bench-sampling", *common, f"out={out}", "batch=2", "ddpm_images=1", "repeats=1"]) == 0
        report = json.loads(out.read_text())
        assert report["samplers"]["aias-10-exact"]["nfe"] == 10 and report["samplers"]["ddpm-1000"]["nfe"] == 1000
