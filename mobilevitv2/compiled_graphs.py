"""Compiled graphs kept on disk: a module compiled ahead of time by AOTInductor for each input it meets,
each package written to a cache folder and loaded from there by any later process.

Why: Inductor's own cache does not keep graphs compiled with frozen weights, so every new process compiled
the CPU path again (18-29 s for width 1.0 at batch 1 on a 2-core CPU); a package loads in about 0.3 s and
runs as fast (15.1 against 15.2 ms for the width-1.0 stem and stages 1-3 at batch 1, fp32, measured side by
side in one process). A package is keyed by what its code depends on: the weights, the stage and
configuration, the input's shape, strides and dtype, the versions of torch and this package, the source of
this package and of its kernels package, the CPU's vector instruction set (a package built for AVX-512 must
not run on a CPU without it) and the thread count (Inductor builds its C++ kernels for it). A new package is
written to a temporary file and renamed into place, so a half-written one is never loaded (one left by a
killed process is removed a day later); one that fails to load or run is compiled again. Where AOTInductor
cannot compile the module, the graph falls back to ``torch.compile`` with a warning; where the cache cannot
be written, the process keeps its packages to itself, with a warning. Each package holds its weights (about
21 MB for width 1.0 in fp32 per input shape); the folder is kept under a size limit, the packages used
longest ago removed first (:mod:`mobilevitv2.cache_limit`), and it can be deleted at any time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mobilevitv2 import cache_limit

# How a package is made, part of its key: a changed recipe compiles new packages instead of loading old ones.
RECIPE = 1
# The packages whose code a compiled graph may contain (the model, and the reference ops it traces through).
_PACKAGES = ("mobilevitv2", "mobilevitv2_kernels")
GRAPHS_FOLDER = "inductor-cpu"  # the compiled graphs' folder in the export cache


def default_cache_dir() -> str:
    """``inductor-cpu`` in the export cache (``$MOBILEVITV2_CACHE``, else ``~/.cache/mobilevitv2/exports``)."""
    from mobilevitv2.runtimes import default_cache_dir as export_cache_dir

    return os.path.join(export_cache_dir(), GRAPHS_FOLDER)


def weights_digest(module: nn.Module) -> str:
    """sha256 (hex) of the weights, hashed as the export cache hashes them."""
    from mobilevitv2.runtimes import hash_weights

    digest = hashlib.sha256()
    hash_weights(digest, module)
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)  # the sources do not change while the process runs
def _sources_digest() -> str:
    """sha256 of every Python file of this package and of its kernels package (an installed copy without
    its sources hashes what it has)."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for package in _PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _vector_isa() -> str:
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        return str(pick_vec_isa())
    except Exception:  # an Inductor without this helper: the machine's name must do
        return platform.processor() or "unknown"


# A temporary package older than this was left by a process killed while compiling (a compile takes
# seconds to minutes); it is removed when the next package is compiled into the same folder.
STALE_PARTIAL_SECONDS = 24 * 3600


def remove_stale_partials(folder: Path, now: float | None = None) -> int:
    """Delete the temporary packages (``.partial-*.pt2``) in ``folder`` older than
    :data:`STALE_PARTIAL_SECONDS`; returns how many went. Younger ones may be another process's compile."""
    now = time.time() if now is None else now
    removed = 0
    for partial in folder.glob(".partial-*.pt2"):
        try:
            if now - partial.stat().st_mtime > STALE_PARTIAL_SECONDS:
                partial.unlink()
                removed += 1
        except OSError:  # gone already, or not ours to remove
            pass
    return removed


def _aoti_available() -> bool:
    return hasattr(torch._inductor, "aoti_compile_and_package") and hasattr(torch._inductor, "aoti_load_package")


class CachedGraph:
    """``graph(x)``: ``module(x)`` through a package compiled for ``x``'s shape, strides and dtype, loaded from
    ``cache_dir`` when one was compiled before. ``identity``: what else the package depends on (the
    weights' digest, the configuration; a JSON-able dict). ``fallback``: makes the ``torch.compile``
    replacement used where AOTInductor fails. ``loaded``, ``compiled`` and ``fell_back`` count the inputs for
    which this graph loaded a package from the cache, compiled one, or fell back. The folder is pruned to
    the cache limit (:mod:`mobilevitv2.cache_limit`, read here) after each package is written. Not for
    several threads at once (:class:`mobilevitv2.cpu_inference.CPUInference` calls it under a lock)."""

    def __init__(self, module: nn.Module, name: str, identity: dict, cache_dir: str | os.PathLike,
                 fallback: Callable[[nn.Module], Callable[[torch.Tensor], torch.Tensor]]) -> None:  # fmt: skip
        self.module, self.name, self.cache_dir = module, name, Path(cache_dir)
        self.identity, self.make_fallback = identity, fallback
        self.runners: dict[tuple, Callable[[torch.Tensor], torch.Tensor]] = {}
        self.fallback: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.loaded = self.compiled = self.fell_back = 0
        self.cache_limit = cache_limit.limit_bytes()  # a bad $MOBILEVITV2_CACHE_LIMIT_GB fails here, not mid-compile

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        signature = (tuple(x.shape), tuple(x.stride()), x.dtype)
        runner = self.runners.get(signature)
        if runner is not None:
            return runner(x)
        try:
            runner, out = self._load_or_compile(x)
        except Exception as exc:  # AOTInductor could not compile this graph: torch.compile it instead
            warnings.warn(
                f"mobilevitv2: AOTInductor could not compile a CPU graph ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); using torch.compile, whose graphs are not "
                "kept between processes",
                RuntimeWarning,
                stacklevel=3,
            )
            if self.fallback is None:
                self.fallback = self.make_fallback(self.module)
            runner, out = self.fallback, self.fallback(x)
            self.fell_back += 1
        self.runners[signature] = runner
        return out

    def package_path(self, x: torch.Tensor) -> Path:
        """Where the package for input ``x`` is (or will be) kept."""
        from mobilevitv2 import __version__

        meta = {
            "graph": self.name,
            "identity": self.identity,
            "shape": list(x.shape),
            "stride": list(x.stride()),
            "dtype": str(x.dtype),
            "recipe": RECIPE,
            "torch": torch.__version__,
            "mobilevitv2": __version__,
            "sources": _sources_digest(),
            "isa": _vector_isa(),
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),  # Inductor's C++ kernels are built for this many
        }
        key = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()
        shape = "x".join(str(s) for s in x.shape)
        return self.cache_dir / f"{self.name}-{shape}-{key[:32]}.pt2"

    def _prune(self, written: Path) -> None:
        """The folder pruned to the cache limit after ``written`` went in; a failure here costs the folder its
        trim, never the package just compiled."""
        try:
            cache_limit.prune(written.parent, keep=written, limit=self.cache_limit)
        except Exception as exc:  # pruning is housekeeping: never worth the package
            warnings.warn(f"mobilevitv2: could not prune the compiled-graph cache {written.parent} ({exc})",
                          RuntimeWarning, stacklevel=5)  # fmt: skip

    def _load_or_compile(self, x: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
        """(runner, runner(x)): the cached package's if it loads and runs, else a new one's. The first call
        is part of it, so a package that loads but cannot run is compiled again."""
        if not _aoti_available():
            raise RuntimeError(f"torch {torch.__version__} has no AOTInductor packaging")
        path = self.package_path(x)
        if path.is_file():
            try:
                runner = torch._inductor.aoti_load_package(str(path))
                out = runner(x)
                self.loaded += 1
                cache_limit.mark_used(path)
                return runner, out
            except Exception:  # a damaged or foreign package: compiled again below, replacing it
                pass
        program = torch.export.export(self.module, (x,))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_partials(path.parent)
            handle, partial = tempfile.mkstemp(prefix=".partial-", suffix=".pt2", dir=path.parent)
        except OSError as exc:  # a cache that cannot be written: this process keeps its package to itself
            warnings.warn(f"mobilevitv2: cannot write compiled CPU graphs to {path.parent} ({exc}); they will be "
                          "compiled again by the next process", RuntimeWarning, stacklevel=4)  # fmt: skip
            handle, partial = tempfile.mkstemp(prefix="mobilevitv2-graph-", suffix=".pt2")
        os.close(handle)
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=partial, inductor_configs={"freezing": True})
            runner = torch._inductor.aoti_load_package(partial)  # loaded before the rename: the file may go after
            out = runner(x)
            if os.path.dirname(partial) == str(path.parent):
                os.chmod(partial, 0o644)  # readable by others sharing the cache (mkstemp makes 0600)
                os.replace(partial, path)  # atomic: another process compiling the same package wins or loses whole
                self._prune(path)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        self.compiled += 1
        return runner, out
