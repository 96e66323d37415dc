"""CLIP text tokenisation without any download.

Stable Diffusion's text encoders all use OpenAI CLIP's BPE vocabulary. open_clip (a dependency)
ships it, so prompts tokenise to the same ids as ``CLIPTokenizer``, checked in tests against
ComfyUI's tokenizer files when they are available. Only the padding differs: OpenAI CLIP-L (SD 1.x,
SDXL's first encoder) repeats the end token, the OpenCLIP encoders (SD 2.x's ViT-H, SDXL's bigG)
pad with token 0.

Both tokenisers give ``bos``, ``eos``, ``pad`` and ``ids(text)`` (BPE ids without start and end
token), which :func:`~diffsketch.backends.prompt.prompt_windows` turns into 77-token windows;
calling one gives the single window of a short literal text.
"""

from __future__ import annotations

import torch

from ..errors import InvalidInputError
from .prompt import CONTEXT_LENGTH, WINDOW_TOKENS


class _Window:
    bos: int
    eos: int
    pad: int

    def ids(self, text: str) -> list[int]:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, text: str) -> torch.Tensor:
        """``[1, 77]``: start token, the BPE ids of ``text`` (no weights parsed), end token, padding."""
        ids = self.ids(text)
        if len(ids) > WINDOW_TOKENS:
            raise InvalidInputError(
                f"{len(ids)} tokens do not fit one {CONTEXT_LENGTH}-token window; encode prompts with "
                "prompt_windows, which splits them as ComfyUI does"
            )
        ids = [self.bos, *ids, self.eos]
        return torch.tensor([ids + [self.pad] * (CONTEXT_LENGTH - len(ids))], dtype=torch.long)


class ClipBPETokenizer(_Window):
    """open_clip's copy of the CLIP BPE vocabulary; ``pad_token`` defaults to the end token."""

    def __init__(self, pad_token: int | None = None):
        from open_clip.tokenizer import SimpleTokenizer

        self._bpe = SimpleTokenizer()
        self.bos = self._bpe.encoder["<start_of_text>"]
        self.eos = self._bpe.encoder["<end_of_text>"]
        self.pad = self.eos if pad_token is None else int(pad_token)

    def ids(self, text: str) -> list[int]:
        return list(self._bpe.encode(text))


class HFTokenizerAdapter(_Window):
    """A transformers ``CLIPTokenizer`` (from a diffusers folder), with its own padding token."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.bos = int(tokenizer.bos_token_id)
        self.eos = int(tokenizer.eos_token_id)
        self.pad = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )

    def ids(self, text: str) -> list[int]:
        # SDXL's second tokenizer names "!" its padding token; without split_special_tokens every
        # "!" in a prompt would become that special token (id 0) instead of the BPE text ComfyUI
        # reads ("!!" is one token, 748).
        out = self.tokenizer(
            text, add_special_tokens=False, truncation=False, verbose=False, split_special_tokens=True
        )
        return list(out.input_ids)


class T5TokenizerAdapter:
    """A transformers T5 tokenizer (SD 3.5's and Flux.1's T5-XXL) as :func:`~diffsketch.backends.prompt.prompt_windows`
    reads it: no start token, its end token ``</s>``, its padding token; ``ids(text)`` are the
    SentencePiece ids of ``text`` without the end token, as ComfyUI's T5 tokenizer takes them
    (each weighted segment of a prompt tokenised on its own)."""

    bos = None

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos = int(tokenizer.eos_token_id)
        self.pad = int(tokenizer.pad_token_id)

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids)
