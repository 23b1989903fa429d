"""Image files on disk: which files count as images, listing folders, and reading one image with a clear
error that names the file (unreadable, truncated, not an image)."""

from __future__ import annotations

import os
from collections.abc import Iterable

from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageReadError(ValueError):
    """An image file that cannot be decoded; the message names the file and the cause."""


def is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def images_in(directory: str, recursive: bool = True) -> list[str]:
    """The image files under ``directory``, sorted (hidden files and folders left out)."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in files if is_image_file(f) and not f.startswith("."))
        if not recursive:
            break
    return sorted(found)


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Files and folders, as given on a command line, to the list of image files: a folder contributes the
    images under it (sorted), a file itself; a path that does not exist, or a folder with no images, is a
    FileNotFoundError naming it."""
    paths: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = images_in(item)
            if not found:
                raise FileNotFoundError(f"{item}: no image files in this folder (looked for {', '.join(IMAGE_EXTENSIONS)})")
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return paths


def read_image(path: str, mode: str | None = "RGB") -> Image.Image:
    """The decoded image (converted to ``mode`` unless None). A truncated, corrupt or non-image file is an
    :class:`ImageReadError` naming it; a missing one a FileNotFoundError."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode) if mode is not None and image.mode != mode else image.copy()
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises all three for damaged files
        raise ImageReadError(f"{path}: cannot decode the image ({exc})") from None


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the header alone; an :class:`ImageReadError` if it is not an image."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from None
