"""timm and ml-cvnets MobileViTV2 state dicts -> transformers-format directories.

The three formats hold the same tensors under different names (spec sections 6.3 and 6.4), so conversion
is a rename, checked by a strict load: a file whose keys or shapes do not fit is refused with the keys
that do not. ``convert_checkpoint`` writes ``config.json`` + ``model.safetensors`` (which both this
package's and transformers' ``from_pretrained`` load) and a ``preprocessor_config.json`` with the
preprocessing the weights were trained with (RGB, bicubic; ``MobileViTV2ImageProcessor.for_cvnets``).

``semantics``: the original code and transformers' port compute slightly different functions with the same
weights (spec section 10): ``"source"`` (default) keeps what ml-cvnets/timm compute (the local 3x3 conv
dilated under output stride 8/16, non-divisible feature maps resized), ``"transformers"`` what transformers
computes when it loads the directory. They agree for classification at multiples of 32 pixels.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence

import torch

from mobilevitv2 import loading
from mobilevitv2.config import WIDTH_PRESETS, MobileViTV2Config
from mobilevitv2.image_processing import MobileViTV2ImageProcessor
from mobilevitv2.loading import CheckpointError
from mobilevitv2.models import MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation

SOURCES = ("timm", "ml-cvnets")
TASKS = ("classification", "segmentation")
SEMANTICS = ("source", "transformers")
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")
_STEM = "mobilevitv2.conv_stem.convolution.weight"
_SEG_CLASSIFIER = "segmentation_head.classifier.convolution.weight"

# ----- ml-cvnets (spec 6.3: transformers' converter rules, in order) ------------------------------------------
_CVNETS_ANCHOR = re.compile(r"^(conv_1|layer_[1-5]|classifier|seg_head)\.")
_CVNETS_RULES: list[tuple[str, str]] = [
    (r"\.block\.", "."),
    (r"\.conv\.", ".convolution."),
    (r"\.norm\.", ".normalization."),
    (r"^conv_1\.", "mobilevitv2.conv_stem."),
    (r"^layer_1\.", "mobilevitv2.encoder.layer.0.layer."),
    (r"^layer_2\.", "mobilevitv2.encoder.layer.1.layer."),
    (r"\.exp_1x1\.", ".expand_1x1."),
    (r"\.red_1x1\.", ".reduce_1x1."),
    (r"^layer_([3-5])\.0\.", lambda m: f"mobilevitv2.encoder.layer.{int(m[1]) - 1}.downsampling_layer."),
    (r"^layer_([3-5])\.1\.", lambda m: f"mobilevitv2.encoder.layer.{int(m[1]) - 1}."),
    (r"\.local_rep\.0\.", ".conv_kxk."),
    (r"\.local_rep\.1\.", ".conv_1x1."),
    (r"\.global_rep\.\d+\.(weight|bias)$", r".layernorm.\1"),  # the GroupNorm after the last layer
    (r"\.global_rep\.(\d+)\.", r".transformer.layer.\1."),
    (r"\.conv_proj\.", ".conv_projection."),
    (r"\.pre_norm_attn\.0\.", ".layernorm_before."),
    (r"\.pre_norm_attn\.1\.", ".attention."),
    (r"\.pre_norm_ffn\.0\.", ".layernorm_after."),
    (r"\.pre_norm_ffn\.1\.", ".ffn.conv1."),
    (r"\.pre_norm_ffn\.3\.", ".ffn.conv2."),
    (r"^classifier\.1\.", "classifier."),
    (r"^seg_head\.", "segmentation_head."),
    (r"\.aspp_layer\.", "."),
    (r"\.aspp_pool\.", "."),
]

# ----- timm (spec 6.4) -----------------------------------------------------------------------------------------
_TIMM_ANCHOR = re.compile(r"^(stem|stages\.[0-4]|head\.fc)\.")
_TIMM_RULES: list[tuple[str, str]] = [
    (r"^stem\.", "mobilevitv2.conv_stem."),
    (r"^stages\.([01])\.(\d+)\.", r"mobilevitv2.encoder.layer.\1.layer.\2."),
    (r"^stages\.([2-4])\.0\.", r"mobilevitv2.encoder.layer.\1.downsampling_layer."),
    (r"^stages\.([2-4])\.1\.", r"mobilevitv2.encoder.layer.\1."),
    (r"^head\.fc\.", "classifier."),
    (r"\.conv1_1x1\.", ".expand_1x1."),
    (r"\.conv2_kxk\.", ".conv_3x3."),
    (r"\.conv3_1x1\.", ".reduce_1x1."),
    (r"\.conv\.", ".convolution."),
    (r"\.bn\.", ".normalization."),
    (r"\.conv_1x1\.weight$", ".conv_1x1.convolution.weight"),
    (r"\.transformer\.(\d+)\.", r".transformer.layer.\1."),
    (r"\.norm1\.", ".layernorm_before."),
    (r"\.norm2\.", ".layernorm_after."),
    (r"\.attn\.(qkv_proj|out_proj)\.", r".attention.\1.convolution."),
    (r"\.mlp\.fc1\.", ".ffn.conv1.convolution."),
    (r"\.mlp\.fc2\.", ".ffn.conv2.convolution."),
    (r"(layer\.[2-4])\.norm\.", r"\1.layernorm."),
    (r"\.conv_proj\.", ".conv_projection."),
]

_FORMATS: dict[str, tuple[re.Pattern, list[tuple[str, str | Callable]]]] = {
    "ml-cvnets": (_CVNETS_ANCHOR, _CVNETS_RULES),
    "timm": (_TIMM_ANCHOR, _TIMM_RULES),
}


def rename_key(key: str, source: str) -> str | None:
    """The transformers name of one ``source`` key; None for keys conversion drops (ml-cvnets'
    auxiliary segmentation head). Raises KeyError for a key that is not of the source's format."""
    anchor, rules = _FORMATS[_check_choice(source, SOURCES, "source")]
    if source == "ml-cvnets":
        key = key.removeprefix("encoder.")  # segmentation checkpoints nest the backbone
        if key.startswith("seg_head.aux_head."):
            return None
    if not anchor.match(key):
        raise KeyError(key)
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename every key of a ``source`` state dict; refuses (CheckpointError) keys of another format."""
    converted, unknown = {}, []
    for key, value in state_dict.items():
        try:
            new_key = rename_key(key, source)
        except KeyError:
            unknown.append(key)
            continue
        if new_key is not None:
            converted[new_key] = value
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} of {len(state_dict)} keys are not {source} MobileViTV2 keys: "
            f"{loading._short(sorted(unknown))}{_format_hint(state_dict, source)}"
        )
    return converted


def read_source_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch pickle (``.pt/.pth/.bin``); a dict that wraps it under
    ``model``/``state_dict``/``model_state_dict`` is unwrapped and a DDP ``module.`` prefix removed."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"could not read {path}: {type(exc).__name__}: {exc}") from exc
    while isinstance(state, Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not state or not_tensors:
        raise CheckpointError(
            f"{path} is not a state dict of tensors"
            + (f" (non-tensor entries: {loading._short(not_tensors)})" if not_tensors else " (it is empty)")
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def infer_config(
    state_dict: Mapping[str, torch.Tensor],
    task: str | None = None,
    width: float | None = None,
    num_labels: int | None = None,
    **config_kwargs,
) -> tuple[str, MobileViTV2Config]:
    """(task, config) for a transformers-named state dict: the task from its head, the width from the stem
    and last-stage channels, the layer counts from the keys, the label count from the classifier."""
    if _STEM not in state_dict:
        raise CheckpointError(f"no stem convolution ({_STEM}) among the converted keys")
    found = "segmentation" if _SEG_CLASSIFIER in state_dict else "classification" if "classifier.weight" in state_dict else None
    if found is None:
        raise CheckpointError("the file has neither an image classifier nor a segmentation head")
    if task is not None and _check_choice(task, TASKS, "task") != found:
        raise CheckpointError(f"the file holds a {found} model, not a {task} model")
    head = state_dict[_SEG_CLASSIFIER if found == "segmentation" else "classifier.weight"]
    if num_labels is not None and num_labels != head.shape[0]:
        raise CheckpointError(f"the file's classifier has {head.shape[0]} labels, not {num_labels}")
    stem = state_dict[_STEM]
    last = state_dict.get("mobilevitv2.encoder.layer.4.conv_projection.convolution.weight")
    if width is None:
        fits = [
            w for w in WIDTH_PRESETS
            if MobileViTV2Config(width_multiplier=w).stage_channels[0] == stem.shape[0]
            and (last is None or MobileViTV2Config(width_multiplier=w).stage_channels[-1] == last.shape[0])
        ]  # fmt: skip
        if len(fits) != 1:
            raise CheckpointError(
                f"the stem has {stem.shape[0]} output channels, which matches no single width preset "
                f"{WIDTH_PRESETS}; pass the width"
            )
        width = fits[0]
    n_attn_blocks = []
    for stage in (2, 3, 4):
        pattern = re.compile(rf"^mobilevitv2\.encoder\.layer\.{stage}\.transformer\.layer\.(\d+)\.")
        indices = {int(m[1]) for m in map(pattern.match, state_dict) if m}
        n_attn_blocks.append(len(indices) or 1)
    kwargs = dict(width_multiplier=width, num_channels=stem.shape[1], num_labels=head.shape[0], n_attn_blocks=n_attn_blocks)
    if found == "segmentation":
        project = state_dict.get("segmentation_head.aspp.project.convolution.weight")
        if project is not None:
            kwargs["aspp_out_channels"] = project.shape[0]
    return found, MobileViTV2Config(**{**kwargs, **config_kwargs})


def convert_checkpoint(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    source: str,
    *,
    task: str | None = None,
    width: float | None = None,
    num_labels: int | None = None,
    labels: Sequence[str] | None = None,
    output_stride: int = 16,
    atrous_rates: Sequence[int] = (6, 12, 18),
    semantics: str = "source",
    image_size: int | None = None,
):
    """Convert the ``source`` ("timm" or "ml-cvnets") state dict in ``src`` and write a transformers-format
    directory ``out_dir``; returns the loaded model (eval mode). ``output_stride`` and ``atrous_rates``
    apply to segmentation models (ml-cvnets' PASCAL VOC recipe by default; ADE20K used 8 and 12, 24, 36);
    ``labels`` names the classes; ``image_size`` sets the preprocessing crop (default 256, 512 for
    segmentation)."""
    _check_choice(semantics, SEMANTICS, "semantics")
    state_dict = convert_state_dict(read_source_file(src), source)
    for key in [k for k in state_dict if k.endswith(".normalization.running_var")]:
        state_dict.setdefault(key.replace("running_var", "num_batches_tracked"), torch.tensor(0))
    config_kwargs = {}
    if semantics == "source":
        config_kwargs.update(non_divisible_patching="resize", dilate_local_conv=True)
    if labels is not None:
        config_kwargs["id2label"] = dict(enumerate(labels))
    if task == "segmentation" or _SEG_CLASSIFIER in state_dict:
        config_kwargs.update(output_stride=output_stride, atrous_rates=list(atrous_rates))
    try:
        found, config = infer_config(state_dict, task, width, num_labels, **config_kwargs)
    except ValueError as exc:  # e.g. a labels list of the wrong length
        raise CheckpointError(str(exc)) from exc
    cls = MobileViTV2ForSemanticSegmentation if found == "segmentation" else MobileViTV2ForImageClassification
    model = cls(config)
    loading.load_state_dict_checked(model, state_dict, strict=True, source=f"{os.fspath(src)} (as {source})")
    model.eval()
    model.save_pretrained(out_dir)
    if image_size is None:
        image_size = 512 if found == "segmentation" else 256
    MobileViTV2ImageProcessor.for_cvnets(image_size).save_pretrained(out_dir)
    return model


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")
    return value


def _format_hint(state_dict: Mapping[str, torch.Tensor], source: str) -> str:
    """Name the format the keys look like, when it is not the one asked for."""
    keys = [k.removeprefix("encoder.") for k in state_dict]
    if any(k.startswith("mobilevitv2.") for k in keys):
        return "; they look like transformers keys already: load the directory with from_pretrained"
    for other, (anchor, _) in _FORMATS.items():
        if other != source and sum(bool(anchor.match(k)) for k in keys) > len(keys) // 2:
            return f"; they look like {other} keys (convert with --from {other})"
    return ""
