"""Compile Triton kernels for sm_90 (H100/H200) on a machine without a GPU, in a subprocess.

The test process runs Triton in interpreter mode, which accepts constructs the real compiler rejects and
knows nothing of registers; a child process without TRITON_INTERPRET compiles for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def run_compile_script(script: str) -> str:
    """Run ``script`` (which prints "compiled ..." per kernel, or "SKIP reason") without the interpreter;
    skip where a GPU is present (the other tests compile for real there) or Triton has no NVIDIA backend."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU the other tests compile and run the kernels for real")
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode == 0 and proc.stdout.startswith("SKIP"):
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout
