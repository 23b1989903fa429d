"""The fused transformer-layer op (``mobilevitv2::transformer_layer``) and the attention module alone
(``mobilevitv2::linear_self_attention``), inference only, on every backend.

Oracles: the reference (GroupNorm, 1x1 convs, separable attention in PyTorch), itself checked against the
modules of ``MobileViTV2TransformerLayer`` / ``MobileViTV2LinearSelfAttention`` in eval mode, and float64
runs of it for the bounds (float16/bfloat16: at most 2x PyTorch's own error). One factory per op,
``sample_inputs`` and ``attention_sample_inputs``, feeds the forward check, the gradient check (the ops
refuse autograd), opcheck and torch.compile; the layer's samples include an input of tiny variance, where
GroupNorm's eps decides the result. Outputs start as NaN (``nan_allocations``). On the CPU Triton runs
under the interpreter; shapes are tiny, the CI machine has 2 cores. The model-level tests are in
tests/test_fused_model.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch

import mobilevitv2_kernels as mk
from mobilevitv2 import MobileViTV2Config
from mobilevitv2.blocks import MobileViTV2TransformerLayer
from mobilevitv2_kernels import backends, reference
from mobilevitv2_kernels.weights import AttentionWeights, TransformerLayerWeights
from model_utils import assert_nontrivial, randomize_
from sm90_compile import run_compile_script

OP = "transformer_layer"
pytestmark = pytest.mark.usefixtures("nan_allocations", "manual_seed", "ieee_fp32")


def make_parameters(d, f, device="cpu") -> TransformerLayerWeights:
    """Float32 layer parameters that keep activations of order one (so errors are meaningful); drawn on
    the CPU, the same values on every device."""

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape) * scale).to(device)

    return TransformerLayerWeights(
        1 + 0.3 * randn(d), 0.2 * randn(d),  # norm1
        randn(1 + 2 * d, d, scale=d**-0.5), 0.2 * randn(1 + 2 * d),  # qkv
        randn(d, d, scale=d**-0.5), 0.2 * randn(d),  # out
        1 + 0.3 * randn(d), 0.2 * randn(d),  # norm2
        randn(f, d, scale=d**-0.5), 0.2 * randn(f),  # ffn1
        randn(d, f, scale=f**-0.5), 0.2 * randn(d),  # ffn2
    )  # fmt: skip


def make_input(B, d, P, N, device="cpu"):
    return (torch.randn(B, d, P, N) * 1.5 + 0.7).to(device)  # a non-zero mean: the statistics matter


def attention_parameters(d, device="cpu") -> AttentionWeights:
    return AttentionWeights(*make_parameters(d, 2 * d, device)[2:6])  # w_qkv, b_qkv, w_out, b_out


@dataclasses.dataclass
class Sample:
    name: str
    x: torch.Tensor  # (B, d, P, N), any strides
    weights: tuple  # TransformerLayerWeights or AttentionWeights, float32 or x's dtype
    own_error_factor: float | None = None  # ill-conditioned: every dtype within this multiple of PyTorch's error

    def with_grad(self, requires_grad: bool) -> Sample:
        weights = type(self.weights)(*(w.detach().requires_grad_(requires_grad) for w in self.weights))
        return dataclasses.replace(self, x=self.x.detach().requires_grad_(requires_grad), weights=weights)


def sample_inputs(device, dtype, *, requires_grad=False) -> Iterator[Sample]:
    """Named samples of x (in ``dtype`` on ``device``) and layer parameters (in x's dtype unless named)."""

    def sample(name, x, weights, **kw):
        assert x.is_contiguous() != (name in ("transposed", "channel-slice", "transposed-copy")), name
        return Sample(name, x, weights, **kw).with_grad(requires_grad)

    def in_dtype(weights):
        return type(weights)(*(w.to(dtype) for w in weights))

    # (B, d, P, N, F): the model's P = 4 and d, F multiples of 16; d and F that are not (masks); P = 1; N = 1;
    # N longer than one score step; a single sample.
    for B, d, P, N, F in ((2, 32, 4, 16, 64), (1, 24, 4, 7, 48), (2, 16, 1, 33, 40), (3, 48, 4, 1, 96),
                          (1, 64, 4, 20, 128)):  # fmt: skip
        yield sample(f"B{B}-d{d}-P{P}-N{N}-F{F}", make_input(B, d, P, N, device).to(dtype),
                     in_dtype(make_parameters(d, F, device)))  # fmt: skip
    # Variance ~1e-6, below GroupNorm's eps (1e-5), far from zero: eps dominates rstd, so eps applied
    # anywhere but inside the square root is off by a factor ~3, and E[x^2] - E[x]^2 loses every digit; both
    # fail here in every dtype. The input is ill-conditioned for any implementation (PyTorch's own float32
    # error is ~3e-4 here), so every dtype is held to twice PyTorch's own error in it.
    tiny = (3.0 + 1e-3 * torch.randn(2, 32, 4, 16)).to(device=device, dtype=dtype)
    yield sample("tiny-variance", tiny, in_dtype(make_parameters(32, 64, device)), own_error_factor=2.0)
    # Parameters may stay float32 for a low-precision x (as the reference, the kernel casts them).
    yield sample("float32-parameters", make_input(2, 32, 4, 8, device).to(dtype), make_parameters(32, 64, device))
    # Strided x: N and P swapped in memory, every other channel of a wider tensor, a transposed copy.
    yield sample("transposed", make_input(2, 16, 12, 4, device).to(dtype).transpose(2, 3),
                 make_parameters(16, 32, device))  # fmt: skip
    yield sample("channel-slice", make_input(2, 32, 4, 12, device).to(dtype)[:, ::2], make_parameters(16, 32, device))
    copy = make_input(2, 16, 4, 6, device).to(dtype).transpose(2, 3).contiguous().transpose(2, 3)
    yield sample("transposed-copy", copy, make_parameters(16, 32, device))
    # An empty batch: a correctly shaped empty result, no launch.
    yield sample("empty-batch", make_input(0, 16, 4, 6, device).to(dtype), make_parameters(16, 32, device))


def attention_sample_inputs(device, dtype, *, requires_grad=False) -> Iterator[Sample]:
    """Named samples of x (in ``dtype`` on ``device``) and attention parameters."""

    def sample(name, x, weights):
        assert x.is_contiguous() != (name == "transposed"), name
        return Sample(name, x, weights).with_grad(requires_grad)

    for B, d, P, N in ((2, 32, 4, 16), (1, 24, 4, 7), (2, 16, 1, 33), (3, 48, 4, 1)):
        weights = AttentionWeights(*(w.to(dtype) for w in attention_parameters(d, device)))
        yield sample(f"B{B}-d{d}-P{P}-N{N}", make_input(B, d, P, N, device).to(dtype), weights)
    yield sample("transposed", make_input(2, 16, 12, 4, device).to(dtype).transpose(2, 3),
                 attention_parameters(16, device))  # fmt: skip
    yield sample("empty-batch", make_input(0, 16, 4, 6, device).to(dtype), attention_parameters(16, device))


def named(samples, names) -> list[Sample]:
    found = [s for s in samples if s.name in names]
    assert len(found) == len(names), [s.name for s in found]
    return found


def check(assert_close, actual, s: Sample, what: str, nontrivial=0.5) -> None:
    """``actual`` against the float64 reference on the sample's inputs, the parameters rounded to x's dtype
    as the kernels round them; PyTorch's own result in x's dtype for the bound."""
    x = s.x.detach()
    weights = type(s.weights)(*(w.detach().to(x.dtype) for w in s.weights))
    weights64 = type(s.weights)(*(w.double() for w in weights))
    forward = (reference.transformer_layer_forward if isinstance(weights, TransformerLayerWeights)
               else reference.linear_self_attention_forward)  # fmt: skip
    extra = (1e-5,) if isinstance(weights, TransformerLayerWeights) else ()
    with torch.no_grad():
        expected = forward(x.double(), weights64, *extra)
        torch_lowp = forward(x, weights, *extra)
    assert actual.is_contiguous(), f"{what}, {s.name}: not contiguous"
    assert_close(actual, expected, torch_lowp, nontrivial=nontrivial if x.numel() else None,
                 own_error_factor=s.own_error_factor, what=f"{what}, {s.name}")  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# transformer_layer: forward, gradient, opcheck, torch.compile over the samples, every backend
# ----------------------------------------------------------------------------------------------------------


def test_forward(backend, dtype, assert_close):
    for s in sample_inputs(backend.device, dtype):
        y = mk.transformer_layer(s.x, *s.weights, eps=1e-5, backend=backend.name)
        assert y.shape == s.x.shape and y.dtype == dtype, s.name
        check(assert_close, y, s, f"{backend.name} op")


GRADIENT_SAMPLES = ("B2-d16-P1-N33-F40", "transposed", "empty-batch")


def test_gradient(op_backend, dtype, assert_close):
    """Inference only: with grad mode on and x or a parameter requiring grad, the op (the wrapper and the
    registered op itself) raises at call time; under no_grad and inference_mode it runs and is right."""
    for s in named(sample_inputs(op_backend.device, dtype), GRADIENT_SAMPLES):
        trainable = s.with_grad(True).weights
        for x, weights in ((s.x.detach().requires_grad_(True), s.weights), (s.x, trainable)):
            with pytest.raises(RuntimeError, match="inference-only"):
                mk.transformer_layer(x, *weights, backend=op_backend.name)
            with pytest.raises(RuntimeError, match="inference-only"):  # the op itself, not only the wrapper
                torch.ops.mobilevitv2.transformer_layer(x, *weights, 1e-5, op_backend.name)
        for mode in (torch.no_grad, torch.inference_mode):
            with mode():
                y = mk.transformer_layer(s.x.detach().requires_grad_(True), *trainable, backend=op_backend.name)
            check(assert_close, y, s, f"{op_backend.name} op under {mode.__name__}")


OPCHECK_SAMPLES = ("B1-d24-P4-N7-F48", "tiny-variance", "transposed", "empty-batch")


@pytest.mark.parametrize("requires_grad", [True, False])
def test_opcheck(op_backend, dtype, requires_grad):
    """Schema, fake kernel, autograd registration and AOT dispatch in every dtype. Inputs that require
    grad: in grad mode opcheck meets the op's refusal; under no_grad every check passes."""
    op = torch.ops.mobilevitv2.transformer_layer.default
    for s in named(sample_inputs(op_backend.device, dtype, requires_grad=requires_grad), OPCHECK_SAMPLES):
        args = (s.x, *s.weights, 1e-5, op_backend.name)
        if requires_grad:
            with pytest.raises(Exception, match="inference-only"):  # opcheck's OpCheckError, caused by the refusal
                torch.library.opcheck(op, args)
            with torch.no_grad():
                result = torch.library.opcheck(op, args)
        else:
            result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), (s.name, result)


COMPILE_SAMPLES = ("B1-d24-P4-N7-F48", "tiny-variance", "channel-slice")


def test_torch_compile(op_backend, assert_close):
    """The op under torch.compile(fullgraph=True) (one opaque node, traced through its fake kernel) equals
    the float64 reference."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, w: mk.transformer_layer(x, *w, backend=op_backend.name), fullgraph=True)
    for s in named(sample_inputs(op_backend.device, torch.float32), COMPILE_SAMPLES):
        with torch.no_grad():
            y = compiled(s.x, s.weights)
        check(assert_close, y, s, "compiled op")


# ----------------------------------------------------------------------------------------------------------
# linear_self_attention: the same checks over its samples
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.op("linear_self_attention")
def test_attention_forward(backend, dtype, assert_close):
    for s in attention_sample_inputs(backend.device, dtype):
        y = mk.linear_self_attention(s.x, *s.weights, backend=backend.name)
        assert y.shape == s.x.shape and y.dtype == dtype, s.name
        check(assert_close, y, s, f"{backend.name} op", nontrivial=0.3)


@pytest.mark.op("linear_self_attention")
def test_attention_gradient(op_backend, dtype, assert_close):
    """Inference only, as the layer: refused with grad mode on and an input requiring grad; right under
    no_grad."""
    for s in named(attention_sample_inputs(op_backend.device, dtype), ("B1-d24-P4-N7", "empty-batch")):
        trainable = s.with_grad(True).weights
        for x, weights in ((s.x.detach().requires_grad_(True), s.weights), (s.x, trainable)):
            with pytest.raises(RuntimeError, match="linear_self_attention is inference-only"):
                mk.linear_self_attention(x, *weights, backend=op_backend.name)
            with pytest.raises(RuntimeError, match="inference-only"):
                torch.ops.mobilevitv2.linear_self_attention(x, *weights, op_backend.name)
        with torch.no_grad():
            y = mk.linear_self_attention(s.x.detach().requires_grad_(True), *trainable, backend=op_backend.name)
        check(assert_close, y, s, f"{op_backend.name} op under no_grad", nontrivial=0.3)


@pytest.mark.op("linear_self_attention")
@pytest.mark.parametrize("requires_grad", [True, False])
def test_attention_opcheck(op_backend, dtype, requires_grad):
    op = torch.ops.mobilevitv2.linear_self_attention.default
    samples = attention_sample_inputs(op_backend.device, dtype, requires_grad=requires_grad)
    for s in named(samples, ("B2-d16-P1-N33", "transposed", "empty-batch")):
        args = (s.x, *s.weights, op_backend.name)
        if requires_grad:
            with pytest.raises(Exception, match="inference-only"):  # opcheck's OpCheckError, caused by the refusal
                torch.library.opcheck(op, args)
            with torch.no_grad():
                result = torch.library.opcheck(op, args)
        else:
            result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), (s.name, result)


@pytest.mark.op("linear_self_attention")
def test_attention_torch_compile(op_backend, assert_close):
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, w: mk.linear_self_attention(x, *w, backend=op_backend.name), fullgraph=True)
    for s in named(attention_sample_inputs(op_backend.device, torch.float32), ("B1-d24-P4-N7", "transposed")):
        with torch.no_grad():
            y = compiled(s.x, s.weights)
        check(assert_close, y, s, "compiled op", nontrivial=0.3)


# ----------------------------------------------------------------------------------------------------------
# The reference against the modules
# ----------------------------------------------------------------------------------------------------------


def module_parameters(layer: MobileViTV2TransformerLayer):
    attention, ffn = layer.attention, layer.ffn
    return (
        layer.layernorm_before.weight, layer.layernorm_before.bias,
        attention.qkv_proj.convolution.weight.flatten(1), attention.qkv_proj.convolution.bias,
        attention.out_proj.convolution.weight.flatten(1), attention.out_proj.convolution.bias,
        layer.layernorm_after.weight, layer.layernorm_after.bias,
        ffn.conv1.convolution.weight.flatten(1), ffn.conv1.convolution.bias,
        ffn.conv2.convolution.weight.flatten(1), ffn.conv2.convolution.bias,
    )  # fmt: skip


def test_reference_equals_eager_module():
    layer = randomize_(MobileViTV2TransformerLayer(MobileViTV2Config(), 16, 32)).eval()
    x = make_input(2, 16, 4, 9)
    with torch.no_grad():
        expected = layer(x)
        got = reference.transformer_layer_forward(
            x, TransformerLayerWeights(*module_parameters(layer)), layer.layernorm_before.eps
        )
    assert_nontrivial(expected, "eager transformer layer")
    assert torch.equal(got, expected)  # the same operations in the same order


def test_attention_reference_equals_module():
    from mobilevitv2.blocks import MobileViTV2LinearSelfAttention

    module = randomize_(MobileViTV2LinearSelfAttention(MobileViTV2Config(), 16)).eval()
    x = make_input(2, 16, 4, 9)
    params = (module.qkv_proj.convolution.weight.flatten(1), module.qkv_proj.convolution.bias,
              module.out_proj.convolution.weight.flatten(1), module.out_proj.convolution.bias)  # fmt: skip
    with torch.no_grad():
        expected = module(x)
        got = reference.linear_self_attention_forward(x, AttentionWeights(*params))
    assert_nontrivial(expected, "eager attention module")
    assert torch.equal(got, expected)


# ----------------------------------------------------------------------------------------------------------
# The Triton kernels' pieces; bad input; capabilities
# ----------------------------------------------------------------------------------------------------------


def test_pieces_write_every_element(triton_device):
    """The statistics (several chunks per sample), the score-weighted means and the fused MLP, each into
    NaN-filled outputs, against float64 PyTorch."""
    from mobilevitv2_kernels.triton_kernels import transformer_layer as tk

    device = triton_device
    B, d, P, N, F = 2, 24, 4, 40, 48
    x = make_input(B, d, P, N, device)
    x64 = x.double()
    mean64, rstd64 = x64.mean((1, 2, 3)), (x64.var((1, 2, 3), unbiased=False) + 1e-5).rsqrt()
    for num_chunks in (1, 4):  # the chunks' moments, combined as the consumer kernels do (Chan et al.)
        count, chunk_mean, centred = tk.sample_moments(x, num_chunks=num_chunks).double().unbind(-1)
        assert count.shape == (B, num_chunks) and (count.sum(1) == d * P * N).all()
        mean = (count * chunk_mean).sum(1) / (d * P * N)
        variance = (centred.sum(1) + (count * (chunk_mean - mean[:, None]) ** 2).sum(1)) / (d * P * N)
        torch.testing.assert_close(mean, mean64, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close((variance + 1e-5).rsqrt(), rstd64, rtol=1e-6, atol=0)
    # Far from zero (mean 300, std 1.5) the chunk-and-block merging keeps the variance (E[x^2] - E[x]^2 in
    # float32 would be off by about 4e-3 relative here).
    shifted = x + 300.0
    count, chunk_mean, centred = tk.sample_moments(shifted, num_chunks=4).double().unbind(-1)
    mean = (count * chunk_mean).sum(1) / (d * P * N)
    variance = (centred.sum(1) + (count * (chunk_mean - mean[:, None]) ** 2).sum(1)) / (d * P * N)
    torch.testing.assert_close(variance, shifted.double().var((1, 2, 3), unbiased=False), rtol=1e-5, atol=0)
    moments = tk.sample_moments(x, num_chunks=4)
    gamma, beta = torch.rand(d, device=device) + 0.5, torch.randn(d, device=device)
    w_qkv = torch.randn(1 + 2 * d, d, device=device) / d**0.5
    b_qkv = torch.randn(1 + 2 * d, device=device)
    ctx = tk.score_context(x, moments, 1e-5, gamma, beta, w_qkv, b_qkv,
                           out=torch.full((B, P, d), float("nan"), device=device), block_n=16)  # fmt: skip
    xhat = (x64 - mean64[:, None, None, None]) * rstd64[:, None, None, None]
    xn = xhat * gamma.double()[:, None, None] + beta.double()[:, None, None]
    qkv = torch.einsum("oc,bcpn->bopn", w_qkv.double(), xn) + b_qkv.double()[:, None, None]
    scores = torch.softmax(qkv[:, :1], dim=-1)
    expected_ctx = (qkv[:, 1 : 1 + d] * scores).sum(-1).permute(0, 2, 1)  # (B, P, d): keys formed, the long way
    torch.testing.assert_close(ctx.double(), expected_ctx, rtol=1e-5, atol=1e-5)
    plain = tk.score_context(x, None, 0.0, None, None, w_qkv, b_qkv)  # no GroupNorm: attention on x itself
    qkv = torch.einsum("oc,bcpn->bopn", w_qkv.double(), x64) + b_qkv.double()[:, None, None]
    expected_plain = (qkv[:, 1 : 1 + d] * torch.softmax(qkv[:, :1], dim=-1)).sum(-1).permute(0, 2, 1)
    torch.testing.assert_close(plain.double(), expected_plain, rtol=1e-5, atol=1e-5)
    w1, b1 = torch.randn(F, d, device=device) / d**0.5, torch.randn(F, device=device)
    w2, b2 = torch.randn(d, F, device=device) / F**0.5, torch.randn(d, device=device)
    context = torch.randn(B, P, F, device=device)
    out = tk.norm_mlp(x, moments, 1e-5, gamma, beta, w1, b1, context, w2, b2, "relu",
                      out=torch.full_like(x, float("nan")), block_l=32, block_k=16, block_f=16)  # fmt: skip
    hidden = torch.relu(torch.einsum("fc,bcpn->bfpn", w1.double(), xn) + b1.double()[:, None, None])
    hidden = hidden * context.double().permute(0, 2, 1)[..., None]
    expected = torch.einsum("cf,bfpn->bcpn", w2.double(), hidden) + b2.double()[:, None, None] + x64
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_bad_input(triton_device):
    device = triton_device
    x = make_input(2, 16, 4, 6, device)
    p = list(make_parameters(16, 32, device))

    def call(x=x, params=None, **kwargs):
        return mk.transformer_layer(x, *(params or p), **{"backend": "triton", **kwargs})

    def replaced(i, value):
        return p[:i] + [value] + p[i + 1 :]

    with pytest.raises(ValueError, match=r"\(B, d, P, N\)"):
        call(x[0])
    with pytest.raises(TypeError, match="floating point"):
        call(x.to(torch.int32))
    with pytest.raises(ValueError, match=r"w_qkv must have shape \(33, 16\)"):
        call(params=replaced(2, torch.randn(32, 16, device=device)))
    with pytest.raises(ValueError, match=r"norm2_bias must have shape \(16,\)"):
        call(params=replaced(7, torch.randn(15, device=device)))
    with pytest.raises(ValueError, match=r"w_ffn2 must have shape \(16, 32\)"):
        call(params=replaced(10, torch.randn(16, 31, device=device)))
    with pytest.raises(ValueError, match=r"w_ffn1 must have shape \(F, 16\)"):
        call(params=replaced(8, torch.randn(32, 16, 1, 1, device=device)))
    with pytest.raises(ValueError, match="is on meta"):
        call(params=replaced(4, p[4].to("meta")))
    with pytest.raises(ValueError, match="eps must be positive"):
        call(eps=0.0)
    with pytest.raises(TypeError, match="float32, float16 and bfloat16"):
        call(x.double())
    with pytest.raises(mk.BackendUnavailableError, match="no transformer_layer kernel"):
        call(backend="cuda")
    with pytest.raises(mk.BackendUnavailableError, match="no transformer_layer kernel"):
        torch.ops.mobilevitv2.transformer_layer(x, *p, 1e-5, "cuda")
    from mobilevitv2_kernels.triton_kernels import transformer_layer as tk

    moments = tk.sample_moments(x)
    with pytest.raises(ValueError, match="power of two >= 16"):
        tk.norm_mlp(x, moments, 1e-5, p[0], p[1], p[8], p[9], None, p[10], p[11], "silu", block_f=24)
    with pytest.raises(ValueError, match="out must be"):
        tk.norm_mlp(x, moments, 1e-5, p[0], p[1], p[8], p[9], None, p[10], p[11], "silu", out=torch.empty(1, device=device))
    with pytest.raises(ValueError, match=r"moments must be float32 \(B=2, chunks, 3\)"):
        tk.norm_mlp(x, moments[:1], 1e-5, p[0], p[1], p[8], p[9], None, p[10], p[11], "silu")
    # an empty batch: a correctly shaped empty result, no launch
    assert call(x[:0]).shape == (0, 16, 4, 6)


@pytest.mark.op("linear_self_attention")
def test_attention_bad_input(triton_device):
    x = make_input(2, 16, 4, 6, triton_device)
    w_qkv, b_qkv, w_out, b_out = attention_parameters(16, triton_device)
    with torch.no_grad():
        assert mk.linear_self_attention(x.clone().requires_grad_(True), w_qkv, b_qkv, w_out, b_out).shape == x.shape
    with pytest.raises(ValueError, match=r"\(B, d, P, N\)"):
        mk.linear_self_attention(x[0], w_qkv, b_qkv, w_out, b_out)
    with pytest.raises(ValueError, match=r"w_qkv must have shape \(33, 16\)"):
        mk.linear_self_attention(x, w_qkv[1:], b_qkv, w_out, b_out)
    with pytest.raises(ValueError, match=r"b_out must have shape \(16,\)"):
        mk.linear_self_attention(x, w_qkv, b_qkv, w_out, b_out[1:])
    with pytest.raises(TypeError, match="floating point"):
        mk.linear_self_attention(x.to(torch.int32), w_qkv, b_qkv, w_out, b_out)
    with pytest.raises(mk.BackendUnavailableError, match="no linear_self_attention kernel"):
        mk.linear_self_attention(x, w_qkv, b_qkv, w_out, b_out, backend="cuda")
    assert mk.linear_self_attention(x[:0], w_qkv, b_qkv, w_out, b_out, backend="triton").shape == (0, 16, 4, 6)


def test_backend_capabilities():
    for op in (OP, "linear_self_attention"):
        assert "cuda" not in mk.available_backends("cuda", op=op)
        assert backends.auto_backend("cpu", torch.float16, op) == "reference"


# ----------------------------------------------------------------------------------------------------------
# What the interpreter cannot show: the kernels compile for sm_90, within the register file
# ----------------------------------------------------------------------------------------------------------

_COMPILE_FOR_HOPPER = r"""
import torch
from sm90_compile_script import compile_for_sm90
from mobilevitv2_kernels.triton_kernels import transformer_layer as tk

def meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="meta")

def compile_layer(dtype, B, d, P, N, F):
    x, out = meta(B, d, P, N, dtype=dtype), meta(B, d, P, N, dtype=dtype)
    moments, vec_d, vec_f = meta(B, 8, 3), meta(d), meta(F)
    for activation, context in (("relu", meta(B, P, F)), ("silu", None)):
        cfg = tk.mlp_launch_config(dtype, d, F)
        args, options, _ = tk.mlp_kernel_arguments(x, moments, 1e-5, vec_d, vec_d, meta(F, d, dtype=dtype), vec_f,
                                                   context, meta(d, F, dtype=dtype), vec_d, out, activation, cfg)
        print("compiled norm_mlp", activation, dtype, (B, d, P, N, F), cfg, compile_for_sm90(tk._norm_mlp_kernel, args, options))
    w_qkv, b_qkv = meta(1 + 2 * d, d, dtype=dtype), meta(1 + 2 * d, dtype=dtype)
    args, options = tk.score_context_kernel_arguments(x, moments, 1e-5, vec_d, vec_d, w_qkv, b_qkv, meta(B, P, d))
    print("compiled score_context", dtype, (B, d, P, N), compile_for_sm90(tk._score_context_kernel, args, options))
    # linear_self_attention: the same kernels without normalisation (and without residual for the MLP)
    args, options, _ = tk.mlp_kernel_arguments(x, None, 0.0, None, None, meta(d, d, dtype=dtype), vec_d, meta(B, P, d),
                                               meta(d, d, dtype=dtype), vec_d, out, "relu", tk.mlp_launch_config(dtype, d, d),
                                               residual=False)
    print("compiled norm_mlp plain", dtype, (B, d, P, N), compile_for_sm90(tk._norm_mlp_kernel, args, options))
    args, options = tk.score_context_kernel_arguments(x, None, 0.0, None, None, w_qkv, b_qkv, meta(B, P, d))
    print("compiled score_context plain", dtype, (B, d, P, N), compile_for_sm90(tk._score_context_kernel, args, options))
    args, options = tk.moments_kernel_arguments(x, meta(B, 4, 3), 4, 1024)
    print("compiled moments", dtype, (B, d, P, N), compile_for_sm90(tk._sample_moments_kernel, args, options))

# Width 1.0 stages 3-5 at 256x256 input, batch 256 (d 128/192/256, F 256/384/512); width 2.0's stage 5
# (d 512, F 1024); float32 (IEEE dots) and bfloat16.
compile_layer(torch.float16, 256, 128, 4, 256, 256)
compile_layer(torch.float16, 256, 192, 4, 64, 384)
compile_layer(torch.float16, 256, 256, 4, 16, 512)
compile_layer(torch.float16, 256, 512, 4, 16, 1024)
compile_layer(torch.bfloat16, 8, 192, 4, 64, 384)
compile_layer(torch.float32, 8, 256, 4, 16, 512)
"""


def test_kernels_compile_for_sm90():
    """Compile every kernel of the op for sm_90 (H100/H200) with the launcher's own configurations, which
    needs no GPU, and (where Triton ships cuobjdump) check that ptxas spilled no registers."""
    stdout = run_compile_script(_COMPILE_FOR_HOPPER)
    assert stdout.count("compiled") == 6 * 6, stdout
