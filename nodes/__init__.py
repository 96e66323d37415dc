"""The DiffSketch node pack (V3 nodes). ComfyUI-only code lives here; the library is ``diffsketch``."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .capture_image import DiffSketchCaptureFromImage
from .common import register_model_folders, remove_stale_temp_files_of_ours
from .conditions import DiffSketchFitConditions, DiffSketchLoadConditions
from .distill import DiffSketchDistill
from .extract import DiffSketchExtract, DiffSketchLoadExtractor
from .losses import DiffSketchLoadClipLoss
from .sample import DiffSketchSample
from .timesteps import DiffSketchTimesteps, DiffSketchTimestepsPreset
from .train import DiffSketchGenerate, DiffSketchLoadGenerator, DiffSketchTrain
from .xdog import DiffSketchStyleSketch, DiffSketchXDoG


def node_list() -> list[type[io.ComfyNode]]:
    return [
        DiffSketchSample,
        DiffSketchCaptureFromImage,
        DiffSketchTimestepsPreset,
        DiffSketchTimesteps,
        DiffSketchFitConditions,
        DiffSketchLoadConditions,
        DiffSketchLoadClipLoss,
        DiffSketchTrain,
        DiffSketchLoadGenerator,
        DiffSketchGenerate,
        DiffSketchDistill,
        DiffSketchLoadExtractor,
        DiffSketchExtract,
        DiffSketchXDoG,
        DiffSketchStyleSketch,
    ]


class DiffSketchExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return node_list()


async def comfy_entrypoint() -> DiffSketchExtension:
    register_model_folders()
    remove_stale_temp_files_of_ours()
    return DiffSketchExtension()
