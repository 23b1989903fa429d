"""The inference form (mobilevitv2.inference_form): BatchNorm folded, consecutive linear maps composed, and
the blocks' attention computed on the image without unfold/fold; equal to the reference to float32 rounding,
for every head and for sizes that are not a multiple of the patch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation, MobileViTV2Model
from mobilevitv2.blocks import MobileViTV2Layer, MobileViTV2LinearSelfAttention
from mobilevitv2.inference_form import (
    ImageLayoutBlock,
    InferenceAttention,
    grouped_softmax_context,
    inference_form,
    softmax_weighted_sum,
    times_context,
)
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
    torch.testing.assert_close(_logits(form, x), expected, atol=1e-5, rtol=1e-5)


def _pointwise_macs(form: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of the form's 1x1 convolutions and linear layers on ``x``."""
    macs = []

    def count(module, args, out):
        if isinstance(module, nn.Linear) or module.kernel_size == (1, 1):
            macs.append(out.numel() // out.shape[0] * module.weight.shape[1] * out.shape[0])

    hooks = [m.register_forward_hook(count) for m in form.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        form(x)
    for hook in hooks:
        hook.remove()
    return sum(macs)


def test_composition_removes_the_multiply_adds_it_claims():
    """Width 1.0 at 256x256: 84 M multiply-adds in the keys (less the key projection of the 4 pixel offsets'
    sums) and 166 M in the block-to-block compositions, and the classifier on 256 channels instead of 512."""
    model = MobileViTV2ForImageClassification(MobileViTV2Config.from_width(1.0, num_labels=1000)).eval()
    x = torch.zeros(1, 3, 256, 256)
    plain, composed = (_pointwise_macs(inference_form(model, compose_linear=c), x) for c in (False, True))
    keys = 2 * (1024 - 4) * 128**2 + 4 * (256 - 4) * 192**2 + 3 * (64 - 4) * 256**2
    projections = 1024 * (128 * 256 + 256 * 512 - 128 * 512) + 256 * (192 * 384 + 384 * 768 - 192 * 768) + 64 * 256 * 512
    classifier = (512 - 256) * 1000
    assert plain - composed == keys + projections + classifier
    assert 0.134 < (plain - composed) / 1.84e9 < 0.135  # of the model's 1.84 G


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
        torch.testing.assert_close(_logits(form, x), expected, atol=1e-5, rtol=1e-5)


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
    assert torch.equal(times_context(values, context[..., :1, :1].reshape(2, 3, 1, 1)), values * context[:, :, :1, :1])
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
def test_grouped_softmax_context_equals_the_patch_computation(patch):
    gen = torch.Generator().manual_seed(8)
    ph, pw = patch
    B, d, H, W = 2, 6, 4 * ph, 5 * pw
    q = torch.randn(B, 1, H, W, generator=gen) * 4  # large scores: the max subtraction matters
    k, v = torch.randn(B, d, H, W, generator=gen), torch.randn(B, d, H, W, generator=gen)
    patches = [reference.unfold_forward(t, ph, pw) for t in (q, k, v)]  # (B, c, P, N)
    scores = torch.softmax(patches[0], dim=-1)
    context = (patches[1] * scores).sum(-1, keepdim=True)
    expected = reference.fold_forward(torch.relu(patches[2]) * context, H, W, ph, pw)
    torch.testing.assert_close(grouped_softmax_context(q, k, v, ph, pw), expected, atol=1e-6, rtol=1e-5)
