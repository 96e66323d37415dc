"""How a generator is trained: :class:`TrainConfig` (iterations, learning rate, loss weights,
sampling of the new images, timestep policy, checkpoint and preview cadence) and which of its
settings a resumed run must keep.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

import torch

from ..capture.sampling import SCHEDULES
from ..capture.timesteps import timestep_grid
from ..errors import InvalidInputError
from ..seeds import cpu_generator, iteration_seed
from .losses import LossWeights

TIMESTEP_POLICIES = ("fixed", "random13")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (released-code defaults, docs/method.md §8); JSON via :meth:`to_dict`.

    - ``iterations``: Adam steps in all (a resumed run continues up to this count).
    - ``lr``: Adam learning rate (default betas, no scheduler).
    - ``h_iter``: CDST warm-up; conditions are fully random from this iteration on.
    - ``loss_weights``: the :class:`LossWeights` the trainer gives its loss.
    - ``seed``: every per-iteration random choice derives from ``(seed, iteration)``.
    - ``steps``, ``cfg``: sampling steps (on the model's own grid: DDIM's, or the flow families')
      and guidance of each new sample.
    - ``timestep_policy``: ``"fixed"`` samples features at the example's timesteps (the paper);
      ``"random13"`` draws as many random timesteps of the model's ``steps``-step grid as the
      example has (13 for the paper's set) at every iteration, as the released code does.
    - ``schedule``: ``"full"`` runs the whole DDIM grid; ``"fast"`` only the captured timesteps
      plus the final step (13 instead of 50 UNet evaluations for the paper's set), with coarser
      images.
    - ``checkpoint_every``: iterations between checkpoints (0: only at the end and on cancel).
    - ``preview_every``: iterations between previews passed to ``on_step`` (0: none).
    - ``low_memory``: gradient checkpointing (``SketchGenerator.gradient_checkpointing``): the generator keeps
      almost no activations and recomputes them during the backward pass, one (tap, timestep) at
      a time. Same result; about one more generator forward per step. An SD 1.5-sized step at
      512x512 (13 timesteps, fp32, CPU) then peaks at 3.9 GB resident, provided glibc's malloc
      runs with a fixed mmap threshold (``MALLOC_MMAP_THRESHOLD_=1048576``); with glibc's
      defaults, heap fragmentation takes it to about 8 GB (benchmarks/train_step.py).
    - ``sample_crop``: 0 trains on each new sample whole; N > 0 on a random N x N pixel window of
      it (every tap cut to the window; a multiple of 64, or of 32 for SDXL), drawn anew each
      iteration. The example is always whole, so the L1, LPIPS and CLIP terms against the drawing
      are unchanged; only the directional CLIP terms see the window. This bounds the step's memory
      at large sizes: SDXL at 1024x1024 with ``sample_crop=512`` and ``low_memory``
      (benchmarks/train_step.py --arch sdxl).
    - ``device``: where the generator and the losses run.
    """

    iterations: int = 1200
    lr: float = 1e-4
    h_iter: int = 1000
    loss_weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    steps: int = 50
    cfg: float = 5.0
    timestep_policy: str = "fixed"
    schedule: str = "full"
    checkpoint_every: int = 100
    preview_every: int = 25
    low_memory: bool = False
    device: str = "cpu"
    sample_crop: int = 0

    def __post_init__(self):
        if isinstance(self.loss_weights, Mapping):
            object.__setattr__(self, "loss_weights", LossWeights.from_dict(self.loss_weights))
        self.validate()

    def validate(self) -> None:
        def whole(name, lo):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InvalidInputError(f"{name} must be an integer >= {lo}, got {v!r}")

        whole("iterations", 1)
        whole("h_iter", 0)
        whole("seed", 0)
        whole("steps", 1)
        whole("checkpoint_every", 0)
        whole("preview_every", 0)
        whole("sample_crop", 0)
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            raise InvalidInputError(f"lr must be a finite number > 0 (the paper uses 1e-4), got {self.lr!r}")
        if not isinstance(self.cfg, (int, float)) or not math.isfinite(self.cfg) or self.cfg < 0:
            raise InvalidInputError(
                f"cfg must be a finite number >= 0 (the paper uses 5.0), got {self.cfg!r}"
            )
        if self.timestep_policy not in TIMESTEP_POLICIES:
            raise InvalidInputError(
                f"timestep_policy must be one of {list(TIMESTEP_POLICIES)}, got {self.timestep_policy!r}"
            )
        if self.schedule not in SCHEDULES:
            raise InvalidInputError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if not isinstance(self.loss_weights, LossWeights):
            raise InvalidInputError("loss_weights must be a LossWeights (or a dict of its fields)")
        for name, value in self.loss_weights.to_dict().items():
            if not math.isfinite(value) or value < 0:
                raise InvalidInputError(f"loss weight {name} must be a finite number >= 0, got {value}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise InvalidInputError(
                f"device {self.device!r} is not a torch device (e.g. 'cpu', 'cuda:0')"
            ) from e

    def to_dict(self) -> dict:
        d = asdict(self)
        d["loss_weights"] = self.loss_weights.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InvalidInputError(f"unknown training setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(d))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidInputError(f"training settings are not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise InvalidInputError("training settings must be a JSON object")
        return cls.from_dict(d)


# Settings that change what a resumed run computes; the others (length, checkpoint/preview
# cadence, device) may change freely between a checkpoint and its resumption.
TRAJECTORY_SETTINGS = (
    "lr",
    "h_iter",
    "loss_weights",
    "seed",
    "steps",
    "cfg",
    "timestep_policy",
    "schedule",
    "sample_crop",
)


def iteration_timesteps(
    config: TrainConfig, iteration: int, example_timesteps: Sequence[int], family: str | None = None
) -> list[int]:
    """The timesteps the new sample of ``iteration`` is captured at (ascending), drawn for
    ``random13`` from the grid a model of ``family`` samples on (None: DDIM's)."""
    if config.timestep_policy == "fixed":
        return sorted(int(t) for t in example_timesteps)
    grid = timestep_grid(config.steps, family)
    n = len(example_timesteps)
    order = torch.randperm(
        len(grid), generator=cpu_generator(iteration_seed(config.seed, iteration, "timesteps"))
    )
    return sorted(grid[int(j)] for j in order[:n])
