"""The CPU comparison: what a CPU user would pick, in one run. Width 1.0 at 256x256, batch 1 and 8:
transformers eager and compiled, ours eager, our fastest PyTorch path (:class:`mobilevitv2.cpu_inference.
CPUInference`, fp32, and bf16 where the CPU has it), and ONNX Runtime, OpenVINO (f32, and bf16 where the CPU
has it) and ExecuTorch on our export, and OpenVINO on transformers' model converted as it is (the plain
export ours is measured against), each when installed (a one-line note when not). Every provider's
first output is checked against ours eager in fp32 on randomised weights (on the default initialisation the
outputs vanish and a check would prove nothing) and its error is recorded; then separable attention
against multi-head attention (SDPA) over N at a fixed token count, fp32 and bf16 where the CPU has it."""

from __future__ import annotations

import sys
import warnings

import torch

from mobilevitv2.bench.checks import CHECK_TOLERANCE, Deferred, randomize_for_check, relative_error
from mobilevitv2.bench.harness import Case
from mobilevitv2.bench.ops import attention_scaling_cases

# provider -> (kind, precision): kind "transformers eager"/"compiled", "ours", "cpu" (CPUInference), a runtime
# name (that runtime on our export), or "openvino transformers" (OpenVINO on transformers' model converted
# as it is, the plain export a user of OpenVINO would make: the yardstick for our export)
CPU_MODEL_PROVIDERS: dict[str, tuple[str, str]] = {
    "transformers eager": ("transformers eager", "fp32"),
    "transformers compiled": ("transformers compiled", "fp32"),
    "ours eager": ("ours", "fp32"),
    "ours CPU path fp32": ("cpu", "fp32"),
    "ours CPU path bf16": ("cpu", "bf16"),
    "onnxruntime fp32": ("onnxruntime", "fp32"),
    "openvino f32": ("openvino", "fp32"),
    "openvino bf16": ("openvino", "bf16"),
    "openvino f32, transformers' model": ("openvino transformers", "fp32"),
    "openvino bf16, transformers' model": ("openvino transformers", "bf16"),
    "executorch xnnpack fp32": ("executorch", "fp32"),
}
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_REQUIRED_MODULES = {
    "transformers eager": ("transformers",),
    "transformers compiled": ("transformers",),
    "openvino transformers": ("transformers", "openvino"),
}


def available_cpu_providers(native_bf16: bool) -> tuple[list[str], list[str]]:
    """(providers that can run here, one-line notes on those that cannot)."""
    import importlib.util

    providers, notes = [], []
    for name, (kind, precision) in CPU_MODEL_PROVIDERS.items():
        if precision == "bf16" and not native_bf16:
            notes.append(f"{name}: skipped, this CPU has no native bf16 (AVX-512 BF16 or AMX)")
            continue
        modules = _REQUIRED_MODULES.get(kind, (kind,) if kind in ("onnxruntime", "openvino", "executorch") else ())
        missing = [module for module in modules if importlib.util.find_spec(module) is None]
        if missing:
            module = missing[0]
            extra = {"transformers": "transformers", "onnxruntime": "mobilevitv2[onnx]"}.get(module, f"mobilevitv2[{module}]")
            notes.append(f"{name}: skipped, {module} is not installed (pip install \"{extra}\")")
            continue
        providers.append(name)
    return providers, notes


class _Providers:
    """The providers of the CPU comparison, built on first use (:meth:`runner`)."""

    def __init__(self, width: float, size: int) -> None:
        from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification

        config = MobileViTV2Config.from_width(width, num_labels=1000)
        self.ours = randomize_for_check(MobileViTV2ForImageClassification(config)).eval()
        self.ours.set_implementation("reference", check=False)
        self.width, self.size, self.built = width, size, {}
        self.converted: tuple[int, object] | None = None  # (batch, transformers' model converted by OpenVINO)

    def runner(self, provider: str, batch: int):
        """``provider``'s ``fn(pixel_values) -> logits``: our CPU path built once (it compiles its shapes as
        it meets them), the others anew for each batch size. (OpenVINO models kept across both batch sizes
        were followed by a crash of the process when it later forked DataLoader workers.)"""
        if CPU_MODEL_PROVIDERS[provider][0] != "cpu":
            return self._build(provider, batch)
        if provider not in self.built:
            self.built[provider] = self._build(provider, batch)
        return self.built[provider]

    def _build(self, provider: str, batch: int):
        kind, precision = CPU_MODEL_PROVIDERS[provider]
        ours = self.ours
        if kind.startswith("transformers"):
            model = self._transformers_model()
            # Static: one compiled graph per batch size, as a user compiling for a fixed batch gets.
            model = torch.compile(model, dynamic=False) if kind == "transformers compiled" else model
            return lambda x: model(x).logits
        if kind == "openvino transformers":
            return self._openvino_transformers(precision, batch)
        if kind == "ours":
            return lambda x: ours(x).logits
        if kind == "cpu":
            from mobilevitv2.cpu_inference import CPUInference

            return CPUInference(ours, precision=precision)
        from mobilevitv2 import runtimes

        return runtimes.load(kind, ours, self.size, self.size, precision=precision)

    def _transformers_model(self) -> torch.nn.Module:
        import transformers

        theirs = transformers.MobileViTV2ForImageClassification(
            transformers.MobileViTV2Config(width_multiplier=self.width, num_labels=1000)
        ).eval()
        theirs.load_state_dict(self.ours.state_dict())
        return theirs

    def _openvino_transformers(self, precision: str, batch: int):
        """transformers' model through ``openvino.convert_model`` (batch left dynamic; converted once per
        batch size for both precisions), compiled with the inference precision set as
        :mod:`mobilevitv2.runtimes` sets it."""
        import openvino
        import openvino.properties.hint as hints

        from mobilevitv2.cpu_inference import Logits

        if self.converted is None or self.converted[0] != batch:
            self.converted = None  # the previous batch size's model is released before the next is made
            shape = (-1, 3, self.size, self.size)
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # tracing warnings about transformers' shape checks
                model = Logits(self._transformers_model())
                self.converted = (batch, openvino.convert_model(model, example_input=torch.zeros(1, *shape[1:]), input=[shape]))
        converted = self.converted[1]
        wanted = {"fp32": openvino.Type.f32, "bf16": openvino.Type.bf16}[precision]
        compiled = openvino.Core().compile_model(converted, "CPU", {hints.inference_precision: wanted})
        output = compiled.output(0)  # a request per call, as mobilevitv2.runtimes makes
        return lambda x: torch.from_numpy(compiled.create_infer_request().infer({0: x.numpy()})[output].copy())


def cpu_model_cases(batch: int, providers: list[str], built: _Providers) -> list[Case]:
    x = torch.rand(batch, 3, built.size, built.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = built.ours(x).logits.float()
    group = f"CPU model w{built.width} {built.size}px b{batch}"

    def build(provider: str):
        _, precision = CPU_MODEL_PROVIDERS[provider]
        fn = built.runner(provider, batch)

        def call():
            with torch.no_grad():
                return fn(x)

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
    built = _Providers(width=0.5 if quick else 1.0, size=64 if quick else 256)
    for batch in (1, 8):
        cases += cpu_model_cases(batch, providers, built)
    dtypes = [torch.float32] + ([torch.bfloat16] if native_bf16 else [])
    tokens, dim = (4096, 64) if quick else (16384, 128)
    for dtype in dtypes:
        for n in ((64, 1024) if quick else (64, 256, 1024, 4096)):
            cases += attention_scaling_cases(n, tokens, dim, dtype, device, backward=False,
                                             providers=["multi-head SDPA", "separable eager"], baseline="multi-head SDPA")  # fmt: skip
    return cases
