"""Tiny random-weight SD 1.x-shaped diffusers models, built from configs (no downloads)."""

from __future__ import annotations

import torch

TINY_CONTEXT_DIM = 32


def tiny_unet(seed: int = 0, **overrides):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    # SD 1.x block pattern (3 cross-attention levels + 1 plain, 2 ResBlocks per level -> 12 decoder
    # ResBlocks), shrunk: uneven widths so channel bookkeeping is exercised.
    config = dict(
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
    )
    return UNet2DConditionModel(**config | overrides).eval()


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


def tiny_text_encoder(seed: int = 0, **overrides):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed + 2)
    config = dict(
        vocab_size=49408,
        hidden_size=TINY_CONTEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
    )
    return CLIPTextModel(CLIPTextConfig(**config | overrides)).eval()


def tiny_backend(seed: int = 0):
    from diffsketch.backends.diffusers import DiffusersBackend

    return DiffusersBackend(tiny_unet(seed), tiny_vae(seed), tiny_text_encoder(seed))


# ---------------------------------------------------------------------------------------------
# SD 2.x and SDXL shapes
# ---------------------------------------------------------------------------------------------
TINY_SDXL_CLIP_L_DIM = 32
TINY_SDXL_CLIP_G_DIM = 16
TINY_SDXL_POOLED_DIM = 16
TINY_SDXL_TIME_DIM = 8


def tiny_sdxl_unet(seed: int = 0):
    """SDXL's block pattern shrunk: three levels (no attention at the first, one and two transformer
    blocks at the others), 2 ResBlocks per down level -> 9 decoder ResBlocks, linear projections,
    and the text_time added embedding sized for the pooled embedding and six size numbers."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=TINY_SDXL_CLIP_L_DIM + TINY_SDXL_CLIP_G_DIM,
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TINY_SDXL_TIME_DIM,
        projection_class_embeddings_input_dim=TINY_SDXL_POOLED_DIM + 6 * TINY_SDXL_TIME_DIM,
        norm_num_groups=8,
    ).eval()


def tiny_sdxl_text_encoders(seed: int = 0):
    """(CLIP-L-like CLIPTextModel, bigG-like CLIPTextModelWithProjection), small."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed + 2)
    clip_l = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=TINY_SDXL_CLIP_L_DIM,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            max_position_embeddings=77,
        )
    ).eval()
    clip_g = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=TINY_SDXL_CLIP_G_DIM,
            intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            max_position_embeddings=77,
            hidden_act="gelu",
            projection_dim=TINY_SDXL_POOLED_DIM,
        )
    ).eval()
    return clip_l, clip_g


def tiny_sdxl_backend(seed: int = 0, prediction_type: str = "epsilon", **kwargs):
    from diffsketch.backends.diffusers import DiffusersBackend

    clip_l, clip_g = tiny_sdxl_text_encoders(seed)
    return DiffusersBackend(
        tiny_sdxl_unet(seed),
        tiny_vae(seed),
        clip_l,
        text_encoder_2=clip_g,
        prediction_type=prediction_type,
        **kwargs,
    )


def tiny_sd2_unet(seed: int = 0):
    """SD 2.x's pattern (SD 1.x's blocks with linear projections), shrunk."""
    return tiny_unet(seed, attention_head_dim=(2, 2, 4, 4), use_linear_projection=True)


def tiny_sd2_text_encoder(seed: int = 0):
    """An OpenCLIP-like text tower (GELU, as SD 2.x's ViT-H), small."""
    return tiny_text_encoder(seed, hidden_act="gelu")


def tiny_sd2_backend(seed: int = 0, prediction_type: str = "v_prediction", **kwargs):
    from diffsketch.backends.diffusers import DiffusersBackend

    return DiffusersBackend(
        tiny_sd2_unet(seed),
        tiny_vae(seed),
        tiny_sd2_text_encoder(seed),
        prediction_type=prediction_type,
        **kwargs,
    )


def tiny_generator(spec, n_timesteps: int, timesteps=None):
    """A small :class:`SketchGenerator` for ``spec`` (weights from torch's current seed)."""
    from diffsketch.train.generator import GeneratorConfig, SketchGenerator

    config = GeneratorConfig.from_spec(
        spec,
        n_timesteps,
        lower_dim=32,
        higher_dim=16,
        lower_groups=4,
        higher_groups=4,
        fusion_channels=(64, 32, 16),
    )
    return SketchGenerator(spec, config, timesteps=timesteps)
