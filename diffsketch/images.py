"""Images: reading and writing image files (the command line and the evaluation use it) and the
Gaussian kernel shared by the extractor's low-pass maps and SSIM."""

from __future__ import annotations

from pathlib import Path

import torch

#: File suffixes read as images when a folder or glob is given.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def save_png(tensor, path: Path) -> None:
    """Save [3,H,W] / [1,H,W] / [H,W,3] float in [0,1] as an 8-bit PNG, atomically."""
    import io

    import numpy as np
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
    import numpy as np
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
    import numpy as np

    arr = read_image_pixels(path)
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    return arr.astype(np.float32) / scale


def gaussian_kernel_1d(size: int, sigma: float, dtype, device) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps centred on the middle one."""
    d = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(d**2) / (2 * sigma * sigma))
    return g / g.sum()
