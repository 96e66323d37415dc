"""Tier 2: the MODEL's parameterisation travels with what DiffSketch makes from it. An example
captured through ComfyUI's ModelSamplingDiscrete node (v_prediction, zsnr) and trained on the
checkpoint's own MODEL (epsilon) is refused with both named; so is a generator trained on the
plain MODEL and run through the patched one."""

from __future__ import annotations

import pytest
from comfy_harness import error_message

pytestmark = pytest.mark.comfyui

SIZE = {"width": 64, "height": 64}
PLAIN, PATCHED = ["1", 0], ["2", 0]


def _graph() -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {
            "class_type": "ModelSamplingDiscrete",
            "inputs": {"model": PLAIN, "sampling": "v_prediction", "zsnr": True},
        },
        "3": {
            "class_type": "DiffSketchFitConditions",
            "inputs": {
                "clip": ["1", 1], "prompts": "a horse\na cat\na city\na bowl of fruit", "components": 2,
                "seed": 0, "save_name": "identity",
            },
        },
        "4": {
            "class_type": "DiffSketchLoadClipLoss",
            "inputs": {
                "clip_name": "clip_vit_b_32.safetensors",
                "lpips_weights": "alexnet-owt-7be5be79.safetensors",
                "quick_gelu": True,
            },
        },
        "5": {"class_type": "DiffSketchTimestepsPreset", "inputs": {"preset": "custom", "custom": "1, 501, 901"}},
    }  # fmt: skip


def _sample_and_train(graph: dict, sample_model: list, train_model: list) -> None:
    graph["6"] = {
        "class_type": "DiffSketchSample",
        "inputs": {
            "model": sample_model, "clip": ["1", 1], "vae": ["1", 2], "prompt": "a horse", "seed": 1,
            "steps": 10, "cfg": 5.0, **SIZE, "timesteps": ["5", 0],
        },
    }  # fmt: skip
    graph["7"] = {
        "class_type": "DiffSketchTrain",
        "inputs": {
            "model": train_model, "clip": ["1", 1], "vae": ["1", 2], "features": ["6", 2], "sketch": ["6", 0],
            "conditions": ["3", 0], "loss_models": ["4", 0], "iterations": 1, "learning_rate": 1e-4, "h_iter": 1,
            "lpips_weight": 15.0, "l1_weight": 30.0, "clip_weight": 30.0, "across_weight": 1.0,
            "within_weight": 1.0, "timestep_policy": "fixed", "schedule": "fast", "low_memory": False, "seed": 0,
            "save_name": "identity", "resume_from": "(start fresh)", "checkpoint_every": 1,
        },
    }  # fmt: skip


def test_an_example_through_model_sampling_discrete_is_refused_on_the_plain_model(comfy_server, loss_files):
    graph = _graph()
    _sample_and_train(graph, PATCHED, PLAIN)
    entry = comfy_server.run(graph)
    assert entry["status"]["status_str"] == "error"
    message = error_message(entry)
    assert "the example was made with v-prediction on a zero-terminal-SNR schedule" in message, message
    assert "the model you train on samples epsilon-prediction" in message, message
    assert "ModelSamplingDiscrete" in message, message


def test_a_generator_of_the_plain_model_is_refused_through_model_sampling_discrete(comfy_server, loss_files):
    graph = _graph()
    _sample_and_train(graph, PLAIN, PLAIN)
    graph["8"] = {
        "class_type": "DiffSketchGenerate",
        "inputs": {
            "model": PATCHED, "clip": ["1", 1], "vae": ["1", 2], "generator": ["7", 0], "prompt": "a cat",
            "seed": 3, "steps": 10, "cfg": 5.0, **SIZE,
        },
    }  # fmt: skip
    graph["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 1]}}
    entry = comfy_server.run(graph)
    assert entry["status"]["status_str"] == "error"
    message = error_message(entry)
    assert "the generator was made with epsilon-prediction" in message, message
    assert "the model connected samples v-prediction on a zero-terminal-SNR schedule" in message, message
