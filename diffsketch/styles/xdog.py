"""XDoG line extraction, bit-exact with the DiffSketch paper's code (``models/xdog.py::xdog_garygrossi``).

The paper's XDoG runs ``cv2.GaussianBlur`` on an 8-bit grey image. For 8-bit input OpenCV does not
convolve with the floating-point Gaussian: it picks the kernel size with a 3-sigma rule, turns the
kernel into 8-fractional-bit fixed point with error diffusion (weights summing to exactly 256),
accumulates exactly in integers and rounds once at the end. For the second blur (sigma 100) that
fixed-point kernel is far from a Gaussian (601 taps, almost all 0 or 1), and a float Gaussian
differs from OpenCV's result by more than one grey level. So this module rebuilds OpenCV's integer
kernel and integer arithmetic in torch, which makes the blurs bit-exact with OpenCV (checked against
``cv2.GaussianBlur`` and a plain numpy reference in ``tests/test_xdog.py``).

Everything is batched, runs on any device and never needs OpenCV.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..errors import InvalidInputError
from ..images import check_unit_range
from .base import StyleExtractor

__all__ = [
    "XDoG",
    "XDoGStyle",
    "xdog",
    "grey_u8",
    "gaussian_blur_u8",
    "opencv_ksize_u8",
    "opencv_gaussian_kernel_u8",
    "reflect101_index",
]

# OpenCV's fixed-point GaussianBlur for 8-bit images: 8 fractional bits per 1-D kernel, so the 2-D
# sum carries 16 fractional bits and is rounded half up once at the end.
_KERNEL_ONE = 256
_ROUND_SHIFT = 65536.0
_ROUND_HALF = 32768.0


def opencv_ksize_u8(sigma: float) -> int:
    """Kernel size OpenCV picks for ``ksize=(0, 0)`` on an 8-bit image: ``cvRound(sigma*3*2 + 1) | 1``.

    (Float images use a 4-sigma rule instead; XDoG always blurs the uint8 grey image.) ``round`` is
    round-half-to-even like ``cvRound``. E.g. sigma 0.5 -> 5, sigma 100 -> 601.
    """
    sigma = _check_sigma(sigma)
    return int(round(sigma * 3 * 2 + 1)) | 1


def opencv_gaussian_kernel_u8(sigma: float) -> list[int]:
    """OpenCV's fixed-point 1-D Gaussian kernel for 8-bit images (integers summing to 256).

    Mirrors ``getGaussianKernelBitExact`` (normalised samples of exp(-d^2 / (2 sigma^2)), evaluated in
    the same order) followed by ``getGaussianKernelFixedPoint_ED``: from the outer taps inwards, each
    tap is scaled by 256 plus the carried rounding error and rounded half-to-even; the centre tap takes
    whatever is left so the kernel sums to exactly 256.
    """
    n = opencv_ksize_u8(sigma)
    half = n // 2
    scale = -0.125 / (sigma * sigma)  # x runs over even numbers 2d, so this is -1/(2 sigma^2) per d^2
    outer = []
    total = 0.0
    for i in range(half):
        x = 1 - n + 2 * i
        value = math.exp(float(x * x) * scale)
        outer.append(value)
        total += value
    total = total * 2.0 + 1.0
    norm = 1.0 / total

    kernel = [0] * n
    carried = 0.0
    outer_sum = 0
    for i in range(half):
        adjusted = outer[i] * norm * _KERNEL_ONE + carried
        tap = round(adjusted)  # half-to-even, as cvRound on a softdouble
        carried = adjusted - tap
        kernel[i] = kernel[n - 1 - i] = tap
        outer_sum += tap
    kernel[half] = _KERNEL_ONE - 2 * outer_sum
    return kernel


def reflect101_index(positions: torch.Tensor, length: int) -> torch.Tensor:
    """Map any integer positions into ``[0, length)`` with OpenCV's BORDER_REFLECT_101 (``gfedcb|abcdefgh|gfedcba``).

    The extension is periodic with period ``2*(length-1)``, so positions far outside (a 601-tap kernel
    on a 20-pixel image) reflect as many times as needed, exactly like ``cv::borderInterpolate``.
    A length-1 axis maps everything to 0.
    """
    if length == 1:
        return torch.zeros_like(positions)
    period = 2 * (length - 1)
    p = torch.remainder(positions, period)
    return torch.where(p < length, p, period - p)


def _check_sigma(sigma) -> float:
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"Gaussian sigma {sigma!r} is not a number; use a positive number such as 0.5."
        ) from None
    if not math.isfinite(sigma) or sigma <= 0:
        raise InvalidInputError(f"Gaussian sigma {sigma!r} must be a positive finite number (e.g. 0.5).")
    return sigma


def _blur_matrix(length: int, kernel: list[int], device) -> torch.Tensor:
    """Dense ``[length, length]`` operator of the 1-D reflect-101 blur (integer entries, float64)."""
    n = len(kernel)
    half = n // 2
    out_pos = torch.arange(length, device=device).unsqueeze(1)
    taps = torch.arange(n, device=device).unsqueeze(0)
    src = reflect101_index(out_pos + taps - half, length)  # [length, n]
    weights = torch.tensor(kernel, dtype=torch.float64, device=device).expand(length, n)
    matrix = torch.zeros(length, length, dtype=torch.float64, device=device)
    # Several taps can land on one source pixel when the kernel is longer than the axis.
    matrix.scatter_add_(1, src, weights)
    return matrix


def _blur_last_axis(x: torch.Tensor, kernel: list[int], method: str) -> torch.Tensor:
    """Exact integer 1-D blur along the last axis of a float64 tensor holding integers."""
    length = x.shape[-1]
    nonzero = [(t, w) for t, w in enumerate(kernel) if w != 0]
    if method == "auto":
        # A dense matmul costs `length` multiply-adds per output but runs at BLAS speed; the tap loop
        # costs one vectorised pass per non-zero tap. Rough crossover measured on CPU, float64.
        method = "dense" if length <= 8 * len(nonzero) else "taps"
    if method == "dense":
        return x @ _blur_matrix(length, kernel, x.device).T
    if method == "taps":
        half = len(kernel) // 2
        idx = reflect101_index(torch.arange(-half, length + half, device=x.device), length)
        padded = x.index_select(-1, idx)
        out = torch.zeros_like(x)
        for t, w in nonzero:
            out.add_(padded[..., t : t + length], alpha=float(w))
        return out
    raise InvalidInputError(f"blur method {method!r} is not one of 'auto', 'dense', 'taps'.")


def gaussian_blur_u8(grey: torch.Tensor, sigma: float, method: str = "auto") -> torch.Tensor:
    """``cv2.GaussianBlur(grey, (0, 0), sigma)`` on 8-bit images, bit-exact, batched.

    ``grey``: ``[..., H, W]`` holding integers 0..255 (uint8 or any real dtype). Returns uint8 of the
    same shape. Borders are reflect-101. As in OpenCV, an axis of length 1 is not blurred (its kernel
    collapses to a single weight of 256).

    The sums stay exact in float64 (integers below 2^24), so the order of summation, the device and
    the ``method`` ("dense": one matmul per axis; "taps": one pass per non-zero tap) do not change the
    result. TF32 never applies to float64.
    """
    if grey.dim() < 2:
        raise InvalidInputError(f"grey image must be [..., H, W]; got shape {tuple(grey.shape)}.")
    kernel = opencv_gaussian_kernel_u8(sigma)
    x = grey.to(torch.float64)
    rows = _blur_last_axis(x, kernel, method)  # along W: 8 fractional bits
    both = _blur_last_axis(rows.transpose(-1, -2), kernel, method).transpose(-1, -2)  # along H: 16 bits
    return torch.floor((both + _ROUND_HALF) / _ROUND_SHIFT).clamp_(0, 255).to(torch.uint8)


def grey_u8(images: torch.Tensor) -> torch.Tensor:
    """Grey level as in the paper: mean over channels of ``img * 255``, truncated to uint8.

    ``images``: ``[B, C, H, W]`` in [0, 1] with C = 3 (RGB) or 1. Returns uint8 ``[B, H, W]``.
    The arithmetic follows numpy on the float32 tensor the paper feeds in (``x*255`` per channel,
    summed left to right, divided by C, in float32; float64 input stays float64), so truncation
    boundaries match. Values outside [0, 1] are refused; those within a rounding error of it are
    clamped (numpy's uint8 cast would wrap them).
    """
    _check_images(images)
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    scaled = images.to(dtype) * 255.0
    total = scaled[:, 0]
    for c in range(1, scaled.shape[1]):
        total = total + scaled[:, c]
    mean = total / float(scaled.shape[1])
    return torch.trunc(mean.clamp(0.0, 255.0)).to(torch.uint8)


def _check_images(images) -> None:
    if not isinstance(images, torch.Tensor):
        raise InvalidInputError(
            f"XDoG expects a torch tensor [B, 3, H, W] in [0, 1]; got {type(images).__name__}."
        )
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise InvalidInputError(
            f"XDoG expects images shaped [B, 3, H, W] (or [B, 1, H, W]) in [0, 1]; got shape {tuple(images.shape)}."
        )
    if not images.is_floating_point():
        raise InvalidInputError(
            f"XDoG expects float images in [0, 1]; got dtype {images.dtype}. Divide uint8 images by 255."
        )
    if images.numel() == 0:
        raise InvalidInputError(f"XDoG got an empty image batch of shape {tuple(images.shape)}.")
    check_unit_range(images, "XDoG input")


def xdog(
    images: torch.Tensor,
    sigma: float = 0.5,
    k: float = 200.0,
    gamma: float = 0.98,
    epsilon: float = 0.1,
    phi: float = 10.0,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """XDoG sketch of ``images`` ``[B, 3, H, W]`` in [0, 1] -> ``[B, 1, H, W]`` in (0, 1] (white = 1).

    Steps (docs/method.md §7): grey = uint8(mean(255*img)); G1, G2 = OpenCV 8-bit Gaussian blurs with
    sigma and sigma*k; D = (G1 - gamma*G2)/255; out = 1 where D >= epsilon else 1 + tanh(phi*(D - epsilon)).
    Defaults are the paper's (0.5, 200, 0.98, 0.1, 10). The tone mapping is done in float64, as numpy
    does in the paper's code, and the result is cast to ``out_dtype`` (the paper trains in float32).
    """
    sigma = _check_sigma(sigma)
    for name, value in (("k", k), ("gamma", gamma), ("epsilon", epsilon), ("phi", phi)):
        if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise InvalidInputError(f"XDoG parameter {name}={value!r} must be a finite number.")
    if k <= 0:
        raise InvalidInputError(f"XDoG parameter k={k!r} must be positive (the second blur uses sigma*k).")
    grey = grey_u8(images)
    g1 = gaussian_blur_u8(grey, sigma).to(torch.float64)
    g2 = gaussian_blur_u8(grey, sigma * float(k)).to(torch.float64)
    d = (g1 - float(gamma) * g2) / 255.0
    out = torch.where(d >= epsilon, torch.ones_like(d), 1.0 + torch.tanh(float(phi) * (d - float(epsilon))))
    return out.unsqueeze(1).to(out_dtype)


@dataclass(frozen=True)
class XDoG:
    """XDoG settings; calling the object runs :func:`xdog`. Defaults are the DiffSketch paper's."""

    sigma: float = 0.5
    k: float = 200.0
    gamma: float = 0.98
    epsilon: float = 0.1
    phi: float = 10.0

    def __post_init__(self):
        _check_sigma(self.sigma)
        if not (math.isfinite(self.k) and self.k > 0):
            raise InvalidInputError(f"XDoG k={self.k!r} must be a positive number.")

    def to_dict(self) -> dict:
        return asdict(self)

    def __call__(self, images: torch.Tensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return xdog(images, out_dtype=out_dtype, **asdict(self))


class XDoGStyle(StyleExtractor):
    """:func:`xdog` as a module (no parameters; float32 output on the input's device)."""

    style_name = "xdog"

    def __init__(self, settings: XDoG | None = None):
        super().__init__()
        self.settings = settings or XDoG()

    def sketch(self, images: torch.Tensor) -> torch.Tensor:
        return self.settings(images.float()).to(images.device)
