"""`make bench-train`: training steps/s of the diffusion model and the segmenter, fp32 vs bf16 autocast, on THIS machine.

Why: whether bf16 helps depends on the hardware (15x slower on AVX2-only CPUs, ~2x faster with avx512_bf16/AMX or on
GPUs). This measures both and shows what ``trainer.precision=auto`` resolves to here, and whether that is the faster one.

Each workload is one real optimisation step (forward, FAST loss or Dice+Focal loss, backward, AdamW) of the model
the profile builds, on random batches of the profile's size (no data loading: that is measured per run as
``data_wait_share`` in metrics.json). Workloads: the diffusion model of the profile, the demo's diffusion model (on
the cpu profile), the segmenter of the profile; on a CUDA machine the same at the gpu profile.

Options (key=value): profile=cpu (also gpu when CUDA is visible; smoke for a quick check), steps=3 (timed, best
of), warmup=1, out=reports/bench_train.json, plot=<png next to out>. Config overrides pass through (e.g.
diffusion.optim.batch_size=8).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from fast_lightning.cli import UserError
from fast_lightning.commands.common import config_from_args, pop_options
from fast_lightning.hardware import (
    autocast_dtype,
    cpu_model,
    cpu_native_bf16,
    describe_cpu_isa,
    resolve_precision,
    usable_cores,
)
from fast_lightning.evaluation.plots import save_figure
from fast_lightning.runs import atomic_write_json


def _diffusion_step(cfg, device: torch.device):
    from fast_lightning.diffusion.model import build_fast_diffusion

    d = cfg.diffusion
    types = ["type_a", "type_b"]
    model = build_fast_diffusion(d, int(cfg.data.channels), len(types), types).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, r = int(d.optim.batch_size), int(d.resolution)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(b, int(cfg.data.channels), r, r, generator=g) * 2 - 1).to(device)
    mask = torch.zeros(b, 1, r, r)
    mask[:, :, r // 4: r // 2, r // 3: 2 * r // 3] = 1
    mask, cond = mask.to(device), torch.randint(0, len(types) + 1, (b,), generator=g).to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model.training_losses(x0, mask, cond)["loss"]
        loss.backward()
        opt.step()
        return loss

    desc = (f"FAST diffusion, UNet {list(d.unet.block_out_channels)} + FARM {int(d.farm.base_channels)}, "
            f"{r} px, batch {b}")
    return step, desc


def _segmenter_step(cfg, device: torch.device):
    from fast_lightning.segmentation.losses import build_loss
    from fast_lightning.segmentation.models import build_segmenter

    s = cfg.segmentation
    model = build_segmenter(str(s.arch), str(s.encoder), None, in_channels=int(cfg.data.channels)).to(device).train()
    loss_fn = build_loss(dict(s.loss))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    # the training step runs on crops when segmentation.crop is set, else on the square working resolution
    b, r = int(s.batch_size), int(s.crop or cfg.data.resolution)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, int(cfg.data.channels), r, r, generator=g).to(device)
    y = (torch.rand(b, 1, r, r, generator=g) > 0.95).float().to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()
        return loss

    return step, f"segmenter {s.arch}/{s.encoder}, {r} px, batch {b}"


def _time(step, device: torch.device, precision: str, steps: int, warmup: int) -> float:
    """Best seconds per step (best of ``steps``: a burst of load on a shared machine hits one step, not all)."""
    dtype = autocast_dtype(precision)

    def run():
        if dtype is None:
            return step()
        with torch.autocast(device.type, dtype=dtype):
            return step()

    for _ in range(warmup):
        run()
    best = float("inf")
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
        if not torch.isfinite(loss):
            raise UserError(f"non-finite loss in bench-train at precision {precision}")
    return best


def _workloads(profile: str, rest: list[str]):
    """(name, config, builder) for the profile; the demo's diffusion model rides along on the cpu profile."""
    base = [f"profile={profile}", *rest]
    cfg = config_from_args(base, require_class=False)
    out = [(f"diffusion ({profile})", cfg, _diffusion_step)]
    if profile == "cpu":
        from fast_lightning.commands.demo import DEMO_SETTINGS

        out.append(("diffusion (demo)", config_from_args(base + DEMO_SETTINGS["cpu"], require_class=False),
                    _diffusion_step))
    out.append((f"segmenter ({profile})", cfg, _segmenter_step))
    return out


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["workloads"]
    names = [r["name"] for r in rows]
    precisions = sorted({p for r in rows for p in r["steps_per_second"]})
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(names)), 4.2))
    width = 0.8 / max(1, len(precisions))
    colors = {"32-true": "#3b6fb6", "bf16-mixed": "#e0883a", "16-mixed": "#5aa469"}
    for k, p in enumerate(precisions):
        xs = [i + (k - (len(precisions) - 1) / 2) * width for i in range(len(names))]
        ys = [r["steps_per_second"].get(p, 0.0) for r in rows]
        bars = ax.bar(xs, ys, width=width, label=p, color=colors.get(p, None))
        for bar, r, y in zip(bars, rows, ys):
            star = " (auto)" if r["auto"] == p else ""
            ax.annotate(f"{y:.3g}{star}", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("training steps / s (higher is better)")
    ax.set_title(f"{report['device']}\n{report['isa']}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(args: list[str]) -> int:
    opts, rest = pop_options(args, {"profile": "", "steps": 3, "warmup": 1, "out": "reports/bench_train.json",
                                    "plot": ""})
    steps, warmup = int(opts["steps"]), int(opts["warmup"])
    if steps < 1 or warmup < 0:
        raise UserError(f"bench-train needs steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    out = Path(str(opts["out"]))
    plot = Path(str(opts["plot"])) if opts["plot"] else out.with_suffix(".png")
    cuda = torch.cuda.is_available()
    profiles = [str(opts["profile"])] if opts["profile"] else (["cpu", "gpu"] if cuda else ["cpu"])
    rows = []
    for profile in profiles:
        device = torch.device("cuda" if cuda and profile == "gpu" else "cpu")
        accel = "cuda" if device.type == "cuda" else "cpu"
        auto, why = resolve_precision("auto", accel)
        candidates = ["32-true", "bf16-mixed"] + (["16-mixed"] if device.type == "cuda" else [])
        for name, cfg, builder in _workloads(profile, rest):
            step, desc = builder(cfg, device)
            sps = {}
            for p in candidates:
                seconds = _time(step, device, p, steps, warmup)
                sps[p] = round(1.0 / seconds, 4)
                print(f"{name:>22} {p:>10}: {seconds:.3f} s/step, {1 / seconds:.3f} steps/s", flush=True)
            fastest = max(sps, key=sps.get)
            rows.append({"name": name, "what": desc, "device": device.type, "steps_per_second": sps,
                         "auto": auto, "auto_reason": why, "fastest": fastest,
                         "auto_is_fastest": auto == fastest,
                         "auto_within_10pct_of_fastest": sps[auto] >= 0.9 * sps[fastest]})
    report = {
        "device": (torch.cuda.get_device_name(0) + " + " if cuda else "") + f"CPU {cpu_model()}",
        "cpu_model": cpu_model(), "isa": describe_cpu_isa(), "cpu_native_bf16": cpu_native_bf16(),
        "usable_cores": usable_cores(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "steps_timed": steps, "warmup": warmup, "workloads": rows,
        "note": "best of the timed steps; random batches of the profile's size; one real optimisation step each",
    }
    atomic_write_json(out, report)
    _plot(report, plot)
    print(json.dumps({r["name"]: {"auto": r["auto"], "fastest": r["fastest"]} for r in rows}))
    print(f"benchmark: {out}  plot: {plot}")
    return 0
