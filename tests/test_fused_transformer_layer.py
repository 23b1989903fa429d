"""The fused transformer-layer op (``mobilevitv2::transformer_layer``) and ``transformer_implementation``.

Oracles: the reference (GroupNorm, qkv conv, separable attention, convs in PyTorch), itself checked against
``MobileViTV2TransformerLayer``'s modules in eval mode; float64 runs of the reference for the low-precision
bounds (at most 2x PyTorch's own float16/bfloat16 error, plus one unit in the last place of the output's
scale: the interpreter's float32 -> bfloat16 cast truncates where the GPU rounds to nearest); and the eager
model for the model-level tests. On the CPU the Triton kernels run under the interpreter
(tests/conftest.py); on a GPU the ``cuda`` cases run the compiled kernels and the CPU cases skip. Kernel
outputs are NaN-filled before the launch where the launcher takes ``out=``. Shapes are tiny: the
interpreter runs on 2 CPU cores in CI.
"""

from __future__ import annotations

import pytest
import torch

import mobilevitv2_kernels as mk
from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation
from mobilevitv2.blocks import MobileViTV2TransformerLayer
from mobilevitv2_kernels import backends, reference
from model_utils import (
    assert_close_fp32,
    assert_nontrivial,
    compile_recording_ops,
    fused_model_pair,
    max_abs_diff,
    randomize_,
    record_op_calls,
)
from kernel_utils import DTYPES, TOLERANCES, error_bound, triton_device
from mobilevitv2_kernels.weights import AttentionWeights, TransformerLayerWeights
from mobilevitv2_kernels.numerics import max_abs_error
from sm90_compile import run_compile_script

OP = "transformer_layer"
needs_cpu_triton = pytest.mark.skipif(
    "triton" not in mk.available_backends("cpu", op=OP), reason="triton (interpreter) not available"
)

pytestmark = pytest.mark.usefixtures("nan_allocations")  # every allocation starts as NaN


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    return triton_device(request, OP)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_parameters(d, f, device="cpu"):
    """Float32 layer parameters that keep activations of order one (so errors are meaningful)."""

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, device=device) * scale

    return (
        1 + 0.3 * randn(d), 0.2 * randn(d),  # norm1
        randn(1 + 2 * d, d, scale=d**-0.5), 0.2 * randn(1 + 2 * d),  # qkv
        randn(d, d, scale=d**-0.5), 0.2 * randn(d),  # out
        1 + 0.3 * randn(d), 0.2 * randn(d),  # norm2
        randn(f, d, scale=d**-0.5), 0.2 * randn(f),  # ffn1
        randn(d, f, scale=f**-0.5), 0.2 * randn(d),  # ffn2
    )  # fmt: skip


def make_input(B, d, P, N, device="cpu"):
    return torch.randn(B, d, P, N, device=device) * 1.5 + 0.7  # a non-zero mean: the statistics matter


def assert_close(actual, x, params, eps=1e-5):
    """``actual`` vs the float64 reference on the same (rounded) inputs, bounded per TOLERANCES."""
    dtype = actual.dtype
    expected = reference.transformer_layer_forward(x.double(), TransformerLayerWeights(*(p.double() for p in params)), eps)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), "non-finite values in the kernel's result"
    assert expected.abs().max() > 0.5, "vacuous comparison: the oracle is nearly zero"
    torch_lowp = reference.transformer_layer_forward(x, TransformerLayerWeights(*params), eps) if dtype != torch.float32 else None
    bound = error_bound(expected, dtype, torch_lowp)
    err = (actual.double() - expected).abs().max().item()
    assert err <= bound, f"max abs error {err:.3g} > bound {bound:.3g} ({dtype})"


# ----------------------------------------------------------------------------------------------------------
# The reference against the module
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
        got = reference.transformer_layer_forward(x, TransformerLayerWeights(*module_parameters(layer)), layer.layernorm_before.eps)
    assert_nontrivial(expected, "eager transformer layer")
    assert torch.equal(got, expected)  # the same operations in the same order


# ----------------------------------------------------------------------------------------------------------
# The Triton kernels against the reference
# ----------------------------------------------------------------------------------------------------------

# (B, d, P, N, F): the model's P = 4 and d, F multiples of 16; d and F that are not (masks); P = 1; N = 1;
# N longer than one score step; a single sample.
KERNEL_CASES = [
    (2, 32, 4, 16, 64),
    (1, 24, 4, 7, 48),
    (2, 16, 1, 33, 40),
    (3, 48, 4, 1, 96),
    (1, 64, 4, 20, 128),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, d, P, N, F", KERNEL_CASES)
def test_kernel_matches_reference(device, dtype, B, d, P, N, F):
    x = make_input(B, d, P, N, device).to(dtype)
    params = tuple(p.to(dtype) for p in make_parameters(d, F, device))
    assert_close(mk.transformer_layer(x, *params, backend="triton"), x, params)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tiny_variance_makes_eps_count(device, dtype):
    """An input of variance ~1e-6, below GroupNorm's eps (1e-5), far from zero: eps dominates rstd, so eps
    applied anywhere but inside the square root is off by a factor ~3, and E[x^2] - E[x]^2 loses every
    digit; both fail here in every dtype. The input is ill-conditioned for any implementation (PyTorch's
    own float32 error is ~3e-4 here), so every dtype is held to twice PyTorch's own error in it."""
    x = (3.0 + 1e-3 * torch.randn(2, 32, 4, 16, device=device)).to(dtype)
    params = tuple(p.to(dtype) for p in make_parameters(32, 64, device))
    got = mk.transformer_layer(x, *params, backend="triton")
    expected = reference.transformer_layer_forward(x.double(), TransformerLayerWeights(*(p.double() for p in params)), 1e-5)
    torch_own = reference.transformer_layer_forward(x, TransformerLayerWeights(*params), 1e-5)
    tol = TOLERANCES[dtype]
    bound = tol["atol"] + tol["rtol"] * expected.abs().max().item() + 2 * max_abs_error(torch_own, expected)
    assert max_abs_error(got, expected) <= bound


def test_float32_parameters_with_low_precision_input(device):
    """Parameters may stay float32 for a float16 x (as the reference, the kernel casts its 1x1 weights)."""
    x = make_input(2, 32, 4, 8, device).half()
    params = make_parameters(32, 64, device)
    assert_close(mk.transformer_layer(x, *params, backend="triton"), x, tuple(p.half() for p in params))


@pytest.mark.parametrize("layout", ["transposed", "channel_slice"])
def test_strided_inputs(device, layout):
    d, P, N = 16, 4, 12
    if layout == "transposed":  # N and P swapped in memory
        x = make_input(2, d, N, P, device).transpose(2, 3)
    else:  # every other channel of a wider tensor
        x = make_input(2, 2 * d, P, N, device)[:, ::2]
    assert not x.is_contiguous()
    params = make_parameters(d, 32, device)
    y = mk.transformer_layer(x, *params, backend="triton")
    assert y.is_contiguous()
    assert_close(y, x, params)


def test_pieces_write_every_element(device):
    """The statistics (several chunks per sample), the score-weighted means and the fused MLP, each into
    NaN-filled outputs, against float64 PyTorch."""
    from mobilevitv2_kernels.triton_kernels import transformer_layer as tk

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


def test_public_wrapper_and_opcheck(device):
    """Schema, fake kernel, autograd registration and AOT dispatch (reference backend: under the interpreter
    the fake-tensor step would run the Triton kernel, see shared/facts.md), and the wrapper's defaults."""
    op = torch.ops.mobilevitv2.transformer_layer.default
    x = make_input(2, 16, 4, 6, device)
    params = make_parameters(16, 32, device)
    result = torch.library.opcheck(op, (x, *params, 1e-5, "reference"))
    assert all(v == "SUCCESS" for v in result.values()), result
    if device == "cuda":  # compiled kernels: the fake-tensor step cannot run them by accident
        result = torch.library.opcheck(op, (x, *params, 1e-5, "triton"))
        assert all(v == "SUCCESS" for v in result.values()), result
    y = mk.transformer_layer(x.transpose(2, 3).contiguous().transpose(2, 3), *params, backend="triton")
    assert y.shape == x.shape and y.is_contiguous()
    assert_close(y, x, params)


def test_refuses_autograd(device):
    x = make_input(1, 16, 4, 4, device)
    params = make_parameters(16, 32, device)
    trainable = tuple(p.clone().requires_grad_(True) for p in params)
    for args in ((x.clone().requires_grad_(True), *params), (x, *trainable)):
        with pytest.raises(RuntimeError, match="inference-only"):
            mk.transformer_layer(*args, backend="triton")
        with pytest.raises(RuntimeError, match="inference-only"):  # the op itself, not only the wrapper
            torch.ops.mobilevitv2.transformer_layer(*args, 1e-5, "triton")
    with torch.no_grad():
        assert mk.transformer_layer(x, *trainable, backend="triton").shape == x.shape
    with torch.inference_mode():
        assert mk.transformer_layer(x, *trainable, backend="triton").shape == x.shape


def test_bad_input(device):
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


def test_backend_capabilities():
    assert "cuda" not in mk.available_backends("cuda", op=OP)
    assert backends.auto_backend("cpu", torch.float16, OP) == "reference"


# ----------------------------------------------------------------------------------------------------------
# The attention module alone: mobilevitv2::linear_self_attention (the same kernels, no GroupNorm, no residual)
# ----------------------------------------------------------------------------------------------------------


def attention_parameters(d, device="cpu"):
    return make_parameters(d, 2 * d, device)[2:6]  # w_qkv, b_qkv, w_out, b_out


def assert_attention_close(actual, x, params):
    dtype = actual.dtype
    expected = reference.linear_self_attention_forward(x.double(), AttentionWeights(*(p.double() for p in params)))
    assert actual.shape == expected.shape and actual.is_contiguous()
    assert torch.isfinite(actual).all() and expected.abs().max() > 0.3
    own = reference.linear_self_attention_forward(x, AttentionWeights(*params)) if dtype != torch.float32 else None
    bound = error_bound(expected, dtype, own)
    err = (actual.double() - expected).abs().max().item()
    assert err <= bound, f"max abs error {err:.3g} > bound {bound:.3g} ({dtype})"


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


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, d, P, N", [(2, 32, 4, 16), (1, 24, 4, 7), (2, 16, 1, 33), (3, 48, 4, 1)])
def test_attention_kernel_matches_reference(device, dtype, B, d, P, N):
    x = make_input(B, d, P, N, device).to(dtype)
    params = tuple(p.to(dtype) for p in attention_parameters(d, device))
    assert_attention_close(mk.linear_self_attention(x, *params, backend="triton"), x, params)


def test_attention_strided_input_and_opcheck(device):
    x = make_input(2, 16, 12, 4, device).transpose(2, 3)  # N and P swapped in memory
    params = attention_parameters(16, device)
    assert_attention_close(mk.linear_self_attention(x, *params, backend="triton"), x, params)
    op = torch.ops.mobilevitv2.linear_self_attention.default
    result = torch.library.opcheck(op, (x.contiguous(), *params, "reference"))
    assert all(v == "SUCCESS" for v in result.values()), result
    if device == "cuda":
        result = torch.library.opcheck(op, (x.contiguous(), *params, "triton"))
        assert all(v == "SUCCESS" for v in result.values()), result


def test_attention_refuses_autograd_and_bad_input(device):
    x = make_input(2, 16, 4, 6, device)
    w_qkv, b_qkv, w_out, b_out = attention_parameters(16, device)
    with pytest.raises(RuntimeError, match="linear_self_attention is inference-only"):
        mk.linear_self_attention(x.clone().requires_grad_(True), w_qkv, b_qkv, w_out, b_out, backend="triton")
    with torch.no_grad():
        assert mk.linear_self_attention(x.requires_grad_(True), w_qkv, b_qkv, w_out, b_out).shape == x.shape
    x = x.detach()
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


# ----------------------------------------------------------------------------------------------------------
# The model: transformer_implementation
# ----------------------------------------------------------------------------------------------------------


def model_pair(cls, seed=0, **config_kwargs):
    return fused_model_pair(cls, "transformer_implementation", seed, **config_kwargs)


@pytest.fixture
def op_calls(monkeypatch):
    """Records the backend of every call of the fused op from the model."""
    return record_op_calls(monkeypatch, "transformer_layer")


@needs_cpu_triton
def test_classification_fused_layers_match_eager(op_calls):
    eager, fused = model_pair(MobileViTV2ForImageClassification, num_labels=5)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = eager(x).logits
        got = fused(x).logits
        everything = fused.set_attn_implementation("triton").set_conv_implementation("triton")(x).logits
    assert_nontrivial(expected, "eager logits")
    assert op_calls == ["triton"] * 9 * 2  # 2 + 4 + 3 layers, twice
    assert_close_fp32(got, expected, "fused transformer layers vs eager")
    assert_close_fp32(everything, expected, "every fusion vs eager")


@needs_cpu_triton
@pytest.mark.parametrize("output_stride", [16, 8])
def test_segmentation_matches_eager(op_calls, output_stride):
    eager, fused = model_pair(MobileViTV2ForSemanticSegmentation, seed=3, num_labels=4, output_stride=output_stride)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected = eager(x).logits
        got = fused(x).logits
    assert_nontrivial(expected, "eager segmentation logits")
    assert len(op_calls) == 9
    assert_close_fp32(got, expected, f"segmentation OS {output_stride}")


@needs_cpu_triton
def test_training_and_gradients_fall_back_to_eager(op_calls):
    """Training mode (dropout active) and eval mode with gradients take the modules; the op is never called."""
    eager, fused = model_pair(MobileViTV2ForImageClassification, seed=1, num_labels=4)
    x = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([1, 3])
    for train in (True, False):
        eager.train(train), fused.train(train)
        eager.zero_grad(), fused.zero_grad()
        torch.manual_seed(5)
        loss_e = eager(x, labels=labels).loss
        torch.manual_seed(5)
        loss_f = fused(x, labels=labels).loss
        loss_e.backward(), loss_f.backward()
        assert abs(loss_e.item() - loss_f.item()) <= 1e-6
        grads = dict(fused.named_parameters())
        for name, p in eager.named_parameters():
            assert_close_fp32(grads[name].grad, p.grad, f"grad of {name} (train={train})")
    assert op_calls == []


@needs_cpu_triton
def test_compile_fullgraph_with_fused_layers():
    """torch.compile(fullgraph=True) traces the model with the fused op (one opaque node per layer, through
    its fake kernel) without graph breaks; aot_eager avoids Inductor's slow CPU code generation."""
    eager, fused = model_pair(MobileViTV2ForImageClassification, seed=2, num_labels=3)
    compiled, targets = compile_recording_ops(fused)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = compiled(x).logits
        expected = eager(x).logits
    assert sum(t == "mobilevitv2.transformer_layer" for t in targets) == 9
    assert_close_fp32(got, expected, "compiled logits")


def test_auto_is_eager_on_cpu(op_calls):
    model = MobileViTV2ForImageClassification(MobileViTV2Config.from_width(0.5, num_labels=2)).eval()
    model.set_transformer_implementation("auto")
    assert {m.transformer_backend for m in model.modules() if isinstance(m, MobileViTV2TransformerLayer)} == {"auto"}
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 2)
    assert op_calls == []


def test_transformer_implementation_option(tmp_path):
    config = MobileViTV2Config.from_width(0.5, num_labels=2)
    assert not hasattr(config, "_implementation_choices") or config._implementation_choices == {}
    with pytest.raises(ValueError, match="transformer_implementation must be one of"):
        MobileViTV2Config(transformer_implementation="fast")
    model = MobileViTV2ForImageClassification(config)
    assert model.transformer_implementation == "reference"
    assert {m.transformer_backend for m in model.modules() if isinstance(m, MobileViTV2TransformerLayer)} == {None}
    with pytest.raises(ValueError, match="transformer_implementation must be one of"):
        model.set_transformer_implementation("cuda")
    model.set_transformer_implementation("auto")
    assert model.transformer_implementation == "auto"
    assert "transformer_implementation" not in model.config.to_dict()
    model.save_pretrained(tmp_path)
    assert "transformer_implementation" not in (tmp_path / "config.json").read_text()
    loaded = MobileViTV2ForImageClassification.from_pretrained(tmp_path, transformer_implementation="auto")
    assert loaded.transformer_implementation == "auto"
    assert {m.transformer_backend for m in loaded.modules() if isinstance(m, MobileViTV2TransformerLayer)} == {"auto"}
    assert MobileViTV2ForImageClassification.from_pretrained(tmp_path).transformer_implementation == "reference"


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


# ----------------------------------------------------------------------------------------------------------
# On a GPU, for real
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_model_fused_layers(monkeypatch):
    """fp32 exact (TF32 off, as the fp32 kernels use IEEE dots), fp16/bf16 within 2x the eager model's own
    error, with every fusion on."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if "triton" not in mk.available_backends("cuda", op=OP):
        pytest.skip("triton cannot run on this GPU machine")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    eager, fused = model_pair(MobileViTV2ForImageClassification, num_labels=10)
    eager, fused = eager.cuda(), fused.cuda().set_attn_implementation("auto").set_conv_implementation("auto")
    fused.set_transformer_implementation("auto")
    x = torch.randn(4, 3, 256, 256, device="cuda")
    with torch.no_grad():
        expected = eager(x).logits
        assert_close_fp32(fused(x).logits, expected, "fp32 logits")
        for dtype in (torch.float16, torch.bfloat16):
            eager_err = max_abs_diff(eager.to(dtype)(x.to(dtype)).logits, expected)
            fused_err = max_abs_diff(fused.to(dtype)(x.to(dtype)).logits, expected)
            assert fused_err <= 2 * eager_err + 1e-3, f"{dtype}: {fused_err} vs eager's own {eager_err}"
            eager.float(), fused.float()
