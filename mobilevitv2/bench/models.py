"""Whole-model cases: one group per (width, batch, dtype, size, task, inference or training step), one case per
provider of :data:`MODEL_PROVIDERS` (transformers' model or ours, with which fusions, compiled how), each
inference provider's first output checked against ours eager in float32 before it is timed."""

from __future__ import annotations

import contextlib

import torch
from torch._inductor import config as inductor_config

from mobilevitv2.bench.checks import CHECK_TOLERANCE, Deferred, dtype_name, randomize_for_check, relative_error
from mobilevitv2.bench.harness import Case
from mobilevitv2_kernels.numerics import strict_fp32

# Model providers as data: who runs the model, with which options, compiled how (None: not compiled).
# "eager" = the reference path (set_implementation("reference")); "fused" = fused attention (attention="auto");
# "+conv" adds the fused inverted residuals (conv="triton", inference only: "auto" keeps cuDNN's convolutions,
# measured faster on an H200); "all" is set_implementation("fused"), every part "auto" (the fused transformer
# layers where "auto" takes them; inference only). "frozen" compiles with Inductor's freezing, which
# treats the parameters as constants (inference only, parameters must not change afterwards), so the
# per-call weight preparation (BatchNorm folding, GroupNorm affine) is folded away at compile time;
# "frozen cudagraphs" adds CUDA graphs, like mode="reduce-overhead" (which cannot be combined with options).
# torch.compile's options do not freeze (Dynamo decides on freezing from Inductor's global config while
# tracing, before the options apply), so build() sets it in the config around every call instead (see
# _frozen_options). Every compile is static (dynamic=False): the groups run the same model code at several
# shapes, and PyTorch would compile every shape after the first as one symbolic-shape graph.
_FROZEN = {"fullgraph": True, "options": {"freezing": True}}
_FROZEN_GRAPHS = {"fullgraph": True, "options": {"freezing": True, "triton.cudagraphs": True}}
MODEL_PROVIDERS: dict[str, tuple[str, dict, dict | None]] = {
    "transformers eager": ("transformers", {}, None),
    "transformers compiled": ("transformers", {}, {}),
    "transformers compiled reduce-overhead": ("transformers", {}, {"mode": "reduce-overhead"}),
    "ours eager": ("ours", {"attn": "reference"}, None),
    "ours compiled": ("ours", {"attn": "reference"}, {"fullgraph": True}),
    "ours fused": ("ours", {"attn": "auto"}, None),
    "ours fused compiled": ("ours", {"attn": "auto"}, {"fullgraph": True}),
    "ours fused compiled reduce-overhead": ("ours", {"attn": "auto"}, {"fullgraph": True, "mode": "reduce-overhead"}),
    "ours fused+conv": ("ours", {"attn": "auto", "conv": "triton"}, None),
    "ours fused+conv compiled": ("ours", {"attn": "auto", "conv": "triton"}, {"fullgraph": True}),
    "ours fused+conv compiled reduce-overhead": ("ours", {"attn": "auto", "conv": "triton"}, {"fullgraph": True, "mode": "reduce-overhead"}),
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


def inference_only(provider: str) -> bool:
    """Whether a provider has no training step (inference-only fusions, or parameters frozen into the graph)."""
    owner, options, compile_kwargs = MODEL_PROVIDERS[provider]
    frozen = bool(compile_kwargs and compile_kwargs.get("options", {}).get("freezing"))
    return frozen or any(k in options for k in _INFERENCE_ONLY_OPTIONS)


def _frozen_options(compile_kwargs: dict | None) -> tuple[dict | None, bool]:
    """(``compile_kwargs`` without "freezing", whether it asked for freezing)."""
    if not compile_kwargs or not compile_kwargs.get("options", {}).get("freezing"):
        return compile_kwargs, False
    options = {k: v for k, v in compile_kwargs["options"].items() if k != "freezing"}
    return {**compile_kwargs, "options": options}, True


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

    weights = randomize_for_check(ours_class(our_config())).state_dict()
    x = torch.randn(batch, 3, size, size, device=device, generator=torch.Generator(device).manual_seed(0))
    mode = "train step" if training else "inference"
    what = f"seg OS{output_stride} {size}px" if segmentation else f"{size}px" if size != 256 else ""
    group = f"model w{width} {what + ' ' if what else ''}b{batch} {dtype_name(dtype)} {mode}"
    cases_dtype, autocast = (torch.float32, dtype if dtype != torch.float32 else None) if training else (dtype, None)
    labels = (
        torch.randint(0, num_labels, (batch, size, size) if segmentation else (batch,), device=device)
        if training else None
    )  # fmt: skip
    expected = None
    if not training:  # ours eager, fp32, same weights and input: what every provider's output must match
        reference_model = ours_class(our_config()).set_implementation("reference", check=False)
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
            model = ours_class(our_config()).set_implementation(
                attention=options["attn"], conv=options.get("conv"), transformer=options.get("transformer"), check=False
            )  # a part not named keeps its default (the reference for conv and transformer)
        model.load_state_dict(weights)
        model = model.to(device=device, dtype=cases_dtype)
        model.train(training)
        compile_kwargs, frozen = _frozen_options(compile_kwargs)
        forward = torch.compile(model, **{"dynamic": False, **compile_kwargs}) if compile_kwargs is not None else model
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
            with torch.no_grad(), inductor_config.patch(freezing=True) if frozen else contextlib.nullcontext():
                return forward(inputs).logits

        def check(logits):
            err = relative_error(logits, expected)
            return None if err <= CHECK_TOLERANCE[dtype] else f"wrong output: relative error {err:.3g} vs ours eager fp32"

        return infer, check

    baseline_name = baseline if baseline in providers else "ours eager"
    cases = []
    for provider in providers:
        if training and inference_only(provider):
            raise ValueError(f"provider {provider!r} is inference-only (fusions or freezing); it has no training step")
        if provider.startswith("transformers"):
            try:
                import transformers  # noqa: F401
            except ImportError:
                continue
        cases.append(Case(group, provider, Deferred(build, provider), baseline=provider == baseline_name, items=batch))
    return cases
