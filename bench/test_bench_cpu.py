"""CPU-runnable benchmarks for pytest-benchmark, so CPU regressions show up too:

    pytest bench/ --benchmark-only

(These are not correctness tests; `tests/` holds those. Under plain `pytest bench/` without
--benchmark-only each benchmark runs once as a smoke test.)
"""

import pytest
import torch

from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification
from mobilevitv2_kernels import fold, reference, separable_attention, unfold


@pytest.fixture(scope="module")
def qkv():
    return torch.randn(8, 1 + 2 * 128, 4, 256)


def test_attention_core_reference(benchmark, qkv):
    out = benchmark(reference.separable_attention_forward, qkv)
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
    model = MobileViTV2ForImageClassification(MobileViTV2Config.from_width(0.5, num_labels=1000)).eval()
    x = torch.randn(batch, 3, 256, 256)

    def infer():
        with torch.no_grad():
            return model(x).logits

    assert benchmark(infer).shape == (batch, 1000)
