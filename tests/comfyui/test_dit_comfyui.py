"""Tier 2: the ComfyUI backend on Z-Image and SD 3.5 (random weights in ComfyUI's formats, loaded
as the user loads them: see dit_checkpoints.py): family detection, refusals, capture of the DiT
blocks' image tokens with the hooks gone on every exit path, one branch at cfg 1.

The Z-Image text encoder (Qwen3-4B, 8 GB) is not built: its CLIP here is ComfyUI's own Z-Image
text-encoder class built on the meta device (what the family check reads), and sampling is given
Qwen3-shaped conditioning directly.
"""

from __future__ import annotations

import types

import pytest
import torch
from comfy_harness import hook_count

from diffsketch.backends.conditioning import Conditioning
from diffsketch.errors import UnsupportedModelError

SIZE = dict(width=64, height=64)


@pytest.fixture(scope="module")
def zimage(comfy_inprocess, zimage_files):
    """``(model, clip, vae)`` as UNETLoader, CLIPLoader (type lumina2) and VAELoader give them."""
    import comfy.model_management
    import comfy.sd
    import comfy.text_encoders.z_image
    import comfy.utils

    model_path, vae_path = zimage_files
    model = comfy.sd.load_diffusion_model(str(model_path))
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(vae_path)))
    clip = types.SimpleNamespace(cond_stage_model=comfy.text_encoders.z_image.te()(device="meta"))
    yield model, clip, vae
    del model, vae
    comfy.model_management.unload_all_models()


@pytest.fixture(scope="module")
def sd35(comfy_inprocess, sd35_checkpoint):
    from comfy_harness import loaded_checkpoint

    with loaded_checkpoint(sd35_checkpoint) as loaded:
        yield loaded


def qwen3_conditioning(seed: int, tokens: int = 12) -> Conditioning:
    """A Z-Image caption as Qwen3-4B's hidden states would give it: [1, tokens, 2560]."""
    g = torch.Generator().manual_seed(seed)
    return Conditioning(torch.randn(1, tokens, 2560, generator=g), None)


def test_files_are_detected_as_zimage_and_sd35(comfy_inprocess, zimage, sd35):
    backend = comfy_inprocess.nodes.comfy_backend
    model, clip, vae = zimage
    assert type(model.model.model_config).__name__ == "ZImage" and vae.latent_channels == 16
    assert backend.model_family(model) == ("zimage", backend.FLOW_PREDICTION)
    assert backend.clip_family(clip) == "zimage"
    spec = backend.ComfyBackend(model, clip, vae).spec
    assert [(t.name, t.channels, t.log2_scale) for t in spec.unet] == [
        ("layers.0", 3840, -1),
        ("layers.1", 3840, -1),
    ]
    assert (spec.family, spec.context_dim, spec.pooled_dim, spec.latent_channels) == ("zimage", 2560, 0, 16)
    assert len(spec.vae) == 14 and spec.size_multiple == 16

    model, clip, vae = sd35
    assert type(model.model.model_config).__name__ == "SD3" and vae.latent_channels == 16
    assert backend.model_family(model) == ("sd35", backend.FLOW_PREDICTION)
    assert backend.clip_family(clip) == "sd35"
    spec = backend.ComfyBackend(model, clip, vae).spec
    assert [(t.name, t.channels, t.log2_scale) for t in spec.unet] == [
        ("joint_blocks.1", 256, -1),
        ("joint_blocks.2", 256, -1),
    ]
    assert (spec.family, spec.context_dim, spec.pooled_dim, spec.latent_channels) == ("sd35", 4096, 2048, 16)


def test_other_families_and_mixed_parts_are_refused_by_name(comfy_inprocess, zimage, sd35, loaded_checkpoint):
    ComfyBackend = comfy_inprocess.nodes.comfy_backend.ComfyBackend
    z_model, z_clip, z_vae = zimage
    s_model, s_clip, s_vae = sd35
    sd1_model, sd1_clip, sd1_vae = loaded_checkpoint
    for parts, names in (
        ((z_model, s_clip, z_vae), ("SD 3.5", "Z-Image")),
        ((s_model, z_clip, s_vae), ("Z-Image", "SD 3.5")),
        ((sd1_model, s_clip, sd1_vae), ("SD 3.5", "SD 1.x")),
        ((s_model, sd1_clip, s_vae), ("SD 1.x", "SD 3.5")),
    ):
        with pytest.raises(UnsupportedModelError, match="same backbone family") as e:
            ComfyBackend(*parts)
        assert all(name in str(e.value) for name in names), str(e.value)
    # the SD VAE (4 latent channels) with a 16-channel DiT
    with pytest.raises(UnsupportedModelError, match="4-channel latents but the Z-Image MODEL takes 16"):
        ComfyBackend(z_model, z_clip, sd1_vae)
    # a DiT patched onto a schedule that is not the discrete flow one
    import comfy.model_sampling

    class Discrete(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass

    patched = s_model.clone()
    patched.add_object_patch("model_sampling", Discrete(s_model.model.model_config))
    with pytest.raises(UnsupportedModelError, match="SD 3.5.*not the discrete 1000-step flow-matching"):
        ComfyBackend(patched, s_clip, s_vae)
    # a flow shift patch (ModelSamplingSD3, as the templates use) is taken, and its sigmas used
    import comfy_extras.nodes_model_advanced as advanced

    (shifted,) = advanced.ModelSamplingSD3().patch(s_model, shift=6.0)
    assert ComfyBackend(shifted, s_clip, s_vae).spec.family == "sd35"


def capture(backend, cond, uncond, cfg, schedule, timesteps, progress=None, seed=2):
    """The backend's sampling primitives (``_denoise``, ``_decode``) with capture on the flow grid
    ``schedule`` (descending indices): ``(image, raw latent, {t: [map per tap]}, VAE taps)``; one
    branch (cond) at cfg 1, both otherwise."""
    from diffsketch.backends.base import make_noise
    from diffsketch.capture.hooks import COND, UNCOND, UNetRecorder

    branches = (COND,) if cfg == 1 else (UNCOND, COND)
    recorder = UNetRecorder(backend.spec, timesteps, torch.float32, branches=branches)
    lh, lw = backend.spec.latent_size(SIZE["width"], SIZE["height"])
    noise = make_noise(seed, (1, 16, lh, lw))
    with torch.inference_mode():  # as inside a ComfyUI prompt
        latent = backend._denoise(noise, cond, uncond, cfg, schedule, recorder, progress)
        image, _, vae = backend._decode(latent, True, torch.float32, "cpu")
    return image, latent, recorder.result(), vae, noise


#: ComfyUI's "simple" schedule for 4 steps on a 1000-entry flow table, as the sampler walks it.
SCHEDULE = [999, 749, 499, 249]


def test_sd35_captures_both_branches_with_cfg_and_leaves_no_hooks(comfy_inprocess, sd35):
    import comfy.model_management as mm

    model, clip, vae = sd35
    backend = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)
    cond, uncond = backend.encode_prompt("a cat"), backend.encode_prompt("")
    assert tuple(cond.context.shape) == (1, 77, 4096) and tuple(cond.pooled.shape) == (1, 2048)
    wrappers_before = {k: dict(v) for k, v in model.wrappers.items()}
    image, latent, unet, feats, _ = capture(backend, cond, uncond, 4.0, SCHEDULE, (249, 749))
    assert hook_count(model, vae) == 0
    assert {k: dict(v) for k, v in model.wrappers.items()} == wrappers_before
    assert image.shape == (1, 3, 64, 64) and latent.shape == (1, 16, 8, 8)
    for t in (249, 749):
        assert [tuple(f.shape) for f in unet[t]] == [(2, 256, 4, 4)] * 2
        assert torch.isfinite(unet[t][0]).all()
        # the uncond and cond branches are both captured and differ
        assert not torch.equal(unet[t][0][0], unet[t][0][1])
    assert [tuple(f.shape[1:]) for f in feats] == backend.spec.vae_shapes(64, 64)
    # two timesteps' features differ (the hook follows the sigma to its index)
    assert not torch.equal(unet[249][0], unet[749][0])

    def fail(step, total):
        if step == 2:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        capture(backend, cond, uncond, 4.0, SCHEDULE, (249, 749), progress=fail)
    assert hook_count(model, vae) == 0

    def interrupt(step, total):
        if step == 2:
            mm.interrupt_current_processing(True)

    try:
        with pytest.raises(mm.InterruptProcessingException):
            capture(backend, cond, uncond, 4.0, SCHEDULE, (249, 749), progress=interrupt)
    finally:
        mm.interrupt_current_processing(False)
    assert hook_count(model, vae) == 0
    assert {k: dict(v) for k, v in model.wrappers.items()} == wrappers_before


def test_sd35_capture_matches_diffusers(comfy_inprocess, sd35, sd35_checkpoint):
    """The same checkpoint through diffusers' converters and a sampler written from diffusers'
    pipeline: the same image, latent, block maps (both branches) and VAE taps."""
    from dit_diffusers import diffusers_sd35, reference_sample

    model, clip, vae = sd35
    backend = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)
    cond, uncond = backend.encode_prompt("a cat"), backend.encode_prompt("")
    image, latent, unet, feats, noise = capture(backend, cond, uncond, 4.0, SCHEDULE, (249, 749))
    transformer, dvae = diffusers_sd35(sd35_checkpoint)
    blocks = [int(t.name.rsplit(".", 1)[1]) for t in backend.spec.unet]
    ref = reference_sample("sd35", transformer, dvae, blocks, cond, uncond, 4.0, SCHEDULE, noise)
    check_parity((image, latent, unet, feats), ref)


def check_parity(ours, ref, tol=1e-3):
    from compare import relative_error

    image, latent, unet, feats = ours
    ref_image, ref_latent, ref_unet, ref_feats = ref
    assert relative_error(latent, ref_latent) < tol
    assert relative_error(image, ref_image) < tol
    for t, maps in unet.items():
        for i, (a, b) in enumerate(zip(maps, ref_unet[t], strict=True)):
            assert a.shape == b.shape, (t, i)
            assert relative_error(a, b) < tol, (t, i)
    for i, (a, b) in enumerate(zip(feats, ref_feats, strict=True)):
        assert relative_error(a, b) < tol, i


def test_zimage_at_cfg_1_evaluates_and_captures_one_branch_deterministically(comfy_inprocess, zimage):
    model, clip, vae = zimage
    backend = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)
    batches = []

    def count(module, args, kwargs):
        batches.append(args[0].shape[0])

    handle = model.model.diffusion_model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        a = capture(backend, qwen3_conditioning(0), qwen3_conditioning(1, tokens=3), 1.0, [999, 499], (499,))
    finally:
        handle.remove()
    assert batches == [1, 1]  # two steps, the cond branch alone: ComfyUI's cfg1 shortcut
    assert hook_count(model, vae) == 0
    image, latent, unet, feats, noise = a
    assert [tuple(f.shape) for f in unet[499]] == [(1, 3840, 4, 4)] * 2
    assert not torch.equal(unet[499][0], unet[499][1])
    b = capture(backend, qwen3_conditioning(0), qwen3_conditioning(1, tokens=3), 1.0, [999, 499], (499,))
    assert torch.equal(image, b[0]) and torch.equal(latent, b[1])
    assert all(torch.equal(x, y) for x, y in zip(unet[499], b[2][499], strict=True))


def test_zimage_capture_matches_diffusers(comfy_inprocess, zimage, zimage_files):
    """Caption first (ComfyUI, padded to 32 tokens) or image first (diffusers): the same image
    tokens, hence the same maps, at cfg 1 (one branch) and with CFG (two)."""
    from dit_diffusers import diffusers_zimage, reference_sample

    model, clip, vae = zimage
    backend = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)
    # 40 caption tokens: padded to 64, so the image does not start at a multiple of the sequence
    cond, uncond = qwen3_conditioning(0, tokens=40), qwen3_conditioning(1, tokens=40)
    schedule = [999, 499]
    ours = capture(backend, cond, uncond, 1.0, schedule, (499,))
    ours_cfg = capture(backend, cond, uncond, 3.0, schedule, (999,))
    transformer, dvae = diffusers_zimage(*zimage_files)
    blocks = [int(t.name.rsplit(".", 1)[1]) for t in backend.spec.unet]
    check_parity(
        ours[:4], reference_sample("zimage", transformer, dvae, blocks, cond, uncond, 1.0, schedule, ours[4])
    )
    ref = reference_sample("zimage", transformer, dvae, blocks, cond, uncond, 3.0, schedule, ours_cfg[4])
    check_parity(ours_cfg[:4], ref)
