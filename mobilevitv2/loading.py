"""Reading and writing transformers-format checkpoint directories (``config.json`` + ``model.safetensors``
or ``pytorch_model.bin``), locally or from the Hugging Face Hub, with errors that name the problem.

Nothing half-loads silently: by default every key must match in name and shape; ``strict=False`` keeps
the model's own initialisation for missing and mis-shaped keys (a new head: ``num_labels=10``) and says
which, in one warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import torch
from torch import nn

SAFE_WEIGHTS_NAME = "model.safetensors"
PT_WEIGHTS_NAME = "pytorch_model.bin"
_HUB_FILES = ["config.json", SAFE_WEIGHTS_NAME, PT_WEIGHTS_NAME, "preprocessor_config.json"]


class CheckpointError(RuntimeError):
    """A checkpoint could not be found, read, or does not fit the model; the message says which and why."""


def resolve_directory(path_or_id: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None) -> str:
    """A local directory as is; otherwise a hub id fetched with ``huggingface_hub`` (an optional extra)."""
    path = os.fspath(path_or_id)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise CheckpointError(f"{path} is a file; from_pretrained expects a directory with config.json and weights")
    if path.startswith((".", "/", "~")) or path.count("/") > 1:  # a path, not an "owner/name" Hub id
        raise CheckpointError(f"no checkpoint directory at {path}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{path!r} is not a local directory, and reading it from the Hugging Face Hub needs huggingface_hub "
            "(pip install 'mobilevitv2[hub]')"
        ) from None
    try:
        return snapshot_download(path, revision=revision, cache_dir=cache_dir, allow_patterns=_HUB_FILES)
    except Exception as exc:  # network errors, unknown repo, auth: all reported the same way
        raise CheckpointError(
            f"could not fetch {path!r} from the Hugging Face Hub (and there is no local directory of that name): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def read_state_dict(directory: str) -> dict[str, torch.Tensor]:
    """The weights in ``directory``: ``model.safetensors`` preferred, else ``pytorch_model.bin``."""
    safe = os.path.join(directory, SAFE_WEIGHTS_NAME)
    pt = os.path.join(directory, PT_WEIGHTS_NAME)
    try:
        if os.path.isfile(safe):
            from safetensors.torch import load_file

            return load_file(safe)
        if os.path.isfile(pt):
            state = torch.load(pt, map_location="cpu", weights_only=True)
            if not isinstance(state, Mapping):
                raise CheckpointError(f"{pt} holds a {type(state).__name__}, not a state dict")
            return dict(state)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"could not read the weights in {directory}: {type(exc).__name__}: {exc}") from exc
    raise CheckpointError(f"no {SAFE_WEIGHTS_NAME} or {PT_WEIGHTS_NAME} in {directory}")


def adapt_prefix(state_dict: Mapping[str, torch.Tensor], model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """Move between a bare backbone and a model with a head, as transformers does: a head model's keys carry
    ``prefix.`` (``mobilevitv2.``), a bare backbone's do not; a head checkpoint loads into a bare backbone
    by dropping its head."""
    model_keys = model.state_dict().keys()
    model_has_prefix = any(k.startswith(prefix + ".") for k in model_keys)
    ckpt_has_prefix = any(k.startswith(prefix + ".") for k in state_dict)
    if model_has_prefix and not ckpt_has_prefix:
        return {f"{prefix}.{k}": v for k, v in state_dict.items()}
    if ckpt_has_prefix and not model_has_prefix:
        return {k[len(prefix) + 1 :]: v for k, v in state_dict.items() if k.startswith(prefix + ".")}
    return dict(state_dict)


STEM_WEIGHT = "conv_stem.convolution.weight"


def adapt_stem_channels(state_dict: Mapping[str, torch.Tensor], num_channels: int) -> dict[str, torch.Tensor]:
    """Fit a checkpoint's stem conv (C0, 3, k, k) to ``num_channels`` inputs so that the model computes the
    same function on the RGB part: extra input channels get zero weights; for 1 channel the RGB weights are
    summed (a grey image then gives what its RGB replica gave)."""
    state_dict = dict(state_dict)
    key = next((k for k in state_dict if k.endswith(STEM_WEIGHT)), None)
    if key is None:
        raise CheckpointError(f"the checkpoint has no stem weight (*{STEM_WEIGHT}) to adapt to {num_channels} channels")
    weight = state_dict[key]
    out_channels, in_channels, kh, kw = weight.shape
    if num_channels == 1 and in_channels > 1:
        state_dict[key] = weight.sum(dim=1, keepdim=True)
    elif num_channels > in_channels:
        state_dict[key] = torch.cat([weight, weight.new_zeros(out_channels, num_channels - in_channels, kh, kw)], dim=1)
    elif num_channels != in_channels:
        raise CheckpointError(f"cannot adapt the checkpoint's {in_channels}-channel stem to {num_channels} channels")
    return state_dict


def load_state_dict_checked(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True, source: str = "checkpoint"
) -> None:
    """Load with every problem reported at once: missing keys, unexpected keys, shape mismatches."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if strict and mismatched:
        problems.append("shape mismatch for " + "; ".join(mismatched))
    if strict and missing:
        problems.append(f"{len(missing)} missing keys: {_short(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_short(unexpected)}")
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + " | ".join(problems))
    if missing or unexpected or mismatched:
        shapes = f"; shape mismatch (kept the initialisation) for {'; '.join(mismatched)}" if mismatched else ""
        warnings.warn(
            f"{source}: loaded non-strictly into {type(model).__name__}; {len(missing)} keys kept their "
            f"initialisation ({_short(missing)}), {len(unexpected)} checkpoint keys were not used ({_short(unexpected)})"
            + shapes,
            stacklevel=3,
        )
    fitting = {k: v for k, v in state_dict.items() if k in expected and tuple(v.shape) == tuple(expected[k].shape)}
    model.load_state_dict(fitting, strict=False)


def save_directory(model: nn.Module, config_dict_writer, directory: str | os.PathLike, safe_serialization: bool = True) -> None:
    """Write ``config.json`` (through ``config_dict_writer(directory)``) and the weights."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    config_dict_writer(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if safe_serialization:
        from safetensors.torch import save_file

        save_file(state, os.path.join(directory, SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
        stale = os.path.join(directory, PT_WEIGHTS_NAME)
    else:
        torch.save(state, os.path.join(directory, PT_WEIGHTS_NAME))
        stale = os.path.join(directory, SAFE_WEIGHTS_NAME)
    if os.path.exists(stale):  # never leave weights from an earlier save beside the new ones
        os.remove(stale)


def _short(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
