"""The diffusers backend on Flux.1 (dev, guidance-distilled with a guidance embedding; schnell,
without one), with tiny random-weight models: prompt encoding and sampling match diffusers' own
FluxPipeline given the same sigmas and noise, the taps are the image tokens of double- and
single-stream blocks, one branch at cfg 1 (a notice above it), Flux's index-to-sigma convention
against ComfyUI's 10000-entry table, and folders load with their scheduler's shift."""

from __future__ import annotations

import json
import math

import pytest
import torch
from compare import relative_error
from test_dit_sampling import PROMPT, SIZE, clip_tokenizer, pipeline_sigmas
from tiny_models import tiny_flux_backend

from diffsketch.backends.base import dit_weights_fingerprint, make_noise, weights_fingerprint
from diffsketch.backends.conditioning import Conditioning
from diffsketch.backends.dit import DiffusersFlowBackend
from diffsketch.capture.hooks import COND, UNetRecorder
from diffsketch.capture.sampling import SamplingSettings
from diffsketch.capture.spec import FLUX, FLUX_DEFAULT_GUIDANCE
from diffsketch.capture.timesteps import (
    FLOW_SHIFTS,
    FLOW_TIMESTEPS,
    FLUX_SCHNELL_STEPS,
    PAPER_STEPS,
    flow_grid,
    flow_sigma,
    flow_table_index,
)
from diffsketch.errors import InvalidInputError


@pytest.fixture(scope="module")
def dev():
    return tiny_flux_backend(0)


@pytest.fixture(scope="module")
def schnell():
    return tiny_flux_backend(1, guidance_embeds=False)


def flux_pipeline(backend, tmp_path):
    """FluxPipeline on the backend's models; its scheduler shifts the unshifted sigmas it is given
    as Flux's published schedulers do: dev's dynamic shift, pinned at mu 1.15 (its value at
    1024x1024) whatever the tiny image's token count, schnell's shift 1."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    if backend.guidance is not None:
        scheduler = FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True, base_shift=1.15, max_shift=1.15
        )
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return FluxPipeline(
        scheduler=scheduler,
        vae=backend.vae,
        text_encoder=backend.text_encoder,
        tokenizer=clip_tokenizer(tmp_path, "l", "<|endoftext|>"),
        text_encoder_2=backend.text_encoder_2,
        tokenizer_2=backend.tokenizer_2,
        transformer=backend.transformer,
    )


@pytest.mark.parametrize("variant, cfg", [("dev", 1.0), ("schnell", 1.0), ("dev", 2.5)])
def test_flux_sampling_and_encoding_match_the_flux_pipeline(dev, schnell, tmp_path, variant, cfg):
    from diffusers import FluxPipeline

    backend = dev if variant == "dev" else schnell
    assert backend.shift == (math.exp(1.15) if variant == "dev" else 1.0)
    assert backend.guidance == (FLUX_DEFAULT_GUIDANCE if variant == "dev" else None)
    pipe = flux_pipeline(backend, tmp_path)
    context, pooled, _ = pipe.encode_prompt(PROMPT, PROMPT, max_sequence_length=256)
    got = backend.encode_prompt(PROMPT)
    assert got.context.shape == (1, 256, 32) and got.pooled.shape == (1, 8)
    assert torch.allclose(got.context, context.float(), atol=1e-6)
    assert torch.allclose(got.pooled, pooled.float(), atol=1e-6)

    settings = SamplingSettings(seed=5, steps=4, timesteps=(249, 749), cfg=cfg, width=SIZE, height=48)
    sample = backend.sample(PROMPT, settings)
    noise = make_noise(5, (1, 16, 6, SIZE // 8))
    packed = pipe(
        PROMPT,
        negative_prompt="" if cfg > 1 else None,
        true_cfg_scale=cfg,
        height=48,
        width=SIZE,
        sigmas=pipeline_sigmas(sample.meta["schedule"]),
        num_inference_steps=4,
        guidance_scale=FLUX_DEFAULT_GUIDANCE,
        latents=FluxPipeline._pack_latents(noise, 1, 16, 6, SIZE // 8),
        max_sequence_length=256,
        output_type="latent",
    ).images
    latent = FluxPipeline._unpack_latents(packed, 48, SIZE, 8)
    assert relative_error(backend.model_latent(sample.latent), latent) < 1e-4
    assert sample.meta["branches"] == (1 if cfg == 1 else 2)
    # the guidance dev embeds is an input of its own: another value, another velocity
    if variant == "dev":
        x = torch.randn(1, 16, 6, 8)
        velocity = backend._velocity(x, 0.7, [got])
        backend.guidance = 1.0
        try:
            assert relative_error(backend._velocity(x, 0.7, [got]), velocity) > 1e-3
        finally:
            backend.guidance = FLUX_DEFAULT_GUIDANCE


def test_flux_taps_are_the_image_tokens_of_double_and_single_blocks(dev):
    """The last single block's tapped map, through norm_out, proj_out and the unpacking, is the
    velocity (the map holds exactly the image tokens, no text token, in the model's order); the
    last double block's tapped map is the image part of what the first single block receives."""
    from diffusers import FluxPipeline

    from diffsketch.backends.dit import DiffusersFlowBackend

    tr = dev.transformer
    backend = DiffusersFlowBackend(
        tr,
        dev.vae,
        dev.text_encoder,
        text_encoder_2=dev.text_encoder_2,
        tokenizer_2=dev.tokenizer_2,
        blocks=(1, 5),
    )
    assert [t.name for t in backend.spec.unet] == ["transformer_blocks.1", "single_transformer_blocks.3"]
    cond = backend.encode_prompt(PROMPT)
    x = torch.randn(1, 16, 6, 8)
    sigma = 0.7
    received = []
    pre = tr.single_transformer_blocks[0].register_forward_pre_hook(
        lambda module, args, kwargs: received.append(kwargs["hidden_states"]), with_kwargs=True
    )
    recorder = UNetRecorder(backend.spec, [499], torch.float32, branches=(COND,))
    try:
        with torch.no_grad():
            velocity = backend._guided_velocity(x, sigma, 499, cond, None, 1.0, (COND,), recorder)
            double, single = recorder.result()[499]
            temb = tr.time_text_embed(
                torch.tensor([sigma * 1000.0]), torch.tensor([FLUX_DEFAULT_GUIDANCE * 1000.0]), cond.pooled
            )
            out = tr.proj_out(tr.norm_out(single.flatten(2).transpose(1, 2), temb))
            rebuilt = FluxPipeline._unpack_latents(out, 48, 64, 8)
    finally:
        pre.remove()
    assert double.shape == single.shape == (1, 16, 3, 4)
    assert torch.allclose(double.flatten(2).transpose(1, 2), received[0], atol=1e-6)
    assert torch.allclose(rebuilt, velocity, atol=1e-5)


def test_flux_captures_one_branch_at_cfg_1_in_the_spec_shapes_and_leaves_no_hook(dev):
    modules = [*dev.transformer.modules(), *dev.vae.modules()]
    hooks = sum(len(m._forward_hooks) for m in modules)
    # default taps over the 2 + 4 blocks as one depth: double block 1, single blocks 0-2
    assert [t.name for t in dev.spec.unet] == [
        "transformer_blocks.1",
        "single_transformer_blocks.0",
        "single_transformer_blocks.1",
        "single_transformer_blocks.2",
    ]
    # cfg 1: one branch (two at cfg > 1: the pipeline parity test at cfg 2.5)
    sample = dev.sample("a cat", SamplingSettings(seed=0, steps=8, cfg=1.0, width=SIZE, height=48))
    assert sample.spec.family == FLUX and sample.branches == 1
    assert sample.timesteps == (124, 249, 499, 749)
    for maps in sample.unet.values():
        assert [tuple(m.shape) for m in maps] == [(1, *s) for s in dev.spec.unet_shapes(SIZE, 48)]
    assert sum(len(m._forward_hooks) for m in modules) == hooks
    assert dev.guidance_notice(1.0) is None
    assert "Flux.1 model is guidance-distilled" in dev.guidance_notice(3.5)


def test_flux_conditioning_rules_and_prompts_without_t5(dev):
    from diffsketch.backends.dit import DiffusersFlowBackend

    with pytest.raises(InvalidInputError, match=r"pooled text embedding \[1, 8\]"):
        dev.check_conditioning(Conditioning(torch.zeros(1, 256, 32)), "positive")
    with pytest.raises(InvalidInputError, match="T5-XXL hidden states"):
        dev.check_conditioning(Conditioning(torch.zeros(1, 256, 16), torch.zeros(1, 8)), "positive")
    no_t5 = DiffusersFlowBackend(dev.transformer, dev.vae, dev.text_encoder)
    with pytest.raises(InvalidInputError, match="no T5-XXL text encoder.*conditionings, not prompts"):
        no_t5.encode_prompt("a cat")
    # conditionings still sample
    sample = no_t5.sample(
        dev.encode_prompt("a cat"),
        SamplingSettings(seed=0, steps=4, timesteps=(999,), cfg=1.0, width=SIZE, height=SIZE),
    )
    assert torch.isfinite(sample.latent).all()
    notice = dev.prompt_notice(" ".join(["cat"] * 100))  # 100 CLIP tokens, 399 bytes + </s> of T5
    assert (
        "T5-XXL reads all 399 tokens of the prompt" in notice
        and "CLIP-L's pooled embedding is its first window" in notice
    )


def test_flux_indices_are_comfyui_s_10000_entry_table_entries():
    """Index k of the 1000-step convention is entry 10k+9 of ComfyUI's ModelSamplingFlux table
    (entry j at t = (j+1)/10000, sigma e^1.15 / (e^1.15 + 1/t - 1)) and entry k of a 1000-entry one."""
    mu = 1.15
    table = [math.exp(mu) / (math.exp(mu) + (1 / ((j + 1) / 10000) - 1)) for j in range(10000)]
    for k in (0, 124, 249, 499, 749, 999):
        assert table[flow_table_index(k, 10000)] == pytest.approx(flow_sigma(k, FLOW_SHIFTS[FLUX]), rel=1e-12)
        assert flow_table_index(k, 1000) == k
    with pytest.raises(ValueError, match="not a multiple"):
        flow_table_index(0, 1500)


def save_flux_folder(backend, root, scheduler: dict):
    """``backend``'s models as a diffusers Flux.1 folder with ``scheduler`` as its scheduler config."""
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer_2"):
        getattr(backend, part).save_pretrained(root / part)
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return root


@pytest.fixture(scope="module")
def flux_folders(dev, schnell, tmp_path_factory):
    """``{"dev": folder, "schnell": folder}``: the tiny models as diffusers folders."""
    return {
        "dev": save_flux_folder(dev, tmp_path_factory.mktemp("flux_dev"), {"use_dynamic_shifting": True}),
        "schnell": save_flux_folder(schnell, tmp_path_factory.mktemp("flux_schnell"), {"shift": 1.0}),
    }


@pytest.mark.parametrize(
    "variant, scheduler, shift",
    [
        (
            "dev",
            {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "shift": 3.0},
            math.exp(1.15),
        ),
        ("schnell", {"use_dynamic_shifting": False, "shift": 1.0}, 1.0),
    ],
    ids=["dev", "schnell"],
)
def test_a_flux_folder_loads_with_its_scheduler_s_shift(dev, schnell, tmp_path, variant, scheduler, shift):
    from diffsketch.backends.diffusers import DiffusersBackend

    backend = dev if variant == "dev" else schnell
    save_flux_folder(backend, tmp_path, scheduler)
    loaded = DiffusersBackend.load(tmp_path)
    assert loaded.spec == backend.spec and loaded.shift == pytest.approx(shift)
    assert loaded.guidance == backend.guidance
    assert torch.equal(loaded.encode_prompt(PROMPT).context, backend.encode_prompt(PROMPT).context)
    if variant == "dev":
        # the sample command on the folder: the flow grid, cfg 1 (guidance-distilled), one branch
        from diffsketch.capture.sample import CapturedSample
        from diffsketch.cli import main

        out = tmp_path / "example.safetensors"
        args = ["sample", "--model", str(tmp_path), "--device", "cpu", "--width", "64", "--height", "64"]
        assert main([*args, "--steps", "8", "--prompt", "a cat", "--out", str(out)]) == 0
        captured = CapturedSample.load(out)
        assert captured.spec.family == FLUX and captured.meta["cfg"] == 1.0 and captured.branches == 1
        assert captured.meta["guidance"] == FLUX_DEFAULT_GUIDANCE  # dev's guidance embedding, recorded


def comfy_flux_tensors(transformer) -> list[torch.Tensor]:
    """A diffusers Flux transformer's tensors as ComfyUI's Flux holds them (what diffusers'
    converter undoes): each attention's q, k, v in one tensor, with the MLP input in the single
    blocks (``linear1``), and the final modulation's (scale, shift) halves back in (shift, scale)."""
    named = dict(transformer.named_parameters())
    fused = [
        (f"transformer_blocks.{i}.attn.", ("to_q", "to_k", "to_v"))
        for i in range(len(transformer.transformer_blocks))
    ]
    fused += [
        (f"transformer_blocks.{i}.attn.", ("add_q_proj", "add_k_proj", "add_v_proj"))
        for i in range(len(transformer.transformer_blocks))
    ]
    fused += [
        (f"single_transformer_blocks.{i}.", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"))
        for i in range(len(transformer.single_transformer_blocks))
    ]
    out = []
    for prefix, parts in fused:
        for kind in ("weight", "bias"):
            out.append(torch.cat([named.pop(f"{prefix}{p}.{kind}") for p in parts]))
    for kind in ("weight", "bias"):
        scale, shift = named.pop(f"norm_out.linear.{kind}").chunk(2)
        out.append(torch.cat([shift, scale]))
    return out + list(named.values())


def test_flux_model_hash_is_the_one_of_comfyui_s_fused_layout(dev, schnell):
    """The diffusers backend's hash of Flux is the one the ComfyUI backend computes for the same
    weights in ComfyUI's layout (tests/comfyui checks it on a Flux file loaded by both)."""
    hidden = dev.spec.unet[0].channels
    for backend in (dev, schnell):
        comfy = comfy_flux_tensors(backend.transformer)
        assert weights_fingerprint(comfy) != weights_fingerprint(backend.transformer.parameters())
        assert backend.model_hash() == dit_weights_fingerprint(comfy, hidden)
    assert dev.model_hash() != schnell.model_hash()


def run_sample(folder, out, *options) -> int:
    """The sample command on a model folder at 64x64, the features to ``out``."""
    from diffsketch.cli import main

    args = ["sample", "--model", str(folder), "--device", "cpu", "--width", "64", "--height", "64"]
    return main([*args, "--prompt", "a cat", "--out", str(out), *options])


def test_the_guidance_option_sets_flux_dev_s_guidance_and_is_refused_elsewhere(
    flux_folders, tmp_path, capsys
):
    from diffsketch.capture.sample import CapturedSample

    runs = {}
    for guidance in (None, "5"):
        out = tmp_path / f"example_{guidance}.safetensors"
        options = ["--steps", "8"] + ([] if guidance is None else ["--guidance", guidance])
        assert run_sample(flux_folders["dev"], out, *options) == 0
        runs[guidance] = CapturedSample.load(out)
    assert runs[None].meta["guidance"] == FLUX_DEFAULT_GUIDANCE and runs["5"].meta["guidance"] == 5.0
    # the value reaches the model's guidance embedding: same seed, other features
    assert not torch.equal(runs[None].unet[499][0], runs["5"].unet[499][0])
    capsys.readouterr()
    for folder, option, words in (
        (flux_folders["schnell"], "3", "Flux.1 schnell has no guidance input"),
        (tmp_path, "3", "this UNet model (SD 1.x, SD 2.x, SDXL) has no guidance input"),
        (flux_folders["dev"], "101", "--guidance must be a number from 0 to 100"),
        (flux_folders["dev"], "nan", "--guidance must be a number from 0 to 100"),
    ):
        out = tmp_path / "refused.safetensors"
        assert run_sample(folder, out, "--guidance", option) == 2
        err = capsys.readouterr().err
        assert words in err and "--guidance" in err, err
        assert not out.exists()


def test_the_features_guidance_is_followed_only_where_the_model_takes_one(flux_folders, tmp_path):
    """train (the example's), generate and distill (the generator's example's) sample at the
    guidance the features were captured at, unless --guidance says otherwise; schnell and the
    other models have none to follow."""
    import argparse

    from diffsketch.cli.common import sampling_guidance

    def guidance(folder, given=None, recorded=None):
        return sampling_guidance(argparse.Namespace(model=str(folder), guidance=given), recorded)

    assert guidance(flux_folders["dev"]) is None  # the backend's own 3.5
    assert guidance(flux_folders["dev"], recorded=5.0) == 5.0
    assert guidance(flux_folders["dev"], given=2.0, recorded=5.0) == 2.0
    assert guidance(flux_folders["schnell"], recorded=5.0) is None
    assert guidance(tmp_path, recorded=5.0) is None
    with pytest.raises(InvalidInputError, match="Flux.1 schnell has no guidance input"):
        guidance(flux_folders["schnell"], given=2.0)
    # the library refuses a value a model cannot take rather than ignore it
    with pytest.raises(InvalidInputError, match="Flux.1 schnell has no guidance input"):
        DiffusersFlowBackend.from_pretrained(flux_folders["schnell"], guidance=2.0)


def test_schnell_samples_by_default_at_the_fewest_steps_its_timesteps_need(flux_folders, tmp_path, capsys):
    """Without --steps, schnell samples 8 steps (dev keeps the paper's 50): the fewest whose grid
    holds the default timesteps exactly. Its usual 4 is refused, naming the steps that work and
    the timesteps that fit 4 steps, which then work."""
    from diffsketch.capture.sample import CapturedSample

    out = tmp_path / "example.safetensors"
    assert run_sample(flux_folders["schnell"], out) == 0
    sample = CapturedSample.load(out)
    assert sample.meta["steps"] == FLUX_SCHNELL_STEPS == 8 and sample.timesteps == FLOW_TIMESTEPS
    assert set(FLOW_TIMESTEPS) <= set(flow_grid(8)) and not set(FLOW_TIMESTEPS) <= set(flow_grid(7))
    assert tiny_flux_backend(0).default_steps == PAPER_STEPS  # dev
    capsys.readouterr()
    assert run_sample(flux_folders["schnell"], out, "--steps", "4") == 2
    err = capsys.readouterr().err
    assert "Use at least 7 steps" in err and "249, 499, 749, which 4 steps keep apart" in err, err
    assert run_sample(flux_folders["schnell"], out, "--steps", "4", "--timesteps", "249,499,749") == 0
    assert CapturedSample.load(out).timesteps == (249, 499, 749)
