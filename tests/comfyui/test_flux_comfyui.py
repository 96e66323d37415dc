"""Tier 2: the ComfyUI backend on Flux.1 dev and schnell (random weights in ComfyUI's format,
loaded as UNETLoader and VAELoader load them: see dit_checkpoints.py): detection, refusals,
capture of the double- and single-stream blocks' image tokens at cfg 1 (one branch) with the hooks
gone on every exit path, and the same image and features as the diffusers backend.

The text encoders (CLIP-L and T5-XXL, the latter 9.5 GB) are loaded only by the prompt-encoding
test, T5 at the shrunk size of t5_checkpoint.py; elsewhere the CLIP here is ComfyUI's own Flux
text-encoder class built on the meta device (what the family check reads), and sampling is given
T5-shaped context [1, T, 4096] with a CLIP-L-shaped pooled vector [1, 768].
"""

from __future__ import annotations

import math
import types

import pytest
import torch
from comfy_harness import hook_count
from test_dit_comfyui import check_identical, check_parity, release, sample_recording_calls, settings

from diffsketch.backends.conditioning import Conditioning
from diffsketch.capture.timesteps import FLOW_SHIFTS, FLUX_SCHNELL_SHIFT, flow_sigma, flow_table_index
from diffsketch.errors import InvalidInputError, UnsupportedModelError


def load_flux(files, variant: str):
    """``(model, clip, vae)`` of ``variant`` ("dev" or "schnell") as UNETLoader, DualCLIPLoader
    (type flux) and VAELoader give them: 2.8 GB in float32 on the CPU, so the tests load it each
    and let it go."""
    import comfy.sd
    import comfy.text_encoders.flux
    import comfy.utils

    dev_path, schnell_path, vae_path = files
    model = comfy.sd.load_diffusion_model(str(dev_path if variant == "dev" else schnell_path))
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(vae_path)))
    clip = types.SimpleNamespace(cond_stage_model=comfy.text_encoders.flux.flux_clip()(device="meta"))
    return model, clip, vae


@pytest.fixture
def flux_dev(comfy_inprocess, flux_files):
    yield load_flux(flux_files, "dev")
    release()


@pytest.fixture
def flux_schnell(comfy_inprocess, flux_files):
    yield load_flux(flux_files, "schnell")
    release()


def t5_conditioning(seed: int, tokens: int = 20) -> Conditioning:
    """A prompt as Flux's text encoders would give it: T5-XXL states [1, tokens, 4096] and CLIP-L's
    pooled [1, 768]."""
    g = torch.Generator().manual_seed(seed)
    return Conditioning(torch.randn(1, tokens, 4096, generator=g), torch.randn(1, 768, generator=g))


def test_files_are_detected_as_flux_dev_and_schnell(comfy_inprocess, flux_dev, flux_schnell):
    backend = comfy_inprocess.nodes.comfy_backend
    for (model, clip, vae), config, shift, guidance in (
        (flux_dev, "Flux", FLOW_SHIFTS["flux"], 3.5),
        (flux_schnell, "FluxSchnell", FLUX_SCHNELL_SHIFT, None),
    ):
        assert type(model.model.model_config).__name__ == config and vae.latent_channels == 16
        assert backend.model_family(model) == ("flux", backend.FLOW_PREDICTION)
        assert backend.clip_family(clip) == "flux"
        b = backend.ComfyBackend(model, clip, vae)
        spec = b.spec
        # 1 double + 2 single blocks are one depth of 3: blocks 0 and 1, never the last
        assert [(t.name, t.channels, t.log2_scale) for t in spec.unet] == [
            ("double_blocks.0", 3072, -1),
            ("single_blocks.0", 3072, -1),
        ]
        assert (spec.family, spec.context_dim, spec.pooled_dim, spec.latent_channels) == (
            "flux",
            4096,
            768,
            16,
        )
        assert len(spec.vae) == 14 and spec.size_multiple == 16
        assert b.guidance_distilled and b.guidance == guidance
        # the nodes' guidance widget: dev embeds it, schnell (no such input) ignores it
        given = backend.ComfyBackend(model, clip, vae, guidance=2.0).guidance
        assert given == (None if guidance is None else 2.0)
        # index k is the same sigma in ComfyUI's table (10000 entries on dev) as in the library's
        ms = model.get_model_object("model_sampling")
        assert math.isclose(backend.flow_shift(ms), shift, rel_tol=1e-9)
        for k in (0, 124, 499, 999):
            sigma = float(ms.sigmas[flow_table_index(k, len(ms.sigmas))])
            assert math.isclose(sigma, flow_sigma(k, shift), rel_tol=1e-6), (config, k)
    # dev with ComfyUI's ModelSamplingFlux node (mu from the size: 0.5 at 256 image tokens, here
    # 512x512): taken, its shift read as e^mu
    import comfy_extras.nodes_model_advanced as advanced

    model, clip, vae = flux_dev
    (patched,) = advanced.ModelSamplingFlux().patch(model, 1.15, 0.5, 512, 512)
    assert backend.ComfyBackend(patched, clip, vae).spec.family == "flux"
    mu = 0.5 + (1024 - 256) * (1.15 - 0.5) / (4096 - 256)
    assert math.isclose(backend.flow_shift(patched.get_model_object("model_sampling")), math.exp(mu))


def test_flux_dev_at_cfg_1_captures_one_branch_deterministically_and_leaves_no_hooks(
    comfy_inprocess, flux_dev
):
    model, clip, vae = flux_dev
    backend = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)
    few = settings(1.0, steps=2, timesteps=(499,))
    wrappers_before = {k: dict(v) for k, v in model.wrappers.items()}
    a, calls = sample_recording_calls(model, lambda: backend.sample(t5_conditioning(0), few))
    # two steps, the cond branch alone (ComfyUI's cfg1 shortcut), with dev's guidance 3.5
    assert [(batch, kw["guidance"].tolist()) for batch, kw in calls] == [(1, [3.5]), (1, [3.5])]
    assert hook_count(model, vae) == 0
    assert {k: dict(v) for k, v in model.wrappers.items()} == wrappers_before
    assert a.meta["branches"] == 1
    assert a.image.shape == (1, 3, 64, 64) and a.latent.shape == (1, 16, 8, 8)
    assert [tuple(f.shape) for f in a.unet[499]] == [(1, 3072, 4, 4)] * 2
    assert all(torch.isfinite(f.float()).all() for f in a.unet[499])
    assert not torch.equal(a.unet[499][0], a.unet[499][1])
    with torch.inference_mode():
        check_identical(a, backend.sample(t5_conditioning(0), few))
    # another guidance (the nodes' guidance input) reaches the model and is recorded
    other = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae, guidance=2.0)
    b, calls = sample_recording_calls(model, lambda: other.sample(t5_conditioning(0), few))
    assert [kw["guidance"].tolist() for _, kw in calls] == [[2.0], [2.0]] and b.meta["guidance"] == 2.0
    with pytest.raises(InvalidInputError, match="0 to 100"):
        comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae, guidance=150.0)

    def fail(step, total):
        if step == 1:
            raise RuntimeError("boom")

    with torch.inference_mode(), pytest.raises(RuntimeError, match="boom"):
        backend.sample(t5_conditioning(0), few, progress=fail)
    assert hook_count(model, vae) == 0
    assert {k: dict(v) for k, v in model.wrappers.items()} == wrappers_before


def test_other_families_and_mixed_parts_are_refused_by_name(comfy_inprocess, flux_schnell, loaded_checkpoint):
    import comfy.text_encoders.z_image

    backend = comfy_inprocess.nodes.comfy_backend
    f_model, f_clip, f_vae = flux_schnell
    sd1_model, sd1_clip, sd1_vae = loaded_checkpoint
    z_clip = types.SimpleNamespace(cond_stage_model=comfy.text_encoders.z_image.te()(device="meta"))
    for parts, names in (
        ((f_model, sd1_clip, f_vae), ("SD 1.x", "Flux.1")),
        ((sd1_model, f_clip, sd1_vae), ("Flux.1", "SD 1.x")),
        ((f_model, z_clip, f_vae), ("Z-Image", "Flux.1")),
    ):
        with pytest.raises(UnsupportedModelError, match="same backbone family") as e:
            backend.ComfyBackend(*parts)
        assert all(name in str(e.value) for name in names), str(e.value)
    with pytest.raises(UnsupportedModelError, match="4-channel latents but the Flux.1 MODEL takes 16"):
        backend.ComfyBackend(f_model, f_clip, sd1_vae)
    # Flux.1 Depth/Canny: the same config class, 32 input channels (ComfyUI reads them from img_in)
    config = type(f_model.model.model_config)(dict(f_model.model.model_config.unet_config, in_channels=32))
    depth = types.SimpleNamespace(
        model=types.SimpleNamespace(model_config=config, diffusion_model=f_model.model)
    )
    with pytest.raises(UnsupportedModelError, match="Flux.1 variant with 32 input channels"):
        backend.model_family(depth)


def test_schnell_at_its_usual_4_steps_is_refused_naming_the_steps_and_timesteps_that_work(
    comfy_inprocess, flux_schnell
):
    """The default timesteps need 7 steps on schnell: the refusal the nodes pass on says so and
    names the timesteps 4 steps keep apart, which then sample; the command line's default (the
    backend's ``default_steps``) is 8 for schnell."""
    from diffsketch.capture.sampling import SamplingSettings
    from diffsketch.errors import InvalidInputError

    model, clip, vae = flux_schnell
    backend = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)
    assert backend.guidance is None and backend.default_steps == 8
    four = SamplingSettings(seed=0, steps=4, cfg=1.0, width=64, height=64)
    with pytest.raises(
        InvalidInputError, match=r"Use at least 7 steps.*\(e\.g\. 249, 499, 749, which 4 steps"
    ):
        backend.sample(t5_conditioning(0), four)
    with torch.inference_mode():
        out = backend.sample(t5_conditioning(0), four.replace(timesteps=(249, 499, 749)))
    assert out.timesteps == (249, 499, 749) and out.meta["steps"] == 4
    assert hook_count(model, vae) == 0


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_flux_matches_the_diffusers_backend(comfy_inprocess, flux_files, variant):
    """The same file in diffusers' FluxTransformer2DModel (diffusers' own converter) through the
    library's DiffusersFlowBackend, given the same conditionings: the same image and features at
    cfg 1 (one branch); on dev also with CFG (two branches, each with dev's guidance) and from a
    picture (Euler inversion, then the replay). Dev samples on shift e^1.15 from ComfyUI's
    10000-entry table, schnell on shift 1; ComfyUI's token order [text, image] in the single
    blocks and its double blocks' (img, txt) pair give the maps diffusers' (text, image) pairs
    give."""
    from compare import relative_error
    from dit_diffusers import diffusers_flux
    from tiny_models import tiny_clip

    from diffsketch.backends.dit import DiffusersFlowBackend

    model, clip, vae = load_flux(flux_files, variant)
    comfy_b = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)
    cond, uncond = t5_conditioning(0), t5_conditioning(1)
    picture = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    few = dict(steps=2, timesteps=(499,))
    dev = variant == "dev"
    with torch.inference_mode():
        a_one = comfy_b.sample(cond, settings(1.0, **few))
        if dev:
            with pytest.warns(UserWarning, match="guidance-distilled"):
                a_cfg = comfy_b.sample(cond, settings(3.0, **few), uncond=uncond)
            a_pic = comfy_b.capture_from_image(picture, settings(1.0, **few), caption=cond)
    assert hook_count(model, vae) == 0
    comfy_hash = comfy_b.model_hash()
    del comfy_b, model, clip, vae  # one 2.8 GB model at a time
    release()
    dev_path, schnell_path, vae_path = flux_files
    transformer, dvae = diffusers_flux(dev_path if dev else schnell_path, vae_path)
    # CLIP-L only to construct it: the prompts come encoded
    diff_b = DiffusersFlowBackend(transformer, dvae, tiny_clip(768, "quick_gelu", projection=False))
    assert diff_b.guidance == (3.5 if dev else None)
    # fused attention and linear1 (ComfyUI) and split (diffusers), the final modulation's halves
    # swapped by diffusers' converter: one weights hash, no "trained on another checkpoint" notice
    assert diff_b.model_hash() == comfy_hash
    b_one = diff_b.sample(cond, settings(1.0, **few))
    check_parity(a_one, b_one)
    assert a_one.meta["branches"] == 1
    # both record the guidance dev's embedding was given (none on schnell)
    assert a_one.meta.get("guidance") == b_one.meta.get("guidance") == (3.5 if dev else None)
    if not dev:
        return
    with pytest.warns(UserWarning, match="guidance-distilled"):
        check_parity(a_cfg, diff_b.sample(cond, settings(3.0, **few), uncond=uncond))
    assert a_cfg.meta["branches"] == 2
    b_pic = diff_b.capture_from_image(picture, settings(1.0, **few), caption=cond)
    assert relative_error(a_pic.noise, b_pic.noise) < 1e-3
    check_parity(a_pic.sample, b_pic.sample)


def test_flux_prompts_are_encoded_as_the_diffusers_backend_encodes_them(comfy_inprocess, t5_text_encoders):
    """The same CLIP-L and T5-XXL weights (t5_checkpoint.py's random files, T5 shrunk) through
    DualCLIPLoader (type flux) and ComfyUI's encode, and in transformers' CLIPTextModel and
    T5EncoderModel through DiffusersFlowBackend: the same T5 tokens (the prompt's, the end token,
    pad 0 up to 256) and the same context [1, 256, 4096] and pooled CLIP-L vector [1, 768], for a
    prompt, the empty one (the uncond branch) and one with weights and escaped parentheses of over
    256 T5 tokens and 4 CLIP windows (weights on T5's tokens, a longer context)."""
    import comfy.sd
    from compare import relative_error
    from dit_diffusers import transformers_clip, transformers_t5
    from safetensors.torch import load_file
    from t5_checkpoint import T5_HEADS, comfy_builds_small_t5
    from tiny_models import tiny_flux_transformer, tiny_vae16

    from diffsketch.backends.dit import FLUX_T5_TOKENS, DiffusersFlowBackend

    t5_path, clip_l_path = t5_text_encoders
    with comfy_builds_small_t5():
        clip = comfy.sd.load_clip([str(clip_l_path), str(t5_path)], clip_type=comfy.sd.CLIPType.FLUX)
    backend_module = comfy_inprocess.nodes.comfy_backend
    assert backend_module.clip_family(clip) == "flux"
    attention = clip.cond_stage_model.t5xxl.transformer.encoder.block[0].layer[0].SelfAttention
    assert attention.num_heads == T5_HEADS
    t5, t5_tokenizer = transformers_t5(t5_path)
    clip_l = transformers_clip(load_file(str(clip_l_path)), "", "flux_l")
    # encode_prompt reads only the text encoders: a tiny transformer and VAE complete the backend
    backend = DiffusersFlowBackend(
        tiny_flux_transformer(), tiny_vae16(), clip_l, text_encoder_2=t5, tokenizer_2=t5_tokenizer
    )
    prompt = "a horse in mud, ink sketch on paper"
    (comfy_tokens,) = clip.tokenize(prompt)["t5xxl"]
    ids = t5_tokenizer(prompt).input_ids
    assert [t for t, _ in comfy_tokens] == ids + [0] * (FLUX_T5_TOKENS - len(ids))
    # a prompt with weights and escapes (on T5; CLIP-L's pooled reads its first window without the
    # syntax) of 4 CLIP windows and over 256 T5 tokens: ComfyUI's T5 grows past 256, the backend's too
    # (one prompt for both: each CLIP window costs a full-size CLIP-L pass in ComfyUI)
    long_prompt = "a (horse:1.3) in \\(deep\\) mud, ((ink)) sketch, " + ", ".join(["a horse in mud"] * 48)
    for text, tokens in ((prompt, FLUX_T5_TOKENS), ("", FLUX_T5_TOKENS), (long_prompt, None)):
        theirs, ours = backend_module.encode_text(clip, text, True), backend.encode_prompt(text)
        assert ours.context.shape == theirs.context.shape, text[:20]
        assert ours.context.shape[1] == tokens if tokens else ours.context.shape[1] > FLUX_T5_TOKENS
        assert ours.pooled.shape == theirs.pooled.shape == (1, 768)
        assert relative_error(ours.context, theirs.context) < 1e-5, text[:20]
        assert relative_error(ours.pooled, theirs.pooled) < 1e-5, text[:20]
