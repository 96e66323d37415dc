"""The text conditioning a Stable Diffusion UNet takes, one value for every backbone family.

SD 1.x and SD 2.x condition on the token embeddings alone (``context``, ``[B, 77, 768]`` or
``[B, 77, 1024]``). SDXL adds OpenCLIP bigG's projected pooled embedding (``pooled``,
``[B, 1280]``) to the timestep embedding, next to the size/crop numbers the backend derives
from the image size. Everything that moves conditions around (the backends, CDST, the trainer,
pair generation) moves a :class:`Conditioning`, so the pooled part travels with the context
wherever the context goes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError


@dataclass(frozen=True)
class Conditioning:
    """``context``: ``[B, T, D]`` token embeddings (cross-attention); ``pooled``: ``[B, P]`` pooled
    text embedding (SDXL), or None where the backbone takes none."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None

    def __post_init__(self):
        if not isinstance(self.context, torch.Tensor) or self.context.dim() != 3:
            shape = (
                list(self.context.shape)
                if isinstance(self.context, torch.Tensor)
                else type(self.context).__name__
            )
            raise InvalidInputError(
                f"conditioning context must be a tensor [batch, tokens, dim], got {shape}"
            )
        if self.pooled is not None and (
            not isinstance(self.pooled, torch.Tensor)
            or self.pooled.dim() != 2
            or self.pooled.shape[0] != self.context.shape[0]
        ):
            shape = (
                list(self.pooled.shape)
                if isinstance(self.pooled, torch.Tensor)
                else type(self.pooled).__name__
            )
            raise InvalidInputError(
                f"the pooled embedding must be a tensor [{self.context.shape[0]}, dim] (one per context), got {shape}"
            )

    @classmethod
    def of(cls, value) -> Conditioning:
        """A Conditioning from a Conditioning, or from a context tensor alone (SD 1.x / 2.x)."""
        if isinstance(value, Conditioning):
            return value
        if isinstance(value, torch.Tensor):
            return cls(value)
        raise InvalidInputError(
            f"expected a text conditioning (a Conditioning or a [1, 77, dim] tensor), got {type(value).__name__}"
        )

    # -- shape ---------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return int(self.context.shape[0])

    @property
    def pooled_dim(self) -> int:
        return 0 if self.pooled is None else int(self.pooled.shape[1])

    def describe(self) -> str:
        text = f"context {list(self.context.shape)}"
        return text if self.pooled is None else f"{text} + pooled {list(self.pooled.shape)}"

    # -- tensors -------------------------------------------------------------------------------
    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Conditioning:
        """The same conditioning with ``fn`` applied to each of its tensors."""
        return Conditioning(fn(self.context), None if self.pooled is None else fn(self.pooled))

    def to(self, device=None, dtype=None) -> Conditioning:
        return self.map(lambda t: t.to(device=device, dtype=dtype))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.context,) if self.pooled is None else (self.context, self.pooled)

    def flatten(self) -> torch.Tensor:
        """``[B, T*D + P]``: the context's values, then the pooled ones (what CDST fits on)."""
        parts = [self.context.reshape(self.batch_size, -1)]
        if self.pooled is not None:
            parts.append(self.pooled.to(self.context.dtype))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    @classmethod
    def unflatten(cls, flat: torch.Tensor, tokens: int, dim: int, pooled_dim: int = 0) -> Conditioning:
        """The inverse of :meth:`flatten`."""
        if flat.dim() != 2 or flat.shape[1] != tokens * dim + pooled_dim:
            raise InvalidInputError(
                f"{list(flat.shape)} is not a batch of flattened conditionings of {tokens}x{dim} (+{pooled_dim}) values"
            )
        context = flat[:, : tokens * dim].reshape(flat.shape[0], tokens, dim)
        pooled = flat[:, tokens * dim :] if pooled_dim else None
        return cls(context, pooled)

    @staticmethod
    def cat(items: list[Conditioning]) -> Conditioning:
        """Batch conditionings (all with or all without a pooled part)."""
        context = torch.cat([c.context for c in items])
        if any(c.pooled is None for c in items):
            if not all(c.pooled is None for c in items):
                raise InvalidInputError("cannot batch conditionings with and without a pooled embedding")
            return Conditioning(context)
        return Conditioning(context, torch.cat([c.pooled for c in items]))

    @staticmethod
    def cat_for_attention(items: list[Conditioning]) -> Conditioning:
        """:meth:`cat` for a UNet call, also of contexts of different lengths (a long prompt's
        ``77*k`` tokens beside the empty prompt's 77): each is repeated along the token axis up to
        their least common multiple, as ComfyUI batches them. Cross-attention over a sequence
        repeated n times equals attention over the sequence once, so the result is unchanged."""
        tokens = math.lcm(*(int(c.context.shape[1]) for c in items))
        return Conditioning.cat(
            [Conditioning(c.context.repeat(1, tokens // c.context.shape[1], 1), c.pooled) for c in items]
        )

    def lerp(self, other: Conditioning, weight: float) -> Conditioning:
        """``(1 - weight) * self + weight * other``, every part with the same weight."""
        if (self.pooled is None) != (other.pooled is None):
            raise InvalidInputError("cannot mix a conditioning with a pooled embedding and one without")
        context = (1.0 - weight) * self.context + weight * other.context
        pooled = None if self.pooled is None else (1.0 - weight) * self.pooled + weight * other.pooled
        return Conditioning(context, pooled)


__all__ = ["Conditioning"]
