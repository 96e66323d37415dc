"""SketchGenerator: shapes, the released-code defect fixes, SD 1.5 sizes, files."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers_spec import random_features, random_sample, sd15_spec, tiny_spec

from diffsketch import fileio
from diffsketch.capture.spec import LAYOUT_DIFFUSERS, FeatureSpec, Tap
from diffsketch.errors import FileFormatError, InvalidInputError
from diffsketch.train.generator import (
    GENERATOR_KIND,
    GeneratorConfig,
    SketchGenerator,
    load_generator,
    parameter_count,
    parameter_report,
    read_generator_header,
    save_generator,
)

TIMESTEPS = (1, 501, 941)
SMALL = dict(lower_dim=32, higher_dim=16, lower_groups=4, higher_groups=4, fusion_channels=(64, 32, 16))


def tiny_generator(seed=0, **overrides) -> SketchGenerator:
    torch.manual_seed(seed)
    spec = tiny_spec()
    return SketchGenerator(spec, GeneratorConfig.from_spec(spec, len(TIMESTEPS), **{**SMALL, **overrides}))


def test_tiny_forward_shape_and_sizes_follow_input():
    gen = tiny_generator()
    for width, height in [(64, 64), (96, 64)]:
        unet, vae, rgb = random_features(gen.spec, width, height, TIMESTEPS)
        out = gen(unet, vae, rgb)
        assert out.shape == (1, 1, height, width)
        assert torch.isfinite(out).all()


def test_forward_sample_and_fp16_features():
    gen = tiny_generator()
    sample = random_sample(gen.spec, n_timesteps=3).to(dtype=torch.float16)
    out = gen.forward_sample(sample)
    assert out.shape == (1, 1, 64, 64) and out.dtype == torch.float32


def test_every_parameter_receives_a_nonzero_gradient():
    # The released code left the lower aggregation and the VAE reductions untrained (docs/method.md §4).
    for use_vae in (True, False):
        gen = tiny_generator(use_vae=use_vae)
        unet, vae, rgb = random_features(gen.spec, 64, 64, TIMESTEPS, seed=1)
        target = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(2))
        F.mse_loss(gen(unet, vae, rgb), target).backward()
        params = dict(gen.named_parameters())
        assert any(n.startswith("lower.") for n in params)
        if use_vae:
            assert any(n.startswith("vae_reductions.") for n in params)
        dead = [n for n, p in params.items() if p.grad is None or not bool(p.grad.abs().gt(0).any())]
        assert dead == [], f"parameters without gradient (use_vae={use_vae}): {dead}"


@torch.no_grad()
def test_lower_level_and_both_cfg_branches_reach_the_output():
    gen = tiny_generator().eval()
    unet, vae, rgb = random_features(gen.spec, 64, 64, TIMESTEPS, seed=3)
    base = gen(unet, vae, rgb)
    lowest = gen.config.lower_taps[0]  # an 8x-downsampled tap, only seen by the lower level
    assert gen.spec.unet[lowest].log2_scale == -3
    for branch in (0, 1):
        changed = {t: [x.clone() for x in xs] for t, xs in unet.items()}
        changed[TIMESTEPS[1]][lowest][branch] += 3.0 * torch.randn_like(changed[TIMESTEPS[1]][lowest][branch])
        assert (gen(changed, vae, rgb) - base).abs().max() > 1e-4, f"branch {branch}"


@torch.no_grad()
def test_timesteps_are_consumed_in_ascending_order():
    gen = tiny_generator().eval()
    with torch.no_grad():  # distinct mixing weights, so the order matters
        gen.lower.mixing_logits.copy_(torch.linspace(-1, 1, gen.lower.n_mixing_weights))
        gen.higher.mixing_logits.copy_(torch.linspace(1, -1, gen.higher.n_mixing_weights))
    unet, vae, rgb = random_features(gen.spec, 64, 64, TIMESTEPS, seed=4)
    shuffled = {t: unet[t] for t in reversed(TIMESTEPS)}
    as_list = [unet[t] for t in TIMESTEPS]
    reversed_list = list(reversed(as_list))
    out = gen(unet, vae, rgb)
    torch.testing.assert_close(gen(shuffled, vae, rgb), out)
    torch.testing.assert_close(gen(as_list, vae, rgb), out)
    assert (gen(reversed_list, vae, rgb) - out).abs().max() > 1e-5


def test_input_checks():
    gen = tiny_generator()
    unet, vae, rgb = random_features(gen.spec, 64, 64, TIMESTEPS)
    with pytest.raises(InvalidInputError, match="built for 3 timesteps"):
        gen({t: unet[t] for t in TIMESTEPS[:2]}, vae, rgb)
    bad = dict(unet)
    bad[1] = [x[:1] for x in unet[1]]
    with pytest.raises(InvalidInputError, match="uncond and cond"):
        gen(bad, vae, rgb)
    with pytest.raises(InvalidInputError, match="VAE taps"):
        gen(unet, vae[:-1], rgb)
    with pytest.raises(InvalidInputError, match="rgb"):
        gen(unet, vae, None)


def test_config_derivation_and_validation():
    spec = tiny_spec()
    cfg = GeneratorConfig.from_spec(spec, 3)
    assert cfg.higher_taps == (6, 7) and cfg.lower_taps == tuple(range(6))
    assert cfg.fusion_channels == (256, 128, 64)
    assert cfg.vae_reduce_channels == (8,) * len(spec.vae)
    assert GeneratorConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert GeneratorConfig.from_spec(spec, 3, n_higher_taps=4).higher_taps == (4, 5, 6, 7)
    with pytest.raises(InvalidInputError, match="GroupNorm"):
        GeneratorConfig.from_spec(spec, 3, lower_dim=36, lower_groups=8)
    with pytest.raises(InvalidInputError, match="unknown"):
        GeneratorConfig.from_spec(spec, 3, no_such_field=1)


def test_other_layouts_need_no_new_code():
    # An SDXL-shaped UNet (3 levels, 1280/640/320) and a VAE with an x4 scale factor.
    spec = FeatureSpec(
        layout=LAYOUT_DIFFUSERS,
        unet=tuple(
            Tap(f"up_blocks.{i // 3}.resnets.{i % 3}.conv2", c, s)
            for i, (c, s) in enumerate([(40, -2)] * 3 + [(20, -1)] * 3 + [(10, 0)] * 3)
        ),
        vae=tuple(
            Tap(f"v{i}", c, s) for i, (c, s) in enumerate([(16, 0)] * 3 + [(16, 1)] * 2 + [(8, 2)] * 2)
        ),
        rgb=Tap("decoder.conv_out", 3, 2),
        context_dim=64,
        vae_scale_factor=4,
    )
    cfg = GeneratorConfig.from_spec(spec, 2, **{k: v for k, v in SMALL.items() if k != "fusion_channels"})
    assert cfg.higher_taps == (6, 7, 8) and len(cfg.fusion_channels) == 2
    gen = SketchGenerator(spec, cfg)
    unet, vae, rgb = random_features(spec, 48, 32, (1, 21))
    assert gen(unet, vae, rgb).shape == (1, 1, 32, 48)


def test_sd15_shapes_match_the_released_generator():
    spec = sd15_spec()
    assert [(c, h) for c, h, _ in spec.unet_shapes(512, 512)] == [(1280, 8)] * 3 + [(1280, 16)] * 3 + [
        (640, 32)
    ] * 3 + [(320, 64)] * 3
    cfg = GeneratorConfig.from_spec(spec, 13)
    assert cfg.lower_taps == tuple(range(9)) and cfg.higher_taps == (9, 10, 11)
    assert cfg.vae_reduce_channels == (16,) * 8 + (8,) * 6
    assert cfg.fusion_channels == (256, 128, 64)
    with torch.device("meta"):
        gen = SketchGenerator(spec, cfg)
    # docs/method.md §4: lower input 13 x 9600 = 124800 channels, 117 mixing weights.
    assert 13 * sum(gen.lower.tap_channels) == 124800 and gen.lower.n_mixing_weights == 117
    # Higher: 3 x 320 per timestep and 39 weights, plus the fix's one extra entry for the lower output.
    assert sum(gen.higher.tap_channels) == 960 and gen.higher.extra_channels == (960,)
    assert gen.higher.n_mixing_weights == 39 + 1
    # Fusion-decoder widths (docs/method.md §4): 848 -> 256, 304 -> 128, 152 -> 64, final 91 -> 64 -> 1.
    assert [s[1].in_channels for s in gen.fusion_stages] == [848, 304, 152]
    assert gen.final[0][0].in_channels == 91
    report = parameter_report(spec, 13)
    print("SD1.5 generator parameters:", report)
    # Counts measured on the released code (docs/method.md §4).
    assert report["vae_reductions"] == 97_168
    assert report["fusion_decoder"] == 2_445_057
    released_higher = report["higher_aggregation"] - parameter_count(gen.higher.extra_blocks) - 1
    assert released_higher == 826_023
    assert abs(report["lower_aggregation"] - 18.30e6) < 0.01e6
    assert 21e6 < report["total"] < 23e6
    assert report["total"] == sum(v for k, v in report.items() if k != "total")


@torch.no_grad()
def test_sd15_channels_forward_at_small_size():
    spec = sd15_spec()
    gen = SketchGenerator(spec, GeneratorConfig.from_spec(spec, 2)).eval()
    unet, vae, rgb = random_features(spec, 128, 128, (1, 501))
    out = gen(unet, vae, rgb)
    assert out.shape == (1, 1, 128, 128) and torch.isfinite(out).all()


def test_save_load_round_trip(tmp_path):
    gen = tiny_generator(seed=5).eval()
    unet, vae, rgb = random_features(gen.spec, 64, 64, TIMESTEPS, seed=6)
    meta = {"steps_done": 7, "base_model": "abc123", "training": {"lr": 1e-4}}
    path = save_generator(tmp_path / "style.safetensors", gen, meta)
    loaded = load_generator(path, expected_spec=tiny_spec()).eval()
    assert loaded.meta == meta and loaded.config == gen.config and loaded.spec.is_compatible(gen.spec)
    with torch.no_grad():
        torch.testing.assert_close(loaded(unet, vae, rgb), gen(unet, vae, rgb), rtol=0, atol=0)
    header = read_generator_header(path)
    assert header["kind"] == GENERATOR_KIND and header["spec_fingerprint"] == gen.spec.fingerprint()


def test_load_rejects_wrong_kind_version_and_spec(tmp_path):
    gen = tiny_generator()
    path = save_generator(tmp_path / "g.safetensors", gen)
    other = sd15_spec()
    with pytest.raises(FileFormatError, match="different model layout"):
        load_generator(path, expected_spec=other)
    fileio.save_tensors(tmp_path / "f.safetensors", {"x": torch.zeros(1)}, "features", 1, {})
    with pytest.raises(FileFormatError, match="not a 'generator'"):
        load_generator(tmp_path / "f.safetensors")
    header = {k: v for k, v in read_generator_header(path).items() if k not in ("format", "kind", "version")}
    fileio.save_tensors(tmp_path / "v.safetensors", gen.state_dict(), GENERATOR_KIND, 99, header)
    with pytest.raises(FileFormatError, match="version"):
        load_generator(tmp_path / "v.safetensors")
    state = {k: v for k, v in gen.state_dict().items() if not k.startswith("final.")}
    header.pop("checksum")
    fileio.save_tensors(tmp_path / "w.safetensors", state, GENERATOR_KIND, 1, header)
    with pytest.raises(FileFormatError, match="do not fit this SketchGenerator.*missing 5 tensors"):
        load_generator(tmp_path / "w.safetensors")
