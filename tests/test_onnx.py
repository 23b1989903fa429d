"""ONNX export at opset 17: no Col2Im, no data-dependent Resize, onnxruntime agrees with PyTorch."""

import pytest
import torch

from mobilevitv2 import MobileViTV2Backbone, MobileViTV2Config, MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation
from mobilevitv2.heads import MobileViTV2ASPPPooling
from mobilevitv2.onnx_export import export_onnx, max_abs_difference
from model_utils import assert_nontrivial, randomize_

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def graph(path):
    model = onnx.load(str(path))
    return model, {node.op_type for node in model.graph.node}


def constant_outputs(model):
    return {init.name for init in model.graph.initializer} | {
        out for node in model.graph.node if node.op_type == "Constant" for out in node.output
    }


def check_runtime(model, path, shape, tol=1e-4):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
    reference = out[0] if isinstance(out, list) else out.logits
    assert_nontrivial(reference, "PyTorch output")
    scale = max(1.0, reference.abs().max().item())
    assert max_abs_difference(model, path, x) <= tol * scale


def test_classifier_exports_at_opset_17_with_plain_ops(tmp_path):
    model = randomize_(MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5, num_labels=10)), seed=1).eval()
    path = export_onnx(model, tmp_path / "cls.onnx")
    proto, ops = graph(path)
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {17}
    assert "Col2Im" not in ops and "Resize" not in ops
    assert [i.name for i in proto.graph.input] == ["pixel_values"] and [o.name for o in proto.graph.output] == ["logits"]
    check_runtime(model, path, (3, 3, 256, 256))  # batch 3 through a graph exported with batch 1


def test_non_divisible_size_and_segmentation_head(tmp_path):
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=4, output_stride=16, aspp_out_channels=32)
    model = randomize_(MobileViTV2ForSemanticSegmentation(config), seed=2).eval()
    path = export_onnx(model, tmp_path / "seg.onnx", height=200, width=232)  # 25x29 and 13x15 maps: zero fill
    _, ops = graph(path)
    assert "Col2Im" not in ops and "Resize" not in ops  # the ASPP image pooling became a broadcast
    assert "Pad" in ops  # fold's zero fill of the uncovered row/column
    assert isinstance(model.segmentation_head.aspp.convs[4], MobileViTV2ASPPPooling)  # the caller's model is untouched
    check_runtime(model, path, (2, 3, 200, 232))


def test_resize_patching_has_only_constant_size_resizes(tmp_path):
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=3, non_divisible_patching="resize")
    model = randomize_(MobileViTV2ForImageClassification(config), seed=3).eval()
    path = export_onnx(model, tmp_path / "resize.onnx", height=224, width=160)  # 7x5 stage-5 map -> 8x6
    proto, ops = graph(path)
    resizes = [node for node in proto.graph.node if node.op_type == "Resize"]
    assert resizes, "expected the block resizes of the 'resize' patching mode"
    producers = {out: node for node in proto.graph.node for out in node.output}
    constants = constant_outputs(proto)
    for node in resizes:
        sizes = producers[node.input[3]]  # (N, C) from the input's shape, then the spatial size
        assert sizes.op_type == "Concat" and sizes.input[-1] in constants, f"{node.name}: data-dependent size"
    check_runtime(model, path, (2, 3, 224, 160))


def test_backbone_features_export(tmp_path):
    backbone = randomize_(MobileViTV2Backbone(MobileViTV2Config(width_multiplier=0.5), out_indices=(1, 3)), seed=4).eval()
    path = export_onnx(backbone, tmp_path / "backbone.onnx", height=128, width=128)
    proto, _ = graph(path)
    assert [o.name for o in proto.graph.output] == ["stage1", "stage3"]
    check_runtime(backbone, path, (2, 3, 128, 128))


def test_fused_settings_never_reach_the_exported_graph(tmp_path):
    """A model set to the fused kernels exports the reference path: only standard ONNX ops."""
    import mobilevitv2_kernels

    if "triton" not in mobilevitv2_kernels.available_backends("cpu"):
        pytest.skip("needs the Triton interpreter to set the fused implementations on the CPU")
    model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5, num_labels=3)).eval()
    model.set_attn_implementation("triton").set_conv_implementation("triton")
    path = export_onnx(model, tmp_path / "fused.onnx", 64, 64)
    proto, _ = graph(path)
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}
    assert model.attn_implementation == model.conv_implementation == "triton"  # the caller's model is untouched
