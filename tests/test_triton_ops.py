"""The Triton backend against the reference (mobilevitv2_kernels.reference) and float64 autograd.

On the CPU the kernels run under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1 when no
GPU is present); on a GPU machine the same tests run the compiled kernels on CUDA tensors and the CPU cases
skip. Kernel launchers are called with NaN-filled ``out`` tensors so that an element a kernel fails to write
cannot pass. Shapes are small: the interpreter runs on 2 CPU cores in CI.
"""

from __future__ import annotations


import pytest
import torch

import mobilevitv2_kernels as mk
from mobilevitv2_kernels import backends, reference
from sm90_compile import run_compile_script

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Every comparison with the float64 oracle follows the package's numerics rules (mobilevitv2_kernels/numerics.py).
from mobilevitv2_kernels.numerics import TOLERANCES  # noqa: E402

pytestmark = pytest.mark.usefixtures("nan_allocations")  # every allocation starts as NaN


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    """Every device the Triton backend can run on here; the others skip with the reason."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    reason = backends.unavailable_reason("triton", request.param)
    if reason is not None:
        pytest.skip(reason)
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def nan_like(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def assert_close(actual, expected64, torch_lowp=None, dtype=None):
    """``actual`` vs the float64 oracle, with the tolerance of TOLERANCES[dtype] (see above)."""
    dtype = dtype or actual.dtype
    tol = TOLERANCES[dtype]
    assert actual.shape == expected64.shape, (actual.shape, expected64.shape)
    assert torch.isfinite(actual).all(), "non-finite values in the kernel's result"
    err = (actual.double() - expected64).abs().max().item() if actual.numel() else 0.0
    bound = tol["atol"] + tol["rtol"] * expected64.abs().max().item()
    if dtype != torch.float32:
        assert torch_lowp is not None
        torch_err = (torch_lowp.double() - expected64).abs().max().item()
        bound += tol["factor"] * torch_err
    assert err <= bound, f"max abs error {err:.3g} > bound {bound:.3g} ({dtype})"


def reference_grad(qkv, grad_out):
    """d/d qkv of <reference forward(qkv), grad_out> by autograd, computed in qkv's dtype."""
    qkv = qkv.detach().requires_grad_(True)
    out = reference.separable_attention_forward(qkv)
    (grad,) = torch.autograd.grad(out, qkv, grad_out.to(qkv.dtype))
    return out.detach(), grad


# Query logits up to ~100 in ordinary cases: beyond float32's exp range (88), so a softmax that does not
# subtract the maximum overflows in every test that uses make_qkv, not only in the large-logits one.
QUERY_SCALE = 25.0


def make_qkv(B, d, P, N, dtype, device, layout="contiguous"):
    """qkv (B, 1+2d, P, N) in a given memory layout, the values exactly representable in ``dtype``, the
    query channel scaled by QUERY_SCALE."""
    C = 1 + 2 * d
    if layout == "contiguous":
        qkv = torch.randn(B, C, P, N, device=device).to(dtype)
    elif layout == "channel_slice":  # a slice of a bigger tensor: strides of a (B, C + 3, P, N) tensor
        qkv = torch.randn(B, C + 3, P, N, device=device).to(dtype)[:, 2 : 2 + C]
    elif layout == "transposed":  # N is not the innermost dimension (stride_n = C)
        qkv = torch.randn(B, N, P, C, device=device).to(dtype).permute(0, 3, 2, 1)
    else:
        raise ValueError(layout)
    qkv[:, :1] *= QUERY_SCALE
    return qkv


# (B, d, P, N, tile overrides): odd N, N=1, d not a power of two, P = 1 and 4, B = 1, N over several blocks
# (online softmax, with and without a tail block), several d-blocks (split backward with partial sums).
ATTENTION_CASES = [
    pytest.param(2, 4, 4, 16, {}, id="pow2"),
    pytest.param(2, 5, 4, 7, {}, id="oddN-d5"),
    pytest.param(1, 3, 1, 1, {}, id="B1-P1-N1-d3"),
    pytest.param(2, 3, 1, 33, {"block_n": 8}, id="N33-in-blocks-of-8"),
    pytest.param(1, 9, 4, 12, {"block_d": 4}, id="d9-in-blocks-of-4"),
    pytest.param(1, 5, 4, 20, {"block_d": 2, "block_n": 8}, id="d5-N20-both-blocked"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, d, P, N, tiles", ATTENTION_CASES)
def test_separable_attention_forward(device, dtype, B, d, P, N, tiles):
    from mobilevitv2_kernels import triton_kernels

    qkv = make_qkv(B, d, P, N, dtype, device)
    out = nan_like((B, d, P, N), dtype, device)
    result = triton_kernels.separable_attention_forward(qkv, out=out, **tiles)
    assert result.data_ptr() == out.data_ptr() and result.dtype == dtype
    expected = reference.separable_attention_forward(qkv.double())
    assert_close(result, expected, reference.separable_attention_forward(qkv), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, d, P, N, tiles", ATTENTION_CASES)
def test_separable_attention_backward(device, dtype, B, d, P, N, tiles):
    from mobilevitv2_kernels import triton_kernels

    qkv = make_qkv(B, d, P, N, dtype, device)
    grad_out = torch.randn(B, d, P, N, device=device).to(dtype)
    out = nan_like(qkv.shape, dtype, device)
    result = triton_kernels.separable_attention_backward(grad_out, qkv, out=out, **tiles)
    assert result.data_ptr() == out.data_ptr() and result.dtype == dtype
    _, expected = reference_grad(qkv.double(), grad_out.double())
    # The hand-written reference backward is itself checked against float64 autograd.
    torch.testing.assert_close(reference.separable_attention_backward(grad_out.double(), qkv.double()), expected)
    _, torch_lowp = reference_grad(qkv, grad_out)
    assert_close(result, expected, torch_lowp, dtype)


@pytest.mark.parametrize("split", [1, 2, 3, 5])
def test_separable_attention_backward_split(device, split):
    """Every way of sharing the d-blocks between programs (split=1 writes dq in the same kernel; larger
    splits write fp32 partial sums that a second kernel reduces) gives the same gradient."""
    from mobilevitv2_kernels import triton_kernels

    qkv = make_qkv(2, 9, 4, 6, torch.float32, device)
    grad_out = torch.randn(2, 9, 4, 6, device=device)
    out = nan_like(qkv.shape, torch.float32, device)
    triton_kernels.separable_attention_backward(grad_out, qkv, out=out, block_d=2, split=split)
    _, expected = reference_grad(qkv.double(), grad_out.double())
    assert_close(out, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["channel_slice", "transposed"])
@pytest.mark.parametrize("tiles", [{}, {"block_n": 4}], ids=["one-block", "N-in-blocks"])
def test_separable_attention_strided_inputs(device, dtype, layout, tiles):
    """Non-contiguous qkv and grad_out are read through their strides, not copied."""
    from mobilevitv2_kernels import triton_kernels

    qkv = make_qkv(2, 3, 4, 9, dtype, device, layout)
    grad_out = torch.randn(2, 9, 4, 3, device=device).to(dtype).transpose(1, 3)  # (B, d, P, N), strided
    assert not qkv.is_contiguous() and not grad_out.is_contiguous()
    out = triton_kernels.separable_attention_forward(qkv, out=nan_like((2, 3, 4, 9), dtype, device), **tiles)
    grad = triton_kernels.separable_attention_backward(grad_out, qkv, out=nan_like(qkv.shape, dtype, device), **tiles)
    assert out.is_contiguous() and grad.is_contiguous()
    expected_out, expected_grad = reference_grad(qkv.double(), grad_out.double())
    lowp_out, lowp_grad = reference_grad(qkv, grad_out)
    assert_close(out, expected_out, lowp_out, dtype)
    assert_close(grad, expected_grad, lowp_grad, dtype)


@pytest.mark.parametrize(
    "dtype, big", [(torch.float32, 1e4), (torch.float16, 6e4), (torch.bfloat16, 1e4)], ids=["fp32", "fp16", "bf16"]
)
@pytest.mark.parametrize("tiles", [{}, {"block_n": 4}], ids=["one-block", "N-in-blocks"])
def test_separable_attention_large_logits(device, dtype, big, tiles):
    """Query logits of +-1e4 (fp32) and +-6e4 (fp16) give finite, correct results: the softmax subtracts its
    max (a naive exp would overflow). Two tied maxima in a late block exercise the online rescaling."""
    from mobilevitv2_kernels import triton_kernels

    B, d, P, N = 2, 3, 4, 10
    qkv = make_qkv(B, d, P, N, dtype, device)
    logits = torch.full((B, P, N), -big, device=device)
    logits[..., 1] = big / 2
    logits[..., 7] = big
    logits[..., 9] = big
    logits[1, :, 4] = -big / 3
    qkv[:, 0] = logits.to(dtype)
    grad_out = torch.randn(B, d, P, N, device=device).to(dtype)

    out = triton_kernels.separable_attention_forward(qkv, out=nan_like((B, d, P, N), dtype, device), **tiles)
    grad = triton_kernels.separable_attention_backward(grad_out, qkv, out=nan_like(qkv.shape, dtype, device), **tiles)
    expected_out, expected_grad = reference_grad(qkv.double(), grad_out.double())
    # Exactly half the weight on each tied maximum: the context is the mean of two keys.
    context = (qkv[:, 1 : 1 + d, :, 7].double() + qkv[:, 1 : 1 + d, :, 9].double()) / 2
    torch.testing.assert_close(expected_out, torch.relu(qkv[:, 1 + d :].double()) * context[..., None])
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    # PyTorch's own low-precision result is finite here too, so the usual relative-to-PyTorch bound applies;
    # an fp16 softmax computed without the max subtraction would be inf/NaN and fail above.
    lowp_out, lowp_grad = reference_grad(qkv, grad_out)
    assert_close(out, expected_out, lowp_out, dtype)
    assert_close(grad, expected_grad, lowp_grad, dtype)


# ----------------------------------------------------------------------------------------------------------
# unfold / fold
# ----------------------------------------------------------------------------------------------------------

# (B, C, H, W, patch): exact multiples, remainders in H and/or W, non-square patches, 1x1 patches.
PATCH_CASES = [
    pytest.param(2, 3, 8, 8, (2, 2), id="8x8-p2"),
    pytest.param(1, 2, 7, 5, (2, 2), id="7x5-p2-remainder"),
    pytest.param(2, 3, 9, 7, (3, 2), id="9x7-p3x2"),
    pytest.param(1, 1, 3, 1, (1, 1), id="3x1-p1"),
]


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "contiguous":
        return x
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "slice":  # every other column of a wider tensor
        wide = torch.repeat_interleave(x, 2, dim=-1)
        out = wide[..., ::2]
        assert torch.equal(out, x)
        return out
    raise ValueError(layout)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "slice"])
@pytest.mark.parametrize("B, C, H, W, patch", PATCH_CASES)
def test_unfold_fold_forward(device, dtype, layout, B, C, H, W, patch):
    from mobilevitv2_kernels import triton_kernels

    ph, pw = patch
    x = _layout(torch.randn(B, C, H, W, device=device).to(dtype), layout)
    P, N = ph * pw, (H // ph) * (W // pw)
    patches = triton_kernels.unfold_forward(x, ph, pw, out=nan_like((B, C, P, N), dtype, device))
    torch.testing.assert_close(patches, reference.unfold_forward(x, ph, pw), rtol=0, atol=0)  # a pure copy
    folded_in = torch.randn(B, C, N, P, device=device).to(dtype).transpose(2, 3)  # (B, C, P, N), N not innermost
    folded = triton_kernels.fold_forward(folded_in, H, W, ph, pw, out=nan_like((B, C, H, W), dtype, device))
    torch.testing.assert_close(folded, reference.fold_forward(folded_in, H, W, ph, pw), rtol=0, atol=0)
    # fold o unfold keeps the pixels inside the patch grid and zeroes the dropped remainder.
    roundtrip = triton_kernels.fold_forward(patches, H, W, ph, pw)
    kept = torch.zeros(H, W, dtype=torch.bool, device=device)
    kept[: (H // ph) * ph, : (W // pw) * pw] = True
    torch.testing.assert_close(roundtrip, torch.where(kept, x, torch.zeros((), dtype=dtype, device=device)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_unfold_fold_autograd(device, dtype):
    """Each op's gradient (the other op, through the triton backend) matches float64 autograd."""
    B, C, H, W, patch = 2, 3, 7, 6, (2, 2)
    x = torch.randn(B, C, H, W, device=device).to(dtype).requires_grad_(True)
    patches = mk.unfold(x, patch, backend="triton")
    cotangent = torch.randn_like(patches)
    (grad_x,) = torch.autograd.grad(patches, x, cotangent)
    x64 = x.detach().double().requires_grad_(True)
    (expected,) = torch.autograd.grad(reference.unfold_forward(x64, *patch), x64, cotangent.double())
    torch.testing.assert_close(grad_x.double(), expected, rtol=0, atol=0)
    assert grad_x[..., 6, :].eq(0).all()  # the dropped last row gets no gradient

    p = patches.detach().requires_grad_(True)
    folded = mk.fold(p, (H, W), patch, backend="triton")
    cotangent = torch.randn_like(folded)
    (grad_p,) = torch.autograd.grad(folded, p, cotangent)
    p64 = p.detach().double().requires_grad_(True)
    (expected,) = torch.autograd.grad(reference.fold_forward(p64, H, W, *patch), p64, cotangent.double())
    torch.testing.assert_close(grad_p.double(), expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------
# The registered ops with backend="triton": autograd, opcheck, torch.compile
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, d, P, N", [(2, 5, 4, 7), (1, 3, 1, 1)])
def test_separable_attention_op_autograd(device, dtype, B, d, P, N):
    qkv = make_qkv(B, d, P, N, dtype, device).requires_grad_(True)
    out = mk.separable_attention(qkv, backend="triton")
    cotangent = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, qkv, cotangent)
    expected_out, expected_grad = reference_grad(qkv.detach().double(), cotangent.double())
    lowp_out, lowp_grad = reference_grad(qkv.detach(), cotangent)
    assert out.is_contiguous() and grad.dtype == dtype
    assert_close(out.detach(), expected_out, lowp_out, dtype)
    assert_close(grad, expected_grad, lowp_grad, dtype)


@pytest.mark.parametrize("requires_grad", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_opcheck(device, dtype, requires_grad):
    """The four registered ops pass torch.library.opcheck (schema, fake kernel, autograd registration,
    AOT dispatch) with the triton backend, in every dtype (a fake kernel that returns the wrong dtype fails
    only there) and with inputs that do and do not require grad. Under the interpreter this works because
    the ops are custom_ops whose fake kernels never launch Triton (see facts.md on triton_op)."""
    qkv = make_qkv(2, 3, 4, 5, dtype, device).requires_grad_(requires_grad)
    grad_out = torch.randn(2, 3, 4, 5, device=device, dtype=dtype)
    x = torch.randn(2, 3, 5, 7, device=device, dtype=dtype, requires_grad=requires_grad)
    patches = torch.randn(2, 3, 4, 6, device=device, dtype=dtype, requires_grad=requires_grad)
    ops = torch.ops.mobilevitv2
    cases = [
        (ops.separable_attention.default, (qkv, "triton")),
        (ops.separable_attention_backward.default, (grad_out, qkv.detach(), "triton")),
        (ops.unfold.default, (x, 2, 2, "triton")),
        (ops.fold.default, (patches, 5, 7, 2, 2, "triton")),
    ]
    for op, args in cases:
        result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), (op, result)


def test_torch_compile_fullgraph(device):
    """unfold -> separable attention -> fold under torch.compile(fullgraph=True), forward and backward, equals
    float64 eager autograd of the reference. (On the CPU inductor compiles the small graph around the opaque
    custom ops in a few seconds.)"""
    patch = (2, 2)

    def block(x):
        qkv = mk.unfold(x, patch, backend="triton")
        return mk.fold(mk.separable_attention(qkv, backend="triton"), x.shape[-2:], patch, backend="triton")

    def block_reference(x):
        qkv = reference.unfold_forward(x, *patch)
        out = reference.separable_attention_forward(qkv)
        return reference.fold_forward(out, x.shape[-2], x.shape[-1], *patch)

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(2, 7, 5, 7, device=device, requires_grad=True)  # 7 = 1 + 2*3 channels, odd H and W
    y = compiled(x)
    cotangent = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, cotangent)
    x64 = x.detach().double().requires_grad_(True)
    y64 = block_reference(x64)
    (grad64,) = torch.autograd.grad(y64, x64, cotangent.double())
    assert_close(y.detach(), y64.detach())
    assert_close(grad, grad64)
    assert grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------
# Bad input and empty tensors through the public functions
# ----------------------------------------------------------------------------------------------------------


def test_separable_attention_bad_input(device):
    with pytest.raises(ValueError, match="3-D"):
        mk.separable_attention(torch.randn(2, 7, 4, device=device), backend="triton")
    with pytest.raises(ValueError, match="1\\+2d channels"):
        mk.separable_attention(torch.randn(2, 6, 4, 5, device=device), backend="triton")
    with pytest.raises(TypeError, match="floating-point"):
        mk.separable_attention(torch.ones(2, 7, 4, 5, dtype=torch.int32, device=device), backend="triton")
    with pytest.raises(TypeError, match="float32, float16 and bfloat16"):
        mk.separable_attention(torch.randn(2, 7, 4, 5, dtype=torch.float64, device=device), backend="triton")
    qkv = torch.randn(2, 7, 4, 5, device=device)
    with pytest.raises(ValueError, match="grad_out has shape"):
        torch.ops.mobilevitv2.separable_attention_backward(torch.randn(2, 3, 4, 6, device=device), qkv, "triton")
    with pytest.raises(mk.BackendUnavailableError, match="meta"):
        mk.separable_attention(torch.randn(2, 7, 4, 5, device="meta"), backend="triton")
    from mobilevitv2_kernels import triton_kernels

    with pytest.raises(ValueError, match="out must be"):
        triton_kernels.separable_attention_forward(qkv, out=torch.empty(2, 3, 4, 4, device=device))
    with pytest.raises(ValueError, match="power of two"):
        triton_kernels.separable_attention_forward(qkv, block_d=3)


def test_patching_bad_input(device):
    with pytest.raises(ValueError, match="4-D"):
        mk.unfold(torch.randn(3, 8, 8, device=device), backend="triton")
    with pytest.raises(TypeError, match="floating-point"):
        mk.unfold(torch.ones(1, 3, 8, 8, dtype=torch.int64, device=device), backend="triton")
    with pytest.raises(ValueError, match="positive"):
        mk.unfold(torch.randn(1, 3, 8, 8, device=device), (0, 2), backend="triton")
    with pytest.raises(ValueError, match="do not fit"):
        mk.fold(torch.randn(1, 3, 4, 15, device=device), (8, 8), backend="triton")
    with pytest.raises(ValueError, match="4-D"):
        mk.fold(torch.randn(3, 4, 16, device=device), (8, 8), backend="triton")


@pytest.mark.gpu
def test_mismatched_devices():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    qkv = torch.randn(2, 7, 4, 5, device="cuda")
    with pytest.raises((ValueError, RuntimeError), match="device|cpu"):
        torch.ops.mobilevitv2.separable_attention_backward(torch.randn(2, 3, 4, 5), qkv, "triton")


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(mk.BackendUnavailableError, match="TRITON_INTERPRET"):
        mk.separable_attention(torch.randn(1, 3, 1, 2), backend="triton")


@pytest.mark.parametrize("shape", [(0, 7, 4, 5), (2, 7, 4, 0), (2, 1, 4, 5), (2, 7, 0, 5)])
def test_separable_attention_empty(device, shape):
    """Empty batch, N=0, P=0 and d=0 give correctly shaped empty (or all-zero gradient) results."""
    B, C, P, N = shape
    qkv = torch.randn(shape, device=device, requires_grad=True)
    out = mk.separable_attention(qkv, backend="triton")
    assert out.shape == (B, (C - 1) // 2, P, N)
    out.sum().backward()
    assert qkv.grad.shape == qkv.shape and qkv.grad.eq(0).all()
    from mobilevitv2_kernels import triton_kernels

    assert triton_kernels.separable_attention_forward(qkv.detach()).shape == out.shape
    grad = triton_kernels.separable_attention_backward(torch.zeros_like(out), qkv.detach())
    assert grad.shape == qkv.shape and grad.eq(0).all()


def test_patching_empty(device):
    x = torch.randn(0, 3, 8, 8, device=device)
    assert mk.unfold(x, backend="triton").shape == (0, 3, 4, 16)
    small = torch.randn(1, 3, 1, 5, device=device, requires_grad=True)  # H < patch height: no patches
    patches = mk.unfold(small, backend="triton")
    assert patches.shape == (1, 3, 4, 0)
    folded = mk.fold(patches, (1, 5), backend="triton")
    assert folded.shape == (1, 3, 1, 5) and folded.eq(0).all()
    folded.sum().backward()
    assert small.grad.shape == small.shape and small.grad.eq(0).all()
    from mobilevitv2_kernels import triton_kernels

    # The launcher alone: no patches, so fold writes only zeros (over a NaN-filled out).
    out = triton_kernels.fold_forward(patches.detach(), 1, 5, 2, 2, out=nan_like((1, 3, 1, 5), torch.float32, device))
    assert out.eq(0).all()


# ----------------------------------------------------------------------------------------------------------
# What the interpreter cannot show: the kernels compile for a real GPU, and launch without hidden copies
# ----------------------------------------------------------------------------------------------------------


_COMPILE_FOR_HOPPER = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mobilevitv2_kernels.triton_kernels import patching, separable_attention as sa

def compile_for_hopper(kernel, types, constexprs):
    signature, values = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name], values[(i,)] = "constexpr", constexprs[name]
        else:
            signature[name] = types.get(name, "i32")
    try:
        source = ASTSource(fn=kernel, signature=signature, constexprs=values)
    except TypeError as exc:  # the ASTSource signature differs between Triton versions
        print("SKIP: unsupported ASTSource API:", exc)
        sys.exit(0)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert compiled.asm["cubin"]
    print("compiled", kernel.__name__, constexprs)

fp16 = {n: "*fp16" for n in ("qkv_ptr", "out_ptr", "grad_out_ptr", "grad_qkv_ptr", "x_ptr", "patches_ptr")}
fp32 = {n: "*fp32" for n in ("partial_ds_ptr", "partial_sum_ptr", "stats_ptr")}
for single_n in (True, False):
    blocks = dict(BLOCK_D=8, BLOCK_N=256 if single_n else 64, SINGLE_N=single_n)
    compile_for_hopper(sa._separable_attention_fwd_kernel, fp16, dict(stride_qkv_n=1, **blocks))
    for split in (1, 4):
        compile_for_hopper(sa._separable_attention_bwd_kernel, {**fp16, **fp32},
                           dict(stride_qkv_n=1, stride_g_n=1, SPLIT=split, FUSE_DQ=split == 1, **blocks))
compile_for_hopper(sa._separable_attention_bwd_dq_kernel, {**fp16, **fp32}, dict(SPLIT=4, BLOCK_SPLIT=4, BLOCK_N=64))
for kernel in (patching._unfold_kernel, patching._fold_kernel):
    compile_for_hopper(kernel, fp16, dict(PH=2, PW=2, BLOCK_R=4, BLOCK_M=1024))
"""


def test_kernels_compile_for_sm90():
    """The interpreter accepts constructs that the compiler rejects. Compile every kernel (each code path:
    N in one block or in several, fused or split backward) to a cubin for sm_90 (H100/H200), which needs no
    GPU, so CI catches that. Runs in a subprocess because this process runs Triton in interpreter mode."""
    stdout = run_compile_script(_COMPILE_FOR_HOPPER)
    assert stdout.count("compiled") == 9, stdout


def test_no_hidden_copies(device):
    """Strided inputs are read in place: the launchers allocate their outputs (and the backward's small fp32
    workspace) and launch kernels, nothing else: no .contiguous(), no copy_."""
    if backends.triton_interpreter_enabled():
        pytest.skip("the Triton interpreter itself copies every tensor argument; checked on the GPU")
    from torch.utils._python_dispatch import TorchDispatchMode

    from mobilevitv2_kernels import triton_kernels

    class RecordOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    qkv = make_qkv(2, 3, 4, 9, torch.float16, device, "transposed")
    grad_out = torch.randn(2, 9, 4, 3, device=device).half().transpose(1, 3)
    x = torch.randn(2, 3, 8, 8, device=device).half().contiguous(memory_format=torch.channels_last)
    patches = torch.randn(2, 3, 16, 4, device=device).half().transpose(2, 3)  # (B, C, P, N), N not innermost
    with RecordOps() as recorder:
        triton_kernels.separable_attention_forward(qkv)
        triton_kernels.separable_attention_backward(grad_out, qkv, split=1)
        triton_kernels.separable_attention_backward(grad_out, qkv, split=2)
        triton_kernels.unfold_forward(x, 2, 2)
        triton_kernels.fold_forward(patches, 8, 8, 2, 2)
    assert recorder.ops and set(recorder.ops) == {"aten.empty.memory_format"}, recorder.ops
