"""Draw the Comfy Registry icon and banner of the pack: docs/images/icon.png and docs/images/banner.png.

A small landscape (sun, hills, a house, a tree) is painted with PIL shapes, and the project's own XDoG
(``diffsketch.styles.xdog`` with thin-line settings: the paper's are an ink style that fills flat areas)
turns it into a line drawing; the pictures show one becoming the other, as DiffSketch turns images
into sketches. Nothing is copied from elsewhere; the
text uses the font that ships with Pillow.

    python tools/make_registry_art.py            # writes both; pyproject.toml's [tool.comfy] Icon and
                                                 # Banner point at them on the repository's main branch

The Registry takes an icon of at most 800x400 (square here, 400x400) and a 21:9 banner.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diffsketch.styles.xdog import xdog  # noqa: E402

OUT_DIR = REPO / "docs" / "images"
ICON_SIZE = (400, 400)
BANNER_SIZE = (1260, 540)  # 21:9
PAPER = (250, 247, 240)
INK = (24, 24, 28)


def scene(width: int, height: int) -> Image.Image:
    """A landscape from shapes: sky, sun, two hills, a house and a tree (sizes relative to the height)."""
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    for y in range(height):  # sky, light at the horizon
        t = y / height
        draw.line([(0, y), (width, y)], fill=(int(70 + 130 * t), int(130 + 90 * t), int(200 + 40 * t)))
    u = height / 100
    cx = width * 0.78
    draw.ellipse([cx - 11 * u, 12 * u, cx + 11 * u, 34 * u], fill=(255, 214, 90))
    far = [
        (0, 62 * u),
        (width * 0.3, 40 * u),
        (width * 0.62, 58 * u),
        (width, 44 * u),
        (width, height),
        (0, height),
    ]
    draw.polygon(far, fill=(96, 140, 110))
    near = [(0, 80 * u), (width * 0.45, 64 * u), (width, 84 * u), (width, height), (0, height)]
    draw.polygon(near, fill=(70, 118, 70))
    hx, hy = width * 0.2, 72 * u  # house: walls, roof, door, window
    draw.rectangle([hx, hy - 16 * u, hx + 20 * u, hy], fill=(226, 200, 160))
    draw.polygon(
        [(hx - 3 * u, hy - 16 * u), (hx + 10 * u, hy - 28 * u), (hx + 23 * u, hy - 16 * u)],
        fill=(170, 60, 50),
    )
    draw.rectangle([hx + 4 * u, hy - 9 * u, hx + 9 * u, hy], fill=(110, 70, 40))
    draw.rectangle([hx + 12 * u, hy - 12 * u, hx + 17 * u, hy - 7 * u], fill=(120, 170, 210))
    tx, ty = width * 0.58, 70 * u  # tree: trunk and crown
    draw.rectangle([tx - 1.6 * u, ty - 10 * u, tx + 1.6 * u, ty + 2 * u], fill=(100, 66, 40))
    draw.ellipse([tx - 9 * u, ty - 30 * u, tx + 9 * u, ty - 8 * u], fill=(50, 110, 60))
    return img.filter(ImageFilter.GaussianBlur(0.6))


# XDoG as an edge detector (Winnemoeller et al.'s line settings): a difference of two close blurs,
# flat areas white at any brightness, thin dark lines along the edges.
LINE_XDOG = {"sigma": 1.4, "k": 1.6, "gamma": 0.99, "epsilon": 0.0, "phi": 60.0}


def sketch_of(img: Image.Image) -> Image.Image:
    """The XDoG line drawing of ``img``: ink lines on paper."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    lines = xdog(x, **LINE_XDOG)[0, 0].numpy()
    paper = np.array(PAPER, dtype=np.float32) / 255
    out = paper[None, None, :] * lines[..., None] + np.array(INK, dtype=np.float32)[None, None, :] / 255 * (
        1 - lines[..., None]
    )
    return Image.fromarray((out * 255).clip(0, 255).astype(np.uint8))


def blend(photo: Image.Image, drawing: Image.Image, mask: np.ndarray) -> Image.Image:
    """``photo`` where ``mask`` is 0, ``drawing`` where it is 1."""
    a, b = np.asarray(photo, dtype=np.float32), np.asarray(drawing, dtype=np.float32)
    return Image.fromarray((a * (1 - mask[..., None]) + b * mask[..., None]).astype(np.uint8))


def rounded(img: Image.Image, radius: int) -> Image.Image:
    """``img`` with transparent rounded corners."""
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).rounded_rectangle([0, 0, img.size[0] - 1, img.size[1] - 1], radius=radius, fill=255)
    out = img.convert("RGBA")
    out.putalpha(mask)
    return out


def icon() -> Image.Image:
    """The scene cut diagonally: photo on the upper right, its sketch on the lower left."""
    w, h = ICON_SIZE
    photo = scene(w, h)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = (xx * h < yy * w).astype(np.float32)
    img = blend(photo, sketch_of(photo), mask)
    ImageDraw.Draw(img).line([(0, 0), (w, h)], fill=(255, 255, 255), width=5)
    return rounded(img, 56)


def banner() -> Image.Image:
    """The pack's name and what it does, beside the scene and its sketch with an arrow between."""
    w, h = BANNER_SIZE
    img = Image.new("RGB", (w, h), (30, 31, 38))
    draw = ImageDraw.Draw(img)
    draw.text((60, 150), "DiffSketch", font=ImageFont.load_default(size=84), fill=(255, 255, 255))
    for k, line in enumerate(("One drawing over one image", "becomes a sketch style", "for any image.")):
        draw.text((64, 268 + 40 * k), line, font=ImageFont.load_default(size=32), fill=(215, 215, 225))
    side = 300
    photo = scene(side, side)
    top, left = (h - side) // 2, w - 2 * side - 150  # right of the text (about 470 px wide)
    for x, picture in ((left, photo), (w - side - 50, sketch_of(photo))):
        img.paste(rounded(picture, 24), (x, top), rounded(picture, 24))
    mid, ax = h // 2, left + side + 15
    draw.line([(ax, mid), (ax + 54, mid)], fill=(255, 214, 90), width=8)
    draw.polygon([(ax + 54, mid - 18), (ax + 76, mid), (ax + 54, mid + 18)], fill=(255, 214, 90))
    return img


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder for icon.png and banner.png")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, picture in (("icon.png", icon()), ("banner.png", banner())):
        picture.save(args.out / name, optimize=True)
        print(f"wrote {args.out / name} ({picture.size[0]}x{picture.size[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
