"""The one input check every image goes through (diffsketch.images), and its users."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffsketch.distill.extract import extract
from diffsketch.distill.extractor import ExtractorConfig, SketchExtractor
from diffsketch.errors import InvalidInputError
from diffsketch.images import LUMA, as_grey, image_batch, rgb_batch
from diffsketch.styles import build_style
from diffsketch.styles.xdog import xdog
from diffsketch.train.trainer import prepare_sketch

TINY = ExtractorConfig(channels=(4, 8), encoder_blocks=(1, 1), decoder_blocks=(1,))


def test_layouts_types_and_channels():
    rgb = torch.rand(2, 16, 24, 3)
    assert torch.equal(image_batch(rgb), rgb)
    assert torch.equal(image_batch(rgb[0]), rgb[:1])  # [H, W, C]
    assert image_batch(rgb[0, ..., 0]).shape == (1, 16, 24, 1)  # [H, W]
    assert torch.equal(image_batch(rgb.permute(0, 3, 1, 2), channels_first=True), rgb)
    with pytest.raises(InvalidInputError, match="channels-first"):
        image_batch(rgb.permute(0, 3, 1, 2))  # IMAGE inputs are ComfyUI's layout only
    assert torch.equal(image_batch((rgb * 255).round().to(torch.uint8)), (rgb * 255).round() / 255)
    words = (rgb.numpy() * 65535).round().astype(np.uint16)
    torch.testing.assert_close(image_batch(words), torch.from_numpy(words.astype(np.float32)) / 65535)
    assert image_batch(np.ones((4, 4), dtype=bool)).min() == 1
    with torch.inference_mode():
        frozen = torch.rand(1, 4, 4, 3)
    assert not image_batch(frozen).is_inference()  # ComfyUI's tensors come out usable by autograd


def test_alpha_over_white_and_grey():
    rgba = torch.zeros(1, 2, 2, 4)
    rgba[..., 0, :, 3] = 1.0  # top row opaque black, bottom row transparent
    out = rgb_batch(rgba)
    assert out.shape == (1, 2, 2, 3) and out[0, 0].max() == 0 and out[0, 1].min() == 1
    colour = torch.rand(1, 3, 3, 3)
    torch.testing.assert_close(as_grey(colour)[..., 0], (colour * torch.tensor(LUMA)).sum(-1))
    assert torch.equal(rgb_batch(colour[..., :1]), colour[..., :1].expand(-1, -1, -1, 3))


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(1, 8, 8, 3) * 255, "divide by 255"),
        (torch.rand(1, 8, 8, 3) - 0.5, r"expected \[0, 1\]"),
        (torch.full((1, 8, 8, 3), float("nan")), "NaN"),
        (torch.rand(1, 8, 8, 5), "channels"),
        (torch.zeros(1, 0, 8, 3), "empty"),
        (torch.zeros(1, 8, 8, 3, dtype=torch.int64), "int64"),
        ("photo.png", "image tensor"),
    ],
)
def test_bad_images_are_refused_with_the_input_named(bad, match):
    with pytest.raises(InvalidInputError, match=match) as info:
        image_batch(bad, "the photo")
    assert str(info.value).startswith("the photo")


def test_every_entry_refuses_a_float_image_in_0_to_255():
    """Extract, XDoG and the styles clamped such an image to white without a word; Train refused it.
    Now every place an image enters refuses it the same way."""
    photo = torch.rand(1, 64, 64, 3) * 255
    model = SketchExtractor(TINY).eval()
    with pytest.raises(InvalidInputError, match="divide by 255"):
        extract(model, photo)
    with pytest.raises(InvalidInputError, match="divide by 255"):
        xdog(photo.permute(0, 3, 1, 2))
    with pytest.raises(InvalidInputError, match="divide by 255"):
        build_style("xdog")(photo.permute(0, 3, 1, 2))
    with pytest.raises(InvalidInputError, match="divide by 255"):
        prepare_sketch(photo, (64, 64))
    # values a rounding error outside [0, 1] (resampling overshoot) are still accepted
    nearly = torch.rand(1, 64, 64, 3).clamp(0.01, 0.99)
    nearly[0, 0, 0] = torch.tensor([1.0005, -0.0005, 0.5])
    assert extract(model, nearly)[0].shape == (1, 64, 64, 3)
