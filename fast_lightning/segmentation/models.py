"""Segmenter factory on segmentation-models-pytorch (smp 0.6): one logit channel, no surprise downloads.

Why a wrapper: smp raises KeyError / bare hub errors that do not say which config key is wrong, and with
``encoder_weights="imagenet"`` it silently reaches out to the Hugging Face hub (with ~25 s of retries when
offline). Here the default is random init (``encoder_weights=None``); pretrained weights are loaded only
from the local Hugging Face cache unless ``allow_download=True``.

Input sizes accepted by smp 0.6 with default settings (measured with encoder resnet18):
- Unet: any height/width (it pads internally): divisor 1.
- UnetPlusPlus, MAnet, Linknet, FPN, UPerNet, Segformer: multiples of 32.
- DeepLabV3Plus: multiples of 16; DeepLabV3, PSPNet: multiples of 8.
- PAN: multiples of 16 and at least 128 px.
- DPT: only ``tu-`` (timm ViT) encoders; multiples of the ViT patch size.
``required_divisor`` reads the real requirement from the model itself (built on the meta device, free).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from fast_lightning.errors import ConfigError, UserError

__all__ = ["build_segmenter", "required_divisor", "check_resolution", "available_archs"]

# minimum spatial size where smp's decoders would otherwise pool down to nothing
_MIN_SIZE = {"pan": 128}


def _smp():
    import fast_lightning  # noqa: F401  (torchvision shim before smp/timm import torchvision)
    import segmentation_models_pytorch as smp

    return smp


def available_archs() -> list[str]:
    """Lower-case smp architecture names accepted by ``build_segmenter`` (case-insensitive)."""
    return list(_smp().MODEL_ARCHITECTURES_MAPPING.keys())


def _check_arch(arch: str) -> str:
    names = available_archs()
    key = str(arch).lower()
    if key not in names:
        raise ConfigError(f"segmentation.arch={arch!r} is not an smp architecture; valid values: {', '.join(names)}")
    return key


def _check_encoder(encoder: str) -> None:
    smp = _smp()
    known = smp.encoders.get_encoder_names()
    if encoder in known:
        return
    if encoder.startswith("tu-"):
        import timm

        if timm.is_model(encoder[3:]):
            return
    examples = ["resnet18", "resnet34", "resnet50", "efficientnet-b0", "mobilenet_v2", "mit_b0",
                "tu-convnext_tiny"]
    examples = [e for e in examples if e in known or e.startswith("tu-")]
    raise ConfigError(
        f"segmentation.encoder={encoder!r} is unknown; valid values include {', '.join(examples)} "
        f"({len(known)} smp encoders, or 'tu-<timm model name>')"
    )


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Force huggingface_hub into offline mode (cache only) for the duration of the block."""
    if not offline:
        yield
        return
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - smp depends on huggingface_hub
        yield
        return
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def build_segmenter(
    arch: str = "Unet",
    encoder: str = "resnet18",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    allow_download: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """smp model mapping (B, in_channels, H, W) images to (B, 1, H, W) anomaly LOGITS.

    encoder_weights: None = random init (default, never touches the network). A name such as "imagenet" is
    loaded from the local Hugging Face cache; when it is not there a RuntimeError says how to fix it. Set
    ``allow_download=True`` to let smp download (machines with internet access only).
    Extra kwargs go to the smp architecture (e.g. decoder_channels).
    """
    key = _check_arch(arch)
    _check_encoder(encoder)
    if encoder_weights in ("", "none", "None", "null"):
        encoder_weights = None
    smp = _smp()
    try:
        with _hub_offline(not allow_download):
            model = smp.create_model(key, encoder_name=encoder, encoder_weights=encoder_weights,
                                     in_channels=int(in_channels), classes=1, **kwargs)
    except (KeyError, ValueError) as err:
        # wrong weights name for this encoder, or an arch/encoder combination smp rejects
        raise ConfigError(
            f"cannot build segmentation.arch={arch!r} with segmentation.encoder={encoder!r} "
            f"(encoder_weights={encoder_weights!r}): {err}"
        ) from err
    except Exception as err:
        if encoder_weights is None:
            raise
        where = "the local Hugging Face cache" if not allow_download else "the Hugging Face hub"
        raise UserError(
            f"pretrained weights {encoder_weights!r} for segmentation.encoder={encoder!r} could not be loaded "
            f"from {where} ({type(err).__name__}: {str(err).splitlines()[0][:200]}). Set "
            "segmentation.encoder_weights=null to train from random init, put the weights into the Hugging Face "
            "cache (HF_HOME), or allow the download with segmentation.allow_download=true (needs internet)."
        ) from err
    return model


def required_divisor(arch: str = "Unet", encoder: str = "resnet18", **kwargs: Any) -> int:
    """Height/width must be a multiple of this for ``arch`` (1 = any size). Reads smp's own check."""
    key = _check_arch(arch)
    _check_encoder(encoder)
    smp = _smp()
    try:
        with torch.device("meta"):
            model = smp.create_model(key, encoder_name=encoder, encoder_weights=None, classes=1, **kwargs)
    except (KeyError, ValueError) as err:
        raise ConfigError(f"cannot build segmentation.arch={arch!r} with segmentation.encoder={encoder!r}: {err}") from err
    if not getattr(model, "requires_divisible_input_shape", True):
        return 1
    return int(getattr(model.encoder, "output_stride", 32))


def check_resolution(resolution: int | tuple[int, int], arch: str = "Unet", encoder: str = "resnet18",
                     **kwargs: Any) -> None:
    """Raise ValueError naming data.seg_scale when ``arch`` cannot segment images of that size."""
    h, w = (resolution, resolution) if isinstance(resolution, int) else (int(resolution[0]), int(resolution[1]))
    div = required_divisor(arch, encoder, **kwargs)
    if h % div or w % div:
        up = ((h + div - 1) // div * div, (w + div - 1) // div * div)
        raise ConfigError(
            f"data.seg_scale={resolution} does not suit segmentation.arch={arch!r} (needs multiples of {div}); "
            f"use e.g. {up[0] if up[0] == up[1] else up}, or segmentation.arch=Unet which takes any size"
        )
    min_size = _MIN_SIZE.get(str(arch).lower(), 0)
    if min(h, w) < min_size:
        raise ConfigError(f"data.seg_scale={resolution} is too small for segmentation.arch={arch!r} "
                         f"(needs at least {min_size} px)")
