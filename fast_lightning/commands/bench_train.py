"""`make bench-train`: training steps/s of the diffusion model and the segmenter, fp32 vs bf16 autocast, on THIS machine.

Why: whether bf16 helps depends on the hardware (15x slower on AVX2-only CPUs, ~2x faster with avx512_bf16/AMX or on
GPUs). This measures both and shows what ``trainer.precision=auto`` resolves to here, and whether that is the faster one.

Each workload is one real optimisation step (forward, FAST loss or Dice+Focal loss, backward, AdamW) of the model
the profile builds, on random batches of the profile's size (no data loading: that is measured per run as
``data_wait_share`` in metrics.json). Workloads: the diffusion model of the profile, the demo's diffusion model (on
the cpu profile), the segmenter of the profile; on a CUDA machine the same at the gpu profile.

Per workload it also reports: the FLOPs of one step (FlopCounterMode), the share of this run's GEMM peak
(fp32 and bf16 matmul microbenchmark, fp16 too on CUDA) the step reaches, the speed options of
fast_lightning.speedups timed side by side with eager (channels_last, compile: interleaved rounds, so a
burst of load on a shared machine hits all of them) and which one ``trainer.compile/channels_last: auto``
picks for a run of the profile's length ("default"); and for diffusion workloads the sampling side:
AIAS-10 vs DDPM-T images/s on the same model and batch and the share of sampling time outside the denoiser.

Options (key=value): profile=cpu (also gpu when CUDA is visible; smoke for a quick check), steps=3 (timed, best
of), warmup=1, out=reports/bench_train.json, plot=<png next to out>, variants=channels_last[,compile] (default:
channels_last on CPU, both on CUDA; none = eager only), sampling=true, sampling_batch=4, gemm_n=0 (matrix side
of the peak GEMM; 0 = 2048 on CPU, 8192 on CUDA). Config overrides
pass through (e.g. diffusion.optim.batch_size=8).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from fast_lightning.errors import UserError
from fast_lightning.commands.arguments import config_from_args, pop_options
from fast_lightning import speedups
from fast_lightning.commands.bench_compute import GEMM_DTYPES, gemm_peak, op_profile, sampling_split, step_flops
from fast_lightning.hardware import (
    autocast_dtype,
    configure_threads,
    cpu_model,
    cpu_native_bf16,
    describe_cpu_isa,
    resolve_precision,
    usable_cores,
)
from fast_lightning.evaluation.plots import save_figure
from fast_lightning.runs import atomic_write_json


def _diffusion_step(cfg, device: torch.device, compile: bool = False, channels_last: bool = False):
    from fast_lightning.diffusion.model import build_fast_diffusion

    d = cfg.diffusion
    types = ["type_a", "type_b"]
    torch.manual_seed(0)  # every variant starts from the same weights
    model = build_fast_diffusion(d, int(cfg.data.channels), len(types), types).to(device).train()
    states = speedups.apply({"denoiser": model.denoiser, "farm": model.farm}, compile=compile,
                            channels_last=channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, r = int(d.optim.batch_size), int(d.resolution)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(b, int(cfg.data.channels), r, r, generator=g) * 2 - 1).to(device)
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    mask = torch.zeros(b, 1, r, r)
    mask[:, :, r // 4: r // 2, r // 3: 2 * r // 3] = 1
    mask, cond = mask.to(device), torch.randint(0, len(types) + 1, (b,), generator=g).to(device)
    t = torch.randint(0, model.num_train_timesteps, (b,), generator=g).to(device)
    eps = torch.randn(x0.shape, generator=g).to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model.training_losses(x0, mask, cond, t=t, eps=eps)["loss"]
        loss.backward()
        opt.step()
        return loss

    desc = (f"FAST diffusion, UNet {list(d.unet.block_out_channels)} + FARM {int(d.farm.base_channels)}, "
            f"{r} px, batch {b}")
    return step, desc, model, states


def _segmenter_step(cfg, device: torch.device, compile: bool = False, channels_last: bool = False):
    from fast_lightning.segmentation.losses import build_loss
    from fast_lightning.segmentation.models import build_segmenter

    s = cfg.segmentation
    torch.manual_seed(0)
    model = build_segmenter(str(s.arch), str(s.encoder), None, in_channels=int(cfg.data.channels)).to(device).train()
    states = speedups.apply({"segmenter": model}, compile=compile, channels_last=channels_last)
    loss_fn = build_loss(dict(s.loss))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    # the training step runs on crops when segmentation.crop is set, else on a square of the working scale
    b, r = int(s.optim.batch_size), int(s.crop or cfg.data.seg_scale)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, int(cfg.data.channels), r, r, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(b, 1, r, r, generator=g) > 0.95).float().to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x).float(), y)
        loss.backward()
        opt.step()
        return loss

    return step, f"segmenter {s.arch}/{s.encoder}, {r} px, batch {b}", model, states


def _runner(step, device: torch.device, precision: str):
    dtype = autocast_dtype(precision)

    def run():
        if dtype is None:
            return step()
        with torch.autocast(device.type, dtype=dtype):
            return step()

    return run


def _time_once(run, device: torch.device, label: str) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    loss = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if not torch.isfinite(loss):
        raise UserError(f"non-finite loss in bench-train ({label})")
    return seconds


def _time_interleaved(runs: dict, device: torch.device, steps: int, warmup: int) -> tuple[dict, dict]:
    """Best seconds per step of each run, timed in rounds (one step of each per round): a burst of load on a
    shared machine hits one round of every variant alike, not one variant. Also the first call's seconds
    (includes compiling)."""
    first = {k: _time_once(r, device, k) for k, r in runs.items()}
    for _ in range(max(0, warmup - 1)):
        for k, r in runs.items():
            _time_once(r, device, k)
    best = {k: float("inf") for k in runs}
    for _ in range(steps):
        for k, r in runs.items():
            best[k] = min(best[k], _time_once(r, device, k))
    return best, first


def _workloads(profile: str, rest: list[str]):
    """(name, config, builder) for the profile; the demo's diffusion model rides along on the cpu profile."""
    base = [f"profile={profile}", *rest]
    cfg = config_from_args(base, require_class=False)
    out = [(f"diffusion ({profile})", cfg, _diffusion_step)]
    if profile == "cpu":
        from fast_lightning.commands.arguments import DEMO_SETTINGS

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
    labels = list(dict.fromkeys(v for r in rows for v in r["variants"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 2.6 * len(names)), 4.4))
    width = 0.8 / max(1, len(labels))
    palette = ["#3b6fb6", "#e0883a", "#5aa469", "#b65a9b", "#8c8c8c", "#c9b03b"]
    for k, label in enumerate(labels):
        xs = [i + (k - (len(labels) - 1) / 2) * width for i in range(len(names))]
        ys = [r["variants"].get(label, {}).get("steps_per_second", 0.0) for r in rows]
        bars = ax.bar(xs, ys, width=width, label=label, color=palette[k % len(palette)])
        for bar, r, y in zip(bars, rows, ys):
            v = r["variants"].get(label)
            if not v:
                continue
            share = v.get("share_of_peak")
            star = "*" if r["default"] == label else ""
            text = f"{y:.3g}{star}" + (f"\n{100 * share:.0f}%" if share is not None else "")
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom",
                        fontsize=6, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("training steps / s (higher is better)")
    ax.set_title(f"{report['device']}\n{report['isa']}\n(* = the default; % = share of the GEMM peak "
                 "of that dtype)", fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def _peaks(device: torch.device, candidates: list[str], n: int) -> dict:
    return {p: gemm_peak(device, GEMM_DTYPES[p], n or None) for p in candidates}


def _variants(auto: str, candidates: list[str], wanted: set[str], default: tuple[bool, bool]) -> dict:
    """label -> (precision, compile, channels_last). Eager at every precision, the options at the auto one
    (channels_last also in fp32)."""
    out = {p: (p, False, False) for p in candidates}
    if "channels_last" in wanted:  # at the auto precision, and in fp32 too: the kernels differ by dtype
        out["channels_last"] = (auto, False, True)
        if auto != "32-true":
            out["channels_last 32-true"] = ("32-true", False, True)
    if "compile" in wanted:
        out["compile"] = (auto, True, False)
    if default != (False, False) and (auto, *default) not in out.values():
        out["default"] = (auto, *default)
    return out


def _measure(name, cfg, builder, device, candidates, auto, wanted, steps, warmup, peaks, max_steps) -> dict:
    compile_default, compile_why = speedups.resolve_compile(cfg.trainer.compile, device.type, max_steps)
    target = "segmenter" if builder is _segmenter_step else "denoiser"
    cl_default, cl_why = speedups.resolve_channels_last(cfg.trainer.channels_last, device.type, target)
    variants = _variants(auto, candidates, wanted, (compile_default, cl_default))
    built = {label: builder(cfg, device, compile=c, channels_last=cl) for label, (p, c, cl) in variants.items()}
    desc = next(iter(built.values()))[1]
    flops = step_flops(_runner(built[candidates[0]][0], device, candidates[0]))
    runs = {label: _runner(built[label][0], device, variants[label][0]) for label in variants}
    best, first = _time_interleaved(runs, device, steps, warmup)
    table = {}
    for label, (p, c, cl) in variants.items():
        sps = 1.0 / best[label]
        states = built[label][3]
        table[label] = {
            "precision": p, "compile": c, "channels_last": cl, "steps_per_second": round(sps, 4),
            "first_step_seconds": round(first[label], 3),
            "compile_seconds": round(max(0.0, first[label] - best[label]), 2) if c else None,
            "compile_fell_back": [s.failed for s in states if s.failed] or None,
            "achieved_flops_per_second": flops * sps,
            "share_of_peak": flops * sps / peaks[p]["flops_per_second"],
        }
        print(f"{name:>22} {label:>14}: {best[label]:.3f} s/step, {sps:.3f} steps/s, "
              f"{100 * table[label]['share_of_peak']:.1f}% of the {p} GEMM peak", flush=True)
    top_ops = op_profile(runs[auto], device)  # eager at the auto precision
    default = next((k for k, v in variants.items() if v == (auto, compile_default, cl_default)), auto)
    sps = {p: table[p]["steps_per_second"] for p in candidates}
    fastest = max(sps, key=sps.get)
    return {"name": name, "what": desc, "device": device.type, "flops_per_step": flops, "max_steps": max_steps,
            "steps_per_second": sps, "variants": table, "top_ops": top_ops, "auto": auto, "fastest": fastest,
            "auto_is_fastest": auto == fastest, "auto_within_10pct_of_fastest": sps[auto] >= 0.9 * sps[fastest],
            "default": default, "default_reason": {"compile": compile_why, "channels_last": cl_why},
            "speedup_default_vs_eager": table[default]["steps_per_second"] / table[auto]["steps_per_second"],
            "fastest_variant": max(table, key=lambda k: table[k]["steps_per_second"])}


OPTIONS = {"profile": "", "steps": 3, "warmup": 1, "out": "reports/bench_train.json", "plot": "", "variants": "",
           "sampling": True, "sampling_batch": 4, "gemm_n": 0}


def main(args: list[str]) -> int:
    opts, rest = pop_options(args, OPTIONS)
    steps, warmup = int(opts["steps"]), int(opts["warmup"])
    if steps < 1 or warmup < 0:
        raise UserError(f"bench-train needs steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    cuda = torch.cuda.is_available()
    # compile is timed by default on CUDA only: on a 2-core CPU one compile of a step takes minutes
    text = str(opts["variants"]) or ("channels_last,compile" if cuda else "channels_last")
    wanted = {v.strip() for v in text.split(",") if v.strip() and v.strip() != "none"}
    if wanted - {"channels_last", "compile"}:
        raise UserError(f"bench-train variants must be a comma list of channels_last, compile (or none), "
                        f"got {opts['variants']!r}")
    out = Path(str(opts["out"]))
    plot = Path(str(opts["plot"])) if opts["plot"] else out.with_suffix(".png")
    configure_threads()
    profiles = [str(opts["profile"])] if opts["profile"] else (["cpu", "gpu"] if cuda else ["cpu"])
    rows, peaks_by_device, sampling = [], {}, {}
    for profile in profiles:
        device = torch.device("cuda" if cuda and profile in ("gpu", "gpu-quick") else "cpu")
        accel = "cuda" if device.type == "cuda" else "cpu"
        auto, why = resolve_precision("auto", accel)
        candidates = ["32-true", "bf16-mixed"] + (["16-mixed"] if device.type == "cuda" else [])
        if device.type not in peaks_by_device:
            peaks_by_device[device.type] = _peaks(device, candidates, int(opts["gemm_n"]))
        peaks = peaks_by_device[device.type]
        for name, cfg, builder in _workloads(profile, rest):
            kind = "diffusion" if builder is _diffusion_step else "segmentation"
            max_steps = int(cfg[kind].max_steps)
            row = _measure(name, cfg, builder, device, candidates, auto, wanted, steps, warmup, peaks, max_steps)
            row["auto_reason"] = why
            rows.append(row)
            if kind == "diffusion" and opts["sampling"]:
                model = builder(cfg, device)[2]
                side = int(cfg.diffusion.resolution) * (4 if str(cfg.diffusion.window) == "crop" else 1)
                row["sampling"] = sampling_split(model, cfg, device, autocast_dtype(auto),
                                                 int(opts["sampling_batch"]), side)
                sp = row["sampling"]
                print(f"{name:>22} sampling: AIAS-10 {sp['aias10_vs_ddpm_speedup']:.1f}x DDPM's images/s "
                      f"(NFE limit {sp['nfe_ratio_limit']:.0f}x); outside the denoiser "
                      f"{100 * sp['samplers']['aias-10']['outside_denoiser_share']:.1f}% of AIAS-10", flush=True)
        # the peak again after the workloads: a burst of load at the start must not understate it
        again = _peaks(device, candidates, int(opts["gemm_n"]))
        for p in candidates:
            if again[p]["flops_per_second"] > peaks[p]["flops_per_second"]:
                peaks[p] = again[p]
        for row in rows:
            if row["device"] == device.type:
                for v in row["variants"].values():
                    v["share_of_peak"] = v["achieved_flops_per_second"] / peaks[v["precision"]]["flops_per_second"]
    report = {
        "device": (torch.cuda.get_device_name(0) + " + " if cuda else "") + f"CPU {cpu_model()}",
        "cpu_model": cpu_model(), "isa": describe_cpu_isa(), "cpu_native_bf16": cpu_native_bf16(),
        "usable_cores": usable_cores(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "steps_timed": steps, "warmup": warmup, "gemm_peak": peaks_by_device, "workloads": rows,
        "note": ("best of the timed steps, variants interleaved round by round in one process; random batches of "
                 "the profile's size; one real optimisation step each. FLOPs: FlopCounterMode (matmul, conv, "
                 "attention) of one step; share_of_peak = FLOPs x steps/s / the GEMM peak of the variant's dtype "
                 "measured in this run (best of before and after the workloads). compile_seconds = first step - "
                 "best step. sampling: AIAS-10 vs DDPM-T on the profile's model (random weights: speed does not "
                 "depend on them), outside_denoiser_share = FARM + blending + re-noising + paste-back"),
    }
    atomic_write_json(out, report)
    _plot(report, plot)
    print(json.dumps({r["name"]: {"auto": r["auto"], "default": r["default"],
                                  "share_of_peak": round(r["variants"][r["default"]]["share_of_peak"], 4)}
                      for r in rows}))
    print(f"benchmark: {out}  plot: {plot}")
    return 0
