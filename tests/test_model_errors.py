"""Bad inputs and bad checkpoints give errors that say what was expected."""

import json

import pytest
import torch

from mobilevitv2 import (
    CheckpointError,
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2Model,
)


@pytest.fixture(scope="module")
def model():
    return MobileViTV2ForImageClassification(MobileViTV2Config.from_width(0.5, num_labels=3)).eval()


@pytest.mark.parametrize(
    "x, error, message",
    [
        (torch.randn(1, 1, 64, 64), ValueError, r"has 1 channels but the model expects 3"),
        (torch.randn(3, 64, 64), ValueError, r"must be 4-D \(batch, channels, height, width\), got shape \(3, 64, 64\)"),
        (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), TypeError, r"floating-point.*torch.uint8"),
        (torch.randn(1, 3, 31, 31), ValueError, r"31x31 is too small: the stage-5 feature map would be 1x1.*at least 33x33"),
    ],
)
def test_bad_pixel_values(model, x, error, message):
    with pytest.raises(error, match=message):
        model(x)


def test_smallest_size_runs(model):
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 33)).logits.shape == (1, 3)


def test_too_small_respects_output_stride():
    seg = MobileViTV2ForSemanticSegmentation(MobileViTV2Config.from_width(0.5, num_labels=3, output_stride=8)).eval()
    with pytest.raises(ValueError, match="at least 9x9"):
        seg(torch.randn(1, 3, 8, 8))


def test_num_labels_one_segmentation_loss():
    seg = MobileViTV2ForSemanticSegmentation(MobileViTV2Config.from_width(0.5, num_labels=1)).eval()
    with pytest.raises(ValueError, match="num_labels > 1"):
        seg(torch.randn(1, 3, 64, 64), labels=torch.zeros(1, 64, 64, dtype=torch.long))


@pytest.fixture
def saved(tmp_path, model):
    model.save_pretrained(tmp_path)
    return tmp_path


def test_missing_and_unexpected_keys_are_listed(saved):
    from safetensors.torch import load_file, save_file

    state = load_file(saved / "model.safetensors")
    state.pop("classifier.bias")
    state["classifier.extra"] = torch.zeros(1)
    save_file(state, saved / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"1 missing keys: classifier.bias.*1 unexpected keys: classifier.extra"):
        MobileViTV2ForImageClassification.from_pretrained(saved)


def test_non_strict_load_warns_and_names_the_keys(saved):
    from safetensors.torch import load_file, save_file

    state = load_file(saved / "model.safetensors")
    state.pop("classifier.bias")
    save_file(state, saved / "model.safetensors")
    with pytest.warns(UserWarning, match="classifier.bias"):
        MobileViTV2ForImageClassification.from_pretrained(saved, strict=False)


def test_shape_mismatch_names_key_and_shapes(saved):
    config = json.loads((saved / "config.json").read_text())
    config["id2label"] = {str(i): f"c{i}" for i in range(5)}
    config.pop("label2id")
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"classifier.weight: checkpoint \(3, 256\) vs model \(5, 256\)"):
        MobileViTV2ForImageClassification.from_pretrained(saved)


def test_unreadable_weights(saved):
    (saved / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="could not read the weights"):
        MobileViTV2ForImageClassification.from_pretrained(saved)


def test_no_weights_and_no_directory(saved, tmp_path):
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors or pytorch_model.bin"):
        MobileViTV2ForImageClassification.from_pretrained(saved)
    with pytest.raises(CheckpointError, match="no checkpoint directory at"):
        MobileViTV2Model.from_pretrained(str(tmp_path / "nowhere" / "deeper"))


def test_pytorch_model_bin_loads(tmp_path, model):
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "pytorch_model.bin").exists() and not (tmp_path / "model.safetensors").exists()
    again = MobileViTV2ForImageClassification.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x).logits, model(x).logits)


def test_unreachable_hub_is_reported(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match=r"could not fetch 'apple/mobilevitv2-1.0-imagenet1k-256' from the Hugging Face Hub"):
        MobileViTV2ForImageClassification.from_pretrained("apple/mobilevitv2-1.0-imagenet1k-256")


def test_wrong_model_type(tmp_path, model):
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "mobilevit"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type 'mobilevit', expected 'mobilevitv2'"):
        MobileViTV2ForImageClassification.from_pretrained(tmp_path)


def test_num_labels_override_gives_a_new_head(saved):
    # The file's id2label (3 labels) must not silently win over an explicit num_labels.
    with pytest.raises(CheckpointError, match=r"classifier.weight: checkpoint \(3, 256\) vs model \(10, 256\)"):
        MobileViTV2ForImageClassification.from_pretrained(saved, num_labels=10)
    with pytest.warns(UserWarning, match=r"classifier.weight"):
        model = MobileViTV2ForImageClassification.from_pretrained(saved, num_labels=10, strict=False)
    assert model.config.num_labels == 10 and model.classifier.out_features == 10
    assert model.config.id2label[9] == "LABEL_9"
    original = MobileViTV2ForImageClassification.from_pretrained(saved)
    assert torch.equal(model.mobilevitv2.conv_stem.convolution.weight, original.mobilevitv2.conv_stem.convolution.weight)
