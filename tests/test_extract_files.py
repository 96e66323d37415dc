"""Extraction of many image files in one process: input listing, the output folder's manifest,
skipping what is done, and the errors a user can run into."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from diffsketch.distill.extract import extract
from diffsketch.distill.extract_files import (
    MANIFEST_NAME,
    SketchFolder,
    SketchOptions,
    extract_files,
    extraction_settings,
    list_inputs,
)
from diffsketch.distill.extractor import ExtractorConfig, SketchExtractor
from diffsketch.errors import FileFormatError, InvalidInputError

TINY = ExtractorConfig(channels=(8, 16), encoder_blocks=(1, 1), decoder_blocks=(1,))


def tiny_extractor(seed=0) -> SketchExtractor:
    torch.manual_seed(seed)
    return SketchExtractor(TINY).eval()


def make_photos(root, count=6, seed=0):
    rng = np.random.default_rng(seed)
    (root / "sub").mkdir(parents=True)
    for i in range(count):
        size = (24, 40) if i % 3 else (33, 20)
        folder = root / "sub" if i % 2 else root
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return root


def manifest_lines(out):
    return [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]


def test_inputs_folders_globs_lists_and_clashes(tmp_path):
    photos = make_photos(tmp_path / "photos")
    (photos / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(photos / ".hidden" / "h.png")
    out = photos / "sketches"  # an output folder inside the input folder is never read back
    out.mkdir()
    Image.new("L", (8, 8)).save(out / "p0.png")
    items, missing = list_inputs([str(photos)], exclude=out)
    assert [i.key for i in items] == ["p0", "p2", "p4", "sub/p1", "sub/p3", "sub/p5"]
    assert missing == []

    items, missing = list_inputs([str(photos / "**" / "p[13].png"), str(tmp_path / "none" / "*.png")])
    assert [i.key for i in items] == ["sub/p1", "sub/p3"] and missing == [str(tmp_path / "none" / "*.png")]

    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\nphotos/sub/p1.png\n\n{photos / 'p2.png'}\nphotos/absent.jpg\n")
    items, _ = list_inputs([str(listing)])
    assert [i.key for i in items] == ["photos/sub/p1", "p2", "photos/absent"]

    # inputs that would write the same sketch keep their extension in the key; a key that still
    # meets another input's is refused, naming both
    Image.new("RGB", (8, 8)).save(photos / "p0.jpg")
    items, _ = list_inputs([str(photos)], exclude=out)
    assert [i.key for i in items][:3] == ["p0_jpg", "p0_png", "p2"]
    Image.new("RGB", (8, 8)).save(photos / "p0_png.png")
    with pytest.raises(InvalidInputError, match=r"p0\.png and .*p0_png\.png -> p0_png\.png"):
        list_inputs([str(photos)], exclude=out)


def test_folder_matches_extract_skips_done_and_reports_bad_files(tmp_path):
    photos = make_photos(tmp_path / "photos")
    (photos / "broken.png").write_bytes(b"not an image")
    model = tiny_extractor()
    items, _ = list_inputs([str(photos)])
    out = tmp_path / "out"
    progress = []
    report = extract_files(model, items, out, workers=1, progress=lambda d, t: progress.append((d, t)))
    assert report.written == 6 and report.already_done == 0 and progress[-1] == (7, 7)
    assert len(report.failed) == 1 and "broken.png" in report.failed[0][0]

    # each sketch is extract()'s, as 8-bit grey, at the input's size
    for item in items[1:]:
        pixels = np.asarray(Image.open(item.path))
        expected, _ = extract(model, pixels[None])
        written = np.asarray(Image.open(out / f"{item.key}.png"))
        assert written.dtype == np.uint8 and written.shape == pixels.shape[:2]
        assert np.abs(written.astype(int) - (expected[0, ..., 0].numpy() * 255).round()).max() <= 1

    lines = manifest_lines(out)
    assert lines[0]["format"] == "diffsketch-sketches"
    assert lines[0]["settings"] == extraction_settings(model, SketchOptions())
    assert sorted(line["key"] for line in lines[1:] if "error" not in line) == sorted(
        i.key for i in items if i.key != "broken"
    )
    assert [line["key"] for line in lines[1:] if "error" in line] == ["broken"]

    # a rerun does only what is not done: the unreadable file again, and a deleted sketch
    (out / "sub" / "p3.png").unlink()
    before = (out / "p2.png").stat().st_mtime_ns
    again = extract_files(model, items, out, workers=0)
    assert again.written == 1 and again.already_done == 5 and len(again.failed) == 1
    assert (out / "sub" / "p3.png").is_file() and (out / "p2.png").stat().st_mtime_ns == before

    # another network or other options are refused: the folder would mix two styles
    with pytest.raises(InvalidInputError, match="extractor"):
        extract_files(tiny_extractor(seed=1), items, out)
    with pytest.raises(InvalidInputError, match="invert"):
        extract_files(model, items, out, SketchOptions(invert=True))
    # ... but the batch size, which changes no pixel, may change
    assert extract_files(model, items, out, SketchOptions(batch_size=1)).written == 0


def test_a_manifest_cut_by_a_crash_is_repaired_and_damage_is_reported(tmp_path):
    model = tiny_extractor()
    items, _ = list_inputs([str(make_photos(tmp_path / "photos", count=3))])
    out = tmp_path / "out"
    extract_files(model, items, out, workers=0)
    manifest = out / MANIFEST_NAME
    text = manifest.read_text()
    manifest.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 1] + '{"key": "p')  # last line cut
    report = extract_files(model, items, out, workers=0)
    assert report.written == 1 and report.already_done == 2
    assert [json.loads(line) for line in manifest.read_text().splitlines()]  # valid JSON again

    manifest.write_text(manifest.read_text().replace('"key"', '"kex"', 1))
    with pytest.raises(FileFormatError, match="line 2"):
        SketchFolder(out, extraction_settings(model, SketchOptions()))
    manifest.write_text("something else\n")
    with pytest.raises(FileFormatError, match="not a DiffSketch sketch manifest"):
        SketchFolder(out, {})
    with pytest.raises(InvalidInputError, match="workers"):
        extract_files(model, items, tmp_path / "other", workers=-1)


def test_ray_missing_is_a_clear_error(monkeypatch):
    """Without the ``scale`` extra, --ray names the install that brings it (plain extract needs no Ray)."""
    from diffsketch.distill.extract_ray import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray imports
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(InvalidInputError, match=r"diffsketch\[scale\]"):
        require_ray()


def _sketch_png(model, path, dtype):
    expected, _ = extract(model, np.asarray(Image.open(path))[None], dtype=dtype)
    return (expected[0, ..., 0].clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()


def test_a_folder_keeps_the_precision_it_was_begun_with(tmp_path, monkeypatch):
    import diffsketch.distill.extract as extract_module

    # "auto" is bfloat16 here whatever this machine's CPU is
    monkeypatch.setattr(extract_module, "cpu_has_native_bf16", lambda: True)
    photos = make_photos(tmp_path / "photos", count=2)
    model = tiny_extractor()
    items, _ = list_inputs([str(photos)])
    out = tmp_path / "out"
    fp32 = SketchOptions(dtype="fp32")
    assert extract_files(model, items[:1], out, fp32, workers=0).written == 1
    assert manifest_lines(out)[0]["settings"]["precision"] == "float32"
    written = np.asarray(Image.open(out / f"{items[0].key}.png"))
    assert np.array_equal(written, _sketch_png(model, items[0].path, "fp32"))
    assert not np.array_equal(written, _sketch_png(model, items[0].path, "bf16"))  # the switch matters

    # continuing in the default (bfloat16 here) would mix two precisions in one folder
    with pytest.raises(InvalidInputError, match="precision: folder has 'float32', asked 'bfloat16'"):
        extract_files(model, items, out, workers=0)
    assert extract_files(model, items, out, fp32, workers=0).written == 1

    # a folder begun before precisions were recorded was made in float32: it continues so, and only so
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    header = json.loads(lines[0])
    del header["settings"]["precision"]
    (out / MANIFEST_NAME).write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    (out / f"{items[1].key}.png").unlink()
    with pytest.raises(InvalidInputError, match="made before precisions were recorded, in float32"):
        extract_files(model, items, out, SketchOptions(dtype="bf16"), workers=0)
    again = extract_files(model, items, out, fp32, workers=0)
    assert again.written == 1 and again.already_done == 1
    assert "precision" not in manifest_lines(out)[0]["settings"]  # the header stays as it was written

    with pytest.raises(InvalidInputError, match="float16 is not supported on the CPU"):
        extract_files(model, items, tmp_path / "fp16", SketchOptions(dtype="fp16"), workers=0)
