"""`make train-seg CLASS=<c> [SYNTH ARCH ENCODER DATA PROFILE RESUME]`: segmenter on synthesized anomalies.

Training pairs come from the chosen synthesizer (made on the training device from normal images); the
threshold is chosen on the validation part of the REAL-test split; test metrics are computed ONCE, on the
best checkpoint (val/pixel_ap), on the remaining real-test images. Writes runs/seg/<class>/<run-id>/ with
config.yaml, split.json, metrics.json, samples.png, panels/ and checkpoints/{best,last}.ckpt.
"""

from __future__ import annotations

from fast_lightning.commands.arguments import config_from_args
from fast_lightning.stages.fit_segmenter import run


def main(args: list[str]) -> int:
    return run(config_from_args(args))
