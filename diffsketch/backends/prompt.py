"""Prompts encoded the way ComfyUI's CLIPTextEncode encodes them, for the diffusers backend.

The nodes encode with ComfyUI's own CLIP; the command line encodes with diffusers' text encoders
through this module, so a prompt gives the same condition in both:

- Weights: ``(word)`` multiplies the weight by 1.1 per level of nesting, ``(word:1.3)`` sets it
  to 1.3 (replacing, not multiplying, the enclosing weight), ``\\(`` and ``\\)`` are literal
  parentheses. A weighted token's embedding is moved away from the empty prompt's embedding at
  the same position: ``empty + weight * (token - empty)``.
- Length: the prompt is split into windows of 75 tokens, each encoded as its own 77-token
  sequence (start token, up to 75 tokens, end token, padding) and the windows' embeddings are
  joined along the token axis (``[1, 77*k, D]``). A weighted span of fewer than
  :data:`MAX_UNSPLIT_TOKENS` tokens is never cut between two windows: it moves to the next
  one. The pooled embedding (SDXL) is the first window's.
- Layer (CLIP skip): ``clip_skip=1`` is the encoder's last layer, 2 the one before it, and so
  on, counted on the full-depth model as ComfyUI's CLIPSetLastLayer counts ``-1, -2, ...``.
  Each family has its default (:data:`TEXT_LAYOUTS`).
- T5-XXL (SD 3.5, Flux.1) takes the same weights, but in ONE sequence that grows with the prompt
  (no windows, no start token): the prompt's tokens, the end token, padding up to a minimum
  length (:data:`T5_MIN_TOKENS`); the empty prompt the weights move away from is the end token
  padded to the same length (``prompt_windows(..., window=None, min_length=...)``).
- Encoders that take no weights (Z-Image's Qwen3: ComfyUI disables them) read the prompt as
  written, only the escaped parentheses made plain (:func:`literal_prompt`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..capture.spec import FLUX, SD1, SD2, SD35, SDXL
from ..errors import InvalidInputError, UnsupportedModelError

#: Tokens of one CLIP sequence, and of prompt text per window (the rest are start and end).
CONTEXT_LENGTH = 77
WINDOW_TOKENS = CONTEXT_LENGTH - 2
#: A weighted span this long or longer may be cut between two windows; a shorter one moves whole.
MAX_UNSPLIT_TOKENS = 8
#: The weight each plain ``( )`` multiplies by.
PAREN_WEIGHT = 1.1
#: T5-XXL's sequence is padded to at least this many tokens (ComfyUI's T5 tokenizers'
#: ``min_length``: SD 3.5's 77, Flux.1's 256) and grows past it with the prompt. T5 attends to its
#: padding (no attention mask in ComfyUI or the pipelines), so the length changes every token's state.
T5_MIN_TOKENS = {SD35: 77, FLUX: 256}

# Escaped parentheses are held as private-use characters while the brackets are parsed.
_LITERAL_OPEN, _LITERAL_CLOSE = "\ue000", "\ue001"
_EMBEDDING_SYNTAX = re.compile(r"(?:^|[ \n])embedding:")


@dataclass(frozen=True)
class TextLayout:
    """How one of a family's text encoders is read: ``default_skip`` (1 = last layer) and
    whether the chosen layer goes through the encoder's final layer norm."""

    default_skip: int
    final_norm: bool


#: SD 1.x: CLIP-L's last layer, normed. SD 2.x: OpenCLIP-H's penultimate layer, normed. SDXL and
#: SD 3.5: both CLIP encoders' penultimate layers, not normed.
TEXT_LAYOUTS = {
    SD1: TextLayout(default_skip=1, final_norm=True),
    SD2: TextLayout(default_skip=2, final_norm=True),
    SDXL: TextLayout(default_skip=2, final_norm=False),
    SD35: TextLayout(default_skip=2, final_norm=False),
}


# --- parsing --------------------------------------------------------------------------------------
def _protect_escapes(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "()":
            out.append(_LITERAL_OPEN if text[i + 1] == "(" else _LITERAL_CLOSE)
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _restore_escapes(text: str) -> str:
    return text.replace(_LITERAL_OPEN, "(").replace(_LITERAL_CLOSE, ")")


def _top_level_groups(text: str) -> list[str]:
    """``text`` cut into plain runs and outermost ``( ... )`` groups, in order. A ``)`` without
    its ``(`` is plain text (and shifts the depth of what follows, as in ComfyUI)."""
    parts: list[str] = []
    current = ""
    depth = 0
    for ch in text:
        if ch == "(":
            if depth == 0 and current:
                parts.append(current)
                current = ""
            current += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            current += ch
            if depth == 0:
                parts.append(current)
                current = ""
        else:
            current += ch
    if current:
        parts.append(current)
    return parts


def _weighted(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for part in _top_level_groups(text):
        if len(part) < 2 or part[0] != "(" or part[-1] != ")":
            out.append((part, weight))
            continue
        inner, inner_weight = part[1:-1], weight * PAREN_WEIGHT
        colon = inner.rfind(":")
        if colon > 0:
            try:
                inner_weight = float(inner[colon + 1 :])
                inner = inner[:colon]
            except ValueError:
                pass  # "(a:b)" without a number: a plain group whose text keeps the colon
        out.extend(_weighted(inner, inner_weight))
    return out


def parse_weights(text: str) -> list[tuple[str, float]]:
    """``text`` as ``(segment, weight)`` pairs in order, with escaped parentheses restored."""
    return [(_restore_escapes(s), w) for s, w in _weighted(_protect_escapes(text), 1.0)]


def literal_prompt(text: str) -> str:
    """``text`` as ComfyUI hands it to an encoder whose weights it disables (Z-Image's Qwen3):
    ``(word:1.2)`` stays as written, ``\\(`` and ``\\)`` become plain parentheses."""
    refuse_embedding_syntax(text)
    return _restore_escapes(_protect_escapes(text))


def has_weights(text: str) -> bool:
    """Whether ``text`` sets any weight other than 1 (``(word)``, ``(word:1.3)``)."""
    return any(w != 1.0 for s, w in parse_weights(text) if s)


def refuse_embedding_syntax(text: str) -> None:
    """Refuse ``embedding:name`` (ComfyUI's textual-inversion syntax, for every encoder it has)."""
    if _EMBEDDING_SYNTAX.search(text):
        raise InvalidInputError(
            f"the prompt {text!r} names a textual-inversion embedding ('embedding:...'), which the command line "
            "does not load; remove it, or use the ComfyUI nodes with the embedding in ComfyUI's embeddings folder."
        )


# --- tokens and windows ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptWindows:
    """A prompt as ``k`` token sequences: ``ids`` and ``weights`` are ``[k, L]`` (CLIP: ``L = 77``,
    one row per window; T5: one row of the prompt's own length); ``tokens`` is the number of
    prompt tokens (start, end and padding not counted)."""

    ids: torch.Tensor
    weights: torch.Tensor
    tokens: int

    @property
    def count(self) -> int:
        return int(self.ids.shape[0])

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])

    @property
    def weighted(self) -> bool:
        return bool((self.weights != 1.0).any())


def prompt_windows(
    text: str, tokenizer, *, window: int | None = CONTEXT_LENGTH, min_length: int = 0
) -> PromptWindows:
    """Tokenise ``text`` (weights parsed) as ComfyUI's SDTokenizer does.

    ``tokenizer`` has ``bos`` (None: no start token, as T5's), ``eos``, ``pad`` and ``ids(text)``
    (ids without start/end token): :class:`~diffsketch.backends.text.ClipBPETokenizer`,
    ``HFTokenizerAdapter`` or ``T5TokenizerAdapter``. ``window``: the tokens of one sequence with
    its start and end token (CLIP's 77: the prompt is split into windows, each padded to it);
    None: one sequence however long (T5), padded to ``min_length``.
    """
    refuse_embedding_syntax(text)
    spans = [[(t, w) for t in tokenizer.ids(s)] for s, w in parse_weights(text) if s]
    start = [] if tokenizer.bos is None else [(tokenizer.bos, 1.0)]
    end = (tokenizer.eos, 1.0)
    windows: list[list[tuple[int, float]]] = [list(start)]
    room_for = math.inf if window is None else window - 1  # tokens before the end token

    def close(window_tokens):
        window_tokens.append(end)
        length = max(min_length, len(window_tokens) if window is None else window)
        window_tokens.extend([(tokenizer.pad, 1.0)] * (length - len(window_tokens)))

    for span in spans:
        splittable = len(span) >= MAX_UNSPLIT_TOKENS
        while span:
            current = windows[-1]
            free = room_for - len(current)
            if len(span) <= free:
                current.extend(span)
                break
            if splittable:
                current.extend(span[:free])
                span = span[free:]
            close(current)
            windows.append(list(start))
    close(windows[-1])
    return PromptWindows(
        ids=torch.tensor([[t for t, _ in w] for w in windows], dtype=torch.long),
        weights=torch.tensor([[w for _, w in win] for win in windows], dtype=torch.float32),
        tokens=sum(len(s) for s in spans),
    )


def empty_window(tokenizer, length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """``[1, length]`` ids of the empty prompt: start token (if the tokenizer has one), end, padding."""
    ids = ([] if tokenizer.bos is None else [tokenizer.bos]) + [tokenizer.eos]
    return torch.tensor([ids + [tokenizer.pad] * (length - len(ids))], dtype=torch.long)


# --- encoding -------------------------------------------------------------------------------------
def _transformer(encoder):
    """The module holding ``embeddings``/``encoder``/``final_layer_norm``: transformers >= 5 has
    them on ``CLIPTextModel`` itself, ``CLIPTextModelWithProjection`` keeps ``text_model``."""
    return getattr(encoder, "text_model", encoder)


def stored_layers(encoder) -> int:
    return len(_transformer(encoder).encoder.layers)


def layers_to_run(clip_skip: int, depth: int, stored: int, what: str) -> int:
    """How many transformer layers give the output CLIP skip ``clip_skip`` selects on a model of
    ``depth`` layers of which ``stored`` are in the weights, or a clear error."""
    if not isinstance(clip_skip, int) or isinstance(clip_skip, bool) or not 1 <= clip_skip <= depth:
        raise InvalidInputError(
            f"clip skip must be a whole number from 1 (the last layer) to {depth} for the {what}, got {clip_skip!r}"
        )
    needed = depth - clip_skip + 1
    if needed > stored:
        raise UnsupportedModelError(
            f"clip skip {clip_skip} takes the output of layer {needed} of the {what}'s {depth}, but this model stores "
            f"only {stored} of them (diffusers folders and some single files of SD 2.x leave out the last layer, "
            f"which SD 2.x never uses); use clip skip {depth - stored + 1} or more."
        )
    return needed


class TextEncoderReader:
    """One CLIP text encoder (a transformers ``CLIPTextModel[WithProjection]``) read at a chosen
    layer: :meth:`encode` gives the prompt's ``[1, 77*k, D]`` embedding and the first window's
    pooled (projected, where the model has a projection) embedding."""

    def __init__(self, encoder, tokenizer, layout: TextLayout, depth: int, clip_skip: int | None, what: str):
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.layout = layout
        self.clip_skip = layout.default_skip if clip_skip is None else clip_skip
        self.layers = layers_to_run(self.clip_skip, depth, stored_layers(encoder), what)

    def _run(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = next(self.encoder.parameters()).device
        out = self.encoder(input_ids=ids.to(device), output_hidden_states=True)
        hidden = out.hidden_states[self.layers]
        if self.layout.final_norm:
            hidden = _transformer(self.encoder).final_layer_norm(hidden)
        pooled = getattr(out, "text_embeds", None)
        return hidden.float(), None if pooled is None else pooled.float()

    def encode(self, windows: PromptWindows) -> tuple[torch.Tensor, torch.Tensor | None]:
        return weighted_embedding(windows, empty_window(self.tokenizer, windows.length), self._run)


def weighted_embedding(
    windows: PromptWindows,
    empty_ids: torch.Tensor,
    run: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``([1, L*k, D], pooled of the first window or None)``: ``run(ids [n, L])`` encodes a
    batch of windows; where any weight is not 1 the empty prompt (``empty_ids [1, L]``) is
    encoded with them and each weighted token becomes ``empty + weight * (token - empty)`` at its
    position."""
    ids = windows.ids
    if windows.weighted:
        ids = torch.cat([ids, empty_ids.to(ids.dtype)])
    hidden, pooled = run(ids)
    z = hidden[: windows.count]
    if windows.weighted:
        empty = hidden[windows.count :]
        w = windows.weights.to(z.device, z.dtype).unsqueeze(-1)
        z = torch.where(w != 1.0, empty + w * (z - empty), z)
    return z.reshape(1, -1, z.shape[-1]), None if pooled is None else pooled[:1]


def longer_context_hint(family: str) -> str:
    """What gives a prompt a longer context than the family's shortest, for messages that refuse
    prompts of different lengths (Z-Image's Qwen3 gives every prompt its own length)."""
    if family == FLUX:
        return f"prompts over {T5_MIN_TOKENS[FLUX] - 1} T5 tokens make a longer context (T5-XXL grows past {T5_MIN_TOKENS[FLUX]} tokens)"
    if family == SD35:
        return (
            f"prompts over {WINDOW_TOKENS} CLIP tokens (another {CONTEXT_LENGTH}-token window) or over "
            f"{T5_MIN_TOKENS[SD35] - 1} T5 tokens make a longer context"
        )
    return (
        f"prompts over {WINDOW_TOKENS} tokens make a longer context (another {CONTEXT_LENGTH}-token window)"
    )


def window_notice(windows: PromptWindows) -> str | None:
    """A line for the user when the prompt does not fit one window, else None."""
    if windows.count == 1:
        return None
    return (
        f"the prompt is {windows.tokens} tokens, more than CLIP's {WINDOW_TOKENS}: it is encoded in {windows.count} "
        f"windows of up to {WINDOW_TOKENS} tokens ({windows.count * CONTEXT_LENGTH} context tokens), as ComfyUI "
        "encodes it; nothing is cut off."
    )


__all__ = [
    "CONTEXT_LENGTH",
    "TEXT_LAYOUTS",
    "PromptWindows",
    "TextEncoderReader",
    "T5_MIN_TOKENS",
    "TextLayout",
    "has_weights",
    "layers_to_run",
    "literal_prompt",
    "longer_context_hint",
    "parse_weights",
    "prompt_windows",
    "weighted_embedding",
    "window_notice",
]
