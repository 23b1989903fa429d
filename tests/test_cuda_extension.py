"""The CUDA backend (csrc/, mobilevitv2_kernels.cuda_extension): build, bindings, fallback, correctness.

* On any machine with nvcc and a CUDA build of PyTorch (CI has both, and no GPU) the extension is compiled
  once (cached) and its bindings are checked; a compile error fails the test. The CLI's success and
  failure paths are checked too.
* The fallback path runs in subprocesses (clean process state): with the extension disabled, or with no
  usable toolkit, the ops still work with backend="auto", "cuda" is not offered, asking for it raises
  BackendUnavailableError, and exactly one warning says so.
* The kernel bodies of csrc/*.cuh also compile as host C++ against the CPU emulator in csrc/emulation
  (source checkouts only), so their logic - every code path of the launch plan, packed and strided
  accesses, barriers and warp shuffles - is checked against the reference on the CPU, outputs NaN-filled.
* On a GPU (marked `gpu`) the same cases run through the compiled extension, plus opcheck of the ops with
  backend="cuda" and autograd through them.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import mobilevitv2_kernels as mk
from mobilevitv2_kernels import backends, cuda_extension, reference

REPO = Path(__file__).resolve().parent.parent
EMULATION = REPO / "csrc" / "emulation"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Every comparison with the float64 oracle follows the package's numerics rules (mobilevitv2_kernels/numerics.py).
from mobilevitv2_kernels.numerics import TOLERANCES  # noqa: E402

pytestmark = pytest.mark.usefixtures("nan_allocations")  # every allocation starts as NaN


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_close(actual, expected64, torch_lowp=None):
    """``actual`` vs the float64 oracle; for fp16/bf16 ``torch_lowp`` is PyTorch's result in that dtype."""
    tol = TOLERANCES[actual.dtype]
    assert actual.shape == expected64.shape, (actual.shape, expected64.shape)
    assert torch.isfinite(actual).all(), "non-finite values (an element the kernel did not write is NaN)"
    err = (actual.double().cpu() - expected64.cpu()).abs().max().item() if actual.numel() else 0.0
    bound = tol["atol"] + tol["rtol"] * expected64.abs().max().item()
    if tol["factor"]:
        bound += tol["factor"] * (torch_lowp.double().cpu() - expected64.cpu()).abs().max().item()
    assert err <= bound, f"max abs error {err:.3g} > bound {bound:.3g} ({actual.dtype})"


# ---------------------------------------------------------------------------------------------------------
# Build and bindings (CPU machine with nvcc and CUDA torch, e.g. CI)
# ---------------------------------------------------------------------------------------------------------


def _build_prerequisites_missing() -> str | None:
    if torch.version.cuda is None:
        return f"PyTorch {torch.__version__} is not a CUDA build"
    try:
        cuda_extension.find_cuda_home()
    except backends.BackendUnavailableError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="session")
def built():
    """The extension, compiled once per cache (a compile error fails every test that needs it)."""
    reason = _build_prerequisites_missing()
    if reason is not None:
        pytest.skip(f"cannot build the CUDA extension here: {reason}")
    try:
        return cuda_extension.build(verbose=False)
    except backends.BackendUnavailableError as exc:
        pytest.fail(f"the CUDA extension failed to build:\n{exc}", pytrace=False)


def test_extension_builds_and_binds_the_four_functions(built):
    assert Path(built.kernels.path).is_file() and built.kernels.path.startswith(built.build_directory)
    extension = built.kernels.extension
    for name in cuda_extension.FUNCTIONS:
        function = getattr(extension, name)
        assert callable(function) and function.__doc__ and name in function.__doc__, name
    # The bindings reach the C++ checks (which run before anything touches a GPU).
    cpu = torch.zeros(1, 3, 2, 4)
    calls = {
        "separable_attention_forward": lambda: extension.separable_attention_forward(cpu),
        "separable_attention_backward": lambda: extension.separable_attention_backward(cpu[:, :1], cpu),
        "unfold_forward": lambda: extension.unfold_forward(cpu, 2, 2),
        "fold_forward": lambda: extension.fold_forward(cpu[:, :, :, :1], 2, 2, 1, 2),
    }
    for name, call in calls.items():
        with pytest.raises(RuntimeError, match=f"{name}: .* must be a CUDA tensor"):
            call()


def test_build_reuses_the_cache(built):
    again = cuda_extension.build(verbose=False)
    assert again.cached and again.build_directory == built.build_directory
    assert again.seconds < 30, "an up-to-date build should only be loaded"


def test_cli_build_reports_the_cached_build(built):
    result = subprocess.run(
        [sys.executable, "-m", "mobilevitv2_kernels", "build", "--quiet"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout and built.kernels.path in result.stdout


@pytest.mark.parametrize("torch_uses_lock_file", [True, False])
def test_build_removes_a_stale_lock_left_by_a_killed_build(built, monkeypatch, torch_uses_lock_file):
    """torch before 2.14 (FileBaton) waits forever on a ``lock`` file that a killed build left in the build
    directory: the build removes it first, while holding its own OS lock (so it cannot be a live build's).
    Newer torch locks with the OS itself, and its lock file is left alone."""
    from torch.utils import cpp_extension

    stale = Path(built.build_directory) / "lock"
    stale.write_text("")
    seen = []
    real_load = cpp_extension.load

    def load(*args, **kwargs):
        seen.append(stale.exists())
        return real_load(*args, **kwargs)

    monkeypatch.setattr(cpp_extension, "load", load)
    if torch_uses_lock_file:
        monkeypatch.setattr(cpp_extension, "FileBaton", object, raising=False)
    else:
        monkeypatch.delattr(cpp_extension, "FileBaton", raising=False)
    again = cuda_extension.build(verbose=False)
    assert again.cached and seen == [not torch_uses_lock_file]


def test_cli_usage():
    for argv in ([], ["--help"]):
        result = subprocess.run(
            [sys.executable, "-m", "mobilevitv2_kernels", *argv], capture_output=True, text=True, timeout=120, cwd=REPO
        )
        assert "usage: python -m mobilevitv2_kernels" in result.stdout + result.stderr
        assert "build" in result.stdout + result.stderr
        assert result.returncode == (0 if argv else 2)


def test_cli_build_fails_with_the_compiler_error(tmp_path):
    """A broken source makes `python -m mobilevitv2_kernels build` exit non-zero and show nvcc's error."""
    reason = _build_prerequisites_missing()
    if reason is not None:
        pytest.skip(f"cannot build the CUDA extension here: {reason}")
    broken = tmp_path / "csrc"
    shutil.copytree(cuda_extension.source_directory(), broken, ignore=shutil.ignore_patterns("emulation"))
    for source in cuda_extension.SOURCES:  # a fatal error at the top: every compile job stops at once
        path = broken / source
        path.write_text('#include "deliberately_missing_header.h"\n' + path.read_text())
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from mobilevitv2_kernels import cuda_extension
        cuda_extension.source_directory = lambda: Path({str(broken)!r})
        from mobilevitv2_kernels.__main__ import main
        sys.exit(main(["build", "--quiet"]))
        """
    )
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path / "cache"))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env, cwd=REPO
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "building the CUDA extension failed" in result.stderr
    assert "deliberately_missing_header.h" in result.stderr  # the compiler's own message


# ---------------------------------------------------------------------------------------------------------
# Fallback (subprocesses, so that the per-process cache and warning state start clean)
# ---------------------------------------------------------------------------------------------------------

_FALLBACK_SCRIPT = textwrap.dedent(
    """
    import json, warnings
    import torch
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import mobilevitv2_kernels as mk
        from mobilevitv2_kernels import backends, cuda_extension, reference

        errors = []
        for _ in range(3):  # the failure is cached: same reason, one warning
            try:
                cuda_extension.load()
            except backends.BackendUnavailableError as exc:
                errors.append(str(exc))

        device = "cuda" if torch.cuda.is_available() else "cpu"
        qkv = torch.randn(2, 7, 4, 9, device=device, requires_grad=True)
        out = mk.separable_attention(qkv, backend="auto")
        out.backward(torch.ones_like(out))
        expected = reference.separable_attention_forward(qkv.detach().double())
        x = torch.randn(2, 3, 5, 6, device=device)
        patches = mk.unfold(x, (2, 2), backend="auto")
        folded = mk.fold(patches, (5, 6), (2, 2), backend="auto")
        try:
            mk.separable_attention(qkv, backend="cuda")
            cuda_error = None
        except backends.BackendUnavailableError as exc:
            cuda_error = str(exc)
        result = dict(
            errors=errors,
            forward_error=(out.detach().double() - expected).abs().max().item(),
            grad_finite=bool(torch.isfinite(qkv.grad).all()),
            fold_matches=bool(torch.equal(patches, reference.unfold_forward(x, 2, 2)))
            and bool(torch.equal(folded, reference.fold_forward(patches, 5, 6, 2, 2))),
            available=mk.available_backends(device),
            available_cuda=mk.available_backends("cuda"),
            cuda_error=cuda_error,
        )
    result["warnings"] = [str(w.message) for w in caught if issubclass(w.category, cuda_extension.CudaExtensionWarning)]
    print("RESULT " + json.dumps(result))
    """
)


def _run_fallback(**env_overrides) -> dict:
    env = dict(os.environ, **env_overrides)
    result = subprocess.run(
        [sys.executable, "-c", _FALLBACK_SCRIPT], capture_output=True, text=True, timeout=300, env=env, cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _check_fallback(result: dict, reason_fragment: str) -> None:
    assert len(result["errors"]) == 3 and len(set(result["errors"])) == 1, result["errors"]
    assert reason_fragment in result["errors"][0]
    assert result["forward_error"] < 1e-5 and result["grad_finite"] and result["fold_matches"]
    assert "cuda" not in result["available"] and "cuda" not in result["available_cuda"]
    assert "reference" in result["available"]
    assert result["cuda_error"] is not None and "backend 'cuda' cannot run here" in result["cuda_error"]
    if torch.cuda.is_available():  # on the CPU the device check answers first ("runs only on CUDA tensors")
        assert reason_fragment in result["cuda_error"]
    assert len(result["warnings"]) == 1, result["warnings"]
    assert "falls back" in result["warnings"][0] or "fall back" in result["warnings"][0]
    assert reason_fragment in result["warnings"][0]


def test_fallback_when_disabled_by_environment():
    result = _run_fallback(MOBILEVITV2_DISABLE_CUDA_EXT="1")
    _check_fallback(result, "MOBILEVITV2_DISABLE_CUDA_EXT")


def test_fallback_when_no_toolkit_is_usable(tmp_path):
    result = _run_fallback(CUDA_HOME=str(tmp_path / "no-cuda-here"), TORCH_EXTENSIONS_DIR=str(tmp_path / "cache"))
    reason = "is not a CUDA toolkit" if torch.version.cuda is not None else "has no CUDA support"
    _check_fallback(result, reason)


# ---------------------------------------------------------------------------------------------------------
# Kernel correctness: the CPU emulator everywhere, the compiled extension on a GPU
# ---------------------------------------------------------------------------------------------------------

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


class EmulatedKernels:
    """The kernel bodies of csrc/*.cuh run by the CPU emulator; outputs start NaN-filled. Same four
    functions as the other backends; ``last_width`` is the packed width the launch plan chose."""

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
                   self._i64(qkv.shape), self._i64(qkv.stride()), ctypes.c_void_p(out.data_ptr()))
        return out

    def separable_attention_backward(self, grad_out, qkv):
        grad = torch.full(qkv.shape, float("nan"), dtype=qkv.dtype)
        self._call(self.lib.emu_separable_attention_backward, _DTYPE_CODES[qkv.dtype],
                   ctypes.c_void_p(grad_out.data_ptr()), self._i64(grad_out.stride()), ctypes.c_void_p(qkv.data_ptr()),
                   self._i64(qkv.shape), self._i64(qkv.stride()), ctypes.c_void_p(grad.data_ptr()))
        return grad

    def unfold_forward(self, x, patch_h, patch_w):
        B, C, H, W = x.shape
        out = torch.full((B, C, patch_h * patch_w, (H // patch_h) * (W // patch_w)), float("nan"), dtype=x.dtype)
        self._call(self.lib.emu_unfold, _DTYPE_CODES[x.dtype], ctypes.c_void_p(x.data_ptr()), self._i64(x.shape),
                   self._i64(x.stride()), ctypes.c_int64(patch_h), ctypes.c_int64(patch_w),
                   ctypes.c_void_p(out.data_ptr()))
        return out

    def fold_forward(self, patches, height, width, patch_h, patch_w):
        B, C = patches.shape[:2]
        out = torch.full((B, C, height, width), float("nan"), dtype=patches.dtype)
        sizes = (ctypes.c_int64(v) for v in (height, width, patch_h, patch_w))
        self._call(self.lib.emu_fold, _DTYPE_CODES[patches.dtype], ctypes.c_void_p(patches.data_ptr()),
                   self._i64(patches.shape), self._i64(patches.stride()), *sizes, ctypes.c_void_p(out.data_ptr()))
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


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    source = EMULATION / "emulated_kernels.cpp"
    if not source.is_file():
        pytest.skip("csrc/emulation is not here (installed package, not a source checkout)")
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        pytest.skip("no C++ compiler (g++) to build the CPU emulator")
    library = tmp_path_factory.mktemp("emulator") / "emulated_kernels.so"
    include = Path(torch.__file__).resolve().parent / "include"
    command = [compiler, "-O2", "-std=c++20", "-shared", "-fPIC", "-isystem", str(include), str(source)]
    command += ["-o", str(library)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, "the kernel bodies do not compile for the CPU emulator:\n" + result.stderr
    return EmulatedKernels(library)


@pytest.fixture(params=["emulator", pytest.param("cuda", marks=pytest.mark.gpu)])
def kernels(request):
    """The kernels under test with the device their tensors live on."""
    if request.param == "emulator":
        return request.getfixturevalue("emulator"), "cpu"
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    reason = _build_prerequisites_missing()
    if reason is not None:
        pytest.skip(f"cannot build the CUDA extension here: {reason}")
    return PoisonedCudaKernels(cuda_extension.load()), "cuda"  # a failed build fails the test


def make_qkv(B, d, P, N, dtype, device, layout="contiguous"):
    """qkv (B, 1+2d, P, N) in a memory layout (made in ``dtype`` on ``device``, then viewed)."""
    C = 1 + 2 * d

    def randn(*shape):
        return torch.randn(*shape).to(device=device, dtype=dtype)

    if layout == "contiguous":
        return randn(B, C, P, N)
    if layout == "channel_slice":  # a view into a bigger tensor: offset by 2 channels
        return randn(B, C + 3, P, N)[:, 2 : 2 + C]
    if layout == "element_offset":  # data pointer one element past an aligned address
        return randn(B * C * P * N + 1)[1:].view(B, C, P, N)
    if layout == "transposed":  # N not innermost
        return randn(B, N, P, C).permute(0, 3, 2, 1)
    if layout == "strided_n":  # every other element along N
        return randn(B, C, P, 2 * N)[..., ::2]
    raise ValueError(layout)


# (B, d, P, N, layout, expected packed width for fp16 on the emulator or None)
ATTENTION_CASES = [
    pytest.param(2, 3, 4, 16, "contiguous", 8, id="small-packed16"),
    pytest.param(2, 40, 4, 64, "contiguous", 8, id="split-channels"),  # several channel blocks + finalize
    pytest.param(1, 5, 1, 33, "contiguous", 1, id="odd-N"),
    pytest.param(1, 7, 4, 1, "contiguous", 1, id="N=1"),
    pytest.param(3, 1, 1, 12, "contiguous", 4, id="d=1-packed8"),
    pytest.param(2, 19, 4, 256, "contiguous", 8, id="stage1-like"),
    pytest.param(1, 6, 4, 600, "contiguous", 8, id="several-chunks"),  # rows longer than 32 packs
    pytest.param(1, 3, 4, 40, "channel_slice", 8, id="channel-slice"),
    pytest.param(2, 3, 2, 24, "element_offset", 1, id="misaligned"),
    pytest.param(2, 5, 4, 20, "transposed", 1, id="transposed"),
    pytest.param(1, 4, 4, 17, "strided_n", 1, id="strided-N"),
]


def _attention_inputs(B, d, P, N, layout, dtype, device):
    qkv = make_qkv(B, d, P, N, dtype, device, layout)
    grad_out = torch.randn(B, d, P, N).to(device=device, dtype=dtype)
    return qkv, grad_out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,d,P,N,layout,width", ATTENTION_CASES)
def test_separable_attention_matches_reference(kernels, dtype, B, d, P, N, layout, width):
    impl, device = kernels
    qkv, grad_out = _attention_inputs(B, d, P, N, layout, dtype, device)
    out = impl.separable_attention_forward(qkv)
    if device == "cpu" and dtype == torch.float16:
        assert impl.last_width == width, "the launch plan took another path than this case is meant to cover"
    assert out.is_contiguous() and out.dtype == dtype
    assert_close(out, reference.separable_attention_forward(qkv.double()), reference.separable_attention_forward(qkv))

    grad = impl.separable_attention_backward(grad_out, qkv)
    assert grad.is_contiguous() and grad.dtype == dtype and grad.shape == qkv.shape
    expected = reference.separable_attention_backward(grad_out.double(), qkv.double())
    lowp = reference.separable_attention_backward(grad_out, qkv)
    assert_close(grad, expected, lowp)


@pytest.mark.parametrize("dtype,scale", [(torch.float32, 1e4), (torch.float16, 6e4), (torch.bfloat16, 1e4)], ids=str)
def test_separable_attention_large_logits(kernels, dtype, scale):
    impl, device = kernels
    qkv, grad_out = _attention_inputs(2, 5, 4, 64, "contiguous", dtype, device)
    qkv[:, 0] = (torch.rand(2, 4, 64, device=device) * 2 - 1).mul(scale).to(dtype)  # logits in [-scale, scale]
    out = impl.separable_attention_forward(qkv)
    assert_close(out, reference.separable_attention_forward(qkv.double()), reference.separable_attention_forward(qkv))
    grad = impl.separable_attention_backward(grad_out, qkv)
    assert_close(grad, reference.separable_attention_backward(grad_out.double(), qkv.double()),
                 reference.separable_attention_backward(grad_out, qkv))


@pytest.mark.parametrize("N", [4097, 4104, 8200], ids=lambda n: f"N={n}")
def test_separable_attention_long_rows(kernels, N):
    """Rows too long for shared memory (backward above 4096, forward above 8192): weights recomputed from
    the query, dq shares accumulated in global memory; element-wise (odd N) and packed."""
    impl, device = kernels
    qkv, grad_out = _attention_inputs(1, 3, 1, N, "contiguous", torch.float32, device)
    qkv[:, 0] *= 4
    assert_close(impl.separable_attention_forward(qkv), reference.separable_attention_forward(qkv.double()))
    assert_close(impl.separable_attention_backward(grad_out, qkv),
                 reference.separable_attention_backward(grad_out.double(), qkv.double()))


def test_separable_attention_broadcast_grad_out(kernels):
    """grad_out with stride 0 (an expanded tensor) takes the element-wise path."""
    impl, device = kernels
    qkv = make_qkv(2, 4, 4, 16, torch.float32, device)
    grad_out = torch.randn(2, 4, 4, 1, device=device).expand(2, 4, 4, 16)
    assert_close(impl.separable_attention_backward(grad_out, qkv),
                 reference.separable_attention_backward(grad_out.double(), qkv.double()))


def test_launch_plan_covers_every_path(emulator):
    """The cases above reach each branch of the plan: group sizes 1..32, one or several channel blocks,
    rows in shared or global memory (checked here so that a plan change cannot silently drop one)."""
    plans = {
        "N=1": emulator.plan(1, 7, 4, 1, 1, True),
        "small": emulator.plan(2, 3, 4, 16, 8, True),
        "split": emulator.plan(2, 40, 4, 64, 8, True),
        "long": emulator.plan(1, 3, 1, 4097, 4, True),
        "stage1": emulator.plan(256, 128, 4, 256, 8, True),
    }
    assert plans["N=1"]["group_size"] == 1 and plans["N=1"]["direct"]
    assert plans["small"]["group_size"] == 2 and plans["small"]["direct"]
    assert plans["split"]["channel_blocks"] > 1 and not plans["split"]["direct"] and plans["split"]["shared_row"]
    assert not plans["long"]["shared_row"] and not plans["long"]["direct"]
    assert plans["stage1"]["group_size"] == 32 and plans["stage1"]["channels_per_block"] == 64
    assert emulator.plan(1, 3, 1, 8192, 4, False)["shared_row"]
    assert not emulator.plan(1, 3, 1, 8195, 4, False)["shared_row"]


# (B, C, H, W, patch, layout, expected packed width for fp16 on the emulator)
PATCH_CASES = [
    pytest.param(2, 3, 8, 16, (2, 2), "contiguous", 8, id="packed"),
    pytest.param(1, 4, 7, 9, (2, 2), "contiguous", 1, id="remainder"),
    pytest.param(1, 2, 6, 12, (3, 2), "contiguous", 4, id="patch-3x2"),
    pytest.param(2, 3, 8, 8, (2, 2), "channels_last", 1, id="channels-last"),
    pytest.param(1, 1, 5, 5, (1, 1), "contiguous", 1, id="patch-1x1"),
    pytest.param(1, 2, 1, 3, (2, 2), "contiguous", 1, id="smaller-than-patch"),
]


def _image(B, C, H, W, layout, dtype, device):
    x = torch.randn(B, C, H, W).to(device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,C,H,W,patch,layout,width", PATCH_CASES)
def test_unfold_fold_match_reference(kernels, dtype, B, C, H, W, patch, layout, width):
    impl, device = kernels
    ph, pw = patch
    x = _image(B, C, H, W, layout, dtype, device)
    patches = impl.unfold_forward(x, ph, pw)
    if device == "cpu" and dtype == torch.float16 and patches.numel():
        assert impl.last_width == width
    assert patches.is_contiguous()
    assert torch.equal(patches, reference.unfold_forward(x, ph, pw))  # a permutation: exact

    grid = reference.unfold_forward(x, ph, pw)
    grid = grid.transpose(2, 3).contiguous().transpose(2, 3) if layout == "channels_last" else grid  # strided input
    folded = impl.fold_forward(grid, H, W, ph, pw)
    assert folded.is_contiguous()
    assert torch.equal(folded, reference.fold_forward(grid, H, W, ph, pw))  # zeros where unfold dropped pixels


# ---------------------------------------------------------------------------------------------------------
# GPU: the registered ops with backend="cuda"
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def cuda_backend():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    reason = _build_prerequisites_missing()
    if reason is not None:
        pytest.skip(f"cannot build the CUDA extension here: {reason}")
    reason = backends.unavailable_reason("cuda", "cuda")
    if reason is not None:
        pytest.fail(f"the CUDA backend is unavailable on a GPU machine: {reason}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ops_with_cuda_backend_autograd(cuda_backend, dtype):
    assert "cuda" in mk.available_backends("cuda")
    qkv = make_qkv(2, 12, 4, 49, dtype, "cuda").requires_grad_(True)
    out = mk.separable_attention(qkv, backend="cuda")
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    assert_close(out.detach(), reference.separable_attention_forward(qkv.detach().double()),
                 reference.separable_attention_forward(qkv.detach()))
    assert_close(qkv.grad, reference.separable_attention_backward(grad_out.double(), qkv.detach().double()),
                 reference.separable_attention_backward(grad_out, qkv.detach()))

    x = torch.randn(2, 6, 9, 10, device="cuda", dtype=dtype, requires_grad=True)
    patches = mk.unfold(x, (2, 2), backend="cuda")
    folded = mk.fold(patches, (9, 10), (2, 2), backend="cuda")
    folded.backward(torch.ones_like(folded))
    assert torch.equal(folded.detach(), reference.fold_forward(reference.unfold_forward(x.detach(), 2, 2), 9, 10, 2, 2))
    assert torch.equal(x.grad, reference.fold_forward(torch.ones_like(patches), 9, 10, 2, 2))


@pytest.mark.gpu
def test_opcheck_with_cuda_backend(cuda_backend):
    qkv = make_qkv(2, 5, 4, 24, torch.float32, "cuda").requires_grad_(True)
    grad_out = torch.randn(2, 5, 4, 24, device="cuda")
    x = torch.randn(2, 3, 8, 10, device="cuda", requires_grad=True)
    patches = torch.randn(2, 3, 4, 20, device="cuda", requires_grad=True)
    ops = torch.ops.mobilevitv2
    torch.library.opcheck(ops.separable_attention.default, (qkv, "cuda"))
    torch.library.opcheck(ops.separable_attention_backward.default, (grad_out, qkv.detach(), "cuda"))
    torch.library.opcheck(ops.unfold.default, (x, 2, 2, "cuda"))
    torch.library.opcheck(ops.fold.default, (patches, 8, 10, 2, 2, "cuda"))


@pytest.mark.gpu
def test_kernels_run_on_the_current_stream(cuda_backend):
    """The kernels order after work queued on a side stream (they launch on the current stream), do not
    synchronise the host, and can be captured in a CUDA graph."""
    impl = cuda_extension.load()
    source = make_qkv(16, 24, 4, 64, torch.float16, "cuda")
    grad_out = torch.randn(16, 24, 4, 64, device="cuda", dtype=torch.float16)
    qkv = torch.zeros_like(source)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.stream(stream):
            torch.cuda._sleep(50_000_000)  # keeps the side stream busy: a kernel elsewhere would read zeros
            qkv.copy_(source)
            out = impl.separable_attention_forward(qkv)
            grad = impl.separable_attention_backward(grad_out, qkv)
            patches = impl.unfold_forward(qkv, 2, 2)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    stream.synchronize()
    assert_close(out, reference.separable_attention_forward(source.double()),
                 reference.separable_attention_forward(source))
    assert_close(grad, reference.separable_attention_backward(grad_out.double(), source.double()),
                 reference.separable_attention_backward(grad_out, source))
    assert torch.equal(patches, reference.unfold_forward(source, 2, 2))

    static_in = torch.zeros_like(source)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = impl.separable_attention_forward(static_in)
        static_grad = impl.separable_attention_backward(grad_out, static_in)
    static_in.copy_(source)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, out)
    torch.testing.assert_close(static_grad, grad)  # dq sums with float atomics: not bitwise reproducible
