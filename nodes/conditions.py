"""CDST condition nodes: fit the Gaussian over text embeddings with the user's CLIP, or load one."""

from __future__ import annotations

import logging
import os

import comfy.model_management
import comfy.utils
from comfy_api.latest import io

from diffsketch.capture.spec import FAMILY_NAMES_TEXT
from diffsketch.fileio import check_save_name

from .common import (
    backbones_note,
    cancel_as_interrupt,
    file_options,
    file_path_or_raise,
    show_on_node,
    unused_save_path,
)
from .types import CATEGORY, Conditions

logger = logging.getLogger("diffsketch.nodes")

FOLDER = "diffsketch_conditions"
WHAT = "a conditions .safetensors (made by DiffSketch Fit Conditions)"


class DiffSketchFitConditions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffSketchFitConditions",
            display_name="DiffSketch Fit Conditions (CDST)",
            category=CATEGORY,
            description=(
                "Fits the condition distribution DiffSketch samples training prompts from (CDST): PCA of the CLIP text "
                "embeddings of a prompt list, with a Gaussian over the components. Encodes every prompt once; save it "
                "and load it next time." + backbones_note()
            ),
            inputs=[
                io.Clip.Input(
                    "clip",
                    tooltip=f"The CLIP (text encoder) of the checkpoint you train with ({FAMILY_NAMES_TEXT}; "
                    "for SDXL, SD 3.5 and Flux.1 the pooled embedding is fitted together with the token embeddings).",
                ),
                io.String.Input(
                    "prompts",
                    default="",
                    multiline=True,
                    tooltip="One prompt per line; empty uses the pack's list of 2,400 varied prompts.",
                ),
                io.Int.Input(
                    "components",
                    default=512,
                    min=1,
                    max=4096,
                    tooltip="PCA components kept (the paper: 512). Fewer prompts than this keeps fewer.",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    tooltip="Seed for the randomized PCA used on very large prompt lists.",
                ),
                io.String.Input(
                    "save_name",
                    default="default_conditions",
                    tooltip="File name in models/diffsketch/conditions (empty: do not save). An existing file is kept: the "
                    "new one gets a number (name_00001); the node shows the file written.",
                ),
            ],
            outputs=[
                Conditions.Output(display_name="conditions", tooltip="For DiffSketch Train and Distill.")
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, clip, prompts, components, seed, save_name) -> io.NodeOutput:
        from diffsketch.capture.spec import POOLED_FAMILIES
        from diffsketch.train.conditions import ConditionSampler, load_default_prompts, parse_prompts

        from .comfy_backend import clip_family, encode_text, text_encoder_fingerprint

        name = check_save_name(save_name, "save_name") if save_name.strip() else None
        family = clip_family(clip)
        prompt_list = parse_prompts(prompts) if prompts.strip() else load_default_prompts()
        pbar = comfy.utils.ProgressBar(len(prompt_list))
        fingerprint = text_encoder_fingerprint(clip)

        def encode(text):
            return encode_text(clip, text, with_pooled=family in POOLED_FAMILIES)

        with cancel_as_interrupt():
            sampler = ConditionSampler.fit_from_prompts(
                encode,
                prompt_list,
                n_components=int(components),
                seed=int(seed),
                progress=lambda done, total: pbar.update_absolute(done, total),
                should_stop=comfy.model_management.processing_interrupted,
                text_encoder_fingerprint=fingerprint,
                family=family,
            )
        comfy.model_management.throw_exception_if_processing_interrupted()
        if sampler.notice:
            logger.warning("[DiffSketch] %s", sampler.notice)
        if not name:
            return io.NodeOutput(sampler)
        path = unused_save_path(FOLDER, name)
        sampler.save(path)
        return io.NodeOutput(sampler, ui=show_on_node(f"saved conditions {os.path.basename(path)}"))


class DiffSketchLoadConditions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffSketchLoadConditions",
            display_name="DiffSketch Load Conditions",
            category=CATEGORY,
            description="Loads a condition distribution saved by DiffSketch Fit Conditions.",
            inputs=[
                io.Combo.Input(
                    "conditions_name",
                    options=file_options([FOLDER], WHAT),
                    tooltip="A .safetensors file in models/diffsketch/conditions.",
                ),
            ],
            outputs=[
                Conditions.Output(display_name="conditions", tooltip="For DiffSketch Train and Distill.")
            ],
        )

    @classmethod
    def execute(cls, conditions_name) -> io.NodeOutput:
        from diffsketch.train.conditions import ConditionSampler

        return io.NodeOutput(ConditionSampler.load(file_path_or_raise([FOLDER], conditions_name, WHAT)))
