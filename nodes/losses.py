"""Loss-model loader: the CLIP ViT-B/32 image encoder and the LPIPS AlexNet trunk DiffSketch trains with."""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from .common import list_or_missing
from .types import CATEGORY, ClipLoss

CLIP_KEYS = ["diffsketch_clip", "clip_vision"]
HUB_CACHE = "torch hub cache (alexnet-owt-7be5be79.pth)"


class DiffSketchLoadClipLoss(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from diffsketch.train.losses import ALEXNET_FILENAME, CLIP_FILENAMES

        lpips_files = [HUB_CACHE] + [
            n
            for n in list_or_missing(["diffsketch_lpips"], ALEXNET_FILENAME, "lpips")
            if not n.startswith("(missing")
        ]
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
                    options=list_or_missing(CLIP_KEYS, CLIP_FILENAMES[0], "clip"),
                    tooltip="CLIP ViT-B/32 .safetensors (OpenAI weights, e.g. openai/clip-vit-base-patch32 "
                    "model.safetensors) from models/diffsketch/clip or models/clip_vision.",
                ),
                io.Combo.Input(
                    "lpips_weights",
                    options=lpips_files,
                    tooltip="torchvision's ImageNet AlexNet (alexnet-owt-7be5be79.pth) from the torch hub "
                    "cache, or a copy in models/diffsketch/lpips.",
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
        from diffsketch.errors import WeightsNotFoundError
        from diffsketch.train.losses import CLIP_HOW_TO_GET, build_lpips, load_clip_image_encoder

        if clip_name.startswith("(missing"):
            raise WeightsNotFoundError(f"no CLIP ViT-B/32 weights found. {CLIP_HOW_TO_GET}")
        clip_path = None
        for key in CLIP_KEYS:
            try:
                clip_path = folder_paths.get_full_path(key, clip_name)
            except KeyError:
                continue
            if clip_path:
                break
        if clip_path is None:
            raise WeightsNotFoundError(
                f"{clip_name} is no longer in models/diffsketch/clip or models/clip_vision. {CLIP_HOW_TO_GET}"
            )
        encoder = load_clip_image_encoder(clip_path, quick_gelu=bool(quick_gelu))
        alex = (
            None
            if lpips_weights == HUB_CACHE
            else folder_paths.get_full_path_or_raise("diffsketch_lpips", lpips_weights)
        )
        lpips_model = build_lpips(alex)
        return io.NodeOutput({"clip": encoder, "lpips": lpips_model, "description": encoder.description})
