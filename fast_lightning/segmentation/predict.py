"""Apply a trained segmenter to new images: load it (checkpoint, run folder or exported file) and predict.

Why here (below the commands): `make predict`, `make export` and the Python API share it. Every input rule is
the training data path's own: ``data.io.image_to_tensor`` (modes, 16 bit, interpolation) at the working size
stored in the checkpoint (``data.datasets.working_size``), so an image is seen exactly as the validation images
were; the probability map is then resized back (bilinear) to the image's native size and thresholded there.

    from fast_lightning.segmentation.predict import load_segmenter
    seg = load_segmenter("runs/seg/tire/latest")          # or a .ckpt, or an exported .pt / .onnx
    for p in seg.predict(["a.png", "b.png"]):             # Prediction objects (or ImageFailure)
        print(p.name, p.score, p.area_share, p.regions)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fast_lightning.data.io import image_to_tensor, open_image
from fast_lightning.errors import DataError, UserError

EXPORT_META = "fast_lightning.json"  # metadata file embedded in (and written next to) an exported model


@dataclass
class Prediction:
    """One image's result at its native size. ``prob`` float32 (H, W) in [0, 1]; ``mask`` bool (H, W)."""
    name: str
    path: str
    prob: torch.Tensor
    mask: torch.Tensor
    score: float          # image anomaly score: max probability at the working size (as image AUROC uses)
    threshold: float
    image: torch.Tensor | None = None  # (3, H, W) in [0, 1] for overlays (kept only when asked)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.prob.shape[0]), int(self.prob.shape[1])

    @property
    def area_px(self) -> int:
        return int(self.mask.sum())

    @property
    def area_share(self) -> float:
        return self.area_px / float(self.mask.numel())

    @property
    def regions(self) -> int:
        """Connected defect regions of the mask (8-connectivity)."""
        from scipy import ndimage

        return int(ndimage.label(self.mask.numpy(), structure=np.ones((3, 3), bool))[1])

    def row(self) -> dict:
        h, w = self.size
        return {"image": self.name, "path": self.path, "height": h, "width": w, "score": round(self.score, 6),
                "defect_area_px": self.area_px, "defect_area_percent": round(100 * self.area_share, 4),
                "regions": self.regions, "threshold": round(self.threshold, 6)}


@dataclass
class ImageFailure:
    """An input that could not be read: reported by name, the others are still predicted."""
    name: str
    path: str
    error: str


@dataclass
class Segmenter:
    """A trained segmenter plus everything needed to apply it (all read from its checkpoint / export)."""
    net: Callable[[torch.Tensor], torch.Tensor]  # (B,C,h,w) in [0,1] at the working size -> probabilities
    working_size: tuple[int, int]
    channels: int
    threshold: float
    threshold_source: str
    interpolation: str = "bicubic"
    class_name: str | None = None
    type_names: list[str] | None = None
    source: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    meta: dict = field(default_factory=dict)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B,C,h,w) in [0,1] at the working size -> (B,1,h,w) float32 probabilities."""
        return self.net(images.to(self.device)).float().cpu()

    def prepare(self, img: Image.Image) -> torch.Tensor:
        """A Pillow image -> (C,h,w) network input at the working size (the data path's rule)."""
        return image_to_tensor(img, self.working_size, self.channels, self.interpolation)

    def predict(self, images: Iterable[str | os.PathLike], batch_size: int = 8, threshold: float | None = None,
                keep_image: bool = False, names: list[str] | None = None) -> Iterator[Prediction | ImageFailure]:
        """Yield a Prediction per readable image (an ImageFailure per unreadable one), in input order,
        ``batch_size`` images per forward pass. ``threshold`` None: the stored validation threshold."""
        thr = self.threshold if threshold is None else float(threshold)
        paths = [str(p) for p in images]
        names = names or [Path(p).name for p in paths]
        for start in range(0, len(paths), max(1, int(batch_size))):
            chunk = list(zip(names[start:start + batch_size], paths[start:start + batch_size]))
            loaded, out = [], {}
            for name, path in chunk:
                try:
                    loaded.append((name, path, open_image(path)))
                except DataError as exc:
                    out[path] = ImageFailure(name, path, str(exc))
            if loaded:
                x = torch.stack([self.prepare(img) for _, _, img in loaded])
                probs = self.probabilities(x)
                for (name, path, img), p in zip(loaded, probs):
                    h, w = img.size[1], img.size[0]
                    native = F.interpolate(p[None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
                    native = native.clamp_(0.0, 1.0)
                    view = image_to_tensor(img, None, 3) if keep_image else None
                    out[path] = Prediction(name, path, native, native >= thr, float(p.max()), thr, view)
            for _, path in chunk:
                yield out[path]


# ---- loading -------------------------------------------------------------------------------------------------
def resolve_seg_checkpoint(path: str | os.PathLike) -> Path:
    """A .ckpt file, or a seg run dir / ``latest`` link -> its checkpoints/best.ckpt (else last.ckpt)."""
    from fast_lightning.runs import resolve_checkpoint

    p = Path(os.path.realpath(path))
    if p.is_dir() and (p / "checkpoints" / "best.ckpt").is_file():
        return p / "checkpoints" / "best.ckpt"
    return resolve_checkpoint(path)


def load_seg_checkpoint(path: str | os.PathLike, trust: bool = False) -> tuple[Path, dict]:
    """(file, checkpoint dict) of a segmentation checkpoint, through the one safe reader (``trust``: see
    ``runs.read_checkpoint``); UserError otherwise."""
    from fast_lightning.runs import CheckpointError, read_checkpoint, saved_run_config

    try:
        ckpt_path = resolve_seg_checkpoint(path)
        ckpt = read_checkpoint(ckpt_path, trust=trust)
    except CheckpointError as exc:
        raise UserError(str(exc)) from exc
    meta = ckpt.get("fast_lightning") or {}
    if meta.get("kind") != "segmentation":
        raise UserError(f"{ckpt_path} is not a segmentation checkpoint (kind={meta.get('kind')!r}); pass a "
                        "checkpoint or run directory written by `make train-seg` (runs/seg/<class>/...)")
    if not saved_run_config(ckpt):
        raise UserError(f"{ckpt_path} holds no saved run config (run_config): cannot rebuild its model")
    return ckpt_path, ckpt


def pick_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={device} asked for CUDA, but torch sees no GPU (device=cpu or device=auto)")
    return dev


def _threshold_from(meta: dict) -> tuple[float, str]:
    if meta.get("threshold_chosen_on") == "validation":
        return float(meta["threshold"]), "validation (stored in the checkpoint)"
    return float(meta.get("threshold", 0.5)), "default 0.5 (no validation threshold in this checkpoint)"


def _require(meta: dict, path, keys=("working_size", "channels", "threshold")) -> None:
    missing = [k for k in keys if meta.get(k) is None]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)} in its fast_lightning metadata (written by an older "
                        "version before the working size was stored); retrain it with `make train-seg`")


def module_from_checkpoint(ckpt_path: Path, ckpt: dict):
    """The SegmentationModule of a checkpoint, weights loaded, in eval mode (no pretrained-weight download)."""
    from omegaconf import OmegaConf

    from fast_lightning.runs import saved_run_config
    from fast_lightning.segmentation.lightning_segmenter import SegmentationModule

    meta = ckpt["fast_lightning"]
    _require(meta, ckpt_path)
    seg = OmegaConf.to_container(saved_run_config(ckpt).segmentation, resolve=True)
    seg["encoder_weights"] = None  # the weights come from the checkpoint
    hp = ckpt.get("hyper_parameters") or {}
    module = SegmentationModule(seg, int(meta["channels"]), tuple(meta["working_size"]), meta.get("class_name"),
                                meta.get("synthesizer"), meta.get("type_names") or hp.get("type_names"),
                                str(meta.get("image_interpolation", "bicubic")))
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise UserError(f"{ckpt_path} does not match its own config ({type(exc).__name__}: {exc})") from exc
    module.on_load_checkpoint(ckpt)
    return module.eval()


def load_segmenter(path: str | os.PathLike, device: str | torch.device = "auto", trust: bool = False) -> Segmenter:
    """A Segmenter from a train-seg checkpoint / run folder / ``latest`` link (read safely unless ``trust``), or
    from a file written by `make export` (.pt TorchScript, .onnx with onnxruntime installed)."""
    dev = pick_device(device)
    p = Path(path)
    if p.suffix in (".pt", ".onnx") and p.is_file():
        return _load_exported(p, dev)
    ckpt_path, ckpt = load_seg_checkpoint(path, trust=trust)
    module = module_from_checkpoint(ckpt_path, ckpt).to(dev)
    meta = ckpt["fast_lightning"]
    thr, source = _threshold_from(meta)
    return Segmenter(module.predict_proba, tuple(meta["working_size"]), int(meta["channels"]), thr, source,
                     str(meta.get("image_interpolation", "bicubic")), meta.get("class_name"), meta.get("type_names"),
                     str(ckpt_path), dev, dict(meta))


def export_metadata(meta: dict) -> dict:
    """What an exported model carries beside its weights (JSON)."""
    thr, source = _threshold_from(meta)
    keys = ("class_name", "type_names", "synthesizer", "arch", "encoder", "working_size", "channels",
            "image_interpolation", "normalization")
    return {**{k: meta.get(k) for k in keys}, "threshold": thr, "threshold_source": source,
            "input": "float32 (B, channels, H, W) in [0, 1], resized to working_size with image_interpolation",
            "output": "float32 (B, 1, H, W) anomaly probability (sigmoid applied; normalisation inside)"}


def _load_exported(path: Path, dev: torch.device) -> Segmenter:
    if path.suffix == ".pt":
        extra = {EXPORT_META: ""}
        try:
            net = torch.jit.load(str(path), map_location=dev, _extra_files=extra)
        except (RuntimeError, ValueError) as exc:
            raise UserError(f"{path} is not a TorchScript model written by `make export` ({exc})") from exc
        meta = json.loads(extra[EXPORT_META] or "{}")
        run = net.eval()
    else:
        run, meta = _onnx_runner(path, dev)
    _require(meta, path)
    return Segmenter(run, tuple(meta["working_size"]), int(meta["channels"]), float(meta["threshold"]),
                     str(meta.get("threshold_source", "stored in the export")),
                     str(meta.get("image_interpolation") or "bicubic"), meta.get("class_name"), meta.get("type_names"),
                     str(path), dev, meta)


def _onnx_runner(path: Path, dev: torch.device):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise UserError(f"{path} is an ONNX model: install the optional extra (pip install 'fast-lightning[onnx]', "
                        "i.e. onnx and onnxruntime) or export with FORMAT=torchscript") from exc
    side = path.with_suffix(".json")
    if not side.is_file():
        raise UserError(f"{path} has no metadata file {side.name} beside it (written by `make export`)")
    meta = json.loads(side.read_text())
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if dev.type == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), providers=providers)
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().float().cpu().numpy()})[0])

    return run, meta
