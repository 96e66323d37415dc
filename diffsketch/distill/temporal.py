"""Temporally stable extraction: sketches of a video that hold still.

A per-frame extractor flickers: a faint line is drawn in one frame and dropped in the next
although nothing moved, because noise and small brightness changes push it across the line/paper
boundary. :class:`TemporalStabilizer` blends each frame's sketch with the previous STABILISED
sketch carried along the input's optical flow (OpenCV's DIS flow), wherever the flow is
trustworthy: the point is visible in both frames (forward-backward check) and the input looks the
same there after warping (a photometric check, which catches flow errors that would otherwise
drag a line where the frame has none). Elsewhere, and on the first frame after a scene cut, the
per-frame sketch is kept unchanged, so nothing is ever blended across a cut.

The blend is a recursive filter along motion paths: line strength is averaged over the recent
frames that show the same point, which cancels the per-frame noise of the extractor without
delaying motion (the previous sketch is moved to where the picture is now).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from ..flow import DISFlow, grey_u8, require_opencv, visible_mask
from ..images import rgb_batch

#: Temporal modes of DiffSketch Extract and ``diffsketch extract``: "off" draws each frame on its own.
TEMPORAL_MODES = ("off", "stabilize")


@dataclass(frozen=True)
class TemporalOptions:
    """``blend``: weight of the warped previous sketch where the flow is trusted (0 = per-frame).
    ``match_tolerance``: largest input difference (0..1 luma, after warping and a small blur) at
    which a pixel counts as the same point. ``cut_histogram``: histogram distance (L1 of 32-bin
    luma histograms, 0..2) above which two frames are a scene cut. ``min_trusted``: a frame whose
    trusted fraction falls below this is treated as a cut too (unrelated pictures of alike
    brightness). ``flow_preset``: DIS preset. ``flow_scale``: the flow and its forward-backward check
    are computed on frames scaled by this (then upsampled), the usual economy with DIS; the
    photometric check and the blend stay at full resolution. Flows keep at least ``MIN_FLOW_SIDE``
    px on the shorter side."""

    blend: float = 0.7
    match_tolerance: float = 0.1
    cut_histogram: float = 0.5
    min_trusted: float = 0.3
    flow_preset: str = "fast"
    flow_scale: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.blend < 1.0:
            raise InvalidInputError(f"blend must be in [0, 1), got {self.blend!r}.")
        if self.match_tolerance <= 0 or not 0 < self.cut_histogram <= 2 or not 0 <= self.min_trusted <= 1:
            raise InvalidInputError("match_tolerance > 0, cut_histogram in (0, 2], min_trusted in [0, 1].")
        if not 0.0 < self.flow_scale <= 1.0:
            raise InvalidInputError(f"flow_scale must be in (0, 1], got {self.flow_scale!r}.")


#: The shorter side below which flows are not computed at reduced resolution: DIS's coarsest
#: pyramid level would lose the motion of small frames.
MIN_FLOW_SIDE = 128


def flow_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(h, w) at which flows of a ``height`` x ``width`` video are computed."""
    scale = max(scale, min(1.0, MIN_FLOW_SIDE / min(height, width)))
    return max(1, round(height * scale)), max(1, round(width * scale))


def luma_histogram(grey: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """Normalised histogram of a uint8 grey frame [H,W]."""
    counts = torch.bincount((grey.flatten().long() * bins) // 256, minlength=bins).float()
    return counts / counts.sum()


def _blur(x: torch.Tensor) -> torch.Tensor:
    """3x3 box blur of [1,1,H,W] (edge-replicated): noise must not decide whether a point matches."""
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


class TemporalStabilizer:
    """Stabilises a stream of per-frame sketches, one frame at a time (memory: one frame of state).

    Call it with each input frame (RGB [H,W,3] float in [0, 1], ComfyUI layout) and its per-frame
    line strength [H,W] (1 = line); it returns the stabilised strength. ``cuts`` counts the scene
    cuts seen (the first frame counts as one: it has nothing before it)."""

    def __init__(self, options: TemporalOptions | None = None):
        self.options = options or TemporalOptions()
        self._flow = DISFlow(self.options.flow_preset)  # says how to install OpenCV when it is missing
        self._grey: torch.Tensor | None = None
        self._small: torch.Tensor | None = None  # the grey frame at the flow's size
        self._luma: torch.Tensor | None = None  # blurred luma [1,1,H,W] for the photometric check
        self._histogram: torch.Tensor | None = None
        self._strength: torch.Tensor | None = None
        self._identity: torch.Tensor | None = None
        self.cuts = 0
        self.frames = 0

    def reset(self) -> None:
        self._grey = self._small = self._luma = self._histogram = self._strength = None

    def is_cut(self, grey: torch.Tensor, histogram: torch.Tensor) -> bool:
        return (
            self._grey is None
            or float((histogram - self._histogram).abs().sum()) > self.options.cut_histogram
        )

    def __call__(self, frame: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        if frame.dim() != 3 or frame.shape[-1] != 3 or strength.shape != frame.shape[:2]:
            raise InvalidInputError(
                f"the stabilizer takes an RGB frame [H,W,3] and its line strength [H,W]; got "
                f"{tuple(frame.shape)} and {tuple(strength.shape)}."
            )
        if self._grey is not None and self._grey.shape != strength.shape:
            raise InvalidInputError(
                f"frame {self.frames} is {strength.shape[1]}x{strength.shape[0]} but the frames before it are "
                f"{self._grey.shape[1]}x{self._grey.shape[0]}: every frame of a video must have the same size "
                "(resize them first, or extract them with the temporal mode off)."
            )
        self.frames += 1
        grey = grey_u8(frame.permute(2, 0, 1)[None])[0]
        histogram = luma_histogram(grey)
        small = _resize_grey(grey, flow_size(*grey.shape, self.options.flow_scale))
        luma = _blur(grey[None, None].float() / 255.0)
        strength = strength.float()
        out = strength
        if self.is_cut(grey, histogram):
            self.cuts += 1
        else:
            out = self._blend(small, luma, strength)
        self._grey, self._small, self._luma, self._histogram, self._strength = (
            grey,
            small,
            luma,
            histogram,
            out,
        )
        return out

    def _blend(self, small: torch.Tensor, luma: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        height, width = strength.shape
        to_previous = self._flow(small, self._small)[None]
        to_next = self._flow(self._small, small)[None]
        visible = visible_mask(to_previous, to_next)[None].float()
        # The flow in grid_sample's units ([-1, 1] across the full frame) and the visibility,
        # upsampled together: one interpolation, then one sampling pass for the previous blurred
        # luma and stabilised strength, which are read at the same points.
        h, w = small.shape
        units = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)]).view(1, 2, 1, 1)
        fields = torch.cat([to_previous * units, visible], dim=1)
        if (h, w) != (height, width):
            # bilinear: a pixel is visible where most of its neighbourhood at the flow's size is
            fields = F.interpolate(fields, size=(height, width), mode="bilinear", align_corners=True)
        grid = self._grid(height, width) + fields[0, :2].permute(1, 2, 0)
        before, carried = F.grid_sample(
            torch.cat([self._luma, self._strength[None, None]], dim=1),
            grid[None],
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        )[0]
        trusted = (fields[0, 2] >= 0.5) & ((before - luma[0, 0]).abs() <= self.options.match_tolerance)
        if float(trusted.float().mean()) < self.options.min_trusted:
            self.cuts += 1  # alike histograms, unrelated pictures: nothing to carry over
            return strength
        blend = self.options.blend
        return torch.where(trusted, blend * carried + (1.0 - blend) * strength, strength)

    def _grid(self, height: int, width: int) -> torch.Tensor:
        """grid_sample's identity grid [H,W,2] (made once per frame size)."""
        if self._identity is None or self._identity.shape[:2] != (height, width):
            self._identity = torch.stack(
                torch.meshgrid(
                    torch.linspace(-1.0, 1.0, width), torch.linspace(-1.0, 1.0, height), indexing="xy"
                ),
                dim=-1,
            )
        return self._identity


def _resize_grey(grey: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 grey [H,W] -> [h,w] by area averaging (OpenCV's INTER_AREA: no aliasing for DIS)."""
    if tuple(grey.shape) == size:
        return grey
    cv2 = require_opencv()
    return torch.from_numpy(cv2.resize(grey.cpu().numpy(), (size[1], size[0]), interpolation=cv2.INTER_AREA))


def _check_mode(temporal: str) -> None:
    if temporal not in TEMPORAL_MODES:
        raise InvalidInputError(f"temporal mode {temporal!r} is not one of {TEMPORAL_MODES}.")


def stabilize_batch(
    frames, strength: torch.Tensor, options: TemporalOptions | None = None
) -> tuple[torch.Tensor, int]:
    """Stabilise the line strengths [B,H,W] of a batch of video frames (ComfyUI IMAGE [B,H,W,C],
    in order) -> (strengths [B,H,W], number of cuts). A batch of one frame is refused: there is
    no motion to follow (extract it with the temporal mode off)."""
    rgb = rgb_batch(frames, "frames")
    if rgb.shape[0] < 2:
        raise InvalidInputError(
            "the temporal mode needs a video: a batch of at least 2 frames in order; got 1 image "
            "(turn the temporal mode off for single images)."
        )
    stabilizer = TemporalStabilizer(options)
    out = torch.stack([stabilizer(frame, s) for frame, s in zip(rgb, strength, strict=True)])
    return out, stabilizer.cuts


def strength_to_sketch(strength: torch.Tensor, invert: bool) -> torch.Tensor:
    """Line strength [B,H,W] -> a sketch IMAGE [B,H,W,3] as :func:`~diffsketch.distill.extract.extract` draws it."""
    sketch = strength if invert else 1.0 - strength
    return sketch[..., None].expand(-1, -1, -1, 3).contiguous()


def extract_stream(
    model: nn.Module,
    frames: Iterable,
    *,
    temporal: str = "stabilize",
    options: TemporalOptions | None = None,
    batch_size: int = 4,
    progress: Callable[[int], None] | None = None,
    **extract_options,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Sketches of a stream of frames (each [H,W,3]: uint8 or float in [0, 1]), in order, holding at
    most ``batch_size`` frames at a time: yields ``(sketch [H,W,3], strength [H,W])`` per frame.

    ``temporal``: "off" (each frame on its own) or "stabilize" (:class:`TemporalStabilizer`).
    ``extract_options`` go to :func:`~diffsketch.distill.extract.extract` (``invert``, ``contrast``,
    ``tile``, ``dtype``...). ``progress(frames_done)`` is called after each batch."""
    from .extract import extract

    _check_mode(temporal)
    invert = bool(extract_options.get("invert", False))
    stabilizer = TemporalStabilizer(options) if temporal == "stabilize" else None
    done = 0
    pending: list[torch.Tensor] = []
    first_shape = None

    def flush():
        nonlocal done
        batch = torch.stack(pending)
        pending.clear()
        _, strengths = extract(model, batch, batch_size=batch_size, **extract_options)
        if stabilizer is not None:
            rgb = rgb_batch(batch, "frames")
            strengths = torch.stack([stabilizer(f, s) for f, s in zip(rgb, strengths, strict=True)])
        done += len(strengths)
        if progress is not None:
            progress(done)
        yield from zip(strength_to_sketch(strengths, invert), strengths, strict=True)

    for frame in frames:
        frame = torch.as_tensor(frame)
        first_shape = first_shape or frame.shape
        if frame.shape != first_shape:
            raise InvalidInputError(
                f"frame {done + len(pending)} is {tuple(frame.shape)} but the first frame is "
                f"{tuple(first_shape)}: every frame of a video must have the same size."
            )
        pending.append(frame)
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()
