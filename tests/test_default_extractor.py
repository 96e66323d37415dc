"""The extractor shipped with the pack: present, small, documented, and drawing HED's lines on a
photo it never saw (against the real HED map that tools/train_default_extractor.py stored)."""

from __future__ import annotations

import fnmatch
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffsketch.distill.extractor import DEFAULT_EXTRACTOR_FILE, load_default_extractor
from diffsketch.eval.metrics.ssim import ssim
from diffsketch.fileio import load_tensors, read_header

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "default_extractor_reference.safetensors"
# The shipped weights scored the fixture's SSIM when they were made; the margin allows for another
# CPU's or PyTorch version's arithmetic, not for other weights.
SSIM_MARGIN = 0.02


def test_the_default_extractor_is_shipped_small_with_its_provenance():
    assert DEFAULT_EXTRACTOR_FILE.is_file(), "run tools/train_default_extractor.py"
    assert DEFAULT_EXTRACTOR_FILE.stat().st_size <= 10 * 1024 * 1024
    header = read_header(DEFAULT_EXTRACTOR_FILE, kind="extractor")
    assert "hed" in header["teacher"] and "not a DiffSketch style" in header["description"]
    assert header["made_by"].startswith("tools/train_default_extractor.py")
    assert {"ssim", "l1", "boundary_f"} <= set(header["held_out_scores"])


def test_the_default_extractor_is_package_data():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    with open(REPO / "pyproject.toml", "rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]["diffsketch"]
    relative = DEFAULT_EXTRACTOR_FILE.relative_to(REPO / "diffsketch").as_posix()
    assert any(fnmatch.fnmatch(relative, pattern) for pattern in package_data)  # installed by pip install .


def test_the_default_extractor_draws_hed_lines_on_a_held_out_photo():
    pytest.importorskip("skimage", reason="the photo is scikit-image's coffee (the test extra installs it)")
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from photo_pairs import load_photo, predict
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    tensors, reference = load_tensors(FIXTURE, kind="default_extractor_reference", versions=(1,))
    teacher = np.array(Image.open(io.BytesIO(tensors["teacher_sketch_png"].numpy().tobytes())))
    teacher = torch.from_numpy(teacher).float()[None, None] / 255.0
    model = load_default_extractor()
    assert (
        read_header(DEFAULT_EXTRACTOR_FILE)["checksum"] == reference["extractor_checksum"]
    )  # made for these weights
    photo = load_photo("coffee", 512)
    assert photo.shape[-2:] == teacher.shape[-2:]
    with torch.no_grad():  # predict() runs float32, the arithmetic the recorded score was measured in
        sketch = predict(model, photo)
    score = float(ssim(sketch, teacher)[0])
    assert score >= reference["ssim"] - SSIM_MARGIN, (score, reference["ssim"])
    # not a blank page: the photo's lines are there
    assert float((sketch < 0.5).float().mean()) > 0.01


def test_extract_without_an_extractor_uses_the_built_in_one_on_grey_rgba_and_tiny_photos(tmp_path, capsys):
    """``diffsketch extract photo --out sketches/``, the newcomer's first command: grey, RGBA and
    a photo far below the network's 64-px multiple (padded, then cropped back) all give a sketch
    of the photo's own size."""
    from diffsketch.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    g = np.random.default_rng(0)
    grey = (g.random((70, 90)) * 255).astype(np.uint8)
    Image.fromarray(grey, "L").save(photos / "grey.png")
    rgba = (g.random((64, 48, 4)) * 255).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(photos / "rgba.png")
    Image.fromarray((g.random((9, 13, 3)) * 255).astype(np.uint8), "RGB").save(photos / "tiny.jpg")
    assert main(["extract", str(photos), "--out", str(tmp_path / "sketches"), "--device", "cpu"]) == 0
    assert "built-in extractor" in capsys.readouterr().err
    for name, size in (("grey", (90, 70)), ("rgba", (48, 64)), ("tiny", (13, 9))):
        with Image.open(tmp_path / "sketches" / f"{name}.png") as sketch:
            assert sketch.size == size, name


def test_a_missing_built_in_extractor_makes_extract_say_so(tmp_path, monkeypatch):
    from diffsketch.cli import main
    from diffsketch.distill import extractor as module

    Image.new("RGB", (32, 32)).save(tmp_path / "photo.png")
    monkeypatch.setattr(module, "DEFAULT_EXTRACTOR_FILE", tmp_path / "default_extractor.safetensors")
    assert main(["extract", str(tmp_path / "photo.png"), "--out", str(tmp_path / "out")]) != 0
    assert not (tmp_path / "out" / "photo.png").exists()
