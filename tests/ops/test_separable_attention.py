"""The separable-attention op (``mobilevitv2::separable_attention`` and its backward op) on every backend.

One factory, ``sample_inputs``, feeds every check: the forward and gradient kernels of each implementation
(the reference, Triton, the CUDA kernels' code on the CPU emulator, the CUDA extension on a GPU) against the
float64 reference, autograd through the registered op, opcheck and torch.compile. The query logits are
large in every ordinary sample (beyond float32's exp range, so a softmax that does not subtract its maximum
overflows), and extreme (+-1e4, +-6e4 in float16) in two. Outputs start as NaN (``nan_allocations``, and
NaN-filled ``out=`` tensors) so an element a kernel never writes cannot pass. On the CPU Triton runs under
the interpreter; shapes are small, the CI machine has 2 cores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch

import mobilevitv2_kernels as mk
from mobilevitv2_kernels import backends, reference
from sm90_compile import run_compile_script

OP = "separable_attention"
pytestmark = pytest.mark.usefixtures("nan_allocations", "manual_seed", "ieee_fp32")


@dataclasses.dataclass
class Sample:
    name: str
    qkv: torch.Tensor  # (B, 1 + 2d, P, N), channels [query, key (d), value (d)], any strides
    grad_out: torch.Tensor  # (B, d, P, N): the cotangent of the gradient checks, any strides
    tiles: tuple[dict, ...] = ({},)  # Triton tile overrides, each launched
    packed_width: int | None = None  # the packed width the CUDA launch plan must take for it in float16
    kernels: tuple[str, ...] | None = None  # implementations whose kernels take it directly (None: all)

    @property
    def empty(self) -> bool:
        return self.qkv.numel() == 0 or self.grad_out.numel() == 0

    def runs_on(self, backend) -> bool:
        return self.kernels is None or backend.name in self.kernels


def make_qkv(B, d, P, N, dtype, device, layout="contiguous", spread=25.0, offset=0.0):
    """qkv (B, 1+2d, P, N) in a memory layout, drawn on the CPU (the same values on every device) and
    exactly representable in ``dtype``; query logits ``offset + spread * N(0, 1)``."""
    C = 1 + 2 * d

    def randn(*shape):
        return torch.randn(*shape).to(device=device, dtype=dtype)

    if layout == "contiguous":
        qkv = randn(B, C, P, N)
    elif layout == "channel_slice":  # a view into a bigger tensor: offset by 2 channels
        qkv = randn(B, C + 3, P, N)[:, 2 : 2 + C]
    elif layout == "element_offset":  # data pointer one element past an aligned address
        qkv = randn(B * C * P * N + 1)[1:].view(B, C, P, N)
    elif layout == "transposed":  # N not innermost
        qkv = randn(B, N, P, C).permute(0, 3, 2, 1)
    elif layout == "strided_n":  # every other element along N
        qkv = randn(B, C, P, 2 * N)[..., ::2]
    else:
        raise ValueError(layout)
    qkv[:, :1] = (offset + spread * torch.randn(B, 1, P, N)).to(device=device, dtype=dtype)
    return qkv


def sample_inputs(device, dtype, *, requires_grad=False) -> Iterator[Sample]:
    """Named samples of qkv and a cotangent, in ``dtype`` on ``device``."""

    def sample(name, B, d, P, N, layout="contiguous", grad_layout="contiguous", spread=25.0, offset=0.0, **kw):
        qkv = make_qkv(B, d, P, N, dtype, device, layout, spread, offset)
        if grad_layout == "contiguous":
            grad_out = torch.randn(B, d, P, N).to(device=device, dtype=dtype)
        elif grad_layout == "transposed":  # (B, d, P, N) with N and d swapped in memory
            grad_out = torch.randn(B, N, P, d).to(device=device, dtype=dtype).transpose(1, 3)
        else:  # "broadcast": stride 0 along N (an expanded tensor)
            grad_out = torch.randn(B, d, P, 1).to(device=device, dtype=dtype).expand(B, d, P, N)
        return Sample(name, qkv.requires_grad_(requires_grad), grad_out, **kw)

    # Odd N, N = 1, d not a power of two, P = 1 and 4, B = 1, N over several Triton blocks (online softmax,
    # with and without a tail block), several d-blocks (split backward with partial sums). Query logits of
    # spread 25: up to ~100.
    yield sample("pow2", 2, 4, 4, 16)
    yield sample("oddN-d5", 2, 5, 4, 7)
    yield sample("B1-P1-N1-d3", 1, 3, 1, 1)
    yield sample("N33-in-blocks-of-8", 2, 3, 1, 33, tiles=({"block_n": 8},))
    yield sample("d9-in-blocks-of-4", 1, 9, 4, 12, tiles=({"block_d": 4},))
    yield sample("d5-N20-both-blocked", 1, 5, 4, 20, tiles=({"block_d": 2, "block_n": 8},))
    # Strided qkv and cotangent, read through their strides (not copied).
    for layout in ("channel_slice", "transposed"):
        strided = sample(f"{layout}-strided-grad", 2, 3, 4, 9, layout, "transposed", tiles=({}, {"block_n": 4}))
        assert not strided.qkv.is_contiguous() and not strided.grad_out.is_contiguous()
        yield strided
    # The CUDA launch plan's paths (and the packed width it must take in float16): packed and element-wise
    # accesses, several channel blocks, rows longer than 32 packs, misaligned and strided views, a broadcast
    # cotangent. Logits of spread 4 around +-90: every key weighs in, and a softmax that does not subtract
    # its maximum overflows (or underflows to 0/0).
    shifted = dict(spread=4.0)
    yield sample("small-packed16", 2, 3, 4, 16, packed_width=8, offset=90.0, **shifted)
    yield sample("split-channels", 2, 40, 4, 64, packed_width=8, offset=-90.0, **shifted)
    yield sample("odd-N", 1, 5, 1, 33, packed_width=1, offset=90.0, **shifted)
    yield sample("N=1", 1, 7, 4, 1, packed_width=1, offset=-90.0, **shifted)
    yield sample("d=1-packed8", 3, 1, 1, 12, packed_width=4, offset=90.0, **shifted)
    yield sample("stage1-like", 2, 19, 4, 256, packed_width=8, offset=-90.0, **shifted)
    yield sample("several-chunks", 1, 6, 4, 600, packed_width=8, offset=90.0, **shifted)
    yield sample("channel-slice", 1, 3, 4, 40, "channel_slice", packed_width=8, offset=-90.0, **shifted)
    yield sample("misaligned", 2, 3, 2, 24, "element_offset", packed_width=1, offset=90.0, **shifted)
    yield sample("transposed", 2, 5, 4, 20, "transposed", packed_width=1, offset=-90.0, **shifted)
    yield sample("strided-N", 1, 4, 4, 17, "strided_n", packed_width=1, offset=90.0, **shifted)
    yield sample("broadcast-grad", 2, 4, 4, 16, grad_layout="broadcast", offset=-90.0, **shifted)
    # Rows too long for the CUDA kernels' shared memory (backward above 4096, forward above 8192): weights
    # recomputed from the query, dq shares accumulated in global memory; element-wise (odd N) and packed.
    for N in (4097, 4104, 8200):
        yield sample(f"long-row-N={N}", 1, 3, 1, N, offset=90.0, **shifted)
    # Extreme logits: +-1e4 (+-6e4 in float16), where a naive exp overflows in every dtype.
    big = 6e4 if dtype == torch.float16 else 1e4
    ties = sample("large-logits-tied", 2, 3, 4, 10, tiles=({}, {"block_n": 4}))
    logits = torch.full((2, 4, 10), -big)
    logits[..., 1] = big / 2
    logits[..., 7] = big  # two tied maxima, the second in a late block: the online rescaling
    logits[..., 9] = big
    logits[1, :, 4] = -big / 3
    with torch.no_grad():
        ties.qkv[:, 0] = logits.to(device=device, dtype=dtype)
    yield ties
    uniform = sample("large-logits-uniform", 2, 5, 4, 64)
    with torch.no_grad():
        uniform.qkv[:, 0] = (torch.rand(2, 4, 64) * 2 - 1).mul(big).to(device=device, dtype=dtype)
    yield uniform
    # Empty batch, N = 0, d = 0, P = 0: the registered op answers them itself; the Triton launchers too.
    for name, (B, d, P, N) in {"empty-batch": (0, 3, 4, 5), "N=0": (2, 3, 4, 0), "d=0": (2, 0, 4, 5),
                               "P=0": (2, 3, 0, 5)}.items():  # fmt: skip
        yield sample(name, B, d, P, N, kernels=("reference", "triton"))


def samples_named(names, device, dtype, **kwargs) -> list[Sample]:
    samples = [s for s in sample_inputs(device, dtype, **kwargs) if s.name in names]
    assert len(samples) == len(names), [s.name for s in samples]
    return samples


def oracle(s: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 reference's output and, by autograd, its gradient for the sample's cotangent."""
    qkv64 = s.qkv.detach().double().requires_grad_(True)
    out64 = reference.separable_attention_forward(qkv64)
    (grad64,) = torch.autograd.grad(out64, qkv64, s.grad_out.double())
    return out64.detach(), grad64


def nan_like(shape, like):
    return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)


def forward_results(backend, s: Sample) -> Iterator[torch.Tensor]:
    """The implementation's forward for the sample (on Triton once per tile setting, into a NaN-filled out)."""
    qkv = s.qkv.detach()
    out_shape = (qkv.shape[0], (qkv.shape[1] - 1) // 2, *qkv.shape[2:])
    if backend.name == "triton":
        for tiles in s.tiles:
            out = nan_like(out_shape, qkv)
            result = backend.kernels.separable_attention_forward(qkv, out=out, **tiles)
            assert result.data_ptr() == out.data_ptr()
            yield result
        return
    result = backend.kernels.separable_attention_forward(qkv)
    if backend.name == "cuda-emulation" and qkv.dtype == torch.float16 and s.packed_width is not None:
        assert backend.kernels.last_width == s.packed_width, "the launch plan took another path than the sample's"
    yield result


def backward_results(backend, s: Sample) -> Iterator[torch.Tensor]:
    qkv = s.qkv.detach()
    if backend.name == "triton":
        for tiles in s.tiles:
            out = nan_like(qkv.shape, qkv)
            result = backend.kernels.separable_attention_backward(s.grad_out, qkv, out=out, **tiles)
            assert result.data_ptr() == out.data_ptr()
            yield result
        return
    yield backend.kernels.separable_attention_backward(s.grad_out, qkv)


# ----------------------------------------------------------------------------------------------------------
# Forward, gradient, opcheck, torch.compile: every sample, every backend
# ----------------------------------------------------------------------------------------------------------


def test_forward(backend, dtype, assert_close):
    for s in sample_inputs(backend.device, dtype):
        if not s.runs_on(backend):
            continue
        expected, _ = oracle(s)
        torch_lowp = reference.separable_attention_forward(s.qkv)
        for out in forward_results(backend, s):
            assert out.dtype == dtype and (backend.name == "reference" or out.is_contiguous()), s.name
            assert_close(out, expected, torch_lowp, what=f"{backend.name} forward, {s.name}")


def test_gradient(backend, dtype, assert_close):
    """The backward kernel against float64 autograd of the reference (and the hand-written reference
    backward against that too); for the registered backends, autograd through the op with the sample's
    cotangent: forward and gradient."""
    for s in sample_inputs(backend.device, dtype):
        expected_out, expected = oracle(s)
        hand_written = reference.separable_attention_backward(s.grad_out.double(), s.qkv.double())
        torch.testing.assert_close(hand_written, expected)
        torch_lowp = reference.separable_attention_backward(s.grad_out, s.qkv)  # the reference backend's result
        if s.runs_on(backend):
            for grad in backward_results(backend, s):
                assert grad.dtype == dtype and grad.shape == s.qkv.shape, s.name
                assert backend.name == "reference" or grad.is_contiguous(), s.name
                if s.empty:
                    assert grad.eq(0).all(), s.name
                assert_close(grad, expected, torch_lowp, what=f"{backend.name} backward kernel, {s.name}")
        if not backend.registered:
            continue
        qkv = s.qkv.detach().requires_grad_(True)
        out = mk.separable_attention(qkv, backend=backend.name)
        (grad,) = torch.autograd.grad(out, qkv, s.grad_out)
        assert out.is_contiguous() and grad.dtype == dtype and grad.shape == qkv.shape, s.name
        if s.empty:  # correctly shaped empty results, an all-zero gradient
            assert grad.eq(0).all(), s.name
        assert_close(out.detach(), expected_out, reference.separable_attention_forward(s.qkv),
                     what=f"{backend.name} op forward, {s.name}")  # fmt: skip
        assert_close(grad, expected, torch_lowp, what=f"{backend.name} op gradient, {s.name}")


OPCHECK_SAMPLES = ("oddN-d5", "B1-P1-N1-d3", "transposed-strided-grad", "d=0")


@pytest.mark.parametrize("requires_grad", [True, False])
def test_opcheck(op_backend, dtype, requires_grad):
    """Both registered ops pass torch.library.opcheck (schema, fake kernel, autograd registration, AOT
    dispatch) in every dtype (a fake kernel that returns the wrong dtype fails only there), with inputs that
    do and do not require grad. Under the interpreter this works because the ops are custom_ops whose fake
    kernels never launch Triton."""
    ops = torch.ops.mobilevitv2
    for s in samples_named(OPCHECK_SAMPLES, op_backend.device, dtype, requires_grad=requires_grad):
        cases = [
            (ops.separable_attention.default, (s.qkv, op_backend.name)),
            (ops.separable_attention_backward.default, (s.grad_out, s.qkv.detach(), op_backend.name)),
        ]
        for op, args in cases:
            result = torch.library.opcheck(op, args)
            assert all(v == "SUCCESS" for v in result.values()), (s.name, op, result)


COMPILE_SAMPLES = ("oddN-d5", "transposed", "large-logits-tied")


def test_torch_compile(op_backend, assert_close):
    """The op under torch.compile(fullgraph=True), forward and backward, equals float64 autograd of the
    reference (Inductor compiles the small graph around the opaque custom op in a few seconds)."""

    def attention(qkv):
        return mk.separable_attention(qkv, backend=op_backend.name) * 2

    torch._dynamo.reset()
    compiled = torch.compile(attention, fullgraph=True)
    for s in samples_named(COMPILE_SAMPLES, op_backend.device, torch.float32):
        qkv = s.qkv.detach().requires_grad_(True)
        out = compiled(qkv)
        (grad,) = torch.autograd.grad(out, qkv, s.grad_out)
        expected_out, _ = oracle(s)
        qkv64 = s.qkv.detach().double().requires_grad_(True)
        (expected,) = torch.autograd.grad(reference.separable_attention_forward(qkv64) * 2, qkv64, s.grad_out.double())
        assert_close(out.detach(), expected_out * 2, what=f"compiled forward, {s.name}")
        assert_close(grad, expected, what=f"compiled gradient, {s.name}")


def test_torch_compile_block(op_backend, assert_close):
    """unfold -> separable attention -> fold (the model's use of the three ops) under
    torch.compile(fullgraph=True), forward and backward, equals float64 eager autograd of the reference."""
    patch = (2, 2)

    name = op_backend.name

    def block(x):
        qkv = mk.unfold(x, patch, backend=name)
        return mk.fold(mk.separable_attention(qkv, backend=name), x.shape[-2:], patch, backend=name)

    def block_reference(x):
        qkv = reference.unfold_forward(x, *patch)
        out = reference.separable_attention_forward(qkv)
        return reference.fold_forward(out, x.shape[-2], x.shape[-1], *patch)

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(2, 7, 5, 7, device=op_backend.device, requires_grad=True)  # 7 = 1 + 2*3 channels, odd H, W
    y = compiled(x)
    cotangent = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, cotangent)
    x64 = x.detach().double().requires_grad_(True)
    y64 = block_reference(x64)
    (grad64,) = torch.autograd.grad(y64, x64, cotangent.double())
    assert_close(y.detach(), y64.detach(), what="compiled block")
    assert_close(grad, grad64, what="compiled block's gradient")
    assert grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------
# What one implementation needs checked beyond the samples
# ----------------------------------------------------------------------------------------------------------


def test_tied_maxima_share_the_weight(dtype):
    """The oracle of the tied-maxima sample: exactly half the weight on each tied maximum, so the context is
    the mean of two keys (a check of the sample, whatever the backend)."""
    (s,) = samples_named(("large-logits-tied",), "cpu", dtype)
    d = s.grad_out.shape[1]
    expected, _ = oracle(s)
    context = (s.qkv[:, 1 : 1 + d, :, 7].double() + s.qkv[:, 1 : 1 + d, :, 9].double()) / 2
    torch.testing.assert_close(expected, torch.relu(s.qkv[:, 1 + d :].double()) * context[..., None])


@pytest.mark.parametrize("split", [1, 2, 3, 5])
def test_triton_backward_split(triton_device, split, assert_close):
    """Every way of sharing the d-blocks between programs (split=1 writes dq in the same kernel; larger
    splits write fp32 partial sums that a second kernel reduces) gives the same gradient."""
    from mobilevitv2_kernels import triton_kernels

    qkv = make_qkv(2, 9, 4, 6, torch.float32, triton_device)
    grad_out = torch.randn(2, 9, 4, 6, device=triton_device)
    out = nan_like(qkv.shape, qkv)
    triton_kernels.separable_attention_backward(grad_out, qkv, out=out, block_d=2, split=split)
    qkv64 = qkv.double().requires_grad_(True)
    (expected,) = torch.autograd.grad(reference.separable_attention_forward(qkv64), qkv64, grad_out.double())
    assert_close(out, expected)


def test_launch_plan_covers_every_path(emulator):
    """The samples reach each branch of the CUDA kernels' launch plan: group sizes 1..32, one or several
    channel blocks, rows in shared or global memory (checked here so that a plan change cannot silently drop
    one)."""
    plans = {
        "N=1": emulator.plan(1, 7, 4, 1, 1, True),
        "small": emulator.plan(2, 3, 4, 16, 8, True),
        "split": emulator.plan(2, 40, 4, 64, 8, True),
        "long": emulator.plan(1, 3, 1, 4097, 4, True),
        "stage1": emulator.plan(256, 128, 4, 256, 8, True),
    }
    assert plans["N=1"]["group_size"] == 1 and plans["N=1"]["direct"]
    assert plans["small"]["group_size"] == 2 and plans["small"]["direct"]
    assert plans["split"]["channel_blocks"] > 1 and not plans["split"]["direct"] and plans["split"]["shared_row"]
    assert not plans["long"]["shared_row"] and not plans["long"]["direct"]
    assert plans["stage1"]["group_size"] == 32 and plans["stage1"]["channels_per_block"] == 64
    assert emulator.plan(1, 3, 1, 8192, 4, False)["shared_row"]
    assert not emulator.plan(1, 3, 1, 8195, 4, False)["shared_row"]


def test_bad_input(triton_device):
    device = triton_device
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


def test_no_hidden_copies(triton_device, monkeypatch):
    """Strided inputs are read in place: the Triton launchers allocate their outputs (and the backward's
    small fp32 workspace) and launch kernels, nothing else: no .contiguous(), no copy_."""
    if backends.triton_interpreter_enabled():
        pytest.skip("the Triton interpreter itself copies every tensor argument; checked on the GPU")
    monkeypatch.undo()  # the real allocators: nan_allocations' NaN fill would be recorded as aten.fill_
    from torch.utils._python_dispatch import TorchDispatchMode

    from mobilevitv2_kernels import triton_kernels

    class RecordOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    qkv = make_qkv(2, 3, 4, 9, torch.float16, triton_device, "transposed")
    grad_out = torch.randn(2, 9, 4, 3, device=triton_device).half().transpose(1, 3)
    with RecordOps() as recorder:
        triton_kernels.separable_attention_forward(qkv)
        triton_kernels.separable_attention_backward(grad_out, qkv, split=1)
        triton_kernels.separable_attention_backward(grad_out, qkv, split=2)
    assert recorder.ops and set(recorder.ops) == {"aten.empty.memory_format"}, recorder.ops


@pytest.mark.parametrize("backend", [pytest.param(("cuda", "cuda"), id="cuda", marks=pytest.mark.gpu)], indirect=True)
def test_cuda_kernels_run_on_the_current_stream(backend, assert_close):
    """The CUDA extension's kernels order after work queued on a side stream (they launch on the current
    stream), do not synchronise the host, and can be captured in a CUDA graph."""
    from mobilevitv2_kernels import cuda_extension

    impl = cuda_extension.load()
    source = make_qkv(16, 24, 4, 64, torch.float16, "cuda", spread=1.0)
    grad_out = torch.randn(16, 24, 4, 64, device="cuda", dtype=torch.float16)
    qkv = torch.zeros_like(source)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.stream(stream):
            torch.cuda._sleep(50_000_000)  # keeps the side stream busy: a kernel elsewhere would read zeros
            qkv.copy_(source)
            out = impl.separable_attention_forward(qkv)
            grad = impl.separable_attention_backward(grad_out, qkv)
            patches = impl.unfold_forward(qkv, 2, 2)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    stream.synchronize()
    assert_close(out, reference.separable_attention_forward(source.double()),
                 reference.separable_attention_forward(source))  # fmt: skip
    assert_close(grad, reference.separable_attention_backward(grad_out.double(), source.double()),
                 reference.separable_attention_backward(grad_out, source))  # fmt: skip
    assert torch.equal(patches, reference.unfold_forward(source, 2, 2))

    static_in = torch.zeros_like(source)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = impl.separable_attention_forward(static_in)
        static_grad = impl.separable_attention_backward(grad_out, static_in)
    static_in.copy_(source)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, out)
    torch.testing.assert_close(static_grad, grad)  # dq sums with float atomics: not bitwise reproducible


# ----------------------------------------------------------------------------------------------------------
# What the interpreter cannot show: the Triton kernels compile for a real GPU
# ----------------------------------------------------------------------------------------------------------

_COMPILE_FOR_HOPPER = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mobilevitv2_kernels.triton_kernels import separable_attention as sa

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

fp16 = {n: "*fp16" for n in ("qkv_ptr", "out_ptr", "grad_out_ptr", "grad_qkv_ptr")}
fp32 = {n: "*fp32" for n in ("partial_ds_ptr", "partial_sum_ptr", "stats_ptr")}
for single_n in (True, False):
    blocks = dict(BLOCK_D=8, BLOCK_N=256 if single_n else 64, SINGLE_N=single_n)
    compile_for_hopper(sa._separable_attention_fwd_kernel, fp16, dict(stride_qkv_n=1, **blocks))
    for split in (1, 4):
        compile_for_hopper(sa._separable_attention_bwd_kernel, {**fp16, **fp32},
                           dict(stride_qkv_n=1, stride_g_n=1, SPLIT=split, FUSE_DQ=split == 1, **blocks))
compile_for_hopper(sa._separable_attention_bwd_dq_kernel, {**fp16, **fp32}, dict(SPLIT=4, BLOCK_SPLIT=4, BLOCK_N=64))
"""


def test_kernels_compile_for_sm90():
    """The interpreter accepts constructs that the compiler rejects. Compile every kernel (each code path:
    N in one block or in several, fused or split backward) to a cubin for sm_90 (H100/H200), which needs no
    GPU, so CI catches that. Runs in a subprocess because this process runs Triton in interpreter mode."""
    stdout = run_compile_script(_COMPILE_FOR_HOPPER)
    assert stdout.count("compiled") == 7, stdout
