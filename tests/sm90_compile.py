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
    skip where a GPU is present (the other tests compile for real there) or Triton has no NVIDIA backend.

    ``$MOBILEVITV2_SM90_PYTHON`` names another interpreter to compile with (default: this one): .ci/run
    points it at a small venv with the GPU image's Triton (3.6), whose register allocation differs."""
    python = os.environ.get("MOBILEVITV2_SM90_PYTHON") or sys.executable
    if torch.cuda.is_available():
        pytest.skip("on a GPU the other tests compile and run the kernels for real")
    if python == sys.executable:
        pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    tests = Path(__file__).resolve().parent  # for sm90_compile_script
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tests.parent), str(tests), env.get("PYTHONPATH")]))
    proc = subprocess.run([python, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode == 0 and proc.stdout.startswith("SKIP"):
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout
