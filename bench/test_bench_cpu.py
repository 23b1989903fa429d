"""CPU-runnable benchmarks for pytest-benchmark, so CPU regressions show up too:

    pytest bench/ --benchmark-only

(These are not correctness tests; `tests/` holds those. Under plain `pytest bench/` without
--benchmark-only each benchmark runs once as a smoke test.) pytest-benchmark does the timing; the attention
core and the model are the benchmark harness's cases (mobilevitv2.bench), the same callables
`mobilevitv2 bench` times, the model's first output checked against its float32 oracle before any timing.
"""

import pytest
import torch

from mobilevitv2.bench.models import model_cases
from mobilevitv2.bench.ops import attention_core_cases
from mobilevitv2_kernels import fold, separable_attention, unfold

CPU = torch.device("cpu")


def only(cases, provider):
    (case,) = [c for c in cases if c.provider == provider]
    return case


@pytest.fixture(scope="module")
def qkv():
    return torch.randn(8, 1 + 2 * 128, 4, 256)


def test_attention_core_reference(benchmark):
    case = only(attention_core_cases((8, 128, 4, 256), torch.float32, CPU, backward=False), "reference eager")
    out = benchmark(case.fn)
    assert out.shape == (8, 128, 4, 256)


def test_attention_op_reference_backend(benchmark, qkv):
    out = benchmark(separable_attention, qkv, "reference")
    assert out.shape == (8, 128, 4, 256)


def test_unfold_fold_round_trip(benchmark):
    x = torch.randn(8, 128, 32, 32)
    out = benchmark(lambda: fold(unfold(x), (32, 32)))
    assert torch.equal(out, x)


@pytest.mark.parametrize("batch", [1, 4])
def test_model_inference_width_0_5(benchmark, batch):
    case = only(model_cases(0.5, batch, torch.float32, CPU, providers=["ours eager"]), "ours eager")
    case.fn()  # builds the model and checks its first output, outside the timed rounds
    assert benchmark(case.fn).shape == (batch, 1000)
