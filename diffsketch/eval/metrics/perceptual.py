"""CLIP image similarity (CLIP's own preprocessing; the model is loaded by the caller).

LPIPS is :func:`diffsketch.train.losses.build_lpips` on
:func:`~diffsketch.train.losses.perceptual_preprocess`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import InvalidInputError
from .common import check_pair

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(images: torch.Tensor, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """CLIP's image preprocessing on tensors: shorter side to ``size`` (bicubic, antialiased), centre
    crop, normalise. ``images``: ``[B, 3 or 1, H, W]`` in [0, 1]; grey images are repeated to RGB."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InvalidInputError(
            f"CLIP preprocessing expects [B, 3, H, W] (or [B, 1, H, W]) images; got {shape}."
        )
    x = images.float()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[..., top : top + size, left : left + size].clamp(0, 1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


@torch.no_grad()
def clip_image_similarity(
    model, images_a: torch.Tensor, images_b: torch.Tensor, size: int = 224
) -> torch.Tensor:
    """Cosine similarity of CLIP image embeddings, pair by pair -> ``[B]``.

    ``model`` is any object with ``encode_image(pixels)`` (an open_clip or OpenAI CLIP model the caller
    loaded from local weights); ``images_a``/``images_b`` are ``[B, 3, H, W]`` in [0, 1].
    """
    check_pair(images_a, images_b, "clip_image_similarity")
    if not hasattr(model, "encode_image"):
        raise InvalidInputError(
            f"clip_image_similarity needs a CLIP model with encode_image(); got {type(model).__name__}."
        )
    fa = model.encode_image(clip_preprocess(images_a, size)).float()
    fb = model.encode_image(clip_preprocess(images_b, size)).float()
    return F.cosine_similarity(fa, fb, dim=-1)
