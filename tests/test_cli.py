"""The mobilevitv2 command: predict, segment, convert, export-onnx, bench; one-line errors, never tracebacks."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from convert_utils import source_state_dict
from image_utils import synthetic_photo
from mobilevitv2 import (
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2ImageProcessor,
)
from mobilevitv2.cli import palette
from cli_utils import assert_one_line_error, run
from model_utils import randomize_

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = {0: "cat", 1: "dog", 2: "car", 3: "tree", 4: "boat", 5: "lamp"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cls = randomize_(MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5, id2label=LABELS)), seed=1)
    cls.eval().save_pretrained(root / "cls")  # no preprocessor_config.json: the CLI's defaults apply
    cls.save_pretrained(root / "cls_rgb")
    MobileViTV2ImageProcessor(size=160, crop_size=128, channel_order="rgb").save_pretrained(root / "cls_rgb")
    seg_config = MobileViTV2Config(
        width_multiplier=0.5, output_stride=16, aspp_out_channels=32, id2label={0: "background", 1: "sky", 2: "road", 3: "car"}
    )
    randomize_(MobileViTV2ForSemanticSegmentation(seg_config), seed=2).eval().save_pretrained(root / "seg")
    MobileViTV2ImageProcessor(size=128).save_pretrained(root / "seg")
    synthetic_photo(301, 199, seed=1).save(root / "photo.jpg", quality=90)
    synthetic_photo(150, 220, seed=2).convert("L").save(root / "grey.png")
    synthetic_photo(180, 180, seed=3).convert("RGBA").save(root / "rgba.png")
    (root / "broken.jpg").write_bytes(b"this is not a JPEG")
    return root


def expected_probabilities(model_dir, image_path, processor):
    model = MobileViTV2ForImageClassification.from_pretrained(model_dir)
    with torch.no_grad():
        logits = model(processor(Image.open(image_path), return_tensors="pt")["pixel_values"]).logits
    return logits.softmax(-1)[0]


def test_predict_json_matches_the_model(files, capsys):
    code, out, err = run(["predict", files / "photo.jpg", files / "grey.png", files / "rgba.png", "--model", files / "cls", "--json", "--top-k", "3"], capsys)
    assert code == 0
    assert "no preprocessor_config.json" in err  # says which preprocessing it fell back to
    results = json.loads(out)
    assert [r["image"] for r in results] == [str(files / n) for n in ("photo.jpg", "grey.png", "rgba.png")]
    default = MobileViTV2ImageProcessor(size=288, crop_size=256)
    probs = expected_probabilities(files / "cls", files / "photo.jpg", default)
    top = probs.topk(3)
    predictions = results[0]["predictions"]
    assert [p["index"] for p in predictions] == top.indices.tolist()
    assert [p["label"] for p in predictions] == [LABELS[i] for i in top.indices.tolist()]
    assert np.allclose([p["probability"] for p in predictions], top.values.tolist(), atol=1e-5)
    assert len(set(json.dumps(r["predictions"]) for r in results)) == 3  # different images, different answers


def test_predict_table_uses_the_preprocessor_config(files, capsys):
    code, out, err = run(["predict", files / "photo.jpg", "--model", files / "cls_rgb", "--top-k", "2", "--attn-implementation", "reference"], capsys)
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert lines[0] == str(files / "photo.jpg") and len(lines) == 3
    probs = expected_probabilities(files / "cls_rgb", files / "photo.jpg", MobileViTV2ImageProcessor.from_pretrained(files / "cls_rgb"))
    best = int(probs.argmax())
    assert lines[1].split() == [f"{probs[best].item():.2%}", LABELS[best]]


def test_predict_with_the_inference_fusions(files, capsys, monkeypatch):
    """--conv-implementation and --transformer-implementation reach the model: its fused ops are called with
    the backend asked for (and run here on the reference backend, so this tests the plumbing quickly; the
    kernels have their own tests), and the answer is the eager one."""
    import mobilevitv2_kernels as mk

    requested = []
    for name in ("inverted_residual", "transformer_layer"):
        real = getattr(mk, name)

        def on_reference(*args, _real=real, _name=name, **kwargs):
            requested.append((_name, kwargs.pop("backend")))
            return _real(*args, backend="reference", **kwargs)

        monkeypatch.setattr(mk, name, on_reference)
    argv = ["predict", files / "photo.jpg", "--model", files / "cls", "--json", "--top-k", "3"]
    code, eager_out, _ = run(argv, capsys)
    assert code == 0 and requested == []
    code, fused_out, _ = run(argv + ["--conv-implementation", "triton", "--transformer-implementation", "triton"], capsys)
    assert code == 0
    assert sorted(set(requested)) == [("inverted_residual", "triton"), ("transformer_layer", "triton")]
    eager, fused = json.loads(eager_out)[0]["predictions"], json.loads(fused_out)[0]["predictions"]
    assert [p["index"] for p in fused] == [p["index"] for p in eager]
    assert np.allclose([p["probability"] for p in fused], [p["probability"] for p in eager], atol=1e-5)
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error
        run(argv + ["--transformer-implementation", "fast"], capsys)
    assert exit_info.value.code == 2 and "invalid choice: 'fast'" in capsys.readouterr().err


def test_segment_writes_full_size_mask_and_overlay(files, capsys, tmp_path):
    mask_path, overlay_path = tmp_path / "out" / "mask.png", tmp_path / "out" / "overlay.png"
    code, out, _ = run(["segment", files / "photo.jpg", "--model", files / "seg", "--out", mask_path, "--overlay", overlay_path], capsys)
    assert code == 0 and "wrote" in out
    image = Image.open(files / "photo.jpg")
    mask_image = Image.open(mask_path)
    assert mask_image.mode == "P" and mask_image.size == image.size
    mask = np.asarray(mask_image)
    # the same computation by hand: resize without crop, model, upsample logits to the image size, argmax
    processor = MobileViTV2ImageProcessor.from_pretrained(files / "seg", do_center_crop=False)
    model = MobileViTV2ForSemanticSegmentation.from_pretrained(files / "seg")
    with torch.no_grad():
        outputs = model(processor(image, return_tensors="pt")["pixel_values"])
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[(image.height, image.width)])[0]
    assert np.array_equal(mask, expected.numpy())
    assert len(np.unique(mask)) > 1
    overlay = np.asarray(Image.open(overlay_path), dtype=np.float32)
    blend = np.round(0.5 * np.asarray(image.convert("RGB"), dtype=np.float32) + 0.5 * palette(4)[mask])
    assert overlay.shape == (image.height, image.width, 3) and np.array_equal(overlay, blend)
    for name in ("background", "sky", "road", "car"):
        if (mask == list(("background", "sky", "road", "car")).index(name)).any():
            assert name in out


def test_palette_is_distinct():
    colours = palette(21)
    assert colours[0].tolist() == [0, 0, 0] and colours[1].tolist() == [128, 0, 0] and colours[15].tolist() == [192, 128, 128]
    assert len({tuple(c) for c in colours}) == 21


def test_user_errors_are_one_line(files, capsys, monkeypatch, tmp_path):
    cases = [
        (["predict", files / "missing.jpg", "--model", files / "cls"], ["no image file", "missing.jpg"]),
        (["predict", files / "broken.jpg", "--model", files / "cls"], ["cannot read", "broken.jpg"]),
        (["predict", files / "photo.jpg", "--model", files / "seg"], ["MobileViTV2ForSemanticSegmentation", "predict"]),
        (["segment", files / "photo.jpg", "--model", files / "cls", "--out", tmp_path / "m.png"], ["MobileViTV2ForImageClassification"]),
        (["predict", files / "photo.jpg", "--model", tmp_path / "no" / "such" / "dir"], ["no checkpoint directory"]),
        (["predict", files / "photo.jpg", "--model", files / "photo.jpg"], ["is a file"]),
    ]
    for argv, fragments in cases:
        code, _, err = run(argv, capsys)
        assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "m.png").exists()

    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise ConnectionError("Network is unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    code, _, err = run(["predict", files / "photo.jpg", "--model", "apple/mobilevitv2-1.0-imagenet1k-256"], capsys)
    assert_one_line_error(code, err, "could not fetch", "Hugging Face Hub", "unreachable")


def test_convert_command(files, capsys, tmp_path):
    model = MobileViTV2ForImageClassification.from_pretrained(files / "cls")
    torch.save(source_state_dict(model, "timm"), tmp_path / "timm.pth")
    (tmp_path / "labels.txt").write_text("\n".join(LABELS.values()) + "\n")
    code, out, _ = run(["convert", "--from", "timm", tmp_path / "timm.pth", "--out", tmp_path / "conv", "--labels", tmp_path / "labels.txt"], capsys)
    assert code == 0 and "width 0.5" in out and "6 labels" in out
    converted = MobileViTV2ForImageClassification.from_pretrained(tmp_path / "conv")
    assert converted.config.id2label == LABELS
    assert all(torch.equal(converted.state_dict()[k], v) for k, v in model.state_dict().items())
    code, _, err = run(["convert", "--from", "ml-cvnets", tmp_path / "timm.pth", "--out", tmp_path / "bad"], capsys)
    assert_one_line_error(code, err, "look like timm keys")
    code, _, err = run(["convert", "--from", "timm", tmp_path / "absent.pt", "--out", tmp_path / "bad"], capsys)
    assert_one_line_error(code, err, "no checkpoint file")


def test_export_onnx_command(files, capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    code, out, _ = run(["export-onnx", "--model", files / "cls", "--out", tmp_path / "m.onnx", "--height", "128", "--width", "160"], capsys)
    assert code == 0 and (tmp_path / "m.onnx").is_file()
    assert "opset 17" in out and "[batch, 3, 128, 160]" in out
    error = float(out.rsplit("max |diff| ", 1)[1])
    assert error < 1e-4


def test_bench_dispatch(capsys, monkeypatch):
    import mobilevitv2.bench

    seen = []
    fake = type(sys)("mobilevitv2.bench.command")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "mobilevitv2.bench.command", fake)
    monkeypatch.setattr(mobilevitv2.bench, "command", fake, raising=False)
    code, _, _ = run(["bench", "--reps", "1", "--device", "cpu"], capsys)
    assert code == 0 and seen == [["--reps", "1", "--device", "cpu"]]
    monkeypatch.setitem(sys.modules, "mobilevitv2.bench.command", None)  # an installation without it
    monkeypatch.delattr(mobilevitv2.bench, "command")
    code, _, err = run(["bench"], capsys)
    assert_one_line_error(code, err, "benchmark is not available")


def test_module_entry_point(files):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    ok = subprocess.run(
        [sys.executable, "-m", "mobilevitv2.cli", "predict", str(files / "photo.jpg"), "--model", str(files / "cls_rgb"), "--json", "--top-k", "1"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)[0]["predictions"][0]["label"] in LABELS.values()
