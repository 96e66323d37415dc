"""DDIM (eta 0) on the backend-independent parameterisation: one step, the denoising loop and its
inverse, and what a capture from the user's own picture returns.

Everything here works in DDPM space (the model latent ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``,
raw VAE latent times the scaling factor) on the schedule's ``alphas_cumprod``. A backend supplies
``predict(x, t) -> model output`` (epsilon or v, as the UNet predicts it at timestep ``t``, guidance
already applied); the diffusers backend calls its UNet, the ComfyUI backend converts ComfyUI's
denoised prediction back (:func:`x0_to_model_output`). Both then run the same steps.

Inversion runs the sampler's grid backwards. The step from the latent at ``t_prev`` up to ``t``
evaluates the UNet where the latent is (at ``t_prev``; the clean latent at the grid's lowest
timestep) and converts the output with the latent's own alpha (1 for the clean latent), then moves
along the predicted noise to ``t``. That is diffusers' ``DDIMInverseScheduler`` step driven with the
model evaluated at the latent's own timestep, and it is exact for a model whose noise prediction
is constant along its DDIM trajectories (a single data point): there the replay retraces the
inverted latents to float precision (tests/test_inversion.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..capture.identity import PREDICTION_TYPES
from ..capture.sample import CapturedSample
from ..errors import InvalidInputError

ProgressFn = Callable[[int, int], None]
Predict = Callable[[torch.Tensor, int], torch.Tensor]

#: Guidance while inverting and replaying: the caption's prediction alone. With the same guidance
#: both ways the replay is the time-reverse of the inversion; guidance above 1 pushes every step
#: away from the picture and compounds over the steps (docs/method.md, "Capture from a picture").
INVERSION_CFG = 1.0

#: Below this PSNR (dB) of the decoded replay against the picture, the capture warns.
MIN_REPLAY_PSNR = 20.0


def check_prediction_type(prediction_type: str) -> str:
    """``prediction_type`` when it is one of :data:`PREDICTION_TYPES`, else a clear error."""
    if prediction_type not in PREDICTION_TYPES:
        raise InvalidInputError(
            f"prediction_type must be one of {list(PREDICTION_TYPES)}, got {prediction_type!r}"
        )
    return prediction_type


def model_output_to_x0_eps(
    output: torch.Tensor, x: torch.Tensor, alpha_cumprod: float, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted x0, predicted noise) from a UNet output at a timestep with ``alpha_cumprod``:
    epsilon models predict the noise, v-prediction models (SD 2.x 768-v, v-pred SDXL fine-tunes)
    predict ``v = sqrt(a) * noise - sqrt(1 - a) * x0``."""
    a, s = math.sqrt(alpha_cumprod), math.sqrt(1.0 - alpha_cumprod)
    if check_prediction_type(prediction_type) == "epsilon":
        return (x - s * output) / a, output
    return a * x - s * output, s * x + a * output


def ddim_step(
    output: torch.Tensor, x: torch.Tensor, alpha_from: float, alpha_to: float, prediction_type: str
) -> torch.Tensor:
    """One DDIM (eta 0) step of ``x`` from ``alpha_from`` to ``alpha_to`` (down when denoising, up
    when inverting), with the model's ``output`` read at ``alpha_from``."""
    x0, eps = model_output_to_x0_eps(output, x, alpha_from, prediction_type)
    return math.sqrt(alpha_to) * x0 + math.sqrt(1.0 - alpha_to) * eps


def x0_to_model_output(x0: torch.Tensor, x: torch.Tensor, alpha_cumprod: float, prediction_type: str):
    """The model output (epsilon or v) whose predicted x0 at ``x`` and ``alpha_cumprod`` is ``x0``:
    the inverse of :func:`model_output_to_x0_eps`, for samplers (ComfyUI)
    that hand out the denoised latent rather than the raw output."""
    a, s = math.sqrt(alpha_cumprod), math.sqrt(1.0 - alpha_cumprod)
    if check_prediction_type(prediction_type) == "epsilon":
        return (x - a * x0) / s
    return (a * x - x0) / s


def ddim_denoise(
    predict: Predict,
    x: torch.Tensor,
    schedule: Sequence[int],
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """DDIM from ``x`` (x_T at ``schedule[0]``) down the descending ``schedule``, the last step
    landing on its predicted x0 (alpha 1), as ldm's sampler and ComfyUI's "ddim" do."""
    n = len(schedule)
    for i, t in enumerate(schedule):
        alpha_to = float(alphas_cumprod[schedule[i + 1]]) if i + 1 < n else 1.0
        x = ddim_step(predict(x, t), x, float(alphas_cumprod[t]), alpha_to, prediction_type)
        if progress is not None:
            progress(i + 1, n)
    return x


@dataclass(frozen=True)
class InversionStep:
    """One step up the grid: the UNet is evaluated at ``timestep``, its output read at
    ``alpha_from`` (the latent's own alpha), and the latent moved to ``alpha_to``."""

    timestep: int
    alpha_from: float
    alpha_to: float


def inversion_steps(schedule: Sequence[int], alphas_cumprod: torch.Tensor) -> list[InversionStep]:
    """The steps that take a clean latent up the ``schedule`` (any order) to its highest timestep.

    The first starts from the clean latent (alpha 1), which has no UNet timestep of its own: the
    UNet sees it at the grid's lowest timestep."""
    ascending = sorted(int(t) for t in schedule)
    steps = []
    for i, t in enumerate(ascending):
        previous = ascending[max(i - 1, 0)]
        alpha_from = float(alphas_cumprod[previous]) if i else 1.0
        steps.append(InversionStep(previous, alpha_from, float(alphas_cumprod[t])))
    return steps


def ddim_invert(
    predict: Predict,
    latent: torch.Tensor,
    schedule: Sequence[int],
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """The x_T (DDPM space, at the schedule's highest timestep) whose DDIM run on ``schedule``
    comes back to the clean model latent ``latent`` (:func:`inversion_steps`)."""
    steps = inversion_steps(schedule, alphas_cumprod)
    x = latent
    for i, step in enumerate(steps):
        x = ddim_step(predict(x, step.timestep), x, step.alpha_from, step.alpha_to, prediction_type)
        if progress is not None:
            progress(i + 1, len(steps))
    return x


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    """Peak signal-to-noise ratio (dB) of ``image`` against ``reference``, both in [0, 1]; at most
    100 dB (identical images), so the value stays a finite number in file headers."""
    mse = float((image.float() - reference.float()).pow(2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-10))


@dataclass
class PictureCapture:
    """What :meth:`~diffsketch.backends.base.SamplingBackend.capture_from_image` returns.

    - ``sample``: the features of the replay, the :class:`CapturedSample` Train takes; its
      ``image`` is the decoded replay (what the features describe), not the picture itself.
    - ``replay_psnr``: PSNR (dB) of that image against the picture.
    - ``noise``: the inverted x_T (DDPM space), the "noise" the replay starts from.
    - ``picture``: the picture as used, ``[1, 3, H, W]`` after the fit (what to draw over).
    - ``notices``: what the fit did and size advice, in words (empty when there is nothing to say).
    """

    sample: CapturedSample
    replay_psnr: float
    noise: torch.Tensor
    picture: torch.Tensor | None = None
    notices: tuple[str, ...] = ()

    @property
    def warning(self) -> str | None:
        """Advice in words when the replay comes back too far from the picture, else None."""
        if self.replay_psnr >= MIN_REPLAY_PSNR:
            return None
        steps = self.sample.meta.get("steps")
        return (
            f"the model replays your picture only approximately (PSNR {self.replay_psnr:.1f} dB, below "
            f"{MIN_REPLAY_PSNR:.0f} dB): the features describe a picture that differs visibly from yours, so a "
            f"sketch drawn over yours fits them less well. Try more steps (now {steps}; 50 or 100), a caption "
            "that describes the picture, or a picture of the kind this model makes. Compare the returned image "
            "with yours."
        )
