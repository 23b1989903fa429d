"""The fastest PyTorch CPU path (mobilevitv2.cpu_inference): Inductor with freezing in channels-last, equal to
the reference in fp32; bf16 only when asked for, within its stated error; clear errors for bad input; its
compiled graphs kept on disk (mobilevitv2.compiled_graphs) and loaded by a later instance, or compiled in
the process only (disk_cache=False)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation, MobileViTV2Model
from mobilevitv2.cpu_inference import CPUInference, cpu_has_native_bf16, power_of_two_chunks
from model_utils import assert_nontrivial, randomize_


@pytest.fixture(scope="module")
def model():
    return randomize_(MobileViTV2ForImageClassification(MobileViTV2Config.from_width(0.5, num_labels=10)), seed=3).eval()


def assert_ran_packages(fast: CPUInference) -> None:
    """Every input of both graphs ran an AOTInductor package (loaded or compiled), none the fallback."""
    for graph in (fast.early, fast.late):
        assert graph.fell_back == 0 and graph.loaded + graph.compiled == len(graph.runners) > 0, (
            graph.name, graph.loaded, graph.compiled, graph.fell_back)


def test_fp32_equals_the_reference(model):
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).logits
    assert_nontrivial(expected, "reference logits")
    fast = CPUInference(model)
    got = fast(x)
    assert fast.micro_batch == 1 and not fast.image_layout  # fp32: one image at a time, the patch layout
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast(x[:1]), expected[:1], atol=1e-5, rtol=1e-5)  # another batch size
    assert_ran_packages(fast)
    with torch.no_grad():  # the caller's model is untouched (the compiled copy owns its weights)
        torch.testing.assert_close(model(x).logits, expected, atol=0, rtol=0)


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_bf16_is_explicit_and_within_its_error(model):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).logits
    fast = CPUInference(model, precision="bf16")
    got = fast(x)
    assert_ran_packages(fast)
    # bf16's stages 1-3 take up to 4 images a call by default (both images in one early graph), and its
    # blocks' attention runs on the image
    assert fast.image_layout and fast.micro_batch == 4 and len(fast.early.runners) == 1 and next(iter(fast.early.runners))[0][0] == 2
    assert got.dtype == torch.float32
    error = (got - expected).norm() / expected.norm()
    assert 0 < error < 5e-2, error  # bf16 rounding (8-bit mantissa) through the whole network


def test_bad_input(model):
    with pytest.raises(ValueError, match="precision"):
        CPUInference(model, precision="fp16")
    fast = CPUInference(model)
    with pytest.raises(ValueError, match=r"shape \(3, 64, 64\)"):
        fast(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="4 channels"):
        fast(torch.rand(1, 4, 64, 64))
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="micro_batch"):
            CPUInference(model, micro_batch=bad)
        with pytest.raises(ValueError, match="late_batch"):
            CPUInference(model, late_batch=bad)
    with pytest.raises(TypeError, match="classification or segmentation model, got MobileViTV2Model"):
        CPUInference(MobileViTV2Model(MobileViTV2Config.from_width(0.5)))
    if importlib.util.find_spec("transformers") is not None:  # theirs is refused with the way to load it as ours
        import transformers

        theirs = transformers.MobileViTV2ForImageClassification(transformers.MobileViTV2Config(width_multiplier=0.5))
        with pytest.raises(TypeError, match="from_pretrained"):
            CPUInference(theirs)
    with pytest.raises(ValueError, match="empty batch"):
        fast(torch.rand(0, 3, 64, 64))


def test_defaults_by_precision_and_explicit_choices(model):
    # nothing compiles before the first call, so this runs on any CPU
    for precision, micro_batch, image_layout in (("fp32", 1, False), ("bf16", 4, True)):
        fast = CPUInference(model, precision, disk_cache=False)
        assert (fast.micro_batch, fast.image_layout) == (micro_batch, image_layout), precision
    chosen = CPUInference(model, "bf16", micro_batch=1, image_layout=False, disk_cache=False)
    assert (chosen.micro_batch, chosen.image_layout) == (1, False)
    with pytest.raises(ValueError, match="image_layout"):
        CPUInference(model, image_layout=1)


def test_groups_and_micro_batches_give_the_whole_batch(model):
    x = torch.rand(7, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x).logits
    # groups of 4, 2 and 1 images through the late stages; the early ones 2, 2 | 2 | 1 at a time
    fast = CPUInference(model, micro_batch=2, late_batch=4)
    torch.testing.assert_close(fast(x), expected, atol=1e-5, rtol=1e-5)
    assert_ran_packages(fast)
    assert len(fast.early.runners) == 2 and len(fast.late.runners) == 3


def test_power_of_two_chunks():
    assert power_of_two_chunks(13, 8) == [8, 4, 1]
    assert power_of_two_chunks(16, 8) == [8, 8]
    assert power_of_two_chunks(1, 8) == [1]
    assert power_of_two_chunks(7, 6) == [6, 1]
    assert power_of_two_chunks(5, 6) == [4, 1]
    assert power_of_two_chunks(3, 1) == [1, 1, 1]
    assert all(sum(power_of_two_chunks(n, k)) == n for n in range(1, 40) for k in range(1, 10))


def test_segmentation_equals_the_reference():
    config = MobileViTV2Config.from_width(0.5, num_labels=4, output_stride=16)
    model = randomize_(MobileViTV2ForSemanticSegmentation(config), seed=5).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(x).logits
    assert_nontrivial(expected, "reference segmentation logits")
    fast = CPUInference(model)
    got = fast(x)
    assert_ran_packages(fast)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_image_layout_path(model):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(x).logits
    torch.testing.assert_close(CPUInference(model, image_layout=True)(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this PyTorch build")
def test_freezing_takes_effect(model):
    """Frozen weights are what lets Inductor pre-pack the convolutions for oneDNN; a freezing request that
    Inductor does not see leaves every convolution unpacked (and the path about 20% slower)."""
    from torch._dynamo.utils import counters

    from mobilevitv2.bench.models import model_cases

    before = counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"]
    CPUInference(model, disk_cache=False)(torch.rand(1, 3, 64, 64))
    after_cpu_path = counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"]
    assert after_cpu_path > before
    (case,) = model_cases(0.5, 1, torch.float32, torch.device("cpu"), size=64, providers=["ours fused all compiled frozen"])
    case.fn()  # the benchmark's frozen provider
    assert counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"] > after_cpu_path


def test_instances_do_not_share_a_recompile_count(model):
    """Each CPUInference compiles its own frozen weights; were its graphs counted per class (one shared
    ``forward`` code object), a process with a few models and batch sizes would hit Dynamo's recompile
    limit, a hard error under fullgraph. With the limit at 1, two instances must still both compile."""
    x = torch.rand(1, 3, 64, 64)
    first, second = CPUInference(model, disk_cache=False), CPUInference(model, disk_cache=False)
    with torch._dynamo.config.patch(recompile_limit=1):  # the config's own patch: its values are restored
        torch.testing.assert_close(first(x), second(x), atol=0, rtol=0)


@pytest.mark.parametrize("disk_cache", [True, False], ids=["packages", "in-process"])
def test_compiled_copy_is_unaffected_by_later_changes_to_the_model(model, disk_cache, tmp_path):
    """The compiled graphs guard on their input, not on the modules they were traced from (those guards cost
    about 0.4 ms a call): the copy owns its weights, so a change to the model after the compile must
    neither reach its output nor be needed there; a new input shape still compiles its own graph."""
    import copy

    changed = copy.deepcopy(model)
    fast = CPUInference(changed, late_batch=2, disk_cache=disk_cache, cache_dir=tmp_path)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = model(x).logits
    torch.testing.assert_close(fast(x[:1]), expected[:1], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        for parameter in changed.parameters():
            parameter.mul_(-1.5)
    changed.train()
    torch.testing.assert_close(fast(x), expected, atol=1e-5, rtol=1e-5)  # groups of 2 and 1: a new shape


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this PyTorch build")
def test_frozen_packages_are_kept_and_loaded_by_a_later_instance(model, tmp_path):
    """The first instance compiles a package per graph and input (frozen: its convolutions pre-packed); a
    second instance with the same weights loads them all and compiles nothing, with the same output; other
    weights, another precision or another input shape compile their own."""
    import copy

    from torch._dynamo.utils import counters

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(x).logits
    packed_before = counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"]
    first = CPUInference(model, cache_dir=tmp_path)
    torch.testing.assert_close(first(x), expected, atol=1e-5, rtol=1e-5)
    assert counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"] > packed_before
    assert (first.early.compiled, first.late.compiled, first.early.loaded, first.late.loaded) == (1, 1, 0, 0)
    packages = sorted(p.name for p in tmp_path.iterdir())
    assert len(packages) == 2 and all(name.endswith(".pt2") for name in packages), packages

    second = CPUInference(model, cache_dir=tmp_path)
    torch.testing.assert_close(second(x), first(x), atol=0, rtol=0)
    assert (second.early.compiled, second.late.compiled, second.early.loaded, second.late.loaded) == (0, 0, 1, 1)

    other = copy.deepcopy(model)
    with torch.no_grad():
        other.classifier.weight.mul_(2)
    other_weights = CPUInference(other, cache_dir=tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(other_weights(x), other(x).logits, atol=1e-5, rtol=1e-5)
    assert (other_weights.early.compiled, other_weights.late.compiled) == (1, 1)  # keyed by all the weights
    assert len(list(tmp_path.iterdir())) == 4


def test_a_damaged_package_is_compiled_again(model, tmp_path):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    first = CPUInference(model, cache_dir=tmp_path)
    expected = first(x)
    for package in tmp_path.iterdir():
        package.write_bytes(b"not a package")
    again = CPUInference(model, cache_dir=tmp_path)
    torch.testing.assert_close(again(x), expected, atol=0, rtol=0)
    assert (again.early.compiled, again.late.compiled, again.early.loaded, again.late.loaded) == (1, 1, 0, 0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial-")]  # no half-written file left


def test_stale_partial_packages_are_removed_and_young_ones_kept(tmp_path):
    """A package half-written by a process killed while compiling is removed once it is a day old; a young
    one may be another process's compile in progress and stays, as does every finished package."""
    from mobilevitv2.compiled_graphs import STALE_PARTIAL_SECONDS, remove_stale_partials

    now = 1_000_000_000.0
    stale, young, finished = (tmp_path / name for name in (".partial-a.pt2", ".partial-b.pt2", "early-1x3-ab.pt2"))
    for path, age in ((stale, STALE_PARTIAL_SECONDS + 60), (young, 60), (finished, 10 * STALE_PARTIAL_SECONDS)):
        path.write_bytes(b"x")
        os.utime(path, (now - age, now - age))
    assert remove_stale_partials(tmp_path, now=now) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".partial-b.pt2", "early-1x3-ab.pt2"]


def test_a_graph_aotinductor_cannot_compile_falls_back_with_one_warning(model, tmp_path, monkeypatch):
    from mobilevitv2 import compiled_graphs

    def refuse(*args, **kwargs):
        raise RuntimeError("no compiler for this graph")

    monkeypatch.setattr(compiled_graphs.torch._inductor, "aoti_compile_and_package", refuse)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = model(x).logits
    fast = CPUInference(model, cache_dir=tmp_path)
    with pytest.warns(RuntimeWarning) as caught:
        got = fast(x)
        again = fast(x)  # the fallback kept for this input: no second attempt, no second warning
    messages = [str(w.message) for w in caught if "AOTInductor" in str(w.message)]
    assert len(messages) == 2, messages  # one per graph, each input tried once
    assert len(set(messages)) == 1 and "could not compile a CPU graph (RuntimeError: no compiler" in messages[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, got, atol=0, rtol=0)
    assert (fast.early.fell_back, fast.late.fell_back, fast.early.compiled, fast.late.compiled) == (1, 1, 0, 0)
    assert not list(tmp_path.iterdir())  # nothing half-written kept


def test_a_cache_that_cannot_be_written_keeps_the_packages_in_the_process(model, tmp_path):
    blocked = tmp_path / "a file, not a folder"
    blocked.write_text("")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        expected = model(x).logits
    fast = CPUInference(model, cache_dir=blocked / "graphs")
    with pytest.warns(RuntimeWarning, match="cannot write compiled CPU graphs to"):
        got = fast(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert_ran_packages(fast)
