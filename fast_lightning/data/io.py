"""Image and mask IO with Pillow (torchvision.io is unusable on CPU torch; see compat.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from fast_lightning.data.mask_resize import resize_mask
from fast_lightning.errors import DataError

SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")
_INTERPOLATION = {"bicubic": Image.BICUBIC, "area": Image.BOX, "bilinear": Image.BILINEAR}


def missing_file_message(path: str | Path) -> str:
    import os

    if Path(path).is_symlink():
        return (f"unreadable image: {path} is a broken symbolic link (its target {os.readlink(path)} does not exist); "
                "fix or delete the link")
    return f"image file not found: {path}"


def open_image(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except FileNotFoundError as exc:
        raise DataError(missing_file_message(path)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"unreadable or corrupt image: {path} ({exc}); replace or delete the file") from exc


def pil_to_tensor(img: Image.Image, channels: int = 3) -> torch.Tensor:
    """(C,H,W) float in [0,1]; grayscale is replicated to RGB, RGB converted to L for channels=1.
    16-bit images are divided by the type's range (65535), never by their own maximum: a per-image contrast
    stretch would make the same defect look different in every image."""
    mode = "L" if channels == 1 else "RGB"
    if img.mode in SIXTEEN_BIT:  # full 16-bit precision: synthesis pastes the source back bit for bit
        t = torch.from_numpy(np.clip(np.asarray(img, dtype=np.float32) / 65535.0, 0.0, 1.0))[None]
        return t.expand(channels, -1, -1).contiguous()
    arr = np.asarray(img.convert(mode), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _pil_size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (size[1], size[0])  # (H, W) -> PIL (W, H)


def resize_pil_image(img: Image.Image, size: int | tuple[int, int] | None,
                     interpolation: str = "bicubic") -> Image.Image:
    """Resize a file as it is read (Pillow's filters, so a stored image always decodes to the same pixels)."""
    if size is None:
        return img
    wh = _pil_size(size)
    if img.size == wh:
        return img
    if interpolation not in _INTERPOLATION:
        raise DataError(f"unknown data.image_interpolation {interpolation!r}; choose {', '.join(_INTERPOLATION)}")
    return img.resize(wh, _INTERPOLATION[interpolation])


def resize_tensor_image(x: torch.Tensor, hw: tuple[int, int], antialias: bool | None = None) -> torch.Tensor:
    """THE resize for image tensors already in memory: (B,C,h,w) or (C,h,w) in [0,1] -> float (..,C,H,W),
    bicubic, clamped to [0,1]; returned unchanged when already (H,W). ``antialias`` None = only when
    shrinking (synthesis windows and batches); True = always (the diffusion training dataset, which has
    always done so; antialiased bicubic upscaling uses a different kernel, so the two are kept apart)."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    if antialias is None:
        antialias = x.shape[-2] > hw[0] or x.shape[-1] > hw[1]
    batched = x if x.dim() == 4 else x[None]
    out = F.interpolate(batched.float(), size=tuple(hw), mode="bicubic", align_corners=False, antialias=antialias)
    return out.clamp_(0.0, 1.0) if x.dim() == 4 else out[0].clamp_(0.0, 1.0)


def image_to_tensor(img: Image.Image, size: int | tuple[int, int] | None = None, channels: int = 3,
                    interpolation: str = "bicubic") -> torch.Tensor:
    """THE image rule of the data path (modes, 16 bit, resize, channels), shared by training and predict:
    palette/RGBA/CMYK images become RGB (alpha dropped), grey and 16-bit keep their precision."""
    if img.mode not in ("L", "RGB", *SIXTEEN_BIT):
        img = img.convert("RGB")
    return pil_to_tensor(resize_pil_image(img, size, interpolation), channels).clamp_(0.0, 1.0)


def load_image(path: str | Path, size: int | tuple[int, int] | None = None, channels: int = 3,
               interpolation: str = "bicubic") -> torch.Tensor:
    return image_to_tensor(open_image(path), size, channels, interpolation)


def mask_pixels(img: Image.Image, path: str | Path | None = None) -> np.ndarray:
    """THE rule for which channel of a mask file holds the defect: its grey value, except for a mask with
    transparency whose colour is one flat value (white or black everywhere) while its alpha varies: then the
    alpha channel (converting to grey would drop alpha and read a flat white mask as a whole-image defect).
    Colour and alpha that vary and disagree are ambiguous: a DataError naming the file."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode not in ("RGBA", "LA", "PA", "La", "RGBa"):
        return np.asarray(img.convert("L") if img.mode not in ("L", "1", *SIXTEEN_BIT) else img)
    alpha = np.asarray(img.getchannel("A"))
    grey = np.asarray(img.convert("L"))
    if alpha.min() == alpha.max():
        return grey
    if grey.min() == grey.max():
        return alpha
    if not np.array_equal(grey >= 128, alpha >= 128):
        raise DataError(f"ambiguous mask {path}: its colour and its alpha channel (transparency) mark different "
                        "pixels; re-save it as a grey PNG with the defect white (255) on black (0)")
    return grey


def mask_to_binary(arr: np.ndarray, path: str | Path | None = None, warn: bool = True) -> np.ndarray:
    """Masks must be 0/255 (or 0/1); anything else is binarised at half the mask's own maximum, with a warning
    (a fixed 128 would turn a faint {0, 100} mask into an empty one; check-data rejects such masks anyway)."""
    arr = arr.astype(np.float32)
    peak = float(arr.max()) if arr.size else 0.0
    if peak <= 0:
        return np.zeros(arr.shape, dtype=np.float32)
    norm = arr / max(peak, 1.0)
    if warn and not np.isin(norm, (0.0, 1.0)).all():
        warnings.warn(f"non-binary mask {path}: binarised at 0.5", stacklevel=2)
    return (norm >= 0.5).astype(np.float32)


def load_mask(path: str | Path | None, size: int | tuple[int, int] | None = None,
              like: tuple[int, int] | None = None) -> torch.Tensor:
    """(1,H,W) float {0,1}; ``None`` gives an empty mask of ``size`` (or ``like`` = (H, W)). A ``size``
    resizes with ``data.mask_resize.resize_mask`` (the rule every path shares), never with PIL."""
    if path is None:
        hw = (size, size) if isinstance(size, int) else (size or like)
        if hw is None:
            raise ValueError("load_mask(None) needs size or like")
        return torch.zeros(1, *hw)
    arr = mask_to_binary(mask_pixels(open_image(path), path), path, warn=False)
    mask = torch.from_numpy(arr)[None]
    if size is not None:  # the one mask resize rule (thin defects survive, blob areas are kept)
        mask = resize_mask(mask, size)
    return mask


def bit_depth(path: str | Path) -> int:
    """16 for 16-bit images, else 8 (from the header only)."""
    with Image.open(path) as img:
        return 16 if img.mode in SIXTEEN_BIT else 8


def to_uint8(x):
    """THE [0,1] -> uint8 quantisation (clamp, then round half up: ``trunc(x * 255 + 0.5)``), for torch tensors
    and numpy arrays alike; PNG writers, the uint8 image cache and the preview grids all use it, so a pasted
    background written to disk and read back is bit-for-bit the source."""
    if isinstance(x, torch.Tensor):
        return (x.detach().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    return (np.clip(x, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def save_png(img: Image.Image, path: str | Path) -> Path:
    """A Pillow image -> PNG bytes -> atomic write (never a half-written file)."""
    from fast_lightning.runs import atomic_write_bytes
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def save_image(tensor: torch.Tensor, path: str | Path, bits: int = 8) -> None:
    """(C,H,W) in [0,1] -> PNG, written atomically; ``bits=16`` keeps a 16-bit source's depth (one channel
    only: PNG via Pillow has no 16-bit RGB, so 3-channel images are written at 8 bit)."""
    x = tensor.detach().float().clamp(0, 1).cpu().numpy()
    if bits == 16 and x.shape[0] == 1:
        img = Image.fromarray((x[0] * 65535.0 + 0.5).astype(np.uint16))
    else:
        arr = to_uint8(x)
        img = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
    save_png(img, path)
