"""The inference form (mobilevitv2.inference_form): BatchNorm folded, and the blocks' attention computed on
the image without unfold/fold; equal to the reference to float32 rounding, for every head and for sizes
that are not a multiple of the patch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation
from mobilevitv2.blocks import MobileViTV2Layer
from mobilevitv2.inference_form import ImageLayoutBlock, grouped_softmax_context, inference_form
from mobilevitv2_kernels import reference
from model_utils import assert_nontrivial, randomize_


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


@pytest.mark.parametrize("non_divisible_patching", ["zero_fill", "resize"])
@pytest.mark.parametrize("size", [(64, 64), (72, 88)])  # 72x88: stage 4 and 5 maps are odd
@pytest.mark.parametrize("image_layout", [True, False])
def test_classification_equals_the_reference(non_divisible_patching, size, image_layout):
    config = MobileViTV2Config.from_width(0.5, num_labels=7, non_divisible_patching=non_divisible_patching)
    model = randomize_(MobileViTV2ForImageClassification(config), seed=5).eval()
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    expected = _logits(model, x)
    assert_nontrivial(expected, "reference logits")
    form = inference_form(model, image_layout=image_layout)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in form.modules())
    assert any(isinstance(m, ImageLayoutBlock) for m in form.modules()) == image_layout
    assert any(isinstance(m, MobileViTV2Layer) for m in form.modules()) != image_layout
    torch.testing.assert_close(_logits(form, x), expected, atol=1e-5, rtol=1e-5)


def test_segmentation_equals_the_reference():
    config = MobileViTV2Config.from_width(0.5, num_labels=5, output_stride=16)
    model = randomize_(MobileViTV2ForSemanticSegmentation(config), seed=6).eval()
    x = torch.rand(1, 3, 96, 80, generator=torch.Generator().manual_seed(1))
    expected = _logits(model, x)
    assert_nontrivial(expected, "reference logits")
    torch.testing.assert_close(_logits(inference_form(model, image_layout=True), x), expected, atol=1e-5, rtol=1e-5)


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
