"""Backbone families: the taps read from real SD 1.x / SD 2.x / SDXL configs (built on the meta
device, no memory), which checkpoints are refused, and the family a spec records."""

from __future__ import annotations

import json

import pytest
import torch
from backbone_configs import SD15_UNET, SD21_UNET, SD_VAE, SDXL_UNET
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


def test_native_size_of_the_published_configs():
    from diffsketch.backends.diffusers import native_image_size

    sizes = [native_image_size(unet, SD_VAE) for unet in (SD15_UNET, SD21_UNET, SDXL_UNET)]
    assert sizes == [512, 768, 1024]


def test_family_native_side_agrees_with_the_published_configs():
    """What a ComfyUI MODEL's family and prediction type give is what those checkpoints' configs say
    (SD 2.1 is the 768-v one); SD 2.x-base is 512."""
    from diffsketch.backends.diffusers import native_image_size
    from diffsketch.capture.spec import family_native_side

    published = [(SD15_UNET, SD1, "epsilon"), (SD21_UNET, SD2, "v_prediction"), (SDXL_UNET, SDXL, "epsilon")]
    for unet, family, prediction in published:
        assert family_native_side(family, prediction) == native_image_size(unet, SD_VAE)
    assert family_native_side(SD2, "epsilon") == 512 and family_native_side(SDXL, "v_prediction") == 1024
    with pytest.raises(UnsupportedModelError, match="flux2"):
        family_native_side("flux2", "epsilon")


def test_size_0_is_the_native_size(tiny_backend):
    native = tiny_backend.native_size
    assert tiny_backend.image_size(0, 0) == (native, native)
    assert tiny_backend.image_size(0, 128) == (native, 128) and tiny_backend.image_size(64, 128) == (64, 128)


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


# --- the generator on SDXL's layout (9 taps, 2 lower levels) --------------------------------------
SMALL_DIMS = dict(lower_dim=32, higher_dim=16, lower_groups=4, higher_groups=4, fusion_channels=(64, 32, 16))


def test_generator_for_sdxl_keeps_the_two_level_split():
    from diffsketch.train.generator import GeneratorConfig, parameter_report

    config = GeneratorConfig.from_spec(sdxl_spec(), 13)
    # lower = the two low-resolution levels (1280 ch at latent/4, 640 at /2), higher = the 320-ch taps
    assert config.lower_taps == (0, 1, 2, 3, 4, 5) and config.higher_taps == (6, 7, 8)
    assert config.fusion_channels == (256, 128, 64)
    sd1 = GeneratorConfig.from_spec(sd15_spec(), 13)
    assert sd1.lower_taps == tuple(range(9)) and sd1.higher_taps == (9, 10, 11)
    report = parameter_report(sdxl_spec(), 13)
    assert report["total"] < parameter_report(sd15_spec(), 13)["total"]  # three fewer lower taps


def test_sdxl_generator_forward_backward_and_low_memory():
    from helpers_spec import random_features, tiny_sdxl_spec

    from diffsketch.train.generator import GeneratorConfig, SketchGenerator

    spec = tiny_sdxl_spec()
    torch.manual_seed(0)
    gen = SketchGenerator(spec, GeneratorConfig.from_spec(spec, 3, **SMALL_DIMS))
    unet, vae, rgb = random_features(spec, width=96, height=64, timesteps=(1, 501, 941), seed=1)
    assert [tuple(x.shape[-2:]) for x in unet[1]][::3] == [(2, 3), (4, 6), (8, 12)]
    out = gen(unet, vae, rgb)
    assert out.shape == (1, 1, 64, 96) and torch.isfinite(out).all()
    out.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.lower.parameters())
    grads = {n: p.grad.clone() for n, p in gen.named_parameters()}
    gen.zero_grad()
    gen.gradient_checkpointing = True
    torch.testing.assert_close(gen(unet, vae, rgb), out.detach())
    gen(unet, vae, rgb).mean().backward()
    for n, p in gen.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


def test_a_generator_refuses_another_family(tmp_path):
    from helpers_spec import random_sample, tiny_sdxl_spec, tiny_spec

    from diffsketch.train.generator import (
        GeneratorConfig,
        SketchGenerator,
        load_generator,
        read_generator_header,
        save_generator,
    )

    spec = tiny_sdxl_spec()
    gen = SketchGenerator(spec, GeneratorConfig.from_spec(spec, 3, **SMALL_DIMS))
    path = save_generator(tmp_path / "sdxl_style.safetensors", gen)
    assert json.loads(read_generator_header(path)["spec"])["family"] == SDXL
    loaded = load_generator(path, expected_spec=tiny_sdxl_spec())
    assert loaded.family == SDXL
    with pytest.raises(
        UnsupportedModelError, match="sdxl_style.safetensors is SDXL but the model in use is SD 1.x"
    ):
        load_generator(path, expected_spec=tiny_spec())
    with pytest.raises(UnsupportedModelError, match="generator is SDXL but the model the sample"):
        loaded.forward_sample(random_sample(tiny_spec()))
    sd2_like = FeatureSpec.from_dict({**json.loads(tiny_sdxl_spec().to_json()), "family": SD2})
    with pytest.raises(UnsupportedModelError, match="SDXL but the model in use is SD 2.x"):
        loaded.check_model(sd2_like)
