"""DDPM noise schedule shared by training (FARM + denoiser) and every sampler.

The betas are taken from diffusers' ``DDPMScheduler`` so that AIAS and the diffusers-based baseline samplers
(DDIM, DPM-Solver, ...) run on exactly the same schedule as training.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from fast_lightning.errors import ConfigError

# our name -> diffusers ``beta_schedule`` name
SCHEDULE_KINDS: dict[str, str] = {
    "scaled_linear": "scaled_linear",  # FAST / LDM default
    "linear": "linear",
    "cosine": "squaredcos_cap_v2",
}

_BUFFERS = ("betas", "alphas", "alphas_cumprod")


class NoiseSchedule(nn.Module):
    """Discrete-time DDPM schedule (eps-prediction, T steps).

    Buffers ``betas``, ``alphas``, ``alphas_cumprod`` are float32, non-persistent (they are fully determined by
    the constructor arguments, so checkpoints stay valid if the schedule code changes) and move with ``.to()``.
    They stay float32 even if the module is cast to a low precision dtype (``.half()``, bf16-true training),
    because 1 - abar_t near t=0 is not representable in bf16.
    ``alphas_cumprod_f64`` gives the cumulative product in float64 for exact kernel math (AIAS coefficients).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        kind: str = "scaled_linear",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
    ) -> None:
        super().__init__()
        if kind not in SCHEDULE_KINDS:
            raise ConfigError(
                f"diffusion.schedule={kind!r} is not a known noise schedule; allowed values: "
                f"{sorted(SCHEDULE_KINDS)}"
            )
        if int(num_train_timesteps) < 2:
            raise ConfigError(f"diffusion.num_train_timesteps must be >= 2, got {num_train_timesteps}")
        from diffusers import DDPMScheduler

        self.num_train_timesteps = int(num_train_timesteps)
        self.kind = kind
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        ref = DDPMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            beta_schedule=SCHEDULE_KINDS[kind],
        )
        betas = ref.betas.detach().to(torch.float32).cpu().clone()
        alphas = 1.0 - betas
        # same float32 cumprod as diffusers -> identical abar in training and in diffusers samplers
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        self._master = {"betas": betas, "alphas": alphas, "alphas_cumprod": alphas_cumprod}
        self._abar_f64_cpu = torch.cumprod(1.0 - betas.to(torch.float64), dim=0)
        self._abar_f64_cache: dict[torch.device, torch.Tensor] = {}
        for name in _BUFFERS:
            self.register_buffer(name, self._master[name].clone(), persistent=False)

    # keep the schedule buffers in float32 whatever dtype the surrounding model is cast to
    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        super()._apply(fn, recurse)
        for name in _BUFFERS:
            buf = getattr(self, name)
            if buf.dtype != torch.float32:
                setattr(self, name, self._master[name].to(buf.device))
        return self

    @property
    def alphas_cumprod_f64(self) -> torch.Tensor:
        """abar_t in float64 on the schedule's device (CPU where the device has no float64, e.g. MPS)."""
        device = self.betas.device
        if device.type == "mps":
            return self._abar_f64_cpu
        cached = self._abar_f64_cache.get(device)
        if cached is None:
            cached = self._abar_f64_cpu.to(device)
            self._abar_f64_cache[device] = cached
        return cached

    def extra_repr(self) -> str:
        return (
            f"num_train_timesteps={self.num_train_timesteps}, kind={self.kind!r}, "
            f"beta_start={self.beta_start}, beta_end={self.beta_end}"
        )

    def _gather(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] reshaped to (B, 1, ..., 1) so it broadcasts over ``like``."""
        t = torch.as_tensor(t, device=values.device).long().reshape(-1)
        out = values[t].to(device=like.device, dtype=like.dtype)
        if out.shape[0] == 1 and like.shape[0] != 1:
            out = out.expand(like.shape[0])
        return out.reshape(-1, *([1] * (like.dim() - 1)))

    def sqrt_alphas_cumprod(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self._gather(self.alphas_cumprod.sqrt(), t, like)

    def sqrt_one_minus_alphas_cumprod(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self._gather((1.0 - self.alphas_cumprod).sqrt(), t, like)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, with t a LongTensor (B,) (or a scalar)."""
        return self.sqrt_alphas_cumprod(t, x0) * x0 + self.sqrt_one_minus_alphas_cumprod(t, x0) * eps

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert q_sample given an eps estimate: x0 = (x_t - sqrt(1-abar_t) eps) / sqrt(abar_t)."""
        return (x_t - self.sqrt_one_minus_alphas_cumprod(t, x_t) * eps) / self.sqrt_alphas_cumprod(t, x_t)

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Constructor arguments that give any diffusers scheduler this schedule."""
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "beta_schedule": SCHEDULE_KINDS[self.kind],
        }

    def make_diffusers_scheduler(self, cls: type | str, **kw: Any):
        """Build a diffusers scheduler (class or class name, e.g. ``DDIMScheduler``) on this schedule.

        Defaults that match our training: eps-prediction and no x0 clipping (``clip_sample=False``) where the
        scheduler has those options; ``kw`` overrides them (e.g. ``timestep_spacing="trailing"``).
        """
        if isinstance(cls, str):
            import diffusers

            try:
                cls = getattr(diffusers, cls)
            except AttributeError as exc:
                raise ValueError(f"diffusers has no scheduler class named {cls!r}") from exc
        params = inspect.signature(cls.__init__).parameters
        args: dict[str, Any] = dict(self.diffusers_kwargs())
        for key, value in (("prediction_type", "epsilon"), ("clip_sample", False)):
            if key in params:
                args[key] = value
        args.update(kw)
        return cls(**args)
