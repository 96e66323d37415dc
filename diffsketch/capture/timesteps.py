"""The timestep grids and the representative timesteps DiffSketch captures.

Every timestep is an index k in 0..999 of the model's 1000-entry schedule. The UNet families
sample on the DDIM "uniform" grid (:func:`ddim_grid`). The flow-matching transformers
(:data:`~diffsketch.capture.spec.FLOW_FAMILIES`) sample on ComfyUI's "simple" grid
(:func:`flow_grid`) of the ``ModelSamplingDiscreteFlow`` sigmas (:func:`flow_sigma`), so an index
means the same noise level in both backends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InvalidInputError
from .spec import FLUX, SD35, ZIMAGE, is_flow_family

NUM_TRAIN_TIMESTEPS = 1000

#: The 13 representative timesteps of the paper (docs/method.md §2), on the 50-step DDIM grid.
PAPER_TIMESTEPS: tuple[int, ...] = (1, 61, 161, 241, 321, 421, 501, 561, 641, 701, 781, 861, 941)

#: The flow families' default capture timesteps: four indices spread over the shifted schedule
#: (sigma 0.30, 0.50, 0.75 and 0.90 at shift 3), all on the 8-step grid Z-Image Turbo samples
#: with, so a Turbo run captures them exactly. MMDiff (2026) gains most from fusing several
#: timesteps of a DiT, which is the paper's representative-timestep idea; four instead of 13
#: because a DiT tap is one full map at latent/2 of 1536-3840 channels (memory), and because
#: Turbo samples only 8 steps. Not yet chosen by an analysis on real weights.
FLOW_TIMESTEPS: tuple[int, ...] = (124, 249, 499, 749)
#: The sigma shift of each flow family's published models (ComfyUI's ModelSamplingDiscreteFlow
#: ``shift``; diffusers' FlowMatchEulerDiscreteScheduler ``shift``). Flux.1 dev: ComfyUI's
#: ModelSamplingFlux with its default ``shift`` 1.15 is ``e^1.15 t / (1 + (e^1.15 - 1) t)``, this
#: formula at shift e^1.15 = 3.158 (diffusers' dynamic shift at 1024x1024, 4096 image tokens,
#: gives the same); schnell samples unshifted (:data:`FLUX_SCHNELL_SHIFT`).
FLOW_SHIFTS = {ZIMAGE: 3.0, SD35: 3.0, FLUX: math.exp(1.15)}
#: Flux.1 schnell's shift (ComfyUI's FluxSchnell: ModelSamplingDiscreteFlow, shift 1, multiplier 1).
FLUX_SCHNELL_SHIFT = 1.0
#: The steps sampling takes when none are given: the paper's 50 (DDIM; Euler for the flow
#: families), and fewer for the models distilled to sample in few steps, when guidance-distilled.
PAPER_STEPS = 50
DISTILLED_STEPS = {ZIMAGE: 8}  # Z-Image Turbo: 8 Euler steps at cfg 1, as its own workflow samples
#: Flux.1 schnell's steps when none are given: the fewest whose grid holds :data:`FLOW_TIMESTEPS`
#: exactly (7 keeps them apart, mapped to other indices). Schnell's usual 4 steps hold only three
#: of them (124 falls between 0 and 249): give it timesteps of its own grid, e.g. 249, 499, 749.
FLUX_SCHNELL_STEPS = 8
#: The default step counts, in words (command-line help).
DEFAULT_STEPS_TEXT = (
    f"{PAPER_STEPS}, {DISTILLED_STEPS[ZIMAGE]} for Z-Image Turbo, {FLUX_SCHNELL_STEPS} for Flux.1 schnell"
)


def default_timesteps(family: str | None = None) -> tuple[int, ...]:
    """The capture timesteps used when none are given: the paper's 13 for the UNet families,
    :data:`FLOW_TIMESTEPS` for the flow ones."""
    return FLOW_TIMESTEPS if family is not None and is_flow_family(family) else PAPER_TIMESTEPS


def default_steps(family: str | None = None, guidance_distilled: bool = False, schnell: bool = False) -> int:
    """The steps a model of ``family`` samples with when none are given: :data:`DISTILLED_STEPS`
    of a guidance-distilled model of a family listed there (Z-Image Turbo: 8),
    :data:`FLUX_SCHNELL_STEPS` for Flux.1 schnell (``schnell``; dev, which shares its family, keeps
    the paper's), else :data:`PAPER_STEPS`."""
    if family == FLUX and schnell:
        return FLUX_SCHNELL_STEPS
    if guidance_distilled and family in DISTILLED_STEPS:
        return DISTILLED_STEPS[family]
    return PAPER_STEPS


def flow_sigma(k: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> float:
    """The sigma of index ``k`` in ComfyUI's ``ModelSamplingDiscreteFlow`` table:
    ``shift*t / (1 + (shift-1)*t)`` with ``t = (k+1)/1000`` (k=999 is pure noise, sigma 1)."""
    t = (int(k) + 1) / num_train_timesteps
    return shift * t / (1 + (shift - 1) * t)


def flow_table_index(k: int, table_len: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> int:
    """The entry of a sigma table of ``table_len`` entries (ComfyUI's ``model_sampling.sigmas``:
    1000 for ModelSamplingDiscreteFlow, 10000 for Flux.1 dev's ModelSamplingFlux) holding index
    ``k``'s :func:`flow_sigma`: entry j is at ``t = (j+1)/table_len``, so k maps to
    ``(k+1) * table_len/1000 - 1`` (k itself in a 1000-entry table, ``10k + 9`` in Flux's)."""
    if table_len % num_train_timesteps:
        raise ValueError(f"a sigma table of {table_len} entries is not a multiple of {num_train_timesteps}")
    return (int(k) + 1) * (table_len // num_train_timesteps) - 1


def flow_index(sigma: float, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> int:
    """The index k whose :func:`flow_sigma` is ``sigma`` (the nearest one): what a sampler that
    hands the model sigmas (ComfyUI) records its captures under."""
    sigma = float(sigma)
    t = sigma / (shift - (shift - 1) * sigma)
    return min(num_train_timesteps - 1, max(0, round(t * num_train_timesteps) - 1))


def flow_grid(steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """Ascending indices of ComfyUI's "simple" scheduler for ``steps`` steps:
    ``999 - int(i*1000/steps)`` for ``i < steps`` (the sampler then ends at sigma 0)."""
    if steps < 1:
        raise InvalidInputError(f"steps must be at least 1, got {steps}")
    if steps > num_train_timesteps:
        raise InvalidInputError(f"steps must be at most {num_train_timesteps}, got {steps}")
    last = num_train_timesteps - 1
    return sorted({last - int(i * num_train_timesteps / steps) for i in range(steps)})


def timestep_grid(steps: int, family: str | None = None) -> list[int]:
    """The grid a model of ``family`` samples on: :func:`flow_grid` or :func:`ddim_grid`."""
    return flow_grid(steps) if family is not None and is_flow_family(family) else ddim_grid(steps)


def ddim_grid(steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """Ascending DDIM "uniform" timesteps, as ldm's ``make_ddim_timesteps`` and ComfyUI's
    ``ddim_uniform`` scheduler build them: ``range(0, 1000, 1000 // steps) + 1``.

    When ``steps`` does not divide 1000 this has more than ``steps`` entries (both ldm and
    ComfyUI behave this way); ``len(ddim_grid(steps))`` is the number of UNet evaluations.
    """
    if steps < 1:
        raise InvalidInputError(f"steps must be at least 1, got {steps}")
    if steps > num_train_timesteps:
        raise InvalidInputError(f"steps must be at most {num_train_timesteps}, got {steps}")
    stride = num_train_timesteps // steps
    return [t + 1 for t in range(0, num_train_timesteps, stride)]


@dataclass(frozen=True)
class TimestepPlan:
    """Which grid timesteps a capture uses for the timesteps that were asked for."""

    steps: int
    grid: tuple[int, ...]  # ascending
    requested: tuple[int, ...]
    used: tuple[int, ...]  # ascending, distinct, each on the grid
    #: whether the grid is the flow families' "simple" one (:func:`flow_grid`), not DDIM's
    flow: bool = False

    @property
    def grid_name(self) -> str:
        return "flow-matching" if self.flow else "DDIM"

    @property
    def exact(self) -> bool:
        return tuple(sorted(set(self.requested))) == self.used

    def describe(self) -> str:
        if self.exact:
            return f"timesteps {list(self.used)} on the {self.steps}-step {self.grid_name} grid"
        pairs = ", ".join(
            f"{r}->{u}" for r, u in zip(self.requested, map_to_grid(self.requested, self.grid)) if r != u
        )
        return (
            f"timesteps {list(self.used)} on the {self.steps}-step {self.grid_name} grid (mapped to the nearest "
            f"grid step: {pairs})"
        )


def map_to_grid(timesteps, grid) -> list[int]:
    """Nearest grid timestep for each requested one (ties go to the smaller timestep)."""
    return [min(grid, key=lambda g: (abs(g - t), g)) for t in timesteps]


def plan_timesteps(steps: int, timesteps=None, family: str | None = None) -> TimestepPlan:
    """Map the requested timesteps (default: :func:`default_timesteps` of ``family``) onto the
    ``steps``-step grid ``family`` samples on (:func:`timestep_grid`; None: DDIM's).

    Raises if two requested timesteps land on the same grid step, i.e. ``steps`` is too small
    to keep them apart.
    """
    flow = family is not None and is_flow_family(family)
    requested = tuple(int(t) for t in (default_timesteps(family) if timesteps is None else timesteps))
    if not requested:
        raise InvalidInputError(
            "timesteps: give at least one timestep (or leave it empty for the paper's 13)"
        )
    bad = [t for t in requested if not 0 <= t < NUM_TRAIN_TIMESTEPS]
    if bad:
        raise InvalidInputError(f"timesteps must lie in 0..{NUM_TRAIN_TIMESTEPS - 1}; got {bad}")
    grid = timestep_grid(steps, family)
    mapped = map_to_grid(requested, grid)
    used = tuple(sorted(set(mapped)))
    if len(used) < len(set(requested)):
        need = next(
            (
                s
                for s in range(steps + 1, NUM_TRAIN_TIMESTEPS + 1)
                if len(set(map_to_grid(requested, timestep_grid(s, family)))) == len(set(requested))
            ),
            NUM_TRAIN_TIMESTEPS,
        )
        raise InvalidInputError(
            f"steps={steps} is too few for the {len(set(requested))} timesteps asked: they map to only "
            f"{len(used)} distinct steps of the {len(grid)}-step {'flow-matching' if flow else 'DDIM'} grid. Use at "
            f"least {need} steps{'' if flow else ' (the paper uses 50)'}, or ask for fewer timesteps (e.g. "
            f"{', '.join(map(str, used))}, which {steps} steps keep apart)."
        )
    return TimestepPlan(steps=steps, grid=tuple(grid), requested=requested, used=used, flow=flow)


def parse_timesteps(text: str | None):
    """Parse "1, 61, 161" (commas or spaces). Empty or None means the paper's default."""
    if text is None or not str(text).strip():
        return None
    try:
        return tuple(int(p) for p in str(text).replace(",", " ").split())
    except ValueError as e:
        raise InvalidInputError(
            f"timesteps: expected integers separated by commas, e.g. '1, 61, 161'; got {text!r}"
        ) from e
