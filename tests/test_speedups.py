"""trainer.compile / trainer.channels_last: the auto rules, the one-warning fallback, numerical equivalence."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fast_lightning import speedups
from fast_lightning.config import load_config
from fast_lightning.errors import ConfigError


def test_auto_rules_and_explicit_values():
    assert speedups.resolve_compile("auto", "cpu", 100_000)[0] is False
    assert speedups.resolve_compile("auto", "cuda", speedups.COMPILE_MIN_STEPS - 1)[0] is False
    assert speedups.resolve_compile("auto", "cuda", speedups.COMPILE_MIN_STEPS)[0] is True
    assert speedups.resolve_compile("true", "cpu", 5) == (True, "set explicitly")
    assert speedups.resolve_compile(False, "cuda", 10_000)[0] is False
    assert speedups.resolve_channels_last("auto", "cuda")[0] is True
    assert speedups.resolve_channels_last("auto", "cpu")[0] is False
    # on CPU auto is per module, from bench-train: the segmenter gains, the diffusion UNet and FARM lose
    assert speedups.resolve_channels_last("auto", "cpu", "segmenter")[0] is True
    assert speedups.resolve_channels_last("auto", "cpu", "ema.segmenter")[0] is True
    assert speedups.resolve_channels_last("auto", "cpu", "denoiser")[0] is False
    assert speedups.resolve_channels_last("auto", "cpu", "farm")[0] is False
    assert speedups.resolve_channels_last("false", "cpu", "segmenter")[0] is False
    assert speedups.resolve_channels_last("auto", "cuda", "denoiser")[0] is True
    assert speedups.resolve_channels_last("True", "cpu")[0] is True


def test_config_accepts_yaml_booleans_and_rejects_other_values():
    cfg = load_config(["profile=smoke", "trainer.compile=true", "trainer.channels_last=False"])
    assert (cfg.trainer.compile, cfg.trainer.channels_last) == ("true", "false")
    assert load_config(["profile=smoke"]).trainer.compile == "auto"
    with pytest.raises(ConfigError, match="trainer.compile"):
        load_config(["profile=smoke", "trainer.compile=maybe"])


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no C++ compiler here")


class _Tiny(nn.Module):  # forward defined outside torch: dynamo traces it (torch's own modules it skips)
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.nn.functional.silu(self.conv(x))


def test_compile_failure_falls_back_to_eager_with_one_warning():
    torch.manual_seed(0)
    net = _Tiny()
    x = torch.randn(2, 3, 8, 8)
    expected = net(x)
    state = speedups.compile_in_place(net, "tiny", backend=_failing_backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out1, out2 = net(x), net(x)
    ours = [w for w in caught if "torch.compile of tiny failed" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert state.failed and "no C++ compiler" in state.failed
    assert torch.equal(out1, expected) and torch.equal(out2, expected)
    assert "._orig_mod" not in "".join(net.state_dict())  # in place: checkpoint keys unchanged


class _Broken(nn.Module):
    def forward(self, x):
        raise ValueError("shape mismatch in the caller's data")


def test_a_real_error_is_not_disguised_as_a_compile_failure():
    net = _Broken()
    speedups.compile_in_place(net, "broken", backend="eager")
    with pytest.raises(ValueError, match="shape mismatch"):
        net(torch.zeros(1))


def _diffusion_loss(compile: bool, channels_last: bool):
    from fast_lightning.commands.bench_train import _diffusion_step

    cfg = load_config(["profile=smoke", "trainer.precision=32-true"])
    step, _, model, states = _diffusion_step(cfg, torch.device("cpu"), compile=compile, channels_last=channels_last)
    loss = step()  # one optimisation step from the same weights on the same fixed batch
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    return float(loss.detach()), grads, model, states


def test_channels_last_gives_the_same_loss_and_gradients():
    loss, grads, _, _ = _diffusion_loss(False, False)
    loss_cl, grads_cl, model, _ = _diffusion_loss(False, True)
    conv = next(m for m in model.denoiser.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert loss_cl == pytest.approx(loss, rel=1e-5)
    assert torch.allclose(grads_cl, grads, rtol=1e-3, atol=1e-5)


def test_speedups_callback_applies_the_resolved_choices():
    from types import SimpleNamespace

    from fast_lightning.training import Speedups

    denoiser, ema = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)
    module = SimpleNamespace(device=torch.device("cpu"),
                             speedup_targets=lambda: {"denoiser": denoiser, "farm": None, "ema.denoiser": ema})
    trainer = SimpleNamespace(is_global_zero=True)
    Speedups("auto", "auto", 500).on_fit_start(trainer, module)  # CPU auto: default layout, eager
    assert not denoiser.weight.is_contiguous(memory_format=torch.channels_last)
    assert denoiser._compiled_call_impl is None
    cb = Speedups("true", "true", 5)
    cb.on_fit_start(trainer, module)
    assert denoiser.weight.is_contiguous(memory_format=torch.channels_last)
    assert ema.weight.is_contiguous(memory_format=torch.channels_last)
    assert denoiser._compiled_call_impl is not None and ema._compiled_call_impl is None  # EMA: layout only
    assert [s.name for s in cb.states] == ["denoiser"]
    with pytest.raises(ConfigError, match="trainer.channels_last"):
        Speedups("auto", "sometimes", 5)


def test_speedups_callback_auto_puts_only_the_segmenter_in_channels_last_on_cpu():
    from types import SimpleNamespace

    from fast_lightning.training import Speedups

    segmenter, denoiser = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)
    trainer = SimpleNamespace(is_global_zero=True)
    for name, net in (("segmenter", segmenter), ("denoiser", denoiser)):
        module = SimpleNamespace(device=torch.device("cpu"), speedup_targets=lambda n=name, m=net: {n: m})
        Speedups("auto", "auto", 500).on_fit_start(trainer, module)
    assert segmenter.weight.is_contiguous(memory_format=torch.channels_last)
    assert not denoiser.weight.is_contiguous(memory_format=torch.channels_last)
    assert segmenter._compiled_call_impl is None  # compile: auto stays eager on CPU


def test_segmenter_in_channels_last_gives_the_same_loss_and_gradients():
    """Unet/resnet (BatchNorm in training mode) in channels_last: the same loss and gradients as eager."""
    from fast_lightning.segmentation.losses import build_loss
    from fast_lightning.segmentation.models import build_segmenter

    def run(channels_last: bool):
        torch.manual_seed(0)
        model = build_segmenter("Unet", "resnet18", None, in_channels=3).train()
        speedups.apply({"segmenter": model}, compile=False, channels_last=channels_last)
        g = torch.Generator().manual_seed(1)
        x = torch.rand(2, 3, 64, 64, generator=g)
        y = (torch.rand(2, 1, 64, 64, generator=g) > 0.9).float()
        loss = build_loss({"dice_weight": 1.0, "focal_weight": 1.0, "focal_gamma": 2.0})(model(x).float(), y)
        loss.backward()
        grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
        return loss.item(), grads, model

    loss, grads, _ = run(False)
    loss_cl, grads_cl, model = run(True)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert loss_cl == pytest.approx(loss, rel=1e-5)
    # fp32 reduction order differs between layouts and BatchNorm over a 2-image batch amplifies it (measured
    # 2.6e-3 of the gradient's norm); a layout bug would be O(1)
    assert float((grads_cl - grads).norm() / grads.norm()) < 1e-2


@pytest.mark.slow
def test_compiled_step_matches_eager():
    """inductor-compiled denoiser + FARM: the same loss (and gradients) for a fixed batch as eager."""
    loss, grads, _, _ = _diffusion_loss(False, False)
    loss_c, grads_c, _, states = _diffusion_loss(True, False)
    assert [s.name for s in states] == ["denoiser", "farm"]
    assert all(s.failed is None for s in states), [s.failed for s in states]
    assert all(s.first_call_seconds is not None for s in states)
    assert loss_c == pytest.approx(loss, rel=1e-4)
    assert torch.allclose(grads_c, grads, rtol=1e-2, atol=1e-4)
