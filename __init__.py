"""DiffSketch for ComfyUI: node pack entry point.

ComfyUI imports this module; it exposes the V3 ``comfy_entrypoint``. Nothing heavy happens at
import time: node modules import only ComfyUI and the light parts of the ``diffsketch`` library,
and the heavy parts (diffusers, open_clip, LPIPS) are imported when a node runs.
"""

import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
# Served by ComfyUI at /extensions/<this folder's name>/: the node help pages the frontend shows
# (docs/<NodeId>.md, written by tools/make_node_reference.py). No JavaScript lives there.
WEB_DIRECTORY = "./web"
if _PACK_DIR not in sys.path:
    # the bundled ``diffsketch`` library is imported as a top-level package
    sys.path.insert(0, _PACK_DIR)

try:
    import comfy_api  # noqa: F401  (present whenever ComfyUI is the importer)
except ImportError:
    # Imported outside ComfyUI: pytest collects the repository root as a package because of
    # this file. There is nothing to register then; the library is ``diffsketch``.
    __all__ = ["WEB_DIRECTORY"]
else:
    from .nodes import comfy_entrypoint  # noqa: E402

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
