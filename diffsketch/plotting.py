"""Small, dependency-free plots drawn with Pillow.

The library needs a handful of diagnostic figures (the timestep analysis, training loss curves)
as images a ComfyUI graph can show, and matplotlib is not a dependency. These functions draw
them with ``PIL.ImageDraw`` and PIL's default font. Lines and shapes are drawn without
antialiasing (only the text is smoothed) and nothing is random, so the same data always gives the
same pixels on the same Pillow install.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .errors import InvalidInputError

BACKGROUND = (255, 255, 255)
FOREGROUND = (30, 30, 30)
GRID = (228, 228, 228)
MARKER = (214, 39, 40)

#: Line colours for successive series (a colour-blind-friendly qualitative set).
SERIES_COLORS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)

#: Anchor colours of the sequential colour map (dark purple -> blue -> teal -> green -> yellow,
#: sampled from viridis), linearly interpolated in between.
_COLORMAP_ANCHORS = np.array(
    [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float64
)

_MARGIN_LEFT = 64
_MARGIN_RIGHT = 18
_MARGIN_TOP = 30
_MARGIN_BOTTOM = 44


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _check_size(size) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"plot size must be (width, height) in pixels, got {size!r}") from e
    if w < 160 or h < 100:
        raise InvalidInputError(
            f"plot size {w}x{h} is too small to draw axes on: use at least 160x100 pixels"
        )
    return w, h


def colormap(values) -> np.ndarray:
    """RGB uint8 colours [N, 3] for values in [0, 1] (clipped), from the sequential map above."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    pos = v * (len(_COLORMAP_ANCHORS) - 1)
    lo = np.minimum(np.floor(pos).astype(int), len(_COLORMAP_ANCHORS) - 2)
    frac = (pos - lo)[..., None]
    rgb = _COLORMAP_ANCHORS[lo] * (1 - frac) + _COLORMAP_ANCHORS[lo + 1] * frac
    return np.rint(rgb).astype(np.uint8)


# -- ticks ------------------------------------------------------------------------------------
def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InvalidInputError(f"cannot place ticks on a non-finite range [{lo}, {hi}]")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        return [lo]
    raw = (hi - lo) / max(target, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(0.0 if abs(v) < step * 1e-9 else v)
        v = first + len(ticks) * step
    return ticks


def _padded_range(lo: float, hi: float) -> tuple[float, float]:
    """Expand [lo, hi] a little so points do not sit on the frame (and a zero range gets width)."""
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def _format_tick(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:g}"


class _Axes:
    """Maps data coordinates to pixels inside the plot frame and draws the frame, ticks and labels."""

    def __init__(self, image: Image.Image, xlim, ylim, logy: bool = False, right_margin: int = _MARGIN_RIGHT):
        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.font = _font()
        w, h = image.size
        self.left, self.top = _MARGIN_LEFT, _MARGIN_TOP
        self.right, self.bottom = w - right_margin, h - _MARGIN_BOTTOM
        self.xlim, self.ylim, self.logy = xlim, ylim, logy

    def _ty(self, y: float) -> float:
        return math.log10(y) if self.logy else y

    def px(self, x: float, y: float) -> tuple[int, int]:
        x0, x1 = self.xlim
        y0, y1 = (self._ty(v) for v in self.ylim)
        fx = (x - x0) / (x1 - x0)
        fy = (self._ty(y) - y0) / (y1 - y0)
        return (
            int(round(self.left + fx * (self.right - self.left))),
            int(round(self.bottom - fy * (self.bottom - self.top))),
        )

    def frame(self, title: str, xlabel: str, ylabel: str, xticks=None) -> None:
        d, font = self.draw, self.font
        xticks = nice_ticks(*self.xlim) if xticks is None else xticks
        xticks = [t for t in xticks if self.xlim[0] <= t <= self.xlim[1]]
        for t in xticks:
            x, _ = self.px(t, self.ylim[0])
            d.line([(x, self.top), (x, self.bottom)], fill=GRID)
            d.line([(x, self.bottom), (x, self.bottom + 4)], fill=FOREGROUND)
            label = _format_tick(t)
            tw, _ = _text_size(d, label, font)
            d.text((x - tw // 2, self.bottom + 6), label, fill=FOREGROUND, font=font)
        for t in self._yticks():
            _, y = self.px(self.xlim[0], t)
            d.line([(self.left, y), (self.right, y)], fill=GRID)
            d.line([(self.left - 4, y), (self.left, y)], fill=FOREGROUND)
            label = _format_tick(t)
            tw, th = _text_size(d, label, font)
            d.text((self.left - 7 - tw, y - th // 2 - 2), label, fill=FOREGROUND, font=font)
        d.rectangle([self.left, self.top, self.right, self.bottom], outline=FOREGROUND)
        w, h = self.image.size
        if title:
            tw, _ = _text_size(d, title, font)
            d.text(((w - tw) // 2, 8), title, fill=FOREGROUND, font=font)
        if xlabel:
            tw, _ = _text_size(d, xlabel, font)
            d.text(((self.left + self.right - tw) // 2, h - 18), xlabel, fill=FOREGROUND, font=font)
        if ylabel:
            tw, th = _text_size(d, ylabel, font)
            label = Image.new("RGB", (tw + 4, th + 6), BACKGROUND)
            ImageDraw.Draw(label).text((2, 0), ylabel, fill=FOREGROUND, font=font)
            label = label.rotate(90, expand=True)
            self.image.paste(label, (4, max(0, (self.top + self.bottom - label.height) // 2)))

    def _yticks(self) -> list[float]:
        lo, hi = self.ylim
        if not self.logy:
            return [t for t in nice_ticks(lo, hi) if lo <= t <= hi]
        # Powers of ten; within less than a decade add 2x and 5x so there are labels to read.
        e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        ticks = [10.0**e for e in range(e0, e1 + 1) if lo <= 10.0**e <= hi]
        if len(ticks) < 2:
            ticks = sorted(
                m * 10.0**e for e in range(e0, e1 + 1) for m in (1, 2, 5) if lo <= m * 10.0**e <= hi
            )
        if len(ticks) > 8:
            stride = math.ceil(len(ticks) / 8)
            ticks = ticks[::stride]
        return ticks


def _finite_pairs(xs, ys, logy: bool) -> list[tuple[float, float] | None]:
    """Points in order; None where a point cannot be drawn (NaN/inf, or <= 0 on a log axis),
    which breaks the line there rather than joining across the gap."""
    out: list[tuple[float, float] | None] = []
    for x, y in zip(xs, ys, strict=True):
        x, y = float(x), float(y)
        ok = math.isfinite(x) and math.isfinite(y) and (y > 0 or not logy)
        out.append((x, y) if ok else None)
    return out


def _as_list(values, what: str) -> list[float]:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().flatten().tolist()
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{what} must be a sequence of numbers, got {type(values).__name__}") from e


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    markers: Sequence[tuple[float, str]] | None = None,
    size: tuple[int, int] = (640, 400),
    logy: bool = False,
    points: bool = False,
) -> Image.Image:
    """Lines of ``{name: (xs, ys)}``, one colour per series, with a legend when there are names.

    ``markers`` are ``(x, label)`` pairs drawn as labelled vertical lines (e.g. the chosen k on an
    elbow curve). ``logy`` puts y on a log10 axis (values <= 0 are skipped). ``points`` also draws
    a dot at every data point. Non-finite values are skipped and break the line.
    """
    w, h = _check_size(size)
    if not series:
        raise InvalidInputError("line_plot needs at least one series")
    data = {}
    for name, pair in series.items():
        try:
            xs, ys = pair
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"series {name!r} must be a pair (xs, ys)") from e
        xs, ys = _as_list(xs, f"series {name!r} xs"), _as_list(ys, f"series {name!r} ys")
        if len(xs) != len(ys):
            raise InvalidInputError(f"series {name!r} has {len(xs)} x values but {len(ys)} y values")
        data[str(name)] = _finite_pairs(xs, ys, logy)
    pts = [p for ps in data.values() for p in ps if p is not None]
    marks = [(float(x), str(label)) for x, label in (markers or [])]
    image = Image.new("RGB", (w, h), BACKGROUND)
    if not pts:
        # Nothing drawable (e.g. every loss was NaN): say so instead of raising mid-training.
        axes = _Axes(image, (0.0, 1.0), (1.0, 10.0) if logy else (0.0, 1.0), logy)
        axes.frame(title, xlabel, ylabel)
        msg = "no finite values to plot"
        tw, th = _text_size(axes.draw, msg, axes.font)
        axes.draw.text(((w - tw) // 2, (h - th) // 2), msg, fill=MARKER, font=axes.font)
        return image
    xs_all = [p[0] for p in pts] + [m[0] for m in marks]
    ys_all = [p[1] for p in pts]
    xlim = _padded_range(min(xs_all), max(xs_all))
    if logy:
        lo, hi = math.log10(min(ys_all)), math.log10(max(ys_all))
        lo, hi = _padded_range(lo, hi)
        ylim = (10.0**lo, 10.0**hi)
    else:
        ylim = _padded_range(min(ys_all), max(ys_all))
    axes = _Axes(image, xlim, ylim, logy)
    axes.frame(title, xlabel, ylabel)
    d = axes.draw
    for x, label in marks:
        px, _ = axes.px(x, ylim[0])
        for y in range(axes.top, axes.bottom, 6):  # dashed
            d.line([(px, y), (px, min(y + 3, axes.bottom))], fill=MARKER)
        tw, _ = _text_size(d, label, axes.font)
        tx = px + 4 if px + 4 + tw < axes.right else px - 4 - tw
        d.text((tx, axes.top + 3), label, fill=MARKER, font=axes.font)
    for i, (_, ps) in enumerate(data.items()):
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        run: list[tuple[int, int]] = []
        for p in ps + [None]:
            if p is None:
                if len(run) > 1:
                    d.line(run, fill=color, width=2)
                elif len(run) == 1:
                    x, y = run[0]
                    d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
                run = []
                continue
            run.append(axes.px(*p))
        if points:
            for p in ps:
                if p is not None:
                    x, y = axes.px(*p)
                    d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
    names = [n for n in data if n]
    if names:
        # Legend in the top-right corner of the frame.
        lh = _text_size(d, "Ag", axes.font)[1] + 6
        lw = max(_text_size(d, n, axes.font)[0] for n in names) + 30
        x0, y0 = axes.right - lw - 6, axes.top + 6
        if marks:
            y0 += lh
        d.rectangle([x0, y0, x0 + lw, y0 + lh * len(names) + 4], fill=BACKGROUND, outline=GRID)
        for i, n in enumerate(data):
            if not n:
                continue
            color = SERIES_COLORS[i % len(SERIES_COLORS)]
            y = y0 + 4 + i * lh
            d.line([(x0 + 5, y + lh // 2 - 1), (x0 + 21, y + lh // 2 - 1)], fill=color, width=2)
            d.text((x0 + 25, y), n, fill=FOREGROUND, font=axes.font)
    return image


def scatter_plot(
    xs,
    ys,
    values,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    colorbar_label: str = "",
    size: tuple[int, int] = (640, 400),
    radius: int = 2,
) -> Image.Image:
    """Points (xs[i], ys[i]) coloured by ``values[i]`` on a sequential colour map, with a
    colour bar on the right labelled with the value range. Points are drawn in order of
    increasing value, so the draw order does not depend on the input order."""
    w, h = _check_size(size)
    xs, ys, vs = _as_list(xs, "xs"), _as_list(ys, "ys"), _as_list(values, "values")
    if not (len(xs) == len(ys) == len(vs)):
        raise InvalidInputError(
            f"scatter_plot needs as many xs, ys and values; got {len(xs)}, {len(ys)}, {len(vs)}"
        )
    keep = [i for i in range(len(xs)) if all(math.isfinite(a[i]) for a in (xs, ys, vs))]
    if not keep:
        raise InvalidInputError("scatter_plot: no point has finite x, y and value")
    bar_width = 70
    image = Image.new("RGB", (w, h), BACKGROUND)
    xlim = _padded_range(min(xs[i] for i in keep), max(xs[i] for i in keep))
    ylim = _padded_range(min(ys[i] for i in keep), max(ys[i] for i in keep))
    axes = _Axes(image, xlim, ylim, right_margin=_MARGIN_RIGHT + bar_width)
    axes.frame(title, xlabel, ylabel)
    vmin, vmax = min(vs[i] for i in keep), max(vs[i] for i in keep)
    span = (vmax - vmin) or 1.0
    colors = colormap([(vs[i] - vmin) / span for i in keep])
    d = axes.draw
    order = sorted(range(len(keep)), key=lambda j: (vs[keep[j]], xs[keep[j]], ys[keep[j]]))
    for j in order:
        i = keep[j]
        x, y = axes.px(xs[i], ys[i])
        d.ellipse([x - radius, y - radius, x + radius, y + radius], fill=tuple(int(c) for c in colors[j]))
    # Colour bar: high values on top.
    bx0 = axes.right + 16
    bx1 = bx0 + 12
    # The ramp fills the inside of the outline, from exactly vmax's colour to exactly vmin's.
    n = axes.bottom - axes.top - 1
    ramp = colormap(np.linspace(1.0, 0.0, n))
    d.rectangle([bx0, axes.top, bx1, axes.bottom], outline=FOREGROUND)
    for k in range(n):
        d.line(
            [(bx0 + 1, axes.top + 1 + k), (bx1 - 1, axes.top + 1 + k)], fill=tuple(int(c) for c in ramp[k])
        )
    for v, y in ((vmax, axes.top), (vmin, axes.bottom)):
        label = _format_tick(v)
        _, th = _text_size(d, label, axes.font)
        d.text((bx1 + 4, y - th // 2 - 2), label, fill=FOREGROUND, font=axes.font)
    if colorbar_label:
        tw, th = _text_size(d, colorbar_label, axes.font)
        label = Image.new("RGB", (tw + 4, th + 6), BACKGROUND)
        ImageDraw.Draw(label).text((2, 0), colorbar_label, fill=FOREGROUND, font=axes.font)
        label = label.rotate(90, expand=True)
        x = min(w - label.width, bx1 + 30)
        image.paste(label, (x, max(0, (axes.top + axes.bottom - label.height) // 2)))
    return image


def timeline_plot(
    grid: Sequence[int],
    chosen: Sequence[int],
    title: str = "",
    size: tuple[int, int] = (640, 170),
    num_train_timesteps: int = 1000,
) -> Image.Image:
    """The diffusion schedule 0..``num_train_timesteps`` as a horizontal axis: a small tick per
    grid timestep and a labelled red marker per chosen timestep."""
    w, h = _check_size(size)
    grid = [int(v) for v in _as_list(grid, "grid")]
    chosen = sorted({int(v) for v in _as_list(chosen, "chosen")})
    bad = [t for t in grid + chosen if not 0 <= t <= num_train_timesteps]
    if bad:
        raise InvalidInputError(f"timeline_plot: timesteps must lie in 0..{num_train_timesteps}, got {bad}")
    image = Image.new("RGB", (w, h), BACKGROUND)
    d = ImageDraw.Draw(image)
    font = _font()
    left, right = 30, w - 30
    axis_y = h - 58

    def px(t: float) -> int:
        return int(round(left + t / num_train_timesteps * (right - left)))

    if title:
        tw, _ = _text_size(d, title, font)
        d.text(((w - tw) // 2, 8), title, fill=FOREGROUND, font=font)
    d.line([(left, axis_y), (right, axis_y)], fill=FOREGROUND, width=2)
    for t in nice_ticks(0, num_train_timesteps, target=10):
        x = px(t)
        d.line([(x, axis_y), (x, axis_y + 8)], fill=FOREGROUND)
        label = _format_tick(t)
        tw, _ = _text_size(d, label, font)
        d.text((x - tw // 2, axis_y + 11), label, fill=FOREGROUND, font=font)
    for t in grid:
        x = px(t)
        d.line([(x, axis_y - 4), (x, axis_y)], fill=(120, 120, 120))
    caption = f"timestep (noise level); {len(grid)} grid steps, {len(chosen)} chosen"
    tw, _ = _text_size(d, caption, font)
    d.text(((w - tw) // 2, h - 20), caption, fill=FOREGROUND, font=font)
    # Labels alternate between rows when they would overlap their left neighbour on the same row.
    row_right: dict[int, int] = {}
    for t in chosen:
        x = px(t)
        d.polygon([(x, axis_y - 3), (x - 5, axis_y - 13), (x + 5, axis_y - 13)], fill=MARKER)
        label = str(t)
        tw, th = _text_size(d, label, font)
        row = next((r for r in range(4) if row_right.get(r, -(10**9)) < x - tw // 2 - 2), 3)
        row_right[row] = x + tw - tw // 2
        y = axis_y - 30 - row * (th + 6)
        d.line([(x, y + th + 3), (x, axis_y - 13)], fill=MARKER)
        d.text((x - tw // 2, y), label, fill=MARKER, font=font)
    return image


def to_image_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a ComfyUI IMAGE: float32 [1, H, W, 3] in [0, 1]."""
    if not isinstance(image, Image.Image):
        raise InvalidInputError(f"to_image_tensor expects a PIL image, got {type(image).__name__}")
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).unsqueeze(0)
