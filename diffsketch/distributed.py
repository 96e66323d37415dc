"""Runs spread over several processes by ``torchrun`` or ``accelerate launch`` (torch.distributed).

Both launchers start one process per device and tell each who it is through the environment:
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Reading those is
all DiffSketch needs from them, so neither launcher is a dependency. :func:`launch_from_environment`
reads them; :class:`Group` joins the default process group (NCCL on CUDA, Gloo on the CPU) and
offers the few collective steps the library uses. Library functions take ``group=None`` for a
single process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .errors import InvalidInputError

_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a launch: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int
    world_size: int
    local_rank: int


def launch_from_environment(env: Mapping[str, str] | None = None) -> Launch | None:
    """The launch described by the environment, or None when this process runs alone (no
    ``WORLD_SIZE``, or a world of one)."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return None
    values = {}
    for name in _VARIABLES:
        raw = env.get(name, "0" if name == "LOCAL_RANK" else None)
        try:
            values[name] = int(raw)
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"{name}={raw!r} in the environment is not an integer; start the run with torchrun or "
                "accelerate launch, or unset WORLD_SIZE for a single process."
            ) from None
    launch = Launch(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    if launch.world_size < 1 or not 0 <= launch.rank < launch.world_size or launch.local_rank < 0:
        raise InvalidInputError(
            f"RANK={launch.rank}, WORLD_SIZE={launch.world_size}, LOCAL_RANK={launch.local_rank} in the "
            "environment do not describe a launch (0 <= RANK < WORLD_SIZE)."
        )
    return launch if launch.world_size > 1 else None


def launch_device(launch: Launch | None, name: str = "auto") -> str:
    """The device of this process: with ``auto`` or ``cuda`` in a launch, the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if launch is not None and name == "cuda":
        name = f"cuda:{launch.local_rank}"
    return name


class Group:
    """The default process group of a launch and the collective steps DiffSketch takes on it.

    Every process of the launch must make the same calls in the same order; a process that
    fails is ended by the launcher with the rest (torchrun stops every worker when one exits
    with an error)."""

    def __init__(self, launch: Launch, device: str | torch.device = "cpu"):
        import torch.distributed as dist

        self.rank, self.world_size = launch.rank, launch.world_size
        self.device = torch.device(device)
        if not dist.is_initialized():
            for name in ("MASTER_ADDR", "MASTER_PORT"):
                if name not in os.environ:
                    raise InvalidInputError(
                        f"{name} is not set; start the run with torchrun or accelerate launch, which set it."
                    )
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(
                "nccl" if self.device.type == "cuda" else "gloo",
                rank=launch.rank,
                world_size=launch.world_size,
            )
        self._dist = dist

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        self._dist.barrier()

    def mean(self, values: list[float]) -> list[float]:
        """The mean over the processes of each value (one all-reduce)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        self._dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on one of them."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def share(self, value):
        """Rank 0's ``value`` (any picklable object of ours) on every process."""
        box = [value if self.is_main else None]
        self._dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def close(self) -> None:
        if self._dist.is_initialized():
            self._dist.destroy_process_group()


def shard(items: list, group: Group | None) -> list:
    """This process's share of ``items``: every ``world_size``-th one from its rank on."""
    return items if group is None else items[group.rank :: group.world_size]
