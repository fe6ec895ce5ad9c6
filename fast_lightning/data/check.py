"""`make check-data`: validate a class folder before anything trains on it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fast_lightning import tables
from fast_lightning.data.datasets import working_size
from fast_lightning.data.defect_scale import defect_scale
from fast_lightning.data.io import mask_pixels, mask_to_binary, missing_file_message, open_image
from fast_lightning.data.records import ClassIndex, read_class
from fast_lightning.errors import DataError
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


FULL_FROM = 0.95  # a defect mask covering this share of its image gets a warning (inverted? wrong channel?)
FAINT_BELOW = 128  # an 8-bit mask whose brightest pixel is below this is "faint" (see file_problems)


def _verify_image(path: str):
    """(width, height) after decoding the file once (catches truncated PNG and JPEG alike; ~1 ms per
    MVTec-size image, and the start-of-command check caches a pass)."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.size
    except FileNotFoundError as exc:
        raise DataError(missing_file_message(path)) from exc
    except Exception as exc:  # PIL raises many types for broken files
        raise DataError(f"unreadable or corrupt image: {path} ({exc}); replace or delete the file") from exc


def file_problems(index: ClassIndex, progress: bool = False) -> tuple[list[str], list[str]]:
    """(errors, warnings) for every file of a class: corrupt files, mask size != image size, faint defect masks,
    all defect masks empty, no defect images at all (one empty mask is a warning: real datasets have a few).
    Every file is decoded once, nothing resized (0.5 s for magnetic tile's 752 images). The one check behind
    `make check-data` and the start of every command that reads data."""
    errors, warns, empty = list(index.problems), [], []
    alpha_masks = 0
    if not index.defects:
        errors.append(f"no defect images in {Path(index.root) / index.name / 'test'} (only good/ or nothing): the "
                      "generator trains on defect images and the segmenter is evaluated on them; add "
                      "test/<type>/ folders with ground-truth masks")
    records = index.train_good + index.test
    for rec in progress_bar(records, desc=f"checking {index.name}", disable=not progress, unit="img"):
        try:
            size = _verify_image(rec.image)
            if rec.mask is None:
                continue
            mask = open_image(rec.mask)
        except DataError as exc:
            errors.append(str(exc))
            continue
        if mask.size != size:
            errors.append(f"mask size {mask.size[0]}x{mask.size[1]} differs from its image {size[0]}x{size[1]}: "
                          f"{rec.mask} (image {rec.image}); masks must match their image pixel for pixel")
            continue
        try:
            arr = mask_pixels(mask, rec.mask)
        except DataError as exc:
            errors.append(str(exc))
            continue
        alpha_masks += mask.mode in ("RGBA", "LA", "PA") or "transparency" in mask.info
        peak = int(arr.max()) if arr.size else 0
        if 1 < peak < FAINT_BELOW and arr.dtype == np.uint8:
            errors.append(f"faint mask (brightest value {peak} of 255): {rec.mask}; masks are 0/255 (or 0/1): "
                          "re-save it with every defect pixel at 255")
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            binary = mask_to_binary(arr, rec.mask)
        if caught:
            warns.append(f"non-binary mask (binarised at half its maximum): {rec.mask}")
        if binary.sum() == 0:
            empty.append(rec.mask)
            warns.append(f"empty mask for a defect image: {rec.mask}")
        elif binary.mean() >= FULL_FROM:
            warns.append(f"mask covers {binary.mean():.0%} of its image: {rec.mask}; is it inverted (defect black) "
                         "or is the defect in a channel that was not read?")
    masks = [r.mask for r in index.defects if r.mask]
    if masks and len(empty) == len(masks):
        errors.append(f"every defect mask of {index.name} is empty ({len(empty)}: {', '.join(empty[:3])}"
                      f"{', ...' if len(empty) > 3 else ''}): nothing to learn defects from; fix the masks"
                      + (f" ({alpha_masks} have an alpha channel: it is read only when the colour is one flat "
                         "value, else the grey value counts; put the defect in white on black)" if alpha_masks else ""))
    return errors, warns


def check_class(root: str | Path, class_name: str, generator_fraction: float = 1 / 3,
                val_fraction: float = 1 / 3, progress: bool = True,
                seg_scale: int | None = None) -> CheckReport:
    """``seg_scale`` (data.seg_scale) adds the defect-scale table of the real-test masks at the segmenter's
    working size (``data.datasets.working_size``)."""
    report = CheckReport()
    try:
        index = read_class(root, class_name, strict=False)
    except DataError as exc:
        report.errors.append(str(exc))
        return report
    errors, warns = file_problems(index, progress)
    report.errors.extend(errors)
    report.warnings.extend(warns)
    split = make_split(index, generator_fraction, val_fraction)
    counts = split.to_json()["counts"]
    labels = sorted({k for c in counts.values() for k in c})
    report.lines.append(f"class {class_name} ({index.format} layout) at {Path(root) / class_name}")
    body = [[label, *(str(counts[s].get(label, 0)) for s in counts)] for label in labels]
    body.append(["total", *(str(sum(counts[s].values())) for s in counts)])
    report.lines += tables.text_table(["type", *counts], body, align="<>", min_widths=[0] + [15] * len(counts),
                                      rule=None).splitlines()
    if seg_scale:
        try:
            size = working_size(split.normal_train, int(seg_scale))
        except OSError:  # an unreadable normal image (already listed in the errors): square seg_scale
            size = int(seg_scale)
        scale = defect_scale(split.real_test, size)
        report.lines.extend(scale.lines())
        if scale.warning():
            report.warnings.append(scale.warning())
    return report


def _fingerprint(index: ClassIndex) -> str:
    """Hash of every file's path, size and mtime: the cached verdict is reused only for unchanged files."""
    import hashlib
    import os

    # the rule version: a pass cached under an older mask rule (alpha ignored) is checked again
    h = hashlib.sha1(f"{os.path.realpath(index.root)}|{index.name}|{FAINT_BELOW}|masks-v2".encode())
    for rec in index.train_good + index.test:
        for path in (rec.image, rec.mask):
            if path:
                st = os.stat(path) if os.path.exists(path) else os.lstat(path)  # a broken link: its own stat
                h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


_VERIFIED: set[str] = set()


def validate_class_files(index: ClassIndex, cache_dir: str | Path | None = None) -> None:
    """Raise DataError naming the files when the class fails the check-data pass; run once at the start of every
    command that reads data, so a long run never dies on a bad file. A pass is cached (in memory and, with
    ``cache_dir``, on disk, keyed by the files' sizes and mtimes); failures are always re-checked."""
    key = _fingerprint(index)
    stamp = Path(cache_dir) / f"{index.name}-{key}.ok" if cache_dir else None
    if key in _VERIFIED or (stamp is not None and stamp.is_file()):
        _VERIFIED.add(key)
        return
    errors, _ = file_problems(index)
    if errors:
        more = f" (and {len(errors) - 1} more; run `make check-data CLASS={index.name} DATA={index.root}`)" \
            if len(errors) > 1 else ""
        raise DataError(f"class {index.name} fails the data check: {errors[0]}{more}")
    _VERIFIED.add(key)
    if stamp is not None:
        try:
            stamp.parent.mkdir(parents=True, exist_ok=True)
            stamp.write_text("verified by fast_lightning.data.check.file_problems\n")
        except OSError:
            pass  # a cache only: a read-only run root costs a re-check next time
