"""timm / ml-cvnets -> transformers conversion: renames, round trips with identical logits, refusals.

The timm- and ml-cvnets-style state dicts are made from randomised transformers checkpoints by
tests/convert_utils.py, which renames in the other direction, independently of mobilevitv2.convert.
"""

import json

import pytest
import torch

from mobilevitv2 import (
    CheckpointError,
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
)
from mobilevitv2.convert import convert_checkpoint, read_source_file, rename_key
from mobilevitv2.image_processing import PREPROCESSOR_CONFIG_NAME
from convert_utils import source_state_dict, to_source
from model_utils import assert_nontrivial, hf_model

transformers = pytest.importorskip("transformers")

SEG_KWARGS = dict(width_multiplier=0.5, num_labels=5, output_stride=16, aspp_out_channels=32)

@pytest.fixture(scope="module")
def hf_classifier(tmp_path_factory):
    model = hf_model("classification", seed=5, width_multiplier=0.5, num_labels=7)
    path = tmp_path_factory.mktemp("hf_cls")
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def hf_segmenter(tmp_path_factory):
    model = hf_model("segmentation", seed=6, **SEG_KWARGS)
    path = tmp_path_factory.mktemp("hf_seg")
    model.save_pretrained(path)
    return model, path


def test_spec_examples_rename():
    assert rename_key("conv_1.block.conv.weight", "ml-cvnets") == "mobilevitv2.conv_stem.convolution.weight"
    assert rename_key("layer_1.0.block.exp_1x1.block.norm.running_var", "ml-cvnets") == (
        "mobilevitv2.encoder.layer.0.layer.0.expand_1x1.normalization.running_var"
    )
    assert rename_key("layer_3.1.global_rep.2.weight", "ml-cvnets") == "mobilevitv2.encoder.layer.2.layernorm.weight"
    assert rename_key("encoder.layer_4.1.global_rep.3.pre_norm_ffn.3.block.conv.bias", "ml-cvnets") == (
        "mobilevitv2.encoder.layer.3.transformer.layer.3.ffn.conv2.convolution.bias"
    )
    assert rename_key("seg_head.aspp.aspp_layer.convs.4.aspp_pool.conv_1x1.block.conv.weight", "ml-cvnets") == (
        "segmentation_head.aspp.convs.4.conv_1x1.convolution.weight"
    )
    assert rename_key("seg_head.aux_head.block.0.block.conv.weight", "ml-cvnets") is None
    assert rename_key("stages.3.1.transformer.2.mlp.fc1.bias", "timm") == (
        "mobilevitv2.encoder.layer.3.transformer.layer.2.ffn.conv1.convolution.bias"
    )
    assert rename_key("stages.4.0.conv2_kxk.bn.weight", "timm") == "mobilevitv2.encoder.layer.4.downsampling_layer.conv_3x3.normalization.weight"
    assert rename_key("head.fc.weight", "timm") == "classifier.weight"
    with pytest.raises(KeyError):
        rename_key("stem.conv.weight", "ml-cvnets")


def test_timm_round_trip_identical_logits(hf_classifier, tmp_path):
    theirs, hf_dir = hf_classifier
    src = tmp_path / "mobilevitv2_050.pth"
    torch.save(source_state_dict(theirs, "timm"), src)
    out = tmp_path / "converted"
    convert_checkpoint(src, out, "timm", semantics="transformers")
    converted = MobileViTV2ForImageClassification.from_pretrained(out)
    direct = MobileViTV2ForImageClassification.from_pretrained(hf_dir)
    assert converted.config.width_multiplier == 0.5 and converted.config.num_labels == 7
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = direct(x).logits
        assert torch.equal(converted(x).logits, expected)
        # transformers itself loads the converted directory (strictly) and agrees
        reloaded = transformers.MobileViTV2ForImageClassification.from_pretrained(out).eval()
        assert torch.equal(reloaded(x).logits, theirs(x).logits)
    assert_nontrivial(expected, "logits")
    # the preprocessing the timm weights were trained with
    preprocessing = json.loads((out / PREPROCESSOR_CONFIG_NAME).read_text())
    assert (preprocessing["do_flip_channel_order"], preprocessing["resample"], preprocessing["size"]) == (
        False, 3, {"shortest_edge": 288}
    )  # fmt: skip


def test_cvnets_classification_safetensors_with_labels(hf_classifier, tmp_path):
    from safetensors.torch import save_file

    theirs, _ = hf_classifier
    src = tmp_path / "mobilevitv2-0.5.safetensors"
    save_file(source_state_dict(theirs, "cvnets"), src)
    names = [f"class {i}" for i in range(7)]
    model = convert_checkpoint(src, tmp_path / "out", "ml-cvnets", labels=names)
    assert model.config.id2label[6] == "class 6"
    # "source" semantics at 256x256 classification computes exactly what transformers computes
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x).logits, theirs(x).logits)
    assert model.config.non_divisible_patching == "resize" and model.config.dilate_local_conv


@pytest.mark.parametrize("semantics", ["transformers", "source"])
def test_cvnets_segmentation_round_trip(hf_segmenter, tmp_path, semantics):
    theirs, hf_dir = hf_segmenter
    src = tmp_path / "deeplabv3_mobilevitv2.pt"
    torch.save({"model": source_state_dict(theirs, "cvnets"), "epoch": 50}, src)  # wrapped, with the aux head
    model = convert_checkpoint(src, tmp_path / "out", "ml-cvnets", semantics=semantics)
    assert isinstance(model, MobileViTV2ForSemanticSegmentation)
    assert (model.config.output_stride, model.config.aspp_out_channels, model.config.num_labels) == (16, 32, 5)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    reference = MobileViTV2ForSemanticSegmentation.from_pretrained(
        hf_dir, dilate_local_conv=semantics == "source", non_divisible_patching="resize" if semantics == "source" else "zero_fill"
    )
    loaded = MobileViTV2ForSemanticSegmentation.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        expected = reference(x).logits
        assert torch.equal(model(x).logits, expected) and torch.equal(loaded(x).logits, expected)
        hf_logits = theirs(x).logits
    assert_nontrivial(expected, "segmentation logits")
    # transformers ignores the local conv's dilation (spec section 10.1); the original code does not
    assert torch.equal(expected, hf_logits) == (semantics == "transformers")


def _refusal(tmp_path, state, source="timm", name="bad.pth", **kwargs):
    src = tmp_path / name
    torch.save(state, src)
    with pytest.raises(CheckpointError) as info:
        convert_checkpoint(src, tmp_path / "out", source, **kwargs)
    assert not (tmp_path / "out").exists()  # nothing half-written
    return str(info.value)


def test_refusals_name_the_reason(hf_classifier, tmp_path):
    theirs, _ = hf_classifier
    timm_state = source_state_dict(theirs, "timm")
    assert "look like timm keys" in _refusal(tmp_path, timm_state, source="ml-cvnets")
    assert "transformers keys already" in _refusal(tmp_path, theirs.state_dict())

    bad_shape = dict(timm_state, **{"stages.2.1.conv_1x1.weight": torch.zeros(7, 128, 1, 1)})
    message = _refusal(tmp_path, bad_shape)
    assert "shape mismatch" in message and "encoder.layer.2.conv_1x1.convolution.weight" in message

    missing = {k: v for k, v in timm_state.items() if not k.startswith("stages.4.1.transformer.1.")}
    message = _refusal(tmp_path, missing)
    assert "missing keys" in message and "transformer.layer.1" in message

    no_head = {k: v for k, v in timm_state.items() if not k.startswith("head.")}
    assert "neither an image classifier nor a segmentation head" in _refusal(tmp_path, no_head)
    assert "not a segmentation model" in _refusal(tmp_path, timm_state, task="segmentation")
    assert "not 1000" in _refusal(tmp_path, timm_state, num_labels=1000)
    assert "shape mismatch" in _refusal(tmp_path, timm_state, width=1.0)
    assert "holds a list" in _refusal(tmp_path, [torch.zeros(1)])
    assert "not a state dict of tensors" in _refusal(tmp_path, {"stem.conv.weight": "nope"})
    assert "labels" in _refusal(tmp_path, timm_state, labels=["a", "b"])

    (tmp_path / "garbage.pt").write_bytes(b"\x00 definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="could not read"):
        read_source_file(tmp_path / "garbage.pt")
    with pytest.raises(FileNotFoundError):
        read_source_file(tmp_path / "absent.pth")


def test_width_inference_from_the_stem(tmp_path):
    ours = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.75, num_labels=3))
    state = {to_source(k, "timm"): v for k, v in ours.state_dict().items()}
    state = {"module." + k: v for k, v in state.items()}  # saved from DistributedDataParallel
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    model = convert_checkpoint(tmp_path / "w.pth", tmp_path / "out", "timm")
    assert model.config.width_multiplier == 0.75
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ours.state_dict().items())
