"""The benchmark harness (mobilevitv2/benchmark.py): providers as data, the output check that keeps a wrong
provider from being timed, speed-ups against the named baseline, partial results written after every case,
and the targets suite end to end on tiny CPU shapes (its GPU run is bench/gpu_all.sh)."""

from __future__ import annotations

import json

import pytest
import torch

from mobilevitv2 import benchmark as bm

CPU = torch.device("cpu")


def test_model_cases_check_outputs_and_use_the_named_baseline():
    pytest.importorskip("transformers")
    cases = bm.model_cases(0.5, 2, torch.float32, CPU, size=64, providers=["ours eager", "transformers eager"],
                           baseline="transformers eager")  # fmt: skip
    assert [c.provider for c in cases] == ["ours eager", "transformers eager"]
    assert [c.baseline for c in cases] == [False, True]
    results = bm.run_cases(cases, CPU, reps=1, progress=False)
    assert all(r.error is None for r in results), results
    baseline = results[1]
    assert baseline.speedup == pytest.approx(1.0)
    assert results[0].speedup == pytest.approx(baseline.ms / results[0].ms)
    assert results[0].items_per_s == pytest.approx(2 / results[0].ms * 1e3)


def test_a_wrong_output_is_reported_and_never_timed():
    calls = []

    def build(provider):
        def fn():
            calls.append(provider)
            return torch.ones(3)

        return fn, lambda out: "wrong output: relative error 1" if provider == "broken" else None

    cases = [bm.Case("g", name, bm._Deferred(build, name), baseline=name == "good") for name in ("good", "broken")]
    good, broken = bm.run_cases(cases, CPU, reps=2, progress=False)
    assert good.error is None and good.speedup == pytest.approx(1.0)
    assert broken.error == "AssertionError: wrong output: relative error 1" and broken.speedup is None
    assert calls.count("broken") == 1  # the first call is checked, and nothing after it runs


def test_relative_error():
    expected = torch.tensor([3.0, 4.0])
    assert bm.relative_error(expected, expected) == 0.0
    assert bm.relative_error(torch.tensor([3.0, 4.5]), expected) == pytest.approx(0.1)
    assert bm.relative_error(torch.tensor([float("nan"), 4.0]), expected) == float("inf")


def test_unknown_providers_and_inference_only_training_are_refused():
    with pytest.raises(ValueError, match="unknown model providers"):
        bm.model_cases(0.5, 1, torch.float32, CPU, providers=["ours turbo"])
    with pytest.raises(ValueError, match="inference-only"):
        bm.model_cases(0.5, 1, torch.float32, CPU, training=True, providers=["ours fused+conv"])
    with pytest.raises(ValueError, match="task must be"):
        bm.model_cases(0.5, 1, torch.float32, CPU, task="detection")


def test_default_providers():
    cpu = bm.default_model_providers(CPU, training=False, compiled=True, reduce_overhead=False)
    assert cpu == ["transformers eager", "transformers compiled", "ours eager", "ours compiled"]
    gpu = bm.default_model_providers(torch.device("cuda"), training=True, compiled=True, reduce_overhead=True)
    assert "ours fused compiled reduce-overhead" in gpu
    assert not any("+conv" in p or " all" in p for p in gpu)  # inference-only fusions have no training step
    assert all(p in bm.MODEL_PROVIDERS for p in gpu)


def test_targets_suite_end_to_end(tmp_path):
    """The same code the GPU run takes, on tiny shapes: every group runs, every case has a result (no
    error), the files carry the environment, and partial results exist after each case."""
    pytest.importorskip("transformers")
    prefix = str(tmp_path / "targets")
    written = []
    cases = bm.target_cases(CPU, quick=True)
    groups = {c.group for c in cases}
    assert any("train step" in g for g in groups) and any("seg OS16" in g for g in groups)
    assert any(g.startswith("attention N=") for g in groups)
    env = bm.environment(CPU)

    def after_each(partial):
        bm.write_results(prefix, env, partial)
        written.append(len(json.load(open(prefix + ".json"))["results"]))

    results = bm.run_cases(cases, CPU, reps=1, progress=False, after_each=after_each)
    assert written == list(range(1, len(cases) + 1))
    assert [r.error for r in results] == [None] * len(results)
    assert all(r.speedup is not None for r in results)
    table = bm.format_table(results)
    assert "transformers eager" in table and "ours eager" in table


def test_main_writes_the_targets_files(tmp_path, capsys):
    pytest.importorskip("transformers")
    prefix = tmp_path / "run"
    assert bm.main(["--suite", "targets", "--quick", "--device", "cpu", "--reps", "1", "--out", str(prefix)]) == 0
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["environment"]["device"].startswith("CPU") and data["environment"]["torch"] == torch.__version__
    assert (tmp_path / "run.csv").read_text().startswith("device,commit,group,provider")
    assert "speed-up" in capsys.readouterr().out


def test_every_uncompiled_provider_builds_and_passes_its_check():
    """Each provider that needs no compilation builds its model, runs, and matches ours eager in fp32 (on the
    CPU "auto" means eager and "triton" runs under the interpreter), so a typo in the table cannot cost a
    GPU run."""
    pytest.importorskip("transformers")
    providers = [p for p, (_, _, compile_kwargs) in bm.MODEL_PROVIDERS.items() if compile_kwargs is None]
    assert "ours fused all (triton only)" in providers
    cases = bm.model_cases(0.5, 1, torch.float32, CPU, size=64, providers=providers)
    results = bm.run_cases(cases, CPU, reps=1, progress=False)
    assert [r.error for r in results] == [None] * len(providers), results
