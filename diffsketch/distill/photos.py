"""Photo pairs: distillation pairs made from the user's own photos instead of sampled images.

An extractor learns best on the kind of image it will be used on. With photos, a share of the
pairs of a pair folder (:func:`~.pairs.generate_pairs`) comes from them: the photo is fitted to
the pair size, inverted with DDIM and replayed with capture
(:meth:`~diffsketch.backends.base.SamplingBackend.capture_from_image`), and the generator draws
the sketch from the replay's features. The pair's image is the fitted photo itself.

Which pairs are photo pairs depends only on the pair index and the share ``r``: pair ``i`` is a
photo pair when ``floor((i + 1) r + 1/2) > floor(i r + 1/2)``, so pairs ``0 .. P-1`` hold
``floor(P r + 1/2)`` photo pairs (``P r`` rounded half up) spread evenly among the generated ones,
and asking for more pairs later keeps every pair already made. Photo pair number ``j`` (the
``j``-th photo pair, counting from 0) uses photo ``j mod N`` of the ``N`` photos; its variant
``j // N`` is the whole photo for 0 and otherwise a random crop (:data:`VARIANT_MIN_AREA` to all of
the area) flipped horizontally half the time, seeded from ``(seed, i)``, so more photo pairs than
photos are still distinct.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InvalidInputError
from ..images import (
    IMAGE_SUFFIXES,
    as_rgb,
    crop_box,
    fit_to_size,
    image_batch,
    image_files_in,
    read_image_pixels,
)
from ..seeds import cpu_generator, derive_seed

#: The share of photo pairs when photos are given and no share is.
DEFAULT_PHOTO_SHARE = 0.5
#: The smallest crop of a photo's later variants, as a fraction of the largest box of the pair's
#: aspect ratio: small enough to vary, large enough to keep the photo's content.
VARIANT_MIN_AREA = 0.6


@dataclass(frozen=True)
class Photo:
    """One photo for photo pairs: ``image`` ``[3, H, W]`` float32 RGB in [0, 1], its ``name``
    (file name or position in a batch) and ``sha256`` (the first 16 hex digits of a hash of its
    pixels: what the manifest and the photo set's fingerprint record)."""

    name: str
    image: torch.Tensor
    sha256: str


def photo_from_image(image, name: str) -> Photo:
    """``image`` (one picture in any layout :func:`~diffsketch.images.image_batch` reads) as a
    :class:`Photo`, or a clear error naming ``name``: a batch, NaN, wrong channels are refused."""
    from ..fileio import tensors_checksum

    what = f"photo {name}"
    x = image_batch(image, what, channels_first=True)
    if x.shape[0] != 1:
        raise InvalidInputError(
            f"{what} is a batch of {x.shape[0]} images; give each photo as one image (a batch of photos is "
            "a sequence of single images)."
        )
    rgb = as_rgb(x)[0].permute(2, 0, 1).contiguous()
    return Photo(str(name), rgb, tensors_checksum({"image": rgb})[:16])


def check_photos(photos) -> list[Photo]:
    """A sequence of photos as :class:`Photo` objects: each item a :class:`Photo`, a ``(name,
    image)`` pair or an image (named by its position, ``photos[k]``); a ComfyUI IMAGE batch
    ``[B,H,W,C]`` is B photos. At least one photo."""
    if isinstance(photos, torch.Tensor) and photos.dim() == 4:
        photos = list(photos)
    if isinstance(photos, (str, bytes, os.PathLike)) or not isinstance(photos, Sequence):
        raise InvalidInputError(
            f"photos must be a sequence of images (or a folder read with read_photo_folder), got "
            f"{type(photos).__name__}."
        )
    if len(photos) == 0:
        raise InvalidInputError("photos is empty; give at least one photo, or no photos at all.")
    out = []
    for k, item in enumerate(photos):
        if isinstance(item, Photo):
            out.append(item)
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            out.append(photo_from_image(item[1], item[0]))
        else:
            out.append(photo_from_image(item, f"photos[{k}]"))
    return out


def photo_set_fingerprint(photos: Sequence[Photo]) -> str:
    """A short hash of the photos' pixels, in order: what decides the photo pairs (names do not)."""
    from ..fileio import tensors_checksum

    return tensors_checksum({}, "|".join(p.sha256 for p in photos))[:16]


def read_photo_folder(folder: str | os.PathLike) -> tuple[list[Photo], list[str]]:
    """``(photos, skipped)``: every image file (:data:`~diffsketch.images.IMAGE_SUFFIXES`) directly
    in ``folder``, in sorted order, and a line for each file left out, saying why.

    Left out, never silently: files that cannot be read as images; files whose name without the
    suffix is shared with another image (``a.png`` and ``a.jpg``: both are skipped, as neither
    name would tell them apart in the manifest); other files (not images by their suffix). Hidden
    files and sub-folders are not read. A folder that does not exist or holds no readable image
    is an error naming it."""
    root = Path(folder)
    images, others = image_files_in(root)
    skipped = [f"{name}: not an image file by its suffix" for name in others]
    stems: dict[str, list[Path]] = {}
    for p in images:
        stems.setdefault(p.stem.lower(), []).append(p)
    photos = []
    for p in images:
        same = stems[p.stem.lower()]
        if len(same) > 1:
            others = ", ".join(q.name for q in same if q != p)
            skipped.append(f"{p.name}: skipped, another photo has the same name ({others}); rename one")
            continue
        try:
            pixels = read_image_pixels(p)
        except Exception as e:  # PIL raises many types for damaged files
            skipped.append(f"{p.name}: cannot be read as an image ({type(e).__name__}: {e})")
            continue
        try:
            photos.append(photo_from_image(pixels, p.name))
        except InvalidInputError as e:
            skipped.append(f"{p.name}: {e}")
    if not photos:
        found = f"; left out: {'; '.join(skipped[:5])}" if skipped else ""
        raise InvalidInputError(
            f"no readable photo in {root} (image files: {', '.join(IMAGE_SUFFIXES)}){found}."
        )
    return photos, skipped


def check_photo_share(share, photos) -> float:
    """The share of photo pairs, a number in [0, 1]; None is :data:`DEFAULT_PHOTO_SHARE` when there
    are photos. A share without photos is an error (it would silently do nothing)."""
    if photos is None:
        if share is not None:
            raise InvalidInputError(
                f"photo_share={share!r} was given without photos; give photos or no share."
            )
        return 0.0
    if share is None:
        return DEFAULT_PHOTO_SHARE
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= float(share) <= 1.0:
        raise InvalidInputError(f"photo_share must be a number in 0..1, got {share!r}.")
    return float(share)


def _photo_pairs_before(index: int, share: float) -> int:
    return math.floor(index * share + 0.5)


def is_photo_pair(index: int, share: float) -> bool:
    """Whether pair ``index`` of a folder with photo share ``share`` comes from a photo."""
    return _photo_pairs_before(index + 1, share) > _photo_pairs_before(index, share)


def photo_pair_count(count: int, share: float) -> int:
    """How many of pairs ``0 .. count-1`` come from photos: ``count * share`` rounded half up."""
    return _photo_pairs_before(count, share)


def photo_pair_picture(
    photos: Sequence[Photo], index: int, share: float, seed: int, width: int, height: int
) -> tuple[torch.Tensor, dict]:
    """The fitted picture ``[1, 3, height, width]`` of photo pair ``index`` and its record for the
    manifest (photo name and hash, variant, crop box in the photo, flip)."""
    j = _photo_pairs_before(index, share)
    photo = photos[j % len(photos)]
    variant = j // len(photos)
    h, w = photo.image.shape[-2:]
    flip = False
    if variant == 0:
        box = crop_box(h, w, width, height)
    else:
        g = cpu_generator(derive_seed("photo variant", seed, index))
        area, x, y, coin = torch.rand(4, generator=g, dtype=torch.float64).tolist()
        box = crop_box(h, w, width, height, VARIANT_MIN_AREA + (1.0 - VARIANT_MIN_AREA) * area, (x, y))
        flip = coin < 0.5
    picture = fit_to_size(photo.image[None], width, height, box)
    if flip:
        picture = picture.flip(-1)
    record = {
        "photo": photo.name,
        "photo_sha256": photo.sha256,
        "variant": variant,
        "crop": list(box),
        "flip": flip,
    }
    return picture.contiguous(), record
