"""The diffusers backend on the flow-matching transformers (Z-Image, SD 3.5), with tiny random-weight
models: sampling and prompt encoding match diffusers' own ZImagePipeline and
StableDiffusion3Pipeline, the captured block maps are the image tokens in the spec's shapes, one
branch at cfg 1, hooks removed on every exit path, bad input refused by name; prompts (Z-Image,
SD 3.5, Flux.1) are encoded as ComfyUI's CLIP Text Encode encodes them (weights, escapes, CLIP
windows, T5's and Qwen3's lengths)."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from compare import relative_error
from tiny_models import (
    TINY_SD3_CLIP_L_DIM,
    tiny_flux_backend,
    tiny_sd35_backend,
    tiny_t5,
    tiny_zimage_backend,
)

from diffsketch.backends.base import make_noise
from diffsketch.backends.conditioning import Conditioning
from diffsketch.backends.dit import SD35_T5_MIN_TOKENS, DiffusersFlowBackend
from diffsketch.backends.prompt import empty_window, prompt_windows
from diffsketch.backends.text import T5TokenizerAdapter
from diffsketch.capture.hooks import COND, UNCOND, UNetRecorder
from diffsketch.capture.sampling import SamplingSettings
from diffsketch.capture.spec import SD35, ZIMAGE
from diffsketch.errors import InvalidInputError, UnsupportedModelError
from diffsketch.train.conditions import ConditionSampler

SIZE = 64  # px: an 8x8 latent, 4x4 image tokens (Z-Image pads them to 32 tokens)
PROMPT = "a red house by a lake"


@pytest.fixture(scope="module")
def zimage():
    return tiny_zimage_backend(0)


@pytest.fixture(scope="module")
def sd35():
    return tiny_sd35_backend(0)


def flow_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)


def pipeline_sigmas(schedule) -> list[float]:
    """The unshifted sigmas ``t = (k+1)/1000`` of the schedule's indices: the scheduler shifts them
    to the backend's ComfyUI sigmas."""
    return [(k + 1) / 1000 for k in schedule]


def clip_tokenizer(tmp_path, name: str, pad: str):
    """transformers' CLIPTokenizer on the CLIP BPE vocabulary open_clip ships (no download)."""
    from open_clip.tokenizer import SimpleTokenizer, default_bpe
    from transformers import CLIPTokenizer

    encoder = dict(SimpleTokenizer().encoder)
    encoder["<|startoftext|>"] = encoder.pop("<start_of_text>")
    encoder["<|endoftext|>"] = encoder.pop("<end_of_text>")
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    folder = tmp_path / name
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(encoder))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad, model_max_length=77
    )


def zimage_pipeline(backend):
    """diffusers' ZImagePipeline on the backend's models."""
    from diffusers import ZImagePipeline

    return ZImagePipeline(
        scheduler=flow_scheduler(),
        vae=backend.vae,
        text_encoder=backend.text_encoder,
        tokenizer=backend.tokenizer,
        transformer=backend.transformer,
    )


# -- parity with diffusers' pipelines ----------------------------------------------------------------
@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_zimage_sampling_matches_the_zimage_pipeline(zimage, cfg):
    settings = SamplingSettings(seed=3, steps=4, timesteps=(249, 749), cfg=cfg, width=SIZE, height=SIZE)
    sample = zimage.sample(PROMPT, settings)
    pipe = zimage_pipeline(zimage)
    noise = make_noise(3, (1, 16, SIZE // 8, SIZE // 8))

    def run_pipeline(output_type):
        # the pipeline encodes the prompt itself (its chat template), guidance g = cfg - 1
        return pipe(
            PROMPT,
            height=SIZE,
            width=SIZE,
            sigmas=pipeline_sigmas(sample.meta["schedule"]),
            num_inference_steps=4,
            guidance_scale=cfg - 1,
            latents=noise,
            output_type=output_type,
        ).images

    assert relative_error(zimage.model_latent(sample.latent), run_pipeline("latent")) < 1e-4
    image = run_pipeline("pt")
    assert (sample.image - image).abs().max() < 1e-3
    assert sample.meta["branches"] == (1 if cfg == 1 else 2)


def test_zimage_prompt_encoding_matches_the_pipeline(zimage):
    pipe = zimage_pipeline(zimage)
    for text in (PROMPT, "", "一只猫"):
        (expected,), _ = pipe.encode_prompt(text, device="cpu", do_classifier_free_guidance=False)
        got = zimage.encode_prompt(text)
        assert got.pooled is None and got.context.shape == (1, *expected.shape)
        assert torch.allclose(got.context[0], expected.float(), atol=1e-6)
    # the chat template's tokens are there: the empty prompt is not empty
    assert zimage.encode_prompt("").context.shape[1] > 5


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_sd35_sampling_and_encoding_match_the_sd3_pipeline(sd35, tmp_path, cfg):
    from diffusers import StableDiffusion3Pipeline

    from diffsketch.backends.text import HFTokenizerAdapter

    tokenizer, tokenizer_2 = (
        clip_tokenizer(tmp_path, "l", "<|endoftext|>"),
        clip_tokenizer(tmp_path, "g", "!"),
    )
    pipe = StableDiffusion3Pipeline(
        transformer=sd35.transformer,
        scheduler=flow_scheduler(),
        vae=sd35.vae,
        text_encoder=sd35.text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=sd35.text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=sd35.text_encoder_3,
        tokenizer_3=sd35.tokenizer_3,
    )
    # the backend's own CLIP BPE tokenizers and the HF ones give the pipeline's encoding at ComfyUI's
    # T5 length (77 tokens: the pipeline's default pads to 256)
    context, _, pooled, _ = pipe.encode_prompt(
        PROMPT, PROMPT, PROMPT, do_classifier_free_guidance=False, max_sequence_length=SD35_T5_MIN_TOKENS
    )
    for backend_tokens in (sd35, None):
        if backend_tokens is None:
            backend_tokens = DiffusersFlowBackend(
                sd35.transformer,
                sd35.vae,
                sd35.text_encoder,
                HFTokenizerAdapter(tokenizer),
                text_encoder_2=sd35.text_encoder_2,
                tokenizer_2=HFTokenizerAdapter(tokenizer_2),
                text_encoder_3=sd35.text_encoder_3,
                tokenizer_3=sd35.tokenizer_3,
            )
        got = backend_tokens.encode_prompt(PROMPT)
        assert got.context.shape == (1, 77 + 77, 32) and got.pooled.shape == (1, 16)
        assert torch.allclose(got.context, context.float(), atol=1e-6)
        assert torch.allclose(got.pooled, pooled.float(), atol=1e-6)

    settings = SamplingSettings(seed=5, steps=4, timesteps=(249, 749), cfg=cfg, width=SIZE, height=48)
    sample = sd35.sample(PROMPT, settings)
    noise = make_noise(5, (1, 16, 6, SIZE // 8))
    latent = pipe(
        PROMPT,
        height=48,
        width=SIZE,
        sigmas=pipeline_sigmas(sample.meta["schedule"]),
        num_inference_steps=4,
        guidance_scale=cfg,
        latents=noise,
        output_type="latent",
        max_sequence_length=SD35_T5_MIN_TOKENS,
    ).images
    assert relative_error(sd35.model_latent(sample.latent), latent) < 1e-4
    assert sample.meta["branches"] == (1 if cfg == 1 else 2)


def test_sd35_t5_tokens_have_comfyui_s_lengths(sd35):
    """SD 3.5's T5 part is padded to 77 tokens as ComfyUI's SD3 text encoder pads it (T5 attends to
    its padding, so the padded length changes every token's state: the pipeline's 256 made another
    conditioning than ComfyUI's for the same prompt) and grows with a longer prompt as ComfyUI's
    does, past the pipeline's 256 too (with a notice); without T5 the context is the 77 CLIP tokens
    alone, as ComfyUI gives it without a T5 file (the pipeline appends 256 zero tokens)."""
    tokenizer = sd35.tokenizer_3
    # (prompt, CLIP windows: "y" * 400 is 100 CLIP BPE tokens, T5 tokens: one byte each and </s>)
    for text, windows, t5_tokens in (
        ("a cat", 1, SD35_T5_MIN_TOKENS),
        ("x" * 99, 1, 100),
        ("y" * 400, 2, 401),
    ):
        got = sd35.encode_prompt(text)
        clip_tokens = 77 * windows
        assert got.context.shape == (1, clip_tokens + t5_tokens, 32), text[:10]
        alone = sd35.text_encoder_3(torch.tensor([tokenizer(text).input_ids]))[0]
        if len(text) < SD35_T5_MIN_TOKENS:  # its own tokens and the end token, then padding
            padded = tokenizer(text, padding="max_length", max_length=SD35_T5_MIN_TOKENS).input_ids
            assert torch.allclose(
                got.context[:, 77:], sd35.text_encoder_3(torch.tensor([padded]))[0], atol=1e-6
            )
            assert not torch.allclose(got.context[:, 77 : 77 + len(text) + 1], alone, atol=1e-3)
        else:  # nothing padded, nothing cut
            assert torch.allclose(got.context[:, clip_tokens:], alone, atol=1e-6)
    assert "T5-XXL reads all 400 tokens of the prompt" in sd35.prompt_notice("y" * 400)
    assert sd35.prompt_notice("a cat") is None
    no_t5 = DiffusersFlowBackend(
        sd35.transformer, sd35.vae, sd35.text_encoder, text_encoder_2=sd35.text_encoder_2
    )
    without = no_t5.encode_prompt("a cat")
    assert without.context.shape == (1, 77, 32)
    assert torch.equal(without.context, sd35.encode_prompt("a cat").context[:, :77])


# -- what is captured --------------------------------------------------------------------------------
@pytest.mark.parametrize("which", [ZIMAGE, SD35])
def test_captured_features_have_the_spec_shapes(zimage, sd35, which):
    backend = zimage if which == ZIMAGE else sd35
    for cfg, branches in ((1.0, 1), (2.0, 2)):
        settings = SamplingSettings(seed=0, steps=8, cfg=cfg, width=SIZE, height=48)
        sample = backend.sample("a cat", settings)
        assert sample.spec.family == which and sample.branches == branches
        assert sample.timesteps == (124, 249, 499, 749)  # the flow default, on the 8-step grid
        for maps in sample.unet.values():
            assert [tuple(m.shape) for m in maps] == [
                (branches, *s) for s in backend.spec.unet_shapes(SIZE, 48)
            ]
        assert [tuple(v.shape[1:]) for v in sample.vae] == backend.spec.vae_shapes(SIZE, 48)
        assert sample.latent.shape == (1, 16, 6, 8) and sample.image.shape == (1, 3, 48, SIZE)
        assert len(sample.split()) == 1


def test_a_zimage_tap_is_the_block_s_image_tokens_in_row_major_order(zimage):
    """Tapping the LAST block, the captured map run through the model's own final layer and
    unpatchify gives the model's output: the map holds exactly the image tokens (no caption or
    padding token), in the order the model unpatchifies them."""
    last = len(zimage.transformer.layers) - 1
    backend = DiffusersFlowBackend(
        zimage.transformer, zimage.vae, zimage.text_encoder, zimage.tokenizer, blocks=(last,)
    )
    cond = backend.encode_prompt(PROMPT)
    x = torch.randn(1, 16, 6, 8)
    sigma = 0.7
    recorder = UNetRecorder(backend.spec, [499], torch.float32, branches=(COND,))
    with torch.no_grad():
        velocity = backend._guided_velocity(x, sigma, 499, cond, None, 1.0, (COND,), recorder)
        (tap,) = recorder.result()[499]  # [1, 32, 3, 4]
        tokens = tap.flatten(2).transpose(1, 2)[0]
        t = torch.tensor([1.0 - sigma])
        adaln = backend.transformer.t_embedder(t * backend.transformer.t_scale)
        out = backend.transformer.all_final_layer["2-1"](tokens.unsqueeze(0), c=adaln)[0]
        (rebuilt,) = backend.transformer.unpatchify([out], [(1, 6, 8)], 2, 1)
    assert tap.shape == (1, 32, 3, 4)
    assert torch.allclose(-rebuilt.squeeze(1), velocity[0], atol=1e-5)


def test_an_sd35_tap_is_the_block_s_image_stream(sd35):
    """The same check on SD 3.5: the last joint block's image stream, through norm_out, proj_out
    and the model's unpatchify, is the velocity."""
    last = len(sd35.transformer.transformer_blocks) - 1
    backend = DiffusersFlowBackend(
        sd35.transformer,
        sd35.vae,
        sd35.text_encoder,
        text_encoder_2=sd35.text_encoder_2,
        text_encoder_3=sd35.text_encoder_3,
        tokenizer_3=sd35.tokenizer_3,
        blocks=(last,),
    )
    cond = backend.encode_prompt(PROMPT)
    x = torch.randn(1, 16, 6, 8)
    sigma = 0.7
    recorder = UNetRecorder(backend.spec, [499], torch.float32, branches=(COND,))
    tr = backend.transformer
    with torch.no_grad():
        velocity = backend._guided_velocity(x, sigma, 499, cond, None, 1.0, (COND,), recorder)
        (tap,) = recorder.result()[499]
        tokens = tap.flatten(2).transpose(1, 2)
        temb = tr.time_text_embed(torch.tensor([sigma * 1000.0]), cond.pooled)
        out = tr.proj_out(tr.norm_out(tokens, temb)).reshape(1, 3, 4, 2, 2, 16)
        rebuilt = torch.einsum("nhwpqc->nchpwq", out).reshape(1, 16, 6, 8)
    assert torch.allclose(rebuilt, velocity, atol=1e-5)


def test_one_branch_at_cfg_1_evaluates_no_negative(zimage, monkeypatch):
    encoded = []
    original = type(zimage).encode_prompt

    def counting(self, text):
        encoded.append(text)
        return original(self, text)

    monkeypatch.setattr(type(zimage), "encode_prompt", counting)
    sample = zimage.sample("a cat", SamplingSettings(seed=0, steps=8, cfg=1.0, width=SIZE, height=SIZE))
    assert encoded == ["a cat"] and sample.branches == 1 and sample.meta["branches"] == 1
    assert all(m.shape[0] == 1 for maps in sample.unet.values() for m in maps)
    # the same call at cfg 2 encodes and captures the negative too
    encoded.clear()
    sample = zimage.sample("a cat", SamplingSettings(seed=0, steps=8, cfg=2.0, width=SIZE, height=SIZE))
    assert "" in encoded and sample.branches == 2


def test_the_recorder_keeps_uncond_first_and_refuses_unknown_branches():
    from helpers_spec import sd15_spec

    assert UNetRecorder(sd15_spec(), [1], branches=(COND, UNCOND)).branches == (UNCOND, COND)
    with pytest.raises(ValueError, match="branches"):
        UNetRecorder(sd15_spec(), [1], branches=(5,))


# -- hooks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", [ZIMAGE, SD35])
def test_no_hooks_left_after_success_failure_and_interrupt(zimage, sd35, which):
    backend = zimage if which == ZIMAGE else sd35
    modules = [*backend.transformer.modules(), *backend.vae.modules()]
    blocks = backend.transformer.layers if which == ZIMAGE else backend.transformer.transformer_blocks

    def hook_count():
        return sum(len(m._forward_hooks) for m in modules)

    settings = SamplingSettings(seed=0, steps=8, cfg=2.0, width=SIZE, height=SIZE)
    before = hook_count()
    backend.sample("a", settings)
    assert hook_count() == before
    for error in (RuntimeError("out of memory"), KeyboardInterrupt()):

        def fail(module, inputs, output, error=error):
            if len(blocks[1]._forward_hooks) > 0:  # raise while DiffSketch's hooks are on
                raise error

        failing = blocks[0].register_forward_hook(fail)
        try:
            with pytest.raises(type(error)):
                backend.sample("a", settings)
        finally:
            failing.remove()
        assert hook_count() == before


# -- inversion ---------------------------------------------------------------------------------------
def test_euler_inversion_is_exact_for_a_constant_velocity():
    from diffsketch.backends.flow import euler_denoise, euler_invert, flow_sigmas

    torch.manual_seed(0)
    velocity = torch.randn(1, 4, 6, 6)
    latent = torch.randn(1, 4, 6, 6)
    schedule = [999, 749, 499, 249]
    noise = euler_invert(lambda x, sigma, k: velocity, latent, schedule, 3.0)
    assert torch.allclose(
        euler_denoise(lambda x, sigma, k: velocity, noise, schedule, 3.0), latent, atol=1e-5
    )
    assert flow_sigmas([999, 0], 3.0) == [1.0, pytest.approx(3 * 0.001 / (1 + 2 * 0.001)), 0.0]


def test_capture_from_a_picture_on_zimage(zimage):
    torch.manual_seed(0)
    picture = torch.rand(1, 3, SIZE, SIZE)
    capture = zimage.capture_from_image(picture, SamplingSettings(seed=0, steps=8, cfg=1.0), caption="a cat")
    sample = capture.sample
    assert sample.branches == 1 and sample.meta["branches"] == 1 and sample.meta["source"] == "picture"
    assert [tuple(m.shape) for m in sample.unet[499]] == [
        (1, *s) for s in zimage.spec.unet_shapes(SIZE, SIZE)
    ]
    assert (
        capture.noise.shape == (1, 16, 8, 8) and capture.replay_psnr == capture.replay_psnr
    )  # a number, not NaN


# -- bad input ---------------------------------------------------------------------------------------
def test_sizes_the_transformer_cannot_take_are_refused(zimage):
    with pytest.raises(InvalidInputError, match=r"multiple of 16.*e\.g\. 64 or 80"):
        zimage.check_size(72, 64)
    zimage.check_size(48, 80)  # multiples of 16 are fine
    with pytest.raises(InvalidInputError, match="Z-Image, SD 3.5 and Flux.1 take multiples of 16"):
        SamplingSettings(width=40, height=64)


def test_cfg_above_1_on_zimage_turbo_is_allowed_with_a_notice(zimage, sd35):
    settings = SamplingSettings(seed=0, steps=8, cfg=3.0, width=SIZE, height=SIZE)
    with pytest.warns(UserWarning, match="guidance-distilled.*twice the cost.*oversaturates"):
        sample = zimage.sample("a", settings)
    assert sample.branches == 2
    assert zimage.guidance_notice(1.0) is None and sd35.guidance_notice(4.5) is None
    # Turbo and base share their architecture: the notice says it does not apply to base
    assert (
        "Z-Image base is not guidance-distilled: with a base model, cfg 3 is right"
        in zimage.guidance_notice(3.0)
    )


def test_family_conditioning_rules(zimage, sd35):
    ok = zimage.check_conditioning(Conditioning(torch.zeros(1, 13, 16)), "positive")
    assert ok.context.shape == (1, 13, 16)
    with pytest.raises(InvalidInputError, match=r"T >= 1 tokens"):
        zimage.check_conditioning(Conditioning(torch.zeros(1, 13, 32)), "positive")
    with pytest.raises(InvalidInputError, match="pooled embedding"):
        zimage.check_conditioning(Conditioning(torch.zeros(1, 13, 16), torch.zeros(1, 16)), "positive")
    sd35.check_conditioning(Conditioning(torch.zeros(1, 77 + 5, 32), torch.zeros(1, 16)), "positive")
    with pytest.raises(InvalidInputError, match=r"77 CLIP-L/G tokens"):
        sd35.check_conditioning(Conditioning(torch.zeros(1, 50, 32), torch.zeros(1, 16)), "positive")
    with pytest.raises(InvalidInputError, match=r"pooled text embedding \[1, 16\]"):
        sd35.check_conditioning(Conditioning(torch.zeros(1, 100, 32)), "positive")


def test_sd35_samples_contexts_of_different_lengths(sd35):
    """A negative of another token count (ComfyUI's T5 lengths differ from the pipeline's 256) runs
    as a call of its own, not zero-padded into the batch."""
    cond = sd35.encode_prompt("a cat")
    uncond = Conditioning(sd35.encode_prompt("").context[:, :100], sd35.encode_prompt("").pooled)
    sample = sd35.sample(
        cond, SamplingSettings(seed=0, steps=8, cfg=2.0, width=SIZE, height=SIZE), uncond=uncond
    )
    assert sample.branches == 2 and torch.isfinite(sample.latent).all()


def test_a_dit_family_not_supported_is_refused_by_the_loader(tmp_path):
    from diffsketch.backends.diffusers import DiffusersBackend

    for sub in ("transformer", "vae"):
        (tmp_path / sub).mkdir()
    (tmp_path / "transformer" / "config.json").write_text(
        json.dumps({"_class_name": "Flux2Transformer2DModel"})
    )
    with pytest.raises(
        UnsupportedModelError, match=r"Flux\.2 transformer.*Z-Image \(Turbo and base\).*SD 3\.5.*Flux\.1"
    ):
        DiffusersBackend.load(tmp_path)


# -- block analysis ----------------------------------------------------------------------------------
def test_massive_channels_and_spatial_share_on_a_known_map():
    from diffsketch.capture.block_analysis import massive_channels, spatial_share

    torch.manual_seed(0)
    x = torch.randn(1, 64, 8, 8)
    x[:, 5] = 5000.0  # one massive channel, constant over the image (a bias, as DiTF describes)
    flagged = massive_channels(x)
    assert flagged[0].nonzero().flatten().tolist() == [5]
    assert float(spatial_share(x)) < 0.01  # the constant channel dominates the energy
    assert float(spatial_share(x, ~flagged)) > 0.9  # without it, the map varies over the image


def test_block_analysis_on_every_block_of_a_tiny_zimage(zimage):
    from diffsketch.capture.block_analysis import run_block_analysis

    backend = DiffusersFlowBackend(
        zimage.transformer, zimage.vae, zimage.text_encoder, zimage.tokenizer, blocks=tuple(range(6))
    )
    result = run_block_analysis(backend, ["a cat"], 1, 4, width=SIZE, height=SIZE)
    assert result.blocks == [f"layers.{i}" for i in range(6)] and result.timesteps == [249, 499, 749, 999]
    assert result.massive.shape == result.spatial.shape == (4, 6) and result.similarity.shape == (4, 5)
    assert ((result.spatial >= 0) & (result.spatial <= 1 + 1e-5)).all() and (result.massive >= 1).all()
    assert len(result.table().splitlines()) == 7 and json.dumps(result.to_dict())


def test_the_timestep_analysis_runs_on_the_flow_grid_with_one_branch(zimage):
    from diffsketch.capture.analysis import run_timestep_analysis

    result = run_timestep_analysis(
        zimage, ["a cat"], 2, 4, k=2, cfg=1.0, width=SIZE, height=SIZE, n_components=2
    )
    assert set(result.chosen) <= {249, 499, 749, 999} and len(result.chosen) == 2
    with pytest.raises(InvalidInputError, match="include_uncond"):
        run_timestep_analysis(
            zimage, ["a cat"], 1, 4, k=2, cfg=1.0, width=SIZE, height=SIZE, include_uncond=True
        )


@pytest.mark.parametrize(
    "key, what",
    [
        ("joint_blocks.0.x_block.attn.qkv.weight", "an SD 3.x MM-DiT"),
        ("double_blocks.0.img_attn.qkv.weight", "a Flux transformer"),
        ("cap_embedder.1.weight", "a Z-Image / Lumina 2 transformer"),
    ],
)
def test_a_transformer_single_file_is_refused_naming_it_and_what_is_read(key, what):
    from diffsketch.backends.checkpoint import ldm_unet_params

    with pytest.raises(UnsupportedModelError, match=f"is {what}, in one file.*diffusers folders only"):
        ldm_unet_params({f"model.diffusion_model.{key}": torch.zeros(1)})


def test_flow_grid_sigmas_and_indices():
    from diffsketch.capture.timesteps import flow_grid, flow_index, flow_sigma

    # ComfyUI's "simple" scheduler: 999 - int(i * 1000 / steps)
    assert flow_grid(8) == [124, 249, 374, 499, 624, 749, 874, 999]
    assert flow_grid(3) == [333, 666, 999]
    assert flow_sigma(999, 3.0) == 1.0 and flow_sigma(499, 1.0) == 0.5
    assert all(flow_index(flow_sigma(k, 3.0), 3.0) == k for k in range(1000))


def test_a_flow_sample_saves_and_loads_on_its_grid(zimage, tmp_path):
    from diffsketch.capture.sample import CapturedSample

    sample = zimage.sample("a", SamplingSettings(seed=0, steps=8, cfg=1.0, width=SIZE, height=SIZE))
    sample.save(tmp_path / "features.safetensors")
    loaded = CapturedSample.load(tmp_path / "features.safetensors")
    assert loaded.plan == sample.plan and loaded.plan.flow and loaded.branches == 1
    assert all(torch.equal(a, b) for t in sample.unet for a, b in zip(sample.unet[t], loaded.unet[t]))


# -- prompts as ComfyUI's CLIP Text Encode encodes them ------------------------------------------------
# weights and escaped parentheses on CLIP and T5 (none on Z-Image's Qwen3, which ComfyUI gives the
# text as written), SD 3.5's CLIP in 77-token windows, T5 one sequence padded to its minimum length
# and growing past it, Qwen3 never cut; Fit Conditions names the prompt to shorten and why
CAT_100 = " ".join(["cat"] * 100)  # 100 CLIP tokens (two windows: 75 + 25), 399 T5 bytes


def clip_window(tokenizer, ids: list[int]) -> torch.Tensor:
    ids = [tokenizer.bos, *ids, tokenizer.eos]
    return torch.tensor([ids + [tokenizer.pad] * (77 - len(ids))])


def t5_states(encoder, tokenizer, ids: list[int], length: int) -> torch.Tensor:
    """T5's last hidden states of ``ids`` padded with the tokenizer's pad token to ``length``."""
    return encoder(torch.tensor([ids + [tokenizer.pad_token_id] * (length - len(ids))]))[0]


def penultimate(encoder, ids: torch.Tensor) -> torch.Tensor:
    return encoder(ids, output_hidden_states=True).hidden_states[-2]


# -- the rule ------------------------------------------------------------------------------------------
def test_t5_is_one_sequence_padded_to_its_minimum_and_growing_past_it():
    """ComfyUI's T5 tokenizers: no start token, no windows, the weighted segments' tokens, the end
    token, padding up to min_length only; the empty prompt is the end token padded alike."""
    _, tokenizer = tiny_t5()
    t5 = T5TokenizerAdapter(tokenizer)
    short = prompt_windows("a (b:1.5) c", t5, window=None, min_length=8)
    assert short.ids.tolist() == [tokenizer("a b c").input_ids + [t5.pad] * 2]
    assert short.weights.tolist() == [[1.0, 1.0, 1.5, 1.0, 1.0, 1.0, 1.0, 1.0]]
    long = prompt_windows("x" * 300, t5, window=None, min_length=8)
    assert long.ids.shape == (1, 301) and long.tokens == 300 and not long.weighted
    assert empty_window(t5, 4).tolist() == [[t5.eos, t5.pad, t5.pad, t5.pad]]


def test_sd35_weights_move_clip_and_t5_states_from_the_empty_prompt(sd35):
    plain = sd35.encode_prompt("a red cat")
    # the weight syntax is not text: weight 1 is the plain prompt
    assert torch.equal(sd35.encode_prompt("a (red:1.0) cat").context, plain.context)
    half, double = sd35.encode_prompt("a (red:1.5) cat"), sd35.encode_prompt("a (red:2) cat")
    # weights leave the pooled embedding (the unweighted first window's) alone
    assert torch.allclose(half.pooled, plain.pooled, atol=1e-6)
    assert torch.allclose(double.pooled, plain.pooled, atol=1e-6)
    moved = (half.context - plain.context).abs().amax(-1)[0] > 1e-6
    # "red": CLIP BPE token 2 (after the start token and "a"), T5 bytes 2-4 after the 77 CLIP tokens
    assert moved.nonzero().flatten().tolist() == [2, 77 + 2, 77 + 3, 77 + 4]
    # empty + w (token - empty) is linear in w: weight 2 moves twice as far as 1.5
    assert torch.allclose(double.context - plain.context, 2 * (half.context - plain.context), atol=1e-5)
    # from the empty prompt at the same position: CLIP-L's start, end, end..., T5's </s> and padding
    t5 = sd35.text_encoder_3
    empty_t5 = t5_states(t5, sd35.tokenizer_3, [sd35.tokenizer_3.eos_token_id], 77)
    assert torch.allclose(
        half.context[0, 77 + 2], empty_t5[0, 2] + 1.5 * (plain.context[0, 77 + 2] - empty_t5[0, 2])
    )
    empty_l = penultimate(sd35.text_encoder, clip_window(sd35.tokenizer, []))
    l_part = slice(0, TINY_SD3_CLIP_L_DIM)
    expected_l = empty_l[0, 2] + 1.5 * (plain.context[0, 2, l_part] - empty_l[0, 2])
    assert torch.allclose(half.context[0, 2, l_part], expected_l, atol=1e-6)


def test_escaped_parentheses_are_literal_text_in_clip_and_t5(sd35):
    got = sd35.encode_prompt("a \\(red\\) cat")
    text = "a (red) cat"
    clip_l = penultimate(sd35.text_encoder, clip_window(sd35.tokenizer, sd35.tokenizer.ids(text)))
    assert torch.allclose(got.context[:, :77, :TINY_SD3_CLIP_L_DIM], clip_l, atol=1e-6)
    t5 = t5_states(sd35.text_encoder_3, sd35.tokenizer_3, sd35.tokenizer_3(text).input_ids, 77)
    assert torch.allclose(got.context[:, 77:], t5, atol=1e-6)


def test_sd35_clip_opens_a_window_per_75_tokens_and_t5_is_not_cut(sd35):
    got = sd35.encode_prompt(CAT_100)
    assert got.context.shape == (1, 2 * 77 + 400, 32)
    cat = sd35.tokenizer.ids("cat")
    for window, count in ((0, 75), (1, 25)):
        expected = penultimate(sd35.text_encoder, clip_window(sd35.tokenizer, cat * count))
        rows = slice(77 * window, 77 * (window + 1))
        assert torch.allclose(got.context[:, rows, :TINY_SD3_CLIP_L_DIM], expected, atol=1e-6), window
    first = sd35.text_encoder(clip_window(sd35.tokenizer, cat * 75)).text_embeds
    assert torch.allclose(got.pooled[:, :TINY_SD3_CLIP_L_DIM], first, atol=1e-6)
    t5 = t5_states(sd35.text_encoder_3, sd35.tokenizer_3, sd35.tokenizer_3(CAT_100).input_ids, 400)
    assert torch.allclose(got.context[:, 154:], t5, atol=1e-6)
    notice = sd35.prompt_notice(CAT_100)
    assert "CLIP-L and bigG encode it in 2 windows" in notice and "T5-XXL reads all 399 tokens" in notice


def test_flux_t5_grows_past_256_with_weights_and_the_pooled_is_comfyui_s_first_window():
    flux = tiny_flux_backend(0)
    t5, tokenizer = flux.text_encoder_2, flux.tokenizer_2
    long_text = "x" * 300
    got = flux.encode_prompt(long_text)
    assert got.context.shape == (1, 301, 32)
    assert torch.allclose(
        got.context, t5_states(t5, tokenizer, tokenizer(long_text).input_ids, 301), atol=1e-6
    )
    # T5 weights: "(red:1.5)" moves bytes 2-4 from the empty prompt padded to 256
    plain, half = flux.encode_prompt("a red cat"), flux.encode_prompt("a (red:1.5) cat")
    empty = t5_states(t5, tokenizer, [tokenizer.eos_token_id], 256)
    expected = plain.context.clone()
    expected[0, 2:5] = empty[0, 2:5] + 1.5 * (plain.context[0, 2:5] - empty[0, 2:5])
    assert torch.allclose(half.context, expected, atol=1e-6)
    # a weighted span of under 8 tokens that does not fit the first window moves whole to the
    # next: CLIP-L's pooled embedding is then the first window's 73 "cat" alone
    cat = flux.tokenizer.ids("cat")
    straddling = flux.encode_prompt(" ".join(["cat"] * 73) + " (red dog house:1.2)")
    alone = flux.text_encoder(clip_window(flux.tokenizer, cat * 73)).pooler_output
    assert torch.allclose(straddling.pooled, alone, atol=1e-6)
    assert "CLIP-L's pooled embedding is its first window's" in flux.prompt_notice(CAT_100)


def test_zimage_reads_weights_as_text_makes_escapes_plain_and_cuts_nothing(zimage):
    pipe = zimage_pipeline(zimage)

    def pipeline(text):
        (states,), _ = pipe.encode_prompt(text, device="cpu", do_classifier_free_guidance=False)
        return states.float()

    # ComfyUI disables weights for Qwen3: "(ink:1.2)" is text, as the pipeline reads it
    assert torch.allclose(zimage.encode_prompt("(ink:1.2) sketch").context[0], pipeline("(ink:1.2) sketch"))
    assert "takes no prompt weights" in zimage.prompt_notice("(ink:1.2) sketch")
    assert zimage.prompt_notice("ink sketch") is None
    # ... but it still turns \( \) into plain parentheses
    assert torch.allclose(zimage.encode_prompt("\\(ink\\) sketch").context[0], pipeline("(ink) sketch"))
    # and reads every token (the pipeline cuts at 512)
    text = "y" * 600
    got = zimage.encode_prompt(text)
    chat = zimage.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    ids = zimage.tokenizer(chat, return_tensors="pt").input_ids
    assert got.context.shape[1] == ids.shape[1] > 600
    assert torch.allclose(got.context, zimage.text_encoder(ids, output_hidden_states=True).hidden_states[-2])
    assert "all are encoded, as ComfyUI encodes them" in zimage.prompt_notice(text)


def test_fit_conditions_names_the_prompt_to_shorten_and_the_family_s_lengths(sd35):
    def fit(backend, prompts):
        return ConditionSampler.fit_from_prompts(backend.encode_prompt, prompts, family=backend.spec.family)

    with pytest.raises(
        InvalidInputError, match=r"over 75 CLIP tokens .* or over 76 T5 tokens.*shorten prompt 2"
    ):
        fit(sd35, ["a cat", CAT_100])
    # the first prompt is the long one: it is named, not every later one
    with pytest.raises(InvalidInputError, match=r"shorten prompt 1 'cat cat"):
        fit(sd35, [CAT_100, "a cat"])
    with pytest.raises(InvalidInputError, match=r"prompt 2 'xxx.*over 255 T5 tokens.*shorten prompt 2"):
        fit(tiny_flux_backend(0), ["a cat", "x" * 300])
