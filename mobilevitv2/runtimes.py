"""CPU runtimes for a classification or segmentation model: export to a file, load it back as a callable.
One export and one loader per runtime, kept side by side with the cache they share so that the runtimes
stay comparable (hence its length).

========================  ==========================  ====================================================
runtime                   exported file               precision it computes in
========================  ==========================  ====================================================
``torch``                 none (the model itself)     the model's own dtype, device and implementation
``inductor``              compiled graphs (``.pt2``)  fp32; bf16 under autocast only when
                                                      ``precision="bf16"`` is asked for
``onnxruntime``           ``.onnx`` (opset 17)        fp32 (CPUExecutionProvider)
``openvino``              ``.xml`` + ``.bin`` (IR)    fp32: compiled with ``INFERENCE_PRECISION_HINT`` f32
                                                      (OpenVINO's default on a CPU with bf16 is bf16);
                                                      bf16 only when ``precision="bf16"`` is asked for
``executorch``            ``.pte`` (XNNPACK)          fp32
========================  ==========================  ====================================================

``inductor`` is this package's own CPU path, :class:`mobilevitv2.cpu_inference.CPUInference`: the model with
its BatchNorms folded, compiled by Inductor with freezing. It needs nothing beyond torch; it compiles for
tens of seconds on the first call of each batch shape and input size, and keeps the compiled graphs in the
cache (:mod:`mobilevitv2.compiled_graphs`), so a later process with the same weights, shapes and sizes
loads them instead.

The ONNX and OpenVINO files have a dynamic batch. The ExecuTorch program is exported for a batch of 1
(XNNPACK lowering with a symbolic batch is not worth its cost here) and the loaded callable runs a batch
one image at a time. Every file has a fixed spatial size: :func:`load` exports one per input size.

Weight compression (:func:`export`'s ``compression``) is OpenVINO's alone: ``"fp16"`` stores the weights
as fp16, ``"int8"`` as per-output-channel asymmetric int8 (``nncf.compress_weights``, data-free); both are
decompressed to fp32 at run time, so only the weights' rounding changes the result.

>>> forward = load("openvino", model, 256, 256)      # exported once, then reused from the cache
>>> logits = forward(pixel_values)                   # (batch, 3, 256, 256) float -> torch.Tensor

:func:`load` caches exports under ``$MOBILEVITV2_CACHE`` (default ``~/.cache/mobilevitv2/exports``), keyed
by a hash of the weights, the config, the model class, the input size, the format, the compression and the
versions of torch, this package and the runtime, so a second load of the same model reuses the file; each
format's folder is kept under ``$MOBILEVITV2_CACHE_LIMIT_GB`` (default 2), the exports used longest ago
removed first (:mod:`mobilevitv2.cache_limit`). A runtime that is not installed raises :class:`MissingRuntimeError` (an ImportError) naming the pip extra.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import unittest.mock
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mobilevitv2 import cache_limit
from mobilevitv2.onnx_export import OPSET, _TensorOutputs, export_onnx, exportable_copy, with_two_pass_group_norms

RUNTIMES = ("torch", "inductor", "onnxruntime", "openvino", "executorch")
FORMATS = ("onnx", "openvino", "executorch")
COMPRESSIONS = ("fp16", "int8")
FORMAT_OF_RUNTIME = {"onnxruntime": "onnx", "openvino": "openvino", "executorch": "executorch"}
RUNTIME_OF_FORMAT = {fmt: runtime for runtime, fmt in FORMAT_OF_RUNTIME.items()}
SUFFIXES = {"onnx": ".onnx", "openvino": ".xml", "executorch": ".pte"}
# What each runtime may compute in; the first is the default.
PRECISIONS = {"torch": ("fp32", "bf16", "fp16"), "inductor": ("fp32", "bf16"), "onnxruntime": ("fp32",), "openvino": ("fp32", "bf16"), "executorch": ("fp32",)}
# The module each runtime (or step) imports, and the pip extra that installs it.
MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "executorch": "executorch", "nncf": "nncf"}
EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino", "executorch": "executorch", "nncf": "openvino-int8"}
DESCRIPTIONS = {"onnxruntime": "the onnxruntime runtime", "openvino": "the openvino runtime",
                "executorch": "the executorch runtime", "nncf": "nncf (for int8 weight compression)"}  # fmt: skip
CACHE_ENV = "MOBILEVITV2_CACHE"
EXECUTORCH_BATCH = 1
# The version of how each format is written, part of the cache key: a changed recipe writes new files
# instead of reusing files written the old way (executorch 2: the GroupNorms in two passes; openvino 2: the
# plain GroupNorms again, after a revision that wrote them in two passes there too; onnx 2, openvino 3,
# executorch 3: BatchNorm folded and consecutive linear maps composed, onnx_export.exportable_copy).
EXPORT_RECIPES = {"onnx": 2, "openvino": 3, "executorch": 3}

_TORCH_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class MissingRuntimeError(ImportError):
    """A runtime (or the compression tool) is not installed; the message names the pip extra."""


def require(name: str):
    """The module for runtime or tool ``name`` ("onnxruntime", "openvino", "executorch", "nncf"), or a
    one-line :class:`MissingRuntimeError` naming the extra that installs it. ``torch`` and ``inductor`` are
    always there."""
    if name in ("torch", "inductor"):
        return torch
    if name not in MODULES:
        raise ValueError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}")
    try:
        with _quiet():
            return importlib.import_module(MODULES[name])
    except ImportError as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MissingRuntimeError(
            f'{DESCRIPTIONS[name]} is not installed ({reason}); pip install "mobilevitv2[{EXTRAS[name]}]"'
        ) from None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _check_format(format: str, compression: str | None) -> None:
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    if compression is not None and compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; choose from {', '.join(COMPRESSIONS)}")
    if compression is not None and format != "openvino":
        raise ValueError(f"weight compression ({compression}) is available for the openvino format only, not {format}")


# Loggers that talk at import or export time: nncf's INFO tables, torch's pytree notes when torchao loads.
_CHATTY_LOGGERS = ("nncf", "torch.utils._pytree", "torch.utils.cpp_extension", "torch._export", "torch.export")


@contextlib.contextmanager
def _quiet():
    """Export-time warnings (tracing, deprecations) and the tools' INFO logs kept off stderr."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# ----- export ------------------------------------------------------------------------------------------------
def exported_files(path: str | os.PathLike, format: str) -> list[str]:
    """The files an export to ``path`` writes: the IR's ``.bin`` beside its ``.xml`` for OpenVINO."""
    path = os.fspath(path)
    return [path, os.path.splitext(path)[0] + ".bin"] if format == "openvino" else [path]


def export(
    model: torch.nn.Module,
    path: str | os.PathLike,
    format: str,
    height: int,
    width: int,
    *,
    compression: str | None = None,
    opset: int = OPSET,
) -> list[str]:
    """Write ``model`` (its float32 reference path, for ``height`` x ``width`` inputs) to ``path`` in
    ``format``; returns the files written, ``path`` first.

    * ``"onnx"``: :func:`mobilevitv2.onnx_export.export_onnx` (opset ``opset``, dynamic batch).
    * ``"openvino"``: :func:`~mobilevitv2.onnx_export.exportable_copy` converted by ``openvino.convert_model``
      (dynamic batch) and saved as IR (``path`` .xml and its .bin) with fp32 weights, or
      ``compression="fp16"`` / ``"int8"`` compressed weights.
    * ``"executorch"``: ``torch.export`` of :func:`~mobilevitv2.onnx_export.exportable_copy` for a batch of
      1, its GroupNorms computed in two passes (:class:`~mobilevitv2.onnx_export.TwoPassGroupNorm`), lowered
      with the XNNPACK partitioner (fp32), written as a ``.pte`` program.
    """
    _check_format(format, compression)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if format == "onnx":
        export_onnx(model, path, height=height, width=width, opset=opset)
    elif format == "openvino":
        _export_openvino(model, path, height, width, compression)
    else:
        _export_executorch(model, path, height, width)
    return exported_files(path, format)


def _export_openvino(model, path: str, height: int, width: int, compression: str | None) -> None:
    if not path.endswith(".xml"):
        raise ValueError(f"{path}: an OpenVINO IR file name ends with .xml (the weights go beside it as .bin)")
    ov = require("openvino")
    nncf = require("nncf") if compression == "int8" else None
    wrapper = _TensorOutputs(exportable_copy(model, height, width)).eval()
    channels = model.config.num_channels
    with _quiet(), torch.no_grad():
        # From the module itself (no ONNX file in between), the batch left dynamic.
        ov_model = ov.convert_model(wrapper, example_input=torch.zeros(1, channels, height, width), input=[(-1, channels, height, width)])
        if nncf is not None:
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # its progress bar
                ov_model = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        # save_model stores fp16 weights unless told otherwise: fp32 is the default here.
        ov.save_model(ov_model, path, compress_to_fp16=compression == "fp16")


def _export_executorch(model, path: str, height: int, width: int) -> None:
    require("executorch")
    # The norms in two passes: ExecuTorch's own group_norm loses precision (onnx_export.TwoPassGroupNorm).
    wrapper = _TensorOutputs(with_two_pass_group_norms(exportable_copy(model, height, width))).eval()
    example = torch.zeros(EXECUTORCH_BATCH, model.config.num_channels, height, width)
    with open(path, "wb") as f:
        f.write(executorch_program(wrapper, example))


def executorch_program(module: torch.nn.Module, example: torch.Tensor) -> bytes:
    """``module`` exported by ``torch.export`` for ``example``'s shape and lowered with the XNNPACK
    partitioner: the bytes of a ``.pte`` program."""
    require("executorch")
    with _quiet():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

    with _quiet(), torch.no_grad():
        program = torch.export.export(module, (example,))
        with _dynamo_reset_skipped():
            return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


@contextlib.contextmanager
def _dynamo_reset_skipped():
    """``torch._dynamo.reset`` made a no-op for the duration. XNNPACK's lowering builds the patterns it
    matches (bilinear upsampling, SDPA) on first use by strict ``torch.export``, which starts with that
    reset: it would drop every graph compiled in the process so far (``torch.compile``,
    :class:`~mobilevitv2.cpu_inference.CPUInference`), each compiled again on its next call, tens of seconds
    apiece on a CPU. The patterns are small modules of their own, traced with no cached code to clear."""
    import torch._dynamo

    with unittest.mock.patch.object(torch._dynamo, "reset", lambda: None):
        yield


# ----- opening an exported file ------------------------------------------------------------------------------
class RuntimeModel:
    """An exported model loaded in a runtime: ``forward(pixel_values) -> logits`` (a float32 CPU tensor).

    ``pixel_values`` is (batch, channels, height, width), any float dtype and device, and must have the
    exported spatial size. Attributes: ``runtime``, ``path`` (None for torch), ``precision``, ``height``,
    ``width``, ``cached`` (True when :func:`load` reused a cached export), ``info`` (what the runtime reports,
    e.g. OpenVINO's ``inference_precision`` as compiled)."""

    def __init__(self, runtime: str, run: Callable[[torch.Tensor], torch.Tensor], *, path: str | None, precision: str,
                 height: int | None, width: int | None, channels: int | None, info: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.runtime, self.path, self.precision = runtime, path, precision
        self.height, self.width, self.channels = height, width, channels
        self.cached = False
        self.info = dict(info or {})
        self._run = run

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be a 4-D tensor (batch, channels, height, width), got {getattr(pixel_values, 'shape', type(pixel_values))}")
        _, channels, height, width = pixel_values.shape
        if self.height is not None and (height, width) != (self.height, self.width):
            raise ValueError(
                f"the {self.runtime} model was {'compiled' if self.path is None else 'exported'} for {self.height}x{self.width} "
                f"inputs, got {height}x{width}; "
                "load one per input size"
            )
        if self.channels is not None and channels != self.channels:
            raise ValueError(f"the {self.runtime} model takes {self.channels} channels, got {channels}")
        return self._run(pixel_values)

    def __repr__(self) -> str:
        where = f", path={self.path!r}" if self.path else ""
        return f"RuntimeModel(runtime={self.runtime!r}, precision={self.precision!r}, size={self.height}x{self.width}{where})"


def _numpy_input(pixel_values: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(pixel_values.detach().to("cpu", torch.float32).numpy())


def _check_precision(runtime: str, precision: str) -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS[runtime]:
        raise ValueError(f"{runtime} runs in {' or '.join(PRECISIONS[runtime])}, not {precision!r}")


def open_exported(runtime: str, path: str | os.PathLike, *, precision: str = "fp32", height: int | None = None,
                  width: int | None = None, channels: int | None = None) -> RuntimeModel:  # fmt: skip
    """The exported file at ``path`` loaded in ``runtime`` ("onnxruntime", "openvino", "executorch") on the
    CPU, computing in ``precision``. ``height``/``width``/``channels``, when given, are checked on each call."""
    _check_precision(runtime, precision)
    if runtime in ("torch", "inductor"):
        raise ValueError(f"the {runtime} runtime runs the model itself; use load({runtime!r}, model, ...)")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no exported model at {path}")
    opener = {"onnxruntime": _open_onnxruntime, "openvino": _open_openvino, "executorch": _open_executorch}[runtime]
    run, info = opener(path, precision)
    return RuntimeModel(runtime, run, path=path, precision=precision, height=height, width=width, channels=channels, info=info)


def _open_onnxruntime(path: str, precision: str):
    ort = require("onnxruntime")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: _numpy_input(pixel_values)})[0])

    return run, {"providers": session.get_providers()}


def _open_openvino(path: str, precision: str):
    ov = require("openvino")
    import openvino.properties.hint as hints

    core = ov.Core()
    wanted = {"fp32": ov.Type.f32, "bf16": ov.Type.bf16}[precision]
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise ValueError("this CPU has no bf16 support in OpenVINO; use precision='fp32'")
    # Set always: on a CPU with bf16, OpenVINO's default inference precision is bf16.
    compiled = core.compile_model(path, "CPU", {hints.inference_precision: wanted})
    got = compiled.get_property(hints.inference_precision)
    if got != wanted:
        raise RuntimeError(f"OpenVINO compiled {path} with inference precision {got}, not {wanted}")
    output = compiled.output(0)

    def run(pixel_values: torch.Tensor) -> torch.Tensor:
        # A request per call: one request reused across batch sizes was followed by crashes of the process
        # later on (seen after batch 1 then batch 8 through one request); a new one costs no measurable time.
        request = compiled.create_infer_request()
        result = request.infer({0: _numpy_input(pixel_values)})
        return torch.from_numpy(np.array(result[output], dtype=np.float32, copy=True))

    return run, {"device": "CPU", "inference_precision": str(got)}


def _open_executorch(path: str, precision: str):
    require("executorch")
    with _quiet():  # the runtime's Python API warns that it is experimental
        from executorch.runtime import Runtime

        program = Runtime.get().load_program(path)
        method = program.load_method("forward")

    def run(pixel_values: torch.Tensor, program=program) -> torch.Tensor:
        # ``program`` is held here for as long as ``method`` is used: the method reads the program's memory,
        # and a program freed while its method runs corrupts the process (a crash at some later point).
        x = pixel_values.detach().to("cpu", torch.float32)
        # Exported for a batch of 1: one image at a time.
        outputs = [method.execute([x[i : i + 1].contiguous()])[0].clone() for i in range(x.shape[0])]
        return torch.cat(outputs)

    return run, {"batch": EXECUTORCH_BATCH}


def _open_torch(model: torch.nn.Module, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    dtype = next(model.parameters()).dtype
    if _TORCH_DTYPES.get(dtype) != precision:
        raise ValueError(f"the torch runtime runs the model as it is ({dtype}), not in {precision}; convert the model first")
    device = next(model.parameters()).device

    def run(pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = model(pixel_values.to(device, dtype)).logits
        return logits.float().cpu()

    return run


def _open_inductor(model: torch.nn.Module, precision: str, cache_dir: str | os.PathLike | None) -> Callable[[torch.Tensor], torch.Tensor]:
    from mobilevitv2.compiled_graphs import GRAPHS_FOLDER
    from mobilevitv2.cpu_inference import CPUInference

    graphs = os.path.join(os.fspath(cache_dir), GRAPHS_FOLDER) if cache_dir is not None else None
    compiled = CPUInference(model, precision=precision, cache_dir=graphs)  # checks the model's type and device
    return lambda pixel_values: compiled(pixel_values.detach().to("cpu", torch.float32))


# ----- the cache ---------------------------------------------------------------------------------------------
def default_cache_dir() -> str:
    """``$MOBILEVITV2_CACHE``, else ``~/.cache/mobilevitv2/exports``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "mobilevitv2", "exports")


def _runtime_versions(format: str, compression: str | None) -> dict[str, str | None]:
    distributions = {"onnx": ["onnx"], "openvino": ["openvino"], "executorch": ["executorch"]}[format]
    if compression == "int8":
        distributions.append("nncf")
    return {name: _version(name) for name in distributions}


def cache_key(model: torch.nn.Module, height: int, width: int, format: str, compression: str | None = None) -> str:
    """A sha256 (hex) of everything the exported file depends on: the weights (every state_dict tensor's
    name, dtype, shape and bytes), the config, the model class, the input size, the format, its recipe
    version and the compression, and the versions of torch, this package and the exporting/running packages."""
    from mobilevitv2 import __version__

    digest = hashlib.sha256()
    meta = {
        "class": type(model).__name__,
        "config": model.config.to_dict(),
        "height": int(height),
        "width": int(width),
        "format": format,
        "compression": compression,
        "opset": OPSET if format == "onnx" else None,
        "executorch_batch": EXECUTORCH_BATCH if format == "executorch" else None,
        "recipe": EXPORT_RECIPES[format],
        "torch": torch.__version__,
        "mobilevitv2": __version__,
        "runtime": _runtime_versions(format, compression),
    }
    digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    hash_weights(digest, model)
    return digest.hexdigest()


def hash_weights(digest, module: torch.nn.Module) -> None:
    """Feed every state_dict tensor's name, dtype, shape and bytes of ``module`` to ``digest`` (a hashlib
    object)."""
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.view(torch.uint8).numpy())


def cached_export(
    model: torch.nn.Module,
    format: str,
    height: int,
    width: int,
    *,
    compression: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[str, bool]:
    """(path of the exported file, whether it was already in the cache). A new export is written to a
    temporary folder inside the cache and renamed into place, so a half-written export is never used and
    processes exporting the same model at once do not collide. The format's folder is kept under the cache
    limit (:mod:`mobilevitv2.cache_limit`): a reused entry is marked used, and after a new one is written
    the entries used longest ago go."""
    _check_format(format, compression)
    limit = cache_limit.limit_bytes()  # a bad $MOBILEVITV2_CACHE_LIMIT_GB fails before any work
    root = os.path.join(os.fspath(cache_dir) if cache_dir is not None else default_cache_dir(), format)
    key = cache_key(model, height, width, format, compression)
    entry = os.path.join(root, f"{type(model).__name__}-{height}x{width}-{compression or 'fp32'}-{key[:24]}")
    path = os.path.join(entry, "model" + SUFFIXES[format])
    if all(os.path.isfile(f) for f in exported_files(path, format)):
        cache_limit.mark_used(entry)
        return path, True
    if os.path.isdir(entry):  # an entry missing a file (removed by hand): made again
        shutil.rmtree(entry, ignore_errors=True)
    os.makedirs(root, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=".partial-", dir=root)
    try:
        export(model, os.path.join(partial, "model" + SUFFIXES[format]), format, height, width, compression=compression)
        with open(os.path.join(partial, "key.json"), "w", encoding="utf-8") as f:
            json.dump({"sha256": key, "format": format, "height": height, "width": width, "compression": compression}, f)
        try:
            os.rename(partial, entry)
        except OSError:  # another process finished the same export first
            if not os.path.isfile(path):
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    cache_limit.prune(root, keep=entry, limit=limit)
    return path, False


# ----- load --------------------------------------------------------------------------------------------------
def load(
    runtime: str,
    model: torch.nn.Module,
    height: int,
    width: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    precision: str = "fp32",
    compression: str | None = None,
) -> RuntimeModel:
    """``forward(pixel_values) -> logits`` for a classification or segmentation ``model`` in ``runtime``
    (one of :data:`RUNTIMES`), for ``height`` x ``width`` inputs: exported on the first load and reused
    from the cache (``cache_dir``, default :func:`default_cache_dir`) after. ``precision``: what the runtime
    computes in (:data:`PRECISIONS`; fp32 everywhere by default); ``compression``: OpenVINO weight
    compression, "fp16" or "int8". ``"torch"`` runs ``model`` itself (no export), in its own dtype;
    ``"inductor"`` compiles it for the CPU (no export; the model must be on the CPU; its compiled graphs are
    kept in the cache too, :mod:`mobilevitv2.compiled_graphs`)."""
    _check_precision(runtime, precision)
    if not hasattr(model, "config") or type(model).__name__ not in (
        "MobileViTV2ForImageClassification", "MobileViTV2ForSemanticSegmentation",
    ):  # fmt: skip
        raise TypeError(f"load needs a classification or segmentation model (logits), got {type(model).__name__}")
    channels = model.config.num_channels
    if runtime == "torch":
        if compression is not None:
            raise ValueError("the torch runtime has no weight compression")
        return RuntimeModel("torch", _open_torch(model, precision), path=None, precision=precision, height=None,
                            width=None, channels=channels)  # fmt: skip
    if runtime == "inductor":
        if compression is not None:
            raise ValueError("the inductor runtime has no weight compression")
        return RuntimeModel("inductor", _open_inductor(model, precision, cache_dir), path=None, precision=precision,
                            height=height, width=width, channels=channels)  # fmt: skip
    require(runtime)  # before exporting, so a missing runtime costs nothing
    path, cached = cached_export(model, FORMAT_OF_RUNTIME[runtime], height, width, compression=compression, cache_dir=cache_dir)
    loaded = open_exported(runtime, path, precision=precision, height=height, width=width, channels=channels)
    loaded.cached = cached
    return loaded


class PerInputSize:
    """``forward(pixel_values) -> logits`` that loads ``runtime`` for each new input size it meets (through
    :func:`load` and its cache) and keeps each loaded model: what :mod:`mobilevitv2.inference` uses, where
    segmentation inputs have the size of each resized image. Checks that the runtime is installed at once."""

    def __init__(self, runtime: str, model: torch.nn.Module, **load_options: Any) -> None:
        _check_precision(runtime, load_options.get("precision", "fp32"))
        require(runtime)
        if runtime == "inductor" and any(p.device.type != "cpu" for p in model.parameters()):
            raise ValueError("the inductor runtime compiles for the CPU and needs the model there; call model.cpu() first")
        self.runtime, self.model, self.load_options = runtime, model, load_options
        self.loaded: dict[tuple[int, int], RuntimeModel] = {}

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = tuple(pixel_values.shape[-2:])
        if size not in self.loaded:
            self.loaded[size] = load(self.runtime, self.model, *size, **self.load_options)
        return self.loaded[size](pixel_values)
