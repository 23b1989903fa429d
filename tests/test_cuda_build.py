"""The CUDA backend's build, bindings, fallback and CLI (csrc/, mobilevitv2_kernels.cuda_extension).

* On any machine with nvcc and a CUDA build of PyTorch (CI has both, and no GPU) the extension is compiled
  once (cached) and its bindings are checked; a compile error fails the test. The CLI's success and
  failure paths are checked too.
* The fallback path runs in subprocesses (clean process state): with the extension disabled, or with no
  usable toolkit, the ops still work with backend="auto", "cuda" is not offered, asking for it raises
  BackendUnavailableError, and exactly one warning says so.

The kernels' results (through the CPU emulator everywhere, the compiled extension on a GPU) are checked with
each op's other backends in tests/ops/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cuda_kernels import build_prerequisites_missing
from mobilevitv2_kernels import backends, cuda_extension

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("nan_allocations")  # every allocation starts as NaN


# ---------------------------------------------------------------------------------------------------------
# Build and bindings (CPU machine with nvcc and CUDA torch, e.g. CI)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def built():
    """The extension, compiled once per cache (a compile error fails every test that needs it)."""
    reason = build_prerequisites_missing()
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
    reason = build_prerequisites_missing()
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
