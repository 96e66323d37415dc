"""Write a random-weight SDXL checkpoint in ComfyUI's own single-file format, built with ComfyUI's
module classes on the meta device and saved through ComfyUI's own SDXL key conversion.

ComfyUI recognises SDXL by its UNet config (``supported_models.SDXL``): 320 model channels, input
transformer depths ``[0, 0, 2, 2, 10, 10]`` (three levels, two ResBlocks each), a 2048-dim
context and a 2816-wide ``label_emb``. Those must be exact; the channel multipliers are free, so
every level here has 320 channels instead of 320/640/1280, and the middle and output depths keep
SDXL's pattern (10 and ``[0,0,0,2,2,2,10,10,10]``) so diffusers can express the same UNet. The
text encoders (CLIP-L and OpenCLIP bigG) and the VAE have fixed configs in ComfyUI and are full
size. The file is about 2.3 GB in float16: 0.55 GB UNet (270 M parameters, mostly the 70
transformer blocks), 1.39 GB bigG, 0.25 GB CLIP-L, 0.17 GB VAE. The tests cache it by this
recipe's hash. Run: python sdxl_checkpoint.py OUT.safetensors
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_checkpoint import meta_modules, random_state, save_checkpoint  # noqa: E402

UNET_KWARGS = dict(
    image_size=32,
    in_channels=4,
    out_channels=4,
    model_channels=320,
    num_res_blocks=[2, 2, 2],
    channel_mult=[1, 1, 1],
    transformer_depth=[0, 0, 2, 2, 10, 10],
    transformer_depth_middle=10,
    transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
    context_dim=2048,
    num_heads=-1,
    num_head_channels=64,
    use_spatial_transformer=True,
    use_linear_in_transformer=True,
    legacy=False,
    num_classes="sequential",
    adm_in_channels=2816,
    use_temporal_attention=False,
    use_temporal_resblock=False,
)
# SDXL's real UNet (what the FeatureSpec of a real checkpoint is read from, on the meta device).
REAL_UNET_KWARGS = dict(UNET_KWARGS, channel_mult=[1, 2, 4])


def build_state_dict(comfy_path: str, seed: int = 0) -> dict[str, torch.Tensor]:
    unet, vae, clips = meta_modules(
        comfy_path, UNET_KWARGS, ["sd1_clip_config.json", "clip_config_bigg.json"]
    )
    import comfy.supported_models

    g = torch.Generator().manual_seed(seed)
    clip_state = {}
    for name, clip in zip(("clip_l", "clip_g"), clips):
        clip_state.update(random_state(clip, g, f"{name}.transformer."))
    model_config = comfy.supported_models.SDXL(dict(UNET_KWARGS))
    out = model_config.process_unet_state_dict_for_saving(random_state(unet, g))
    out.update(model_config.process_vae_state_dict_for_saving(random_state(vae, g)))
    out.update(model_config.process_clip_state_dict_for_saving(clip_state))
    return {k: v.to(torch.float16).contiguous() for k, v in out.items()}


if __name__ == "__main__":
    save_checkpoint(sys.argv[1], build_state_dict(os.environ["COMFYUI_PATH"]))
