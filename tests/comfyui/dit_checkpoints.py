"""Write random-weight Z-Image and SD 3.5 files in ComfyUI's own formats, built with ComfyUI's
module classes on the meta device (only names and shapes are read) and saved as the user loads them.

Z-Image, as ComfyUI's "Z-Image Turbo" template loads it (UNETLoader + CLIPLoader type "lumina2" +
VAELoader): ``zimage`` writes the diffusion model file (the ``models/diffusion_models`` layout, no
key prefix) and ``flux_vae`` the 16-channel VAE (``ae.safetensors``' layout). ComfyUI's detection
(``model_detection.detect_unet_config``) calls a Lumina2 model Z-Image (``supported_models.ZImage``)
by its hidden size alone: ``dim`` must be 3840, and 3840 fixes the heads (30 of 128), the RoPE axes
and the FFN width (10240) too; the depth is counted from the keys, the two noise- and two
context-refiner blocks are fixed. So the model keeps 3 main blocks (Z-Image has 30): 7 blocks of
177 M parameters, 1.24 G in all, 2.5 GB in bfloat16 (what Z-Image ships in); ``cap_pad_token``
keeps the token padding to multiples of 32 of the published model. The text encoder (for
CLIPLoader) is written by qwen3_checkpoint.py, a recipe of its own, SHRUNK to 3 layers with a
512-wide FFN (vocabulary 151936 and hidden size 2560 kept: the tokenizer's ids and Z-Image's
``cap_feat_dim``; 0.95 GB): ComfyUI builds Qwen3-4B from a fixed 36-layer config whatever the file
holds (4.0 G parameters, 8 GB in bfloat16, and as much RAM to run it on this CPU), so only the
tests that load that file replace ComfyUI's config with one of that size (their ComfyUI alone);
the other Z-Image tests pass Qwen3-shaped conditioning [1, T, 2560].

SD 3.5, as ComfyUI's "SD3.5 simple" template loads it (one checkpoint for Load Checkpoint):
``sd35`` writes MM-DiT + CLIP-L + CLIP-G + the 16-channel VAE. ComfyUI calls an MM-DiT SD3 for its
16 input channels; the hidden size is 64 per block (``depth`` = x_embedder width / 64), so 4 blocks
of 256 (Large: 38 of 2432) with SD 3.5's RMS q/k norm, Large's 192x192 position table, the 2048-wide
pooled and 4096-wide context inputs: 11 M parameters. CLIP-L and CLIP-G have fixed configs in
ComfyUI and are full size (0.25 + 1.39 GB in float16); T5-XXL (4.8 G parameters) is left out, as in
SD3's own ``sd3_medium_incl_clips`` file, so ComfyUI's context is the 77 CLIP tokens padded to 4096.

Flux.1, as ComfyUI's Flux templates load it (UNETLoader + DualCLIPLoader type "flux" + VAELoader
``ae.safetensors``): ``flux`` writes a dev diffusion model file (with ``guidance_in``, which is how
ComfyUI tells dev, ``supported_models.Flux``, from schnell, ``FluxSchnell``) and ``flux_schnell``
the same weights without it; ``flux_vae`` is their VAE. ComfyUI's detection fixes 24 heads and RoPE
axes of 16+56+56 = 128 per head, hence the hidden size 3072 (read from ``img_in``, but any other
fails the model's own check) and the MLP width 12288; the context (4096, T5-XXL's) and pooled (768,
CLIP-L's) widths are read from ``txt_in`` and ``vector_in``; the depths are counted from the keys.
So the model keeps 1 double-stream block and 2 single-stream ones (Flux.1 has 19 and 38): 688 M
parameters (dev; schnell 678 M), 1.4 GB in bfloat16 (what Flux ships in). The q/k RMS-norm scales
are ones (random ones would flatten attention, and with it any token-order mistake). The text
encoders are not written here: ComfyUI builds T5-XXL from a fixed config whatever the file holds
(4.8 G parameters, 9.5 GB in bfloat16), so the sampling tests pass T5-shaped conditioning
[1, T, 4096] with a CLIP-L-shaped pooled vector [1, 768], and the prompt-encoding and quick-start
tests load the shrunk T5-XXL and the CLIP-L of t5_checkpoint.py.

The VAEs are full size (ComfyUI fixes their channel config): 84 M parameters, 0.17 GB.
Run: python dit_checkpoints.py {zimage|flux_vae|sd35|flux|flux_schnell} OUT.safetensors
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_checkpoint import VAE_DDCONFIG, prepare_comfy_import, random_state, save_checkpoint  # noqa: E402

#: What ComfyUI's detection reads a Z-Image config as (model_detection, "Z image"), 3 main blocks.
ZIMAGE_CONFIG = dict(
    patch_size=2,
    in_channels=16,
    dim=3840,
    n_layers=3,
    n_heads=30,
    n_kv_heads=30,
    qk_norm=True,
    cap_feat_dim=2560,
    axes_dims=[32, 48, 48],
    axes_lens=[1536, 512, 512],
    rope_theta=256.0,
    ffn_dim_multiplier=8.0 / 3.0,
    z_image_modulation=True,
    time_scale=1000.0,
    pad_tokens_multiple=32,
)
#: SD 3.5's MM-DiT (Large's layout: RMS q/k norm, no MM-DiT-X self-attention) with 4 blocks.
SD35_DEPTH = 4
SD35_POS_EMBED_MAX_SIZE = 192
SD35_CONFIG = dict(
    in_channels=16,
    patch_size=2,
    out_channels=16,
    depth=SD35_DEPTH,
    input_size=None,
    adm_in_channels=2048,
    context_embedder_config={
        "target": "torch.nn.Linear",
        "params": {"in_features": 4096, "out_features": 64 * SD35_DEPTH},
    },
    num_patches=SD35_POS_EMBED_MAX_SIZE**2,
    pos_embed_max_size=SD35_POS_EMBED_MAX_SIZE,
    qk_norm="rms",
    pos_embed_scaling_factor=None,
    x_block_self_attn_layers=[],
)
#: What ComfyUI's detection reads a Flux.1 dev file as (model_detection, "Flux"), 1 double- and
#: 2 single-stream blocks; schnell is the same without ``guidance_embed``.
FLUX_CONFIG = dict(
    image_model="flux",
    in_channels=16,
    out_channels=16,
    vec_in_dim=768,
    context_in_dim=4096,
    hidden_size=3072,
    mlp_ratio=4.0,
    num_heads=24,
    depth=1,
    depth_single_blocks=2,
    axes_dim=[16, 56, 56],
    theta=10000,
    patch_size=2,
    qkv_bias=True,
    guidance_embed=True,
    txt_ids_dims=[],
)
#: The 16-channel VAE of SD3 and Flux (Z-Image uses Flux's): SD's decoder, 16 latent channels and
#: no quant convs (ComfyUI then builds an AutoencodingEngine).
VAE16_DDCONFIG = dict(VAE_DDCONFIG, z_channels=16)


def _ops():
    import comfy.ops

    return comfy.ops.disable_weight_init


def vae16_state(g: torch.Generator) -> dict[str, torch.Tensor]:
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    regularizer = {"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"}
    with torch.device("meta"):
        vae = AutoencodingEngine(
            regularizer_config=regularizer,
            encoder_config={
                "target": "comfy.ldm.modules.diffusionmodules.model.Encoder",
                "params": VAE16_DDCONFIG,
            },
            decoder_config={
                "target": "comfy.ldm.modules.diffusionmodules.model.Decoder",
                "params": VAE16_DDCONFIG,
            },
        )
    return random_state(vae, g)


def zimage_state(g: torch.Generator) -> dict[str, torch.Tensor]:
    from comfy.ldm.lumina.model import NextDiT

    model = NextDiT(**ZIMAGE_CONFIG, device="meta", operations=_ops())
    return {k: v.to(torch.bfloat16) for k, v in random_state(model, g).items()}


def flux_state(g: torch.Generator, guidance: bool) -> dict[str, torch.Tensor]:
    """Flux.1 dev, or schnell (``guidance=False``): the same weights less ``guidance_in``."""
    from comfy.ldm.flux.model import Flux

    state = random_state(Flux(**FLUX_CONFIG, device="meta", operations=_ops()), g)
    return {
        k: (torch.ones_like(v) if k.endswith("_norm.scale") else v).to(torch.bfloat16)
        for k, v in state.items()
        if guidance or not k.startswith("guidance_in.")
    }


def sd35_state(comfy_path: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    import comfy.clip_model
    import comfy.supported_models
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

    mmdit = OpenAISignatureMMDITWrapper(**SD35_CONFIG, device="meta", operations=_ops())
    model_config = comfy.supported_models.SD3(dict(SD35_CONFIG))
    clip_state = {}
    for name, config_file in (("clip_l", "sd1_clip_config.json"), ("clip_g", "clip_config_bigg.json")):
        with open(os.path.join(comfy_path, "comfy", config_file)) as f:
            config = json.load(f)
        clip = comfy.clip_model.CLIPTextModel(config, dtype=torch.float32, device="meta", operations=_ops())
        clip_state.update(random_state(clip, g, f"{name}.transformer."))
    out = model_config.process_unet_state_dict_for_saving(random_state(mmdit, g))
    out.update(model_config.process_vae_state_dict_for_saving(vae16_state(g)))
    out.update(model_config.process_clip_state_dict_for_saving(clip_state))
    return out


def build_state_dict(kind: str, comfy_path: str, seed: int = 0) -> dict[str, torch.Tensor]:
    prepare_comfy_import(comfy_path)
    g = torch.Generator().manual_seed(seed)
    if kind == "zimage":
        state = zimage_state(g)
    elif kind == "flux_vae":
        state = vae16_state(g)
    elif kind == "sd35":
        state = sd35_state(comfy_path, g)
    elif kind in ("flux", "flux_schnell"):
        state = flux_state(g, guidance=kind == "flux")
    else:
        raise SystemExit(f"unknown kind {kind!r}: zimage, flux_vae, sd35, flux or flux_schnell")
    return {k: v.contiguous() for k, v in state.items()}


if __name__ == "__main__":
    save_checkpoint(sys.argv[2], build_state_dict(sys.argv[1], os.environ["COMFYUI_PATH"]))
