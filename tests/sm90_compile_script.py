"""Imported by the scripts that tests/sm90_compile.py runs (never by the test process): compile one Triton
kernel launch for sm_90 without a GPU, specialised as the JIT would specialise it, and check ptxas's
register report for spills."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

try:
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
except ImportError as exc:
    print("SKIP: unsupported Triton internals:", exc)
    sys.exit(0)

CUOBJDUMP = glob.glob(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))


def compile_for_sm90(kernel, args, meta) -> str:
    """Compile ``kernel`` for the positional ``args`` (tensors may be on the meta device: no memory, real
    strides) and ``meta`` (constexprs plus ``num_warps``/``num_stages``); return ptxas's resource usage
    (or a note that it could not be read), asserting that nothing spilled, followed by ``barriers=N``: the
    block-wide barriers in the compiled Triton IR (no CPU run can see a missing barrier's race; the IR
    shows whether the barrier is there)."""
    meta = dict(meta)
    options = {"num_warps": meta.pop("num_warps"), "num_stages": meta.pop("num_stages", 2)}
    # Specialised as the JIT does: value 1 -> constant; multiples of 16 and pointers -> divisibility 16.
    signature, constexprs, attrs = {}, {}, {}
    for i, arg in enumerate(kernel.arg_names):
        if arg in meta:
            signature[arg], constexprs[(i,)] = "constexpr", meta[arg]
            continue
        ty, key = native_specialize_impl(BaseBackend, args[i], False, True, True)[:2]
        signature[arg] = ty
        if ty == "constexpr":
            constexprs[(i,)] = key
        elif key == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    cubin = compiled.asm["cubin"]
    assert cubin
    barriers = "barriers=%d" % len(re.findall(r"\b(?:ttg|gpu)\.barrier\b", compiled.asm["ttir"]))
    if not CUOBJDUMP:
        return "resource usage not checked (no cuobjdump) " + barriers
    path = "/tmp/mobilevitv2_sm90_%d.cubin" % os.getpid()
    with open(path, "wb") as f:
        f.write(cubin)
    usage = subprocess.run([CUOBJDUMP[0], "-res-usage", path], capture_output=True, text=True).stdout
    os.remove(path)
    usage = next(line.strip() for line in usage.splitlines() if "REG:" in line).split(" CONSTANT")[0]
    assert "STACK:0 " in usage + " ", ("register spills", kernel.fn.__name__, meta, usage)
    return usage + " " + barriers
