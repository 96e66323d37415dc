"""Running a trained generator: sample an image with a backend and draw its sketch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..capture.timesteps import PAPER_TIMESTEPS, plan_timesteps
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
    backend,
    generator: SketchGenerator,
    cond_or_prompt: torch.Tensor | str,
    seed: int,
    steps: int = 50,
    cfg: float = 5.0,
    width: int = 512,
    height: int = 512,
    timesteps: Sequence[int] | None = None,
    schedule: str = "full",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample an image and its sketch: ``(image [1, 3, H, W], sketch [1, 1, H, W])``, both in [0, 1]
    on the CPU. ``timesteps`` default to the ones the generator was trained with."""
    if timesteps is None:
        timesteps = generator_timesteps(generator)
    if len(plan_timesteps(steps, timesteps).used) != generator.n_timesteps:
        raise InvalidInputError(
            f"the generator needs features at {generator.n_timesteps} timesteps; {list(timesteps)} gives "
            f"{len(plan_timesteps(steps, timesteps).used)} on the {steps}-step grid"
        )
    sample = backend.sample(
        cond_or_prompt,
        seed=seed,
        steps=steps,
        cfg=cfg,
        width=width,
        height=height,
        timesteps=timesteps,
        schedule=schedule,
    )
    with torch.no_grad():
        sketch = generator.forward_sample(sample)
    return sample.image.float().cpu(), sketch.float().clamp(0, 1).cpu()


__all__ = ["generate_pair", "generator_timesteps"]
