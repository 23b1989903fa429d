"""The inference form (mobilevitv2.inference_form): BatchNorm folded, consecutive linear maps composed, and
the blocks' attention computed on the image without unfold/fold; equal to the reference to float32 rounding,
for every head and for sizes that are not a multiple of the patch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation, MobileViTV2Model
from mobilevitv2.blocks import MobileViTV2Layer, MobileViTV2LinearSelfAttention, MobileViTV2TransformerLayer
from mobilevitv2.cpu_inference import _LateStages
from mobilevitv2.inference_form import ImageLayoutBlock, InferenceAttention, inference_form, softmax_weighted_sum, times_context
from mobilevitv2_kernels import reference
from model_utils import assert_nontrivial, randomize_


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


@pytest.mark.parametrize("non_divisible_patching", ["zero_fill", "resize"])
@pytest.mark.parametrize("size", [(64, 64), (72, 88)])  # 72x88: stage 4 and 5 maps are odd
@pytest.mark.parametrize("image_layout", [True, False])
@pytest.mark.parametrize("compose_linear", [True, False])
def test_classification_equals_the_reference(non_divisible_patching, size, image_layout, compose_linear):
    config = MobileViTV2Config.from_width(0.5, num_labels=7, non_divisible_patching=non_divisible_patching)
    model = randomize_(MobileViTV2ForImageClassification(config), seed=5).eval()
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    expected = _logits(model, x)
    assert_nontrivial(expected, "reference logits")
    form = inference_form(model, image_layout=image_layout, compose_linear=compose_linear)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in form.modules())
    assert any(isinstance(m, ImageLayoutBlock) for m in form.modules()) == image_layout
    assert any(isinstance(m, MobileViTV2Layer) for m in form.modules()) != image_layout
    key_projections = [m.key_proj is not None for m in form.modules() if isinstance(m, InferenceAttention)]
    assert key_projections == ([compose_linear] * 9 if image_layout or compose_linear else [])  # 2 + 4 + 3 layers
    assert _composed_projections(form) == (3 if compose_linear else 0)  # stage 3 -> 4, 4 -> 5, 5 -> classifier
    torch.testing.assert_close(_logits(form, x), expected, atol=1e-5, rtol=1e-5)


def _composed_projections(form: nn.Module) -> int:
    """How many blocks had their last projection composed into what follows it."""
    return sum(isinstance(getattr(stage, "conv_projection", None), nn.Identity) for stage in form.mobilevitv2.encoder.layer)


def _macs(form: nn.Module, x: torch.Tensor, pointwise_only: bool) -> int:
    """Multiply-adds of the form's convolutions (only the 1x1 ones if ``pointwise_only``) and linear layers on
    ``x``."""
    macs = []

    def count(module, args, out):
        if isinstance(module, nn.Linear) or not pointwise_only or module.kernel_size == (1, 1):
            macs.append(out.numel() * module.weight[0].numel())

    hooks = [m.register_forward_hook(count) for m in form.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        form(x)
    for hook in hooks:
        hook.remove()
    return sum(macs)


def test_composition_removes_the_multiply_adds_it_claims():
    """Width 1.0 at 256x256: the keys (less the key projection of the 4 pixel offsets' sums), the two
    block-to-block compositions, and the last projection with the classifier on 256 channels instead of 512."""
    model = MobileViTV2ForImageClassification(MobileViTV2Config.from_width(1.0, num_labels=1000)).eval()
    x = torch.zeros(1, 3, 256, 256)
    plain, composed = (_macs(inference_form(model, compose_linear=c), x, pointwise_only=True) for c in (False, True))
    keys = 2 * (1024 - 4) * 128**2 + 4 * (256 - 4) * 192**2 + 3 * (64 - 4) * 256**2
    blocks = 1024 * (128 * 256 + 256 * 512 - 128 * 512) + 256 * (192 * 384 + 384 * 768 - 192 * 768)
    classifier = 64 * 256 * 512 + (512 - 256) * 1000
    assert plain - composed == keys + blocks + classifier
    total = _macs(inference_form(model, compose_linear=False), x, pointwise_only=False)
    assert 0.136 < (plain - composed) / total < 0.138, total  # the 13.7% of the docs (1.81 G in all)


@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize("compose_linear", [True, False])
def test_segmentation_equals_the_reference(output_stride, compose_linear):
    config = MobileViTV2Config.from_width(0.5, num_labels=5, output_stride=output_stride)
    model = randomize_(MobileViTV2ForSemanticSegmentation(config), seed=6).eval()
    x = torch.rand(1, 3, 96, 80, generator=torch.Generator().manual_seed(1))
    expected = _logits(model, x)
    assert_nontrivial(expected, "reference logits")
    for image_layout in (True, False):
        form = inference_form(model, image_layout=image_layout, compose_linear=compose_linear)
        assert _composed_projections(form) == (2 if compose_linear else 0)  # the head reads stage 5's projection
        torch.testing.assert_close(_logits(form, x), expected, atol=1e-5, rtol=1e-5)


def test_a_composed_form_never_takes_the_fused_transformer_op():
    """The fused transformer-layer op would read 1 + 2d qkv rows; a composed layer has 1 + d."""
    model = randomize_(MobileViTV2ForImageClassification(MobileViTV2Config.from_width(0.5, num_labels=3)), seed=13).eval()
    x = torch.zeros(1, 64, 4, 16)
    for compose_linear, fused in ((False, "triton"), (True, None)):
        layers = [m for m in inference_form(model, compose_linear=compose_linear).modules() if isinstance(m, MobileViTV2TransformerLayer)]
        for layer in layers:
            layer.transformer_backend = "triton"
        with torch.no_grad():
            assert {layer._fused_backend(x) for layer in layers} == {fused}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_key_projections_and_classifier_stay_float32_under_autocast(dtype):
    """Under bf16 autocast the key projection runs on 4 vectors per image and the classifier on one: both in
    float32, so that their outputs are not rounded to bf16 (the CPU path's late stages, eagerly)."""
    model = randomize_(MobileViTV2ForImageClassification(MobileViTV2Config.from_width(0.5, num_labels=3)), seed=14).eval()
    form = inference_form(model)
    seen = []
    for module in form.modules():
        if isinstance(module, InferenceAttention):
            module.key_proj.register_forward_hook(lambda m, args, out: seen.append(("key", args[0].dtype, out.dtype)))
    form.classifier.register_forward_hook(lambda m, args, out: seen.append(("classifier", args[0].dtype, out.dtype)))
    features = torch.rand(2, 64, 8, 8, generator=torch.Generator().manual_seed(15))  # composed stage 3 output, 64x64
    with torch.no_grad():
        logits = _LateStages(form, dtype)(features)
    assert logits.dtype == torch.float32
    assert seen == [("key", torch.float32, torch.float32)] * 7 + [("classifier", torch.float32, torch.float32)]  # 4 + 3


def test_features_of_the_base_model_are_kept():
    """The base model's output is its last stage's features: only the key projections move there."""
    model = randomize_(MobileViTV2Model(MobileViTV2Config.from_width(0.5)), seed=9).eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x).last_hidden_state
        form = inference_form(model)
        got = form(x).last_hidden_state
    assert sum(isinstance(m, InferenceAttention) and m.key_proj is not None for m in form.modules()) == 9
    assert_nontrivial(expected, "reference features")
    torch.testing.assert_close(got, expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-5)


@pytest.mark.parametrize("patch_size", [None, (2, 2), (3, 2)])
def test_key_after_sum_is_the_attention(patch_size):
    """The key projected after the softmax-weighted sum equals the attention with the key at every pixel,
    on patches and on images, bias included (the weights sum to one)."""
    config = MobileViTV2Config.from_width(0.5)
    attention = randomize_(MobileViTV2LinearSelfAttention(config, embed_dim=8), seed=10).eval()
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 8, 6, 10, generator=gen) * 2 if patch_size else torch.randn(2, 8, 4, 15, generator=gen) * 2
    with torch.no_grad():
        if patch_size is None:
            expected = attention(x)
        else:
            patches = reference.unfold_forward(x, *patch_size)
            expected = reference.fold_forward(attention(patches), *x.shape[-2:], *patch_size)
        plain = InferenceAttention(attention, patch_size, key_after_sum=False)(x)
        moved = InferenceAttention(attention, patch_size, key_after_sum=True)(x)
    assert_nontrivial(expected, "attention output")
    torch.testing.assert_close(plain, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(moved, expected, atol=1e-6, rtol=1e-5)


def test_times_context_broadcasts_each_offset():
    values = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    context = torch.randn(2, 3, 2, 3, generator=torch.Generator().manual_seed(12))
    got = times_context(values, context, (2, 3))
    assert torch.equal(got[:, :, 2 + 1, 3 + 2], values[:, :, 3, 5] * context[:, :, 1, 2])
    assert torch.equal(got[:, :, 0, 0], values[:, :, 0, 0] * context[:, :, 0, 0])
    summed = softmax_weighted_sum(torch.zeros(1, 1, 4, 6), values[:1], (2, 3))
    torch.testing.assert_close(summed, values[:1].reshape(1, 3, 2, 2, 2, 3).mean(dim=(2, 4)))


def test_the_model_is_untouched():
    model = randomize_(MobileViTV2ForImageClassification(MobileViTV2Config.from_width(0.5, num_labels=3)), seed=7)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    form = inference_form(model)
    assert model.training and not form.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in form.parameters())


@pytest.mark.parametrize("patch", [(2, 2), (3, 2)])
def test_the_image_layout_attention_core_equals_the_patch_computation(patch):
    gen = torch.Generator().manual_seed(8)
    ph, pw = patch
    B, d, H, W = 2, 6, 4 * ph, 5 * pw
    q = torch.randn(B, 1, H, W, generator=gen) * 4  # large scores: the max subtraction matters
    k, v = torch.randn(B, d, H, W, generator=gen), torch.randn(B, d, H, W, generator=gen)
    patches = [reference.unfold_forward(t, ph, pw) for t in (q, k, v)]  # (B, c, P, N)
    scores = torch.softmax(patches[0], dim=-1)
    context = (patches[1] * scores).sum(-1, keepdim=True)
    expected = reference.fold_forward(torch.relu(patches[2]) * context, H, W, ph, pw)
    got = times_context(torch.relu(v), softmax_weighted_sum(q, k, patch), patch)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("patch", [None, (2, 2)])
def test_the_softmax_weighted_sum_of_bf16_inputs_is_float32_throughout(patch):
    # Under bf16 autocast the query and inputs arrive in bf16; the weights and the sum must not be rounded
    # to bf16 on the way (the bf16 CPU path's logit error depends on it).
    gen = torch.Generator().manual_seed(9)
    shape = (2, 1, 4, 16) if patch is None else (2, 1, 8, 8)
    q = (torch.randn(shape, generator=gen) * 3).bfloat16()
    x = torch.randn(2, 5, *shape[2:], generator=gen).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = softmax_weighted_sum(q, x, patch)
    expected = softmax_weighted_sum(q.float(), x.float(), patch)  # the same bf16 values, computed in float32
    assert got.dtype == torch.float32
    assert_nontrivial(expected, "weighted sum")
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    rounded = torch.sum(x * torch.softmax(q, dim=-1), dim=-1, keepdim=True) if patch is None else None
    if rounded is not None:  # what bf16 all the way gives: far outside that tolerance
        assert (rounded.float() - expected).abs().max() > 1e-4
