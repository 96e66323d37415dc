"""Sketch extraction from any image with a trained extractor network.

:func:`extract` runs a model on ComfyUI-style images ``[B,H,W,C]`` of any size and type and
returns ``(sketch_image [B,H,W,3], mask [B,H,W])`` where the mask is line strength (1 = strong
line). Large images are cut into overlapping tiles that are blended back seamlessly, so memory
stays bounded by the tile size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from ..images import rgb_batch

# Smallest side the network is run at: below it the bottleneck would be a pixel or two wide.
MIN_SIZE = 64


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def _pad_bottom_right(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad [N,C,H,W] to (height, width) by reflection, or by edge replication where the image is
    too small to reflect (reflection needs pad < size)."""
    ph, pw = height - x.shape[-2], width - x.shape[-1]
    if pw:
        x = F.pad(x, (0, pw, 0, 0), mode="reflect" if pw < x.shape[-1] else "replicate")
    if ph:
        x = F.pad(x, (0, 0, 0, ph), mode="reflect" if ph < x.shape[-2] else "replicate")
    return x


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile origins covering [0, size): every tile is full-sized, the last one ends at ``size``."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def _window_1d(length: int, overlap: int, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """Blending weights along one side of a tile.

    Near a cut edge the network saw zero padding instead of the real neighbourhood, so the first
    quarter of the overlap gets weight 0, the middle half ramps up along a raised cosine, and the
    rest gets 1. Two neighbours overlapping by exactly ``overlap`` then have weights summing to 1;
    image borders (not cuts) keep weight 1.
    """
    w = torch.ones(length)
    margin = overlap // 4
    ramp = max(overlap - 2 * margin, 1)
    d = torch.arange(length, dtype=torch.float32)
    edge = torch.where(
        d < margin,
        torch.zeros_like(d),
        torch.where(
            d < margin + ramp, 0.5 - 0.5 * torch.cos(math.pi * (d - margin + 0.5) / ramp), torch.ones_like(d)
        ),
    )
    if ramp_start:
        w = w * edge
    if ramp_end:
        w = w * edge.flip(0)
    return w


# /proc/cpuinfo flags of CPUs with bfloat16 arithmetic in hardware (AMX tiles, AVX512-BF16 dot products)
_NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True where the CPU computes bfloat16 in hardware (AMX-BF16 or AVX512-BF16, read from
    /proc/cpuinfo's flags). Elsewhere oneDNN emulates bf16, slower than float32; where the flags
    cannot be read (not Linux) the answer is False, so float32 stays the default."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return any(flag in flags for flag in _NATIVE_BF16_FLAGS)
    except OSError:
        pass
    return False


#: The precisions ``dtype`` may name ("auto": the default for the device, see :func:`resolve_dtype`).
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")


def resolve_dtype(device: torch.device | str, dtype=None) -> torch.dtype:
    """The precision :func:`extract` runs at on ``device`` for ``dtype`` (None or "auto": bfloat16
    on a CPU that computes it in hardware, else float32; bfloat16, or float16 where unsupported, on
    CUDA). Refuses a precision the device cannot run (float16 on the CPU)."""
    return _resolve_precision(torch.device(device), dtype, True)[0]


def _resolve_precision(device: torch.device, dtype, channels_last) -> tuple[torch.dtype, bool]:
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            # Measured at 512x512 on an AMX CPU: twice float32's speed, SSIM 0.999 to its sketches.
            dtype = torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
    if isinstance(dtype, str):
        names = {
            "fp32": torch.float32,
            "float32": torch.float32,
            "bf16": torch.bfloat16,
            "bfloat16": torch.bfloat16,
            "fp16": torch.float16,
            "float16": torch.float16,
        }
        if dtype not in names:
            raise InvalidInputError(f"dtype {dtype!r} is not one of {sorted(names)}.")
        dtype = names[dtype]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise InvalidInputError(f"dtype must be float32, bfloat16 or float16, got {dtype}.")
    if dtype == torch.float16 and device.type == "cpu":
        raise InvalidInputError("float16 is not supported on the CPU; use float32 or bfloat16.")
    if channels_last is None:
        # Measured faster for this network on both oneDNN (CPU, ~25%) and cuDNN.
        channels_last = True
    return dtype, bool(channels_last)


class _Runner:
    """Runs the network on [N,3,h,w] CPU batches at the chosen device / precision / layout."""

    def __init__(self, model: nn.Module, dtype, channels_last):
        try:
            self.device = next(model.parameters()).device
        except StopIteration:
            self.device = torch.device("cpu")
        self.model = model
        self.dtype, self.channels_last = _resolve_precision(self.device, dtype, channels_last)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            # Converting the input is enough: cuDNN / oneDNN then pick channels-last kernels.
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            y = self.model(x)
        return y.float().cpu()


def _check_options(model, tile, overlap, contrast, batch_size) -> tuple[int, int, int]:
    multiple = int(getattr(model, "multiple", 1))
    min_side = _round_up(MIN_SIZE, multiple)
    if not isinstance(tile, int) or tile < min_side:
        raise InvalidInputError(f"tile must be an integer >= {min_side}, got {tile!r}.")
    if not isinstance(overlap, int) or overlap < 0:
        raise InvalidInputError(f"overlap must be a non-negative integer, got {overlap!r}.")
    tile = tile // multiple * multiple
    overlap = _round_up(overlap, multiple)
    if overlap > tile // 2:
        raise InvalidInputError(f"overlap ({overlap}) must be at most half the tile ({tile}).")
    if not isinstance(contrast, (int, float)) or not math.isfinite(contrast) or not 0.05 <= contrast <= 20:
        raise InvalidInputError(f"contrast must be a number in [0.05, 20] (1 = unchanged), got {contrast!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return multiple, tile, overlap


@torch.no_grad()
def extract(
    model: nn.Module,
    images,
    *,
    tile: int = 1024,
    overlap: int = 64,
    invert: bool = False,
    contrast: float = 1.0,
    dtype: torch.dtype | str | None = None,
    channels_last: bool | None = None,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Extract sketches from ``images`` with ``model`` (a :class:`SketchExtractor`, any device).

    ``images``: see :func:`~diffsketch.images.image_batch` (ComfyUI IMAGE [B,H,W,C] float in [0, 1],
    numpy, uint8, uint16, grey, RGBA, ...). Any size works: each image is reflection-padded at the bottom/right to the
    network's multiple -- and up to 64 px if smaller (edge-replicated where it is too small to
    reflect) -- and the result is cropped back to H x W.

    Images whose padded size exceeds ``tile`` on either side are cut into ``tile``-sized tiles
    overlapping by ``overlap`` px (rounded to the network's multiple), run ``batch_size`` tiles at
    a time and blended with a smooth window (see ``_window_1d``), so memory stays bounded by the
    tile size whatever the image size. Smaller images run ``batch_size`` images at a time.

    ``dtype``: None or "auto" = bfloat16 autocast on a CPU that computes it in hardware
    (:func:`cpu_has_native_bf16`), else float32; bfloat16 (float16 where unsupported) on CUDA.
    Or name one: "fp32", "bf16", "fp16" or a torch dtype.
    ``channels_last``: None = on (faster on CPU and GPU alike).

    Returns ``(sketch, mask)`` as float32 CPU tensors: ``sketch`` [B,H,W,3] -- dark lines on
    white, or white lines on black with ``invert=True`` (ControlNet line-art convention) -- and
    ``mask`` [B,H,W], the line strength (1 = strongest line, 0 = paper) whatever ``invert`` is.

    ``contrast`` is a gamma on line strength: ``strength ** (1 / contrast)``. 1 leaves the lines
    as predicted; above 1 faint strokes get darker (2 turns 25% grey lines into 50%); below 1
    faint strokes and light noise fade. Paper (0) and full ink (1) never move.

    ``progress(done, total)`` is called after each network call; ``total`` counts network inputs
    (images, or tiles for tiled images).
    """
    multiple, tile, overlap = _check_options(model, tile, overlap, contrast, batch_size)
    rgb = rgb_batch(images, "images")
    batch, height, width, _ = rgb.shape
    run = _Runner(model, dtype, channels_last)

    padded_h = max(_round_up(height, multiple), _round_up(MIN_SIZE, multiple))
    padded_w = max(_round_up(width, multiple), _round_up(MIN_SIZE, multiple))
    tiled = padded_h > tile or padded_w > tile
    stride = tile - overlap
    if tiled:
        rows = _tile_starts(padded_h, tile, stride)
        cols = _tile_starts(padded_w, tile, stride)
        total = batch * len(rows) * len(cols)
    else:
        total = batch
    done = 0

    grey = torch.empty(batch, height, width)
    for first in range(0, batch, batch_size if not tiled else 1):
        count = min(batch_size, batch - first) if not tiled else 1
        chunk = rgb[first : first + count].permute(0, 3, 1, 2)
        chunk = _pad_bottom_right(chunk, padded_h, padded_w)
        if not tiled:
            grey[first : first + count] = run(chunk)[:, 0, :height, :width]
            done += count
            if progress is not None:
                progress(done, total)
            continue
        tile_h, tile_w = min(tile, padded_h), min(tile, padded_w)
        acc = torch.zeros(padded_h, padded_w)
        weight_sum = torch.zeros(padded_h, padded_w)
        windows_h = {r: _window_1d(tile_h, overlap, r > 0, r + tile_h < padded_h) for r in rows}
        windows_w = {c: _window_1d(tile_w, overlap, c > 0, c + tile_w < padded_w) for c in cols}
        origins = [(r, c) for r in rows for c in cols]
        for start in range(0, len(origins), batch_size):
            group = origins[start : start + batch_size]
            tiles = torch.cat([chunk[:, :, r : r + tile_h, c : c + tile_w] for r, c in group])
            out = run(tiles)[:, 0]
            for (r, c), t in zip(group, out, strict=True):
                w = windows_h[r][:, None] * windows_w[c][None, :]
                acc[r : r + tile_h, c : c + tile_w] += t * w
                weight_sum[r : r + tile_h, c : c + tile_w] += w
            done += len(group)
            if progress is not None:
                progress(done, total)
        grey[first] = (acc / weight_sum)[:height, :width]

    strength = (1.0 - grey).clamp_(0.0, 1.0)
    if contrast != 1.0:
        strength = strength.pow_(1.0 / float(contrast))
    sketch = strength if invert else 1.0 - strength
    return sketch[..., None].expand(-1, -1, -1, 3).contiguous(), strength
