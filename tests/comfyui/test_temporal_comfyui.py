"""Tier 2: DiffSketch Extract's temporal mode in a real ComfyUI server, on batches of frames."""

from __future__ import annotations

import numpy as np
import pytest
from comfy_harness import error_message
from PIL import Image

pytest.importorskip("cv2", reason="the temporal mode needs OpenCV (the test extra installs it)")

BUILT_IN = "built-in: HED sketch (default_extractor.safetensors)"


def photo_like(seed: int, low: int, high: int) -> np.ndarray:
    """Blocks of random colours in [low, high] over the top 24 rows, uint8 [80,96,3]; the rest
    is the same grey in every picture, so flow and colours agree there across a cut."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((6, 8, 3))
    big = (low + (high - low) * np.kron(coarse, np.ones((14, 12, 1)))[:80, :96]).astype(np.uint8)
    big[24:] = 128
    return big


def extract_graph(images: list[str], temporal: str, prefix: str, repeat: int = 1) -> dict:
    graph = {"1": {"class_type": "DiffSketchLoadExtractor", "inputs": {"extractor_name": BUILT_IN}}}
    for i, name in enumerate(images):
        graph[f"l{i}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
    batch = ["l0", 0]
    for i in range(1, len(images)):
        graph[f"b{i}"] = {"class_type": "ImageBatch", "inputs": {"image1": batch, "image2": [f"l{i}", 0]}}
        batch = [f"b{i}", 0]
    if repeat > 1:
        graph["r"] = {"class_type": "RepeatImageBatch", "inputs": {"image": batch, "amount": repeat}}
        batch = ["r", 0]
    graph["3"] = {
        "class_type": "DiffSketchExtract",
        "inputs": {
            "extractor": ["1", 0],
            "image": batch,
            "invert": False,
            "contrast": 1.0,
            "tile": 1024,
            "temporal": temporal,
        },
    }
    graph["4"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}}
    return graph


def saved(comfy_server, entry) -> list[np.ndarray]:
    images = entry["outputs"]["4"]["images"]
    return [
        np.asarray(Image.open(comfy_server.base / "output" / i["subfolder"] / i["filename"])) for i in images
    ]


@pytest.fixture
def unrelated_inputs(comfy_server) -> list[str]:
    folder = comfy_server.base / "input"
    folder.mkdir(exist_ok=True)
    names = []
    for i, (low, high) in enumerate([(0, 90), (170, 255), (0, 90), (170, 255)]):
        names.append(f"unrelated_{i}.png")
        Image.fromarray(photo_like(i, low, high)).save(folder / names[-1])
    return names


def test_temporal_mode_on_a_16_frame_batch_returns_16_frames(comfy_server, unrelated_inputs):
    entry = comfy_server.run(extract_graph(unrelated_inputs[:1], "stabilize", "temporal16", repeat=16))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    frames = saved(comfy_server, entry)
    assert len(frames) == 16 and all(f.shape[:2] == (80, 96) for f in frames)


def test_a_batch_of_unrelated_images_is_all_cuts_and_gives_the_per_frame_result(
    comfy_server, unrelated_inputs
):
    stable = comfy_server.run(extract_graph(unrelated_inputs, "stabilize", "cuts_stable"))
    assert stable["status"]["status_str"] == "success", error_message(stable)
    per_frame = comfy_server.run(extract_graph(unrelated_inputs, "off", "cuts_off"))
    assert per_frame["status"]["status_str"] == "success", error_message(per_frame)
    a, b = saved(comfy_server, stable), saved(comfy_server, per_frame)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], a[1])  # four different sketches, not one blank page four times
