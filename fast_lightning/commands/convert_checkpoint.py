"""`make convert-checkpoint CKPT=<file or run dir> ARGS="trust_checkpoint=true"`: make a trusted older checkpoint
loadable safely.

Checkpoints are read weights-only (``runs.read_checkpoint``): tensors and plain containers. Checkpoints written by
older fast-lightning versions pickled the OmegaConf config object inside, so a safe read refuses them. This
command unpickles the file fully (hence the explicit trust flag), turns every OmegaConf container into plain
dicts/lists, checks the result loads weights-only, and replaces the file atomically; the original is kept next
to it as ``<name>.pickled``.
"""

from __future__ import annotations

import io
import shutil
from collections import OrderedDict

import torch
from omegaconf import OmegaConf

from fast_lightning.commands.arguments import pop_options
from fast_lightning.errors import UserError
from fast_lightning.runs import CheckpointError, atomic_write_bytes, read_checkpoint, resolve_checkpoint


def plain(obj):
    """``obj`` with every OmegaConf container replaced by plain dicts/lists (recursively)."""
    if OmegaConf.is_config(obj):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):  # an OrderedDict (state_dict) stays one: weights-only loads it
        items = [(k, plain(v)) for k, v in obj.items()]
        return OrderedDict(items) if isinstance(obj, OrderedDict) else dict(items)
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain(v) for v in obj)
    return obj


def main(args: list[str]) -> int:
    opts, rest = pop_options(args, {"ckpt": "", "trust_checkpoint": False})
    if rest:
        raise UserError(f"convert-checkpoint takes ckpt=<file> and trust_checkpoint=true only, got {' '.join(rest)}")
    if not opts["ckpt"]:
        raise UserError("no checkpoint given: make convert-checkpoint CKPT=<file or run dir> "
                        "ARGS=\"trust_checkpoint=true\"")
    path = resolve_checkpoint(str(opts["ckpt"]))
    if not opts["trust_checkpoint"]:
        raise UserError(f"converting {path} unpickles it fully, which runs any code it contains: pass "
                        "trust_checkpoint=true only if you made the file or trust where it came from")
    converted = plain(read_checkpoint(path, trust=True))
    buffer = io.BytesIO()
    torch.save(converted, buffer)
    data = buffer.getvalue()
    left = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))  # read, nothing executed
    if left:  # anything but plain data left: refuse, change nothing
        raise CheckpointError(f"{path} holds objects other than tensors, plain data and OmegaConf configs "
                              f"({', '.join(sorted(left)[:4])}); it was not converted")
    backup = path.with_name(path.name + ".pickled")
    shutil.copy2(path, backup)
    atomic_write_bytes(path, data)
    print(f"converted {path}: it now loads safely (weights-only); the original is kept as {backup}")
    return 0
