"""A test-only ComfyUI custom node package, linked only into the server of the diffusion-transformer
quick-start tests (Z-Image, Flux.1). Imported by that server it makes its ComfyUI build Qwen3-4B and
T5-XXL at the shrunk sizes of the test text encoders (qwen3_checkpoint.py and t5_checkpoint.py say
why), and adds one node, "Test Hook Count", which reports the forward hooks left on a MODEL's
diffusion model and a VAE (comfy_harness.hook_count) so the test can see inside the server that a
graph left none."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
import comfy.text_encoders.llama  # noqa: E402
import comfy.text_encoders.sd3_clip  # noqa: E402
from comfy_harness import hook_count  # noqa: E402
from qwen3_checkpoint import small_qwen3_config  # noqa: E402
from t5_checkpoint import small_t5xxl_class  # noqa: E402

comfy.text_encoders.llama.Qwen3_4BConfig = small_qwen3_config()
comfy.text_encoders.sd3_clip.T5XXLModel = small_t5xxl_class()


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
