"""DiffSketchXDoG: an example sketch without drawing, with the paper's XDoG (docs/method.md §7)."""

from __future__ import annotations

from comfy_api.latest import io

from .common import LINE_ART_ALIASES, on_torch_device, search_aliases
from .types import CATEGORY


class DiffSketchXDoG(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffSketchXDoG",
            **search_aliases(*LINE_ART_ALIASES, "xdog", "difference of gaussians", "edge detection"),
            display_name="DiffSketch XDoG Sketch",
            category=CATEGORY,
            description=(
                "Extended difference-of-Gaussians line drawing, exactly as the paper's code computes it (OpenCV 8-bit "
                "Gaussian blurs, reflect-101 borders). Use it as the example sketch to try DiffSketch without drawing."
            ),
            inputs=[
                io.Image.Input(
                    "image", tooltip="The image to sketch (e.g. the image from DiffSketch Sample & Capture)."
                ),
                io.Float.Input(
                    "sigma",
                    default=0.5,
                    min=0.1,
                    max=10.0,
                    step=0.05,
                    tooltip="Blur of the fine Gaussian (the paper: 0.5).",
                ),
                io.Float.Input(
                    "k",
                    default=200.0,
                    min=1.1,
                    max=1000.0,
                    step=0.1,
                    tooltip="Ratio of the coarse blur to the fine one (the paper: 200, so sigma 100).",
                ),
                io.Float.Input(
                    "gamma",
                    default=0.98,
                    min=0.0,
                    max=1.0,
                    step=0.005,
                    tooltip="Weight of the coarse blur (the paper: 0.98).",
                ),
                io.Float.Input(
                    "epsilon",
                    default=0.1,
                    min=-1.0,
                    max=1.0,
                    step=0.005,
                    tooltip="Threshold above which a pixel is paper (the paper: 0.1).",
                ),
                io.Float.Input(
                    "phi",
                    default=10.0,
                    min=0.1,
                    max=200.0,
                    step=0.1,
                    tooltip="Sharpness of the tanh ramp below the threshold (the paper: 10).",
                ),
            ],
            outputs=[io.Image.Output(display_name="sketch", tooltip="Black lines on white, 3 channels.")],
        )

    @classmethod
    def execute(cls, image, sigma, k, gamma, epsilon, phi) -> io.NodeOutput:
        from diffsketch.images import rgb_batch
        from diffsketch.styles.xdog import xdog

        from .comfy_backend import image_to_comfy

        rgb = rgb_batch(image, "image").movedim(-1, 1)
        sketch = xdog(rgb, sigma=sigma, k=k, gamma=gamma, epsilon=epsilon, phi=phi)
        return io.NodeOutput(image_to_comfy(sketch.expand(-1, 3, -1, -1)))


class DiffSketchStyleSketch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from diffsketch.styles import STYLES

        learned = [name for name, info in STYLES.items() if info.needs_weights]
        return io.Schema(
            node_id="DiffSketchStyleSketch",
            **search_aliases(*LINE_ART_ALIASES, "hed", "informative drawings", "edge detection"),
            display_name="DiffSketch Style Sketch (HED / Informative Drawings)",
            category=CATEGORY,
            description=(
                "An example sketch in one of the paper's automatic styles: its modified HED, or Informative-Drawings "
                "anime/contour. Needs the style's weights as .safetensors in models/diffsketch/styles; a missing file "
                "fails here with the file name, its source and a one-line conversion command."
            ),
            inputs=[
                io.Image.Input(
                    "image", tooltip="The image to sketch (e.g. from DiffSketch Sample & Capture)."
                ),
                io.Combo.Input(
                    "style",
                    options=learned,
                    default=learned[0],
                    tooltip="hed: hed_bsds500.safetensors; informative_anime / informative_contour: "
                    "informative_anime.safetensors / informative_contour.safetensors.",
                ),
            ],
            outputs=[io.Image.Output(display_name="sketch", tooltip="Black lines on white, 3 channels.")],
        )

    @classmethod
    def execute(cls, image, style) -> io.NodeOutput:
        import os

        import folder_paths
        import torch

        from diffsketch.images import rgb_batch
        from diffsketch.styles import load_style

        from .comfy_backend import image_to_comfy

        extractor = load_style(
            style, search_dirs=[os.path.join(folder_paths.models_dir, "diffsketch", "styles")]
        )
        rgb = rgb_batch(image, "image").movedim(-1, 1)
        with torch.no_grad(), on_torch_device(extractor) as (device, _):
            sketch = extractor(rgb.to(device)).float().cpu()
        return io.NodeOutput(image_to_comfy(sketch.expand(-1, 3, -1, -1)))
