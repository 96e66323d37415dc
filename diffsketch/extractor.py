"""The fast image-to-sketch network (DiffSketch_distilled) and sketch extraction from any image.

DiffSketch's own generator needs a diffusion model and seconds per image; the paper distils it
into a feed-forward image-to-image network (method.md §9). :class:`SketchExtractor` is that
network, designed for speed on CPU and GPU rather than copied from Pix2PixHD:

- the input is folded 2x2 into channels (pixel-unshuffle), so no convolution runs at full
  resolution, yet no pixel is lost: thin 1-px lines survive through the folded channels;
- a slim U-Net of 3x3 convolutions with few channels (16..128 by default, five levels down to
  1/32), stride-2 downsampling, additive skips (cheaper than concatenation) and bilinear
  upsampling (nearest upsampling leaves 32-px steps in anything computed at the bottom);
- residual blocks with GroupNorm, the second norm starting at zero so every block starts as the
  identity. Without normalisation the network was unstable to train (activations grew by 10^2..
  10^6 within ten steps at lr 1e-3 and the sigmoid saturated for good);
- large-scale context: a fixed (weight-free) low-pass pyramid of the image -- averaged down to
  the bottom resolution (1/32) and blurred there with Gaussians of 1, 2 and 4 cells (32, 64 and
  128 px) -- is added to the bottom features and handed to the head, and the bottom features are
  pooled 4x further (1/128) and convolved. Decisions such as "darker than its surroundings" then
  compare a pixel with the mean of a neighbourhood of hundreds of pixels directly (XDoG's second
  blur has sigma 100 px; a drawn style's tone decisions are as wide). Learned convolutions alone
  reached that mean too imprecisely: held-out SSIM to an XDoG teacher rose from 0.72 to 0.80 with
  the low-pass maps (benchmarks/distill_fidelity.py). The price: a tile's output depends on the
  tile's content, which the overlapping, blended tiles of :func:`extract` keep invisible;
- the head sees the folded input and the low-pass maps scaled up (``head_gain``): a steep tone
  curve (a pixel just above or below its surroundings' mean turning paper or ink) then needs 4x
  smaller weights, which Adam reaches in far fewer steps (SSIM 0.825 -> 0.837 at equal steps);
- the head predicts 4 sub-pixels per folded pixel and unfolds them (pixel-shuffle) into a
  1-channel sketch in [0, 1] through a sigmoid.

The network predicts the sketch's grey level: 1 = paper (white), 0 = ink (black), the same
convention as a sketch image, so it trains directly against sketch images with L1 / LPIPS.

:func:`extract` runs a model on ComfyUI-style images ``[B,H,W,C]`` of any size and type and
returns ``(sketch_image [B,H,W,3], mask [B,H,W])`` where the mask is line strength (1 = strong
line). Weights are saved with :func:`save_extractor` / read with :func:`load_extractor`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import FileFormatError, InvalidInputError
from .fileio import load_tensors, save_tensors
from .metrics import gaussian_kernel_1d

EXTRACTOR_KIND = "extractor"
# 2: GroupNorm residual blocks, bottom context and bilinear upsampling (version 1 had none).
# 3: the low-pass pyramid of the image at the bottom and in the head, and the head's input gain.
EXTRACTOR_VERSION = 3
# Smallest side the network is run at: below it the bottleneck would be a pixel or two wide.
MIN_SIZE = 64


# --------------------------------------------------------------------------------------------
# Configuration and network
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractorConfig:
    """Shape of a :class:`SketchExtractor`; stored as JSON in the weights file.

    ``channels[i]`` is the width at 1/2**(i+1) resolution (level 0 works on the 2x2-folded
    input). ``encoder_blocks[i]`` residual blocks run at level i on the way down,
    ``decoder_blocks[i]`` (one entry per level except the bottom one) on the way up.
    """

    channels: tuple[int, ...] = (16, 32, 64, 128, 128)
    encoder_blocks: tuple[int, ...] = (1, 1, 2, 2, 2)
    decoder_blocks: tuple[int, ...] = (1, 1, 1, 1)
    # Pool the bottom features this much further for the context branch (1 = no context branch).
    context_pool: int = 4
    # Gaussian blurs (sigma in bottom cells of 2**levels px) of the image averaged to the bottom
    # resolution; fed to the bottom features and the head. Empty = no low-pass branch.
    lowpass_sigmas: tuple[float, ...] = (1.0, 2.0, 4.0)
    # Scale of the folded input and low-pass maps where the head sees them (see the module docs).
    head_gain: float = 4.0
    # Width of the head's hidden layer (0 = the width of level 0). 32 rather than 16: held-out
    # SSIM to XDoG 0.848 -> 0.871 at equal steps, for ~1.6k more multiply-adds per pixel.
    head_channels: int = 32
    # Sketches are mostly paper: start the sigmoid near white so training begins from "blank page".
    initial_output: float = 0.9

    def __post_init__(self):
        # Coerce lists (from JSON) to tuples so the config stays hashable and comparable.
        for name in ("channels", "encoder_blocks", "decoder_blocks", "lowpass_sigmas"):
            value = getattr(self, name)
            if not isinstance(value, Sequence) or isinstance(value, str):
                raise InvalidInputError(f"ExtractorConfig.{name} must be a list of numbers, got {value!r}.")
            object.__setattr__(self, name, tuple(value))
        levels = len(self.channels)
        if not 1 <= levels <= 6:
            raise InvalidInputError(f"ExtractorConfig.channels must have 1 to 6 levels, got {levels}.")
        if not all(isinstance(c, int) and 1 <= c <= 1024 for c in self.channels):
            raise InvalidInputError(
                f"ExtractorConfig.channels must be integers in 1..1024, got {self.channels}."
            )
        if len(self.encoder_blocks) != levels or len(self.decoder_blocks) != levels - 1:
            raise InvalidInputError(
                f"ExtractorConfig needs one encoder_blocks entry per level ({levels}) and one decoder_blocks "
                f"entry per level but the bottom one ({levels - 1}); got {self.encoder_blocks} and "
                f"{self.decoder_blocks}."
            )
        if not all(isinstance(n, int) and 0 <= n <= 16 for n in self.encoder_blocks + self.decoder_blocks):
            raise InvalidInputError("ExtractorConfig block counts must be integers in 0..16.")

        def integer_in(name: str, low: int, high: int, note: str = "") -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidInputError(
                    f"ExtractorConfig.{name} must be an integer in {low}..{high}{note}, got {value!r}."
                )

        integer_in("context_pool", 1, 64)
        if len(self.lowpass_sigmas) > 8 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0.25 <= v <= 16
            for v in self.lowpass_sigmas
        ):
            raise InvalidInputError(
                f"ExtractorConfig.lowpass_sigmas must be at most 8 numbers in 0.25..16 (bottom cells), "
                f"got {self.lowpass_sigmas!r}."
            )
        object.__setattr__(self, "lowpass_sigmas", tuple(float(v) for v in self.lowpass_sigmas))
        gain = self.head_gain
        if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not 0.0 < gain <= 64.0:
            raise InvalidInputError(f"ExtractorConfig.head_gain must be a number in (0, 64], got {gain!r}.")
        object.__setattr__(self, "head_gain", float(gain))
        integer_in("head_channels", 0, 1024, " (0 = level 0's width)")
        if not 0.0 < float(self.initial_output) < 1.0:
            raise InvalidInputError(
                f"ExtractorConfig.initial_output must be in (0, 1), got {self.initial_output}."
            )

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this (one fold + one stride-2 per level)."""
        return 2 ** len(self.channels)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> ExtractorConfig:
        if not isinstance(data, dict):
            raise InvalidInputError(f"an extractor config must be a JSON object, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(
                f"unknown extractor config keys {unknown}; known keys are {sorted(known)}."
            )
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> ExtractorConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidInputError(f"extractor config is not valid JSON: {e}") from e
        return cls.from_dict(data)


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(4, channels), channels)


class _ResidualBlock(nn.Module):
    """relu(x + norm(conv(relu(norm(conv(x)))))). The second norm's scale starts at zero, so a
    freshly built network is an identity-like stack and training starts stable."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _conv3x3(channels, channels)
        self.norm1 = _group_norm(channels)
        self.conv2 = _conv3x3(channels, channels)
        self.norm2 = _group_norm(channels)
        nn.init.zeros_(self.norm2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x))))))


class _Context(nn.Module):
    """Large-scale context added to the bottom features: the image averaged down to their size
    (1x1 conv), and the features pooled ``pool``x further, convolved and upsampled back, scaled
    by a gain that starts at zero."""

    def __init__(self, channels: int, pool: int):
        super().__init__()
        self.pool = pool
        self.image = nn.Conv2d(3, channels, 1)
        self.convs = nn.Sequential(_conv3x3(channels, channels), nn.ReLU(), _conv3x3(channels, channels))
        self.gain = nn.Parameter(torch.zeros(1))

    def forward(self, h: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        h = h + self.image(F.adaptive_avg_pool2d(images, h.shape[-2:]))
        pooled = F.avg_pool2d(h, self.pool, ceil_mode=True)
        wide = F.interpolate(self.convs(pooled), size=h.shape[-2:], mode="bilinear", align_corners=False)
        return h + self.gain * wide


class _LowPass(nn.Module):
    """Weight-free large-scale view of the image: averaged down to a given size, plus Gaussian
    blurs of that with ``sigmas`` (in cells of the reduced image). The blurs zero-pad and divide by
    the blurred ones, so near a border each value is the mean over the part of the window inside
    the image: a crop, a tile or a small image sees no dark frame.

    Output: ``3 * (1 + len(sigmas))`` channels at ``size``.
    """

    def __init__(self, sigmas: Sequence[float]):
        super().__init__()
        self.sigmas = tuple(sigmas)
        for k, sigma in enumerate(self.sigmas):
            radius = max(1, math.ceil(3 * sigma))
            kernel = gaussian_kernel_1d(2 * radius + 1, sigma, torch.float32, "cpu")
            # Not saved: the kernels follow from the config, and .to() still moves and casts them.
            self.register_buffer(f"kernel{k}", kernel, persistent=False)

    @property
    def channels(self) -> int:
        return 3 * (1 + len(self.sigmas))

    def _blur(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        radius = kernel.numel() // 2
        c = x.shape[1]
        k = kernel.to(x.dtype)
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, radius), groups=c)
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(radius, 0), groups=c)

    def forward(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(images, size)
        ones = torch.ones_like(pooled[:, :1])
        maps = [pooled]
        for k in range(len(self.sigmas)):
            kernel = getattr(self, f"kernel{k}")
            maps.append(self._blur(pooled, kernel) / self._blur(ones, kernel))
        return torch.cat(maps, dim=1)


class SketchExtractor(nn.Module):
    """Feed-forward image-to-sketch network.

    ``forward(images)``: ``images`` [B,3,H,W] RGB in [0, 1], H and W multiples of
    ``config.multiple``; returns [B,1,H,W] sketch grey level in [0, 1] (1 = paper, 0 = ink).
    Use :func:`extract` for arbitrary sizes, types and layouts.
    """

    def __init__(self, config: ExtractorConfig | None = None):
        super().__init__()
        self.config = config = config or ExtractorConfig()
        channels = config.channels
        folded = 3 * 4  # RGB folded 2x2 into channels
        self.stem = _conv3x3(folded, channels[0])
        self.down = nn.ModuleList(
            [_conv3x3(channels[i - 1], channels[i], stride=2) for i in range(1, len(channels))]
        )
        self.encoder = nn.ModuleList(
            [
                nn.Sequential(*[_ResidualBlock(c) for _ in range(n)])
                for c, n in zip(channels, config.encoder_blocks, strict=True)
            ]
        )
        # Project to the finer width *before* upsampling: 4x fewer pixels to convolve.
        self.up = nn.ModuleList(
            [nn.Conv2d(channels[i + 1], channels[i], 1) for i in range(len(channels) - 1)]
        )
        self.decoder = nn.ModuleList(
            [
                nn.Sequential(*[_ResidualBlock(c) for _ in range(n)])
                for c, n in zip(channels[:-1], config.decoder_blocks, strict=True)
            ]
        )
        self.context = _Context(channels[-1], config.context_pool) if config.context_pool > 1 else None
        self.lowpass = _LowPass(config.lowpass_sigmas) if config.lowpass_sigmas else None
        lowpass_channels = 0
        if self.lowpass is not None:
            lowpass_channels = self.lowpass.channels
            # Starts at zero: the low-pass maps join the bottom features as training finds them useful.
            self.lowpass_to_bottom = nn.Conv2d(lowpass_channels, channels[-1], 1)
            nn.init.zeros_(self.lowpass_to_bottom.weight)
            nn.init.zeros_(self.lowpass_to_bottom.bias)
        # The head sees the folded input (and the low-pass maps) again, so full-resolution detail
        # reaches the output and each pixel can be compared with its surroundings' mean.
        head_channels = config.head_channels or channels[0]
        self.head = _conv3x3(channels[0] + folded + lowpass_channels, head_channels)
        self.to_subpixels = _conv3x3(head_channels, 4)
        nn.init.normal_(self.to_subpixels.weight, std=1e-3)
        p = float(config.initial_output)
        nn.init.constant_(self.to_subpixels.bias, math.log(p / (1 - p)))

    @property
    def multiple(self) -> int:
        return self.config.multiple

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        m = self.multiple
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2] % m or images.shape[-1] % m:
            raise InvalidInputError(
                f"SketchExtractor expects [B,3,H,W] with H and W multiples of {m}, got {tuple(images.shape)}; "
                "use diffsketch.extractor.extract() for other sizes and layouts."
            )
        centred = images * 2 - 1
        folded = F.pixel_unshuffle(centred, 2)
        lowpass = None
        if self.lowpass is not None:
            lowpass = self.lowpass(centred, (images.shape[-2] // m, images.shape[-1] // m))
        h = F.relu(self.stem(folded))
        skips = []
        for level, blocks in enumerate(self.encoder):
            if level > 0:
                h = F.relu(self.down[level - 1](h))
            h = blocks(h)
            if level == len(self.encoder) - 1:
                if lowpass is not None:
                    h = h + self.lowpass_to_bottom(lowpass)
                if self.context is not None:
                    h = self.context(h, centred)
            skips.append(h)
        for level in range(len(self.decoder) - 1, -1, -1):
            up = F.interpolate(self.up[level](h), scale_factor=2.0, mode="bilinear", align_corners=False)
            h = self.decoder[level](up + skips[level])
        head_input = [h, self.config.head_gain * folded]
        if lowpass is not None:
            lowpass_up = F.interpolate(lowpass, size=folded.shape[-2:], mode="bilinear", align_corners=False)
            head_input.append(self.config.head_gain * lowpass_up)
        h = F.relu(self.head(torch.cat(head_input, dim=1)))
        return torch.sigmoid(F.pixel_shuffle(self.to_subpixels(h), 2))


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes: safetensors has no checksum of its own,
    so without this a flipped byte inside the weights would load silently as a broken network."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_extractor(path: str | os.PathLike, model: SketchExtractor, meta: dict | None = None) -> Path:
    """Atomically write ``model`` as a ``kind="extractor"`` DiffSketch safetensors file (format ``EXTRACTOR_VERSION``).

    ``meta`` (JSON-serialisable: training settings, source style, steps, ...) is stored in the
    header next to the network config and a checksum of the weights.
    """
    if not isinstance(model, SketchExtractor):
        raise InvalidInputError(f"save_extractor needs a SketchExtractor, got {type(model).__name__}.")
    meta = dict(meta or {})
    reserved = {"format", "kind", "version", "config", "checksum"} & set(meta)
    if reserved:
        raise InvalidInputError(f"extractor meta may not set the reserved keys {sorted(reserved)}.")
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"extractor meta must be JSON-serialisable: {e}") from e
    tensors = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    header = {"config": model.config.to_dict(), "checksum": _tensors_checksum(tensors), **meta}
    return save_tensors(path, tensors, kind=EXTRACTOR_KIND, version=EXTRACTOR_VERSION, meta=header)


def load_extractor(path: str | os.PathLike, device: str | torch.device = "cpu") -> SketchExtractor:
    """Read a file written by :func:`save_extractor`; returns an eval-mode model on ``device``.

    The header's extra fields are available as ``model.meta``. A corrupt, truncated, other-kind
    or other-version file raises :class:`FileFormatError` and nothing is loaded.
    """
    path = Path(path)
    tensors, header = load_tensors(path, kind=EXTRACTOR_KIND, versions=(EXTRACTOR_VERSION,), device="cpu")
    if header.get("checksum") != _tensors_checksum(tensors):
        raise FileFormatError(
            f"{path.name}: the weights do not match their checksum (the file is corrupt); re-create or "
            "re-download it."
        )
    try:
        config = ExtractorConfig.from_dict(header.get("config"))
    except InvalidInputError as e:
        raise FileFormatError(f"{path.name}: the extractor config in the header is invalid ({e}).") from e
    model = SketchExtractor(config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise FileFormatError(
            f"{path.name}: the weights do not fit the extractor config in its header ({e})."
        ) from e
    model.meta = {
        k: v for k, v in header.items() if k not in ("format", "kind", "version", "config", "checksum")
    }
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# Input conversion
# --------------------------------------------------------------------------------------------


def to_rgb_batch(images) -> torch.Tensor:
    """Any supported image batch -> float32 CPU tensor [B,H,W,3] in [0, 1].

    Accepts torch tensors or numpy arrays laid out [B,H,W,C], [H,W,C] or [H,W] (ComfyUI's IMAGE
    layout, channels last). Types: float (clamped to [0, 1]), uint8 (/255), uint16 (16-bit,
    /65535), bool. Channels: 1 (grey, repeated), 2 (grey + alpha), 3 (RGB), 4 (RGBA); alpha is
    composited over white, because transparent areas of a picture read as blank paper.
    """
    if isinstance(images, np.ndarray):
        array = images
        if array.dtype == np.uint8:
            x = torch.from_numpy(array.astype(np.float32)) / 255.0
        elif array.dtype == np.uint16:
            x = torch.from_numpy(array.astype(np.float32)) / 65535.0
        elif array.dtype == np.bool_ or np.issubdtype(array.dtype, np.floating):
            x = torch.from_numpy(array.astype(np.float32))
        else:
            raise InvalidInputError(
                f"images of numpy dtype {array.dtype} are not supported: give float in [0, 1], uint8 or uint16."
            )
    elif isinstance(images, torch.Tensor):
        x = images.detach()
        if x.dtype == torch.uint8:
            x = x.cpu().float() / 255.0
        elif x.dtype == getattr(torch, "uint16", None):
            x = x.cpu().to(torch.int32).float() / 65535.0
        elif x.dtype == torch.bool or x.is_floating_point():
            x = x.cpu().float()
        else:
            raise InvalidInputError(
                f"images of torch dtype {x.dtype} are not supported: give float in [0, 1], uint8 or uint16."
            )
    else:
        raise InvalidInputError(f"images must be a torch tensor or numpy array, got {type(images).__name__}.")

    if x.ndim == 2:
        x = x[None, :, :, None]
    elif x.ndim == 3:
        if x.shape[-1] > 4:
            raise InvalidInputError(
                f"a 3-D image must be [H,W,C] with C in 1..4, got shape {tuple(x.shape)} "
                "(a batch of masks? give images as [B,H,W,C])."
            )
        x = x[None]
    elif x.ndim != 4:
        raise InvalidInputError(f"images must be [B,H,W,C], [H,W,C] or [H,W]; got shape {tuple(x.shape)}.")
    b, h, w, c = x.shape
    if b == 0 or h == 0 or w == 0:
        raise InvalidInputError(
            f"the image batch is empty (shape {tuple(x.shape)}); give at least one image."
        )
    if not 1 <= c <= 4:
        hint = " (channels-first? ComfyUI images are [B,H,W,C])" if x.shape[1] in (1, 3, 4) else ""
        raise InvalidInputError(
            f"images need 1 to 4 channels in the last dimension, got shape {tuple(x.shape)}{hint}."
        )
    if not torch.isfinite(x).all():
        raise InvalidInputError("images contain NaN or infinite values.")
    x = x.clamp(0.0, 1.0)
    if c in (2, 4):
        colour, alpha = x[..., : c - 1], x[..., c - 1 :]
        x = colour * alpha + (1.0 - alpha)
    if x.shape[-1] == 1:
        x = x.expand(-1, -1, -1, 3)
    return x.contiguous()


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


def _resolve_precision(device: torch.device, dtype, channels_last) -> tuple[torch.dtype, bool]:
    if dtype is None:
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
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

    ``images``: see :func:`to_rgb_batch` (ComfyUI IMAGE [B,H,W,C] float, numpy, uint8, uint16,
    grey, RGBA, ...). Any size works: each image is reflection-padded at the bottom/right to the
    network's multiple -- and up to 64 px if smaller (edge-replicated where it is too small to
    reflect) -- and the result is cropped back to H x W.

    Images whose padded size exceeds ``tile`` on either side are cut into ``tile``-sized tiles
    overlapping by ``overlap`` px (rounded to the network's multiple), run ``batch_size`` tiles at
    a time and blended with a smooth window (see ``_window_1d``), so memory stays bounded by the
    tile size whatever the image size. Smaller images run ``batch_size`` images at a time.

    ``dtype``: None = float32 on CPU, bfloat16 (float16 where unsupported) autocast on CUDA.
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
    rgb = to_rgb_batch(images)
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
