"""Defect scale at the working resolution: how many real-test defects survive the resize, and how big they are.

Evaluation masks are resized with the evaluation path's own rule (``LabelledDataset`` -> ``load_mask(path,
resolution)``), so a mask counted as vanished here is exactly a mask the metrics see as empty. A thin scratch
on a 1024 px image can disappear at 256 px; the run then scores that defect image as defect-free
(docs/METRICS.md), so `make check-data` and every segmentation run report the share that stays visible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from statistics import median

from fast_lightning.data.io import load_mask
from fast_lightning.data.records import Record
from fast_lightning.errors import DataError

VANISHED_WARN_SHARE = 0.10  # warn when more than this share of real-test defect masks is empty after resizing


@dataclass
class TypeScale:
    masks: int                # defect masks of this type in the real-test split
    kept: int                 # masks with at least one anomalous pixel at the working resolution
    kept_share: float
    empty_native: int         # masks already empty at their native size (check-data warns about each)
    median_area_px: float     # median anomalous-pixel count per mask at the working resolution (vanished = 0)
    median_native_area_px: float  # the same at the native mask size


@dataclass
class DefectScale:
    resolution: int                 # longer side of the working size
    size: tuple[int, int] = (0, 0)  # working (H, W) (data.datasets.working_size)
    types: dict[str, TypeScale] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)  # masks that failed to load (check-data names them)

    @property
    def masks(self) -> int:
        return sum(t.masks for t in self.types.values())

    @property
    def kept(self) -> int:
        return sum(t.kept for t in self.types.values())

    @property
    def vanished_share(self) -> float:
        return 1.0 - self.kept / self.masks if self.masks else 0.0

    def warning(self) -> str | None:
        """A message when more than VANISHED_WARN_SHARE of the real-test defects vanish, else None."""
        if self.vanished_share <= VANISHED_WARN_SHARE:
            return None
        worst = sorted(self.types.items(), key=lambda kv: kv[1].kept_share)
        detail = ", ".join(f"{name} {t.masks - t.kept}/{t.masks}" for name, t in worst if t.kept < t.masks)
        return (f"{self.masks - self.kept} of {self.masks} real-test defect masks ({self.vanished_share:.0%}) are "
                f"empty at the working size {self.size[0]}x{self.size[1]} ({detail}); those images are scored as "
                "defect-free. Use a larger data.seg_scale to evaluate "
                "small defects.")

    def lines(self) -> list[str]:
        width = max([len(n) for n in self.types] + [len("all types")])
        out = [f"defect scale at the working size {self.size[0]}x{self.size[1]} px (real-test masks):",
               f"{'type':<{width}}  {'masks':>6}  {'kept':>6}  {'kept %':>7}  {'median px':>10}  {'native px':>10}  "
               f"{'empty native':>12}"]
        for name, t in self.types.items():
            out.append(f"{name:<{width}}  {t.masks:>6}  {t.kept:>6}  {100 * t.kept_share:>6.1f}%  "
                       f"{t.median_area_px:>10.1f}  {t.median_native_area_px:>10.0f}  {t.empty_native:>12}")
        if self.masks:
            out.append(f"{'all types':<{width}}  {self.masks:>6}  {self.kept:>6}  "
                       f"{100 * (1 - self.vanished_share):>6.1f}%")
        return out

    def to_json(self) -> dict:
        return {"resolution": self.resolution, "size": list(self.size), "masks": self.masks, "kept": self.kept,
                "vanished_share": round(self.vanished_share, 4), "warn_above": VANISHED_WARN_SHARE,
                "types": {k: asdict(v) for k, v in self.types.items()}, "unreadable": list(self.unreadable)}


def defect_scale(records: list[Record], resolution: int | tuple[int, int]) -> DefectScale:
    """Per defect type: masks kept non-empty at ``resolution`` (an int: square, or the working (H, W) of
    ``data.datasets.working_size``) and their median area (working pixels).

    ``records`` are real-test records (``Split.real_test``); defect-free ones are ignored. Masks that cannot be
    read are listed in ``unreadable`` and left out (check-data reports why).
    """
    areas: dict[str, list[tuple[float, float]]] = {}
    size = (int(resolution), int(resolution)) if isinstance(resolution, int) else tuple(int(v) for v in resolution)
    report = DefectScale(resolution=max(size), size=size)
    for rec in records:
        if not rec.is_anomalous or rec.mask is None:
            continue
        try:
            native = float(load_mask(rec.mask).sum())
            working = float(load_mask(rec.mask, size).sum())
        except DataError:
            report.unreadable.append(rec.mask)
            continue
        areas.setdefault(rec.label, []).append((working, native))
    for name in sorted(areas):
        pairs = areas[name]
        kept = sum(w > 0 for w, _ in pairs)
        report.types[name] = TypeScale(masks=len(pairs), kept=kept, kept_share=kept / len(pairs),
                                       empty_native=sum(n == 0 for _, n in pairs),
                                       median_area_px=float(median(w for w, _ in pairs)),
                                       median_native_area_px=float(median(n for _, n in pairs)))
    return report
