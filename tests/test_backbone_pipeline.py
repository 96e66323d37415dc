"""The whole DiffSketch pipeline on SDXL- and SD 2.x-shaped tiny random-weight diffusers models:
sample -> fit conditions -> train -> save/load the generator -> generate -> distill -> extract,
with the backbone family carried (and checked) at every hand-over."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_backend, tiny_sd2_backend, tiny_sdxl_backend

from diffsketch.capture.sampling import SamplingSettings
from diffsketch.capture.spec import SD2, SDXL
from diffsketch.distill import DistillConfig, distill
from diffsketch.distill.extract import extract
from diffsketch.distill.extractor import ExtractorConfig, load_extractor, save_extractor
from diffsketch.errors import UnsupportedModelError
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

    torch.manual_seed(0)
    generator = SketchGenerator(
        backend.spec, GeneratorConfig.from_spec(backend.spec, len(TIMESTEPS), **SMALL_GENERATOR)
    )
    loss = DiffSketchLoss(ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE), build_lpips(random_weights=True))
    config = TrainConfig(
        iterations=2, lr=3e-3, h_iter=2, steps=SAMPLING.steps, schedule="fast", preview_every=2
    )
    trainer = Trainer(
        backend,
        example,
        example.image.mean(1, keepdim=True),
        conditions,
        loss,
        config,
        backend.encode_prompt("a photo of a horse in mud"),
        generator,
    )
    trainer.run()
    assert all(torch.isfinite(torch.tensor(h["total"])) for h in trainer.history)

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
        DistillConfig(
            iterations=2,
            batch_size=2,
            crop_size=48,
            lpips_weight=0.0,
            extractor=TINY_STUDENT,
            warmup_iterations=1,
        ),
        SAMPLING.replace(timesteps=None),
    )
    extractor = load_extractor(save_extractor(tmp_path / "extractor.safetensors", student, student.meta))
    sketches, _ = extract(extractor, image.movedim(1, -1))
    assert sketches.shape[:3] == (1, SIZE, SIZE) and torch.isfinite(sketches).all()
