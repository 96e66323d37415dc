"""Fitting the user's own picture to a size the backbone takes, and the drawing over it alike.

The picture is used at its own size, rounded to what the backbone accepts (sides that are
multiples of :attr:`~diffsketch.capture.spec.FeatureSpec.size_multiple`: 64 for SD 1.x/2.x, 32
for SDXL): when ``max_side`` is given and the longer side exceeds it, the picture is first
resized (antialiased, aspect ratio kept) so the longer side is ``max_side``; then each side is
centre-cropped down to the multiple (at most ``multiple - 1`` pixels). What was done is a
:class:`PictureFit`, recorded in the features (``meta["picture_fit"]``) so Train can fit the
drawing over the picture exactly as the picture was fitted (:func:`fit_drawing`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError
from ..images import resize_image
from .sampling import MAX_SIZE
from .spec import family_name

#: The key of the fit record in a captured sample's meta.
PICTURE_FIT_KEY = "picture_fit"
#: A fitted picture with more than this many times the checkpoint's native pixel count gets a notice.
LARGE_PICTURE_FACTOR = 2.0


@dataclass(frozen=True)
class PictureFit:
    """What fitting did to a picture: its ``source`` size, the ``resized`` size (the source size
    when ``max_side`` did not apply), and the ``crop`` box ``(left, top, width, height)`` in the
    resized picture; sizes are ``(width, height)``. ``multiple`` and ``family`` say what the
    sides were rounded to, and for which backbone."""

    source: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int, int, int]
    multiple: int
    family: str
    max_side: int = 0

    @property
    def size(self) -> tuple[int, int]:
        """The fitted picture's ``(width, height)``."""
        return self.crop[2], self.crop[3]

    @property
    def changed(self) -> bool:
        return self.size != self.source

    def to_dict(self) -> dict:
        """JSON-safe, for the features file's header."""
        return {
            "source": list(self.source),
            "resized": list(self.resized),
            "crop": list(self.crop),
            "multiple": self.multiple,
            "family": self.family,
            "max_side": self.max_side,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PictureFit:
        try:
            return cls(
                source=(int(d["source"][0]), int(d["source"][1])),
                resized=(int(d["resized"][0]), int(d["resized"][1])),
                crop=tuple(int(v) for v in d["crop"]),  # type: ignore[arg-type]
                multiple=int(d["multiple"]),
                family=str(d["family"]),
                max_side=int(d.get("max_side", 0)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise InvalidInputError(
                f"the features' picture_fit record {d!r} is damaged ({e}); capture the picture again."
            ) from e

    def notice(self) -> str | None:
        """What was done, in words; None when the picture is used as it is."""
        if not self.changed:
            return None
        (sw, sh), (rw, rh), (fw, fh) = self.source, self.resized, self.size
        steps = []
        if self.resized != self.source:
            steps.append(f"resized to {rw}x{rh} (max_side {self.max_side})")
        cut = [f"{a - b} px of {name}" for name, a, b in (("width", rw, fw), ("height", rh, fh)) if a != b]
        if cut:
            steps.append("cropped " + " and ".join(cut) + " (centred)")
        return (
            f"the picture is {sw}x{sh}: {', then '.join(steps)} to {fw}x{fh} (multiples of {self.multiple} "
            f"for {family_name(self.family)}). Draw your sketch over the picture as used, or over yours: "
            "Train fits a drawing of your picture's size or shape the same way."
        )


def fit_size(
    width: int, height: int, multiple: int, family: str | None, max_side: int = 0, what: str = "the picture"
) -> PictureFit:
    """The :class:`PictureFit` of a ``width`` x ``height`` picture (the rule in the module
    docstring), or a clear error naming ``what`` when a side would be smaller than ``multiple``
    or larger than the largest sampling size. ``family`` None: a check before the model is known
    (with the finest multiple any backbone takes)."""
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 0:
        raise InvalidInputError(
            f"max_side must be an integer >= 0 (0: the picture's own size), got {max_side!r}."
        )
    model = f"this {family_name(family)} model" if family else "DiffSketch"
    if 0 < max_side < multiple:
        raise InvalidInputError(
            f"max_side={max_side} is below the smallest side {model} takes ({multiple} px); "
            f"use 0 (the picture's own size) or at least {multiple}."
        )
    resized = (width, height)
    if max_side and max(width, height) > max_side:
        scale = max_side / max(width, height)
        # the longer side lands exactly on max_side; the other keeps the aspect ratio
        resized = (
            (max_side, max(1, round(height * scale)))
            if width >= height
            else (max(1, round(width * scale)), max_side)
        )
    rw, rh = resized
    if min(rw, rh) < multiple:
        after = f"; resized to max_side {max_side} it is {rw}x{rh}" if resized != (width, height) else ""
        raise InvalidInputError(
            f"{what} is {width}x{height} pixels{after}: {model} needs sides of at least "
            f"{multiple} px (multiples of {multiple}), so the smallest picture it takes is {multiple}x{multiple}. "
            "Use a larger picture" + (", or a larger max_side." if after else ".")
        )
    fw, fh = rw // multiple * multiple, rh // multiple * multiple
    if max(fw, fh) > MAX_SIZE:
        raise InvalidInputError(
            f"{what} is {width}x{height} pixels, larger than the largest side DiffSketch samples at "
            f"({MAX_SIZE} px): set max_side (e.g. 1024) to resize it."
        )
    crop = ((rw - fw) // 2, (rh - fh) // 2, fw, fh)
    return PictureFit((width, height), resized, crop, multiple, family or "", max_side)


def apply_fit(image: torch.Tensor, fit: PictureFit) -> torch.Tensor:
    """``image`` ``[B, C, H, W]`` at the fit's source size, resized and cropped as the fit says."""
    if tuple(image.shape[-2:]) != (fit.source[1], fit.source[0]):
        raise ValueError(
            f"apply_fit: the image is {image.shape[-1]}x{image.shape[-2]}, not the fit's source size"
        )
    return _resize_and_crop(image, fit)


def _resize_and_crop(image: torch.Tensor, fit: PictureFit) -> torch.Tensor:
    if tuple(image.shape[-2:]) != (fit.resized[1], fit.resized[0]):
        image = resize_image(image, fit.resized)
    left, top, width, height = fit.crop
    return image[..., top : top + height, left : left + width].contiguous()


def fit_picture(
    picture: torch.Tensor, multiple: int, family: str, max_side: int = 0, what: str = "the picture"
) -> tuple[torch.Tensor, PictureFit]:
    """``picture`` ``[1, C, H, W]`` fitted (:func:`fit_size`), and the record of what was done."""
    fit = fit_size(int(picture.shape[-1]), int(picture.shape[-2]), multiple, family, max_side, what)
    return (apply_fit(picture, fit) if fit.changed else picture), fit


def large_picture_notice(size: tuple[int, int], native_side: int, family: str) -> str | None:
    """A notice when a picture of ``size`` has far more pixels than the checkpoint's native size."""
    width, height = size
    ratio = width * height / (native_side * native_side)
    if ratio <= LARGE_PICTURE_FACTOR:
        return None
    return (
        f"the picture as used is {width}x{height}, about {ratio:.0f}x the pixels this {family_name(family)} "
        f"checkpoint was trained at ({native_side}x{native_side}): capture and training will be slow and need "
        f"much memory, and the model may repeat things across the picture. Set max_side (e.g. {native_side}) to "
        "work near the native size."
    )


def _same_aspect(size: tuple[int, int], reference: tuple[int, int]) -> bool:
    """Whether ``size`` has ``reference``'s aspect ratio, up to 1 px of rounding on either side."""
    (w, h), (rw, rh) = size, reference
    return math.isclose(h, w * rh / rw, abs_tol=1.0) or math.isclose(w, h * rw / rh, abs_tol=1.0)


def fit_drawing(drawing: torch.Tensor, fit: PictureFit) -> tuple[torch.Tensor, list[str]]:
    """A drawing ``[1, C, H, W]`` over a fitted picture, fitted the same way.

    At the fitted size it is used as it is. At the picture's original size it is resized and
    cropped exactly as the picture was; at another size with the picture's aspect ratio (1 px of
    rounding allowed) it is first scaled to match. Any other shape is an error naming both sizes.
    Returns ``(drawing, notices)``."""
    w, h = int(drawing.shape[-1]), int(drawing.shape[-2])
    (sw, sh), (fw, fh) = fit.source, fit.size
    if (w, h) == (fw, fh):
        return drawing, []
    if not _same_aspect((w, h), fit.source):
        raise InvalidInputError(
            f"the sketch is {w}x{h}, but the picture the features were captured from is {sw}x{sh} (used as "
            f"{fw}x{fh}): draw over the picture, at its size ({sw}x{sh}), any size of the same shape, or the "
            f"picture as used ({fw}x{fh})."
        )
    if (w, h) != (sw, sh):
        # Straight to the resized size: the same geometry as scaling to the source size first,
        # with one resampling instead of two.
        out = _resize_and_crop(drawing, fit)
        return out, [f"the sketch is {w}x{h}: scaled and cropped like the {sw}x{sh} picture, to {fw}x{fh}"]
    return apply_fit(drawing, fit), [
        f"the sketch is {w}x{h}: resized and cropped like the picture, to {fw}x{fh}"
    ]
