"""GPU timings of the fused kernels (inverted residual, separable attention, unfold/fold), each kernel's
output checked against a float32 oracle (TF32 off) before it is timed.

This file holds the run order, the summary and the entry point; the sections are in gpu_check_ir.py (1, 2,
5a, 6a) and gpu_check_attention.py (3, 4, 5b, 6b), their shared helpers in gpu_check_base.py, split so that
each file stays short enough to read whole. Timing, the environment block and the results file come from
the benchmark harness (mobilevitv2.bench.harness), as for ``mobilevitv2 bench``.

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
   ``conv_backend="triton"`` (folding at every call) and the eager module (conv + BN + SiLU x3).
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
Times are ``triton.testing.do_bench`` medians (L2 flushed before each run) in ms, through the benchmark
harness (``mobilevitv2.bench.harness.do_bench_ms``); bandwidth is a fraction of the harness's
device-to-device copy of the same number of bytes, measured in the same run.

The JSON is the harness's ``JsonRecord``: the harness's ``environment`` block (device, versions, commit,
as in every results file of ``mobilevitv2 bench``), then ``sections`` in the order above (the
compiled baselines' rows join ``inverted_residual`` and ``attention``; the sweeps are ``ir_sweep`` and
``attention_sweep``), ``copies`` (the copy timings) and ``summary``. It is rewritten atomically (a temporary
file, then a rename) after every single measurement, so a kill at any moment leaves every number measured so
far; ``finished`` becomes true only at the end, and ``stopped_by`` names the signal when SIGTERM (a time
limit) ended the run early. Exit status: 0 when every check passed and everything ran, 1 when something
failed (listed under ``errors``), 2 without a CUDA device, 143 when stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the section modules next to this file
from gpu_check_attention import AttentionSections  # noqa: E402
from gpu_check_base import Timer  # noqa: E402
from gpu_check_ir import IRSections  # noqa: E402

TARGETS = {  # fraction of copy bandwidth / speed-up over the compiled reference
    "fwd_copy_fraction_at_first_shape": 0.85,
    "fwd_speedup_vs_compiled_at_smaller_shapes": 4.0,
    "bwd_copy_fraction_at_first_shape": 0.70,
}


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


class Checker(IRSections, AttentionSections):
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
    """The harness's timers: do_bench's median on the GPU; under --smoke one perf_counter call (the
    interpreter's times mean nothing, only that the call works)."""
    from mobilevitv2.bench import harness

    if smoke:
        return lambda fn, rep: harness.once_ms(fn)
    return lambda fn, rep: harness.do_bench_ms(fn, rep_ms=rep)


def main(argv: list[str] | None = None, timer: Timer | None = None) -> int:
    """Run the checks; ``timer(fn, rep_ms) -> ms`` replaces the harness's timer (tests use it)."""
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
    sys.path.insert(0, str(REPO))
    from mobilevitv2.bench import harness

    if not args.smoke:
        for knob in ("recompile_limit", "cache_size_limit"):  # one specialised compile per shape and grad mode
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, 64)
                break
    device = "cpu" if args.smoke else "cuda"
    env = harness.environment(torch.device(device))
    out_path = args.out or REPO / "bench" / "results" / f"kernels_{re.sub(r'[^A-Za-z0-9]+', '_', env['device'])}.json"
    if args.smoke and args.out is None:
        out_path = Path(tempfile.gettempdir()) / "kernels_cpu_smoke.json"  # never a results file in the repo
    header = {
        "environment": env,
        "smoke": args.smoke,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "timing": "harness.once_ms: one perf_counter call (smoke: meaningless)" if args.smoke
        else f"harness.do_bench_ms: triton.testing.do_bench median, L2 flushed before each run, rep {args.rep} ms; ms",
        "errors_against": "float32 oracle (TF32 off) from the same fp16 inputs; bound = numerics.TOLERANCES[fp16]",
        "copies": [],
    }  # fmt: skip
    record = harness.JsonRecord(out_path, header, summarize=summarize)
    print(f"gpu_check_kernels on {env['device']} (torch {env['torch']}, triton {env['triton']}, "
          f"commit {env['commit']}); results: {out_path}", flush=True)  # fmt: skip
    checker = Checker(args, record, timer or default_timer(args.smoke), device)
    try:
        with harness.stop_on_sigterm():  # a time limit ends the run cleanly, noted in the file
            checker.run()
    except harness.Stopped as exc:
        record.data["stopped_by"] = str(exc)
        record.save()
        print(f"\nstopped by {exc}; {out_path} holds every result measured until then", flush=True)
        return 128 + signal.SIGTERM
    record.finish()
    summary = record.data["summary"]
    if "ir_variant_choice" in summary:
        print("\ninverted residual variant choice:", json.dumps(summary["ir_variant_choice"], indent=1))
    if "attention_targets" in summary:
        print("\nattention vs targets:", json.dumps(summary["attention_targets"], indent=1))
    errors = record.data["errors"]
    print(f"\nwrote {out_path}" + (f"; {len(errors)} error(s):\n  " + "\n  ".join(errors) if errors else ""))
    return 1 if checker.failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
