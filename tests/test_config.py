"""MobileViTV2Config: transformers' fields and defaults, width presets, old hub configs, JSON round trips."""

import json

import pytest

from mobilevitv2 import WIDTH_PRESETS, MobileViTV2Config

# Spec section 1.3: (C0, C1..C5), (d3, d4, d5) per width.
SPEC_WIDTHS = {
    0.5: ((16, 32, 64, 128, 192, 256), (64, 96, 128)),
    0.75: ((24, 48, 96, 192, 288, 384), (96, 144, 192)),
    1.0: ((32, 64, 128, 256, 384, 512), (128, 192, 256)),
    1.25: ((40, 80, 160, 320, 480, 640), (160, 240, 320)),
    1.5: ((48, 96, 192, 384, 576, 768), (192, 288, 384)),
    1.75: ((56, 112, 224, 448, 672, 896), (224, 336, 448)),
    2.0: ((64, 128, 256, 512, 768, 1024), (256, 384, 512)),
}


def test_defaults_match_transformers():
    transformers = pytest.importorskip("transformers")
    theirs = transformers.MobileViTV2Config().to_dict()
    ours = MobileViTV2Config().to_dict()
    architecture_fields = [
        "num_channels", "image_size", "patch_size", "expand_ratio", "hidden_act", "conv_kernel_size",
        "output_stride", "classifier_dropout_prob", "initializer_range", "layer_norm_eps", "aspp_out_channels",
        "atrous_rates", "aspp_dropout_prob", "semantic_loss_ignore_index", "n_attn_blocks",
        "base_attn_unit_dims", "width_multiplier", "ffn_multiplier", "attn_dropout", "ffn_dropout",
    ]  # fmt: skip
    for name in architecture_fields:
        assert ours[name] == theirs[name], name
    assert MobileViTV2Config().num_labels == transformers.MobileViTV2Config().num_labels == 2


@pytest.mark.parametrize("width", WIDTH_PRESETS)
def test_width_presets_match_spec(width):
    config = MobileViTV2Config.from_width(width)
    channels, dims = SPEC_WIDTHS[width]
    assert config.stage_channels == channels
    assert config.attn_dims == dims


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="no preset for width 0.6"):
        MobileViTV2Config.from_width(0.6)


def test_old_hub_config_reads(tmp_path):
    # The shape of the first-generation hub configs: no n_attn_blocks / base_attn_unit_dims /
    # ffn_multiplier, an unused mlp_ratio, and the class spelled MobileViTv2.
    old = {
        "architectures": ["MobileViTv2ForSemanticSegmentation"],
        "model_type": "mobilevitv2",
        "mlp_ratio": 2.0,
        "width_multiplier": 1.5,
        "output_stride": 16,
        "image_size": 512,
        "id2label": {str(i): f"class{i}" for i in range(21)},
        "label2id": {f"class{i}": i for i in range(21)},
        "transformers_version": "4.29.0.dev0",
    }
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = MobileViTV2Config.from_pretrained(tmp_path)
    assert config.n_attn_blocks == [2, 4, 3]
    assert config.base_attn_unit_dims == [128, 192, 256]
    assert config.ffn_multiplier == 2
    assert config.num_labels == 21 and config.id2label[20] == "class20"
    assert config.output_stride == 16 and config.width_multiplier == 1.5
    assert "mlp_ratio" not in config.to_dict()


def test_json_round_trip_and_transformers_reads_ours(tmp_path):
    config = MobileViTV2Config(width_multiplier=0.75, num_labels=5, output_stride=8, non_divisible_patching="resize")
    config.save_pretrained(tmp_path)
    again = MobileViTV2Config.from_pretrained(tmp_path)
    assert again == config
    written = json.loads((tmp_path / "config.json").read_text())
    assert "attn_implementation" not in written  # a runtime choice, never saved
    assert written["id2label"]["4"] == "LABEL_4"
    transformers = pytest.importorskip("transformers")
    theirs = transformers.MobileViTV2Config.from_pretrained(tmp_path)
    assert theirs.width_multiplier == 0.75 and theirs.num_labels == 5 and theirs.output_stride == 8


def test_transformers_config_reads_into_ours(tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.MobileViTV2Config(width_multiplier=1.25, num_labels=7, ffn_dropout=0.1).save_pretrained(tmp_path)
    config = MobileViTV2Config.from_pretrained(tmp_path)
    assert config.width_multiplier == 1.25 and config.num_labels == 7 and config.ffn_dropout == 0.1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"output_stride": 4}, "output_stride must be 8, 16 or 32"),
        ({"atrous_rates": [6, 12]}, "atrous_rates needs exactly 3 values"),
        ({"non_divisible_patching": "crop"}, "non_divisible_patching must be one of"),
        ({"model_type": "vit"}, "expected 'mobilevitv2'"),
    ],
)
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MobileViTV2Config.from_dict(kwargs)
