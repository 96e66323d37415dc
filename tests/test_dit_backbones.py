"""Diffusion transformer backbones (Z-Image, SD 3.5, Flux.1): the taps read from the published configs
(built on the meta device), the families, and DiT models DiffSketch refuses."""

from __future__ import annotations

import pytest
import torch
from backbone_configs import (
    FLUX_DEV_TRANSFORMER,
    FLUX_SCHNELL_TRANSFORMER,
    FLUX_VAE,
    SD3_VAE,
    SD35_LARGE_TRANSFORMER,
    SD35_MEDIUM_TRANSFORMER,
    ZIMAGE_TURBO_TRANSFORMER,
    ZIMAGE_VAE,
)

from diffsketch.capture.spec import (
    FLUX,
    SD35,
    ZIMAGE,
    FeatureSpec,
    default_dit_blocks,
    feature_spec_from_diffusers,
    feature_spec_from_diffusers_dit,
)
from diffsketch.errors import UnsupportedModelError


def meta_dit(cls_name: str, config: dict, vae_config: dict):
    import diffusers

    with torch.device("meta"):
        return getattr(diffusers, cls_name)(**config), diffusers.AutoencoderKL(**vae_config)


@pytest.mark.parametrize(
    "cls_name, config, vae, family, blocks, hidden, context, pooled",
    [
        (
            "ZImageTransformer2DModel",
            ZIMAGE_TURBO_TRANSFORMER,
            ZIMAGE_VAE,
            ZIMAGE,
            (7, 11, 15, 18, 22),
            3840,
            2560,
            0,
        ),
        (
            "SD3Transformer2DModel",
            SD35_MEDIUM_TRANSFORMER,
            SD3_VAE,
            SD35,
            (6, 9, 12, 15, 18),
            1536,
            4096,
            2048,
        ),
        (
            "SD3Transformer2DModel",
            SD35_LARGE_TRANSFORMER,
            SD3_VAE,
            SD35,
            (9, 14, 19, 23, 28),
            2432,
            4096,
            2048,
        ),
        *[
            ("FluxTransformer2DModel", config, FLUX_VAE, FLUX, (14, 21, 28, 35, 42), 3072, 4096, 768)
            for config in (FLUX_DEV_TRANSFORMER, FLUX_SCHNELL_TRANSFORMER)
        ],
    ],
    ids=["zimage-turbo", "sd35-medium", "sd35-large", "flux-dev", "flux-schnell"],
)
def test_dit_taps_from_the_published_configs(cls_name, config, vae, family, blocks, hidden, context, pooled):
    transformer, vae_model = meta_dit(cls_name, config, vae)
    spec = feature_spec_from_diffusers(transformer, vae_model)
    assert spec == feature_spec_from_diffusers_dit(transformer, vae_model)
    if family == FLUX:  # 19 double-stream blocks, then 38 single-stream ones, as one depth
        names = [
            f"transformer_blocks.{b}" if b < 19 else f"single_transformer_blocks.{b - 19}" for b in blocks
        ]
        assert names == [
            "transformer_blocks.14",
            "single_transformer_blocks.2",
            "single_transformer_blocks.9",
            "single_transformer_blocks.16",
            "single_transformer_blocks.23",
        ]
    else:
        names = [f"{'layers' if family == ZIMAGE else 'transformer_blocks'}.{b}" for b in blocks]
    assert [t.name for t in spec.unet] == names
    # every block tap is one map at latent/2 of the hidden size
    assert {(t.channels, t.log2_scale) for t in spec.unet} == {(hidden, -1)}
    assert spec.family == family and spec.context_dim == context and spec.pooled_dim == pooled
    assert spec.latent_channels == 16 and spec.vae_scale_factor == 8 and spec.size_multiple == 16
    # the 16-channel VAE decoder is read as SD's: mid 2 + 4 levels x 3, RGB at x8
    assert len(spec.vae) == 14 and spec.rgb.log2_scale == 3
    assert spec.vae[0].name == "decoder.mid_block.resnets.0" and spec.vae[0].channels == 512
    assert spec.unet_shapes(1024, 1024) == [(hidden, 64, 64)] * len(blocks)
    assert spec.unet_shapes(1024, 768)[0] == (hidden, 48, 64)
    # the family is part of the signature, so generators are refused across families
    assert spec.signature()["family"] == family
    assert FeatureSpec.from_json(spec.to_json()) == spec


def test_the_default_blocks_sit_mid_depth():
    for n in (24, 30, 38, 19 + 38):
        blocks = default_dit_blocks(n)
        assert len(blocks) == 5 and blocks[0] >= n // 4 and blocks[-1] <= 3 * n // 4 and blocks[-1] < n - 1
    # a shallow (tiny) model still gets distinct blocks, never its last
    assert default_dit_blocks(4) == (1, 2)
    assert default_dit_blocks(2) == (0,)


def test_medium_and_large_have_different_fingerprints():
    medium = feature_spec_from_diffusers(*meta_dit("SD3Transformer2DModel", SD35_MEDIUM_TRANSFORMER, SD3_VAE))
    large = feature_spec_from_diffusers(*meta_dit("SD3Transformer2DModel", SD35_LARGE_TRANSFORMER, SD3_VAE))
    assert medium.fingerprint() != large.fingerprint() and not medium.is_compatible(large)


def test_an_unsupported_dit_is_refused_naming_what_is_supported():
    from diffusers import AutoencoderKL, Flux2Transformer2DModel

    with torch.device("meta"):
        flux2 = Flux2Transformer2DModel(
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            axes_dims_rope=(4, 4, 4, 4),
        )
        vae = AutoencoderKL(**SD3_VAE)
    with pytest.raises(UnsupportedModelError, match=r"Flux\.2 transformer.*Z-Image.*SD 3\.5.*Flux\.1"):
        feature_spec_from_diffusers(flux2, vae)


def test_a_flux_fill_or_depth_model_is_refused_naming_it():
    transformer, vae = meta_dit(
        "FluxTransformer2DModel", FLUX_DEV_TRANSFORMER | dict(in_channels=384), FLUX_VAE
    )
    with pytest.raises(UnsupportedModelError, match=r"takes 384 input channels.*Fill, Depth or Canny"):
        feature_spec_from_diffusers(transformer, vae)


def test_a_dit_with_another_vae_is_refused():
    from backbone_configs import SD_VAE

    transformer, _ = meta_dit("SD3Transformer2DModel", SD35_MEDIUM_TRANSFORMER, SD3_VAE)
    with torch.device("meta"):
        from diffusers import AutoencoderKL

        sd_vae = AutoencoderKL(**SD_VAE)
    with pytest.raises(UnsupportedModelError, match="4-channel latents.*takes 16"):
        feature_spec_from_diffusers(transformer, sd_vae)
