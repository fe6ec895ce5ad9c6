"""`make export CKPT=<seg run | .ckpt> FORMAT=torchscript|onnx [OUT=...]`: a deployable segmenter + metadata.

Writes OUT (default exports/<class>/<run-id>.pt or .onnx) and OUT with .json (threshold, working size,
interpolation, channels, normalisation, parity against PyTorch). `make predict CKPT=<OUT>` reads it back.
"""

from __future__ import annotations

from pathlib import Path

from fast_lightning.commands.arguments import pop_options
from fast_lightning.errors import UserError

OPTIONS = {"ckpt": "", "format": "torchscript", "out": "", "trust_checkpoint": False}
OPTION_HELP = {
    "ckpt": "segmenter: train-seg run folder, its latest link or a .ckpt",
    "format": "torchscript (no extra packages) | onnx (needs the [onnx] extra: onnx, onnxruntime)",
    "out": "output file (default exports/<class>/<run>.pt|.onnx); metadata goes beside it as .json",
    "trust_checkpoint": "fully unpickle an older checkpoint you trust (default: safe weights-only read)",
}

TAKES_CONFIG = False  # --help lists no config keys: the checkpoint carries them


def main(args: list[str]) -> int:
    opts, rest = pop_options(args, OPTIONS)
    if rest:
        raise UserError(f"export takes only {', '.join(f'{k}=' for k in OPTIONS)}; got {' '.join(rest)}")
    if not opts["ckpt"]:
        raise UserError("no checkpoint given: make export CKPT=<seg run dir, latest link or .ckpt> FORMAT=torchscript")
    from fast_lightning.segmentation.export import FORMATS, export_segmenter
    from fast_lightning.segmentation.predict import resolve_seg_checkpoint

    fmt = str(opts["format"]).lower()
    if fmt not in FORMATS:
        raise UserError(f"FORMAT={fmt!r}: choose {' or '.join(FORMATS)}")
    out = opts["out"]
    if not out:
        ckpt = resolve_seg_checkpoint(str(opts["ckpt"]))
        run = ckpt.parent.parent
        out = Path("exports") / run.parent.name / f"{run.name}{FORMATS[fmt]}"
    info = export_segmenter(str(opts["ckpt"]), out, fmt, trust=bool(opts["trust_checkpoint"]))
    h, w = info["working_size"]
    print(f"exported {info['source_checkpoint']} -> {out} ({fmt}, {info['size_note']}; working size {h}x{w}, "
          f"threshold {info['threshold']:.4f}, parity max |diff| {info['parity_max_abs_diff']:.2e}); "
          f"metadata {Path(out).with_suffix('.json')}")
    return 0
