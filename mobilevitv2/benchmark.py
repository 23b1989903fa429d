"""Former home of the benchmark harness, now :mod:`mobilevitv2.bench`.

``main`` forwards to :func:`mobilevitv2.bench.command.main` (the entry point of ``mobilevitv2 bench``). Every other public
name of the old module still resolves, to the same object in its new module, with one DeprecationWarning per
process that names the new module. Nothing is imported until a name is used: importing this module (or the
model package) never imports the harness.
"""

from __future__ import annotations

import importlib
import warnings

_NEW_HOME = {
    "mobilevitv2.bench.harness": (
        "Case", "Result", "environment", "time_ms", "copy_bandwidth", "run_cases", "format_table", "write_results",
    ),
    "mobilevitv2.bench.checks": ("DTYPES", "CHECK_TOLERANCE", "relative_error"),
    "mobilevitv2.bench.models": ("MODEL_PROVIDERS", "default_model_providers", "model_cases"),
    "mobilevitv2.bench.ops": (
        "ATTENTION_PROVIDERS", "TRANSFORMER_LAYER_PROVIDERS", "MultiHeadSelfAttention", "attention_core_cases",
        "attention_scaling_cases", "transformer_layer_cases",
    ),
    "mobilevitv2.bench.suites": ("SUITES", "TARGET_GROUPS", "TargetGroup", "default_cases", "target_cases"),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _NEW_HOME.items() for name in names}
__all__ = ["main", *_MODULE_OF]
_warned = False


def main(argv: list[str] | None = None) -> int:
    """``mobilevitv2 bench``: see :func:`mobilevitv2.bench.command.main`."""
    from mobilevitv2.bench.command import main as bench_main

    return bench_main(argv)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"mobilevitv2.benchmark is deprecated: the harness is the package mobilevitv2.bench "
            f"(import {name} from {_MODULE_OF[name]})",
            DeprecationWarning,
            stacklevel=2,
        )
    return getattr(importlib.import_module(_MODULE_OF[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
