"""Write a random-weight SD 2.x 768-v checkpoint in ComfyUI's own single-file format, built with
ComfyUI's module classes on the meta device and saved through ComfyUI's own SD 2.x key conversion.

ComfyUI recognises SD 2.x by its UNet config (``supported_models.SD20``): 320 model channels, a
1024-dim context, linear transformer projections, no extra conditioning. The channel multipliers
and depths are free, so the UNet keeps SD's block pattern with 320 channels at every level and one
transformer block per attention level (like tiny_checkpoint.py's SD 1.5). ComfyUI (and the diffusers
backend, which reads the file the same way) takes an SD 2.x file for v-prediction when the bias
``output_blocks.11.1.transformer_blocks.0.norm1.bias`` varies, as in the real 768-v model: that bias
is drawn with a spread here. The OpenCLIP-H text encoder and the VAE have fixed configs in ComfyUI
and are full size. About 1.0 GB in float16. Run: python sd2_checkpoint.py OUT.safetensors
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_checkpoint import UNET_KWARGS as SD15_UNET_KWARGS  # noqa: E402
from tiny_checkpoint import meta_modules, random_state, save_checkpoint  # noqa: E402

UNET_KWARGS = dict(
    SD15_UNET_KWARGS,
    context_dim=1024,
    num_heads=-1,
    num_head_channels=64,
    use_linear_in_transformer=True,
)
V_PREDICTION_BIAS = "output_blocks.11.1.transformer_blocks.0.norm1.bias"


def build_state_dict(comfy_path: str, seed: int = 0) -> dict[str, torch.Tensor]:
    unet, vae, (clip,) = meta_modules(
        comfy_path, UNET_KWARGS, [os.path.join("text_encoders", "sd2_clip_config.json")]
    )
    import comfy.supported_models

    g = torch.Generator().manual_seed(seed)
    unet_state = random_state(unet, g)
    unet_state[V_PREDICTION_BIAS] = (
        torch.randn(unet_state[V_PREDICTION_BIAS].shape, generator=g) * 0.5
    ).half()
    model_config = comfy.supported_models.SD20(dict(UNET_KWARGS))
    out = model_config.process_unet_state_dict_for_saving(unet_state)
    out.update(model_config.process_vae_state_dict_for_saving(random_state(vae, g)))
    out.update(model_config.process_clip_state_dict_for_saving(random_state(clip, g, "clip_h.transformer.")))
    return {k: v.to(torch.float16).contiguous() for k, v in out.items()}


if __name__ == "__main__":
    save_checkpoint(sys.argv[1], build_state_dict(os.environ["COMFYUI_PATH"]))
