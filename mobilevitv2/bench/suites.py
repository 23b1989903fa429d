"""The suites of ``mobilevitv2 bench``: the default sweep, and the performance targets (:data:`TARGET_GROUPS`:
each target with the one group of cases that decides it, its baseline and our providers only)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mobilevitv2.bench.cpu import cpu_cases
from mobilevitv2.bench.harness import Case
from mobilevitv2.bench.models import MODEL_PROVIDERS, model_cases
from mobilevitv2.bench.ops import attention_core_cases, attention_scaling_cases, transformer_layer_cases


def default_cases(device: torch.device) -> list[Case]:
    """The default sweep. On a GPU: the attention core at the three stage shapes and width 1.0 at batch 256
    and 1 in fp16 against transformers eager and compiled. On a CPU: the CPU comparison (:mod:`.cpu`)."""
    if device.type == "cuda":
        cases = []
        for shape in [(256, 128, 4, 256), (256, 192, 4, 64), (256, 256, 4, 16)]:
            cases += attention_core_cases(shape, torch.float16, device, backward=False)
        cases += model_cases(1.0, 256, torch.float16, device)
        cases += model_cases(1.0, 1, torch.float16, device, reduce_overhead=True)
        return cases
    return cpu_cases(device)


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


def training_cases(device: torch.device, quick: bool = False) -> list[Case]:
    """Training steps (forward, backward, optimizer step) of ours (eager, fused attention, compiled) against
    transformers eager and compiled: width 1.0 at batch 128 in bf16 autocast on a GPU, a small fp32 case on a
    CPU (width 0.5, 128x128, batch 8). Steps/s is 1000 / ms; the peak memory column is CUDA's."""
    if device.type == "cuda" and not quick:
        providers = ["transformers eager", "transformers compiled", "ours eager", "ours fused", "ours compiled", "ours fused compiled"]
        return model_cases(1.0, 128, torch.bfloat16, device, training=True, providers=providers)
    providers = ["transformers eager", "ours eager"] + ([] if quick else ["transformers compiled", "ours compiled"])
    if device.type == "cuda":
        providers.append("ours fused")
    return model_cases(0.5, 8, torch.float32, device, size=128 if not quick else 64, training=True, providers=providers)


SUITES = {"default": default_cases, "targets": target_cases, "training": training_cases, "cpu": cpu_cases}
