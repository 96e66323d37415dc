"""Write the text encoders of SD 3.5 and Flux.1 for CLIPLoader / DualCLIPLoader / TripleCLIPLoader
with random weights: T5-XXL (``t5xxl_fp16.safetensors``' layout) SHRUNK in a way ComfyUI cannot
load on its own, and CLIP-L (``clip_l.safetensors``' layout, full size); and make a ComfyUI load
the T5.

ComfyUI tells T5-XXL by its keys (block 23's gated FFN input of width 4096: ``sd.detect_te_model``
-> T5_XXL, and ``sd.t5xxl_detect`` reads the file's dtype there) but builds the model from a FIXED
config (``comfy/text_encoders/t5_config_xxl.json`` in ``sd3_clip.T5XXLModel``: 64 heads of 64, FFN
10240; 4.8 G parameters, 9.5 GB in float16 and as much RAM again to run it on a CPU) whatever the
file holds. The file keeps what the tokens, the detection and the DiTs need: the vocabulary (32128,
the tokenizer's ids), the width (4096, the context SD 3.5 and Flux.1 take), the depth (24 blocks:
the detection reads block 23), the relative position buckets (32, distance 128), the gated-GELU
FFN and the published file's float16; it has :data:`T5_HEADS` heads of 64 and a :data:`T5_FFN`-wide
FFN (0.20 G parameters, 0.40 GB, two thirds of it the embedding table), the query and key weights
scaled by :data:`T5_QK_SCALE` (why: there). So the ComfyUI that loads
it must build that config: :func:`comfy_builds_small_t5` puts a T5-XXL class with those two values
in ComfyUI's place in-process, and the ``dit_server_node`` custom node does it in a server of its
own; every other test's ComfyUI is left alone. ComfyUI's own way to change a text encoder's config
(``model_options["t5xxl_model_config"]``) is what the small class passes. Not covered by the shrunk
file: the attention width (2 heads where T5-XXL has 64: a head-order mistake still shows, a mistake
that needs many heads would not) and the real weights, whose hidden states are far from these
random ones in scale.

CLIP-L is written full size (ComfyUI fixes its config too, ``sd1_clip_config.json``): 123 M
parameters, 0.25 GB in float16, as in ``clip_l.safetensors``.
Run: python t5_checkpoint.py {t5xxl|clip_l} OUT.safetensors
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_checkpoint import prepare_comfy_import, random_state, save_checkpoint  # noqa: E402

#: The attention heads (of 64) and FFN width of the test file's T5-XXL (T5-XXL: 64 and 10240).
T5_HEADS = 2
T5_FFN = 64
#: The query and key weights' scale against the other weights' N(0, 0.02^2): at 0.02 the attention
#: logits spread by about 13 (T5 does not scale them), the softmax is one-hot and float32 rounding
#: grows through the 24 blocks to 2e-3 of the output (float32 against float64 in one
#: implementation), which would hide a real mismatch; at a quarter it is 1e-6.
T5_QK_SCALE = 0.25
#: What the small T5-XXL changes in ComfyUI's config (``t5_config_xxl.json``).
SMALL_T5_CONFIG = {"num_heads": T5_HEADS, "d_ff": T5_FFN}


def small_t5xxl_class():
    """ComfyUI's ``T5XXLModel`` building :data:`SMALL_T5_CONFIG` over its own config (through
    ``model_options["t5xxl_model_config"]``, which ComfyUI's text-encoder base class reads)."""
    import comfy.text_encoders.sd3_clip as sd3_clip

    class SmallT5XXLModel(sd3_clip.T5XXLModel):
        def __init__(self, *args, model_options={}, **kwargs):  # noqa: B006 (ComfyUI's signature)
            model_options = {**model_options, "t5xxl_model_config": dict(SMALL_T5_CONFIG)}
            super().__init__(*args, model_options=model_options, **kwargs)

    return SmallT5XXLModel


@contextlib.contextmanager
def comfy_builds_small_t5():
    """ComfyUI builds its T5-XXL text encoder (SD 3.5's, Flux.1's) from :data:`SMALL_T5_CONFIG`
    inside the block (``sd3_clip.SD3ClipModel`` and ``flux.FluxClipModel`` read the module's class
    when they are built), its own after."""
    import comfy.text_encoders.sd3_clip as sd3_clip

    before = sd3_clip.T5XXLModel
    sd3_clip.T5XXLModel = small_t5xxl_class()
    try:
        yield
    finally:
        sd3_clip.T5XXLModel = before


def t5_config(comfy_path: str) -> dict:
    """ComfyUI's T5-XXL config with :data:`SMALL_T5_CONFIG` over it."""
    with open(os.path.join(comfy_path, "comfy", "text_encoders", "t5_config_xxl.json")) as f:
        return {**json.load(f), **SMALL_T5_CONFIG}


def build_state_dict(kind: str, comfy_path: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """ComfyUI's T5-XXL (the small config) or CLIP-L module on the meta device filled with random
    weights in float16, under its own key names (which are the published files')."""
    prepare_comfy_import(comfy_path)
    import comfy.clip_model
    import comfy.ops
    from comfy.text_encoders.t5 import T5

    ops = comfy.ops.disable_weight_init
    if kind == "t5xxl":
        model = T5(t5_config(comfy_path), torch.float16, "meta", ops)
    elif kind == "clip_l":
        with open(os.path.join(comfy_path, "comfy", "sd1_clip_config.json")) as f:
            model = comfy.clip_model.CLIPTextModel(json.load(f), torch.float16, "meta", ops)
    else:
        raise SystemExit(f"unknown kind {kind!r}: t5xxl or clip_l")
    g = torch.Generator().manual_seed(seed)
    state = random_state(model, g)
    return {
        k: (
            v * T5_QK_SCALE if k.endswith(("SelfAttention.q.weight", "SelfAttention.k.weight")) else v
        ).contiguous()
        for k, v in state.items()
    }


if __name__ == "__main__":
    save_checkpoint(sys.argv[2], build_state_dict(sys.argv[1], os.environ["COMFYUI_PATH"]))
