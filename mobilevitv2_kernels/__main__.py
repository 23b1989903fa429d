"""Command line of mobilevitv2_kernels: ``python -m mobilevitv2_kernels build`` compiles the CUDA
extension ahead of time (for Docker images and CI; needs nvcc and a CUDA build of PyTorch, not a GPU);
``python -m mobilevitv2_kernels check`` runs the first-use check of every backend, op and dtype on a device
and reports its verdict and cost."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mobilevitv2_kernels",
        description="Tools for the mobilevitv2_kernels package.",
        epilog="Environment: TORCH_CUDA_ARCH_LIST (architectures, default: the visible GPUs', else 8.0 and 9.0), "
        "CUDA_HOME (toolkit), TORCH_EXTENSIONS_DIR (build cache), MAX_JOBS (parallel compile jobs).",
    )
    commands = parser.add_subparsers(dest="command", metavar="command")
    build = commands.add_parser(
        "build",
        help="compile the CUDA extension now (or find it in the cache); exits non-zero with the compiler's "
        "error if the build fails",
        description="Compile the CUDA extension now, or find an up-to-date build in the cache. Needs nvcc and a "
        "CUDA build of PyTorch, not a GPU.",
    )
    build.add_argument("-q", "--quiet", action="store_true", help="do not echo the compiler commands and output")
    check = commands.add_parser(
        "check",
        help="check every fused backend's ops against the reference on a device, with what each check costs; "
        "exits 1 if any disagrees",
        description="Run the first-use check (one small case per op against the float64 reference) of every "
        "backend that can run on the device, for every op it has and every kernel dtype, in a fresh process: "
        "the first run's time includes compiling the kernels for the case, as a user's first call does; the "
        "second run is the check alone.",
    )
    check.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present, else cpu)")
    check.add_argument("--out", default=None, help="also write the results as JSON to this file")
    return parser


def _build(quiet: bool) -> int:
    from mobilevitv2_kernels import cuda_extension
    from mobilevitv2_kernels.backends import BackendUnavailableError

    archs = ", ".join("sm_" + arch.replace(".", "") for arch in cuda_extension.arch_list())
    print(f"Building the mobilevitv2_kernels CUDA extension for {archs} ...", flush=True)
    try:
        result = cuda_extension.build(verbose=not quiet)
    except BackendUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    state = "already up to date in the cache" if result.cached else "built"
    print(f"{state} in {result.seconds:.1f} s: {result.kernels.path}")
    return 0


def _check(device_name: str | None, out: str | None) -> int:
    import dataclasses
    import json
    import time

    import torch

    from mobilevitv2_kernels import backends, self_check
    from mobilevitv2_kernels.numerics import KERNEL_DTYPES

    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = [name for name in backends.BACKEND_NAMES if name != "reference"]
    rows, skipped = [], []
    for name in names:
        reason = backends.unavailable_reason(name, device.type)
        if reason is not None:
            skipped.append(f"{name}: {reason}")
            continue
        module = backends.implementation(name)
        for op in self_check.CASES:
            if not backends.supports(name, op):
                continue
            for dtype in KERNEL_DTYPES:
                first = self_check.check(name, module, op, device, dtype)
                again = self_check.check(name, module, op, device, dtype)
                rows.append({**dataclasses.asdict(first), "first_ms": first.seconds * 1e3, "again_ms": again.seconds * 1e3})
                status = "ok" if first.ok else f"FAILED: {first.failure}"
                print(f"{op:22s} {name:7s} {first.device:7s} {first.dtype:9s} error {first.error:9.3g} / bound "
                      f"{first.bound:9.3g}  first {first.seconds * 1e3:8.1f} ms, again {again.seconds * 1e3:7.1f} ms  {status}",
                      flush=True)  # fmt: skip
    for line in skipped:
        print(f"skipped {line}")
    failed = [row for row in rows if row["failure"] is not None]
    total_first = sum(row["first_ms"] for row in rows)
    total_again = sum(row["again_ms"] for row in rows)
    print(f"{len(rows)} checks, {len(failed)} failed; cost: {total_first:.0f} ms in all on first use "
          f"(kernel compilation included), {total_again:.0f} ms when compiled")  # fmt: skip
    if out:
        import platform

        environment = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                       "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
        import math

        # strict JSON: a non-finite error (a check that raised) is written as null
        finite = [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()} for row in rows]
        with open(out, "w") as f:
            json.dump({"environment": environment, "skipped": skipped, "checks": finite}, f, indent=1, allow_nan=False)
    if not rows:
        print(f"error: no fused backend can run on {device} here", file=sys.stderr)
        return 1
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "build":
        return _build(args.quiet)
    if args.command == "check":
        return _check(args.device, args.out)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
