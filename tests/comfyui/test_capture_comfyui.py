"""Tier 2: the capture node in a real ComfyUI server, and capture parity ComfyUI <-> diffusers."""

from __future__ import annotations

import pytest
import torch
from comfy_harness import COMFYUI_PATH, check_tag_prompt_parity, error_message, hook_count
from compare import TAG_PROMPT, clip_skip_conditions, relative_error

from diffsketch.capture.sampling import SamplingSettings

FEW = dict(seed=3, steps=10, cfg=5.0, width=64, height=64, timesteps=(1, 501, 901))


def sample_graph(steps=10, timesteps="1, 501, 901", width=64, height=64):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {"class_type": "DiffSketchTimestepsPreset", "inputs": {"preset": "custom", "custom": timesteps}},
        "3": {
            "class_type": "DiffSketchSample",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "vae": ["1", 2],
                "prompt": "a photo of a horse in mud",
                "seed": 5,
                "steps": steps,
                "cfg": 5.0,
                "width": width,
                "height": height,
                "timesteps": ["2", 0],
            },
        },
        "4": {
            "class_type": "SaveImage",
            "inputs": {"images": ["3", 0], "filename_prefix": "diffsketch_test"},
        },
    }


def test_object_info_lists_the_node(comfy_server):
    info = comfy_server.get("/object_info/DiffSketchSample")["DiffSketchSample"]
    assert info["display_name"] == "DiffSketch Sample & Capture"
    req = info["input"]["required"]
    assert {"model", "clip", "vae", "prompt", "seed", "steps", "cfg", "width", "height"} <= set(req)
    assert req["steps"][1]["default"] == 50 and req["cfg"][1]["default"] == 5.0
    assert "timesteps" in info["input"]["optional"]
    assert info["output"] == ["IMAGE", "LATENT", "DIFFSKETCH_FEATURES"]
    assert (
        "IMPORT FAILED"
        not in comfy_server.log_text().split("Import times for custom nodes")[-1].split("\n\n")[0]
    )


def test_api_graph_runs_and_returns_an_image(comfy_server):
    entry = comfy_server.run(sample_graph())
    assert entry["status"]["status_str"] == "success", error_message(entry)
    images = entry["outputs"]["4"]["images"]
    assert len(images) == 1 and images[0]["filename"].startswith("diffsketch_test")


def test_bad_size_is_a_clear_error_in_the_ui(comfy_server):
    entry = comfy_server.run(sample_graph(steps=5, timesteps="1, 501"))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    # a width that is no multiple of 64: refused, naming the input and what it must be
    entry = comfy_server.run(sample_graph(steps=5, timesteps="1, 501", width=100))
    assert entry["status"]["status_str"] == "error"
    assert "width=100 is not supported: it must be a multiple of 64" in error_message(entry)
    # 13 paper timesteps on a 10-step grid: a clear error naming the fix
    g = sample_graph(steps=10)
    g["2"]["inputs"]["custom"] = ""
    entry = comfy_server.run(g)
    assert entry["status"]["status_str"] == "error"
    assert "too few" in error_message(entry) and "50" in error_message(entry)


def test_parity_with_diffusers_backend(comfy_inprocess, loaded_checkpoint, tiny_checkpoint):
    from diffsketch.backends.diffusers import DiffusersBackend

    ComfyBackend = comfy_inprocess.nodes.comfy_backend.ComfyBackend
    model, clip, vae = loaded_checkpoint
    comfy_b = ComfyBackend(model, clip, vae)
    diff_b = DiffusersBackend.from_single_file(tiny_checkpoint)
    assert comfy_b.spec.signature() == diff_b.spec.signature()
    assert len(comfy_b.spec.unet) == 12 and len(comfy_b.spec.vae) == 14
    # Same checkpoint, two loaders (ldm names in fp16 vs diffusers names in fp32): one model hash.
    assert comfy_b.model_hash() == diff_b.model_hash()

    prompt = "a photo of a horse in mud"
    cond_c, cond_d = comfy_b.encode_prompt(prompt), diff_b.encode_prompt(prompt)
    assert cond_c.pooled is None and cond_d.pooled is None
    assert relative_error(cond_d.context, cond_c.context) < 1e-3
    with torch.inference_mode():  # as inside a ComfyUI prompt
        a = comfy_b.sample(cond_c, SamplingSettings(**FEW))
    b = diff_b.sample(cond_c, SamplingSettings(**FEW))
    assert a.timesteps == b.timesteps == (1, 501, 901)
    assert relative_error(a.image, b.image) < 1e-3
    assert relative_error(a.latent, b.latent) < 1e-3
    for t in a.timesteps:
        for i, (fa, fb) in enumerate(zip(a.unet[t], b.unet[t])):
            assert fa.shape == fb.shape
            assert relative_error(fa, fb) < 1e-3, (t, i)
    for fa, fb in zip(a.vae, b.vae):
        assert relative_error(fa, fb) < 1e-3
    # the uncond and cond branches are both captured and differ
    assert not torch.equal(a.unet[501][0][0], a.unet[501][0][1])


def test_tag_prompts_encode_alike_at_clip_skip_1_and_2(comfy_inprocess, loaded_checkpoint, tiny_checkpoint):
    """Weights, escapes, three 75-token windows, CLIPSetLastLayer -1 and -2: the command line's
    encoding equals the CLIPTextEncode node's."""
    from diffsketch.backends.diffusers import DiffusersBackend

    ours = clip_skip_conditions(DiffusersBackend.from_single_file(tiny_checkpoint), TAG_PROMPT)
    check_tag_prompt_parity(comfy_inprocess, loaded_checkpoint[1], ours, 768, default_skip=1)


#: Prompts whose weights, escapes and windows the command line must read as ComfyUI does.
TRICKY_PROMPTS = [
    TAG_PROMPT,
    "a photo of a horse in mud",
    "",
    "Café, naïve résumé!! 123 " * 20,
    "a (horse:1.3) in ((mud)), (sky:0.5) (city)",
    "\\(a\\) (b (c:0.5)) d) (e",
    "(12:00:1.3) (ratio:wide) (:2) ()",
    # a short weighted span and a long one where a window ends
    " ".join(["word"] * 72)
    + " (one two three four five:1.2) "
    + " ".join(["word"] * 70)
    + " (a b c d e f g h i j:0.8)",
]


def test_prompt_windows_match_comfyui_tokenizers(comfy_inprocess):
    """Token ids and weights of every window, against ComfyUI's own tokenizers: CLIP-L (end-token
    padding) and SDXL's bigG (zero padding), through open_clip's vocabulary and through the
    tokenizer files a diffusers folder holds."""
    import os

    import comfy.sd1_clip
    import comfy.sdxl_clip
    from transformers import CLIPTokenizer

    from diffsketch.backends.prompt import prompt_windows
    from diffsketch.backends.text import ClipBPETokenizer, HFTokenizerAdapter

    path = os.path.join(COMFYUI_PATH, "comfy", "sd1_tokenizer")
    cases = [
        (
            comfy.sd1_clip.SDTokenizer(),
            [ClipBPETokenizer(), HFTokenizerAdapter(CLIPTokenizer.from_pretrained(path))],
        ),
        (
            comfy.sdxl_clip.SDXLClipGTokenizer(),
            [
                ClipBPETokenizer(pad_token=0),
                HFTokenizerAdapter(CLIPTokenizer.from_pretrained(path, pad_token="!")),
            ],
        ),
    ]
    for comfy_tokenizer, ours in cases:
        for text in TRICKY_PROMPTS:
            theirs = comfy_tokenizer.tokenize_with_weights(text)
            ids = torch.tensor([[t for t, _ in window] for window in theirs])
            weights = torch.tensor([[w for _, w in window] for window in theirs], dtype=torch.float32)
            for tokenizer in ours:
                windows = prompt_windows(text, tokenizer)
                assert torch.equal(windows.ids, ids), (text, type(tokenizer).__name__)
                assert torch.equal(windows.weights, weights), text
    assert len(comfy.sd1_clip.SDTokenizer().tokenize_with_weights(TAG_PROMPT)) == 3


def test_no_hooks_left_after_success_failure_and_interrupt(comfy_inprocess, loaded_checkpoint):
    import comfy.model_management as mm

    ComfyBackend = comfy_inprocess.nodes.comfy_backend.ComfyBackend
    model, clip, vae = loaded_checkpoint
    backend = ComfyBackend(model, clip, vae)
    wrappers_before = {k: dict(v) for k, v in model.wrappers.items()}
    kw = dict(seed=1, steps=5, width=64, height=64, timesteps=(1, 401))

    with torch.inference_mode():
        backend.sample("a cat", SamplingSettings(**kw))
    assert hook_count(model, vae) == 0

    def fail(step, total):
        if step == 2:
            raise RuntimeError("boom")

    with torch.inference_mode(), pytest.raises(RuntimeError, match="boom"):
        backend.sample("a cat", SamplingSettings(**kw), progress=fail)
    assert hook_count(model) == 0

    def interrupt(step, total):
        if step == 2:
            mm.interrupt_current_processing(True)

    try:
        with torch.inference_mode(), pytest.raises(mm.InterruptProcessingException):
            backend.sample("a cat", SamplingSettings(**kw), progress=interrupt)
    finally:
        mm.interrupt_current_processing(False)
    assert hook_count(model, vae) == 0
    assert {k: dict(v) for k, v in model.wrappers.items()} == wrappers_before


def test_other_kinds_of_model_are_refused_naming_what_is_supported(comfy_inprocess, loaded_checkpoint):
    from diffsketch.errors import UnsupportedModelError

    ComfyBackend = comfy_inprocess.nodes.comfy_backend.ComfyBackend
    model, clip, vae = loaded_checkpoint

    class FakeModel:
        class model:  # noqa: N801 - mimics ModelPatcher.model
            class model_config:  # noqa: N801
                unet_config = {}

            diffusion_model = torch.nn.Linear(
                1, 1
            )  # a DiT other than Z-Image, SD 3.5 and Flux.1 (Qwen-Image, ...)

    with pytest.raises(UnsupportedModelError, match="does not support yet: it is neither") as e:
        ComfyBackend(FakeModel(), clip, vae)
    assert "works with SD 1.x, SD 2.x" in str(e.value) and "SDXL" in str(e.value)

    config = model.model.model_config.unet_config
    saved = dict(config)
    for change, words in (
        ({"use_temporal_attention": True}, "video model"),
        ({"in_channels": 9}, "inpainting"),
        ({"context_dim": 2048}, "matches none of the supported backbones"),
    ):
        try:
            config.update(change)
            with pytest.raises(UnsupportedModelError, match=words) as e:
                ComfyBackend(model, clip, vae)
            assert "works with SD 1.x, SD 2.x" in str(e.value)
        finally:
            config.clear()
            config.update(saved)


def test_compile_wrapper_rejected(comfy_inprocess, loaded_checkpoint):
    from comfy_api.torch_helpers import torch_compile

    from diffsketch.errors import UnsupportedModelError

    ComfyBackend = comfy_inprocess.nodes.comfy_backend.ComfyBackend
    model, clip, vae = loaded_checkpoint
    compiled = model.clone()
    torch_compile.set_torch_compile_wrapper(compiled, backend="inductor")
    with pytest.raises(UnsupportedModelError, match="torch.compile"):
        ComfyBackend(compiled, clip, vae)


PICTURE_SETTINGS = SamplingSettings(steps=10, cfg=5.0, timesteps=(1, 501, 901), schedule="fast")


def test_capture_from_a_picture_parity_with_diffusers(comfy_inprocess, loaded_checkpoint, tiny_checkpoint):
    """Same checkpoint and picture: both backends invert to the same x_T and capture the same
    features from its replay."""
    from diffsketch.backends.diffusers import DiffusersBackend

    comfy_b = comfy_inprocess.nodes.comfy_backend.ComfyBackend(*loaded_checkpoint)
    diff_b = DiffusersBackend.from_single_file(tiny_checkpoint)
    picture = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    caption = "a photo of a horse in mud"
    torch.testing.assert_close(comfy_b._encode(picture), diff_b._encode(picture), rtol=1e-3, atol=1e-3)
    with torch.inference_mode():
        a = comfy_b.capture_from_image(picture, PICTURE_SETTINGS, caption=caption)
    b = diff_b.capture_from_image(picture, PICTURE_SETTINGS, caption=caption)
    assert relative_error(a.noise, b.noise) < 1e-3
    assert relative_error(a.sample.latent, b.sample.latent) < 1e-3
    assert a.sample.timesteps == b.sample.timesteps == (1, 501, 901)
    for t in a.sample.timesteps:
        for i, (fa, fb) in enumerate(zip(a.sample.unet[t], b.sample.unet[t])):
            assert relative_error(fa, fb) < 1e-3, (t, i)
    for fa, fb in zip(a.sample.vae, b.sample.vae):
        assert relative_error(fa, fb) < 1e-3
    assert a.replay_psnr == pytest.approx(b.replay_psnr, abs=0.05)


def test_capture_from_a_picture_leaves_nothing_behind_and_reruns_alike(comfy_inprocess, loaded_checkpoint):
    """Cancel during the inversion or the replay leaves no hook or wrapper on the shared MODEL, and
    a rerun gives the features of an uninterrupted run."""
    import comfy.model_management as mm

    model, clip, vae = loaded_checkpoint
    backend = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)
    wrappers_before = {k: dict(v) for k, v in model.wrappers.items()}
    picture = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        first = backend.capture_from_image(picture, PICTURE_SETTINGS)
    assert hook_count(model, vae) == 0
    for stop_at in (2, 5):  # of 3 inversion + 3 replay steps
        seen = []

        def cancel(step, total, stop_at=stop_at, seen=seen):
            seen.append(step)
            if step == stop_at:
                mm.interrupt_current_processing(True)

        try:
            with torch.inference_mode(), pytest.raises(mm.InterruptProcessingException):
                backend.capture_from_image(picture, PICTURE_SETTINGS, progress=cancel)
        finally:
            mm.interrupt_current_processing(False)
        assert seen == list(range(1, stop_at + 1))  # stopped at the next step, inversion or replay
        assert hook_count(model, vae) == 0
        assert {k: dict(v) for k, v in model.wrappers.items()} == wrappers_before
    with torch.inference_mode():
        again = backend.capture_from_image(picture, PICTURE_SETTINGS)
    torch.testing.assert_close(again.noise, first.noise, rtol=0, atol=0)
    for t in first.sample.timesteps:
        for fa, fb in zip(first.sample.unet[t], again.sample.unet[t]):
            torch.testing.assert_close(fa, fb, rtol=0, atol=0)
