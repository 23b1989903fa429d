"""Operator-level cases: the separable-attention core (qkv -> output) against its compiled reference and the
fused backends; separable against multi-head attention modules at a fixed token budget; one transformer
layer, the module against the fused op (its output checked against the float32 module first)."""

from __future__ import annotations

import torch

from mobilevitv2.bench.checks import CHECK_TOLERANCE, Deferred, dtype_name, randomize_for_check, relative_error
from mobilevitv2.bench.harness import Case
from mobilevitv2_kernels import available_backends
from mobilevitv2_kernels import reference as kernel_reference
from mobilevitv2_kernels.numerics import strict_fp32


def use_backend(module: torch.nn.Module, attribute: str, backend: str) -> None:
    """Set the fused backend a standalone module runs with (what a model's ``set_implementation`` stores on
    it); an attribute the module's class does not declare raises, so that a renamed attribute cannot
    silently leave a "fused" provider on the reference path."""
    if not hasattr(type(module), attribute):
        raise AttributeError(f"{type(module).__name__} has no implementation attribute {attribute!r}")
    setattr(module, attribute, backend)


def _compile(fn, **kwargs):
    return torch.compile(fn, **kwargs)


def attention_core_cases(shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device, backward: bool) -> list[Case]:
    """The separable-attention core (qkv -> output) at one (B, d, P, N) shape: reference eager and compiled,
    and every fused backend available here."""
    from mobilevitv2_kernels import separable_attention

    B, d, P, N = shape
    qkv = torch.randn(B, 1 + 2 * d, P, N, device=device, dtype=dtype, requires_grad=backward)
    grad = torch.randn(B, d, P, N, device=device, dtype=dtype)
    elem = qkv.element_size()
    fwd_bytes = (qkv.numel() + B * d * P * N) * elem  # read qkv, write out
    bwd_bytes = fwd_bytes + (B * d * P * N + qkv.numel() * 2) * elem  # + read grad and qkv, write grad_qkv
    mode = "fwd+bwd" if backward else "fwd"
    group = f"attention core {tuple(shape)} {dtype_name(dtype)} {mode}"

    def runner(f):
        if not backward:
            return lambda: f(qkv)
        return lambda: torch.autograd.grad(f(qkv), qkv, grad)

    providers = [("reference eager", kernel_reference.separable_attention_forward, True)]
    providers.append(("reference compiled", _compile(kernel_reference.separable_attention_forward), False))
    for backend in available_backends(device):
        if backend != "reference":
            providers.append((f"fused {backend}", lambda t, b=backend: separable_attention(t, backend=b), False))
    return [Case(group, name, runner(f), baseline, bytes_moved=bwd_bytes if backward else fwd_bytes) for name, f, baseline in providers]


class MultiHeadSelfAttention(torch.nn.Module):
    """MobileViT v1's attention: qkv projection, ``scaled_dot_product_attention`` (flash where it can), output
    projection, over (batch, tokens, d) sequences."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        S, T, D = x.shape
        q, k, v = self.qkv(x).view(S, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(S, T, D))


ATTENTION_PROVIDERS = (
    "separable eager",
    "separable fused",
    "separable fused key-free (inference op)",
    "multi-head SDPA",
    "nn.MultiheadAttention",
)


def attention_scaling_cases(
    n: int,
    tokens: int,
    dim: int,
    dtype: torch.dtype,
    device: torch.device,
    backward: bool,
    heads: int = 4,
    providers: list[str] | None = None,
    baseline: str = "separable eager",
) -> list[Case]:
    """Separable vs multi-head attention modules (projections included) at a fixed token budget:
    separable runs on (tokens/(4N), d, 4, N), multi-head on tokens/N sequences of N tokens.

    ``providers`` (names from :data:`ATTENTION_PROVIDERS`, run in the order given) default to every one that
    applies (the fused ones on CUDA; the key-free op without backward); ``baseline`` is the group's
    reference for the speed-up column."""
    from mobilevitv2 import MobileViTV2Config
    from mobilevitv2.blocks import MobileViTV2LinearSelfAttention

    P = 4
    B = max(1, tokens // (P * n))
    mode = "fwd+bwd" if backward else "fwd"
    group = f"attention N={n} ({B * P * n} tokens, d={dim}) {dtype_name(dtype)} {mode}"
    separable = MobileViTV2LinearSelfAttention(MobileViTV2Config(), dim).to(device=device, dtype=dtype)
    mha = MultiHeadSelfAttention(dim, heads).to(device=device, dtype=dtype)
    torch_mha = torch.nn.MultiheadAttention(dim, heads, batch_first=True).to(device=device, dtype=dtype)
    patches = torch.randn(B, dim, P, n, device=device, dtype=dtype, requires_grad=backward)
    sequences = torch.randn(B * P, n, dim, device=device, dtype=dtype, requires_grad=backward)

    def run(f, x):
        if not backward:
            def call():
                with torch.no_grad():
                    return f(x)
            return call
        return lambda: f(x).sum().backward()

    if providers is None:
        providers = [p for p in ATTENTION_PROVIDERS if device.type == "cuda" or "fused" not in p]
        providers = [p for p in providers if not (backward and "key-free" in p)]
    unknown = [p for p in providers if p not in ATTENTION_PROVIDERS]
    if unknown:
        raise ValueError(f"unknown attention providers {unknown}; known: {list(ATTENTION_PROVIDERS)}")
    if backward and any("key-free" in p for p in providers):
        raise ValueError("the key-free attention op is inference-only; it has no backward")

    def make(provider):
        if provider == "separable eager":  # the module's reference path (attention_backend None)
            return run(separable, patches)
        if provider == "separable fused":  # the same weights through the fused op where "auto" takes it
            fused = MobileViTV2LinearSelfAttention(MobileViTV2Config(), dim).to(device=device, dtype=dtype)
            fused.load_state_dict(separable.state_dict())
            use_backend(fused, "attention_backend", "auto")
            return run(fused, patches)
        if provider == "separable fused key-free (inference op)":  # projections fused too, qkv never formed
            from mobilevitv2_kernels import linear_self_attention

            weights = (separable.qkv_proj.convolution.weight.flatten(1), separable.qkv_proj.convolution.bias,
                       separable.out_proj.convolution.weight.flatten(1), separable.out_proj.convolution.bias)  # fmt: skip
            return run(lambda t: linear_self_attention(t, *weights), patches)
        if provider == "multi-head SDPA":
            return run(mha, sequences)
        return run(lambda t: torch_mha(t, t, t, need_weights=False)[0], sequences)

    return [Case(group, p, make(p), baseline=p == baseline, items=B * P * n) for p in providers]


TRANSFORMER_LAYER_PROVIDERS = ("module eager", "module compiled", "fused op")


def transformer_layer_cases(
    batch: int,
    dim: int,
    n: int,
    dtype: torch.dtype,
    device: torch.device,
    compiled: bool = True,
    providers: list[str] | None = None,
    baseline: str = "module eager",
) -> list[Case]:
    """One MobileViTV2 transformer layer at inference on (batch, dim, 4, n) patches (FFN width 2 x dim):
    the module eager (baseline) and compiled, and the fused ``mobilevitv2::transformer_layer`` op (Triton),
    each output checked against the float32 module (TF32 off) first. Bytes: x read and y written once.
    ``providers`` (from :data:`TRANSFORMER_LAYER_PROVIDERS`) default to the module eager, compiled unless
    ``compiled`` is false, and the fused op on CUDA."""
    if providers is None:
        providers = ["module eager"] + (["module compiled"] if compiled else []) + (["fused op"] if device.type == "cuda" else [])
    unknown = [p for p in providers if p not in TRANSFORMER_LAYER_PROVIDERS]
    if unknown:
        raise ValueError(f"unknown transformer layer providers {unknown}; known: {list(TRANSFORMER_LAYER_PROVIDERS)}")
    from mobilevitv2 import MobileViTV2Config
    from mobilevitv2.blocks import MobileViTV2TransformerLayer

    group = f"transformer layer ({batch},{dim},4,{n}) {dtype_name(dtype)} inference"
    layer = randomize_for_check(MobileViTV2TransformerLayer(MobileViTV2Config(), dim, 2 * dim)).to(device).eval()
    x32 = torch.randn(batch, dim, 4, n, device=device, generator=torch.Generator(device).manual_seed(0))
    with torch.no_grad(), strict_fp32():  # the oracle in full float32: TF32 would round like the fp16 it judges
        expected = layer(x32)
    layer = layer.to(dtype)
    x = x32.to(dtype)

    def build(provider):
        if provider == "fused op":
            fused = MobileViTV2TransformerLayer(MobileViTV2Config(), dim, 2 * dim).to(device=device, dtype=dtype).eval()
            fused.load_state_dict(layer.state_dict())
            use_backend(fused, "transformer_backend", "triton")
            forward = fused
        else:
            forward = torch.compile(layer) if provider == "module compiled" else layer

        def run():
            with torch.no_grad():
                return forward(x)

        def check(out):
            err = relative_error(out, expected)
            return None if err <= CHECK_TOLERANCE[dtype] else f"wrong output: relative error {err:.3g} vs fp32 module"

        return run, check

    nbytes = 2 * x.numel() * x.element_size()
    return [Case(group, p, Deferred(build, p), baseline=p == baseline, items=batch, bytes_moved=nbytes)
            for p in providers]  # fmt: skip
