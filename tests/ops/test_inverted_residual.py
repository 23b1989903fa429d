"""The fused inverted-residual op (``mobilevitv2::inverted_residual``, inference only) on every backend.

Oracles: the reference (three ``F.conv2d`` on BatchNorm-folded weights), itself checked against the eager
module sequence conv -> BN -> SiLU of ``MobileViTV2InvertedResidual`` in eval mode, and float64 runs of it
for the bounds (float16/bfloat16: at most 2x PyTorch's own error). One factory, ``sample_inputs``, feeds the
forward check (each implementation's kernel, with every Triton variant and tile setting the sample names,
and the registered op), the gradient check (the op refuses autograd), opcheck and torch.compile. Outputs
start as NaN (``nan_allocations``, NaN-filled ``out=``). On the CPU Triton runs under the interpreter;
shapes are tiny, the CI machine has 2 cores. The model-level tests are in tests/test_fused_model.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import mobilevitv2_kernels as mk
from mobilevitv2 import MobileViTV2Config
from mobilevitv2.layers import MobileViTV2InvertedResidual
from mobilevitv2_kernels import backends, reference
from mobilevitv2_kernels.common import output_memory_format
from mobilevitv2_kernels.weights import InvertedResidualWeights
from model_utils import assert_close_fp32, assert_nontrivial, randomize_
from sm90_compile import run_compile_script

OP = "inverted_residual"
pytestmark = pytest.mark.usefixtures("nan_allocations", "manual_seed", "ieee_fp32")


def make_weights(c_in, e, c_out, device="cpu", dw_shape="flat", expand=True) -> InvertedResidualWeights:
    """Folded-style float32 weights that keep activations of order one (so errors are meaningful); drawn
    on the CPU, the same values on every device."""
    w_dw = torch.randn(e, 9) / 3
    weights = InvertedResidualWeights(
        torch.randn(e, c_in) / c_in**0.5,
        torch.rand(e) - 0.5,
        w_dw if dw_shape == "flat" else w_dw.reshape(e, 1, 3, 3),
        torch.rand(e) - 0.5,
        torch.randn(c_out, e) / e**0.5,
        torch.rand(c_out) - 0.5,
    )
    if not expand:
        weights = weights._replace(w_expand=None, b_expand=None)
    return InvertedResidualWeights(*(None if w is None else w.to(device) for w in weights))


@dataclasses.dataclass
class Sample:
    name: str
    x: torch.Tensor  # (B, C_in, H, W), any strides
    weights: InvertedResidualWeights
    stride: int
    dilation: int
    residual: bool
    launches: tuple[dict, ...] = ({},)  # Triton launcher settings (variant, tiles), each launched
    strided_out: bool = False  # also launch the Triton kernels into an out of other strides

    @property
    def arguments(self) -> tuple:
        return self.stride, self.dilation, self.residual

    @property
    def out_shape(self) -> tuple[int, ...]:
        B, _, H, W = self.x.shape
        return (B, self.weights.w_reduce.shape[0], -(-H // self.stride), -(-W // self.stride))

    def with_grad(self, requires_grad: bool) -> Sample:
        weights = InvertedResidualWeights(*(None if w is None else w.detach().requires_grad_(requires_grad)
                                            for w in self.weights))  # fmt: skip
        return dataclasses.replace(self, x=self.x.detach().requires_grad_(requires_grad), weights=weights)


RECOMPUTE, HALO = {"variant": "recompute"}, {"variant": "halo"}


def sample_inputs(device, dtype, *, requires_grad=False) -> Iterator[Sample]:
    """Named samples of x and folded weights, x in ``dtype`` on ``device`` (weights float32 unless named)."""

    def sample(name, B, c_in, e, c_out, H, W, stride, dilation, residual, layout="contiguous", weights=None, **kw):
        if layout == "channel_slice":  # sliced on the device: a view of a bigger tensor
            x = torch.randn(B, c_in + 5, H, W).to(device=device, dtype=dtype)[:, 2 : 2 + c_in]
        elif layout == "column_slice":
            x = torch.randn(B, c_in, H, 2 * W).to(device=device, dtype=dtype)[..., ::2]
        else:
            x = torch.randn(B, c_in, H, W).to(device=device, dtype=dtype)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
        assert layout == "contiguous" or not x.is_contiguous(), name
        weights = weights or make_weights(c_in, e, c_out, device)
        return Sample(name, x, weights, stride, dilation, residual, **kw).with_grad(requires_grad)

    # (B, C_in, E, C_out, H, W, stride, dilation, residual): odd sizes, residual and not, stride 2 (ceil),
    # dilation 2 and 4, 1x1 images (every off-centre tap is padding), with each kernel variant.
    yield sample("odd-7x9-residual", 2, 8, 24, 8, 7, 9, 1, 1, True, launches=(RECOMPUTE, HALO))
    yield sample("odd-7x9-s2-ceil", 2, 8, 24, 12, 7, 9, 2, 1, False, launches=(RECOMPUTE, HALO))
    yield sample("B1-d2-residual", 1, 20, 40, 20, 5, 6, 1, 2, True, launches=(RECOMPUTE, HALO))
    yield sample("s2-d4", 1, 20, 40, 36, 9, 5, 2, 4, False, launches=(RECOMPUTE,))
    yield sample("1x1-image-s2", 2, 3, 16, 5, 1, 1, 2, 1, False, launches=(RECOMPUTE,))
    yield sample("1x1-image-s1", 2, 3, 16, 5, 1, 1, 1, 1, False, launches=(HALO,))
    # Every loop with a tail (recompute): C_in 40 in K-steps of 16, E 56 in chunks of 16, C_out 40 in
    # blocks of 16, 36 pixels in tiles of 16.
    yield sample("tails", 1, 40, 56, 40, 6, 6, 1, 1, True,
                 launches=(dict(RECOMPUTE, block_p=16, block_k=16, block_e=16, block_co=16),))  # fmt: skip
    # Halo: C_in 20 in K-steps of 16, E 40 in chunks of 16, C_out 20 in blocks of 16, a 9x11 output in 4x8
    # tiles (3 x 2 per image, partial at the bottom and right), halo 6x10 = 60 pixels in steps of 16 (64),
    # and 3 programs for 12 work items (scratch slots reused); stride 2, dilation 2 in 4x4 tiles.
    yield sample("tails-persistent", 1, 20, 40, 20, 9, 11, 1, 1, True,
                 launches=(dict(HALO, tile_h=4, tile_w=8, block_k=16, block_e=16, block_co=16, block_hp=16,
                                num_programs=3),))  # fmt: skip
    yield sample("s2-d2-tiles", 2, 12, 24, 20, 13, 10, 2, 2, False,
                 launches=(dict(HALO, tile_h=4, tile_w=4, block_hp=16, num_programs=5),))  # fmt: skip
    # No expand conv (E = C_in, the blocks' local convs): the depthwise conv reads x; always "recompute".
    def no_expand(c, c_out):
        return make_weights(c, c, c_out, device, expand=False)

    yield sample("no-expand-odd-7x9", 2, 24, 24, 12, 7, 9, 1, 1, False, weights=no_expand(24, 12))
    yield sample("no-expand-s2-d2", 1, 20, 20, 40, 6, 5, 2, 2, False, weights=no_expand(20, 40))
    yield sample("no-expand-blocked", 2, 40, 40, 24, 5, 6, 1, 1, False, weights=no_expand(40, 24),
                 launches=(dict(block_e=16, block_co=16, block_p=16),))  # fmt: skip
    # channels_last and sliced x, read in place; the output follows x's layout, and the Triton kernels also
    # write an out of other strides.
    for layout in ("channels_last", "channel_slice", "column_slice"):
        yield sample(f"{layout}-residual", 2, 8, 24, 8, 7, 6, 1, 1, True, layout, launches=(RECOMPUTE, HALO),
                     strided_out=True)  # fmt: skip
        yield sample(f"{layout}-s2", 2, 8, 24, 8, 7, 6, 2, 1, False, layout, launches=(RECOMPUTE, HALO))
    yield sample("channels_last-d2-residual", 2, 8, 24, 8, 7, 9, 1, 2, True, "channels_last")
    # The depthwise weight as the conv stores it (E, 1, 3, 3); weights already in x's dtype.
    yield sample("dw-as-conv-weight", 2, 8, 24, 12, 7, 9, 2, 1, False, weights=make_weights(8, 24, 12, device, "conv"))
    in_dtype = InvertedResidualWeights(*(w.to(dtype) for w in make_weights(8, 24, 12, device)))
    yield sample("weights-in-x-dtype", 2, 8, 24, 12, 7, 9, 2, 1, False, weights=in_dtype)
    # An empty batch: a correctly shaped empty result, no launch.
    yield sample("empty-batch", 0, 8, 16, 8, 6, 6, 2, 1, False)


def samples_named(names, device, dtype, **kwargs) -> list[Sample]:
    samples = [s for s in sample_inputs(device, dtype, **kwargs) if s.name in names]
    assert len(samples) == len(names), [s.name for s in samples]
    return samples


def oracle(s: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 reference on the sample's (rounded) inputs, and PyTorch's own result in x's dtype."""
    x, weights = s.x.detach(), InvertedResidualWeights(*(None if w is None else w.detach() for w in s.weights))
    weights64 = InvertedResidualWeights(*(None if w is None else w.double() for w in weights))
    with torch.no_grad():
        return (reference.inverted_residual_forward(x.double(), weights64, *s.arguments),
                reference.inverted_residual_forward(x, weights, *s.arguments))  # fmt: skip


def check(assert_close, actual, s: Sample, what: str) -> None:
    expected, torch_lowp = oracle(s)
    assert_close(actual, expected, torch_lowp, nontrivial=0.5 if actual.numel() else None, what=f"{what}, {s.name}")


# ----------------------------------------------------------------------------------------------------------
# Forward, gradient, opcheck, torch.compile: every sample, every backend
# ----------------------------------------------------------------------------------------------------------


def test_forward(backend, dtype, assert_close):
    """Each implementation's kernel (Triton: every variant and tile setting the sample names, into NaN-filled
    outputs) and the registered op against the float64 reference; the output follows x's layout."""
    for s in sample_inputs(backend.device, dtype):
        layout = output_memory_format(s.x)
        if backend.name == "triton":
            for launch in s.launches:
                if s.x.is_contiguous():
                    out = torch.full(s.out_shape, float("nan"), dtype=dtype, device=s.x.device)
                    result = backend.kernels.inverted_residual_forward(s.x, s.weights, *s.arguments, out=out, **launch)
                    assert result.data_ptr() == out.data_ptr(), s.name
                else:
                    result = backend.kernels.inverted_residual_forward(s.x, s.weights, *s.arguments, **launch)
                assert result.dtype == dtype and result.is_contiguous(memory_format=layout), s.name
                check(assert_close, result, s, f"triton {launch}")
                if s.strided_out:
                    B, C, H, W = s.out_shape
                    out = torch.full((B, C, W, H), float("nan"), dtype=dtype, device=s.x.device).transpose(2, 3)
                    backend.kernels.inverted_residual_forward(s.x, s.weights, *s.arguments, out=out, **launch)
                    check(assert_close, out, s, f"triton {launch} into a strided out")
        else:
            result = backend.kernels.inverted_residual_forward(s.x, s.weights, *s.arguments)
            check(assert_close, result, s, backend.name)
        y = mk.inverted_residual(s.x, *s.weights, stride=s.stride, dilation=s.dilation, residual=s.residual,
                                 backend=backend.name)  # fmt: skip
        assert y.shape == s.out_shape and y.dtype == dtype and y.is_contiguous(memory_format=layout), s.name
        check(assert_close, y, s, f"{backend.name} op")


GRADIENT_SAMPLES = ("1x1-image-s1", "no-expand-s2-d2", "empty-batch")


def test_gradient(op_backend, dtype, assert_close):
    """Inference only: with grad mode on and x or a weight requiring grad, the op (the wrapper and the
    registered op itself) raises at call time; under no_grad and inference_mode it runs and is right."""
    for s in samples_named(GRADIENT_SAMPLES, op_backend.device, dtype):
        trainable = s.with_grad(True).weights
        for x, weights in ((s.x.detach().requires_grad_(True), s.weights), (s.x, trainable)):
            with pytest.raises(RuntimeError, match="inference-only"):
                mk.inverted_residual(x, *weights, stride=s.stride, dilation=s.dilation, residual=s.residual,
                                     backend=op_backend.name)  # fmt: skip
            with pytest.raises(RuntimeError, match="inference-only"):  # the op itself, not only the wrapper
                torch.ops.mobilevitv2.inverted_residual(x, *weights, *s.arguments, op_backend.name)
        for mode in (torch.no_grad, torch.inference_mode):
            with mode():
                y = mk.inverted_residual(s.x.detach().requires_grad_(True), *trainable, stride=s.stride,
                                         dilation=s.dilation, residual=s.residual, backend=op_backend.name)  # fmt: skip
            check(assert_close, y, s, f"{op_backend.name} op under {mode.__name__}")


OPCHECK_SAMPLES = ("odd-7x9-s2-ceil", "channels_last-d2-residual", "no-expand-odd-7x9", "empty-batch")


@pytest.mark.parametrize("requires_grad", [True, False])
def test_opcheck(op_backend, dtype, requires_grad):
    """Schema, fake kernel (shape with ceil for stride 2, channels_last strides), autograd registration and
    AOT dispatch, in every dtype. Inputs that require grad: in grad mode opcheck meets the op's refusal;
    under no_grad (how the model runs it, its parameters requiring grad) every check passes."""
    op = torch.ops.mobilevitv2.inverted_residual.default
    for s in samples_named(OPCHECK_SAMPLES, op_backend.device, dtype, requires_grad=requires_grad):
        args = (s.x, *s.weights, *s.arguments, op_backend.name)
        if requires_grad:
            with pytest.raises(Exception, match="inference-only"):  # opcheck's OpCheckError, caused by the refusal
                torch.library.opcheck(op, args)
            with torch.no_grad():
                result = torch.library.opcheck(op, args)
        else:
            result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), (s.name, result)


def test_fake_kernel_shape_and_strides(op_backend):
    """The fake kernel promises what the op returns: the ceil shape for stride 2, channels_last strides for
    a channels_last x."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    op = torch.ops.mobilevitv2.inverted_residual.default
    weights = make_weights(8, 24, 8, op_backend.device)
    x = torch.randn(2, 8, 7, 9, device=op_backend.device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with FakeTensorMode() as mode:
        fake = op(mode.from_tensor(x), *(mode.from_tensor(w) for w in weights), 2, 1, False, op_backend.name)
        fake_cl = op(mode.from_tensor(x_cl), *(mode.from_tensor(w) for w in weights), 1, 1, True, op_backend.name)
    assert fake.shape == (2, 8, 4, 5) and fake.stride() == (160, 20, 5, 1)
    real_cl = op(x_cl, *weights, 1, 1, True, op_backend.name)
    assert fake_cl.shape == real_cl.shape and fake_cl.stride() == real_cl.stride() == (504, 1, 72, 8)


COMPILE_SAMPLES = ("odd-7x9-s2-ceil", "channels_last-residual", "no-expand-s2-d2")


def test_torch_compile(op_backend, assert_close):
    """The op under torch.compile(fullgraph=True) (one opaque node, traced through its fake kernel) equals
    the float64 reference."""
    torch._dynamo.reset()
    for s in samples_named(COMPILE_SAMPLES, op_backend.device, torch.float32):
        compiled = torch.compile(
            lambda x, w: mk.inverted_residual(x, *w, stride=s.stride, dilation=s.dilation, residual=s.residual,
                                              backend=op_backend.name), fullgraph=True)  # fmt: skip
        with torch.no_grad():
            y = compiled(s.x, s.weights)
        assert y.is_contiguous(memory_format=output_memory_format(s.x)), s.name
        check(assert_close, y, s, "compiled op")


# ----------------------------------------------------------------------------------------------------------
# The reference and the BatchNorm folding against the eager module
# ----------------------------------------------------------------------------------------------------------


def eager_block(c_in, c_out, stride, dilation, seed=0):
    module = MobileViTV2InvertedResidual(MobileViTV2Config(), c_in, c_out, stride=stride, dilation=dilation)
    return randomize_(module, seed).eval()


def folded(module):
    w1, b1 = mk.fold_batchnorm(module.expand_1x1.convolution.weight, module.expand_1x1.normalization)
    w2, b2 = mk.fold_batchnorm(module.conv_3x3.convolution.weight, module.conv_3x3.normalization)
    w3, b3 = mk.fold_batchnorm(module.reduce_1x1.convolution.weight, module.reduce_1x1.normalization)
    return (w1.flatten(1), b1, w2, b2, w3.flatten(1), b3)


@pytest.mark.parametrize("c_in, c_out, stride, dilation", [(8, 8, 1, 1), (8, 16, 2, 1), (12, 20, 1, 2), (16, 16, 1, 2)])
def test_reference_equals_eager_module(c_in, c_out, stride, dilation):
    """Residual and not, stride 2, the dilated (OS 8/16) down-sampling blocks."""
    module = eager_block(c_in, c_out, stride, dilation)
    x = torch.randn(2, c_in, 9, 7)
    with torch.no_grad():
        expected = module(x)
        got = reference.inverted_residual_forward(
            x, InvertedResidualWeights(*folded(module)), stride, dilation, module.use_residual
        )
    assert module.use_residual == (stride == 1 and c_in == c_out)
    assert_nontrivial(expected, "eager inverted residual")
    assert got.shape == expected.shape == (2, c_out, -(-9 // stride), -(-7 // stride))
    assert_close_fp32(got, expected, "folded reference vs eager module")


@pytest.mark.parametrize("dilation", [1, 2])
def test_reference_without_expand_equals_local_convs(dilation):
    """The MobileViTV2 block's local representation (depthwise 3x3 + BN + SiLU, then a bias-free 1x1) is
    the op without its expand conv."""
    from mobilevitv2.blocks import MobileViTV2Layer

    config = MobileViTV2Config(dilate_local_conv=True)
    layer = randomize_(MobileViTV2Layer(config, 8, 16, attn_unit_dim=16, n_attn_blocks=1, dilation=dilation)).eval()
    x = torch.randn(2, 16, 9, 7)
    w_dw, b_dw = mk.fold_batchnorm(layer.conv_kxk.convolution.weight, layer.conv_kxk.normalization)
    w_pw = layer.conv_1x1.convolution.weight.flatten(1)
    with torch.no_grad():
        expected = layer.conv_1x1(layer.conv_kxk(x))
        got = reference.inverted_residual_forward(
            x, InvertedResidualWeights(None, None, w_dw, b_dw, w_pw, torch.zeros(16)), 1, dilation, False
        )
    assert layer.conv_kxk.convolution.dilation == (dilation, dilation)
    assert_nontrivial(expected, "eager local convs")
    assert_close_fp32(got, expected, "reference without expand vs local convs")


def test_fold_batchnorm():
    module = eager_block(8, 16, 2, 1)
    bn = module.conv_3x3.normalization
    w, b = mk.fold_batchnorm(module.conv_3x3.convolution.weight, bn)
    assert w.dtype == b.dtype == torch.float32 and w.shape == (16, 1, 3, 3) and b.shape == (16,)
    h = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        expected = bn(module.conv_3x3.convolution(h))
        got = torch.nn.functional.conv2d(h, w, b, stride=2, padding=1, groups=16)
    assert_close_fp32(got, expected, "conv with folded BN")
    # float16 parameters fold in float32 (one rounding when the kernel casts), float64 stays float64
    w16, b16 = mk.fold_batchnorm(module.conv_3x3.convolution.weight.half(), bn.half())
    assert w16.dtype == b16.dtype == torch.float32
    assert mk.fold_batchnorm(module.conv_3x3.convolution.weight.double(), bn.double())[0].dtype == torch.float64
    with pytest.raises(ValueError, match="running statistics"):
        mk.fold_batchnorm(w, nn.BatchNorm2d(16, track_running_stats=False))
    with pytest.raises(ValueError, match="output channels"):
        mk.fold_batchnorm(torch.randn(8, 1, 3, 3), bn)


# ----------------------------------------------------------------------------------------------------------
# The Triton kernels beyond the samples
# ----------------------------------------------------------------------------------------------------------


def test_halo_scratch_in_x_dtype(triton_device, assert_close):
    """scratch_dtype=float16 rounds the expanded activation as PyTorch's float16 block does: within bounds."""
    from mobilevitv2_kernels.triton_kernels import inverted_residual_forward

    x = torch.randn(2, 16, 9, 10, device=triton_device).half()
    s = Sample("scratch-in-x-dtype", x, make_weights(16, 32, 16, triton_device), 1, 1, True)
    got = inverted_residual_forward(x, s.weights, *s.arguments, variant="halo", scratch_dtype=torch.float16)
    check(assert_close, got, s, "halo kernel, float16 scratch")


def test_variant_selection():
    """variant=None is the automatic rule (halo at stride 1, recompute at stride 2); settings of
    the other variant and unknown variants are refused."""
    from mobilevitv2_kernels.triton_kernels import inverted_residual as ir

    assert ir.choose_variant(1) == "halo" and ir.choose_variant(2) == "recompute"
    assert ir.choose_variant(2, "halo") == "halo" and ir.choose_variant(1, "recompute") == "recompute"
    with pytest.raises(ValueError, match="variant must be one of"):
        ir.choose_variant(1, "fast")
    with pytest.raises(ValueError, match="'halo' variant"):
        ir.launch_config(torch.float16, 8, 16, 8, variant="recompute", tile_h=4)
    with pytest.raises(ValueError, match="'recompute' variant"):
        ir.launch_config(torch.float16, 8, 16, 8, variant="halo", block_p=32)
    with pytest.raises(ValueError, match="tile_h \\* tile_w must be a power of two >= 16"):
        ir.launch_config(torch.float16, 8, 16, 8, variant="halo", tile_h=2, tile_w=4)
    # the halo factor of the defaults: 8x16 tiles for 16-bit (10x18 halo), 8x8 for float32 / 256 channels
    cfg = ir.launch_config(torch.float16, 128, 256, 128, variant="halo")
    assert ir.halo_geometry(cfg, 1, 1) == dict(halo_h=10, halo_w=18, halo=180, halo_pad=192, factor=1.5)
    cfg = ir.launch_config(torch.float16, 128, 256, 256, variant="halo")
    assert (cfg["tile_h"], cfg["tile_w"]) == (8, 8) and ir.halo_geometry(cfg, 1, 1)["halo_pad"] == 128


@pytest.mark.parametrize("variant", ["recompute", "halo"])
def test_padding_is_zero_in_the_expanded_map(triton_device, variant, assert_close):
    """A tap outside the image contributes 0, not SiLU(b_expand). Zero-padding x instead (so that border
    taps see SiLU(b_expand), here SiLU(3)) changes every border pixel and no interior pixel."""
    from mobilevitv2_kernels.triton_kernels import inverted_residual_forward

    device = triton_device
    x = torch.randn(1, 4, 5, 5, device=device)
    weights = make_weights(4, 16, 4, device)._replace(b_expand=torch.full((16,), 3.0, device=device))
    s = Sample("bias-3-expand", x, weights, 1, 1, False)
    got = inverted_residual_forward(x, weights, 1, 1, False, variant=variant)
    check(assert_close, got, s, f"{variant} kernel")
    x_padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    wrong = reference.inverted_residual_forward(x_padded, weights, 1, 1, False)[..., 1:-1, 1:-1]
    border = torch.ones(5, 5, dtype=torch.bool, device=device)
    border[1:-1, 1:-1] = False
    per_pixel = (got - wrong).abs().amax(dim=(0, 1))  # (5, 5): largest channel difference at each pixel
    assert per_pixel[border].min() > 1e-2
    torch.testing.assert_close(got[..., ~border], wrong[..., ~border])


def test_bad_input(triton_device):
    device = triton_device
    x = torch.randn(2, 8, 6, 6, device=device)
    w = make_weights(8, 16, 8, device)

    def call(*args, **kwargs):
        return mk.inverted_residual(*args, **{"backend": "triton", **kwargs})

    with pytest.raises(ValueError, match=r"\(B, C_in, H, W\)"):
        call(x[0], *w)
    with pytest.raises(TypeError, match="floating point"):
        call(x.to(torch.int32), *w)
    with pytest.raises(ValueError, match="w_expand must be"):
        call(x, torch.randn(16, 7, device=device), *w[1:])
    with pytest.raises(ValueError, match="w_dw must be"):
        call(x, *w[:2], torch.randn(16, 3, 3, device=device), *w[3:])
    with pytest.raises(ValueError, match="w_reduce must be"):
        call(x, *w[:4], torch.randn(8, 15, device=device), w[5])
    with pytest.raises(ValueError, match=r"b_dw must be \(16,\)"):
        call(x, *w[:3], torch.randn(15, device=device), *w[4:])
    with pytest.raises(ValueError, match="stride 1 or 2"):
        call(x, *w, stride=3)
    with pytest.raises(ValueError, match="dilation must be positive"):
        call(x, *w, dilation=0)
    with pytest.raises(ValueError, match="residual=True needs stride 1"):
        call(x, *w, stride=2, residual=True)
    with pytest.raises(ValueError, match="both be given or both be None"):
        call(x, w[0], None, *w[2:])
    with pytest.raises(ValueError, match=r"w_dw must be \(E=8, 9\)"):  # no expand: E = C_in
        call(x, None, None, *w[2:])
    with pytest.raises(ValueError, match="is on meta"):
        call(x, w[0].to("meta"), *w[1:])
    with pytest.raises(TypeError, match="float32, float16 and bfloat16"):
        call(x.double(), *w)
    with pytest.raises(mk.BackendUnavailableError, match="no inverted_residual kernel"):
        call(x, *w, backend="cuda")
    with pytest.raises(mk.BackendUnavailableError, match="no inverted_residual kernel"):
        torch.ops.mobilevitv2.inverted_residual(x, *w, 1, 1, False, "cuda")
    from mobilevitv2_kernels.triton_kernels import inverted_residual_forward

    with pytest.raises(ValueError, match="out must be"):
        inverted_residual_forward(x, w, 1, 1, False, out=torch.empty(2, 8, 3, 3, device=device))
    with pytest.raises(ValueError, match="power of two >= 16"):
        inverted_residual_forward(x, w, 1, 1, False, block_e=8)
    w8 = make_weights(8, 8, 8, device, expand=False)
    with pytest.raises(ValueError, match="'halo' variant needs an expand conv"):
        inverted_residual_forward(x, w8, 1, 1, False, variant="halo")
    # empty batch: a correctly shaped empty result, no launch
    assert call(x[:0], *w, stride=2).shape == (0, 8, 3, 3)


def test_backend_capabilities(monkeypatch):
    """The CUDA extension has no inverted-residual kernel: never listed, never picked by auto, which picks
    Triton on CUDA (and still the CUDA extension for the other ops) and the reference on the CPU."""
    assert "cuda" not in mk.available_backends("cuda", op="inverted_residual")
    assert backends.auto_backend("cpu", torch.float16, "inverted_residual") == "reference"

    def everything_loads(name, device_type, op=None):  # as on a GPU machine with every backend built
        return None if backends.supports(name, op) else f"the {name!r} backend has no {op} kernel"

    monkeypatch.setattr(backends, "unavailable_reason", everything_loads)
    monkeypatch.setattr(backends, "check_failure", lambda *args: None)  # and every kernel passed its check
    assert backends.auto_backend("cuda", torch.float16, "inverted_residual") == "triton"
    assert backends.auto_backend("cuda", torch.float16) == "cuda"
    assert mk.available_backends("cuda", op="inverted_residual") == ["reference", "triton"]


# ----------------------------------------------------------------------------------------------------------
# What the interpreter cannot show: the kernel compiles for sm_90, within the register file
# ----------------------------------------------------------------------------------------------------------

_COMPILE_FOR_HOPPER = r"""
import torch
from sm90_compile_script import compile_for_sm90
from mobilevitv2_kernels.triton_kernels import inverted_residual as ir

def compile_for_hopper(variant, dtype, B, c_in, e, c_out, H, W, stride, dilation, residual, expand=True):
    # The launch the launcher would make for these shapes (meta tensors: no memory, real strides).
    x = torch.empty(B, c_in, H, W, dtype=dtype, device="meta")
    out = torch.empty(B, c_out, -(-H // stride), -(-W // stride), dtype=dtype, device="meta")
    w = [torch.empty(e, c_in, dtype=dtype, device="meta"), torch.empty(e, device="meta"),
         torch.empty(e, 9, device="meta"), torch.empty(e, device="meta"),
         torch.empty(c_out, e, dtype=dtype, device="meta"), torch.empty(c_out, device="meta")]
    if not expand:  # the blocks' local convs: no expand conv, E = C_in
        w[0] = w[1] = None
    cfg = ir.launch_config(dtype, c_in, e, c_out, variant=variant, expand=expand)
    if variant == "recompute":
        kernel = ir._inverted_residual_fwd_kernel
        args, meta, _ = ir.kernel_arguments(x, *w, out, stride, dilation, residual, cfg)
    else:
        kernel = ir._inverted_residual_halo_fwd_kernel
        halo_pad = ir.halo_geometry(cfg, stride, dilation)["halo_pad"]
        scratch = torch.empty(264, cfg["block_e"], halo_pad, device="meta")  # 2 x 132 SMs (H100 SXM)
        args, meta, _ = ir.halo_kernel_arguments(x, *w, out, scratch, stride, dilation, residual, cfg)
    usage = compile_for_sm90(kernel, args, meta)
    print("compiled", variant, dtype, (c_in, e, c_out, H, W, stride, dilation, residual, expand), cfg, usage)

# Width-1.0 blocks at 256x256 input, batch 256: layer.0, layer.1.0, layer.1.1, layer.2 and layer.4
# down-sampling; a dilated block (OS 8); float32 (IEEE dots) and bfloat16; both variants.
for variant in ("recompute", "halo"):
    compile_for_hopper(variant, torch.float16, 256, 32, 64, 64, 128, 128, 1, 1, False)
    compile_for_hopper(variant, torch.float16, 256, 64, 128, 128, 128, 128, 2, 1, False)
    compile_for_hopper(variant, torch.float16, 256, 128, 256, 128, 64, 64, 1, 1, True)
    compile_for_hopper(variant, torch.float16, 256, 128, 256, 256, 64, 64, 2, 1, False)
    compile_for_hopper(variant, torch.float16, 256, 384, 768, 512, 16, 16, 2, 1, False)
    compile_for_hopper(variant, torch.bfloat16, 8, 256, 512, 384, 32, 32, 1, 2, False)
    compile_for_hopper(variant, torch.float32, 8, 128, 256, 256, 64, 64, 2, 1, False)
compile_for_hopper("halo", torch.float32, 256, 128, 256, 128, 64, 64, 1, 1, True)  # float32 at stride 1
# The local convs of the MobileViTV2 blocks (no expand): stages 3 and 5 at width 1.0; float32.
compile_for_hopper("recompute", torch.float16, 256, 256, 256, 128, 32, 32, 1, 1, False, expand=False)
compile_for_hopper("recompute", torch.float16, 256, 512, 512, 256, 8, 8, 1, 1, False, expand=False)
compile_for_hopper("recompute", torch.float32, 8, 256, 256, 128, 32, 32, 1, 1, False, expand=False)
"""


def test_kernel_compiles_for_sm90():
    """The interpreter accepts constructs that the compiler rejects, and knows nothing of registers.
    Compile the kernel for sm_90 (H100/H200) with the launcher's own configurations, which needs no GPU,
    and (where Triton ships cuobjdump) check that ptxas spilled no registers. Runs in a subprocess because
    this process runs Triton in interpreter mode."""
    stdout = run_compile_script(_COMPILE_FOR_HOPPER)
    lines = [line for line in stdout.splitlines() if line.startswith("compiled")]
    assert len(lines) == 18, stdout
    # The halo kernel shares its scratch chunk between threads: one barrier after writing it, one after the
    # last read before it is overwritten. The recompute kernel shares nothing.
    for line in lines:
        expected = "barriers=2" if line.startswith("compiled halo") else "barriers=0"
        assert line.endswith(expected), line
