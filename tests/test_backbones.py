"""Backbone families: the taps read from real SD 1.x / SD 2.x / SDXL configs (built on the meta
device, no memory), which checkpoints are refused, and the family a spec records."""

from __future__ import annotations

import pytest
import torch
from helpers_spec import sd2_spec, sd15_spec, sdxl_spec

from diffsketch.capture.spec import (
    SD1,
    SD2,
    SDXL,
    FeatureSpec,
    check_family,
    family_from_ldm_config,
    feature_spec_from_diffusers,
)
from diffsketch.errors import UnsupportedModelError

# The published diffusers configs (unet/config.json, vae/config.json), reduced to the fields
# that differ from UNet2DConditionModel's / AutoencoderKL's defaults.
SD15_UNET = dict(
    sample_size=64,
    cross_attention_dim=768,
    attention_head_dim=8,
    block_out_channels=(320, 640, 1280, 1280),
)
SD21_UNET = dict(
    sample_size=96,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    block_out_channels=(320, 640, 1280, 1280),
    use_linear_projection=True,
    upcast_attention=True,
)
SDXL_UNET = dict(
    sample_size=128,
    cross_attention_dim=2048,
    attention_head_dim=(5, 10, 20),
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SD_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
)


def meta_spec(unet_config: dict, family: str, pooled_dim: int = 0) -> FeatureSpec:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**SD_VAE)
    return feature_spec_from_diffusers(unet, vae, family, pooled_dim)


def test_sdxl_taps_from_the_real_config():
    spec = meta_spec(SDXL_UNET, SDXL, 1280)
    # 9 decoder ResBlocks: three per level at 1280 / 640 / 320 channels, latent/4, /2, /1
    assert [(t.channels, t.log2_scale) for t in spec.unet] == [(1280, -2)] * 3 + [(640, -1)] * 3 + [
        (320, 0)
    ] * 3
    assert [t.name for t in spec.unet][::3] == [
        "up_blocks.0.resnets.0.conv2",
        "up_blocks.1.resnets.0.conv2",
        "up_blocks.2.resnets.0.conv2",
    ]
    assert len(spec.vae) == 14 and spec.rgb.log2_scale == 3 and spec.vae_scale_factor == 8
    assert spec.context_dim == 2048 and spec.pooled_dim == 1280 and spec.family == SDXL
    # the hand-written ldm-layout spec the tests use has the same signature
    assert spec.signature() == sdxl_spec().signature()
    # at 1024x1024 the UNet taps are 32, 64 and 128 px
    assert spec.unet_shapes(1024, 1024)[::3] == [(1280, 32, 32), (640, 64, 64), (320, 128, 128)]


def test_sd2_taps_from_the_real_config():
    spec = meta_spec(SD21_UNET, SD2)
    sd1 = meta_spec(SD15_UNET, SD1)
    # the same 12 taps as SD 1.x, another context width and family
    assert [(t.channels, t.log2_scale) for t in spec.unet] == [(t.channels, t.log2_scale) for t in sd1.unet]
    assert len(spec.unet) == 12 and spec.context_dim == 1024 and spec.pooled_dim == 0
    assert spec.signature() == sd2_spec().signature()
    assert sd1.signature() == sd15_spec().signature()
    assert spec.fingerprint() != sd1.fingerprint()


def test_sd1_fingerprint_is_unchanged_by_the_family_fields():
    """Files written before families existed recorded this fingerprint for SD 1.5's layout."""
    spec = sd15_spec()
    assert "family" not in spec.signature() and "pooled_dim" not in spec.signature()
    old = FeatureSpec.from_json(
        spec.to_json().replace('"family": "sd1", ', "").replace('"pooled_dim": 0, ', "")
    )
    assert old.family == SD1 and old == spec and old.fingerprint() == spec.fingerprint()
    assert sdxl_spec().signature()["family"] == SDXL


@pytest.mark.parametrize(
    "config, family",
    [
        ({"context_dim": 768, "adm_in_channels": None, "in_channels": 4}, SD1),
        ({"context_dim": 1024, "adm_in_channels": None, "in_channels": 4}, SD2),
        ({"context_dim": 2048, "adm_in_channels": 2816, "in_channels": 4}, SDXL),
    ],
)
def test_family_of_supported_ldm_configs(config, family):
    assert family_from_ldm_config(config) == family


@pytest.mark.parametrize(
    "config, words",
    [
        ({"context_dim": 1280, "adm_in_channels": 2560, "in_channels": 4}, "SDXL refiner"),
        ({"context_dim": 768, "in_channels": 9}, "inpainting"),
        ({"context_dim": 2048, "adm_in_channels": 2816, "in_channels": 9}, "inpainting"),
        ({"context_dim": 1024, "adm_in_channels": 768, "use_temporal_attention": True}, "video"),
        ({"context_dim": 1024, "adm_in_channels": 1536, "in_channels": 4}, "unCLIP"),
        ({"context_dim": 4096, "in_channels": 4}, "matches none"),
    ],
)
def test_unsupported_ldm_configs_are_named(config, words):
    with pytest.raises(UnsupportedModelError, match=words) as e:
        family_from_ldm_config(config, "the MODEL")
    assert "SD 1.x, SD 2.x" in str(e.value) and "SDXL" in str(e.value)


def test_family_mismatch_names_both():
    check_family(SDXL, SDXL, "a", "b")
    with pytest.raises(UnsupportedModelError, match="the generator is SDXL but the model is SD 1.x"):
        check_family(SDXL, SD1, "the generator", "the model")
