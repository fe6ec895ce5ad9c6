"""`make synthesize CLASS=<c> [N STEPS SAMPLER VARIANT CKPT RESUME]`: FAST (image, mask) pairs on disk.

Writes runs/synthetic/<class>/<run-id>/{images,masks}/NNNNNN.png, manifest.jsonl (one line per pair),
config.yaml, split.json, run.json and preview.png, then points runs/synthetic/<class>/latest at the run.

Resume: `make synthesize ... RESUME=runs/synthetic/<class>/<run-id>` (or .../latest) continues that run
(so does an explicit `run_id=<name>` whose folder already exists):
pairs already in its manifest are skipped, the rest are written. The settings that decide what pair i
looks like (seed, sampling.*, synthesis.masks, out_resolution, data) must match the run's config.yaml;
N may grow (extend a finished run) and batch size / devices may change (pair i does not depend on them).

Sharding: Lightning's predict loop; `ARGS="trainer.devices=4"` (or more nodes) runs one process per
GPU, each synthesizing and writing its own indices; rank 0 merges the manifest at the end.
"""

from __future__ import annotations

from fast_lightning.commands.arguments import config_from_args
from fast_lightning.stages.synthesize_pairs import run


def main(args: list[str]) -> int:
    return run(config_from_args(args))
