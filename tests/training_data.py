"""Small image datasets made on the fly for the training tests: coloured shapes on a noisy background.

Classification: the class is the shape's colour (a task a small model learns in a few epochs). Segmentation:
the mask marks the shape's pixels with its colour's class id (0 is the background).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230)}


def _shape_image(rng: np.random.Generator, size: int, colour: tuple[int, int, int]) -> tuple[Image.Image, np.ndarray]:
    background = rng.integers(90, 160, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    mask = Image.new("L", (size, size), 0)
    extent = int(rng.integers(size // 3, size // 2 + 1))
    x, y = (int(v) for v in rng.integers(0, size - extent, size=2))
    box = [x, y, x + extent, y + extent]
    kind = int(rng.integers(0, 2))
    for canvas, fill in ((ImageDraw.Draw(image), colour), (ImageDraw.Draw(mask), 1)):
        (canvas.ellipse if kind else canvas.rectangle)(box, fill=fill)
    return image, np.asarray(mask, dtype=np.uint8)


def make_classification(root: str, per_class: tuple[int, int] = (24, 8), size: int = 48, seed: int = 0) -> list[str]:
    """``root/{train,val}/<colour>/<n>.png``; returns the class names (sorted, as the trainer labels them)."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val"), per_class):
        for name, colour in COLOURS.items():
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                image, _ = _shape_image(rng, size, colour)
                image.save(os.path.join(folder, f"{i:03d}.png"))
    return sorted(COLOURS)


def make_segmentation(root: str, counts: tuple[int, int] = (16, 4), size: int = 64, seed: int = 0) -> int:
    """``root/{train,val}/images/<n>.png`` and ``masks/<n>.png`` (palette PNG; 0 background, 1 + colour
    index for the shape); returns the number of labels."""
    rng = np.random.default_rng(seed)
    names = sorted(COLOURS)
    palette = [0, 0, 0] + [c for name in names for c in COLOURS[name]]
    for split, count in zip(("train", "val"), counts):
        os.makedirs(os.path.join(root, split, "images"), exist_ok=True)
        os.makedirs(os.path.join(root, split, "masks"), exist_ok=True)
        for i in range(count):
            label = int(rng.integers(0, len(names)))
            image, shape = _shape_image(rng, size, COLOURS[names[label]])
            image.save(os.path.join(root, split, "images", f"{i:03d}.jpg"), quality=95)
            mask = Image.fromarray(shape * (label + 1), mode="P")
            mask.putpalette(palette)
            mask.save(os.path.join(root, split, "masks", f"{i:03d}.png"))
    return len(names) + 1
