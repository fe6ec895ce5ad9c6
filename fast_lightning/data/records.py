"""Dataset indexes: MVTec AD, MVTec 3D-AD (RGB) and BTAD folders read into one record format.

Every layout becomes a ``ClassIndex`` of ``Record``s so that nothing downstream knows which dataset it
came from (the authors' code parsed fixed path positions, which broke on other layouts).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from fast_lightning.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GOOD = "good"


@dataclass(frozen=True)
class Record:
    image: str
    mask: str | None
    label: str  # "good" or the anomaly type
    origin: str  # train | validation | test

    @property
    def is_anomalous(self) -> bool:
        return self.label != GOOD

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ClassIndex:
    name: str
    root: str
    format: str
    train_good: list[Record] = field(default_factory=list)
    test: list[Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # filled by the readers; check-data reports them

    @property
    def types(self) -> list[str]:
        return sorted({r.label for r in self.test if r.is_anomalous})

    @property
    def defects(self) -> list[Record]:
        return [r for r in self.test if r.is_anomalous]


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    # a dangling symlink is kept: reading it fails with its name (check-data lists it) instead of a silent skip
    return sorted(p for p in folder.iterdir() if (p.is_file() or (p.is_symlink() and not p.exists()))
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def _mask_for(image: Path, mask_dir: Path) -> Path | None:
    """The mask of ``image``, names matched case-insensitively (000.JPG finds 000_mask.PNG), as for images."""
    if not mask_dir.is_dir():
        return None
    by_name = {p.name.lower(): p for p in sorted(mask_dir.iterdir()) if p.is_file()}
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png", f"{image.stem}_mask{image.suffix}", image.name):
        if name.lower() in by_name:
            return by_name[name.lower()]
    return None


def _orphan_masks(mask_dir: Path, images: list[Path]) -> list[Path]:
    stems = {p.stem.lower() for p in images}  # case-insensitive, as ``_mask_for``
    orphans = []
    for mask in _images(mask_dir):
        stem = mask.stem.lower()
        stem = stem[: -len("_mask")] if stem.endswith("_mask") else stem
        if stem not in stems:
            orphans.append(mask)
    return orphans


def detect_format(class_dir: Path) -> str:
    if (class_dir / "train" / "ok").is_dir() or (class_dir / "test" / "ko").is_dir():
        return "btad"
    if (class_dir / "train" / "good" / "rgb").is_dir():
        return "mvtec3d"
    return "mvtec"


def _read_defects(index: ClassIndex, test_dir: Path, gt_dir: Path, good_name: str, nested: str | None) -> None:
    """Defect folders test/<type>[/<nested>] with masks under gt_dir/<type> (or test/<type>/gt)."""
    for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        label = GOOD if type_dir.name == good_name else type_dir.name
        img_dir = type_dir / nested if nested else type_dir
        images = _images(img_dir)
        if label == GOOD:
            index.test.extend(Record(str(p), None, GOOD, "test") for p in images)
            continue
        mask_dir = (type_dir / "gt") if nested else (gt_dir / type_dir.name)
        for image in images:
            mask = _mask_for(image, mask_dir)
            if mask is None:
                index.problems.append(f"defect image without a mask: {image} (expected {mask_dir / (image.stem + '_mask.png')})")
                continue
            index.test.append(Record(str(image), str(mask), label, "test"))
        for orphan in _orphan_masks(mask_dir, images):
            index.problems.append(f"mask without an image: {orphan} (no {img_dir}/{orphan.stem.removesuffix('_mask')}.*)")


def read_class(root: str | Path, class_name: str, strict: bool = True) -> ClassIndex:
    """Index ``<root>/<class_name>``; raises DataError naming what is missing and what exists.

    ``strict=False`` collects pairing problems in ``index.problems`` instead (used by check-data).
    """
    root = Path(root)
    class_dir = root / class_name
    if root.exists() and not root.is_dir():
        raise DataError(f"DATA={root} is a file, not a folder: pass the dataset root folder that contains "
                        f"{class_name}/ (e.g. DATA={root.parent})")
    if not class_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
        hint = f"classes found under {root}: {', '.join(found)}" if found else (
            f"{root} does not exist" if not root.is_dir() else f"{root} holds no class folders"
        )
        raise DataError(f"class folder not found: {class_dir} ({hint}). Set CLASS=<name> and DATA=<dataset root>.")
    fmt = detect_format(class_dir)
    index = ClassIndex(name=class_name, root=str(root), format=fmt)
    if fmt == "btad":
        index.train_good = [Record(str(p), None, GOOD, "train") for p in _images(class_dir / "train" / "ok")]
        test_dir = class_dir / "test"
        if test_dir.is_dir():
            _read_defects(index, test_dir, class_dir / "ground_truth", good_name="ok", nested=None)
    elif fmt == "mvtec3d":
        index.train_good = [Record(str(p), None, GOOD, "train") for p in _images(class_dir / "train" / "good" / "rgb")]
        index.train_good += [Record(str(p), None, GOOD, "validation") for p in _images(class_dir / "validation" / "good" / "rgb")]
        test_dir = class_dir / "test"
        if test_dir.is_dir():
            _read_defects(index, test_dir, test_dir, good_name=GOOD, nested="rgb")
    else:
        index.train_good = [Record(str(p), None, GOOD, "train") for p in _images(class_dir / "train" / "good")]
        index.train_good += [Record(str(p), None, GOOD, "validation") for p in _images(class_dir / "validation" / "good")]
        test_dir = class_dir / "test"
        if test_dir.is_dir():
            _read_defects(index, test_dir, class_dir / "ground_truth", good_name=GOOD, nested=None)
    if not index.train_good:
        expected = {"btad": "train/ok", "mvtec3d": "train/good/rgb"}.get(fmt, "train/good")
        raise DataError(f"no normal training images in {class_dir / expected}: the generator and segmenter need them")
    if strict and index.problems:
        more = f" (and {len(index.problems) - 1} more; run `make check-data`)" if len(index.problems) > 1 else ""
        raise DataError(index.problems[0] + more)
    return index
