"""GPU timings of the fused kernels (inverted residual, separable attention, unfold/fold), each kernel's
output checked against a float32 oracle (TF32 off) before it is timed.

Run from the repository root on a machine with a CUDA GPU (the Triton kernels need nothing built):

    python bench/gpu_check_kernels.py --out /tmp/kernels.json --rep 50
    python bench/gpu_check_kernels.py --only-ir --ir-sweep      # the inverted residual alone, with its tile sweep
    python bench/gpu_check_kernels.py --smoke --out /tmp/k.json  # CPU dry run of this script (Triton interpreter)

Without a CUDA device (and without ``--smoke``) it says so and exits with status 2. Correctness tests are not
run here (pytest does that in its own step); a kernel whose output here is outside the numerics bound is
reported as an error and not timed.

Order, so that the measurements that decide something come first and a time limit keeps them:

1. ``ir_variants``: both variants of the fused inverted-residual kernel ("recompute": the expand 1x1 once
   per (output pixel, tap); "halo": once per pixel of each tile's input halo, through a scratch buffer),
   called directly at the five width-1.0 block shapes (B=256, fp16, 256x256 input). This decides the
   launcher's automatic rule (``choose_variant``); ``summary.ir_variant_choice`` says which one was faster.
2. ``inverted_residual``: the fused op (BatchNorm folded beforehand), the module with
   ``fused_backend="triton"`` (folding at every call) and the eager module (conv + BN + SiLU x3).
3. ``attention``: separable attention at the three stage shapes (B=256, fp16; qkv (B, 1+2d, P, N)): forward,
   backward alone and forward+backward of each fused backend (triton, cuda where available) and the eager
   reference.
4. ``patching``: unfold and fold at the same stage shapes (2x2 patches), each backend and the eager
   reference (outputs must be exact).
5. The ``torch.compile``d baselines (about 20-40 s of compilation each): the eager inverted-residual module
   per shape, then the attention reference's forward per shape (the targets' baseline), then its backward
   and forward+backward. Each is compiled right before it is timed (its compile time is recorded as
   ``compile_s``), after every uncompiled measurement. ``--no-compile`` skips them.
6. Opt-in sweeps: ``--ir-sweep`` (inverted-residual tiles of both variants, about 100 kernel compilations)
   and ``--sweep`` (attention tiles).

Errors: fp16 results are compared with the float32 oracle computed from the same fp16 inputs with TF32 off
(``mobilevitv2_kernels.numerics.strict_fp32``), next to PyTorch's own fp16 error against it; the bound is
the numerics rule (``numerics.TOLERANCES``: twice PyTorch's error plus a unit in the last place).
Times are ``triton.testing.do_bench`` medians (L2 flushed before each run) in ms; bandwidth is a fraction of
a device-to-device copy of the same number of bytes, measured in the same run.

The JSON holds the device, torch/triton versions and commit, then ``sections`` in the order above (the
compiled baselines' rows join ``inverted_residual`` and ``attention``; the sweeps are ``ir_sweep`` and
``attention_sweep``), ``copies`` (the copy timings) and ``summary``. It is rewritten atomically (a temporary
file, then a rename) after every single measurement, so a kill at any moment leaves every number measured so
far; ``finished`` becomes true only at the end, and ``stopped_by`` names the signal when SIGTERM (a time
limit) ended the run early. Exit status: 0 when every check passed and everything ran, 1 when something
failed (listed under ``errors``), 2 without a CUDA device, 143 when stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGE_SHAPES = [(256, 128, 4, 256), (256, 192, 4, 64), (256, 256, 4, 16)]  # (B, d, P, N)
SMOKE_SHAPES = [(2, 4, 4, 8), (2, 6, 4, 4)]
TARGETS = {  # fraction of copy bandwidth / speed-up over the compiled reference
    "fwd_copy_fraction_at_first_shape": 0.85,
    "fwd_speedup_vs_compiled_at_smaller_shapes": 4.0,
    "bwd_copy_fraction_at_first_shape": 0.70,
}
# Width 1.0 at 256x256 input: (name, C_in, E, C_out, H, W, stride) of inverted residuals of stages 1-5.
IR_SHAPES = [
    ("layer.0", 32, 64, 64, 128, 128, 1),
    ("layer.1.0", 64, 128, 128, 128, 128, 2),
    ("layer.1.1", 128, 256, 128, 64, 64, 1),  # the residual block
    ("layer.2 down", 128, 256, 256, 64, 64, 2),
    ("layer.4 down", 384, 768, 512, 16, 16, 2),
]
IR_SMOKE_SHAPES = [  # both strides and the residual path, tiny
    ("smoke s1 residual", 8, 16, 8, 9, 7, 1),
    ("smoke s2", 8, 16, 16, 9, 7, 2),
]
IR_SWEEP = [  # launcher overrides of the recompute variant tried per shape (defaults timed as {})
    dict(block_e=32, num_warps=4),
    dict(block_e=32, num_warps=8),
    dict(block_p=128, num_warps=8),
    dict(block_p=32, num_warps=4),
    dict(block_co=64),
    dict(num_stages=1),
    dict(num_stages=3),
]
IR_HALO_SWEEP = [  # launcher overrides of the halo variant (tile, halo step, persistent grid, scratch dtype)
    dict(tile_w=8),
    dict(tile_w=16),
    dict(tile_h=16, tile_w=8, block_co=64),
    dict(block_hp=64),
    dict(block_e=32),
    dict(num_stages=1),
    dict(num_programs_per_sm=1),
    dict(num_programs_per_sm=4),
    dict(scratch_dtype="x"),
]
EAGER_IR = "eager module (conv+BN+SiLU x3)"
FUSED_OP = "fused op (triton, BN pre-folded)"
FUSED_MODULE = "fused module (folds per call)"
COMPILED_IR = "eager module compiled"

Timer = Callable[[Callable[[], object], int], float]  # (fn, rep in ms) -> median ms


class Stopped(BaseException):
    """SIGTERM (a time limit's ``timeout``) arrived: stop measuring; the file already holds every result."""


def git_commit() -> str:
    """$GIT_COMMIT (a copy of the tree without .git), else the checkout's commit, else "unknown"."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True,
            timeout=10,
        ).stdout  # fmt: skip
        return commit + ("-dirty" if dirty.strip() else "") if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_json_atomically(path: Path, data: dict) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``: a reader (or a
    kill) never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Recorder:
    """The results file: every change (a new row, a number added to a row, an error) rewrites it."""

    def __init__(self, path: Path, header: dict, summarize: Callable[[dict], dict] | None = None) -> None:
        self.path = path
        self.summarize = summarize
        self.data = {**header, "finished": False, "sections": {}, "copies": [], "summary": {}, "errors": []}
        path.parent.mkdir(parents=True, exist_ok=True)
        self.save()

    def save(self) -> None:
        if self.summarize is not None:
            self.data["summary"] = self.summarize(self.data)
        write_json_atomically(self.path, self.data)

    def add(self, section: str, row: dict) -> dict:
        """Append ``row`` to ``section`` and save; the caller fills the row further with :meth:`update`."""
        self.data["sections"].setdefault(section, []).append(row)
        self.save()
        return row

    def update(self, row: dict, **values) -> None:
        row.update(values)
        self.save()

    def error(self, message: str) -> None:
        print(f"  ERROR {message}", flush=True)
        self.data["errors"].append(message)
        self.save()

    def finish(self) -> None:
        self.data["finished"] = True
        self.save()


def summarize(data: dict) -> dict:
    """Derived numbers, recomputed at every save: which inverted-residual variant won per block, and the
    attention kernels against the targets."""
    sections = data["sections"]
    summary: dict = {}
    variants: dict[str, dict] = {}
    for row in sections.get("ir_variants", []):
        entry = variants.setdefault(row["block"], {"stride": row["shape"][-1], "auto_rule": row["auto_rule"]})
        entry[f"{row['variant']}_ms"] = row.get("ms")
    for entry in variants.values():
        rec, halo = entry.get("recompute_ms"), entry.get("halo_ms")
        if rec and halo:
            entry["faster"] = "halo" if halo < rec else "recompute"
            entry["halo_speedup_over_recompute"] = rec / halo
            entry["auto_rule_is_faster"] = entry["faster"] == entry["auto_rule"]
    if variants:
        summary["ir_variant_choice"] = variants

    rows = sections.get("attention", [])

    def get(provider, shape, key):  # the compiled reference has two rows per shape (fwd; bwd and fwd_bwd)
        for r in rows:
            if r["provider"] == provider and r["shape"] == list(shape) and r.get(key) is not None:
                return r[key]
        return None

    shapes = [r["shape"] for r in rows if r["provider"] == "reference eager"]
    checks = {}
    for name in sorted({r["provider"] for r in rows if r["provider"] in ("triton", "cuda")}):
        speedups = {}
        for s in shapes[1:]:
            base, ours = get("reference compiled", s, "fwd_ms"), get(name, s, "fwd_ms")
            speedups[str(tuple(s))] = base / ours if base and ours else None
        checks[name] = {
            "fwd_copy_fraction_at_first_shape": get(name, shapes[0], "fwd_copy_fraction") if shapes else None,
            "bwd_copy_fraction_at_first_shape": get(name, shapes[0], "bwd_copy_fraction") if shapes else None,
            "fwd_speedup_vs_compiled_at_smaller_shapes": speedups,
        }
    if checks:
        summary["attention_targets"] = {"targets": TARGETS, "measured": checks}
    return summary


# ----- numerics ------------------------------------------------------------------------------------------


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


# ----- the checker ---------------------------------------------------------------------------------------


class Checker:
    def __init__(self, args: argparse.Namespace, recorder: Recorder, timer: Timer, device: str) -> None:
        import torch

        self.torch = torch
        self.args, self.rec, self.timer, self.device = args, recorder, timer, device
        self.smoke = args.smoke
        self.compile = not (args.smoke or args.no_compile)
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        self._copy_ms: dict[int, float] = {}
        self._ir: dict[str, object] = {}
        self._attention: dict[tuple, dict] = {}
        self._backends: list[str] | None = None
        self.failed = False

    # --- helpers ---

    def fail(self, message: str) -> None:
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
            self._free()
            return None
        self.rec.update(row, **{key: ms})
        return ms

    def _free(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.empty_cache()

    def copy_ms(self, num_bytes: int) -> float | None:
        """A device-to-device copy moving ``num_bytes`` in total (half read, half written), measured once
        per size and recorded under ``copies``."""
        if num_bytes not in self._copy_ms:
            torch = self.torch
            src = torch.empty(max(1, num_bytes // 4), dtype=torch.float16, device=self.device).normal_()
            dst = torch.empty_like(src)
            try:
                ms = self.time(lambda: dst.copy_(src))
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
        start = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - start

    # --- 1 and 2: the fused inverted residual ---

    def ir_shapes(self):
        return IR_SMOKE_SHAPES if self.smoke else IR_SHAPES

    def ir_case(self, spec):
        """Module, input, oracle and folded weights of one block shape, built once and kept for the later
        sections (a few GB at most on the GPU)."""
        name = spec[0]
        if name not in self._ir:
            try:
                self._ir[name] = _IRCase(spec, self)
            except Exception as exc:
                self.fail(f"inverted residual {name}: setting up: {type(exc).__name__}: {str(exc)[:300]}")
                self._free()
                self._ir[name] = None
        return self._ir[name]

    def ir_row(self, section: str, case, provider: str, fn, extra: dict | None = None, judge: bool = True):
        """Check ``fn``'s output against the oracle (recorded at once), then time it if it passed."""
        row = self.rec.add(section, {**case.describe(), "provider": provider, **(extra or {})})
        try:
            if provider == COMPILED_IR:
                out, seconds = self.first_call(fn)
                row["compile_s"] = seconds
            else:
                out = fn()
            err = max_abs_err(out, case.expected)
            del out
        except Exception as exc:
            self.fail(f"inverted residual {case.name} {provider}: {type(exc).__name__}: {str(exc)[:300]}")
            self.rec.update(row, error=f"{type(exc).__name__}: {str(exc)[:300]}")
            self._free()
            return row
        ok = err <= case.bound
        self.rec.update(row, max_abs_err=err, torch_fp16_err=case.torch_err, bound=case.bound, within_bound=ok)
        if not ok and judge:
            self.fail(f"inverted residual {case.name} {provider}: error {err:.3g} > bound {case.bound:.3g} "
                      f"(PyTorch fp16 error {case.torch_err:.3g}); not timed")  # fmt: skip
            return row
        copy = self.copy_ms(case.io_bytes)
        ms = self.time_into(row, "ms", fn)
        if ms:
            flops = case.executed_flops.get(provider, case.useful_flops)
            self.rec.update(
                row, copy_fraction=copy / ms if copy else None, useful_tflops=case.useful_flops / ms / 1e9,
                executed_tflops=flops / ms / 1e9,
            )  # fmt: skip
            print(f"    {provider:34s} {ms:8.4f} ms  err {err:.2e} (PyTorch fp16 {case.torch_err:.2e})"
                  + (f"  {copy / ms:6.1%} of copy" if copy else ""), flush=True)  # fmt: skip
        return row

    def ir_variants(self) -> None:
        """Section 1: both kernel variants, directly through the launcher, at every block shape."""
        from mobilevitv2_kernels import triton_kernels as tk
        from mobilevitv2_kernels.triton_kernels import inverted_residual as tk_ir

        print("\n1. inverted residual: halo vs recompute kernel (fp16, launcher called directly)", flush=True)
        for spec in self.ir_shapes():
            case = self.ir_case(spec)
            if case is None:
                continue
            print(f"  {case.title()}", flush=True)
            for variant in tk_ir.VARIANTS:
                fn = self.no_grad(lambda v=variant: tk.inverted_residual_forward(
                    case.x, *case.folded, case.stride, 1, case.residual, variant=v))  # fmt: skip
                extra = {"variant": variant, "auto_rule": tk_ir.choose_variant(case.stride),
                         "expand_pixels_per_output": case.expand_per_output[variant]}  # fmt: skip
                self.ir_row("ir_variants", case, f"kernel {variant}", fn, extra)

    def ir_providers(self) -> None:
        """Section 2: the registered op, the module with the fused path, the eager module."""
        import mobilevitv2_kernels as mk

        print("\n2. inverted residual: fused op and module vs the eager module", flush=True)
        for spec in self.ir_shapes():
            case = self.ir_case(spec)
            if case is None:
                continue
            print(f"  {case.title()}", flush=True)
            providers = {
                FUSED_OP: self.no_grad(lambda: mk.inverted_residual(
                    case.x, *case.weights, stride=case.stride, residual=case.residual, backend="triton")),
                FUSED_MODULE: self.no_grad(lambda: case.fused_module(case.x)),
                EAGER_IR: self.no_grad(lambda: case.module(case.x)),
            }  # fmt: skip
            for provider, fn in providers.items():
                self.ir_row("inverted_residual", case, provider, fn, judge=provider != EAGER_IR)

    def ir_compiled(self) -> None:
        torch = self.torch
        print("\n5a. inverted residual: torch.compile of the eager module (compiled right before its timing)",
              flush=True)  # fmt: skip
        for spec in self.ir_shapes():
            case = self.ir_case(spec)
            if case is None:
                continue
            compiled = torch.compile(case.module, dynamic=False)
            self.ir_row("inverted_residual", case, COMPILED_IR, self.no_grad(lambda: compiled(case.x)), judge=False)

    def ir_sweep(self) -> None:
        from mobilevitv2_kernels import triton_kernels as tk

        torch = self.torch
        print("\n6a. inverted residual tile sweep (launcher overrides; {} = the heuristic)", flush=True)
        sms = torch.cuda.get_device_properties(0).multi_processor_count if self.device == "cuda" else 1
        for spec in self.ir_shapes():
            case = self.ir_case(spec)
            if case is None:
                continue
            configs = [dict(variant="recompute", **c) for c in [{}] + IR_SWEEP]
            configs += [dict(variant="halo", **c) for c in [{}] + IR_HALO_SWEEP]
            for cfg in configs:
                kwargs = dict(cfg)
                if "num_programs_per_sm" in kwargs:
                    kwargs["num_programs"] = kwargs.pop("num_programs_per_sm") * sms
                if kwargs.get("scratch_dtype") == "x":
                    kwargs["scratch_dtype"] = case.x.dtype
                fn = self.no_grad(lambda kw=kwargs: tk.inverted_residual_forward(
                    case.x, *case.folded, case.stride, 1, case.residual, **kw))  # fmt: skip
                row = self.rec.add("ir_sweep", {"block": case.name, "config": cfg})
                try:  # a configuration that does not compile (or is wrong) is reported, not fatal
                    err = max_abs_err(fn(), case.expected)
                except Exception as exc:
                    self.rec.update(row, error=f"{type(exc).__name__}: {str(exc)[:200]}")
                    continue
                self.rec.update(row, max_abs_err=err, within_bound=err <= case.bound)
                if err > case.bound:
                    continue
                ms = self.time_into(row, "ms", fn, rep=min(50, self.args.rep))
                copy = self.copy_ms(case.io_bytes)
                if ms and copy:
                    self.rec.update(row, copy_fraction=copy / ms)
            for variant in ("recompute", "halo"):
                best = min((r for r in self.rec.data["sections"].get("ir_sweep", [])
                            if r["block"] == case.name and r["config"]["variant"] == variant and r.get("ms")),
                           key=lambda r: r["ms"], default=None)  # fmt: skip
                if best:
                    print(f"  {case.name}: best {variant} {best['config']} {best['ms']:.4f} ms", flush=True)

    # --- 3 and 4: attention and patching at the stage shapes ---

    def stage_shapes(self):
        return SMOKE_SHAPES if self.smoke else STAGE_SHAPES

    def backends(self) -> list[str]:
        """The fused backends to time: triton, and cuda where its extension loads (asked here, not at the
        start, so that loading it never delays the inverted-residual section)."""
        if self._backends is None:
            import mobilevitv2_kernels as mk

            start = time.perf_counter()
            try:  # may build the CUDA extension (under a minute) where no earlier step has
                self._backends = [b for b in mk.available_backends(self.device) if b != "reference"]
            except Exception as exc:
                self.fail(f"listing the backends: {exc!r}")
                self._backends = ["triton"]
            self.rec.data["backends"] = self._backends
            self.rec.data["backends_s"] = time.perf_counter() - start
            self.rec.save()
        return self._backends

    def attention_case(self, shape) -> dict:
        """Inputs and float32 oracles (TF32 off, from the fp16 inputs) of one stage shape, and PyTorch's own
        fp16 errors (eager forward, autograd backward)."""
        if shape not in self._attention:
            torch = self.torch
            from mobilevitv2_kernels import reference
            from mobilevitv2_kernels.numerics import strict_fp32

            B, d, P, N = shape
            torch.manual_seed(0)
            qkv = torch.randn(B, 1 + 2 * d, P, N, device=self.device, dtype=torch.float16)
            grad = torch.randn(B, d, P, N, device=self.device, dtype=torch.float16)
            with strict_fp32():
                expected = reference.separable_attention_forward(qkv.float())
                expected_grad = reference.separable_attention_backward(grad.float(), qkv.float())
            qkv_req = qkv.detach().requires_grad_(True)
            torch_fwd = max_abs_err(reference.separable_attention_forward(qkv), expected)
            (torch_grad,) = torch.autograd.grad(reference.separable_attention_forward(qkv_req), qkv_req, grad)
            torch_bwd = max_abs_err(torch_grad, expected_grad)
            elem = qkv.element_size()
            self._attention[shape] = dict(
                qkv=qkv, grad=grad, qkv_req=qkv_req, expected=expected, expected_grad=expected_grad,
                torch_fwd=torch_fwd, torch_bwd=torch_bwd,
                fwd_bound=fp16_bound(expected, torch_fwd), bwd_bound=fp16_bound(expected_grad, torch_bwd),
                fwd_bytes=(1 + 2 * d + d) * B * P * N * elem,  # read qkv, write out
                bwd_bytes=((1 + 2 * d) * 2 + d) * B * P * N * elem,  # read qkv and grad, write grad_qkv
            )  # fmt: skip
        return self._attention[shape]

    def attention_row(self, shape, provider: str, fwd, bwd, fwd_bwd, judge: bool = True, compiled: bool = False,
                      modes=("fwd", "bwd", "fwd_bwd")) -> None:  # fmt: skip
        """Check forward and backward against the oracles (recorded at once), then time each mode."""
        c = self.attention_case(shape)
        row = self.rec.add("attention", {"shape": list(shape), "provider": provider, "modes": list(modes)})
        calls = {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd_bwd}
        checks = {"fwd": ("expected", "torch_fwd", "fwd_bound"), "bwd": ("expected_grad", "torch_bwd", "bwd_bound")}
        ok = True
        for mode, (key, torch_key, bound_key) in checks.items():
            if mode not in modes:
                continue
            try:
                if compiled:
                    out, seconds = self.first_call(calls[mode])
                    row[f"{mode}_compile_s"] = seconds
                else:
                    out = calls[mode]()
                err = max_abs_err(out, c[key])
            except Exception as exc:
                self.fail(f"attention {shape} {provider} {mode}: {type(exc).__name__}: {str(exc)[:300]}")
                self.rec.update(row, error=f"{mode}: {type(exc).__name__}: {str(exc)[:300]}")
                self._free()
                return
            self.rec.update(row, **{f"{mode}_err": err, f"torch_fp16_{mode}_err": c[torch_key],
                                    f"{mode}_bound": c[bound_key], f"{mode}_within_bound": err <= c[bound_key]})  # fmt: skip
            if err > c[bound_key]:
                ok = False
                if judge:
                    self.fail(f"attention {shape} {provider} {mode}: error {err:.3g} > bound {c[bound_key]:.3g} "
                              f"(PyTorch fp16 error {c[torch_key]:.3g}); not timed")  # fmt: skip
        if not ok and judge:
            return
        if compiled and "fwd_bwd" in modes:
            try:
                _, seconds = self.first_call(fwd_bwd)
                self.rec.update(row, fwd_bwd_compile_s=seconds)
            except Exception as exc:
                self.fail(f"attention {shape} {provider} fwd_bwd: {type(exc).__name__}: {str(exc)[:300]}")
                self._free()
                modes = [m for m in modes if m != "fwd_bwd"]
        copy = {"fwd": self.copy_ms(c["fwd_bytes"]), "bwd": self.copy_ms(c["bwd_bytes"])}
        times = {}
        for mode in modes:
            times[mode] = ms = self.time_into(row, f"{mode}_ms", calls[mode])
            if ms and mode in copy and copy[mode]:
                self.rec.update(row, **{f"{mode}_copy_fraction": copy[mode] / ms})
        print(f"    {provider:20s} " + "   ".join(
            f"{m} {t:8.4f} ms" + (f" ({copy[m] / t:5.1%} of copy)" if m in copy and copy[m] else "")
            for m, t in times.items() if t), flush=True)  # fmt: skip

    def attention(self) -> None:
        """Section 3: fused backends first, then the eager reference, at every stage shape."""
        import mobilevitv2_kernels as mk
        from mobilevitv2_kernels import reference

        torch = self.torch
        print("\n3. separable attention at the stage shapes (fp16)", flush=True)
        for shape in self.stage_shapes():
            try:
                c = self.attention_case(shape)
            except Exception as exc:
                self.fail(f"attention {shape}: setting up: {type(exc).__name__}: {str(exc)[:300]}")
                self._free()
                continue
            qkv, grad, qkv_req = c["qkv"], c["grad"], c["qkv_req"]
            print(f"  (B,d,P,N)={shape}: fwd {c['fwd_bytes'] / 1e6:.0f} MB, bwd {c['bwd_bytes'] / 1e6:.0f} MB",
                  flush=True)  # fmt: skip
            for name in self.backends():
                self.attention_row(
                    shape, name,
                    lambda name=name: mk.separable_attention(qkv, backend=name),
                    lambda name=name: torch.ops.mobilevitv2.separable_attention_backward(grad, qkv, name),
                    lambda name=name: torch.autograd.grad(mk.separable_attention(qkv_req, backend=name), qkv_req, grad)[0],
                )  # fmt: skip
            self.attention_row(
                shape, "reference eager",
                lambda: reference.separable_attention_forward(qkv),
                lambda: reference.separable_attention_backward(grad, qkv),
                lambda: torch.autograd.grad(reference.separable_attention_forward(qkv_req), qkv_req, grad)[0],
                judge=False,
            )  # fmt: skip

    def attention_compiled(self, modes) -> None:
        """The compiled reference at every stage shape, for ``modes``; compiled at its first call."""
        from mobilevitv2_kernels import reference

        torch = self.torch
        fwd = torch.compile(reference.separable_attention_forward, dynamic=False)
        bwd = torch.compile(reference.separable_attention_backward, dynamic=False)
        for shape in self.stage_shapes():
            if shape not in self._attention:
                continue  # its setup failed in section 3 (recorded there)
            c = self.attention_case(shape)
            qkv, grad, qkv_req = c["qkv"], c["grad"], c["qkv_req"]
            self.attention_row(
                shape, "reference compiled", lambda: fwd(qkv), lambda: bwd(grad, qkv),
                lambda: torch.autograd.grad(fwd(qkv_req), qkv_req, grad)[0], judge=False, compiled=True, modes=modes,
            )  # fmt: skip

    def patching(self) -> None:
        """Section 4: unfold and fold (2x2 patches) at the stage shapes; every backend must be exact."""
        import mobilevitv2_kernels as mk
        from mobilevitv2_kernels import reference

        torch = self.torch
        print("\n4. unfold / fold at the stage shapes (fp16, 2x2 patches)", flush=True)
        for B, d, P, N in self.stage_shapes():
            nh = math.isqrt(N)
            while N % nh:
                nh -= 1
            H, W = 2 * nh, 2 * (N // nh)
            torch.manual_seed(0)
            x = torch.randn(B, d, H, W, device=self.device, dtype=torch.float16)
            patches = torch.randn(B, d, 4, N, device=self.device, dtype=torch.float16)
            ops = {
                "unfold": (lambda b: mk.unfold(x, 2, backend=b), lambda: reference.unfold_forward(x, 2, 2)),
                "fold": (lambda b: mk.fold(patches, (H, W), 2, backend=b),
                         lambda: reference.fold_forward(patches, H, W, 2, 2)),
            }  # fmt: skip
            nbytes = 2 * x.numel() * x.element_size()
            for op, (fused, eager) in ops.items():
                expected = eager()
                for name in self.backends() + ["reference eager"]:
                    fn = eager if name == "reference eager" else (lambda f=fused, name=name: f(name))
                    row = self.rec.add("patching", {"shape": [B, d, P, N], "op": op, "provider": name})
                    try:
                        err = max_abs_err(fn(), expected)
                    except Exception as exc:
                        self.fail(f"patching {op} {(B, d, P, N)} {name}: {type(exc).__name__}: {str(exc)[:300]}")
                        self.rec.update(row, error=f"{type(exc).__name__}: {str(exc)[:300]}")
                        continue
                    self.rec.update(row, max_abs_err=err, exact=err == 0)
                    if err != 0:
                        self.fail(f"patching {op} {(B, d, P, N)} {name}: not exact (max error {err:.3g}); not timed")
                        continue
                    copy = self.copy_ms(nbytes)
                    ms = self.time_into(row, "ms", fn)
                    if ms and copy:
                        self.rec.update(row, copy_fraction=copy / ms)
                        print(f"    {op} {(B, d, P, N)} {name:16s} {ms:8.4f} ms ({copy / ms:5.1%} of copy)", flush=True)

    def attention_sweep(self) -> None:
        """Time the Triton attention launchers over tile sizes (the defaults come from their heuristics)."""
        from mobilevitv2_kernels import triton_kernels as tk

        print("\n6b. attention tile sweep (launchers called directly; {} = the heuristic)", flush=True)
        for shape in self.stage_shapes():
            if shape not in self._attention:
                continue  # its setup failed in section 3 (recorded there)
            c = self.attention_case(shape)
            qkv, grad = c["qkv"], c["grad"]
            B, d, P, N = shape
            block_n = min(1 << (N - 1).bit_length(), 1024)
            configs = [{}]
            for tile in (1024, 2048, 4096, 8192):
                block_d = max(1, min(1 << (d - 1).bit_length(), tile // block_n))
                for warps in (4, 8):
                    configs.append({"block_d": block_d, "block_n": block_n, "num_warps": warps})
            for cfg in configs:
                jobs = [("fwd", cfg, lambda cfg=cfg: tk.separable_attention_forward(qkv, **cfg), "expected",
                         "fwd_bound", "fwd_bytes")]  # fmt: skip
                for split in (None, 1, 2, 4):
                    bcfg = dict(cfg, split=split) if split is not None else dict(cfg)
                    jobs.append(("bwd", bcfg, lambda bcfg=bcfg: tk.separable_attention_backward(grad, qkv, **bcfg),
                                 "expected_grad", "bwd_bound", "bwd_bytes"))  # fmt: skip
                for op, config, fn, key, bound_key, bytes_key in jobs:
                    row = self.rec.add("attention_sweep", {"shape": list(shape), "op": op, "config": config})
                    try:
                        err = max_abs_err(fn(), c[key])
                    except Exception as exc:  # a configuration that does not compile is reported, not fatal
                        self.rec.update(row, error=f"{type(exc).__name__}: {str(exc)[:200]}")
                        continue
                    self.rec.update(row, max_abs_err=err, within_bound=err <= c[bound_key])
                    if err > c[bound_key]:
                        continue
                    ms = self.time_into(row, "ms", fn, rep=min(50, self.args.rep))
                    copy = self.copy_ms(c[bytes_key])
                    if ms and copy:
                        self.rec.update(row, copy_fraction=copy / ms)

    # --- the whole run ---

    def section(self, step: Callable[..., None], *args) -> None:
        """Run one step; an unexpected exception in it is recorded and the next step still runs."""
        try:
            step(*args)
        except Exception as exc:
            self.fail(f"{step.__name__}: {type(exc).__name__}: {str(exc)[:300]}")
            self._free()

    def run(self) -> None:
        ir, attention = not self.args.no_ir, not self.args.only_ir
        if ir:
            self.section(self.ir_variants)
            self.section(self.ir_providers)
        if attention:
            self.section(self.attention)
            self.section(self.patching)
        if self.compile:
            if ir:
                self.section(self.ir_compiled)
            if attention:
                print("\n5b. separable attention: torch.compile of the reference (compiled right before its timing)",
                      flush=True)  # fmt: skip
                self.section(self.attention_compiled, ("fwd",))  # the targets' baseline first
                self.section(self.attention_compiled, ("bwd", "fwd_bwd"))
        if ir and self.args.ir_sweep:
            self.section(self.ir_sweep)
        if attention and self.args.sweep:
            self.section(self.attention_sweep)


class _IRCase:
    """One inverted-residual block shape: the fp16 module with BatchNorm statistics that do not make it an
    identity, its input, the float32 oracle (TF32 off, from the same fp16 weights and input), PyTorch's own
    fp16 error, the folded weights, bytes and FLOP counts."""

    def __init__(self, spec, checker: Checker) -> None:
        import torch

        import mobilevitv2_kernels as mk
        from mobilevitv2 import MobileViTV2Config
        from mobilevitv2.layers import MobileViTV2InvertedResidual
        from mobilevitv2_kernels.numerics import strict_fp32
        from mobilevitv2_kernels.triton_kernels import inverted_residual as tk_ir

        device, dtype = checker.device, torch.float16
        self.batch = batch = 2 if checker.smoke else 256
        self.name, c_in, e, c_out, H, W, self.stride = spec
        self.spec = spec
        torch.manual_seed(0)
        module = MobileViTV2InvertedResidual(MobileViTV2Config(), c_in, c_out, stride=self.stride)
        assert module.expand_1x1.convolution.out_channels == e, (self.name, module.expand_1x1.convolution.out_channels)
        with torch.no_grad():
            for layer in (module.expand_1x1, module.conv_3x3, module.reduce_1x1):
                bn = layer.normalization
                bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.2, 0.2)
                bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
        self.module = module.to(device=device, dtype=dtype).eval()
        self.residual = self.module.use_residual
        self.x = torch.randn(batch, c_in, H, W, device=device).to(dtype)
        oracle = copy.deepcopy(self.module).float()
        with torch.no_grad(), strict_fp32():
            self.expected = oracle(self.x.float())
        del oracle
        with torch.no_grad():
            self.torch_err = max_abs_err(self.module(self.x), self.expected)
        self.bound = fp16_bound(self.expected, self.torch_err)
        self.weights = []
        for layer in (self.module.expand_1x1, self.module.conv_3x3, self.module.reduce_1x1):
            w, b = mk.fold_batchnorm(layer.convolution.weight, layer.normalization)
            self.weights += [w.flatten(1) if w.shape[-1] == 1 else w, b]
        self.folded = [w.to(dtype).contiguous() if i in (0, 4) else w for i, w in enumerate(self.weights)]
        fused = MobileViTV2InvertedResidual(MobileViTV2Config(), c_in, c_out, stride=self.stride)
        fused.load_state_dict(self.module.state_dict())
        self.fused_module = fused.to(device=device, dtype=dtype).eval()
        self.fused_module.fused_backend = "triton"

        H_out, W_out = -(-H // self.stride), -(-W // self.stride)
        self.out_shape = (batch, c_out, H_out, W_out)
        self.io_bytes = (self.x.numel() + batch * c_out * H_out * W_out) * self.x.element_size()
        self.useful_flops = 2 * batch * (H * W * c_in * e + H_out * W_out * (9 * e + e * c_out))
        # expand pixels executed per output pixel: 9 (one per tap) for recompute, the padded halo for halo
        halo_cfg = tk_ir.launch_config(dtype, c_in, e, c_out, variant="halo")
        self.expand_per_output = {"recompute": 9, "halo": tk_ir.halo_geometry(halo_cfg, self.stride, 1)["factor"]}
        executed = {v: 2 * batch * H_out * W_out * (f * c_in * e + 9 * e + e * c_out)
                    for v, f in self.expand_per_output.items()}  # fmt: skip
        auto = tk_ir.choose_variant(self.stride)
        self.executed_flops = {"kernel recompute": executed["recompute"], "kernel halo": executed["halo"],
                               FUSED_OP: executed[auto], FUSED_MODULE: executed[auto]}  # fmt: skip

    def describe(self) -> dict:
        return {"block": self.name, "shape": [self.batch, *self.spec[1:]]}

    def title(self) -> str:
        _, c_in, e, c_out, H, W, stride = self.spec
        return (f"{self.name}: ({self.batch},{c_in},{H},{W}) -> {self.out_shape}, E={e}, stride {stride}, "
                f"x+y {self.io_bytes / 1e6:.0f} MB; PyTorch fp16 error {self.torch_err:.2e}, bound {self.bound:.2e}")  # fmt: skip


# ----- entry point ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default bench/results/kernels_<device>.json; with --smoke a temp file)")
    parser.add_argument("--rep", type=int, default=200, help="do_bench repetition time in ms per measurement")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU dry run of this script: Triton interpreter, tiny shapes, nothing compiled")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd baselines (section 5)")
    parser.add_argument("--only-ir", action="store_true", help="only the fused inverted residual")
    parser.add_argument("--no-ir", action="store_true", help="skip the fused inverted residual")
    parser.add_argument("--ir-sweep", action="store_true", help="also sweep the inverted-residual kernel's tiles")
    parser.add_argument("--sweep", action="store_true", help="also sweep the attention kernels' tiles")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false",
                        help="no attention tile sweep (the default)")  # fmt: skip
    return parser.parse_args(argv)


def default_timer(smoke: bool) -> Timer:
    """do_bench's median on the GPU; under --smoke one perf_counter call (the interpreter's times mean
    nothing, only that the call works)."""
    if smoke:

        def once(fn, rep):
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3

        return once
    import triton.testing

    return lambda fn, rep: float(triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median"))


def main(argv: list[str] | None = None, timer: Timer | None = None) -> int:
    """Run the checks; ``timer(fn, rep_ms) -> ms`` replaces do_bench (tests use it)."""
    args = parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    else:
        os.environ.pop("TRITON_INTERPRET", None)  # this script is about the compiled kernels
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check_kernels: no CUDA device here, so nothing was measured. Run it on a GPU machine, or "
              "pass --smoke for a CPU dry run of the script.", file=sys.stderr)  # fmt: skip
        return 2
    import triton

    sys.path.insert(0, str(REPO))
    if not args.smoke:
        for knob in ("recompile_limit", "cache_size_limit"):  # one specialised compile per shape and grad mode
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, 64)
                break
    device = "cpu" if args.smoke else "cuda"
    device_name = "cpu-smoke" if args.smoke else torch.cuda.get_device_name()
    out_path = args.out or REPO / "bench" / "results" / f"kernels_{re.sub(r'[^A-Za-z0-9]+', '_', device_name)}.json"
    if args.smoke and args.out is None:
        out_path = Path(tempfile.gettempdir()) / "kernels_cpu_smoke.json"  # never a results file in the repo
    header = {
        "device": device_name,
        "sm_count": None if args.smoke else torch.cuda.get_device_properties(0).multi_processor_count,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda_runtime": torch.version.cuda,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "timing": "one perf_counter call (smoke: meaningless)" if args.smoke
        else f"triton.testing.do_bench median, L2 flushed before each run, rep {args.rep} ms; ms",
        "errors_against": "float32 oracle (TF32 off) from the same fp16 inputs; bound = numerics.TOLERANCES[fp16]",
    }  # fmt: skip
    recorder = Recorder(Path(out_path), header, summarize=summarize)
    print(f"gpu_check_kernels on {device_name} (torch {torch.__version__}, triton {triton.__version__}, "
          f"commit {header['commit']}); results: {out_path}", flush=True)  # fmt: skip
    checker = Checker(args, recorder, timer or default_timer(args.smoke), device)

    def stop(signum, frame):
        raise Stopped(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stop)  # so that a time limit ends the run cleanly, noted in the file
    try:
        checker.run()
    except Stopped as exc:
        recorder.data["stopped_by"] = str(exc)
        recorder.save()
        print(f"\nstopped by {exc}; {out_path} holds every result measured until then", flush=True)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
    recorder.finish()
    summary = recorder.data["summary"]
    if "ir_variant_choice" in summary:
        print("\ninverted residual variant choice:", json.dumps(summary["ir_variant_choice"], indent=1))
    if "attention_targets" in summary:
        print("\nattention vs targets:", json.dumps(summary["attention_targets"], indent=1))
    errors = recorder.data["errors"]
    print(f"\nwrote {out_path}" + (f"; {len(errors)} error(s):\n  " + "\n  ".join(errors) if errors else ""))
    return 1 if checker.failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
