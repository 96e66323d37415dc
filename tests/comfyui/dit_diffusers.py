"""The random-weight Z-Image, SD 3.5 and Flux.1 files of dit_checkpoints.py loaded into diffusers'
own models with diffusers' own single-file converters (``convert_z_image_transformer_checkpoint_to_
diffusers``, ``convert_sd3_transformer_checkpoint_to_diffusers``,
``convert_flux_transformer_checkpoint_to_diffusers``, ``convert_ldm_vae_checkpoint``),
strictly (every key converted and used), in float32, for the parity test of the ComfyUI and
diffusers backends. (diffusers' ``from_single_file`` would fetch the config of a published model.)
"""

from __future__ import annotations

import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dit_checkpoints import (  # noqa: E402
    FLUX_CONFIG,
    SD35_CONFIG,
    SD35_DEPTH,
    SD35_POS_EMBED_MAX_SIZE,
    ZIMAGE_CONFIG,
)

#: (scaling, shift) of the latent formats: the Flux VAE's (Z-Image, Flux.1) and SD3's.
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


def diffusers_flux(model_path, vae_path):
    """``(transformer, vae)``: diffusers' FluxTransformer2DModel (dev's guidance embedding when the
    file has ``guidance_in``) and AutoencoderKL; Flux.1 uses the VAE Z-Image does."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    state = load_file(str(model_path))
    transformer = FluxTransformer2DModel(
        num_layers=FLUX_CONFIG["depth"],
        num_single_layers=FLUX_CONFIG["depth_single_blocks"],
        pooled_projection_dim=FLUX_CONFIG["vec_in_dim"],
        joint_attention_dim=FLUX_CONFIG["context_in_dim"],
        guidance_embeds=any(k.startswith("guidance_in.") for k in state),
    )
    transformer.load_state_dict(convert_flux_transformer_checkpoint_to_diffusers(state), strict=True)
    return transformer.float().eval(), _vae(load_file(str(vae_path)), FLUX_LATENT)


def transformers_qwen3(text_encoder_path, dtype):
    """``(Qwen3Model, tokenizer)``: the Qwen3 file of qwen3_checkpoint.py in transformers' Qwen3Model
    (its config: Qwen3-4B's at the file's depth and FFN width), strictly, in ``dtype``, with the
    tokenizer files ComfyUI ships for it (``comfy/text_encoders/qwen25_tokenizer``).

    Those files are Qwen2.5's, whose chat template opens with a default system prompt ("You are a
    helpful assistant."); Qwen3's, which Z-Image's pipeline applies, has none. ComfyUI formats the
    prompt itself ("<|im_start|>user\\n{}<|im_end|>\\n<|im_start|>assistant\\n"), so the tokenizer gets
    the part of Qwen3's template a one-message prompt goes through (tiny_models.QWEN3_CHAT_TEMPLATE),
    which writes exactly that."""
    from comfy_harness import COMFYUI_PATH
    from qwen3_checkpoint import QWEN3_FFN, QWEN3_LAYERS
    from tiny_models import QWEN3_CHAT_TEMPLATE
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model

    config = Qwen3Config(
        vocab_size=151936,
        hidden_size=2560,
        intermediate_size=QWEN3_FFN,
        num_hidden_layers=QWEN3_LAYERS,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = Qwen3Model(config)
    state = {k.removeprefix("model."): v.to(dtype) for k, v in load_file(str(text_encoder_path)).items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.rotary_emb = type(model.rotary_emb)(config)  # its inv_freq buffer, left on the meta device
    tokenizer = Qwen2Tokenizer.from_pretrained(
        os.path.join(COMFYUI_PATH, "comfy", "text_encoders", "qwen25_tokenizer")
    )
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return model.eval(), tokenizer


def transformers_t5(text_encoder_path):
    """``(T5EncoderModel, tokenizer)``: the T5-XXL file of t5_checkpoint.py in transformers' model
    (its config: ComfyUI's T5-XXL at the file's heads and FFN width), strictly, in float32, with the
    tokenizer files ComfyUI ships for it (``comfy/text_encoders/t5_tokenizer``, the ones the SD 3
    and Flux diffusers folders hold)."""
    from comfy_harness import COMFYUI_PATH
    from t5_checkpoint import t5_config
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast
    from transformers.initialization import no_init_weights

    comfy_config = t5_config(COMFYUI_PATH)
    config = T5Config(
        **{k: comfy_config[k] for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")},
        relative_attention_num_buckets=comfy_config["relative_attention_num_buckets"],
        layer_norm_epsilon=comfy_config["layer_norm_epsilon"],
        feed_forward_proj="gated-gelu",  # ComfyUI's gated "gelu_pytorch_tanh"
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
    )
    with no_init_weights():  # every weight is loaded next: no 0.2 G random draws
        model = T5EncoderModel(config)
    state = {k: v.float() for k, v in load_file(str(text_encoder_path)).items()}
    state["encoder.embed_tokens.weight"] = state["shared.weight"]  # one table in both (tied in the model)
    model.load_state_dict(state, strict=True)
    tokenizer = T5TokenizerFast.from_pretrained(
        os.path.join(COMFYUI_PATH, "comfy", "text_encoders", "t5_tokenizer")
    )
    return model.eval(), tokenizer


def transformers_clip(state: dict, prefix: str, kind: str):
    """The CLIP text tower under ``prefix`` of a ComfyUI state dict (transformers' key names) as
    diffusers' pipelines hold it, strictly, in float32: ``kind`` "flux_l" is Flux.1's CLIP-L
    (``CLIPTextModel``: its pooled output unprojected), "sd3_l" SD3's CLIP-L
    (``CLIPTextModelWithProjection`` with an identity projection, as diffusers' single-file loader
    sets it: SD3 uses CLIP-L's pooled output unprojected), "sd3_g" SD3's bigG (GELU, its own
    projection)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection
    from transformers.initialization import no_init_weights

    from diffsketch.backends.checkpoint import _match_prefix, clip_text_config

    tower = {k.removeprefix(prefix): v.float() for k, v in state.items() if k.startswith(prefix)}
    config = clip_text_config(tower, "")
    if kind == "flux_l":
        model_class = CLIPTextModel
        tower.pop("text_projection.weight", None)
    elif kind == "sd3_l":
        model_class = CLIPTextModelWithProjection
        tower["text_projection.weight"] = torch.eye(config.hidden_size)
    else:
        config.hidden_act, config.projection_dim = "gelu", tower["text_projection.weight"].shape[0]
        model_class = CLIPTextModelWithProjection
    with no_init_weights():  # every weight is loaded next (bigG: 0.7 G random draws)
        model = model_class(config)
    model.load_state_dict(_match_prefix(tower, model), strict=True, assign=True)
    return model.eval()
