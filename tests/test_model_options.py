"""The two documented departures from transformers: ml-cvnets/timm patch resizing and local-conv dilation."""

import torch
import torch.nn.functional as F

from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation, MobileViTV2Model


def test_resize_mode_runs_blocks_on_the_resized_map():
    config = MobileViTV2Config.from_width(0.5, non_divisible_patching="resize")
    model = MobileViTV2Model(config).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        hidden = model(x, output_hidden_states=True).hidden_states
        assert hidden[-1].shape[-2:] == (8, 8)  # 7x7 stage-5 map resized up, larger size kept (ml-cvnets)
        # Independent check: the stage-5 block in resize mode equals the same weights fed with the input
        # resized by hand (bilinear, align_corners=True) in transformers' zero-fill mode.
        stage5 = model.encoder.layer[4]
        down = stage5.downsampling_layer(hidden[-2])
        assert down.shape[-2:] == (7, 7)
        by_hand = F.interpolate(down, size=(8, 8), mode="bilinear", align_corners=True)
        stage5.resize_to_patch_multiple = False
        stage5_identity = stage5.downsampling_layer
        stage5.downsampling_layer = torch.nn.Identity()
        expected = stage5(by_hand)
        stage5.downsampling_layer = stage5_identity
        stage5.resize_to_patch_multiple = True
        assert torch.allclose(hidden[-1], expected, atol=1e-6)


def test_zero_fill_mode_keeps_size():
    model = MobileViTV2Model(MobileViTV2Config.from_width(0.5)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).last_hidden_state.shape[-2:] == (7, 7)


def test_resize_mode_equals_zero_fill_at_divisible_sizes():
    a = MobileViTV2ForImageClassification(MobileViTV2Config.from_width(0.5, num_labels=3)).eval()
    b = MobileViTV2ForImageClassification(MobileViTV2Config.from_width(0.5, num_labels=3, non_divisible_patching="resize")).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(a(x).logits, b(x).logits)


def test_local_conv_dilation_option():
    def local_dilations(**kw):
        model = MobileViTV2ForSemanticSegmentation(MobileViTV2Config.from_width(0.5, num_labels=3, **kw))
        return [model.mobilevitv2.encoder.layer[s].conv_kxk.convolution.dilation[0] for s in (2, 3, 4)]

    assert local_dilations(output_stride=16) == [1, 1, 1]  # transformers
    assert local_dilations(output_stride=16, dilate_local_conv=True) == [1, 1, 2]  # ml-cvnets / timm
    assert local_dilations(output_stride=8, dilate_local_conv=True) == [1, 2, 4]
    model = MobileViTV2ForSemanticSegmentation(
        MobileViTV2Config.from_width(0.5, num_labels=3, output_stride=8, dilate_local_conv=True)
    ).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 128)).logits.shape == (1, 3, 16, 16)
