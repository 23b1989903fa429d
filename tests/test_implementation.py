"""One mechanism for implementation choices: validated once when set, stored on the modules that use them,
never read from the config or passed through forward; one switch for every fused path; never saved."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

import mobilevitv2_kernels as mk
from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification, implementation
from mobilevitv2.blocks import MobileViTV2Layer, MobileViTV2LinearSelfAttention, MobileViTV2Transformer, MobileViTV2TransformerLayer
from mobilevitv2.layers import MobileViTV2InvertedResidual


def small_model():
    return MobileViTV2ForImageClassification(MobileViTV2Config.from_width(0.5, num_labels=2)).eval()


def stored(model) -> dict[str, set]:
    """part -> the set of values stored on the modules that use it."""
    values = {part: set() for part in implementation.PARTS}
    for module in model.modules():
        for part, spec in implementation.PARTS.items():
            if hasattr(type(module), spec.attribute):
                values[part].add(getattr(module, spec.attribute))
    return values


def test_defaults_and_where_they_are_stored():
    model = small_model()
    assert model.implementation == {"attention": "auto", "conv": "reference", "transformer": "reference"}
    assert stored(model) == {"attention": {"auto"}, "conv": {None}, "transformer": {None}}
    # every module that uses a part carries it (the block: attention and conv; the layers their own)
    assert hasattr(MobileViTV2Layer, "attention_backend") and hasattr(MobileViTV2Layer, "conv_backend")
    assert hasattr(MobileViTV2LinearSelfAttention, "attention_backend")
    assert hasattr(MobileViTV2InvertedResidual, "conv_backend")
    assert hasattr(MobileViTV2TransformerLayer, "transformer_backend")


def test_one_switch_sets_every_part():
    model = small_model().set_implementation("fused")
    assert model.implementation == {part: "auto" for part in implementation.PARTS}
    assert stored(model) == {part: {"auto"} for part in implementation.PARTS}
    assert model.mobilevitv2.implementation == model.implementation  # the backbone inside knows too
    model.mobilevitv2.set_implementation(conv="reference")  # and the other way round
    assert model.implementation["conv"] == "reference"
    model.set_implementation("reference")
    assert stored(model) == {part: {None} for part in implementation.PARTS}
    model.set_implementation("fused", conv="reference")  # a part overrides the preset
    assert model.implementation == {"attention": "auto", "conv": "reference", "transformer": "auto"}


def test_bad_choices_name_the_problem_and_change_nothing(monkeypatch):
    model = small_model()
    before = model.implementation
    with pytest.raises(ValueError, match="preset must be one of"):
        model.set_implementation("fastest")
    with pytest.raises(ValueError, match="conv_implementation must be one of"):
        model.set_implementation(conv="cuda")
    with pytest.raises(TypeError, match="unknown part"):
        implementation.resolve(attn="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the Triton backend cannot run on CPU tensors then
    if not torch.cuda.is_available():
        with pytest.raises(mk.BackendUnavailableError, match="transformer_implementation='triton' cannot run"):
            model.set_implementation(transformer="triton")
    assert model.implementation == before


def test_the_old_reference_word_still_works_with_one_warning():
    implementation._warned.discard("eager")
    model = small_model()
    with pytest.warns(FutureWarning, match="'eager' is now called 'reference'"):
        model.set_attn_implementation("eager")
    assert model.attn_implementation == "reference" and stored(model)["attention"] == {None}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.set_conv_implementation("eager")  # once per process


def test_choices_are_not_config_fields_and_never_saved(tmp_path):
    implementation._warned.discard("config")
    with pytest.warns(FutureWarning, match="not part of MobileViTV2Config"):
        config = MobileViTV2Config.from_width(0.5, num_labels=2, transformer_implementation="auto")
    assert "transformer_implementation" not in config.to_dict()
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        MobileViTV2Config(attn_implementation="flash")
    # a config.json that carries one (written by an older version) describes no architecture: ignored
    assert MobileViTV2Config.from_dict({"attn_implementation": "triton"})._implementation_choices == {}
    model = MobileViTV2ForImageClassification(config)
    assert model.transformer_implementation == "auto"  # handed to the model built from it
    model.set_implementation("fused").save_pretrained(tmp_path)
    text = (tmp_path / "config.json").read_text()
    assert "implementation" not in text
    assert MobileViTV2ForImageClassification.from_pretrained(tmp_path).implementation == small_model().implementation
    loaded = MobileViTV2ForImageClassification.from_pretrained(tmp_path, implementation="fused", conv_implementation="reference")
    assert loaded.implementation == {"attention": "auto", "conv": "reference", "transformer": "auto"}


def test_forward_takes_no_backend_argument():
    for cls in (MobileViTV2Layer, MobileViTV2Transformer, MobileViTV2TransformerLayer, MobileViTV2LinearSelfAttention):
        assert list(inspect.signature(cls.forward).parameters) == ["self", "x"], cls


def test_auto_uses_the_fused_path_only_where_it_is_faster(monkeypatch):
    x = torch.zeros(1)
    assert implementation.backend_for("auto", "conv", x) is None  # the CPU is not in FUSED_IS_FASTER
    monkeypatch.setitem(implementation.FUSED_IS_FASTER, "conv", frozenset({"cpu"}))
    assert implementation.backend_for("auto", "conv", x) == "auto"
    assert implementation.backend_for("triton", "transformer", x) == "triton"  # an explicit choice is kept
    assert implementation.backend_for("reference", "attention", x) is None
    # The transformer layer's fused op pays only from FUSED_MIN_PATCHES patches on.
    monkeypatch.setitem(implementation.FUSED_IS_FASTER, "transformer", frozenset({"cpu"}))
    n = implementation.FUSED_MIN_PATCHES["transformer"]
    assert implementation.backend_for("auto", "transformer", torch.zeros(1, 8, 4, n)) == "auto"
    assert implementation.backend_for("auto", "transformer", torch.zeros(1, 8, 4, n - 1)) is None
    assert implementation.backend_for("triton", "transformer", torch.zeros(1, 8, 4, n - 1)) == "triton"
