"""`make check-data`: validate a class folder before anything trains on it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fast_lightning.data.datasets import working_size
from fast_lightning.data.defect_scale import defect_scale
from fast_lightning.data.io import mask_to_binary, open_image
from fast_lightning.data.records import DataError, read_class
from fast_lightning.data.split import make_split
from fast_lightning.progress import progress as progress_bar


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_class(root: str | Path, class_name: str, generator_fraction: float = 1 / 3,
                val_fraction: float = 1 / 3, progress: bool = True, resolution: int | None = None,
                seg_scale: int | None = None) -> CheckReport:
    """``resolution`` (data.resolution) adds the defect-scale table of the real-test masks at the segmenter's
    working size (``data.datasets.working_size``: ``seg_scale`` on the longer side when set)."""
    report = CheckReport()
    try:
        index = read_class(root, class_name, strict=False)
    except DataError as exc:
        report.errors.append(str(exc))
        return report
    report.errors.extend(index.problems)
    records = index.train_good + index.test
    for rec in progress_bar(records, desc=f"checking {class_name}", disable=not progress, unit="img"):
        try:
            img = open_image(rec.image)
        except DataError as exc:
            report.errors.append(str(exc))
            continue
        if rec.mask is None:
            continue
        try:
            mask = open_image(rec.mask)
        except DataError as exc:
            report.errors.append(str(exc))
            continue
        if mask.size != img.size:
            report.errors.append(
                f"mask size {mask.size[0]}x{mask.size[1]} differs from its image {img.size[0]}x{img.size[1]}: "
                f"{rec.mask} (image {rec.image})"
            )
            continue
        arr = np.asarray(mask.convert("L"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            binary = mask_to_binary(arr, rec.mask)
        if caught:
            report.warnings.append(f"non-binary mask (binarised at 0.5): {rec.mask}")
        if binary.sum() == 0:
            report.warnings.append(f"empty mask for a defect image: {rec.mask}")
    split = make_split(index, generator_fraction, val_fraction)
    counts = split.to_json()["counts"]
    labels = sorted({k for c in counts.values() for k in c})
    width = max(len(x) for x in labels + ["type"])
    report.lines.append(f"class {class_name} ({index.format} layout) at {Path(root) / class_name}")
    report.lines.append(f"{'type':<{width}}  " + "  ".join(f"{s:>15}" for s in counts))
    for label in labels:
        report.lines.append(f"{label:<{width}}  " + "  ".join(f"{counts[s].get(label, 0):>15}" for s in counts))
    report.lines.append(f"{'total':<{width}}  " + "  ".join(f"{sum(counts[s].values()):>15}" for s in counts))
    if resolution:
        try:
            size = working_size(split.normal_train, seg_scale, int(resolution))
        except OSError:  # an unreadable normal image (already listed in the errors): square seg_scale
            size = int(seg_scale)
        scale = defect_scale(split.real_test, size)
        report.lines.extend(scale.lines())
        if scale.warning():
            report.warnings.append(scale.warning())
    return report
