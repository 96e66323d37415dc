"""The random-weight Z-Image and SD 3.5 files of dit_checkpoints.py loaded into diffusers' own
models with diffusers' own single-file converters (``convert_z_image_transformer_checkpoint_to_
diffusers``, ``convert_sd3_transformer_checkpoint_to_diffusers``, ``convert_ldm_vae_checkpoint``),
strictly, in float32; and a reference sampler on them written from diffusers' pipelines
(ZImagePipeline, StableDiffusion3Pipeline with FlowMatchEulerDiscreteScheduler), independent of
the library's capture code, for the ComfyUI backend's parity test.
"""

from __future__ import annotations

import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dit_checkpoints import SD35_CONFIG, SD35_DEPTH, SD35_POS_EMBED_MAX_SIZE, ZIMAGE_CONFIG  # noqa: E402

#: (scaling, shift) of the latent formats: the Flux VAE's (Z-Image) and SD3's.
FLUX_LATENT = (0.3611, 0.1159)
SD3_LATENT = (1.5305, 0.0609)


def _vae(state: dict, latent: tuple[float, float]):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512],
        layers_per_block=2,
        latent_channels=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=latent[0],
        shift_factor=latent[1],
    )
    vae.load_state_dict(convert_ldm_vae_checkpoint(state, vae.config), strict=True)
    return vae.float().eval()


def diffusers_zimage(model_path, vae_path):
    """``(transformer, vae)``: diffusers' ZImageTransformer2DModel and AutoencoderKL."""
    from diffusers import ZImageTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    transformer = ZImageTransformer2DModel(
        n_layers=ZIMAGE_CONFIG["n_layers"], axes_lens=ZIMAGE_CONFIG["axes_lens"]
    )
    state = convert_z_image_transformer_checkpoint_to_diffusers(load_file(str(model_path)))
    transformer.load_state_dict(state, strict=True)
    return transformer.float().eval(), _vae(load_file(str(vae_path)), FLUX_LATENT)


def diffusers_sd35(checkpoint_path):
    """``(transformer, vae)``: diffusers' SD3Transformer2DModel and AutoencoderKL."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    state = load_file(str(checkpoint_path))
    dit = {k: v for k, v in state.items() if k.startswith("model.diffusion_model.")}
    vae = {k: v for k, v in state.items() if k.startswith("first_stage_model.")}
    transformer = SD3Transformer2DModel(
        patch_size=2,
        in_channels=16,
        num_layers=SD35_DEPTH,
        attention_head_dim=64,
        num_attention_heads=SD35_DEPTH,
        joint_attention_dim=SD35_CONFIG["context_embedder_config"]["params"]["in_features"],
        caption_projection_dim=64 * SD35_DEPTH,
        pooled_projection_dim=SD35_CONFIG["adm_in_channels"],
        out_channels=16,
        pos_embed_max_size=SD35_POS_EMBED_MAX_SIZE,
        qk_norm="rms_norm",
    )
    transformer.load_state_dict(convert_sd3_transformer_checkpoint_to_diffusers(dit), strict=True)
    return transformer.float().eval(), _vae(vae, SD3_LATENT)


def _image_tokens(output, grid) -> torch.Tensor:
    """diffusers' block output -> [B, C, h, w]: SD3's blocks return (text, image); Z-Image's unified
    sequence has the image tokens first."""
    tokens = output[1] if isinstance(output, tuple) else output
    h, w = grid
    return tokens[:, : h * w].reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2).float().clone()


def reference_sample(family, transformer, vae, blocks, cond, uncond, cfg, schedule, noise, shift=3.0):
    """Euler on the flow sigmas of ``schedule`` (descending indices k, sigma of (k+1)/1000 shifted),
    from ``noise`` at sigma_0; CFG ``uncond + cfg*(cond - uncond)``, the cond branch alone at cfg 1.
    Returns ``(image [1,3,H,W] in [0,1], raw latent, {k: [map per block, branches stacked
    uncond-first]}, [VAE decoder taps])``."""
    sigmas = [shift * t / (1 + (shift - 1) * t) for t in ((k + 1) / 1000 for k in schedule)] + [0.0]
    grid = (noise.shape[-2] // 2, noise.shape[-1] // 2)
    branches = [cond] if cfg == 1 else [uncond, cond]
    x = noise * sigmas[0]
    features = {}
    layers = transformer.layers if family == "zimage" else transformer.transformer_blocks
    with torch.no_grad():
        for i, k in enumerate(schedule):
            sigma = sigmas[i]
            velocities, maps = [], [[] for _ in blocks]
            for branch in branches:
                recorded = {}
                handles = [
                    layers[b].register_forward_hook(
                        lambda m, a, out, b=b, rec=recorded: rec.__setitem__(b, out)
                    )
                    for b in blocks
                ]
                try:
                    if family == "zimage":
                        out = transformer(
                            [x[0].unsqueeze(1)], torch.tensor([1.0 - sigma]), [branch.context[0]]
                        )
                        velocities.append(-out.sample[0].squeeze(1).unsqueeze(0))
                    else:
                        out = transformer(
                            hidden_states=x,
                            encoder_hidden_states=branch.context,
                            pooled_projections=branch.pooled,
                            timestep=torch.tensor([sigma * 1000.0]),
                        )
                        velocities.append(out.sample)
                finally:
                    for h in handles:
                        h.remove()
                for j, b in enumerate(blocks):
                    maps[j].append(_image_tokens(recorded[b], grid))
            features[k] = [torch.cat(m) for m in maps]
            v = velocities[0] if cfg == 1 else velocities[0] + cfg * (velocities[1] - velocities[0])
            x = x + (sigmas[i + 1] - sigma) * v
        latent = x / vae.config.scaling_factor + vae.config.shift_factor
        decoder = vae.decoder
        taps = list(decoder.mid_block.resnets) + [r for up in decoder.up_blocks for r in up.resnets]
        recorded_vae = []
        handles = [
            t.register_forward_hook(lambda m, a, out: recorded_vae.append(out.float().clone())) for t in taps
        ]
        try:
            rgb = vae.decode(latent).sample
        finally:
            for h in handles:
                h.remove()
    return ((rgb + 1) / 2).clamp(0, 1), latent, features, recorded_vae
