"""A pair-generation job on tiny random-weight models, run by tests/test_distributed.py in one
process or under torchrun (which sets RANK / WORLD_SIZE / MASTER_ADDR for each process).

    python distributed_pairs.py FOLDER COUNT BATCH [--die-at-sketch N MARKER | --photos N]

``--die-at-sketch N MARKER``: the process of rank 1 SIGKILLs itself half-way through writing
the sketch PNG of its N-th pair, once (it claims MARKER first), as a crash or the OOM killer
would: no ``finally`` runs, a temporary file stays behind.
``--photos N``: half the pairs come from N random photos of assorted sizes (:func:`photos`).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import tiny_backend, tiny_generator  # noqa: E402

from diffsketch.capture.sampling import SamplingSettings  # noqa: E402
from diffsketch.distill import pairs as pairs_module  # noqa: E402
from diffsketch.distill.pairs import generate_pairs  # noqa: E402
from diffsketch.distributed import Group, launch_from_environment  # noqa: E402
from diffsketch.fileio import atomic_target  # noqa: E402
from diffsketch.train.conditions import ConditionSampler  # noqa: E402

TIMESTEPS = [1, 501]
SAMPLING = SamplingSettings(
    seed=3, steps=10, width=64, height=64, timesteps=TIMESTEPS, schedule="fast", cfg=5.0
)


def build():
    backend = tiny_backend(0)
    torch.manual_seed(0)
    generator = tiny_generator(backend.spec, len(TIMESTEPS))
    with torch.no_grad():
        generator.final[-1].bias.fill_(0.5)
    g = torch.Generator().manual_seed(0)
    conditions = ConditionSampler.fit(torch.randn(6, 77, 32, generator=g), n_components=4)
    return backend, generator, conditions


def photos(n: int) -> list[torch.Tensor]:
    """``n`` random photos of assorted sizes, the same in every process."""
    g = torch.Generator().manual_seed(7)
    return [torch.rand(48 + 16 * k, 96 - 8 * k, 3, generator=g) for k in range(n)]


def die_while_writing_sketch(n: int, marker: str) -> None:
    written = []
    real = pairs_module.atomic_write_bytes

    def write(path, data):
        if Path(path).parent.name == pairs_module.SKETCHES_DIR:
            written.append(path)
            if len(written) == n:
                try:
                    os.rename(marker, marker + ".taken")
                except FileNotFoundError:
                    pass
                else:
                    with atomic_target(path) as tmp:
                        Path(tmp).write_bytes(data[: len(data) // 2])
                        os.kill(os.getpid(), signal.SIGKILL)
        real(path, data)

    pairs_module.atomic_write_bytes = write


def main(argv):
    folder, count, batch = argv[0], int(argv[1]), int(argv[2])
    launch = launch_from_environment()
    group = Group(launch) if launch is not None else None
    if len(argv) > 3 and argv[3] == "--die-at-sketch" and group is not None and group.rank == 1:
        die_while_writing_sketch(int(argv[4]), argv[5])
    backend, generator, conditions = build()
    given = photos(int(argv[4])) if len(argv) > 3 and argv[3] == "--photos" else None
    try:
        generate_pairs(
            backend,
            generator,
            conditions,
            folder,
            count,
            SAMPLING,
            group=group,
            batch_size=batch,
            photos=given,
        )
    finally:
        if group is not None:
            group.close()


if __name__ == "__main__":
    main(sys.argv[1:])
