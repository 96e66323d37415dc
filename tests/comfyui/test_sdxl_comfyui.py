"""Tier 2, in-process: an SDXL checkpoint in ComfyUI's own format (sdxl_checkpoint.py) through the
ComfyUI backend and the diffusers backend: same taps, same conditioning (and the same as diffusers'
StableDiffusionXLPipeline builds it), same image and features, for epsilon and for v-prediction on
a zero-terminal-SNR schedule; MODEL/CLIP family checks and the refiner refused.

Memory: the checkpoint's bigG text encoder is 0.7 G parameters, so the two loaders never hold it at
the same time: the diffusers side is computed first and freed, then ComfyUI loads the file.
"""

from __future__ import annotations

import gc

import pytest
import torch
from comfy_harness import (
    COMFYUI_PATH,
    check_tag_prompt_parity,
    diffusers_reference,
    hook_count,
    loaded_checkpoint,
)
from compare import TAG_PROMPT, clip_skip_conditions, relative_error, sdxl_pipeline

from diffsketch.capture.sampling import SamplingSettings

FEW = SamplingSettings(seed=3, steps=10, cfg=5.0, width=64, height=64, timesteps=(1, 501, 901))
PROMPT = "a photo of a horse in mud"


def _tokenizers():
    import os

    from transformers import CLIPTokenizer

    path = os.path.join(COMFYUI_PATH, "comfy", "sd1_tokenizer")
    # OpenAI CLIP-L pads with its end token; SDXL's bigG tokenizer pads with "!" (id 0). ComfyUI's
    # copy says 8192 tokens (it chunks long prompts itself); the pipeline pads to this length.
    return (
        CLIPTokenizer.from_pretrained(path, model_max_length=77),
        CLIPTokenizer.from_pretrained(path, pad_token="!", model_max_length=77),
    )


@pytest.fixture(scope="module")
def diffusers_side(sdxl_checkpoint):
    """The diffusers backend's results on the checkpoint, and diffusers' SDXL pipeline's encoding."""
    from diffusers import DDIMScheduler

    from diffsketch.backends.base import rescale_zero_terminal_snr
    from diffsketch.backends.conditioning import Conditioning
    from diffsketch.backends.diffusers import DiffusersBackend

    backend = DiffusersBackend.from_single_file(sdxl_checkpoint)
    out = diffusers_reference(backend, PROMPT, FEW)
    out["tags"] = clip_skip_conditions(backend, TAG_PROMPT)
    tokenizer, tokenizer_2 = _tokenizers()
    pipe = sdxl_pipeline(backend, DDIMScheduler(), tokenizer, tokenizer_2)
    with torch.no_grad():
        context, negative, pooled, negative_pooled = pipe.encode_prompt(
            PROMPT, device="cpu", do_classifier_free_guidance=True, negative_prompt=""
        )
    out["pipeline"] = (Conditioning(context, pooled), Conditioning(negative, negative_pooled))
    # the same model read as v-prediction on a zero-terminal-SNR schedule (ComfyUI's
    # ModelSamplingDiscrete node with v_prediction and zsnr)
    backend.prediction_type = "v_prediction"
    backend.alphas_cumprod = rescale_zero_terminal_snr(backend.alphas_cumprod)
    out["vpred"] = backend.sample(out["cond"], FEW)
    del pipe, backend
    gc.collect()
    return out


@pytest.fixture(scope="module")
def comfy_sdxl(comfy_inprocess, sdxl_checkpoint, diffusers_side):
    with loaded_checkpoint(sdxl_checkpoint) as loaded:
        yield loaded


def _backend(comfy_inprocess, model, clip, vae):
    return comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)


def test_comfyui_detects_sdxl_and_reads_the_same_taps(comfy_inprocess, comfy_sdxl, diffusers_side):
    model, clip, vae = comfy_sdxl
    assert type(model.model.model_config).__name__ == "SDXL"
    backend = _backend(comfy_inprocess, model, clip, vae)
    spec = backend.spec
    assert spec.family == "sdxl" and spec.pooled_dim == 1280 and spec.context_dim == 2048
    assert len(spec.unet) == 9 and [t.log2_scale for t in spec.unet] == [-2] * 3 + [-1] * 3 + [0] * 3
    assert spec.signature() == diffusers_side["spec"].signature()
    assert backend.model_hash() == diffusers_side["hash"]
    assert backend.prediction_type == diffusers_side["prediction"] == "epsilon"
    # the CLI's default size: the single-file reader sizes the UNet as the checkpoint was trained
    assert diffusers_side["native_size"] == 1024


def test_both_backends_and_the_sdxl_pipeline_build_the_same_conditioning(
    comfy_inprocess, comfy_sdxl, diffusers_side
):
    backend = _backend(comfy_inprocess, *comfy_sdxl)
    for mine, theirs, pipeline in (
        (backend.encode_prompt(PROMPT), diffusers_side["cond"], diffusers_side["pipeline"][0]),
        (backend.encode_prompt(""), diffusers_side["uncond"], diffusers_side["pipeline"][1]),
    ):
        assert mine.context.shape == (1, 77, 2048) and mine.pooled.shape == (1, 1280)
        assert (
            relative_error(theirs.context, mine.context) < 1e-3
            and relative_error(theirs.pooled, mine.pooled) < 1e-3
        )
        assert (
            relative_error(pipeline.context, theirs.context) < 1e-5
            and relative_error(pipeline.pooled, theirs.pooled) < 1e-5
        )


def test_tag_prompts_encode_alike_at_clip_skip_1_and_2(comfy_inprocess, comfy_sdxl, diffusers_side):
    """Both encoders, weights, three windows (CLIP-L's and bigG's side by side), the first window's
    pooled embedding, at CLIPSetLastLayer -1 and -2 (SDXL's own layer)."""
    check_tag_prompt_parity(comfy_inprocess, comfy_sdxl[1], diffusers_side["tags"], 2048, default_skip=2)


def _compare(a, b):
    assert a.timesteps == b.timesteps == (1, 501, 901)
    assert relative_error(a.image, b.image) < 1e-3
    assert relative_error(a.latent, b.latent) < 1e-3
    for t in a.timesteps:
        for i, (fa, fb) in enumerate(zip(a.unet[t], b.unet[t], strict=True)):
            assert fa.shape == fb.shape
            assert relative_error(fa, fb) < 1e-3, (t, i)
    for fa, fb in zip(a.vae, b.vae, strict=True):
        assert relative_error(fa, fb) < 1e-3


def test_same_image_and_features_as_the_diffusers_backend(comfy_inprocess, comfy_sdxl, diffusers_side):
    model, clip, vae = comfy_sdxl
    wrappers = {k: dict(v) for k, v in model.wrappers.items()}
    backend = _backend(comfy_inprocess, model, clip, vae)
    with torch.inference_mode():
        ours = backend.sample(diffusers_side["cond"], FEW)
    _compare(ours, diffusers_side["sample"])
    assert not torch.equal(ours.unet[501][0][0], ours.unet[501][0][1])  # both branches
    assert hook_count(model, vae) == 0 and {k: dict(v) for k, v in model.wrappers.items()} == wrappers


def test_v_prediction_on_a_zero_snr_schedule_agrees(comfy_inprocess, comfy_sdxl, diffusers_side):
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    model, clip, vae = comfy_sdxl
    patched = ModelSamplingDiscrete().patch(model, "v_prediction", True)[0]
    backend = _backend(comfy_inprocess, patched, clip, vae)
    assert backend.prediction_type == "v_prediction"
    with torch.inference_mode():
        ours = backend.sample(diffusers_side["cond"], FEW)
    _compare(ours, diffusers_side["vpred"])
    assert relative_error(ours.latent, diffusers_side["sample"].latent) > 1e-2  # v-prediction was used


def test_mismatched_families_and_the_refiner_are_refused(comfy_inprocess, comfy_sdxl, loaded_checkpoint):
    import comfy.sdxl_clip

    from diffsketch.errors import UnsupportedModelError

    model, clip, vae = comfy_sdxl
    sd1_model, sd1_clip, sd1_vae = loaded_checkpoint
    with pytest.raises(
        UnsupportedModelError, match="the connected CLIP is SD 1.x but the connected MODEL is SDXL"
    ):
        _backend(comfy_inprocess, model, sd1_clip, vae)
    with pytest.raises(
        UnsupportedModelError, match="the connected CLIP is SDXL but the connected MODEL is SD 1.x"
    ):
        _backend(comfy_inprocess, sd1_model, clip, sd1_vae)

    class RefinerClip:
        cond_stage_model = comfy.sdxl_clip.SDXLRefinerClipModel.__new__(comfy.sdxl_clip.SDXLRefinerClipModel)

    with pytest.raises(UnsupportedModelError, match="refiner.*no CLIP-L") as e:
        _backend(comfy_inprocess, model, RefinerClip(), vae)
    assert "SD 1.x, SD 2.x" in str(e.value)
    config = model.model.model_config.unet_config
    saved = dict(config)
    try:
        config.update(context_dim=1280, adm_in_channels=2560, model_channels=384)
        with pytest.raises(UnsupportedModelError, match="SDXL refiner"):
            _backend(comfy_inprocess, model, clip, vae)
    finally:
        config.clear()
        config.update(saved)


def test_the_real_sdxl_unet_has_the_expected_taps(comfy_inprocess):
    """The full-size SDXL UNet (ComfyUI's classes, meta device): 9 taps at 1280/640/320 channels."""
    import sys
    from pathlib import Path

    import comfy.ops
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from sdxl_checkpoint import REAL_UNET_KWARGS
    from tiny_checkpoint import VAE_DDCONFIG

    from diffsketch.capture.spec import feature_spec_from_ldm

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from helpers_spec import sdxl_spec

    unet = UNetModel(**REAL_UNET_KWARGS, device="meta", operations=comfy.ops.disable_weight_init)
    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig=VAE_DDCONFIG, embed_dim=4)
    spec = feature_spec_from_ldm(unet, vae, 2048, "sdxl", 1280)
    assert [t.channels for t in spec.unet] == [1280] * 3 + [640] * 3 + [320] * 3
    assert [t.name for t in spec.unet][:2] == ["output_blocks.0.0.out_layers", "output_blocks.1.0.out_layers"]
    assert spec.signature() == sdxl_spec().signature()
