"""Timestep nodes: the paper's preset, or the PCA + k-means analysis on the user's checkpoint."""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.utils
from comfy_api.latest import io, ui

from diffsketch.capture.spec import FAMILY_NAMES_TEXT
from diffsketch.capture.timesteps import PAPER_TIMESTEPS, parse_timesteps

from .common import backbones_note, cancel_as_interrupt, flux_guidance_input, size_inputs
from .types import CATEGORY, Timesteps

logger = logging.getLogger("diffsketch.nodes")

PRESETS = {"paper (13)": PAPER_TIMESTEPS, "custom": None}


class DiffSketchTimestepsPreset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffSketchTimestepsPreset",
            display_name="DiffSketch Timesteps (preset)",
            category=CATEGORY,
            description="The paper's 13 representative timesteps, or your own list, without running the analysis.",
            inputs=[
                io.Combo.Input(
                    "preset",
                    options=list(PRESETS),
                    default="paper (13)",
                    tooltip="'paper (13)': 1, 61, 161, 241, 321, 421, 501, 561, 641, 701, 781, 861, 941 "
                    "(50-step DDIM grid). 'custom': the list below.",
                ),
                io.String.Input(
                    "custom",
                    default="",
                    multiline=False,
                    tooltip="With preset 'custom': timesteps 0-999 separated by commas, e.g. '1, 501, 941'. "
                    "Empty means the paper's 13.",
                ),
            ],
            outputs=[
                Timesteps.Output(
                    display_name="timesteps", tooltip="For DiffSketch Sample & Capture and Train."
                )
            ],
        )

    @classmethod
    def execute(cls, preset, custom="") -> io.NodeOutput:
        chosen = PRESETS.get(preset)
        if chosen is None:
            chosen = parse_timesteps(custom) or PAPER_TIMESTEPS
        return io.NodeOutput(tuple(int(t) for t in chosen))


class DiffSketchTimesteps(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffSketchTimesteps",
            display_name="DiffSketch Timesteps (analysis)",
            category=CATEGORY,
            description=(
                "Finds representative timesteps for your checkpoint as the paper does: samples images, reduces the UNet "
                "decoder features at every step, runs PCA (25 components) and k-means over timesteps (k by the elbow "
                "method unless given) and picks the timestep nearest each cluster centre. Shows why with three plots."
                + backbones_note()
            ),
            inputs=[
                io.Model.Input("model", tooltip=f"An {FAMILY_NAMES_TEXT} MODEL."),
                io.Clip.Input("clip", tooltip="The CLIP of the same checkpoint."),
                io.Vae.Input(
                    "vae", tooltip="The VAE of the same checkpoint (not used for decoding; checks the model)."
                ),
                io.Int.Input(
                    "samples",
                    default=8,
                    min=1,
                    max=1024,
                    tooltip="How many images to sample (the more, the steadier; 32 is plenty).",
                ),
                io.Int.Input(
                    "steps", default=50, min=2, max=1000, tooltip="DDIM steps; every step is analysed."
                ),
                io.Int.Input(
                    "k",
                    default=0,
                    min=0,
                    max=1000,
                    tooltip="Number of timesteps to choose; 0 picks it by the elbow method (13 reproduces the "
                    "paper's count).",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    tooltip="Seeds the images, the projection and k-means; same seed, same result.",
                ),
                *size_inputs("Each sample"),
                io.String.Input(
                    "prompts",
                    default="",
                    multiline=True,
                    optional=True,
                    tooltip="One prompt per line; empty uses the pack's default prompt list.",
                ),
                flux_guidance_input(),
            ],
            outputs=[
                Timesteps.Output(display_name="timesteps", tooltip="The chosen timesteps."),
                io.Image.Output(
                    display_name="pca_plot", tooltip="PCA of the features, coloured by timestep."
                ),
                io.Image.Output(
                    display_name="elbow_plot", tooltip="k-means inertia against k, with the chosen k."
                ),
                io.Image.Output(
                    display_name="schedule_plot", tooltip="The chosen timesteps on the schedule."
                ),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls, model, clip, vae, samples, steps, k, seed, width, height, prompts="", guidance=None
    ) -> io.NodeOutput:
        from diffsketch.capture.analysis import plots, run_timestep_analysis
        from diffsketch.plotting import to_image_tensor
        from diffsketch.train.conditions import load_default_prompts, parse_prompts

        from .comfy_backend import ComfyBackend

        backend = ComfyBackend(model, clip, vae, guidance=guidance)
        width, height = backend.image_size(width, height)
        prompt_list = parse_prompts(prompts) if prompts and prompts.strip() else load_default_prompts()
        pbar = comfy.utils.ProgressBar(int(samples))
        with cancel_as_interrupt():
            result = run_timestep_analysis(
                backend,
                prompt_list,
                int(samples),
                int(steps),
                k=int(k) or None,
                seed=int(seed),
                width=width,
                height=height,
                progress=lambda done, total: pbar.update_absolute(done, total),
                should_stop=lambda: comfy.model_management.processing_interrupted(),
            )
        comfy.model_management.throw_exception_if_processing_interrupted()
        images = {name: to_image_tensor(img) for name, img in plots(result).items()}
        text = result.summary()
        logger.info("[DiffSketch] %s", text)
        return io.NodeOutput(
            tuple(result.chosen), images["pca"], images["elbow"], images["schedule"], ui=ui.PreviewText(text)
        )
