"""The full sweep: op level (stage shapes, separable vs multi-head over N) and model level (widths 0.5, 1.0,
2.0; batch 1 and large; fp32/fp16/bf16; inference and a training step), all in one process.

    python bench/run_full.py --out bench/results/full-h200        # on a GPU
    python bench/run_full.py --quick                              # a small CPU version

Writes <out>.json / <out>.csv / <out>.txt (device, versions, commit; rewritten after every case, through the
benchmark harness, like ``mobilevitv2 bench``) and <out>-attention-scaling.png at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mobilevitv2.bench import harness  # noqa: E402
from mobilevitv2.bench.models import model_cases  # noqa: E402
from mobilevitv2.bench.ops import attention_core_cases, attention_scaling_cases  # noqa: E402
from plot_attention_scaling import plot  # noqa: E402


def cases(device: torch.device, quick: bool, attention_only: bool = False) -> list[harness.Case]:
    gpu = device.type == "cuda"
    out = []
    stage_shapes = [(256, 128, 4, 256), (256, 192, 4, 64), (256, 256, 4, 16)] if gpu else [(4, 128, 4, 256), (4, 256, 4, 16)]
    low = torch.float16 if gpu else torch.float32
    for backward in (False, True):
        for shape in stage_shapes:
            out += attention_core_cases(shape, low, device, backward)
    tokens = 1_048_576 if gpu else 16_384
    ns = [16, 64, 256, 1024, 4096, 16384] if gpu else [16, 64, 256, 1024]
    for backward in (False, True):
        for n in ns:
            out += attention_scaling_cases(n, tokens, 256 if gpu else 64, low, device, backward)
    if attention_only:
        return out
    if quick or not gpu:
        out += model_cases(0.5, 1, torch.float32, device, compiled=False)
        return out
    for width in (0.5, 1.0, 2.0):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            out += model_cases(width, 256, dtype, device)
            out += model_cases(width, 1, dtype, device, reduce_overhead=True)
    out += model_cases(1.0, 128, torch.bfloat16, device, training=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true", help="a small CPU-sized sweep")
    parser.add_argument("--attention-only", action="store_true", help="only the op-level cases")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    env = harness.environment(device)
    todo = cases(device, args.quick, args.attention_only)
    prefix = args.out or os.path.join(os.path.dirname(__file__), "results", f"full-{device.type}")
    results, stopped = harness.run_to_files(todo, device, prefix, env, reps=args.reps)  # files after every case
    if stopped:
        print(harness.format_table(results))
        print(f"\nstopped by {stopped} after {len(results)} of {len(todo)} cases; {prefix}.json/.csv/.txt hold them")
        return 128 + signal.SIGTERM
    json_path = prefix + ".json"
    png = plot(json_path, prefix + "-attention-scaling.png")
    print(harness.format_table(results))
    print(f"\nwrote {json_path}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
