"""Write Z-Image's text encoder for CLIPLoader (``qwen_3_4b.safetensors``' layout) with random
weights, SHRUNK in a way ComfyUI cannot load on its own, and make a ComfyUI load it.

ComfyUI tells Qwen3-4B by its keys (hidden size 2560 and the q/k norms: ``sd.detect_te_model`` ->
QWEN3_4B) but builds the model from a FIXED config (``text_encoders.llama.Qwen3_4BConfig``: 36
layers, FFN 9728; 4.0 G parameters, 8 GB in bfloat16 and as much RAM again to run it on a CPU)
whatever the file holds. The file keeps what the tokens and the DiT need: the vocabulary (151936,
the tokenizer's ids), the hidden size (2560, Z-Image's ``cap_feat_dim``), the attention (32 query
and 8 key/value heads of 128, q/k RMS norms, RoPE) and the published file's bfloat16; it has
:data:`QWEN3_LAYERS` layers with a :data:`QWEN3_FFN`-wide FFN (0.47 G parameters, 0.95 GB, most of
it the embedding table). So the ComfyUI that loads it must build that config:
:func:`small_qwen3_config` is ComfyUI's config with those two defaults, which only the tests that
load the file put in ComfyUI's place (:func:`comfy_builds_small_qwen3` in-process; the
``dit_server_node`` custom node in a server of their own), every other test's ComfyUI is left
alone. Not covered by the shrunk file: the depth (the second-to-last hidden state ComfyUI and the
diffusers pipeline read is layer 1 of 3 here, 34 of 36 in Qwen3-4B) and the real weights.
Run: python qwen3_checkpoint.py OUT.safetensors
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_checkpoint import prepare_comfy_import, random_state, save_checkpoint  # noqa: E402

#: The depth and FFN width of the test file's Qwen3 (Qwen3-4B: 36 layers, FFN 9728).
QWEN3_LAYERS = 3
QWEN3_FFN = 512


def small_qwen3_config():
    """ComfyUI's ``Qwen3_4BConfig`` with :data:`QWEN3_LAYERS` layers and a :data:`QWEN3_FFN`-wide
    FFN by default, the rest (vocabulary, hidden size, heads, norms, RoPE) Qwen3-4B's."""
    import comfy.text_encoders.llama as llama

    @dataclasses.dataclass
    class SmallQwen3Config(llama.Qwen3_4BConfig):
        num_hidden_layers: int = QWEN3_LAYERS
        intermediate_size: int = QWEN3_FFN

    return SmallQwen3Config


@contextlib.contextmanager
def comfy_builds_small_qwen3():
    """ComfyUI builds its Qwen3-4B text encoder from :func:`small_qwen3_config` inside the block
    (``llama.Qwen3_4B`` reads the module's config class when it is built), its own after."""
    import comfy.text_encoders.llama as llama

    before = llama.Qwen3_4BConfig
    llama.Qwen3_4BConfig = small_qwen3_config()
    try:
        yield
    finally:
        llama.Qwen3_4BConfig = before


def build_state_dict(comfy_path: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """ComfyUI's Qwen3-4B module (the small config, on the meta device) filled with random weights,
    in bfloat16, under its own key names (which are the published file's)."""
    prepare_comfy_import(comfy_path)
    import comfy.ops
    from comfy.text_encoders.llama import Qwen3_4B

    with comfy_builds_small_qwen3():
        model = Qwen3_4B({}, dtype=torch.bfloat16, device="meta", operations=comfy.ops.disable_weight_init)
    g = torch.Generator().manual_seed(seed)
    return {k: v.to(torch.bfloat16).contiguous() for k, v in random_state(model, g).items()}


if __name__ == "__main__":
    save_checkpoint(sys.argv[1], build_state_dict(os.environ["COMFYUI_PATH"]))
