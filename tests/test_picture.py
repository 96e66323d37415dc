"""Fitting the user's own picture to the backbone (own size, centre-cropped to the size multiple,
optional max_side), the drawing over it fitted alike, and the family-aware size rule (SDXL takes
multiples of 32, SD 1.x only of 64). Tiny random-weight models, CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import tiny_sdxl_backend

from diffsketch.capture.picture import (
    PictureFit,
    apply_fit,
    fit_drawing,
    fit_picture,
    fit_size,
    large_picture_notice,
)
from diffsketch.capture.sample import CapturedSample
from diffsketch.capture.sampling import SamplingSettings
from diffsketch.capture.spec import SD1, SDXL
from diffsketch.errors import InvalidInputError
from diffsketch.images import resize_image
from diffsketch.train.trainer import prepare_sketch

SMALL = SamplingSettings(steps=10, cfg=5.0, timesteps=(1, 501, 901), schedule="fast")


# -- the fit rule ---------------------------------------------------------------------------------
def test_a_picture_is_centre_cropped_to_multiples_of_64_for_sd1():
    fit = fit_size(1000, 750, 64, SD1)
    assert fit.resized == (1000, 750) and fit.size == (960, 704)
    assert fit.crop == (20, 23, 960, 704)  # centred: 40 px of width, 46 px of height cut
    assert fit.notice().startswith(
        "the picture is 1000x750: cropped 40 px of width and 46 px of height (centred) to 960x704 "
        "(multiples of 64 for SD 1.x)"
    )


def test_sdxl_rounds_to_multiples_of_32():
    fit = fit_size(1000, 750, 32, SDXL)
    assert fit.size == (992, 736) and fit.crop == (4, 7, 992, 736)
    assert "multiples of 32 for SDXL" in fit.notice()


def test_a_picture_of_valid_size_is_used_as_it_is():
    fit = fit_size(768, 512, 64, SD1)
    assert not fit.changed and fit.crop == (0, 0, 768, 512) and fit.notice() is None
    picture = torch.rand(1, 3, 512, 768)
    fitted, fit = fit_picture(picture, 64, SD1)
    assert fitted is picture


@pytest.mark.parametrize(
    "size, max_side, resized, crop",
    [
        ((2000, 1500), 512, (512, 384), (0, 0, 512, 384)),
        ((750, 1000), 500, (375, 500), (27, 26, 320, 448)),  # portrait: the height is the longer side
        ((600, 400), 1024, (600, 400), (12, 8, 576, 384)),  # already below max_side: not resized
    ],
)
def test_max_side_resizes_keeping_the_shape_then_crops(size, max_side, resized, crop):
    fit = fit_size(*size, 64, SD1, max_side)
    assert fit.resized == resized and fit.crop == crop
    if resized != size:
        assert f"resized to {resized[0]}x{resized[1]} (max_side {max_side})" in fit.notice()


def test_fit_picture_resizes_antialiased_and_crops_the_centre():
    picture = torch.rand(1, 3, 150, 200, generator=torch.Generator().manual_seed(0))
    fitted, fit = fit_picture(picture, 32, SDXL, max_side=100)
    assert fit.resized == (100, 75) and fit.crop == (2, 5, 96, 64)
    torch.testing.assert_close(fitted, resize_image(picture, (100, 75))[..., 5:69, 2:98])
    plain, fit = fit_picture(picture, 64, SD1)
    torch.testing.assert_close(plain, picture[..., 11:139, 4:196])  # 200x150 -> 192x128, centred


@pytest.mark.parametrize(
    "args, message",
    [
        (
            (40, 100, 64, SD1),
            "the picture is 40x100 pixels: this SD 1.x model needs sides of at least 64 px.*64x64",
        ),
        (
            (20, 20, 32, SDXL),
            "the picture is 20x20 pixels: this SDXL model .*smallest picture it takes is 32x32",
        ),
        ((4000, 100, 64, SD1, 512), "4000x100 pixels; resized to max_side 512 it is 512x13.*larger max_side"),
        ((100, 100, 64, SD1, 50), "max_side=50 is below the smallest side this SD 1.x model takes"),
        ((100, 100, 64, SD1, -1), "max_side must be an integer >= 0"),
        ((5000, 3000, 64, SD1), "5000x3000 pixels, larger than the largest side.*set max_side"),
    ],
    ids=[
        "sd1-too-small",
        "sdxl-too-small",
        "too-small-after-max-side",
        "max-side-too-small",
        "negative",
        "huge",
    ],
)
def test_pictures_that_cannot_be_fitted_are_refused_naming_the_sizes(args, message):
    with pytest.raises(InvalidInputError, match=message):
        fit_size(*args)


def test_the_fit_record_is_json_and_round_trips():
    fit = fit_size(2000, 1500, 64, SD1, 512)
    assert PictureFit.from_dict(json.loads(json.dumps(fit.to_dict()))) == fit
    with pytest.raises(InvalidInputError, match="picture_fit record .* damaged"):
        PictureFit.from_dict({"source": [1]})


def test_a_picture_far_above_the_native_size_gets_a_notice():
    assert large_picture_notice((512, 512), 512, SD1) is None
    notice = large_picture_notice((1024, 1024), 512, SD1)
    assert "about 4x the pixels this SD 1.x checkpoint was trained at (512x512)" in notice
    assert "slow" in notice and "max_side (e.g. 512)" in notice


# -- the drawing over the picture -----------------------------------------------------------------
FIT = fit_size(100, 70, 64, SD1)  # 100x70 -> 64x64 at (18, 3)


def smooth(width, height):
    """The same smooth drawing sampled at any resolution (pixel centres over the unit square)."""
    y = (torch.arange(height) + 0.5) / height
    x = (torch.arange(width) + 0.5) / width
    return (0.5 + 0.4 * torch.sin(2 * math.pi * x)[None, :] * torch.cos(math.pi * y)[:, None])[None, None]


def test_a_drawing_at_the_pictures_size_is_cropped_exactly_like_the_picture():
    drawing = torch.rand(1, 1, 70, 100, generator=torch.Generator().manual_seed(1))
    out, notices = fit_drawing(drawing, FIT)
    torch.testing.assert_close(out, drawing[..., 3:67, 18:82])
    assert notices == ["the sketch is 100x70: resized and cropped like the picture, to 64x64"]


def test_a_drawing_of_the_same_shape_at_another_scale_is_scaled_then_cropped():
    out, notices = fit_drawing(smooth(200, 140), FIT)
    assert out.shape == (1, 1, 64, 64)
    torch.testing.assert_close(out, apply_fit(smooth(100, 70), FIT), atol=0.02, rtol=0)
    assert "scaled and cropped like the 100x70 picture, to 64x64" in notices[0]
    # one pixel of rounding in the other side is the same shape
    assert fit_drawing(smooth(143, 100), FIT)[0].shape == (1, 1, 64, 64)


def test_a_drawing_at_the_fitted_size_is_used_as_it_is():
    drawing = torch.rand(1, 1, 64, 64)
    out, notices = fit_drawing(drawing, FIT)
    assert out is drawing and notices == []


def test_a_drawing_of_another_shape_is_refused_naming_both_sizes():
    with pytest.raises(
        InvalidInputError, match=r"the sketch is 100x100, but the picture .* is 100x70 \(used as 64x64\)"
    ):
        fit_drawing(torch.rand(1, 1, 100, 100), FIT)


def test_prepare_sketch_fits_the_drawing_by_the_features_record_and_keeps_the_old_rule_without_one():
    rgb = torch.rand(1, 70, 100, 3, generator=torch.Generator().manual_seed(2))  # a ComfyUI IMAGE
    out, notices = prepare_sketch(rgb, (64, 64), FIT.to_dict())
    grey = prepare_sketch(rgb, (100, 70))[0]
    torch.testing.assert_close(out, grey[..., 3:67, 18:82])
    assert notices == ["the sketch is 100x70: resized and cropped like the picture, to 64x64"]
    with pytest.raises(InvalidInputError, match="the sketch is 70x100"):
        prepare_sketch(rgb.transpose(1, 2), (64, 64), FIT.to_dict())
    # features sampled by the pack carry no record: any size is resized to the example's
    out, notices = prepare_sketch(rgb.transpose(1, 2), (64, 64))
    assert out.shape == (1, 1, 64, 64) and "stretched" in notices[0]


# -- capture_from_image applies the fit ------------------------------------------------------------
def test_capture_fits_the_picture_and_records_the_fit_in_the_saved_features(tiny_backend, tmp_path):
    picture = torch.rand(1, 3, 70, 100, generator=torch.Generator().manual_seed(3))
    result = tiny_backend.capture_from_image(picture, SMALL, caption="a horse")
    assert result.sample.size == (64, 64)
    torch.testing.assert_close(result.picture, picture[..., 3:67, 18:82])
    assert result.notices[0].startswith("the picture is 100x70: cropped 36 px of width and 6 px of height")
    assert result.sample.meta["picture_fit"] == FIT.to_dict()
    # the PSNR is the replay's against the picture as used
    expected = 10 * math.log10(1 / float((result.sample.image - result.picture).pow(2).mean()))
    assert result.replay_psnr == pytest.approx(expected)
    result.sample.save(tmp_path / "f.safetensors")
    assert CapturedSample.load(tmp_path / "f.safetensors").meta["picture_fit"] == FIT.to_dict()


def test_capture_resizes_with_max_side_and_warns_far_above_the_native_size(tiny_backend):
    assert tiny_backend.native_size == 64  # the tiny UNet's 8-px latent
    picture = torch.rand(1, 3, 100, 200, generator=torch.Generator().manual_seed(4))
    big = tiny_backend.capture_from_image(picture, SMALL)
    assert big.sample.size == (192, 64) and "Set max_side (e.g. 64)" in big.notices[-1]
    small = tiny_backend.capture_from_image(picture, SMALL, max_side=128)
    assert small.sample.size == (128, 64) and small.sample.meta["picture_fit"]["resized"] == [128, 64]
    assert len(small.notices) == 1 and "resized to 128x64 (max_side 128)" in small.notices[0]


@pytest.mark.parametrize(
    "picture, message",
    [
        (torch.rand(2, 3, 70, 100), "the picture is a batch of 2 images"),
        (torch.full((1, 3, 70, 100), float("nan")), "the picture: NaN"),
        (
            torch.rand(1, 3, 70, 100) * 255,
            r"the picture: values span .* \(it looks like 0-255 values: divide by 255\)",
        ),
    ],
    ids=["batch", "nan", "0-255"],
)
def test_pictures_that_are_not_one_clean_image_are_refused_by_name(tiny_backend, picture, message):
    with pytest.raises(InvalidInputError, match=message):
        tiny_backend.capture_from_image(picture, SMALL)


# -- the size rule per family ------------------------------------------------------------------------
def test_the_size_multiple_comes_from_the_spec(tiny_backend):
    sdxl = tiny_sdxl_backend(0)
    assert tiny_backend.spec.size_multiple == 64 and sdxl.spec.size_multiple == 32


def test_sd1_refuses_a_size_of_multiples_of_32_through_sample_naming_the_family(tiny_backend):
    with pytest.raises(
        InvalidInputError,
        match=r"width=96 is not supported by this SD 1.x model: it must be a multiple of 64 .* e.g. 64 or 128",
    ):
        tiny_backend.sample("x", SMALL.replace(width=96, height=64))


def test_sdxl_captures_from_and_trains_on_a_picture_of_multiples_of_32_not_64(tmp_path):
    from diffsketch.train.conditions import ConditionSampler
    from diffsketch.train.generator import GeneratorConfig, SketchGenerator
    from diffsketch.train.losses import TINY_CLIP_ARCHITECTURE, ClipImageEncoder, DiffSketchLoss, build_lpips
    from diffsketch.train.trainer import TrainConfig, Trainer

    backend = tiny_sdxl_backend(0)
    picture = torch.rand(1, 3, 70, 100, generator=torch.Generator().manual_seed(5))
    result = backend.capture_from_image(picture, SMALL, caption="a horse")
    example = result.sample
    assert example.size == (96, 64) and example.meta["picture_fit"]["crop"] == [2, 3, 96, 64]
    # the drawing at the picture's original size, as the user drew it over their picture
    drawing = (picture.mean(1, keepdim=True) > 0.5).float()
    sketch, notices = prepare_sketch(drawing, example.size, example.meta["picture_fit"])
    assert sketch.shape == (1, 1, 64, 96) and "cropped like the picture" in notices[0]
    torch.manual_seed(0)
    loss = DiffSketchLoss(ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE), build_lpips(random_weights=True))
    conditions = ConditionSampler.fit_from_prompts(
        backend.encode_prompt, ["a cat", "a dog", "a lake", "a city", "a tree"], n_components=3, family=SDXL
    )
    generator = SketchGenerator(
        example.spec,
        GeneratorConfig.from_spec(
            example.spec, 3, lower_dim=32, higher_dim=16, lower_groups=4, higher_groups=4, final_width=16
        ),
    )
    config = TrainConfig(iterations=2, lr=1e-3, h_iter=2, steps=10, schedule="fast", checkpoint_every=2)
    trainer = Trainer(backend, example, sketch, conditions, loss, config, None, generator)
    before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    trainer.run()
    assert len(trainer.history) == 2
    assert all(math.isfinite(h["total"]) for h in trainer.history)
    assert any(not torch.equal(before[k], v) for k, v in trainer.generator.state_dict().items())
