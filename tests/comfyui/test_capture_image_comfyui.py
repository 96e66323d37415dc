"""Tier 2: DiffSketch Capture from Image in a real ComfyUI server (a picture whose sides are not
multiples of 64, fitted; Train in the same graph taking the drawing at the picture's own size),
and in-process: no hook or wrapper left on the shared MODEL after success, failure and Cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from comfy_harness import error_message, hook_count
from PIL import Image

pytestmark = pytest.mark.comfyui

NODE = "DiffSketchCaptureFromImage"
INPUTS = ["model", "clip", "vae", "image", "caption", "steps", "max_side", "timesteps", "guidance"]
PICTURE = (np.random.default_rng(0).random((70, 100, 3)) * 255).astype(np.uint8)  # 100x70: no multiple of 64
CROP = (slice(3, 67), slice(18, 82))  # the centred 64x64 window


def test_object_info_lists_the_node_with_its_inputs_in_order(comfy_server):
    info = comfy_server.get(f"/object_info/{NODE}")[NODE]
    assert info["display_name"] == "DiffSketch Capture from Image"
    assert info["input_order"]["required"] + info["input_order"]["optional"] == INPUTS
    required, optional = info["input"]["required"], info["input"]["optional"]
    assert required["caption"][1]["default"] == "" and required["caption"][1]["multiline"]
    assert required["steps"][1]["default"] == 50 and required["max_side"][1]["default"] == 0
    assert optional["timesteps"][0] == "DIFFSKETCH_TIMESTEPS"
    assert all(spec[1].get("tooltip") for spec in (*required.values(), *optional.values()))
    assert info["output"] == ["IMAGE", "IMAGE", "DIFFSKETCH_FEATURES"]
    assert info["output_name"] == ["picture", "replay", "features"]


def _graph(sketch_file: str) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {
            "class_type": "DiffSketchTimestepsPreset",
            "inputs": {"preset": "custom", "custom": "1, 501, 901"},
        },
        "3": {"class_type": "LoadImage", "inputs": {"image": "diffsketch_picture.png"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": sketch_file}},
        "5": {
            "class_type": NODE,
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "vae": ["1", 2],
                "image": ["3", 0],
                "caption": "a photo of a horse",
                "steps": 10,
                "max_side": 0,
                "timesteps": ["2", 0],
            },
        },
        "6": {
            "class_type": "SaveImage",
            "inputs": {"images": ["5", 0], "filename_prefix": "picture_as_used"},
        },
        "7": {"class_type": "SaveImage", "inputs": {"images": ["5", 1], "filename_prefix": "picture_replay"}},
        "8": {
            "class_type": "DiffSketchFitConditions",
            "inputs": {
                "clip": ["1", 1],
                "prompts": "a horse\na cat\na city\na lake\na tree",
                "components": 3,
                "seed": 0,
                "save_name": "picture_conditions",
            },
        },
        "9": {
            "class_type": "DiffSketchLoadClipLoss",
            "inputs": {
                "clip_name": "clip_vit_b_32.safetensors",
                "lpips_weights": "alexnet-owt-7be5be79.safetensors",
                "quick_gelu": True,
            },
        },
        "10": {
            "class_type": "DiffSketchTrain",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "vae": ["1", 2],
                "features": ["5", 2],
                "sketch": ["4", 0],
                "conditions": ["8", 0],
                "loss_models": ["9", 0],
                "iterations": 2,
                "learning_rate": 1e-4,
                "h_iter": 2,
                "lpips_weight": 15.0,
                "l1_weight": 30.0,
                "clip_weight": 30.0,
                "across_weight": 1.0,
                "within_weight": 1.0,
                "timestep_policy": "fixed",
                "schedule": "fast",
                "low_memory": False,
                "seed": 0,
                "save_name": "from_a_picture",
                "resume_from": "(start fresh)",
                "checkpoint_every": 2,
            },
        },
    }


def _saved(comfy_server, entry, node) -> np.ndarray:
    image = entry["outputs"][node]["images"][0]
    return np.asarray(Image.open(comfy_server.base / "output" / image["subfolder"] / image["filename"]))


def test_the_node_fits_the_picture_and_train_takes_the_drawing_at_the_pictures_size(comfy_server, loss_files):
    inputs = comfy_server.base / "input"
    inputs.mkdir(exist_ok=True)
    Image.fromarray(PICTURE).save(inputs / "diffsketch_picture.png")
    drawing = (PICTURE.mean(-1) > 128).astype(np.uint8) * 255
    Image.fromarray(drawing).save(inputs / "diffsketch_drawing.png")  # drawn over the picture: 100x70
    Image.fromarray(drawing[:, :70]).save(inputs / "diffsketch_square.png")

    entry = comfy_server.run(_graph("diffsketch_drawing.png"))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    [shown] = entry["outputs"]["5"]["text"]
    assert "the picture is 100x70: cropped 36 px of width and 6 px of height (centred) to 64x64" in shown
    assert "replay PSNR" in shown and " dB" in shown
    assert entry["outputs"]["5"]["images"]  # the replay's preview
    # the picture as used is the centred crop (SaveImage truncates 255*x: at most 1 level off)
    used = _saved(comfy_server, entry, "6").astype(int)
    assert used.shape == (64, 64, 3) and np.abs(used - PICTURE[CROP].astype(int)).max() <= 1
    assert _saved(comfy_server, entry, "7").shape == (64, 64, 3)
    log = comfy_server.log_text()
    assert "the sketch is 100x70: resized and cropped like the picture, to 64x64" in log
    assert (
        comfy_server.base / "models" / "diffsketch" / "generators" / "from_a_picture.safetensors"
    ).is_file()

    # a drawing of another shape: refused, naming both sizes
    graph = _graph("diffsketch_square.png")
    graph["10"]["inputs"]["save_name"] = "from_a_square"
    entry = comfy_server.run(graph)
    assert entry["status"]["status_str"] == "error"
    assert "the sketch is 70x70, but the picture the features were captured from is 100x70" in error_message(
        entry
    )


def test_no_hook_left_on_the_shared_model_after_success_failure_and_cancel(
    comfy_inprocess, loaded_checkpoint, monkeypatch
):
    import comfy.model_management as mm
    import comfy.utils

    node = comfy_inprocess.nodes.capture_image.DiffSketchCaptureFromImage
    model, clip, vae = loaded_checkpoint
    wrappers_before = {k: dict(v) for k, v in model.wrappers.items()}
    picture = torch.from_numpy(PICTURE).float()[None] / 255
    args = (model, clip, vae, picture, "a horse", 10, 0, (1, 501, 901))

    with torch.inference_mode():
        used, replay, features = node.execute(*args).result
    assert used.shape == (1, 64, 64, 3) and replay.shape == (1, 64, 64, 3) and features.size == (64, 64)
    torch.testing.assert_close(used, picture[:, CROP[0], CROP[1]])
    assert features.meta["picture_fit"]["source"] == [100, 70]
    assert hook_count(model, vae) == 0

    class Stops(comfy.utils.ProgressBar):
        """The node's progress bar; at step 2 of inversion + replay it fails, or presses Cancel."""

        def update_absolute(self, value, total=None, preview=None):
            super().update_absolute(value, total, preview)
            if value == 2:
                if self.cancel:
                    mm.interrupt_current_processing(True)
                else:
                    raise RuntimeError("boom")

    for cancel, error in ((False, RuntimeError), (True, mm.InterruptProcessingException)):
        monkeypatch.setattr(Stops, "cancel", cancel, raising=False)
        monkeypatch.setattr(comfy.utils, "ProgressBar", Stops)
        try:
            with torch.inference_mode(), pytest.raises(error):
                node.execute(*args)
        finally:
            mm.interrupt_current_processing(False)
        assert hook_count(model, vae) == 0
        assert {k: dict(v) for k, v in model.wrappers.items()} == wrappers_before
