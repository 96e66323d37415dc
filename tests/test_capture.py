"""Tier 1: feature capture on tiny random-weight diffusers models."""

import pytest
import torch
from compare import relative_error

from diffsketch.backends.base import dit_weights_fingerprint, weights_fingerprint
from diffsketch.capture.hooks import UNetRecorder
from diffsketch.capture.sample import CapturedSample
from diffsketch.capture.sampling import SamplingSettings, fast_schedule
from diffsketch.capture.spec import FeatureSpec, Tap, feature_spec_from_diffusers
from diffsketch.capture.timesteps import PAPER_TIMESTEPS, ddim_grid, plan_timesteps
from diffsketch.errors import CaptureError, InvalidInputError, UnsupportedModelError

W = H = 64


@pytest.fixture(scope="module")
def sample(tiny_backend):
    return tiny_backend.sample(
        "a photo of a horse in mud", SamplingSettings(seed=7, steps=50, cfg=5.0, width=W, height=H)
    )


def test_spec_read_from_model(tiny_backend):
    spec = tiny_backend.spec
    # 4 up blocks x 3 resnets; channels read from the model, widest level first
    assert len(spec.unet) == 12
    assert [t.channels for t in spec.unet] == [64] * 6 + [32] * 6
    assert [t.log2_scale for t in spec.unet] == [-3] * 3 + [-2] * 3 + [-1] * 3 + [0] * 3
    # VAE: mid 2 + 4 levels x 3 = 14 taps, RGB at 8x the latent
    assert len(spec.vae) == 14
    assert [t.log2_scale for t in spec.vae] == [0] * 5 + [1] * 3 + [2] * 3 + [3] * 3
    assert spec.rgb.channels == 3 and spec.rgb.log2_scale == 3 and spec.vae_scale_factor == 8
    assert spec.context_dim == 32
    assert FeatureSpec.from_json(spec.to_json()) == spec


def test_capture_shapes_and_counts(sample, tiny_backend):
    spec = tiny_backend.spec
    assert sample.timesteps == PAPER_TIMESTEPS
    assert len(sample.unet) == 13
    for feats in sample.unet.values():
        assert len(feats) == 12
        for f, (c, h, w) in zip(feats, spec.unet_shapes(W, H)):
            assert f.shape == (2, c, h, w)
            assert f.dtype == torch.float16 and f.device.type == "cpu"
    assert [tuple(v.shape[1:]) for v in sample.vae] == spec.vae_shapes(W, H)
    assert sample.rgb.shape == (1, 3, H, W) and sample.image.shape == (1, 3, H, W)
    assert 0 <= float(sample.image.min()) and float(sample.image.max()) <= 1
    assert sample.latent.shape == (1, 4, H // 8, W // 8)
    assert sample.meta["unet_evaluations"] == 50


def test_branches_kept_apart(sample):
    for feats in sample.unet.values():
        for f in feats:
            assert not torch.equal(f[0], f[1]), "uncond and cond features must differ for a non-empty prompt"


def test_uncond_branch_matches_empty_prompt_run(tiny_backend):
    """With cond == uncond both branches see the same input, so they must be identical."""
    s = tiny_backend.sample("", SamplingSettings(seed=1, steps=10, timesteps=[1, 501], width=W, height=H))
    for feats in s.unet.values():
        for f in feats:
            torch.testing.assert_close(f[0], f[1])


def test_storage_size_matches_spec(sample, tiny_backend):
    numel = tiny_backend.spec.capture_numel(W, H, len(sample.unet))
    fp32_extra = 2 * 3 * H * W + 4 * (H // 8) * (W // 8)  # image, rgb, latent stay float32
    assert sample.nbytes() == (numel - fp32_extra) * 2 + fp32_extra * 4


def test_sd15_sample_budget():
    """At SD 1.5 512x512 one captured sample (13 timesteps, fp16) must stay under 0.8 GB."""
    unet = [(1280, -3)] * 3 + [(1280, -2)] * 3 + [(640, -1)] * 3 + [(320, 0)] * 3
    vae = [(512, 0)] * 5 + [(512, 1)] * 3 + [(256, 2)] * 3 + [(128, 3)] * 3
    spec = FeatureSpec(
        "ldm",
        tuple(Tap(f"u{i}", c, s) for i, (c, s) in enumerate(unet)),
        tuple(Tap(f"v{i}", c, s) for i, (c, s) in enumerate(vae)),
        Tap("rgb", 3, 3),
        768,
    )
    numel = spec.capture_numel(512, 512, 13)
    fp32 = 2 * 3 * 512 * 512 + 4 * 64 * 64
    nbytes = (numel - fp32) * 2 + fp32 * 4
    assert nbytes < 0.8e9, nbytes


def test_determinism_for_seed(tiny_backend, sample):
    again = tiny_backend.sample(
        "a photo of a horse in mud", SamplingSettings(seed=7, steps=50, width=W, height=H)
    )
    torch.testing.assert_close(again.image, sample.image, rtol=0, atol=0)
    torch.testing.assert_close(again.unet[941][0], sample.unet[941][0], rtol=0, atol=0)
    other = tiny_backend.sample(
        "a photo of a horse in mud", SamplingSettings(seed=8, steps=50, width=W, height=H)
    )
    assert not torch.equal(other.image, sample.image)


def test_timestep_mapping_reports_used():
    plan = plan_timesteps(25)
    assert plan.grid == tuple(ddim_grid(25)) and len(plan.grid) == 25
    assert len(plan.used) == 13 and set(plan.used) <= set(plan.grid)
    assert not plan.exact and "->" in plan.describe()
    assert plan_timesteps(50).exact
    # ldm / ComfyUI grid quirk: 30 steps -> stride 33 -> 31 timesteps
    assert len(ddim_grid(30)) == 31 and ddim_grid(30)[-1] == 991


def test_too_few_steps_is_a_clear_error():
    with pytest.raises(InvalidInputError, match="too few"):
        plan_timesteps(10)


def test_other_step_count_capture(tiny_backend):
    s = tiny_backend.sample("a cat", SamplingSettings(seed=3, steps=20, width=W, height=64 * 2))
    assert s.plan.steps == 20 and len(s.unet) == 13
    assert set(s.timesteps) <= set(ddim_grid(20))
    assert s.image.shape == (1, 3, 128, 64)


@pytest.mark.parametrize("w,h", [(100, 64), (64, 32), (0, 64)])
def test_bad_sizes(tiny_backend, w, h):
    with pytest.raises(InvalidInputError, match="multiple of 64"):
        tiny_backend.sample("x", SamplingSettings(seed=0, width=w, height=h))


def test_fast_schedule_reduces_evaluations(tiny_backend):
    plan = plan_timesteps(50)
    sched = fast_schedule(plan)
    assert sched[0] == 941 and sched[-1] == 1 and len(sched) == 13
    assert 50 / len(sched) >= 3.5
    s = tiny_backend.sample("a dog", SamplingSettings(seed=2, schedule="fast", width=W, height=H))
    assert s.meta["unet_evaluations"] == len(sched)
    assert s.timesteps == PAPER_TIMESTEPS


def test_reduce_hook_stores_vectors(tiny_backend):
    s = tiny_backend.sample(
        "a dog",
        SamplingSettings(seed=2, steps=10, timesteps=ddim_grid(10)),
        decode=False,
        unet_reduce=lambda layer, x: x.mean(dim=(2, 3)),
    )
    assert len(s.unet) == 10 and s.vae == []
    assert s.unet[1][0].shape == (2, 64)


def test_no_hooks_left_after_success_and_failure(tiny_backend):
    unet = tiny_backend.unet

    def hook_count():
        return sum(len(m._forward_hooks) for m in unet.modules())

    before = hook_count()
    tiny_backend.sample("a", SamplingSettings(seed=0, steps=10, timesteps=[1, 501], width=W, height=H))
    assert hook_count() == before

    def boom(step, total):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiny_backend.sample(
            "a", SamplingSettings(seed=0, steps=10, timesteps=[1, 501], width=W, height=H), progress=boom
        )
    assert hook_count() == before


def test_no_vae_hooks_left_when_decoding_raises(tiny_backend):
    vae = tiny_backend.vae

    def hook_count():
        return sum(len(m._forward_hooks) for m in vae.modules())

    before = hook_count()

    def fail(module, inputs, output):
        raise RuntimeError("out of memory in the VAE")

    failing = vae.decoder.up_blocks[1].register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="VAE"):
            tiny_backend.sample(
                "a", SamplingSettings(seed=0, steps=10, timesteps=[1, 501], width=W, height=H)
            )
    finally:
        failing.remove()
    assert hook_count() == before
    # and the next decode captures normally
    assert (
        len(
            tiny_backend.sample(
                "a", SamplingSettings(seed=0, steps=10, timesteps=[1, 501], width=W, height=H)
            ).vae
        )
        > 0
    )


def test_incomplete_capture_is_an_error(tiny_backend):
    rec = UNetRecorder(tiny_backend.spec, [1, 21])
    with pytest.raises(CaptureError, match="did not fire"):
        rec.result()


def test_compiled_model_rejected(tiny_backend):
    from diffsketch.backends.diffusers import DiffusersBackend

    class OptimizedModule(torch.nn.Module):  # same name as torch.compile's wrapper
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    with pytest.raises(UnsupportedModelError, match="torch.compile"):
        DiffusersBackend(OptimizedModule(tiny_backend.unet), tiny_backend.vae, tiny_backend.text_encoder)


def test_non_sd1_unet_rejected():
    with pytest.raises(UnsupportedModelError, match="up_blocks"):
        feature_spec_from_diffusers(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))


def test_features_file_round_trip(sample, tmp_path):
    p = tmp_path / "example.safetensors"
    sample.save(p)
    back = CapturedSample.load(p)
    assert back.spec == sample.spec and back.timesteps == sample.timesteps
    torch.testing.assert_close(back.unet[61][5], sample.unet[61][5])
    torch.testing.assert_close(back.vae[13], sample.vae[13])
    assert back.meta["prompt"] == "a photo of a horse in mud"


def test_weights_fingerprint_ignores_names_order_and_precision_but_not_values():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 1))
    ref = weights_fingerprint(net.parameters())
    assert len(ref) == 16
    # another layout's names and order, loaded in fp16: the same weights, the same hash
    assert weights_fingerprint(reversed([p.half() for p in net.parameters()])) == ref
    with torch.no_grad():
        net[1].weight[0, 0] += 0.5
    assert weights_fingerprint(net.parameters()) != ref


def test_dit_fingerprint_reads_fused_and_split_layouts_alike_but_not_other_weights():
    d = 8
    g = torch.Generator().manual_seed(0)
    q, k, v, mlp_in = (torch.randn(n * d, d, generator=g) for n in (1, 1, 1, 4))
    qkv_bias, shift, scale = torch.randn(3 * d, generator=g), torch.randn(d, d), torch.randn(d, d)
    out, embed = torch.randn(d, 5 * d, generator=g), torch.randn(d, 3, 2, 2, generator=g)
    odd = torch.randn(3 * d + 1, d, generator=g)  # no multiple of d: read whole in both
    # ComfyUI's layout: fused qkv (+ the MLP input, Flux's single blocks), (shift, scale)
    fused = [torch.cat([q, k, v, mlp_in]), qkv_bias, torch.cat([shift, scale]), out, embed, odd]
    # diffusers': split, (scale, shift) swapped by its converter, another order, in fp16
    split = [embed, mlp_in, v, k, q, *qkv_bias.split(d), torch.cat([scale, shift]), out, odd]
    ref = dit_weights_fingerprint(fused, d)
    assert dit_weights_fingerprint([t.half() for t in split], d) == ref
    # the UNet fingerprint (what UNet files record) reads whole tensors, so the layouts differ there
    assert weights_fingerprint(fused) != weights_fingerprint(split)
    # one value changed in q, in scale (the second block of its tensor) or in a tensor read whole
    for i, row in ((0, 0), (2, d), (5, 0)):
        changed = [t.clone() for t in fused]
        changed[i][row, -1] += 0.5
        assert dit_weights_fingerprint(changed, d) != ref
    # the blocks' order inside a tensor is ignored, but not the values' order inside a block
    assert dit_weights_fingerprint([torch.cat([k, q, v, mlp_in]), *fused[1:]], d) == ref
    assert dit_weights_fingerprint([torch.cat([q.flip(1), k, v, mlp_in]), *fused[1:]], d) != ref


def test_backbone_family_is_read_from_the_spec_and_old_specs_are_sd1(tiny_backend, sample):
    import json
    from dataclasses import replace

    from helpers_spec import sd15_spec

    from diffsketch.capture.spec import backbone_family

    spec = tiny_backend.spec
    assert spec.family == "sd1"
    assert backbone_family(spec) == backbone_family(tiny_backend) == backbone_family(sample) == "sd1"
    # specs recorded before the family existed read as SD 1.x, with the same fingerprint as then
    old = json.loads(spec.to_json())
    del old["family"]
    assert FeatureSpec.from_dict(old) == spec and FeatureSpec.from_dict(old).family == "sd1"
    assert sd15_spec().fingerprint() == "cd58ed36db59c97f"  # the value files made earlier record
    # another family is another layout, and an unknown one is refused by name
    other = replace(spec, family="sd9")
    assert not other.is_compatible(spec) and other.fingerprint() != spec.fingerprint()
    with pytest.raises(UnsupportedModelError, match="'sd9'"):
        backbone_family(other)


def test_vae_taps_beyond_float16_range_are_stored_finite(tiny_backend):
    """The SDXL VAE's activations exceed float16's 65504 (it runs in bfloat16 for that): a tap that
    large is stored in bfloat16, not as infinity."""
    spec = tiny_backend.spec
    latent = torch.randn(1, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(0))
    _, _, plain = tiny_backend.decode_with_features(latent)
    tapped = tiny_backend.vae.get_submodule(spec.vae[0].name)
    huge = tapped.register_forward_hook(lambda module, inputs, output: output * 1e6)
    try:
        _, _, features = tiny_backend.decode_with_features(latent)
    finally:
        huge.remove()
    assert float(features[0].float().abs().max()) > 65504
    assert all(bool(torch.isfinite(x).all()) for x in features)
    assert features[0].dtype == torch.bfloat16 and all(x.dtype == torch.float16 for x in plain)
    assert relative_error(features[0], plain[0].float() * 1e6) < 1e-2


def test_vae_store_dtype():
    from diffsketch.capture.hooks import vae_store_dtype

    small, big = torch.ones(2), torch.full((2,), 1e5)
    assert vae_store_dtype(small, torch.float16) == torch.float16
    assert vae_store_dtype(big, torch.float16) == torch.bfloat16
    assert vae_store_dtype(small.bfloat16(), torch.float16) == torch.bfloat16  # lossless, never overflows
    assert vae_store_dtype(big.half(), torch.float16) == torch.float16  # already what the decoder made
    assert vae_store_dtype(big, torch.float32) == torch.float32
