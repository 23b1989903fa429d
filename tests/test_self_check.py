"""The first-use check of each fused backend (mobilevitv2_kernels.self_check): a correct kernel passes on
every op and dtype, a wrong one is caught, disabled with one warning, skipped by "auto" and refused when
chosen explicitly. On the CPU the Triton backend runs under the interpreter; "auto" is pointed at it by
putting it in AUTO_ORDER for the CPU, as it is for CUDA."""

from __future__ import annotations

import warnings

import pytest
import torch

import mobilevitv2_kernels as mk
from mobilevitv2_kernels import backends, reference, self_check
from mobilevitv2_kernels.numerics import KERNEL_DTYPES
from mobilevitv2_kernels.self_check import KernelCheckWarning

pytestmark = pytest.mark.usefixtures("nan_allocations")  # every allocation starts as NaN

# op -> the backend function(s) its check calls
FUNCTIONS = {
    "separable_attention": ["separable_attention_forward", "separable_attention_backward"],
    "unfold": ["unfold_forward"],
    "fold": ["fold_forward"],
    "inverted_residual": ["inverted_residual_forward"],
    "transformer_layer": ["transformer_layer_forward"],
    "linear_self_attention": ["linear_self_attention_forward"],
}


@pytest.fixture(autouse=True)
def fresh_verdicts():
    self_check.forget()
    yield
    self_check.forget()  # no injected verdict may outlive its test


@pytest.fixture
def auto_tries_triton_on_cpu(monkeypatch, triton_module):
    monkeypatch.setitem(backends.AUTO_ORDER, "cpu", ("triton",))
    return triton_module


def test_every_op_has_a_case():
    for name in backends.BACKEND_NAMES:
        module_ops = set(FUNCTIONS) - backends.UNSUPPORTED_OPS.get(name, frozenset())
        assert module_ops <= set(self_check.CASES)
    assert set(self_check.CASES) == set(FUNCTIONS)


@pytest.mark.parametrize("op", list(self_check.CASES))
def test_correct_kernel_passes(op, dtype, triton_module):
    result = self_check.check("triton", triton_module, op, torch.device("cpu"), dtype)
    assert result.ok, result
    assert 0 <= result.error <= result.bound  # that the case carries signal: the "zeros" mutation below


class _Wrong:
    """The backend module with one function replaced."""

    def __init__(self, module, name, fn):
        self._module, self._name, self._fn = module, name, fn

    def __getattr__(self, attr):
        return self._fn if attr == self._name else getattr(self._module, attr)


# A few times the rules' tolerance of each dtype (about 8x float32's 1e-5; 10 and 5 units in the last place
# of float16 and bfloat16).
SMALL_ERROR = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}


def _nudge_largest(out: torch.Tensor, relative: float) -> torch.Tensor:
    out = out.clone()
    flat = out.view(-1)
    i = flat.abs().argmax()
    flat[i] += relative * flat[i].abs().float().item()
    return out


MUTATIONS = {
    "flipped": lambda fn, dtype: lambda *a: fn(*a).flip(-1),  # an index error
    "largest off": lambda fn, dtype: lambda *a: _nudge_largest(fn(*a), SMALL_ERROR[dtype]),  # a small error
    "unwritten": lambda fn, dtype: lambda *a: torch.full_like(fn(*a), float("nan")),  # never written
    "zeros": lambda fn, dtype: lambda *a: torch.zeros_like(fn(*a)),  # the case must carry signal
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
@pytest.mark.parametrize("op", list(self_check.CASES))
def test_wrong_kernel_is_caught(op, dtype, mutation, triton_module):
    for name in FUNCTIONS[op]:
        wrong = _Wrong(triton_module, name, MUTATIONS[mutation](getattr(triton_module, name), dtype))
        result = self_check.check("triton", wrong, op, torch.device("cpu"), dtype)
        assert not result.ok, f"{mutation} {name} passed: {result}"


def test_softmax_without_max_subtraction_is_caught(triton_module):
    def naive(qkv):  # overflows for the case's large logits
        d = (qkv.shape[1] - 1) // 2
        q, k, v = torch.split(qkv.float(), [1, d, d], dim=1)
        scores = q.exp() / q.exp().sum(-1, keepdim=True)
        return (torch.relu(v) * (k * scores).sum(-1, keepdim=True)).to(qkv.dtype)

    wrong = _Wrong(triton_module, "separable_attention_forward", naive)
    assert not self_check.check("triton", wrong, "separable_attention", torch.device("cpu"), torch.float16).ok


def test_failing_compile_is_a_failure(triton_module):
    def broken(*args):
        raise RuntimeError("PTX assembly failed\nsecond line")

    wrong = _Wrong(triton_module, "unfold_forward", broken)
    result = self_check.check("triton", wrong, "unfold", torch.device("cpu"), torch.float32)
    assert not result.ok and "PTX assembly failed" in result.failure and "second line" not in result.failure


def _inject(monkeypatch, module, name, dtypes=KERNEL_DTYPES):
    """Make ``module.name`` 50% off for inputs of ``dtypes``."""
    correct = getattr(module, name)

    def wrong(first, *args, **kwargs):
        out = correct(first, *args, **kwargs)
        return out * 1.5 if first.dtype in dtypes else out

    monkeypatch.setattr(module, name, wrong)


def test_auto_falls_back_and_explicit_raises(monkeypatch, auto_tries_triton_on_cpu):
    qkv = torch.randn(2, 9, 4, 10)
    expected = reference.separable_attention_forward(qkv)
    assert torch.allclose(mk.separable_attention(qkv, "auto"), expected, atol=1e-6)  # triton, and correct
    assert [r.backend for r in self_check.report()] == ["triton"]

    self_check.forget()
    _inject(monkeypatch, auto_tries_triton_on_cpu, "separable_attention_forward", dtypes=(torch.float32,))
    with pytest.warns(KernelCheckWarning) as record:
        out = mk.separable_attention(qkv, "auto")
    assert torch.equal(out, expected)  # the reference ran
    assert len(record) == 1
    message = str(record[0].message)
    for word in ("separable_attention", "'triton'", "cpu", "float32", "max abs error"):
        assert word in message, (word, message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per (op, backend, device, dtype): no second warning
        assert torch.equal(mk.separable_attention(qkv, "auto"), expected)
        with pytest.raises(mk.KernelCheckError, match="separable_attention.*cpu.*float32"):
            mk.separable_attention(qkv, "triton")
    # other dtypes and other ops are checked on their own (here the kernel is wrong for float32 only)
    assert backends.auto_backend("cpu", torch.float16, "separable_attention") == "triton"
    assert backends.auto_backend("cpu", torch.float32, "unfold") == "triton"
    assert {(r.op, r.dtype, r.ok) for r in self_check.report()} == {
        ("separable_attention", "float32", False), ("separable_attention", "float16", True), ("unfold", "float32", True)}


def test_explicit_backend_raises_before_running(monkeypatch, triton_module):
    _inject(monkeypatch, triton_module, "fold_forward")
    patches = torch.randn(1, 2, 4, 6)
    with pytest.warns(KernelCheckWarning), pytest.raises(mk.KernelCheckError, match="'triton' computes fold wrongly"):
        mk.fold(patches, (4, 6), 2, backend="triton")
    assert torch.equal(mk.fold(patches, (4, 6), 2, backend="reference"), reference.fold_forward(patches, 4, 6, 2, 2))


def test_fused_model_refuses_a_wrong_kernel_it_was_told_to_use(monkeypatch, triton_module):
    """transformer_implementation="triton" with a wrong transformer-layer kernel: the forward raises a
    KernelCheckError naming the op instead of returning wrong logits."""
    from model_utils import fused_model_pair
    from mobilevitv2 import MobileViTV2ForImageClassification

    _, fused = fused_model_pair(MobileViTV2ForImageClassification, "transformer_implementation", num_labels=5)
    _inject(monkeypatch, triton_module, "transformer_layer_forward")
    with torch.no_grad(), pytest.warns(KernelCheckWarning), pytest.raises(mk.KernelCheckError, match="transformer_layer"):
        fused(torch.randn(1, 3, 64, 64))


def test_compiled_call_checks_at_trace_time(auto_tries_triton_on_cpu):
    qkv = torch.randn(2, 9, 4, 10)
    compiled = torch.compile(lambda t: mk.separable_attention(t, "auto"), fullgraph=True, backend="eager")
    assert torch.allclose(compiled(qkv), reference.separable_attention_forward(qkv), atol=1e-6)
    assert [(r.op, r.backend, r.ok) for r in self_check.report()] == [("separable_attention", "triton", True)]


def test_a_callers_autocast_does_not_reach_the_check(triton_module):
    """The check's own PyTorch runs (the reference, and PyTorch's float16 error that sets the bound) must
    not be recast by an autocast region the first call happens to be in."""
    plain = self_check.check("triton", triton_module, "inverted_residual", torch.device("cpu"), torch.float16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recast = self_check.check("triton", triton_module, "inverted_residual", torch.device("cpu"), torch.float16)
    assert recast.ok and (recast.error, recast.bound) == (plain.error, plain.bound), (plain, recast)


def test_the_check_runs_for_real_under_fake_tensors(triton_module):
    """Tracing with fake tensors (torch.export, make_fx) keeps the backend in the traced graph, so the check
    must run then, on real tensors, and not fail for want of data."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        assert backends.check_failure("triton", "unfold", "cpu", None, torch.float32) is None
    assert [(r.op, r.ok) for r in self_check.report()] == [("unfold", True)]


def test_the_check_ignores_the_callers_default_device(triton_module):
    torch.set_default_device("meta")
    try:
        result = self_check.check("triton", triton_module, "inverted_residual", torch.device("cpu"), torch.float32)
    finally:
        torch.set_default_device(None)
    assert result.ok, result


def test_reference_and_float64_are_never_checked(auto_tries_triton_on_cpu):
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    mk.unfold(x, 2, backend="reference")
    mk.unfold(x, 2, backend="auto")  # float64: the reference, though "auto" tries Triton on the CPU here
    with pytest.raises(TypeError, match="float32, float16 and bfloat16"):
        mk.unfold(x, 2, backend="triton")
    assert self_check.report() == []
    mk.unfold(x.float(), 2, backend="auto")  # float32 is checked
    assert [(r.op, r.dtype) for r in self_check.report()] == [("unfold", "float32")]
