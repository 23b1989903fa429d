"""Multi-scale features: feature_info, forward_features and MobileViTV2Backbone, 4-channel inputs, freezing."""

import pytest
import torch

from mobilevitv2 import MobileViTV2Backbone, MobileViTV2Config, MobileViTV2ForImageClassification, MobileViTV2Model
from model_utils import assert_close_fp32, hf_model, randomize_

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """A transformers classification checkpoint (random weights) and the model itself."""
    theirs = hf_model("classification", seed=3, width_multiplier=0.5, num_labels=6)
    path = tmp_path_factory.mktemp("hf_cls")
    theirs.save_pretrained(path)
    return path, theirs


@pytest.mark.parametrize(
    "output_stride,reductions", [(32, [2, 4, 8, 16, 32]), (16, [2, 4, 8, 16, 16]), (8, [2, 4, 8, 8, 8])]
)
def test_feature_info(output_stride, reductions):
    model = MobileViTV2Model(MobileViTV2Config(width_multiplier=0.5, output_stride=output_stride))
    info = model.feature_info
    assert [i["stage"] for i in info] == [0, 1, 2, 3, 4]
    assert [i["num_chs"] for i in info] == [32, 64, 128, 192, 256]  # spec 1.3, width 0.5
    assert [i["reduction"] for i in info] == reductions
    assert [i["module"] for i in info] == [f"encoder.layer.{s}" for s in range(5)]
    features = model.eval().forward_features(torch.randn(1, 3, 128, 96))
    for feature, entry in zip(features, info):
        assert feature.shape == (1, entry["num_chs"], 128 // entry["reduction"], 96 // entry["reduction"])


def test_features_match_transformers_hidden_states(hf_checkpoint):
    path, theirs = hf_checkpoint
    x = torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs.mobilevitv2(x, output_hidden_states=True).hidden_states
        backbone = MobileViTV2Backbone.from_pretrained(path, out_indices=(1, 2, 3, 4))  # head dropped
        got = backbone(x)
        reordered = backbone.forward_features(x, stages=(3, 1))
    assert backbone.channels == [64, 128, 192, 256] and backbone.reductions == [4, 8, 16, 32]
    assert len(got) == 4
    for g, e in zip(got, expected[1:]):
        assert_close_fp32(g, e, "stage features")
    assert torch.equal(reordered[0], got[2]) and torch.equal(reordered[1], got[0])


def test_later_stages_are_not_run():
    model = MobileViTV2Model(MobileViTV2Config(width_multiplier=0.5)).eval()
    calls = []
    model.encoder.layer[4].register_forward_hook(lambda *args: calls.append(4))
    model.forward_features(torch.randn(1, 3, 64, 64), stages=(0, 2))
    assert calls == []
    model.forward_features(torch.randn(1, 3, 64, 64), stages=(4,))
    assert calls == [4]
    with pytest.raises(ValueError, match="stages"):
        model.forward_features(torch.randn(1, 3, 64, 64), stages=(5,))
    with pytest.raises(ValueError, match="out_indices"):
        MobileViTV2Backbone(MobileViTV2Config(width_multiplier=0.5), out_indices=())


def test_four_channel_inputs():
    backbone = MobileViTV2Backbone(MobileViTV2Config(width_multiplier=0.5, num_channels=4), out_indices=(2, 4)).eval()
    assert backbone.conv_stem.convolution.weight.shape[1] == 4
    features = backbone(torch.randn(2, 4, 96, 96))
    assert [tuple(f.shape) for f in features] == [(2, 128, 12, 12), (2, 256, 3, 3)]
    with pytest.raises(ValueError, match="4"):
        backbone(torch.randn(2, 3, 96, 96))


def test_pretrained_rgb_stem_adapted_to_four_and_one_channels(hf_checkpoint):
    path, _ = hf_checkpoint
    rgb = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    depth = torch.rand(1, 1, 96, 128, generator=torch.Generator().manual_seed(2))
    three = MobileViTV2Backbone.from_pretrained(path)
    four = MobileViTV2Backbone.from_pretrained(path, num_channels=4)
    one = MobileViTV2ForImageClassification.from_pretrained(path, num_channels=1)  # any class adapts
    with torch.no_grad():
        expected = three(rgb)[-1]
        assert_close_fp32(four(torch.cat([rgb, depth], dim=1))[-1], expected, "RGB + zero-weighted 4th channel")
        grey = rgb.mean(dim=1, keepdim=True)
        assert_close_fp32(
            one(grey).logits,
            MobileViTV2ForImageClassification.from_pretrained(path)(grey.expand(-1, 3, -1, -1)).logits,
            "grey stem",
        )
    assert four.config.num_channels == 4 and expected.std() > 0.05


def test_freeze_keeps_statistics_and_gradients_off():
    backbone = randomize_(MobileViTV2Backbone(MobileViTV2Config(width_multiplier=0.5)), seed=4).freeze()
    head = torch.nn.Sequential(backbone)
    head.train()  # an enclosing model in training mode
    assert backbone.training and all(not m.training for m in backbone.modules() if m is not backbone)
    assert not any(p.requires_grad for p in backbone.parameters())
    x = torch.randn(2, 3, 64, 64)
    before = backbone.encoder.layer[0].layer[0].expand_1x1.normalization.running_mean.clone()
    out = backbone(x)[-1]
    assert torch.equal(backbone.encoder.layer[0].layer[0].expand_1x1.normalization.running_mean, before)
    assert not out.requires_grad
    backbone.freeze(False).train()
    assert all(m.training for m in backbone.modules()) and all(p.requires_grad for p in backbone.parameters())
