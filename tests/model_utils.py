"""Helpers for the model tests: transformers oracles with weights that make outputs non-trivial."""

from __future__ import annotations

import torch
from torch import nn


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise so activations neither vanish nor explode (transformers' default init makes every
    MobileViTV2 output ~0, which would make a parity test pass for almost any implementation)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / fan_in**0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.empty(module.bias.shape).uniform_(-0.2, 0.2, generator=gen))
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                module.weight.copy_(torch.empty(module.weight.shape).uniform_(0.5, 1.5, generator=gen))
                module.bias.copy_(torch.empty(module.bias.shape).uniform_(-0.2, 0.2, generator=gen))
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.copy_(torch.empty(module.running_mean.shape).uniform_(-0.5, 0.5, generator=gen))
                    module.running_var.copy_(torch.empty(module.running_var.shape).uniform_(0.5, 2.0, generator=gen))
    return model


def hf_model(task: str, seed: int = 0, **config_kwargs):
    """A transformers MobileViTV2 (the oracle) with randomised weights, in eval mode."""
    import transformers

    config = transformers.MobileViTV2Config(**config_kwargs)
    cls = {
        "classification": transformers.MobileViTV2ForImageClassification,
        "segmentation": transformers.MobileViTV2ForSemanticSegmentation,
        "base": transformers.MobileViTV2Model,
    }[task]
    return randomize_(cls(config), seed).eval()


def assert_nontrivial(t: torch.Tensor, what: str) -> None:
    """The oracle's output must carry signal, or agreeing with it proves nothing."""
    assert torch.isfinite(t).all(), f"{what} has non-finite values"
    assert t.float().std() > 0.05, f"{what} is nearly constant (std {t.float().std():.3g}); the parity test would be vacuous"


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def assert_close_fp32(got: torch.Tensor, expected: torch.Tensor, what: str = "output", tol: float = 1e-5) -> None:
    """fp32 parity: max abs error within ``tol`` times the reference's scale (at least 1)."""
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(expected.shape)}"
    scale = max(1.0, expected.abs().max().item())
    err = max_abs_diff(got, expected)
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol} x scale {scale:.3g}"


def fused_model_pair(cls, option: str, seed: int = 0, **config_kwargs):
    """The same randomised width-0.5 weights twice, in eval mode: eager everywhere, and with the
    inference fusion ``option`` ("conv_implementation", "transformer_implementation") set to "triton"."""
    from mobilevitv2 import MobileViTV2Config, implementation

    eager = randomize_(cls(MobileViTV2Config.from_width(0.5, **config_kwargs)), seed).eval()
    eager.set_implementation("reference")
    fused = cls(MobileViTV2Config.from_width(0.5, **config_kwargs)).eval()
    fused.set_implementation(**{implementation.OPTIONS[option].name: "triton"})
    fused.load_state_dict(eager.state_dict())
    return eager, fused


def record_op_calls(monkeypatch, name: str) -> list:
    """Replace ``mobilevitv2_kernels.<name>`` (what the model calls) by a spy that records the ``backend``
    of every call; returns the list it fills."""
    import mobilevitv2_kernels as mk

    calls = []
    real = getattr(mk, name)

    def spy(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        return real(*args, **kwargs)

    monkeypatch.setattr(mk, name, spy)
    return calls


def compile_recording_ops(model):
    """``torch.compile(model, fullgraph=True)`` with the aot_eager backend (no slow Inductor CPU code
    generation), and the list of the traced graphs' call targets (filled when it first runs)."""
    from torch._dynamo.backends.debugging import aot_eager

    targets = []

    def recording_backend(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return aot_eager(gm, example_inputs)

    torch._dynamo.reset()
    return torch.compile(model, fullgraph=True, backend=recording_backend), targets


def assert_half_precision_within_eager_error(eager: nn.Module, fused: nn.Module, x: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """In fp16 and bf16 the fused model's logits are within twice the eager model's own error against the
    fp32 ``expected`` (plus 1e-3); both models are returned to fp32."""
    for dtype in (torch.float16, torch.bfloat16):
        eager_err = max_abs_diff(eager.to(dtype)(x.to(dtype)).logits, expected)
        fused_err = max_abs_diff(fused.to(dtype)(x.to(dtype)).logits, expected)
        eager.float(), fused.float()
        assert fused_err <= 2 * eager_err + 1e-3, f"{what} {dtype}: {fused_err} vs eager's own {eager_err}"
