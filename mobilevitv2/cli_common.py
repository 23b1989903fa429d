"""What the ``mobilevitv2`` subcommands share: the one-line usage error, reading an image for a command,
loading a checkpoint for a task (refusing one of the other task), and the checkpoint's preprocessing."""

from __future__ import annotations

import argparse
import os
import sys

import torch
from PIL import Image

from mobilevitv2.config import MobileViTV2Config
from mobilevitv2.image_processing import PREPROCESSOR_CONFIG_NAME, MobileViTV2ImageProcessor
from mobilevitv2.loading import resolve_directory
from mobilevitv2.models import MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation

PROG = "mobilevitv2"
# Without a preprocessor_config.json: what transformers' MobileViTV2 checkpoints on the Hub ship.
DEFAULT_PREPROCESSING = {"classification": (288, 256), "segmentation": (544, 512)}
ARCHITECTURES = {"classification": "MobileViTV2ForImageClassification", "segmentation": "MobileViTV2ForSemanticSegmentation"}


class UsageError(Exception):
    """A problem with what the user asked for; reported as one line."""


# ----- shared helpers ----------------------------------------------------------------------------------------
def open_image(path: str, header_only: bool = False):
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


def load_model(model_id: str, task: str, args: argparse.Namespace, device: torch.device | str | None = None):
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


def checkpoint_processor(directory: str, task: str, quiet: bool = False):
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


