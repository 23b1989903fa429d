"""The model and preprocessing a run starts from: a checkpoint to fine-tune (its head replaced when the label
count differs) or a published width from scratch, the labels of the data, and the checkpoint's preprocessing
(size ratio, channel order) carried into training, evaluation and the saved ``preprocessor_config.json``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from mobilevitv2 import loading
from mobilevitv2.config import MobileViTV2Config
from mobilevitv2.image_processing import PREPROCESSOR_CONFIG_NAME, MobileViTV2ImageProcessor
from mobilevitv2.models import MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation

MODEL_CLASSES = {"classification": MobileViTV2ForImageClassification, "segmentation": MobileViTV2ForSemanticSegmentation}
DEFAULT_IMAGE_SIZE = {"classification": 256, "segmentation": 512}
# transformers' classification checkpoints resize the short side to 288 and crop 256.
RESIZE_RATIO = {"classification": 288 / 256, "segmentation": 1.0}


@dataclass
class Start:
    model: torch.nn.Module
    processor: MobileViTV2ImageProcessor
    image_size: int
    notes: list[str]  # what the log should say about how the model was made


def labels_for_segmentation(num_labels: int | None, labels_file: str | None, config: MobileViTV2Config | None) -> list[str]:
    if labels_file is not None:
        with open(labels_file, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        if not names:
            raise ValueError(f"{labels_file}: no class names (one per line)")
        if num_labels is not None and num_labels != len(names):
            raise ValueError(f"--num-labels {num_labels} but {labels_file} names {len(names)} classes")
        return names
    if num_labels is None and config is not None and config.id2label:
        num_labels = len(config.id2label)
    if num_labels is None:
        raise ValueError("segmentation needs --num-labels N or --labels FILE (or a checkpoint to take them from)")
    if num_labels < 2:
        raise ValueError(f"segmentation needs at least 2 classes, got --num-labels {num_labels}")
    if config is not None and config.id2label and len(config.id2label) == num_labels:
        return [config.id2label[i] for i in range(num_labels)]
    return [f"class_{i}" for i in range(num_labels)]


def checkpoint_config(model_id: str | None, task: str) -> tuple[str | None, MobileViTV2Config | None]:
    """The checkpoint's directory and config, refusing one made for the other task."""
    if model_id is None:
        return None, None
    directory = loading.resolve_directory(model_id)
    config = MobileViTV2Config.from_pretrained(directory)
    wanted = MODEL_CLASSES[task].__name__
    if config.architectures and wanted.lower() not in [a.lower() for a in config.architectures]:
        raise loading.CheckpointError(f"{model_id} is a {', '.join(config.architectures)} checkpoint; {task} training needs a {wanted} checkpoint")
    return directory, config


def build(task: str, labels: list[str], model_id: str | None, width: float | None, image_size: int | None,
          output_stride: int) -> Start:  # fmt: skip
    directory, config = checkpoint_config(model_id, task)
    notes = []
    id2label = dict(enumerate(labels))
    fields = {"num_labels": len(labels), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    if task == "segmentation":
        fields["output_stride"] = output_stride
    cls = MODEL_CLASSES[task]
    if config is None:
        config = MobileViTV2Config.from_width(width, **fields)
        model = cls(config)
        notes.append(f"from scratch: width {width}, {len(labels)} labels")
        processor = None
    else:
        old_labels = len(config.id2label or {}) or config.num_labels
        config = MobileViTV2Config.from_dict(config.to_dict(), **fields)
        model = cls(config)
        state = loading.adapt_prefix(loading.read_state_dict(directory), model, cls.base_model_prefix)
        replaced = _replace_head(model, state)
        loading.load_state_dict_checked(model, state, strict=True, source=str(model_id))
        if replaced:
            notes.append(f"fine-tuning {model_id}: new head for {len(labels)} labels (the checkpoint has {old_labels}); re-initialised {', '.join(replaced)}")
        else:
            notes.append(f"fine-tuning {model_id}: all weights loaded, the head kept ({len(labels)} labels)")
        processor_file = os.path.join(directory, PREPROCESSOR_CONFIG_NAME)
        processor = MobileViTV2ImageProcessor.from_pretrained(directory) if os.path.isfile(processor_file) else None
    if image_size is None:
        image_size = processor.crop_size["height"] if processor is not None else DEFAULT_IMAGE_SIZE[task]
    processor = evaluation_processor(task, image_size, processor)
    return Start(model=model, processor=processor, image_size=image_size, notes=notes)


def evaluation_processor(task: str, image_size: int, base: MobileViTV2ImageProcessor | None) -> MobileViTV2ImageProcessor:
    """The checkpoint's preprocessing (channel order, resample, short-side-to-crop ratio) at ``image_size``;
    transformers' defaults (BGR) for a model trained from scratch."""
    settings = base.to_dict() if base is not None else {}
    ratio = RESIZE_RATIO[task]
    if base is not None and "shortest_edge" in base.size:
        ratio = base.size["shortest_edge"] / base.crop_size["height"]
    settings.update(
        size={"shortest_edge": int(round(image_size * ratio))},
        crop_size={"height": image_size, "width": image_size},
        do_resize=True,
        do_center_crop=True,
        do_reduce_labels=False,  # masks hold class ids as they are
    )
    return MobileViTV2ImageProcessor.from_dict(settings)


def _replace_head(model: torch.nn.Module, state: dict) -> list[str]:
    """Keys whose shape differs from the model's (the classifier for another label count) take the model's
    fresh initialisation; any such key outside the head is an error, as is any other mismatch later."""
    expected = model.state_dict()
    replaced = []
    for key, value in expected.items():
        if key in state and tuple(state[key].shape) != tuple(value.shape):
            if not (key.startswith("classifier.") or key.startswith("segmentation_head.classifier.")):
                raise loading.CheckpointError(
                    f"checkpoint key {key} has shape {tuple(state[key].shape)}, the model {tuple(value.shape)}: "
                    "only the classifier may differ when fine-tuning"
                )
            state[key] = value
            replaced.append(key)
    return replaced
