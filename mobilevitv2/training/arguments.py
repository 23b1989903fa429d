"""What a training run is: every setting, with the defaults of the ml-cvnets recipe, as one dataclass that the
command line fills and a Python caller builds directly."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

TASKS = ("classification", "segmentation")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "sgd")
# Settings that may change when a run is resumed (how it runs, not what it computes).
RESUMABLE_CHANGES = {"resume", "overwrite", "stop_after_epoch", "workers", "progress"}


@dataclass
class TrainingArguments:
    data: str
    out: str
    task: str | None = None  # default: from the data layout
    model: str | None = None  # a checkpoint to fine-tune
    width: float | None = None  # or a width multiplier to train from scratch
    image_size: int | None = None  # default: the checkpoint's crop size, else 256 (512 for segmentation)
    output_stride: int = 16
    num_labels: int | None = None  # segmentation: the class count, or
    labels_file: str | None = None  # a text file with one class name per line
    epochs: int = 10
    batch_size: int = 64  # the global batch, split over the processes
    optimizer: str = "adamw"  # or "sgd" (momentum 0.9, Nesterov)
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float | None = None  # default 0.1 for classification, 0 for segmentation
    clip_grad: float = 1.0  # max gradient norm; 0 disables
    ema_decay: float = 0.9995  # 0 disables the weight average
    precision: str = "auto"  # auto: bf16 (fp16 without bf16) on GPUs, fp32 on CPUs
    channels_last: bool | None = None  # default: on GPUs
    compile: bool = False
    implementation: str = "reference"  # "fused": the fused separable attention (it has a backward)
    attn_implementation: str | None = None  # experts: the attention backend alone ("triton", "cuda", ...)
    sync_batchnorm: bool = True  # BatchNorm statistics over the global batch when there are several processes
    min_scale: float = 0.08  # classification: the smallest random-resized-crop area
    scale_range: tuple[float, float] = (0.5, 2.0)  # segmentation: the random rescale range
    workers: int = 4
    seed: int = 0
    device: str | None = None  # default: cuda when available
    strict: bool = False  # an unreadable image is an error instead of a skip
    resume: bool = False
    overwrite: bool = False
    stop_after_epoch: int | None = None  # stop (resumably) after this epoch
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.implementation not in ("reference", "fused"):
            raise ValueError(f"implementation must be 'reference' or 'fused', got {self.implementation!r}")
        if self.model is not None and self.width is not None:
            raise ValueError("give --model (fine-tune a checkpoint) or --width (train from scratch), not both")
        if self.model is None and self.width is None:
            raise ValueError("give --model CHECKPOINT to fine-tune or --width W to train from scratch")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in the output folder, --overwrite replaces it: pick one")
        self.scale_range = tuple(self.scale_range)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def differences(self, saved: dict) -> list[str]:
        """The settings that differ from a saved run's (those that change what is computed)."""
        current = self.to_dict()
        return [
            f"{key}: {saved.get(key)!r} -> {value!r}"
            for key, value in current.items()
            if key not in RESUMABLE_CHANGES and _normal(saved.get(key)) != _normal(value)
        ]


def _normal(value):
    return list(value) if isinstance(value, tuple) else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainingArguments.__dataclass_fields__
    parser.add_argument("data", metavar="DATA_DIR", help="DIR/{train,val}/<class>/* (classification) or DIR/{train,val}/{images,masks}/* (segmentation)")
    parser.add_argument("--out", required=True, help="output folder: the checkpoint, metrics.jsonl, metrics.png, training state")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a checkpoint to fine-tune (a new head when the label count differs)")
    source.add_argument("--width", type=float, help="train from scratch at this width multiplier (0.5 ... 2.0)")
    parser.add_argument("--task", choices=TASKS, help="default: from the data layout")
    parser.add_argument("--image-size", type=int, help="training crop (default: the checkpoint's, else 256; 512 for segmentation)")
    parser.add_argument("--output-stride", type=int, choices=[8, 16, 32], default=d["output_stride"].default, help="segmentation (default 16)")
    parser.add_argument("--num-labels", type=int, help="segmentation: the number of classes")
    parser.add_argument("--labels", dest="labels_file", help="segmentation: text file with one class name per line")
    parser.add_argument("--epochs", type=int, default=d["epochs"].default)
    parser.add_argument("--batch-size", type=int, default=d["batch_size"].default, help="global batch over all processes (default 64)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="adamw (default) or sgd (momentum 0.9, Nesterov)")
    parser.add_argument("--lr", type=float, default=d["lr"].default, help="peak learning rate (default 1e-3)")
    parser.add_argument("--min-lr-ratio", type=float, default=d["min_lr_ratio"].default)
    parser.add_argument("--weight-decay", type=float, default=d["weight_decay"].default)
    parser.add_argument("--warmup-epochs", type=float, default=d["warmup_epochs"].default)
    parser.add_argument("--label-smoothing", type=float, help="default 0.1 for classification, 0 for segmentation")
    parser.add_argument("--clip-grad", type=float, default=d["clip_grad"].default, help="max gradient norm (0: off)")
    parser.add_argument("--ema-decay", type=float, default=d["ema_decay"].default, help="weight average decay (0: off)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto: bf16 on GPUs (fp16 + scaler without bf16), fp32 on CPUs")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: on GPUs")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--implementation", choices=["reference", "fused"], default="reference",
                        help="fused: the fused separable-attention kernels (default: reference PyTorch)")
    parser.add_argument("--attn-implementation", choices=["auto", "reference", "triton", "cuda"],
                        help="the attention backend alone (for experts)")  # fmt: skip
    parser.add_argument("--sync-batchnorm", action=argparse.BooleanOptionalAction, default=True,
                        help="BatchNorm statistics over the global batch under torchrun (default: on)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=d["workers"].default, help="data-loader processes per rank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--strict", action="store_true", help="an unreadable image stops the run (default: skipped and counted)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    parser.add_argument("--overwrite", action="store_true", help="replace a different run in --out")
    parser.add_argument("--stop-after-epoch", type=int, help="stop after this epoch, resumable with --resume")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def from_namespace(args: argparse.Namespace) -> TrainingArguments:
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return TrainingArguments(**{k: v for k, v in vars(args).items() if k in names})
