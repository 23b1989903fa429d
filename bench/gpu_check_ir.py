"""The inverted-residual sections of bench/gpu_check_kernels.py (a file of its own to keep each part of that
script readable): the two kernel variants called directly (section 1), the fused op, the fused module and the
eager module (section 2), the compiled eager module (5a) and the tile sweep (6a), at the width-1.0 block
shapes, each output checked against the float32 oracle before it is timed.
"""

from __future__ import annotations

import copy

from gpu_check_base import CheckerBase, fp16_bound, max_abs_err

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


class IRSections(CheckerBase):
    """Sections 1, 2, 5a and 6a; each block shape's module, input and oracle are built once and kept."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self._ir: dict[str, object] = {}

    def ir_shapes(self):
        return IR_SMOKE_SHAPES if self.smoke else IR_SHAPES

    def ir_case(self, spec):
        """Module, input, oracle and folded weights of one block shape, built once and kept for the later
        sections (a few GB at most on the GPU)."""
        name = spec[0]
        if name not in self._ir:
            try:
                self._ir[name] = IRCase(spec, self)
            except Exception as exc:
                self.fail(f"inverted residual {name}: setting up: {type(exc).__name__}: {str(exc)[:300]}")
                self.free()
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
            self.free()
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
        from mobilevitv2_kernels.weights import InvertedResidualWeights

        print("\n1. inverted residual: halo vs recompute kernel (fp16, launcher called directly)", flush=True)
        for spec in self.ir_shapes():
            case = self.ir_case(spec)
            if case is None:
                continue
            print(f"  {case.title()}", flush=True)
            for variant in tk_ir.VARIANTS:
                fn = self.no_grad(lambda v=variant: tk.inverted_residual_forward(
                    case.x, InvertedResidualWeights(*case.folded), case.stride, 1, case.residual, variant=v))  # fmt: skip
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
        from mobilevitv2_kernels.weights import InvertedResidualWeights

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
                    case.x, InvertedResidualWeights(*case.folded), case.stride, 1, case.residual, **kw))  # fmt: skip
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


class IRCase:
    """One inverted-residual block shape: the fp16 module with BatchNorm statistics that do not make it an
    identity, its input, the float32 oracle (TF32 off, from the same fp16 weights and input), PyTorch's own
    fp16 error, the folded weights, bytes and FLOP counts."""

    def __init__(self, spec, checker: CheckerBase) -> None:
        import torch

        import mobilevitv2_kernels as mk
        from mobilevitv2 import MobileViTV2Config
        from mobilevitv2.bench.ops import use_backend
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
        use_backend(self.fused_module, "conv_backend", "triton")  # what set_implementation(conv=) stores

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
