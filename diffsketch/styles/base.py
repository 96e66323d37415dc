"""The interface every example-sketch style implements."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidInputError
from ..images import check_unit_range


class StyleExtractor(nn.Module):
    """Base class: checks the photos, runs :meth:`sketch`, returns ``[B, 1, H, W]`` in [0, 1]."""

    style_name = "custom"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InvalidInputError(
                f"style '{self.style_name}' expects RGB photos [B, 3, H, W] in [0, 1]; got {shape}."
            )
        if not images.is_floating_point():
            raise InvalidInputError(
                f"style '{self.style_name}' expects float photos in [0, 1]; got {images.dtype} "
                "(divide uint8 images by 255)."
            )
        if images.shape[-1] < 1 or images.shape[-2] < 1 or images.shape[0] < 1:
            raise InvalidInputError(f"style '{self.style_name}' got an empty batch {tuple(images.shape)}.")
        check_unit_range(images, f"style '{self.style_name}' photos")
        out = self.sketch(images.clamp(0.0, 1.0))
        return out.clamp(0.0, 1.0)

    def sketch(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
