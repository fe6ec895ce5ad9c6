"""Step-speed switches: ``trainer.compile`` (torch.compile) and ``trainer.channels_last`` (memory format).

Why one place: both change how the same weights compute, neither changes what is computed, and whether
they pay off depends on the machine and on the run's length. Each is ``auto | true | false``; an explicit
value is honoured, ``auto`` follows the rules below, chosen from side-by-side measurements (``make
bench-train`` times eager, channels_last and compiled steps interleaved in one process).

- compile, auto: on only on CUDA and only for runs of at least ``COMPILE_MIN_STEPS`` steps. On CPU the
  compiled step pays back too late: measured alone on a 2-core Zen 4 (bf16), the cpu-profile diffusion step
  is 15% faster after a 166 s compile (break-even ~1500 steps, the profile trains 900), the demo model 3%
  slower after 244 s, the segmenter 6% slower after 45 s. So auto keeps CPU eager.
- channels_last, auto: on on CUDA (tensor-core convolutions). On CPU it depends on the network, so the rule is
  per module (``CPU_CHANNELS_LAST``): the segmenter (Unet/ResNet, BatchNorm) measured 5-20% faster in
  channels_last in fp32 and bf16, on AVX2 and AVX-512 kernels alike; the diffusion UNet (GroupNorm,
  attention) 18-27% slower, so the denoiser and FARM keep the default layout.

Compilation is in place (``nn.Module.compile``): state_dict keys, checkpoints and EMA copies are unchanged.
A compile failure (no C++ compiler, an unsupported op) falls back to eager with ONE warning.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

CHOICES = ("auto", "true", "false")
COMPILE_MIN_STEPS = 1000  # a CUDA compile costs ~1 min; shorter runs cannot pay it back


def check_choice(value, key: str) -> str:
    """``auto``/``true``/``false`` from a config value (YAML booleans arrive as bool or 'True')."""
    text = str(value).strip().lower()
    if text not in CHOICES:
        from fast_lightning.errors import ConfigError

        raise ConfigError(f"{key} must be one of {', '.join(CHOICES)}, got {value!r}")
    return text


def resolve_compile(value, device_type: str, max_steps: int) -> tuple[bool, str]:
    """(compile?, why) for ``trainer.compile`` on ``device_type`` for a run of ``max_steps`` steps."""
    choice = check_choice(value, "trainer.compile")
    if choice != "auto":
        return choice == "true", "set explicitly"
    if device_type != "cuda":
        return False, "auto: eager on CPU (no measured win that pays back the compile time)"
    if int(max_steps) < COMPILE_MIN_STEPS:
        return False, f"auto: run of {int(max_steps)} steps is too short to pay back the compile (< {COMPILE_MIN_STEPS})"
    return True, f"auto: CUDA run of {int(max_steps)} steps"


# modules (speedup_targets() names, "ema." stripped) that channels_last makes faster on CPU, by bench-train
CPU_CHANNELS_LAST = {"segmenter": True, "denoiser": False, "farm": False}


def resolve_channels_last(value, device_type: str, target: str | None = None) -> tuple[bool, str]:
    """(channels_last?, why) for ``trainer.channels_last`` on ``device_type`` for module ``target``."""
    choice = check_choice(value, "trainer.channels_last")
    if choice != "auto":
        return choice == "true", "set explicitly"
    if device_type == "cuda":
        return True, "auto: CUDA convolutions are faster in channels_last"
    name = (target or "").removeprefix("ema.")
    if CPU_CHANNELS_LAST.get(name, False):
        return True, f"auto: the {name} measured faster in channels_last on CPU"
    return False, f"auto: {'the ' + name if name else 'this model'} keeps the default layout on CPU (measured slower)"


@dataclass
class CompileState:
    """What happened to one compiled module: first-call seconds (compile + run) and a fallback, if any."""

    name: str
    first_call_seconds: float | None = None
    failed: str | None = None
    calls: int = 0
    _warned: bool = field(default=False, repr=False)


def compile_in_place(module: nn.Module, name: str, **compile_kwargs) -> CompileState:
    """torch.compile ``module`` in place; the first call's time is recorded, a failure warns once and runs eager.

    An error that eager also raises is the caller's error, not the compiler's: it is re-raised as is."""
    state = CompileState(name)
    module.compile(**compile_kwargs)
    compiled = module._compiled_call_impl

    def guarded(*args, **kwargs):
        first = state.calls == 0
        start = time.perf_counter()
        try:
            out = compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure; eager decides if it is real
            module._compiled_call_impl = None
            out = module._call_impl(*args, **kwargs)  # eager; a real error raises here
            state.failed = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
            if not state._warned:
                warnings.warn(f"torch.compile of {name} failed ({state.failed}); running it eagerly "
                              "(set trainer.compile=false to skip compiling)", RuntimeWarning, stacklevel=2)
                state._warned = True
            return out
        finally:
            state.calls += 1
        if first:
            state.first_call_seconds = time.perf_counter() - start
        return out

    module._compiled_call_impl = guarded
    return state


def apply(targets: dict[str, nn.Module], *, compile: bool, channels_last: bool) -> list[CompileState]:
    """Put the ``targets`` (name -> module) in channels_last and/or compile them; returns the compile states."""
    states = []
    for name, module in targets.items():
        if module is None:
            continue
        if channels_last:
            module.to(memory_format=torch.channels_last)
        if compile:
            states.append(compile_in_place(module, name))
    return states


def compile_summary(states: list[CompileState]) -> dict:
    """For metrics.json: the compiled modules, their first-call seconds and any fallback."""
    return {s.name: {"first_call_seconds": None if s.first_call_seconds is None else round(s.first_call_seconds, 2),
                     "fell_back_to_eager": s.failed} for s in states}
