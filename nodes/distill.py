"""DiffSketchDistill: turn a trained generator into a small, fast image-to-sketch extractor."""

from __future__ import annotations

import logging
import os

import comfy.model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui

from diffsketch.capture.spec import FAMILY_NAMES_TEXT
from diffsketch.distill import DEFAULT_PHOTO_SHARE, DistillConfig
from diffsketch.fileio import check_save_name

from .common import (
    LINE_ART_ALIASES,
    backbones_note,
    cancel_as_interrupt,
    on_torch_device,
    sampler_steps_text,
    search_aliases,
    show_on_node,
    size_inputs,
    unused_save_path,
)
from .extract import wrap_extractor
from .train import _preview
from .types import CATEGORY, ClipLoss, Conditions, Extractor, Generator

logger = logging.getLogger("diffsketch.nodes")

FOLDER = "diffsketch_extractors"
# The library's defaults, so the node, the command line and the Python API train the same way.
DEFAULTS = DistillConfig()
# The schedule choice that samples pairs the way the generator was trained (the schedule its file records).
AS_TRAINED = "as trained"


class DiffSketchDistill(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffSketchDistill",
            **search_aliases(*LINE_ART_ALIASES, "sketch extractor"),
            display_name="DiffSketch Distill",
            category=CATEGORY,
            description=(
                "Distils a trained DiffSketch generator into a small extractor: first writes (image, sketch) pairs made "
                "with your checkpoint and the generator (resumable, into "
                "models/diffsketch/pairs/<save_name>/<hash of the generator and pair settings>), then trains the extractor on them with L1 + LPIPS. Progress and previews; Cancel keeps every finished pair "
                "and a training checkpoint, and running again resumes. More pairs or other training settings train "
                "a new extractor on exactly those pairs (the console says which); going back to earlier settings "
                "resumes their run. Optional photos: a share of the pairs is made from your own photos (inverted "
                "and sketched by the generator), so the extractor learns on the kind of image you use it on. Pairs "
                "are sampled at the guidance the generator's features need: cfg 1 for a one-branch generator "
                "(trained at cfg 1 on a guidance-distilled model), else 5." + backbones_note()
            ),
            inputs=[
                Generator.Input("generator", tooltip="From DiffSketch Train or Load Generator."),
                io.Model.Input(
                    "model",
                    tooltip=f"The MODEL the generator was trained with (same backbone: {FAMILY_NAMES_TEXT}).",
                ),
                io.Clip.Input("clip", tooltip="Its CLIP."),
                io.Vae.Input("vae", tooltip="Its VAE."),
                Conditions.Input("conditions", tooltip="The CDST conditions (random prompts for the pairs)."),
                ClipLoss.Input(
                    "loss_models",
                    optional=True,
                    tooltip="Optional: provides the LPIPS network; without it the extractor trains on L1 "
                    "only.",
                ),
                io.Int.Input(
                    "pair_count",
                    default=1000,
                    min=1,
                    max=1000000,
                    tooltip="Pairs to generate (the paper: 30,000; each costs one 50-step sampling).",
                ),
                io.Int.Input(
                    "iterations",
                    default=DEFAULTS.iterations,
                    min=1,
                    max=1000000,
                    tooltip="Extractor training steps.",
                ),
                io.Int.Input(
                    "batch_size",
                    default=DEFAULTS.batch_size,
                    min=1,
                    max=256,
                    tooltip="Pairs per training step.",
                ),
                io.Int.Input(
                    "crop_size",
                    default=DEFAULTS.crop_size,
                    min=64,
                    max=2048,
                    step=16,
                    tooltip="Random crop size for training (a multiple of 16).",
                ),
                io.Float.Input(
                    "learning_rate",
                    default=DEFAULTS.lr,
                    min=1e-6,
                    max=1.0,
                    step=1e-4,
                    round=1e-6,
                    tooltip="Adam learning rate (cosine decay after a short warm-up).",
                ),
                io.Int.Input(
                    "steps",
                    default=50,
                    min=1,
                    max=1000,
                    tooltip=f"{sampler_steps_text()} per pair (as in training: 50; Z-Image Turbo 8).",
                ),
                io.Combo.Input(
                    "schedule",
                    options=[AS_TRAINED, "full", "fast"],
                    default=AS_TRAINED,
                    optional=True,
                    tooltip=f"'{AS_TRAINED}': the schedule the generator was trained with, so the pairs look "
                    "like the images it learned from. 'full': every DDIM step for each pair. 'fast': only "
                    "the generator's timesteps plus the last step (about 4x fewer UNet runs per pair; "
                    "coarser images), as in DiffSketch Train.",
                ),
                *size_inputs("Each pair's image"),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    tooltip="Seeds the pairs and the training; same seed, same extractor.",
                ),
                io.String.Input(
                    "save_name",
                    default="my_style_extractor",
                    tooltip="Extractor file name in models/diffsketch/extractors (no folders). An existing file is kept: the "
                    "new one gets a number (name_00001); the node shows the file written.",
                ),
                io.Image.Input(
                    "photos",
                    optional=True,
                    tooltip="Optional: your own photos (an image batch), so the extractor also learns on the kind "
                    "of image you will use it on. A share of the pairs (photo_share) comes from them: each photo "
                    "is fitted to the pair size, inverted with the checkpoint and replayed with capture (about 2x "
                    "steps UNet evaluations per photo pair), and the generator sketches it. More photo pairs than "
                    "photos use random crops and flips. The node shows how many photos replayed poorly.",
                ),
                io.Float.Input(
                    "photo_share",
                    default=DEFAULT_PHOTO_SHARE,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    optional=True,
                    tooltip="With photos connected: the fraction of pair_count made from them (rounded); the rest "
                    "is generated. 0: photos unused, 1: photo pairs only. Other photos or another share start "
                    "a new pair folder.",
                ),
            ],
            outputs=[
                Extractor.Output(
                    display_name="extractor", tooltip="For DiffSketch Extract (also saved to disk)."
                ),
                io.Image.Output(display_name="preview", tooltip="Last preview: input | teacher | extractor."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls,
        generator,
        model,
        clip,
        vae,
        conditions,
        pair_count,
        iterations,
        batch_size,
        crop_size,
        learning_rate,
        steps,
        width,
        height,
        seed,
        save_name,
        schedule=AS_TRAINED,
        loss_models=None,
        photos=None,
        photo_share=DEFAULT_PHOTO_SHARE,
    ) -> io.NodeOutput:
        from diffsketch.capture.sampling import SamplingSettings
        from diffsketch.distill import DistillConfig, distill, pair_settings, pair_settings_digest
        from diffsketch.distill.extractor import save_extractor
        from diffsketch.train.inference import check_generator_fits, generator_cfg, generator_guidance

        from .comfy_backend import ComfyBackend

        name = check_save_name(save_name, "save_name")
        backend = ComfyBackend(model, clip, vae, show_progress=False, guidance=generator_guidance(generator))
        width, height = backend.image_size(width, height)
        # One pair folder per (save name, teacher and pair settings): running again with the same
        # inputs resumes it; a re-trained generator under the same name starts a folder of its own
        # instead of clashing with pairs made by the old one.
        # no cfg input: a one-branch generator's pairs at cfg 1 (Z-Image Turbo), the others' at the default
        sampling = SamplingSettings(
            seed=int(seed),
            steps=int(steps),
            cfg=generator_cfg(generator),
            width=width,
            height=height,
            schedule=None if schedule == AS_TRAINED else schedule,
        )
        for notice in check_generator_fits(backend, generator):
            logger.warning("[DiffSketch] %s", notice)
        share = float(photo_share) if photos is not None else None
        settings = pair_settings(backend, generator, conditions, sampling, photos, share)
        pairs_dir = os.path.join(
            folder_paths.models_dir, "diffsketch", "pairs", name, pair_settings_digest(settings)
        )
        config = DistillConfig(
            iterations=int(iterations),
            batch_size=int(batch_size),
            crop_size=int(crop_size),
            lr=float(learning_rate),
            seed=int(seed),
            lpips_weight=1.0 if loss_models is not None else 0.0,
        )
        total = int(pair_count) + int(iterations)
        pbar = comfy.utils.ProgressBar(total)
        last = {}

        def pairs_progress(done, count):
            pbar.update_absolute(done, total)

        def on_step(step, losses, preview):
            if preview is not None:
                last["preview"] = preview
            pbar.update_absolute(
                int(pair_count) + step, total, _preview(preview) if preview is not None else None
            )

        shown = []

        def notice(text: str) -> None:
            # with photos, what they came to (and the training plan) is shown on the node as well
            if photos is not None:
                shown.append(show_on_node(text))
            else:
                logger.info("[DiffSketch] %s", text)

        lpips_model = loss_models["lpips"] if loss_models is not None else None
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            on_torch_device(generator, lpips_model) as (device, _),
        ):
            with cancel_as_interrupt():
                student = distill(
                    backend,
                    generator,
                    conditions,
                    pairs_dir,
                    int(pair_count),
                    config,
                    sampling,
                    lpips_model=lpips_model,
                    progress=pairs_progress,
                    on_step=on_step,
                    should_stop=comfy.model_management.processing_interrupted,
                    notice=notice,
                    device=device,
                    photos=photos,
                    photo_share=share,
                )
            student = student.cpu().eval()
        # The pairs and the student's checkpoint stay under the name asked for (a rerun resumes them);
        # the extractor never replaces one saved before.
        out_path = unused_save_path(FOLDER, name)
        save_extractor(out_path, student, student.meta)
        saved = show_on_node(f"saved extractor {os.path.basename(out_path)}")
        texts = tuple(t for entry in shown for t in entry["text"]) + saved["text"]
        preview = last.get("preview")
        preview = preview if preview is not None else torch.zeros(1, 64, 192, 3)
        return io.NodeOutput(
            wrap_extractor(student),
            preview,
            ui={**ui.PreviewImage(preview, cls=cls).as_dict(), "text": texts},
        )
