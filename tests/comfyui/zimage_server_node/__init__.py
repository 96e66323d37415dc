"""A test-only ComfyUI custom node package, linked only into the server of the Z-Image quick-start
test. Imported by that server it makes its ComfyUI build Qwen3-4B at the shrunk size of the test
text encoder (qwen3_checkpoint.py says why), and adds one node, "Test Hook Count", which reports
the forward hooks left on a MODEL's diffusion model and a VAE (comfy_harness.hook_count) so the
test can see inside the server that a graph left none."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
import comfy.text_encoders.llama  # noqa: E402
from comfy_harness import hook_count  # noqa: E402
from qwen3_checkpoint import small_qwen3_config  # noqa: E402

comfy.text_encoders.llama.Qwen3_4BConfig = small_qwen3_config()


class TestHookCount:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "vae": ("VAE",)}}

    RETURN_TYPES = ()
    FUNCTION = "count"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    @classmethod
    def IS_CHANGED(cls, model, vae):
        return float("nan")  # counted on every run, never taken from the cache

    def count(self, model, vae):
        return {"ui": {"hooks": [hook_count(model, vae)]}}


NODE_CLASS_MAPPINGS = {"TestHookCount": TestHookCount}
