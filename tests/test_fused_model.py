"""The model with its fusions against the eager model: attn_implementation (the registered unfold /
separable attention / fold ops: forward and backward, both heads, every output stride, non-divisible sizes,
compile), conv_implementation (the fused inverted residual, inference only) and transformer_implementation
(the fused transformer layer, inference only): outputs, the eager fallback for training and gradients,
torch.compile, the options themselves.

On the CPU the fused paths run the Triton kernels through the interpreter; on a GPU (tests marked ``gpu``)
they run them for real, and the CUDA backend too where it builds. The ops themselves, on every backend, are
tested in tests/ops/.
"""

import copy
import statistics

import pytest
import torch

import mobilevitv2_kernels as mk
from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation
from mobilevitv2.blocks import MobileViTV2TransformerLayer
from mobilevitv2.layers import MobileViTV2InvertedResidual
from model_utils import (
    assert_close_fp32,
    assert_half_precision_within_eager_error,
    assert_nontrivial,
    compile_recording_ops,
    fused_model_pair,
    max_abs_diff,
    randomize_,
    record_op_calls,
)

# Every allocation starts as NaN; seeded inputs; float32 parity needs true float32 convolutions and matmuls
# on a GPU (cuDNN uses TF32 by default).
pytestmark = pytest.mark.usefixtures("nan_allocations", "manual_seed", "ieee_fp32")

CPU_FUSED = "triton"  # runs on CPU tensors under TRITON_INTERPRET=1 (tests/conftest.py)


def _needs_cpu_triton(op=None):
    return pytest.mark.skipif(
        "triton" not in mk.available_backends("cpu", op=op), reason="triton (interpreter) not available"
    )


needs_cpu_triton = _needs_cpu_triton()
needs_cpu_triton_convs = _needs_cpu_triton("inverted_residual")
needs_cpu_triton_layers = _needs_cpu_triton("transformer_layer")
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
    return [b for b in mk.available_backends("cuda") if b != "reference"]


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
    real = mk.separable_attention

    def spy(qkv, backend="auto"):
        calls.append(backend)
        return real(qkv, backend)

    monkeypatch.setattr(mk, "separable_attention", spy)
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

    monkeypatch.setattr(mk, "separable_attention", fail)
    monkeypatch.setattr(mk, "unfold", fail)
    model = MobileViTV2ForImageClassification(MobileViTV2Config.from_width(0.5, num_labels=2)).eval()
    assert model.attn_implementation == "auto"
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_unavailable_choice_names_what_is_available():
    model = MobileViTV2ForImageClassification(MobileViTV2Config.from_width(0.5, num_labels=2))
    with pytest.raises(mk.BackendUnavailableError, match=r"attn_implementation='cuda' cannot run .*available: \['auto', 'reference'"):
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


# The gradient checks train the classifier, its dropout off (the float64 oracle's masks would differ from
# the float32 models'). Not the DeepLabV3 head: its ReLUs after train-mode BatchNorm (the pooling branch's
# normalising 2 values per channel at a batch of 2) put activations within float32 noise of a kink, where one
# activation on the other side changes a gradient discontinuously (measured on the CPU: an exact reordering of
# the attention's sum flipped one ReLU and was 330x the float32 noise on that branch's gradients).
CLASSIFIER_NO_DROPOUT = dict(num_labels=10, classifier_dropout_prob=0.0)


def assert_training_gradients_within_fp32_noise(eager, fused, x, labels, attention_calls, backend):
    """One training step (train mode: BatchNorm on batch statistics) of the float32 ``eager`` and ``fused``
    models and of a float64 copy of ``eager``, the oracle. Each parameter's gradient of ``fused`` must be
    within 3x the float32 noise there: the larger error against the oracle of two equally exact float32
    computations, the eager model and the eager model on an input one rounding away, plus the eager model's
    median error relative to scale (over all tensors) times this tensor's scale.

    Why so: float32 rounding grows through the layers above, by an amount that differs from tensor to tensor
    and from input to input, so one computation's error can be small by chance where another's is not; the
    second computation measures that growth, and the median term keeps a tensor whose errors are both small
    by chance from being judged against that chance. Measured on the CPU (128x128, batch 2, 10 seeds): exact
    float32 alternatives of the op (the Triton kernels, the reference with its sum reordered) reached at most
    0.53 of the bound; the query's gradient scaled by 0.99 exceeded it 340-390x, dropped 28000x."""
    oracle = copy.deepcopy(eager).double()
    twin = copy.deepcopy(eager)
    # the input one rounding away: about one float32 ulp on every element
    x_twin = x + x * torch.finfo(torch.float32).eps * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(x.device)
    assert (x_twin != x).any()
    for model, inputs in ((eager, x), (twin, x_twin), (fused, x), (oracle, x.double())):
        model(inputs, labels=labels).loss.backward()
    # the fused model ran the op, and only it did (else the check would compare the eager model with itself)
    assert attention_calls and set(attention_calls) == {backend}, attention_calls
    fused_params, twin_params, oracle_params = (dict(m.named_parameters()) for m in (fused, twin, oracle))
    rows = []  # (name, fused error, the float32 computations' error, eager's own error, scale)
    for name, p in eager.named_parameters():
        expected = oracle_params[name].grad
        own = (p.grad.double() - expected).abs().max().item()
        twin_err = (twin_params[name].grad.double() - expected).abs().max().item()
        err = (fused_params[name].grad.double() - expected).abs().max().item()
        rows.append((name, err, max(own, twin_err), own, expected.abs().max().item()))
    median_relative = statistics.median(own / scale for _, _, _, own, scale in rows if scale > 0)
    assert 0 < median_relative < 1e-3, f"eager's own float32 error relative to scale: {median_relative:.3g}"
    failures = []
    for name, err, noise, own, scale in rows:
        bound = 3 * (noise + median_relative * scale)
        if not err <= bound:
            failures.append(f"grad of {name}: error {err:.3g} against float64 > {bound:.3g} (float32's own {noise:.3g})")
    assert not failures, f"{len(failures)} gradients off:\n" + "\n".join(failures)


@needs_cpu_triton
def test_training_gradients_within_fp32_noise_cpu(monkeypatch):
    eager, fused = pair(MobileViTV2ForImageClassification, **CLASSIFIER_NO_DROPOUT)
    eager.train(), fused.set_attn_implementation(CPU_FUSED).train()
    x = torch.randn(2, 3, 64, 64)
    calls = record_op_calls(monkeypatch, "separable_attention")
    assert_training_gradients_within_fp32_noise(eager, fused, x, torch.tensor([3, 7]), calls, CPU_FUSED)


# ----- on a GPU, for real -----------------------------------------------------------------------------------


@gpu
@needs_gpu
@pytest.mark.parametrize("backend", gpu_backends() or ["none"])
def test_gpu_fused_fp32_and_low_precision(backend):
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
def test_gpu_training_step_and_compile(backend, monkeypatch):
    """A training step's gradients within the float32 noise (the classifier), then the segmentation model
    compiled (default and CUDA graphs) against the eager one at inference."""
    if backend == "none":
        pytest.skip("no fused backend on this GPU machine")
    eager, fused = pair(MobileViTV2ForImageClassification, **CLASSIFIER_NO_DROPOUT)
    eager, fused = eager.cuda().train(), fused.cuda().set_attn_implementation(backend).train()
    x = torch.randn(2, 3, 128, 128, device="cuda")
    real_op = mk.separable_attention
    calls = record_op_calls(monkeypatch, "separable_attention")
    assert_training_gradients_within_fp32_noise(eager, fused, x, torch.tensor([3, 7], device="cuda"), calls, backend)
    monkeypatch.setattr(mk, "separable_attention", real_op)  # the compiled graphs below call the op itself

    eager, fused = pair(MobileViTV2ForSemanticSegmentation, num_labels=4, output_stride=16)
    eager, fused = eager.cuda(), fused.cuda().set_attn_implementation(backend)
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
def test_gpu_every_fusion_matches_eager(task, backend):
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
        assert_half_precision_within_eager_error(eager, fused, x, reference, f"{task} {backend}")


# ----------------------------------------------------------------------------------------------------------
# conv_implementation: the fused inverted residual in the model
# ----------------------------------------------------------------------------------------------------------


def conv_model_pair(cls, seed=0, **config_kwargs):
    return fused_model_pair(cls, "conv_implementation", seed, **config_kwargs)


@pytest.fixture
def conv_op_calls(monkeypatch):
    """Records the backend of every call of the fused op from the model."""
    return record_op_calls(monkeypatch, "inverted_residual")


@pytest.fixture
def kernel_variants(monkeypatch):
    """Records the kernel variant the Triton launcher picks at every call (the op passes variant=None)."""
    from mobilevitv2_kernels import backends
    from mobilevitv2_kernels.triton_kernels import inverted_residual as ir

    # The kernel's first-use check (once per process and dtype) launches it on its own case: settled here,
    # before the recording starts, so that only the model's launches are recorded.
    assert backends.check_failure("triton", "inverted_residual", "cpu", None, torch.float32) is None
    picked = []
    real = ir.choose_variant

    def spy(stride, variant=None):
        picked.append((stride, real(stride, variant)))
        return picked[-1][1]

    monkeypatch.setattr(ir, "choose_variant", spy)
    return picked


@needs_cpu_triton_convs
def test_classification_fused_convs_match_eager(conv_op_calls, kernel_variants):
    eager, fused = conv_model_pair(MobileViTV2ForImageClassification, num_labels=5)
    fused.set_attn_implementation("triton")
    assert list(eager.state_dict()) == list(fused.state_dict())  # no new keys
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = eager(x, output_hidden_states=True)
        got = fused(x, output_hidden_states=True)
    # stage 1 (1), stage 2 (2), then per stage 3-5 the down-sampling block and the local convs (no expand)
    assert conv_op_calls == ["triton"] * 9
    # the automatic rule: the halo kernel for the two stride-1 blocks, recompute for the rest;
    # the local convs (no expand conv) always run recompute
    assert kernel_variants == [(1, "halo"), (2, "recompute"), (1, "halo")] + [(2, "recompute"), (1, "recompute")] * 3
    assert_nontrivial(expected.logits, "eager logits")
    assert_close_fp32(got.logits, expected.logits, "logits")
    for i, (g, e) in enumerate(zip(got.hidden_states, expected.hidden_states)):
        assert_close_fp32(g, e, f"hidden state {i}")


@needs_cpu_triton_convs
@pytest.mark.parametrize("output_stride", [16, 8])
def test_segmentation_dilated_blocks_match_eager(conv_op_calls, kernel_variants, output_stride):
    """Under OS 16/8 the down-sampling blocks of stages 4-5 run with stride 1 and dilation 1 or 2."""
    eager, fused = conv_model_pair(MobileViTV2ForSemanticSegmentation, num_labels=3, output_stride=output_stride)
    fused.set_attn_implementation("triton")
    dilations = [m.conv_3x3.convolution.dilation[0] for m in fused.modules() if isinstance(m, MobileViTV2InvertedResidual)]
    assert max(dilations) == (2 if output_stride == 8 else 1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = eager(x).logits, fused(x).logits
    assert len(conv_op_calls) == 9  # six inverted residuals, three local convs
    # stride-1 inverted residuals (dilated under OS 8/16) run the halo kernel, the local convs recompute
    assert [v for _, v in kernel_variants].count("halo") == (4 if output_stride == 8 else 3)
    assert [v for _, v in kernel_variants].count("recompute") == 9 - (4 if output_stride == 8 else 3)
    assert all(v == "recompute" for s, v in kernel_variants if s == 2)
    assert_nontrivial(expected, "eager segmentation logits")
    assert_close_fp32(got, expected, "segmentation logits")


@needs_cpu_triton_convs
def test_conv_training_and_gradients_fall_back_to_eager(conv_op_calls):
    """Training mode (batch statistics, with or without gradients) and eval mode with gradients take the
    eager path: same outputs, gradients and BatchNorm statistics as the eager model; the op is never
    called."""
    eager, fused = conv_model_pair(MobileViTV2ForImageClassification, seed=1, num_labels=4)
    x = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([1, 3])
    for train in (True, False):
        eager.train(train), fused.train(train)
        eager.zero_grad(), fused.zero_grad()
        loss_e, loss_f = eager(x, labels=labels).loss, fused(x, labels=labels).loss
        loss_e.backward(), loss_f.backward()
        assert abs(loss_e.item() - loss_f.item()) <= 1e-6
        grads = dict(fused.named_parameters())
        for name, p in eager.named_parameters():
            assert_close_fp32(grads[name].grad, p.grad, f"grad of {name} (train={train})")
    # Training mode without gradients (BatchNorm on batch statistics, updating its running ones) too.
    eager.train(), fused.train()
    with torch.no_grad():
        assert_close_fp32(fused(x).logits, eager(x).logits, "train-mode logits under no_grad")
    assert conv_op_calls == []
    bn_e = eager.mobilevitv2.encoder.layer[1].layer[0].conv_3x3.normalization
    bn_f = fused.mobilevitv2.encoder.layer[1].layer[0].conv_3x3.normalization
    assert bn_f.num_batches_tracked.item() == bn_e.num_batches_tracked.item() == 2
    assert_close_fp32(bn_f.running_var, bn_e.running_var, "running_var after the training steps")


@needs_cpu_triton_convs
def test_folding_follows_weight_changes(conv_op_calls):
    """BatchNorm is folded at every call: changing statistics or weights after a forward is seen."""
    eager, fused = conv_model_pair(MobileViTV2ForImageClassification, num_labels=3)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        first = fused(x).logits
        for model in (eager, fused):
            block = model.mobilevitv2.encoder.layer[1].layer[0]
            block.conv_3x3.normalization.running_var.mul_(3.0)
            block.reduce_1x1.convolution.weight.mul_(-1.0)
        expected, got = eager(x).logits, fused(x).logits
    assert len(conv_op_calls) == 18  # 2 forwards x (6 inverted residuals + 3 local convs)
    assert max_abs_diff(first, expected) > 1e-2  # the change matters ...
    assert_close_fp32(got, expected, "logits after the change")  # ... and the fused model sees it


@needs_cpu_triton_convs
def test_compile_fullgraph_with_fused_convs():
    """torch.compile(fullgraph=True) traces the model with the fused op (one opaque node per block, through
    its fake kernel) without graph breaks; aot_eager avoids Inductor's slow CPU code generation."""
    eager, fused = conv_model_pair(MobileViTV2ForImageClassification, seed=2, num_labels=3)
    compiled, targets = compile_recording_ops(fused)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = compiled(x).logits
        expected = eager(x).logits
    assert sum(t == "mobilevitv2.inverted_residual" for t in targets) == 9  # 6 blocks + 3 local convs
    assert_close_fp32(got, expected, "compiled logits")


def test_conv_auto_is_eager_on_cpu(conv_op_calls):
    model = MobileViTV2ForImageClassification(MobileViTV2Config.from_width(0.5, num_labels=2)).eval()
    model.set_conv_implementation("auto")
    assert {m.conv_backend for m in model.modules() if isinstance(m, MobileViTV2InvertedResidual)} == {"auto"}
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 2)
    assert conv_op_calls == []


def test_conv_implementation_option(tmp_path, monkeypatch):
    config = MobileViTV2Config.from_width(0.5, num_labels=2)
    model = MobileViTV2ForImageClassification(config)
    assert model.conv_implementation == "reference"
    assert {m.conv_backend for m in model.modules() if isinstance(m, MobileViTV2InvertedResidual)} == {None}
    with pytest.raises(ValueError, match="conv_implementation must be one of"):
        model.set_conv_implementation("cuda")
    with pytest.raises(ValueError, match="conv_implementation must be one of"):
        MobileViTV2Config(conv_implementation="fused")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(mk.BackendUnavailableError, match=r"conv_implementation='triton' cannot run .*\['auto', 'reference'\]"):
            model.set_conv_implementation("triton")
        assert model.conv_implementation == "reference"  # a refused choice changes nothing
        monkeypatch.delenv("TRITON_INTERPRET")
    # a runtime choice: never written to config.json, set again on load
    model.set_conv_implementation("auto")
    assert "conv_implementation" not in model.config.to_dict()
    model.save_pretrained(tmp_path)
    assert "conv_implementation" not in (tmp_path / "config.json").read_text()
    loaded = MobileViTV2ForImageClassification.from_pretrained(tmp_path, conv_implementation="auto")
    assert loaded.conv_implementation == "auto"
    assert {m.conv_backend for m in loaded.modules() if isinstance(m, MobileViTV2InvertedResidual)} == {"auto"}
    assert MobileViTV2ForImageClassification.from_pretrained(tmp_path).conv_implementation == "reference"


@pytest.mark.gpu
def test_gpu_model_fused_convs():
    """fp32 exact (TF32 off: ieee_fp32, as the fp32 kernel uses IEEE dots), fp16/bf16 within 2x the eager model's own
    error, with conv_implementation="triton" ("auto" keeps cuDNN's convolutions, measured faster) and fused
    attention."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if "triton" not in mk.available_backends("cuda", op="inverted_residual"):
        pytest.skip("triton cannot run on this GPU machine")
    eager, fused = conv_model_pair(MobileViTV2ForImageClassification, num_labels=10)
    eager, fused = eager.cuda(), fused.cuda().set_conv_implementation("triton").set_attn_implementation("auto")
    x = torch.randn(4, 3, 256, 256, device="cuda")
    with torch.no_grad():
        expected = eager(x).logits
        assert_close_fp32(fused(x).logits, expected, "fp32 logits")
        assert_half_precision_within_eager_error(eager, fused, x, expected, "fused")


# ----------------------------------------------------------------------------------------------------------
# transformer_implementation: the fused transformer layer in the model
# ----------------------------------------------------------------------------------------------------------


def layer_model_pair(cls, seed=0, **config_kwargs):
    return fused_model_pair(cls, "transformer_implementation", seed, **config_kwargs)


@pytest.fixture
def layer_op_calls(monkeypatch):
    """Records the backend of every call of the fused op from the model."""
    return record_op_calls(monkeypatch, "transformer_layer")


@needs_cpu_triton_layers
def test_classification_fused_layers_match_eager(layer_op_calls):
    eager, fused = layer_model_pair(MobileViTV2ForImageClassification, num_labels=5)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = eager(x).logits
        got = fused(x).logits
        everything = fused.set_attn_implementation("triton").set_conv_implementation("triton")(x).logits
    assert_nontrivial(expected, "eager logits")
    assert layer_op_calls == ["triton"] * 9 * 2  # 2 + 4 + 3 layers, twice
    assert_close_fp32(got, expected, "fused transformer layers vs eager")
    assert_close_fp32(everything, expected, "every fusion vs eager")


@needs_cpu_triton_layers
@pytest.mark.parametrize("output_stride", [16, 8])
def test_segmentation_matches_eager(layer_op_calls, output_stride):
    eager, fused = layer_model_pair(MobileViTV2ForSemanticSegmentation, seed=3, num_labels=4, output_stride=output_stride)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected = eager(x).logits
        got = fused(x).logits
    assert_nontrivial(expected, "eager segmentation logits")
    assert len(layer_op_calls) == 9
    assert_close_fp32(got, expected, f"segmentation OS {output_stride}")


@needs_cpu_triton_layers
def test_transformer_training_and_gradients_fall_back_to_eager(layer_op_calls):
    """Training mode (dropout active) and eval mode with gradients take the modules; the op is never called."""
    eager, fused = layer_model_pair(MobileViTV2ForImageClassification, seed=1, num_labels=4)
    x = torch.randn(2, 3, 64, 64)
    labels = torch.tensor([1, 3])
    for train in (True, False):
        eager.train(train), fused.train(train)
        eager.zero_grad(), fused.zero_grad()
        torch.manual_seed(5)
        loss_e = eager(x, labels=labels).loss
        torch.manual_seed(5)
        loss_f = fused(x, labels=labels).loss
        loss_e.backward(), loss_f.backward()
        assert abs(loss_e.item() - loss_f.item()) <= 1e-6
        grads = dict(fused.named_parameters())
        for name, p in eager.named_parameters():
            assert_close_fp32(grads[name].grad, p.grad, f"grad of {name} (train={train})")
    assert layer_op_calls == []


@needs_cpu_triton_layers
def test_compile_fullgraph_with_fused_layers():
    """torch.compile(fullgraph=True) traces the model with the fused op (one opaque node per layer, through
    its fake kernel) without graph breaks; aot_eager avoids Inductor's slow CPU code generation."""
    eager, fused = layer_model_pair(MobileViTV2ForImageClassification, seed=2, num_labels=3)
    compiled, targets = compile_recording_ops(fused)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = compiled(x).logits
        expected = eager(x).logits
    assert sum(t == "mobilevitv2.transformer_layer" for t in targets) == 9
    assert_close_fp32(got, expected, "compiled logits")


def test_transformer_auto_is_eager_on_cpu(layer_op_calls):
    model = MobileViTV2ForImageClassification(MobileViTV2Config.from_width(0.5, num_labels=2)).eval()
    model.set_transformer_implementation("auto")
    assert {m.transformer_backend for m in model.modules() if isinstance(m, MobileViTV2TransformerLayer)} == {"auto"}
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 2)
    assert layer_op_calls == []


def test_transformer_auto_takes_the_fused_layer_from_the_measured_patch_count(monkeypatch):
    """Where "auto" takes the fused layer (made to include the CPU here), it does so only for the layers
    with at least FUSED_MIN_PATCHES patches: at 256x256 the first MobileViTV2 block's (N = 16 x 16), not
    the later ones' (N = 64, 16)."""
    from mobilevitv2 import implementation

    monkeypatch.setitem(implementation.FUSED_IS_FASTER, "transformer", frozenset({"cpu"}))
    patch_counts = []
    real_op = mk.transformer_layer

    def spy(x, *args, **kwargs):
        patch_counts.append(x.shape[-1])
        return real_op(x, *args, **kwargs)

    monkeypatch.setattr(mk, "transformer_layer", spy)
    config = MobileViTV2Config.from_width(0.5, num_labels=2)
    model = MobileViTV2ForImageClassification(config).eval().set_transformer_implementation("auto")
    with torch.no_grad():
        model(torch.randn(1, 3, 256, 256))
    assert implementation.FUSED_MIN_PATCHES["transformer"] == 256
    assert patch_counts == [256] * config.n_attn_blocks[0]


def test_transformer_implementation_option(tmp_path):
    config = MobileViTV2Config.from_width(0.5, num_labels=2)
    assert not hasattr(config, "_implementation_choices") or config._implementation_choices == {}
    with pytest.raises(ValueError, match="transformer_implementation must be one of"):
        MobileViTV2Config(transformer_implementation="fast")
    model = MobileViTV2ForImageClassification(config)
    assert model.transformer_implementation == "reference"
    assert {m.transformer_backend for m in model.modules() if isinstance(m, MobileViTV2TransformerLayer)} == {None}
    with pytest.raises(ValueError, match="transformer_implementation must be one of"):
        model.set_transformer_implementation("cuda")
    model.set_transformer_implementation("auto")
    assert model.transformer_implementation == "auto"
    assert "transformer_implementation" not in model.config.to_dict()
    model.save_pretrained(tmp_path)
    assert "transformer_implementation" not in (tmp_path / "config.json").read_text()
    loaded = MobileViTV2ForImageClassification.from_pretrained(tmp_path, transformer_implementation="auto")
    assert loaded.transformer_implementation == "auto"
    assert {m.transformer_backend for m in loaded.modules() if isinstance(m, MobileViTV2TransformerLayer)} == {"auto"}
    assert MobileViTV2ForImageClassification.from_pretrained(tmp_path).transformer_implementation == "reference"


@pytest.mark.gpu
def test_gpu_model_fused_layers():
    """fp32 exact (TF32 off: ieee_fp32, as the fp32 kernels use IEEE dots), fp16/bf16 within 2x the eager model's own
    error, with every fusion on."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if "triton" not in mk.available_backends("cuda", op="transformer_layer"):
        pytest.skip("triton cannot run on this GPU machine")
    eager, fused = layer_model_pair(MobileViTV2ForImageClassification, num_labels=10)
    eager, fused = eager.cuda(), fused.cuda().set_attn_implementation("auto").set_conv_implementation("triton")
    fused.set_transformer_implementation("triton")  # "auto" would take it only from N=256 patches on
    x = torch.randn(4, 3, 256, 256, device="cuda")
    with torch.no_grad():
        expected = eager(x).logits
        assert_close_fp32(fused(x).logits, expected, "fp32 logits")
        assert_half_precision_within_eager_error(eager, fused, x, expected, "fused")
