"""Command line of mobilevitv2_kernels: ``python -m mobilevitv2_kernels build`` compiles the CUDA
extension ahead of time (for Docker images and CI; needs nvcc and a CUDA build of PyTorch, not a GPU)."""

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


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "build":
        return _build(args.quiet)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
