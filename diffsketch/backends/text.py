"""CLIP text tokenisation without any download.

Stable Diffusion's text encoders all use OpenAI CLIP's BPE vocabulary. open_clip (a dependency)
ships it, so prompts tokenise to the same ids as ``CLIPTokenizer``, checked in tests against
ComfyUI's tokenizer files when they are available. Only the padding differs: OpenAI CLIP-L (SD 1.x,
SDXL's first encoder) repeats the end token, the OpenCLIP encoders (SD 2.x's ViT-H, SDXL's bigG)
pad with token 0.
"""

from __future__ import annotations

import torch

CONTEXT_LENGTH = 77


class ClipBPETokenizer:
    """Tokenise to ``[1, 77]`` ids: start token, BPE ids (truncated), end token, then padding with
    ``pad_token`` (default: the end token)."""

    def __init__(self, context_length: int = CONTEXT_LENGTH, pad_token: int | None = None):
        from open_clip.tokenizer import SimpleTokenizer

        self._bpe = SimpleTokenizer()
        self.context_length = context_length
        self.bos = self._bpe.encoder["<start_of_text>"]
        self.eos = self._bpe.encoder["<end_of_text>"]
        self.pad = self.eos if pad_token is None else int(pad_token)

    def __call__(self, text: str) -> torch.Tensor:
        ids = self._bpe.encode(text)[: self.context_length - 2]
        ids = [self.bos, *ids, self.eos]
        ids += [self.pad] * (self.context_length - len(ids))
        return torch.tensor([ids], dtype=torch.long)


class HFTokenizerAdapter:
    """Wrap a transformers ``CLIPTokenizer`` (from a diffusers folder) to the same call."""

    def __init__(self, tokenizer, context_length: int = CONTEXT_LENGTH):
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, text: str) -> torch.Tensor:
        out = self.tokenizer(
            text, padding="max_length", max_length=self.context_length, truncation=True, return_tensors="pt"
        )
        return out.input_ids
