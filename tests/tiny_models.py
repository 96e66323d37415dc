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


def tiny_vae(seed: int = 0, **overrides):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 1)
    config = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=8,
    )
    return AutoencoderKL(**config | overrides).eval()


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


# ---------------------------------------------------------------------------------------------
# Diffusion transformers: Z-Image, SD 3.5 and Flux.1 shapes (flow matching, 16-channel VAE)
# ---------------------------------------------------------------------------------------------
TINY_QWEN_DIM = 16
TINY_SD3_T5_DIM = 32
TINY_SD3_CLIP_L_DIM = 8
TINY_SD3_CLIP_G_DIM = 16
TINY_SD3_POOLED_DIM = 8 + 8
#: The part of Qwen3's chat template a one-message prompt goes through (a user turn, then the
#: assistant's turn opened; enable_thinking=False would add an empty think block).
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{% endif %}{% endif %}"
)


def tiny_vae16(seed: int = 0, scaling_factor: float = 0.3611, shift_factor: float = 0.1159):
    """The 16-channel VAE's layout (SD's decoder, no quant convs), shrunk; Flux's latent scale and
    shift (Z-Image) by default."""
    return tiny_vae(
        seed,
        latent_channels=16,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def byte_tokenizer(
    specials: tuple[str, ...], pad: str, eos: str | None = None, chat_template: str | None = None
):
    """A byte-level tokenizer (one token per UTF-8 byte, no merges) with ``specials``, built in
    memory: it tokenises any text, as the real Qwen3 and T5 tokenizers do, without their vocabularies.
    ``eos``: appended to every text (T5's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(specials))
    if eos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", special_tokens=[(eos, tok.token_to_id(eos))]
        )
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, eos_token=eos, model_max_length=4096)
    if chat_template is not None:
        out.chat_template = chat_template
    return out


def tiny_qwen3(seed: int = 0):
    """(Qwen3 text model, its tokenizer): Z-Image's text encoder shrunk, byte-level tokens."""
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = byte_tokenizer(
        ("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
        pad="<|endoftext|>",
        chat_template=QWEN3_CHAT_TEMPLATE,
    )
    torch.manual_seed(seed + 2)
    model = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=TINY_QWEN_DIM,
            intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=1024,
        )
    ).eval()
    return model, tokenizer


def tiny_zimage_transformer(seed: int = 0):
    """Z-Image's single-stream layout shrunk: 6 main blocks (taps 1-4), one refiner each for the
    image and the caption, 32 channels in 2 heads of 16 (RoPE axes 4+6+6)."""
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(seed)
    return ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=6,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=TINY_QWEN_DIM,
        axes_dims=(4, 6, 6),
        axes_lens=(1024, 64, 64),
    ).eval()


def tiny_zimage_backend(seed: int = 0, **kwargs):
    from diffsketch.backends.dit import DiffusersFlowBackend

    qwen, tokenizer = tiny_qwen3(seed)
    return DiffusersFlowBackend(tiny_zimage_transformer(seed), tiny_vae16(seed), qwen, tokenizer, **kwargs)


def tiny_sd3_transformer(
    seed: int = 0, context_dim: int = TINY_SD3_T5_DIM, pooled_dim: int = TINY_SD3_POOLED_DIM
):
    """SD 3.5's MM-DiT layout shrunk: 6 joint blocks (taps 1-4; the first with dual attention, as
    Medium's first 13), 16 channels in 2 heads, QK RMS norm, the last block context-pre-only; the
    context and pooled widths tiny unless given (SD 3.5's: 4096 and 2048)."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=16,
        num_layers=6,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=context_dim,
        caption_projection_dim=16,
        pooled_projection_dim=pooled_dim,
        out_channels=16,
        pos_embed_max_size=32,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    ).eval()


def tiny_sd3_text_encoders(seed: int = 0):
    """(CLIP-L, OpenCLIP bigG, T5-XXL, T5's tokenizer), small: the two CLIPs with projections
    (their projected embeddings make the pooled one), T5 as wide as the transformer's context."""
    torch.manual_seed(seed + 2)
    clip_l, clip_g = tiny_clip(TINY_SD3_CLIP_L_DIM, "quick_gelu"), tiny_clip(TINY_SD3_CLIP_G_DIM, "gelu")
    return (clip_l, clip_g, *tiny_t5())


def tiny_clip(hidden: int, act: str, projection: bool = True):
    """A 3-layer CLIP text model on the real CLIP vocabulary, with a projection (SD 3.5's pooled
    embeddings) or without (Flux's CLIP-L: its pooled output)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=8,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def tiny_t5():
    """(T5-XXL shrunk to :data:`TINY_SD3_T5_DIM`, its byte-level tokenizer)."""
    from transformers import T5Config, T5EncoderModel

    t5_tokenizer = byte_tokenizer(("<pad>", "</s>"), pad="<pad>", eos="</s>")
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=TINY_SD3_T5_DIM,
            d_kv=8,
            d_ff=32,
            num_layers=2,
            num_heads=2,
            feed_forward_proj="gated-gelu",
            pad_token_id=t5_tokenizer.pad_token_id,
            eos_token_id=t5_tokenizer.eos_token_id,
        )
    ).eval()
    return t5, t5_tokenizer


def tiny_sd35_backend(seed: int = 0, **kwargs):
    from diffsketch.backends.dit import DiffusersFlowBackend

    clip_l, clip_g, t5, t5_tokenizer = tiny_sd3_text_encoders(seed)
    return DiffusersFlowBackend(
        tiny_sd3_transformer(seed),
        tiny_vae16(seed, scaling_factor=1.5305, shift_factor=0.0609),
        clip_l,
        text_encoder_2=clip_g,
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer,
        **kwargs,
    )


def tiny_flux_transformer(seed: int = 0, guidance_embeds: bool = True):
    """Flux.1's layout shrunk: 2 double-stream then 4 single-stream blocks (taps: double 1, single
    0-2), 16 channels in 2 heads, packed 2x2 patches of the 16-channel latent (64 in), with the
    guidance embedding (dev) or without (schnell)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=2,
        num_single_layers=4,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=TINY_SD3_T5_DIM,
        pooled_projection_dim=TINY_SD3_CLIP_L_DIM,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(2, 2, 4),
    ).eval()


def tiny_flux_backend(seed: int = 0, guidance_embeds: bool = True, **kwargs):
    """A Flux.1 dev (``guidance_embeds``) or schnell backend: CLIP-L without projection, T5."""
    from diffsketch.backends.dit import DiffusersFlowBackend

    torch.manual_seed(seed + 2)
    clip_l = tiny_clip(TINY_SD3_CLIP_L_DIM, "quick_gelu", projection=False)
    t5, t5_tokenizer = tiny_t5()
    return DiffusersFlowBackend(
        tiny_flux_transformer(seed, guidance_embeds),
        tiny_vae16(seed),
        clip_l,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        **kwargs,
    )
