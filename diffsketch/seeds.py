"""Seeds: every random stream of the library is derived here from a user seed and an index.

A derived seed is a hash of a key, not ``seed + index`` arithmetic, so streams for different
(seed, index, purpose) never overlap or correlate. The key formats are part of the files the
library writes: a pair folder and a training checkpoint are only resumable if pair ``i`` and
step ``i`` draw the same numbers as before, so a key format, once used, never changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def seed_from_key(key: str) -> int:
    """A 63-bit seed: the first 8 bytes (little-endian) of the key's SHA-256."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def derive_seed(*parts) -> int:
    """The seed of a stream named by any tuple of ints and strings (pair generation, the student)."""
    return seed_from_key(repr(tuple(parts)))


def iteration_seed(seed: int, iteration: int, purpose: str) -> int:
    """The seed of one random choice (``purpose``) of one training iteration, from ``(seed,
    iteration)`` alone: iteration i draws the same numbers however the run was split into resumed
    parts."""
    return seed_from_key(f"diffsketch/{purpose}/{int(seed)}/{int(iteration)}")


def cpu_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def seeded(seed: int, build: Callable[[], T]) -> T:
    """``build()`` with torch's global CPU generator seeded with ``seed`` (new weights depend on the
    seed only), leaving the caller's global RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
