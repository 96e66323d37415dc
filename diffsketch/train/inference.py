"""Running a trained generator: sample an image with a backend and draw its sketch.

A generator samples the way it was trained: at its timesteps, with its schedule, on a model of
its backbone family (:class:`~diffsketch.train.generator.SketchGenerator` carries all three).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from ..backends.conditioning import Conditioning
from ..capture.hooks import captured_branches
from ..capture.identity import backend_identity, check_same_model
from ..capture.sampling import DEFAULT_CFG, SamplingSettings
from ..capture.spec import family_name
from ..capture.timesteps import default_timesteps
from ..errors import InvalidInputError
from .generator import SketchGenerator


def generator_timesteps(generator: SketchGenerator) -> tuple[int, ...]:
    """The timesteps a generator was trained on: its own record (set by the trainer, read from
    its file), else a ``meta["timesteps"]`` list; a generator that records none and takes as many
    timesteps as its family's default capture (:func:`~diffsketch.capture.timesteps.default_timesteps`:
    the paper's 13, the flow families' 4) is taken to use those."""
    recorded = getattr(generator, "timesteps", None)
    if recorded:
        return tuple(int(t) for t in recorded)
    meta = getattr(generator, "meta", None)
    saved = meta.get("timesteps") if isinstance(meta, Mapping) else None
    if saved:
        return tuple(int(t) for t in saved)
    spec = getattr(generator, "spec", None)
    default = default_timesteps(spec.family if spec is not None else None)
    if generator.n_timesteps == len(default):
        return default
    raise InvalidInputError(
        f"the generator uses {generator.n_timesteps} timesteps and does not record which; pass timesteps="
    )


def generator_schedule(generator: SketchGenerator) -> str:
    """The sampling schedule (``"full"`` or ``"fast"``) of the samples a generator was trained on."""
    return getattr(generator, "schedule", None) or "full"


def check_generator_fits(backend, generator: SketchGenerator) -> list[str]:
    """Raise before any sampling when ``generator`` cannot run on ``backend``'s model: another
    backbone family, another layout of the same family, or another parameterisation (prediction
    type, zero-terminal-SNR schedule). Returns notices for the caller to show (another checkpoint
    of the same family and parameterisation, a generator that does not record its model)."""
    spec = getattr(generator, "spec", None)
    if spec is None:
        return []  # a teacher module of another kind; its forward_sample does its own checks
    generator.check_model(backend.spec, "the model connected")
    return check_same_model(
        generator.identity(),
        backend_identity(backend),
        "the generator",
        "the model connected",
        "A generator's features come from the model it was trained on, sampled the same way: connect that model "
        "(in ComfyUI with the same ModelSamplingDiscrete node, or none; on the command line with the same "
        "--prediction-type), or train a generator on this one",
    )


def check_sampling_branches(
    backend, branches: int, cfg: float, what: str, otherwise: str = "train a generator on features sampled"
) -> None:
    """Raise before any sampling when sampling ``backend``'s model at ``cfg`` would capture another
    number of branches than ``what`` (a generator, or the example it is trained on) was made with:
    ``branches`` 1 (the conditional branch alone: cfg 1 on a flow family, Z-Image Turbo) or 2
    (uncond and cond: every UNet family, a flow family at cfg other than 1). The error's second fix
    is ``otherwise`` at ``cfg``."""
    captured = len(captured_branches(backend.spec.family, cfg))
    if captured == int(branches):
        return
    family = family_name(backend.spec.family)
    if branches == 1:
        made, fix = (
            "one-branch features (cfg 1: the conditional branch alone)",
            "sample with cfg 1",
        )
    else:
        made, fix = (
            "two-branch features (classifier-free guidance: uncond and cond)",
            "sample with cfg above 1 (e.g. the cfg it was made with)",
        )
    got = "both branches (uncond and cond)" if captured == 2 else "the conditional branch alone"
    raise InvalidInputError(
        f"{what} was made from {made}, but cfg {cfg:g} on this {family} model captures {got}; {fix}, or "
        f"{otherwise} at cfg {cfg:g}."
    )


def generator_cfg(generator) -> float:
    """The guidance to sample ``generator``'s images at where none is given: 1 for a generator
    trained on one-branch features (cfg 1 on a flow family, Z-Image Turbo's sampling: no other cfg
    captures them), else :data:`~diffsketch.capture.sampling.DEFAULT_CFG`."""
    return 1.0 if getattr(generator, "branches", 2) == 1 else DEFAULT_CFG


def generator_guidance(generator) -> float | None:
    """The guidance Flux.1 dev embedded when ``generator``'s example was captured (its meta's
    ``example``); None where it is not recorded (other models, and generators saved before it was)."""
    value = (getattr(generator, "meta", None) or {}).get("example", {}).get("guidance")
    return None if value is None else float(value)


def generator_sampling(generator, sampling: SamplingSettings) -> SamplingSettings:
    """``sampling`` completed with what ``generator`` was trained on: its timesteps where
    ``sampling.timesteps`` is None, its schedule where ``sampling.schedule`` is None. A teacher
    module without a timestep count keeps ``sampling``'s own (None: the paper's 13)."""
    if not isinstance(sampling, SamplingSettings):
        raise InvalidInputError(f"sampling must be a SamplingSettings, got {type(sampling).__name__}.")
    changes = {}
    if sampling.timesteps is None and hasattr(generator, "n_timesteps"):
        changes["timesteps"] = generator_timesteps(generator)
    if sampling.schedule is None:
        changes["schedule"] = generator_schedule(generator)
    return sampling.replace(**changes) if changes else sampling


def generate_pair(
    backend,
    generator: SketchGenerator,
    cond_or_prompt: Conditioning | torch.Tensor | str,
    sampling: SamplingSettings,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample an image and its sketch: ``(image [1, 3, H, W], sketch [1, 1, H, W])``, both in [0, 1]
    on the CPU. ``sampling``'s timesteps and schedule, where None, are the ones the generator was
    trained with; ``progress(step, total)`` after each sampling step."""
    check_generator_fits(backend, generator)
    sampling = generator_sampling(generator, sampling)
    check_sampling_branches(backend, generator.branches, sampling.cfg, "the generator")
    used = sampling.plan(backend.spec.family).used
    if len(used) != generator.n_timesteps:
        raise InvalidInputError(
            f"the generator needs features at {generator.n_timesteps} timesteps; {list(sampling.timesteps)} gives "
            f"{len(used)} on the {sampling.steps}-step grid"
        )
    sample = backend.sample(cond_or_prompt, sampling, progress=progress)
    with torch.no_grad():
        sketch = generator.forward_sample(sample)
    return sample.image.float().cpu(), sketch.float().clamp(0, 1).cpu()


__all__ = [
    "check_generator_fits",
    "check_sampling_branches",
    "generate_pair",
    "generator_sampling",
    "generator_schedule",
    "generator_timesteps",
]
