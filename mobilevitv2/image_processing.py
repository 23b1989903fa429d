"""Image preprocessing for MobileViTV2: transformers' ``MobileViTImageProcessor``, pixel for pixel, with the
channel order as an explicit option and a preset for timm / ml-cvnets weights
(:meth:`MobileViTV2ImageProcessor.for_cvnets`).

Per image: to 3-channel uint8, PIL resize, rescale to [0, 1] (no mean/std normalisation), centre crop,
RGB -> BGR by default, channels first. The steps in detail, the channel-order default and the deliberate
differences from transformers 5: docs/design.md, "Image preprocessing".
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mobilevitv2.loading import resolve_directory

PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"
CHANNEL_ORDERS = ("bgr", "rgb")
RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
# Keys this class reads and writes; anything else in a preprocessor_config.json is kept and written back.
_FIELDS = (
    "do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_center_crop", "crop_size",
    "do_flip_channel_order", "do_reduce_labels", "do_convert_rgb", "drop_alpha",
)  # fmt: skip
_DROPPED_KEYS = {"image_processor_type", "feature_extractor_type", "processor_class", "_processor_class"}


class BatchFeature(dict):
    """The processor's output: ``out["pixel_values"]`` or ``out.pixel_values``; ``.to(device)`` for tensors."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, *args: Any, **kwargs: Any) -> "BatchFeature":
        return BatchFeature({k: v.to(*args, **kwargs) if isinstance(v, torch.Tensor) else v for k, v in self.items()})


def _size_dict(size: int | Mapping[str, int] | None, default: dict[str, int]) -> dict[str, int]:
    if size is None:
        return dict(default)
    if isinstance(size, int):
        return {"shortest_edge": size} if "shortest_edge" in default else {"height": size, "width": size}
    size = {k: int(v) for k, v in size.items() if v is not None}
    if set(size) not in ({"shortest_edge"}, {"height", "width"}):
        raise ValueError(f"size must be {{'shortest_edge': n}} or {{'height': h, 'width': w}}, got {size}")
    return size


def _resample_code(resample: int | str) -> int:
    if isinstance(resample, str):
        if resample.lower() not in RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(RESAMPLE)} or a PIL code, got {resample!r}")
        return RESAMPLE[resample.lower()]
    if int(resample) not in RESAMPLE.values():
        raise ValueError(f"resample must be a PIL resampling code 0-5, got {resample!r}")
    return int(resample)


class MobileViTV2ImageProcessor:
    """Images -> ``pixel_values`` (B, C, crop_h, crop_w) float32 in [0, 1]; segmentation maps -> ``labels``.

    Call it like transformers' processor: ``processor(images, return_tensors="pt")["pixel_values"]``.
    ``images``: one image or a list; each a PIL image, a uint8 numpy array (H, W[, C]) or a torch tensor
    ((C, H, W) or (H, W, C); a 4-D array or tensor is a batch). Float arrays are taken as [0, 1] pixels.
    Settings are keyword arguments of the constructor and can be overridden per call.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        do_resize: bool = True,
        size: int | Mapping[str, int] | None = None,
        resample: int | str = "bilinear",
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_center_crop: bool = True,
        crop_size: int | Mapping[str, int] | None = None,
        channel_order: str = "bgr",
        do_reduce_labels: bool = False,
        do_convert_rgb: bool = True,
        drop_alpha: bool = False,
        do_flip_channel_order: bool | None = None,
        **extra: Any,
    ) -> None:
        if do_flip_channel_order is not None:  # transformers' name for the same setting
            channel_order = "bgr" if do_flip_channel_order else "rgb"
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
        self.do_resize = bool(do_resize)
        self.size = _size_dict(size, {"shortest_edge": 224})
        self.resample = _resample_code(resample)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_center_crop = bool(do_center_crop)
        self.crop_size = _size_dict(crop_size, {"height": 256, "width": 256})
        self.channel_order = channel_order
        self.do_reduce_labels = bool(do_reduce_labels)
        self.do_convert_rgb = True if do_convert_rgb is None else bool(do_convert_rgb)
        self.drop_alpha = bool(drop_alpha)
        self.extra = {k: v for k, v in extra.items() if k not in _DROPPED_KEYS}

    @property
    def do_flip_channel_order(self) -> bool:
        return self.channel_order == "bgr"

    # ----- presets -----------------------------------------------------------------------------------------
    @classmethod
    def for_cvnets(cls, image_size: int = 256, shortest_edge: int | None = None, **kwargs: Any) -> "MobileViTV2ImageProcessor":
        """The evaluation transform of timm and ml-cvnets weights: RGB, bicubic resize of the shortest edge,
        centre crop ``image_size``, /255, alpha dropped. The shortest edge defaults to 288 for 256 crops
        (timm's crop_pct 0.888) and to ``image_size`` otherwise (the 384 fine-tunes, crop_pct 1.0)."""
        if shortest_edge is None:
            shortest_edge = 288 if image_size == 256 else image_size
        settings = dict(
            size={"shortest_edge": shortest_edge}, crop_size={"height": image_size, "width": image_size},
            resample="bicubic", channel_order="rgb", drop_alpha=True,
        )  # fmt: skip
        return cls(**{**settings, **kwargs})

    # ----- serialisation -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """transformers' ``preprocessor_config.json`` keys (``do_flip_channel_order`` for the channel order)."""
        data = {name: copy.deepcopy(getattr(self, name)) for name in _FIELDS}
        return {**self.extra, **data, "image_processor_type": "MobileViTImageProcessor"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides: Any) -> "MobileViTV2ImageProcessor":
        data = {**data, **overrides}
        if "channel_order" in overrides:
            data.pop("do_flip_channel_order", None)
        return cls(**data)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **overrides: Any) -> "MobileViTV2ImageProcessor":
        """Read ``preprocessor_config.json`` from a directory, a file path or a Hub id."""
        path = os.fspath(path_or_id)
        if not os.path.isfile(path):
            path = os.path.join(resolve_directory(path), PREPROCESSOR_CONFIG_NAME)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no {PREPROCESSOR_CONFIG_NAME} in {path_or_id}")
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, **overrides)

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, PREPROCESSOR_CONFIG_NAME)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        return path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.to_dict(), sort_keys=True)})"

    # ----- the pipeline ------------------------------------------------------------------------------------
    def __call__(self, images: Any, segmentation_maps: Any = None, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, segmentation_maps, **kwargs)

    def preprocess(
        self, images: Any, segmentation_maps: Any = None, return_tensors: str | None = None, **overrides: Any
    ) -> BatchFeature:
        """``pixel_values`` (and ``labels`` for segmentation maps, int64 (B, crop_h, crop_w)).
        ``return_tensors``: "pt" (stacked torch tensors), "np" (stacked arrays) or None (lists of arrays)."""
        if overrides:
            return self.from_dict(self.to_dict(), **overrides).preprocess(images, segmentation_maps, return_tensors)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        pixel_values = [self._process_image(image) for image in _as_list(images)]
        data = {"pixel_values": _stack(pixel_values, return_tensors)}
        if segmentation_maps is not None:
            maps = _as_list(segmentation_maps, maps=True)
            if len(maps) != len(pixel_values):
                raise ValueError(f"got {len(pixel_values)} images but {len(maps)} segmentation maps")
            data["labels"] = _stack([self._process_map(m) for m in maps], return_tensors)
        return BatchFeature(data)

    def _process_image(self, image: Any) -> np.ndarray:
        array = self._to_uint8_hwc(image)  # (H, W, C)
        if self.do_resize:
            array = _pil_resize(array, self._output_size(array.shape[:2]), self.resample)
        array = array.transpose(2, 0, 1)  # (C, H, W)
        if self.do_rescale:
            array = (array.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_center_crop:
            array = _center_crop(array, self.crop_size["height"], self.crop_size["width"])
        if self.do_flip_channel_order and array.shape[0] >= 3:
            array = np.concatenate([array[2::-1], array[3:]])
        return np.ascontiguousarray(array, dtype=np.float32)

    def _process_map(self, segmentation_map: Any) -> np.ndarray:
        labels = _map_to_array(segmentation_map).astype(np.int64)  # (H, W)
        if self.do_reduce_labels:  # 0 (background) -> 255 (ignored), 255 stays, the rest shift down by one
            labels = np.where(labels == 0, 255, labels) - 1
            labels = np.where(labels == 254, 255, labels)
        if labels.min() < 0 or labels.max() > 255:
            raise ValueError(f"segmentation map values must be in [0, 255], got [{labels.min()}, {labels.max()}]")
        labels = labels.astype(np.uint8)[:, :, None]
        if self.do_resize:
            labels = _pil_resize(labels, self._output_size(labels.shape[:2]), RESAMPLE["nearest"])
        labels = labels.transpose(2, 0, 1)
        if self.do_center_crop:
            labels = _center_crop(labels, self.crop_size["height"], self.crop_size["width"])
        return labels[0].astype(np.int64)

    def _output_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        if "height" in self.size:
            return self.size["height"], self.size["width"]
        height, width = hw
        short, long = min(height, width), max(height, width)
        new_short, new_long = self.size["shortest_edge"], int(self.size["shortest_edge"] * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def _to_uint8_hwc(self, image: Any) -> np.ndarray:
        if isinstance(image, Image.Image):
            if self.do_convert_rgb:
                image = _pil_to_rgb(image, self.drop_alpha)
            array = _to_uint8(np.asarray(image))
        else:
            array = _array_to_hwc(image)
        if array.ndim == 2:
            array = array[:, :, None]
        if self.do_convert_rgb and array.shape[2] != 3:
            if array.shape[2] not in (1, 2, 4):
                raise ValueError(f"cannot convert a {array.shape[2]}-channel image to RGB; pass do_convert_rgb=False")
            mode = {1: "L", 2: "LA", 4: "RGBA"}[array.shape[2]]
            image = Image.fromarray(array[:, :, 0] if mode == "L" else array, mode)
            array = np.asarray(_pil_to_rgb(image, self.drop_alpha))
        return array

    # ----- post-processing ---------------------------------------------------------------------------------
    def post_process_semantic_segmentation(
        self, outputs: Any, target_sizes: Sequence[tuple[int, int]] | torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Class-index masks (H, W), one per image: the logits upsampled bilinearly (align_corners=False) to
        each ``target_sizes[i]`` (height, width) and argmaxed; without target sizes, argmax at logit
        resolution. ``outputs``: the model output (its ``.logits``) or the logits tensor (B, classes, h, w).
        The target size should be that of the image the model saw before any crop (see ``do_center_crop``)."""
        logits = outputs if isinstance(outputs, torch.Tensor) else outputs.logits
        if target_sizes is None:
            return [item.argmax(dim=0) for item in logits]
        if isinstance(target_sizes, torch.Tensor):
            target_sizes = target_sizes.tolist()
        if len(target_sizes) != len(logits):
            raise ValueError(f"got {len(target_sizes)} target sizes for a batch of {len(logits)} logits")
        masks = []
        for item, size in zip(logits, target_sizes):
            resized = F.interpolate(item[None], size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
            masks.append(resized[0].argmax(dim=0))
        return masks


# ----- helpers -------------------------------------------------------------------------------------------------
def _as_list(images: Any, maps: bool = False) -> list[Any]:
    """One image or a batch -> a list of single images (a 4-D array/tensor, or 3-D for maps, is a batch)."""
    batch_ndim = 3 if maps else 4
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == batch_ndim:
        return list(images)
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def _stack(arrays: list[np.ndarray], return_tensors: str | None):
    if return_tensors is None:
        return arrays
    if len({a.shape for a in arrays}) > 1:
        raise ValueError(f"cannot stack arrays of shapes {sorted({a.shape for a in arrays})}; use do_center_crop")
    stacked = np.stack(arrays)
    return torch.from_numpy(stacked) if return_tensors == "pt" else stacked


def _array_to_hwc(image: Any) -> np.ndarray:
    """A numpy array (HWC preferred) or torch tensor (CHW preferred), 2-D or 3-D, as uint8 (H, W[, C])."""
    is_tensor = isinstance(image, torch.Tensor)
    if is_tensor:
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"unsupported image type {type(image).__name__}; pass PIL images, numpy arrays or torch tensors")
    if image.ndim == 3:
        channels_first = image.shape[0] in (1, 2, 3, 4) and (is_tensor or image.shape[-1] not in (1, 2, 3, 4))
        if channels_first:
            image = image.transpose(1, 2, 0)
    elif image.ndim != 2:
        raise ValueError(f"an image must be 2-D or 3-D, got shape {image.shape}")
    return _to_uint8(image)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.floating):
        if image.size and (image.min() < 0 or image.max() > 1):
            raise ValueError(f"float images must hold [0, 1] pixels, got [{image.min():.4g}, {image.max():.4g}]")
        return np.round(image * 255).astype(np.uint8)
    if image.size and (image.min() < 0 or image.max() > 255):
        raise ValueError(f"integer images must hold [0, 255] pixels, got [{image.min()}, {image.max()}]")
    return image.astype(np.uint8)


def _pil_to_rgb(image: Image.Image, drop_alpha: bool) -> Image.Image:
    """RGB: transparency composited onto white (transformers), or dropped (PIL convert, timm/ml-cvnets)."""
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    if not has_alpha or drop_alpha:
        return image.convert("RGB")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")


def _pil_resize(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """(H, W, C) uint8 -> (height, width, C) with PIL, channel by channel unless the mode is L or RGB."""
    height, width = size
    channels = array.shape[2]
    if channels in (1, 3):
        image = Image.fromarray(array[:, :, 0] if channels == 1 else array)
        resized = np.asarray(image.resize((width, height), resample=resample))
        return resized.reshape(height, width, channels)
    planes = [np.asarray(Image.fromarray(array[:, :, c]).resize((width, height), resample=resample)) for c in range(channels)]
    return np.stack(planes, axis=-1)


def _center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, H, W) -> (C, height, width) around the centre; sides smaller than the crop are zero-padded, with
    the extra pixel of an odd difference before the image (as transformers does)."""
    top, left = (array.shape[1] - height) // 2, (array.shape[2] - width) // 2
    if top < 0 or left < 0:
        pad_top, pad_left = max(0, -top), max(0, -left)
        pad_bottom = max(0, height - array.shape[1] - pad_top)
        pad_right = max(0, width - array.shape[2] - pad_left)
        array = np.pad(array, ((0, 0), (pad_top, pad_bottom), (pad_left, pad_right)))
        top, left = max(0, top), max(0, left)
    return array[:, top : top + height, left : left + width]


def _map_to_array(segmentation_map: Any) -> np.ndarray:
    if isinstance(segmentation_map, Image.Image):
        array = np.asarray(segmentation_map)
    elif isinstance(segmentation_map, torch.Tensor):
        array = segmentation_map.detach().cpu().numpy()
    elif isinstance(segmentation_map, np.ndarray):
        array = segmentation_map
    else:
        raise TypeError(f"unsupported segmentation map type {type(segmentation_map).__name__}")
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:2])
    if array.ndim != 2:
        raise ValueError(f"a segmentation map must be 2-D (H, W), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
        raise ValueError(f"segmentation maps hold integer class indices, got dtype {array.dtype}")
    return array
