"""How one image is sampled and what is captured: :class:`SamplingSettings`.

One value for the settings that travel together -- seed, DDIM steps, guidance, size, capture
timesteps and the denoising schedule -- instead of seven arguments threaded through every function
that samples (the backends, training, pair generation, inference, the timestep analysis).
"""

from __future__ import annotations

import dataclasses
import math

from ..errors import InvalidInputError
from .spec import DIT_NAMES_TEXT
from .timesteps import TimestepPlan, plan_timesteps

#: Image sides are multiples of this for SD 1.x and SD 2.x (the UNet halves the latent three times).
SIZE_MULTIPLE = 64
#: The finest multiple any backbone takes (the DiTs: the VAE's 8 times the patch 2).
#: Settings accept it; a backend refuses sizes its own backbone cannot take
#: (``SamplingBackend.check_size``: 64 for SD 1.x/2.x, 32 for SDXL).
FINEST_SIZE_MULTIPLE = 16
MAX_SIZE = 4096
#: Named denoising schedules: "full" runs the whole DDIM grid, "fast" only the captured timesteps
#: and the final step (:func:`fast_schedule`).
SCHEDULES = ("full", "fast")


def check_size(width: int, height: int) -> None:
    """Refuse a size no backbone takes: sides must be multiples of 16 up to :data:`MAX_SIZE`
    (and of 64 for SD 1.x/2.x, of 32 for SDXL, which the backend checks)."""
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or v < FINEST_SIZE_MULTIPLE or v > MAX_SIZE or v % FINEST_SIZE_MULTIPLE:
            lo = max(SIZE_MULTIPLE, (int(v) // SIZE_MULTIPLE) * SIZE_MULTIPLE) if isinstance(v, int) else 512
            raise InvalidInputError(
                f"{name}={v} is not supported: it must be a multiple of {SIZE_MULTIPLE} between {SIZE_MULTIPLE} and "
                f"{MAX_SIZE} (the UNet halves the latent three times; SDXL's twice, so there multiples of 32 work "
                f"too, and {DIT_NAMES_TEXT} take multiples of {FINEST_SIZE_MULTIPLE}), e.g. {lo} or "
                f"{lo + SIZE_MULTIPLE}."
            )


def fast_schedule(plan: TimestepPlan) -> list[int]:
    """Descending timesteps visiting only the captured ones plus the final step t=1.

    DDIM (eta=0) is valid on any decreasing subsequence of the training timesteps, so sampling
    only where features are captured cuts UNet evaluations from len(grid) to len(plan.used)+1 at
    most, at the cost of a coarser ODE solve (images differ from the full-schedule ones).
    Euler on a flow grid likewise, but it must start from the noise end (the grid's first step,
    sigma 1), and every step ends on the next one (the last at sigma 0).
    """
    extra = plan.grid[-1] if plan.flow else plan.grid[0]
    return sorted(set(plan.used) | {extra}, reverse=True)


#: The guidance scale of models sampled with classifier-free guidance, where none is given.
DEFAULT_CFG = 5.0


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How one image is sampled: everything that, with the condition, decides the image.

    - ``seed``: the initial noise (CPU generator, as ComfyUI's ``prepare_noise``).
    - ``steps``, ``cfg``: DDIM steps (eta 0; Euler on the flow grid for the flow families) and
      classifier-free guidance ("" as the negative; at cfg 1 a flow family evaluates the
      conditional branch alone).
    - ``width``, ``height``: pixels, multiples of 64 (of 32 for SDXL, 16 for the DiTs:
      the backend checks its own).
    - ``timesteps``: the UNet timesteps to capture (None: the paper's 13), mapped to the nearest
      steps of the ``steps``-step grid.
    - ``schedule``: "full" (the whole grid), "fast" (the captured timesteps and the final step) or
      an explicit strictly decreasing tuple of timesteps; None: "full".

    Where a trained generator samples (Generate, pair generation), ``timesteps`` and ``schedule``
    left None are the ones it was trained with
    (:func:`~diffsketch.train.inference.generator_sampling`).

    Checked when built, so a bad value fails where it was given.
    """

    seed: int = 0
    steps: int = 50
    cfg: float = DEFAULT_CFG
    width: int = 512
    height: int = 512
    timesteps: tuple[int, ...] | None = None
    schedule: str | tuple[int, ...] | None = None

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidInputError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise InvalidInputError(f"steps must be an integer >= 1, got {self.steps!r}.")
        if (
            isinstance(self.cfg, bool)
            or not isinstance(self.cfg, (int, float))
            or not math.isfinite(self.cfg)
            or self.cfg < 0
        ):
            raise InvalidInputError(f"cfg must be a finite number >= 0, got {self.cfg!r}")
        object.__setattr__(self, "cfg", float(self.cfg))
        check_size(self.width, self.height)
        if self.timesteps is not None:
            object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))
        if isinstance(self.schedule, str):
            if self.schedule not in SCHEDULES:
                raise InvalidInputError(
                    f"schedule must be 'full', 'fast' or a list of timesteps, got {self.schedule!r}"
                )
        elif self.schedule is not None:
            sched = tuple(int(t) for t in self.schedule)
            if list(sched) != sorted(set(sched), reverse=True):
                raise InvalidInputError("an explicit schedule must be strictly decreasing timesteps")
            object.__setattr__(self, "schedule", sched)

    def replace(self, **changes) -> SamplingSettings:
        return dataclasses.replace(self, **changes)

    def plan(self, family: str | None = None) -> TimestepPlan:
        """The capture timesteps on the grid a model of ``family`` samples on (None: DDIM's;
        raises when ``steps`` cannot keep them apart)."""
        return plan_timesteps(self.steps, self.timesteps, family)

    def denoising_schedule(self, plan: TimestepPlan) -> list[int]:
        """The descending timesteps the sampler visits."""
        if self.schedule in (None, "full"):
            return sorted(plan.grid, reverse=True)
        if self.schedule == "fast":
            return fast_schedule(plan)
        return list(self.schedule)
