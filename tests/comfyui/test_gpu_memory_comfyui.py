"""Tier 2 (in-process): what goes wrong only on a GPU, checked on the CPU.

Tensors on an accelerator refuse numpy conversion (tests/accelerator.py); the VAE decode asks
ComfyUI's model management for the memory ComfyUI's own estimate gives, and survives running out
of it."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from accelerator import on_accelerator
from comfy_harness import random_loss_models, run_train_node
from compare import relative_error
from tiny_models import tiny_generator

pytestmark = pytest.mark.comfyui


def _fake_clip(state: dict) -> types.SimpleNamespace:
    return types.SimpleNamespace(cond_stage_model=types.SimpleNamespace(state_dict=lambda: state))


def test_text_encoder_fingerprint_of_a_clip_on_the_gpu(comfy_inprocess, loaded_checkpoint):
    fingerprint = comfy_inprocess.nodes.comfy_backend.text_encoder_fingerprint
    _, clip, _ = loaded_checkpoint
    state = clip.cond_stage_model.state_dict()
    on_gpu = {k: on_accelerator(v) for k, v in state.items()}
    assert fingerprint(_fake_clip(on_gpu)) == fingerprint(clip)


def test_model_hash_of_a_unet_on_the_gpu(comfy_inprocess, loaded_checkpoint):
    backend_module = comfy_inprocess.nodes.comfy_backend
    model, clip, vae = loaded_checkpoint
    backend = backend_module.ComfyBackend(model, clip, vae)
    expected = backend.model_hash()
    unet = types.SimpleNamespace(
        parameters=lambda: (on_accelerator(p) for p in model.model.diffusion_model.parameters())
    )
    fake = types.SimpleNamespace(
        _model_hash=None,
        spec=backend.spec,  # a UNet's: the plain fingerprint
        model=types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=unet), patches={}),
    )
    assert backend_module.ComfyBackend.model_hash(fake) == expected


def test_training_preview_of_an_image_on_the_gpu(comfy_inprocess):
    preview = comfy_inprocess.nodes.train._preview
    image = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(np.asarray(preview(on_accelerator(image))[1]), np.asarray(preview(image)[1]))


# -- the VAE decode ------------------------------------------------------------------------------
@pytest.fixture
def decode_env(comfy_inprocess, loaded_checkpoint, monkeypatch):
    """(backend, latent, calls): ``calls`` records every load_models_gpu call's models and memory_required."""
    import comfy.model_management as mm

    model, clip, vae = loaded_checkpoint
    backend = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)
    latent = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(1))
    calls = []
    real = mm.load_models_gpu

    def spy(models, memory_required=0, *args, **kwargs):
        calls.append((list(models), memory_required))
        return real(models, memory_required, *args, **kwargs)

    monkeypatch.setattr(mm, "load_models_gpu", spy)
    return backend, latent, calls


@pytest.mark.parametrize("capture", [True, False])
def test_the_decode_asks_for_comfyuis_memory_estimate(decode_env, capture):
    backend, latent, calls = decode_env
    vae = backend.vae
    backend._decode(latent, capture, torch.float16, "cpu")
    expected = vae.memory_used_decode(latent.shape, vae.vae_dtype)
    assert expected > 0
    assert [(m, r) for m, r in calls if vae.patcher in m] == [([vae.patcher], expected)]


def _fail_decodes(monkeypatch, vae, failures: int) -> list:
    """Make the VAE decoder's first ``failures`` passes run out of memory; returns the pass log."""
    import comfy.model_management as mm

    decoder = vae.first_stage_model.decoder
    real = decoder.forward
    passes = []

    def forward(*args, **kwargs):
        passes.append(tuple(args[0].shape))
        if len(passes) <= failures:
            raise mm.OOM_EXCEPTION("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", forward)
    return passes


def test_capture_decode_out_of_memory_unloads_everything_and_retries_once(decode_env, monkeypatch):
    import comfy.model_management as mm

    backend, latent, _ = decode_env
    image, rgb, features = backend._decode(latent, True, torch.float16, "cpu")
    unloads = []
    real_unload = mm.unload_all_models
    monkeypatch.setattr(mm, "unload_all_models", lambda: (unloads.append(1), real_unload())[1])
    passes = _fail_decodes(monkeypatch, backend.vae, failures=1)

    retried = backend._decode(latent, True, torch.float16, "cpu")
    assert len(passes) == 2 and unloads == [1]
    assert torch.equal(retried[0], image) and torch.equal(retried[1], rgb)
    assert all(torch.equal(a, b) for a, b in zip(retried[2], features, strict=True))


def test_capture_decode_out_of_memory_twice_is_a_clear_error(decode_env, monkeypatch):
    from diffsketch.errors import CaptureError

    backend, latent, _ = decode_env
    passes = _fail_decodes(monkeypatch, backend.vae, failures=2)
    with pytest.raises(CaptureError, match=r"96x64 image.*Lower width/height"):
        backend._decode(latent, True, torch.float16, "cpu")
    assert len(passes) == 2


def test_decode_without_capture_falls_back_to_comfyuis_tiled_decode(decode_env, monkeypatch):
    backend, _, _ = decode_env
    # wider than ComfyUI's 64-latent tiles, so its tiler cuts it
    latent = torch.randn(1, 4, 16, 72, generator=torch.Generator().manual_seed(2))
    image, _, _ = backend._decode(latent, False, torch.float16, "cpu")
    passes = _fail_decodes(monkeypatch, backend.vae, failures=1)
    tiled, rgb, features = backend._decode(latent, False, torch.float16, "cpu")
    assert len(passes) > 2, "the fallback decodes tiles"
    assert any(p[-1] < 72 for p in passes[1:])
    assert tiled.shape == image.shape == (1, 3, 128, 576) and features == []
    assert relative_error(tiled, image) < 0.1
    assert torch.equal(rgb, tiled * 2 - 1)


# -- modules the pack puts on the GPU itself -------------------------------------------------------
def _recording_to(real, log: list):
    """``real`` (a ``to`` method, bound or not) that first appends the device it is given to ``log``."""

    def to(*args, **kwargs):
        given = args if hasattr(real, "__self__") else args[1:]
        log.append(str(kwargs.get("device", given[0] if given else None)))
        return real(*args, **kwargs)

    return to


def _record_moves(module: torch.nn.Module) -> list:
    """Record where ``module.to`` sends it (the device argument, as a string)."""
    moves = []
    module.to = _recording_to(module.to, moves)
    return moves


@pytest.fixture
def released(monkeypatch):
    """Count ComfyUI's soft_empty_cache calls."""
    import comfy.model_management as mm

    calls = []
    real = mm.soft_empty_cache
    monkeypatch.setattr(mm, "soft_empty_cache", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    return calls


@pytest.mark.parametrize("outcome", ["success", "error", "cancel"])
def test_modules_go_back_to_the_cpu_on_every_exit(comfy_inprocess, released, outcome):
    import comfy.model_management as mm

    on_torch_device = comfy_inprocess.nodes.common.on_torch_device
    given, added = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    given_moves, added_moves = _record_moves(given), _record_moves(added)
    failure = {"error": RuntimeError("boom"), "cancel": mm.InterruptProcessingException()}.get(outcome)
    try:
        with on_torch_device(given, None) as (device, more):
            more.append(added)
            if failure is not None:
                raise failure
    except (RuntimeError, mm.InterruptProcessingException) as e:
        assert e is failure
    assert given_moves == [str(device), "cpu"] and added_moves == ["cpu"]
    assert released == [1]


@pytest.mark.parametrize("cancel", [False, True])
def test_generate_node_puts_the_generator_back_on_the_cpu(
    comfy_inprocess, loaded_checkpoint, released, monkeypatch, cancel
):
    import comfy.model_management as mm

    model, clip, vae = loaded_checkpoint
    nodes = comfy_inprocess.nodes
    generator = tiny_generator(nodes.comfy_backend.ComfyBackend(model, clip, vae).spec, 2, (1, 501))
    moves = _record_moves(generator)
    if cancel:

        def interrupted(*args, **kwargs):
            raise mm.InterruptProcessingException()

        monkeypatch.setattr(nodes.comfy_backend.ComfyBackend, "sample", interrupted)
        with pytest.raises(mm.InterruptProcessingException):
            nodes.train.DiffSketchGenerate.execute(model, clip, vae, generator, "a cat", 1, 4, 5.0, 64, 64)
    else:
        out = nodes.train.DiffSketchGenerate.execute(model, clip, vae, generator, "a cat", 1, 4, 5.0, 64, 64)
        assert out.result[1].shape == (1, 64, 64, 3)
    assert moves == [str(mm.get_torch_device()), "cpu"] and released == [1]


def test_vae_taps_beyond_float16_range_are_stored_finite(decode_env):
    backend, latent, _ = decode_env
    fsm = backend.vae.first_stage_model
    huge = fsm.get_submodule(backend.spec.vae[0].name).register_forward_hook(
        lambda m, i, output: output * 1e6
    )
    try:
        _, _, features = backend._decode(latent, True, torch.float16, "cpu")
    finally:
        huge.remove()
    assert float(features[0].float().abs().max()) > 65504
    assert all(bool(torch.isfinite(x).all()) for x in features)


def test_style_sketch_node_puts_the_style_network_back_on_the_cpu(comfy_inprocess, released, monkeypatch):
    import comfy.model_management as mm

    import diffsketch.styles

    network = torch.nn.Conv2d(3, 1, 1)
    moves = _record_moves(network)
    monkeypatch.setattr(diffsketch.styles, "load_style", lambda style, **kwargs: network)
    out = comfy_inprocess.nodes.xdog.DiffSketchStyleSketch.execute(
        torch.rand(1, 8, 8, 3), "informative_anime"
    )
    assert out.result[0].shape == (1, 8, 8, 3)
    assert moves == [str(mm.get_torch_device()), "cpu"] and released == [1]


def test_train_node_puts_its_networks_back_on_the_cpu(
    comfy_inprocess, loaded_checkpoint, released, monkeypatch, tmp_path
):
    """The generator it trains and the LOSS_MODELS networks (moved in place) leave the device when
    the node ends: ComfyUI's model management does not know about them."""
    import comfy.model_management as mm
    import folder_paths

    from diffsketch.train.conditions import ConditionSampler
    from diffsketch.train.generator import SketchGenerator
    from diffsketch.train.losses import DiffSketchLoss

    nodes = comfy_inprocess.nodes
    model, clip, vae = loaded_checkpoint
    # "cpu:0" is the CPU under another name: moves to the node's device tell apart from the way back
    device = torch.device("cpu", 0)
    monkeypatch.setattr(mm, "get_torch_device", lambda: device)
    monkeypatch.setitem(
        folder_paths.folder_names_and_paths, nodes.train.FOLDER, ([str(tmp_path)], {".safetensors"})
    )
    image, _, features = nodes.sample.DiffSketchSample.execute(
        model, clip, vae, "a horse", 1, 10, 5.0, 64, 64, timesteps=(1, 501)
    ).result
    backend = nodes.comfy_backend.ComfyBackend(model, clip, vae)
    conditions = ConditionSampler.fit_from_prompts(
        backend.encode_prompt, ["a horse", "a cat", "a house"], n_components=2, family=backend.spec.family
    )
    loss_models = random_loss_models()
    moves = {SketchGenerator: [], DiffSketchLoss: []}  # the loss moves LOSS_MODELS' networks with it
    for cls, log in moves.items():
        monkeypatch.setattr(cls, "to", _recording_to(cls.to, log))
    generator = run_train_node(nodes, model, clip, vae, features, image, conditions, loss_models, "memory")
    assert all(str(device) in log and log[-1] == "cpu" for log in moves.values()), moves
    networks = (loss_models["clip"], loss_models["lpips"], generator)
    assert all(p.device == torch.device("cpu") for net in networks for p in net.parameters())
    assert released == [1]
    assert (tmp_path / "memory.safetensors").is_file() and isinstance(generator, SketchGenerator)
