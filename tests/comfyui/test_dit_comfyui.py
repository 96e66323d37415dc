"""Tier 2: the ComfyUI backend on Z-Image and SD 3.5 (random weights in ComfyUI's formats, loaded
as the user loads them: see dit_checkpoints.py): family detection, refusals, capture of the DiT
blocks' image tokens with the hooks gone on every exit path, one branch at cfg 1.

Z-Image's text encoder (Qwen3-4B, 8 GB) is loaded only by the prompt-encoding test, at the shrunk
size of qwen3_checkpoint.py; elsewhere its CLIP is ComfyUI's own Z-Image text-encoder class built on
the meta device (what the family check reads), and sampling is given Qwen3-shaped conditioning.
SD 3.5's T5-XXL (not in the checkpoint) is loaded only by its prompt-encoding test, at the shrunk
size of t5_checkpoint.py.
"""

from __future__ import annotations

import types

import pytest
import torch
from comfy_harness import hook_count, random_loss_models, run_train_node
from tiny_models import tiny_generator

from diffsketch.backends.conditioning import Conditioning
from diffsketch.capture.sampling import SamplingSettings
from diffsketch.errors import UnsupportedModelError

SIZE = dict(width=64, height=64)


def load_zimage(files):
    """``(model, clip, vae)`` as UNETLoader, CLIPLoader (type lumina2) and VAELoader give them:
    5 GB in float32 on the CPU, so the tests load it each and let it go."""
    import comfy.sd
    import comfy.text_encoders.z_image
    import comfy.utils

    model_path, vae_path = files
    model = comfy.sd.load_diffusion_model(str(model_path))
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(vae_path)))
    clip = types.SimpleNamespace(cond_stage_model=comfy.text_encoders.z_image.te()(device="meta"))
    return model, clip, vae


@pytest.fixture
def zimage(comfy_inprocess, zimage_files):
    yield load_zimage(zimage_files)
    release()


def release():
    import gc

    import comfy.model_management

    comfy.model_management.unload_all_models()
    gc.collect()


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


def settings(cfg: float, steps: int = 4, timesteps=(249, 749), seed: int = 2) -> SamplingSettings:
    return SamplingSettings(seed=seed, steps=steps, cfg=cfg, timesteps=timesteps, **SIZE)


def test_sd35_captures_both_branches_with_cfg_and_leaves_no_hooks(comfy_inprocess, sd35):
    import comfy.model_management as mm

    model, clip, vae = sd35
    backend = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)
    cond = backend.encode_prompt("a cat")
    assert tuple(cond.context.shape) == (1, 77, 4096) and tuple(cond.pooled.shape) == (1, 2048)
    wrappers_before = {k: dict(v) for k, v in model.wrappers.items()}
    with torch.inference_mode():  # as inside a ComfyUI prompt
        a = backend.sample("a cat", settings(4.0))
    assert hook_count(model, vae) == 0
    assert {k: dict(v) for k, v in model.wrappers.items()} == wrappers_before
    assert a.timesteps == (249, 749) and a.meta["branches"] == 2
    assert a.image.shape == (1, 3, 64, 64) and a.latent.shape == (1, 16, 8, 8)
    for t in a.timesteps:
        assert [tuple(f.shape) for f in a.unet[t]] == [(2, 256, 4, 4)] * 2
        assert torch.isfinite(a.unet[t][0].float()).all()
        # the uncond and cond branches are both captured and differ
        assert not torch.equal(a.unet[t][0][0], a.unet[t][0][1])
    assert [tuple(f.shape[1:]) for f in a.vae] == backend.spec.vae_shapes(64, 64)
    # two timesteps' features differ (the hook follows the sigma to its index)
    assert not torch.equal(a.unet[249][0], a.unet[749][0])

    def fail(step, total):
        if step == 2:
            raise RuntimeError("boom")

    with torch.inference_mode(), pytest.raises(RuntimeError, match="boom"):
        backend.sample("a cat", settings(4.0), progress=fail)
    assert hook_count(model, vae) == 0

    def interrupt(step, total):
        if step == 2:
            mm.interrupt_current_processing(True)

    try:
        with torch.inference_mode(), pytest.raises(mm.InterruptProcessingException):
            backend.sample("a cat", settings(4.0), progress=interrupt)
    finally:
        mm.interrupt_current_processing(False)
    assert hook_count(model, vae) == 0
    assert {k: dict(v) for k, v in model.wrappers.items()} == wrappers_before


def test_sd35_fit_conditions_node_keeps_the_pooled_embedding(comfy_inprocess, sd35):
    """SD 3.5's model takes a pooled embedding (CLIP-L 768 + CLIP-G 1280) besides the context, so
    Fit Conditions fits it with the tokens: a fit without it is refused by Train's pivot check."""
    from diffsketch.capture.spec import POOLED_FAMILIES, SD35

    assert SD35 in POOLED_FAMILIES
    model, clip, vae = sd35
    node = comfy_inprocess.nodes.conditions.DiffSketchFitConditions
    prompts = "a horse in mud\na red car\na bowl of fruit\na city at night"
    sampler = node.execute(clip, prompts, components=2, seed=0, save_name="").args[0]
    assert sampler.family == SD35 and sampler.pooled_dim == 2048
    sample = sampler.sample(torch.Generator().manual_seed(0))
    assert sample.pooled is not None and tuple(sample.pooled.shape) == (1, 2048)
    assert sample.context.shape[-1] == 4096
    # the example's prompt as Train encodes it (with the pooled part the model takes) fits the distribution
    backend = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)
    sampler.check_pivot(backend.encode_prompt("a photo of a horse in mud"))


def test_sample_node_captures_the_family_default_timesteps_at_turbo_step_counts(comfy_inprocess, sd35):
    """Without a timesteps input the Sample node captures the flow families' default timesteps, which
    an 8-step grid (Z-Image Turbo's) keeps apart; the paper's 13 would be refused there."""
    from diffsketch.capture.timesteps import FLOW_TIMESTEPS

    model, clip, vae = sd35
    node = comfy_inprocess.nodes.sample.DiffSketchSample
    out = node.execute(model, clip, vae, "a horse in mud", seed=0, steps=8, cfg=1.0, **SIZE)
    assert out.args[2].timesteps == FLOW_TIMESTEPS
    assert hook_count(model, vae) == 0


def test_capture_from_image_node_plans_on_the_flow_grid_at_turbo_step_counts(comfy_inprocess, sd35):
    """Capture from Image without a timesteps input inverts and replays on the model's own grid: at
    8 steps the flow families' default timesteps (the node planned its progress bar on DDIM's grid
    with the paper's 13 and refused 8 steps)."""
    from diffsketch.capture.timesteps import FLOW_TIMESTEPS

    model, clip, vae = sd35
    picture = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    node = comfy_inprocess.nodes.capture_image.DiffSketchCaptureFromImage
    with torch.inference_mode():
        out = node.execute(model, clip, vae, picture, "a cat", steps=8, max_side=0)
    assert out.args[2].timesteps == FLOW_TIMESTEPS and out.args[2].meta["steps"] == 8
    assert hook_count(model, vae) == 0


def sample_recording_calls(model, sample):
    """``(sample(), calls)`` with ``calls`` the ``(batch size, keyword arguments)`` of each call of
    the MODEL's diffusion model during ``sample`` (run in inference mode, as inside a prompt)."""
    calls = []

    def record(module, args, kwargs):
        calls.append((args[0].shape[0], kwargs))

    handle = model.model.diffusion_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.inference_mode():
            return sample(), calls
    finally:
        handle.remove()


def check_identical(a, b):
    """Two CapturedSamples of one backend bit for bit: image, latent and every block map."""
    assert a.timesteps == b.timesteps
    assert torch.equal(a.image, b.image) and torch.equal(a.latent, b.latent)
    for t in a.timesteps:
        assert all(torch.equal(x, y) for x, y in zip(a.unet[t], b.unet[t], strict=True)), t


def test_sd35_trains_generates_and_distils_through_the_nodes(
    comfy_inprocess, sd35, loaded_checkpoint, monkeypatch, tmp_path
):
    """Sample & Capture (cfg 4: two branches) -> Fit Conditions -> Train -> Generate -> Distill on
    the SD 3.5 checkpoint, as the nodes run them (tiny sizes): the generator and extractor files
    record the SD 3.5 family and layout, and no hook is left. A generator trained on a UNet model
    (SD 1.x) is refused by both families' names before Generate or Distill samples anything."""
    import folder_paths

    from diffsketch.distill.extractor import load_extractor
    from diffsketch.train.generator import load_generator

    nodes = comfy_inprocess.nodes
    model, clip, vae = sd35
    for folder in (nodes.train.FOLDER, nodes.distill.FOLDER):
        monkeypatch.setitem(folder_paths.folder_names_and_paths, folder, ([str(tmp_path)], {".safetensors"}))
    # the pair folders go under models/, the previews under temp/: both in tmp_path, not in ComfyUI's tree
    monkeypatch.setattr(folder_paths, "models_dir", str(tmp_path / "models"))
    monkeypatch.setattr(folder_paths, "temp_directory", str(tmp_path / "temp"))
    image, _, features = nodes.sample.DiffSketchSample.execute(
        model, clip, vae, "a horse in mud", 1, 4, 4.0, **SIZE, timesteps=(249, 749)
    ).result
    assert features.meta["branches"] == 2
    prompts = "a horse in mud\na red car\na bowl of fruit\na city at night"
    conditions = nodes.conditions.DiffSketchFitConditions.execute(clip, prompts, 2, 0, "").args[0]
    loss_models = random_loss_models()
    generator = run_train_node(
        nodes, model, clip, vae, features, image, conditions, loss_models, "sd35_style",
        iterations=2, low_memory=True, checkpoint_every=2,
    )  # fmt: skip
    saved = load_generator(tmp_path / "sd35_style.safetensors")
    assert saved.family == generator.family == "sd35" and saved.branches == 2
    assert saved.spec.pooled_dim == 2048 and {t.channels for t in saved.spec.unet} == {256}
    picture, sketch = nodes.train.DiffSketchGenerate.execute(
        model, clip, vae, generator, "a cat", 3, 4, 4.0, **SIZE
    ).result
    assert tuple(picture.shape) == (1, 64, 64, 3) and tuple(sketch.shape) == (1, 64, 64, 3)
    assert torch.isfinite(sketch).all() and float(sketch.std()) > 0
    nodes.distill.DiffSketchDistill.execute(
        generator, model, clip, vae, conditions, pair_count=2, iterations=2, batch_size=2, crop_size=32,
        learning_rate=1e-3, steps=4, width=64, height=64, seed=0, save_name="sd35_extractor",
        loss_models=loss_models,
    )  # fmt: skip
    extractor = load_extractor(tmp_path / "sd35_extractor.safetensors")
    assert extractor.meta["pair_settings"]["model_layout"] == saved.spec.fingerprint()
    assert hook_count(model, vae) == 0

    sd1 = comfy_inprocess.nodes.comfy_backend.ComfyBackend(*loaded_checkpoint)
    unet_generator = tiny_generator(sd1.spec, len(generator.timesteps), generator.timesteps)
    refused = "the generator is SD 1.x but the model connected is SD 3.5.*use it with SD 1.x checkpoints"
    with pytest.raises(UnsupportedModelError, match=refused):
        nodes.train.DiffSketchGenerate.execute(model, clip, vae, unet_generator, "a cat", 3, 4, 4.0, **SIZE)
    with pytest.raises(UnsupportedModelError, match=refused):
        nodes.distill.DiffSketchDistill.execute(
            unet_generator, model, clip, vae, conditions, pair_count=1, iterations=1, batch_size=1,
            crop_size=32, learning_rate=1e-3, steps=4, width=64, height=64, seed=0, save_name="refused",
        )  # fmt: skip
    assert not (tmp_path / "refused.safetensors").exists()


def check_parity(a, b, tol=1e-3):
    """Two CapturedSamples of one model: the same image, latent, block maps and VAE taps."""
    from compare import relative_error

    assert a.timesteps == b.timesteps and a.meta["branches"] == b.meta["branches"]
    assert a.spec.signature() == b.spec.signature()
    assert relative_error(a.latent, b.latent) < tol
    assert relative_error(a.image, b.image) < tol
    for t in a.timesteps:
        for i, (fa, fb) in enumerate(zip(a.unet[t], b.unet[t], strict=True)):
            assert fa.shape == fb.shape, (t, i)
            assert relative_error(fa, fb) < tol, (t, i)
    for i, (fa, fb) in enumerate(zip(a.vae, b.vae, strict=True)):
        assert relative_error(fa, fb) < tol, i


def test_sd35_matches_the_diffusers_backend(comfy_inprocess, sd35, sd35_checkpoint):
    """The same checkpoint in diffusers' SD3Transformer2DModel (diffusers' own converters) through
    the library's DiffusersFlowBackend, given ComfyUI's encodings of the prompts (T5 is absent
    from the file; text encoders are not compared here): the same image and features, with CFG."""
    from dit_diffusers import diffusers_sd35
    from tiny_models import tiny_sd3_text_encoders

    from diffsketch.backends.dit import DiffusersFlowBackend

    model, clip, vae = sd35
    comfy_b = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)
    cond, uncond = comfy_b.encode_prompt("a cat"), comfy_b.encode_prompt("")
    transformer, dvae = diffusers_sd35(sd35_checkpoint)
    clip_l, clip_g, _, _ = tiny_sd3_text_encoders()  # only to construct it: the prompts come encoded
    diff_b = DiffusersFlowBackend(transformer, dvae, clip_l, text_encoder_2=clip_g)
    # fused attention (ComfyUI) and split (diffusers): one weights hash, no "other checkpoint" notice
    assert comfy_b.model_hash() == diff_b.model_hash()
    with torch.inference_mode():
        a = comfy_b.sample(cond, settings(4.0), uncond=uncond)
    check_parity(a, diff_b.sample(cond, settings(4.0), uncond=uncond))


def test_zimage_at_cfg_1_evaluates_and_captures_one_branch_deterministically(comfy_inprocess, zimage):
    model, clip, vae = zimage
    backend = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)
    few = settings(1.0, steps=2, timesteps=(499,))
    a, calls = sample_recording_calls(model, lambda: backend.sample(qwen3_conditioning(0), few))
    # two steps, the cond branch alone: ComfyUI's cfg1 shortcut
    assert [batch for batch, _ in calls] == [1, 1]
    assert hook_count(model, vae) == 0
    assert a.meta["branches"] == 1
    assert [tuple(f.shape) for f in a.unet[499]] == [(1, 3840, 4, 4)] * 2
    assert not torch.equal(a.unet[499][0], a.unet[499][1])
    with torch.inference_mode():
        check_identical(a, backend.sample(qwen3_conditioning(0), few))


def test_zimage_matches_the_diffusers_backend(comfy_inprocess, zimage_files):
    """Caption first (ComfyUI, padded to 32 tokens) or image first (diffusers): the same image
    tokens, hence the same maps, at cfg 1 (one branch) and with CFG (two)."""
    from dit_diffusers import diffusers_zimage

    from diffsketch.backends.dit import DiffusersFlowBackend

    comfy_b = comfy_inprocess.nodes.comfy_backend.ComfyBackend(*load_zimage(zimage_files))
    # 40 caption tokens: padded to 64, so the image tokens start at token 64 in ComfyUI's sequence
    cond, uncond = qwen3_conditioning(0, tokens=40), qwen3_conditioning(1, tokens=40)
    few = dict(steps=2, timesteps=(499,))
    with torch.inference_mode(), pytest.warns(UserWarning, match="guidance-distilled"):
        a_cfg = comfy_b.sample(cond, settings(3.0, **few), uncond=uncond)
    with torch.inference_mode():
        a_one = comfy_b.sample(cond, settings(1.0, **few))
    comfy_hash = comfy_b.model_hash()
    del comfy_b  # one 5 GB model at a time
    release()
    diff_b = DiffusersFlowBackend(*diffusers_zimage(*zimage_files))
    # fused attention (ComfyUI) and split (diffusers): one weights hash, no "other checkpoint" notice
    assert diff_b.model_hash() == comfy_hash
    check_parity(a_one, diff_b.sample(cond, settings(1.0, **few)))
    with pytest.warns(UserWarning, match="guidance-distilled"):
        check_parity(a_cfg, diff_b.sample(cond, settings(3.0, **few), uncond=uncond))


def test_zimage_prompts_are_encoded_as_the_diffusers_backend_encodes_them(
    comfy_inprocess, zimage_text_encoder
):
    """The same Qwen3 weights (qwen3_checkpoint.py's shrunk random file) through CLIPLoader (type
    lumina2) and ComfyUI's encode, and in transformers' Qwen3Model through DiffusersFlowBackend:
    the same tokens (ComfyUI's template, the pipeline's chat template) and the same second-to-last
    hidden states [1, T, 2560], for a prompt with a weight (text to Qwen3 in both), the empty one
    (the uncond branch), one with escaped parentheses and one of over 512 tokens."""
    import comfy.sd
    from compare import relative_error
    from dit_diffusers import transformers_qwen3
    from qwen3_checkpoint import QWEN3_LAYERS, comfy_builds_small_qwen3
    from tiny_models import tiny_vae16, tiny_zimage_transformer

    from diffsketch.backends.dit import DiffusersFlowBackend

    encode_text = comfy_inprocess.nodes.comfy_backend.encode_text
    with comfy_builds_small_qwen3():
        clip = comfy.sd.load_clip([str(zimage_text_encoder)], clip_type=comfy.sd.CLIPType.LUMINA2)
    assert comfy_inprocess.nodes.comfy_backend.clip_family(clip) == "zimage"
    assert len(clip.cond_stage_model.qwen3_4b.transformer.model.layers) == QWEN3_LAYERS
    text_encoder, tokenizer = transformers_qwen3(zimage_text_encoder, torch.float32)
    # encode_prompt reads only the text encoder: a tiny transformer and VAE complete the backend
    backend = DiffusersFlowBackend(tiny_zimage_transformer(), tiny_vae16(), text_encoder, tokenizer)
    prompt = "a horse in mud, (ink:1.2) sketch"
    (comfy_tokens,) = clip.tokenize(prompt)["qwen3_4b"]
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    assert [t[0] for t in comfy_tokens] == tokenizer(chat).input_ids
    # ComfyUI takes no weights for Qwen3 but makes \( \) plain, and cuts no long prompt (the
    # pipeline's 512 tokens)
    escaped = "a horse in \\(deep\\) mud"
    long_prompt = ", ".join(["a horse in mud"] * 105)
    for text in (prompt, "", escaped, long_prompt):
        theirs, ours = encode_text(clip, text, False), backend.encode_prompt(text)
        assert theirs.pooled is None and ours.pooled is None
        assert ours.context.shape == theirs.context.shape and ours.context.shape[-1] == 2560
        assert relative_error(ours.context, theirs.context) < 1e-4, text[:20]
    assert backend.encode_prompt(prompt).context.shape[1] == len(comfy_tokens) > 10
    assert backend.encode_prompt(long_prompt).context.shape[1] > 512


def test_sd35_prompts_are_encoded_as_the_diffusers_backend_encodes_them(
    comfy_inprocess, sd35_checkpoint, t5_text_encoders
):
    """The checkpoint's CLIP-L and bigG with the T5-XXL file (t5_checkpoint.py's, shrunk) through
    TripleCLIPLoader's loading (type sd3) and ComfyUI's encode, and in transformers' CLIP and T5
    models through DiffusersFlowBackend: the same context [1, 77 + 77, 4096] (CLIP-L/G then T5 padded
    to ComfyUI's 77 tokens) and pooled [1, 2048]; without T5 the diffusers backend gives the 77 CLIP
    tokens alone, which is what ComfyUI's SD3 encoder gives without a T5 file (its CLIP part); and
    for a prompt with escaped parentheses of two CLIP windows and over 76 T5 tokens, the context of
    2 x 77 CLIP tokens and T5's own. Two prompts: bigG costs seconds a pass on this CPU
    in each (the empty prompt's T5 tokens are compared in the Flux test)."""
    import comfy.sd
    from compare import relative_error
    from dit_diffusers import transformers_clip, transformers_t5
    from safetensors import safe_open
    from safetensors.torch import load_file
    from t5_checkpoint import comfy_builds_small_t5
    from tiny_models import tiny_sd3_transformer, tiny_vae16

    from diffsketch.backends.dit import SD35_T5_MIN_TOKENS, DiffusersFlowBackend

    encode_text = comfy_inprocess.nodes.comfy_backend.encode_text
    t5_path, _ = t5_text_encoders
    prefixes = {name: f"text_encoders.{name}.transformer." for name in ("clip_l", "clip_g")}
    with safe_open(str(sd35_checkpoint), "pt") as f:
        towers = {
            name: {k.removeprefix(prefix): f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
            for name, prefix in prefixes.items()
        }
    clip_l, clip_g = (
        transformers_clip(towers["clip_l"], "", "sd3_l"),
        transformers_clip(towers["clip_g"], "", "sd3_g"),
    )
    t5, t5_tokenizer = transformers_t5(t5_path)
    # encode_prompt reads only the text encoders: a tiny transformer and VAE complete the backends
    transformer, vae = tiny_sd3_transformer(context_dim=4096, pooled_dim=2048), tiny_vae16()
    with_t5 = DiffusersFlowBackend(
        transformer, vae, clip_l, text_encoder_2=clip_g, text_encoder_3=t5, tokenizer_3=t5_tokenizer
    )
    without_t5 = DiffusersFlowBackend(transformer, vae, clip_l, text_encoder_2=clip_g)
    with comfy_builds_small_t5():  # TripleCLIPLoader: comfy.sd.load_clip of the three files
        triple = comfy.sd.load_text_encoder_state_dicts(
            [towers["clip_l"], towers["clip_g"], load_file(str(t5_path))], clip_type=comfy.sd.CLIPType.SD3
        )
    del towers
    prompt = "a horse in mud, ink sketch on paper"
    theirs, ours = encode_text(triple, prompt, True), with_t5.encode_prompt(prompt)
    assert ours.context.shape == theirs.context.shape == (1, 77 + SD35_T5_MIN_TOKENS, 4096)
    assert relative_error(ours.context, theirs.context) < 1e-5
    assert relative_error(ours.pooled, theirs.pooled) < 1e-5
    alone = without_t5.encode_prompt(prompt)
    assert alone.context.shape == (1, 77, 4096)
    assert relative_error(alone.context, theirs.context[:, :77]) < 1e-5
    assert relative_error(alone.pooled, theirs.pooled) < 1e-5
    # escapes, and a prompt of two CLIP windows and over 76 T5 tokens: 2 x 77 + T5's own (no weight:
    # one more bigG pass in each; the weights' rule on T5 is compared in the Flux test, on CLIP in
    # the SD 1.x and SDXL tests)
    long_prompt = "a horse in \\(deep\\) mud, " + ", ".join(["ink sketch on paper"] * 16)
    theirs, ours = encode_text(triple, long_prompt, True), with_t5.encode_prompt(long_prompt)
    assert ours.context.shape == theirs.context.shape and ours.context.shape[1] > 2 * 77 + SD35_T5_MIN_TOKENS
    assert relative_error(ours.context, theirs.context) < 1e-5
    assert relative_error(ours.pooled, theirs.pooled) < 1e-5


def test_sd35_picture_capture_inverts_as_the_diffusers_backend(comfy_inprocess, sd35, sd35_checkpoint):
    """A picture's features (Euler inversion of its latent, then the captured replay) inside
    ComfyUI's sampler equal the diffusers backend's, and the inversion's hook is gone after."""
    from dit_diffusers import diffusers_sd35
    from tiny_models import tiny_sd3_text_encoders

    from diffsketch.backends.dit import DiffusersFlowBackend

    model, clip, vae = sd35
    comfy_b = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)
    caption = comfy_b.encode_prompt("a cat")
    picture = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a = comfy_b.capture_from_image(picture, settings(1.0), caption=caption)
    assert hook_count(model, vae) == 0
    transformer, dvae = diffusers_sd35(sd35_checkpoint)
    clip_l, clip_g, _, _ = tiny_sd3_text_encoders()  # only to construct it: the caption comes encoded
    b = DiffusersFlowBackend(transformer, dvae, clip_l, text_encoder_2=clip_g).capture_from_image(
        picture, settings(1.0), caption=caption
    )
    from compare import relative_error

    assert relative_error(a.noise, b.noise) < 1e-3
    check_parity(a.sample, b.sample)
    assert a.sample.meta["branches"] == 1


@pytest.mark.parametrize(
    "config_name, words",
    [
        (
            "Lumina2",
            "Lumina2 (Lumina Image 2.0 or a model of its layout; Z-Image is that layout at dim 3840)",
        ),
        ("QwenImage", "is QwenImage, a kind of diffusion model DiffSketch does not support yet"),
        # ComfyUI's Flux.2 and Flux.1 Fill configs subclass Flux.1's: refused all the same
        ("Flux2", "is Flux2, a kind of diffusion model DiffSketch does not support yet"),
        ("FluxInpaint", "is FluxInpaint (Flux.1 Fill, whose input carries the masked picture)"),
    ],
)
def test_dit_families_not_supported_yet_are_refused_by_name(comfy_inprocess, config_name, words):
    import comfy.supported_models

    config = getattr(comfy.supported_models, config_name)({"image_model": "x"})
    model = types.SimpleNamespace(
        model=types.SimpleNamespace(model_config=config, diffusion_model=torch.nn.Linear(1, 1))
    )
    with pytest.raises(UnsupportedModelError) as e:
        comfy_inprocess.nodes.comfy_backend.model_family(model)
    assert all(name in str(e.value) for name in (words, "Z-Image", "SD 3.5", "Flux.1 dev/schnell")), str(
        e.value
    )
