"""Load an SD 1.x single-file (ldm layout) checkpoint into diffusers modules, offline.

``diffusers``' own ``from_single_file`` fetches configs from the Hub; here the UNet and VAE
configs are read from the tensor shapes (so non-standard SD 1.x-shaped checkpoints work too) and
handed to diffusers' ldm->diffusers key converters. The text encoder is CLIP ViT-L/14's text
tower, whose config is fixed for SD 1.x; its size is read from the weights as well.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import FileFormatError, UnsupportedModelError, WeightsNotFoundError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."


def read_state_dict(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise WeightsNotFoundError(f"checkpoint not found: {p}")
    if p.suffix != ".safetensors":
        raise FileFormatError(
            f"{p.name}: only .safetensors checkpoints are loaded (pickled .ckpt files can run code). "
            "Convert it to .safetensors first."
        )
    try:
        return load_file(str(p))
    except Exception as e:
        raise FileFormatError(f"{p.name} is not a readable safetensors checkpoint ({e})") from e


def ldm_unet_params(sd: dict[str, torch.Tensor]) -> dict:
    """The ldm ``unet_config.params`` of an SD 1.x-shaped UNet, read from tensor shapes."""
    p = UNET_PREFIX
    if f"{p}input_blocks.0.0.weight" not in sd:
        raise UnsupportedModelError(
            "no ldm UNet weights (model.diffusion_model.input_blocks...) in this checkpoint"
        )
    if f"{p}label_emb.0.0.weight" in sd:
        raise UnsupportedModelError(
            "this checkpoint has a label/ADM embedding (SDXL-style); DiffSketch needs SD 1.x"
        )
    mc, in_ch = sd[f"{p}input_blocks.0.0.weight"].shape[:2]
    out_ch = sd[f"{p}out.2.weight"].shape[0]
    n_input = 1 + max(
        int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(p)}input_blocks\.(\d+)\.", k))
    )
    mults, res_blocks, attn_levels, depths = [], [], [], []
    level_blocks = 0
    context_dim = None
    linear = None
    for i in range(1, n_input):
        if f"{p}input_blocks.{i}.0.op.weight" in sd:
            res_blocks.append(level_blocks)
            level_blocks = 0
            continue
        out = sd[f"{p}input_blocks.{i}.0.out_layers.3.weight"].shape[0]
        if level_blocks == 0:
            mults.append(out // mc)
        level_blocks += 1
        if f"{p}input_blocks.{i}.1.proj_in.weight" in sd:
            level = len(mults) - 1
            if level not in attn_levels:
                attn_levels.append(level)
                depths.append(
                    1
                    + max(
                        int(m.group(1))
                        for k in sd
                        if (
                            m := re.match(
                                rf"{re.escape(p)}input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\.", k
                            )
                        )
                    )
                )
            if context_dim is None:
                context_dim = sd[f"{p}input_blocks.{i}.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]
                linear = sd[f"{p}input_blocks.{i}.1.proj_in.weight"].ndim == 2
    res_blocks.append(level_blocks)
    if context_dim is None:
        raise UnsupportedModelError(
            "the UNet has no cross-attention in its input blocks; not an SD 1.x text-to-image UNet"
        )
    if len(set(res_blocks)) != 1:
        raise UnsupportedModelError(
            f"uneven ResBlocks per level {res_blocks}: not expressible as a diffusers UNet"
        )
    if len(set(depths)) != 1:
        raise UnsupportedModelError(f"uneven transformer depths {depths}: not expressible by this loader")
    return {
        "in_channels": int(in_ch),
        "out_channels": int(out_ch),
        "model_channels": int(mc),
        "channel_mult": mults,
        "num_res_blocks": res_blocks[0],
        "attention_resolutions": [2**lvl for lvl in attn_levels],
        "transformer_depth": depths[0],
        "context_dim": int(context_dim),
        "num_heads": 8,
        "use_linear_in_transformer": bool(linear),
    }


def ldm_vae_ddconfig(sd: dict[str, torch.Tensor]) -> dict:
    p = VAE_PREFIX
    if f"{p}decoder.conv_in.weight" not in sd:
        raise UnsupportedModelError("no VAE weights (first_stage_model.decoder...) in this checkpoint")
    ch = sd[f"{p}encoder.conv_in.weight"].shape[0]
    levels = 1 + max(
        int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(p)}encoder\.down\.(\d+)\.", k))
    )
    mults = [sd[f"{p}encoder.down.{lvl}.block.0.conv2.weight"].shape[0] // ch for lvl in range(levels)]
    nrb = 1 + max(
        int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(p)}encoder\.down\.0\.block\.(\d+)\.", k))
    )
    return {
        "double_z": True,
        "z_channels": int(sd[f"{p}decoder.conv_in.weight"].shape[1]),
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": int(ch),
        "ch_mult": mults,
        "num_res_blocks": int(nrb),
        "attn_resolutions": [],
        "dropout": 0.0,
    }


def clip_text_config(sd: dict[str, torch.Tensor]):
    from transformers import CLIPTextConfig

    p = CLIP_PREFIX + "text_model."
    if f"{p}embeddings.token_embedding.weight" not in sd:
        raise UnsupportedModelError(
            "no CLIP text encoder weights (cond_stage_model.transformer...) in this checkpoint"
        )
    vocab, hidden = sd[f"{p}embeddings.token_embedding.weight"].shape
    layers = 1 + max(
        int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(p)}encoder\.layers\.(\d+)\.", k))
    )
    inter = sd[f"{p}encoder.layers.0.mlp.fc1.weight"].shape[0]
    return CLIPTextConfig(
        vocab_size=int(vocab),
        hidden_size=int(hidden),
        intermediate_size=int(inter),
        num_hidden_layers=int(layers),
        num_attention_heads=max(1, int(hidden) // 64),
        max_position_embeddings=int(sd[f"{p}embeddings.position_embedding.weight"].shape[0]),
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=768,
    )


def original_config(sd: dict[str, torch.Tensor]) -> dict:
    """An ldm-yaml-shaped dict, as diffusers' config helpers expect."""
    return {
        "model": {
            "params": {
                "scale_factor": 0.18215,
                "unet_config": {"params": ldm_unet_params(sd)},
                "first_stage_config": {"params": {"ddconfig": ldm_vae_ddconfig(sd), "embed_dim": 4}},
            }
        }
    }


def load_sd1_single_file(path):
    """Returns diffusers (UNet2DConditionModel, AutoencoderKL, CLIPTextModel) in float32."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )
    from transformers import CLIPTextModel

    sd = read_state_dict(path)
    cfg = original_config(sd)
    unet_cfg = create_unet_diffusers_config_from_ldm(cfg, sd, image_size=512)
    vae_cfg = create_vae_diffusers_config_from_ldm(cfg, sd, image_size=512)
    unet = UNet2DConditionModel(**unet_cfg)
    _load_strict(unet, convert_ldm_unet_checkpoint(sd, unet_cfg), "UNet", path)
    vae = AutoencoderKL(**vae_cfg)
    _load_strict(vae, convert_ldm_vae_checkpoint(sd, vae_cfg), "VAE", path)
    te = CLIPTextModel(clip_text_config(sd))
    clip_sd = convert_ldm_clip_checkpoint(sd)
    if not any(k.startswith("text_model.") for k in te.state_dict()):
        # transformers >= 5 names CLIPTextModel's keys without the "text_model." prefix
        clip_sd = {k.removeprefix("text_model."): v for k, v in clip_sd.items()}
    # position ids are a buffer, text_projection is unused by SD 1.x (only the hidden states are)
    clip_sd = {
        k: v for k, v in clip_sd.items() if not k.endswith("position_ids") and "text_projection" not in k
    }
    _load_strict(
        te,
        clip_sd,
        "text encoder",
        path,
        allow_missing=("text_model.embeddings.position_ids", "embeddings.position_ids"),
    )
    return unet.float(), vae.float(), te.float()


def _load_strict(module, state, what, path, allow_missing=()):
    state = {k: v.float() for k, v in state.items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in allow_missing]
    if missing or unexpected:
        raise UnsupportedModelError(
            f"{Path(path).name}: the {what} weights do not fit an SD 1.x layout "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}). "
            "Is this an SD 1.x checkpoint?"
        )
