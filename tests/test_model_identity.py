"""The model's parameterisation travels with the features: captured samples, features files,
generators and training checkpoints record the prediction type and the zero-terminal-SNR flag,
and one made with another parameterisation than the model in use is refused, naming both.
Another checkpoint with the same parameterisation is allowed, with a notice; files written
before the record existed still load."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_sdxl_backend, tiny_text_encoder, tiny_unet, tiny_vae

from diffsketch.backends.base import rescale_zero_terminal_snr, scaled_linear_alphas_cumprod
from diffsketch.backends.diffusers import DiffusersBackend
from diffsketch.capture.sample import CapturedSample
from diffsketch.capture.sampling import SamplingSettings
from diffsketch.errors import InvalidInputError
from diffsketch.train.conditions import ConditionSampler
from diffsketch.train.generator import GeneratorConfig, SketchGenerator, load_generator, save_generator
from diffsketch.train.inference import check_generator_fits, generate_pair
from diffsketch.train.losses import TINY_CLIP_ARCHITECTURE, ClipImageEncoder, DiffSketchLoss, LossWeights
from diffsketch.train.trainer import TrainConfig, Trainer

SIZE = 64
TIMESTEPS = (1, 501, 901)
SAMPLING = SamplingSettings(seed=3, steps=4, width=SIZE, height=SIZE, timesteps=TIMESTEPS, schedule="fast")
PROMPT = "a horse"
SMALL_GENERATOR = dict(lower_dim=32, higher_dim=16, lower_groups=4, higher_groups=4, final_width=16)


def sd1_backend(seed: int = 0, prediction_type: str = "epsilon", zsnr: bool = False) -> DiffusersBackend:
    """One tiny SD 1.x checkpoint (``seed`` picks the weights), read with a parameterisation."""
    schedule = scaled_linear_alphas_cumprod()
    return DiffusersBackend(
        tiny_unet(seed),
        tiny_vae(seed),
        tiny_text_encoder(seed),
        prediction_type=prediction_type,
        alphas_cumprod=rescale_zero_terminal_snr(schedule) if zsnr else schedule,
    )


@pytest.fixture(scope="module")
def backends():
    return {
        "epsilon": sd1_backend(0),
        "v": sd1_backend(0, "v_prediction"),
        "v+zsnr": sd1_backend(0, "v_prediction", zsnr=True),
        "epsilon, other weights": sd1_backend(1),
    }


@pytest.fixture(scope="module")
def conditions(backends):
    backend = backends["epsilon"]
    return ConditionSampler.fit_from_prompts(
        backend.encode_prompt, ["a cat", "a city", "a lake", "a bowl of fruit"], n_components=2, family="sd1"
    )


@pytest.fixture(scope="module")
def loss_models():
    torch.manual_seed(0)
    return ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE)


def features_file(backend, path) -> CapturedSample:
    """An example captured with ``backend``, through a features file."""
    backend.sample(PROMPT, SAMPLING).save(path)
    return CapturedSample.load(path)


def trainer(backend, example, conditions, clip) -> Trainer:
    config = TrainConfig(
        iterations=1, steps=SAMPLING.steps, schedule="fast", device="cpu", loss_weights=LossWeights(lpips=0.0)
    )
    generator = SketchGenerator(
        backend.spec, GeneratorConfig.from_spec(backend.spec, len(TIMESTEPS), **SMALL_GENERATOR)
    )
    loss = DiffSketchLoss(clip, None, config.loss_weights)
    return Trainer(
        backend, example, example.image.mean(1, keepdim=True), conditions, loss, config, None, generator
    )


@pytest.mark.parametrize(
    "captured, trained, named",
    [
        ("v", "epsilon", ("v-prediction", "epsilon-prediction")),
        ("epsilon", "v", ("epsilon-prediction", "v-prediction")),
        ("v+zsnr", "v", ("v-prediction on a zero-terminal-SNR schedule", "samples v-prediction: ")),
        ("v", "v+zsnr", ("made with v-prediction, but", "v-prediction on a zero-terminal-SNR schedule")),
    ],
)
def test_an_example_of_another_parameterisation_is_refused_naming_both(
    backends, conditions, loss_models, tmp_path, captured, trained, named
):
    example = features_file(backends[captured], tmp_path / "example.safetensors")
    with pytest.raises(InvalidInputError) as error:
        trainer(backends[trained], example, conditions, loss_models)
    message = str(error.value)
    assert "the example was made with" in message and "the model you train on samples" in message
    for name in named:
        assert name in message
    assert "ModelSamplingDiscrete" in message and "--prediction-type" in message


def test_another_checkpoint_with_the_same_parameterisation_trains_with_a_notice(
    backends, conditions, loss_models, tmp_path
):
    example = features_file(backends["epsilon"], tmp_path / "example.safetensors")
    same = trainer(backends["epsilon"], example, conditions, loss_models)
    assert not same.notices
    other = trainer(backends["epsilon, other weights"], example, conditions, loss_models)
    assert len(other.notices) == 1 and "another SD 1.x checkpoint" in other.notices[0]
    assert backends["epsilon"].model_hash() in other.notices[0]
    assert backends["epsilon, other weights"].model_hash() in other.notices[0]


def test_a_generator_runs_only_on_its_parameterisation(backends, conditions, loss_models, tmp_path):
    example = backends["epsilon"].sample(PROMPT, SAMPLING)
    trained = trainer(backends["epsilon"], example, conditions, loss_models)
    path = trained.save_generator(tmp_path / "style.safetensors")
    generator = load_generator(path)
    assert generator.meta["base_model"]["prediction_type"] == "epsilon"
    assert generator.meta["base_model"]["zero_terminal_snr"] is False
    # in memory (the Train node's output) as from the file
    for candidate in (trained.generator, generator):
        with pytest.raises(
            InvalidInputError, match="the generator was made with epsilon-prediction, but the model"
        ):
            generate_pair(backends["v+zsnr"], candidate, PROMPT, SAMPLING.replace(seed=4))
    assert check_generator_fits(backends["epsilon"], generator) == []
    notices = check_generator_fits(backends["epsilon, other weights"], generator)
    assert len(notices) == 1 and "another SD 1.x checkpoint" in notices[0]
    image, sketch = generate_pair(
        backends["epsilon, other weights"], generator, PROMPT, SAMPLING.replace(seed=4)
    )
    assert sketch.shape == (1, 1, SIZE, SIZE)


def test_resuming_on_another_parameterisation_is_refused(backends, conditions, loss_models, tmp_path):
    example = backends["v"].sample(PROMPT, SAMPLING)
    checkpoint = trainer(backends["v"], example, conditions, loss_models).save_checkpoint(
        tmp_path / "run.safetensors"
    )
    zsnr_example = backends["v+zsnr"].sample(PROMPT, SAMPLING)
    resumed = trainer(backends["v+zsnr"], zsnr_example, conditions, loss_models)
    with pytest.raises(
        InvalidInputError, match=r"run\.safetensors was made with v-prediction, but the model you"
    ):
        resumed.resume(checkpoint)


def _strip_record(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in ("prediction_type", "zero_terminal_snr", "model_hash")}


def test_files_written_before_the_record_still_load(backends, conditions, loss_models, tmp_path):
    # an SD 1.x features file without the record: SD 1.x is epsilon-prediction on SD's schedule
    sample = backends["epsilon"].sample(PROMPT, SAMPLING)
    sample.meta = _strip_record(sample.meta)
    sample.save(tmp_path / "old.safetensors")
    old = CapturedSample.load(tmp_path / "old.safetensors")
    assert not trainer(backends["epsilon"], old, conditions, loss_models).notices
    with pytest.raises(InvalidInputError, match="epsilon-prediction"):
        trainer(backends["v"], old, conditions, loss_models)

    # an SDXL generator of an earlier version: SDXL was used both ways, so its parameterisation
    # is unknown; it is not refused, and the notice says what could not be checked
    sdxl = tiny_sdxl_backend(0, "v_prediction")
    generator = SketchGenerator(
        sdxl.spec, GeneratorConfig.from_spec(sdxl.spec, len(TIMESTEPS), **SMALL_GENERATOR)
    )
    generator.timesteps, generator.schedule = TIMESTEPS, "fast"
    base_model = {
        "family": "sdxl",
        "spec_fingerprint": sdxl.spec.fingerprint(),
        "model_hash": sdxl.model_hash(),
    }
    save_generator(tmp_path / "old_style.safetensors", generator, {"base_model": base_model})
    loaded = load_generator(tmp_path / "old_style.safetensors")
    notices = check_generator_fits(sdxl, loaded)
    assert len(notices) == 1
    assert "does not record its model's prediction type or zero-terminal-SNR flag" in notices[0]
    assert "v-prediction" in notices[0]
    _, sketch = generate_pair(sdxl, loaded, PROMPT, SAMPLING.replace(seed=4))
    assert sketch.shape == (1, 1, SIZE, SIZE)
