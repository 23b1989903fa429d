"""MobileViTV2ImageProcessor against transformers' MobileViTImageProcessor, pixel for pixel."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from image_utils import label_map, synthetic_photo, through_file
from mobilevitv2 import MobileViTV2ImageProcessor
from mobilevitv2.image_processing import PREPROCESSOR_CONFIG_NAME

transformers = pytest.importorskip("transformers")

HUB_SETTINGS = {"size": {"shortest_edge": 288}, "crop_size": {"height": 256, "width": 256}}  # apple/mobilevitv2-1.0-imagenet1k-256


def hf_processor(**kwargs):
    """transformers' PIL processor (the torchvision one, when installed, resizes differently). Bilinear unless
    asked: transformers 5 changed the class default to bicubic, while 4.x and every Hub config use bilinear."""
    cls = getattr(transformers, "MobileViTImageProcessorPil", None) or transformers.MobileViTImageProcessor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(**{"resample": Image.BILINEAR, **kwargs})


def hf_pixels(processor, image, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return processor(image, return_tensors="pt", **kwargs)["pixel_values"]


def ours_pixels(image, **kwargs):
    return MobileViTV2ImageProcessor(**kwargs)(image, return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize(
    "height,width,fmt",
    [(301, 199, "JPEG"), (199, 301, "PNG"), (120, 90, "PNG"), (256, 256, "JPEG"), (250, 1000, "PNG")],
)
def test_pixels_match_transformers(height, width, fmt):
    image = through_file(synthetic_photo(height, width, seed=height), fmt)
    cases = [
        ({}, {}),  # class defaults: shortest edge 224, crop 256 (pads), BGR
        (HUB_SETTINGS, HUB_SETTINGS),
        (
            {**HUB_SETTINGS, "resample": Image.BICUBIC, "do_flip_channel_order": False},
            {**HUB_SETTINGS, "resample": "bicubic", "channel_order": "rgb"},
        ),
    ]
    for theirs_kwargs, ours_kwargs in cases:
        expected = hf_pixels(hf_processor(**theirs_kwargs), image)
        got = ours_pixels(image, **ours_kwargs)
        assert got.dtype == torch.float32 and got.shape == (1, 3, 256, 256)
        assert torch.equal(got, expected), (theirs_kwargs, (got - expected).abs().max())
    assert got.std() > 0.05  # a real image went through, not a blank


def test_smaller_than_crop_is_zero_padded_like_transformers():
    image = synthetic_photo(81, 57, seed=3)
    got = ours_pixels(image, do_resize=False)
    assert torch.equal(got, hf_pixels(hf_processor(do_resize=False), image))
    # the 57-wide image sits at column ceil((256 - 57) / 2) = 100, with zeros around it
    assert got[0, :, :, :100].abs().sum() == 0 and got[0, :, :, 157:].abs().sum() == 0
    assert got[0, :, 88:169, 100:157].abs().sum() > 0


def test_input_types_agree():
    image = synthetic_photo(150, 170, seed=4)
    array = np.array(image)  # (H, W, 3) uint8, writable
    expected = ours_pixels(image)
    processor = MobileViTV2ImageProcessor()
    for variant in [
        array,
        torch.from_numpy(array).permute(2, 0, 1),  # CHW uint8 tensor
        torch.from_numpy(array),  # HWC tensor
        torch.from_numpy(array).permute(2, 0, 1).float() / 255,  # CHW float in [0, 1]
    ]:
        assert torch.equal(processor(variant, return_tensors="pt")["pixel_values"], expected)
    batch = processor([image, array], return_tensors="pt")["pixel_values"]
    assert torch.equal(batch, expected.expand(2, -1, -1, -1))
    stacked = processor(np.stack([array, array]), return_tensors="np")["pixel_values"]
    assert isinstance(stacked, np.ndarray) and np.array_equal(stacked, batch.numpy())
    unstacked = processor([image], return_tensors=None).pixel_values
    assert isinstance(unstacked, list) and np.array_equal(unstacked[0], expected[0].numpy())


def test_greyscale_becomes_three_channels_like_transformers():
    grey = through_file(synthetic_photo(211, 160, seed=5).convert("L"), "PNG")
    expected = hf_pixels(hf_processor(**HUB_SETTINGS), grey, do_convert_rgb=True)
    for image in (grey, np.asarray(grey)):
        got = ours_pixels(image, **HUB_SETTINGS)
        assert got.shape == (1, 3, 256, 256)
        assert torch.equal(got, expected)
    assert torch.equal(got[0, 0], got[0, 2])


def test_rgba_alpha_composited_like_transformers_or_dropped():
    rgb = synthetic_photo(190, 230, seed=6)
    rgba = np.dstack([np.asarray(rgb), np.tile(np.linspace(0, 255, 230).astype(np.uint8), (190, 1))])
    image = through_file(Image.fromarray(rgba, "RGBA"), "PNG")
    composited = ours_pixels(image)
    assert composited.shape == (1, 3, 256, 256)
    assert torch.equal(ours_pixels(rgba), composited)  # numpy RGBA takes the same path
    dropped = ours_pixels(image, drop_alpha=True)
    assert torch.equal(dropped, ours_pixels(rgb))  # what PIL's convert("RGB") in timm/ml-cvnets gives
    assert not torch.equal(dropped, composited)
    # transformers 4.x and 5.24 composite onto white (our default); the PIL backend of some 5.x releases
    # (5.17 seen) drops the alpha instead, which drop_alpha=True reproduces. Either way, pixel for pixel.
    theirs = hf_pixels(hf_processor(), image, do_convert_rgb=True)
    assert torch.equal(theirs, composited) or torch.equal(theirs, dropped), transformers.__version__


def test_channel_order_is_explicit():
    image = synthetic_photo(260, 300, seed=7)
    bgr, rgb = ours_pixels(image), ours_pixels(image, channel_order="rgb")
    assert torch.equal(bgr, rgb.flip(1)) and not torch.equal(bgr, rgb)
    assert MobileViTV2ImageProcessor(do_flip_channel_order=False).channel_order == "rgb"
    with pytest.raises(ValueError, match="channel_order"):
        MobileViTV2ImageProcessor(channel_order="grb")


def test_cvnets_preset():
    preset = MobileViTV2ImageProcessor.for_cvnets()
    assert (preset.size, preset.crop_size) == ({"shortest_edge": 288}, {"height": 256, "width": 256})
    assert (preset.channel_order, preset.resample, preset.drop_alpha) == ("rgb", Image.BICUBIC, True)
    assert MobileViTV2ImageProcessor.for_cvnets(384).size == {"shortest_edge": 384}
    image = synthetic_photo(300, 400, seed=8)
    # the timm/ml-cvnets evaluation transform: PIL bicubic resize of the shortest edge, centre crop, /255, RGB
    resized = np.asarray(image.resize((384, 288), Image.BICUBIC), dtype=np.float64)[16:272, 64:320] / 255
    expected = torch.from_numpy(resized.astype(np.float32)).permute(2, 0, 1)
    assert torch.equal(preset(image, return_tensors="pt")["pixel_values"][0], expected)


@pytest.mark.parametrize("reduce_labels", [False, True])
@pytest.mark.parametrize("height,width", [(301, 199), (150, 100)])
def test_segmentation_maps_match_transformers(reduce_labels, height, width):
    image = synthetic_photo(height, width, seed=9)
    labels = label_map(height, width, seed=height)
    kwargs = {"do_reduce_labels": reduce_labels}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = hf_processor(**kwargs)(image, segmentation_maps=Image.fromarray(labels), return_tensors="pt")
    got = MobileViTV2ImageProcessor(**kwargs)(image, segmentation_maps=Image.fromarray(labels), return_tensors="pt")
    assert got["labels"].dtype == torch.int64 and got["labels"].shape == (1, 256, 256)
    assert torch.equal(got["labels"], expected["labels"])
    assert torch.equal(got["pixel_values"], expected["pixel_values"])
    values = set(got["labels"].unique().tolist())
    assert values == ({0, 1, 2, 3, 255} if reduce_labels else {0, 1, 2, 3, 4, 255})
    as_array = MobileViTV2ImageProcessor(**kwargs)(image, segmentation_maps=labels, return_tensors="pt")["labels"]
    assert torch.equal(as_array, got["labels"])


def test_post_process_semantic_segmentation_matches_transformers():
    logits = torch.randn(2, 5, 16, 20, generator=torch.Generator().manual_seed(0))
    outputs = transformers.modeling_outputs.SemanticSegmenterOutput(logits=logits)
    sizes = [(301, 199), (64, 80)]
    ours, theirs = MobileViTV2ImageProcessor(), hf_processor()
    got = ours.post_process_semantic_segmentation(outputs, target_sizes=sizes)
    expected = theirs.post_process_semantic_segmentation(outputs, target_sizes=sizes)
    assert [tuple(m.shape) for m in got] == sizes
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    low = ours.post_process_semantic_segmentation(logits)  # a bare tensor works too
    assert all(torch.equal(g, e) for g, e in zip(low, theirs.post_process_semantic_segmentation(outputs)))
    assert low[0].shape == (16, 20) and len(set(got[0].unique().tolist())) > 1
    with pytest.raises(ValueError, match="target sizes"):
        ours.post_process_semantic_segmentation(logits, target_sizes=[(10, 10)])


def test_config_round_trip_from_transformers(tmp_path):
    settings = {
        "size": {"shortest_edge": 320}, "crop_size": {"height": 288, "width": 288}, "resample": Image.BICUBIC,
        "do_flip_channel_order": False, "do_reduce_labels": True,
    }  # fmt: skip
    hf_processor(**settings).save_pretrained(tmp_path)
    ours = MobileViTV2ImageProcessor.from_pretrained(tmp_path)
    assert (ours.size, ours.crop_size, ours.resample) == ({"shortest_edge": 320}, {"height": 288, "width": 288}, 3)
    assert (ours.channel_order, ours.do_reduce_labels) == ("rgb", True)
    image = synthetic_photo(333, 444, seed=10)
    assert torch.equal(ours(image, return_tensors="pt")["pixel_values"], hf_pixels(hf_processor(**settings), image))
    # keys ours does not use (image_mean/std) survive a save
    saved = json.loads((tmp_path / PREPROCESSOR_CONFIG_NAME).read_text())
    ours.save_pretrained(tmp_path / "again")
    again = json.loads((tmp_path / "again" / PREPROCESSOR_CONFIG_NAME).read_text())
    assert {k: v for k, v in saved.items() if k in again} == {k: again[k] for k in saved if k in again}
    assert "image_mean" in again


def auto_image_processor(directory):
    """transformers.AutoImageProcessor.from_pretrained with its PIL processor (``use_fast=False``: with
    torchvision installed it would pick the torchvision one, whose resize differs from PIL's), skipping
    where this transformers version insists on torchvision for it (5.17 does)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return transformers.AutoImageProcessor.from_pretrained(directory, use_fast=False)
        except ImportError as exc:
            if "torchvision" not in str(exc).lower():
                raise
            pytest.skip(f"transformers {transformers.__version__}'s AutoImageProcessor needs torchvision")


def test_config_round_trip_to_transformers(tmp_path):
    ours = MobileViTV2ImageProcessor(**HUB_SETTINGS)
    path = ours.save_pretrained(tmp_path)
    saved = json.loads(open(path).read())
    assert saved["image_processor_type"] == "MobileViTImageProcessor"
    assert (saved["do_flip_channel_order"], saved["resample"], saved["size"]) == (True, 2, {"shortest_edge": 288})
    theirs = auto_image_processor(tmp_path)
    image = synthetic_photo(240, 330, seed=11)
    assert torch.equal(hf_pixels(theirs, image), ours(image, return_tensors="pt")["pixel_values"])
    cvnets_dir = tmp_path / "cvnets"
    MobileViTV2ImageProcessor.for_cvnets().save_pretrained(cvnets_dir)
    theirs = auto_image_processor(cvnets_dir)
    assert torch.equal(hf_pixels(theirs, image), ours_pixels(image, **HUB_SETTINGS, resample="bicubic", channel_order="rgb"))


def test_bad_inputs_are_refused():
    processor = MobileViTV2ImageProcessor()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        processor(np.full((40, 40, 3), 2.0))
    with pytest.raises(TypeError, match="unsupported image type"):
        processor("image.png")
    with pytest.raises(ValueError, match="images but"):
        processor([synthetic_photo(40, 40)], segmentation_maps=[np.zeros((40, 40), np.uint8)] * 2)
    with pytest.raises(ValueError, match="size must be"):
        MobileViTV2ImageProcessor(size={"longest_edge": 3})
