"""Read an offline W&B run back (wandb 0.31 ships no Python reader of its .wandb transaction log).

The log is LevelDB's log format (32 KiB blocks; records = crc32, length, type FULL/FIRST/MIDDLE/LAST) after a
7-byte ':W&B' header; every record is a ``wandb.proto.wandb_internal_pb2.Record``. Media and tables are the
files under ``files/`` that the history rows point at.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

BLOCK = 32768
HEADER = 7


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B", f"{path} is not a W&B transaction log"
    pos, buf = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and n == 0:
            pos += left
            continue
        if pos + HEADER + n > len(data):  # a record still being written
            break
        buf += data[pos + HEADER:pos + HEADER + n]
        pos += HEADER + n
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    folder: Path
    group: str = ""
    job_type: str = ""
    name: str = ""
    tags: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    artifacts: list = field(default_factory=list)

    def rows_with(self, key: str) -> list[dict]:
        return [h for h in self.history if key in h]

    def table(self, key: str) -> dict:
        """A logged wandb.Table {columns, data, media}: the run-table artifact's copy (its media cells are
        references to files staged beside it; ``media`` maps those paths to the staged files)."""
        for art in reversed(self.artifacts):
            entry = art["entries"].get(f"{key}.table.json")
            if art["type"] == "run_table" and entry:
                out = json.loads(Path(entry["local_path"]).read_text())
                out["media"] = {p: e["local_path"] for p, e in art["entries"].items()}
                return out
        raise KeyError(f"no table {key!r} in {self.folder}")

    def media(self, rel: str) -> np.ndarray:
        return np.asarray(Image.open(self.folder / "files" / rel))


def finished_log(folder: Path, timeout: float = 60.0) -> list:
    """The records of a run's log once its exit record is there: wandb-core writes the log in its own process,
    after ``run.finish()`` (or the command) has returned."""
    deadline = time.monotonic() + timeout
    while True:
        logs = list(Path(folder).glob("*.wandb"))
        recs = list(records(logs[0])) if logs else []
        if any(r.WhichOneof("record_type") == "exit" for r in recs) or time.monotonic() > deadline:
            return recs
        time.sleep(0.2)


def read_run(folder: Path) -> OfflineRun:
    folder = Path(folder)
    run = OfflineRun(folder=folder)
    for rec in finished_log(folder):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.group, run.job_type, run.name, run.tags = r.run_group, r.job_type, r.display_name, list(r.tags)
            run.config.update({_key(i): json.loads(i.value_json) for i in r.config.update})
        elif kind == "config":
            run.config.update({_key(i): json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            row: dict = {}
            for i in rec.history.item:
                row[_key(i)] = json.loads(i.value_json)
            run.history.append(_nest_media(row))
        elif kind == "summary":
            run.summary.update({_key(i): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "artifact":
            a = rec.artifact
            run.artifacts.append({"name": a.name, "type": a.type, "metadata": json.loads(a.metadata or "{}"),
                                  "entries": {e.path: {"ref": e.ref, "local_path": e.local_path}
                                              for e in a.manifest.contents}})
    return run


def _nest_media(row: dict) -> dict:
    """History stores media as flattened 'key/field' items: rebuild {key: {field: value}} beside them."""
    out = dict(row)
    for k, v in row.items():
        head, _, leaf = k.rpartition("/")
        if head and leaf in ("_type", "path", "filenames", "all_masks", "count", "ncols", "nrows", "captions"):
            out.setdefault(head, {})
            if isinstance(out[head], dict):
                out[head][leaf] = v
    return out


def offline_runs(wandb_dir: Path) -> list[OfflineRun]:
    """Every offline run under ``wandb_dir`` (the folder holding wandb/ or wandb/ itself), oldest first."""
    wandb_dir = Path(wandb_dir)
    base = wandb_dir / "wandb" if (wandb_dir / "wandb").is_dir() else wandb_dir
    return [read_run(f) for f in sorted(base.glob("offline-run-*"))]
