"""Where the time goes: per-part forward time of a model, timed with CUDA events around module calls
(or perf_counter on the CPU), for ours (eager or fused) and for transformers' model. The clock, the whole
forward's timing and the device name come from the benchmark harness (mobilevitv2.bench.harness).

    python bench/profile_modules.py --batch 256 --dtype fp16                  # on a GPU
    python bench/profile_modules.py --batch 2 --dtype fp32 --device cpu       # anywhere

Parts: inverted-residual blocks (stem and stages 1-2, and the down-sampling blocks of stages 3-5), the
transformer's attention, FFN and GroupNorms (or whole transformer layers where they run as the fused op), the blocks' local convs and projections, and "the rest"
(whole forward minus the parts: unfold/fold, pooling, classifier, launch gaps). Hooks add a little
overhead per module call; compare parts, not totals, against un-hooked timings.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

import torch
from torch import nn

from mobilevitv2.bench import harness
from mobilevitv2.bench.checks import DTYPES


def part_of(name: str, module: nn.Module) -> str | None:
    """Which part a module belongs to (same class names in ours and transformers'); None for the others."""
    kind = type(module).__name__
    if kind == "MobileViTV2InvertedResidual" or name.endswith("conv_stem"):
        return "inverted residual blocks + stem"
    if kind == "MobileViTV2TransformerLayer":  # as a whole only where it runs fused (its parts never run then)
        return "transformer layers (fused op)" if getattr(module, "transformer_backend", None) else None
    if kind == "MobileViTV2LinearSelfAttention":
        return "attention"
    if kind == "MobileViTV2FFN":
        return "FFN"
    if isinstance(module, nn.GroupNorm):
        return "GroupNorm"
    if name.rsplit(".", 1)[-1] in ("conv_kxk", "conv_1x1", "conv_projection") and "aspp" not in name:
        return "local convs + projection"
    return None


class PartTimer:
    def __init__(self, model: nn.Module, device: torch.device):
        self.device, self.events, self.handles = device, defaultdict(list), []
        for name, module in model.named_modules():
            part = part_of(name, module)
            if part is not None:
                self.handles.append(module.register_forward_pre_hook(self._start(part)))
                self.handles.append(module.register_forward_hook(self._stop(part)))

    def _start(self, part):
        def hook(module, args):
            self.events[part].append([harness.mark(self.device), None])

        return hook

    def _stop(self, part):
        def hook(module, args, output):
            self.events[part][-1][1] = harness.mark(self.device)

        return hook

    def totals_ms(self) -> dict[str, float]:
        harness.synchronize(self.device)
        return {p: sum(harness.elapsed_ms(a, b) for a, b in spans) for p, spans in self.events.items()}

    def reset(self):
        self.events.clear()

    def remove(self):
        for h in self.handles:
            h.remove()


def profile(model: nn.Module, x: torch.Tensor, reps: int) -> dict[str, float]:
    """Median per-part ms over ``reps`` forwards, plus "whole forward" (un-hooked) and "the rest"."""
    device = x.device
    with torch.no_grad():
        whole = harness.time_ms(lambda: model(x), device, warmup=3, reps=reps)
        timer = PartTimer(model, device)
        per_rep = defaultdict(list)
        for _ in range(reps + 2):
            timer.reset()
            model(x)
            for part, ms in timer.totals_ms().items():
                per_rep[part].append(ms)
        timer.remove()
    parts = {p: statistics.median(v[2:]) for p, v in per_rep.items()}
    parts["the rest"] = max(0.0, whole - sum(parts.values()))
    parts["whole forward"] = whole
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dtype", choices=DTYPES, default="fp16")
    parser.add_argument("--device", default=None)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype]
    from mobilevitv2 import MobileViTV2Config, MobileViTV2ForImageClassification

    config = MobileViTV2Config.from_width(args.width, num_labels=1000)
    models = {}
    # (attention, conv, transformer); "auto" keeps cuDNN for the convs, "triton" runs the fused ones
    variants = {"ours eager": ("reference", "reference", "reference")}
    if device.type == "cuda":
        variants.update({"ours fused": ("auto", "reference", "reference"), "ours fused all": ("auto", "auto", "auto"),
                         "ours fused convs": ("auto", "triton", "auto")})  # fmt: skip
    for name, (attn, conv, transformer) in variants.items():
        m = MobileViTV2ForImageClassification(MobileViTV2Config.from_width(args.width, num_labels=1000))
        models[name] = m.set_implementation(attention=attn, conv=conv, transformer=transformer, check=False)
    try:
        import transformers

        hf = transformers.MobileViTV2ForImageClassification(transformers.MobileViTV2Config(width_multiplier=config.width_multiplier, num_labels=1000))
        models["transformers"] = hf
    except ImportError:
        pass
    x = torch.randn(args.batch, 3, 256, 256, device=device, dtype=dtype)
    results = {name: profile(m.to(device=device, dtype=dtype).eval(), x, args.reps) for name, m in models.items()}
    parts = list(dict.fromkeys(p for r in results.values() for p in r))
    print(f"width {args.width}, batch {args.batch}, {args.dtype}, {harness.device_name(device)}; ms per forward")
    print("part".ljust(34) + "".join(name.rjust(16) for name in results))
    for part in parts:
        print(part.ljust(34) + "".join(f"{r.get(part, 0.0):16.3f}" for r in results.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
