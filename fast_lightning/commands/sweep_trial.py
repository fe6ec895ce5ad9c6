"""`python -m fast_lightning sweep-trial key=value ...`: one trial of experiments/sweeps/synthesis.yaml.

A synthesis setting is only worth what the segmenter trained on its pairs scores on real defects, and
some settings (diffusion.lambda_farm) change the diffusion model itself. So a trial is
  1. train-diffusion with the trial's settings, CACHED under runs/diffusion/<class>/sweep-cache-<hash>,
     the hash covering everything that shapes the model (class, data, seed, data.*, diffusion.*,
     trainer.precision): trials that differ only in sampling.* share one model and are compared fairly;
  2. train-seg with segmentation.synth=fast on that model, run_id = the trial's run_id, so its
     metrics.json (val/pixel_ap) is where the sweep driver looks.
Both steps are subprocesses (each a normal command, DDP-capable through trainer.* keys). Under a W&B agent
the diffusion step logs as its own run (the sweep's run id and sweep id are withheld from it), and the
segmenter step is the sweep's run. A file lock keeps two concurrent agents from training the same model.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from fast_lightning.commands.arguments import config_from_args
from fast_lightning.runs import last_checkpoint
from fast_lightning.study import diffusion_key

SWEEP_ENV = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_RESUME")


def _run(argv: list[str], env: dict) -> int:
    cmd = [sys.executable, "-m", "fast_lightning", *argv]
    print(f"[sweep-trial] $ {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd, env=env)


def main(args: list[str]) -> int:
    cfg = config_from_args(args)
    # the shared model gets only what shapes it (its config.yaml then shows no trial-specific sampler)
    passthrough = [a for a in args if not a.startswith(("run_id=", "resume=", "sampling.", "segmentation.",
                                                         "synthesis."))]
    model_dir = Path(str(cfg.run_root)) / "diffusion" / str(cfg.class_name) / f"sweep-cache-{diffusion_key(cfg)}"
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(model_dir.parent / f".{model_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent trial with the same model waits, then reuses it
        if (model_dir / "metrics.json").is_file():
            print(f"[sweep-trial] reusing diffusion model {model_dir}", flush=True)
        else:
            diff_args = passthrough + [f"run_id={model_dir.name}"]
            if last_checkpoint(model_dir).is_file():  # an interrupted earlier trial
                diff_args.append(f"resume={model_dir}")
            env = {k: v for k, v in os.environ.items() if k not in SWEEP_ENV}
            code = _run(["train-diffusion", *diff_args], env)
            if code != 0:
                print(f"[sweep-trial] train-diffusion failed (exit {code}); no segmenter trained", file=sys.stderr)
                return code
    seg_args = args + ["segmentation.synth=fast", f"synthesis.ckpt={model_dir}"]
    return _run(["train-seg", *seg_args], dict(os.environ))
