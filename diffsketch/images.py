"""Images: the one check every image input goes through, fitting a picture to a size, image files,
and a Gaussian kernel.

:func:`image_batch` is where an IMAGE enters the library -- the example sketch of training, the
photos of extraction, XDoG and the styles, the evaluation's photos -- so every entry accepts the
same inputs and refuses the same mistakes with the same message (a float image in 0..255 is
refused with a hint instead of being clamped to white).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InvalidInputError

#: File suffixes read as images when a folder or glob is given.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def image_files_in(folder, what: str = "photos folder") -> tuple[list[Path], list[str]]:
    """``(image files, names of the other files)`` directly in ``folder``, sorted; image files by
    their suffix (:data:`IMAGE_SUFFIXES`). Hidden files and sub-folders are not listed. A folder
    that does not exist is an error naming ``what``."""
    root = Path(folder)
    if not root.is_dir():
        raise InvalidInputError(f"{what} not found: {root} (give a folder of image files).")
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    return images, [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]


#: ITU-R 601 luma weights, what PIL's convert("L") uses.
LUMA = (0.299, 0.587, 0.114)
# Float images may stray this far outside [0, 1] (resampling overshoot) before they are refused.
_RANGE_TOLERANCE = 1e-3


def _as_float_tensor(images, what: str) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        array = images
        if array.dtype == np.uint8:
            return torch.from_numpy(array.astype(np.float32)) / 255.0
        if array.dtype == np.uint16:
            return torch.from_numpy(array.astype(np.float32)) / 65535.0
        if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.floating):
            return torch.from_numpy(array.astype(np.float32))
        raise InvalidInputError(
            f"{what}: numpy dtype {array.dtype} is not supported; give float in [0, 1], uint8 or uint16."
        )
    if isinstance(images, torch.Tensor):
        x = images.detach()
        if x.dtype == torch.uint8:
            return x.cpu().float() / 255.0
        if x.dtype == getattr(torch, "uint16", None):
            return x.cpu().to(torch.int32).float() / 65535.0
        if x.dtype == torch.bool or x.is_floating_point():
            return x.cpu().float()
        raise InvalidInputError(
            f"{what}: torch dtype {x.dtype} is not supported; give float in [0, 1], uint8 or uint16."
        )
    raise InvalidInputError(f"{what}: expected an image tensor or numpy array, got {type(images).__name__}.")


def image_batch(images, what: str = "images", *, channels_first: bool = False) -> torch.Tensor:
    """Any supported image input -> float32 CPU tensor ``[B, H, W, C]`` in [0, 1], C = 1..4 as given.

    Layouts: ``[B,H,W,C]`` (ComfyUI's IMAGE), ``[H,W,C]`` or ``[H,W]``; with ``channels_first``
    also torch's ``[B,C,H,W]`` (read as ComfyUI's layout whenever both readings are possible).
    Types: float in [0, 1], uint8 (/255), uint16 (/65535), bool; torch tensors (inference tensors
    too; the result is a normal tensor) or numpy arrays. Refused, with a message naming ``what``:
    other types, empty images, other channel counts, NaN or infinity, and float values outside
    [0, 1] (with a hint when they look like 0..255; clamping them would turn the image white).
    """
    with torch.inference_mode(False):
        x = _as_float_tensor(images, what)
        if x.ndim == 2:
            x = x[None, :, :, None]
        elif x.ndim == 3:
            if x.shape[-1] > 4:
                raise InvalidInputError(
                    f"{what}: a 3-D image must be [H,W,C] with C in 1..4, got shape {tuple(x.shape)} "
                    "(a batch of masks? give images as [B,H,W,C])."
                )
            x = x[None]
        elif x.ndim != 4:
            raise InvalidInputError(
                f"{what}: expected [B,H,W,C], [H,W,C] or [H,W]; got shape {tuple(x.shape)}."
            )
        if channels_first and not 1 <= x.shape[-1] <= 4 and 1 <= x.shape[1] <= 4:
            x = x.permute(0, 2, 3, 1)
        if 0 in x.shape[:3]:
            raise InvalidInputError(
                f"{what}: the image batch is empty (shape {tuple(x.shape)}); give at least one image."
            )
        if not 1 <= x.shape[-1] <= 4:
            hint = " (channels-first? ComfyUI images are [B,H,W,C])" if 1 <= x.shape[1] <= 4 else ""
            raise InvalidInputError(
                f"{what}: expected 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels in the last dimension, "
                f"got shape {tuple(x.shape)}{hint}."
            )
        check_unit_range(x, what)
        return x.clamp(0.0, 1.0).contiguous()


def check_unit_range(x: torch.Tensor, what: str) -> None:
    """Refuse NaN, infinity and float values outside [0, 1] (with a hint when they look like 0..255),
    on any device. Values within a rounding error of the range are let through (and clamped by
    the callers)."""
    if not bool(torch.isfinite(x).all()):
        raise InvalidInputError(f"{what}: NaN or infinite values; check the image that was passed in.")
    lo, hi = float(x.min()), float(x.max())
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        hint = " (it looks like 0-255 values: divide by 255)" if hi > 2 else ""
        raise InvalidInputError(f"{what}: values span [{lo:.3g}, {hi:.3g}]; expected [0, 1]{hint}.")


def over_white(x: torch.Tensor) -> torch.Tensor:
    """``[..., C]`` with C in 1..4 -> without alpha: grey + alpha and RGBA are composited over white
    paper (transparent areas of a picture read as blank paper)."""
    c = x.shape[-1]
    if c in (2, 4):
        colour, alpha = x[..., : c - 1], x[..., c - 1 :]
        return colour * alpha + (1.0 - alpha)
    return x


def as_rgb(x: torch.Tensor) -> torch.Tensor:
    """A batch from :func:`image_batch` as RGB ``[B, H, W, 3]`` (alpha over white, grey repeated)."""
    x = over_white(x)
    return (x.expand(-1, -1, -1, 3) if x.shape[-1] == 1 else x).contiguous()


def as_grey(x: torch.Tensor) -> torch.Tensor:
    """A batch from :func:`image_batch` as grey ``[B, H, W, 1]`` (alpha over white, RGB by ITU-R 601 luma)."""
    x = over_white(x)
    if x.shape[-1] == 3:
        x = (x * torch.tensor(LUMA, dtype=x.dtype)).sum(-1, keepdim=True)
    return x.contiguous()


def resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` ``[B, C, H, W]`` in [0, 1] resized to ``size`` = ``(width, height)``: bilinear,
    antialiased (so shrinking does not alias thin lines away), clamped back to [0, 1]."""

    width, height = size
    out = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return out.clamp(0.0, 1.0)


def rgb_batch(images, what: str = "images") -> torch.Tensor:
    """Any supported image input (see :func:`image_batch`) as float32 CPU RGB ``[B, H, W, 3]``."""
    return as_rgb(image_batch(images, what))


def crop_box(
    height: int, width: int, out_width: int, out_height: int, area: float = 1.0, position=(0.5, 0.5)
) -> tuple[int, int, int, int]:
    """``(top, left, crop height, crop width)`` of the box of a ``height`` x ``width`` picture that
    :func:`fit_to_size` shows at ``out_width`` x ``out_height``: the largest box of the output's aspect
    ratio, its area scaled by ``area`` (0 < area <= 1), placed at ``position`` (x, y in [0, 1] of
    the room left; 0.5, 0.5 is centred)."""
    if not 0.0 < area <= 1.0:
        raise InvalidInputError(f"crop area must be in (0, 1], got {area!r}.")
    scale = min(width / out_width, height / out_height) * math.sqrt(area)
    crop_w = max(1, min(width, round(out_width * scale)))
    crop_h = max(1, min(height, round(out_height * scale)))
    left = round((width - crop_w) * min(max(float(position[0]), 0.0), 1.0))
    top = round((height - crop_h) * min(max(float(position[1]), 0.0), 1.0))
    return top, left, crop_h, crop_w


def fit_to_size(
    image: torch.Tensor, width: int, height: int, box: tuple[int, int, int, int] | None = None
) -> torch.Tensor:
    """``[B, C, H, W]`` float in [0, 1] -> ``[B, C, height, width]``: the ``box`` (:func:`crop_box`;
    None: the centred box, i.e. resized to cover the output and centre-cropped), resized
    (bilinear, antialiased when shrinking) without stretching."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    top, left, crop_h, crop_w = box if box is not None else crop_box(h, w, width, height)
    x = image[..., top : top + crop_h, left : left + crop_w]
    if (crop_h, crop_w) == (height, width):
        return x.contiguous()
    return resize_image(x.float(), (width, height))


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def save_png(tensor, path: Path) -> None:
    """Save [3,H,W] / [1,H,W] / [H,W,3] float in [0,1] as an 8-bit PNG, atomically."""
    import io

    from PIL import Image

    from .fileio import atomic_write_bytes

    t = tensor.detach().float().cpu()
    if t.ndim == 4:
        t = t[0]
    if t.ndim == 3 and t.shape[0] in (1, 3):
        t = t.movedim(0, -1)
    arr = (t.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def read_image_pixels(path: Path):
    """An image file's pixels as numpy [H,W,C]: uint8, or uint16 for 16-bit files; C is 1 (grey),
    2 (grey + alpha), 3 or 4. Decoding workers hand these on: a quarter of the float32 bytes."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
        else:
            if im.mode not in ("L", "LA", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    return arr


def read_image(path: Path):
    """An image file as float32 [H,W,C] numpy in [0,1], keeping grey/RGBA/16-bit for the caller to convert."""
    arr = read_image_pixels(path)
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    return arr.astype(np.float32) / scale


def gaussian_kernel_1d(size: int, sigma: float, dtype, device) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps centred on the middle one."""
    d = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(d**2) / (2 * sigma * sigma))
    return g / g.sum()
