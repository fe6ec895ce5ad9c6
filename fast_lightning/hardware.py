"""What this machine can do fast: numeric precision, CPU threads, DataLoader workers.

Precision is a hardware decision, not a taste: on a CPU without native bf16 (AVX2-only AMD Zen 2/3, Intel before
Sapphire Rapids, most laptops) bf16 autocast is *emulated* and a diffusion training step runs ~15x slower than fp32,
while on CPUs with avx512_bf16 / AMX-BF16 and on bf16-capable GPUs it is ~2x faster. ``trainer.precision: auto``
therefore resolves once per run, here, and every place that decides autocast reads that one resolved value.
"""

from __future__ import annotations

import math
import os
import platform
from functools import lru_cache
from pathlib import Path

import torch

AUTO = "auto"
# Lightning precision strings accepted by trainer.precision (besides "auto").
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "64")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where the file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torch_cpu_capability() -> str:
    """The vector ISA torch dispatches to ("AVX2", "AVX512", ...); honours ATEN_CPU_CAPABILITY."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # very old or exotic builds
        return "DEFAULT"


def cpu_native_bf16(flags: set[str] | None = None, capability: str | None = None) -> bool:
    """True only where the CPU computes bf16 in hardware AND torch dispatches to those kernels.

    Both conditions matter: a CPU with avx512_bf16 under ``ATEN_CPU_CAPABILITY=avx2`` runs the emulated path.
    """
    flags = cpu_flags() if flags is None else flags
    capability = torch_cpu_capability() if capability is None else capability
    has_flag = any(f in flags for f in _CPU_BF16_FLAGS)
    return has_flag and capability.upper().startswith(("AVX512", "AMX"))


def cuda_selected(accelerator: str) -> bool:
    return str(accelerator).lower() in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def cuda_native_bf16() -> bool:
    """bf16 in hardware (Ampere and later). torch's default also counts emulation, which would hand
    pre-Ampere GPUs (T4, V100) a slow emulated ``bf16-mixed``."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3 has no including_emulation and only counts native support there
        return bool(torch.cuda.is_bf16_supported())


def resolve_precision(requested: str, accelerator: str = "auto") -> tuple[str, str]:
    """(Lightning precision, why) for ``trainer.precision``; an explicit value is always honoured."""
    requested = str(requested)
    if requested != AUTO:
        if requested not in PRECISIONS:
            from fast_lightning.errors import ConfigError

            raise ConfigError(f"trainer.precision must be auto or one of {', '.join(PRECISIONS)}, got {requested!r}")
        return requested, "set explicitly"
    if cuda_selected(accelerator):
        name = torch.cuda.get_device_name(0)
        if cuda_native_bf16():
            return "bf16-mixed", f"GPU {name} computes bf16 natively"
        return "16-mixed", f"GPU {name} has no native bf16 (it would be emulated)"
    model = cpu_model()
    if cpu_native_bf16():
        return "bf16-mixed", f"CPU {model} computes bf16 natively ({describe_cpu_isa()})"
    return "32-true", f"CPU {model} has no native bf16 ({describe_cpu_isa()}); bf16 autocast would be emulated"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype a resolved Lightning precision implies for code outside the Trainer (synthesis, benches)."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return None


def describe_cpu_isa() -> str:
    flags = cpu_flags()
    bf16 = [f for f in _CPU_BF16_FLAGS if f in flags]
    avx = "avx512f" if "avx512f" in flags else ("avx2" if "avx2" in flags else "no avx2")
    return f"{avx}, bf16 flags: {'+'.join(bf16) or 'none'}, torch dispatch {torch_cpu_capability()}"


def _cgroup_cpu_limit() -> float | None:
    """CPUs granted by a cgroup v2 quota (``cpu.max``) or v1 (``cfs_quota_us``); None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 else None
    except (OSError, ValueError):
        return None


@lru_cache(maxsize=1)
def usable_cores() -> int:
    """Cores this process may use: the affinity mask (taskset) capped by the cgroup quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return max(1, cores)


def dataloader_workers(requested: int, on_cpu: bool) -> int:
    """DataLoader workers that do not oversubscribe the cores the training math runs on.

    On CPU the main process's intra-op threads use every usable core, so workers (one thread each) only steal
    from the math: at most ``cores - 1``. On GPU the math is on the device and ``requested`` is capped at the cores.
    """
    cores = usable_cores()
    cap = cores - 1 if on_cpu else cores
    return max(0, min(int(requested), cap))


def configure_threads() -> int:
    """torch intra-op threads = usable cores (torch's default counts every core of the host, ignoring limits)."""
    n = usable_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
