"""The fast image-to-sketch network (DiffSketch_distilled): architecture, configuration and files.

DiffSketch's own generator needs a diffusion model and seconds per image; the paper distils it
into a feed-forward image-to-image network (docs/method.md §9). :class:`SketchExtractor` is that
network, designed for speed on CPU and GPU rather than copied from Pix2PixHD:

- the input is folded 2x2 into channels (pixel-unshuffle), so no convolution runs at full
  resolution, yet no pixel is lost: thin 1-px lines survive through the folded channels;
- a slim U-Net of 3x3 convolutions with few channels (16..128 by default, five levels down to
  1/32), stride-2 downsampling, additive skips (cheaper than concatenation) and bilinear
  upsampling (nearest upsampling leaves 32-px steps in anything computed at the bottom);
- residual blocks with GroupNorm, the second norm starting at zero so every block starts as the
  identity: the norms keep activations bounded, which is what lets it train at distillation's
  learning rates (1e-3 and more) without the sigmoid saturating;
- large-scale context: a fixed (weight-free) low-pass pyramid of the image -- averaged down to
  the bottom resolution (1/32) and blurred there with Gaussians of 1, 2 and 4 cells (32, 64 and
  128 px) -- is added to the bottom features and handed to the head, and the bottom features are
  pooled 4x further (1/128) and convolved. Decisions such as "darker than its surroundings" then
  compare a pixel with the mean of a neighbourhood of hundreds of pixels directly (XDoG's second
  blur has sigma 100 px; a drawn style's tone decisions are as wide), which learned convolutions
  alone approximate poorly. The price: a tile's output depends on the tile's content, which the
  overlapping, blended tiles of :func:`~diffsketch.distill.extract.extract` keep small;
- the head sees the folded input and the low-pass maps scaled up (``head_gain``): a steep tone
  curve (a pixel just above or below its surroundings' mean turning paper or ink) then needs 4x
  smaller weights, which Adam reaches in fewer steps;
- the head predicts 4 sub-pixels per folded pixel and unfolds them (pixel-shuffle) into a
  1-channel sketch in [0, 1] through a sigmoid.

The network predicts the sketch's grey level: 1 = paper (white), 0 = ink (black), the same
convention as a sketch image, so it trains directly against sketch images with L1 / LPIPS.

Weights are saved with :func:`save_extractor` / read with :func:`load_extractor`;
:func:`diffsketch.distill.extract.extract` runs the network on images of any size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FileFormatError, InvalidInputError, WeightsNotFoundError
from ..fileio import CHECKSUM_KEY, load_model_file, load_state_strict, save_model_file
from ..images import gaussian_kernel_1d

EXTRACTOR_KIND = "extractor"
# Raised whenever the network's structure or parameter names change: files of another version are
# refused with a message instead of loading into the wrong network.
EXTRACTOR_VERSION = 3


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
    # Width of the head's hidden layer (0 = the width of level 0): twice level 0's, for finer tone
    # decisions at ~1.6k more multiply-adds per pixel.
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
        # float32 whatever the autocast: oneDNN's bfloat16 depthwise convolution hangs on some
        # channels_last shapes (25 taps over a 32x32 map never returns), and these few
        # low-resolution maps cost nothing to compute in full precision.
        with torch.autocast(images.device.type, enabled=False):
            return self._maps(images.float(), size).to(images.dtype)

    def _maps(self, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
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
                "use diffsketch.distill.extract.extract() for other sizes and layouts."
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


def save_extractor(
    path: str | os.PathLike,
    model: SketchExtractor,
    meta: dict | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Atomically write ``model`` as a ``kind="extractor"`` DiffSketch safetensors file (format ``EXTRACTOR_VERSION``).

    ``meta`` (JSON-serialisable: training settings, source style, steps, ...) is stored in the
    header next to the network config and a checksum of the weights. ``dtype``: float32, or
    float16 / bfloat16 for a file half the size (:func:`load_extractor` computes in float32).
    """
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise InvalidInputError(f"extractor weights are stored as float32, float16 or bfloat16, not {dtype}.")
    if not isinstance(model, SketchExtractor):
        raise InvalidInputError(f"save_extractor needs a SketchExtractor, got {type(model).__name__}.")
    meta = dict(meta or {})
    if "config" in meta:
        raise InvalidInputError("extractor meta may not set the reserved keys ['config'].")
    tensors = {k: v.detach().to(dtype).cpu() for k, v in model.state_dict().items()}
    header = {"config": model.config.to_dict(), **meta}
    return save_model_file(path, tensors, EXTRACTOR_KIND, EXTRACTOR_VERSION, header)


def load_extractor(path: str | os.PathLike, device: str | torch.device = "cpu") -> SketchExtractor:
    """Read a file written by :func:`save_extractor`; returns an eval-mode model on ``device``.

    The header's extra fields are available as ``model.meta``. A corrupt, truncated, other-kind
    or other-version file, or one with NaN or infinite weights, raises :class:`FileFormatError`
    and nothing is loaded.
    """
    path = Path(path)
    tensors, header = load_model_file(path, EXTRACTOR_KIND, (EXTRACTOR_VERSION,))
    try:
        config = ExtractorConfig.from_dict(header.get("config"))
    except InvalidInputError as e:
        raise FileFormatError(f"{path.name}: the extractor config in the header is invalid ({e}).") from e
    model = SketchExtractor(config)
    load_state_strict(
        model, tensors, path.name, "The extractor config in its header describes another network."
    )
    model.meta = {
        k: v for k, v in header.items() if k not in ("format", "kind", "version", "config", CHECKSUM_KEY)
    }
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# The extractor shipped with the pack
# --------------------------------------------------------------------------------------------

#: The default extractor installed with the package: a student distilled from real HED
#: (``tools/train_default_extractor.py``). HED's style, not a DiffSketch style.
DEFAULT_EXTRACTOR_FILE = Path(__file__).resolve().parents[1] / "data" / "default_extractor.safetensors"


def default_extractor_path() -> Path:
    """:data:`DEFAULT_EXTRACTOR_FILE`, or WeightsNotFoundError saying how to get it back."""
    if not DEFAULT_EXTRACTOR_FILE.is_file():
        raise WeightsNotFoundError(
            f"the built-in extractor {DEFAULT_EXTRACTOR_FILE.name} is missing from this installation "
            f"({DEFAULT_EXTRACTOR_FILE.parent}); reinstall DiffSketch, or pass an extractor file of your own."
        )
    return DEFAULT_EXTRACTOR_FILE


def load_default_extractor(device: str | torch.device = "cpu") -> SketchExtractor:
    """The extractor shipped with the pack (see :data:`DEFAULT_EXTRACTOR_FILE`)."""
    return load_extractor(default_extractor_path(), device=device)
