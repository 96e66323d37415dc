"""A test-only ComfyUI custom node package without nodes: imported by the server it is copied
into, it makes that ComfyUI build its Qwen3-4B text encoder at the shrunk size of the test file
(qwen3_checkpoint.py says why). Only the servers of the tests that load that file have it."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
import comfy.text_encoders.llama  # noqa: E402
from qwen3_checkpoint import small_qwen3_config  # noqa: E402

comfy.text_encoders.llama.Qwen3_4BConfig = small_qwen3_config()
NODE_CLASS_MAPPINGS = {}
