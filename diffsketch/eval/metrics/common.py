"""What the metric families share: the same-shape check of two image batches and optional imports."""

from __future__ import annotations

import torch

from ...errors import InvalidInputError

# import name -> the name pip installs it by
_PIP_NAMES = {"skimage": "scikit-image", "pytorch_fid": "pytorch-fid"}


def require_optional(module: str, purpose: str):
    """Import ``module`` of an optional package (the ``eval`` extra), or say how to install it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        package = _PIP_NAMES.get(module.split(".")[0], module.split(".")[0])
        raise ImportError(
            f"{purpose} needs the optional package '{package}': pip install {package} "
            '(or everything diffsketch eval needs: pip install "diffsketch[eval]")'
        ) from e


def check_pair(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InvalidInputError(f"{what} expects two torch tensors [B, C, H, W].")
    if x.dim() != 4 or x.shape != y.shape:
        raise InvalidInputError(
            f"{what} expects two tensors of the same shape [B, C, H, W]; got {tuple(x.shape)} and {tuple(y.shape)}."
        )
