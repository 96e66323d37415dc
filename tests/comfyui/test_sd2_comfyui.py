"""Tier 2, in-process: an SD 2.x 768-v checkpoint in ComfyUI's own format (sd2_checkpoint.py) through
the ComfyUI backend and the diffusers backend (which reads the single file itself): both take it
for SD 2.x with v-prediction, encode prompts alike (OpenCLIP-H's penultimate layer; weights,
windows and CLIP skip) and give the same image and features, with no hook left on ComfyUI's UNet.
The same file with a 23-layer text encoder (as diffusers' conversion script writes them) encodes
as ComfyUI encodes it, and as the 24-layer file does."""

from __future__ import annotations

import gc

import pytest
import torch
from comfy_harness import check_tag_prompt_parity, diffusers_reference, hook_count, loaded_checkpoint
from compare import TAG_PROMPT, clip_skip_conditions, relative_error

from diffsketch.capture.sampling import SamplingSettings

FEW = SamplingSettings(seed=3, steps=10, cfg=5.0, width=64, height=64, timesteps=(1, 501, 901))
PROMPT = "a photo of a horse in mud"
PICTURE = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
PICTURE_SETTINGS = SamplingSettings(steps=10, timesteps=(1, 501, 901), schedule="fast")


@pytest.fixture(scope="module")
def diffusers_side(sd2_checkpoint):
    from diffsketch.backends.diffusers import DiffusersBackend

    backend = DiffusersBackend.from_single_file(sd2_checkpoint)
    out = diffusers_reference(backend, PROMPT, FEW)
    out["tags"] = clip_skip_conditions(backend, TAG_PROMPT)
    epsilon = DiffusersBackend.from_single_file(sd2_checkpoint, prediction_type="epsilon")
    out["epsilon"] = epsilon.sample(out["cond"], FEW, capture=False, decode=False)
    out["picture"] = backend.capture_from_image(PICTURE, PICTURE_SETTINGS, caption=PROMPT)
    del backend, epsilon
    gc.collect()
    return out


@pytest.fixture(scope="module")
def comfy_sd2(comfy_inprocess, sd2_checkpoint, diffusers_side):
    with loaded_checkpoint(sd2_checkpoint) as loaded:
        yield loaded


def test_both_backends_read_sd2_v_prediction(comfy_inprocess, comfy_sd2, diffusers_side):
    model, clip, vae = comfy_sd2
    assert type(model.model.model_config).__name__ == "SD20"
    backend = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)
    assert backend.spec.family == diffusers_side["spec"].family == "sd2"
    assert backend.prediction_type == diffusers_side["prediction"] == "v_prediction"
    # the CLI's default size: the single-file reader sizes the UNet as the checkpoint was trained
    assert diffusers_side["native_size"] == 768
    assert len(backend.spec.unet) == 12 and backend.spec.context_dim == 1024 and backend.spec.pooled_dim == 0
    assert backend.spec.signature() == diffusers_side["spec"].signature()
    assert backend.model_hash() == diffusers_side["hash"]
    for mine, theirs in (
        (backend.encode_prompt(PROMPT), diffusers_side["cond"]),
        (backend.encode_prompt(""), diffusers_side["uncond"]),
    ):
        assert mine.pooled is None and mine.context.shape == theirs.context.shape == (1, 77, 1024)
        assert relative_error(mine.context, theirs.context) < 1e-3


def test_same_image_and_features_as_the_diffusers_backend(comfy_inprocess, comfy_sd2, diffusers_side):
    model, clip, vae = comfy_sd2
    wrappers = {k: dict(v) for k, v in model.wrappers.items()}
    backend = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)
    with torch.inference_mode():
        ours = backend.sample(diffusers_side["cond"], FEW)
    theirs = diffusers_side["sample"]
    assert ours.timesteps == theirs.timesteps
    assert (
        relative_error(ours.image, theirs.image) < 1e-3 and relative_error(ours.latent, theirs.latent) < 1e-3
    )
    for t in ours.timesteps:
        for i, (a, b) in enumerate(zip(ours.unet[t], theirs.unet[t], strict=True)):
            assert relative_error(a, b) < 1e-3, (t, i)
    for a, b in zip(ours.vae, theirs.vae, strict=True):
        assert relative_error(a, b) < 1e-3
    # v-prediction made a difference: the file read as epsilon samples another latent
    assert relative_error(ours.latent, diffusers_side["epsilon"].latent) > 1e-2
    assert hook_count(model, vae) == 0 and {k: dict(v) for k, v in model.wrappers.items()} == wrappers


def test_tag_prompts_encode_alike_at_clip_skip_1_and_2(comfy_inprocess, comfy_sd2, diffusers_side):
    """Weights, escapes, three windows, CLIPSetLastLayer -1 and -2 (SD 2.x's own layer)."""
    check_tag_prompt_parity(comfy_inprocess, comfy_sd2[1], diffusers_side["tags"], 1024, default_skip=2)


@pytest.fixture(scope="module")
def diffusers_23(sd2_23_layer_checkpoint):
    from diffsketch.backends.diffusers import DiffusersBackend
    from diffsketch.errors import UnsupportedModelError

    backend = DiffusersBackend.from_single_file(sd2_23_layer_checkpoint)
    out = {
        "layers": len(backend.text_encoder.encoder.layers),
        "cond": backend.encode_prompt(PROMPT),
        "tags": backend.encode_prompt(TAG_PROMPT),
    }
    with pytest.raises(
        UnsupportedModelError, match="layer 24 of the OpenCLIP ViT-H text encoder's 24.*only 23"
    ):
        DiffusersBackend.from_single_file(sd2_23_layer_checkpoint, clip_skip=1)
    del backend
    gc.collect()
    return out


def test_a_23_layer_text_encoder_encodes_as_comfyui_and_the_24_layer_file(
    comfy_inprocess, sd2_23_layer_checkpoint, diffusers_23, diffusers_side
):
    assert diffusers_23["layers"] == 23
    with loaded_checkpoint(sd2_23_layer_checkpoint) as (_, clip, _):
        encode_text = comfy_inprocess.nodes.comfy_backend.encode_text
        theirs = {p: encode_text(clip, p, False) for p in (PROMPT, TAG_PROMPT)}
    for prompt, ours in ((PROMPT, diffusers_23["cond"]), (TAG_PROMPT, diffusers_23["tags"])):
        assert ours.context.shape == theirs[prompt].context.shape
        assert relative_error(ours.context, theirs[prompt].context) < 1e-4, prompt
    # the layer left out is one SD 2.x never reads: the 24-layer file gives the same condition
    assert relative_error(diffusers_23["cond"].context, diffusers_side["cond"].context) < 1e-6
    assert relative_error(diffusers_23["tags"].context, diffusers_side["tags"][2].context) < 1e-6


def test_same_inversion_and_features_from_a_picture(comfy_inprocess, comfy_sd2, diffusers_side):
    """The ComfyUI backend turns ComfyUI's denoised prediction back into v for the shared inversion
    steps: the same x_T and features as the diffusers backend, which reads v from its UNet."""
    model, clip, vae = comfy_sd2
    wrappers = {k: dict(v) for k, v in model.wrappers.items()}
    backend = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)
    with torch.inference_mode():
        ours = backend.capture_from_image(PICTURE, PICTURE_SETTINGS, caption=PROMPT)
    theirs = diffusers_side["picture"]
    assert relative_error(ours.noise, theirs.noise) < 1e-3
    assert relative_error(ours.sample.latent, theirs.sample.latent) < 1e-3
    for t in ours.sample.timesteps:
        for i, (a, b) in enumerate(zip(ours.sample.unet[t], theirs.sample.unet[t], strict=True)):
            assert relative_error(a, b) < 1e-3, (t, i)
    for a, b in zip(ours.sample.vae, theirs.sample.vae, strict=True):
        assert relative_error(a, b) < 1e-3
    assert hook_count(model, vae) == 0 and {k: dict(v) for k, v in model.wrappers.items()} == wrappers
