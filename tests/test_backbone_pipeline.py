"""The whole DiffSketch pipeline on SDXL- and SD 2.x-shaped tiny random-weight diffusers models:
sample -> fit conditions -> train -> save/load the generator -> generate -> distill -> extract,
with the backbone family carried (and checked) at every hand-over."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_backend, tiny_sd2_backend, tiny_sdxl_backend

from diffsketch.capture.sample import CapturedSample
from diffsketch.capture.sampling import SamplingSettings
from diffsketch.capture.spec import SD1, SD2, SDXL
from diffsketch.distill import DistillConfig, distill
from diffsketch.distill.extract import extract
from diffsketch.distill.extractor import ExtractorConfig, load_extractor, save_extractor
from diffsketch.errors import InvalidInputError, UnsupportedModelError
from diffsketch.train.conditions import ConditionSampler
from diffsketch.train.generator import GeneratorConfig, SketchGenerator, load_generator
from diffsketch.train.inference import generate_pair
from diffsketch.train.losses import TINY_CLIP_ARCHITECTURE, ClipImageEncoder, DiffSketchLoss, build_lpips
from diffsketch.train.trainer import TrainConfig, Trainer

SIZE = 64
TIMESTEPS = (1, 501, 951)
SAMPLING = SamplingSettings(steps=10, width=SIZE, height=SIZE, timesteps=TIMESTEPS, schedule="fast")
PROMPTS = ["a cat on a sofa", "a mountain at dawn", "an old man", "a red car", "a bowl of fruit", "a street"]
SMALL_GENERATOR = dict(
    lower_dim=32, higher_dim=16, lower_groups=4, higher_groups=4, fusion_channels=(64, 32, 16)
)
TINY_STUDENT = ExtractorConfig(channels=(8, 16), encoder_blocks=(1, 1), decoder_blocks=(1,))
TINY_DISTILL = DistillConfig(
    iterations=2, batch_size=2, crop_size=48, lpips_weight=0.0, extractor=TINY_STUDENT, warmup_iterations=1
)


def distill_on_two_photos(backend, generator, conditions, pairs_dir, sampling):
    """The extractor ``distill`` makes from 4 pairs, half of them from two photos of other sizes
    than the pairs' (each fitted, inverted and sketched by ``generator``)."""
    g = torch.Generator().manual_seed(9)
    photos = [
        ("wide.png", torch.rand(48, 80, 3, generator=g)),
        ("tall.png", torch.rand(96, 72, 3, generator=g)),
    ]
    return distill(
        backend, generator, conditions, pairs_dir, 4, TINY_DISTILL, sampling, photos=photos, photo_share=0.5
    )


BACKBONES = {
    "sdxl-epsilon": (lambda: tiny_sdxl_backend(0), SDXL, "epsilon"),
    "sd2-v": (lambda: tiny_sd2_backend(0), SD2, "v_prediction"),
}


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def backbone(request):
    make, family, prediction = BACKBONES[request.param]
    return make(), family, prediction


def test_sample_train_generate_distill_extract(backbone, tmp_path):
    backend, family, prediction = backbone
    assert backend.spec.family == family and backend.prediction_type == prediction

    example = backend.sample("a photo of a horse in mud", SAMPLING.replace(seed=5))
    assert example.meta["family"] == family and example.meta["prediction_type"] == prediction
    assert torch.isfinite(example.image).all() and example.image.shape == (1, 3, SIZE, SIZE)

    # CDST fits on the whole conditioning the backbone takes: SDXL's pooled part is drawn with it
    conditions = ConditionSampler.fit_from_prompts(
        backend.encode_prompt, PROMPTS, n_components=3, family=backend.spec.family
    )
    drawn = conditions.sample(torch.Generator().manual_seed(0))
    assert drawn.context.shape[-1] == backend.spec.context_dim
    assert drawn.pooled_dim == backend.spec.pooled_dim

    trainer = train_briefly(backend, example, example.image.mean(1, keepdim=True), conditions)

    path = trainer.save_generator(tmp_path / "style.safetensors")
    loaded = load_generator(path, expected_spec=backend.spec)
    assert loaded.family == family
    with pytest.raises(UnsupportedModelError, match="same backbone family"):
        load_generator(path, expected_spec=tiny_backend(0).spec)

    image, sketch = generate_pair(backend, loaded, "a cat", SAMPLING.replace(seed=3, timesteps=None))
    assert image.shape == (1, 3, SIZE, SIZE) and sketch.shape == (1, 1, SIZE, SIZE)

    student = distill(
        backend,
        loaded,
        conditions,
        tmp_path / "pairs",
        2,
        TINY_DISTILL,
        SAMPLING.replace(timesteps=None),
    )
    extractor = load_extractor(save_extractor(tmp_path / "extractor.safetensors", student, student.meta))
    sketches, _ = extract(extractor, image.movedim(1, -1))
    assert sketches.shape[:3] == (1, SIZE, SIZE) and torch.isfinite(sketches).all()


def train_briefly(backend, example, sketch, conditions) -> Trainer:
    """Two iterations of a small generator on ``example`` and its ``sketch``, checked finite."""
    torch.manual_seed(0)
    generator = SketchGenerator(
        backend.spec, GeneratorConfig.from_spec(backend.spec, len(example.timesteps), **SMALL_GENERATOR)
    )
    loss = DiffSketchLoss(ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE), build_lpips(random_weights=True))
    config = TrainConfig(
        iterations=2, lr=3e-3, h_iter=2, steps=example.plan.steps, schedule="fast", preview_every=2
    )
    pivot = backend.encode_prompt(example.meta.get("prompt", "a photo of a horse in mud"))
    trainer = Trainer(backend, example, sketch, conditions, loss, config, pivot, generator)
    trainer.run()
    assert all(torch.isfinite(torch.tensor(h["total"])) for h in trainer.history)
    return trainer


@pytest.mark.parametrize(
    "make, family",
    [(tiny_backend, SD1), (tiny_sd2_backend, SD2), (tiny_sdxl_backend, SDXL)],
    ids=["sd1", "sd2-v", "sdxl"],
)
def test_a_picture_of_ones_own_captures_trains_generates_and_distills_on_photos(make, family, tmp_path):
    """picture -> capture (inversion + replay) -> features file -> train -> save/load -> generate ->
    distill on generated pairs and the user's photos -> extract."""
    backend = make(0)
    picture = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    path = tmp_path / "picture.safetensors"
    backend.capture_from_image(picture, SAMPLING, caption="a photo of a horse").sample.save(path)
    example = CapturedSample.load(path)
    assert example.meta["source"] == "picture" and example.spec.family == family
    conditions = ConditionSampler.fit_from_prompts(
        backend.encode_prompt, PROMPTS, n_components=3, family=backend.spec.family
    )
    trainer = train_briefly(backend, example, picture.mean(1, keepdim=True), conditions)
    loaded = load_generator(
        trainer.save_generator(tmp_path / "style.safetensors"), expected_spec=backend.spec
    )
    assert loaded.timesteps == example.timesteps
    image, sketch = generate_pair(backend, loaded, "a cat", SAMPLING.replace(seed=3, timesteps=None))
    assert image.shape == (1, 3, SIZE, SIZE) and sketch.shape == (1, 1, SIZE, SIZE)
    assert torch.isfinite(sketch).all()

    # two photos of other sizes than the pairs': each is fitted, inverted and sketched
    student = distill_on_two_photos(
        backend, loaded, conditions, tmp_path / "pairs", SAMPLING.replace(timesteps=None)
    )
    sources = student.meta["pair_sources"]
    assert (sources["generated"], sources["photos"], sources["photo_share"]) == (2, 2, 0.5)
    extractor = load_extractor(save_extractor(tmp_path / "extractor.safetensors", student, student.meta))
    assert extractor.meta["pair_sources"] == sources
    sketches, _ = extract(extractor, picture.movedim(1, -1))
    assert sketches.shape[:3] == (1, SIZE, SIZE) and torch.isfinite(sketches).all()


def test_captured_sample_crop_cuts_every_tap_at_the_window(tmp_path):
    backend = tiny_sdxl_backend(0)
    sample = backend.sample("a horse", SAMPLING.replace(seed=1, width=128, height=64))
    assert sample.crop_multiple() == 32  # SDXL's coarsest taps are latent/4
    whole = sample.crop(0, 0, 128, 64)
    for a, b in zip(whole.tensors(), sample.tensors(), strict=True):
        assert torch.equal(a, b)
    window = sample.crop(32, 32, 64, 32)
    assert window.size == (64, 32) and window.latent.shape[-2:] == (4, 8)
    for t in sample.timesteps:
        for tap, full, cut in zip(sample.spec.unet, sample.unet[t], window.unet[t], strict=True):
            per_px = 2.0**tap.log2_scale / sample.spec.vae_scale_factor  # elements per pixel
            top, left = int(32 * per_px), int(32 * per_px)
            assert torch.equal(cut, full[..., top : top + int(32 * per_px), left : left + int(64 * per_px)])
    assert torch.equal(window.image, sample.image[..., 32:64, 32:96])
    for bad in ((16, 0, 32, 32), (0, 0, 160, 32), (64, 32, 64, 64)):
        with pytest.raises(ValueError):
            sample.crop(*bad)


def test_training_on_sample_crops_is_seeded_and_checked():
    backend = tiny_sdxl_backend(0)
    example = backend.sample("a photo of a horse in mud", SAMPLING.replace(seed=5))
    conditions = ConditionSampler.fit_from_prompts(
        backend.encode_prompt, PROMPTS, n_components=3, family=backend.spec.family
    )
    loss_models = (ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE), build_lpips(random_weights=True))

    def run(sample_crop):
        torch.manual_seed(0)
        generator = SketchGenerator(
            backend.spec, GeneratorConfig.from_spec(backend.spec, 3, **SMALL_GENERATOR)
        )
        config = TrainConfig(
            iterations=2,
            h_iter=2,
            steps=SAMPLING.steps,
            schedule="fast",
            preview_every=1,
            sample_crop=sample_crop,
        )
        trainer = Trainer(
            backend,
            example,
            example.image.mean(1, keepdim=True),
            conditions,
            DiffSketchLoss(*loss_models),
            config,
            None,
            generator,
        )
        windows, crop = [], trainer._crop

        def recording(sample, i):
            out = crop(sample, i)
            windows.append(out.size)
            return out

        trainer._crop = recording
        previews = []
        trainer.run(on_step=lambda step, losses, preview: previews.append(preview))
        return windows, {k: v.clone() for k, v in trainer.generator.state_dict().items()}, previews

    windows, weights, previews = run(32)
    assert windows == [(32, 32), (32, 32)]
    assert all(p.shape == (1, SIZE, 4 * SIZE, 3) for p in previews)  # panels at the example's size
    again_windows, again, _ = run(32)
    assert again_windows == windows and all(torch.equal(weights[k], again[k]) for k in weights)
    whole_windows, whole, _ = run(0)
    assert whole_windows == [] and any(not torch.equal(weights[k], whole[k]) for k in weights)
    with pytest.raises(InvalidInputError, match="multiple of 32"):
        run(48)
    # a window as large as the samples (or larger) would crop nothing and save no memory: refused
    for too_large in (SIZE, 2 * SIZE):
        with pytest.raises(
            InvalidInputError, match=f"sample_crop={too_large} is not smaller than the {SIZE}x{SIZE}"
        ):
            run(too_large)


def test_training_on_an_example_of_another_family_names_both():
    settings = SamplingSettings(seed=1, steps=10, width=64, height=64, timesteps=(1, 501))
    example = tiny_sd2_backend(0).sample("a horse", settings)
    with pytest.raises(UnsupportedModelError) as raised:
        Trainer(tiny_backend(0), example, example.image.mean(1, keepdim=True), None, None, TrainConfig())
    assert str(raised.value).startswith("the example is SD 2.x but the model you train on is SD 1.x:")
