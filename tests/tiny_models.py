"""Tiny random-weight SD 1.x-shaped diffusers models, built from configs (no downloads)."""

from __future__ import annotations

import torch

TINY_CONTEXT_DIM = 32


def tiny_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    # SD 1.x block pattern (3 cross-attention levels + 1 plain, 2 ResBlocks per level -> 12 decoder
    # ResBlocks), shrunk: uneven widths so channel bookkeeping is exercised.
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_CONTEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 1)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=8,
    ).eval()


def tiny_text_encoder(seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed + 2)
    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=TINY_CONTEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
    )
    return CLIPTextModel(cfg).eval()


def tiny_backend(seed: int = 0):
    from diffsketch.backends.diffusers import DiffusersBackend

    return DiffusersBackend(tiny_unet(seed), tiny_vae(seed), tiny_text_encoder(seed))
