"""``mobilevitv2 bench``: run a suite on this machine's device, writing the results files after every case."""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys

import torch

from mobilevitv2 import cpu_memory
from mobilevitv2.bench.harness import environment, format_table, run_to_files
from mobilevitv2.bench.suites import SUITES, default_cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mobilevitv2 bench",
        description="Run the default benchmark sweep on this machine's device (GPU: the attention core at the three "
        "stage shapes and width 1.0 at batch 1 and 256 in fp16, against transformers eager and compiled; CPU: what a "
        "CPU user would pick, transformers eager and compiled, ours eager and our CPU path, ONNX Runtime, OpenVINO "
        "and ExecuTorch where installed, at batch 1 and 8, and separable vs multi-head attention over N) and write a JSON, a CSV and a text table with the device, versions and commit "
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
        "attention over N, fp16 batch 256 vs transformers compiled, batch 1 vs reduce-overhead); training: training steps "
        "of ours (eager, fused attention, compiled) vs transformers eager and compiled (GPU: width 1.0 bf16 batch 128)",
    )  # fmt: skip
    parser.add_argument(
        "--max-seconds", type=float, default=None,
        help="CPU only: stop warming up and timing a case after this many seconds (at least 3 timed calls); default 2",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="with --suite targets, training or cpu: tiny shapes, nothing compiled")
    parser.add_argument(
        "--keep-freed-memory", action="store_true",
        help="glibc keeps freed memory in the process, as mobilevitv2 predict, segment and train do on a CPU "
        "(mobilevitv2.cpu_memory): eager PyTorch stops page-faulting its activations in (default: the stock "
        "allocator, what a plain Python process has)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kept = args.keep_freed_memory and cpu_memory.keep_freed_memory()
    if args.keep_freed_memory and not kept:
        print("bench: --keep-freed-memory has no effect here (not Linux with glibc, or MOBILEVITV2_KEEP_FREED_MEMORY=0)", file=sys.stderr)
    env = environment(device)
    env["malloc"] = "freed memory kept" if kept else "stock"
    print(f"mobilevitv2 bench on {env['device']} (torch {env['torch']}, triton {env['triton']}, commit {env['commit']}, "
          f"malloc {env['malloc']})", file=sys.stderr)  # fmt: skip
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    prefix = args.out or os.path.join("bench-results", f"{device.type}-{args.suite}-{stamp}")
    cases = SUITES[args.suite](device, quick=args.quick) if args.suite != "default" else default_cases(device)

    max_seconds = args.max_seconds if args.max_seconds is not None else (2.0 if device.type == "cpu" else None)
    # On a CPU the providers of a group are timed in rounds: a shared machine's speed drifts by tens of percent.
    results, stopped = run_to_files(
        cases, device, prefix, env, reps=args.reps, max_seconds=max_seconds, interleave=device.type == "cpu"
    )  # files after every case
    print(format_table(results))
    if stopped:
        print(f"\nstopped by {stopped} after {len(results)} of {len(cases)} cases; {prefix}.json/.csv/.txt hold them")
        return 128 + signal.SIGTERM
    print(f"\nwrote {prefix}.json, {prefix}.csv and {prefix}.txt")
    failed = [r for r in results if r.error]
    if failed:  # a provider that failed or gave a wrong output: a result, and a failure of the run
        print(f"{len(failed)} of {len(results)} cases failed (their error is in the table)", file=sys.stderr)
        return 1
    return 0
