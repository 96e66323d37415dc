"""How far apart two tensors are, for the parity tests (two backends, a reference pipeline)."""

from __future__ import annotations

import torch


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` in float32 (Frobenius norms; ``b`` is the reference)."""
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))
