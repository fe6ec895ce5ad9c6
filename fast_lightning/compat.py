"""Import-time fixes for the environments we run in. Imported first by the package.

PyPI's torchvision wheel is a CUDA build. On a CPU-only torch its compiled ops fail to load and
``import torchvision`` dies in its fake-kernel registration for ``torchvision::nms``/``qnms``; smp, timm,
torchmetrics and lightning all import torchvision, so nothing would import. When (and only when) the
compiled library cannot be loaded and torch has no CUDA, we declare the two op schemas so the import
succeeds. torchvision.ops / torchvision.io stay unusable then: the project reads images with Pillow.
On machines where the compiled ops load, this module does nothing.
"""

from __future__ import annotations

import importlib.util
import os
import sys

_LIBRARY = None  # keeps the torch.library.Library alive for the life of the process


def _torchvision_ops_loadable(torch) -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # not installed: nothing to fix
    folder = list(spec.submodule_search_locations)[0]
    candidates = [f for f in os.listdir(folder) if f.startswith("_C") and f.endswith((".so", ".pyd"))]
    if not candidates:
        return False
    try:
        torch.ops.load_library(os.path.join(folder, candidates[0]))
        return True
    except (OSError, RuntimeError):
        return False


def install_torchvision_shim() -> bool:
    """Returns True when the shim was needed and installed."""
    global _LIBRARY
    if "torchvision" in sys.modules or _LIBRARY is not None:
        return False
    import torch

    if torch.cuda.is_available() or _torchvision_ops_loadable(torch):
        return False
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = lib
    return True


install_torchvision_shim()
