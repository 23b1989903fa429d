"""timm- and ml-cvnets-style state dicts made from transformers ones by renaming in the other direction,
written from spec sections 6.3/6.4 independently of mobilevitv2.convert (which they test)."""

import re

import torch

# transformers module path -> (ml-cvnets path, timm path); "{s1}" is the ml-cvnets stage number (s + 1).
_MODULES = [
    (r"mobilevitv2\.conv_stem", "conv_1", "stem"),
    (r"mobilevitv2\.encoder\.layer\.(?P<s>[01])\.layer\.(?P<j>\d+)\.expand_1x1", "layer_{s1}.{j}.block.exp_1x1", "stages.{s}.{j}.conv1_1x1"),
    (r"mobilevitv2\.encoder\.layer\.(?P<s>[01])\.layer\.(?P<j>\d+)\.conv_3x3", "layer_{s1}.{j}.block.conv_3x3", "stages.{s}.{j}.conv2_kxk"),
    (r"mobilevitv2\.encoder\.layer\.(?P<s>[01])\.layer\.(?P<j>\d+)\.reduce_1x1", "layer_{s1}.{j}.block.red_1x1", "stages.{s}.{j}.conv3_1x1"),
    (r"mobilevitv2\.encoder\.layer\.(?P<s>\d)\.downsampling_layer\.expand_1x1", "layer_{s1}.0.block.exp_1x1", "stages.{s}.0.conv1_1x1"),
    (r"mobilevitv2\.encoder\.layer\.(?P<s>\d)\.downsampling_layer\.conv_3x3", "layer_{s1}.0.block.conv_3x3", "stages.{s}.0.conv2_kxk"),
    (r"mobilevitv2\.encoder\.layer\.(?P<s>\d)\.downsampling_layer\.reduce_1x1", "layer_{s1}.0.block.red_1x1", "stages.{s}.0.conv3_1x1"),
    (r"mobilevitv2\.encoder\.layer\.(?P<s>\d)\.conv_kxk", "layer_{s1}.1.local_rep.0", "stages.{s}.1.conv_kxk"),
    (r"mobilevitv2\.encoder\.layer\.(?P<s>\d)\.conv_1x1", "layer_{s1}.1.local_rep.1", "stages.{s}.1.conv_1x1"),
    (r"mobilevitv2\.encoder\.layer\.(?P<s>\d)\.transformer\.layer\.(?P<j>\d+)\.layernorm_before", "layer_{s1}.1.global_rep.{j}.pre_norm_attn.0", "stages.{s}.1.transformer.{j}.norm1"),
    (r"mobilevitv2\.encoder\.layer\.(?P<s>\d)\.transformer\.layer\.(?P<j>\d+)\.attention\.(?P<p>qkv_proj|out_proj)", "layer_{s1}.1.global_rep.{j}.pre_norm_attn.1.{p}", "stages.{s}.1.transformer.{j}.attn.{p}"),
    (r"mobilevitv2\.encoder\.layer\.(?P<s>\d)\.transformer\.layer\.(?P<j>\d+)\.layernorm_after", "layer_{s1}.1.global_rep.{j}.pre_norm_ffn.0", "stages.{s}.1.transformer.{j}.norm2"),
    (r"mobilevitv2\.encoder\.layer\.(?P<s>\d)\.transformer\.layer\.(?P<j>\d+)\.ffn\.conv1", "layer_{s1}.1.global_rep.{j}.pre_norm_ffn.1", "stages.{s}.1.transformer.{j}.mlp.fc1"),
    (r"mobilevitv2\.encoder\.layer\.(?P<s>\d)\.transformer\.layer\.(?P<j>\d+)\.ffn\.conv2", "layer_{s1}.1.global_rep.{j}.pre_norm_ffn.3", "stages.{s}.1.transformer.{j}.mlp.fc2"),
    (r"mobilevitv2\.encoder\.layer\.(?P<s>\d)\.layernorm", "layer_{s1}.1.global_rep.{n}", "stages.{s}.1.norm"),
    (r"mobilevitv2\.encoder\.layer\.(?P<s>\d)\.conv_projection", "layer_{s1}.1.conv_proj", "stages.{s}.1.conv_proj"),
    (r"classifier", "classifier.1", "head.fc"),
    (r"segmentation_head\.aspp\.convs\.4\.conv_1x1", "seg_head.aspp.aspp_layer.convs.4.aspp_pool.conv_1x1", None),
    (r"segmentation_head\.aspp\.convs\.(?P<j>[0-3])", "seg_head.aspp.aspp_layer.convs.{j}", None),
    (r"segmentation_head\.aspp\.project", "seg_head.aspp.aspp_layer.project", None),
    (r"segmentation_head\.classifier", "seg_head.classifier", None),
]
# timm's plain convs (no norm wrapper): the transformer's and the local 1x1
_TIMM_PLAIN = re.compile(r"(attn\.(qkv|out)_proj|mlp\.fc\d|conv_1x1)$")


def to_source(key: str, fmt: str, n_attn_blocks=(2, 4, 3)) -> str:
    """A transformers key in ml-cvnets ("cvnets") or timm naming."""
    leaf_pattern = r"(?P<leaf>convolution\.\w+|normalization\.\w+|weight|bias)"
    for pattern, cvnets, timm in _MODULES:
        m = re.fullmatch(pattern + r"\." + leaf_pattern, key)
        if m is None:
            continue
        groups = {k: v for k, v in m.groupdict().items() if v is not None}
        s = int(groups.get("s", 0))
        path = (cvnets if fmt == "cvnets" else timm).format(**groups, s1=s + 1, n=n_attn_blocks[s - 2] if s >= 2 else 0)
        kind, _, param = groups["leaf"].rpartition(".")
        if fmt == "cvnets":
            leaf = {"convolution": "block.conv.", "normalization": "block.norm.", "": ""}[kind] + param
        elif _TIMM_PLAIN.search(path) or kind == "":
            leaf = param
        else:
            leaf = {"convolution": "conv.", "normalization": "bn."}[kind] + param
        return path + "." + leaf
    raise AssertionError(f"test mapping misses {key}")


def source_state_dict(model, fmt: str) -> dict:
    segmentation = any(k.startswith("segmentation_head.") for k in model.state_dict())
    state = {}
    for key, value in model.state_dict().items():
        new_key = to_source(key, fmt)
        if segmentation and key.startswith("mobilevitv2."):
            new_key = "encoder." + new_key  # ml-cvnets segmentation models nest the backbone
        state[new_key] = value.clone()
    if segmentation:  # ml-cvnets' auxiliary head, which conversion drops
        state["seg_head.aux_head.block.0.block.conv.weight"] = torch.randn(8, 192, 3, 3)
        state["seg_head.aux_head.block.2.block.conv.bias"] = torch.randn(5)
    return state
