"""Helpers of the parity tests (two backends, or a backend and diffusers' own pipeline): how far
apart two tensors are, diffusers' DDIM schedulers on ldm's grid, diffusers' SDXL pipeline on a
backend's modules, and a tag-style prompt with the diffusers backend's encodings of it at each CLIP
skip."""

from __future__ import annotations

import torch

#: A prompt as Pony, Illustrious and NoobAI are prompted: a weight, escaped parentheses and more
#: than 75 tokens (208: three windows).
TAG_WORDS = ("solo", "smile", "outdoors", "sky", "tree", "flower", "hat", "dress", "river", "sunset")
TAG_PROMPT = "score_9, (masterpiece:1.2), \\(artist\\), " + ", ".join(TAG_WORDS[i % 10] for i in range(100))


def clip_skip_conditions(backend, prompt: str, skips=(1, 2)) -> dict:
    """``{skip: Conditioning}``: ``prompt`` through the diffusers backend's text encoders read at
    each CLIP skip (the same modules, a backend per skip)."""
    from diffsketch.backends.diffusers import DiffusersBackend

    out = {}
    for skip in skips:
        reader = DiffusersBackend(
            backend.unet,
            backend.vae,
            backend.text_encoder,
            backend.tokenizer,
            text_encoder_2=backend.text_encoder_2,
            tokenizer_2=backend.tokenizer_2,
            prediction_type=backend.prediction_type,
            clip_skip=skip,
            text_encoder_depth=backend.text_encoder_depth,
        )
        out[skip] = reader.encode_prompt(prompt)
    return out


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` in float32 (Frobenius norms; ``b`` is the reference)."""
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def ldm_ddim(scheduler: str, prediction_type: str):
    """diffusers' ``DDIMScheduler`` or ``DDIMInverseScheduler`` on ldm's DDIM grid
    (1 + k * 1000 // steps) with the clean end at alpha 1: the steps the backends run."""
    import diffusers

    return getattr(diffusers, scheduler)(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type=prediction_type,
    )


def sdxl_pipeline(backend, scheduler, tokenizer=None, tokenizer_2=None):
    """diffusers' ``StableDiffusionXLPipeline`` on ``backend``'s UNet, VAE and text encoders (the
    tokenizers only where the pipeline encodes prompts itself)."""
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        vae=backend.vae,
        text_encoder=backend.text_encoder,
        text_encoder_2=backend.text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=backend.unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
