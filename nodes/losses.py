"""Loss-model loader: the CLIP ViT-B/32 image encoder and the LPIPS AlexNet trunk DiffSketch trains with."""

from __future__ import annotations

import os

from comfy_api.latest import io

from diffsketch.train.losses import ALEXNET_FILENAME, CLIP_FILENAMES, default_alexnet_dir

from .common import file_options, file_path, file_path_or_raise, missing_entry
from .types import CATEGORY, ClipLoss

CLIP_KEYS = ["diffsketch_clip", "clip_vision"]
CLIP_WHAT = f"{CLIP_FILENAMES[0]} (OpenAI CLIP ViT-B/32)"
LPIPS_KEYS = ["diffsketch_lpips"]
LPIPS_WHAT = f"{ALEXNET_FILENAME} (torchvision's AlexNet)"


def _hub_alexnet() -> str | None:
    """torchvision's own copy of the AlexNet weights (its torch hub cache), if it has one."""
    path = os.path.join(default_alexnet_dir(), ALEXNET_FILENAME)
    return path if os.path.isfile(path) else None


def lpips_options() -> list[str]:
    """AlexNet files in models/diffsketch/lpips (.safetensors copies, and torchvision's .pth by its
    published name only: the one pickle torch.load reads, with weights_only), then torchvision's
    hub copy under the same name."""

    def readable(name: str) -> bool:
        return not name.endswith(".pth") or os.path.basename(name) == ALEXNET_FILENAME

    extra = [ALEXNET_FILENAME] if _hub_alexnet() else []
    names = [n for n in file_options(LPIPS_KEYS, LPIPS_WHAT, extra) if readable(n)]
    return names or [missing_entry(LPIPS_WHAT, LPIPS_KEYS)]


class DiffSketchLoadClipLoss(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffSketchLoadClipLoss",
            display_name="DiffSketch Load Loss Models",
            category=CATEGORY,
            description=(
                "Loads the frozen networks DiffSketch's losses use: OpenAI CLIP ViT-B/32 (image tower) for the CLIP and "
                "directional losses, and AlexNet for LPIPS. Both are local files; nothing is downloaded."
            ),
            inputs=[
                io.Combo.Input(
                    "clip_name",
                    options=file_options(CLIP_KEYS, CLIP_WHAT),
                    tooltip="CLIP ViT-B/32 .safetensors (OpenAI's weights, e.g. open_clip_model.safetensors of "
                    "timm/vit_base_patch32_clip_224.openai) from models/diffsketch/clip or models/clip_vision.",
                ),
                io.Combo.Input(
                    "lpips_weights",
                    options=lpips_options(),
                    tooltip=f"torchvision's ImageNet AlexNet ({ALEXNET_FILENAME}, or a .safetensors copy) "
                    "from models/diffsketch/lpips, or torchvision's own copy in the torch hub cache.",
                ),
                io.Boolean.Input(
                    "quick_gelu",
                    default=True,
                    tooltip="On for OpenAI's CLIP weights (the paper's); off for LAION/open_clip-trained "
                    "weights.",
                ),
            ],
            outputs=[ClipLoss.Output(display_name="loss_models", tooltip="For DiffSketch Train.")],
        )

    @classmethod
    def execute(cls, clip_name, lpips_weights, quick_gelu) -> io.NodeOutput:
        from diffsketch.train.losses import build_lpips, load_clip_image_encoder

        encoder = load_clip_image_encoder(
            file_path_or_raise(CLIP_KEYS, clip_name, CLIP_WHAT), quick_gelu=bool(quick_gelu)
        )
        alex = file_path(LPIPS_KEYS, lpips_weights)
        if alex is None and lpips_weights == ALEXNET_FILENAME:
            alex = _hub_alexnet()
        lpips_model = build_lpips(alex or file_path_or_raise(LPIPS_KEYS, lpips_weights, LPIPS_WHAT))
        return io.NodeOutput({"clip": encoder, "lpips": lpips_model, "description": encoder.description})
