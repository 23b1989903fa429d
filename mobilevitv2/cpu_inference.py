"""The fastest PyTorch inference on a CPU: the model's inference form (:mod:`mobilevitv2.inference_form`,
BatchNorm folded) compiled by Inductor with freezing, in channels-last, one image at a time, fp32 by default
and bf16 only when asked for.

Freezing makes the weights constants of the graph, so Inductor pre-packs the convolution and linear weights
for oneDNN once instead of on every call (about 20% of the time at batch 1); channels-last is the layout
oneDNN's convolutions run fastest in. The compiled graph is called from C++ (Inductor's ``cpp_wrapper``),
which saves the Python overhead of its ~150 calls per image. A batch runs as micro-batches (default one
image): a 256x256 image's largest activations are a few MB and stay in the caches from layer to layer, a
batch of 8's do not (width 1.0, fp32, 2 cores: 32 ms per image at batch 1, 46 ms per image as one batch
of 8). bf16 runs the matmuls and convolutions in bf16 under autocast (accumulating in fp32; norms and
softmax stay fp32): faster on CPUs with native bf16 (AVX-512 BF16, AMX), with a logit error of about 5e-2
at logit std 1, so it is an explicit choice, never a silent one. The compiled copy owns its weights: later changes to the model do not reach it.
"""

from __future__ import annotations

import threading

import torch
from torch import nn
from torch._inductor import config as inductor_config

from mobilevitv2.inference_form import inference_form

PRECISIONS = ("fp32", "bf16")
# freezing: weights as constants, convolutions pre-packed; cpp_wrapper: the compiled graph's calls made from
# C++ instead of Python (about 150 calls per image: 15% at batch 1 in bf16, measured).
INDUCTOR_OPTIONS = {"freezing": True, "cpp_wrapper": True}
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


class _Autocast(nn.Module):
    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=self.dtype):
            return self.model(pixel_values).logits.float()


class Logits(nn.Module):
    """A classification or segmentation model (ours or transformers') with its logits as a plain tensor
    output, what compilers and converters take."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values).logits


class CPUInference:
    """``logits = CPUInference(model)(pixel_values)``: compiled on the first call for each micro-batch shape
    (tens of seconds), fast after that. ``precision``: "fp32" (equal to the model to about 1e-5) or "bf16".

    ``micro_batch``: a batch runs in chunks of this many images (the last chunk may be smaller); on a CPU one
    image's activations stay in the caches from layer to layer, so chunks of 1 are faster per image than
    whole batches (``mobilevitv2 bench --suite cpu``), and one compiled shape serves every batch size.
    ``image_layout``: run the blocks' attention on the image, without unfold/fold
    (:mod:`mobilevitv2.inference_form`); BatchNorm is folded either way.
    """

    def __init__(
        self,
        model: nn.Module,
        precision: str = "fp32",
        channels_last: bool = True,
        *,
        micro_batch: int = 1,
        image_layout: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
            raise ValueError(f"micro_batch must be a positive int, got {micro_batch!r}")
        if any(p.device.type != "cpu" for p in model.parameters()):
            raise ValueError("CPUInference needs a model on the CPU; call model.cpu() first")
        form = inference_form(model, image_layout=image_layout)
        self.channels_last, self.micro_batch, self.precision = channels_last, micro_batch, precision
        if channels_last:
            form = form.to(memory_format=torch.channels_last)
        wrapped = _Autocast(form, torch.bfloat16) if precision == "bf16" else Logits(form)
        # dynamic=False: each input shape gets its own static graph (PyTorch would otherwise compile the
        # second shape it sees as one symbolic-shape graph for every later shape).
        self.compiled = torch.compile(wrapped, fullgraph=True, dynamic=False)

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.device.type != "cpu":
            raise ValueError(f"CPUInference runs on the CPU; pixel_values are on {pixel_values.device}")
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be (batch, channels, height, width), got shape {tuple(pixel_values.shape)}")
        if pixel_values.shape[0] == 0:
            raise ValueError("pixel_values is an empty batch")
        x = pixel_values.float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # Set around each call (a compile happens on the first call of each input shape), not through
        # torch.compile's ``options``, which Dynamo's freezing check does not see. The config is the
        # process's: calls hold a lock, so that two threads never compile under each other's settings.
        with _CONFIG_LOCK, torch.no_grad(), inductor_config.patch(INDUCTOR_OPTIONS):
            chunks = [self.compiled(chunk) for chunk in torch.split(x, self.micro_batch)]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)
