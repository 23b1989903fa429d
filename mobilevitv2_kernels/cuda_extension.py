"""The CUDA backend: a C++/CUDA extension (sources in ``csrc/``) JIT-built on first use and cached.

``load()`` returns an object with the four backend functions of :mod:`mobilevitv2_kernels.reference` that
``csrc/`` implements. The first call compiles the extension with ``torch.utils.cpp_extension.load`` (ninja,
announced in one line); later processes load the cached build; ``python -m mobilevitv2_kernels build`` builds
ahead of time. Where the extension cannot be used, ``load()`` raises
:class:`~mobilevitv2_kernels.common.BackendUnavailableError` with the reason and warns once that the ops fall
back to the next backend; importing the package never fails. Environment knobs: docs/design.md, "Building
the CUDA extension".
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from mobilevitv2_kernels.common import BackendUnavailableError

DISABLE_ENV = "MOBILEVITV2_DISABLE_CUDA_EXT"
SOURCES = ("separable_attention.cu", "patching.cu", "bindings.cpp")
HEADERS = ("common.cuh", "separable_attention.cuh", "patching.cuh", "launch_args.h", "host_utils.h", "ops.h")
FUNCTIONS = ("separable_attention_forward", "separable_attention_backward", "unfold_forward", "fold_forward")
DEFAULT_ARCHS = ("8.0", "9.0")
# Measured for the announcement: a cold build of sm_80 + sm_90 on the 2-core CI machine.
_MEASURED_BUILD = "under a minute on 2 CPU cores"


class CudaExtensionWarning(UserWarning):
    """Warned once per process when the CUDA extension cannot be used and the ops fall back."""


class CudaKernels:
    """The CUDA backend: the four functions of :mod:`mobilevitv2_kernels.reference`, run by the extension.

    Each takes CUDA tensors of any strides (float32, float16, bfloat16) and returns a new contiguous
    tensor, computed with float32 accumulation on the current stream.
    """

    def __init__(self, extension, build_directory: str):
        self.extension = extension
        self.build_directory = build_directory
        self.path = getattr(extension, "__file__", None)

    def separable_attention_forward(self, qkv: torch.Tensor) -> torch.Tensor:
        return self.extension.separable_attention_forward(qkv)

    def separable_attention_backward(self, grad_out: torch.Tensor, qkv: torch.Tensor) -> torch.Tensor:
        return self.extension.separable_attention_backward(grad_out, qkv)

    def unfold_forward(self, x: torch.Tensor, patch_h: int, patch_w: int) -> torch.Tensor:
        return self.extension.unfold_forward(x, int(patch_h), int(patch_w))

    def fold_forward(self, patches: torch.Tensor, height: int, width: int, patch_h: int, patch_w: int) -> torch.Tensor:
        return self.extension.fold_forward(patches, int(height), int(width), int(patch_h), int(patch_w))

    def __repr__(self) -> str:
        return f"CudaKernels({self.path})"


@dataclass(frozen=True)
class BuildResult:
    kernels: CudaKernels
    build_directory: str
    seconds: float
    cached: bool  # True when an up-to-date build was already in the cache


_lock = threading.Lock()
_kernels: CudaKernels | None = None
_error: str | None = None
_warned = False


def load() -> CudaKernels:
    """The CUDA backend, built on first use (once per process; the result or the failure is cached).

    Raises:
        BackendUnavailableError: the extension is disabled, cannot be built here, or failed to build.
            The first failure in a process also warns (``CudaExtensionWarning``) that the ops fall back.
    """
    global _kernels, _error
    with _lock:
        if _kernels is not None:
            return _kernels
        if _error is None:
            if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
                _error = f"the CUDA extension is disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
            else:
                try:
                    _kernels = _build(verbose=False, announce=True).kernels
                    return _kernels
                except BackendUnavailableError as exc:
                    _error = str(exc)
                except Exception as exc:  # anything unexpected must not break backend selection
                    _error = f"{type(exc).__name__}: {exc}"
        _warn_once(_error)
        raise BackendUnavailableError(_error)


def build(verbose: bool = True) -> BuildResult:
    """Compile the extension now (or find it in the cache), whatever ``MOBILEVITV2_DISABLE_CUDA_EXT``
    says. Needs ``nvcc`` and a CUDA build of PyTorch, not a GPU. With ``verbose`` the compiler commands
    and output are printed as they run.

    Raises:
        BackendUnavailableError: with the reason, including the compiler's error output.
    """
    return _build(verbose=verbose, announce=False)


def source_directory() -> Path:
    """``csrc/`` inside the installed package, else the source checkout's top-level ``csrc/``."""
    package = Path(__file__).resolve().parent
    candidates = (package / "csrc", package.parent / "csrc")
    for candidate in candidates:
        if all((candidate / name).is_file() for name in SOURCES + HEADERS):
            return candidate
    raise BackendUnavailableError(
        f"the CUDA sources were not found (looked for {', '.join(SOURCES)} in "
        f"{' and '.join(map(str, candidates))})"
    )


def _warn_once(reason: str) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    first_line = reason.strip().splitlines()[0] if reason.strip() else "unknown reason"
    hint = "" if DISABLE_ENV in first_line else "; `python -m mobilevitv2_kernels build` shows the details"
    warnings.warn(
        f"mobilevitv2_kernels: the CUDA extension is unavailable ({first_line}); the ops fall back to the "
        f"next backend (Triton, else the PyTorch reference){hint}",
        CudaExtensionWarning,
        stacklevel=3,
    )


def _is_toolkit(path: str | os.PathLike | None) -> bool:
    if not path:
        return False
    return (Path(path) / "bin" / "nvcc").is_file() and (Path(path) / "include" / "cuda_runtime.h").is_file()


def _nvcc_toolkit_root() -> str | None:
    """The toolkit that the `nvcc` on the PATH belongs to (it may be a wrapper script elsewhere)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    root = Path(nvcc).resolve().parent.parent
    if _is_toolkit(root):
        return str(root)
    try:
        dry_run = subprocess.run(
            [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (dry_run.stdout + dry_run.stderr).splitlines():
        if "TOP=" in line:
            top = Path(line.split("TOP=", 1)[1].strip()).resolve()
            if _is_toolkit(top):
                return str(top)
    return None


def find_cuda_home() -> str:
    """The CUDA toolkit to build with: $CUDA_HOME / $CUDA_PATH if set, else the toolkit of the `nvcc` on
    the PATH, else /usr/local/cuda. (PyTorch's own guess, the parent of the `nvcc` it finds, is wrong when
    that `nvcc` is a wrapper such as /usr/local/bin/nvcc.)"""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(variable)
        if value:
            if not _is_toolkit(value):
                raise BackendUnavailableError(
                    f"{variable}={value} is not a CUDA toolkit (no bin/nvcc and include/cuda_runtime.h)"
                )
            return value
    for candidate in (_nvcc_toolkit_root(), "/usr/local/cuda"):
        if _is_toolkit(candidate):
            return str(candidate)
    raise BackendUnavailableError("nvcc was not found: install the CUDA toolkit or set CUDA_HOME to it")


def arch_list() -> list[str]:
    """The architectures to build for: $TORCH_CUDA_ARCH_LIST, else the visible GPUs', else 8.0 and 9.0."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        return env.replace(";", " ").split()
    if torch.cuda.is_available():
        archs = {"{}.{}".format(*torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())}
        return sorted(archs)
    return list(DEFAULT_ARCHS)


def _gencode_flags(archs: list[str]) -> list[str]:
    flags = []
    for arch in archs:
        number = arch.removesuffix("+PTX").replace(".", "")
        if not number[:2].isdigit():
            raise BackendUnavailableError(
                f"cannot read the architecture {arch!r} (TORCH_CUDA_ARCH_LIST): use numbers such as 9.0"
            )
        flags.append(f"-gencode=arch=compute_{number},code=sm_{number}")
        if arch.endswith("+PTX"):
            flags.append(f"-gencode=arch=compute_{number},code=compute_{number}")
    return flags


def _nvidia_wheel_includes() -> list[str]:
    """Headers of the CUDA libraries shipped as pip wheels next to torch (cuBLAS, cuSPARSE, ...), which some
    torch headers include; harmless when unused."""
    site = Path(torch.__file__).resolve().parent.parent / "nvidia"
    major = (torch.version.cuda or "").split(".")[0]
    candidates = [site / f"cu{major}" / "include"]  # CUDA 13 wheels; CUDA 12 wheels use one folder per library
    candidates += [site / name / "include" for name in ("cuda_runtime", "cublas", "cusparse")]
    return [str(path) for path in candidates if path.is_dir()]


@contextlib.contextmanager
def _exclusive_build(build_directory: str, torch_uses_lock_file: bool):
    """Hold an OS lock on the build directory while torch builds or loads there and, where torch's build
    lock is a plain file, remove one left by a killed build first.

    torch before 2.14 guards a build with a ``lock`` file (``FileBaton``) that only a finished build removes:
    a build killed midway (a timeout, Ctrl-C) leaves it behind, and every later ``load()`` waits on it
    forever. Our own lock is an ``flock``, which the OS releases when its process dies, so while we hold it
    no build of ours is running: such a file present then was left by a killed one. (Newer torch holds an
    OS lock itself; its lock file stays between builds and means nothing.)"""
    with open(os.path.join(build_directory, "mobilevitv2_build.flock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # waits while another process of ours builds here
        try:
            torch_lock = os.path.join(build_directory, "lock")
            if torch_uses_lock_file and os.path.exists(torch_lock):
                print(f"mobilevitv2_kernels: removing {torch_lock}, left by an interrupted build", file=sys.stderr, flush=True)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(torch_lock)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(verbose: bool, announce: bool) -> BuildResult:
    if torch.version.cuda is None:
        raise BackendUnavailableError(f"this PyTorch build ({torch.__version__}) has no CUDA support")
    # torch logs "No CUDA runtime is found, using CUDA_HOME=<its guess>" when it is first imported on a
    # machine without a GPU; find_cuda_home() replaces that guess, so the message would only mislead.
    torch_logger = logging.getLogger("torch.utils.cpp_extension")
    saved_level = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    except Exception as exc:  # pragma: no cover - torch without its build helpers
        raise BackendUnavailableError(f"torch.utils.cpp_extension is unavailable ({exc})") from exc
    finally:
        torch_logger.setLevel(saved_level)
    if not cpp_extension.is_ninja_available():
        raise BackendUnavailableError("ninja is not installed (pip install ninja)")
    cuda_home = find_cuda_home()
    sources = source_directory()
    archs = arch_list()
    gencode = _gencode_flags(archs)
    includes = [str(sources)] + _nvidia_wheel_includes()
    cuda_flags = ["-O3", "-lineinfo", *gencode]

    # One build directory per (sources, flags, toolchain): an existing library there is up to date.
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update((sources / name).read_bytes())
    for part in (cuda_flags, includes, cuda_home, torch.__version__, sys.version):
        digest.update(repr(part).encode())
    name = f"mobilevitv2_cuda_{digest.hexdigest()[:12]}"
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        cpp_extension.get_default_build_root(),
        f"py{sys.version_info.major}{sys.version_info.minor}_cu{torch.version.cuda.replace('.', '')}",
    )
    build_directory = os.path.join(root, name)
    os.makedirs(build_directory, exist_ok=True)
    cached = os.path.isfile(os.path.join(build_directory, f"{name}.so"))
    if announce and not cached:
        targets = ", ".join("sm_" + arch.replace(".", "") for arch in archs)
        print(
            f"mobilevitv2_kernels: compiling the CUDA extension for {targets} "
            f"(first use only; {_MEASURED_BUILD}; cached in {build_directory})",
            file=sys.stderr,
            flush=True,
        )

    start = time.perf_counter()
    saved_cuda_home = cpp_extension.CUDA_HOME
    cpp_extension.CUDA_HOME = cuda_home  # torch reads its module global for nvcc and -L<cuda>/lib64
    try:
        with _exclusive_build(build_directory, torch_uses_lock_file=hasattr(cpp_extension, "FileBaton")):
            extension = cpp_extension.load(
                name=name,
                sources=[str(sources / source) for source in SOURCES],
                extra_cflags=["-O3"],
                extra_cuda_cflags=cuda_flags,
                extra_include_paths=includes,
                build_directory=build_directory,
                with_cuda=True,
                verbose=verbose,
            )
    except Exception as exc:  # compiler errors arrive as RuntimeError with the ninja output
        raise BackendUnavailableError(f"building the CUDA extension failed: {exc}") from exc
    finally:
        cpp_extension.CUDA_HOME = saved_cuda_home
    missing = [function for function in FUNCTIONS if not hasattr(extension, function)]
    if missing:
        raise BackendUnavailableError(f"the CUDA extension at {build_directory} lacks {missing}")
    return BuildResult(CudaKernels(extension, build_directory), build_directory, time.perf_counter() - start, cached)
