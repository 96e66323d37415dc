"""The diffusers backend on SDXL- and SD 2.x-shaped tiny random-weight models: conditioning as
ComfyUI and diffusers build it, DDIM for epsilon and v-prediction checked against diffusers' own
pipelines, and the models and inputs that are refused."""

from __future__ import annotations

import pytest
import torch
from compare import ldm_ddim, relative_error, sdxl_pipeline
from tiny_models import (
    TINY_SDXL_POOLED_DIM,
    tiny_backend,
    tiny_sd2_backend,
    tiny_sdxl_backend,
    tiny_sdxl_text_encoders,
    tiny_sdxl_unet,
    tiny_vae,
)

from diffsketch.backends.base import make_noise, rescale_zero_terminal_snr, scaled_linear_alphas_cumprod
from diffsketch.backends.conditioning import Conditioning
from diffsketch.backends.diffusers import DiffusersBackend, diffusers_family
from diffsketch.capture.sampling import SamplingSettings
from diffsketch.capture.spec import SD1, SD2, SDXL
from diffsketch.errors import InvalidInputError, UnsupportedModelError

SMALL = SamplingSettings(steps=10, cfg=5.0, width=64, height=64, timesteps=(1, 501, 901))


@pytest.fixture(scope="module")
def sdxl():
    return tiny_sdxl_backend(0)


@pytest.fixture(scope="module")
def sd2():
    return tiny_sd2_backend(0)


def test_sdxl_spec_and_conditioning(sdxl):
    spec = sdxl.spec
    assert spec.family == SDXL and spec.pooled_dim == TINY_SDXL_POOLED_DIM
    assert [t.log2_scale for t in spec.unet] == [-2] * 3 + [-1] * 3 + [0] * 3
    cond = sdxl.encode_prompt("a horse in mud")
    assert cond.context.shape == (1, 77, 48) and cond.pooled.shape == (1, TINY_SDXL_POOLED_DIM)
    # CLIP-L pads with the end token, OpenCLIP bigG with 0
    ids_l, ids_g = sdxl.tokenizer("a horse"), sdxl.tokenizer_2("a horse")
    assert torch.equal(ids_l[0, :4], ids_g[0, :4]) and ids_l[0, -1] == 49407 and ids_g[0, -1] == 0
    # penultimate hidden states of both encoders side by side (no final norm), bigG's projected pooled
    with torch.no_grad():
        clip_l = sdxl.text_encoder(input_ids=ids_l, output_hidden_states=True)
    assert not torch.allclose(clip_l.hidden_states[-2], clip_l.last_hidden_state)
    full = sdxl.encode_prompt("a horse")
    torch.testing.assert_close(full.context[..., :32], clip_l.hidden_states[-2])
    # the negative prompt is "" encoded, as in ComfyUI (not diffusers' zeros)
    empty = sdxl.encode_prompt("")
    assert empty.context.abs().sum() > 0 and empty.pooled.abs().sum() > 0
    assert sdxl.size_conditioning((8, 12)).tolist() == [[64, 96, 0, 0, 64, 96]]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sdxl_sampling_matches_the_diffusers_sdxl_pipeline(prediction_type):
    """Same embeddings and noise through diffusers' StableDiffusionXLPipeline (its pooled and size
    conditioning, its DDIM scheduler) and through the backend: the same final latent."""
    backend = tiny_sdxl_backend(0, prediction_type=prediction_type)
    cond, uncond = backend.encode_prompt("a horse"), backend.encode_prompt("")
    ours = backend.sample(cond, SMALL.replace(seed=4), capture=False, decode=False)
    pipe = sdxl_pipeline(backend, ldm_ddim("DDIMScheduler", prediction_type))
    noise = make_noise(4, (1, 4, 8, 8))
    theirs = pipe(
        prompt_embeds=cond.context,
        pooled_prompt_embeds=cond.pooled,
        negative_prompt_embeds=uncond.context,
        negative_pooled_prompt_embeds=uncond.pooled,
        num_inference_steps=10,
        guidance_scale=5.0,
        height=64,
        width=64,
        latents=noise.clone(),
        output_type="latent",
    ).images
    assert relative_error(ours.latent * backend.latent_scaling_factor, theirs) < 1e-4


def test_sd2_v_prediction_matches_the_diffusers_sd_pipeline(sd2):
    from diffusers import StableDiffusionPipeline

    assert sd2.spec.family == SD2 and sd2.prediction_type == "v_prediction" and len(sd2.spec.unet) == 12
    cond, uncond = sd2.encode_prompt("a horse"), sd2.encode_prompt("")
    assert sd2.tokenizer("a")[0, -1] == 0  # OpenCLIP padding
    ours = sd2.sample(cond, SMALL.replace(seed=4), capture=False, decode=False)
    pipe = StableDiffusionPipeline(
        vae=sd2.vae,
        text_encoder=sd2.text_encoder,
        tokenizer=None,
        unet=sd2.unet,
        scheduler=ldm_ddim("DDIMScheduler", "v_prediction"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    theirs = pipe(
        prompt_embeds=cond.context,
        negative_prompt_embeds=uncond.context,
        num_inference_steps=10,
        guidance_scale=5.0,
        height=64,
        width=64,
        latents=make_noise(4, (1, 4, 8, 8)),
        output_type="latent",
    ).images
    assert relative_error(ours.latent * sd2.latent_scaling_factor, theirs) < 1e-4
    # read as epsilon, the same model gives another image: the prediction type is used
    eps = tiny_sd2_backend(0, prediction_type="epsilon").sample(
        cond, SMALL.replace(seed=4), capture=False, decode=False
    )
    assert relative_error(eps.latent, ours.latent) > 1e-2


def test_sdxl_capture_has_nine_taps_both_branches(sdxl):
    s = sdxl.sample("a horse", SMALL.replace(seed=1))
    assert s.timesteps == (1, 501, 901) and s.meta["family"] == SDXL
    shapes = [tuple(x.shape) for x in s.unet[501]]
    assert shapes == [(2, 32, 2, 2)] * 3 + [(2, 32, 4, 4)] * 3 + [(2, 16, 8, 8)] * 3
    assert not torch.equal(s.unet[501][0][0], s.unet[501][0][1])
    assert len(s.vae) == 14 and s.image.shape == (1, 3, 64, 64)


def test_zero_terminal_snr_matches_diffusers():
    from diffusers import DDIMScheduler

    ours = rescale_zero_terminal_snr(scaled_linear_alphas_cumprod())
    theirs = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", rescale_betas_zero_snr=True
    ).alphas_cumprod.double()
    torch.testing.assert_close(ours[:-1], theirs[:-1], rtol=1e-4, atol=1e-7)
    assert 0 < ours[-1] < 1e-7 and theirs[-1] < 1e-6  # ComfyUI keeps the last step finite


def test_conditioning_must_fit_the_family(sdxl):
    tiny = tiny_backend(0)
    sdxl_cond = sdxl.encode_prompt("x")
    with pytest.raises(InvalidInputError, match="pooled text embedding"):
        sdxl.sample(Conditioning(sdxl_cond.context), SMALL.replace(seed=0))
    with pytest.raises(InvalidInputError, match="does not take"):
        tiny.check_conditioning(Conditioning(tiny.encode_prompt("x").context, torch.zeros(1, 8)), "positive")
    with pytest.raises(InvalidInputError, match="SDXL model expects"):
        sdxl.check_conditioning(tiny.encode_prompt("x"), "positive")


def test_sdxl_vae_runs_in_bf16_when_the_model_is_fp16():
    backend = tiny_sdxl_backend(0, dtype=torch.float16)
    assert backend.vae_dtype == torch.bfloat16 and next(backend.vae.parameters()).dtype == torch.bfloat16
    assert tiny_sdxl_backend(0, vae_dtype=torch.float32).vae_dtype == torch.float32


def test_refiner_inpainting_and_variants_are_refused():
    from diffusers import UNet2DConditionModel

    clip_l, clip_g = tiny_sdxl_text_encoders(0)
    unet = tiny_sdxl_unet(0)
    assert diffusers_family(unet, clip_l, clip_g) == (SDXL, TINY_SDXL_POOLED_DIM)
    with pytest.raises(UnsupportedModelError, match="SDXL refiner") as e:
        diffusers_family(unet, None, clip_g)
    assert "SD 1.x, SD 2.x" in str(e.value)
    # a refiner's added embedding: pooled + 5 numbers (aesthetic score instead of the target size)
    config = dict(unet.config, projection_class_embeddings_input_dim=TINY_SDXL_POOLED_DIM + 5 * 8)
    sd1 = tiny_backend(0)
    with torch.device("meta"):
        refiner_like = UNet2DConditionModel.from_config(config)
        inpaint = UNet2DConditionModel.from_config(dict(sd1.unet.config, in_channels=9))
    with pytest.raises(UnsupportedModelError, match="refiner"):
        diffusers_family(refiner_like, clip_l, clip_g)
    with pytest.raises(UnsupportedModelError, match="inpainting"):
        diffusers_family(inpaint, clip_l)
    with pytest.raises(UnsupportedModelError, match="SDXL refiner"):
        DiffusersBackend(unet, tiny_vae(0), None, text_encoder_2=clip_g)
    assert diffusers_family(sd1.unet, sd1.text_encoder)[0] == SD1


def test_timestep_analysis_runs_on_sdxl_and_sd2(sdxl, sd2):
    from diffsketch.capture.analysis import run_timestep_analysis

    for backend in (sdxl, sd2):
        result = run_timestep_analysis(backend, ["a horse", "a cat"], 2, 10, k=3, width=64, height=64)
        assert len(result.chosen) == 3 and set(result.chosen) <= set(range(1, 1000))
