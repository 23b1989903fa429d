"""Training and validation data from folders: the two layouts, their checks, and the augmentation.

* classification: ``DIR/{train,val}/<class>/<image>``; the labels are the class folder names, sorted;
* segmentation: ``DIR/{train,val}/images/<stem>.<ext>`` with ``DIR/{train,val}/masks/<stem>.png`` (pixel =
  class id, 255 = ignore; a palette or greyscale PNG).

A sample that fails to decode does not stop the run: the data loader hands it on as ``skipped`` (counted in
the log) or, with ``strict``, as an ``error`` that the training loop raises in the main process with the file
named. Augmentation draws from a generator seeded by (seed, epoch, index), so a sample's crop is the same
however many workers or processes load it and whether or not the run was resumed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mobilevitv2.image_files import ImageReadError, image_size, images_in, read_image
from mobilevitv2.image_processing import MobileViTV2ImageProcessor

IGNORE_INDEX = 255
SPLITS = ("train", "val")


class DatasetError(ValueError):
    """Data that cannot be trained on; the message names the file or folder and the problem."""


def needs_torchvision():
    try:
        from torchvision import tv_tensors
        from torchvision.transforms import v2
    except ImportError as exc:
        raise ImportError(f'training needs torchvision ({exc}); pip install "mobilevitv2[train]"') from None
    return v2, tv_tensors


def detect_task(data_dir: str) -> str:
    """"segmentation" for the images/masks layout, "classification" otherwise."""
    train = os.path.join(data_dir, "train")
    if os.path.isdir(os.path.join(train, "images")) and os.path.isdir(os.path.join(train, "masks")):
        return "segmentation"
    return "classification"


def split_dir(data_dir: str, split: str) -> str:
    path = os.path.join(data_dir, split)
    if not os.path.isdir(path):
        raise DatasetError(f"{path}: no such folder; the data folder needs {' and '.join(SPLITS)} splits")
    return path


def class_names(data_dir: str) -> list[str]:
    """The classes of a classification data folder: the train split's sub-folders, sorted."""
    train = split_dir(data_dir, "train")
    names = sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)) and not d.startswith("."))
    if not names:
        raise DatasetError(f"{train}: no class folders (expected {train}/<class>/<image files>)")
    if len(names) < 2:
        raise DatasetError(f"{train}: one class folder ({names[0]}); classification needs at least two")
    return names


def seeded(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007_777 + index) % (2**63)


@dataclass
class Augmentation:
    """The training-time transform of one sample, or None for the checkpoint's evaluation preprocessing."""

    image_size: int
    scale: tuple[float, float]


class FolderDataset(torch.utils.data.Dataset):
    """Shared by both layouts: the processor (evaluation preprocessing and channel order), the optional
    augmentation, the epoch that seeds it, and the skip-or-fail policy."""

    def __init__(self, processor: MobileViTV2ImageProcessor, augmentation: Augmentation | None, seed: int, strict: bool):
        self.processor = processor
        self.augmentation = augmentation
        self.seed = seed
        self.strict = strict
        self.epoch = 0
        self.transform = self._build_transform() if augmentation is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        try:
            return self.load(index)
        except ImageReadError as exc:
            if self.strict:
                return {"error": f"{exc} (--strict)"}
            return {"skipped": str(exc)}
        except DatasetError as exc:
            return {"error": str(exc)}

    def _finish(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float [0, 1] pixels in the checkpoint's channel order."""
        pixels = pixels.as_subclass(torch.Tensor)
        if self.processor.do_flip_channel_order:
            pixels = torch.cat([pixels[:3].flip(0), pixels[3:]])
        return pixels.contiguous()

    def _augment(self, index: int, *inputs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeded(self.seed, self.epoch, index))
            return self.transform(*inputs)


class ClassificationFolder(FolderDataset):
    def __init__(self, data_dir: str, split: str, classes: list[str], processor, augmentation=None, seed=0, strict=False):
        root = split_dir(data_dir, split)
        present = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise DatasetError(f"{root}: class folders not in the train split: {', '.join(unknown)}")
        if not present:
            raise DatasetError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
        self.samples: list[tuple[str, int]] = []
        for label, name in enumerate(classes):
            folder = os.path.join(root, name)
            if not os.path.isdir(folder):
                continue
            files = images_in(folder)
            if not files:
                raise DatasetError(f"{folder}: a class folder with no image files")
            self.samples.extend((path, label) for path in files)
        super().__init__(processor, augmentation, seed, strict)

    def __len__(self) -> int:
        return len(self.samples)

    def _build_transform(self):
        v2, _ = needs_torchvision()
        aug = self.augmentation
        return v2.Compose([
            v2.ToImage(),
            v2.RandomResizedCrop(aug.image_size, scale=aug.scale, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
        ])  # fmt: skip

    def load(self, index: int) -> dict:
        path, label = self.samples[index]
        image = read_image(path)
        if self.transform is None:
            pixels = torch.from_numpy(self.processor(image)["pixel_values"][0])  # already in channel order
        else:
            pixels = self._finish(self._augment(index, image))
        return {"pixel_values": pixels, "labels": torch.tensor(label), "index": index}


def read_mask(path: str) -> np.ndarray:
    """A mask PNG as class ids (H, W): palette PNGs by palette index, greyscale by value."""
    try:
        with Image.open(path) as mask:
            mask.load()
            if mask.mode not in ("P", "L", "I;16", "I"):
                raise DatasetError(f"{path}: a mask must be a palette or greyscale PNG of class ids, got mode {mask.mode}")
            return np.asarray(mask).astype(np.int64)
    except (OSError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: cannot decode the mask ({exc})") from None


class SegmentationFolder(FolderDataset):
    def __init__(self, data_dir: str, split: str, num_labels: int, processor, augmentation=None, seed=0, strict=False):
        root = split_dir(data_dir, split)
        image_dir, mask_dir = os.path.join(root, "images"), os.path.join(root, "masks")
        for folder in (image_dir, mask_dir):
            if not os.path.isdir(folder):
                raise DatasetError(f"{folder}: no such folder; segmentation data is {root}/images and {root}/masks")
        images = images_in(image_dir)
        if not images:
            raise DatasetError(f"{image_dir}: no image files")
        self.num_labels = num_labels
        self.samples: list[tuple[str, str]] = []
        for path in images:
            stem = os.path.splitext(os.path.relpath(path, image_dir))[0]
            mask = os.path.join(mask_dir, stem + ".png")
            if not os.path.isfile(mask):
                raise DatasetError(f"{path}: no mask {mask}")
            try:
                sizes = image_size(path), image_size(mask)
            except ImageReadError:
                sizes = None  # decoded (and skipped or failed) when loaded
            if sizes is not None and sizes[0] != sizes[1]:
                raise DatasetError(f"{mask}: mask size {sizes[1][0]}x{sizes[1][1]} differs from its image's {sizes[0][0]}x{sizes[0][1]}")
            self.samples.append((path, mask))
        super().__init__(processor, augmentation, seed, strict)

    def __len__(self) -> int:
        return len(self.samples)

    def _build_transform(self):
        v2, tv_tensors = needs_torchvision()
        aug = self.augmentation
        low, high = (max(1, int(round(aug.image_size * s))) for s in aug.scale)
        return v2.Compose([
            v2.RandomResize(low, high + 1, antialias=True),
            v2.RandomCrop(aug.image_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
            v2.RandomHorizontalFlip(),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        ])  # fmt: skip

    def load(self, index: int) -> dict:
        path, mask_path = self.samples[index]
        image = read_image(path)
        mask = read_mask(mask_path)
        if mask.shape != (image.height, image.width):
            raise DatasetError(f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image's {image.width}x{image.height}")
        bad = (mask >= self.num_labels) & (mask != IGNORE_INDEX)
        if bad.any():
            raise DatasetError(
                f"{mask_path}: mask value {int(mask[bad].max())} is not a class id (num_labels {self.num_labels}; "
                f"{IGNORE_INDEX} = ignore)"
            )
        if self.transform is None:
            processed = self.processor(image, segmentation_maps=mask.astype(np.uint8))
            pixels = torch.from_numpy(processed["pixel_values"][0])
            labels = torch.from_numpy(processed["labels"][0])
        else:
            _, tv_tensors = needs_torchvision()
            pixels_in = tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1))  # a writable copy
            pixels, labels = self._augment(index, pixels_in, tv_tensors.Mask(torch.from_numpy(mask)))
            pixels, labels = self._finish(pixels.as_subclass(torch.Tensor)), labels.as_subclass(torch.Tensor).long()
        return {"pixel_values": pixels, "labels": labels, "index": index}


def collate(samples: list[dict]) -> dict:
    """A batch of the samples that loaded, with the names of those skipped and the errors met."""
    good = [s for s in samples if "pixel_values" in s]
    batch: dict = {
        "skipped": [s["skipped"] for s in samples if "skipped" in s],
        "errors": [s["error"] for s in samples if "error" in s],
        "size": len(good),
    }
    if good:
        batch["pixel_values"] = torch.stack([s["pixel_values"] for s in good])
        batch["labels"] = torch.stack([s["labels"] for s in good])
    return batch
