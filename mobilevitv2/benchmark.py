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
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch

from mobilevitv2_kernels import available_backends
from mobilevitv2_kernels import reference as kernel_reference


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


def run_cases(cases: Iterable[Case], device: torch.device, reps: int = 10, progress: bool = True) -> list[Result]:
    """Time every case; a case that fails (out of memory, a compile error) is reported, not fatal."""
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
    baselines = {c.group: r.ms for c, r in zip(cases, results) if c.baseline and r.error is None}
    for r in results:
        if r.group in baselines and r.error is None:
            r.speedup = baselines[r.group] / r.ms
    return results


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


def write_results(path_prefix: str, env: dict, results: list[Result]) -> tuple[str, str]:
    """Write ``<prefix>.json`` (environment + rows) and ``<prefix>.csv`` (rows with device and commit)."""
    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    rows = [asdict(r) for r in results]
    with open(path_prefix + ".json", "w") as f:
        json.dump({"environment": env, "results": rows}, f, indent=1)
    with open(path_prefix + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["device", "commit"] + list(rows[0]) if rows else ["device"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"device": env["device"], "commit": env["commit"], **row})
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


def attention_scaling_cases(
    n: int, tokens: int, dim: int, dtype: torch.dtype, device: torch.device, backward: bool, heads: int = 4
) -> list[Case]:
    """Separable vs multi-head attention modules (projections included) at a fixed token budget:
    separable runs on (tokens/(4N), d, 4, N), multi-head on tokens/N sequences of N tokens."""
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

    cases = [
        Case(group, "separable eager", run(lambda t: separable(t, "eager"), patches), baseline=True, items=B * P * n),
        Case(group, "multi-head SDPA", run(mha, sequences), items=B * P * n),
        Case(group, "nn.MultiheadAttention", run(lambda t: torch_mha(t, t, t, need_weights=False)[0], sequences), items=B * P * n),
    ]
    if device.type == "cuda":
        cases.insert(1, Case(group, "separable fused", run(lambda t: separable(t, "auto"), patches), items=B * P * n))
    return cases


def _dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


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
) -> list[Case]:
    """Whole-model cases: ours eager, ours fused (and compiled), transformers eager (and compiled); on a GPU
    at inference also "ours fused+conv": fused attention plus the fused inverted residuals
    (``set_conv_implementation("auto")``)."""
    from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification

    config = MobileViTV2Config.from_width(width, num_labels=1000)
    ours = MobileViTV2ForImageClassification(config).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    mode = "train step" if training else "inference"
    group = f"model w{width} b{batch} {_dtype_name(dtype)} {mode}"
    if training:
        cases_dtype, autocast = torch.float32, dtype if dtype != torch.float32 else None
    else:
        cases_dtype, autocast = dtype, None
    x = x.to(cases_dtype)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def make_step(model):
        model = model.to(device=device, dtype=cases_dtype)
        if not training:
            model.eval()

            def infer(m=model):
                with torch.no_grad():
                    return m(x)

            return infer
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step(m=model):
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                loss = m(x, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def forward_of(model, **compile_kwargs):
        if not compile_kwargs:
            return model
        compiled_model = torch.compile(model, **compile_kwargs)
        return compiled_model

    cases = []
    hf = None
    if transformers_baseline:
        try:
            import transformers

            hf = transformers.MobileViTV2ForImageClassification(transformers.MobileViTV2Config(width_multiplier=width, num_labels=1000))
        except ImportError:
            hf = None
    if hf is not None:
        hf.load_state_dict(ours.state_dict())
        cases.append(Case(group, "transformers eager", make_step(hf), baseline=True, items=batch))
        if compiled:
            cases.append(Case(group, "transformers compiled", make_step(forward_of(hf, fullgraph=False)), items=batch))
            if reduce_overhead:
                cases.append(Case(group, "transformers compiled reduce-overhead", make_step(forward_of(hf, mode="reduce-overhead")), items=batch))
    eager = MobileViTV2ForImageClassification(config).set_attn_implementation("eager", check=False)
    eager.load_state_dict(ours.state_dict())
    cases.append(Case(group, "ours eager", make_step(eager), baseline=hf is None, items=batch))
    if device.type == "cuda":
        fused = MobileViTV2ForImageClassification(MobileViTV2Config.from_width(width, num_labels=1000)).set_attn_implementation("auto")
        fused.load_state_dict(ours.state_dict())
        cases.append(Case(group, "ours fused", make_step(fused), items=batch))
        if compiled:
            cases.append(Case(group, "ours fused compiled", make_step(forward_of(fused, fullgraph=True)), items=batch))
            if reduce_overhead:
                cases.append(Case(group, "ours fused compiled reduce-overhead", make_step(forward_of(fused, mode="reduce-overhead", fullgraph=True)), items=batch))
        if not training:  # the fused inverted residual is inference-only (a training step would run eager convs)
            fused_conv = MobileViTV2ForImageClassification(MobileViTV2Config.from_width(width, num_labels=1000))
            fused_conv.set_attn_implementation("auto").set_conv_implementation("auto")
            fused_conv.load_state_dict(ours.state_dict())
            cases.append(Case(group, "ours fused+conv", make_step(fused_conv), items=batch))
            if compiled:
                cases.append(Case(group, "ours fused+conv compiled", make_step(forward_of(fused_conv, fullgraph=True)), items=batch))
                if reduce_overhead:
                    cases.append(Case(group, "ours fused+conv compiled reduce-overhead", make_step(forward_of(fused_conv, mode="reduce-overhead", fullgraph=True)), items=batch))
    elif compiled:
        cases.append(Case(group, "ours compiled", make_step(forward_of(eager, fullgraph=True)), items=batch))
    return cases


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mobilevitv2 bench",
        description="Run the default benchmark sweep on this machine's device (GPU: the attention core at the three "
        "stage shapes and width 1.0 at batch 1 and 256 in fp16, against transformers eager and compiled; CPU: a "
        "one-minute fp32 version) and write a JSON and a CSV with the device, versions and commit.",
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--out", default=None, help="results path prefix (writes .json and .csv); default bench-results/<device>-<date>")
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per case (median reported)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    env = environment(device)
    print(f"mobilevitv2 bench on {env['device']} (torch {env['torch']}, triton {env['triton']}, commit {env['commit']})", file=sys.stderr)
    results = run_cases(default_cases(device), device, reps=args.reps)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    prefix = args.out or os.path.join("bench-results", f"{device.type}-{stamp}")
    json_path, csv_path = write_results(prefix, env, results)
    print(format_table(results))
    print(f"\nwrote {json_path} and {csv_path}")
    return 0
