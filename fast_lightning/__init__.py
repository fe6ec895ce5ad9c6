"""fast-lightning: foreground-aware diffusion (FAST: FARM + AIAS) for defect synthesis and segmentation."""

from fast_lightning import compat as _compat  # noqa: F401  (must run before torchvision is imported)

__version__ = "0.1.0"
