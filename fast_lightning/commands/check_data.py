"""`make check-data CLASS=... DATA=...`: exit 1 naming the exact file when the class folder is broken."""

from __future__ import annotations

import sys

from fast_lightning.commands.arguments import config_from_args
from fast_lightning.data.check import check_class


def main(args: list[str]) -> int:
    cfg = config_from_args(args)
    report = check_class(cfg.data_root, cfg.class_name, cfg.data.generator_fraction, cfg.data.val_fraction,
                         seg_scale=int(cfg.data.seg_scale))
    for line in report.lines:
        print(line)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if not report.ok:
        for e in report.errors:
            print(f"error: {e}", file=sys.stderr)
        print(f"check-data: {len(report.errors)} problem(s) in {cfg.data_root}/{cfg.class_name}", file=sys.stderr)
        return 1
    print(f"check-data: {cfg.data_root}/{cfg.class_name} is OK ({len(report.warnings)} warning(s))")
    return 0
