"""The benchmark harness (mobilevitv2/bench/): providers as data, the output check that keeps a wrong
provider from being timed, speed-ups against the named baseline, partial results written after every case,
the targets suite end to end on tiny CPU shapes (its GPU run is bench/gpu_all.sh) and the providers each
target runs, SIGTERM ending a run with its files written; the harness's place (nothing in the model package
imports it; the old module name warns and forwards); and bench/gpu_check_kernels.py: its CPU dry run, its
results file after every measurement, its exit status without a GPU and on SIGTERM, its timing, environment
and file through the harness."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from mobilevitv2.bench import checks, command, harness, models, ops, suites

CPU = torch.device("cpu")


def test_model_cases_check_outputs_and_use_the_named_baseline():
    pytest.importorskip("transformers")
    cases = models.model_cases(0.5, 2, torch.float32, CPU, size=64, providers=["ours eager", "transformers eager"],
                           baseline="transformers eager")  # fmt: skip
    assert [c.provider for c in cases] == ["ours eager", "transformers eager"]
    assert [c.baseline for c in cases] == [False, True]
    results = harness.run_cases(cases, CPU, reps=1, progress=False)
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

    cases = [harness.Case("g", name, checks.Deferred(build, name), baseline=name == "good") for name in ("good", "broken")]
    good, broken = harness.run_cases(cases, CPU, reps=2, progress=False)
    assert good.error is None and good.speedup == pytest.approx(1.0)
    assert broken.error == "AssertionError: wrong output: relative error 1" and broken.speedup is None
    assert calls.count("broken") == 1  # the first call is checked, and nothing after it runs


def test_cpu_groups_are_timed_in_rounds():
    """interleave=True: each provider is checked and warmed up, then the group's providers are timed one
    call each per round (a drifting machine slows them alike); a broken provider is reported, the others
    still timed, and the groups keep their order."""
    calls = []

    def build(provider):
        def fn():
            calls.append(provider)
            return torch.ones(3)

        return fn, lambda out: "wrong output: relative error 1" if provider.endswith("broken") else None

    cases = [
        harness.Case(group, name, checks.Deferred(build, f"{group}{name}"), baseline=name == "a", items=2)
        for group in ("g1", "g2")
        for name in ("a", "broken", "b")
    ]
    results = harness.run_cases(cases, CPU, reps=4, progress=False, interleave=True)
    assert [(r.group, r.provider) for r in results] == [(c.group, c.provider) for c in cases]
    assert [r.error is None for r in results] == [True, False, True] * 2
    assert results[0].speedup == pytest.approx(1.0) and results[2].speedup == pytest.approx(results[0].ms / results[2].ms)
    assert results[2].items_per_s == pytest.approx(2 / results[2].ms * 1e3)
    g1 = [c for c in calls if c.startswith("g1")]
    # 3 warm-up calls each, the first of them checked (a call more); the broken one stops at its check
    assert g1[:9] == ["g1a"] * 4 + ["g1broken"] + ["g1b"] * 4
    assert g1[9:] == ["g1a", "g1a", "g1b", "g1b"] * 4  # then 4 rounds: a settling call, then the timed one


def test_cpu_rounds_print_how_long_each_provider_took_to_get_ready(capsys):
    """Progress shows where a long run spends its time: each provider's build, check and warm-up (a
    compile or an export), and none for a provider that failed its check."""

    def build(provider):
        def fn():
            if provider == "slow":
                time.sleep(0.05)
            return torch.ones(3)

        return fn, lambda out: "wrong output" if provider == "broken" else None

    cases = [harness.Case("g", name, checks.Deferred(build, name)) for name in ("slow", "broken")]
    harness.run_cases(cases, CPU, reps=1, progress=True, interleave=True)
    err = capsys.readouterr().err
    ready = [line for line in err.splitlines() if "ready in" in line]
    assert len(ready) == 1 and float(ready[0].split("ready in ")[1].split(" s")[0]) >= 0.2, err  # 4 calls of 50 ms


def test_time_interleaved_stops_at_its_time_limit():
    import time

    slow = lambda: time.sleep(0.02)  # noqa: E731
    began = time.perf_counter()
    assert harness.time_interleaved_ms([slow, slow], reps=1000, max_seconds=0.05, settle_seconds=0) == [pytest.approx(20, abs=15)] * 2
    assert time.perf_counter() - began < 1  # 3 rounds of 4 calls, not 1000 rounds
    # the pauses do not count against the time limit: 2 ms calls run past the 3-round minimum (about 12
    # rounds to 0.1 s of calls) although the first round's pauses alone exceed the limit
    calls = []
    quick = lambda: (calls.append(1), time.sleep(0.002))  # noqa: E731
    harness.time_interleaved_ms([quick, quick], reps=1000, max_seconds=0.05, settle_seconds=0.05)
    assert len(calls) > 12, len(calls)


def test_time_interleaved_lets_the_previous_provider_settle():
    import time

    calls: list[tuple[str, float]] = []
    fns = [lambda name=name: calls.append((name, time.perf_counter())) for name in "ab"]
    harness.time_interleaved_ms(fns, reps=3, settle_seconds=0.02)
    assert [name for name, _ in calls] == list("aabb" * 3)
    # each turn (two calls) begins at least the pause after the previous turn's last call
    turn_starts = [(calls[i - 1][1], calls[i][1]) for i in range(2, len(calls), 2)]
    assert all(start - previous >= 0.02 for previous, start in turn_starts), turn_starts
    assert calls[1][1] - calls[0][1] < 0.02  # the discarded call and the timed one follow each other


def test_cpu_description_names_the_model_and_its_matmul_features():
    cpuinfo = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\n"
    described = harness.cpu_description(cpuinfo)
    assert described.startswith("CPU (Intel(R) Xeon(R) Processor, ") and described.endswith(", AVX-512, AVX-512 BF16, AMX)"), described
    assert f"{os.cpu_count()} cores" in described
    plain = harness.cpu_description("model name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2\n")
    assert "AMD EPYC 9R14" in plain and "AVX" not in plain and "AMX" not in plain, plain
    assert harness.cpu_description("").startswith("CPU (")  # no /proc/cpuinfo: the platform's names


def test_relative_error():
    expected = torch.tensor([3.0, 4.0])
    assert checks.relative_error(expected, expected) == 0.0
    assert checks.relative_error(torch.tensor([3.0, 4.5]), expected) == pytest.approx(0.1)
    assert checks.relative_error(torch.tensor([float("nan"), 4.0]), expected) == float("inf")


def test_unknown_providers_and_inference_only_training_are_refused():
    with pytest.raises(ValueError, match="unknown model providers"):
        models.model_cases(0.5, 1, torch.float32, CPU, providers=["ours turbo"])
    with pytest.raises(ValueError, match="inference-only"):
        models.model_cases(0.5, 1, torch.float32, CPU, training=True, providers=["ours fused+conv"])
    with pytest.raises(ValueError, match="task must be"):
        models.model_cases(0.5, 1, torch.float32, CPU, task="detection")


def test_default_providers():
    cpu = models.default_model_providers(CPU, training=False, compiled=True, reduce_overhead=False)
    assert cpu == ["transformers eager", "transformers compiled", "ours eager", "ours compiled"]
    gpu = models.default_model_providers(torch.device("cuda"), training=True, compiled=True, reduce_overhead=True)
    assert "ours fused compiled reduce-overhead" in gpu
    assert not any("+conv" in p or " all" in p for p in gpu)  # inference-only fusions have no training step
    assert all(p in models.MODEL_PROVIDERS for p in gpu)


def test_targets_suite_end_to_end(tmp_path):
    """The same code the GPU run takes, on tiny shapes: every group runs, every case has a result (no
    error), the files carry the environment, and partial results exist after each case."""
    pytest.importorskip("transformers")
    prefix = str(tmp_path / "targets")
    written = []
    cases = suites.target_cases(CPU, quick=True)
    groups = {c.group for c in cases}
    assert any("train step" in g for g in groups) and any("seg OS16" in g for g in groups)
    assert any(g.startswith("attention N=") for g in groups)
    env = harness.environment(CPU)

    def after_each(partial):
        harness.write_results(prefix, env, partial)
        written.append(len(json.load(open(prefix + ".json"))["results"]))

    results = harness.run_cases(cases, CPU, reps=1, progress=False, after_each=after_each)
    assert written == list(range(1, len(cases) + 1))
    assert [r.error for r in results] == [None] * len(results)
    assert all(r.speedup is not None for r in results)
    table = harness.format_table(results)
    assert "transformers eager" in table and "ours eager" in table


def test_main_writes_the_targets_files(tmp_path, capsys):
    pytest.importorskip("transformers")
    prefix = tmp_path / "run"
    assert command.main(["--suite", "targets", "--quick", "--device", "cpu", "--reps", "1", "--out", str(prefix)]) == 0
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["environment"]["device"].startswith("CPU") and data["environment"]["torch"] == torch.__version__
    assert (tmp_path / "run.csv").read_text().startswith("device,commit,group,provider")
    assert harness.format_table([harness.Result(**row) for row in data["results"]]) in (tmp_path / "run.txt").read_text()
    assert data["not_run"] == []
    assert data["environment"]["malloc"] == "stock" and "malloc stock" in (tmp_path / "run.txt").read_text()
    assert "speed-up" in capsys.readouterr().out


def test_keep_freed_memory_is_recorded_in_the_environment(tmp_path, capsys, monkeypatch):
    """--keep-freed-memory changes the process's malloc (mobilevitv2.cpu_memory; stubbed here, so the suite's
    own allocator is left alone) and says so in the results' environment."""
    pytest.importorskip("transformers")
    from mobilevitv2 import cpu_memory

    calls = []
    monkeypatch.setattr(cpu_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    prefix = tmp_path / "run"
    assert command.main(["--suite", "targets", "--quick", "--device", "cpu", "--reps", "1", "--out", str(prefix), "--keep-freed-memory"]) == 0
    assert calls == [1]
    assert json.loads((tmp_path / "run.json").read_text())["environment"]["malloc"] == "freed memory kept"
    assert "malloc freed memory kept" in capsys.readouterr().err


def test_every_uncompiled_provider_builds_and_passes_its_check(monkeypatch):
    """Each provider that needs no compilation builds its model, runs, and matches ours eager in fp32 (on the
    CPU "auto" means eager and "triton" runs under the interpreter), so a typo in the table cannot cost a
    GPU run. The fused inverted residual ("+conv", conv="triton") is called as the provider asks but runs
    its reference backend: under the interpreter the kernel would take 90 s here, and tests/ops and
    tests/test_fused_model.py test it."""
    import mobilevitv2_kernels

    pytest.importorskip("transformers")
    conv_backends = []
    real_op = mobilevitv2_kernels.inverted_residual

    def reference_inverted_residual(*args, backend=None, **kwargs):
        conv_backends.append(backend)
        return real_op(*args, backend="reference", **kwargs)

    monkeypatch.setattr(mobilevitv2_kernels, "inverted_residual", reference_inverted_residual)
    providers = [p for p, (_, _, compile_kwargs) in models.MODEL_PROVIDERS.items() if compile_kwargs is None]
    assert "ours fused all (triton only)" in providers and "ours fused+conv" in providers
    cases = models.model_cases(0.5, 1, torch.float32, CPU, size=64, providers=providers)
    results = harness.run_cases(cases, CPU, reps=1, progress=False)
    assert [r.error for r in results] == [None] * len(providers), results
    assert conv_backends and set(conv_backends) == {"triton"}  # only "+conv" asks for the fused convs


def test_write_results_writes_a_table_and_what_has_not_run(tmp_path):
    """After every case the .txt holds the readable table, and the files say which cases never ran."""
    prefix = str(tmp_path / "sub" / "t")
    env = {"device": "CPU (test)", "commit": "abc", "torch": torch.__version__}
    results = [harness.Result("g", "base", 2.0, speedup=1.0), harness.Result("g", "ours", 1.0, speedup=2.0)]
    paths = harness.write_results(prefix, env, results, not_run=[("g", "later")])
    assert paths == (prefix + ".json", prefix + ".csv")
    text = (tmp_path / "sub" / "t.txt").read_text()
    assert harness.format_table(results) in text and "CPU (test)" in text and "abc" in text
    assert "not run (1)" in text and "g | later" in text
    data = json.loads((tmp_path / "sub" / "t.json").read_text())
    assert data["not_run"] == [{"group": "g", "provider": "later"}]
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.endswith(".tmp")]  # temp files renamed away


# ----- the targets suite: each group runs its baseline and our providers, nothing else ------------------------

# What decides each target (the GPU suite, in run order: groups without torch.compile first).
EXPECTED_TARGET_GROUPS = [
    ("model", {"batch": 32, "task": "segmentation", "size": 512}, ["transformers eager", "ours fused all"]),
    ("model", {"batch": 128, "training": True}, ["transformers eager", "ours fused"]),
    *[("transformer_layer", {"dim": dim}, ["module eager", "fused op"]) for dim in (128, 192, 256)],
    *[("attention_scaling", {"n": n}, ["multi-head SDPA", "separable fused", "separable fused key-free (inference op)"])
      for n in (64, 256, 1024, 4096, 16384)],
    ("model", {"batch": 256}, ["transformers compiled", "ours fused all", "ours fused all compiled"]),
    ("model", {"batch": 1}, ["transformers compiled reduce-overhead", "ours fused all compiled reduce-overhead"]),
]  # fmt: skip


def test_every_target_group_runs_exactly_its_baseline_and_ours(monkeypatch):
    """The GPU targets suite, with the case builders replaced by recorders (nothing is built or run): every
    group asks for exactly the baseline its target names and our providers it is about, flags that baseline,
    and the groups without compiled providers come first."""
    calls = []

    def recorder(builder, names):
        def build(*args, providers, baseline, **kwargs):
            calls.append((builder, {**dict(zip(names, args)), **kwargs}, list(providers), baseline))
            group = f"{builder} {len(calls)}"
            return [harness.Case(group, p, lambda: None, baseline=p == baseline) for p in providers]

        return build

    monkeypatch.setattr(suites, "model_cases", recorder("model", ["width", "batch", "dtype", "device"]))
    monkeypatch.setattr(suites, "transformer_layer_cases", recorder("transformer_layer", ["batch", "dim", "n", "dtype", "device"]))
    monkeypatch.setattr(suites, "attention_scaling_cases", recorder("attention_scaling", ["n", "tokens", "dim", "dtype", "device", "backward"]))  # fmt: skip
    cases = suites.target_cases(torch.device("cuda"))
    assert len(calls) == len(EXPECTED_TARGET_GROUPS)
    for (builder, kwargs, providers, baseline), (want_builder, want_kwargs, want_providers) in zip(calls, EXPECTED_TARGET_GROUPS):
        assert builder == want_builder and {k: kwargs[k] for k in want_kwargs} == want_kwargs, (builder, kwargs)
        assert providers == want_providers and baseline == want_providers[0], (kwargs, providers, baseline)
        assert kwargs["dtype"] == (torch.bfloat16 if kwargs.get("training") else torch.float16)
        assert kwargs.get("width", 1.0) == 1.0
    by_group = {}
    for case in cases:
        by_group.setdefault(case.group, []).append(case)
    assert [[c.provider for c in g] for g in by_group.values()] == [p for _, _, p in EXPECTED_TARGET_GROUPS]
    assert all([c.baseline for c in g] == [True] + [False] * (len(g) - 1) for g in by_group.values())
    compiles = [g.compiles for g in sorted(suites.TARGET_GROUPS, key=lambda g: g.compiles)]
    assert compiles == sorted(compiles) and compiles[0] == 0 and compiles[-1] > 0


def test_attention_and_transformer_layer_builders_take_the_providers_given():
    cases = ops.attention_scaling_cases(16, 256, 16, torch.float32, CPU, False, baseline="multi-head SDPA",
                                       providers=["multi-head SDPA", "separable fused", "separable fused key-free (inference op)"])  # fmt: skip
    assert [(c.provider, c.baseline) for c in cases] == [
        ("multi-head SDPA", True), ("separable fused", False), ("separable fused key-free (inference op)", False)]  # fmt: skip
    results = harness.run_cases(cases, CPU, reps=1, progress=False)  # on the CPU "auto" runs the reference
    assert [r.error for r in results] == [None] * 3 and results[0].speedup == pytest.approx(1.0)
    default = ops.attention_scaling_cases(16, 256, 16, torch.float32, CPU, False)
    assert [c.provider for c in default] == ["separable eager", "multi-head SDPA", "nn.MultiheadAttention"]
    with pytest.raises(ValueError, match="unknown attention providers"):
        ops.attention_scaling_cases(16, 256, 16, torch.float32, CPU, False, providers=["flash"])
    layer = ops.transformer_layer_cases(2, 16, 4, torch.float32, CPU, providers=["module eager", "fused op"])
    assert [(c.provider, c.baseline) for c in layer] == [("module eager", True), ("fused op", False)]


def test_fused_providers_reach_the_fused_ops(monkeypatch):
    """"separable fused" and the transformer layer's "fused op" run the fused ops (not the reference path
    they fall back to when a module's implementation attribute is missing or misnamed): each op is wrapped
    by a recorder, and "auto" is made to take the fused attention on the CPU for this test."""
    import mobilevitv2_kernels
    from mobilevitv2 import implementation

    calls = []
    for name in ("separable_attention", "transformer_layer"):
        op = getattr(mobilevitv2_kernels, name)
        monkeypatch.setattr(mobilevitv2_kernels, name, lambda *a, _op=op, _name=name, **k: calls.append(_name) or _op(*a, **k))
    monkeypatch.setitem(implementation.FUSED_IS_FASTER, "attention", frozenset({"cuda", "cpu"}))
    cases = ops.attention_scaling_cases(16, 256, 16, torch.float32, CPU, False, providers=["separable eager", "separable fused"])
    cases += ops.transformer_layer_cases(2, 16, 4, torch.float32, CPU, providers=["module eager", "fused op"])
    results = []
    for case in cases:
        before = len(calls)
        results += harness.run_cases([case], CPU, reps=1, progress=False)
        calls_made = set(calls[before:])
        expected = {"separable fused": {"separable_attention"}, "fused op": {"transformer_layer"}}.get(case.provider, set())
        assert calls_made == expected, (case.provider, calls_made)
    assert [r.error for r in results] == [None] * 4, results
    with pytest.raises(AttributeError, match="fused_backend"):
        ops.use_backend(torch.nn.Linear(1, 1), "fused_backend", "triton")


# ----- float32 oracles with TF32 off --------------------------------------------------------------------------


def test_fp32_oracles_are_computed_with_tf32_off(monkeypatch):
    """model_cases' and transformer_layer_cases' float32 oracle runs with TF32 off for convolutions and
    matmuls (a TF32 "fp32 reference" rounds like the fp16 it judges), and the settings come back after."""
    from mobilevitv2 import MobileViTV2ForImageClassification
    from mobilevitv2.blocks import MobileViTV2TransformerLayer

    seen = []

    def spy(cls):
        forward = cls.forward

        def recording(self, *args, **kwargs):
            seen.append((cls.__name__, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return forward(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", recording)

    spy(MobileViTV2ForImageClassification)
    spy(MobileViTV2TransformerLayer)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # what a GPU run may have
    try:
        models.model_cases(0.5, 1, torch.float32, CPU, size=64, providers=["ours eager"])
        model_calls = [s for s in seen if s[0] == "MobileViTV2ForImageClassification"]
        assert model_calls == [("MobileViTV2ForImageClassification", False, False)]  # the oracle, the only call
        seen.clear()
        ops.transformer_layer_cases(2, 16, 4, torch.float32, CPU, providers=["module eager"])
        assert seen == [("MobileViTV2TransformerLayer", False, False)]
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_sigterm_stops_a_run_and_its_files_hold_what_ran(tmp_path):
    """A time limit's SIGTERM during the second case: run_to_files returns the first result and the signal's
    name, and the files list that result and the two cases never reached."""
    def terminate():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises in this thread long before

    cases = [harness.Case("g", "first", lambda: None, baseline=True), harness.Case("g", "killer", terminate),
             harness.Case("g", "never", lambda: None)]  # fmt: skip
    env = {"device": "CPU (test)", "commit": "abc"}
    previous = signal.getsignal(signal.SIGTERM)
    results, stopped = harness.run_to_files(cases, CPU, str(tmp_path / "r"), env, reps=1)
    assert stopped == "SIGTERM" and [r.provider for r in results] == ["first"]
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back
    env_read, read = harness.read_results(tmp_path / "r.json")
    assert env_read == env and [r.provider for r in read] == ["first"]
    data = json.loads((tmp_path / "r.json").read_text())
    assert [row["provider"] for row in data["not_run"]] == ["killer", "never"]
    assert "not run (2)" in (tmp_path / "r.txt").read_text()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_child_forked_during_a_run_takes_sigterms_default_action():
    """A library's helper process forked during a run (OpenVINO's converter forks one per usage report) must
    die on SIGTERM even while blocked in C, where the run's Python handler could never run: in the child the
    default action is back; in the parent the run's handler stays."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    def report():
        queue.put(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)

    with harness.stop_on_sigterm():
        child = context.Process(target=report)
        child.start()
        default_in_child = queue.get(timeout=60)
        child.join(60)
        in_parent = signal.getsignal(signal.SIGTERM)
    assert default_in_child is True and child.exitcode == 0
    assert in_parent not in (signal.SIG_DFL, signal.SIG_IGN) and in_parent is not signal.getsignal(signal.SIGTERM)


# ----- where the harness lives ----------------------------------------------------------------------------------

PACKAGE = Path(__file__).resolve().parent.parent / "mobilevitv2"


def _is_harness(module: str) -> bool:
    return module == "mobilevitv2.bench" or module.startswith("mobilevitv2.bench.")


def test_no_module_of_the_package_imports_the_harness():
    """Importing the package and every module of it outside mobilevitv2/bench/ (the CLI and the old module
    name included) loads no harness module; and in the source, no module but the CLI and the old name
    imports it at all, those two only inside a function (when the bench command runs)."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import mobilevitv2\n"
        "names = [m.name for m in pkgutil.iter_modules(mobilevitv2.__path__, 'mobilevitv2.') if m.name != 'mobilevitv2.bench']\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(' '.join(names))\n"
        "print(' '.join(m for m in sys.modules if m == 'mobilevitv2.bench' or m.startswith('mobilevitv2.bench.')))\n"
    )  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported, harness_modules = (proc.stdout.splitlines() + ["", ""])[:2]
    assert {"mobilevitv2.models", "mobilevitv2.blocks", "mobilevitv2.cli", "mobilevitv2.benchmark"} <= set(imported.split())
    assert harness_modules.split() == []

    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            if any(_is_harness(t) for t in targets):
                where = f"{path.name}:{node.lineno}"
                assert path.name in ("cli.py", "benchmark.py"), f"{where} imports the benchmark harness"
                assert id(node) not in top_level, f"{where} imports the benchmark harness at module level"


def test_the_old_module_name_forwards_with_one_warning(monkeypatch):
    """mobilevitv2.benchmark: every public name resolves to the same object in mobilevitv2.bench, with one
    DeprecationWarning naming the new package; main (what the CLI calls) runs the bench command."""
    import mobilevitv2.benchmark as old

    old = importlib.reload(old)  # a fresh module: no warning given yet
    with pytest.warns(DeprecationWarning, match=r"mobilevitv2\.bench\b.*mobilevitv2\.bench\.harness"):
        assert old.time_ms is harness.time_ms
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        for name in old.__all__:
            new_home = {"main": None, **{n: m for m, names in old._NEW_HOME.items() for n in names}}[name]
            if new_home is not None:
                assert getattr(old, name) is getattr(importlib.import_module(new_home), name), name
        assert old.model_cases is models.model_cases and old.TARGET_GROUPS is suites.TARGET_GROUPS
        with pytest.raises(AttributeError):
            old.no_such_name  # noqa: B018
        seen = []
        monkeypatch.setattr(command, "main", lambda argv: seen.append(argv) or 0)
        assert old.main(["--reps", "1"]) == 0 and seen == [["--reps", "1"]]


# ----- bench/gpu_check_kernels.py -----------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
GPU_CHECK = REPO / "bench" / "gpu_check_kernels.py"


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check_kernels", GPU_CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timed_values(data: dict) -> list[float]:
    """Every timing in the file (keys "ms", "fwd_ms", ...) of the sections and the copies."""
    values = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if re.fullmatch(r"(\w+_)?ms", key) and isinstance(value, (int, float)):
                    values.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk([data["sections"], data["copies"]])
    return sorted(values)


def test_gpu_check_kernels_smoke_records_the_variant_comparison_first(tmp_path):
    """The CPU dry run (Triton interpreter, tiny shapes) exits 0 and its file starts with both inverted-residual
    kernel variants at each block shape, each checked against the oracle before it was timed."""
    out = tmp_path / "kernels.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(GPU_CHECK), "--smoke", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["finished"] is True and data["errors"] == []
    env = data["environment"]  # the harness's block, the same keys as every mobilevitv2 bench file
    assert set(env) == set(harness.environment(CPU)) and env["torch"] == torch.__version__
    assert "tests" not in data
    sections = list(data["sections"])
    assert sections[0] == "ir_variants"
    assert sections[1:] == ["inverted_residual", "attention", "patching"]  # nothing compiled, no sweep
    rows = data["sections"]["ir_variants"]
    blocks = {r["block"] for r in rows}
    assert {r["shape"][-1] for r in rows} == {1, 2}  # both strides
    for block in blocks:
        variants = {r["variant"]: r for r in rows if r["block"] == block}
        assert set(variants) == {"recompute", "halo"}
        for r in variants.values():
            assert r["within_bound"] and r["max_abs_err"] <= r["bound"] and r["ms"] > 0
    assert set(data["summary"]["ir_variant_choice"]) == blocks


def test_gpu_check_kernels_file_holds_every_measurement_before_a_kill(tmp_path):
    """With a timer that returns k at its k-th call, a full run records every value 1..T; a run killed at the
    N-th timing (mid-way through an attention row) leaves exactly 1..N-1 in the file, the killed row's
    error checks included; a kill at the first timing leaves the first kernel's check."""
    module = _gpu_check_module()

    class Killed(BaseException):  # like a time limit's signal: nothing in the script catches it
        pass

    def timer(kill_at=None):
        count = [0]

        def time_it(fn, rep):
            count[0] += 1
            if count[0] == kill_at:
                raise Killed
            return float(count[0])

        return time_it

    full = tmp_path / "full.json"
    assert module.main(["--smoke", "--out", str(full)], timer=timer()) == 0
    data = json.loads(full.read_text())
    total = len(_timed_values(data))
    assert total > 20 and _timed_values(data) == [float(k) for k in range(1, total + 1)]

    first_attention = data["sections"]["attention"][0]
    kill_at = int(first_attention["bwd_ms"])
    killed = tmp_path / "killed.json"
    with pytest.raises(Killed):
        module.main(["--smoke", "--out", str(killed)], timer=timer(kill_at))
    partial = json.loads(killed.read_text())
    assert partial["finished"] is False
    assert _timed_values(partial) == [float(k) for k in range(1, kill_at)]
    row = partial["sections"]["attention"][0]
    assert row["fwd_ms"] == first_attention["fwd_ms"] and "bwd_ms" not in row
    assert row["fwd_within_bound"] and row["bwd_within_bound"]  # checked before anything was timed
    assert partial["sections"]["ir_variants"] == data["sections"]["ir_variants"]

    first = tmp_path / "first.json"
    with pytest.raises(Killed):
        module.main(["--smoke", "--out", str(first)], timer=timer(1))
    partial = json.loads(first.read_text())
    assert _timed_values(partial) == [] and list(partial["sections"]) == ["ir_variants"]
    assert partial["sections"]["ir_variants"][0]["within_bound"] is True
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_gpu_check_kernels_without_a_gpu_fails_with_a_message(tmp_path):
    out = tmp_path / "kernels.json"
    proc = subprocess.run([sys.executable, str(GPU_CHECK), "--out", str(out), "--rep", "50"], cwd=REPO,
                          env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "--smoke" in proc.stderr
    assert not out.exists()


def test_gpu_check_kernels_stopped_by_sigterm_keeps_its_results(tmp_path):
    """A time limit's SIGTERM mid-run: exit status 143, the file valid, marked as stopped, nothing lost. Each
    timed call of the child takes 0.3 s longer, so that the run is still going when the signal comes (on a
    fast machine the rest of the smoke run could finish first)."""
    out = tmp_path / "kernels.json"
    slowed = (
        "import runpy, sys, time\n"
        "from mobilevitv2.bench import harness\n"
        "once = harness.once_ms\n"
        "harness.once_ms = lambda fn: (time.sleep(0.3), once(fn))[1]\n"
        f"sys.argv = [{str(GPU_CHECK)!r}, '--smoke', '--out', {str(out)!r}]\n"
        f"runpy.run_path({str(GPU_CHECK)!r}, run_name='__main__')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", slowed], cwd=REPO,
                            env={**os.environ, "TRITON_INTERPRET": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(_timed_values(json.loads(out.read_text()))) >= 3:  # atomic: always whole
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        measured = len(_timed_values(json.loads(out.read_text())))
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, output[-3000:]
    data = json.loads(out.read_text())
    assert data["stopped_by"] == "SIGTERM" and data["finished"] is False
    assert len(_timed_values(data)) >= measured and list(data["sections"])[0] == "ir_variants"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_gpu_check_kernels_times_and_writes_through_the_harness(tmp_path, monkeypatch):
    """The kernel checks take their environment block, their timer (one call under --smoke, do_bench_ms on a
    GPU), their copy timings and every write of their file from the harness: with those replaced by
    recorders, the file holds the recorder's environment, every timing is the recorder's, and every save
    went through harness.write_json."""
    module = _gpu_check_module()
    fake_env = {"device": "CPU (recorded)", "torch": "t", "triton": "tr", "commit": "c0ffee"}
    monkeypatch.setattr(harness, "environment", lambda device: dict(fake_env))
    timed = []

    def once_ms(fn):  # k/4 ms at the k-th call
        fn()
        timed.append(fn)
        return 0.25 * len(timed)

    monkeypatch.setattr(harness, "once_ms", once_ms)
    writes = []
    write_json = harness.write_json
    monkeypatch.setattr(harness, "write_json", lambda path, data: writes.append(Path(path)) or write_json(path, data))
    out = tmp_path / "kernels.json"
    assert module.main(["--smoke", "--only-ir", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["environment"] == fake_env
    assert _timed_values(data) == [0.25 * k for k in range(1, len(timed) + 1)] and len(timed) > 4
    assert data["copies"] and all(c["ms"] in _timed_values(data) for c in data["copies"])  # the harness's copy
    assert set(writes) == {out} and len(writes) > len(timed)  # every save, each timing saved at once

    benched = []
    monkeypatch.setattr(harness, "do_bench_ms", lambda fn, rep_ms: benched.append(rep_ms) or 1.5)
    assert module.default_timer(smoke=False)(lambda: None, 50) == 1.5 and benched == [50]


def test_training_suite_runs_ours_against_transformers(tmp_path, monkeypatch):
    """The training suite: on a GPU width 1.0 bf16 batch 128, ours eager / fused / compiled against
    transformers eager and compiled (builders recorded, nothing run); on the CPU the quick case runs, every
    step gives a finite loss and a time, and the results carry the peak-memory column (CUDA only)."""
    calls = []

    def record(width, batch, dtype, device, **kwargs):
        calls.append((width, batch, dtype, kwargs))
        return []

    with monkeypatch.context() as patch:
        patch.setattr(suites, "model_cases", record)
        suites.training_cases(torch.device("cuda"))
    (width, batch, dtype, kwargs), = calls
    assert (width, batch, dtype, kwargs["training"]) == (1.0, 128, torch.bfloat16, True)
    assert kwargs["providers"] == ["transformers eager", "transformers compiled", "ours eager", "ours fused", "ours compiled", "ours fused compiled"]
    pytest.importorskip("transformers")
    prefix = tmp_path / "training"
    assert command.main(["--suite", "training", "--quick", "--device", "cpu", "--reps", "1", "--out", str(prefix)]) == 0
    rows = json.loads((tmp_path / "training.json").read_text())["results"]
    assert [r["provider"] for r in rows] == ["transformers eager", "ours eager"]
    assert all(r["error"] is None and r["ms"] > 0 and "train step" in r["group"] and "peak_mib" in r for r in rows)


def test_cpu_suite_compares_what_a_cpu_user_would_pick(tmp_path, capsys, monkeypatch):
    """The CPU comparison on tiny shapes: every provider that is installed runs, is checked against ours
    eager fp32 before it is timed (its error printed), and those not installed get a one-line note; then
    separable vs multi-head attention over N."""
    from mobilevitv2.bench import cpu

    monkeypatch.setenv("MOBILEVITV2_CACHE", str(tmp_path / "exports"))  # the runtimes' exports, not the user's cache

    cases = cpu.cpu_cases(CPU, quick=True)
    capsys.readouterr()  # the notes printed while building the cases
    providers, notes = cpu.available_cpu_providers(native_bf16=False)
    assert any("no native bf16" in n for n in notes) and all(n.count("\n") == 0 for n in notes)
    assert any(c.group.startswith("attention N=") and c.provider == "multi-head SDPA" for c in cases)
    model_cases = [c for c in cases if c.group.startswith("CPU model")]
    assert {c.provider for c in model_cases} >= {"ours eager"}
    results = harness.run_cases(model_cases, CPU, reps=1, progress=False)
    assert [r.error for r in results] == [None] * len(results), results
    err = capsys.readouterr().err
    assert err.count("vs ours eager fp32") == len(model_cases)
