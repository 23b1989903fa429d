"""Freed memory kept in the process (Linux, glibc), so that eager PyTorch on a CPU stops page-faulting.

PyTorch's CPU allocator takes every tensor from ``malloc`` and gives it back on ``free``. glibc serves a
block over its mmap threshold (128 KiB at start, raised as such blocks are freed, never above 32 MiB) with
fresh pages from the kernel and unmaps it on ``free``, so each large activation of an eager forward pass is
faulted in and zeroed by the kernel again on every call. Measured on a 2-core AMD EPYC, this package's eager
model, width 1.0 at 256x256, a fresh process each: batch 1 took 13,000 page faults and 31 ms of kernel time
per call (80 ms in all), batch 8 358,000 and 1.0 s (1,039 ms in all); with :func:`keep_freed_memory`, none,
and 55 ms and 420 ms. Compiled code (:class:`mobilevitv2.cpu_inference.CPUInference`) and the runtimes
mostly are not affected (about 15 faults a call), though a graph's allocations follow the same rules and one
that frees more than glibc's trim threshold at the top of the heap faults its memory in again too.

:func:`keep_freed_memory` changes the whole process's ``malloc``: every block comes from the heap, and freed
memory stays in the process for reuse (the heap is trimmed only when more than 1 GiB is free at its top), so
the process keeps about its peak memory until it ends. The library therefore never calls it on its own:
the ``mobilevitv2`` command does, for the commands that run a model on the CPU, unless
``MOBILEVITV2_KEEP_FREED_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import os
import platform

ENV = "MOBILEVITV2_KEEP_FREED_MEMORY"
# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory(keep_bytes: int = 1 << 30) -> bool:
    """Make glibc serve every ``malloc`` from its heap (no mmap per block) and trim the heap only when more
    than ``keep_bytes`` are free at its top; True when it took effect, False elsewhere (not Linux, not glibc)
    or when ``$MOBILEVITV2_KEEP_FREED_MEMORY`` is 0."""
    if isinstance(keep_bytes, bool) or not isinstance(keep_bytes, int) or keep_bytes < 0:
        raise ValueError(f"keep_bytes must be a non-negative int, got {keep_bytes!r}")
    if os.environ.get(ENV, "1").strip() == "0" or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        libc.gnu_get_libc_version  # glibc only: another libc's mallopt may not mean the same
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, min(keep_bytes, 2**31 - 1)))
