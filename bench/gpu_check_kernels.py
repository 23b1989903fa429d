"""One-shot GPU check of the separable-attention, unfold/fold and inverted-residual kernels: tests on CUDA,
then timings.

Run from the repository root on a machine with a CUDA GPU (nothing else to build for the Triton backend):

    python bench/gpu_check_kernels.py                  # tests + timings + tile sweep, writes JSON
    python bench/gpu_check_kernels.py --skip-tests --no-sweep --out /tmp/k.json
    python bench/gpu_check_kernels.py --skip-tests --only-ir --ir-sweep   # the inverted residual alone

Steps:
1. ``pytest tests/test_triton_ops.py tests/test_fused_inverted_residual.py`` with the compiled kernels on
   CUDA tensors (TRITON_INTERPRET unset; the CPU-interpreter cases skip, the ``cuda`` cases run for real).
2. For the three stage shapes of MobileViTV2 at 256x256 input (B=256, fp16; qkv (B, 1+2d, P, N)): median
   times (triton.testing.do_bench, L2 flushed before each run) of forward, backward alone and forward+backward
   for: eager reference, torch.compile'd reference, the triton backend (through the registered op) and the
   cuda backend when it is available. Bandwidth is reported as a fraction of a device-to-device copy of the
   same number of bytes, measured in the same run.
3. A small sweep over tile sizes of the Triton launchers, to confirm or revise their default heuristics.
4. The fused inverted residual (``mobilevitv2::inverted_residual``, Triton) at five width-1.0 block shapes
   (B=256, fp16, 256x256 input): the fused op (BatchNorm folded beforehand), the module with
   ``fused_backend="triton"`` (folding at every call), the eager module sequence (conv + BN + SiLU x3) and
   ``torch.compile`` of it, and both kernel variants directly ("recompute": the expand 1x1 once per
   (output pixel, tap); "halo": once per pixel of each tile's input halo, through an L2 scratch buffer) so
   that one run decides the launcher's provisional auto rule (halo at stride 1, recompute at stride 2);
   bytes as a fraction of a copy of x + y, FLOP rates (useful and executed: 9 expands per output pixel for
   recompute, the padded halo per tile for halo), the error against the fp32 module next to the eager fp16
   module's own error, and with ``--ir-sweep`` a tile sweep of both variants (about 100 more kernel
   compilations). ``--only-ir`` runs just this
   step; ``--no-ir`` skips it.

Results go to a JSON file (device, torch/triton versions, git commit, tests summary, every timing), default
``bench/results/kernels_<device>.json``. Without a CUDA device the script says so and exits (status 0);
``--smoke`` instead runs every step but the tests on the CPU under the Triton interpreter with tiny shapes
(to check the script itself; its timings mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGE_SHAPES = [(256, 128, 4, 256), (256, 192, 4, 64), (256, 256, 4, 16)]  # (B, d, P, N)
SMOKE_SHAPES = [(2, 4, 4, 8), (2, 6, 4, 4), (2, 8, 4, 2)]
TARGETS = {  # from the issue: fraction of copy bandwidth / speed-up over the compiled reference
    "fwd_copy_fraction_at_first_shape": 0.85,
    "fwd_speedup_vs_compiled_at_smaller_shapes": 4.0,
    "bwd_copy_fraction_at_first_shape": 0.70,
}


def git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
        return commit + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("GIT_COMMIT", "unknown (no git checkout)")


def run_tests() -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    tests = ["tests/test_triton_ops.py", "tests/test_fused_inverted_residual.py"]
    cmd = [sys.executable, "-m", "pytest", *tests, "-q", "-rs", "-p", "no:cacheprovider"]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-40:]
    print("\n".join(tail), flush=True)
    summary = tail[-1] if tail else proc.stderr[-500:]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", summary)}
    return {
        "returncode": proc.returncode,
        "summary": summary,
        "counts": counts,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (bench/results/kernels_<device>.json)")
    parser.add_argument("--skip-tests", action="store_true", help="only time")
    parser.add_argument("--no-sweep", action="store_true", help="skip the tile-size sweep")
    parser.add_argument("--rep", type=int, default=200, help="do_bench repetition time in ms per measurement")
    parser.add_argument("--smoke", action="store_true", help="CPU dry run of the script under the interpreter")
    parser.add_argument("--only-ir", action="store_true", help="only the fused inverted-residual step (4)")
    parser.add_argument("--no-ir", action="store_true", help="skip the fused inverted-residual step (4)")
    parser.add_argument("--ir-sweep", action="store_true", help="also sweep the inverted-residual kernel's tiles")
    args = parser.parse_args()

    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
        args.skip_tests = True
    else:
        os.environ.pop("TRITON_INTERPRET", None)  # this script is about the compiled kernels
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check_kernels: no CUDA device here; nothing to check (run this on a GPU machine).")
        return 0

    import triton
    import triton.testing

    device = "cpu" if args.smoke else "cuda"
    shapes = SMOKE_SHAPES if args.smoke else STAGE_SHAPES
    if args.only_ir:
        shapes = []
    for knob in ("recompile_limit", "cache_size_limit"):  # one specialised compile per shape and grad mode
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
            break

    sys.path.insert(0, str(REPO))
    import mobilevitv2_kernels as mk
    from mobilevitv2_kernels import reference
    from mobilevitv2_kernels import triton_kernels as tk

    device_name = "cpu-smoke" if args.smoke else torch.cuda.get_device_name()
    result = {
        "device": device_name,
        "sm_count": None if args.smoke else torch.cuda.get_device_properties(0).multi_processor_count,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda_runtime": torch.version.cuda,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "timing": "triton.testing.do_bench median, L2 flushed before each run, ms",
        "targets": TARGETS,
    }
    out_path = args.out or REPO / "bench" / "results" / f"kernels_{re.sub(r'[^A-Za-z0-9]+', '_', device_name)}.json"
    if args.smoke and args.out is None:
        out_path = Path(tempfile.gettempdir()) / "kernels_cpu_smoke.json"  # never a results file in the repo

    if not args.skip_tests:
        result["tests"] = run_tests()

    def bench(fn, rep=args.rep) -> float:
        if args.smoke:
            fn()
            times = []
            for _ in range(3):
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1e3)
            return sorted(times)[1]
        return float(triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median"))

    def copy_ms(num_bytes: int) -> float:
        """Device-to-device copy moving ``num_bytes`` in total (half read, half written)."""
        src = torch.empty(num_bytes // 4, dtype=torch.float16, device=device).normal_()
        dst = torch.empty_like(src)
        return bench(lambda: dst.copy_(src))

    backends_here = mk.available_backends(device)
    result["backends"] = backends_here
    compiled_fwd = torch.compile(reference.separable_attention_forward, dynamic=False)
    compiled_bwd = torch.compile(reference.separable_attention_backward, dynamic=False)

    rows = []
    for B, d, P, N in shapes:
        torch.manual_seed(0)
        qkv = torch.randn(B, 1 + 2 * d, P, N, device=device, dtype=torch.float16)
        grad = torch.randn(B, d, P, N, device=device, dtype=torch.float16)
        qkv_req = qkv.detach().requires_grad_(True)
        elem = qkv.element_size()
        fwd_bytes = (1 + 2 * d + d) * B * P * N * elem  # read qkv, write out
        bwd_bytes = ((1 + 2 * d) * 2 + d) * B * P * N * elem  # read qkv and grad, write grad_qkv
        copy_fwd, copy_bwd = copy_ms(fwd_bytes), copy_ms(bwd_bytes)
        copy_tbps = fwd_bytes / copy_fwd / 1e9  # bytes per ms / 1e9 = TB/s of the copy (read + write)
        print(f"\nshape (B,d,P,N)=({B},{d},{P},{N}) fp16: fwd {fwd_bytes / 1e6:.0f} MB, bwd {bwd_bytes / 1e6:.0f} MB, "
              f"copy {copy_tbps:.2f} TB/s", flush=True)

        providers = {
            "reference eager": (
                lambda: reference.separable_attention_forward(qkv),
                lambda: reference.separable_attention_backward(grad, qkv),
                lambda: torch.autograd.grad(reference.separable_attention_forward(qkv_req), qkv_req, grad),
            ),
            "reference compiled": (
                lambda: compiled_fwd(qkv),
                lambda: compiled_bwd(grad, qkv),
                lambda: torch.autograd.grad(compiled_fwd(qkv_req), qkv_req, grad),
            ),
        }
        for name in ("triton", "cuda"):
            if name in backends_here:
                providers[name] = (
                    lambda name=name: mk.separable_attention(qkv, backend=name),
                    lambda name=name: torch.ops.mobilevitv2.separable_attention_backward(grad, qkv, name),
                    lambda name=name: torch.autograd.grad(mk.separable_attention(qkv_req, backend=name), qkv_req, grad),
                )

        # Correctness at full size before timing (vs. the fp32 reference).
        expected = reference.separable_attention_forward(qkv.float())
        expected_grad = reference.separable_attention_backward(grad.float(), qkv.float())
        for name in ("triton", "cuda"):
            if name in providers:
                try:
                    err = (providers[name][0]().float() - expected).abs().max().item()
                    gerr = (providers[name][1]().float() - expected_grad).abs().max().item()
                except Exception as exc:  # keep going: GPU time is short, report everything at the end
                    print(f"  {name}: FAILED {type(exc).__name__}: {exc}")
                    result.setdefault("errors", []).append(f"{name} {(B, d, P, N)}: {exc!r}")
                    continue
                print(f"  {name}: max |fwd err| {err:.2e}, max |bwd err| {gerr:.2e} vs fp32 reference")
                result.setdefault("max_abs_err", {})[f"{name} {(B, d, P, N)}"] = {"fwd": err, "bwd": gerr}

        for name, (fwd, bwd, fwd_bwd) in providers.items():
            try:
                t_fwd, t_bwd, t_both = bench(fwd), bench(bwd), bench(fwd_bwd)
            except Exception as exc:
                print(f"  {name:20s} FAILED {type(exc).__name__}: {exc}", flush=True)
                result.setdefault("errors", []).append(f"timing {name} {(B, d, P, N)}: {exc!r}")
                continue
            row = {
                "shape": [B, d, P, N],
                "provider": name,
                "fwd_ms": t_fwd,
                "bwd_ms": t_bwd,
                "fwd_bwd_ms": t_both,
                "fwd_copy_fraction": copy_fwd / t_fwd,
                "bwd_copy_fraction": copy_bwd / t_bwd,
                "fwd_copy_ms": copy_fwd,
                "bwd_copy_ms": copy_bwd,
            }
            rows.append(row)
            print(f"  {name:20s} fwd {t_fwd:7.4f} ms ({row['fwd_copy_fraction']:5.1%} of copy)   "
                  f"bwd {t_bwd:7.4f} ms ({row['bwd_copy_fraction']:5.1%})   fwd+bwd {t_both:7.4f} ms", flush=True)
    result["rows"] = rows

    if not args.no_sweep and shapes:
        result["sweep"] = sweep(tk, bench, copy_ms, shapes, device)

    if not args.no_ir:
        ir = inverted_residual_section(bench, copy_ms, device, smoke=args.smoke, tile_sweep=args.ir_sweep)
        result["inverted_residual"] = ir
        result.setdefault("errors", []).extend(ir.pop("errors"))
        if not result["errors"]:
            result.pop("errors")

    # Summary against the targets of the issue.
    def get(provider, shape, key):
        for r in rows:
            if r["provider"] == provider and tuple(r["shape"]) == shape:
                return r[key]
        return None

    def ratio(a, b):
        return None if a is None or b is None else a / b

    checks = {}
    for name in ("triton", "cuda"):
        if name not in backends_here or not shapes:  # no attention rows under --only-ir
            continue
        checks[name] = {
            "fwd_copy_fraction_at_first_shape": get(name, shapes[0], "fwd_copy_fraction"),
            "bwd_copy_fraction_at_first_shape": get(name, shapes[0], "bwd_copy_fraction"),
            "fwd_speedup_vs_compiled": {
                str(s): ratio(get("reference compiled", s, "fwd_ms"), get(name, s, "fwd_ms")) for s in shapes
            },
        }
    result["checks"] = checks
    print("\nchecks vs targets", json.dumps(TARGETS), "\n", json.dumps(checks, indent=1))

    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out_path}")
    tests_ok = args.skip_tests or result["tests"]["returncode"] == 0
    return 0 if tests_ok and not result.get("errors") else 1


def sweep(tk, bench, copy_ms, shapes, device) -> list[dict]:
    """Time the Triton launchers over tile sizes (the defaults come from _TILE and _num_warps)."""
    import torch

    rows = []
    print("\ntile sweep (launchers called directly; 'default' = the launcher's heuristic)", flush=True)
    for B, d, P, N in shapes:
        qkv = torch.randn(B, 1 + 2 * d, P, N, device=device, dtype=torch.float16)
        grad = torch.randn(B, d, P, N, device=device, dtype=torch.float16)
        fwd_bytes = (1 + 3 * d) * B * P * N * 2
        bwd_bytes = (2 + 5 * d) * B * P * N * 2
        copy_fwd, copy_bwd = copy_ms(fwd_bytes), copy_ms(bwd_bytes)
        block_n = min(1 << (N - 1).bit_length(), 1024)
        configs = [{}]
        for tile in (1024, 2048, 4096, 8192):
            block_d = max(1, min(1 << (d - 1).bit_length(), tile // block_n))
            for warps in (4, 8):
                configs.append({"block_d": block_d, "block_n": block_n, "num_warps": warps})
        best_fwd = best_bwd = None
        for cfg in configs:
            try:
                t = bench(lambda: tk.separable_attention_forward(qkv, **cfg), rep=50)
            except Exception as exc:  # a config that does not compile is reported, not fatal
                print(f"  fwd {cfg}: failed: {exc}")
                continue
            rows.append({"shape": [B, d, P, N], "op": "fwd", "config": cfg, "ms": t, "copy_fraction": copy_fwd / t})
            if best_fwd is None or t < best_fwd[1]:
                best_fwd = (cfg, t)
            for split in (None, 1, 2, 4):
                bcfg = dict(cfg, split=split) if split is not None else dict(cfg)
                try:
                    t = bench(lambda: tk.separable_attention_backward(grad, qkv, **bcfg), rep=50)
                except Exception as exc:
                    print(f"  bwd {bcfg}: failed: {exc}")
                    continue
                rows.append(
                    {"shape": [B, d, P, N], "op": "bwd", "config": bcfg, "ms": t, "copy_fraction": copy_bwd / t}
                )
                if best_bwd is None or t < best_bwd[1]:
                    best_bwd = (bcfg, t)
        if best_fwd is None or best_bwd is None:
            print(f"  ({B},{d},{P},{N}): no configuration ran")
            continue
        print(f"  ({B},{d},{P},{N}): best fwd {best_fwd[0] or 'default'} {best_fwd[1]:.4f} ms "
              f"({copy_fwd / best_fwd[1]:.1%}); best bwd {best_bwd[0] or 'default'} {best_bwd[1]:.4f} ms "
              f"({copy_bwd / best_bwd[1]:.1%})", flush=True)
    return rows


# Width 1.0 at 256x256 input: (name, C_in, E, C_out, H, W, stride) of inverted residuals of stages 1-5.
IR_SHAPES = [
    ("layer.0", 32, 64, 64, 128, 128, 1),
    ("layer.1.0", 64, 128, 128, 128, 128, 2),
    ("layer.1.1", 128, 256, 128, 64, 64, 1),  # the residual block
    ("layer.2 down", 128, 256, 256, 64, 64, 2),
    ("layer.4 down", 384, 768, 512, 16, 16, 2),
]
IR_SWEEP = [  # launcher overrides of the recompute variant tried per shape (defaults timed as "default")
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


def inverted_residual_section(bench, copy_ms, device, smoke: bool, tile_sweep: bool) -> dict:
    """Time the fused inverted residual against the eager module and torch.compile of it (step 4)."""
    import torch

    import mobilevitv2_kernels as mk
    from mobilevitv2 import MobileViTV2Config
    from mobilevitv2.layers import MobileViTV2InvertedResidual
    from mobilevitv2_kernels import triton_kernels as tk
    from mobilevitv2_kernels.triton_kernels import inverted_residual as tk_ir

    batch, dtype = (2, torch.float16) if smoke else (256, torch.float16)
    shapes = [("smoke", 8, 16, 8, 9, 7, 1)] if smoke else IR_SHAPES
    rows, sweep_rows, errors = [], [], []
    print("\nfused inverted residual (fp16, batch %d): eager module vs torch.compile vs fused op" % batch, flush=True)
    for name, c_in, e, c_out, H, W, stride in shapes:
        torch.manual_seed(0)
        module = MobileViTV2InvertedResidual(MobileViTV2Config(), c_in, c_out, stride=stride)
        assert module.expand_1x1.convolution.out_channels == e, (name, module.expand_1x1.convolution.out_channels)
        with torch.no_grad():  # BatchNorm statistics that do not make the block an identity
            for layer in (module.expand_1x1, module.conv_3x3, module.reduce_1x1):
                bn = layer.normalization
                bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.2, 0.2)
                bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
        module = module.to(device).eval()
        x32 = torch.randn(batch, c_in, H, W, device=device)
        with torch.no_grad():
            expected = module(x32)  # fp32 module: the oracle
        module = module.to(dtype)
        x = x32.to(dtype)
        weights = []
        for layer in (module.expand_1x1, module.conv_3x3, module.reduce_1x1):
            w, b = mk.fold_batchnorm(layer.convolution.weight, layer.normalization)
            weights += [w.flatten(1) if w.shape[-1] == 1 else w, b]
        fused_module = MobileViTV2InvertedResidual(MobileViTV2Config(), c_in, c_out, stride=stride)
        fused_module.load_state_dict(module.state_dict())
        fused_module = fused_module.to(device=device, dtype=dtype).eval()
        fused_module.fused_backend = "triton"
        compiled = torch.compile(module, dynamic=False)

        def no_grad(fn):
            def call():
                with torch.no_grad():
                    return fn()
            return call

        folded = [w.to(dtype).contiguous() if i in (0, 4) else w for i, w in enumerate(weights)]
        providers = {
            "eager module (conv+BN+SiLU x3)": no_grad(lambda: module(x)),
            "eager module compiled": no_grad(lambda: compiled(x)),
            "fused op (triton, BN pre-folded)": no_grad(lambda: mk.inverted_residual(
                x, *weights, stride=stride, residual=module.use_residual, backend="triton")),
            "fused module (folds per call)": no_grad(lambda: fused_module(x)),
        }
        # Both kernel variants, directly through the launcher (the op above uses the provisional auto rule).
        for variant in tk_ir.VARIANTS:
            providers[f"kernel {variant}"] = no_grad(lambda variant=variant: tk.inverted_residual_forward(
                x, *folded, stride, 1, module.use_residual, variant=variant))
        H_out, W_out = -(-H // stride), -(-W // stride)
        io_bytes = (x.numel() + batch * c_out * H_out * W_out) * x.element_size()
        useful_flops = 2 * batch * (H * W * c_in * e + H_out * W_out * (9 * e + e * c_out))
        # expand FLOPs executed per output pixel: 9 (one per tap) for recompute, the padded halo for halo
        halo_cfg = tk_ir.launch_config(dtype, c_in, e, c_out, variant="halo")
        expand_per_output = {"recompute": 9, "halo": tk_ir.halo_geometry(halo_cfg, stride, 1)["factor"]}
        auto_variant = tk_ir.choose_variant(stride)
        executed = {v: 2 * batch * H_out * W_out * (f * c_in * e + 9 * e + e * c_out)
                    for v, f in expand_per_output.items()}
        executed_flops_of = {"fused op (triton, BN pre-folded)": executed[auto_variant],
                             "fused module (folds per call)": executed[auto_variant],
                             "kernel recompute": executed["recompute"], "kernel halo": executed["halo"]}
        copy = copy_ms(io_bytes)
        errs = {}
        for label in ("eager module (conv+BN+SiLU x3)", "fused op (triton, BN pre-folded)", "kernel recompute",
                      "kernel halo"):
            try:
                errs[label] = (providers[label]().float() - expected).abs().max().item()
            except Exception as exc:  # keep going: GPU time is short, report everything at the end
                errors.append(f"inverted residual {name} {label}: {exc!r}")
        scale = expected.abs().max().item()
        for label in ("fused op (triton, BN pre-folded)", "kernel recompute", "kernel halo"):
            err, eager_err = errs.get(label), errs.get("eager module (conv+BN+SiLU x3)")
            if err is not None and eager_err is not None and err > 2 * eager_err + 1e-3:
                errors.append(f"inverted residual {name}: {label} error {err:.3g} > 2x eager fp16 error "
                              f"{eager_err:.3g}")
        print(f"  {name}: ({batch},{c_in},{H},{W}) -> ({batch},{c_out},{H_out},{W_out}), E={e}, stride {stride}; "
              f"x+y {io_bytes / 1e6:.0f} MB (copy {copy:.4f} ms); max|y| {scale:.2f}; max err vs fp32: "
              + ", ".join(f"{k.split(' (')[0]} {v:.2e}" for k, v in errs.items()), flush=True)
        times = {}
        for label, fn in providers.items():
            try:
                times[label] = t = bench(fn)
            except Exception as exc:
                print(f"    {label:34s} FAILED {type(exc).__name__}: {exc}", flush=True)
                errors.append(f"timing inverted residual {name} {label}: {exc!r}")
                continue
            executed_flops = executed_flops_of.get(label, useful_flops)
            rows.append({
                "block": name, "shape": [batch, c_in, e, c_out, H, W, stride], "provider": label, "ms": t,
                "copy_fraction": copy / t, "useful_tflops": useful_flops / t / 1e9,
                "executed_tflops": executed_flops / t / 1e9,
                "max_abs_err_vs_fp32": errs.get(label),
            })
            print(f"    {label:34s} {t:8.4f} ms  ({copy / t:6.1%} of copy, {useful_flops / t / 1e9:6.1f} useful TFLOP/s, "
                  f"{executed_flops / t / 1e9:6.1f} executed)", flush=True)
        base = times.get("eager module compiled")
        fused = times.get("fused op (triton, BN pre-folded)")
        if base and fused:
            print(f"    fused op vs compiled module: {base / fused:.2f}x; vs eager module: "
                  f"{times.get('eager module (conv+BN+SiLU x3)', float('nan')) / fused:.2f}x", flush=True)
        t_rec, t_halo = times.get("kernel recompute"), times.get("kernel halo")
        if t_rec and t_halo:
            print(f"    halo vs recompute: {t_rec / t_halo:.2f}x (auto picks {auto_variant}; halo expands "
                  f"{expand_per_output['halo']:.2f} pixels per output pixel, recompute 9)", flush=True)
        if tile_sweep:
            sms = torch.cuda.get_device_properties(0).multi_processor_count if device == "cuda" else 1
            configs = [dict(variant="recompute", **c) for c in [{}] + IR_SWEEP]
            configs += [dict(variant="halo", **c) for c in [{}] + IR_HALO_SWEEP]
            for cfg in configs:
                kwargs = dict(cfg)
                if "num_programs_per_sm" in kwargs:
                    kwargs["num_programs"] = kwargs.pop("num_programs_per_sm") * sms
                if kwargs.get("scratch_dtype") == "x":
                    kwargs["scratch_dtype"] = dtype
                try:
                    t = bench(lambda: tk.inverted_residual_forward(
                        x, *folded, stride, 1, module.use_residual, **kwargs), rep=50)
                except Exception as exc:  # a configuration that does not compile is reported, not fatal
                    print(f"    sweep {cfg}: failed: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                sweep_rows.append({"block": name, "config": cfg, "ms": t, "copy_fraction": copy / t})
            for variant in tk_ir.VARIANTS:
                best = min((r for r in sweep_rows if r["block"] == name and r["config"]["variant"] == variant),
                           key=lambda r: r["ms"], default=None)
                if best:
                    print(f"    sweep best {variant}: {best['config']} {best['ms']:.4f} ms", flush=True)
    return {"batch": batch, "dtype": "fp16", "rows": rows, "sweep": sweep_rows, "errors": errors}

if __name__ == "__main__":
    sys.exit(main())
