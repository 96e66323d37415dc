"""Training nodes: train a DiffSketch generator from one example, load it, and generate with it."""

from __future__ import annotations

import logging
import os

import comfy.model_management
import comfy.utils
import torch
from comfy_api.latest import io, ui

from diffsketch.capture.spec import FAMILY_NAMES_TEXT, SIZE_MULTIPLES_TEXT
from diffsketch.fileio import check_save_name

from .common import (
    LINE_ART_ALIASES,
    backbones_note,
    cancel_as_interrupt,
    file_options,
    file_path,
    file_path_or_raise,
    on_torch_device,
    sampler_steps_text,
    save_path,
    search_aliases,
    show_on_node,
    size_inputs,
    unused_name,
    unused_save_path,
)
from .types import CATEGORY, ClipLoss, Conditions, Features, Generator

logger = logging.getLogger("diffsketch.nodes")

FOLDER = "diffsketch_generators"
WHAT = "a generator .safetensors (made by DiffSketch Train)"
NO_RESUME = "(start fresh)"
# Training checkpoints (Train's, in generators/checkpoints, and the command line's, beside the
# generator) end so; they live in the generators folder but are not generators.
CHECKPOINT_SUFFIX = ".train.safetensors"


def _checkpoint_path(save_name: str) -> str:
    return save_path(FOLDER, "checkpoints", save_name + CHECKPOINT_SUFFIX)


def _generator_path(save_name: str) -> str:
    return save_path(FOLDER, save_name + ".safetensors")


def generator_names() -> list[str]:
    """The generator files of the generators folder(s), without the training checkpoints."""
    return file_options([FOLDER], WHAT, keep=lambda name: not name.endswith(CHECKPOINT_SUFFIX))


def _resume_options() -> list[str]:
    folder = save_path(FOLDER, "checkpoints")
    names = (
        sorted(f for f in os.listdir(folder) if f.endswith(CHECKPOINT_SUFFIX))
        if os.path.isdir(folder)
        else []
    )
    return [NO_RESUME, *names]


def _preview(image: torch.Tensor):
    """A ProgressBar preview tuple from an image tensor [1,H,W,3] or [H,W,3] in [0,1]."""
    from PIL import Image

    arr = (image.detach().float().cpu().clamp(0, 1).reshape(image.shape[-3:]).numpy() * 255).astype("uint8")
    return ("JPEG", Image.fromarray(arr), 512)


class DiffSketchTrain(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffSketchTrain",
            **search_aliases(*LINE_ART_ALIASES, "sketch style", "train style"),
            display_name="DiffSketch Train",
            category=CATEGORY,
            description=(
                "Trains a DiffSketch generator from ONE example: the features of the image DiffSketch Sample & Capture "
                "made (or of your own picture, from DiffSketch Capture from Image), and the sketch you drew over it. Each iteration samples a new image (CDST conditions) and learns "
                "with L1 + LPIPS + CLIP losses on the example and directional CLIP losses on the new sample. Shows "
                "progress and previews; Cancel saves a checkpoint you can resume from." + backbones_note()
            ),
            inputs=[
                io.Model.Input(
                    "model", tooltip=f"The MODEL the example was sampled with ({FAMILY_NAMES_TEXT})."
                ),
                io.Clip.Input("clip", tooltip="Its CLIP (encodes the example prompt for the CDST blend)."),
                io.Vae.Input("vae", tooltip="Its VAE."),
                Features.Input(
                    "features",
                    tooltip="The example's features from DiffSketch Sample & Capture or DiffSketch Capture from "
                    "Image.",
                ),
                io.Image.Input(
                    "sketch",
                    tooltip="Your sketch of the example image (black lines on white; resized to "
                    "the example's size if needed; RGB, RGBA and grey are converted). For features from Capture "
                    "from Image: drawn over your picture (its size or shape; cropped and resized as the picture "
                    "was) or over the node's picture output.",
                ),
                Conditions.Input("conditions", tooltip="From DiffSketch Fit Conditions or Load Conditions."),
                ClipLoss.Input(
                    "loss_models", tooltip="From DiffSketch Load Loss Models (CLIP ViT-B/32 + LPIPS AlexNet)."
                ),
                io.Int.Input(
                    "iterations",
                    default=1200,
                    min=1,
                    max=100000,
                    tooltip="Training iterations (the paper: 1200). Each samples one new image.",
                ),
                io.Float.Input(
                    "learning_rate",
                    default=1e-4,
                    min=1e-7,
                    max=1e-1,
                    step=1e-5,
                    round=1e-7,
                    tooltip="Adam learning rate (the paper: 1e-4).",
                ),
                io.Int.Input(
                    "h_iter",
                    default=1000,
                    min=0,
                    max=100000,
                    tooltip="CDST: over the first h_iter iterations the condition moves from the example's "
                    "prompt to random prompts (the paper: 1000).",
                ),
                io.Float.Input(
                    "lpips_weight",
                    default=15.0,
                    min=0.0,
                    max=1000.0,
                    step=0.5,
                    tooltip="LPIPS weight on the example reconstruction (the paper: 15).",
                ),
                io.Float.Input(
                    "l1_weight",
                    default=30.0,
                    min=0.0,
                    max=1000.0,
                    step=0.5,
                    tooltip="L1 weight on the example reconstruction (the paper: 30).",
                ),
                io.Float.Input(
                    "clip_weight",
                    default=30.0,
                    min=0.0,
                    max=1000.0,
                    step=0.5,
                    tooltip="CLIP similarity weight on the example (the paper: 30).",
                ),
                io.Float.Input(
                    "across_weight",
                    default=1.0,
                    min=0.0,
                    max=1000.0,
                    step=0.1,
                    tooltip="Across-domain directional CLIP loss weight on the new sample (the paper: 1).",
                ),
                io.Float.Input(
                    "within_weight",
                    default=1.0,
                    min=0.0,
                    max=1000.0,
                    step=0.1,
                    tooltip="Within-domain directional CLIP loss weight on the new sample (the paper: 1).",
                ),
                io.Combo.Input(
                    "timestep_policy",
                    options=["fixed", "random13"],
                    default="fixed",
                    tooltip="'fixed': the example's representative timesteps every iteration (the paper). "
                    "'random13': 13 random of the 50 steps per iteration (the released code).",
                ),
                io.Combo.Input(
                    "schedule",
                    options=["full", "fast"],
                    default="full",
                    tooltip="'full': 50-step sampling per iteration. 'fast': only the captured timesteps "
                    "plus the last step (about 4x fewer UNet runs; coarser samples).",
                ),
                io.Boolean.Input(
                    "low_memory",
                    default=False,
                    tooltip="Gradient checkpointing in the generator: far less training memory (3.9 GB peak for the "
                    "generator step at SD 1.5 512x512 in the benchmark) for about one more forward pass per step; "
                    "same results. Turn on when training runs out of memory.",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    tooltip="Seeds initialisation, conditions and samples; same seed, same training.",
                ),
                io.String.Input(
                    "save_name",
                    default="my_style",
                    tooltip="Generator file name in models/diffsketch/generators (no folders). A new run never replaces an "
                    "earlier run's generator or checkpoint: it gets a number (name_00001); the node shows the file written.",
                ),
                io.Combo.Input(
                    "resume_from",
                    options=_resume_options(),
                    default=NO_RESUME,
                    tooltip="Continue a cancelled or finished run from its checkpoint.",
                ),
                io.Int.Input(
                    "checkpoint_every",
                    default=100,
                    min=1,
                    max=100000,
                    tooltip="Write a resumable checkpoint every N iterations (and on Cancel).",
                ),
                io.Int.Input(
                    "sample_crop",
                    default=0,
                    min=0,
                    max=4096,
                    step=32,
                    optional=True,
                    tooltip="0: learn from each new sample whole. N: from a random N x N window of it (a multiple "
                    f"of {SIZE_MULTIPLES_TEXT}), for large sizes on a small GPU: SDXL at 1024 with 512 and low_memory. "
                    "The example is always used whole.",
                ),
            ],
            outputs=[
                Generator.Output(
                    display_name="generator", tooltip="The trained generator (also saved to disk)."
                ),
                io.Image.Output(
                    display_name="previews", tooltip="Last preview: new sample, its sketch, example."
                ),
                io.Image.Output(display_name="loss_curve", tooltip="Training losses over the iterations."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        model,
        clip,
        vae,
        features,
        sketch,
        conditions,
        loss_models,
        iterations,
        learning_rate,
        h_iter,
        lpips_weight,
        l1_weight,
        clip_weight,
        across_weight,
        within_weight,
        timestep_policy,
        schedule,
        low_memory,
        seed,
        save_name,
        resume_from,
        checkpoint_every,
        sample_crop=0,
    ) -> io.NodeOutput:
        from diffsketch.capture.picture import PICTURE_FIT_KEY
        from diffsketch.plotting import to_image_tensor
        from diffsketch.train.losses import DiffSketchLoss, LossWeights
        from diffsketch.train.trainer import TrainConfig, Trainer, prepare_sketch

        from .comfy_backend import ComfyBackend

        name = check_save_name(save_name, "save_name")
        # its own samples embed the guidance the example was captured at (Flux.1 dev)
        backend = ComfyBackend(model, clip, vae, show_progress=False, guidance=features.meta.get("guidance"))
        resume = None
        if resume_from != NO_RESUME:
            resume = save_path(FOLDER, "checkpoints", resume_from)
        # Only the run a checkpoint holds continues in it; any other run takes a name no earlier
        # run's generator or checkpoint has, so nothing trained before is overwritten.
        asked = name
        if resume is None or os.path.abspath(resume) != os.path.abspath(_checkpoint_path(name)):
            name = unused_name(
                name, lambda n: os.path.exists(_checkpoint_path(n)) or os.path.exists(_generator_path(n))
            )
            if name != asked:
                show_on_node(f"{asked} is taken by an earlier run: this run saves as {name}")
        ckpt = _checkpoint_path(name)
        pbar = comfy.utils.ProgressBar(int(iterations))
        last_preview = {}

        def on_step(step, losses, preview):
            if preview is not None:
                last_preview["image"] = preview
            pbar.update_absolute(step, int(iterations), _preview(preview) if preview is not None else None)

        with torch.inference_mode(False), torch.enable_grad(), on_torch_device() as (device, on_device):
            sketch_t, notices = prepare_sketch(sketch, features.size, features.meta.get(PICTURE_FIT_KEY))
            for n in notices:
                logger.warning("[DiffSketch] %s", n)
            weights = LossWeights(
                lpips=lpips_weight,
                l1=l1_weight,
                clip_sim=clip_weight,
                across=across_weight,
                within=within_weight,
            )
            loss = DiffSketchLoss(loss_models["clip"], loss_models["lpips"], weights)
            on_device.append(loss)  # moves LOSS_MODELS' networks in place: they go back to the CPU after
            config = TrainConfig(
                iterations=int(iterations),
                lr=float(learning_rate),
                h_iter=int(h_iter),
                loss_weights=weights,
                seed=int(seed),
                timestep_policy=timestep_policy,
                schedule=schedule,
                low_memory=bool(low_memory),
                sample_crop=int(sample_crop),
                checkpoint_every=int(checkpoint_every),
                device=str(device),
                steps=int(features.plan.steps),
                cfg=float(features.meta.get("cfg", 5.0)),
            )
            pivot = backend.encode_prompt(features.meta.get("prompt", ""))
            trainer = Trainer(
                backend,
                features,
                sketch_t,
                conditions,
                loss,
                config,
                pivot=pivot,
                checkpoint_path=ckpt,
                resume_from=resume,
            )
            on_device.append(trainer.generator)  # the GENERATOR output is on the CPU
            for n in trainer.notices:
                logger.warning("[DiffSketch] %s", n)
            with cancel_as_interrupt():
                trainer.run(on_step=on_step, should_stop=comfy.model_management.processing_interrupted)
            generator = trainer.generator.eval()
            # a continued run whose generator was saved before keeps that file too
            out_path = unused_save_path(FOLDER, name)
            trainer.save_generator(out_path)  # the generator output carries the same record as the file
            curve = to_image_tensor(trainer.loss_curve_image())
        saved = show_on_node(
            f"saved generator {os.path.basename(out_path)} (checkpoint to resume from: {os.path.basename(ckpt)})"
        )
        previews = last_preview.get("image")
        previews = previews if previews is not None else torch.zeros(1, 64, 64, 3)
        if previews.ndim == 3:
            previews = previews[None]
        return io.NodeOutput(
            generator, previews, curve, ui={**ui.PreviewImage(curve, cls=cls).as_dict(), **saved}
        )


class DiffSketchLoadGenerator(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffSketchLoadGenerator",
            display_name="DiffSketch Load Generator",
            category=CATEGORY,
            description="Loads a trained DiffSketch generator from models/diffsketch/generators.",
            inputs=[
                io.Combo.Input(
                    "generator_name",
                    options=generator_names(),
                    tooltip="A generator .safetensors written by DiffSketch Train or `diffsketch train`.",
                ),
            ],
            outputs=[
                Generator.Output(display_name="generator", tooltip="For DiffSketch Generate and Distill.")
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, generator_name):
        path = file_path([FOLDER], generator_name)
        return os.path.getmtime(path) if path else generator_name

    @classmethod
    def execute(cls, generator_name) -> io.NodeOutput:
        from diffsketch.train.generator import load_generator

        return io.NodeOutput(load_generator(file_path_or_raise([FOLDER], generator_name, WHAT)))


class DiffSketchGenerate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffSketchGenerate",
            **search_aliases(*LINE_ART_ALIASES),
            display_name="DiffSketch Generate",
            category=CATEGORY,
            description="Samples a new image with your checkpoint and draws its sketch with a trained generator."
            + backbones_note(),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip=f"The MODEL the generator was trained with (same backbone: {FAMILY_NAMES_TEXT}).",
                ),
                io.Clip.Input("clip", tooltip="Its CLIP."),
                io.Vae.Input("vae", tooltip="Its VAE."),
                Generator.Input("generator", tooltip="From DiffSketch Train or Load Generator."),
                io.String.Input(
                    "prompt", multiline=True, default="a photo of a cat on a sofa", tooltip="What to draw."
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Noise seed.",
                ),
                io.Int.Input(
                    "steps",
                    default=50,
                    min=1,
                    max=1000,
                    tooltip=f"{sampler_steps_text()} (as in training: 50; Z-Image Turbo 8).",
                ),
                io.Float.Input(
                    "cfg",
                    default=5.0,
                    min=0.0,
                    max=30.0,
                    step=0.1,
                    round=0.01,
                    tooltip="Classifier-free guidance scale (5.0 as in training).",
                ),
                *size_inputs("Image"),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The new image."),
                io.Image.Output(display_name="sketch", tooltip="Its sketch in the trained style."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, generator, prompt, seed, steps, cfg, width, height) -> io.NodeOutput:
        from diffsketch.capture.sampling import SamplingSettings
        from diffsketch.train.inference import check_generator_fits, generate_pair, generator_guidance

        from .comfy_backend import ComfyBackend, image_to_comfy

        backend = ComfyBackend(model, clip, vae, guidance=generator_guidance(generator))
        for notice in check_generator_fits(backend, generator):
            logger.warning("[DiffSketch] %s", notice)
        width, height = backend.image_size(width, height)
        sampling = SamplingSettings(
            seed=int(seed), steps=int(steps), cfg=float(cfg), width=width, height=height
        )
        with on_torch_device(generator):
            image, sketch = generate_pair(backend, generator, prompt, sampling)
        sketch_img = image_to_comfy(sketch.expand(-1, 3, -1, -1))
        return io.NodeOutput(image_to_comfy(image), sketch_img, ui=ui.PreviewImage(sketch_img, cls=cls))
