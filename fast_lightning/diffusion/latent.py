"""Latent diffusion backbone (``diffusion.backbone=latent``): a frozen pretrained LDM read from a local folder.

The paper builds FAST on CompVis LDM txt2img-f8-large (KL autoencoder f=8, 256 px -> 4x32x32 latents, frozen
UNet). This backbone loads such a model from a folder in diffusers layout (``vae/`` or ``vqvae/`` +
``unet/``, ``from_pretrained(..., local_files_only=True)``: nothing is ever downloaded) and replaces the text
encoder by learned context tokens: K vectors of ``cross_attention_dim`` per anomaly type (row 0 = "normal"),
fed to the UNet's cross-attention as ``encoder_hidden_states``. That is prompt tuning, the equivalent of the
paper's textual inversion without a tokenizer. FARM, the Adaptor and the samplers work on the latents through
the ordinary :class:`Denoiser` contract (``encode``/``decode``), so nothing else needs a special case.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fast_lightning.diffusion.denoiser import Denoiser, register_denoiser
from fast_lightning.errors import ConfigError

AUTOENCODER_DIRS = ("vae", "vqvae")
AUTOENCODER_CLASSES = ("AutoencoderKL", "VQModel")
LATENT_ENCODE_MODES = ("sample", "mode")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
_HASH_CHUNK = 1 << 20

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


class PretrainedFolderError(ConfigError):
    """``diffusion.pretrained`` is missing, incomplete or not the folder a checkpoint was trained with."""


def _expected_layout(folder: Path) -> str:
    return (f"expected a diffusers folder: {folder}/vae/ (AutoencoderKL) or {folder}/vqvae/ (AutoencoderKL or "
            f"VQModel) and {folder}/unet/ (UNet2DConditionModel), each with config.json and "
            f"diffusion_pytorch_model.safetensors (or .bin). Download e.g. with `huggingface-cli download "
            f"CompVis/ldm-text2im-large-256 --local-dir {folder}` and pass diffusion.pretrained=<that folder>")


def _weight_files(sub: Path) -> list[Path]:
    return sorted(p for p in sub.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def locate_pretrained(folder: str | Path | None) -> tuple[Path, Path, Path]:
    """(folder, autoencoder dir, unet dir) of a diffusers-layout folder; a clear error listing what is missing."""
    if folder is None or str(folder) in ("", "None", "null"):
        raise PretrainedFolderError("diffusion.backbone=latent needs diffusion.pretrained=<local folder>; "
                                    + _expected_layout(Path("<folder>")))
    root = Path(str(folder)).expanduser()
    if not root.is_dir():
        raise PretrainedFolderError(f"diffusion.pretrained={folder}: no such folder; " + _expected_layout(root))
    missing = []
    ae = next((root / d for d in AUTOENCODER_DIRS if (root / d / "config.json").is_file()), None)
    if ae is None:
        missing.append("vae/config.json or vqvae/config.json")
    elif not _weight_files(ae):
        missing.append(f"{ae.name}/diffusion_pytorch_model.safetensors (or .bin)")
    unet = root / "unet"
    if not (unet / "config.json").is_file():
        missing.append("unet/config.json")
    elif not _weight_files(unet):
        missing.append("unet/diffusion_pytorch_model.safetensors (or .bin)")
    if missing:
        raise PretrainedFolderError(f"diffusion.pretrained={folder} is incomplete: missing {', '.join(missing)}; "
                                    + _expected_layout(root))
    return root, ae, unet


def pretrained_fingerprint(folder: str | Path | None) -> str:
    """Short hash identifying a pretrained folder: the autoencoder's and UNet's config.json plus, per weight
    file, its name, size and the first/last MiB. Cheap on a 5 GB folder, yet it tells apart two folders with
    the same architecture but different weights."""
    _, ae, unet = locate_pretrained(folder)
    h = hashlib.sha256()
    for sub in (ae, unet):
        h.update(sub.name.encode())
        h.update((sub / "config.json").read_bytes())
        for f in _weight_files(sub):
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with f.open("rb") as fh:
                h.update(fh.read(_HASH_CHUNK))
                if size > _HASH_CHUNK:
                    fh.seek(max(size - _HASH_CHUNK, _HASH_CHUNK))
                    h.update(fh.read(_HASH_CHUNK))
    return h.hexdigest()[:16]


def _load(cls, path: Path, what: str):
    import importlib.util

    # without `accelerate` diffusers warns and falls back to a normal load anyway: ask for it directly
    kw = {} if importlib.util.find_spec("accelerate") else {"low_cpu_mem_usage": False}
    try:
        return cls.from_pretrained(str(path), local_files_only=True, **kw)
    except Exception as exc:  # diffusers raises OSError/ValueError/EnvironmentError variants
        raise PretrainedFolderError(f"could not read the {what} from {path} with {cls.__name__}.from_pretrained "
                                    f"(local files only): {type(exc).__name__}: {exc}") from exc


class LatentDiffusionDenoiser(Denoiser):
    """Pretrained autoencoder + ``UNet2DConditionModel`` (frozen by default) + learned type tokens.

    ``encode``: [-1,1] images -> ``scaling_factor`` * latents (posterior sample as in the paper, or its mode);
    ``decode`` inverts it. ``forward`` ignores the mask: the pretrained UNet has no mask input; FARM and the
    Adaptor bring the mask in. The frozen parts are kept in eval mode and excluded from checkpoints
    (``frozen_prefixes``); the checkpoint stores the folder path and its fingerprint instead.
    """

    def __init__(self, pretrained: str | Path, image_channels: int, size: int, num_types: int,
                 context_tokens: int = 4, latent_encode: str = "sample", unfreeze_unet: bool = False,
                 gradient_checkpointing: bool = False) -> None:
        super().__init__()
        from diffusers import AutoencoderKL, UNet2DConditionModel, VQModel

        root, ae_dir, unet_dir = locate_pretrained(pretrained)
        if latent_encode not in LATENT_ENCODE_MODES:
            raise ConfigError(f"diffusion.latent_encode must be one of {list(LATENT_ENCODE_MODES)}, "
                             f"got {latent_encode!r}")
        if int(context_tokens) < 1:
            raise ConfigError(f"diffusion.context_tokens must be >= 1, got {context_tokens}")
        ae_class = json.loads((ae_dir / "config.json").read_text()).get("_class_name", "AutoencoderKL")
        if ae_class not in AUTOENCODER_CLASSES:
            raise PretrainedFolderError(f"{ae_dir}/config.json names _class_name={ae_class!r}; the latent backbone "
                                        f"reads {' or '.join(AUTOENCODER_CLASSES)}")
        self.vae = _load(AutoencoderKL if ae_class == "AutoencoderKL" else VQModel, ae_dir, "autoencoder")
        self.unet = _load(UNet2DConditionModel, unet_dir, "UNet")
        self.pretrained = str(root)
        self.fingerprint = pretrained_fingerprint(root)
        self.is_vq = ae_class == "VQModel"
        self.latent_encode = latent_encode
        self.unfreeze_unet = bool(unfreeze_unet)

        vc, uc = self.vae.config, self.unet.config
        if int(vc.in_channels) != int(image_channels):
            raise ConfigError(f"the autoencoder in {ae_dir} takes {vc.in_channels}-channel images but "
                             f"data.channels={image_channels}; set data.channels={vc.in_channels}")
        if int(uc.in_channels) != int(vc.latent_channels) or int(uc.out_channels) != int(vc.latent_channels):
            raise PretrainedFolderError(f"{unet_dir} expects {uc.in_channels} input / {uc.out_channels} output "
                                        f"channels but the autoencoder makes {vc.latent_channels}-channel latents")
        if uc.cross_attention_dim is None:
            raise PretrainedFolderError(f"{unet_dir} has no cross-attention (cross_attention_dim is null); the "
                                        f"latent backbone conditions through encoder_hidden_states")
        factor = 2 ** (len(vc.block_out_channels) - 1)
        if int(size) % factor:
            raise ConfigError(f"diffusion.resolution={size} must be divisible by the autoencoder's downsampling "
                             f"factor {factor}")
        self.image_channels = int(image_channels)
        self.image_size = int(size)
        self.latent_channels = int(vc.latent_channels)
        self.latent_size = int(size) // factor
        self.downsampling = factor
        self.num_types = int(num_types)
        self.scaling_factor = float(getattr(vc, "scaling_factor", None) or 0.18215)
        cross = uc.cross_attention_dim
        self.context_dim = int(cross[0] if isinstance(cross, (list, tuple)) else cross)
        # unit-variance tokens: the scale of the LayerNorm-ed text-encoder states the UNet was trained on
        g = torch.Generator().manual_seed(0)
        self.type_tokens = nn.Parameter(torch.randn(self.num_types + 1, int(context_tokens), self.context_dim,
                                                    generator=g))

        self.vae.requires_grad_(False)
        self.unet.requires_grad_(self.unfreeze_unet)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.vae.eval()

    # ------------------------------------------------------------------ contract
    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes (relative to this module) restored from ``pretrained``, not from checkpoints."""
        return ("vae.",) if self.unfreeze_unet else ("vae.", "unet.")

    def train(self, mode: bool = True) -> "LatentDiffusionDenoiser":
        super().train(mode)
        self.vae.eval()  # frozen: never in training mode (no dropout / norm statistics updates)
        if not self.unfreeze_unet:
            self.unet.eval()
        return self

    def context(self, cond: torch.Tensor | None, batch: int, device, dtype) -> torch.Tensor:
        if cond is None:
            cond = torch.zeros(batch, dtype=torch.long, device=device)
        return self.type_tokens[cond.to(device).long().reshape(-1)].to(dtype)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None,
                mask: torch.Tensor | None) -> torch.Tensor:
        b = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device).long().reshape(-1)
        if t.numel() == 1 and b != 1:
            t = t.expand(b)
        ctx = self.context(cond, b, x_t.device, x_t.dtype)
        return self.unet(x_t, t, encoder_hidden_states=ctx).sample

    def encode(self, images: torch.Tensor, generator: GeneratorArg = None) -> torch.Tensor:
        """[-1,1] images -> scaled latents. ``generator``: one torch.Generator, or one per image (the posterior
        noise of image i then comes from generator i only), or None (global RNG)."""
        x = images.to(next(self.vae.parameters()).dtype)
        with torch.no_grad():  # the autoencoder is always frozen
            if self.is_vq:
                z = self.vae.encode(x).latents
            else:
                post = self.vae.encode(x).latent_dist
                z = post.mode() if self.latent_encode == "mode" else post.mean + post.std * self._noise(post.mean,
                                                                                                      generator)
        return (z * self.scaling_factor).to(images.dtype)

    @staticmethod
    def _noise(like: torch.Tensor, generator: GeneratorArg) -> torch.Tensor:
        if generator is None or isinstance(generator, torch.Generator):
            dev = generator.device if generator is not None else like.device
            return torch.randn(like.shape, generator=generator, device=dev, dtype=torch.float32).to(like)
        gens = list(generator)
        if len(gens) != like.shape[0]:
            raise ValueError(f"encode got {len(gens)} generators for {like.shape[0]} images")
        return torch.stack([torch.randn(like.shape[1:], generator=g, device=g.device, dtype=torch.float32)
                            for g in gens]).to(like)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = (latents / self.scaling_factor).to(next(self.vae.parameters()).dtype)
        return self.vae.decode(z).sample.to(latents.dtype)


def latent_options(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validated ``diffusion.*`` keys of the latent backbone (errors name the key)."""
    def get(key, default):
        v = cfg.get(key, default) if cfg is not None else default
        return default if v is None and key != "pretrained" else v

    enc = str(get("latent_encode", "sample"))
    if enc not in LATENT_ENCODE_MODES:
        raise ConfigError(f"diffusion.latent_encode must be one of {list(LATENT_ENCODE_MODES)}, got {enc!r}")
    k = get("context_tokens", 4)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"diffusion.context_tokens must be an integer >= 1, got {k!r}")
    pretrained = get("pretrained", None)
    locate_pretrained(pretrained)  # clear error before anything is built
    return {"pretrained": str(Path(str(pretrained)).expanduser().resolve()), "latent_encode": enc,
            "context_tokens": int(k), "unfreeze_unet": bool(get("unfreeze_unet", False)),
            "gradient_checkpointing": bool(get("gradient_checkpointing", False))}


@register_denoiser("latent")
def _build_latent(cfg: Mapping[str, Any], image_channels: int, size: int, num_types: int) -> Denoiser:
    opts = latent_options(cfg)
    return LatentDiffusionDenoiser(opts["pretrained"], image_channels, size, num_types,
                                   context_tokens=opts["context_tokens"], latent_encode=opts["latent_encode"],
                                   unfreeze_unet=opts["unfreeze_unet"],
                                   gradient_checkpointing=opts["gradient_checkpointing"])
