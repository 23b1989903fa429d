"""Test images: a synthetic "photograph" (smooth gradients, sensor-like noise, hard-edged shapes) and its
round trip through PNG or JPEG files, so that resampling, rounding and codec paths all get exercised."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def synthetic_photo(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack(
        [
            128 + 100 * np.sin(x / width * 3.1 + seed),
            128 + 100 * np.cos(y / height * 2.3),
            255 * (x + y) / (height + width),
        ],
        axis=-1,
    )
    noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(noisy, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, x1 = sorted(rng.integers(0, width, 2))
        y0, y1 = sorted(rng.integers(0, height, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
    return image


def through_file(image: Image.Image, fmt: str) -> Image.Image:
    """Save and reload (``fmt``: "PNG" or "JPEG"), as a user's file on disk would be."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    buffer.seek(0)
    loaded = Image.open(buffer)
    loaded.load()
    return loaded


def label_map(height: int, width: int, num_classes: int = 5, seed: int = 0) -> np.ndarray:
    """A uint8 class map with blobs of every class, including 0 (background) and 255 (ignore)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), dtype=np.uint8)
    for k in list(range(1, num_classes)) + [255]:
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        labels[y0 : y0 + height // 3, x0 : x0 + width // 3] = k
    return labels
