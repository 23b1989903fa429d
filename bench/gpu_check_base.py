"""What every section of bench/gpu_check_kernels.py shares: the error measure and bound of an fp16 result, and
the checker's bookkeeping (timing through the run's timer, copy timings, failures recorded in the results
file). The script is split in four files so that each holds one thing: this one, the inverted-residual
sections (gpu_check_ir.py), the attention and patching sections (gpu_check_attention.py), and the entry
point with the run order and the summary (gpu_check_kernels.py).

Timing, the environment block, the commit and the atomically rewritten JSON come from the benchmark harness
(mobilevitv2.bench.harness). Nothing here imports torch or the package at module level: the entry point
sets TRITON_INTERPRET (or clears it) before anything imports triton.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

Timer = Callable[[Callable[[], object], int], float]  # (fn, rep in ms) -> median ms


def max_abs_err(actual, expected) -> float:
    """max |actual - expected| in float64 on the tensors' device (the activations here are up to ~1 GB; a
    copy to the host would cost seconds); inf for a non-finite ``actual``."""
    actual = actual.detach().double()
    if not bool(actual.isfinite().all()):
        return math.inf
    return (actual - expected.detach().double()).abs().max().item()


def fp16_bound(expected, torch_err: float) -> float:
    """The largest error allowed for a float16 result (``numerics.error_bound``'s rule, from the already
    measured PyTorch error, without moving tensors to the host)."""
    import torch

    from mobilevitv2_kernels.numerics import TOLERANCES

    tol = TOLERANCES[torch.float16]
    return tol["atol"] + tol["rtol"] * expected.detach().abs().max().item() + tol["factor"] * torch_err


class CheckerBase:
    """State and helpers of one run: ``record`` is the harness's :class:`JsonRecord` (every change rewrites the
    file), ``timer(fn, rep_ms) -> ms`` times every measurement, copies included."""

    def __init__(self, args: argparse.Namespace, record, timer: Timer, device: str) -> None:
        import torch

        self.torch = torch
        self.args, self.rec, self.timer, self.device = args, record, timer, device
        self.smoke = args.smoke
        self.compile = not (args.smoke or args.no_compile)
        self._copy_ms: dict[int, float | None] = {}
        self.failed = False

    def fail(self, message: str) -> None:
        print(f"  ERROR {message}", flush=True)
        self.failed = True
        self.rec.error(message)

    def time(self, fn: Callable[[], object], rep: int | None = None) -> float:
        return float(self.timer(fn, rep or self.args.rep))

    def time_into(self, row: dict, key: str, fn: Callable[[], object], rep: int | None = None) -> float | None:
        """Time ``fn`` and save the result into ``row[key]`` at once; a failure is recorded, not raised."""
        try:
            ms = self.time(fn, rep)
        except Exception as exc:  # out of memory, a launch error: reported, the rest still runs
            what = " ".join(str(row[k]) for k in ("block", "shape", "op", "provider", "config") if k in row)
            self.fail(f"timing {what} {key}: {type(exc).__name__}: {str(exc)[:300]}")
            self.rec.update(row, **{key: None})
            self.free()
            return None
        self.rec.update(row, **{key: ms})
        return ms

    def free(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.empty_cache()

    def copy_ms(self, num_bytes: int) -> float | None:
        """The harness's device-to-device copy moving ``num_bytes`` in total, timed by this run's timer once
        per size and recorded under ``copies``."""
        from mobilevitv2.bench import harness

        if num_bytes not in self._copy_ms:
            try:
                ms = harness.copy_ms(self.torch.device(self.device), num_bytes, timer=self.time)
            except Exception as exc:
                self.fail(f"timing a copy of {num_bytes} bytes: {exc!r}")
                ms = None
            self._copy_ms[num_bytes] = ms
            self.rec.data["copies"].append({"bytes": num_bytes, "ms": ms})
            self.rec.save()
        return self._copy_ms[num_bytes]

    def no_grad(self, fn):
        torch = self.torch

        def call():
            with torch.no_grad():
                return fn()

        return call

    def first_call(self, fn) -> tuple[object, float]:
        """``fn()`` once, synchronised, with its wall time in seconds (for a compiled fn: the compilation)."""
        from mobilevitv2.bench import harness

        start = time.perf_counter()
        out = fn()
        harness.synchronize(self.torch.device(self.device))
        return out, time.perf_counter() - start

    def section(self, step: Callable[..., None], *args) -> None:
        """Run one step; an unexpected exception in it is recorded and the next step still runs."""
        try:
            step(*args)
        except Exception as exc:
            self.fail(f"{step.__name__}: {type(exc).__name__}: {str(exc)[:300]}")
            self.free()
