"""The ``mobilevitv2`` command: predict, segment, train, convert, export (export-onnx), cache, bench; its parser
and the commands other than predict and segment (:mod:`mobilevitv2.cli_predict`).

Every user error (a missing file, an unreadable image, a checkpoint that does not fit the command, an
unreachable Hub) ends in one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torch

from mobilevitv2 import cache_limit, cpu_memory, inference, runtimes
from mobilevitv2.cli_common import PROG, UsageError
from mobilevitv2.cli_predict import cmd_predict, cmd_segment
from mobilevitv2.compiled_graphs import GRAPHS_FOLDER
from mobilevitv2.config import MobileViTV2Config
from mobilevitv2.convert import convert_checkpoint
from mobilevitv2.inference import palette
from mobilevitv2.loading import CheckpointError, resolve_directory
from mobilevitv2.models import MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation
from mobilevitv2.onnx_export import OPSET, onnx_op_types
from mobilevitv2_kernels import BackendUnavailableError

__all__ = ["build_parser", "main", "palette"]


# ----- train -------------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    try:
        from mobilevitv2.training import arguments, train
    except ImportError as exc:
        raise UsageError(f'training needs the train extra ({exc}); pip install "mobilevitv2[train]"') from None
    if (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu":  # see mobilevitv2.cpu_memory
        cpu_memory.keep_freed_memory()
    try:
        train(arguments.from_namespace(args))
    except FloatingPointError as exc:
        raise UsageError(str(exc)) from None
    return 0


# ----- convert -----------------------------------------------------------------------------------------------
def cmd_convert(args: argparse.Namespace) -> int:
    labels = None
    if args.labels:
        with open(args.labels, encoding="utf-8") as f:
            labels = [line.strip() for line in f if line.strip()]
    atrous_rates = [int(r) for r in args.atrous_rates.split(",")]
    model = convert_checkpoint(
        args.src, args.out, args.source, task=args.task, width=args.width, num_labels=args.num_labels,
        labels=labels, output_stride=args.output_stride, atrous_rates=atrous_rates, semantics=args.semantics,
    )  # fmt: skip
    config = model.config
    print(
        f"wrote {args.out}: {type(model).__name__}, width {config.width_multiplier}, {config.num_labels} labels, "
        f"{len(model.state_dict())} tensors ({args.semantics} semantics); preprocessing: RGB, bicubic"
    )
    return 0


# ----- export (export-onnx) ---------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    directory = resolve_directory(args.model)
    config = MobileViTV2Config.from_pretrained(directory)
    segmentation = any("segmentation" in a.lower() for a in config.architectures or [])
    cls = MobileViTV2ForSemanticSegmentation if segmentation else MobileViTV2ForImageClassification
    model = cls.from_pretrained(directory, implementation="reference")
    fmt, compression = args.format, args.compression
    files = runtimes.export(model, args.out, fmt, args.height, args.width, compression=compression, opset=args.opset)
    shape = f"[{'batch' if fmt != 'executorch' else runtimes.EXECUTORCH_BATCH}, {config.num_channels}, {args.height}, {args.width}]"
    what = {
        "onnx": f"opset {args.opset}",
        "openvino": f"OpenVINO IR, {compression or 'fp32'} weights",
        "executorch": "ExecuTorch, XNNPACK delegate, fp32",
    }[fmt]
    line = f"wrote {' and '.join(files)} ({what}, input pixel_values {shape})"
    runtime = runtimes.RUNTIME_OF_FORMAT[fmt]
    try:
        forward = runtimes.open_exported(runtime, files[0])
    except runtimes.MissingRuntimeError:  # only onnxruntime can be missing here: the others exported the file
        print(line + f'; pip install "mobilevitv2[{runtimes.EXTRAS[runtime]}]" to check it with {runtime}', file=sys.stderr)
        return 0
    pixel_values = torch.rand(2, config.num_channels, args.height, args.width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(pixel_values).logits
    error = (forward(pixel_values) - expected).abs().max().item()
    if fmt == "onnx":
        try:
            line += f"; {len(onnx_op_types(files[0]))} op types"
        except ImportError:  # the op count needs the onnx package
            pass
    precision = " (f32 inference precision)" if fmt == "openvino" else ""
    print(f"{line}; {runtime}{precision} vs PyTorch fp32 max |diff| {error:.2e}")
    return 0


# ----- cache -------------------------------------------------------------------------------------------------
def cmd_cache(args: argparse.Namespace) -> int:
    root = runtimes.default_cache_dir()
    try:
        limit = cache_limit.limit_bytes()
        shown = f"each folder kept under {'no limit' if limit == float('inf') else f'{limit / 1e9:g} GB'}"
    except ValueError as exc:  # neither listing nor clearing needs the limit: say what is wrong and go on
        print(f"{PROG} cache: warning: {exc}; new entries will fail until it is fixed", file=sys.stderr)
        shown = "no valid limit"
    print(f"{root} ({shown}, ${cache_limit.LIMIT_ENV})")
    for name in (*runtimes.FORMATS, GRAPHS_FOLDER):
        folder = os.path.join(root, name)
        found = cache_limit.entries(folder)
        if args.clear:
            removed, failed = cache_limit.clear(folder)
            freed = sum(size for _, size, path in found if path in removed)
            failed_note = f", {len(failed)} could not be removed" if failed else ""
            print(f"  {name:<13} removed {len(removed)} entries ({freed / 1e6:.1f} MB){failed_note}")
        else:
            print(f"  {name:<13} {len(found):4d} entries {sum(size for _, size, _ in found) / 1e6:9.1f} MB")
    return 0


# ----- bench -------------------------------------------------------------------------------------------------
def cmd_bench(argv: Sequence[str]) -> int:
    try:
        from mobilevitv2.bench import command
    except ImportError as exc:
        raise UsageError(f"the benchmark is not available in this installation ({exc})") from None
    return int(command.main(list(argv)) or 0)


# ----- the parser --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="MobileViTV2: predict, segment, train, convert, export, cache, benchmark")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    preset = dict(choices=["fused", "reference"], default=None,
                  help="fused: every fused kernel that is faster on the device; reference: pure PyTorch "
                  "(default: fused attention, reference convs and transformer layers)")  # fmt: skip
    attn = dict(choices=["auto", "reference", "triton", "cuda", "eager"], default=None, help="attention/patching alone (for experts)")
    fused = dict(choices=["auto", "reference", "triton", "eager"], default=None)
    conv_help = "fused inverted residuals and local convs alone, inference only (for experts)"
    transformer_help = "fused transformer layers alone, inference only (for experts)"
    model_help = "a transformers-format checkpoint directory or a Hugging Face Hub id"

    workers_help = f"DataLoader processes that read and preprocess images (default {inference.default_workers()}: min(4, CPU cores))"
    progress_help = "a progress bar on stderr (default: when stderr is a terminal)"
    strict_help = "stop at the first unreadable image (default: skip it, count it and go on)"
    runtime_help = (
        "torch (default: the model itself, on the GPU when there is one); inductor: this package's CPU path, "
        "compiled on the first batch of each shape and size (tens of seconds each, then our fastest PyTorch path "
        "on a CPU: for many images); or an export run on the CPU: onnxruntime, openvino, executorch (exported once per "
        "preprocessed size, cached in $MOBILEVITV2_CACHE)"
    )
    precision_help = (
        "what inductor or openvino computes in: fp32 (default) or bf16 (faster on CPUs with native bf16, "
        "AVX-512 BF16 or AMX; logits off by about 5e-2 at logit std 1)"
    )

    p = sub.add_parser(
        "predict", help="top-k labels for images or folders of images with an image-classification checkpoint",
        description="Top-k labels for image files and the images in folders (sub-folders too). Under "
        "`torchrun --nproc-per-node N -m mobilevitv2 predict ...` the images are shared among the processes "
        "and the output is one file, in input order.",
    )  # fmt: skip
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--implementation", **preset)
    p.add_argument("--attn-implementation", **attn)
    p.add_argument("--conv-implementation", help=conv_help, **fused)
    p.add_argument("--transformer-implementation", help=transformer_help, **fused)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--runtime", choices=runtimes.RUNTIMES, default="torch", help=runtime_help)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help=precision_help)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (without --output)")
    p.add_argument("--output", metavar="FILE", help="write one record per image to FILE as the batches finish (.jsonl or .csv)")
    p.add_argument("--format", choices=inference.FORMATS, help="the --output format (default: from its extension)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=inference.default_workers(), help=workers_help)
    p.add_argument("--strict", action="store_true", help=strict_help)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help=progress_help)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "segment", help="full-size class masks (and colour overlays) with a segmentation checkpoint",
        description="IMAGE --out MASK.png: one mask file. Folders or several images with --out FOLDER: one "
        "mask per image, the same name as a .png, in the input folder's sub-folders.",
    )  # fmt: skip
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument(
        "--out", required=True,
        help="mask PNG for one image, or the folder for the masks; pixel values are class indices (a palette PNG up to 256 classes)",
    )  # fmt: skip
    p.add_argument("--overlay", metavar="FILE", help="with one image: also write it with the class colours blended over it")
    p.add_argument("--overlay-dir", metavar="FOLDER", help="with --out FOLDER: also write the overlays here, named as the masks")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours (default 0.5)")
    p.add_argument("--runtime", choices=runtimes.RUNTIMES, default="torch", help=runtime_help)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help=precision_help)
    p.add_argument("--implementation", **preset)
    p.add_argument("--attn-implementation", **attn)
    p.add_argument("--conv-implementation", help=conv_help, **fused)
    p.add_argument("--transformer-implementation", help=transformer_help, **fused)
    p.add_argument("--batch-size", type=int, default=32, help="images per batch; images of one preprocessed size share a forward pass (default 32)")
    p.add_argument("--workers", type=int, default=inference.default_workers(), help=workers_help)
    p.add_argument("--strict", action="store_true", help=strict_help)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help=progress_help)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("train", help="fine-tune or train a classifier or segmenter on folders of images (DDP under torchrun)")
    from mobilevitv2.training.arguments import add_arguments as add_training_arguments

    add_training_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("convert", help="a timm or ml-cvnets state dict -> a transformers-format directory")
    p.add_argument("--from", dest="source", required=True, choices=["timm", "ml-cvnets"])
    p.add_argument("src", metavar="SRC", help="state dict file (.pt, .pth, .bin, .safetensors)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--width", type=float, help="width multiplier (default: inferred from the stem)")
    p.add_argument("--task", choices=["classification", "segmentation"], help="default: inferred from the head")
    p.add_argument("--num-labels", type=int, help="expected number of classes (checked against the classifier)")
    p.add_argument("--labels", help="text file with one class name per line, in index order")
    p.add_argument("--output-stride", type=int, default=16, choices=[8, 16, 32], help="segmentation only (default 16)")
    p.add_argument("--atrous-rates", default="6,12,18", help="segmentation only (default 6,12,18)")
    p.add_argument(
        "--semantics", choices=["source", "transformers"], default="source",
        help="compute what the source code computes (default; dilated local conv at output stride 8/16, "
        "non-divisible maps resized) or what transformers computes with these weights",
    )  # fmt: skip
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "export", help="export for a CPU runtime: ONNX, OpenVINO IR or an ExecuTorch program (XNNPACK)",
        description="Writes the reference path for one input size and prints the exported model's largest "
        "logit difference from the PyTorch fp32 model on a random batch (and the ONNX op-type count).",
    )  # fmt: skip
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--format", required=True, choices=runtimes.FORMATS)
    p.add_argument("--out", required=True, help="output file: .onnx, .xml (its .bin beside it) or .pte")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument(
        "--compression", choices=runtimes.COMPRESSIONS,
        help="openvino only: fp16 or int8 (nncf, per-channel) weights, computed in fp32 (default: fp32 weights)",
    )  # fmt: skip
    p.add_argument("--opset", type=int, default=OPSET, help=f"onnx only: the ONNX opset (default {OPSET})")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("export-onnx", help="ONNX export of the reference path (opset 17, dynamic batch): export --format onnx")
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--opset", type=int, default=OPSET)
    p.set_defaults(func=cmd_export, format="onnx", compression=None)

    p = sub.add_parser(
        "cache", help="the cache of exports and compiled CPU graphs: what each folder holds, or --clear",
        description="The cache is $MOBILEVITV2_CACHE (default ~/.cache/mobilevitv2/exports); each folder is kept "
        f"under ${cache_limit.LIMIT_ENV} gigabytes (default {cache_limit.DEFAULT_LIMIT_GB:g}), the entries used "
        "longest ago removed first.",
    )  # fmt: skip
    p.add_argument("--clear", action="store_true", help="remove every export and compiled graph this package wrote there")
    p.set_defaults(func=cmd_cache)

    sub.add_parser("bench", help="benchmark the implementations (options: mobilevitv2 bench --help)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    try:
        if command == "bench":  # its own options, parsed by the benchmark
            return cmd_bench(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (UsageError, CheckpointError, BackendUnavailableError, OSError, ValueError, ImportError) as exc:
        # OSError: missing and unreadable files (PIL's UnidentifiedImageError is one).
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{PROG} {command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

