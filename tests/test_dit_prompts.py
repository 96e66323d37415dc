"""Prompts on the diffusion transformers (Z-Image, SD 3.5, Flux.1) encoded as ComfyUI's
CLIPTextEncode encodes them, with tiny random-weight encoders: weights and escaped parentheses on
CLIP and T5 (none on Z-Image's Qwen3, which ComfyUI gives the text as written), SD 3.5's CLIP in
77-token windows, T5 one sequence padded to its minimum length and growing past it, Qwen3 never
cut; Fit Conditions names the prompt to shorten and why."""

from __future__ import annotations

import pytest
import torch
from tiny_models import (
    TINY_SD3_CLIP_L_DIM,
    tiny_flux_backend,
    tiny_sd35_backend,
    tiny_t5,
    tiny_zimage_backend,
)

from diffsketch.backends.prompt import empty_window, prompt_windows
from diffsketch.backends.text import T5TokenizerAdapter
from diffsketch.errors import InvalidInputError
from diffsketch.train.conditions import ConditionSampler

CAT_100 = " ".join(["cat"] * 100)  # 100 CLIP tokens (two windows: 75 + 25), 399 T5 bytes


@pytest.fixture(scope="module")
def sd35():
    return tiny_sd35_backend(0)


@pytest.fixture(scope="module")
def flux():
    return tiny_flux_backend(0)


@pytest.fixture(scope="module")
def zimage():
    return tiny_zimage_backend(0)


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


def test_flux_t5_grows_past_256_with_weights_and_the_pooled_is_comfyui_s_first_window(flux):
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
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline(
        scheduler=None,
        vae=zimage.vae,
        text_encoder=zimage.text_encoder,
        tokenizer=zimage.tokenizer,
        transformer=zimage.transformer,
    )

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


def test_fit_conditions_names_the_prompt_to_shorten_and_the_family_s_lengths(sd35, flux):
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
        fit(flux, ["a cat", "x" * 300])
