"""Flicker of a processed video: the warping error of Lai et al., "Learning Blind Video Temporal
Consistency" (ECCV 2018), and synthetic clips whose optical flow is known exactly.

The warping error of output frames ``O_1..O_T`` with the INPUT's flow is

    E = 1/(T-1) * sum_t  sum_p M_t(p) |O_t(p) - warp(O_{t-1}, F_t)(p)|  /  sum_p M_t(p)

where ``F_t`` is the flow of input frame t to t-1 and ``M_t`` marks the pixels the flow says
frame t-1 shows too (forward-backward check, :func:`diffsketch.flow.visible_mask`); ``|.|`` is
averaged over channels. A still scene gives the per-frame differences of the output; a steady
output that moves with the picture gives 0. The flow comes from :func:`synthetic_clip` (exact: the
measure then has no flow error) or from :func:`diffsketch.flow.estimate_flows` (real footage).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError
from ..flow import sample_at, visible_mask, warp

#: Camera motions :func:`synthetic_clip` makes.
MOTIONS = ("pan", "zoom", "rotate", "shear", "mixed")


def _as_frames(frames: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(frames, torch.Tensor) or frames.dim() not in (3, 4):
        raise InvalidInputError(f"{what} must be a tensor [T,C,H,W] or [T,H,W].")
    return frames.float()[:, None] if frames.dim() == 3 else frames.float()


def warping_errors(
    outputs: torch.Tensor, flow_to_previous: torch.Tensor, visible: torch.Tensor
) -> torch.Tensor:
    """Per-pair warping error -> [T-1] (entry i: frame i+1 against frame i warped to it).

    ``outputs`` [T,C,H,W] or [T,H,W]; ``flow_to_previous`` [T-1,2,H,W] (input frame i+1 -> i);
    ``visible`` [T-1,H,W] bool. The clip's warping error is the mean of the result."""
    out = _as_frames(outputs, "outputs")
    t, _, h, w = out.shape
    if t < 2:
        raise InvalidInputError(f"the warping error needs at least 2 frames; got {t}.")
    if flow_to_previous.shape != (t - 1, 2, h, w) or visible.shape != (t - 1, h, w):
        raise InvalidInputError(
            f"for {t} frames of {h}x{w} the flow must be [{t - 1},2,{h},{w}] and the mask [{t - 1},{h},{w}]; "
            f"got {tuple(flow_to_previous.shape)} and {tuple(visible.shape)}."
        )
    difference = (out[1:] - warp(out[:-1], flow_to_previous.float())).abs().mean(1)
    mask = visible.to(difference.dtype)
    counted = mask.sum((1, 2))
    if bool((counted == 0).any()):
        raise InvalidInputError("a frame pair has no visible pixel: the flow moves every pixel out of view.")
    return (difference * mask).sum((1, 2)) / counted


@dataclass
class SyntheticClip:
    """A clip made by moving a camera over a still photo.

    ``frames`` [T,3,H,W] in [0, 1]; ``clean`` the same frames without noise and brightness drift;
    ``flow_to_previous`` / ``flow_to_next`` [T-1,2,H,W] the exact flows of frame i+1 -> i and
    i -> i+1; ``visible`` [T-1,H,W] the pixels of frame i+1 that frame i shows."""

    frames: torch.Tensor
    clean: torch.Tensor
    flow_to_previous: torch.Tensor
    flow_to_next: torch.Tensor
    visible: torch.Tensor


def _camera(motion: str, t: float, speed: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The camera of frame ``t``: (2x2 matrix, translation) from output pixels (centred) to photo
    pixels (relative to the photo's centre)."""
    pan = zoom = angle = shear = 0.0
    if motion in ("pan", "mixed"):
        pan = 2.0 * speed * t
    if motion in ("zoom", "mixed"):
        zoom = 0.012 * speed * t
    if motion in ("rotate", "mixed"):
        angle = math.radians(0.8 * speed * t)
    if motion in ("shear", "mixed"):
        shear = 0.012 * speed * t
    scale = 1.0 / (1.0 + zoom)  # zooming in: fewer photo pixels per frame pixel
    c, s = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    shearing = torch.tensor([[1.0, shear], [0.0, 1.0]], dtype=torch.float64)
    matrix = rotation @ shearing * scale
    translation = torch.tensor([pan, 0.6 * pan], dtype=torch.float64)
    return matrix, translation


def synthetic_clip(
    photo: torch.Tensor,
    frames: int,
    size: int,
    motion: str = "mixed",
    *,
    speed: float = 1.0,
    noise: float = 0.02,
    brightness_drift: float = 0.01,
    seed: int = 0,
) -> SyntheticClip:
    """A ``frames``-frame clip of ``size`` x ``size`` views of ``photo`` [3,H,W] in [0, 1].

    ``motion``: one of :data:`MOTIONS` (pan, zoom, rotation, shear, or all four); ``speed`` scales
    it (1: about 2 px of pan, 1.2% zoom, 0.8 degrees, 0.012 shear per frame). Each frame then gets
    independent Gaussian noise of std ``noise`` and its brightness multiplied by
    ``1 + brightness_drift * t``, so a per-frame extractor sees a slightly different picture every
    frame, as with a real camera. The views stay inside the photo (refused when it is too small)."""
    if motion not in MOTIONS:
        raise InvalidInputError(f"motion {motion!r} is not one of {MOTIONS}.")
    if frames < 2:
        raise InvalidInputError(f"a clip needs at least 2 frames; got {frames}.")
    if photo.dim() != 3 or photo.shape[0] != 3:
        raise InvalidInputError(f"photo must be RGB [3,H,W]; got {tuple(photo.shape)}.")
    ph, pw = photo.shape[-2:]
    cameras = [_camera(motion, float(t), speed) for t in range(frames)]
    half = (size - 1) / 2.0
    corners = torch.tensor([[-half, -half], [half, -half], [-half, half], [half, half]], dtype=torch.float64)
    reach = max(float(((m @ corners.T).T + b).abs().max(0).values.max()) for m, b in cameras)
    if reach > min(ph, pw) / 2.0 - 1:
        raise InvalidInputError(
            f"a {size}-px view moving {motion} for {frames} frames needs a photo of at least "
            f"{2 * math.ceil(reach) + 2} px a side; got {pw}x{ph}."
        )
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )
    centred = torch.stack([xs - half, ys - half]).reshape(2, -1)  # [2, N] frame pixels, centred
    photo_centre = torch.tensor([(pw - 1) / 2.0, (ph - 1) / 2.0], dtype=torch.float64)[:, None]

    def to_photo(camera) -> torch.Tensor:
        matrix, translation = camera
        return matrix @ centred + translation[:, None]  # [2, N] photo points, centred

    def to_frame(camera, points) -> torch.Tensor:
        matrix, translation = camera
        return torch.linalg.solve(matrix, points - translation[:, None])

    clean = torch.stack(
        [
            sample_at(photo[None].float(), (to_photo(cam) + photo_centre).reshape(1, 2, size, size).float())[
                0
            ]
            for cam in cameras
        ]
    )
    to_previous, to_next = [], []
    for before, after in zip(cameras[:-1], cameras[1:], strict=True):
        to_previous.append((to_frame(before, to_photo(after)) - centred).reshape(2, size, size))
        to_next.append((to_frame(after, to_photo(before)) - centred).reshape(2, size, size))
    flow_to_previous = torch.stack(to_previous).float()
    flow_to_next = torch.stack(to_next).float()
    g = torch.Generator().manual_seed(seed)
    drift = 1.0 + brightness_drift * torch.arange(frames, dtype=torch.float32).view(-1, 1, 1, 1)
    noisy = clean * drift + noise * torch.randn(clean.shape, generator=g)
    return SyntheticClip(
        frames=noisy.clamp(0, 1),
        clean=clean,
        flow_to_previous=flow_to_previous,
        flow_to_next=flow_to_next,
        visible=visible_mask(flow_to_previous, flow_to_next),
    )
