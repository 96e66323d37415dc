"""The SD 2.x checkpoint of sd2_checkpoint.py with its OpenCLIP-H text encoder cut to 23 layers, as
diffusers' conversion script writes SD 2.x single files (SD 2.x reads the penultimate of 24 layers,
so the last one is never used). ComfyUI still builds the 24-layer encoder and takes its layer 23.
Run: python sd2_23_layer_checkpoint.py OUT.safetensors
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sd2_checkpoint import build_state_dict  # noqa: E402
from tiny_checkpoint import save_checkpoint  # noqa: E402

LAST_LAYER = "cond_stage_model.model.transformer.resblocks.23."


if __name__ == "__main__":
    state = build_state_dict(os.environ["COMFYUI_PATH"])
    save_checkpoint(sys.argv[1], {k: v for k, v in state.items() if not k.startswith(LAST_LAYER)})
