"""Load an SD 1.x, SD 2.x or SDXL single-file checkpoint (ldm layout) into diffusers modules, offline.

``diffusers``' own ``from_single_file`` fetches configs from the Hub; here the UNet, VAE and text
encoder configs are read from the tensor shapes (so non-standard checkpoints of these shapes work
too) and handed to diffusers' ldm->diffusers key converters. The family is read from the UNet
(:func:`~diffsketch.capture.spec.family_from_ldm_config`) and the text encoders it needs must be
there: CLIP-L (``cond_stage_model.transformer``) for SD 1.x, OpenCLIP ViT-H
(``cond_stage_model.model``) for SD 2.x, CLIP-L and OpenCLIP bigG (``conditioner.embedders.0`` and
``.1``) for SDXL.

What the sampler must know is read the way ComfyUI reads it, so both backends sample a file alike:
SDXL files saying ``v_pred`` (and ``ztsnr``) are v-prediction (on a zero-terminal-SNR schedule);
SD 2.x files are v-prediction when the norm bias ComfyUI looks at varies (768-v) and epsilon
otherwise (512-base); SD 1.x files are epsilon. EDM-schedule files (Playground v2.5, EDM v-pred)
are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..capture.spec import (
    SD1,
    SD2,
    SDXL,
    family_from_ldm_config,
    family_name,
    unsupported_model,
)
from ..errors import FileFormatError, UnsupportedModelError, WeightsNotFoundError
from .base import rescale_zero_terminal_snr, scaled_linear_alphas_cumprod

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
OPEN_CLIP_PREFIXES = (
    "cond_stage_model.model.",
    "conditioner.embedders.0.model.",
)  # SD 2.x, ldm and sgm layouts

#: The VAE latent scale of each family (ComfyUI's latent formats): SDXL's VAE was retrained.
LATENT_SCALE = {SD1: 0.18215, SD2: 0.18215, SDXL: 0.13025}
#: The image side each family's checkpoints were trained at; SD 2.x's v-prediction models are the 768-v ones.
IMAGE_SIZE = {SD1: 512, SD2: 512, SDXL: 1024}
SD2_V_PREDICTION_IMAGE_SIZE = 768
#: ComfyUI's test for SD 2.x 768-v: this norm bias varies more in v-prediction models.
SD2_V_PREDICTION_KEY = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
SD2_V_PREDICTION_STD = 0.09
#: OpenCLIP ViT-H's depth, which ComfyUI always builds SD 2.x's text encoder with. SD 2.x reads its
#: penultimate layer, so files written without the last layer (diffusers' conversion script
#: writes 23) give the same conditioning.
SD2_TEXT_LAYERS = 24


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


def _max_index(sd, pattern: str) -> int:
    return max((int(m.group(1)) for k in sd if (m := re.match(pattern, k))), default=-1)


#: Keys that tell a diffusion transformer's single file (ComfyUI's module names under the ldm
#: prefix) and what it is, in words.
_SINGLE_FILE_TRANSFORMERS = (
    ("joint_blocks.0.x_block.attn.qkv.weight", "an SD 3.x MM-DiT"),
    ("double_blocks.0.img_attn.qkv.weight", "a Flux transformer"),
    ("cap_embedder.1.weight", "a Z-Image / Lumina 2 transformer"),
)


def single_file_transformer(sd: dict) -> str | None:
    """What diffusion transformer a single file's ``model.diffusion_model.*`` weights are, in words,
    or None."""
    for key, what in _SINGLE_FILE_TRANSFORMERS:
        if f"{UNET_PREFIX}{key}" in sd:
            return what
    return None


def ldm_unet_params(sd: dict[str, torch.Tensor]) -> dict:
    """The ldm ``unet_config.params`` of a Stable Diffusion UNet, read from tensor shapes (with
    ``family``: the backbone family they make)."""
    p = UNET_PREFIX
    if f"{p}input_blocks.0.0.weight" not in sd:
        transformer = single_file_transformer(sd)
        if transformer is not None:
            raise unsupported_model(
                f"this checkpoint's diffusion model is {transformer}, in one file; the diffusers backend reads "
                "diffusion transformers (Z-Image, SD 3.5, Flux.1) from diffusers folders only (transformer/, vae/ and the "
                "text encoders), and single files of UNet models"
            )
        if any(k.startswith(p) for k in sd):
            raise unsupported_model(
                "this checkpoint's diffusion model has no ldm UNet input blocks (model.diffusion_model.input_blocks): "
                "it is not a Stable Diffusion UNet (Flux, SD3 and other DiT models have none)"
            )
        raise UnsupportedModelError(
            "no ldm UNet weights (model.diffusion_model.input_blocks...) in this checkpoint; is it a full "
            "Stable Diffusion checkpoint (UNet, VAE and text encoder in one file)?"
        )
    mc, in_ch = sd[f"{p}input_blocks.0.0.weight"].shape[:2]
    out_ch = sd[f"{p}out.2.weight"].shape[0]
    n_input = 1 + _max_index(sd, rf"{re.escape(p)}input_blocks\.(\d+)\.")
    mults, res_blocks, depth_of_level = [], [], {}
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
            depth = 1 + _max_index(sd, rf"{re.escape(p)}input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\.")
            if depth_of_level.setdefault(level, depth) != depth:
                raise UnsupportedModelError(
                    f"uneven transformer depths within level {level}: not expressible by this loader"
                )
            if context_dim is None:
                context_dim = sd[f"{p}input_blocks.{i}.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]
                linear = sd[f"{p}input_blocks.{i}.1.proj_in.weight"].ndim == 2
    res_blocks.append(level_blocks)
    if context_dim is None:
        raise unsupported_model(
            "the UNet has no cross-attention in its input blocks: it is not a text-to-image UNet"
        )
    if len(set(res_blocks)) != 1:
        raise UnsupportedModelError(
            f"uneven ResBlocks per level {res_blocks}: not expressible as a diffusers UNet"
        )
    adm = int(sd[f"{p}label_emb.0.0.weight"].shape[1]) if f"{p}label_emb.0.0.weight" in sd else None
    params = {
        "in_channels": int(in_ch),
        "out_channels": int(out_ch),
        "model_channels": int(mc),
        "channel_mult": mults,
        "num_res_blocks": res_blocks[0],
        "attention_resolutions": [2**lvl for lvl in sorted(depth_of_level)],
        "context_dim": int(context_dim),
        "use_linear_in_transformer": bool(linear),
        "adm_in_channels": adm,
    }
    family = family_from_ldm_config(params, "this checkpoint")
    middle = 1 + _max_index(sd, rf"{re.escape(p)}middle_block\.1\.transformer_blocks\.(\d+)\.")
    # diffusers gives the middle block the last level's depth, and levels without attention
    # ignore theirs: fill those with the middle depth so the list expresses every block.
    depths = [depth_of_level.get(level, middle) for level in range(len(mults))]
    if depths[-1] != middle:
        raise UnsupportedModelError(
            f"the middle block's transformer depth {middle} differs from the last level's {depths[-1]}: not "
            "expressible as a diffusers UNet"
        )
    params["transformer_depth"] = depths[0] if len(set(depths)) == 1 else depths
    if family == SD1:
        params["num_heads"] = 8
    else:
        params["num_head_channels"] = 64
    if adm is not None:
        params["num_classes"] = "sequential"
    params["family"] = family
    return params


def ldm_vae_ddconfig(sd: dict[str, torch.Tensor]) -> dict:
    p = VAE_PREFIX
    if f"{p}decoder.conv_in.weight" not in sd:
        raise UnsupportedModelError("no VAE weights (first_stage_model.decoder...) in this checkpoint")
    ch = sd[f"{p}encoder.conv_in.weight"].shape[0]
    levels = 1 + _max_index(sd, rf"{re.escape(p)}encoder\.down\.(\d+)\.")
    mults = [sd[f"{p}encoder.down.{lvl}.block.0.conv2.weight"].shape[0] // ch for lvl in range(levels)]
    nrb = 1 + _max_index(sd, rf"{re.escape(p)}encoder\.down\.0\.block\.(\d+)\.")
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


def clip_text_config(sd: dict[str, torch.Tensor], prefix: str = CLIP_PREFIX):
    """OpenAI CLIP-L's text tower (transformers layout under ``prefix``), sized from the weights."""
    from transformers import CLIPTextConfig

    p = prefix + "text_model."
    if f"{p}embeddings.token_embedding.weight" not in sd:
        raise UnsupportedModelError(f"no CLIP text encoder weights ({prefix}...) in this checkpoint")
    vocab, hidden = sd[f"{p}embeddings.token_embedding.weight"].shape
    return CLIPTextConfig(
        vocab_size=int(vocab),
        hidden_size=int(hidden),
        intermediate_size=int(sd[f"{p}encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=1 + _max_index(sd, rf"{re.escape(p)}encoder\.layers\.(\d+)\."),
        num_attention_heads=max(1, int(hidden) // 64),
        max_position_embeddings=int(sd[f"{p}embeddings.position_embedding.weight"].shape[0]),
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=768,
    )


def open_clip_text_config(sd: dict[str, torch.Tensor], prefix: str):
    """An OpenCLIP text tower (ViT-H for SD 2.x, bigG for SDXL) as a transformers config, sized
    from the weights, with every layer the file stores."""
    from transformers import CLIPTextConfig

    vocab, hidden = sd[f"{prefix}token_embedding.weight"].shape
    projection = sd.get(f"{prefix}text_projection")
    return CLIPTextConfig(
        vocab_size=int(vocab),
        hidden_size=int(hidden),
        intermediate_size=int(sd[f"{prefix}transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        num_hidden_layers=open_clip_layers(sd, prefix),
        num_attention_heads=max(1, int(hidden) // 64),
        max_position_embeddings=int(sd[f"{prefix}positional_embedding"].shape[0]),
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        projection_dim=int(projection.shape[1]) if projection is not None else int(hidden),
    )


def open_clip_layers(sd: dict[str, torch.Tensor], prefix: str) -> int:
    return 1 + _max_index(sd, rf"{re.escape(prefix)}transformer\.resblocks\.(\d+)\.")


def original_config(sd: dict[str, torch.Tensor], unet_params: dict) -> dict:
    """An ldm-yaml-shaped dict, as diffusers' config helpers expect."""
    params = {k: v for k, v in unet_params.items() if k != "family"}
    return {
        "model": {
            "params": {
                "scale_factor": LATENT_SCALE[unet_params["family"]],
                "unet_config": {"params": params},
                "first_stage_config": {"params": {"ddconfig": ldm_vae_ddconfig(sd), "embed_dim": 4}},
            }
        }
    }


@dataclass
class SingleFileModel:
    """What :func:`load_single_file` read: diffusers modules (float32) and how to sample them."""

    family: str
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    text_encoder_2: torch.nn.Module | None
    prediction_type: str
    alphas_cumprod: torch.Tensor
    #: The depth CLIP skip counts ``text_encoder``'s layers on (None: the layers it has).
    text_encoder_depth: int | None = None


def sampling_of(sd: dict[str, torch.Tensor], family: str, name: str) -> tuple[str, torch.Tensor]:
    """``(prediction_type, alphas_cumprod)`` of a checkpoint, read as ComfyUI reads it."""
    acp = scaled_linear_alphas_cumprod()
    if family == SDXL:
        if "edm_mean" in sd or "edm_vpred.sigma_max" in sd:
            raise unsupported_model(
                f"{name} uses a continuous EDM noise schedule (Playground v2.5 or an EDM v-prediction model), not the "
                "1000-step schedule DiffSketch's DDIM sampler and timesteps are defined on"
            )
        if "v_pred" in sd:
            return "v_prediction", rescale_zero_terminal_snr(acp) if "ztsnr" in sd else acp
        return "epsilon", acp
    if family == SD2:
        bias = sd.get(SD2_V_PREDICTION_KEY)
        if bias is not None and float(torch.std(bias.float(), unbiased=False)) > SD2_V_PREDICTION_STD:
            return "v_prediction", acp
    return "epsilon", acp


def load_single_file(path) -> SingleFileModel:
    """Read an SD 1.x / SD 2.x / SDXL ``.safetensors`` checkpoint into float32 diffusers modules."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    name = Path(path).name
    sd = read_state_dict(path)
    params = ldm_unet_params(sd)
    family = params["family"]
    text_encoder, text_encoder_2 = text_encoders(sd, family, path)
    cfg = original_config(sd, params)
    prediction_type, alphas_cumprod = sampling_of(sd, family, name)
    size = (
        SD2_V_PREDICTION_IMAGE_SIZE
        if family == SD2 and prediction_type == "v_prediction"
        else IMAGE_SIZE[family]
    )
    unet_cfg = create_unet_diffusers_config_from_ldm(cfg, sd, image_size=size)
    if family != SD1:
        # 64-channel heads (diffusers calls the head count "attention_head_dim")
        unet_cfg["attention_head_dim"] = [c // 64 for c in unet_cfg["block_out_channels"]]
    vae_cfg = create_vae_diffusers_config_from_ldm(cfg, sd, image_size=size)
    unet = UNet2DConditionModel(**unet_cfg)
    _load_strict(unet, convert_ldm_unet_checkpoint(sd, unet_cfg), "UNet", path, family)
    vae = AutoencoderKL(**vae_cfg)
    _load_strict(vae, convert_ldm_vae_checkpoint(sd, vae_cfg), "VAE", path, family)
    return SingleFileModel(
        family=family,
        unet=unet.float(),
        vae=vae.float(),
        text_encoder=text_encoder.float(),
        text_encoder_2=None if text_encoder_2 is None else text_encoder_2.float(),
        prediction_type=prediction_type,
        alphas_cumprod=alphas_cumprod,
        text_encoder_depth=SD2_TEXT_LAYERS if family == SD2 else None,
    )


def text_encoders(sd, family: str, path):
    """The text encoder(s) ``family`` conditions on, read from a single file's state dict ``sd``:
    CLIP-L (SD 1.x), OpenCLIP ViT-H with every layer the file stores (SD 2.x), CLIP-L and OpenCLIP
    bigG (SDXL)."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    def clip_l(prefix):
        te = CLIPTextModel(clip_text_config(sd, prefix))
        state = convert_ldm_clip_checkpoint(sd, remove_prefix=prefix)
        # position ids are a buffer; CLIP-L's projection is unused (only the hidden states are)
        state = {
            k: v for k, v in state.items() if not k.endswith("position_ids") and "text_projection" not in k
        }
        state = {k: v for k, v in state.items() if not k.startswith("logit_scale")}
        _load_strict(te, _match_prefix(state, te), "CLIP-L text encoder", path, family)
        return te

    if family == SD1:
        return clip_l(CLIP_PREFIX), None
    if family == SD2:
        prefix = next((q for q in OPEN_CLIP_PREFIXES if f"{q}token_embedding.weight" in sd), None)
        if prefix is None:
            raise UnsupportedModelError(
                f"{Path(path).name}: an SD 2.x UNet without its OpenCLIP ViT-H text encoder (cond_stage_model.model...)"
            )
        layers = open_clip_layers(sd, prefix)
        if layers not in (SD2_TEXT_LAYERS - 1, SD2_TEXT_LAYERS):
            raise UnsupportedModelError(
                f"{Path(path).name}: the SD 2.x text encoder has {layers} layers; OpenCLIP ViT-H has "
                f"{SD2_TEXT_LAYERS} (files without the last one have {SD2_TEXT_LAYERS - 1}). Is this a complete SD 2.x "
                "checkpoint?"
            )
        te = CLIPTextModel(open_clip_text_config(sd, prefix))
        # diffusers' converter skips layer 23 (and the projection) under the ldm prefix, as it
        # builds 23-layer encoders; under a prefix of its own it converts every layer there is.
        tower = {"open_clip." + k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        state = convert_open_clip_checkpoint(te, tower, prefix="open_clip.")
        state = {k: v for k, v in state.items() if k != "text_projection.weight"}
        _load_strict(te, _match_prefix(state, te), "OpenCLIP ViT-H text encoder", path, family)
        return te, None
    if f"{SDXL_CLIP_L_PREFIX}text_model.embeddings.token_embedding.weight" not in sd:
        raise unsupported_model(
            f"{Path(path).name} has an SDXL UNet but no CLIP-L text encoder (conditioner.embedders.0.transformer): an "
            "SDXL refiner, or a UNet-only file"
        )
    if f"{SDXL_CLIP_G_PREFIX}token_embedding.weight" not in sd:
        raise UnsupportedModelError(
            f"{Path(path).name}: an SDXL UNet without its OpenCLIP bigG text encoder (conditioner.embedders.1.model...)"
        )
    te2 = CLIPTextModelWithProjection(open_clip_text_config(sd, SDXL_CLIP_G_PREFIX))
    state = convert_open_clip_checkpoint(te2, sd, prefix=SDXL_CLIP_G_PREFIX)
    _load_strict(te2, _match_prefix(state, te2), "OpenCLIP bigG text encoder", path, family)
    return clip_l(SDXL_CLIP_L_PREFIX), te2


def _match_prefix(state: dict, module) -> dict:
    """transformers >= 5 names CLIPTextModel's keys without "text_model." (CLIPTextModelWithProjection
    keeps it): name the converted weights the way ``module`` does."""
    wants_prefix = any(k.startswith("text_model.") for k in module.state_dict())
    out = {}
    for k, v in state.items():
        if k.startswith("text_model.") and not wants_prefix:
            k = k.removeprefix("text_model.")
        elif wants_prefix and k.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
            k = "text_model." + k
        out[k] = v
    return out


def _load_strict(module, state, what, path, family):
    state = {k: v.float() for k, v in state.items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise UnsupportedModelError(
            f"{Path(path).name}: the {what} weights do not fit an {family_name(family)} layout "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}). "
            f"Is this a complete {family_name(family)} checkpoint?"
        )


__all__ = ["SingleFileModel", "load_single_file", "read_state_dict", "text_encoders"]
