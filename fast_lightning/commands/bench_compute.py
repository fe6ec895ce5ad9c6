"""What the hardware can do and how much of it a step uses: GEMM peak, FLOPs per step, the sampling split.

Used by ``make bench-train``. Why these three: steps/s alone does not say whether a step is slow because
the machine is slow or because the step wastes it; the share of the measured matrix-multiply peak does.

- ``gemm_peak``: best FLOP/s of square matmuls in the given dtype on this device, in this process (the
  "peak" the shares are relative to; a real step also runs norms, activations and the optimizer, which
  count no FLOPs here, so 100% is out of reach).
- ``step_flops``: ``torch.utils.flop_counter.FlopCounterMode`` over one optimisation step (forward +
  backward): matmuls, convolutions and attention, the ops that carry the arithmetic.
- ``op_profile``: torch.profiler's ops with the most self time in one step (where the time goes).
- ``sampling_split``: AIAS-10 vs DDPM-T images/s on the same model and batch, and the share of the
  sampling wall time spent outside the denoiser (FARM, AIAS blending, re-noising, windowing, paste-back).
"""

from __future__ import annotations

import time

import torch

class CallTimer:
    """Replaces ``model.<attr>`` (e.g. predict_eps) by a timed call (instance attribute; ``restore()`` undoes it)."""

    def __init__(self, model, attr: str, device: torch.device) -> None:
        self.model, self.attr, self.device = model, attr, device
        self.original = getattr(model, attr)
        self.seconds = 0.0
        self.calls = 0
        setattr(model, attr, self)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, *args, **kwargs):
        self.sync()
        start = time.perf_counter()
        out = self.original(*args, **kwargs)
        self.sync()
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0

    def restore(self) -> None:
        self.model.__dict__.pop(self.attr, None)


GEMM_DTYPES = {"32-true": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 3) -> dict:
    """Best FLOP/s of an (n x n) @ (n x n) matmul (2 n^3 FLOPs) in ``dtype``; n=2048 on CPU, 8192 on CUDA."""
    n = int(n or (8192 if device.type == "cuda" else 2048))
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    inner = 10 if device.type == "cuda" else 1
    torch.matmul(a, b)  # warm-up: kernel selection, thread pool
    best = float("inf")
    for _ in range(max(1, repeats)):
        _sync(device)
        start = time.perf_counter()
        for _ in range(inner):
            torch.matmul(a, b)
        _sync(device)
        best = min(best, (time.perf_counter() - start) / inner)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "seconds": best, "flops_per_second": 2 * n ** 3 / best}


def step_flops(run) -> int:
    """FLOPs of one call of ``run`` (one optimisation step), counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return int(counter.get_total_flops())


def op_profile(run, device: torch.device, top: int = 8) -> list[dict]:
    """Where one step's time goes: torch.profiler's ops with the most self time (CPU, or CUDA on a GPU), as shares."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
        _sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    total = sum(getattr(e, attr) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    return [{"op": e.key, "share": round(getattr(e, attr) / total, 4), "calls": int(e.count)} for e in events[:top]]


def sampling_split(model, cfg, device: torch.device, amp: torch.dtype | None, batch: int, image_side: int,
                   repeats: int = 2) -> dict:
    """AIAS-10 vs DDPM-T on ``model`` (any weights: speed does not depend on them) for ``batch`` random
    normal images of ``image_side`` px with a rectangular mask each; best of ``repeats`` for AIAS, DDPM once."""
    from fast_lightning.sampling import build_sampler
    from fast_lightning.synthesis import WindowedFastSynthesizer

    d = cfg.diffusion
    meta = {"window": str(d.window), "resolution": int(d.resolution), "type_names": list(model.type_names),
            "config": {"diffusion": {"resolution": int(d.resolution), "crop": {"scale": float(d.crop.scale)}}}}
    model = model.to(device).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    c, s = int(cfg.data.channels), int(image_side)
    images = [torch.rand(c, s, s, generator=g) for _ in range(batch)]
    masks = []
    for _ in range(batch):
        m = torch.zeros(1, s, s)
        m[:, s // 3: s // 2, s // 3: s // 2 + s // 8] = 1
        masks.append(m)
    cond = torch.ones(batch, dtype=torch.long)
    T = int(model.num_train_timesteps)
    base = dict(cfg.sampling)
    timer = CallTimer(model, "predict_eps", device)
    farm = CallTimer(model, "farm_x0", device)
    out: dict[str, dict] = {}
    try:
        for name, over, reps in (("aias-10", dict(name="aias", steps=10), repeats),
                                 (f"ddpm-{T}", dict(name="ddpm", steps=T), 1)):
            sampler = build_sampler(dict(base, **over))
            synth = WindowedFastSynthesizer(model, sampler, meta, autocast_dtype=amp)
            if reps > 1:  # warm-up (DDPM reuses the kernels AIAS warmed)
                synth.synthesize(images, masks, cond, [torch.Generator().manual_seed(i) for i in range(batch)])
            best = None
            for r in range(reps):
                timer.reset()
                farm.reset()
                _sync(device)
                start = time.perf_counter()
                synth.synthesize(images, masks, cond, [torch.Generator().manual_seed(100 * r + i) for i in range(batch)])
                _sync(device)
                total = time.perf_counter() - start
                if best is None or total < best[0]:
                    best = (total, timer.seconds, farm.seconds)
            total, inside, farm_s = best
            out[name] = {"nfe": int(sampler.nfe), "seconds": round(total, 4), "images_per_second": batch / total,
                         "denoiser_seconds": round(inside, 4), "farm_seconds": round(farm_s, 4),
                         "outside_denoiser_share": max(0.0, total - inside) / total}
    finally:
        timer.restore()
        farm.restore()
    aias, ddpm = out["aias-10"], out[f"ddpm-{T}"]
    return {"batch": batch, "image_side": s, "window": str(d.window), "samplers": out,
            "aias10_vs_ddpm_speedup": aias["images_per_second"] / ddpm["images_per_second"],
            "nfe_ratio_limit": ddpm["nfe"] / aias["nfe"]}
