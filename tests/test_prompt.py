"""Prompt weights, escapes, 75-token windows and CLIP skip in the diffusers backend
(diffsketch/backends/prompt.py), and SD 2.x single files with 23 or 24 text-encoder layers."""

from __future__ import annotations

import pytest
import torch
from compare import TAG_PROMPT
from tiny_models import (
    tiny_backend,
    tiny_sd2_backend,
    tiny_sdxl_backend,
    tiny_text_encoder,
    tiny_unet,
    tiny_vae,
)

from diffsketch.backends.conditioning import Conditioning
from diffsketch.backends.prompt import (
    PromptWindows,
    parse_weights,
    prompt_windows,
    weighted_embedding,
    window_notice,
)
from diffsketch.capture.sampling import SamplingSettings
from diffsketch.errors import InvalidInputError, UnsupportedModelError


# --- parsing --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("a horse", [("a horse", 1.0)]),
        ("a (horse) in mud", [("a ", 1.0), ("horse", 1.1), (" in mud", 1.0)]),
        ("((horse))", [("horse", pytest.approx(1.21))]),
        ("(horse:1.5)", [("horse", 1.5)]),
        # an explicit weight replaces the enclosing one; the plain group inside multiplies it
        ("((horse):0.5) cat", [("horse", pytest.approx(0.55)), (" cat", 1.0)]),
        ("(a (b:2) c)", [("a ", 1.1), ("b", 2.0), (" c", 1.1)]),
        # the last colon holds the weight; without a number after it the colon is text
        ("(12:00:1.3)", [("12:00", 1.3)]),
        ("(ratio:wide)", [("ratio:wide", pytest.approx(1.1))]),
        # escaped parentheses are text, and do not open or close groups
        ("\\(artist\\)", [("(artist)", 1.0)]),
        ("(\\(artist\\):1.2)", [("(artist)", 1.2)]),
        ("\\(a (b:0.8)\\)", [("(a ", 1.0), ("b", 0.8), (")", 1.0)]),
        # a group never closed is text
        ("a (b", [("a ", 1.0), ("(b", 1.0)]),
        ("", []),
    ],
)
def test_parse_weights(text, expected):
    assert parse_weights(text) == expected


# --- windows --------------------------------------------------------------------------------------
class WordTokenizer:
    """One token per word: ``w<n>`` is token n; start 1, end 2, padding 0."""

    bos, eos, pad = 1, 2, 0

    def ids(self, text):
        return [int(word[1:]) for word in text.replace(",", " ").split()]


def words(first, count):
    return " ".join(f"w{i}" for i in range(first, first + count))


def test_a_prompt_of_75_tokens_is_one_full_window():
    win = prompt_windows(words(100, 75), WordTokenizer())
    assert win.count == 1 and win.tokens == 75
    assert win.ids[0].tolist() == [1, *range(100, 175), 2]
    assert window_notice(win) is None


def test_a_long_span_is_cut_at_75_tokens_and_the_rest_starts_a_window():
    win = prompt_windows(words(100, 80), WordTokenizer())
    assert win.count == 2 and win.ids.shape == (2, 77) and win.tokens == 80
    assert win.ids[0].tolist() == [1, *range(100, 175), 2]
    assert win.ids[1].tolist() == [1, *range(175, 180), 2] + [0] * 70
    assert "2 windows" in window_notice(win) and "80 tokens" in window_notice(win)


def test_a_short_weighted_span_moves_whole_to_the_next_window():
    # 72 plain tokens leave room for 3; the 5-token weighted span moves on, the window is padded
    win = prompt_windows(f"{words(100, 72)} (w500 w501 w502 w503 w504:1.3) w600", WordTokenizer())
    assert win.ids[0].tolist() == [1, *range(100, 172), 2, 0, 0, 0]
    assert win.ids[1, :8].tolist() == [1, 500, 501, 502, 503, 504, 600, 2]
    assert win.weights[1, 1:6].tolist() == [pytest.approx(1.3)] * 5 and win.weights[1, 6] == 1.0
    assert win.weights[0].eq(1.0).all()


def test_a_weighted_span_of_8_tokens_or_more_is_cut_where_the_window_ends():
    win = prompt_windows(f"{words(100, 72)} ({words(500, 8)}:0.5)", WordTokenizer())
    assert win.ids[0, 73:].tolist() == [500, 501, 502, 2]
    assert win.weights[0, 73:76].tolist() == [0.5] * 3 and win.weights[0, 76] == 1.0
    assert win.ids[1, :7].tolist() == [1, 503, 504, 505, 506, 507, 2]


def test_textual_inversion_embeddings_are_refused_by_name():
    with pytest.raises(InvalidInputError, match="embedding:easynegative"):
        prompt_windows("a horse, embedding:easynegative", WordTokenizer())


def test_weighting_is_relative_to_the_empty_prompt_and_the_pooled_is_the_first_windows():
    windows = PromptWindows(
        ids=torch.tensor([[1] * 77, [2] * 77]),
        weights=torch.ones(2, 77).index_put_((torch.tensor([0]), torch.tensor([3])), torch.tensor(2.0)),
        tokens=100,
    )
    hidden = torch.randn(3, 77, 4)
    pooled = torch.randn(3, 5)
    seen = []

    def run(ids):
        seen.append(ids)
        return hidden, pooled

    context, first_pooled = weighted_embedding(windows, torch.full((1, 77), 9), run)
    # the empty prompt is encoded with the windows, as a third row
    assert seen[0][:, 0].tolist() == [1, 2, 9]
    expected = hidden[:2].clone()
    expected[0, 3] = hidden[2, 3] + 2.0 * (hidden[0, 3] - hidden[2, 3])
    assert torch.equal(context, expected.reshape(1, 154, 4))
    assert torch.equal(first_pooled, pooled[:1])


# --- the diffusers backend ------------------------------------------------------------------------
def hf_windows(encoder, windows, layers, norm):
    """The expected embedding of ``windows``: the text encoder run by hand on each window."""
    out = encoder(input_ids=windows.ids, output_hidden_states=True).hidden_states[layers]
    return encoder.final_layer_norm(out) if norm else out


@torch.no_grad()
def test_a_long_weighted_prompt_is_encoded_in_windows_with_weights():
    backend = tiny_backend(0)
    encoder = backend.text_encoder
    windows = prompt_windows(TAG_PROMPT, backend.tokenizer)
    assert windows.count == 3 and windows.weighted
    cond = backend.encode_prompt(TAG_PROMPT)
    assert cond.context.shape == (1, 3 * 77, 32) and cond.pooled is None
    plain = encoder(input_ids=windows.ids).last_hidden_state
    empty = encoder(input_ids=backend.tokenizer("")).last_hidden_state[0]
    # "(masterpiece:1.2)": its tokens are 1.2 times as far from the empty prompt's embedding
    heavy = windows.weights[0] != 1.0
    assert heavy.sum() >= 1 and torch.allclose(windows.weights[0][heavy], torch.tensor(1.2))
    expected = plain.clone()
    expected[0][heavy] = empty[heavy] + 1.2 * (plain[0][heavy] - empty[heavy])
    torch.testing.assert_close(cond.context, expected.reshape(1, 3 * 77, 32))
    # "\(artist\)" is the literal word in parentheses, unweighted, in the text after the weight
    assert parse_weights(TAG_PROMPT)[2][0].startswith(", (artist), solo")
    artist = backend.tokenizer.ids("artist")[0]
    at = windows.ids[0].tolist().index(artist)
    assert windows.ids[0, at - 1] == backend.tokenizer.ids("(")[0] and windows.weights[0, at] == 1.0
    assert "3 windows" in backend.prompt_notice(TAG_PROMPT) and backend.prompt_notice("a horse") is None


@torch.no_grad()
def test_clip_skip_reads_the_layer_clip_set_last_layer_reads():
    from diffsketch.backends.diffusers import DiffusersBackend

    sd1 = tiny_backend(0)
    sd1_skip2 = DiffusersBackend(sd1.unet, sd1.vae, sd1.text_encoder, clip_skip=2)
    win = prompt_windows("a horse", sd1.tokenizer)
    enc = sd1.text_encoder
    torch.testing.assert_close(sd1.encode_prompt("a horse").context, hf_windows(enc, win, 2, True))
    torch.testing.assert_close(sd1_skip2.encode_prompt("a horse").context, hf_windows(enc, win, 1, True))
    assert sd1.clip_skip == 1 and sd1_skip2.clip_skip == 2

    # SDXL: both encoders, penultimate by default, last with clip skip 1; never normed
    for skip, layers in ((None, -2), (2, -2), (1, -1)):
        xl = tiny_sdxl_backend(0, clip_skip=skip)
        win_l = prompt_windows("a horse", xl.tokenizer)
        win_g = prompt_windows("a horse", xl.tokenizer_2)
        expected = torch.cat(
            [
                hf_windows(xl.text_encoder, win_l, layers, False),
                xl.text_encoder_2(input_ids=win_g.ids, output_hidden_states=True).hidden_states[layers],
            ],
            dim=-1,
        )
        cond = xl.encode_prompt("a horse")
        torch.testing.assert_close(cond.context, expected)
        torch.testing.assert_close(cond.pooled, xl.text_encoder_2(input_ids=win_g.ids).text_embeds)


@torch.no_grad()
def test_sd2_folders_count_the_layer_they_leave_out():
    # a diffusers SD 2.x text encoder stores the layers up to the penultimate (2 of 3 here)
    default = tiny_sd2_backend(0)
    win = prompt_windows("a horse", default.tokenizer)
    enc = default.text_encoder
    torch.testing.assert_close(default.encode_prompt("a horse").context, hf_windows(enc, win, 2, True))
    skip3 = tiny_sd2_backend(0, clip_skip=3)
    torch.testing.assert_close(skip3.encode_prompt("a horse").context, hf_windows(enc, win, 1, True))
    with pytest.raises(UnsupportedModelError, match="clip skip 1 takes the output of layer 3.*stores only 2"):
        tiny_sd2_backend(0, clip_skip=1)
    for bad in (0, 4, -1):
        with pytest.raises(InvalidInputError, match="clip skip must be a whole number from 1"):
            tiny_sd2_backend(0, clip_skip=bad)


def test_a_long_condition_samples_beside_the_77_token_empty_prompt():
    """Cross-attention over a context repeated k times equals attention over it once, which is why
    the 77-token negative is repeated up to a long prompt's length (as ComfyUI batches them)."""
    backend = tiny_backend(0)
    cond = backend.encode_prompt("a horse")
    twice = Conditioning(cond.context.repeat(1, 2, 1))
    few = SamplingSettings(seed=1, steps=10, width=64, height=64, timesteps=(1, 501))
    a = backend.sample(cond, few, capture=False)
    b = backend.sample(twice, few, capture=False)
    torch.testing.assert_close(a.image, b.image, atol=1e-4, rtol=1e-4)
    long = backend.sample(TAG_PROMPT, few, capture=False)
    assert torch.isfinite(long.latent).all()


# --- SD 2.x single files with 23 or 24 text-encoder layers ----------------------------------------
SD2_PREFIX = "cond_stage_model.model."


def sd2_unet_64():
    return tiny_unet(0, cross_attention_dim=64, attention_head_dim=(2, 2, 4, 4), use_linear_projection=True)


def open_clip_state(encoder) -> dict[str, torch.Tensor]:
    """``encoder`` (a transformers CLIP text tower) in OpenCLIP's single-file layout."""
    sd = encoder.state_dict()
    out = {
        "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        "positional_embedding": sd["embeddings.position_embedding.weight"],
        "ln_final.weight": sd["final_layer_norm.weight"],
        "ln_final.bias": sd["final_layer_norm.bias"],
        "text_projection": torch.eye(encoder.config.hidden_size),
    }
    for i in range(encoder.config.num_hidden_layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [sd[f"{src}self_attn.{q}_proj.{kind}"] for q in ("q", "k", "v")]
            )
            for a, b in (
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ):
                out[f"{dst}{b}.{kind}"] = sd[f"{src}{a}.{kind}"]
    return {SD2_PREFIX + k: v.clone() for k, v in out.items()}


@torch.no_grad()
@pytest.mark.parametrize("stored", [24, 23])
def test_sd2_single_files_of_23_and_24_layers_condition_on_layer_23(stored):
    from diffsketch.backends.checkpoint import SD2_TEXT_LAYERS, text_encoders
    from diffsketch.backends.diffusers import DiffusersBackend

    # one 64-wide head per layer: the loader sizes OpenCLIP towers with 64-channel heads
    full = tiny_text_encoder(
        0, hidden_act="gelu", num_hidden_layers=24, hidden_size=64, num_attention_heads=1
    )
    sd = open_clip_state(full)
    # diffusers' conversion script writes the tower without its last layer
    sd = {k: v for k, v in sd.items() if stored == 24 or ".resblocks.23." not in k}
    encoder, none = text_encoders(sd, "sd2", "tiny_sd2.safetensors")
    assert none is None and len(encoder.encoder.layers) == stored
    backend = DiffusersBackend(
        sd2_unet_64(),
        tiny_vae(0),
        encoder,
        prediction_type="v_prediction",
        text_encoder_depth=SD2_TEXT_LAYERS,
    )
    win = prompt_windows("a horse", backend.tokenizer)
    # ComfyUI reads SD 2.x after layer 23 of 24 (CLIPSetLastLayer -2), through the final norm
    expected = hf_windows(full, win, 23, True)
    torch.testing.assert_close(backend.encode_prompt("a horse").context, expected)
    if stored == 24:
        last = DiffusersBackend(
            sd2_unet_64(), tiny_vae(0), encoder, text_encoder_depth=SD2_TEXT_LAYERS, clip_skip=1
        )
        torch.testing.assert_close(last.encode_prompt("a horse").context, hf_windows(full, win, 24, True))
    else:
        with pytest.raises(UnsupportedModelError, match="layer 24 .* stores only 23"):
            DiffusersBackend(
                sd2_unet_64(), tiny_vae(0), encoder, text_encoder_depth=SD2_TEXT_LAYERS, clip_skip=1
            )


def test_sd2_single_files_of_other_depths_are_refused():
    from diffsketch.backends.checkpoint import text_encoders

    sd = open_clip_state(tiny_text_encoder(0, hidden_act="gelu", num_hidden_layers=3))
    with pytest.raises(UnsupportedModelError, match="tiny.safetensors: the SD 2.x text encoder has 3 layers"):
        text_encoders(sd, "sd2", "tiny.safetensors")
