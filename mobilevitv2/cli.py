"""The ``mobilevitv2`` command: predict, segment, convert, export (export-onnx), bench.

Every user error (a missing file, an unreadable image, a checkpoint that does not fit the command, an
unreachable Hub) ends in one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from mobilevitv2 import distributed, inference, runtimes
from mobilevitv2.config import MobileViTV2Config
from mobilevitv2.convert import convert_checkpoint
from mobilevitv2.image_files import IMAGE_EXTENSIONS, ImageReadError
from mobilevitv2.image_processing import PREPROCESSOR_CONFIG_NAME, MobileViTV2ImageProcessor
from mobilevitv2.inference import palette
from mobilevitv2.loading import CheckpointError, resolve_directory
from mobilevitv2.models import MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation
from mobilevitv2.onnx_export import OPSET, onnx_op_types
from mobilevitv2_kernels import BackendUnavailableError

PROG = "mobilevitv2"
# Without a preprocessor_config.json: what the transformers checkpoints on the Hub ship (spec section 7.1).
DEFAULT_PREPROCESSING = {"classification": (288, 256), "segmentation": (544, 512)}
ARCHITECTURES = {"classification": "MobileViTV2ForImageClassification", "segmentation": "MobileViTV2ForSemanticSegmentation"}


class UsageError(Exception):
    """A problem with what the user asked for; reported as one line."""


# ----- shared helpers ----------------------------------------------------------------------------------------
def _open_image(path: str, header_only: bool = False):
    """The image at ``path`` (decoded, or only its header read to check it is an image)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no image file at {path}")
    try:
        image = Image.open(path)
        if header_only:
            image.close()
        else:
            image.load()
    except OSError as exc:
        raise UsageError(f"cannot read {path} as an image: {exc}") from None
    return image


def _load_model(model_id: str, task: str, args: argparse.Namespace, device: torch.device | str | None = None):
    """(model, directory) for ``task`` on ``device`` (default: the GPU when there is one), refusing a
    checkpoint made for the other task before loading it, with the implementation the command line names
    (``--implementation``, and the per-part options)."""
    directory = resolve_directory(model_id)
    config = MobileViTV2Config.from_pretrained(directory)
    if config.architectures and ARCHITECTURES[task].lower() not in [a.lower() for a in config.architectures]:
        command = "segment" if task == "segmentation" else "predict"
        raise UsageError(
            f"{model_id} is a {', '.join(config.architectures)} checkpoint; `{command}` needs a {ARCHITECTURES[task]} checkpoint"
        )
    cls = MobileViTV2ForSemanticSegmentation if task == "segmentation" else MobileViTV2ForImageClassification
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = cls.from_pretrained(
        directory,
        device=device,
        implementation=args.implementation,
        attn_implementation=args.attn_implementation,
        conv_implementation=args.conv_implementation,
        transformer_implementation=args.transformer_implementation,
    )
    return model, directory


def _processor(directory: str, task: str, quiet: bool = False):
    if os.path.isfile(os.path.join(directory, PREPROCESSOR_CONFIG_NAME)):
        return MobileViTV2ImageProcessor.from_pretrained(directory)
    shortest_edge, crop = DEFAULT_PREPROCESSING[task]
    steps = f"resize {shortest_edge}" + (f", crop {crop}" if task == "classification" else "")
    if not quiet:
        print(
            f"{PROG}: no {PREPROCESSOR_CONFIG_NAME} in the model directory; using the preprocessing of "
            f"transformers' MobileViTV2 checkpoints ({steps}, BGR)",
            file=sys.stderr,
        )
    return MobileViTV2ImageProcessor(size={"shortest_edge": shortest_edge}, crop_size=crop)


# ----- predict and segment: inputs, ranks ----------------------------------------------------------------------
def _list_inputs(inputs: Sequence[str], ctx: distributed.Context) -> list[tuple[str, str]]:
    """(path, name relative to its input folder) of every image the inputs stand for, listed on rank 0 and
    shared with the others. A file named on the command line must be an image (its header is read here,
    before the model loads); images inside folders are only decoded during the run."""

    def listing():
        for item in inputs:
            if not os.path.exists(item):
                raise FileNotFoundError(f"no image file or folder at {item}")
            if not os.path.isdir(item):
                _open_image(item, header_only=True)
        return inference.list_images(inputs)

    return _on_rank0(ctx, listing)


def _on_rank0(ctx: distributed.Context, work):
    """``work()`` on rank 0 alone, its result on every rank; its error is raised on rank 0 (which reports it)
    and ends the other ranks quietly with status 1."""
    if not ctx.distributed:
        return work()
    result, error = None, None
    if ctx.is_main:
        try:
            result = work()
        except Exception as exc:  # handed on below, after the other ranks know
            error = exc
    result, failed = distributed.broadcast_object(ctx, (result, error is not None))
    if error is not None:
        raise error
    if failed:
        raise SystemExit(1)
    return result


def _gather_outcome(ctx: distributed.Context, error: Exception | None, counts: dict[str, int]) -> dict[str, int]:
    """``counts`` summed over the ranks, once every rank has finished its shard. An error on any rank ends the
    command on all of them: rank 0 reports the first one in one line; another rank reports only an error of
    its own that is not an unreadable image (so a --strict failure is one line)."""
    outcomes = distributed.all_gather_object(ctx, (str(error) if error is not None else None, counts))
    if error is not None and (ctx.is_main or not isinstance(error, ImageReadError)):
        raise error
    messages = [message for message, _ in outcomes if message is not None]
    if messages:
        if ctx.is_main:
            raise UsageError(messages[0])
        raise SystemExit(1)
    return {key: sum(c[key] for _, c in outcomes) for key in counts}


def _check_loader_options(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {args.workers}")


def _report_skipped(ctx: distributed.Context, command: str, skipped: int) -> None:
    if skipped and ctx.is_main:
        plural = "" if skipped == 1 else "s"
        print(f"{PROG} {command}: skipped {skipped} unreadable image{plural} (--strict to stop at the first)", file=sys.stderr)


def _runtime_device(args: argparse.Namespace, ctx: distributed.Context):
    """Where the model loads: the rank's device for --runtime torch; the CPU for an exported runtime (the
    export copies it to the CPU anyway)."""
    return ctx.device if args.runtime == "torch" else "cpu"


# ----- predict -----------------------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    ctx = distributed.setup()
    try:
        return _predict(args, ctx)
    finally:
        distributed.teardown()


def _predict(args: argparse.Namespace, ctx: distributed.Context) -> int:
    fmt = None
    if args.output is not None:
        if args.json:
            raise UsageError("--json prints to stdout; with --output FILE choose the file's format with --format")
        if os.path.isdir(args.output):
            raise UsageError(f"{args.output} is a folder; --output needs a file name (.jsonl or .csv)")
        fmt = inference.output_format(args.output, args.format)
    elif args.format is not None:
        raise UsageError("--format goes with --output FILE")
    _check_loader_options(args)
    runtimes.require(args.runtime)  # a missing runtime before any work
    paths = [path for path, _ in _list_inputs(args.images, ctx)]  # before loading the model
    model, directory = _load_model(args.model, "classification", args, device=_runtime_device(args, ctx))
    processor = _processor(directory, "classification", quiet=not ctx.is_main)
    k = max(1, min(args.top_k, model.config.num_labels))
    records = inference.predict_files(
        model, processor, paths, batch_size=args.batch_size, num_workers=args.workers, top_k=k, ctx=ctx,
        progress=args.progress, runtime=args.runtime,
    )  # fmt: skip
    target = None
    if args.output is not None:
        target = inference.part_path(args.output, ctx.rank, ctx.world_size) if ctx.distributed else args.output
    kept, skipped, error = [], 0, None
    writer = None
    try:
        writer = inference.PredictionWriter(target, fmt, k) if target is not None else None
        for record in records:
            if "error" in record:
                if args.strict:
                    raise ImageReadError(record["error"])
                skipped += 1
            if writer is not None:
                writer.write(record)
            else:
                kept.append(record)
    except Exception as exc:  # every rank learns of it before any stops
        error = exc
    finally:
        records.close()
        if writer is not None:
            writer.close()
    skipped = _gather_outcome(ctx, error, {"skipped": skipped})["skipped"]
    if args.output is None:
        shards = distributed.all_gather_object(ctx, kept)  # rank r has images r, r + world_size, ...
        if not ctx.is_main:
            return 0
        results = [shards[i % len(shards)][i // len(shards)] for i in range(len(paths))]
        if args.json:
            print(json.dumps(results, indent=2))
        else:
            for result in results:
                print(result["image"])
                if "error" in result:
                    print(f"  skipped: {result['error']}")
                for p in result.get("predictions", []):
                    print(f"  {p['probability']:7.2%}  {p['label']}")
    elif ctx.is_main:
        if ctx.distributed:
            parts = [inference.part_path(args.output, rank, ctx.world_size) for rank in range(ctx.world_size)]
            inference.merge_parts(parts, args.output, fmt, len(paths), k)
        print(f"wrote {args.output} ({len(paths)} images, top {k})")
    _report_skipped(ctx, "predict", skipped)
    return 0


# ----- segment -----------------------------------------------------------------------------------------------
def _one_mask_file(args: argparse.Namespace) -> bool:
    """``segment IMAGE --out MASK.png``: one image file to one mask file (else --out is a folder of masks)."""
    return (
        len(args.images) == 1
        and not os.path.isdir(args.images[0])
        and not os.path.isdir(args.out)
        and args.out.lower().endswith(IMAGE_EXTENSIONS)
    )


def _mask_targets(listed: list[tuple[str, str]], out: str, overlay_dir: str | None) -> list[tuple[str, str | None]]:
    """(mask path, overlay path) per image: the image's name relative to its input folder, as a PNG, under
    ``out`` (and ``overlay_dir``). Two images that would write the same mask are refused, naming both."""
    targets, owner = [], {}
    for path, name in listed:
        relative = os.path.splitext(name)[0] + ".png"
        mask_path = os.path.join(out, relative)
        key = os.path.normcase(os.path.abspath(mask_path))
        if key in owner:
            raise UsageError(f"{owner[key]} and {path} would both be written to {mask_path}")
        owner[key] = path
        targets.append((mask_path, os.path.join(overlay_dir, relative) if overlay_dir else None))
    return targets


def cmd_segment(args: argparse.Namespace) -> int:
    ctx = distributed.setup()
    try:
        return _segment(args, ctx)
    finally:
        distributed.teardown()


def _segment(args: argparse.Namespace, ctx: distributed.Context) -> int:
    one_file = _one_mask_file(args)
    if one_file and args.overlay_dir:
        raise UsageError("--overlay-dir goes with --out FOLDER; with --out MASK.png use --overlay FILE")
    if not one_file:
        if args.overlay:
            raise UsageError("--overlay FILE goes with one image and --out MASK.png; with --out FOLDER use --overlay-dir")
        for option, folder in (("--out", args.out), ("--overlay-dir", args.overlay_dir)):
            if folder is not None and os.path.isfile(folder):
                raise UsageError(f"{folder} is a file; {option} needs a folder when segmenting a folder or several images")
    _check_loader_options(args)
    runtimes.require(args.runtime)  # a missing runtime before any work
    listed = _list_inputs(args.images, ctx)  # before loading the model
    targets = [(args.out, args.overlay)] if one_file else _mask_targets(listed, args.out, args.overlay_dir)
    model, directory = _load_model(args.model, "segmentation", args, device=_runtime_device(args, ctx))
    # The whole image, resized but not cropped, so the mask covers every pixel of it.
    processor = _processor(directory, "segmentation", quiet=not ctx.is_main)
    processor.do_center_crop = False
    num_labels = model.config.num_labels
    colours = palette(max(num_labels, 1))
    with_overlays = bool(args.overlay or args.overlay_dir)
    records = inference.segment_files(
        model, processor, [path for path, _ in listed], batch_size=args.batch_size, num_workers=args.workers,
        ctx=ctx, progress=False if one_file else args.progress, keep_images=with_overlays, runtime=args.runtime,
    )  # fmt: skip
    written, skipped, error = 0, 0, None
    try:
        for index, record in zip(range(ctx.rank, len(listed), ctx.world_size), records):
            if "error" in record:
                if args.strict or one_file:
                    raise ImageReadError(record["error"])
                skipped += 1
                continue
            mask_path, overlay_path = targets[index]
            mask = record["mask"]
            inference.save_image(inference.mask_image(mask, colours), mask_path)
            if overlay_path is not None:
                inference.save_image(inference.overlay_image(record["pixels"], mask, colours, args.alpha), overlay_path)
            written += 1
            if one_file:
                counts = np.bincount(mask.ravel(), minlength=num_labels)
                present = sorted(np.nonzero(counts)[0], key=lambda c: -counts[c])
                summary = ", ".join(f"{model.config.id2label.get(int(c), c)} {counts[c] / mask.size:.1%}" for c in present)
                print(f"{record['image']}: {summary}")
                print(f"wrote {mask_path}" + (f" and {overlay_path}" if overlay_path else ""))
    except Exception as exc:  # every rank learns of it before any stops
        error = exc
    finally:
        records.close()
    totals = _gather_outcome(ctx, error, {"written": written, "skipped": skipped})
    if not one_file and ctx.is_main:
        overlays = f" and overlays to {args.overlay_dir}" if args.overlay_dir else ""
        print(f"wrote {totals['written']} masks to {args.out}{overlays}")
    _report_skipped(ctx, "segment", totals["skipped"])
    return 0


# ----- train -------------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    try:
        from mobilevitv2.training import arguments, train
    except ImportError as exc:
        raise UsageError(f'training needs the train extra ({exc}); pip install "mobilevitv2[train]"') from None
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


# ----- bench -------------------------------------------------------------------------------------------------
def cmd_bench(argv: Sequence[str]) -> int:
    try:
        from mobilevitv2.bench import command
    except ImportError as exc:
        raise UsageError(f"the benchmark is not available in this installation ({exc})") from None
    return int(command.main(list(argv)) or 0)


# ----- the parser --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="MobileViTV2: predict, segment, train, convert, export, benchmark")
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
        "torch (default: the model itself, on the GPU when there is one), or an export run on the CPU in fp32: "
        "onnxruntime, openvino, executorch (exported once per preprocessed size, cached in $MOBILEVITV2_CACHE)"
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
