"""The reference model against transformers (the oracle): parameters, keys, outputs, losses, checkpoints."""

import pytest
import torch

from mobilevitv2 import (
    WIDTH_PRESETS,
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2Model,
)
from model_utils import assert_close_fp32, assert_nontrivial, hf_model

transformers = pytest.importorskip("transformers")

# Spec section 1.3: parameters of the 1000-class classifier and the 21-class DeepLabV3, in millions.
SPEC_PARAMS_M = {
    0.5: (1.371, 6.24), 0.75: (2.866, 9.51), 1.0: (4.902, 13.32), 1.25: (7.478, 17.67),
    1.5: (10.595, 22.56), 1.75: (14.252, 27.99), 2.0: (18.449, 33.96),
}  # fmt: skip
ATOL = 1e-5


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("width", WIDTH_PRESETS)
def test_parameter_counts_and_keys(width):
    ours = MobileViTV2ForImageClassification(MobileViTV2Config.from_width(width, num_labels=1000))
    theirs = transformers.MobileViTV2ForImageClassification(
        transformers.MobileViTV2Config(width_multiplier=width, num_labels=1000)
    )
    assert n_params(ours) == n_params(theirs)
    assert round(n_params(ours) / 1e6, 3) == SPEC_PARAMS_M[width][0]
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    assert all(ours_sd[k].shape == theirs_sd[k].shape for k in ours_sd)
    if width == 1.0:
        assert len(ours_sd) == 269


@pytest.mark.parametrize("width", [0.5, 1.0, 2.0])
def test_segmentation_parameter_counts_and_keys(width):
    ours = MobileViTV2ForSemanticSegmentation(MobileViTV2Config.from_width(width, num_labels=21, output_stride=16))
    theirs = transformers.MobileViTV2ForSemanticSegmentation(
        transformers.MobileViTV2Config(width_multiplier=width, num_labels=21, output_stride=16)
    )
    assert n_params(ours) == n_params(theirs)
    assert round(n_params(ours) / 1e6, 2) == SPEC_PARAMS_M[width][1]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    if width == 1.0:
        assert len(ours.state_dict()) == 305


@pytest.fixture(scope="module", params=[0.5, 1.0])
def classifier_pair(request, tmp_path_factory):
    theirs = hf_model("classification", seed=1, width_multiplier=request.param, num_labels=10)
    path = tmp_path_factory.mktemp(f"hf_cls_{request.param}")
    theirs.save_pretrained(path)
    ours = MobileViTV2ForImageClassification.from_pretrained(path)
    return theirs, ours


@pytest.mark.parametrize("size", [(256, 256), (192, 320), (224, 224)])
def test_classification_outputs_match(classifier_pair, size):
    theirs, ours = classifier_pair
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
    labels = torch.tensor([3, 7])
    with torch.no_grad():
        expected = theirs(x, labels=labels, output_hidden_states=True)
        got = ours(x, labels=labels, output_hidden_states=True)
        expected_base = theirs.mobilevitv2(x)
        got_base = ours.mobilevitv2(x)
    assert_nontrivial(expected.logits, "oracle logits")
    assert_close_fp32(got.logits, expected.logits)
    assert_close_fp32(got_base.pooler_output, expected_base.pooler_output)
    assert_close_fp32(got_base.last_hidden_state, expected_base.last_hidden_state)
    assert len(got.hidden_states) == len(expected.hidden_states) == 5
    for i, (g, e) in enumerate(zip(got.hidden_states, expected.hidden_states)):
        assert_nontrivial(e, f"oracle hidden state {i}")
        assert g.shape == e.shape
        assert_close_fp32(g, e, f"hidden state {i}")
    assert abs(got.loss.item() - expected.loss.item()) <= ATOL


def test_224_reproduces_transformers_zero_fill(classifier_pair):
    """At 224x224 the stage-5 map is 7x7: the block's fold leaves the last row/column at zero, so
    conv_projection outputs the per-channel BN response to zero there (transformers' behaviour)."""
    _, ours = classifier_pair
    stage5 = ours.mobilevitv2.encoder.layer[4]
    seen = {}
    handle = stage5.conv_projection.register_forward_hook(lambda m, inp, out: seen.update(inp=inp[0]))
    with torch.no_grad():
        ours(torch.randn(1, 3, 224, 224))
    handle.remove()
    folded = seen["inp"]
    assert folded.shape[-2:] == (7, 7)
    assert torch.all(folded[..., 6, :] == 0) and torch.all(folded[..., :, 6] == 0)
    assert folded[..., :6, :6].abs().sum() > 0


@pytest.mark.parametrize("problem_type, labels", [
    ("multi_label_classification", torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])),
    ("regression", torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.1, 0.2]])),
])  # fmt: skip
def test_other_losses_match(tmp_path, problem_type, labels):
    theirs = hf_model("classification", seed=2, width_multiplier=0.5, num_labels=3, problem_type=problem_type)
    theirs.save_pretrained(tmp_path)
    ours = MobileViTV2ForImageClassification.from_pretrained(tmp_path)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        expected, got = theirs(x, labels=labels).loss, ours(x, labels=labels).loss
    assert expected.item() > 0
    assert abs(got.item() - expected.item()) <= ATOL


@pytest.mark.parametrize("output_stride", [16, 8])
def test_segmentation_outputs_match(tmp_path, output_stride):
    theirs = hf_model("segmentation", seed=3, width_multiplier=0.5, num_labels=5, output_stride=output_stride)
    theirs.save_pretrained(tmp_path)
    ours = MobileViTV2ForSemanticSegmentation.from_pretrained(tmp_path)
    x = torch.randn(2, 3, 128, 160)
    labels = torch.randint(0, 5, (2, 128, 160))
    labels[0, :10] = 255  # ignored
    with torch.no_grad():
        expected = theirs(x, labels=labels, output_hidden_states=True)
        got = ours(x, labels=labels, output_hidden_states=True)
    assert got.logits.shape == expected.logits.shape == (2, 5, 128 // output_stride, 160 // output_stride)
    assert_nontrivial(expected.logits, "oracle segmentation logits")
    assert_close_fp32(got.logits, expected.logits)
    assert abs(got.loss.item() - expected.loss.item()) <= ATOL
    for g, e in zip(got.hidden_states, expected.hidden_states):
        assert_close_fp32(g, e)


def test_our_checkpoint_loads_strictly_into_transformers(tmp_path):
    config = MobileViTV2Config.from_width(0.75, num_labels=4)
    ours = MobileViTV2ForImageClassification(config).eval()
    ours.save_pretrained(tmp_path)
    theirs = transformers.MobileViTV2ForImageClassification.from_pretrained(tmp_path).eval()
    theirs_sd = theirs.state_dict()
    for k, v in ours.state_dict().items():  # every tensor arrived, bit for bit
        assert torch.equal(theirs_sd[k], v), k
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert_close_fp32(ours(x).logits, theirs(x).logits)


def test_segmentation_checkpoint_round_trip_into_transformers(tmp_path):
    ours = MobileViTV2ForSemanticSegmentation(MobileViTV2Config.from_width(0.5, num_labels=3, output_stride=16)).eval()
    ours.save_pretrained(tmp_path)
    theirs = transformers.MobileViTV2ForSemanticSegmentation.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert_close_fp32(ours(x).logits, theirs(x).logits)


def test_bare_backbone_loads_from_head_checkpoint(tmp_path):
    theirs = hf_model("classification", seed=4, width_multiplier=0.5, num_labels=3)
    theirs.save_pretrained(tmp_path)
    backbone = MobileViTV2Model.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        expected = theirs.mobilevitv2(x).pooler_output
        assert_close_fp32(backbone(x).pooler_output, expected)


def test_tuple_outputs_like_transformers(classifier_pair):
    theirs, ours = classifier_pair
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        got = ours(x, output_hidden_states=True, return_dict=False)
        expected = theirs(x, output_hidden_states=True, return_dict=False)
    assert len(got) == len(expected) == 2
    assert_close_fp32(got[0], expected[0])
