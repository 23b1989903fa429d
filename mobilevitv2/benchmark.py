"""The benchmark harness behind ``mobilevitv2 bench`` and the scripts in ``bench/``.

Providers are data: each :class:`Case` names a group (what is being compared), a provider (who runs it)
and a zero-argument callable to time. Every case in a group runs in the same process on the same device,
and the table reports each provider's speed as a ratio against the group's baseline. Timings are medians
of CUDA-event timings on a GPU (after warm-up, with an L2-sized buffer flushed between repetitions only
where asked), or of ``time.perf_counter`` on the CPU.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch

from mobilevitv2_kernels import available_backends
from mobilevitv2_kernels import reference as kernel_reference
from mobilevitv2_kernels.numerics import strict_fp32


@dataclass
class Case:
    group: str  # what is compared, e.g. "model w1.0 b256 fp16 inference"
    provider: str  # who runs it, e.g. "ours fused", "transformers compiled"
    fn: Callable[[], object] = field(repr=False)
    baseline: bool = False  # the group's reference point for the speed-up column
    items: int = 0  # images (or tokens) per call, for a throughput column (0: none)
    bytes_moved: int = 0  # for bandwidth: bytes read + written by one call


@dataclass
class Result:
    group: str
    provider: str
    ms: float
    speedup: float | None = None
    items_per_s: float | None = None
    fraction_of_copy: float | None = None
    error: str | None = None


def environment(device: torch.device) -> dict:
    """Device name and versions that every results file carries."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": _git_commit(),
    }
    for name in ("triton", "transformers"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
    return env


def _git_commit() -> str | None:
    """The checkout's commit, or $GIT_COMMIT where the code runs from a copy without .git (a GPU box)."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int = 3, reps: int = 10, min_seconds: float = 0.0) -> float:
    """Median milliseconds of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start_end = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in start_end:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) for start, end in start_end]
    else:
        began = time.perf_counter()
        while len(times) < reps or time.perf_counter() - began < min_seconds:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes per ms of a device-to-device copy of ``nbytes`` (read + written counted), measured now."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup=3, reps=20)
    return 2 * (nbytes // 2) / ms


def run_cases(
    cases: Iterable[Case],
    device: torch.device,
    reps: int = 10,
    progress: bool = True,
    after_each: Callable[[list[Result]], None] | None = None,
) -> list[Result]:
    """Time every case; a case that fails (out of memory, a compile error, a wrong output) is reported, not
    fatal. ``after_each(results so far)`` runs after every case (to write partial results that survive a
    time limit)."""
    cases = list(cases)
    results, bandwidth_cache = [], {}
    for i, case in enumerate(cases, 1):
        if progress:
            print(f"[{i}/{len(cases)}] {case.group} | {case.provider}", file=sys.stderr, flush=True)
        try:
            ms = time_ms(case.fn, device, reps=reps)
            result = Result(case.group, case.provider, ms, items_per_s=case.items / ms * 1e3 if case.items else None)
            if case.bytes_moved:
                if case.bytes_moved not in bandwidth_cache:
                    bandwidth_cache[case.bytes_moved] = copy_bandwidth(device, case.bytes_moved)
                result.fraction_of_copy = case.bytes_moved / ms / bandwidth_cache[case.bytes_moved]
        except Exception as exc:  # reported in the table and the file
            result = Result(case.group, case.provider, float("nan"), error=f"{type(exc).__name__}: {str(exc)[:200]}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results.append(result)
        _fill_speedups(cases, results)
        if progress:
            print(f"    {'error: ' + result.error if result.error else f'{result.ms:.3f} ms'}", file=sys.stderr, flush=True)
        if after_each is not None:
            after_each(results)
    return results


def _fill_speedups(cases: list[Case], results: list[Result]) -> None:
    """Each result's speed-up against its group's baseline (where the baseline has run without error)."""
    baselines = {c.group: r.ms for c, r in zip(cases, results) if c.baseline and r.error is None}
    for r in results:
        if r.group in baselines and r.error is None:
            r.speedup = baselines[r.group] / r.ms


def format_table(results: list[Result]) -> str:
    rows = [("group", "provider", "ms", "speed-up", "items/s", "of copy BW")]
    for r in results:
        rows.append(
            (
                r.group,
                r.provider,
                "error" if r.error else f"{r.ms:.3f}",
                f"{r.speedup:.2f}x" if r.speedup else (r.error or "")[:40],
                f"{r.items_per_s:,.0f}" if r.items_per_s else "",
                f"{r.fraction_of_copy:.0%}" if r.fraction_of_copy else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _write_atomically(path: str, write: Callable[[object], None]) -> None:
    """``write(file)`` into a temporary file next to ``path``, then rename it over ``path``, so that a run
    killed mid-write leaves the previous complete file, never a truncated one."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_results(
    path_prefix: str, env: dict, results: list[Result], not_run: list[tuple[str, str]] | None = None
) -> tuple[str, str]:
    """Write ``<prefix>.json`` (environment + rows), ``<prefix>.csv`` (rows with device and commit) and
    ``<prefix>.txt`` (the environment and :func:`format_table`), each replaced atomically; ``not_run``
    lists the (group, provider) cases still to run (written to the .json and .txt, so that a run stopped
    by a time limit says what it never reached). Returns the .json and .csv paths."""
    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    rows = [asdict(r) for r in results]
    data = {"environment": env, "results": rows}
    if not_run is not None:
        data["not_run"] = [{"group": g, "provider": p} for g, p in not_run]
    _write_atomically(path_prefix + ".json", lambda f: json.dump(data, f, indent=1))

    def write_csv(f):
        writer = csv.DictWriter(f, fieldnames=["device", "commit"] + list(rows[0]) if rows else ["device"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"device": env["device"], "commit": env["commit"], **row})

    _write_atomically(path_prefix + ".csv", write_csv)
    header = ", ".join(f"{k} {env.get(k)}" for k in ("device", "torch", "triton", "transformers", "commit", "date") if k in env)
    text = header + "\n\n" + format_table(results) + "\n"
    if not_run:
        text += f"\nnot run ({len(not_run)}):\n" + "".join(f"  {g} | {p}\n" for g, p in not_run)
    _write_atomically(path_prefix + ".txt", lambda f: f.write(text))
    return path_prefix + ".json", path_prefix + ".csv"


# ----- case builders ---------------------------------------------------------------------------------------

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _compile(fn, **kwargs):
    return torch.compile(fn, **kwargs)


def attention_core_cases(shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device, backward: bool) -> list[Case]:
    """The separable-attention core (qkv -> output) at one (B, d, P, N) shape: reference eager and compiled,
    and every fused backend available here."""
    from mobilevitv2_kernels import separable_attention

    B, d, P, N = shape
    qkv = torch.randn(B, 1 + 2 * d, P, N, device=device, dtype=dtype, requires_grad=backward)
    grad = torch.randn(B, d, P, N, device=device, dtype=dtype)
    elem = qkv.element_size()
    fwd_bytes = (qkv.numel() + B * d * P * N) * elem  # read qkv, write out
    bwd_bytes = fwd_bytes + (B * d * P * N + qkv.numel() * 2) * elem  # + read grad and qkv, write grad_qkv
    mode = "fwd+bwd" if backward else "fwd"
    group = f"attention core {tuple(shape)} {_dtype_name(dtype)} {mode}"

    def runner(f):
        if not backward:
            return lambda: f(qkv)
        return lambda: torch.autograd.grad(f(qkv), qkv, grad)

    providers = [("reference eager", kernel_reference.separable_attention_forward, True)]
    providers.append(("reference compiled", _compile(kernel_reference.separable_attention_forward), False))
    for backend in available_backends(device):
        if backend != "reference":
            providers.append((f"fused {backend}", lambda t, b=backend: separable_attention(t, backend=b), False))
    return [Case(group, name, runner(f), baseline, bytes_moved=bwd_bytes if backward else fwd_bytes) for name, f, baseline in providers]


class MultiHeadSelfAttention(torch.nn.Module):
    """MobileViT v1's attention: qkv projection, ``scaled_dot_product_attention`` (flash where it can), output
    projection, over (batch, tokens, d) sequences."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        S, T, D = x.shape
        q, k, v = self.qkv(x).view(S, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(S, T, D))


ATTENTION_PROVIDERS = (
    "separable eager",
    "separable fused",
    "separable fused key-free (inference op)",
    "multi-head SDPA",
    "nn.MultiheadAttention",
)


def attention_scaling_cases(
    n: int,
    tokens: int,
    dim: int,
    dtype: torch.dtype,
    device: torch.device,
    backward: bool,
    heads: int = 4,
    providers: list[str] | None = None,
    baseline: str = "separable eager",
) -> list[Case]:
    """Separable vs multi-head attention modules (projections included) at a fixed token budget:
    separable runs on (tokens/(4N), d, 4, N), multi-head on tokens/N sequences of N tokens.

    ``providers`` (names from :data:`ATTENTION_PROVIDERS`, run in the order given) default to every one that
    applies (the fused ones on CUDA; the key-free op without backward); ``baseline`` is the group's
    reference for the speed-up column."""
    from mobilevitv2 import MobileViTV2Config
    from mobilevitv2.blocks import MobileViTV2LinearSelfAttention

    P = 4
    B = max(1, tokens // (P * n))
    mode = "fwd+bwd" if backward else "fwd"
    group = f"attention N={n} ({B * P * n} tokens, d={dim}) {_dtype_name(dtype)} {mode}"
    separable = MobileViTV2LinearSelfAttention(MobileViTV2Config(), dim).to(device=device, dtype=dtype)
    mha = MultiHeadSelfAttention(dim, heads).to(device=device, dtype=dtype)
    torch_mha = torch.nn.MultiheadAttention(dim, heads, batch_first=True).to(device=device, dtype=dtype)
    patches = torch.randn(B, dim, P, n, device=device, dtype=dtype, requires_grad=backward)
    sequences = torch.randn(B * P, n, dim, device=device, dtype=dtype, requires_grad=backward)

    def run(f, x):
        if not backward:
            def call():
                with torch.no_grad():
                    return f(x)
            return call
        return lambda: f(x).sum().backward()

    if providers is None:
        providers = [p for p in ATTENTION_PROVIDERS if device.type == "cuda" or "fused" not in p]
        providers = [p for p in providers if not (backward and "key-free" in p)]
    unknown = [p for p in providers if p not in ATTENTION_PROVIDERS]
    if unknown:
        raise ValueError(f"unknown attention providers {unknown}; known: {list(ATTENTION_PROVIDERS)}")
    if backward and any("key-free" in p for p in providers):
        raise ValueError("the key-free attention op is inference-only; it has no backward")

    def make(provider):
        if provider == "separable eager":
            return run(lambda t: separable(t, "eager"), patches)
        if provider == "separable fused":
            return run(lambda t: separable(t, "auto"), patches)
        if provider == "separable fused key-free (inference op)":  # projections fused too, qkv never formed
            from mobilevitv2_kernels import linear_self_attention

            weights = (separable.qkv_proj.convolution.weight.flatten(1), separable.qkv_proj.convolution.bias,
                       separable.out_proj.convolution.weight.flatten(1), separable.out_proj.convolution.bias)  # fmt: skip
            return run(lambda t: linear_self_attention(t, *weights), patches)
        if provider == "multi-head SDPA":
            return run(mha, sequences)
        return run(lambda t: torch_mha(t, t, t, need_weights=False)[0], sequences)

    return [Case(group, p, make(p), baseline=p == baseline, items=B * P * n) for p in providers]


TRANSFORMER_LAYER_PROVIDERS = ("module eager", "module compiled", "fused op")


def transformer_layer_cases(
    batch: int,
    dim: int,
    n: int,
    dtype: torch.dtype,
    device: torch.device,
    compiled: bool = True,
    providers: list[str] | None = None,
    baseline: str = "module eager",
) -> list[Case]:
    """One MobileViTV2 transformer layer at inference on (batch, dim, 4, n) patches (FFN width 2 x dim):
    the module eager (baseline) and compiled, and the fused ``mobilevitv2::transformer_layer`` op (Triton),
    each output checked against the float32 module (TF32 off) first. Bytes: x read and y written once.
    ``providers`` (from :data:`TRANSFORMER_LAYER_PROVIDERS`) default to the module eager, compiled unless
    ``compiled`` is false, and the fused op on CUDA."""
    if providers is None:
        providers = ["module eager"] + (["module compiled"] if compiled else []) + (["fused op"] if device.type == "cuda" else [])
    unknown = [p for p in providers if p not in TRANSFORMER_LAYER_PROVIDERS]
    if unknown:
        raise ValueError(f"unknown transformer layer providers {unknown}; known: {list(TRANSFORMER_LAYER_PROVIDERS)}")
    from mobilevitv2 import MobileViTV2Config
    from mobilevitv2.blocks import MobileViTV2TransformerLayer

    group = f"transformer layer ({batch},{dim},4,{n}) {_dtype_name(dtype)} inference"
    layer = _randomize_for_check(MobileViTV2TransformerLayer(MobileViTV2Config(), dim, 2 * dim)).to(device).eval()
    x32 = torch.randn(batch, dim, 4, n, device=device, generator=torch.Generator(device).manual_seed(0))
    with torch.no_grad(), strict_fp32():  # the oracle in full float32: TF32 would round like the fp16 it judges
        expected = layer(x32)
    layer = layer.to(dtype)
    x = x32.to(dtype)

    def build(provider):
        if provider == "fused op":
            fused = MobileViTV2TransformerLayer(MobileViTV2Config(), dim, 2 * dim).to(device=device, dtype=dtype).eval()
            fused.load_state_dict(layer.state_dict())
            fused.fused_backend = "triton"
            forward = fused
        else:
            forward = torch.compile(layer) if provider == "module compiled" else layer

        def run():
            with torch.no_grad():
                return forward(x)

        def check(out):
            err = relative_error(out, expected)
            return None if err <= CHECK_TOLERANCE[dtype] else f"wrong output: relative error {err:.3g} vs fp32 module"

        return run, check

    nbytes = 2 * x.numel() * x.element_size()
    return [Case(group, p, _Deferred(build, p), baseline=p == baseline, items=batch, bytes_moved=nbytes)
            for p in providers]  # fmt: skip


def _dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


# Model providers as data: who runs the model, with which options, compiled how (None: not compiled).
# "fused" = fused attention (attn_implementation="auto"); "+conv" adds the fused inverted residuals
# (conv_implementation="auto", inference only); "all" adds the fused transformer layers too
# (transformer_implementation="auto", inference only). "frozen" compiles with Inductor's freezing, which
# treats the parameters as constants (inference only, parameters must not change afterwards), so the
# per-call weight preparation (BatchNorm folding, GroupNorm affine) is folded away at compile time;
# "frozen cudagraphs" adds CUDA graphs, like mode="reduce-overhead" (which cannot be combined with options).
_FROZEN = {"fullgraph": True, "options": {"freezing": True}}
_FROZEN_GRAPHS = {"fullgraph": True, "options": {"freezing": True, "triton.cudagraphs": True}}
MODEL_PROVIDERS: dict[str, tuple[str, dict, dict | None]] = {
    "transformers eager": ("transformers", {}, None),
    "transformers compiled": ("transformers", {}, {}),
    "transformers compiled reduce-overhead": ("transformers", {}, {"mode": "reduce-overhead"}),
    "ours eager": ("ours", {"attn": "eager"}, None),
    "ours compiled": ("ours", {"attn": "eager"}, {"fullgraph": True}),
    "ours fused": ("ours", {"attn": "auto"}, None),
    "ours fused compiled": ("ours", {"attn": "auto"}, {"fullgraph": True}),
    "ours fused compiled reduce-overhead": ("ours", {"attn": "auto"}, {"fullgraph": True, "mode": "reduce-overhead"}),
    "ours fused+conv": ("ours", {"attn": "auto", "conv": "auto"}, None),
    "ours fused+conv compiled": ("ours", {"attn": "auto", "conv": "auto"}, {"fullgraph": True}),
    "ours fused+conv compiled reduce-overhead": ("ours", {"attn": "auto", "conv": "auto"}, {"fullgraph": True, "mode": "reduce-overhead"}),
    "ours fused all": ("ours", {"attn": "auto", "conv": "auto", "transformer": "auto"}, None),
    "ours fused all compiled": ("ours", {"attn": "auto", "conv": "auto", "transformer": "auto"}, {"fullgraph": True}),
    "ours fused all compiled reduce-overhead": ("ours", {"attn": "auto", "conv": "auto", "transformer": "auto"}, {"fullgraph": True, "mode": "reduce-overhead"}),
    # The same with Triton for the patching and attention ops where "auto" would pick the CUDA extension.
    "ours fused all (triton only)": ("ours", {"attn": "triton", "conv": "auto", "transformer": "auto"}, None),
    "ours fused all compiled frozen": ("ours", {"attn": "auto", "conv": "auto", "transformer": "auto"}, _FROZEN),
    "ours fused all compiled frozen cudagraphs": ("ours", {"attn": "auto", "conv": "auto", "transformer": "auto"}, _FROZEN_GRAPHS),
    "transformers compiled frozen cudagraphs": ("transformers", {}, {"options": _FROZEN_GRAPHS["options"]}),
}
_INFERENCE_ONLY_OPTIONS = ("conv", "transformer")


def _inference_only(provider: str) -> bool:
    owner, options, compile_kwargs = MODEL_PROVIDERS[provider]
    frozen = bool(compile_kwargs and compile_kwargs.get("options", {}).get("freezing"))
    return frozen or any(k in options for k in _INFERENCE_ONLY_OPTIONS)


def default_model_providers(device: torch.device, training: bool, compiled: bool, reduce_overhead: bool) -> list[str]:
    """The providers a model group gets unless it names them: transformers and ours, eager and compiled;
    on a GPU the fused variants (those with inference-only fusions only at inference)."""
    names = ["transformers eager"] + (["transformers compiled"] if compiled else [])
    names += ["transformers compiled reduce-overhead"] if compiled and reduce_overhead else []
    names.append("ours eager")
    if device.type != "cuda":
        return names + (["ours compiled"] if compiled else [])
    for variant in ("ours fused", "ours fused+conv", "ours fused all"):
        if training and variant != "ours fused":
            continue  # the inference-only fusions would run their eager modules in a training step
        names.append(variant)
        names += [f"{variant} compiled"] if compiled else []
        names += [f"{variant} compiled reduce-overhead"] if compiled and reduce_overhead else []
    return names


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """||got - expected|| / ||expected|| in float64 (inf for a non-finite ``got``)."""
    got, expected = got.double(), expected.double()
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - expected).norm() / expected.norm().clamp_min(1e-30)).item()


# A provider whose output differs from ours-eager-in-fp32 by more than this (relative L2) is reported as
# wrong and not timed: a coarse guard against a broken kernel on a new device, not a numerics test (the
# test suite is that). The fp32 oracle is computed with TF32 off (numerics.strict_fp32), so it is exact to
# float32 rounding; a float32 provider itself runs with PyTorch's defaults, where cuDNN convolutions use
# TF32 (a 10-bit mantissa, ~1e-3 relative per layer), which stays well inside 1e-2 for the whole model.
CHECK_TOLERANCE = {torch.float32: 1e-2, torch.float16: 5e-2, torch.bfloat16: 1e-1}


def model_cases(
    width: float,
    batch: int,
    dtype: torch.dtype,
    device: torch.device,
    size: int = 256,
    training: bool = False,
    compiled: bool = True,
    reduce_overhead: bool = False,
    transformers_baseline: bool = True,
    providers: list[str] | None = None,
    baseline: str = "transformers eager",
    task: str = "classification",
    output_stride: int = 32,
) -> list[Case]:
    """Whole-model cases of one group, one per provider (:data:`MODEL_PROVIDERS`; default
    :func:`default_model_providers`). The speed-up column is against ``baseline`` (if it runs; else against
    "ours eager"). ``task`` is "classification" (256x256 by default, 1000 classes) or "segmentation"
    (DeepLabV3 at ``output_stride``). Every inference provider's first output is checked against ours
    eager in float32 on the same input (:data:`CHECK_TOLERANCE`); a training step must give a finite loss.
    A failing check is reported as that provider's error, never timed."""
    from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation

    if providers is None:
        providers = default_model_providers(device, training, compiled, reduce_overhead)
    if not transformers_baseline:
        providers = [p for p in providers if not p.startswith("transformers")]
    unknown = [p for p in providers if p not in MODEL_PROVIDERS]
    if unknown:
        raise ValueError(f"unknown model providers {unknown}; known: {list(MODEL_PROVIDERS)}")
    segmentation = task == "segmentation"
    if task not in ("classification", "segmentation"):
        raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}")
    num_labels = 21 if segmentation else 1000
    ours_class = MobileViTV2ForSemanticSegmentation if segmentation else MobileViTV2ForImageClassification

    def our_config():
        config = MobileViTV2Config.from_width(width, num_labels=num_labels)
        if segmentation:
            config.output_stride = output_stride
        return config

    weights = _randomize_for_check(ours_class(our_config())).state_dict()
    x = torch.randn(batch, 3, size, size, device=device, generator=torch.Generator(device).manual_seed(0))
    mode = "train step" if training else "inference"
    what = f"seg OS{output_stride} {size}px" if segmentation else f"{size}px" if size != 256 else ""
    group = f"model w{width} {what + ' ' if what else ''}b{batch} {_dtype_name(dtype)} {mode}"
    cases_dtype, autocast = (torch.float32, dtype if dtype != torch.float32 else None) if training else (dtype, None)
    labels = (
        torch.randint(0, num_labels, (batch, size, size) if segmentation else (batch,), device=device)
        if training else None
    )  # fmt: skip
    expected = None
    if not training:  # ours eager, fp32, same weights and input: what every provider's output must match
        reference_model = ours_class(our_config()).set_attn_implementation("eager", check=False)
        reference_model.load_state_dict(weights)
        with torch.no_grad(), strict_fp32():  # full float32: with TF32 the oracle would round like fp16 does
            expected = reference_model.to(device).eval()(x).logits.float()
        del reference_model

    def build(provider: str):
        owner, options, compile_kwargs = MODEL_PROVIDERS[provider]
        if owner == "transformers":
            import transformers

            hf_class = (
                transformers.MobileViTV2ForSemanticSegmentation if segmentation else transformers.MobileViTV2ForImageClassification
            )
            hf_config = transformers.MobileViTV2Config(width_multiplier=width, num_labels=num_labels)
            if segmentation:
                hf_config.output_stride = output_stride
            model = hf_class(hf_config)
        else:
            model = ours_class(our_config()).set_attn_implementation(options["attn"], check=False)
            if "conv" in options:
                model.set_conv_implementation(options["conv"], check=False)
            if "transformer" in options:
                model.set_transformer_implementation(options["transformer"], check=False)
        model.load_state_dict(weights)
        model = model.to(device=device, dtype=cases_dtype)
        model.train(training)
        forward = torch.compile(model, **compile_kwargs) if compile_kwargs is not None else model
        if training:
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

            def step():
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    loss = forward(x.to(cases_dtype), labels=labels).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                return loss.detach()

            return step, lambda loss: None if torch.isfinite(loss).item() else f"non-finite loss {loss.item()}"
        inputs = x.to(cases_dtype)

        def infer():
            with torch.no_grad():
                return forward(inputs).logits

        def check(logits):
            err = relative_error(logits, expected)
            return None if err <= CHECK_TOLERANCE[dtype] else f"wrong output: relative error {err:.3g} vs ours eager fp32"

        return infer, check

    baseline_name = baseline if baseline in providers else "ours eager"
    cases = []
    for provider in providers:
        if training and _inference_only(provider):
            raise ValueError(f"provider {provider!r} is inference-only (fusions or freezing); it has no training step")
        if provider.startswith("transformers"):
            try:
                import transformers  # noqa: F401
            except ImportError:
                continue
        cases.append(Case(group, provider, _Deferred(build, provider), baseline=provider == baseline_name, items=batch))
    return cases


class _Deferred:
    """A case's callable built on first use (so that models of a group are not all on the device at once),
    whose first result is checked before anything is timed: a failing check raises, and the harness
    reports it as the case's error."""

    def __init__(self, build: Callable[[str], tuple[Callable, Callable]], provider: str) -> None:
        self.build, self.provider, self.fn = build, provider, None

    def __call__(self):
        if self.fn is None:
            fn, check = self.build(self.provider)
            problem = check(fn())
            if problem:
                raise AssertionError(problem)
            self.fn = fn
        return self.fn()


def _randomize_for_check(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights whose activations neither vanish nor explode, so the output check has signal: fan-in
    normal convs, and BatchNorm/GroupNorm parameters and running statistics drawn around identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / module.weight[0].numel() ** 0.5)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.running_mean.uniform_(-0.5, 0.5, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
            elif isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5, generator=gen)
    return model


def default_cases(device: torch.device) -> list[Case]:
    """The embedded default sweep: about one minute on the 2-core CPU machine (measured); on a GPU a few minutes,
    most of it spent compiling the compiled providers (not measured yet)."""
    if device.type == "cuda":
        cases = []
        for shape in [(256, 128, 4, 256), (256, 192, 4, 64), (256, 256, 4, 16)]:
            cases += attention_core_cases(shape, torch.float16, device, backward=False)
        cases += model_cases(1.0, 256, torch.float16, device)
        cases += model_cases(1.0, 1, torch.float16, device, reduce_overhead=True)
        return cases
    cases = attention_core_cases((8, 128, 4, 256), torch.float32, device, backward=False)
    cases += model_cases(1.0, 1, torch.float32, device, compiled=True)
    cases += model_cases(1.0, 8, torch.float32, device, compiled=False)
    return cases


@dataclass(frozen=True)
class TargetGroup:
    """One performance target and the one group of cases that decides it: the baseline the target is
    measured against and our provider(s) it is about, nothing else (every provider costs device time, a
    compiled one tens of seconds of compilation). ``builder`` names the case builder ("model",
    "transformer_layer" or "attention_scaling"); ``kwargs`` are its arguments besides dtype, device and the
    providers."""

    target: str
    builder: str
    kwargs: dict
    dtype: torch.dtype
    baseline: str
    ours: tuple[str, ...]

    @property
    def providers(self) -> list[str]:
        return [self.baseline, *self.ours]  # the baseline first: a time limit keeps a group's speed-ups

    @property
    def compiles(self) -> int:
        """How many providers of the group are compiled with torch.compile."""
        compiled = {p for p, (_, _, kw) in MODEL_PROVIDERS.items() if kw is not None} | {"module compiled"}
        return sum(p in compiled for p in self.providers)


_FUSED_ATTENTION = ("separable fused", "separable fused key-free (inference op)")
# The GPU targets, width 1.0, ordered by compile time (a time limit keeps what ran first): the groups
# without any torch.compile first, the two compiled model groups last.
TARGET_GROUPS: tuple[TargetGroup, ...] = (
    TargetGroup("DeepLabV3 512x512 OS16 batch 32 fp16 inference, vs transformers eager", "model",
                dict(width=1.0, batch=32, size=512, task="segmentation", output_stride=16), torch.float16,
                "transformers eager", ("ours fused all",)),
    TargetGroup("bf16-autocast training step at batch 128, vs transformers eager", "model",
                dict(width=1.0, batch=128, training=True), torch.bfloat16, "transformers eager", ("ours fused",)),
    *(TargetGroup(f"transformer layer (256,{dim},4,{n}) fp16: the fused op vs the module", "transformer_layer",
                  dict(batch=256, dim=dim, n=n), torch.float16, "module eager", ("fused op",))
      for dim, n in ((128, 256), (192, 64), (256, 16))),  # width 1.0's three stages at 256x256
    *(TargetGroup(f"separable vs flash multi-head attention, N={n}", "attention_scaling",
                  dict(n=n, tokens=1_048_576, dim=256, backward=False), torch.float16, "multi-head SDPA",
                  _FUSED_ATTENTION)
      for n in (64, 256, 1024, 4096, 16384)),
    TargetGroup("fp16 inference at batch 256, vs transformers compiled", "model", dict(width=1.0, batch=256),
                torch.float16, "transformers compiled", ("ours fused all", "ours fused all compiled")),
    TargetGroup("fp16 inference at batch 1, vs transformers compiled with CUDA graphs", "model",
                dict(width=1.0, batch=1), torch.float16, "transformers compiled reduce-overhead",
                ("ours fused all compiled reduce-overhead",)),
)  # fmt: skip


def target_cases(device: torch.device, quick: bool = False) -> list[Case]:
    """The performance targets (:data:`TARGET_GROUPS`), each group against the baseline its target names,
    with only the providers that decide it: width 1.0, DeepLabV3 at 512x512 OS 16 batch 32 and a
    bf16-autocast training step at batch 128 against transformers eager, one transformer layer at each
    stage shape, separable vs flash multi-head attention over N, fp16 inference at batch 256 against
    transformers compiled and at batch 1 against transformers compiled with reduce-overhead (CUDA graphs).
    ``quick``: tiny shapes, nothing compiled, for a dry run of the same code on any device."""
    gpu = device.type == "cuda"
    low = torch.float16 if gpu else torch.float32
    if quick:
        best = ["ours fused all", "ours fused+conv", "ours fused"] if gpu else ["ours eager"]
        return (
            model_cases(0.5, 2, low, device, size=64, providers=["transformers eager"] + best, compiled=False)
            + model_cases(0.5, 2, low, device, size=64, providers=["transformers eager", best[-1]], training=True)
            + model_cases(0.5, 1, low, device, size=128, task="segmentation", output_stride=16, providers=["transformers eager"] + best)
            + transformer_layer_cases(2, 32, 16, low, device, compiled=False)
            + attention_scaling_cases(64, 4096, 64, low, device, backward=False)
        )  # fmt: skip
    cases = []
    for group in sorted(TARGET_GROUPS, key=lambda g: g.compiles):  # stable: the table's order otherwise
        kwargs = dict(group.kwargs)
        dtype = group.dtype if gpu or group.dtype != torch.float16 else torch.float32  # no fp16 convs on a CPU
        if group.builder == "model":
            width, batch = kwargs.pop("width"), kwargs.pop("batch")
            cases += model_cases(width, batch, dtype, device, providers=group.providers, baseline=group.baseline,
                                 **kwargs)  # fmt: skip
        elif group.builder == "transformer_layer":
            cases += transformer_layer_cases(kwargs["batch"], kwargs["dim"], kwargs["n"], dtype, device,
                                             providers=group.providers, baseline=group.baseline)  # fmt: skip
        else:
            cases += attention_scaling_cases(kwargs["n"], kwargs["tokens"], kwargs["dim"], dtype, device,
                                             kwargs["backward"], providers=group.providers,
                                             baseline=group.baseline)  # fmt: skip
    return cases


SUITES = {"default": default_cases, "targets": target_cases}


class _Stopped(BaseException):
    """SIGTERM arrived (a time limit): the results so far are already written."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mobilevitv2 bench",
        description="Run the default benchmark sweep on this machine's device (GPU: the attention core at the three "
        "stage shapes and width 1.0 at batch 1 and 256 in fp16, against transformers eager and compiled; CPU: a "
        "one-minute fp32 version) and write a JSON, a CSV and a text table with the device, versions and commit "
        "(rewritten after every case).",
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--out", default=None, help="results path prefix (writes .json, .csv and .txt after every case); default bench-results/<device>-<suite>-<date>")
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per case (median reported)")
    parser.add_argument(
        "--suite", choices=sorted(SUITES), default="default",
        help="default: the sweep above; targets: the performance targets, each group with only its baseline and "
        "our providers it is about, groups without torch.compile first (width 1.0: DeepLabV3 512px OS16 batch 32 and "
        "a bf16 training step at 128 vs transformers eager, a transformer layer per stage, separable vs flash "
        "attention over N, fp16 batch 256 vs transformers compiled, batch 1 vs reduce-overhead)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="with --suite targets: tiny shapes, nothing compiled")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    env = environment(device)
    print(f"mobilevitv2 bench on {env['device']} (torch {env['torch']}, triton {env['triton']}, commit {env['commit']})", file=sys.stderr)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    prefix = args.out or os.path.join("bench-results", f"{device.type}-{args.suite}-{stamp}")
    cases = target_cases(device, quick=args.quick) if args.suite == "targets" else default_cases(device)

    latest: list[Result] = []

    def after_each(partial: list[Result]) -> None:  # a time limit keeps every finished case, and the table
        latest[:] = partial
        write_results(prefix, env, partial, not_run=[(c.group, c.provider) for c in cases[len(partial):]])

    def stop(signum, frame):
        raise _Stopped(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stop)  # a time limit's SIGTERM: print what ran, exit cleanly
    try:
        results = run_cases(cases, device, reps=args.reps, after_each=after_each)
    except _Stopped as exc:
        print(format_table(latest))
        print(f"\nstopped by {exc} after {len(latest)} of {len(cases)} cases; {prefix}.json/.csv/.txt hold them")
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
    json_path, csv_path = write_results(prefix, env, results, not_run=[])
    print(format_table(results))
    print(f"\nwrote {json_path}, {csv_path} and {prefix}.txt")
    return 0
