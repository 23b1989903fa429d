"""The fused inverted-residual op (``mobilevitv2::inverted_residual``) and ``conv_implementation``.

Oracles: the reference (three ``F.conv2d`` on BatchNorm-folded weights), itself checked against the eager
module sequence conv -> BN -> SiLU of ``MobileViTV2InvertedResidual`` in eval mode; float64 runs of the
reference for the low-precision bounds (at most 2x PyTorch's own float16/bfloat16 error); and the eager
model for the model-level tests. On the CPU the Triton kernel runs under the interpreter
(tests/conftest.py); on a GPU the ``cuda`` cases run the compiled kernel and the CPU cases skip. Launcher
outputs are NaN-filled before the launch so an element the kernel fails to write cannot pass. Shapes are
tiny: the interpreter runs on 2 CPU cores in CI.
"""

from __future__ import annotations


import pytest
import torch
from torch import nn

import mobilevitv2_kernels as mk
from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation
from mobilevitv2.layers import MobileViTV2InvertedResidual
from mobilevitv2_kernels import backends, reference
from kernel_utils import DTYPES, error_bound, triton_device
from mobilevitv2_kernels.weights import InvertedResidualWeights
from sm90_compile import run_compile_script
from model_utils import (
    assert_close_fp32,
    assert_nontrivial,
    compile_recording_ops,
    fused_model_pair,
    max_abs_diff,
    randomize_,
    record_op_calls,
)

needs_cpu_triton = pytest.mark.skipif(
    "triton" not in mk.available_backends("cpu", op="inverted_residual"), reason="triton (interpreter) not available"
)

pytestmark = pytest.mark.usefixtures("nan_allocations")  # every allocation starts as NaN


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    return triton_device(request, "inverted_residual")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_weights(c_in, e, c_out, device="cpu", dw_shape="flat"):
    """Folded-style float32 weights that keep activations of order one (so errors are meaningful)."""
    w_dw = torch.randn(e, 9, device=device) / 3
    return (
        torch.randn(e, c_in, device=device) / c_in**0.5,
        torch.rand(e, device=device) - 0.5,
        w_dw if dw_shape == "flat" else w_dw.reshape(e, 1, 3, 3),
        torch.rand(e, device=device) - 0.5,
        torch.randn(c_out, e, device=device) / e**0.5,
        torch.rand(c_out, device=device) - 0.5,
    )


def ref64(x, weights, stride, dilation, residual):
    return reference.inverted_residual_forward(x.double(), InvertedResidualWeights(*(w.double() for w in weights)), stride, dilation, residual)


def assert_close(actual, x, weights, stride, dilation, residual):
    """``actual`` vs the float64 reference, bounded per TOLERANCES (PyTorch's own error for 16-bit)."""
    dtype = actual.dtype
    expected = ref64(x, weights, stride, dilation, residual)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), "non-finite values in the kernel's result"
    assert expected.abs().max() > 0.5, "vacuous comparison: the oracle is nearly zero"
    torch_lowp = reference.inverted_residual_forward(x, InvertedResidualWeights(*weights), stride, dilation, residual) if dtype != torch.float32 else None
    bound = error_bound(expected, dtype, torch_lowp)
    err = (actual.double() - expected).abs().max().item()
    assert err <= bound, f"max abs error {err:.3g} > bound {bound:.3g} ({dtype})"


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


# (C_in, C_out, stride, dilation): residual and not, stride 2, the dilated (OS 8/16) down-sampling blocks
MODULE_CASES = [(8, 8, 1, 1), (8, 16, 2, 1), (12, 20, 1, 2), (16, 16, 1, 2)]


@pytest.mark.parametrize("c_in, c_out, stride, dilation", MODULE_CASES)
def test_reference_equals_eager_module(c_in, c_out, stride, dilation):
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
        got = reference.inverted_residual_forward(x, InvertedResidualWeights(None, None, w_dw, b_dw, w_pw, torch.zeros(16)), 1, dilation, False)
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
# The Triton kernel against the reference
# ----------------------------------------------------------------------------------------------------------

# (B, C_in, E, C_out, H, W, stride, dilation, residual, tile overrides)
KERNEL_CASES = [
    pytest.param(2, 8, 24, 8, 7, 9, 1, 1, True, {}, id="odd-7x9-residual"),
    pytest.param(2, 8, 24, 12, 7, 9, 2, 1, False, {}, id="odd-7x9-s2-ceil"),
    pytest.param(1, 20, 40, 20, 5, 6, 1, 2, True, {}, id="B1-d2-residual"),
    pytest.param(1, 20, 40, 36, 9, 5, 2, 4, False, {}, id="s2-d4"),
    # every loop with a tail: C_in 40 in K-steps of 16, E 56 in chunks of 16, C_out 40 in blocks of 16,
    # 36 pixels in tiles of 16
    pytest.param(1, 40, 56, 40, 6, 6, 1, 1, True, dict(block_p=16, block_k=16, block_e=16, block_co=16), id="tails"),
    pytest.param(2, 3, 16, 5, 1, 1, 2, 1, False, {}, id="1x1-image"),  # every off-centre tap is padding
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, c_in, e, c_out, H, W, stride, dilation, residual, tiles", KERNEL_CASES)
def test_kernel_matches_reference(device, dtype, B, c_in, e, c_out, H, W, stride, dilation, residual, tiles):
    variant = "recompute"  # the halo variant has its own cases below
    from mobilevitv2_kernels.triton_kernels import inverted_residual_forward

    x = torch.randn(B, c_in, H, W, device=device).to(dtype)
    weights = make_weights(c_in, e, c_out, device)
    shape = (B, c_out, -(-H // stride), -(-W // stride))
    out = torch.full(shape, float("nan"), dtype=dtype, device=device)
    result = inverted_residual_forward(x, InvertedResidualWeights(*weights), stride, dilation, residual, out=out, variant=variant, **tiles)
    assert result.data_ptr() == out.data_ptr() and result.dtype == dtype
    assert_close(result, x, weights, stride, dilation, residual)


# The halo variant: (B, C_in, E, C_out, H, W, stride, dilation, residual, overrides). Images smaller than one
# tile and larger than several, stride 1 and 2, dilation 1 and 2, every loop with a tail, and a persistent
# grid smaller than the work (scratch slots reused across work items).
HALO_CASES = [
    pytest.param(2, 8, 24, 8, 7, 9, 1, 1, True, {}, id="odd-7x9-residual-one-tile"),
    pytest.param(2, 8, 24, 12, 7, 9, 2, 1, False, {}, id="odd-7x9-s2"),
    pytest.param(1, 20, 40, 20, 5, 6, 1, 2, True, {}, id="B1-d2-residual"),
    # C_in 20 in K-steps of 16, E 40 in chunks of 16, C_out 20 in blocks of 16, a 9x11 output in 4x8 tiles
    # (3 x 2 per image, partial at the bottom and right), halo 6x10 = 60 pixels in steps of 16 (64), and 3
    # programs for 12 work items
    pytest.param(1, 20, 40, 20, 9, 11, 1, 1, True,
                 dict(tile_h=4, tile_w=8, block_k=16, block_e=16, block_co=16, block_hp=16, num_programs=3),
                 id="tails-persistent"),
    pytest.param(2, 12, 24, 20, 13, 10, 2, 2, False, dict(tile_h=4, tile_w=4, block_hp=16, num_programs=5),
                 id="s2-d2-tiles"),
    pytest.param(2, 3, 16, 5, 1, 1, 1, 1, False, {}, id="1x1-image"),  # every off-centre tap is padding
]  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, c_in, e, c_out, H, W, stride, dilation, residual, tiles", HALO_CASES)
def test_halo_kernel_matches_reference(device, dtype, B, c_in, e, c_out, H, W, stride, dilation, residual, tiles):
    from mobilevitv2_kernels.triton_kernels import inverted_residual_forward

    x = torch.randn(B, c_in, H, W, device=device).to(dtype)
    weights = make_weights(c_in, e, c_out, device)
    shape = (B, c_out, -(-H // stride), -(-W // stride))
    out = torch.full(shape, float("nan"), dtype=dtype, device=device)
    result = inverted_residual_forward(x, InvertedResidualWeights(*weights), stride, dilation, residual, out=out, variant="halo", **tiles)
    assert result.data_ptr() == out.data_ptr() and result.dtype == dtype
    assert_close(result, x, weights, stride, dilation, residual)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, c, c_out, H, W, stride, dilation, tiles", [
    pytest.param(2, 24, 12, 7, 9, 1, 1, {}, id="odd-7x9"),
    pytest.param(1, 20, 40, 6, 5, 2, 2, {}, id="s2-d2"),
    pytest.param(2, 40, 24, 5, 6, 1, 1, dict(block_e=16, block_co=16, block_p=16), id="blocked"),
])  # fmt: skip
def test_kernel_without_expand_matches_reference(device, dtype, B, c, c_out, H, W, stride, dilation, tiles):
    """No expand conv (E = C_in): the depthwise conv reads x itself; always the "recompute" kernel."""
    from mobilevitv2_kernels.triton_kernels import inverted_residual_forward

    x = torch.randn(B, c, H, W, device=device).to(dtype)
    _, _, w_dw, b_dw, w_reduce, b_reduce = make_weights(c, c, c_out, device)
    weights = (None, None, w_dw, b_dw, w_reduce, b_reduce)
    out = torch.full((B, c_out, -(-H // stride), -(-W // stride)), float("nan"), dtype=dtype, device=device)
    inverted_residual_forward(x, InvertedResidualWeights(*weights), stride, dilation, False, out=out, **tiles)
    expected = reference.inverted_residual_forward(x.double(), InvertedResidualWeights(None, None, *(w.double() for w in weights[2:])),
                                                   stride, dilation, False)  # fmt: skip
    own = reference.inverted_residual_forward(x, InvertedResidualWeights(*weights), stride, dilation, False) if dtype != torch.float32 else None
    bound = error_bound(expected, dtype, own)
    assert torch.isfinite(out).all() and expected.abs().max() > 0.5
    assert (out.double() - expected).abs().max().item() <= bound
    through_op = mk.inverted_residual(x, *weights, stride=stride, dilation=dilation, backend="triton")
    assert (through_op.double() - expected).abs().max().item() <= bound


def test_halo_scratch_in_x_dtype(device):
    """scratch_dtype=float16 rounds the expanded activation as PyTorch's float16 block does: within bounds."""
    from mobilevitv2_kernels.triton_kernels import inverted_residual_forward

    x = torch.randn(2, 16, 9, 10, device=device).half()
    weights = make_weights(16, 32, 16, device)
    got = inverted_residual_forward(x, InvertedResidualWeights(*weights), 1, 1, True, variant="halo", scratch_dtype=torch.float16)
    assert_close(got, x, weights, 1, 1, True)


def test_variant_selection():
    """variant=None is the PROVISIONAL automatic rule (halo at stride 1, recompute at stride 2); settings of
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
def test_padding_is_zero_in_the_expanded_map(device, variant):
    """A tap outside the image contributes 0, not SiLU(b_expand). Zero-padding x instead (so that border
    taps see SiLU(b_expand), here SiLU(3)) changes every border pixel and no interior pixel."""
    from mobilevitv2_kernels.triton_kernels import inverted_residual_forward

    x = torch.randn(1, 4, 5, 5, device=device)
    w1, _, w2, b2, w3, b3 = make_weights(4, 16, 4, device)
    weights = (w1, torch.full((16,), 3.0, device=device), w2, b2, w3, b3)
    got = inverted_residual_forward(x, InvertedResidualWeights(*weights), 1, 1, False, variant=variant)
    assert_close(got, x, weights, 1, 1, False)
    x_padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    wrong = reference.inverted_residual_forward(x_padded, InvertedResidualWeights(*weights), 1, 1, False)[..., 1:-1, 1:-1]
    border = torch.ones(5, 5, dtype=torch.bool, device=device)
    border[1:-1, 1:-1] = False
    per_pixel = (got - wrong).abs().amax(dim=(0, 1))  # (5, 5): largest channel difference at each pixel
    assert per_pixel[border].min() > 1e-2
    torch.testing.assert_close(got[..., ~border], wrong[..., ~border])


@pytest.mark.parametrize("variant", ["recompute", "halo"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["channels_last", "channel_slice", "column_slice"])
def test_strided_inputs(device, dtype, layout, variant):
    """channels_last and sliced inputs are read in place; the output follows x's layout (channels_last for
    channels_last, contiguous otherwise), and an ``out`` of any strides is written through its strides."""
    from mobilevitv2_kernels.triton_kernels import inverted_residual_forward

    B, C, H, W = 2, 8, 7, 6
    if layout == "channels_last":
        x = torch.randn(B, C, H, W, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    elif layout == "channel_slice":
        x = torch.randn(B, C + 5, H, W, device=device).to(dtype)[:, 2 : 2 + C]
    else:
        x = torch.randn(B, C, H, 2 * W, device=device).to(dtype)[..., ::2]
    assert not x.is_contiguous()
    weights = make_weights(C, 24, C, device)
    for stride, residual in ((1, True), (2, False)):
        result = inverted_residual_forward(x, InvertedResidualWeights(*weights), stride, 1, residual, variant=variant)
        expect_cl = layout == "channels_last"
        assert result.is_contiguous(memory_format=torch.channels_last if expect_cl else torch.contiguous_format)
        assert_close(result, x, weights, stride, 1, residual)
    out = torch.full((B, C, W, H), float("nan"), dtype=dtype, device=device).transpose(2, 3)  # strided out
    inverted_residual_forward(x, InvertedResidualWeights(*weights), 1, 1, True, out=out, variant=variant)
    assert_close(out, x, weights, 1, 1, True)


# ----------------------------------------------------------------------------------------------------------
# The registered op: public wrapper, opcheck, fake shapes, no autograd, bad input
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_public_wrapper(device, backend):
    x = torch.randn(2, 8, 7, 9, device=device).half()
    weights = make_weights(8, 24, 12, device, dw_shape="conv")  # (E, 1, 3, 3) depthwise weight
    y = mk.inverted_residual(x, *weights, stride=2, dilation=1, backend=backend)
    assert y.shape == (2, 12, 4, 5) and y.dtype == torch.float16 and y.is_contiguous()
    assert_close(y, x, weights, 2, 1, False)
    half_weights = tuple(w.half() for w in weights)  # weights already in x's dtype work the same
    assert_close(mk.inverted_residual(x, *half_weights, stride=2, backend=backend), x, half_weights, 2, 1, False)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_opcheck(device, backend):
    """Schema, fake kernel (shape with ceil for stride 2, channels_last strides), autograd registration
    and AOT dispatch, on both backends."""
    op = torch.ops.mobilevitv2.inverted_residual.default
    weights = make_weights(8, 24, 8, device)
    x = torch.randn(2, 8, 7, 9, device=device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for args in ((x, *weights, 2, 1, False, backend), (x_cl, *weights, 1, 2, True, backend)):
        result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), result
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = op(mode.from_tensor(x), *(mode.from_tensor(w) for w in weights), 2, 1, False, backend)
        fake_cl = op(mode.from_tensor(x_cl), *(mode.from_tensor(w) for w in weights), 1, 1, True, backend)
    assert fake.shape == (2, 8, 4, 5) and fake.stride() == (160, 20, 5, 1)
    real_cl = op(x_cl, *weights, 1, 1, True, backend)
    assert fake_cl.shape == real_cl.shape and fake_cl.stride() == real_cl.stride() == (504, 1, 72, 8)


def test_refuses_autograd(device):
    x = torch.randn(1, 8, 5, 5, device=device)
    weights = make_weights(8, 16, 8, device)
    trainable = tuple(w.clone().requires_grad_(True) for w in weights)
    for args in ((x.requires_grad_(True), *weights), (x.detach(), *trainable)):
        with pytest.raises(RuntimeError, match="inference-only"):
            mk.inverted_residual(*args, backend="triton")
        with pytest.raises(RuntimeError, match="inference-only"):  # the op itself, not only the wrapper
            torch.ops.mobilevitv2.inverted_residual(*args, 1, 1, True, "triton")
    with torch.no_grad():
        assert mk.inverted_residual(x, *trainable, residual=True, backend="triton").shape == (1, 8, 5, 5)
    with torch.inference_mode():
        assert mk.inverted_residual(x, *trainable, residual=True, backend="triton").shape == (1, 8, 5, 5)


def test_bad_input(device):
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
        inverted_residual_forward(x, InvertedResidualWeights(*w), 1, 1, False, out=torch.empty(2, 8, 3, 3, device=device))
    with pytest.raises(ValueError, match="power of two >= 16"):
        inverted_residual_forward(x, InvertedResidualWeights(*w), 1, 1, False, block_e=8)
    w8 = make_weights(8, 8, 8, device)
    with pytest.raises(ValueError, match="'halo' variant needs an expand conv"):
        inverted_residual_forward(x, InvertedResidualWeights(None, None, *w8[2:]), 1, 1, False, variant="halo")
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
# The model: conv_implementation
# ----------------------------------------------------------------------------------------------------------


def model_pair(cls, seed=0, **config_kwargs):
    return fused_model_pair(cls, "conv_implementation", seed, **config_kwargs)


@pytest.fixture
def op_calls(monkeypatch):
    """Records the backend of every call of the fused op from the model."""
    return record_op_calls(monkeypatch, "inverted_residual")


@pytest.fixture
def kernel_variants(monkeypatch):
    """Records the kernel variant the Triton launcher picks at every call (the op passes variant=None)."""
    from mobilevitv2_kernels.triton_kernels import inverted_residual as ir

    picked = []
    real = ir.choose_variant

    def spy(stride, variant=None):
        picked.append((stride, real(stride, variant)))
        return picked[-1][1]

    monkeypatch.setattr(ir, "choose_variant", spy)
    return picked


@needs_cpu_triton
def test_classification_fused_convs_match_eager(op_calls, kernel_variants):
    eager, fused = model_pair(MobileViTV2ForImageClassification, num_labels=5)
    fused.set_attn_implementation("triton")
    assert list(eager.state_dict()) == list(fused.state_dict())  # no new keys
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = eager(x, output_hidden_states=True)
        got = fused(x, output_hidden_states=True)
    # stage 1 (1), stage 2 (2), then per stage 3-5 the down-sampling block and the local convs (no expand)
    assert op_calls == ["triton"] * 9
    # the automatic (provisional) rule: the halo kernel for the two stride-1 blocks, recompute for the rest;
    # the local convs (no expand conv) always run recompute
    assert kernel_variants == [(1, "halo"), (2, "recompute"), (1, "halo")] + [(2, "recompute"), (1, "recompute")] * 3
    assert_nontrivial(expected.logits, "eager logits")
    assert_close_fp32(got.logits, expected.logits, "logits")
    for i, (g, e) in enumerate(zip(got.hidden_states, expected.hidden_states)):
        assert_close_fp32(g, e, f"hidden state {i}")


@needs_cpu_triton
@pytest.mark.parametrize("output_stride", [16, 8])
def test_segmentation_dilated_blocks_match_eager(op_calls, kernel_variants, output_stride):
    """Under OS 16/8 the down-sampling blocks of stages 4-5 run with stride 1 and dilation 1 or 2."""
    eager, fused = model_pair(MobileViTV2ForSemanticSegmentation, num_labels=3, output_stride=output_stride)
    fused.set_attn_implementation("triton")
    dilations = [m.conv_3x3.convolution.dilation[0] for m in fused.modules() if isinstance(m, MobileViTV2InvertedResidual)]
    assert max(dilations) == (2 if output_stride == 8 else 1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = eager(x).logits, fused(x).logits
    assert len(op_calls) == 9  # six inverted residuals, three local convs
    # stride-1 inverted residuals (dilated under OS 8/16) run the halo kernel, the local convs recompute
    assert [v for _, v in kernel_variants].count("halo") == (4 if output_stride == 8 else 3)
    assert [v for _, v in kernel_variants].count("recompute") == 9 - (4 if output_stride == 8 else 3)
    assert all(v == "recompute" for s, v in kernel_variants if s == 2)
    assert_nontrivial(expected, "eager segmentation logits")
    assert_close_fp32(got, expected, "segmentation logits")


@needs_cpu_triton
def test_training_and_gradients_fall_back_to_eager(op_calls):
    """Training mode (batch statistics, with or without gradients) and eval mode with gradients take the
    eager path: same outputs, gradients and BatchNorm statistics as the eager model; the op is never
    called."""
    eager, fused = model_pair(MobileViTV2ForImageClassification, seed=1, num_labels=4)
    x = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([1, 3])
    for train in (True, False):
        eager.train(train), fused.train(train)
        eager.zero_grad(), fused.zero_grad()
        loss_e, loss_f = eager(x, labels=labels).loss, fused(x, labels=labels).loss
        loss_e.backward(), loss_f.backward()
        assert abs(loss_e.item() - loss_f.item()) <= 1e-6
        grads = dict(fused.named_parameters())
        for name, p in eager.named_parameters():
            assert_close_fp32(grads[name].grad, p.grad, f"grad of {name} (train={train})")
    # Training mode without gradients (BatchNorm on batch statistics, updating its running ones) too.
    eager.train(), fused.train()
    with torch.no_grad():
        assert_close_fp32(fused(x).logits, eager(x).logits, "train-mode logits under no_grad")
    assert op_calls == []
    bn_e = eager.mobilevitv2.encoder.layer[1].layer[0].conv_3x3.normalization
    bn_f = fused.mobilevitv2.encoder.layer[1].layer[0].conv_3x3.normalization
    assert bn_f.num_batches_tracked.item() == bn_e.num_batches_tracked.item() == 2
    assert_close_fp32(bn_f.running_var, bn_e.running_var, "running_var after the training steps")


@needs_cpu_triton
def test_folding_follows_weight_changes(op_calls):
    """BatchNorm is folded at every call: changing statistics or weights after a forward is seen."""
    eager, fused = model_pair(MobileViTV2ForImageClassification, num_labels=3)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        first = fused(x).logits
        for model in (eager, fused):
            block = model.mobilevitv2.encoder.layer[1].layer[0]
            block.conv_3x3.normalization.running_var.mul_(3.0)
            block.reduce_1x1.convolution.weight.mul_(-1.0)
        expected, got = eager(x).logits, fused(x).logits
    assert len(op_calls) == 18  # 2 forwards x (6 inverted residuals + 3 local convs)
    assert max_abs_diff(first, expected) > 1e-2  # the change matters ...
    assert_close_fp32(got, expected, "logits after the change")  # ... and the fused model sees it


@needs_cpu_triton
def test_compile_fullgraph_with_fused_convs():
    """torch.compile(fullgraph=True) traces the model with the fused op (one opaque node per block, through
    its fake kernel) without graph breaks; aot_eager avoids Inductor's slow CPU code generation."""
    eager, fused = model_pair(MobileViTV2ForImageClassification, seed=2, num_labels=3)
    compiled, targets = compile_recording_ops(fused)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = compiled(x).logits
        expected = eager(x).logits
    assert sum(t == "mobilevitv2.inverted_residual" for t in targets) == 9  # 6 blocks + 3 local convs
    assert_close_fp32(got, expected, "compiled logits")


def test_auto_is_eager_on_cpu(op_calls):
    model = MobileViTV2ForImageClassification(MobileViTV2Config.from_width(0.5, num_labels=2)).eval()
    model.set_conv_implementation("auto")
    assert {m.conv_backend for m in model.modules() if isinstance(m, MobileViTV2InvertedResidual)} == {"auto"}
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 2)
    assert op_calls == []


def test_conv_implementation_option(tmp_path, monkeypatch):
    config = MobileViTV2Config.from_width(0.5, num_labels=2)
    model = MobileViTV2ForImageClassification(config)
    assert model.conv_implementation == "reference"
    assert {m.conv_backend for m in model.modules() if isinstance(m, MobileViTV2InvertedResidual)} == {None}
    with pytest.raises(ValueError, match="conv_implementation must be one of"):
        model.set_conv_implementation("cuda")
    with pytest.raises(ValueError, match="conv_implementation must be one of"):
        MobileViTV2Config(conv_implementation="fused")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(mk.BackendUnavailableError, match=r"conv_implementation='triton' cannot run .*\['auto', 'reference'\]"):
            model.set_conv_implementation("triton")
        assert model.conv_implementation == "reference"  # a refused choice changes nothing
        monkeypatch.delenv("TRITON_INTERPRET")
    # a runtime choice: never written to config.json, set again on load
    model.set_conv_implementation("auto")
    assert "conv_implementation" not in model.config.to_dict()
    model.save_pretrained(tmp_path)
    assert "conv_implementation" not in (tmp_path / "config.json").read_text()
    loaded = MobileViTV2ForImageClassification.from_pretrained(tmp_path, conv_implementation="auto")
    assert loaded.conv_implementation == "auto"
    assert {m.conv_backend for m in loaded.modules() if isinstance(m, MobileViTV2InvertedResidual)} == {"auto"}
    assert MobileViTV2ForImageClassification.from_pretrained(tmp_path).conv_implementation == "reference"


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


# ----------------------------------------------------------------------------------------------------------
# On a GPU, for real
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_model_fused_convs(monkeypatch):
    """fp32 exact (TF32 off, as the fp32 kernel uses IEEE dots), fp16/bf16 within 2x the eager model's own
    error, with conv_implementation="auto" (Triton on CUDA) and fused attention."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if "triton" not in mk.available_backends("cuda", op="inverted_residual"):
        pytest.skip("triton cannot run on this GPU machine")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    eager, fused = model_pair(MobileViTV2ForImageClassification, num_labels=10)
    eager, fused = eager.cuda(), fused.cuda().set_conv_implementation("auto").set_attn_implementation("auto")
    x = torch.randn(4, 3, 256, 256, device="cuda")
    with torch.no_grad():
        expected = eager(x).logits
        assert_close_fp32(fused(x).logits, expected, "fp32 logits")
        for dtype in (torch.float16, torch.bfloat16):
            eager_err = max_abs_diff(eager.to(dtype)(x.to(dtype)).logits, expected)
            fused_err = max_abs_diff(fused.to(dtype)(x.to(dtype)).logits, expected)
            assert fused_err <= 2 * eager_err + 1e-3, f"{dtype}: {fused_err} vs eager's own {eager_err}"
            eager.float(), fused.float()
