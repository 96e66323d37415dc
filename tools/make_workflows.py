"""Write the example workflows: the templates in workflows/ (UI format, what ComfyUI's template browser
lists), their API-format twins in workflows/api/ (used by the tests), and a thumbnail per template.

The template browser of the ComfyUI frontend (1.35 and 1.58 alike) shows a custom-node template by its
file name and in the order the server lists the files; it reads no index or title metadata for
custom-node templates. So each file is named after its title, numbered in tutorial order
("DiffSketch 1 - Quick start, no drawing needed"): :data:`TEMPLATES` is that order, and a new template
(an SDXL quick start, say) is one more entry there. Tests find a template by its ``key``.

Each template carries, for a first run: a note on the canvas with the steps in plain words; a group
per stage; ``properties.models`` on the loaders, so the frontend's missing-models dialog offers the
files with their download links; a layout that the frontend's fit-to-view shows at a readable zoom
on a 1920x1080 window (tests/comfyui/test_frontend_comfyui.py checks it and takes screenshots).

The node schemas come from a real ComfyUI's ``/object_info`` so widget order and socket types match
what the frontend expects:

    COMFYUI_PATH=/path/to/ComfyUI python tools/make_workflows.py          # starts a server to ask
    python tools/make_workflows.py --object-info object_info.json        # or reuse a saved answer
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpu_figures import load as load_gpu_figures
from gpu_figures import part_figures
from workflow_format import (
    TITLE_HEIGHT,
    UI_ONLY_TYPES,
    api_equal,
    build_ui,
    graph_to_api,
    node_size,
    ui_to_api,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diffsketch.capture.sampling import SamplingSettings  # noqa: E402
from diffsketch.capture.spec import DIT_NAMES_TEXT, FLUX, ZIMAGE, is_flow_family  # noqa: E402
from diffsketch.train.conditions import load_default_prompts  # noqa: E402
from diffsketch.train.losses import ALEXNET_FILENAME, ALEXNET_URL, CLIP_FILENAMES, CLIP_URL  # noqa: E402

PROMPT = "a photo of a horse in mud"
SEED = 50
SKETCH_FILE = "diffsketch_sketch.png"  # what template 2 asks you to save, template 3 loads


# ---------------------------------------------------------------------------------------------
# Files the templates need and where the missing-models dialog offers them
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFile:
    """One entry of a node's ``properties.models``: the frontend lists it when ``name`` is not in
    the server's folder ``directory`` (a folder_paths key) and offers ``url``. Its download button
    accepts https://huggingface.co/ and https://civitai.com/ URLs only (1.35 also wants a
    .safetensors name); other URLs are listed with the link but no button."""

    name: str
    url: str
    directory: str
    what: str

    def entry(self) -> dict:
        return {"name": self.name, "url": self.url, "directory": self.directory}

    @property
    def folder(self) -> str:
        """Where the folder kind lives in a default install (DiffSketch's kinds: models/diffsketch/<x>)."""
        sub = self.directory.removeprefix("diffsketch_")
        return f"models/diffsketch/{sub}" if sub != self.directory else f"models/{self.directory}"


SD15 = ModelFile(
    "v1-5-pruned-emaonly-fp16.safetensors",
    "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly-fp16.safetensors",
    "checkpoints",
    "Stable Diffusion 1.5",
)
SDXL = ModelFile(
    "sd_xl_base_1.0.safetensors",
    "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
    "checkpoints",
    "Stable Diffusion XL base 1.0 (or any SDXL fine-tune: pick it in Load Checkpoint)",
)
# Z-Image Turbo as ComfyUI's own Z-Image Turbo template loads it: three files, three loaders.
ZIMAGE_URL = "https://huggingface.co/Comfy-Org/z_image_turbo/resolve/main/split_files"
ZIMAGE_TURBO = ModelFile(
    "z_image_turbo_bf16.safetensors",
    f"{ZIMAGE_URL}/diffusion_models/z_image_turbo_bf16.safetensors",
    "diffusion_models",
    "Z-Image Turbo",
)
QWEN3_4B = ModelFile(
    "qwen_3_4b.safetensors",
    f"{ZIMAGE_URL}/text_encoders/qwen_3_4b.safetensors",
    "text_encoders",
    "Qwen3-4B (its text encoder)",
)
ZIMAGE_VAE = ModelFile("ae.safetensors", f"{ZIMAGE_URL}/vae/ae.safetensors", "vae", "its VAE (the Flux VAE)")
# Flux.1 dev as ComfyUI's own Flux dev template loads it: the diffusion model, CLIP-L and T5-XXL
# (DualCLIPLoader type flux) and the VAE Z-Image uses too.
FLUX_DEV = ModelFile(
    "flux1-dev.safetensors",
    "https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors",
    "diffusion_models",
    "Flux.1 dev (or flux1-schnell.safetensors: pick it in Load Diffusion Model)",
)
FLUX_TEXT_ENCODERS_URL = "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main"
FLUX_CLIP_L = ModelFile(
    "clip_l.safetensors", f"{FLUX_TEXT_ENCODERS_URL}/clip_l.safetensors", "text_encoders", "CLIP-L"
)
FLUX_T5XXL = ModelFile(
    "t5xxl_fp16.safetensors",
    f"{FLUX_TEXT_ENCODERS_URL}/t5xxl_fp16.safetensors",
    "text_encoders",
    "T5-XXL (its prompt encoder)",
)
FLUX_VAE = ModelFile(
    "ae.safetensors",
    "https://huggingface.co/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/ae.safetensors",
    "vae",
    "its VAE",
)
CLIP = ModelFile(CLIP_FILENAMES[0], CLIP_URL, "diffsketch_clip", "OpenAI CLIP ViT-B/32")
# torchvision publishes AlexNet at download.pytorch.org only: the dialog shows this link without a
# download button, and the note says where to put the file.
ALEXNET = ModelFile(ALEXNET_FILENAME, ALEXNET_URL, "diffsketch_lpips", "torchvision's AlexNet")


# ---------------------------------------------------------------------------------------------
# Nodes
# ---------------------------------------------------------------------------------------------
def _ckpt(model: ModelFile = SD15):
    return {"type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": model.name}, "models": [model.entry()]}


def _sample(size: int = 512, steps: int = 50, cfg: float = 5.0):
    return {
        "type": "DiffSketchSample",
        "inputs": {"model": [1, 0], "clip": [1, 1], "vae": [1, 2]},
        "widgets": {
            "prompt": PROMPT,
            "seed": SEED,
            "steps": steps,
            "cfg": cfg,
            "width": size,
            "height": size,
        },
    }


def _loss_models():
    return {
        "type": "DiffSketchLoadClipLoss",
        "widgets": {"clip_name": CLIP.name, "lpips_weights": ALEXNET.name},
        "models": [CLIP.entry(), ALEXNET.entry()],
    }


def _fit_conditions(save_name: str = "default_conditions"):
    return {
        "type": "DiffSketchFitConditions",
        "inputs": {"clip": [1, 1]},
        "widgets": {"save_name": save_name},
    }


@dataclass(frozen=True)
class Speed:
    """How long a template trains: fewer iterations than the paper, on the fast schedule (only the
    captured timesteps are sampled), so a first run ends in reasonable time on a consumer GPU."""

    train_iterations: int
    h_iter: int
    pair_count: int
    distill_iterations: int


QUICK = Speed(train_iterations=300, h_iter=250, pair_count=200, distill_iterations=1000)
STYLE = Speed(train_iterations=600, h_iter=500, pair_count=500, distill_iterations=1500)
STEPS = 50  # DDIM steps of every sampling in the templates (the nodes' default)


def stage_minutes(seconds: dict, speed: Speed) -> dict[str, float]:
    """Minutes per stage for ``speed`` from benchmarks/template_times.py's seconds per unit."""
    return {
        "sample": seconds["sample"] / 60,
        "fit_conditions": seconds["fit_conditions"] / 60,
        "train": speed.train_iterations * seconds["train_iteration"] / 60,
        "distill": (speed.pair_count * seconds["pair"] + speed.distill_iterations * seconds["student_step"])
        / 60,
        "extract": seconds["extract"] / 60,
        # a capture from a picture: inversion and replay, each a full-grid pass (measured once
        # benchmarks/template_times.py times it; until then the note gives its work)
        **({"capture": seconds["capture"] / 60} if "capture" in seconds else {}),
    }


def load_stage_times(arch: str = "sd15") -> dict | None:
    """benchmarks/template_times.py's seconds per unit for ``arch`` from the GPU check's figures
    (tools/gpu_figures.py), or None while no GPU has measured them: the notes then give the work
    per stage alone."""
    return part_figures(load_gpu_figures(), f"template_times_{arch}")


def unet_evaluations(schedule: str, steps: int = STEPS, family: str | None = None) -> int:
    """Model evaluations of one sampling at ``steps`` steps (one evaluation: one UNet or
    transformer call on the CFG batch), ``family``'s default timesteps captured (None: the paper's 13
    on the DDIM grid)."""
    settings = SamplingSettings(steps=steps, schedule=schedule)
    return len(settings.denoising_schedule(settings.plan(family)))


def stage_work(timed: tuple[str, ...], speed: Speed, steps: int = STEPS, family: str | None = None) -> str:
    """What a stage computes with the templates' settings, in countable units."""
    fast = unet_evaluations("fast", steps, family)
    full = unet_evaluations("full", steps, family)
    network = "transformer" if family is not None and is_flow_family(family) else "UNet"
    work = {
        "sample": f"{full} {network} evaluations",
        # inversion (the caption's branch alone) up the grid, then the replay down it
        "capture": f"{2 * full} {network} evaluations",
        "fit_conditions": f"{len(load_default_prompts()):,} prompts encoded",
        "train": f"{speed.train_iterations * fast:,} {network} evaluations, {speed.train_iterations} generator steps",
        "distill": f"{speed.pair_count * fast:,} {network} evaluations, {speed.distill_iterations:,} extractor steps",
        "extract": "one extractor pass",
    }
    return ", ".join(work[k] for k in timed)


def _train(sketch_src, speed: Speed, save_name="my_style", **widgets):
    return {
        "type": "DiffSketchTrain",
        "inputs": {
            "model": [1, 0],
            "clip": [1, 1],
            "vae": [1, 2],
            "features": [2, 2],
            "sketch": sketch_src,
            "conditions": [4, 0],
            "loss_models": [5, 0],
        },
        "widgets": {
            "iterations": speed.train_iterations,
            "h_iter": speed.h_iter,
            "schedule": "fast",
            "save_name": save_name,
            **widgets,
        },
    }


#: Train settings that keep SDXL's 1024x1024 generator step within a 12 GB GPU: gradient
#: checkpointing and each new sample seen through a 512x512 window (benchmarks/train_step.py --arch sdxl);
#: the Z-Image quick start at 1024 uses them too.
SDXL_TRAIN = {"low_memory": True, "sample_crop": 512}


def _distill(
    generator_src,
    conditions_src,
    loss_src,
    speed: Speed,
    save_name="my_style_extractor",
    size: int = 512,
    steps: int = STEPS,
):
    return {
        "type": "DiffSketchDistill",
        "inputs": {
            "generator": generator_src,
            "model": [1, 0],
            "clip": [1, 1],
            "vae": [1, 2],
            "conditions": conditions_src,
            "loss_models": loss_src,
        },
        "widgets": {
            "pair_count": speed.pair_count,
            "iterations": speed.distill_iterations,
            "schedule": "fast",
            "steps": steps,
            "width": size,
            "height": size,
            "save_name": save_name,
        },
    }


# ---------------------------------------------------------------------------------------------
# Notes: Markdown on the canvas. Headings are what stays legible at fit-to-view (22/16/12 px);
# body text (10 px) is the detail for a closer look.
# ---------------------------------------------------------------------------------------------
def files_section(models: list[ModelFile], number: int = 1) -> str:
    """A step of a note (the first, unless ``number`` says otherwise): each file, its link and the
    folder (and name) to save it as."""
    lines = [
        f"## {number}. Get the model files",
        "ComfyUI lists the missing ones when the template opens. Save each into its folder, then press "
        "**r** to refresh the lists:",
    ]
    for m in models:
        published = m.url.rsplit("/", 1)[-1]
        target = f"`{m.folder}`" if published == m.name else f"`{m.folder}`, named `{m.name}`"
        lines.append(f"- {m.what}: [{published}]({m.url}) → {target}")
        if m is ALEXNET:
            lines[-1] += " (ComfyUI shows this link but cannot download it for you)"
    return "\n".join(lines)


def _duration(minutes: float) -> str:
    if minutes < 1:
        return "under a minute"
    if minutes < 90:
        return f"about {round(minutes)} min"
    return f"about {minutes / 60:.1f} h"


def stages_section(
    number: int,
    stages: list[Stage],
    speed: Speed,
    heading: str = "Press Run",
    arch: str = "sd15",
    steps: int = STEPS,
    family: str | None = None,
) -> str:
    """A numbered step: run, then one line per group on the canvas with its time where the GPU check
    has measured it for ``arch`` (:func:`load_stage_times`), else the work it does."""
    measured = load_stage_times(arch)
    minutes = stage_minutes(measured["seconds"], speed) if measured else {}
    lines = [f"## {number}. {heading}"]
    for s in stages:
        if not s.timed:
            lines.append(f"### {s.title}: {s.text}")
        elif minutes and all(k in minutes for k in s.timed):
            lines.append(f"### {s.title} ({_duration(sum(minutes[k] for k in s.timed))}): {s.text}")
        else:
            lines.append(f"### {s.title}: {s.text} ({stage_work(s.timed, speed, steps, family)})")
    if minutes:
        lines.append(f"Times measured on {measured['device']} by tools/gpu_check.py.")
    elif any(s.timed for s in stages):
        lines.append("GPU times are not measured yet; each stage gives its work instead.")
    return "\n".join(lines)


def note(title: str, intro: str, *sections: str) -> str:
    return "\n\n".join([f"# {title}", intro, *sections])


# ---------------------------------------------------------------------------------------------
# Layout: one group per stage; groups in rows, rows stacked in bands, bands left to right
# ---------------------------------------------------------------------------------------------
NODE_WIDTH = 270
IMAGE_NODE_SIZE = (270, 340)  # image loaders and previews: room for the picture without growing
GROUP_HEADER = 50  # group title bar (font 24) and a margin above the first node's title
GROUP_PAD = 20
COLUMN_GAP = 40
GROUP_GAP = 50
NODE_GAP = 40  # between a node and the title bar of the next one below it
NOTE = "note"  # the note's place in an arrangement
COLORS = {"models": "#3f789e", "example": "#8A8", "train": "#a1309b", "distill": "#b06634", "use": "#b58b2a"}
# Nodes that show an image once they have run grow downwards by the image (about 224 px): keep them
# at the bottom of their columns so they grow into free space.
# The MarkdownNote's text: 10 px body, headings 22/16/12 px (frontend 1.35 and 1.58 styles). Line
# heights include the block margins; measured against the rendered notes, they leave 10-40 px spare.
NOTE_CHAR_WIDTH = 5.3
NOTE_LINE = {"#": 44, "##": 36, "###": 28, "": 16}


@dataclass
class Stage:
    key: str
    title: str
    color: str
    columns: list[list[int]]
    text: str  # what this stage does, for the note
    timed: tuple[str, ...] = ()  # its parts in stage_minutes, for the note's time


@dataclass
class Template:
    key: str  # stable id (API twin file name; what tests use)
    title: str  # shown by the template browser after "DiffSketch <n> - "
    build: Callable[[], dict]


def note_height(text: str, width: int) -> int:
    """About how tall the frontend draws ``text`` (Markdown) in a note ``width`` wide: wrapped lines
    of each block at its font size."""
    height = 0
    for raw in text.split("\n"):
        line = re.sub(r"\]\([^)]*\)", "]", raw.strip()).replace("**", "").replace("`", "")
        if not line:
            height += 6
            continue
        level = line.split(" ", 1)[0] if line.startswith("#") else ""
        indent = 30 if line.startswith("- ") else 0
        scale = NOTE_LINE[level] / NOTE_LINE[""]
        chars = max(10, int((width - 20 - indent) / (NOTE_CHAR_WIDTH * scale)))
        height += NOTE_LINE[level] * -(-len(line) // chars)
    return int(height)


def layout(graph: dict, stages: list[Stage], arrangement: list[list[list[str]]], object_info: dict) -> dict:
    """Place every node: each stage is a group of node columns; ``arrangement`` lists bands left to
    right, each a list of rows top to bottom, each a list of stage keys (or :data:`NOTE`) left to
    right. The note takes its row's width."""
    nodes = graph["nodes"]
    for node in nodes.values():
        if node["type"] in UI_ONLY_TYPES:
            continue
        width, height = node_size(node, object_info)
        if node["type"] in ("LoadImage", "PreviewImage", "SaveImage"):
            width, height = max(width, IMAGE_NODE_SIZE[0]), max(height, IMAGE_NODE_SIZE[1])
        node["size"] = [max(width, NODE_WIDTH), height]
    by_key = {s.key: s for s in stages}
    note_id = next((nid for nid, n in nodes.items() if n["type"] in UI_ONLY_TYPES), None)

    def stage_size(stage: Stage) -> tuple[int, int]:
        widths = [max(nodes[str(n)]["size"][0] for n in col) for col in stage.columns]
        heights = [
            sum(TITLE_HEIGHT + nodes[str(n)]["size"][1] for n in col) + NODE_GAP * (len(col) - 1)
            for col in stage.columns
        ]
        return (
            sum(widths) + COLUMN_GAP * (len(widths) - 1) + 2 * GROUP_PAD,
            GROUP_HEADER + max(heights) + GROUP_PAD,
        )

    def place_stage(stage: Stage, x0: int, y0: int) -> dict:
        x = x0 + GROUP_PAD
        for column in stage.columns:
            width = max(nodes[str(n)]["size"][0] for n in column)
            y = y0 + GROUP_HEADER
            for nid in column:
                node = nodes[str(nid)]
                node["size"][0] = width
                node["pos"] = [x, y + TITLE_HEIGHT]
                y += TITLE_HEIGHT + node["size"][1] + NODE_GAP
            x += width + COLUMN_GAP
        w, h = stage_size(stage)
        return {"title": stage.title, "color": stage.color, "bounding": [x0, y0, w, h]}

    groups, x = [], 0
    for band in arrangement:
        rows = [[k for k in row if k != NOTE] for row in band]
        row_widths = [sum(stage_size(by_key[k])[0] for k in row) + GROUP_GAP * (len(row) - 1) for row in rows]
        band_width = max(w for w in row_widths if w) if any(row_widths) else 0
        y = 0
        for row in band:
            if row == [NOTE]:
                note = nodes[note_id]
                width = band_width or note["size"][0]
                note["size"] = [width, note_height(note["text"], width)]
                note["pos"] = [x, y + TITLE_HEIGHT]
                y += TITLE_HEIGHT + note["size"][1] + GROUP_GAP
                continue
            rx, row_height = x, 0
            for key in row:
                groups.append(place_stage(by_key[key], rx, y))
                w, h = stage_size(by_key[key])
                rx, row_height = rx + w + GROUP_GAP, max(row_height, h)
            y += row_height + GROUP_GAP
        x += band_width + GROUP_GAP
    unplaced = [nid for nid, n in nodes.items() if "pos" not in n]
    if unplaced:
        raise ValueError(f"nodes {unplaced} are in no stage of the arrangement")
    graph["groups"] = groups
    return graph


def note_node(text: str, width: int = 440) -> dict:
    return {"type": "MarkdownNote", "text": text, "size": [width, 0]}


# ---------------------------------------------------------------------------------------------
# The templates
# ---------------------------------------------------------------------------------------------
def _models_stage(columns=((1, 5, 4),), checkpoint: str = "SD 1.5"):
    return Stage(
        "models",
        "Models",
        COLORS["models"],
        [list(c) for c in columns],
        f"{checkpoint}, loss networks, prompt conditions",
        ("fit_conditions",),
    )


@dataclass(frozen=True)
class Loaders:
    """The nodes that give a quick start its MODEL, CLIP and VAE where Load Checkpoint does not
    (node 1 and ids from 10), the (node, output) each comes from, the files they load and how
    the models group arranges them."""

    nodes: dict
    model: list
    clip: list
    vae: list
    files: list
    columns: tuple
    label: str


def _rewired(node: dict, loaders: Loaders) -> dict:
    """``node`` with its inputs from Load Checkpoint's outputs (node 1) taken from ``loaders``."""
    sources = {(1, 0): loaders.model, (1, 1): loaders.clip, (1, 2): loaders.vae}
    inputs = {k: sources.get(tuple(v), v) for k, v in node.get("inputs", {}).items()}
    return {**node, "inputs": inputs} if "inputs" in node else node


def _quick_start(
    checkpoint: ModelFile,
    size: int,
    arch: str,
    title: str,
    intro: str,
    prefix: str,
    loaders: Loaders | None = None,
    steps: int = STEPS,
    cfg: float = 5.0,
    family: str | None = None,
) -> dict:
    """From a checkpoint to an extractor in one run: Sample & Capture, XDoG as the drawing, Train,
    Distill, Extract, at ``size`` px on the fast schedule; ``loaders`` replace Load Checkpoint for a
    model published as separate files, sampled at ``steps`` and ``cfg``."""
    label = loaders.label if loaders else "SDXL" if arch == "sdxl" else "SD 1.5"
    stages = [
        _models_stage(columns=loaders.columns if loaders else ((1, 5, 4),), checkpoint=label),
        Stage(
            "example",
            "Example",
            COLORS["example"],
            [[3, 2]],
            f"a {size}x{size} image of a horse and its XDoG sketch",
            ("sample",),
        ),
        Stage(
            "train",
            "Train",
            COLORS["train"],
            [[6]],
            f"learns the sketch style ({QUICK.train_iterations} fast iterations"
            + (", low memory, 512-px windows of each new sample" if size >= 1024 else "")
            + f") → generator `{prefix}style`",
            ("train",),
        ),
        Stage(
            "distill",
            "Distill",
            COLORS["distill"],
            [[7]],
            f"{QUICK.pair_count} image/sketch pairs, then a small extractor → `{prefix}style_extractor`",
            ("distill",),
        ),
        Stage(
            "extract",
            "Extract",
            COLORS["use"],
            [[8, 9]],
            "sketches the example → `output/diffsketch`",
            ("extract",),
        ),
    ]
    text = note(
        title,
        intro,
        files_section([*(loaders.files if loaders else [checkpoint]), CLIP, ALEXNET]),
        stages_section(2, stages, QUICK, arch=arch, steps=steps, family=family),
        "Long stages show progress and previews on their node. Cancel keeps what is done; Run again continues.",
    )
    nodes = {
        1: _ckpt(checkpoint),
        2: _sample(size, steps, cfg),
        3: {"type": "DiffSketchXDoG", "inputs": {"image": [2, 0]}},
        # a family of its own gets a file of its own (conditions are fitted per text encoder)
        4: _fit_conditions(f"{family}_conditions" if family else "default_conditions"),
        5: _loss_models(),
        # Names of its own, so a quick start never overwrites the style of templates 2-5.
        6: _train([3, 0], QUICK, save_name=f"{prefix}style", **(SDXL_TRAIN if size >= 1024 else {})),
        7: _distill(
            [6, 0], [4, 0], [5, 0], QUICK, save_name=f"{prefix}style_extractor", size=size, steps=steps
        ),
        8: {"type": "DiffSketchExtract", "inputs": {"extractor": [7, 0], "image": [2, 0]}},
        9: {
            "type": "SaveImage",
            "inputs": {"images": [8, 0]},
            "widgets": {"filename_prefix": f"diffsketch/{prefix.rstrip('_')}"},
        },
        20: note_node(text),
    }
    if loaders:
        nodes = {**{k: _rewired(v, loaders) for k, v in nodes.items() if k != 1}, **loaders.nodes}
    return {"nodes": nodes, "stages": stages, "arrangement": [[[NOTE], [s.key for s in stages]]]}


def quick_start() -> dict:
    return _quick_start(
        SD15,
        512,
        "sd15",
        "DiffSketch quick start",
        "From nothing to a sketch extractor of your own in one run, no drawing needed: an XDoG sketch of a "
        "generated image stands in for a drawing. Templates 2 to 5 do the same with a sketch you draw; "
        "template 6 is this quick start on SDXL, templates 8 and 9 on Z-Image Turbo and Flux.1 (experimental).",
        "quick_",
    )


def quick_start_sdxl() -> dict:
    return _quick_start(
        SDXL,
        1024,
        "sdxl",
        "DiffSketch quick start on SDXL",
        "Template 1 on an SDXL checkpoint (SDXL base or a fine-tune such as Illustrious, NoobAI, Pony or "
        f"Juggernaut) at 1024x1024. DiffSketch works with SD 1.x, SD 2.x and SDXL, and (experimental) "
        f"{DIT_NAMES_TEXT} (templates 8 and 9: Z-Image Turbo, Flux.1); the generator and extractor it makes belong to the "
        "checkpoint family they were trained on. Templates 2 to 5 work with an SDXL checkpoint too: pick it in Load "
        "Checkpoint and set the sizes to 1024.",
        "quick_sdxl_",
    )


def _unet_loader(model: ModelFile) -> dict:
    """Load Diffusion Model of a diffusion transformer published as a file of its own."""
    return {
        "type": "UNETLoader",
        "widgets": {"unet_name": model.name, "weight_dtype": "default"},
        "models": [model.entry()],
    }


def _vae_loader(model: ModelFile) -> dict:
    return {"type": "VAELoader", "widgets": {"vae_name": model.name}, "models": [model.entry()]}


#: Z-Image Turbo's loaders as ComfyUI's own Z-Image Turbo template has them: the diffusion model,
#: its Qwen3-4B text encoder (CLIPLoader type lumina2) and the VAE, with the model's shift of 3.
ZIMAGE_LOADERS = Loaders(
    nodes={
        1: _unet_loader(ZIMAGE_TURBO),
        10: {
            "type": "CLIPLoader",
            # device: an advanced widget with no default in /object_info, so named here
            "widgets": {"clip_name": QWEN3_4B.name, "type": "lumina2", "device": "default"},
            "models": [QWEN3_4B.entry()],
        },
        11: _vae_loader(ZIMAGE_VAE),
        12: {"type": "ModelSamplingAuraFlow", "inputs": {"model": [1, 0]}, "widgets": {"shift": 3.0}},
    },
    model=[12, 0],
    clip=[10, 0],
    vae=[11, 0],
    files=[ZIMAGE_TURBO, QWEN3_4B, ZIMAGE_VAE],
    columns=((1, 12, 10, 11), (5, 4)),
    label="Z-Image Turbo",
)
#: Z-Image Turbo is guidance-distilled: it samples in 8 steps at cfg 1 (one branch, no negative).
ZIMAGE_TURBO_STEPS = 8


def quick_start_zimage() -> dict:
    return _quick_start(
        ZIMAGE_TURBO,
        1024,
        "zimage",
        "DiffSketch quick start on Z-Image Turbo (experimental)",
        "Template 1 on Z-Image Turbo at 1024x1024, sampled as Z-Image Turbo is meant to be: 8 Euler steps at "
        "cfg 1. Experimental: DiffSketch was validated on UNet backbones (SD 1.x, SD 2.x, SDXL), and sketch "
        "quality on diffusion transformers has not been measured with real weights yet. The generator and "
        "extractor it makes belong to Z-Image.",
        "quick_zimage_",
        loaders=ZIMAGE_LOADERS,
        steps=ZIMAGE_TURBO_STEPS,
        cfg=1.0,
        family=ZIMAGE,
    )


#: Flux.1's loaders as ComfyUI's own Flux dev template has them: the diffusion model, CLIP-L and
#: T5-XXL in one DualCLIPLoader of type flux, and the VAE.
FLUX_LOADERS = Loaders(
    nodes={
        1: _unet_loader(FLUX_DEV),
        10: {
            "type": "DualCLIPLoader",
            # device: an advanced widget with no default in /object_info, so named here
            "widgets": {
                "clip_name1": FLUX_CLIP_L.name,
                "clip_name2": FLUX_T5XXL.name,
                "type": "flux",
                "device": "default",
            },
            "models": [FLUX_CLIP_L.entry(), FLUX_T5XXL.entry()],
        },
        11: _vae_loader(FLUX_VAE),
    },
    model=[1, 0],
    clip=[10, 0],
    vae=[11, 0],
    files=[FLUX_DEV, FLUX_CLIP_L, FLUX_T5XXL, FLUX_VAE],
    columns=((1, 10, 11), (5, 4)),
    label="Flux.1",
)
#: Flux.1 dev's steps in ComfyUI's own template; at cfg 1 (guidance-distilled: one branch).
FLUX_DEV_STEPS = 20


def quick_start_flux() -> dict:
    return _quick_start(
        FLUX_DEV,
        1024,
        "flux",
        "DiffSketch quick start on Flux.1 (experimental)",
        "Template 1 on Flux.1 dev at 1024x1024, sampled as ComfyUI's own Flux dev template samples it: 20 Euler "
        "steps at cfg 1, with the guidance 3.5 Flux.1 dev was distilled for (FluxGuidance's default). The "
        "DiffSketch nodes encode the prompt themselves, so no FluxGuidance node reaches them: set it in the "
        "guidance input of Sample & Capture; Train and Distill follow the recorded value. Flux.1 "
        "schnell works too: pick it in Load Diffusion Model and set the steps of Sample & Capture and Distill "
        "to 8 (its usual 4 are too few for the captured timesteps). Experimental: DiffSketch was validated on "
        "UNet backbones (SD 1.x, SD 2.x, SDXL), and sketch quality on diffusion transformers has not been "
        "measured with real weights yet. The generator and extractor it makes belong to Flux.1.",
        "quick_flux_",
        loaders=FLUX_LOADERS,
        steps=FLUX_DEV_STEPS,
        cfg=1.0,
        family=FLUX,
    )


def make_example() -> dict:
    stages = [
        Stage("models", "Model", COLORS["models"], [[1]], "SD 1.5"),
        Stage(
            "example",
            "Example image",
            COLORS["example"],
            [[2], [3]],
            "samples it (keeping the features DiffSketch learns from) → `output/diffsketch/example_00001_.png`",
            ("sample",),
        ),
    ]
    text = note(
        "Make the image to draw over",
        "DiffSketch learns a line style from ONE drawing over an image your checkpoint made. This template "
        "makes that image; change the prompt or the seed for another one.",
        files_section([SD15]),
        stages_section(2, stages, STYLE),
        "## 3. Draw over it\n"
        "Open the saved image in any paint program, draw your lines over it (black on white, same size) "
        f"and save the lines alone as `ComfyUI/input/{SKETCH_FILE}`. Then open template 3.",
    )
    nodes = {
        1: _ckpt(),
        2: _sample(),
        3: {
            "type": "SaveImage",
            "inputs": {"images": [2, 0]},
            "widgets": {"filename_prefix": "diffsketch/example"},
        },
        20: note_node(text, 520),
    }
    return {"nodes": nodes, "stages": stages, "arrangement": [[[NOTE], [s.key for s in stages]]]}


def train_style() -> dict:
    stages = [
        _models_stage(),
        Stage(
            "example",
            "Your example",
            COLORS["example"],
            [[3, 2]],
            f"your sketch `input/{SKETCH_FILE}` and template 2's image (same prompt and seed)",
            ("sample",),
        ),
        Stage(
            "train",
            "Train",
            COLORS["train"],
            [[6], [7]],
            f"learns your style ({STYLE.train_iterations} fast iterations) → generator `my_style`",
            ("train",),
        ),
        # a 50-step sample and one pass of the generator: as long as the example's sample
        Stage("try", "Try it", COLORS["use"], [[9], [10]], "sketches a new image in your style", ("sample",)),
    ]
    text = note(
        "Train a style from your sketch",
        f"Needs your drawing over template 2's image saved as `ComfyUI/input/{SKETCH_FILE}` (black lines on "
        "white, the same size as the image).",
        files_section([SD15, CLIP, ALEXNET]),
        stages_section(2, stages, STYLE),
        "For the paper's quality: 1,200 `iterations` on the `full` schedule. Cancel writes a checkpoint; pick "
        "it in `resume_from` to continue.",
    )
    nodes = {
        1: _ckpt(),
        2: _sample(),
        3: {"type": "LoadImage", "widgets": {"image": SKETCH_FILE}, "title": "Your sketch of the example"},
        4: _fit_conditions(),
        5: _loss_models(),
        6: _train([3, 0], STYLE),
        7: {"type": "PreviewImage", "inputs": {"images": [6, 1]}, "title": "Training previews"},
        9: {
            "type": "DiffSketchGenerate",
            "inputs": {"model": [1, 0], "clip": [1, 1], "vae": [1, 2], "generator": [6, 0]},
            "widgets": {"prompt": "a photo of a cat on a sofa", "seed": 1, "width": 512, "height": 512},
        },
        10: {
            "type": "SaveImage",
            "inputs": {"images": [9, 1]},
            "widgets": {"filename_prefix": "diffsketch/sketch"},
        },
        20: note_node(text),
    }
    return {"nodes": nodes, "stages": stages, "arrangement": [[[NOTE], [s.key for s in stages]]]}


def distill() -> dict:
    stages = [
        Stage(
            "models",
            "Load",
            COLORS["models"],
            [[1, 2], [4, 5]],
            "SD 1.5, your generator `my_style`, the saved conditions, loss networks",
        ),
        Stage(
            "distill",
            "Distill",
            COLORS["distill"],
            [[6], [7]],
            f"{STYLE.pair_count} image/sketch pairs in your style, then a small extractor → `my_style_extractor`",
            ("distill",),
        ),
    ]
    text = note(
        "Distill the style into an extractor",
        "Turns the style template 3 trained into a small, fast network that sketches any image.",
        files_section([SD15, CLIP, ALEXNET]),
        stages_section(2, stages, STYLE),
        "The paper draws 30,000 pairs: more pairs and steps make a better extractor. Cancel keeps every "
        "finished pair; Run again continues.",
    )
    nodes = {
        1: _ckpt(),
        2: {"type": "DiffSketchLoadGenerator", "widgets": {"generator_name": "my_style.safetensors"}},
        4: {
            "type": "DiffSketchLoadConditions",
            "widgets": {"conditions_name": "default_conditions.safetensors"},
        },
        5: _loss_models(),
        6: _distill([2, 0], [4, 0], [5, 0], STYLE),
        7: {"type": "PreviewImage", "inputs": {"images": [6, 1]}, "title": "Input | teacher | extractor"},
        20: note_node(text, 520),
    }
    return {"nodes": nodes, "stages": stages, "arrangement": [[[NOTE], [s.key for s in stages]]]}


def extract() -> dict:
    stages = [
        Stage(
            "models", "Load", COLORS["models"], [[1, 2]], "your extractor `my_style_extractor` and any image"
        ),
        Stage(
            "extract", "Extract", COLORS["use"], [[3]], "sketches it in your style, at any size", ("extract",)
        ),
        Stage(
            "results",
            "Results",
            COLORS["example"],
            [[4], [5, 6]],
            "the sketch → `output/diffsketch`; line strength",
        ),
    ]
    text = note(
        "Extract sketches from any image",
        "Runs the extractor template 4 made: fast, and no diffusion model needed any more. Load any picture, "
        "photo or render; connect a batch or video frames to sketch them all.",
        stages_section(1, stages, STYLE),
        "`invert` gives white lines on black (as ControlNet line-art models expect); `contrast` darkens faint "
        "strokes.",
        "No extractor of your own yet? Pick the first entry of Load Extractor, `built-in: HED sketch`: it ships "
        "with the pack and draws HED's lines (not a style of yours).",
    )
    nodes = {
        1: {
            "type": "DiffSketchLoadExtractor",
            "widgets": {"extractor_name": "my_style_extractor.safetensors"},
        },
        2: {"type": "LoadImage", "widgets": {"image": "example.png"}},
        3: {"type": "DiffSketchExtract", "inputs": {"extractor": [1, 0], "image": [2, 0]}},
        4: {
            "type": "SaveImage",
            "inputs": {"images": [3, 0]},
            "widgets": {"filename_prefix": "diffsketch/extracted"},
        },
        5: {"type": "MaskToImage", "inputs": {"mask": [3, 1]}},
        6: {"type": "PreviewImage", "inputs": {"images": [5, 0]}, "title": "Line strength"},
        20: note_node(text, 520),
    }
    return {"nodes": nodes, "stages": stages, "arrangement": [[[NOTE], [s.key for s in stages]]]}


PICTURE_FILE = "diffsketch_picture.png"  # template 7: the user's own picture ...
DRAWING_FILE = "diffsketch_drawing.png"  # ... and their drawing of it
#: Template 7 scales the picture so its longer side is at most this: about SD 1.5's native size, so
#: capture and training stay as fast as at 512x512 whatever the photo's resolution.
PICTURE_MAX_SIDE = 768


def teach_from_drawing() -> dict:
    stages = [
        _models_stage(),
        Stage(
            "example",
            "Your example",
            COLORS["example"],
            [[2], [3], [6, 7]],
            f"your picture `input/{PICTURE_FILE}` and your drawing of it `input/{DRAWING_FILE}`; the "
            "picture is inverted with the checkpoint and its features captured",
            ("capture",),
        ),
        Stage(
            "train",
            "Train",
            COLORS["train"],
            [[8], [9]],
            f"learns your style ({STYLE.train_iterations} fast iterations) → generator `my_drawing_style`",
            ("train",),
        ),
        Stage(
            "distill",
            "Distill",
            COLORS["distill"],
            [[10]],
            f"{STYLE.pair_count} image/sketch pairs, then a small extractor → `my_drawing_style_extractor`",
            ("distill",),
        ),
        Stage(
            "extract",
            "Extract",
            COLORS["use"],
            [[11, 12]],
            "sketches your picture with the extractor → `output/diffsketch`",
            ("extract",),
        ),
    ]
    text = note(
        "Teach from your own drawing",
        "Teaches DiffSketch the line style of a drawing you already have of ANY picture: a photo you traced, "
        "the line-art layer of an illustration and its colour version, an inked page and its coloured one.",
        "## 1. Prepare two images\n"
        f"- The picture, saved as `ComfyUI/input/{PICTURE_FILE}` (or pick it in the first Load Image).\n"
        f"- Your drawing of it, saved as `ComfyUI/input/{DRAWING_FILE}`: black lines on white (no colour, "
        "no paper texture), traced over the picture so every line lies where the picture's edge is.\n"
        "- Both the same size, or at least the same aspect ratio: the drawing is scaled and cropped exactly as "
        f"the picture is (to multiples of 64 px, longer side at most {PICTURE_MAX_SIDE} px here).",
        files_section([SD15, CLIP, ALEXNET], number=2),
        stages_section(3, stages, STYLE),
        "Capture from Image shows how closely the checkpoint replays your picture (PSNR): a low value means "
        "the features describe a different picture; write a `caption` of what it shows, or use more steps.",
    )
    nodes = {
        1: _ckpt(),
        2: {"type": "LoadImage", "widgets": {"image": PICTURE_FILE}, "title": "Your picture"},
        3: {"type": "LoadImage", "widgets": {"image": DRAWING_FILE}, "title": "Your drawing of it"},
        4: _fit_conditions(),
        5: _loss_models(),
        6: {
            "type": "DiffSketchCaptureFromImage",
            "inputs": {"model": [1, 0], "clip": [1, 1], "vae": [1, 2], "image": [2, 0]},
            "widgets": {"caption": "", "steps": STEPS, "max_side": PICTURE_MAX_SIDE},
        },
        7: {"type": "PreviewImage", "inputs": {"images": [6, 1]}, "title": "The model's replay of it"},
        8: {
            **_train([3, 0], STYLE, save_name="my_drawing_style"),
        },
        9: {"type": "PreviewImage", "inputs": {"images": [8, 1]}, "title": "Training previews"},
        10: _distill([8, 0], [4, 0], [5, 0], STYLE, save_name="my_drawing_style_extractor"),
        11: {"type": "DiffSketchExtract", "inputs": {"extractor": [10, 0], "image": [2, 0]}},
        12: {
            "type": "SaveImage",
            "inputs": {"images": [11, 0]},
            "widgets": {"filename_prefix": "diffsketch/my_drawing_style"},
        },
        20: note_node(text),
    }
    nodes[8]["inputs"]["features"] = [6, 2]
    # two bands, so the canvas is about as wide as it is tall and fit-to-view stays readable
    arrangement = [[[NOTE], ["models", "example"]], [["train"], ["distill", "extract"]]]
    return {"nodes": nodes, "stages": stages, "arrangement": arrangement}


#: The templates in tutorial order: the browser lists them by file name, "DiffSketch <n> - <title>"
#: (cards show about 36 characters of it, then the full name again as the description).
TEMPLATES = [
    Template("quick_start", "Quick start", quick_start),
    Template("make_example", "Image to draw over", make_example),
    Template("train_style", "Train your style", train_style),
    Template("distill", "Distill an extractor", distill),
    Template("extract", "Extract sketches", extract),
    Template("quick_start_sdxl", "Quick start on SDXL", quick_start_sdxl),
    Template("teach_from_drawing", "Teach from your own drawing", teach_from_drawing),
    Template("quick_start_zimage", "Quick start on Z-Image Turbo", quick_start_zimage),
    Template("quick_start_flux", "Quick start on Flux.1", quick_start_flux),
]


def template_files() -> dict[str, str]:
    """Template key -> file stem in workflows/ (the title the template browser shows)."""
    if len(TEMPLATES) > 9:
        raise ValueError("more than 9 templates: number them 01, 02, ... so they still sort in order")
    return {t.key: f"DiffSketch {n} - {t.title}" for n, t in enumerate(TEMPLATES, 1)}


def workflows(object_info: dict) -> dict[str, dict]:
    """Every template's graph description with its layout, keyed by template key."""
    out = {}
    for template in TEMPLATES:
        graph = template.build()
        graph["nodes"] = {str(k): v for k, v in graph["nodes"].items()}
        for node in graph["nodes"].values():
            node["inputs"] = {k: [str(s), o] for k, (s, o) in node.get("inputs", {}).items()}
        out[template.key] = layout(graph, graph.pop("stages"), graph.pop("arrangement"), object_info)
    return out


# ---------------------------------------------------------------------------------------------
# Thumbnails
# ---------------------------------------------------------------------------------------------
def thumbnail(title: str, ui: dict, object_info: dict, path: Path) -> None:
    """The layout drawn small for the template browser: the note's headings, the groups, the nodes
    (DiffSketch's dark), the links."""
    from PIL import Image, ImageDraw, ImageFont

    w, h, margin = 640, 400, 10
    rects = [
        (n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["size"][0], n["size"][1] + TITLE_HEIGHT)
        for n in ui["nodes"]
    ]
    rects += [tuple(g["bounding"]) for g in ui["groups"]]
    x0, y0 = min(r[0] for r in rects), min(r[1] for r in rects)
    x1, y1 = max(r[0] + r[2] for r in rects), max(r[1] + r[3] for r in rects)
    scale = min((w - 2 * margin) / (x1 - x0), (h - 2 * margin) / (y1 - y0))
    ox, oy = (w - (x1 - x0) * scale) / 2, (h - (y1 - y0) * scale) / 2

    def box(x, y, bw, bh):
        return (
            ox + (x - x0) * scale,
            oy + (y - y0) * scale,
            ox + (x - x0 + bw) * scale,
            oy + (y - y0 + bh) * scale,
        )

    def rgb(color: str) -> tuple[int, int, int]:
        c = color.lstrip("#")
        c = "".join(ch * 2 for ch in c) if len(c) == 3 else c
        return tuple(int(c[i : i + 2], 16) for i in (0, 2, 4))

    img = Image.new("RGB", (w, h), (32, 32, 32))
    draw = ImageDraw.Draw(img)
    small, big = ImageFont.load_default(size=11), ImageFont.load_default(size=15)
    for g in ui["groups"]:
        gx, color = box(*g["bounding"]), rgb(g["color"])
        draw.rounded_rectangle(
            gx, radius=5, fill=tuple(int(0.45 * c + 0.55 * 40) for c in color), outline=color
        )
        draw.text((gx[0] + 5, gx[1] + 3), g["title"], fill=(240, 240, 240), font=small)
    by_id = {n["id"]: n for n in ui["nodes"]}
    for link in ui["links"]:
        a, b = by_id[link[1]], by_id[link[3]]
        ba, bb = box(a["pos"][0], a["pos"][1], *a["size"]), box(b["pos"][0], b["pos"][1], *b["size"])
        draw.line([(ba[2], (ba[1] + ba[3]) / 2), (bb[0], (bb[1] + bb[3]) / 2)], fill=(150, 150, 150), width=1)
    for n in ui["nodes"]:
        bx = box(n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["size"][0], n["size"][1] + TITLE_HEIGHT)
        if n["type"] in UI_ONLY_TYPES:  # the note: its headings
            draw.rounded_rectangle(bx, radius=5, fill=(102, 86, 52), outline=(160, 140, 90))
            y = bx[1] + 6
            for line in n["widgets_values"][0].splitlines():
                if line.startswith("#") and y < bx[3] - 16:
                    font = big if line.startswith("# ") else small
                    draw.text(
                        (bx[0] + 8, y),
                        re.sub(r"[`*]", "", line.lstrip("# ")).replace("→", "->")[:90],
                        fill=(250, 245, 230),
                        font=font,
                    )
                    y += 19 if font is big else 14
            continue
        ours = n["type"].startswith("DiffSketch")
        draw.rounded_rectangle(
            bx, radius=4, fill=(58, 58, 58) if ours else (80, 80, 80), outline=(20, 20, 20)
        )
        label = (n.get("title") or object_info[n["type"]].get("display_name", n["type"])).replace(
            "DiffSketch ", ""
        )
        while label and small.getlength(label) > bx[2] - bx[0] - 8:  # cut to the box
            label = label[:-1]
        draw.text((bx[0] + 4, bx[1] + 3), label, fill=(235, 235, 235), font=small)
    img.save(path, quality=90)


def fetch_object_info() -> dict:
    sys.path.insert(0, str(REPO / "tests" / "comfyui"))
    import tempfile

    from comfy_harness import ComfyServer

    base = Path(tempfile.mkdtemp(prefix="diffsketch_objinfo_"))
    dummy = base / "none.safetensors"
    dummy.write_bytes(b"")
    server = ComfyServer(base, dummy, base).start()
    try:
        return server.get("/object_info")
    finally:
        server.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--object-info", help="a saved /object_info JSON (default: ask a server started from COMFYUI_PATH)"
    )
    ap.add_argument("--out", default=str(REPO / "workflows"))
    args = ap.parse_args()
    if args.object_info:
        object_info = json.loads(Path(args.object_info).read_text())
    elif os.environ.get("COMFYUI_PATH"):
        object_info = fetch_object_info()
    else:
        sys.exit("give --object-info FILE or set COMFYUI_PATH")
    out = Path(args.out)
    (out / "api").mkdir(parents=True, exist_ok=True)
    files = template_files()
    written = set()
    for key, graph in workflows(object_info).items():
        stem = files[key]
        ui = build_ui(graph, object_info)
        api = graph_to_api(graph, object_info)
        diffs = api_equal(ui_to_api(ui, object_info), api)
        if diffs:
            sys.exit(f"{stem}: the UI layout does not convert back to its graph: {diffs}")
        for path, data in ((out / f"{stem}.json", ui), (out / "api" / f"{key}.json", api)):
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            written.add(path)
        thumbnail(stem, ui, object_info, out / f"{stem}.jpg")
        written.add(out / f"{stem}.jpg")
        print(f"wrote {stem}: {len(ui['nodes'])} nodes, {len(ui['groups'])} groups")
    for old in [*out.glob("*.json"), *out.glob("*.jpg"), *(out / "api").glob("*.json")]:
        if old not in written:  # a template renamed or removed
            old.unlink()
            print(f"removed {old.relative_to(out)}")


if __name__ == "__main__":
    main()
