"""The ``mobilevitv2`` command: predict, segment, convert, export-onnx, bench.

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

from mobilevitv2.config import MobileViTV2Config
from mobilevitv2.convert import convert_checkpoint
from mobilevitv2.image_processing import PREPROCESSOR_CONFIG_NAME, MobileViTV2ImageProcessor
from mobilevitv2.loading import CheckpointError, resolve_directory
from mobilevitv2.models import MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation
from mobilevitv2.onnx_export import OPSET, export_onnx, max_abs_difference, onnx_op_types
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


def _load_model(model_id: str, task: str, args: argparse.Namespace):
    """(model, directory) for ``task``, refusing a checkpoint made for the other task before loading it, with
    the implementation the command line names (``--implementation``, and the per-part options)."""
    directory = resolve_directory(model_id)
    config = MobileViTV2Config.from_pretrained(directory)
    if config.architectures and ARCHITECTURES[task].lower() not in [a.lower() for a in config.architectures]:
        command = "segment" if task == "segmentation" else "predict"
        raise UsageError(
            f"{model_id} is a {', '.join(config.architectures)} checkpoint; `{command}` needs a {ARCHITECTURES[task]} checkpoint"
        )
    cls = MobileViTV2ForSemanticSegmentation if task == "segmentation" else MobileViTV2ForImageClassification
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


def _processor(directory: str, task: str):
    if os.path.isfile(os.path.join(directory, PREPROCESSOR_CONFIG_NAME)):
        return MobileViTV2ImageProcessor.from_pretrained(directory)
    shortest_edge, crop = DEFAULT_PREPROCESSING[task]
    steps = f"resize {shortest_edge}" + (f", crop {crop}" if task == "classification" else "")
    print(
        f"{PROG}: no {PREPROCESSOR_CONFIG_NAME} in the model directory; using the preprocessing of "
        f"transformers' MobileViTV2 checkpoints ({steps}, BGR)",
        file=sys.stderr,
    )
    return MobileViTV2ImageProcessor(size={"shortest_edge": shortest_edge}, crop_size=crop)


# ----- predict -----------------------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    for path in args.images:  # fail before loading the model
        _open_image(path, header_only=True)
    model, directory = _load_model(args.model, "classification", args)
    processor = _processor(directory, "classification")
    device = next(model.parameters()).device
    k = max(1, min(args.top_k, model.config.num_labels))
    results = []
    for start in range(0, len(args.images), 16):
        paths = args.images[start : start + 16]
        pixel_values = processor([_open_image(p) for p in paths], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            probs = model(pixel_values.to(device)).logits.float().softmax(dim=-1).cpu()
        top = probs.topk(k, dim=-1)
        for path, values, indices in zip(paths, top.values.tolist(), top.indices.tolist()):
            predictions = [
                {"index": i, "label": model.config.id2label.get(i, str(i)), "probability": round(p, 6)}
                for p, i in zip(values, indices)
            ]
            results.append({"image": path, "predictions": predictions})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(result["image"])
            for p in result["predictions"]:
                print(f"  {p['probability']:7.2%}  {p['label']}")
    return 0


# ----- segment -----------------------------------------------------------------------------------------------
def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours: the PASCAL VOC colour map (class 0 black), so VOC masks look familiar."""
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        value, shift = index, 7
        while value:
            for channel in range(3):
                colours[index, channel] |= ((value >> channel) & 1) << shift
            value >>= 3
            shift -= 1
    return colours


def cmd_segment(args: argparse.Namespace) -> int:
    image = _open_image(args.image)
    model, directory = _load_model(args.model, "segmentation", args)
    # The whole image, resized but not cropped, so the mask covers every pixel of it.
    processor = _processor(directory, "segmentation")
    processor.do_center_crop = False
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        outputs = model(pixel_values.to(next(model.parameters()).device))
    mask = processor.post_process_semantic_segmentation(outputs, target_sizes=[(image.height, image.width)])[0]
    mask = mask.cpu().numpy()
    num_labels = model.config.num_labels
    colours = palette(max(num_labels, 1))
    if num_labels <= 256:  # a palette PNG: pixel values are class indices, viewers show colours
        mask_image = Image.fromarray(mask.astype(np.uint8), mode="P")
        mask_image.putpalette(colours.ravel().tolist())
    else:
        mask_image = Image.fromarray(mask.astype(np.uint16))
    _save(mask_image, args.out)
    if args.overlay:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
        blended = (1 - args.alpha) * rgb + args.alpha * colours[mask].astype(np.float32)
        _save(Image.fromarray(np.round(blended).astype(np.uint8)), args.overlay)
    counts = np.bincount(mask.ravel(), minlength=num_labels)
    present = sorted(np.nonzero(counts)[0], key=lambda c: -counts[c])
    summary = ", ".join(f"{model.config.id2label.get(int(c), c)} {counts[c] / mask.size:.1%}" for c in present)
    print(f"{args.image}: {summary}")
    print(f"wrote {args.out}" + (f" and {args.overlay}" if args.overlay else ""))
    return 0


def _save(image, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)


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


# ----- export-onnx -------------------------------------------------------------------------------------------
def cmd_export_onnx(args: argparse.Namespace) -> int:
    directory = resolve_directory(args.model)
    config = MobileViTV2Config.from_pretrained(directory)
    segmentation = any("segmentation" in a.lower() for a in config.architectures or [])
    cls = MobileViTV2ForSemanticSegmentation if segmentation else MobileViTV2ForImageClassification
    model = cls.from_pretrained(directory, implementation="reference")
    export_onnx(model, args.out, height=args.height, width=args.width, opset=args.opset)
    line = f"wrote {args.out} (opset {args.opset}, input pixel_values [batch, {config.num_channels}, {args.height}, {args.width}])"
    try:
        ops = onnx_op_types(args.out)
        error = max_abs_difference(model, args.out, torch.rand(2, config.num_channels, args.height, args.width))
    except ImportError:
        print(line + '; pip install "mobilevitv2[onnx]" to check it with onnxruntime', file=sys.stderr)
        return 0
    print(f"{line}; {len(ops)} op types; onnxruntime vs PyTorch max |diff| {error:.2e}")
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
    parser = argparse.ArgumentParser(prog=PROG, description="MobileViTV2: predict, segment, convert, export, benchmark")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    preset = dict(choices=["fused", "reference"], default=None,
                  help="fused: every fused kernel that is faster on the device; reference: pure PyTorch "
                  "(default: fused attention, reference convs and transformer layers)")  # fmt: skip
    attn = dict(choices=["auto", "reference", "triton", "cuda", "eager"], default=None, help="attention/patching alone (for experts)")
    fused = dict(choices=["auto", "reference", "triton", "eager"], default=None)
    conv_help = "fused inverted residuals and local convs alone, inference only (for experts)"
    transformer_help = "fused transformer layers alone, inference only (for experts)"
    model_help = "a transformers-format checkpoint directory or a Hugging Face Hub id"

    p = sub.add_parser("predict", help="top-k labels for images with an image-classification checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--implementation", **preset)
    p.add_argument("--attn-implementation", **attn)
    p.add_argument("--conv-implementation", help=conv_help, **fused)
    p.add_argument("--transformer-implementation", help=transformer_help, **fused)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("segment", help="a full-size class mask (and a colour overlay) with a segmentation checkpoint")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--out", required=True, help="mask PNG: pixel values are class indices (a palette PNG up to 256 classes)")
    p.add_argument("--overlay", help="also write the image with the class colours blended over it")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours (default 0.5)")
    p.add_argument("--implementation", **preset)
    p.add_argument("--attn-implementation", **attn)
    p.add_argument("--conv-implementation", help=conv_help, **fused)
    p.add_argument("--transformer-implementation", help=transformer_help, **fused)
    p.set_defaults(func=cmd_segment)

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

    p = sub.add_parser("export-onnx", help="ONNX export of the reference path (opset 17, dynamic batch)")
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--opset", type=int, default=OPSET)
    p.set_defaults(func=cmd_export_onnx)

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
