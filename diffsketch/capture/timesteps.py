"""The DDIM timestep grid and the representative timesteps DiffSketch captures."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInputError

NUM_TRAIN_TIMESTEPS = 1000

#: The 13 representative timesteps of the paper (docs/method.md §2), on the 50-step DDIM grid.
PAPER_TIMESTEPS: tuple[int, ...] = (1, 61, 161, 241, 321, 421, 501, 561, 641, 701, 781, 861, 941)


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

    @property
    def exact(self) -> bool:
        return tuple(sorted(set(self.requested))) == self.used

    def describe(self) -> str:
        if self.exact:
            return f"timesteps {list(self.used)} on the {self.steps}-step DDIM grid"
        pairs = ", ".join(
            f"{r}->{u}" for r, u in zip(self.requested, map_to_grid(self.requested, self.grid)) if r != u
        )
        return f"timesteps {list(self.used)} on the {self.steps}-step DDIM grid (mapped to the nearest grid step: {pairs})"


def map_to_grid(timesteps, grid) -> list[int]:
    """Nearest grid timestep for each requested one (ties go to the smaller timestep)."""
    return [min(grid, key=lambda g: (abs(g - t), g)) for t in timesteps]


def plan_timesteps(steps: int, timesteps=None) -> TimestepPlan:
    """Map the requested timesteps (default: the paper's 13) onto the ``steps``-step DDIM grid.

    Raises if two requested timesteps land on the same grid step, i.e. ``steps`` is too small
    to keep them apart.
    """
    requested = tuple(int(t) for t in (PAPER_TIMESTEPS if timesteps is None else timesteps))
    if not requested:
        raise InvalidInputError(
            "timesteps: give at least one timestep (or leave it empty for the paper's 13)"
        )
    bad = [t for t in requested if not 0 <= t < NUM_TRAIN_TIMESTEPS]
    if bad:
        raise InvalidInputError(f"timesteps must lie in 0..{NUM_TRAIN_TIMESTEPS - 1}; got {bad}")
    grid = ddim_grid(steps)
    mapped = map_to_grid(requested, grid)
    used = tuple(sorted(set(mapped)))
    if len(used) < len(set(requested)):
        need = next(
            (
                s
                for s in range(steps + 1, NUM_TRAIN_TIMESTEPS + 1)
                if len(set(map_to_grid(requested, ddim_grid(s)))) == len(set(requested))
            ),
            NUM_TRAIN_TIMESTEPS,
        )
        raise InvalidInputError(
            f"steps={steps} is too few for the {len(set(requested))} timesteps asked: they map to only "
            f"{len(used)} distinct steps of the {len(grid)}-step DDIM grid. Use at least {need} steps "
            "(the paper uses 50), or ask for fewer timesteps."
        )
    return TimestepPlan(steps=steps, grid=tuple(grid), requested=requested, used=used)


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
