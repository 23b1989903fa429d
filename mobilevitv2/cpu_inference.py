"""The fastest PyTorch inference on a CPU: the model's inference form (:mod:`mobilevitv2.inference_form`,
BatchNorm folded) compiled by Inductor with freezing, in channels-last, fp32 by default and bf16 only when
asked for.

Freezing makes the weights constants of the graph, so Inductor pre-packs the convolution and linear weights
for oneDNN once instead of on every call (about 20% of the time at batch 1); channels-last is the layout
oneDNN's convolutions run fastest in. The compiled graphs are called from C++ (Inductor's ``cpp_wrapper``),
which saves the Python overhead of their ~150 calls per image.

The model runs as two graphs. The stem and stages 1-3 run a few images at a time (``micro_batch``): in fp32
one (a 256x256 image's largest activation is 8 MiB; 4 images' reach glibc's 32 MiB ceiling for reusing
freed memory, and every call then maps and faults in fresh pages), in bf16 four (bf16 with AMX spends its
time around the matmuls, not in them, and four images share that time; 16 MiB). Stages 4-5 and the head run on up to 8
images at once: at 16x16 and 8x8 their 1x1 convolutions are small matmuls per image, and batching them
took batch 8 from 292 to 262 ms in fp32 and from 167 to 141 ms in bf16 (medians of 20, timed alternately
in one process), batch 1 unchanged. bf16 runs the matmuls and convolutions in bf16 under autocast
(accumulating in fp32; the activations between them, norms included, are bf16 tensors; the attention's
softmax and weighted sum, its key projections and the classifier stay fp32) and, by default, the blocks'
attention on the image without unfold/fold: faster on CPUs with native bf16 (AVX-512 BF16,
AMX), with a max abs logit error of 3-4e-2 at logit std 1 (width 1.0), so it is an explicit choice, never a
silent one. The
compiled copy owns its weights: later changes to the model do not reach it. The compiled graphs are kept on
disk as AOTInductor packages (:mod:`mobilevitv2.compiled_graphs`), so a later process loads them instead of
compiling again.
"""

from __future__ import annotations

import os
import threading
import types

import torch
from torch import nn
from torch._inductor import config as inductor_config

from mobilevitv2.compiled_graphs import CachedGraph, default_cache_dir, weights_digest
from mobilevitv2.inference_form import inference_form
from mobilevitv2.models import MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation

PRECISIONS = ("fp32", "bf16")
# Images per call of the stem and stages 1-3, by precision. Measured at batch 8, width 1.0, 256x256, on a
# 2-core Xeon with AMX (docs/design.md, "The CPU inference path"): bf16 4 images 0.90x of one at a time
# (stock allocator; 0.77x with freed memory kept); fp32 one image, as fast as 2, 4 or 8 with freed memory
# kept and 1.3x faster than 4 with the stock allocator (4 images' 32 MiB activations are mapped afresh).
DEFAULT_MICRO_BATCH = {"fp32": 1, "bf16": 4}
# Whether the blocks' attention runs on the image (no unfold/fold), by precision. Measured on the same Xeon,
# alternating in one process: bf16 batch 1 0.94-0.96x of the patch layout (118 and 128 of 150 rounds
# faster), batch 8 the same, relative logit error 1.056e-2 against 1.051e-2 (32 images); fp32 batch 1
# 1.03x, so fp32 keeps the patch layout.
DEFAULT_IMAGE_LAYOUT = {"fp32": False, "bf16": True}
# freezing: weights as constants, convolutions pre-packed; cpp_wrapper: the compiled graph's calls made from
# C++ instead of Python (about 150 calls per image: 15% at batch 1 in bf16, measured);
# cpp_wrapper_build_separate: the generated kernels compiled apart from the C++ entry point, which is built
# at a low optimisation level (3-4 s less compile per graph, no slower to run, measured).
# (PyTorch releases without an option go without it.)
INDUCTOR_OPTIONS = {
    key: value
    for key, value in {"freezing": True, "cpp_wrapper": True, "cpp_wrapper_build_separate": True}.items()
    if hasattr(inductor_config, key)
}
_CONFIG_LOCK = threading.Lock()  # Inductor's config is process-wide; see CPUInference.__call__


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX flags in /proc/cpuinfo); elsewhere bf16
    is emulated and slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# Stages 1-3 (strides 2-8) run ``micro_batch`` images a call (DEFAULT_MICRO_BATCH: their activations are
# large, see the module docstring), stages 4-5 and the head (strides 16-32, at 256 px feature maps of
# 16x16 and 8x8) on up to ``late_batch`` images at once: their matmuls are small per image and gain from
# the batch.
LATE_STAGES_FROM = 3


class _EarlyStages(nn.Module):
    """The stem and stages 1-3 of an inference form, under bf16 autocast when ``dtype`` is bf16."""

    def __init__(self, form: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.backbone, self.dtype = form.mobilevitv2, dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            x = self.backbone.conv_stem(pixel_values)
            for stage in self.backbone.encoder.layer[:LATE_STAGES_FROM]:
                x = stage(x)
            return x


class _LateStages(nn.Module):
    """Stages 4-5 and the model's head: the classifier on the pooled features, or the segmentation head;
    float32 logits."""

    def __init__(self, form: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.form, self.dtype = form, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            for stage in self.form.mobilevitv2.encoder.layer[LATE_STAGES_FROM:]:
                x = stage(x)
            if isinstance(self.form, MobileViTV2ForSemanticSegmentation):
                return self.form.segmentation_head(x).float()
        # The classifier in float32: one vector per image, and the logits no further from float32's.
        return self.form.classifier(torch.mean(x.float(), dim=[-2, -1]))


def compile_with_own_cache(module: nn.Module):
    """``torch.compile`` of ``module`` (static shapes, one graph) through a function with its own code object.
    Dynamo keeps compiled graphs, and counts recompiles against its limit (8), per code object; compiling
    modules directly would share their class's ``forward`` between every CPUInference of the process, so
    a few models and batch sizes would exhaust the limit (a hard error under ``fullgraph``). Here each
    compiled module has its own count, and its graphs go with it."""

    def call(x: torch.Tensor) -> torch.Tensor:
        return module(x)

    own = types.FunctionType(call.__code__.replace(), call.__globals__, call.__name__, None, call.__closure__)
    # No guards on the module's attributes: Dynamo would check every parameter and submodule of the model
    # on each call (about 0.4 ms a graph, 3-4% of batch 1), and the module is private to its CPUInference
    # and never changed after the compile. The input's guards (shape, dtype, layout) stay.
    # (PyTorch releases without guard filters keep all guards.)
    skip_module_guards = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
    options = {"guard_filter_fn": skip_module_guards} if skip_module_guards is not None else None
    return torch.compile(own, fullgraph=True, dynamic=False, options=options)


def power_of_two_chunks(n: int, largest: int) -> list[int]:
    """``n`` as chunks of ``largest`` then descending powers of two (13, 8 -> [8, 4, 1]): a compiled shape
    for each chunk size, at most log2(largest) + 1 of them, and no padding."""
    chunks = [largest] * (n // largest)
    rest, size = n % largest, 1 << max(largest.bit_length() - 1, 0)
    while rest:
        if size <= rest:
            chunks.append(size)
            rest -= size
        size //= 2
    return chunks


class Logits(nn.Module):
    """A classification or segmentation model (ours or transformers') with its logits as a plain tensor
    output, what compilers and converters take."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values).logits


class CPUInference:
    """``logits = CPUInference(model)(pixel_values)`` for a MobileViTV2 classification or segmentation
    model: compiled on the first call for each chunk shape (tens of seconds), fast after that.
    ``precision``: "fp32" (equal to the model to about 1e-5) or "bf16".

    A batch runs in groups of at most ``late_batch`` images (so memory stays bounded whatever the batch):
    each group's stem and stages 1-3 run ``micro_batch`` images at a time (default
    :data:`DEFAULT_MICRO_BATCH` for the precision: 1 in fp32, 4 in bf16), and its stages 4-5 and head run
    on the whole group (their matmuls are small per image and gain from the batch), a group's size taken in
    powers of two so that few shapes are compiled (:func:`power_of_two_chunks`). Measured on a 2-core CPU by
    ``mobilevitv2 bench --suite cpu``; docs/design.md, "The CPU inference path".
    ``image_layout``: run the blocks' attention on the image, without unfold/fold
    (:mod:`mobilevitv2.inference_form`; default :data:`DEFAULT_IMAGE_LAYOUT` for the precision: in bf16, not
    in fp32); BatchNorm is folded either way.

    The compiled graphs are kept on disk (:mod:`mobilevitv2.compiled_graphs`, in ``cache_dir``, default
    :func:`mobilevitv2.compiled_graphs.default_cache_dir`): a later process with the same weights loads them
    in a fraction of a second. ``disk_cache=False`` compiles in the process only (``torch.compile``).
    """

    def __init__(
        self,
        model: nn.Module,
        precision: str = "fp32",
        channels_last: bool = True,
        *,
        micro_batch: int | None = None,
        late_batch: int = 8,
        image_layout: bool | None = None,
        disk_cache: bool = True,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if micro_batch is None:
            micro_batch = DEFAULT_MICRO_BATCH[precision]
        if image_layout is None:
            image_layout = DEFAULT_IMAGE_LAYOUT[precision]
        if not isinstance(image_layout, bool):
            raise ValueError(f"image_layout must be True, False or None (the precision's default), got {image_layout!r}")
        for name, value in (("micro_batch", micro_batch), ("late_batch", late_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(model, (MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation)):
            raise TypeError(
                f"CPUInference needs this package's classification or segmentation model, got {type(model).__name__} "
                "(a transformers checkpoint loads with MobileViTV2ForImageClassification.from_pretrained)"
            )
        if any(p.device.type != "cpu" for p in model.parameters()):
            raise ValueError("CPUInference needs a model on the CPU; call model.cpu() first")
        form = inference_form(model, image_layout=image_layout)
        self.channels_last, self.micro_batch, self.late_batch, self.precision = channels_last, micro_batch, late_batch, precision
        self.image_layout = image_layout
        if channels_last:
            form = form.to(memory_format=torch.channels_last)
        self.backbone = form.mobilevitv2  # its input checks run before each call
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        # Static shapes: each input shape gets its own graph (PyTorch would otherwise compile the second shape
        # it sees as one symbolic-shape graph for every later shape).
        early, late = _EarlyStages(form, dtype), _LateStages(form, dtype)
        if disk_cache:
            identity = {
                "weights": weights_digest(form),  # the folded weights: this copy's own, fixed from here on
                "class": type(model).__name__,
                "config": model.config.to_dict(),
                "implementation": model.implementation,
                "precision": precision,
                "channels_last": channels_last,
                "image_layout": image_layout,
            }
            root = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
            self.early = CachedGraph(early, "early", identity, root, compile_with_own_cache)
            self.late = CachedGraph(late, "late", identity, root, compile_with_own_cache)
        else:
            self.early, self.late = compile_with_own_cache(early), compile_with_own_cache(late)

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.device.type != "cpu":
            raise ValueError(f"CPUInference runs on the CPU; pixel_values are on {pixel_values.device}")
        self.backbone._check_pixel_values(pixel_values)
        if pixel_values.shape[0] == 0:
            raise ValueError("pixel_values is an empty batch")
        self.backbone._check_size(pixel_values.shape[2], pixel_values.shape[3])
        x = pixel_values.float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # Set around each call (a compile happens on the first call of each input shape), not through
        # torch.compile's ``options``, which Dynamo's freezing check does not see. The config is the
        # process's: calls hold a lock, so that two threads never compile under each other's settings.
        with _CONFIG_LOCK, torch.no_grad(), inductor_config.patch(INDUCTOR_OPTIONS):
            logits = [self._group(group) for group in torch.split(x, power_of_two_chunks(len(x), self.late_batch))]
        return logits[0] if len(logits) == 1 else torch.cat(logits)

    def _group(self, images: torch.Tensor) -> torch.Tensor:
        features = [self.early(chunk) for chunk in torch.split(images, self.micro_batch)]
        return self.late(features[0] if len(features) == 1 else torch.cat(features))
