"""DiffSketchSample: sample an image with the loaded checkpoint and capture its features."""

from __future__ import annotations

import logging

from comfy_api.latest import io, ui

from diffsketch.capture.spec import DIT_NAMES_TEXT, FAMILY_NAMES_TEXT
from diffsketch.capture.timesteps import FLOW_TIMESTEPS

from .common import backbones_note, flux_guidance_input, sampler_steps_text, size_inputs
from .types import CATEGORY, Features, Timesteps

logger = logging.getLogger("diffsketch.nodes")


def checkpoint_inputs() -> list:
    """The model, clip and vae inputs of a node that captures features."""
    return [
        io.Model.Input(
            "model",
            tooltip=f"An {FAMILY_NAMES_TEXT} MODEL (Load Checkpoint; Load Diffusion Model for Z-Image and Flux.1).",
        ),
        io.Clip.Input(
            "clip",
            tooltip="The CLIP (text encoder) of the same checkpoint (Z-Image: Load CLIP, type lumina2; Flux.1: "
            "DualCLIPLoader with clip_l and t5xxl, type flux).",
        ),
        io.Vae.Input("vae", tooltip="The VAE of the same checkpoint."),
    ]


def timesteps_input() -> Timesteps.Input:
    """The optional timesteps input of a node that captures features (None: the paper's 13)."""
    return Timesteps.Input(
        "timesteps",
        optional=True,
        tooltip="Which timesteps to capture (from DiffSketch Timesteps); default: the paper's 13 "
        f"representative timesteps on UNet models, {', '.join(map(str, FLOW_TIMESTEPS))} on {DIT_NAMES_TEXT}.",
    )


def capture_timesteps(timesteps) -> tuple[int, ...] | None:
    """The timesteps input's value as the settings take it: None when it is not connected, so the
    settings use the connected model's family default (``default_timesteps``): the paper's 13 would
    not fit a flow model's few-step grid (Z-Image Turbo samples in 8)."""
    return tuple(timesteps) if timesteps else None


class DiffSketchSample(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffSketchSample",
            display_name="DiffSketch Sample & Capture",
            category=CATEGORY,
            description=(
                f"Generates an image with your checkpoint (UNet models: DDIM, eta 0; {DIT_NAMES_TEXT}: Euler on "
                "the model's sigmas; classifier-free guidance with an empty negative) and captures the UNet decoder (or "
                "transformer block) and VAE decoder features DiffSketch learns from. Use its image as the picture "
                "to draw your example sketch over." + backbones_note()
            ),
            inputs=[
                *checkpoint_inputs(),
                io.String.Input(
                    "prompt",
                    multiline=True,
                    default="a photo of a horse in mud",
                    tooltip="What to draw. Parentheses are read as ComfyUI prompt weights.",
                ),
                io.Int.Input(
                    "seed",
                    default=50,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Noise seed; the same seed and prompt give the same image and features.",
                ),
                io.Int.Input(
                    "steps",
                    default=50,
                    min=1,
                    max=1000,
                    tooltip=f"{sampler_steps_text()} (the paper uses 50; Z-Image Turbo is meant for 8; Flux.1 "
                    "schnell takes 8 with the default timesteps, or its usual 4 with timesteps 249, 499, 749). Capture "
                    "timesteps map to the nearest steps of this grid; too few steps for the timesteps asked is an "
                    "error naming the steps and timesteps that work.",
                ),
                io.Float.Input(
                    "cfg",
                    default=5.0,
                    min=0.0,
                    max=30.0,
                    step=0.1,
                    round=0.01,
                    tooltip="Classifier-free guidance scale (the paper uses 5.0). 1 for a guidance-distilled "
                    "model (Z-Image Turbo): the conditional branch alone is evaluated and captured.",
                ),
                *size_inputs("Image"),
                timesteps_input(),
                flux_guidance_input(),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The generated image."),
                io.Latent.Output(display_name="latent", tooltip="Its final latent."),
                Features.Output(
                    display_name="features",
                    tooltip="The captured features (UNet decoder at the chosen timesteps, cond and uncond; "
                    "VAE decoder), for DiffSketch Train.",
                ),
            ],
        )

    @classmethod
    def execute(
        cls, model, clip, vae, prompt, seed, steps, cfg, width, height, timesteps=None, guidance=None
    ) -> io.NodeOutput:
        from diffsketch.capture.sampling import SamplingSettings

        from .comfy_backend import ComfyBackend, image_to_comfy, latent_to_comfy

        backend = ComfyBackend(model, clip, vae, guidance=guidance)
        width, height = backend.image_size(width, height)
        sampling = SamplingSettings(
            seed=int(seed),
            steps=int(steps),
            cfg=float(cfg),
            width=width,
            height=height,
            timesteps=capture_timesteps(timesteps),
        )
        sample = backend.sample(prompt, sampling)
        logger.info("[DiffSketch] captured %s", sample.summary())
        image = image_to_comfy(sample.image)
        return io.NodeOutput(
            image, latent_to_comfy(sample.latent), sample, ui=ui.PreviewImage(image, cls=cls)
        )
