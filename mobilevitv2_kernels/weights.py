"""The weights of each fused op, stated once: named tuples that the model's modules build, that the op
schemas are generated from, and that the reference and the launchers take. (A leaf module: it imports
nothing of the package.)"""

from __future__ import annotations

from typing import NamedTuple, TypeVar

import torch
from torch import Tensor

W = TypeVar("W", bound=tuple)


class AttentionWeights(NamedTuple):
    """The attention module's 1x1 projections: qkv (1 + 2d, d), channels [query, key (d), value (d)];
    out (d, d)."""

    w_qkv: Tensor
    b_qkv: Tensor
    w_out: Tensor
    b_out: Tensor


class TransformerLayerWeights(NamedTuple):
    """One pre-norm transformer layer: the one-group GroupNorms' affines (d,), the attention's projections
    (as :class:`AttentionWeights`) and the FFN's 1x1 convs, ffn1 (F, d) and ffn2 (d, F)."""

    norm1_weight: Tensor
    norm1_bias: Tensor
    w_qkv: Tensor
    b_qkv: Tensor
    w_out: Tensor
    b_out: Tensor
    norm2_weight: Tensor
    norm2_bias: Tensor
    w_ffn1: Tensor
    b_ffn1: Tensor
    w_ffn2: Tensor
    b_ffn2: Tensor


class InvertedResidualWeights(NamedTuple):
    """A MobileNetV2 block with BatchNorm folded in: expand 1x1 (E, C_in) (both None for a block without
    it), depthwise 3x3 (E, 9) or (E, 1, 3, 3), reduce 1x1 (C_out, E), each with its bias."""

    w_expand: Tensor | None
    b_expand: Tensor | None
    w_dw: Tensor
    b_dw: Tensor
    w_reduce: Tensor
    b_reduce: Tensor


OPTIONAL = frozenset({"w_expand", "b_expand"})


def schema_arguments(weights: type[tuple]) -> str:
    """The weights' part of an op schema: ``"Tensor w_qkv, Tensor b_qkv, ..."`` (``Tensor?`` where optional)."""
    return ", ".join(f"Tensor{'?' if name in OPTIONAL else ''} {name}" for name in weights._fields)


def split(weights: type[W], args: tuple, options: list) -> tuple[W, list]:
    """``args`` of a public wrapper: one ``weights`` tuple, or its tensors one by one (the older form), then
    positional values for ``options`` (the wrapper's keyword arguments, in order). Returns the tuple and
    the options with the positional values in place; a clear TypeError for anything else."""
    if args and isinstance(args[0], weights):
        found, rest = args[0], args[1:]
    else:
        n = len(weights._fields)
        given = args[:n]
        if len(given) < n or not all(isinstance(a, torch.Tensor) or a is None for a in given):
            raise TypeError(f"expected a {weights.__name__} or its {n} tensors ({', '.join(weights._fields)})")
        found, rest = weights(*given), args[n:]
    missing = [name for name, t in found._asdict().items() if t is None and name not in OPTIONAL]
    if missing:
        raise TypeError(f"{weights.__name__}: {', '.join(missing)} must be a tensor, got None")
    if len(rest) > len(options):
        raise TypeError(f"{len(rest) - len(options)} positional argument(s) too many after the {weights.__name__}")
    return found, list(rest) + options[len(rest) :]
