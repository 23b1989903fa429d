"""One-shot GPU check of the separable-attention and unfold/fold kernels: tests on CUDA, then timings.

Run from the repository root on a machine with a CUDA GPU (nothing else to build for the Triton backend):

    python bench/gpu_check_kernels.py                  # tests + timings + tile sweep, writes JSON
    python bench/gpu_check_kernels.py --skip-tests --no-sweep --out /tmp/k.json

Steps:
1. ``pytest tests/test_triton_ops.py`` with the compiled kernels on CUDA tensors (TRITON_INTERPRET unset; the
   CPU-interpreter cases skip, the ``cuda`` cases run for real).
2. For the three stage shapes of MobileViTV2 at 256x256 input (B=256, fp16; qkv (B, 1+2d, P, N)): median
   times (triton.testing.do_bench, L2 flushed before each run) of forward, backward alone and forward+backward
   for: eager reference, torch.compile'd reference, the triton backend (through the registered op) and the
   cuda backend when it is available. Bandwidth is reported as a fraction of a device-to-device copy of the
   same number of bytes, measured in the same run.
3. A small sweep over tile sizes of the Triton launchers, to confirm or revise their default heuristics.

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
    cmd = [sys.executable, "-m", "pytest", "tests/test_triton_ops.py", "-q", "-rs", "-p", "no:cacheprovider"]
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
        copy_bw = fwd_bytes / copy_fwd / 1e9  # GB/s of the copy (read + write)
        print(f"\nshape (B,d,P,N)=({B},{d},{P},{N}) fp16: fwd {fwd_bytes / 1e6:.0f} MB, bwd {bwd_bytes / 1e6:.0f} MB, "
              f"copy {copy_bw / 1e3:.2f} TB/s", flush=True)

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

    if not args.no_sweep:
        result["sweep"] = sweep(tk, bench, copy_ms, shapes, device)

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
        if name not in backends_here:
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


if __name__ == "__main__":
    sys.exit(main())
