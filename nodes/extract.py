"""Extractor nodes: load a distilled extractor (kept under ComfyUI's memory management) and run it."""

from __future__ import annotations

import os

import comfy.cli_args
import comfy.model_management
import comfy.model_patcher
import comfy.utils
from comfy_api.latest import io

from diffsketch.distill.temporal import TEMPORAL_MODES

from .common import (
    LINE_ART_ALIASES,
    MISSING_PREFIX,
    file_options,
    file_path,
    file_path_or_raise,
    search_aliases,
)
from .types import CATEGORY, Extractor

FOLDER = "diffsketch_extractors"
WHAT = "an extractor .safetensors (made by DiffSketch Distill)"
#: The combo entry of the extractor shipped with the pack (listed first).
BUILT_IN = "built-in: HED sketch (default_extractor.safetensors)"


def extractor_names() -> list[str]:
    """The built-in extractor, then the files in the extractors folder (no "missing" entry: the
    built-in one is always there)."""
    files = file_options([FOLDER], WHAT, keep=lambda name: name != BUILT_IN)
    return [BUILT_IN] + [name for name in files if not name.startswith(MISSING_PREFIX)]


class DiffSketchLoadExtractor(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffSketchLoadExtractor",
            **search_aliases(*LINE_ART_ALIASES, "sketch extractor"),
            display_name="DiffSketch Load Extractor",
            category=CATEGORY,
            description=(
                "Loads a distilled DiffSketch extractor. ComfyUI's model management moves it to the GPU when it runs "
                "and offloads it when memory is needed; repeated runs reuse the loaded model."
            ),
            inputs=[
                io.Combo.Input(
                    "extractor_name",
                    options=extractor_names(),
                    tooltip="A .safetensors extractor in models/diffsketch/extractors (made by DiffSketch "
                    "Distill), or the built-in one: distilled from real HED, so it draws HED's lines, not a "
                    "style you trained.",
                ),
            ],
            outputs=[Extractor.Output(display_name="extractor", tooltip="For DiffSketch Extract.")],
        )

    @classmethod
    def fingerprint_inputs(cls, extractor_name):
        if extractor_name == BUILT_IN:
            return extractor_name
        path = file_path([FOLDER], extractor_name)
        return os.path.getmtime(path) if path else extractor_name  # reload when the file changes

    @classmethod
    def execute(cls, extractor_name) -> io.NodeOutput:
        from diffsketch.distill.extractor import load_default_extractor, load_extractor

        if extractor_name == BUILT_IN:
            return io.NodeOutput(wrap_extractor(load_default_extractor(device="cpu")))
        path = file_path_or_raise([FOLDER], extractor_name, WHAT)
        return io.NodeOutput(wrap_extractor(load_extractor(path, device="cpu")))


def wrap_extractor(model):
    """A ModelPatcher around the extractor, the pattern ComfyUI's loaders use for memory management."""
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


class DiffSketchExtract(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffSketchExtract",
            **search_aliases(*LINE_ART_ALIASES, "edge detection", "outline", "contour"),
            display_name="DiffSketch Extract",
            category=CATEGORY,
            description=(
                "Turns any image batch (photos, renders, video frames) into sketches in the trained style, at any size: "
                "images are padded to the network's multiple, and large ones are processed in blended tiles. "
                "Runs in float32 when ComfyUI is started with --force-fp32, else at the library's default "
                "precision (bfloat16 on a GPU or on a CPU that computes it in hardware)."
            ),
            inputs=[
                Extractor.Input("extractor", tooltip="From DiffSketch Load Extractor or DiffSketch Distill."),
                io.Image.Input(
                    "image", tooltip="Images to turn into sketches (any size; grey, RGB or RGBA)."
                ),
                io.Boolean.Input(
                    "invert",
                    default=False,
                    tooltip="White lines on black (the ControlNet line-art convention) instead of black "
                    "lines on white.",
                ),
                io.Float.Input(
                    "contrast",
                    default=1.0,
                    min=0.05,
                    max=20.0,
                    step=0.05,
                    tooltip="Line contrast: above 1 darkens faint strokes, below 1 lightens them; paper and "
                    "full ink stay put.",
                ),
                io.Int.Input(
                    "tile",
                    default=1024,
                    min=128,
                    max=8192,
                    step=64,
                    tooltip="Images larger than this are processed in overlapping tiles so memory stays "
                    "bounded.",
                ),
                io.Combo.Input(
                    "temporal",
                    options=list(TEMPORAL_MODES),
                    default="off",
                    # optional: API prompts and saved workflows made before this input have no value for it
                    optional=True,
                    tooltip="For a batch of video frames in order: 'stabilize' carries each frame's lines "
                    "along the motion (optical flow) into the next so they stop flickering, never across a "
                    "scene cut; needs OpenCV (pip install opencv-python-headless). 'off': every image on its own.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="sketch", tooltip="The sketches as an IMAGE (3 channels)."),
                io.Mask.Output(
                    display_name="line_strength", tooltip="Line strength as a MASK (1 = strong line)."
                ),
            ],
        )

    @classmethod
    def execute(cls, extractor, image, invert, contrast, tile, temporal="off") -> io.NodeOutput:
        from diffsketch.distill.extract import extract
        from diffsketch.distill.temporal import stabilize_batch, strength_to_sketch

        comfy.model_management.load_model_gpu(extractor)
        pbar = comfy.utils.ProgressBar(1)

        def progress(done, total):
            pbar.update_absolute(done, total)

        sketch, mask = extract(
            extractor.model,
            image,
            invert=bool(invert),
            contrast=float(contrast),
            tile=int(tile),
            dtype=comfy_precision(),
            progress=progress,
        )
        if temporal == "stabilize":
            mask, _ = stabilize_batch(image, mask)
            sketch = strength_to_sketch(mask, bool(invert))
        elif temporal != "off":
            raise ValueError(f"temporal must be one of {TEMPORAL_MODES}, got {temporal!r}.")
        return io.NodeOutput(sketch, mask)


def comfy_precision() -> str:
    """The extractor's precision under ComfyUI's own flags: float32 with --force-fp32, else the
    library's default for the device."""
    return "fp32" if comfy.cli_args.args.force_fp32 else "auto"
