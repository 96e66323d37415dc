"""DiffSketchCaptureFromImage: capture DiffSketch features from the user's own picture."""

from __future__ import annotations

import comfy.utils
from comfy_api.latest import io, ui

from diffsketch.capture.spec import DIT_NAMES_TEXT, SIZE_MULTIPLES_TEXT

from .common import backbones_note, flux_guidance_input, sampler_steps_text, show_on_node
from .sample import capture_timesteps, checkpoint_inputs, timesteps_input
from .types import CATEGORY, Features


class DiffSketchCaptureFromImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffSketchCaptureFromImage",
            display_name="DiffSketch Capture from Image",
            category=CATEGORY,
            description=(
                "Captures the features DiffSketch learns from out of a picture you already have: its latent is "
                f"inverted (UNet models: DDIM, eta 0; {DIT_NAMES_TEXT}: Euler) and the inverted noise replayed "
                "while the UNet decoder (or transformer block) and VAE decoder features are captured. The picture is "
                f"used at its own size, centre-cropped to multiples of {SIZE_MULTIPLES_TEXT} px and, with "
                "max_side, resized first. Draw your example sketch over the picture output (or "
                "over your picture: Train fits it the same way). The replay output shows what the features "
                "describe; the node shows how close it came (PSNR)." + backbones_note()
            ),
            inputs=[
                *checkpoint_inputs(),
                io.Image.Input(
                    "image",
                    tooltip="Your picture (one image). Used at its own size, centre-cropped to multiples of "
                    f"{SIZE_MULTIPLES_TEXT} px; transparency is put over white.",
                ),
                io.String.Input(
                    "caption",
                    multiline=True,
                    default="",
                    tooltip="What the picture shows, e.g. 'a photo of a horse in mud' (may stay empty). A caption "
                    "usually brings the replay closer to the picture; Train uses it as the example's prompt.",
                ),
                io.Int.Input(
                    "steps",
                    default=50,
                    min=1,
                    max=1000,
                    tooltip=f"Steps of the inversion and of the replay: {sampler_steps_text()} (the paper samples "
                    "with 50). More steps replay the picture more closely; too few for the timesteps asked is an "
                    "error.",
                ),
                io.Int.Input(
                    "max_side",
                    default=0,
                    min=0,
                    max=4096,
                    tooltip="0: the picture at its own size. N: first resize it (keeping its shape) so its longer "
                    "side is at most N pixels. Far above the checkpoint's native size, capture and training are "
                    "slow and need much memory.",
                ),
                timesteps_input(),
                flux_guidance_input(),
            ],
            outputs=[
                io.Image.Output(
                    display_name="picture",
                    tooltip="The picture as used (after cropping/resizing): draw your sketch on or over this.",
                ),
                io.Image.Output(
                    display_name="replay",
                    tooltip="The decoded replay of the inverted picture: what the features describe.",
                ),
                Features.Output(
                    display_name="features",
                    tooltip="The captured features (UNet decoder at the chosen timesteps, caption and empty "
                    "prompt; VAE decoder) and how the picture was fitted, for DiffSketch Train.",
                ),
            ],
        )

    @classmethod
    def execute(
        cls, model, clip, vae, image, caption, steps, max_side, timesteps=None, guidance=None
    ) -> io.NodeOutput:
        from diffsketch.capture.sampling import SamplingSettings

        from .comfy_backend import ComfyBackend, image_to_comfy

        # the node's own bar spans inversion and replay; the backend's per-pass bars would restart
        backend = ComfyBackend(model, clip, vae, show_progress=False, guidance=guidance)
        # the picture sets the size; cfg is what Train samples its own images with (Sample's default)
        sampling = SamplingSettings(steps=int(steps), timesteps=capture_timesteps(timesteps))
        # the grid of the connected model's family (DDIM's, or a flow model's few-step Euler grid)
        total = 2 * len(sampling.denoising_schedule(sampling.plan(backend.spec.family)))
        pbar = comfy.utils.ProgressBar(total)
        result = backend.capture_from_image(
            image,
            sampling,
            caption=caption,
            max_side=int(max_side),
            progress=lambda done, _total: pbar.update_absolute(done, total),
        )
        lines = [*result.notices, f"replay PSNR {result.replay_psnr:.1f} dB against the picture as used"]
        if result.warning:
            lines.append(f"warning: {result.warning}")
        shown = show_on_node("\n".join(lines))
        replay = image_to_comfy(result.sample.image)
        return io.NodeOutput(
            image_to_comfy(result.picture),
            replay,
            result.sample,
            ui={**ui.PreviewImage(replay, cls=cls).as_dict(), **shown},
        )
