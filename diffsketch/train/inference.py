"""Running a trained generator: sample an image with a backend and draw its sketch."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..capture.sampling import SamplingSettings
from ..capture.timesteps import PAPER_TIMESTEPS
from ..errors import InvalidInputError
from .generator import SketchGenerator


def generator_timesteps(generator: SketchGenerator) -> tuple[int, ...]:
    """The timesteps a generator was trained with (its meta), else the paper's 13 when it has 13."""
    saved = generator.meta.get("timesteps") if isinstance(generator.meta, Mapping) else None
    if saved:
        return tuple(int(t) for t in saved)
    if generator.n_timesteps == len(PAPER_TIMESTEPS):
        return PAPER_TIMESTEPS
    raise InvalidInputError(
        f"the generator uses {generator.n_timesteps} timesteps and does not record which; pass timesteps="
    )


def generate_pair(
    backend, generator: SketchGenerator, cond_or_prompt: torch.Tensor | str, sampling: SamplingSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample an image and its sketch: ``(image [1, 3, H, W], sketch [1, 1, H, W])``, both in [0, 1]
    on the CPU. ``sampling.timesteps`` None means the ones the generator was trained with."""
    if sampling.timesteps is None:
        sampling = sampling.replace(timesteps=generator_timesteps(generator))
    used = sampling.plan().used
    if len(used) != generator.n_timesteps:
        raise InvalidInputError(
            f"the generator needs features at {generator.n_timesteps} timesteps; {list(sampling.timesteps)} gives "
            f"{len(used)} on the {sampling.steps}-step grid"
        )
    sample = backend.sample(cond_or_prompt, sampling)
    with torch.no_grad():
        sketch = generator.forward_sample(sample)
    return sample.image.float().cpu(), sketch.float().clamp(0, 1).cpu()


__all__ = ["generate_pair", "generator_timesteps"]
