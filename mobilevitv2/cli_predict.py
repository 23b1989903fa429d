"""``mobilevitv2 predict`` and ``mobilevitv2 segment``: files and folders in, records or masks out, batched,
sharded over torchrun's processes, through any runtime (:mod:`mobilevitv2.inference` does the work)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np
import torch

from mobilevitv2 import cpu_memory, distributed, inference, runtimes
from mobilevitv2.cli_common import PROG, UsageError, checkpoint_processor, load_model, open_image
from mobilevitv2.image_files import IMAGE_EXTENSIONS, ImageReadError
from mobilevitv2.inference import palette


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
                open_image(item, header_only=True)
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


def _check_runtime(args: argparse.Namespace, ctx: distributed.Context) -> None:
    """A missing runtime or a precision it does not compute in, before any work; a note that inductor
    compiles first."""
    if args.runtime == "torch" and args.precision != "fp32":
        raise UsageError(f"--precision {args.precision} goes with --runtime inductor or openvino (torch runs the model as it is)")
    if args.precision not in runtimes.PRECISIONS[args.runtime]:
        raise UsageError(f"--runtime {args.runtime} computes in {' or '.join(runtimes.PRECISIONS[args.runtime])}, not {args.precision}")
    runtimes.require(args.runtime)
    if args.runtime == "inductor" and ctx.is_main:
        print(f"{PROG} {args.command}: --runtime inductor compiles the model on the first batch of each shape and input size (tens of seconds each; kept in the cache for later runs)",
              file=sys.stderr)  # fmt: skip


def _runtime_device(args: argparse.Namespace, ctx: distributed.Context) -> torch.device:
    """Where the model loads: the rank's device for --runtime torch; the CPU for inductor and an exported
    runtime (the export copies it to the CPU anyway)."""
    return torch.device(ctx.device if args.runtime == "torch" else "cpu")


def _prepare_process(device: torch.device) -> None:
    """On the CPU, freed memory is kept in the process (:mod:`mobilevitv2.cpu_memory`: an eager forward pass
    no longer page-faults its activations in); elsewhere nothing to do."""
    if device.type == "cpu":
        cpu_memory.keep_freed_memory()


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
    _check_runtime(args, ctx)
    paths = [path for path, _ in _list_inputs(args.images, ctx)]  # before loading the model
    device = _runtime_device(args, ctx)
    _prepare_process(device)
    model, directory = load_model(args.model, "classification", args, device=device)
    processor = checkpoint_processor(directory, "classification", quiet=not ctx.is_main)
    k = max(1, min(args.top_k, model.config.num_labels))
    records = inference.predict_files(
        model, processor, paths, batch_size=args.batch_size, num_workers=args.workers, top_k=k, ctx=ctx,
        progress=args.progress, runtime=args.runtime, precision=args.precision,
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
    _check_runtime(args, ctx)
    listed = _list_inputs(args.images, ctx)  # before loading the model
    targets = [(args.out, args.overlay)] if one_file else _mask_targets(listed, args.out, args.overlay_dir)
    device = _runtime_device(args, ctx)
    _prepare_process(device)
    model, directory = load_model(args.model, "segmentation", args, device=device)
    # The whole image, resized but not cropped, so the mask covers every pixel of it.
    processor = checkpoint_processor(directory, "segmentation", quiet=not ctx.is_main)
    processor.do_center_crop = False
    num_labels = model.config.num_labels
    colours = palette(max(num_labels, 1))
    with_overlays = bool(args.overlay or args.overlay_dir)
    records = inference.segment_files(
        model, processor, [path for path, _ in listed], batch_size=args.batch_size, num_workers=args.workers,
        ctx=ctx, progress=False if one_file else args.progress, keep_images=with_overlays, runtime=args.runtime,
        precision=args.precision,
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


