"""Pillow plots: sizes, determinism, and that the data lands where it should."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffsketch.errors import InvalidInputError
from diffsketch.plotting import (
    MARKER,
    SERIES_COLORS,
    colormap,
    line_plot,
    nice_ticks,
    scatter_plot,
    timeline_plot,
    to_image_tensor,
)


def pixels_of(image: Image.Image, color) -> np.ndarray:
    """(y, x) coordinates of the pixels that have exactly ``color``."""
    a = np.asarray(image.convert("RGB"))
    return np.argwhere((a == np.array(color, dtype=np.uint8)).all(-1))


def test_nice_ticks_are_round_and_cover_the_range():
    ticks = nice_ticks(0.0, 1000.0, target=10)
    assert ticks[0] == 0 and ticks[-1] == 1000 and len(ticks) == 11
    ticks = nice_ticks(-0.37, 2.2)
    steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)}
    assert len(steps) == 1 and steps.pop() in (0.5, 1.0, 0.2)
    assert ticks[0] >= -0.37 and ticks[-1] <= 2.2
    assert nice_ticks(3.0, 3.0) == [3.0]


def test_line_plot_size_determinism_and_data():
    xs = list(range(20))
    a = line_plot({"loss": (xs, [math.exp(-x / 5) for x in xs])}, "t", "step", "loss", size=(500, 300))
    b = line_plot({"loss": (xs, [math.exp(-x / 5) for x in xs])}, "t", "step", "loss", size=(500, 300))
    c = line_plot({"loss": (xs, [x / 20 for x in xs])}, "t", "step", "loss", size=(500, 300))
    assert a.size == (500, 300) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()
    # A rising line: its leftmost pixels are lower on the image than its rightmost ones.
    line = pixels_of(c, SERIES_COLORS[0])
    legend_free = line[line[:, 1] < 300]  # the legend sits in the top-right corner
    left = legend_free[legend_free[:, 1] == legend_free[:, 1].min()][:, 0].mean()
    right = line[line[:, 1] == line[:, 1].max()][:, 0].mean()
    assert left > right


def test_line_plot_markers_logy_and_gaps():
    xs = list(range(1, 11))
    plain = line_plot({"": (xs, [10.0**-x for x in xs])}, logy=True)
    marked = line_plot({"": (xs, [10.0**-x for x in xs])}, logy=True, markers=[(4, "k=4")])
    assert len(pixels_of(plain, MARKER)) == 0 and len(pixels_of(marked, MARKER)) > 20

    # On a log axis an exponential decay is a straight line; on a linear axis it is not.
    def straightness(image):
        line = pixels_of(image, SERIES_COLORS[0])
        fit = np.polyfit(line[:, 1], line[:, 0], 1)
        return np.abs(np.polyval(fit, line[:, 1]) - line[:, 0]).max()

    linear = line_plot({"": (xs, [10.0**-x for x in xs])})
    assert straightness(plain) < 3 < straightness(linear)
    # Non-finite and (on log axes) non-positive values are skipped rather than raising.
    gappy = line_plot({"a": (xs, [1.0, float("nan"), 3.0, 0.0, -1.0, 2, 3, 4, 5, 6])}, logy=True)
    assert gappy.size == (640, 400)
    empty = line_plot({"a": ([0, 1], [float("nan"), float("inf")])})
    a = np.asarray(empty).astype(int)
    assert (
        (a[..., 0] > 150) & (a[..., 1] < 130) & (a[..., 2] < 130)
    ).sum() > 20  # the red "no finite values"
    with pytest.raises(InvalidInputError):
        line_plot({"a": ([1, 2, 3], [1, 2])})
    with pytest.raises(InvalidInputError):
        line_plot({})
    with pytest.raises(InvalidInputError):
        line_plot({"a": ([1], [1])}, size=(20, 20))


def test_line_plot_accepts_tensors_and_several_series():
    xs = torch.arange(10)
    image = line_plot({"total": (xs, xs.float() ** 2), "l1": (xs, xs.float())})
    assert len(pixels_of(image, SERIES_COLORS[0])) > 50 and len(pixels_of(image, SERIES_COLORS[1])) > 50


def test_scatter_colours_points_by_value():
    w, h = 500, 320
    image = scatter_plot([0.0, 1.0], [0.0, 1.0], [0.0, 1.0], "s", "x", "y", "value", size=(w, h), radius=3)
    assert image.size == (w, h)
    low, high = (tuple(int(c) for c in colormap([v])[0]) for v in (0.0, 1.0))
    plot_right = w - 100  # left of the colour bar
    lo_px = pixels_of(image, low)
    hi_px = pixels_of(image, high)
    lo_px, hi_px = lo_px[lo_px[:, 1] < plot_right], hi_px[hi_px[:, 1] < plot_right]
    assert len(lo_px) > 5 and len(hi_px) > 5
    # (0, 0) with the lowest value is bottom-left of (1, 1) with the highest.
    assert lo_px[:, 1].mean() < hi_px[:, 1].mean() and lo_px[:, 0].mean() > hi_px[:, 0].mean()
    # The colour bar shows both ends of the map.
    assert len(pixels_of(image, low)) > len(lo_px) and len(pixels_of(image, high)) > len(hi_px)
    # Input order does not change the picture.
    again = scatter_plot([1.0, 0.0], [1.0, 0.0], [1.0, 0.0], "s", "x", "y", "value", size=(w, h), radius=3)
    assert again.tobytes() == image.tobytes()
    with pytest.raises(InvalidInputError):
        scatter_plot([1, 2], [1], [1, 2])
    with pytest.raises(InvalidInputError):
        scatter_plot([float("nan")], [1], [1])


def test_colormap_is_monotone_in_brightness():
    colors = colormap(np.linspace(0, 1, 11)).astype(float)
    luma = colors @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(luma) > 0)
    assert colormap([-5.0])[0].tolist() == colormap([0.0])[0].tolist()


def test_timeline_marks_chosen_timesteps_where_they_are():
    grid = list(range(1, 1000, 20))
    early = pixels_of(timeline_plot(grid, [1]), MARKER)
    late = pixels_of(timeline_plot(grid, [941]), MARKER)
    assert early[:, 1].max() < 320 < late[:, 1].min()
    many = timeline_plot(grid, grid[::3], "dense", size=(640, 170))
    assert many.size == (640, 170) and len(pixels_of(many, MARKER)) > len(late)
    with pytest.raises(InvalidInputError):
        timeline_plot(grid, [1200])


def test_to_image_tensor_is_a_comfy_image():
    image = Image.new("RGB", (7, 5), (255, 0, 51))
    image.putpixel((6, 4), (0, 255, 0))
    t = to_image_tensor(image)
    assert t.shape == (1, 5, 7, 3) and t.dtype == torch.float32
    assert torch.allclose(t[0, 0, 0], torch.tensor([1.0, 0.0, 0.2]))
    assert torch.allclose(t[0, 4, 6], torch.tensor([0.0, 1.0, 0.0]))
    assert to_image_tensor(Image.new("L", (3, 3), 128)).shape == (1, 3, 3, 3)
    with pytest.raises(InvalidInputError):
        to_image_tensor(np.zeros((3, 3)))
