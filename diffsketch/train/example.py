"""The one example a generator learns from: the user's sketch made ready for training
(:func:`prepare_sketch`), the checks of the example's sketch and features, and the digest that
identifies the sketch in a generator's record.
"""

from __future__ import annotations

import hashlib

import torch

from ..capture.picture import PictureFit, fit_drawing
from ..capture.sample import CapturedSample
from ..errors import InvalidInputError
from ..images import as_grey, image_batch, resize_image


def prepare_sketch(
    image, size: tuple[int, int], picture_fit: PictureFit | dict | None = None
) -> tuple[torch.Tensor, list[str]]:
    """The example sketch as the trainer wants it: ``[1, 1, H, W]`` float32 in [0, 1] (white = 1).

    ``image``: one image as :func:`~diffsketch.images.image_batch` reads it (a ComfyUI IMAGE
    ``[1, H, W, C]``, a torch image ``[1, C, H, W]``, ``[H, W, C]``, ``[H, W]``; float in [0, 1],
    uint8, uint16). RGB becomes grey by luminance; alpha is composited over white; ``size`` is
    the example's ``(width, height)``: another size is resized (bilinear, antialiased), with a
    notice. ``picture_fit``: for features captured from the user's picture, how that picture was
    fitted (the features' ``meta["picture_fit"]``); the drawing over it is then fitted the same way
    (:func:`~diffsketch.capture.picture.fit_drawing`), and a drawing of another shape is refused.
    Returns ``(sketch, notices)``.
    """
    width, height = (int(s) for s in size)
    notices: list[str] = []
    with torch.inference_mode(False):
        x = image_batch(image, "the sketch", channels_first=True)
        if x.shape[0] != 1:
            raise InvalidInputError(
                f"the sketch input holds a batch of {x.shape[0]} images; DiffSketch learns from ONE example: "
                "connect a single sketch (e.g. pick one with an image-batch selector)."
            )
        if x.shape[-1] in (2, 4):
            notices.append("the sketch's transparency was composited over white")
        x = as_grey(x).permute(0, 3, 1, 2).contiguous()  # [1, 1, H, W]
        if picture_fit is not None:
            fit = picture_fit if isinstance(picture_fit, PictureFit) else PictureFit.from_dict(picture_fit)
            x, fitted = fit_drawing(x, fit)
            notices += fitted
        h, w = x.shape[-2:]
        if (w, h) != (width, height):
            aspect = "" if w * height == h * width else " (the aspect ratio changes: the sketch is stretched)"
            notices.append(
                f"the sketch is {w}x{h} but the example image is {width}x{height}: resized to {width}x{height}{aspect}"
            )
            x = resize_image(x, (width, height))
        return x.clone(), notices


def check_example_sketch(sketch: torch.Tensor, example: CapturedSample) -> None:
    width, height = example.size
    if not isinstance(sketch, torch.Tensor) or sketch.dim() != 4 or tuple(sketch.shape[:2]) != (1, 1):
        shape = list(sketch.shape) if isinstance(sketch, torch.Tensor) else type(sketch).__name__
        raise InvalidInputError(
            f"the example sketch must be [1, 1, {height}, {width}]; got {shape}. Convert it with prepare_sketch()."
        )
    if tuple(sketch.shape[-2:]) != (height, width):
        raise InvalidInputError(
            f"the example sketch is {sketch.shape[-1]}x{sketch.shape[-2]} but the example image is {width}x{height}; "
            "convert it with prepare_sketch(), which resizes it."
        )
    if not torch.isfinite(sketch).all() or float(sketch.min()) < -1e-3 or float(sketch.max()) > 1 + 1e-3:
        raise InvalidInputError("the example sketch must hold finite values in [0, 1] (white = 1)")


#: What to do when captured features hold NaN or infinity.
OVERFLOW_ADVICE = (
    "the base model overflowed in float16 while sampling. Run it in higher precision: start ComfyUI with "
    "--fp32-vae (VAE features) or --fp32-unet (UNet features); from the command line, use a GPU with bfloat16 "
    "support or --device cpu (float32)."
)


def non_finite_feature(sample: CapturedSample) -> str | None:
    """Which of ``sample``'s tensors first holds NaN or infinity, in words; None if all are finite."""
    for t in sample.timesteps:
        for k, x in enumerate(sample.unet[t]):
            if not torch.isfinite(x).all():
                return f"UNet feature {k} ({sample.spec.unet[k].name}) at timestep {t}"
    for k, x in enumerate(sample.vae):
        if not torch.isfinite(x).all():
            return f"VAE decoder feature {k} ({sample.spec.vae[k].name})"
    for name in ("rgb", "image", "latent"):
        if not torch.isfinite(getattr(sample, name)).all():
            return name
    return None


def tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
