"""What training shows while it runs: the preview strip (new sample, its sketch, the example's
reconstruction and sketch) and the loss curve."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F


def _rgb(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[1, 1|3, h, w] -> [1, 3, H, W] in [0, 1] on the CPU."""
    x = x.detach().float().cpu().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x


def preview_image(
    sample_image: torch.Tensor,
    sample_sketch: torch.Tensor,
    example_reconstruction: torch.Tensor,
    example_sketch: torch.Tensor,
) -> torch.Tensor:
    """One ``[1, H, 4W, 3]`` image in [0, 1] (ComfyUI IMAGE layout): the new sample, its predicted
    sketch, the predicted example sketch and the example sketch it should match, each at the
    example's size (a cropped sample is scaled to it)."""
    size = tuple(example_sketch.shape[-2:])
    panels = [_rgb(x, size) for x in (sample_image, sample_sketch, example_reconstruction, example_sketch)]
    return torch.cat(panels, dim=-1).permute(0, 2, 3, 1).contiguous()


def loss_curve_image(history: Sequence[Mapping], size: tuple[int, int] = (640, 400)):
    """A PIL image of the total loss and each weighted term against the step (log y axis)."""
    from ..plotting import line_plot

    steps = [float(h["step"]) for h in history]
    series = {"total": (steps, [float(h.get("total", float("nan"))) for h in history])}
    names: list[str] = []
    for h in history:
        for key in h:
            name = key[: -len("_weighted")]
            if key.endswith("_weighted") and name not in names:
                names.append(name)
    for name in names:
        series[name] = (steps, [float(h.get(f"{name}_weighted", float("nan"))) for h in history])
    return line_plot(
        series, title="DiffSketch training loss", xlabel="step", ylabel="weighted loss", size=size, logy=True
    )
