"""Prediction and segmentation over many image files: a DataLoader that reads and preprocesses each image,
batched forward passes, and the writing of the results (JSON Lines or CSV predictions, PNG masks).

One process or many: under torchrun each rank takes its shard of the files
(:class:`~mobilevitv2.distributed.ShardSampler`: image ``i`` on rank ``i % world_size``), in input order, so
rank 0 can merge the ranks' part files back into input order by taking one record from each in turn.

An image that cannot be read or decoded does not stop a run: it comes out as a record with an ``"error"``
field naming the file, and the caller decides whether to skip it or to fail.

>>> model = MobileViTV2ForImageClassification.from_pretrained(directory)
>>> processor = MobileViTV2ImageProcessor.from_pretrained(directory)
>>> for record in predict_files(model, processor, ["a.jpg", "b.png"], top_k=3):
...     print(record["image"], record["predictions"][0]["label"])

``runtime`` runs the forward passes elsewhere than in ``model`` itself: "onnxruntime", "openvino" or
"executorch" export the model once per preprocessed input size (cached, :func:`mobilevitv2.runtimes.load`)
and run it on the CPU; "inductor" compiles it for the CPU (:class:`mobilevitv2.cpu_inference.CPUInference`,
tens of seconds per batch shape and input size); a callable ``forward(pixel_values) -> logits`` is used as
it is. ``precision``: what inductor or OpenVINO computes in, "fp32" (default) or "bf16"
(:data:`mobilevitv2.runtimes.PRECISIONS`).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mobilevitv2 import runtimes
from mobilevitv2.distributed import Context, ShardSampler
from mobilevitv2.image_files import expand_inputs, read_image

FORMATS = ("jsonl", "csv")
Forward = Callable[[torch.Tensor], torch.Tensor]


def default_workers() -> int:
    """min(4, the CPU cores this process may use)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(4, cores)


# ----- inputs ------------------------------------------------------------------------------------------------
def list_images(inputs: Iterable[str]) -> list[tuple[str, str]]:
    """(path, name) for every image that files and folders, as given on a command line, stand for: a folder
    contributes the images under it (sorted), named by their path relative to it; a file is named by its
    base name. A missing path, or a folder without images, is a FileNotFoundError naming it."""
    listed = []
    for item in inputs:
        if os.path.isdir(item):
            listed.extend((path, os.path.relpath(path, item)) for path in expand_inputs([item]))
        else:
            listed.extend((path, os.path.basename(path)) for path in expand_inputs([item]))
    return listed


# ----- reading and preprocessing -----------------------------------------------------------------------------
@dataclass
class Item:
    """One image, read and preprocessed (in a DataLoader worker), or the reason it could not be."""

    index: int
    path: str
    pixel_values: torch.Tensor | None = None
    size: tuple[int, int] | None = None  # (height, width) of the image as read
    image: Image.Image | None = None  # the image as read, when asked for
    error: str | None = None


class ImageDataset(Dataset):
    """``paths[i]`` read and preprocessed by ``processor`` (one image at a time, so each image's pixel values
    are exactly what the processor gives it alone). The image goes to the processor as it was decoded, in its
    own mode (greyscale, RGBA...), as when the processor is called on the opened file."""

    def __init__(self, paths: Sequence[str], processor: Any, keep_images: bool = False) -> None:
        self.paths = list(paths)
        self.processor = processor
        self.keep_images = keep_images

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        path = self.paths[index]
        try:
            image = read_image(path, mode=None)
            pixel_values = torch.as_tensor(self.processor(image, return_tensors="np")["pixel_values"][0])
        except (OSError, ValueError) as exc:  # ImageReadError (a ValueError) names the file already
            message = str(exc) if path in str(exc) else f"{path}: {exc}"
            return Item(index, path, error=message)
        return Item(index, path, pixel_values, (image.height, image.width), image if self.keep_images else None)


def _as_is(batch: list[Item]) -> list[Item]:
    return batch


def _progress_bar(total: int, ctx: Context, progress: bool | None, desc: str):
    """A tqdm bar on stderr on rank 0: ``progress`` True shows it, False hides it, None shows it when stderr
    is a terminal. Without tqdm installed, no bar."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    disable = True if (not ctx.is_main or progress is False) else (None if progress is None else False)
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=disable, dynamic_ncols=True)


def run_batches(
    model: torch.nn.Module,
    processor: Any,
    paths: Sequence[str],
    finish: Callable[[torch.Tensor, list[Item]], list[Any]],
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    ctx: Context | None = None,
    progress: bool | None = False,
    keep_images: bool = False,
    desc: str | None = None,
    forward: Forward | None = None,
) -> Iterator[tuple[Item, Any]]:
    """(item, result) for each image of this rank's shard of ``paths``, in input order. Within each batch the
    images are grouped by the shape of their pixel values, never padded, and each group is one forward pass
    (``model(pixel_values).logits``, or ``forward(pixel_values)`` on CPU pixel values when given);
    ``finish(logits, items)`` turns a group's logits into one result per image. An image that could not be
    read comes with ``item.error`` set and result None."""
    ctx = ctx or Context()
    if batch_size < 1:
        raise ValueError(f"the batch size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device if forward is None else torch.device("cpu")
    sampler = ShardSampler(len(paths), ctx)
    batches = -(-len(sampler) // batch_size)
    loader = DataLoader(
        ImageDataset(paths, processor, keep_images), batch_size=batch_size, sampler=sampler,
        num_workers=max(0, min(num_workers, batches - 1)),  # one batch: nothing for workers to overlap
        collate_fn=_as_is, pin_memory=device.type == "cuda",
    )  # fmt: skip
    bar = _progress_bar(len(sampler), ctx, progress, desc or "images")
    try:
        for batch in loader:
            results: list[Any] = [None] * len(batch)
            groups: dict[tuple[int, ...], list[int]] = {}
            for position, item in enumerate(batch):
                if item.error is None:
                    groups.setdefault(tuple(item.pixel_values.shape), []).append(position)
            for positions in groups.values():
                pixel_values = torch.stack([batch[p].pixel_values for p in positions]).to(device, non_blocking=True)
                with torch.no_grad():
                    logits = model(pixel_values).logits if forward is None else forward(pixel_values)
                for position, result in zip(positions, finish(logits, [batch[p] for p in positions])):
                    results[position] = result
            for item, result in zip(batch, results):
                yield item, result
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()


def runtime_forward(
    model: torch.nn.Module, runtime: str | Forward | None, cache_dir: str | None = None, precision: str = "fp32"
) -> Forward | None:
    """The forward pass for ``runtime``: None for "torch" (or None: ``model`` itself, on its device, in its
    own dtype), a :class:`mobilevitv2.runtimes.PerInputSize` for inductor or an exported runtime (raises at
    once when it is not installed or does not compute in ``precision``), or ``runtime`` itself when it is a
    callable."""
    if runtime is None or runtime == "torch" or callable(runtime):
        if precision != "fp32":
            raise ValueError(
                f"precision {precision!r} is for the inductor and openvino runtimes; here the torch runtime (or a callable) "
                "runs the model as it is, in its own dtype"
            )
        return None if not callable(runtime) else runtime
    return runtimes.PerInputSize(runtime, model, cache_dir=cache_dir, precision=precision)


# ----- classification ----------------------------------------------------------------------------------------
def predict_files(
    model: torch.nn.Module,
    processor: Any,
    paths: Sequence[str],
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    top_k: int = 5,
    ctx: Context | None = None,
    progress: bool | None = False,
    runtime: str | Forward | None = None,
    cache_dir: str | None = None,
    precision: str = "fp32",
) -> Iterator[dict[str, Any]]:
    """One record per image of this rank's shard, in input order: ``{"image": path, "predictions": [{"index",
    "label", "probability"}, ...]}`` (the ``top_k`` most probable classes, most probable first, probabilities
    rounded to 6 decimals), or ``{"image": path, "error": message}`` for an image that could not be read.
    ``runtime``: "torch" (default), "inductor", "onnxruntime", "openvino", "executorch" or a callable, and
    ``precision``, "fp32" or "bf16" (module docstring); ``cache_dir``: where exports are cached (default
    :func:`mobilevitv2.runtimes.default_cache_dir`)."""
    forward = runtime_forward(model, runtime, cache_dir, precision)
    k = max(1, min(top_k, model.config.num_labels))
    id2label = model.config.id2label

    def finish(logits: torch.Tensor, items: list[Item]) -> list[list[dict[str, Any]]]:
        top = logits.float().softmax(dim=-1).topk(k, dim=-1)
        return [
            [{"index": i, "label": id2label.get(i, str(i)), "probability": round(p, 6)} for p, i in zip(values, indices)]
            for values, indices in zip(top.values.cpu().tolist(), top.indices.cpu().tolist())
        ]

    for item, predictions in run_batches(
        model, processor, paths, finish, batch_size=batch_size, num_workers=num_workers, ctx=ctx,
        progress=progress, desc="predict", forward=forward,
    ):  # fmt: skip
        if item.error is not None:
            yield {"image": item.path, "error": item.error}
        else:
            yield {"image": item.path, "predictions": predictions}


def output_format(path: str, fmt: str | None = None) -> str:
    """"jsonl" or "csv": ``fmt`` when given, else from the file's extension."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; use jsonl or csv")
        return fmt
    extension = os.path.splitext(path)[1].lower()
    if extension in (".jsonl", ".ndjson"):
        return "jsonl"
    if extension == ".csv":
        return "csv"
    raise ValueError(f"{path}: cannot tell the output format from the extension; name it .jsonl or .csv, or pass --format")


def csv_header(top_k: int) -> list[str]:
    columns = ["image"]
    for rank in range(1, top_k + 1):
        columns += [f"top{rank}_index", f"top{rank}_label", f"top{rank}_probability"]
    return columns + ["error"]


def csv_row(record: dict[str, Any], top_k: int) -> list[Any]:
    row: list[Any] = [record["image"]]
    predictions = record.get("predictions", [])
    for rank in range(top_k):
        if rank < len(predictions):
            p = predictions[rank]
            row += [p["index"], p["label"], p["probability"]]
        else:
            row += ["", "", ""]
    return row + [record.get("error", "")]


class PredictionWriter:
    """Records to a JSON Lines file (one object per line) or a CSV file (a header, then one row per image:
    the top-k index, label and probability, and an error column), each written through to the file as it
    comes, so a run that dies keeps everything it had finished."""

    def __init__(self, path: str, fmt: str, top_k: int) -> None:
        self.path, self.fmt, self.top_k = path, fmt, top_k
        self.count = 0
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.file = open(path, "w", encoding="utf-8", newline="" if fmt == "csv" else None)
        if fmt == "csv":
            self.csv = csv.writer(self.file)
            self.csv.writerow(csv_header(top_k))

    def write(self, record: dict[str, Any]) -> None:
        if self.fmt == "csv":
            self.csv.writerow(csv_row(record, self.top_k))
        else:
            self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()
        self.count += 1

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def part_path(output: str, rank: int, world_size: int) -> str:
    """Where rank ``rank`` writes its records, next to ``output``: ``preds.jsonl`` -> ``preds.rank0-of-2.jsonl``."""
    root, extension = os.path.splitext(output)
    return f"{root}.rank{rank}-of-{world_size}{extension}"


def _records_in(path: str, fmt: str) -> Iterator[Any]:
    with open(path, encoding="utf-8", newline="" if fmt == "csv" else None) as f:
        if fmt == "csv":
            rows = csv.reader(f)
            next(rows, None)  # the header
            yield from rows
        else:
            yield from (line for line in f if line.strip())


def merge_parts(parts: Sequence[str], output: str, fmt: str, total: int, top_k: int) -> None:
    """The ranks' part files (``parts[r]`` from rank r, which had images r, r + world_size, ...) merged into
    ``output`` in input order, written to a temporary file first and then renamed; the parts are removed."""
    readers = [_records_in(part, fmt) for part in parts]
    temporary = output + ".merging"
    with open(temporary, "w", encoding="utf-8", newline="" if fmt == "csv" else None) as f:
        writer = csv.writer(f) if fmt == "csv" else None
        if writer is not None:
            writer.writerow(csv_header(top_k))
        for index in range(total):
            record = next(readers[index % len(readers)], None)
            if record is None:
                raise ValueError(f"{parts[index % len(parts)]}: fewer records than its share of the {total} images")
            if writer is not None:
                writer.writerow(record)
            else:
                f.write(record)
    leftover = [part for part, reader in zip(parts, readers) if next(reader, None) is not None]
    if leftover:
        os.remove(temporary)
        raise ValueError(f"{leftover[0]}: more records than its share of the {total} images")
    os.replace(temporary, output)
    for part in parts:
        os.remove(part)


# ----- segmentation ------------------------------------------------------------------------------------------
def segment_files(
    model: torch.nn.Module,
    processor: Any,
    paths: Sequence[str],
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    ctx: Context | None = None,
    progress: bool | None = False,
    keep_images: bool = False,
    runtime: str | Forward | None = None,
    cache_dir: str | None = None,
    precision: str = "fp32",
) -> Iterator[dict[str, Any]]:
    """One record per image of this rank's shard, in input order: ``{"image": path, "mask": (H, W) int64
    array of class indices at the image's own size}`` (plus ``"pixels"``, the image as read, with
    ``keep_images``), or ``{"image": path, "error": message}``. ``processor`` should not crop (set
    ``do_center_crop = False``) for the mask to cover the whole image. Images whose preprocessed sizes differ
    go through the model separately, so each mask is the one the image gets alone. ``runtime``,
    ``precision`` and ``cache_dir`` as in :func:`predict_files`; an exported runtime exports once per
    preprocessed size, inductor compiles once per size and batch shape."""
    forward = runtime_forward(model, runtime, cache_dir, precision)

    def finish(logits: torch.Tensor, items: list[Item]) -> list[np.ndarray]:
        masks = processor.post_process_semantic_segmentation(logits, target_sizes=[item.size for item in items])
        return [mask.cpu().numpy() for mask in masks]

    for item, mask in run_batches(
        model, processor, paths, finish, batch_size=batch_size, num_workers=num_workers, ctx=ctx,
        progress=progress, keep_images=keep_images, desc="segment", forward=forward,
    ):  # fmt: skip
        if item.error is not None:
            yield {"image": item.path, "error": item.error}
        else:
            record = {"image": item.path, "mask": mask}
            if keep_images:
                record["pixels"] = item.image
            yield record


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


def mask_image(mask: np.ndarray, colours: np.ndarray) -> Image.Image:
    """A palette PNG image whose pixel values are the class indices, shown in ``colours`` (one RGB row per
    class, e.g. :func:`palette`); a 16-bit greyscale one beyond 256 classes."""
    if len(colours) <= 256:
        image = Image.fromarray(mask.astype(np.uint8), mode="P")
        image.putpalette(np.asarray(colours, dtype=np.uint8).ravel().tolist())
        return image
    return Image.fromarray(mask.astype(np.uint16))


def overlay_image(image: Image.Image, mask: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """``image`` with the class colours blended over it (``alpha``: the colours' opacity)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1 - alpha) * rgb + alpha * np.asarray(colours)[mask].astype(np.float32)
    return Image.fromarray(np.round(blended).astype(np.uint8))


def save_image(image: Image.Image, path: str) -> None:
    """``image`` at ``path`` (format from the extension), its folder made when missing."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)
