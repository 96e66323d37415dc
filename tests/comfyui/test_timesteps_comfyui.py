"""Tier 2: the timestep analysis node runs in real ComfyUI and its output drives DiffSketch Sample."""

from __future__ import annotations

from comfy_harness import error_message


def test_analysis_node_drives_sample(comfy_server):
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {
            "class_type": "DiffSketchTimesteps",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "vae": ["1", 2],
                "samples": 2,
                "steps": 10,
                "k": 3,
                "seed": 0,
                "width": 64,
                "height": 64,
                "prompts": "a horse\na city at night",
            },
        },
        "3": {
            "class_type": "DiffSketchSample",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "vae": ["1", 2],
                "prompt": "a horse",
                "seed": 1,
                "steps": 10,
                "cfg": 5.0,
                "width": 64,
                "height": 64,
                "timesteps": ["2", 0],
            },
        },
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["2", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["2", 3]}},
    }
    logged_before = len(comfy_server.log_text())

    def log_of_this_run():
        return comfy_server.log_text()[logged_before:]

    entry = comfy_server.run(graph)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    for node in ("4", "5", "6", "7"):
        assert len(entry["outputs"][node]["images"]) == 1
    text = " ".join(entry["outputs"]["2"]["text"])
    assert "3 representative timesteps (given) from 2 images x 10 timesteps" in text
    chosen = [int(t) for t in text.split("x 10 timesteps: ")[1].split(".")[0].split(", ")]
    # Sample captured exactly the chosen timesteps (its log line of this run), not its default ones
    assert len(chosen) == 3
    assert "3 timesteps x 12 UNet taps (uncond+cond), " in log_of_this_run()
    assert f"timesteps {chosen} on the 10-step DDIM grid" in log_of_this_run()


def test_k_larger_than_timesteps_is_a_clear_error(comfy_server):
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {
            "class_type": "DiffSketchTimesteps",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "vae": ["1", 2],
                "samples": 1,
                "steps": 5,
                "k": 9,
                "seed": 0,
                "width": 64,
                "height": 64,
                "prompts": "a horse",
            },
        },
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}},
    }
    entry = comfy_server.run(graph)
    assert entry["status"]["status_str"] == "error"
    assert "k=9 must lie in 1..5: the 5-step grid has 5 timesteps to cluster" in error_message(entry)
