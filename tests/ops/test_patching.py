"""The unfold/fold ops (``mobilevitv2::unfold``, ``mobilevitv2::fold``) on every backend.

One factory, ``sample_inputs``, feeds every check: each implementation's kernels (the reference, Triton,
the CUDA kernels' code on the CPU emulator, the CUDA extension on a GPU) against the reference, autograd
through the registered ops (each op's backward is the other op), opcheck and torch.compile. The ops only
move elements, so every result must match the reference bit for bit. Outputs start as NaN
(``nan_allocations``, NaN-filled ``out=`` tensors) so an element a kernel never writes cannot pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch

import mobilevitv2_kernels as mk
from mobilevitv2_kernels import backends, reference
from sm90_compile import run_compile_script

OP = "unfold"  # fold has the same backends
pytestmark = pytest.mark.usefixtures("nan_allocations", "manual_seed", "ieee_fp32")


@dataclasses.dataclass
class Sample:
    name: str
    x: torch.Tensor  # (B, C, H, W), unfold's input, any strides
    patches: torch.Tensor  # (B, C, ph * pw, N), fold's input for an (H, W) output, any strides
    patch: tuple[int, int]
    packed_width: int | None = None  # the packed width the CUDA unfold must take for it in float16
    kernels: tuple[str, ...] | None = None  # implementations whose kernels take it directly (None: all)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.x.shape[2:])

    def runs_on(self, backend) -> bool:
        return self.kernels is None or backend.name in self.kernels


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "contiguous":
        return x
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "slice":  # every other column of a wider tensor
        out = torch.repeat_interleave(x, 2, dim=-1)[..., ::2]
        assert torch.equal(out, x)
        return out
    raise ValueError(layout)


def sample_inputs(device, dtype, *, requires_grad=False) -> Iterator[Sample]:
    """Named samples of an image and of patches, in ``dtype`` on ``device``."""

    def randn(*shape):  # drawn on the CPU: the same values on every device
        return torch.randn(*shape).to(device=device, dtype=dtype)

    def sample(name, x, patches, patch, **kw):
        return Sample(name, x.requires_grad_(requires_grad), patches.requires_grad_(requires_grad), patch, **kw)

    # Exact multiples, remainders in H and/or W, non-square patches, 1x1 patches; contiguous, channels_last
    # and sliced images; patches with N not innermost.
    for (B, C, H, W), patch in (((2, 3, 8, 8), (2, 2)), ((1, 2, 7, 5), (2, 2)), ((2, 3, 9, 7), (3, 2)),
                                ((1, 1, 3, 1), (1, 1))):  # fmt: skip
        N = (H // patch[0]) * (W // patch[1])
        for layout in ("contiguous", "channels_last", "slice"):
            x = _layout(randn(B, C, H, W), layout)
            patches = randn(B, C, N, patch[0] * patch[1]).transpose(2, 3)
            yield sample(f"{H}x{W}-p{patch[0]}x{patch[1]}-{layout}", x, patches, patch)
    # The CUDA kernels' packed widths (float16): packed rows, a remainder, a 3x2 patch, channels_last, 1x1
    # patches, an image smaller than one patch (no patches; fold writes only zeros). Fold's input is the
    # reference's unfold of the image, strided for the channels_last one.
    for name, (B, C, H, W), patch, layout, width in (
        ("packed", (2, 3, 8, 16), (2, 2), "contiguous", 8),
        ("remainder", (1, 4, 7, 9), (2, 2), "contiguous", 1),
        ("patch-3x2", (1, 2, 6, 12), (3, 2), "contiguous", 4),
        ("channels-last", (2, 3, 8, 8), (2, 2), "channels_last", 1),
        ("patch-1x1", (1, 1, 5, 5), (1, 1), "contiguous", 1),
        ("smaller-than-patch", (1, 2, 1, 3), (2, 2), "contiguous", 1),
        ("shorter-than-patch", (1, 3, 1, 5), (2, 2), "contiguous", None),
    ):
        x = _layout(randn(B, C, H, W), layout)
        patches = reference.unfold_forward(x, *patch)
        if layout == "channels_last":
            patches = patches.transpose(2, 3).contiguous().transpose(2, 3)
        yield sample(name, x, patches.clone(memory_format=torch.preserve_format), patch, packed_width=width)
    # An empty batch: the registered ops answer it themselves; the Triton launchers too.
    yield sample("empty-batch", randn(0, 3, 8, 8), randn(0, 3, 4, 16), (2, 2), kernels=("reference", "triton"))


def samples_named(names, device, dtype, **kwargs) -> list[Sample]:
    samples = [s for s in sample_inputs(device, dtype, **kwargs) if s.name in names]
    assert len(samples) == len(names), [s.name for s in samples]
    return samples


def nan_like(shape, like):
    return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)


def kept_region(s: Sample) -> torch.Tensor:
    """(H, W): True on the pixels inside the patch grid (unfold drops the rest)."""
    (H, W), (ph, pw) = s.size, s.patch
    kept = torch.zeros(H, W, dtype=torch.bool, device=s.x.device)
    kept[: (H // ph) * ph, : (W // pw) * pw] = True
    return kept


# ----------------------------------------------------------------------------------------------------------
# Forward, gradient, opcheck, torch.compile: every sample, every backend
# ----------------------------------------------------------------------------------------------------------


def test_forward(backend, dtype, assert_close):
    """unfold and fold of each implementation equal the reference exactly (a permutation), and fold o unfold
    keeps the pixels inside the patch grid and zeroes the dropped remainder."""
    kernels = backend.kernels
    for s in sample_inputs(backend.device, dtype):
        if not s.runs_on(backend):
            continue
        x, patches, (ph, pw), (H, W) = s.x.detach(), s.patches.detach(), s.patch, s.size
        expected_patches = reference.unfold_forward(x, ph, pw)
        expected_image = reference.fold_forward(patches, H, W, ph, pw)
        if backend.name == "triton":
            out = nan_like(expected_patches.shape, x)
            unfolded = kernels.unfold_forward(x, ph, pw, out=out)
            assert unfolded.data_ptr() == out.data_ptr(), s.name
            out = nan_like(expected_image.shape, x)
            folded = kernels.fold_forward(patches, H, W, ph, pw, out=out)
            assert folded.data_ptr() == out.data_ptr(), s.name
        else:
            unfolded = kernels.unfold_forward(x, ph, pw)
            if backend.name == "cuda-emulation" and dtype == torch.float16 and s.packed_width and unfolded.numel():
                assert kernels.last_width == s.packed_width, f"{s.name}: the launch plan took another path"
            folded = kernels.fold_forward(patches, H, W, ph, pw)
        if backend.name != "reference":
            assert unfolded.is_contiguous() and folded.is_contiguous(), s.name
        assert_close(unfolded, expected_patches, exact=True, what=f"{backend.name} unfold, {s.name}")
        assert_close(folded, expected_image, exact=True, what=f"{backend.name} fold, {s.name}")
        roundtrip = kernels.fold_forward(unfolded, H, W, ph, pw)
        kept = torch.where(kept_region(s), x, torch.zeros((), dtype=dtype, device=x.device))
        assert_close(roundtrip, kept, exact=True, what=f"{backend.name} fold o unfold, {s.name}")


def test_gradient(op_backend, dtype, assert_close):
    """Each op's gradient (the other op, on the same backend) with a random cotangent equals float64
    autograd of the reference exactly; pixels that unfold drops get no gradient."""
    name = op_backend.name
    for s in sample_inputs(op_backend.device, dtype):
        (ph, pw), (H, W) = s.patch, s.size
        x = s.x.detach().requires_grad_(True)
        patches = mk.unfold(x, s.patch, backend=name)
        cotangent = torch.randn(patches.shape).to(device=x.device, dtype=dtype)
        (grad_x,) = torch.autograd.grad(patches, x, cotangent)
        x64 = x.detach().double().requires_grad_(True)
        (expected,) = torch.autograd.grad(reference.unfold_forward(x64, ph, pw), x64, cotangent.double())
        assert_close(patches.detach(), reference.unfold_forward(s.x.detach(), ph, pw), exact=True,
                     what=f"{name} unfold op, {s.name}")  # fmt: skip
        assert_close(grad_x, expected.to(dtype), exact=True, what=f"{name} unfold's gradient, {s.name}")
        assert grad_x[..., ~kept_region(s)].eq(0).all(), f"{s.name}: a dropped pixel got a gradient"

        p = s.patches.detach().requires_grad_(True)
        folded = mk.fold(p, s.size, s.patch, backend=name)
        cotangent = torch.randn(folded.shape).to(device=x.device, dtype=dtype)
        (grad_p,) = torch.autograd.grad(folded, p, cotangent)
        p64 = p.detach().double().requires_grad_(True)
        (expected,) = torch.autograd.grad(reference.fold_forward(p64, H, W, ph, pw), p64, cotangent.double())
        assert_close(folded.detach(), reference.fold_forward(s.patches.detach(), H, W, ph, pw), exact=True,
                     what=f"{name} fold op, {s.name}")  # fmt: skip
        assert_close(grad_p, expected.to(dtype), exact=True, what=f"{name} fold's gradient, {s.name}")


OPCHECK_SAMPLES = ("7x5-p2x2-contiguous", "9x7-p3x2-channels_last", "8x8-p2x2-slice", "shorter-than-patch")


@pytest.mark.parametrize("requires_grad", [True, False])
def test_opcheck(op_backend, dtype, requires_grad):
    """Both registered ops pass torch.library.opcheck (schema, fake kernel, autograd registration, AOT
    dispatch) in every dtype, with inputs that do and do not require grad."""
    ops = torch.ops.mobilevitv2
    for s in samples_named(OPCHECK_SAMPLES, op_backend.device, dtype, requires_grad=requires_grad):
        cases = [
            (ops.unfold.default, (s.x, *s.patch, op_backend.name)),
            (ops.fold.default, (s.patches, *s.size, *s.patch, op_backend.name)),
        ]
        for op, args in cases:
            result = torch.library.opcheck(op, args)
            assert all(v == "SUCCESS" for v in result.values()), (s.name, op, result)


COMPILE_SAMPLES = ("7x5-p2x2-contiguous", "9x7-p3x2-channels_last", "smaller-than-patch")


def test_torch_compile(op_backend, assert_close):
    """Both ops under torch.compile(fullgraph=True), forward and backward, equal the reference exactly."""
    name = op_backend.name
    torch._dynamo.reset()
    for s in samples_named(COMPILE_SAMPLES, op_backend.device, torch.float32):
        (ph, pw), (H, W) = s.patch, s.size

        @torch.compile(fullgraph=True)
        def unfold_and_fold(x, p):
            return mk.unfold(x, s.patch, backend=name), mk.fold(p, s.size, s.patch, backend=name)

        x, p = s.x.detach().requires_grad_(True), s.patches.detach().requires_grad_(True)
        patches, folded = unfold_and_fold(x, p)
        # the cotangents: the sample's patches for unfold, its image for fold
        grad_x, grad_p = torch.autograd.grad((patches, folded), (x, p), (s.patches.detach(), s.x.detach()))
        unfolded_x = reference.unfold_forward(s.x.detach(), ph, pw)
        folded_p = reference.fold_forward(s.patches.detach(), H, W, ph, pw)
        assert_close(patches.detach(), unfolded_x, exact=True, what=f"compiled unfold, {s.name}")
        assert_close(folded.detach(), folded_p, exact=True, what=f"compiled fold, {s.name}")
        assert_close(grad_x, folded_p, exact=True, what=f"compiled unfold's gradient, {s.name}")
        assert_close(grad_p, unfolded_x, exact=True, what=f"compiled fold's gradient, {s.name}")


# ----------------------------------------------------------------------------------------------------------
# Beyond the samples: bad input, copies, compilation for sm_90
# ----------------------------------------------------------------------------------------------------------


def test_bad_input(triton_device):
    device = triton_device
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


def test_no_hidden_copies(triton_device, monkeypatch):
    """Strided inputs are read in place: the Triton launchers allocate their outputs and launch kernels,
    nothing else: no .contiguous(), no copy_."""
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

    x = torch.randn(2, 3, 8, 8, device=triton_device).half().contiguous(memory_format=torch.channels_last)
    patches = torch.randn(2, 3, 16, 4, device=triton_device).half().transpose(2, 3)  # (B, C, P, N), N not innermost
    with RecordOps() as recorder:
        triton_kernels.unfold_forward(x, 2, 2)
        triton_kernels.fold_forward(patches, 8, 8, 2, 2)
    assert recorder.ops and set(recorder.ops) == {"aten.empty.memory_format"}, recorder.ops


_COMPILE_FOR_HOPPER = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mobilevitv2_kernels.triton_kernels import patching

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

fp16 = {n: "*fp16" for n in ("x_ptr", "out_ptr", "patches_ptr")}
for kernel in (patching._unfold_kernel, patching._fold_kernel):
    compile_for_hopper(kernel, fp16, dict(PH=2, PW=2, BLOCK_R=4, BLOCK_M=1024))
"""


def test_kernels_compile_for_sm90():
    """The interpreter accepts constructs that the compiler rejects: compile both kernels to a cubin for
    sm_90 (H100/H200), which needs no GPU. Runs in a subprocess because this process runs Triton in
    interpreter mode."""
    stdout = run_compile_script(_COMPILE_FOR_HOPPER)
    assert stdout.count("compiled") == 2, stdout
