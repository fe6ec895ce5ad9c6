"""Export a trained segmenter for deployment: TorchScript (always) or ONNX (optional extra ``[onnx]``).

The exported network takes float32 (B, C, H, W) images in [0, 1] resized to the stored working size and
returns (B, 1, H, W) probabilities: ImageNet normalisation and the sigmoid are inside, so a consumer needs only
the metadata written with it (working size, interpolation, channels, threshold; ``predict.export_metadata``).
Height/width are dynamic when a check at export time shows the traced graph reproduces the eager model at a
second size; otherwise the metadata says the model is fixed to the working size.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from fast_lightning.errors import UserError
from fast_lightning.runs import atomic_write_json
from fast_lightning.segmentation.predict import EXPORT_META, export_metadata, load_seg_checkpoint, module_from_checkpoint

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}
PARITY_ATOL = 1e-4  # fp32 exported vs PyTorch, max abs difference of the probabilities


class ExportedSegmenter(nn.Module):
    """images in [0, 1] -> probabilities: normalisation + smp network + sigmoid, nothing else."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model((images - self.mean) / self.std))


def exportable(ckpt_path: str | os.PathLike, trust: bool = False) -> tuple[ExportedSegmenter, dict]:
    """(fp32 eval-mode network with normalisation inside, checkpoint metadata) of a segmentation checkpoint."""
    path, ckpt = load_seg_checkpoint(ckpt_path, trust=trust)
    module = module_from_checkpoint(path, ckpt)
    net = ExportedSegmenter(module.inference_model, module.norm_mean, module.norm_std).float().eval()
    return net, dict(ckpt["fast_lightning"], source=str(path))


def example_batch(meta: dict, batch: int = 2, size: tuple[int, int] | None = None, seed: int = 0) -> torch.Tensor:
    """A fixed, seeded input batch at the working size (export tracing and the parity check)."""
    h, w = size or tuple(meta["working_size"])
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, int(meta["channels"]), int(h), int(w), generator=g)


def _dynamic_ok(run, net: nn.Module, meta: dict) -> bool:
    """Does ``run`` match the eager network at a second size (working size + one stride-32 step per side)?"""
    h, w = meta["working_size"]
    x = example_batch(meta, 1, (h + 32, w + 32), seed=1)
    try:
        with torch.no_grad():
            return bool((run(x) - net(x)).abs().max() <= PARITY_ATOL)
    except Exception:  # noqa: BLE001  (a graph that cannot take the size is "fixed", not an export failure)
        return False


def _atomic_path(out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    return Path(tmp)


def export_segmenter(ckpt: str | os.PathLike, out: str | os.PathLike, fmt: str = "torchscript",
                     trust: bool = False) -> dict:
    """Write the exported model to ``out`` and its metadata to ``out`` with .json; returns the metadata
    (with ``parity_max_abs_diff`` measured on a fixed batch and ``dynamic_hw``)."""
    if fmt not in FORMATS:
        raise UserError(f"FORMAT={fmt!r}: choose {' or '.join(FORMATS)}")
    net, meta = exportable(ckpt, trust=trust)
    out = Path(out)
    x = example_batch(meta)
    with torch.no_grad():
        ref = net(x)
    tmp = _atomic_path(out)
    info = export_metadata(meta)
    try:
        if fmt == "torchscript":
            with torch.no_grad():
                traced = torch.jit.trace(net, x, check_trace=False)
            dynamic = _dynamic_ok(traced, net, meta)
            with torch.no_grad():
                got = traced(x)
            info.update(format="torchscript", dynamic_hw=dynamic, source_checkpoint=meta["source"])
            traced.save(str(tmp), _extra_files={EXPORT_META: json.dumps(info)})
        else:
            got, dynamic = _export_onnx(net, x, tmp, meta)
            info.update(format="onnx", dynamic_hw=dynamic, source_checkpoint=meta["source"])
        diff = float((got - ref).abs().max())
        if diff > PARITY_ATOL:
            raise UserError(f"exported {fmt} model differs from PyTorch by {diff:.2e} > {PARITY_ATOL} on a fixed batch")
        info["parity_max_abs_diff"] = diff
        if fmt == "torchscript":  # re-save so the embedded metadata carries the measured parity too
            traced.save(str(tmp), _extra_files={EXPORT_META: json.dumps(info)})
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    info["size_note"] = ("height/width dynamic (multiples of 32)" if info["dynamic_hw"] else
                         f"fixed input size {meta['working_size'][0]}x{meta['working_size'][1]}")
    atomic_write_json(out.with_suffix(".json"), info)
    return info


def _export_onnx(net: nn.Module, x: torch.Tensor, tmp: Path, meta: dict) -> tuple[torch.Tensor, bool]:
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError as exc:
        raise UserError("FORMAT=onnx needs the optional extra: pip install 'fast-lightning[onnx]' (onnx, "
                        "onnxruntime); FORMAT=torchscript needs nothing more") from exc
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(net, (x,), str(tmp), input_names=["image"], output_names=["probability"],
                      dynamic_axes={"image": axes, "probability": axes}, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])

    def run(t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"image": t.numpy()})[0])

    return run(x), _dynamic_ok(run, net, meta)
