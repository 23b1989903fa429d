"""The attention and patching sections of bench/gpu_check_kernels.py (a file of its own to keep each part of
that script readable): separable attention forward, backward and both at the stage shapes for every fused
backend and the eager reference (section 3), unfold and fold (section 4), the compiled reference (5b) and
the tile sweep (6b), each output checked against the float32 oracle before it is timed.
"""

from __future__ import annotations

import math
import time

from gpu_check_base import CheckerBase, fp16_bound, max_abs_err

STAGE_SHAPES = [(256, 128, 4, 256), (256, 192, 4, 64), (256, 256, 4, 16)]  # (B, d, P, N)
SMOKE_SHAPES = [(2, 4, 4, 8), (2, 6, 4, 4)]


class AttentionSections(CheckerBase):
    """Sections 3, 4, 5b and 6b; each stage shape's inputs and oracles are built once and kept."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self._attention: dict[tuple, dict] = {}
        self._backends: list[str] | None = None

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
                self.free()
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
                self.free()
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
                self.free()
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
