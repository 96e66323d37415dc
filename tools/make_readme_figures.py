"""Draw the README's pictures with the project's own code: the pipeline diagram and example sketches.

    python tools/make_readme_figures.py                          # pipeline.png, xdog_examples.png
    python tools/make_readme_figures.py --extractor my.safetensors   # + extractor_examples.png
    python tools/make_readme_figures.py --distill-results hed_fidelity  # + distill_hed-modified_examples.png

Writes PNGs (about 1000 px wide) into web/docs/images/ (the README, docs/benchmarks.md and the nodes'
help pages in the ComfyUI frontend show them):

- ``pipeline.png``: the DiffSketch pipeline as boxes and arrows, with the nodes of each stage;
- ``xdog_examples.png``: scikit-image's sample photos and their XDoG sketches (``diffsketch.styles.xdog``
  with the paper's settings, as the DiffSketch XDoG Sketch node computes them);
- ``extractor_examples.png``, with ``--extractor``: the same photos through a distilled extractor
  (``diffsketch.distill.extract.extract``, as DiffSketch Extract runs it);
- ``distill_<teacher>_examples.png``, with ``--distill-results OUT`` (``--distill-teacher``
  hed-modified or hed-plain): the held-out photos of
  ``benchmarks/distill_fidelity.py --teacher hed --out OUT``, the HED teacher's maps and each
  student's, from the PNGs that run saved (one row per network).

Needs matplotlib and scikit-image, which the node pack itself does not: ``pip install matplotlib
scikit-image``. Nothing is downloaded: the photos ship with scikit-image.
"""

from __future__ import annotations

import argparse
import io
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the bundled library, without installing the pack

from diffsketch.distill.extract import extract  # noqa: E402
from diffsketch.distill.extractor import load_extractor  # noqa: E402
from diffsketch.errors import DiffSketchError  # noqa: E402
from diffsketch.styles.xdog import xdog  # noqa: E402

OUT_DIR = REPO / "web" / "docs" / "images"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
WIDTH_PX = 1000
DPI = 100
# The example figures are stored as 256-colour PNGs: with their photos they take about 460 KB as
# full-colour PNGs and about 130 KB this way (octree kept the photos' colours best of PIL's methods).
PALETTE_COLOURS = 256
GAP_PX, SIDE_PX = 8, 4
# Sketches are made at the photo's own resolution, up to SD 1.x's 512 px (the size DiffSketch's
# examples and training pairs have): XDoG's coarse blur (sigma 100 px) and the extractor's
# receptive field are in pixels, so sketching the small display copy would look different.
SKETCH_MAX_HEIGHT = 512
# PNG metadata without the matplotlib version, so regenerating with another version changes no bytes
PNG_METADATA = {"Software": None}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("this tool draws with matplotlib (not a node-pack dependency): pip install matplotlib")
    return plt


# ------------------------------------------------------------------------------------------------
# Pipeline diagram
# ------------------------------------------------------------------------------------------------

# (title, node names, what happens), in the order a user runs them: the timesteps are an input of
# Sample & Capture (the analysis node samples its own images), so they come first.
STAGES = [
    (
        "Timesteps",
        ["DiffSketch Timesteps (analysis)", "DiffSketch Timesteps (preset)"],
        "PCA + k-means over the UNet features of every denoising step pick representative "
        "timesteps (or the paper's 13)",
    ),
    (
        "Sample & capture",
        ["DiffSketch Sample & Capture"],
        "An SD 1.x image, with its UNet decoder features at those timesteps (cond + uncond) "
        "and its VAE decoder features",
    ),
    (
        "Fit conditions",
        ["DiffSketch Fit Conditions (CDST)", "DiffSketch Load Conditions"],
        "CDST: PCA of the CLIP text embeddings of many prompts + a Gaussian to sample new conditions from",
    ),
    (
        "Train generator",
        ["DiffSketch Train", "DiffSketch Load Loss Models"],
        "ONE example + your sketch of it: L1 + LPIPS + CLIP losses on the example, directional CLIP "
        "on new samples",
    ),
    (
        "Distill",
        ["DiffSketch Distill"],
        "The generator draws (image, sketch) pairs; a small feed-forward extractor learns from them",
    ),
    (
        "Extract",
        ["DiffSketch Load Extractor", "DiffSketch Extract"],
        "Any image batch (photos, renders, video frames) at any size; no diffusion model needed",
    ),
]

FILL = ("#e8f0fb", "#e8f0fb", "#e8f0fb", "#fdf0e1", "#eaf6ea", "#eaf6ea")
EDGE = ("#3b6fb6", "#3b6fb6", "#3b6fb6", "#c77a1e", "#3c8c3c", "#3c8c3c")


def draw_pipeline(path: Path) -> Path:
    """Six stages in two rows of three, numbered, with the nodes that run each one."""
    plt = _pyplot()
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig = plt.figure(figsize=(WIDTH_PX / DPI, 5.2), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 30)
    ax.set_ylim(0, 15.6)
    ax.axis("off")

    box_w, box_h = 8.4, 5.6
    xs = (0.9, 10.8, 20.7)
    ys = (8.9, 1.5)  # bottom edges of the two rows
    ax.text(
        15,
        15.1,
        "DiffSketch: learn a line style from ONE drawing, then sketch any image",
        ha="center",
        va="center",
        fontsize=13,
        weight="bold",
    )
    boxes = []
    for i, (title, nodes, what) in enumerate(STAGES):
        x, y = xs[i % 3], ys[i // 3]
        ax.add_patch(
            FancyBboxPatch(
                (x, y),
                box_w,
                box_h,
                boxstyle="round,pad=0.02,rounding_size=0.4",
                facecolor=FILL[i],
                edgecolor=EDGE[i],
                linewidth=1.6,
            )
        )
        ax.text(x + 0.4, y + box_h - 0.55, f"{i + 1}. {title}", fontsize=12, weight="bold", va="top")
        line_y = y + box_h - 1.6
        for node in nodes:
            ax.text(x + 0.45, line_y, node, fontsize=8.6, family="monospace", color=EDGE[i], va="top")
            line_y -= 0.75
        ax.text(
            x + 0.4,
            line_y - 0.2,
            textwrap.fill(what, 40),
            fontsize=8.8,
            va="top",
            linespacing=1.35,
            color="#222222",
        )
        boxes.append((x, y))

    def arrow(start, end, **kw):
        ax.add_patch(
            FancyArrowPatch(
                start, end, arrowstyle="-|>", mutation_scale=18, linewidth=1.8, color="#555555", **kw
            )
        )

    for i in range(5):
        (x0, y0), (x1, y1) = boxes[i], boxes[i + 1]
        if i == 2:  # end of the first row, down and back to the start of the second
            mid_y = (y0 + y1 + box_h) / 2
            ax.plot(
                [x0 + box_w / 2, x0 + box_w / 2, x1 + box_w / 2],
                [y0 - 0.1, mid_y, mid_y],
                color="#555555",
                linewidth=1.8,
                solid_joinstyle="round",
            )
            arrow((x1 + box_w / 2, mid_y), (x1 + box_w / 2, y1 + box_h + 0.1), shrinkA=0)
        else:
            arrow((x0 + box_w + 0.1, y0 + box_h / 2), (x1 - 0.1, y1 + box_h / 2))
    ax.text(
        15,
        0.75,
        "1-3 prepare training (timesteps and conditions can be reused for every style of a checkpoint); "
        "4-5 run once per style; 6 is what you run every day.",
        ha="center",
        va="center",
        fontsize=8.8,
        color="#444444",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, metadata=PNG_METADATA)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------
# Example sketches
# ------------------------------------------------------------------------------------------------


def load_photo(name: str, max_height: int = SKETCH_MAX_HEIGHT) -> torch.Tensor:
    """A scikit-image sample photo as float RGB [3, H, W] in [0, 1], at most ``max_height`` tall."""
    from skimage import data

    array = np.asarray(getattr(data, name)())
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    x = torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1).float()
    x = x / 255.0 if array.dtype == np.uint8 else x.clamp(0, 1)
    if x.shape[-2] > max_height:
        x = resize(x, max_height)
    return x


def resize(image: torch.Tensor, height: int) -> torch.Tensor:
    """[C, H, W] or [H, W] resized (antialiased) to ``height`` rows, aspect kept."""
    x = image if image.ndim == 3 else image[None]
    width = round(x.shape[-1] * height / x.shape[-2])
    x = F.interpolate(x[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]
    return x.clamp(0, 1) if image.ndim == 3 else x[0].clamp(0, 1)


def xdog_sketch(photo: torch.Tensor) -> torch.Tensor:
    """The paper's XDoG (default settings) of a [3, H, W] photo -> [H, W] grey in [0, 1]."""
    return xdog(photo[None])[0, 0]


def extractor_sketch(model, photo: torch.Tensor) -> torch.Tensor:
    """What DiffSketch Extract outputs for a [3, H, W] photo -> [H, W] grey in [0, 1]."""
    sketch, _ = extract(model, photo.permute(1, 2, 0)[None])
    return sketch[0, ..., 0]


def draw_examples(path: Path, photos: dict[str, torch.Tensor], sketches: dict[str, torch.Tensor], label: str):
    """Photos in the top row, their sketches under them, one column per photo, pixel for pixel."""
    plt = _pyplot()

    names = list(photos)
    height = photos[names[0]].shape[-2]
    widths = [photos[n].shape[-1] for n in names]
    gap, top, bottom, side = GAP_PX, 26, 30, SIDE_PX
    fig_w = sum(widths) + gap * (len(names) - 1) + 2 * side
    fig_h = 2 * height + gap + top + bottom
    fig = plt.figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI)
    x = side
    for name, w in zip(names, widths):
        for row, image in enumerate((photos[name].permute(1, 2, 0), sketches[name])):
            y = bottom + (1 - row) * (height + gap)
            ax = fig.add_axes((x / fig_w, y / fig_h, w / fig_w, height / fig_h))
            ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_axis_off()
        fig.text((x + w / 2) / fig_w, 1 - (top / 2) / fig_h, name, ha="center", va="center", fontsize=11)
        x += w + gap
    fig.text(0.5, (bottom / 2) / fig_h, label, ha="center", va="center", fontsize=9.5, color="#333333")
    return _save_palette_png(fig, path)


def _save_palette_png(fig, path: Path) -> Path:
    """``fig`` as a 256-colour PNG at ``path`` (see PALETTE_COLOURS); closes the figure."""
    plt = _pyplot()
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png")
    plt.close(fig)
    image = Image.open(buffer).convert("RGB")
    image = image.quantize(
        PALETTE_COLOURS, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.FLOYDSTEINBERG
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    return path


def draw_distill_grid(results: Path, path: Path, teacher: str, caption: str, extra=None) -> Path:
    """Held-out photos in columns; the photo, the teacher's map and each network's under it, from
    the PNGs ``benchmarks/distill_fidelity.py`` saved in ``results/predictions``; ``extra``
    ``(label, extractor)`` adds a last row: that extractor run on the same photos."""
    from diffsketch.images import read_image

    plt = _pyplot()
    folder = results / "predictions"
    rows = [("photo", folder / "photos"), (f"teacher\n{teacher}", folder / teacher / "teacher")]
    labels = {"student": "ours (L1)", "student_gan": "ours\n+ GAN/FM", "pix2pixhd": "Pix2PixHD-\nglobal"}
    rows += [
        (label, folder / teacher / model)
        for model, label in labels.items()
        if (folder / teacher / model).is_dir()
    ]
    names = sorted(p.stem for p in (folder / "photos").glob("*.png"))
    if not names or not (folder / teacher).is_dir():
        sys.exit(
            f"--distill-results {results}: no predictions/photos or predictions/{teacher} (run the benchmark)"
        )

    def rgb(file: Path) -> torch.Tensor:
        x = torch.from_numpy(read_image(file).copy())
        return x[..., :3] if x.shape[-1] >= 3 else x[..., :1].expand(-1, -1, 3)

    images = {(label, n): rgb(where / f"{n}.png") for label, where in rows for n in names}
    if extra is not None:
        label, model = extra
        rows.append((label, None))
        with torch.no_grad():
            for n in names:
                sketch = extractor_sketch(model, images[(rows[0][0], n)].permute(2, 0, 1))
                images[(label, n)] = sketch[..., None].expand(-1, -1, 3)
    label_w, gap, bottom = 120, 6, 26
    aspect = sum(images[(rows[0][0], n)].shape[1] / images[(rows[0][0], n)].shape[0] for n in names)
    height = int((WIDTH_PX - label_w - gap * len(names)) / aspect)
    widths = [
        round(images[(rows[0][0], n)].shape[1] * height / images[(rows[0][0], n)].shape[0]) for n in names
    ]
    fig_w, fig_h = label_w + sum(widths) + gap * len(names), len(rows) * (height + gap) + bottom
    fig = plt.figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI)
    for r, (label, _) in enumerate(rows):
        y = fig_h - (r + 1) * (height + gap)
        fig.text(8 / fig_w, (y + height / 2) / fig_h, label, ha="left", va="center", fontsize=9.5)
        x = label_w
        for n, w in zip(names, widths):
            image = images[(label, n)].permute(2, 0, 1)
            ax = fig.add_axes((x / fig_w, y / fig_h, w / fig_w, height / fig_h))
            ax.imshow(resize(image, height).permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_axis_off()
            x += w + gap
    fig.text(0.5, (bottom / 2) / fig_h, caption, ha="center", va="center", fontsize=9, color="#333333")
    return _save_palette_png(fig, path)


def photo_height_for(names: list[str]) -> int:
    """Row height that makes the photos, side by side, fill WIDTH_PX."""
    try:
        from skimage import data
    except ImportError:
        sys.exit("the example figures use scikit-image's sample photos: pip install scikit-image")
    aspect = 0.0
    for name in names:
        if not hasattr(data, name):
            sys.exit(f"scikit-image has no sample photo {name!r}; try e.g. {', '.join(PHOTOS)}")
        shape = np.asarray(getattr(data, name)()).shape
        aspect += shape[1] / shape[0]
    return int((WIDTH_PX - GAP_PX * (len(names) - 1) - 2 * SIDE_PX) / aspect)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=OUT_DIR, help="folder for the PNGs (default web/docs/images)"
    )
    parser.add_argument(
        "--extractor", type=Path, help="a distilled extractor .safetensors: also draw extractor_examples.png"
    )
    parser.add_argument(
        "--photos", default=",".join(PHOTOS), help="comma-separated scikit-image sample names"
    )
    parser.add_argument(
        "--extractor-caption",
        default=None,
        help="caption of extractor_examples.png (say what the extractor was trained on)",
    )
    parser.add_argument(
        "--distill-results",
        type=Path,
        help="the --out folder of benchmarks/distill_fidelity.py --teacher hed: also draw distill_<teacher>_examples.png",
    )
    parser.add_argument("--distill-teacher", default="hed-modified", help="which teacher's row to draw")
    parser.add_argument(
        "--distill-caption",
        default="Held-out photos, the HED teacher and the students of benchmarks/distill_fidelity.py --teacher hed",
        help="caption of distill_<teacher>_examples.png (say what budget the students had)",
    )
    parser.add_argument(
        "--only-distill", action="store_true", help="draw distill_<teacher>_examples.png alone"
    )
    parser.add_argument(
        "--extractor-label",
        default="--extractor",
        help="row label of --extractor in distill_<teacher>_examples.png",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.photos.split(",") if n.strip()]
    model = None
    if args.extractor is not None:
        if not args.extractor.is_file():
            sys.exit(f"--extractor {args.extractor}: no such file (an extractor made by DiffSketch Distill)")
        try:
            model = load_extractor(args.extractor)
        except DiffSketchError as e:  # the message names the file and what is wrong with it
            sys.exit(f"--extractor: {e}")
    if args.distill_results is not None:
        print(
            "wrote",
            draw_distill_grid(
                args.distill_results,
                args.out / f"distill_{args.distill_teacher}_examples.png",
                args.distill_teacher,
                args.distill_caption,
                extra=None if model is None else (args.extractor_label, model),
            ),
        )
        if args.only_distill:
            return 0
    height = photo_height_for(names)

    print("wrote", draw_pipeline(args.out / "pipeline.png"))
    originals = {name: load_photo(name) for name in names}
    photos = {name: resize(photo, height) for name, photo in originals.items()}
    sketches = {name: resize(xdog_sketch(photo), height) for name, photo in originals.items()}
    print(
        "wrote",
        draw_examples(
            args.out / "xdog_examples.png",
            photos,
            sketches,
            "XDoG with the paper's settings (diffsketch.styles.xdog, the DiffSketch XDoG Sketch node): "
            "an example sketch to train from without drawing",
        ),
    )
    if model is not None:
        with torch.no_grad():
            sketches = {
                name: resize(extractor_sketch(model, photo), height) for name, photo in originals.items()
            }
        print(
            "wrote",
            draw_examples(
                args.out / "extractor_examples.png",
                photos,
                sketches,
                args.extractor_caption
                or f"The extractor {args.extractor.name} through diffsketch.distill.extract.extract, as DiffSketch "
                "Extract runs it",
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
