"""Optical flow between video frames: backward warping, the forward-backward visibility check and
OpenCV's DIS flow estimate, shared by the flicker measure (:mod:`diffsketch.eval.flicker`) and
temporally stable extraction (:mod:`diffsketch.distill.temporal`).

A flow is a float tensor ``[..., 2, H, W]`` in pixels, x (columns) then y (rows), OpenCV's order.
``flow_to_previous`` of frame t says, for each pixel ``p`` of frame t, where the same point is in
frame t-1: ``frame_t(p) ~ frame_{t-1}(p + flow(p))``, so :func:`warp` of frame t-1 by it is frame t
as seen from frame t-1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import InvalidInputError


def _pixel_grid(height: int, width: int, device=None) -> torch.Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device),
        torch.arange(width, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return torch.stack([xs, ys])  # [2, H, W]


def sample_at(image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``image`` [B,C,h,w] at pixel positions ``points`` [B,2,H,W] (x, y;
    pixel centres at integers) -> [B,C,H,W]; positions outside take the nearest border pixel."""
    h, w = image.shape[-2:]
    gx = points[:, 0] * (2.0 / max(w - 1, 1)) - 1.0
    gy = points[:, 1] * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: ``out(p) = image(p + flow(p))``, bilinear. ``image`` [B,C,H,W], ``flow`` [B,2,H,W]."""
    if image.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2 or image.shape[-2:] != flow.shape[-2:]:
        raise InvalidInputError(
            f"warp expects an image [B,C,H,W] and a flow [B,2,H,W] of the same size; got "
            f"{tuple(image.shape)} and {tuple(flow.shape)}."
        )
    grid = _pixel_grid(*image.shape[-2:], device=image.device)
    return sample_at(image, grid + flow)


def visible_mask(
    flow_to_previous: torch.Tensor, flow_to_next: torch.Tensor, alpha1: float = 0.01, alpha2: float = 0.5
) -> torch.Tensor:
    """Pixels of frame t that frame t-1 also shows -> bool [B,H,W].

    ``flow_to_previous`` [B,2,H,W] is frame t -> t-1, ``flow_to_next`` the same pair's t-1 -> t.
    A pixel is visible when its point lands inside frame t-1 and the forward-backward check of
    Sundaram et al. (ECCV 2010), with Ruder et al.'s constants (GCPR 2016, the check Lai et al. use
    for the warping error), passes: going there and back returns within
    ``alpha1 * (|f|^2 + |b|^2) + alpha2`` squared pixels."""
    b, _, h, w = flow_to_previous.shape
    there = _pixel_grid(h, w, flow_to_previous.device) + flow_to_previous
    back = sample_at(flow_to_next, there)
    loop = flow_to_previous + back
    tolerance = alpha1 * (flow_to_previous.square().sum(1) + back.square().sum(1)) + alpha2
    inside = (there[:, 0] >= 0) & (there[:, 0] <= w - 1) & (there[:, 1] >= 0) & (there[:, 1] <= h - 1)
    return inside & (loop.square().sum(1) <= tolerance)


def require_opencv():
    """The ``cv2`` module, or an ImportError that says which package to install."""
    try:
        import cv2
    except ImportError as e:
        raise ImportError(
            "optical flow (the temporal mode, the flicker measure's estimated flow) needs OpenCV, which is not "
            'installed: pip install opencv-python-headless (or the whole extra: pip install "diffsketch[video]"), '
            "into the Python that runs ComfyUI. Install only one OpenCV package: opencv-python, "
            "opencv-contrib-python and opencv-python-headless all provide cv2 and break each other when mixed."
        ) from e
    return cv2


def grey_u8(frames: torch.Tensor) -> torch.Tensor:
    """RGB frames [B,3,H,W] or grey [B,1,H,W] in [0, 1] -> uint8 luma [B,H,W]."""
    if frames.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=frames.dtype).view(1, 3, 1, 1)
        frames = (frames * weights).sum(1, keepdim=True)
    return (frames[:, 0] * 255.0).round().clamp(0, 255).to(torch.uint8)


class DISFlow:
    """OpenCV's DIS optical flow (Kroeger et al., ECCV 2016) on uint8 grey frames [H,W].

    ``preset``: "ultrafast", "fast" or "medium" (OpenCV's presets). One instance holds OpenCV's
    solver, so it is reused from frame to frame (not thread-safe; make one per thread)."""

    PRESETS = ("ultrafast", "fast", "medium")

    def __init__(self, preset: str = "fast"):
        if preset not in self.PRESETS:
            raise InvalidInputError(f"DIS flow preset {preset!r} is not one of {self.PRESETS}.")
        cv2 = require_opencv()
        code = getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{preset.upper()}")
        self._dis = cv2.DISOpticalFlow_create(code)

    def __call__(self, frame: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """Flow [2,H,W] from ``frame`` to ``other`` (uint8 [H,W]): ``frame(p) ~ other(p + flow(p))``."""
        flow = self._dis.calc(frame.cpu().numpy(), other.cpu().numpy(), None)  # [H,W,2] float32
        return torch.from_numpy(flow).permute(2, 0, 1).contiguous()


def estimate_flows(frames: torch.Tensor, preset: str = "medium") -> tuple[torch.Tensor, torch.Tensor]:
    """DIS flow between consecutive frames [T,C,H,W] in [0, 1] -> ``(flow_to_previous,
    flow_to_next)``, each [T-1,2,H,W]: entry i is frame i+1 -> i and frame i -> i+1."""
    grey = grey_u8(frames)
    dis = DISFlow(preset)
    to_previous = [dis(grey[i + 1], grey[i]) for i in range(len(grey) - 1)]
    to_next = [dis(grey[i], grey[i + 1]) for i in range(len(grey) - 1)]
    return torch.stack(to_previous), torch.stack(to_next)
