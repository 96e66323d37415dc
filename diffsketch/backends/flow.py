"""Euler sampling and inversion on a flow-matching sigma schedule (Z-Image, SD 3.5, Flux.1).

The model predicts a velocity ``v`` with ``x_sigma = (1 - sigma) x0 + sigma * noise``; Euler moves
``x <- x + (sigma_next - sigma) v`` down the sigmas of the schedule's indices
(:func:`~diffsketch.capture.timesteps.flow_sigma`), ending at sigma 0, as ComfyUI's "euler"
sampler and diffusers' ``FlowMatchEulerDiscreteScheduler`` do. Everything here works on the model
latent (the raw VAE latent shifted and scaled); a backend supplies ``predict(x, sigma, index)``,
its velocity with guidance applied (``index`` is the schedule index, None for the clean latent's
sigma 0 while inverting).

Inversion runs the same sigmas upwards, evaluating the model where the latent is (the clean latent
at sigma 0, then each sigma it reached), as :mod:`~diffsketch.backends.inversion` does for DDIM:
exact for a model whose velocity is constant along its trajectories, approximate otherwise (the
capture reports the replay's PSNR).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..capture.timesteps import flow_sigma
from .inversion import ProgressFn

FlowPredict = Callable[[torch.Tensor, float, "int | None"], torch.Tensor]


def flow_sigmas(schedule: Sequence[int], shift: float) -> list[float]:
    """The sigmas of the descending ``schedule`` indices, then 0 (the clean end)."""
    return [flow_sigma(k, shift) for k in schedule] + [0.0]


def euler_denoise(
    predict: FlowPredict,
    noise: torch.Tensor,
    schedule: Sequence[int],
    shift: float,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """Euler from ``noise`` down the descending ``schedule`` to sigma 0; returns the model latent.
    The start is ``sigma_0 * noise`` (ComfyUI's noise scaling of an empty latent; the noise itself
    when the schedule starts at index 999, sigma 1)."""
    sigmas = flow_sigmas(schedule, shift)
    x = noise * sigmas[0]
    n = len(schedule)
    for i, k in enumerate(schedule):
        x = x + (sigmas[i + 1] - sigmas[i]) * predict(x, sigmas[i], int(k))
        if progress is not None:
            progress(i + 1, n)
    return x


def euler_invert(
    predict: FlowPredict,
    latent: torch.Tensor,
    schedule: Sequence[int],
    shift: float,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """The noise whose :func:`euler_denoise` on ``schedule`` comes back to the clean model latent
    ``latent``: Euler up the same sigmas, the velocity read where the latent is."""
    descending = sorted((int(k) for k in schedule), reverse=True)
    sigmas = flow_sigmas(descending, shift)  # descending, ending at 0
    ascending = sigmas[::-1]
    indices = [None, *descending[::-1]]  # the index of each sigma in ``ascending`` (None: the clean end)
    x = latent
    n = len(descending)
    for i in range(n):
        x = x + (ascending[i + 1] - ascending[i]) * predict(x, ascending[i], indices[i])
        if progress is not None:
            progress(i + 1, n)
    return x / ascending[-1]
