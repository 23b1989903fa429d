"""The CUDA kernels as the tests run them: their bodies (csrc/*.cuh) compiled for the CPU emulator in
csrc/emulation and called through ctypes, and the compiled extension on a GPU with its free memory poisoned.
Both expose the four functions of mobilevitv2_kernels.reference that csrc/ implements; tests/conftest.py
turns them into backends of the ops' tests."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import torch

from mobilevitv2_kernels import backends, cuda_extension

REPO = Path(__file__).resolve().parent.parent
EMULATION_SOURCE = REPO / "csrc" / "emulation" / "emulated_kernels.cpp"
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


def build_prerequisites_missing() -> str | None:
    """Why the CUDA extension cannot be compiled here (no CUDA build of PyTorch, no toolkit), or None."""
    if torch.version.cuda is None:
        return f"PyTorch {torch.__version__} is not a CUDA build"
    try:
        cuda_extension.find_cuda_home()
    except backends.BackendUnavailableError as exc:
        return str(exc)
    return None


def emulator_unavailable_reason() -> str | None:
    """Why the emulator cannot be built here (an installed package without csrc/, no C++ compiler), or None."""
    if not EMULATION_SOURCE.is_file():
        return "csrc/emulation is not here (installed package, not a source checkout)"
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        return "no C++ compiler (g++) to build the CPU emulator"
    return None


def build_emulator(directory: Path) -> EmulatedKernels:
    """Compile the emulator into ``directory``; a compile error fails the calling test with g++'s message."""
    library = directory / "emulated_kernels.so"
    include = Path(torch.__file__).resolve().parent / "include"
    command = [shutil.which(os.environ.get("CXX", "g++")), "-O2", "-std=c++20", "-shared", "-fPIC"]
    command += ["-isystem", str(include), str(EMULATION_SOURCE), "-o", str(library)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, "the kernel bodies do not compile for the CPU emulator:\n" + result.stderr
    return EmulatedKernels(library)


class EmulatedKernels:
    """The kernel bodies of csrc/*.cuh run by the CPU emulator on CPU tensors; outputs start NaN-filled.
    ``last_width`` is the packed width the launch plan chose for the last call; ``plan`` the plan itself."""

    def __init__(self, library_path: Path):
        self.lib = ctypes.CDLL(str(library_path))
        self.lib.emu_last_error.restype = ctypes.c_char_p
        self.last_width = None

    @staticmethod
    def _i64(values):
        return (ctypes.c_int64 * len(values))(*values)

    def _call(self, function, *args):
        width = ctypes.c_int(-1)
        rc = function(*args, ctypes.byref(width))
        assert rc == 0, self.lib.emu_last_error().decode()
        self.last_width = width.value

    def plan(self, B, d, P, N, vec, backward):
        out = (ctypes.c_int64 * 6)()
        self.lib.emu_plan(*(ctypes.c_int64(v) for v in (B, d, P, N)), ctypes.c_int(vec), ctypes.c_int(backward), out)
        return dict(zip(("vec", "group_size", "channels_per_block", "channel_blocks", "shared_row", "direct"), out))

    def separable_attention_forward(self, qkv):
        B, C, P, N = qkv.shape
        out = torch.full((B, (C - 1) // 2, P, N), float("nan"), dtype=qkv.dtype)
        self._call(self.lib.emu_separable_attention_forward, _DTYPE_CODES[qkv.dtype], ctypes.c_void_p(qkv.data_ptr()),
                   self._i64(qkv.shape), self._i64(qkv.stride()), ctypes.c_void_p(out.data_ptr()))  # fmt: skip
        return out

    def separable_attention_backward(self, grad_out, qkv):
        grad = torch.full(qkv.shape, float("nan"), dtype=qkv.dtype)
        self._call(self.lib.emu_separable_attention_backward, _DTYPE_CODES[qkv.dtype],
                   ctypes.c_void_p(grad_out.data_ptr()), self._i64(grad_out.stride()), ctypes.c_void_p(qkv.data_ptr()),
                   self._i64(qkv.shape), self._i64(qkv.stride()), ctypes.c_void_p(grad.data_ptr()))  # fmt: skip
        return grad

    def unfold_forward(self, x, patch_h, patch_w):
        B, C, H, W = x.shape
        out = torch.full((B, C, patch_h * patch_w, (H // patch_h) * (W // patch_w)), float("nan"), dtype=x.dtype)
        self._call(self.lib.emu_unfold, _DTYPE_CODES[x.dtype], ctypes.c_void_p(x.data_ptr()), self._i64(x.shape),
                   self._i64(x.stride()), ctypes.c_int64(patch_h), ctypes.c_int64(patch_w),
                   ctypes.c_void_p(out.data_ptr()))  # fmt: skip
        return out

    def fold_forward(self, patches, height, width, patch_h, patch_w):
        B, C = patches.shape[:2]
        out = torch.full((B, C, height, width), float("nan"), dtype=patches.dtype)
        sizes = (ctypes.c_int64(v) for v in (height, width, patch_h, patch_w))
        self._call(self.lib.emu_fold, _DTYPE_CODES[patches.dtype], ctypes.c_void_p(patches.data_ptr()),
                   self._i64(patches.shape), self._i64(patches.stride()), *sizes,
                   ctypes.c_void_p(out.data_ptr()))  # fmt: skip
        return out


class PoisonedCudaKernels:
    """The compiled extension, with the caching allocator's free memory NaN-filled before every call so
    that an output element the kernel does not write is (very likely) NaN."""

    def __init__(self, kernels):
        self.kernels = kernels
        self.last_width = None  # not observable on the GPU

    @staticmethod
    def _poison(*tensors):
        nbytes = sum(t.numel() * t.element_size() for t in tensors) * 4 + 4096
        torch.full((nbytes // 4,), float("nan"), device="cuda")  # freed at once; its blocks get reused

    def separable_attention_forward(self, qkv):
        self._poison(qkv)
        return self.kernels.separable_attention_forward(qkv)

    def separable_attention_backward(self, grad_out, qkv):
        self._poison(qkv, grad_out)
        return self.kernels.separable_attention_backward(grad_out, qkv)

    def unfold_forward(self, x, patch_h, patch_w):
        self._poison(x)
        return self.kernels.unfold_forward(x, patch_h, patch_w)

    def fold_forward(self, patches, height, width, patch_h, patch_w):
        self._poison(patches)
        return self.kernels.fold_forward(patches, height, width, patch_h, patch_w)
