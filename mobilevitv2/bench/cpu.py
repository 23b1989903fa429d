"""The CPU comparison: what a CPU user would pick, in one run. Width 1.0 at 256x256, batch 1 and 8:
transformers eager and compiled, ours eager, our fastest PyTorch path (:class:`mobilevitv2.cpu_inference.
CPUInference`, fp32, and bf16 where the CPU has it), and ONNX Runtime, OpenVINO (f32, and bf16 where the CPU
has it) and ExecuTorch on our export, each when installed (a one-line note when not). Every provider's
first output is checked against ours eager in fp32 on randomised weights (on the default initialisation the
outputs vanish and a check would prove nothing) and its error is recorded; then separable attention
against multi-head attention (SDPA) over N at a fixed token count, fp32 and bf16 where the CPU has it."""

from __future__ import annotations

import sys

import torch

from mobilevitv2.bench.checks import CHECK_TOLERANCE, Deferred, randomize_for_check, relative_error
from mobilevitv2.bench.harness import Case
from mobilevitv2.bench.ops import attention_scaling_cases

# provider -> (kind, precision): kind "transformers", "ours", "cpu" (CPUInference) or a runtime name
CPU_MODEL_PROVIDERS: dict[str, tuple[str, str]] = {
    "transformers eager": ("transformers eager", "fp32"),
    "transformers compiled": ("transformers compiled", "fp32"),
    "ours eager": ("ours", "fp32"),
    "ours CPU path fp32": ("cpu", "fp32"),
    "ours CPU path bf16": ("cpu", "bf16"),
    "onnxruntime fp32": ("onnxruntime", "fp32"),
    "openvino f32": ("openvino", "fp32"),
    "openvino bf16": ("openvino", "bf16"),
    "executorch xnnpack fp32": ("executorch", "fp32"),
}
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def available_cpu_providers(native_bf16: bool) -> tuple[list[str], list[str]]:
    """(providers that can run here, one-line notes on those that cannot)."""
    import importlib.util

    providers, notes = [], []
    for name, (kind, precision) in CPU_MODEL_PROVIDERS.items():
        if precision == "bf16" and not native_bf16:
            notes.append(f"{name}: skipped, this CPU has no native bf16 (AVX-512 BF16 or AMX)")
            continue
        module = {"transformers eager": "transformers", "transformers compiled": "transformers"}.get(kind, kind)
        if module in ("transformers", "onnxruntime", "openvino", "executorch") and importlib.util.find_spec(module) is None:
            extra = {"transformers": "transformers", "onnxruntime": "mobilevitv2[onnx]"}.get(module, f"mobilevitv2[{module}]")
            notes.append(f"{name}: skipped, {module} is not installed (pip install \"{extra}\")")
            continue
        providers.append(name)
    return providers, notes


def cpu_model_cases(batch: int, providers: list[str], width: float = 1.0, size: int = 256) -> list[Case]:
    from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification

    config = MobileViTV2Config.from_width(width, num_labels=1000)
    ours = randomize_for_check(MobileViTV2ForImageClassification(config)).eval()
    ours.set_implementation("reference", check=False)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(x).logits.float()
    group = f"CPU model w{width} {size}px b{batch}"

    def build(provider: str):
        kind, precision = CPU_MODEL_PROVIDERS[provider]
        if kind.startswith("transformers"):
            import transformers

            theirs = transformers.MobileViTV2ForImageClassification(
                transformers.MobileViTV2Config(width_multiplier=width, num_labels=1000)
            ).eval()
            theirs.load_state_dict(ours.state_dict())
            model = torch.compile(theirs) if kind == "transformers compiled" else theirs
            fn = lambda: model(x).logits  # noqa: E731
        elif kind == "ours":
            fn = lambda: ours(x).logits  # noqa: E731
        elif kind == "cpu":
            from mobilevitv2.cpu_inference import CPUInference

            fast = CPUInference(ours, precision=precision)
            fn = lambda: fast(x)  # noqa: E731
        else:
            from mobilevitv2 import runtimes

            run = runtimes.load(kind, ours, size, size, precision=precision)
            fn = lambda: run(x)  # noqa: E731

        def call():
            with torch.no_grad():
                return fn()

        def check(logits):
            err = relative_error(logits.float(), expected)
            max_abs = (logits.float() - expected).abs().max().item()
            print(f"    {provider}: max |logit error| {max_abs:.2e} (relative {err:.1e}) vs ours eager fp32", file=sys.stderr)
            limit = CHECK_TOLERANCE[PRECISION_DTYPES[precision]]
            return None if err <= limit else f"wrong output: relative error {err:.3g} vs ours eager fp32"

        return call, check

    return [Case(group, p, Deferred(build, p), baseline=p == "transformers eager", items=batch) for p in providers]


def cpu_cases(device: torch.device, quick: bool = False) -> list[Case]:
    """The CPU comparison (module docstring); ``quick``: width 0.5 at 64x64, nothing compiled."""
    from mobilevitv2.cpu_inference import cpu_has_native_bf16

    native_bf16 = cpu_has_native_bf16()
    providers, notes = available_cpu_providers(native_bf16)
    if quick:
        providers = [p for p in providers if "compiled" not in p and "CPU path" not in p]
    for note in notes:
        print(f"bench: {note}", file=sys.stderr)
    cases = []
    for batch in (1, 8):
        cases += cpu_model_cases(batch, providers, width=0.5 if quick else 1.0, size=64 if quick else 256)
    dtypes = [torch.float32] + ([torch.bfloat16] if native_bf16 else [])
    tokens, dim = (4096, 64) if quick else (65536, 128)
    for dtype in dtypes:
        for n in ((64, 1024) if quick else (64, 256, 1024, 4096)):
            cases += attention_scaling_cases(n, tokens, dim, dtype, device, backward=False,
                                             providers=["multi-head SDPA", "separable eager"], baseline="multi-head SDPA")  # fmt: skip
    return cases
