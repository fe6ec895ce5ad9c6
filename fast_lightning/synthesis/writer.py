"""On-disk layout of a `make synthesize` run, written so that an interrupted run can always be resumed.

runs/synthetic/<class>/<run-id>/
  images/000000.png  masks/000000.png   one pair per index, each PNG written to a temp file then renamed
  manifest.rank<r>.jsonl                lines appended by rank r, each only after both of its PNGs exist
  manifest.jsonl                        merged at the end by rank 0: one line per pair, sorted by index
  config.yaml  split.json  run.json  preview.png

Ranks never write the same file: each owns its own indices and its own manifest part, so no locking is
needed. A pair counts as done when a manifest line names it AND both PNGs exist; anything else (a PNG
without a line, a half-written line after a crash) is redone on resume.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from fast_lightning.data.io import save_image
from fast_lightning.runs import atomic_write_text, json_default
from fast_lightning.synthesis.base_synthesizer import SynthesisError

MANIFEST = "manifest.jsonl"
log = logging.getLogger(__name__)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def manifest_rows(paths) -> tuple[dict[int, dict], list[str]]:
    """THE manifest reader: index -> row over the given manifest files in order (a later line for the same
    index wins), and ``file:line`` of every line cut by a crash (not JSON, or no integer ``index``): skipped."""
    rows: dict[int, dict] = {}
    cut = []
    for path in paths:
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                index = int(row["index"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                cut.append(f"{Path(path).name}:{number}")  # a line cut by a crash: that pair is redone
                continue
            rows[index] = row
    return rows, cut


def read_manifest(folder: str | Path) -> list[dict]:
    """Rows of ``<folder>/manifest.jsonl`` (a finished `make synthesize` run), sorted by index; cut lines
    skipped (``manifest_rows``)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise SynthesisError(f"no manifest.jsonl in {folder}: pass a folder written by `make synthesize` "
                             f"(runs/synthetic/<class>/<run-id> or .../latest)")
    rows, _ = manifest_rows([path])
    return [rows[k] for k in sorted(rows)]


def pair_name(index: int) -> str:
    return f"{int(index):06d}.png"


class SynthesisWriter:
    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.images_dir = self.run_dir / "images"
        self.masks_dir = self.run_dir / "masks"
        self._reported: tuple = ()

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / MANIFEST

    def rank_manifest(self, rank: int) -> Path:
        return self.run_dir / f"manifest.rank{int(rank)}.jsonl"

    def prepare(self) -> None:
        """Create the folders and drop temp files left by a killed write (never complete pairs)."""
        for d in (self.images_dir, self.masks_dir):
            d.mkdir(parents=True, exist_ok=True)
            for tmp in d.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def write_pair(self, row: dict, image: torch.Tensor, mask: torch.Tensor, rank: int = 0) -> dict:
        """PNG image, PNG mask, then the manifest line (in that order; each step atomic)."""
        index = int(row["index"])
        name = pair_name(index)
        save_image(image, self.images_dir / name, bits=int(row.get("bit_depth", 8)))  # a 16-bit source stays 16 bit
        save_image(mask, self.masks_dir / name)
        row = {"index": index, "image": f"images/{name}", "mask": f"masks/{name}", **{k: v for k, v in row.items()
                                                                                    if k != "index"}}
        line = json.dumps(row, default=json_default) + "\n"
        path = self.rank_manifest(rank)
        if path.is_file() and path.stat().st_size and not _ends_with_newline(path):
            line = "\n" + line  # a line cut by a crash (or a full disk) stays on its own line, never glued to this one
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))  # one write per line: a crash leaves at most one broken line
            os.fsync(fd)
        finally:
            os.close(fd)
        return row

    def _manifest_files(self) -> list[Path]:
        files = sorted(self.run_dir.glob("manifest.rank*.jsonl"))
        return ([self.manifest_path] if self.manifest_path.is_file() else []) + files

    def completed(self) -> dict[int, dict]:
        """index -> manifest row, for every pair whose line exists and whose two PNGs are on disk."""
        rows, cut = manifest_rows(self._manifest_files())
        rows = {index: row for index, row in rows.items()
                if (self.run_dir / row["image"]).is_file() and (self.run_dir / row["mask"]).is_file()}
        if cut and tuple(cut) != self._reported:
            self._reported = tuple(cut)
            log.warning(f"skipped {len(cut)} cut manifest line(s) ({', '.join(cut[:3])}); those pairs are redone")
        return rows

    def merge(self) -> list[dict]:
        """Rank parts + the old manifest -> manifest.jsonl (sorted, deduplicated); parts removed after."""
        rows = self.completed()
        ordered = [rows[k] for k in sorted(rows)]
        atomic_write_text(self.manifest_path, "".join(json.dumps(r, default=json_default) + "\n" for r in ordered))
        for part in self.run_dir.glob("manifest.rank*.jsonl"):
            part.unlink(missing_ok=True)
        return ordered

