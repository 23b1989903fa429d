"""The attn_implementation flag: the fused path (registered unfold / separable attention / fold ops) against
the eager model, forward and backward, both heads, every output stride, non-divisible sizes, compile.

On the CPU the fused path runs the Triton kernels through the interpreter; on a GPU (tests marked
``gpu``) it runs them for real, and the CUDA backend too where it builds."""

import pytest
import torch

import mobilevitv2_kernels
from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation
from model_utils import assert_close_fp32, assert_nontrivial, max_abs_diff, randomize_

CPU_FUSED = "triton"  # runs on CPU tensors under TRITON_INTERPRET=1 (tests/conftest.py)
needs_cpu_triton = pytest.mark.skipif(
    "triton" not in mobilevitv2_kernels.available_backends("cpu"), reason="triton (interpreter) not available"
)
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def pair(cls, seed=0, **config_kwargs):
    """Two copies of one randomised model: eager and fused."""
    eager = randomize_(cls(MobileViTV2Config.from_width(0.5, **config_kwargs)), seed).eval()
    fused = cls(MobileViTV2Config.from_width(0.5, **config_kwargs)).eval()
    fused.load_state_dict(eager.state_dict())
    eager.set_implementation("reference")
    return eager, fused


def gpu_backends():
    if not torch.cuda.is_available():
        return []
    return [b for b in mobilevitv2_kernels.available_backends("cuda") if b != "reference"]


@needs_cpu_triton
@pytest.mark.parametrize(
    "size, config_kwargs",
    [
        ((64, 64), {}),
        ((96, 80), {}),  # stage maps 12x10, 6x5, 3x3: odd sizes, transformers' zero fill
        ((96, 80), {"non_divisible_patching": "resize"}),
    ],
)
def test_classification_fused_matches_eager_cpu(size, config_kwargs):
    eager, fused = pair(MobileViTV2ForImageClassification, num_labels=5, **config_kwargs)
    fused.set_attn_implementation(CPU_FUSED)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = eager(x, output_hidden_states=True)
        got = fused(x, output_hidden_states=True)
    assert_nontrivial(expected.logits, "eager logits")
    assert_close_fp32(got.logits, expected.logits, "logits")
    for i, (g, e) in enumerate(zip(got.hidden_states, expected.hidden_states)):
        assert_close_fp32(g, e, f"hidden state {i}")


@needs_cpu_triton
@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_segmentation_fused_matches_eager_cpu(output_stride):
    eager, fused = pair(MobileViTV2ForSemanticSegmentation, num_labels=3, output_stride=output_stride)
    fused.set_attn_implementation(CPU_FUSED)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = eager(x).logits, fused(x).logits
    assert_nontrivial(expected, "eager segmentation logits")
    assert_close_fp32(got, expected, "segmentation logits")


@needs_cpu_triton
def test_training_step_gradients_match_cpu():
    eager, fused = pair(MobileViTV2ForImageClassification, seed=1, num_labels=4)
    fused.set_attn_implementation(CPU_FUSED)
    eager.train(), fused.train()
    x = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([1, 3])
    eager(x, labels=labels).loss.backward()
    fused(x, labels=labels).loss.backward()
    fused_params = dict(fused.named_parameters())
    checked = 0
    for name, p in eager.named_parameters():
        assert fused_params[name].grad is not None, name
        assert_close_fp32(fused_params[name].grad, p.grad, f"grad of {name}", tol=1e-4)
        checked += "attention" in name
    assert checked > 0


@needs_cpu_triton
def test_fused_path_calls_the_registered_ops(monkeypatch):
    """The fused path must really run the registered ops (and the eager path must not)."""
    calls = []
    real = mobilevitv2_kernels.separable_attention

    def spy(qkv, backend="auto"):
        calls.append(backend)
        return real(qkv, backend)

    monkeypatch.setattr(mobilevitv2_kernels, "separable_attention", spy)
    eager, fused = pair(MobileViTV2ForImageClassification, num_labels=2)
    fused.set_attn_implementation(CPU_FUSED)
    with torch.no_grad():
        eager(torch.randn(1, 3, 64, 64))
        assert calls == []
        fused(torch.randn(1, 3, 64, 64))
    assert calls == [CPU_FUSED] * sum(eager.config.n_attn_blocks)


def test_auto_is_eager_on_cpu(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("auto must not use the kernel ops on the CPU")

    monkeypatch.setattr(mobilevitv2_kernels, "separable_attention", fail)
    monkeypatch.setattr(mobilevitv2_kernels, "unfold", fail)
    model = MobileViTV2ForImageClassification(MobileViTV2Config.from_width(0.5, num_labels=2)).eval()
    assert model.attn_implementation == "auto"
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_unavailable_choice_names_what_is_available():
    model = MobileViTV2ForImageClassification(MobileViTV2Config.from_width(0.5, num_labels=2))
    with pytest.raises(mobilevitv2_kernels.BackendUnavailableError, match=r"attn_implementation='cuda' cannot run .*available: \['auto', 'reference'"):
        model.set_attn_implementation("cuda")
    with pytest.raises(ValueError, match="must be one of"):
        model.set_attn_implementation("flash")
    assert model.attn_implementation == "auto"  # a refused choice changes nothing


@needs_cpu_triton
def test_compile_fullgraph_traces_the_fused_ops_cpu():
    """fullgraph=True fails on any graph break; aot_eager traces forward and backward through the ops'
    fake kernels and autograd without Inductor's slow CPU code generation."""
    eager, fused = pair(MobileViTV2ForImageClassification, seed=2, num_labels=3)
    fused.set_attn_implementation(CPU_FUSED).train()
    eager.train()
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([0, 2])
    loss = compiled(x, labels=labels).loss
    loss.backward()
    expected = eager(x, labels=labels).loss
    expected.backward()
    assert abs(loss.item() - expected.item()) <= 1e-5
    grad = dict(fused.named_parameters())["mobilevitv2.encoder.layer.2.transformer.layer.0.attention.qkv_proj.convolution.weight"].grad
    expected_grad = dict(eager.named_parameters())["mobilevitv2.encoder.layer.2.transformer.layer.0.attention.qkv_proj.convolution.weight"].grad
    assert_close_fp32(grad, expected_grad, "compiled qkv_proj grad", tol=1e-4)


# ----- on a GPU, for real -----------------------------------------------------------------------------------


@pytest.fixture
def exact_fp32(monkeypatch):
    """fp32 parity at 1e-5 needs true fp32 convolutions and matmuls (cuDNN uses TF32 by default)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@gpu
@needs_gpu
@pytest.mark.parametrize("backend", gpu_backends() or ["none"])
def test_gpu_fused_fp32_and_low_precision(backend, exact_fp32):
    if backend == "none":
        pytest.skip("no fused backend on this GPU machine")
    eager, fused = pair(MobileViTV2ForImageClassification, num_labels=10)
    eager, fused = eager.cuda(), fused.cuda().set_attn_implementation(backend)
    x = torch.randn(4, 3, 256, 256, device="cuda")
    with torch.no_grad():
        reference = eager(x).logits
        assert_close_fp32(fused(x).logits, reference, f"{backend} fp32 logits")
        for dtype in (torch.float16, torch.bfloat16):
            eager_low = eager.to(dtype)(x.to(dtype)).logits
            fused_low = fused.to(dtype)(x.to(dtype)).logits
            eager_err, fused_err = max_abs_diff(eager_low, reference), max_abs_diff(fused_low, reference)
            assert fused_err <= 2 * eager_err + 1e-3, f"{backend} {dtype}: {fused_err} vs eager's own {eager_err}"
            eager.float(), fused.float()


@gpu
@needs_gpu
@pytest.mark.parametrize("backend", gpu_backends() or ["none"])
def test_gpu_training_step_and_compile(backend, exact_fp32):
    if backend == "none":
        pytest.skip("no fused backend on this GPU machine")
    eager, fused = pair(MobileViTV2ForSemanticSegmentation, num_labels=4, output_stride=16)
    eager, fused = eager.cuda().train(), fused.cuda().set_attn_implementation(backend).train()
    x = torch.randn(2, 3, 128, 128, device="cuda")
    labels = torch.randint(0, 4, (2, 128, 128), device="cuda")
    # The DeepLabV3 head has dropout (aspp_dropout_prob, classifier_dropout_prob): the same seed gives both
    # models the same masks; unseeded, the gradients differ by ~0.5 whatever the backend.
    torch.manual_seed(0)
    eager(x, labels=labels).loss.backward()
    torch.manual_seed(0)
    fused(x, labels=labels).loss.backward()
    fused_params = dict(fused.named_parameters())
    for name, p in eager.named_parameters():
        assert_close_fp32(fused_params[name].grad, p.grad, f"grad of {name}", tol=1e-4)
    eager.eval(), fused.eval()
    with torch.no_grad():
        expected = eager(x).logits
        for mode in ("default", "reduce-overhead"):
            compiled = torch.compile(fused, fullgraph=True, mode=mode)
            for _ in range(3):  # CUDA graphs record on a later call
                got = compiled(x).logits
            assert_close_fp32(got.clone(), expected, f"compiled ({mode}) logits", tol=1e-4)


GPU_TASKS = {
    "classification": (MobileViTV2ForImageClassification, dict(num_labels=10)),
    "segmentation OS16": (MobileViTV2ForSemanticSegmentation, dict(num_labels=4, output_stride=16)),
    "segmentation OS8": (MobileViTV2ForSemanticSegmentation, dict(num_labels=4, output_stride=8)),
}


@gpu
@needs_gpu
@pytest.mark.parametrize("task", list(GPU_TASKS))
@pytest.mark.parametrize("backend", gpu_backends() or ["none"])
def test_gpu_every_fusion_matches_eager(task, backend, exact_fp32):
    """Attention on ``backend``, inverted residuals and transformer layers fused (Triton), at inference:
    fp32 within 1e-5 of the eager model, fp16/bf16 within twice the eager model's own error against fp32."""
    if backend == "none":
        pytest.skip("no fused backend on this GPU machine")
    cls, config_kwargs = GPU_TASKS[task]
    eager, fused = pair(cls, **config_kwargs)
    eager = eager.cuda()
    fused = fused.cuda().set_attn_implementation(backend).set_conv_implementation("triton")
    fused.set_transformer_implementation("triton")
    x = torch.randn(2, 3, 256, 256, device="cuda")
    with torch.no_grad():
        reference = eager(x).logits
        assert_nontrivial(reference, f"eager {task} logits")
        assert_close_fp32(fused(x).logits, reference, f"{task} {backend} fp32 logits")
        for dtype in (torch.float16, torch.bfloat16):
            eager_err = max_abs_diff(eager.to(dtype)(x.to(dtype)).logits, reference)
            fused_err = max_abs_diff(fused.to(dtype)(x.to(dtype)).logits, reference)
            assert fused_err <= 2 * eager_err + 1e-3, f"{task} {backend} {dtype}: {fused_err} vs eager's own {eager_err}"
            eager.float(), fused.float()
