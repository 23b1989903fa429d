"""CPU runtimes: each installed runtime's exported model against the PyTorch fp32 model, the export cache,
predict/segment --runtime, the export command, and the one-line error naming the extra of a missing runtime.

The model is randomised (transformers' init makes every output ~0, so agreement would prove nothing), width
0.5 at 64x64. Bounds are on the max abs logit error, relative to the logits' scale (max |logit|, at least 1):

* fp32 (onnxruntime, OpenVINO with the f32 hint, ExecuTorch/XNNPACK): 1e-4, float rounding in another order.
* OpenVINO fp16 weights: 1e-2. fp16 keeps 11 significant bits (each weight rounded by at most 2^-11 ~ 5e-4
  relative); over the ~30 weight layers these roundings add up to ~1e-3 of the scale (measured 7e-4), so 1e-2
  has a 10x margin and is still far below the logits' spread.
* OpenVINO int8 weights (per-output-channel asymmetric): 0.1. Each weight is rounded to 1/255 of its channel's
  range (up to 0.2% of the range, a few % of a small weight); measured ~3% of the scale, so 10% is a ~3x margin.
* OpenVINO computing in bf16 when asked (8 significant bits): measured ~1%; bound 0.1, and above the fp32 bound,
  which shows the f32 hint is what keeps the default run in fp32.
"""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from image_utils import synthetic_photo
from mobilevitv2 import (
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2ImageProcessor,
    inference,
    runtimes,
)
from cli_utils import assert_one_line_error, run
from mobilevitv2.onnx_export import TwoPassGroupNorm, with_two_pass_group_norms
from model_utils import assert_nontrivial, randomize_

SIZE = 64
LABELS = {i: f"class{i}" for i in range(10)}
FP32, FP16_WEIGHTS, INT8_WEIGHTS, BF16 = 1e-4, 1e-2, 0.1, 0.1
MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "executorch": "executorch"}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def needs(*modules):
    missing = [m for m in modules if not installed(m)]
    extras = ", ".join(f"mobilevitv2[{runtimes.EXTRAS.get(m, m)}]" for m in missing)
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed ({extras})")


def classifier(seed: int = 1) -> MobileViTV2ForImageClassification:
    return randomize_(MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5, id2label=LABELS)), seed).eval()


def pixel_values(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def reference_logits(model, x):
    with torch.no_grad():
        logits = model(x).logits
    assert_nontrivial(logits, "PyTorch logits")
    return logits


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    assert got.shape == expected.shape and got.dtype == torch.float32
    return (got - expected).abs().max().item() / max(1.0, expected.abs().max().item())


@pytest.fixture(scope="module")
def model():
    return classifier()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("export-cache")


@pytest.fixture(scope="module")
def files(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("runtimes")
    model.save_pretrained(root / "cls")
    MobileViTV2ImageProcessor(size=80, crop_size=SIZE).save_pretrained(root / "cls")
    seg_config = MobileViTV2Config(width_multiplier=0.5, aspp_out_channels=32, id2label={0: "background", 1: "sky", 2: "road"})
    randomize_(MobileViTV2ForSemanticSegmentation(seg_config), seed=4).eval().save_pretrained(root / "seg")
    MobileViTV2ImageProcessor(size=SIZE).save_pretrained(root / "seg")
    for seed, (height, width) in enumerate([(90, 120), (120, 90), (100, 100), (64, 96)]):
        synthetic_photo(height, width, seed=seed).save(root / f"photo{seed}.png")
    return root


# ----- the exported models against PyTorch fp32 --------------------------------------------------------------
@pytest.mark.parametrize("runtime", ["torch", pytest.param("onnxruntime", marks=needs("onnxruntime")), pytest.param("openvino", marks=needs("openvino"))])
def test_loaded_runtime_matches_pytorch_fp32(model, cache, runtime):
    forward = runtimes.load(runtime, model, SIZE, SIZE, cache_dir=cache)
    assert forward.precision == "fp32"
    x = pixel_values(batch=3)  # a batch of 3 through files exported with a batch of 1
    error = relative_error(forward(x), reference_logits(model, x))
    assert error <= FP32, f"{runtime}: relative max abs logit error {error:.2e}"
    if runtime == "openvino":  # set explicitly: OpenVINO's default on a bf16-capable CPU is bf16
        assert forward.info["inference_precision"] == str(runtimes.require("openvino").Type.f32)


@needs("openvino")
def test_openvino_bf16_only_when_asked(model, cache):
    ov = runtimes.require("openvino")
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(ValueError, match="no bf16"):
            runtimes.load("openvino", model, SIZE, SIZE, cache_dir=cache, precision="bf16")
        pytest.skip("this CPU has no bf16 in OpenVINO")
    forward = runtimes.load("openvino", model, SIZE, SIZE, cache_dir=cache, precision="bf16")
    assert forward.info["inference_precision"] == str(ov.Type.bf16)
    x = pixel_values()
    error = relative_error(forward(x), reference_logits(model, x))
    assert FP32 < error <= BF16, f"bf16 relative error {error:.2e}"


@pytest.mark.parametrize("groups, affine", [(1, True), (2, True), (4, False)])
def test_two_pass_group_norm_equals_group_norm(groups, affine):
    norm = torch.nn.GroupNorm(groups, 8, eps=1e-5, affine=affine)
    if affine:
        torch.nn.init.normal_(norm.weight, generator=torch.Generator().manual_seed(1))
        torch.nn.init.normal_(norm.bias, generator=torch.Generator().manual_seed(2))
    x = torch.randn(2, 8, 4, 16, generator=torch.Generator().manual_seed(3)) * 3 + 50
    with torch.no_grad():
        expected = norm.double()(x.double())
        got = with_two_pass_group_norms(torch.nn.Sequential(norm.float()))(x)
    assert isinstance(got, torch.Tensor) and not torch.isnan(got).any()
    assert (got.double() - expected).abs().max().item() <= 2e-5 * expected.abs().max().item()
    with pytest.raises(ValueError, match=r"got shape \(8, 4\)"):
        TwoPassGroupNorm(norm)(torch.rand(8, 4))


@needs("executorch")
def test_executorch_norms_keep_their_precision_on_shifted_activations():
    """ExecuTorch's own group_norm loses the variance of activations whose mean is large against their
    spread (1.7e-2 max error at mean 100, std 2); the export computes the norms in two passes."""
    from executorch.runtime import Runtime

    norm = torch.nn.GroupNorm(1, 64)
    torch.nn.init.normal_(norm.weight, generator=torch.Generator().manual_seed(4))
    torch.nn.init.normal_(norm.bias, generator=torch.Generator().manual_seed(5))
    x = torch.randn(1, 64, 4, 256, generator=torch.Generator().manual_seed(6)) * 2 + 100
    with torch.no_grad():
        expected = norm.double()(x.double())
    program = runtimes.executorch_program(with_two_pass_group_norms(torch.nn.Sequential(norm.float())).eval(), x)
    got = Runtime.get().load_program(program).load_method("forward").execute([x])[0]
    error = (got.double() - expected).abs().max().item()
    assert error <= 1e-5 * expected.abs().max().item(), f"max abs error {error:.2e}"


@needs("executorch")
def test_executorch_export_keeps_the_graphs_compiled_in_the_process():
    """XNNPACK's lowering builds its upsampling and SDPA patterns by strict torch.export, which resets
    Dynamo: every compiled graph of the process would compile again on its next call (the bench's compiled
    providers did, tens of seconds each). The lowering runs with the reset skipped."""
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d, sdpa
    from torch._dynamo.testing import CompileCounter

    bilinear_2d._get_bilinear_2d_graphs.cache_clear()  # as in a fresh process: the patterns not built yet
    sdpa.get_graphs.cache_clear()
    counter = CompileCounter()
    compiled = torch.compile(lambda t: torch.sin(t) + 1, backend=counter, dynamic=False)
    x = torch.rand(1, 4, 8, 8)
    compiled(x)
    assert counter.frame_count == 1
    runtimes.executorch_program(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1)).eval(), x)
    assert bilinear_2d._get_bilinear_2d_graphs.cache_info().currsize == 1  # the lowering's patterns were built
    compiled(x)
    assert counter.frame_count == 1, "the ExecuTorch export dropped the process's compiled graphs"


@needs("openvino")
def test_only_the_executorch_export_replaces_the_group_norms(model, tmp_path):
    """The two-pass norms are for ExecuTorch's group_norm alone; OpenVINO keeps its own fused
    GroupNormalization (and ONNX its GroupNorm pattern) from the plain eager graph."""
    ov = runtimes.require("openvino")
    xml = runtimes.export(model, tmp_path / "m.xml", "openvino", SIZE, SIZE)[0]  # the files written, .xml first
    op_types = {op.get_type_name() for op in ov.Core().read_model(str(xml)).get_ops()}
    assert "GroupNormalization" in op_types, sorted(op_types)


def test_unsupported_precision_and_compression_are_refused(model, cache):
    with pytest.raises(ValueError, match="onnxruntime runs in fp32"):
        runtimes.load("onnxruntime", model, SIZE, SIZE, cache_dir=cache, precision="bf16")
    with pytest.raises(ValueError, match="openvino format only"):
        runtimes.export(model, cache / "x.onnx", "onnx", SIZE, SIZE, compression="int8")
    with pytest.raises(ValueError, match="unknown runtime"):
        runtimes.load("tensorrt", model, SIZE, SIZE, cache_dir=cache)


# ----- the cache -----------------------------------------------------------------------------------------------
@needs("onnxruntime")
def test_second_load_reuses_the_cache_and_new_weights_export_again(model, tmp_path, monkeypatch):
    exports = []
    real_export = runtimes.export
    monkeypatch.setattr(runtimes, "export", lambda *args, **kwargs: exports.append(args[2]) or real_export(*args, **kwargs))
    monkeypatch.setenv(runtimes.CACHE_ENV, str(tmp_path / "env-cache"))  # the default cache_dir

    first = runtimes.load("onnxruntime", model, SIZE, SIZE)
    assert not first.cached and exports == ["onnx"]
    assert first.path.startswith(str(tmp_path / "env-cache"))
    mtime = os.stat(first.path).st_mtime_ns
    second = runtimes.load("onnxruntime", model, SIZE, SIZE)
    assert second.cached and second.path == first.path and exports == ["onnx"]  # no second export
    assert os.stat(second.path).st_mtime_ns == mtime

    changed = classifier()
    with torch.no_grad():
        changed.classifier.bias[0] += 0.5  # one weight changed
    third = runtimes.load("onnxruntime", changed, SIZE, SIZE)
    assert not third.cached and third.path != first.path and exports == ["onnx", "onnx"]
    x = pixel_values()
    assert relative_error(third(x), reference_logits(changed, x)) <= FP32

    other_size = runtimes.load("onnxruntime", model, SIZE, SIZE + 32)  # a new size: a new entry
    assert not other_size.cached and other_size.path not in (first.path, third.path)
    with pytest.raises(ValueError, match=f"exported for {SIZE}x{SIZE + 32}"):
        other_size(x)
    entries = sorted(os.listdir(tmp_path / "env-cache" / "onnx"))
    assert len(entries) == 3 and not any(name.startswith(".partial") for name in entries)


def test_cache_key_follows_weights_config_size_and_format(model):
    key = runtimes.cache_key(model, SIZE, SIZE, "onnx")
    assert key == runtimes.cache_key(classifier(), SIZE, SIZE, "onnx")  # same weights, another object
    assert key != runtimes.cache_key(classifier(seed=2), SIZE, SIZE, "onnx")
    assert key != runtimes.cache_key(model, SIZE, SIZE + 8, "onnx")
    assert key != runtimes.cache_key(model, SIZE, SIZE, "openvino")
    assert runtimes.cache_key(model, SIZE, SIZE, "openvino") != runtimes.cache_key(model, SIZE, SIZE, "openvino", "fp16")
    relabelled = classifier()
    relabelled.config.id2label = {**LABELS, 0: "renamed"}
    assert key != runtimes.cache_key(relabelled, SIZE, SIZE, "onnx")


# ----- predict and segment through a runtime -----------------------------------------------------------------
@needs("onnxruntime")
def test_predict_runtime_onnxruntime_gives_the_torch_top1(files, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(runtimes.CACHE_ENV, str(tmp_path / "cache"))
    images = sorted(files.glob("photo*.png"))
    results = {}
    for runtime in ("torch", "onnxruntime"):
        code, out, err = run(["predict", *images, "--model", files / "cls", "--json", "--top-k", "3", "--runtime", runtime, "--workers", "0"], capsys)
        assert code == 0, err
        results[runtime] = json.loads(out)
    assert len(results["torch"]) == len(images)
    for torch_record, ort_record in zip(results["torch"], results["onnxruntime"]):
        assert torch_record["image"] == ort_record["image"]
        assert torch_record["predictions"][0]["index"] == ort_record["predictions"][0]["index"]
        for a, b in zip(torch_record["predictions"], ort_record["predictions"]):
            assert abs(a["probability"] - b["probability"]) < 1e-4
    assert len(os.listdir(tmp_path / "cache" / "onnx")) == 1  # one crop size: one export


@needs("onnxruntime")
def test_segment_files_runtime_exports_per_size(files, tmp_path):
    model = MobileViTV2ForSemanticSegmentation.from_pretrained(files / "seg")
    processor = MobileViTV2ImageProcessor.from_pretrained(files / "seg")
    processor.do_center_crop = False
    paths = [str(files / "photo0.png"), str(files / "photo1.png"), str(files / "photo2.png")]  # three sizes
    expected = list(inference.segment_files(model, processor, paths, batch_size=4))
    calls = []

    def counting(pixel_values):  # a callable runtime is used as it is
        calls.append(tuple(pixel_values.shape))
        return runtimes.PerInputSize("onnxruntime", model, cache_dir=tmp_path)(pixel_values)

    for runtime in ("onnxruntime", counting):
        got = list(inference.segment_files(model, processor, paths, batch_size=4, runtime=runtime, cache_dir=tmp_path))
        for e, g in zip(expected, got):
            assert g["mask"].shape == e["mask"].shape
            assert np.mean(g["mask"] == e["mask"]) > 0.999
    assert len(calls) == 3 and len(os.listdir(tmp_path / "onnx")) == 3


# ----- the export command ----------------------------------------------------------------------------------------
EXPORTS = [
    pytest.param("onnx", None, FP32, marks=needs("onnxruntime"), id="onnx"),
    pytest.param("openvino", None, FP32, marks=needs("openvino"), id="openvino"),
    pytest.param("openvino", "fp16", FP16_WEIGHTS, marks=needs("openvino"), id="openvino-fp16"),
    pytest.param("openvino", "int8", INT8_WEIGHTS, marks=needs("openvino", "nncf"), id="openvino-int8"),
    pytest.param("executorch", None, FP32, marks=needs("executorch"), id="executorch"),
]


@pytest.mark.parametrize("fmt, compression, bound", EXPORTS)
def test_export_command_writes_the_files_and_prints_the_error(files, model, capsys, tmp_path, monkeypatch, fmt, compression, bound):
    if fmt != "onnx":  # the openvino and executorch extras do without the onnx package
        monkeypatch.setitem(sys.modules, "onnx", None)
    out_path = tmp_path / ("model" + runtimes.SUFFIXES[fmt])
    argv = ["export", "--model", files / "cls", "--format", fmt, "--out", out_path, "--height", SIZE, "--width", SIZE]
    code, out, err = run(argv + (["--compression", compression] if compression else []), capsys)
    assert code == 0, err
    written = runtimes.exported_files(out_path, fmt)
    assert all(os.path.isfile(f) for f in written) and all(str(f) in out for f in written)
    scale = max(1.0, reference_logits(model, pixel_values(2)).abs().max().item())
    printed = float(out.rsplit("max |diff| ", 1)[1])
    assert printed <= bound * scale, out
    if fmt == "onnx":
        assert "opset 17" in out and "op types" in out and f"[batch, 3, {SIZE}, {SIZE}]" in out
    if fmt == "openvino":
        assert f"{compression or 'fp32'} weights" in out and "f32 inference precision" in out
        if compression is not None:  # the weights really are smaller than fp32's (4.5 MB here)
            fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
            assert os.path.getsize(written[1]) < {"fp16": 0.55, "int8": 0.3}[compression] * fp32_bytes
    # The file itself, on another batch size (ExecuTorch: exported for 1, run one image at a time).
    forward = runtimes.open_exported(runtimes.RUNTIME_OF_FORMAT[fmt], written[0], height=SIZE, width=SIZE)
    x = pixel_values(batch=3, seed=5)
    assert relative_error(forward(x), reference_logits(model, x)) <= bound


def test_export_onnx_alias_still_works(files, capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    code, out, err = run(["export-onnx", "--model", files / "cls", "--out", tmp_path / "m.onnx", "--height", SIZE, "--width", SIZE], capsys)
    assert code == 0 and "opset 17" in out and float(out.rsplit("max |diff| ", 1)[1]) < 1e-4, err


# ----- a missing runtime -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "executorch"])
def test_missing_runtime_is_one_line_naming_the_extra(files, model, capsys, tmp_path, monkeypatch, runtime):
    monkeypatch.setitem(sys.modules, MODULES[runtime], None)  # `import <runtime>` now fails
    extra = f'pip install "mobilevitv2[{runtimes.EXTRAS[runtime]}]"'
    with pytest.raises(runtimes.MissingRuntimeError, match=extra.replace("[", r"\[").replace("]", r"\]")):
        runtimes.load(runtime, model, SIZE, SIZE, cache_dir=tmp_path)
    assert not os.listdir(tmp_path)  # refused before exporting anything
    code, _, err = run(["predict", files / "photo0.png", "--model", files / "cls", "--runtime", runtime], capsys)
    assert_one_line_error(code, err, "predict", extra)
    code, _, err = run(["segment", files / "photo0.png", "--model", files / "seg", "--out", tmp_path / "m.png", "--runtime", runtime], capsys)
    assert_one_line_error(code, err, "segment", extra)
    if runtime != "onnxruntime":  # the onnx export itself needs no runtime
        fmt = runtimes.FORMAT_OF_RUNTIME[runtime]
        code, _, err = run(["export", "--model", files / "cls", "--format", fmt, "--out", tmp_path / ("m" + runtimes.SUFFIXES[fmt])], capsys)
        assert_one_line_error(code, err, "export", extra)


@needs("openvino")
def test_int8_without_nncf_names_its_extra(files, capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)
    argv = ["export", "--model", files / "cls", "--format", "openvino", "--compression", "int8", "--out", tmp_path / "m.xml"]
    code, _, err = run(argv + ["--height", SIZE, "--width", SIZE], capsys)
    assert_one_line_error(code, err, "nncf", 'pip install "mobilevitv2[openvino-int8]"')


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_dataloader_workers_fork_while_an_openvino_model_is_alive(files, tmp_path):
    """An OpenVINO model loaded and used at two batch sizes stays alive while predict forks its DataLoader
    workers, three times over. Run in a child process, so that a crash there (one was seen in a process
    that had kept OpenVINO models across batch sizes) fails this test instead of ending the test run."""
    import subprocess
    import textwrap

    script = textwrap.dedent(f"""
        import torch
        from mobilevitv2 import MobileViTV2ForImageClassification, MobileViTV2ImageProcessor, inference, runtimes
        model = MobileViTV2ForImageClassification.from_pretrained({str(files / "cls")!r}).eval()
        processor = MobileViTV2ImageProcessor.from_pretrained({str(files / "cls")!r})
        paths = [{str(files / "photo0.png")!r}, {str(files / "photo1.png")!r}, {str(files / "photo2.png")!r}] * 2
        alive = runtimes.load("openvino", model, {SIZE}, {SIZE}, cache_dir={str(tmp_path)!r})
        alive(torch.rand(1, 3, {SIZE}, {SIZE})), alive(torch.rand(8, 3, {SIZE}, {SIZE}))
        for _ in range(3):
            records = list(inference.predict_files(model, processor, paths, batch_size=2, num_workers=2,
                                                   runtime="openvino", cache_dir={str(tmp_path)!r}))
            assert len(records) == 6 and not any("error" in r for r in records), records
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), (done.returncode, done.stderr[-3000:])


# ----- inductor: this package's compiled CPU path as a runtime ---------------------------------------------------
def test_inductor_runtime_matches_pytorch_fp32_and_checks_the_size(model, tmp_path):
    forward = runtimes.load("inductor", model, SIZE, SIZE, cache_dir=tmp_path)  # a cache of its own: compiled here
    assert (forward.runtime, forward.precision, forward.path) == ("inductor", "fp32", None)
    x = pixel_values(batch=2)
    packed = counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"]
    error = relative_error(forward(x), reference_logits(model, x))
    assert error <= 1e-5, f"inductor fp32: relative max abs logit error {error:.2e}"
    # the compiled, frozen CPU path ran, not the model eagerly: its two graphs compiled and kept, convolutions
    # pre-packed
    assert len(list((tmp_path / "inductor-cpu").glob("*.pt2"))) == 2
    if torch.backends.mkldnn.is_available():
        assert counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"] > packed
    with pytest.raises(ValueError, match=f"compiled for {SIZE}x{SIZE} inputs, got {SIZE}x{SIZE + 32}"):
        forward(torch.rand(1, 3, SIZE, SIZE + 32))
    with pytest.raises(ValueError, match="no weight compression"):
        runtimes.load("inductor", model, SIZE, SIZE, compression="int8")
    with pytest.raises(ValueError, match="inductor runs in fp32 or bf16, not 'fp16'"):
        runtimes.load("inductor", model, SIZE, SIZE, precision="fp16")


def test_predict_runtime_inductor_gives_the_torch_top_k(files, capsys, monkeypatch, tmp_path):
    images = sorted(files.glob("photo*.png"))
    monkeypatch.setenv(runtimes.CACHE_ENV, str(tmp_path))  # where the compiled graphs go
    results = {}
    for runtime in ("torch", "inductor"):
        argv = ["predict", *images, "--model", files / "cls", "--json", "--top-k", "3", "--runtime", runtime, "--workers", "0", "--batch-size", "2"]
        code, out, err = run(argv, capsys)
        assert code == 0, err
        packages = list(tmp_path.glob("inductor-cpu/*.pt2"))
        assert bool(packages) == (runtime == "inductor"), f"only --runtime inductor compiles: {packages}"
        results[runtime] = json.loads(out)
        assert ("compiles the model" in err) == (runtime == "inductor"), err
    assert len(results["torch"]) == len(images)
    for torch_record, inductor_record in zip(results["torch"], results["inductor"]):
        assert torch_record["image"] == inductor_record["image"]
        assert [p["index"] for p in torch_record["predictions"]] == [p["index"] for p in inductor_record["predictions"]]
        for a, b in zip(torch_record["predictions"], inductor_record["predictions"]):
            assert abs(a["probability"] - b["probability"]) < 1e-5


@pytest.mark.parametrize(
    "runtime, precision, fragment",
    [("torch", "bf16", "--precision bf16 goes with --runtime inductor or openvino"),
     ("onnxruntime", "bf16", "--runtime onnxruntime computes in fp32, not bf16")],
)  # fmt: skip
def test_predict_precision_a_runtime_does_not_compute_in_is_one_line(files, capsys, runtime, precision, fragment):
    code, _, err = run(["predict", files / "photo0.png", "--model", files / "cls", "--runtime", runtime, "--precision", precision], capsys)
    assert_one_line_error(code, err, fragment)


def test_runtime_forward_refuses_a_precision_for_the_model_itself(model):
    with pytest.raises(ValueError, match="precision 'bf16' is for the inductor and openvino runtimes"):
        inference.runtime_forward(model, "torch", precision="bf16")
    assert inference.runtime_forward(model, "torch") is None


@pytest.mark.parametrize("command", ["predict", "segment"])
@pytest.mark.parametrize("runtime", ["inductor", pytest.param("openvino", marks=needs("openvino"))])
def test_precision_reaches_the_runtime(files, capsys, tmp_path, monkeypatch, command, runtime):
    """--precision bf16 with a runtime that computes in it is accepted and handed to the runtime, for predict and
    segment (the runtime stubbed: it records what it was asked for and runs the model eagerly)."""
    asked = []

    class Recording:
        def __init__(self, runtime, model, cache_dir=None, precision="fp32"):
            asked.append((runtime, precision))
            self.model = model

        def __call__(self, pixel_values):
            with torch.no_grad():
                return self.model(pixel_values).logits

    monkeypatch.setattr(runtimes, "PerInputSize", Recording)
    model = files / ("cls" if command == "predict" else "seg")
    target = ["--json"] if command == "predict" else ["--out", tmp_path / "mask.png"]
    code, _, err = run([command, files / "photo0.png", "--model", model, "--runtime", runtime, "--precision", "bf16", "--workers", "0", *target], capsys)
    assert code == 0, err
    assert asked == [(runtime, "bf16")]


def test_inductor_refuses_a_model_off_the_cpu_at_once(model):
    with pytest.raises(ValueError, match="needs the model there; call model.cpu"):
        runtimes.PerInputSize("inductor", classifier().to("meta"))
