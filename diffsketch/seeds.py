"""Seed derivation: independent random streams from a user seed and an index, without the
correlations of ``seed + index``."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings: independent streams per (seed, index, purpose)
    without the correlations of ``seed + index``."""
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def cpu_generator(*parts) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator(device="cpu").manual_seed(derive_seed(*parts))
