"""The generator / real-test split (AnomalyDiffusion protocol) and the validation carve-out.

The first ceil(n/3) sorted images of each defect type may be seen by generators (diffusion training,
mask bank, the ``real_third`` reference); everything else is "real test" and is never shown to any
generator. Validation is carved deterministically from real test so test metrics are reported once,
on images that neither the generator nor threshold selection touched.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from fast_lightning.data.records import GOOD, ClassIndex, Record
from fast_lightning.errors import DataError
from fast_lightning.errors import ConfigError


@dataclass
class Split:
    class_name: str
    root: str
    types: list[str]
    generator_train: list[Record] = field(default_factory=list)
    real_test: list[Record] = field(default_factory=list)  # val + test
    normal_train: list[Record] = field(default_factory=list)
    val: list[Record] = field(default_factory=list)
    test: list[Record] = field(default_factory=list)

    def type_id(self, label: str) -> int:
        """0 = normal, 1..K = anomaly types in sorted order (the diffusion condition)."""
        return 0 if label == GOOD else self.types.index(label) + 1

    def to_json(self) -> dict:
        def rows(records):
            return [r.to_dict() for r in records]

        counts = {
            name: _count(getattr(self, name)) for name in ("generator_train", "normal_train", "val", "test")
        }
        return {
            "class_name": self.class_name,
            "root": self.root,
            "types": self.types,
            "protocol": "first ceil(n*generator_fraction) sorted images per defect type -> generator_train; "
                        "rest + test/good -> real test, split per type into val / test",
            "counts": counts,
            "generator_train": rows(self.generator_train),
            "normal_train": rows(self.normal_train),
            "val": rows(self.val),
            "test": rows(self.test),
        }

    def counts(self, data_root: str = "") -> dict:
        """Image counts per split, after checking that evaluation images never reach a generator or training
        (DataError naming the overlap and ``data_root`` otherwise)."""
        import os

        def paths(records):
            return {os.path.realpath(r.image) for r in records}

        val, test, gen, normal = paths(self.val), paths(self.test), paths(self.generator_train), paths(self.normal_train)
        problems = []
        if val & test:
            problems.append(f"{len(val & test)} image(s) in both val and test")
        if (val | test) & gen:
            problems.append(f"{len((val | test) & gen)} evaluation image(s) in generator_train")
        if (val | test) & normal:
            problems.append(f"{len((val | test) & normal)} evaluation image(s) in the normal training images")
        if problems:
            raise DataError("split is not disjoint: " + "; ".join(problems) + f" (data_root={data_root})")
        return {
            "train_normal_images": len(self.normal_train),
            "generator_train_images": len(self.generator_train),
            "val_images": len(self.val),
            "val_defect_images": sum(r.is_anomalous for r in self.val),
            "test_images": len(self.test),
            "test_defect_images": sum(r.is_anomalous for r in self.test),
            "val_test_disjoint": True,
            "eval_disjoint_from_generator_train": True,
        }

    def save(self, run_dir: str | Path) -> Path:
        from fast_lightning.runs import atomic_write_json

        return atomic_write_json(Path(run_dir) / "split.json", self.to_json())


def _count(records: list[Record]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in records:
        out[r.label] += 1
    return dict(sorted(out.items()))


def _by_label(records: list[Record]) -> dict[str, list[Record]]:
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[r.label].append(r)
    return {k: sorted(v, key=lambda r: Path(r.image).name) for k, v in sorted(groups.items())}


def make_split(index: ClassIndex, generator_fraction: float = 1 / 3, val_fraction: float = 1 / 3) -> Split:
    if not 0 < generator_fraction < 1:
        raise ConfigError(f"data.generator_fraction must be in (0, 1), got {generator_fraction}")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    split = Split(index.name, index.root, index.types, normal_train=list(index.train_good))
    for label, records in _by_label(index.test).items():
        if label == GOOD:
            rest = records
        else:
            n_gen = math.ceil(len(records) * generator_fraction - 1e-9)
            split.generator_train.extend(records[:n_gen])
            rest = records[n_gen:]
        split.real_test.extend(rest)
        # interleave so val and test both cover the type's range: every k-th image goes to val
        n_val = int(round(len(rest) * val_fraction))
        if n_val and len(rest) - n_val >= 1:
            step = len(rest) / n_val
            val_idx = {int(i * step) for i in range(n_val)}
        else:
            val_idx = set()
        split.val.extend(r for i, r in enumerate(rest) if i in val_idx)
        split.test.extend(r for i, r in enumerate(rest) if i not in val_idx)
    return split
