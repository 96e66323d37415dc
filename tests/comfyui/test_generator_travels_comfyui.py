"""Tier 2 (issue 18): what a trained generator carries reaches every node that uses it, a rerun of
Distill on other pairs or settings trains on them, Load Generator lists generators only, and save
names accept any script but refuse Windows device names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from comfy_harness import error_message
from PIL import Image

pytestmark = pytest.mark.comfyui

PRESETS = {
    "three": "1, 501, 941",
    "thirteen": "21, 81, 181, 261, 341, 441, 521, 581, 661, 721, 801, 881, 961",  # not the paper's 13
}
CONDITIONS = "travel_stilé"  # a save name outside ASCII
SIZE = {"width": 64, "height": 64}


def _checkpoint():
    return {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}}


def _clip_loss():
    return {
        "class_type": "DiffSketchLoadClipLoss",
        "inputs": {
            "clip_name": "clip_vit_b_32.safetensors",
            "lpips_weights": "alexnet-owt-7be5be79.safetensors",
            "quick_gelu": True,
        },
    }


def _fit_conditions(save_name, prompts="a horse\na cat\na city at night\na bowl of fruit\na mountain lake"):
    return {
        "class_type": "DiffSketchFitConditions",
        "inputs": {"clip": ["1", 1], "prompts": prompts, "components": 4, "seed": 0, "save_name": save_name},
    }


def _generate_and_distill(graph, prefix, generator, conditions, save_name, pair_count=2, batch_size=2):
    graph[f"{prefix}1"] = {
        "class_type": "DiffSketchGenerate",
        "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "generator": generator,
            "prompt": "a cat on a sofa", "seed": 3, "steps": 50, "cfg": 5.0, **SIZE,
        },
    }  # fmt: skip
    graph[f"{prefix}2"] = {
        "class_type": "SaveImage",
        "inputs": {"images": [f"{prefix}1", 1], "filename_prefix": save_name},
    }
    graph[f"{prefix}3"] = {
        "class_type": "DiffSketchDistill",
        "inputs": {
            "generator": generator, "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2],
            "conditions": conditions, "pair_count": pair_count, "iterations": 2, "batch_size": batch_size,
            "crop_size": 64, "learning_rate": 1e-3, "steps": 50, **SIZE, "seed": 0, "save_name": save_name,
        },
    }  # fmt: skip


def _saved_pixels(comfy_server, entry, node) -> np.ndarray:
    image = entry["outputs"][node]["images"][0]
    path = comfy_server.base / "output" / image["subfolder"] / image["filename"]
    return np.asarray(Image.open(path).convert("RGB"))


def _extractor_weights(comfy_server, name) -> dict:
    from diffsketch.distill.extractor import load_extractor

    path = comfy_server.base / "models" / "diffsketch" / "extractors" / f"{name}.safetensors"
    return load_extractor(path).state_dict()


def _shown(entry, node) -> str:
    """The text a node showed about the file it wrote (also in its history outputs)."""
    [text] = entry["outputs"][node]["text"]
    return text


def test_a_trained_generator_samples_alike_straight_from_train_and_from_its_file(comfy_server, loss_files):
    graph = {
        "1": _checkpoint(),
        "2": _fit_conditions(CONDITIONS),
        "3": _clip_loss(),
    }
    for k, (name, custom) in enumerate(PRESETS.items()):
        p = f"{k + 1}0"
        graph[f"{p}1"] = {
            "class_type": "DiffSketchTimestepsPreset",
            "inputs": {"preset": "custom", "custom": custom},
        }
        graph[f"{p}2"] = {
            "class_type": "DiffSketchSample",
            "inputs": {
                "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "prompt": "a horse", "seed": 1,
                "steps": 50, "cfg": 5.0, **SIZE, "timesteps": [f"{p}1", 0],
            },
        }  # fmt: skip
        graph[f"{p}3"] = {
            "class_type": "DiffSketchTrain",
            "inputs": {
                "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "features": [f"{p}2", 2],
                "sketch": [f"{p}2", 0], "conditions": ["2", 0], "loss_models": ["3", 0], "iterations": 2,
                "learning_rate": 1e-4, "h_iter": 2, "lpips_weight": 15.0, "l1_weight": 30.0, "clip_weight": 30.0,
                "across_weight": 1.0, "within_weight": 1.0, "timestep_policy": "fixed", "schedule": "fast",
                "low_memory": False, "seed": 0, "save_name": f"travel_{name}", "resume_from": "(start fresh)",
                "checkpoint_every": 1,
            },
        }  # fmt: skip
        _generate_and_distill(graph, f"{p}4", [f"{p}3", 0], ["2", 0], f"travel_{name}_memory")
    entry = comfy_server.run(graph)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    from_memory = {name: _saved_pixels(comfy_server, entry, f"{k + 1}042") for k, name in enumerate(PRESETS)}

    from diffsketch.train.generator import read_generator_header

    generators = comfy_server.base / "models" / "diffsketch" / "generators"
    header = read_generator_header(generators / "travel_thirteen.safetensors")
    assert header["timesteps"] == [int(t) for t in PRESETS["thirteen"].split(",")]
    assert header["schedule"] == "fast" and header["family"] == "sd1"
    assert (generators / "checkpoints" / "travel_three.train.safetensors").is_file()

    comfy_server.restart()
    options = comfy_server.get("/object_info/DiffSketchLoadGenerator")["DiffSketchLoadGenerator"]
    listed = options["input"]["required"]["generator_name"][1]["options"]
    assert {"travel_three.safetensors", "travel_thirteen.safetensors"} <= set(listed)
    assert not [n for n in listed if n.endswith(".train.safetensors")], listed

    graph = {
        "1": _checkpoint(),
        "2": {
            "class_type": "DiffSketchLoadConditions",
            "inputs": {"conditions_name": f"{CONDITIONS}.safetensors"},
        },
    }
    for k, name in enumerate(PRESETS):
        p = f"{k + 1}0"
        graph[f"{p}1"] = {
            "class_type": "DiffSketchLoadGenerator",
            "inputs": {"generator_name": f"travel_{name}.safetensors"},
        }
        _generate_and_distill(graph, f"{p}4", [f"{p}1", 0], ["2", 0], f"travel_{name}_file")
    entry = comfy_server.run(graph)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    for k, name in enumerate(PRESETS):
        assert np.array_equal(_saved_pixels(comfy_server, entry, f"{k + 1}042"), from_memory[name]), name
        memory, file = (
            _extractor_weights(comfy_server, f"travel_{name}_memory"),
            _extractor_weights(comfy_server, f"travel_{name}_file"),
        )
        assert memory.keys() == file.keys() and all(torch.equal(memory[t], file[t]) for t in memory), name

    # More pairs on the finished Distill: the new pairs are trained on (a new extractor); then
    # another batch size: a new extractor again, where it used to be a dead end.
    before = first = _extractor_weights(comfy_server, "travel_three_file")
    reruns = ((3, 2, "pairs: 2 -> 3"), (3, 1, "batch_size: 2 -> 1"))
    for rerun, (pair_count, batch_size, expected) in enumerate(reruns, start=1):
        graph = {"1": _checkpoint(), "2": graph["2"], "101": graph["101"]}
        _generate_and_distill(
            graph,
            "104",
            ["101", 0],
            ["2", 0],
            "travel_three_file",
            pair_count=pair_count,
            batch_size=batch_size,
        )
        entry = comfy_server.run(graph)
        assert entry["status"]["status_str"] == "success", error_message(entry)
        assert f"training a new student from step 0 on 3 pairs: {expected}" in comfy_server.log_text()
        # the earlier extractor is kept; the new one is numbered, and the node says so
        numbered = f"travel_three_file_{rerun:05}"
        assert _shown(entry, "1043") == f"saved extractor {numbered}.safetensors"
        after = _extractor_weights(comfy_server, numbered)
        assert not all(torch.equal(before[t], after[t]) for t in before), (pair_count, batch_size)
        before = after
    kept = _extractor_weights(comfy_server, "travel_three_file")
    assert all(torch.equal(kept[t], first[t]) for t in kept)  # the first run's extractor is untouched


def test_save_names_refuse_windows_device_names(comfy_server):
    graph = {
        "1": _checkpoint(),
        "2": _fit_conditions("con"),
    }
    entry = comfy_server.run(graph)
    assert entry["status"]["status_str"] == "error"
    assert "save_name" in error_message(entry) and "Windows device name" in error_message(entry)


def test_a_reused_save_name_keeps_every_earlier_file_and_resuming_continues_the_run(comfy_server, loss_files):
    """Fit Conditions and Train run again under the same save names: the earlier files stay as they
    were and the new ones are numbered, as the nodes show; resuming a run continues its checkpoint."""
    from diffsketch.fileio import read_header

    models = comfy_server.base / "models" / "diffsketch"
    generators = models / "generators"

    def graph(seed, components=4, resume_from="(start fresh)", iterations=2):
        conditions = _fit_conditions("reused_conditions")
        conditions["inputs"]["components"] = components
        return {
            "1": _checkpoint(),
            "2": conditions,
            "3": _clip_loss(),
            "4": {"class_type": "DiffSketchTimestepsPreset", "inputs": {"preset": "custom", "custom": "1, 501"}},
            "5": {
                "class_type": "DiffSketchSample",
                "inputs": {
                    "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "prompt": "a horse", "seed": 1,
                    "steps": 10, "cfg": 5.0, **SIZE, "timesteps": ["4", 0],
                },
            },
            "6": {
                "class_type": "DiffSketchTrain",
                "inputs": {
                    "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "features": ["5", 2], "sketch": ["5", 0],
                    "conditions": ["2", 0], "loss_models": ["3", 0], "iterations": iterations, "learning_rate": 1e-4,
                    "h_iter": 2, "lpips_weight": 15.0, "l1_weight": 30.0, "clip_weight": 30.0, "across_weight": 1.0,
                    "within_weight": 1.0, "timestep_policy": "fixed", "schedule": "fast", "low_memory": False,
                    "seed": seed, "save_name": "reused", "resume_from": resume_from, "checkpoint_every": 1,
                },
            },
        }  # fmt: skip

    entry = comfy_server.run(timeout=1800, graph=graph(seed=0))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    assert _shown(entry, "2") == "saved conditions reused_conditions.safetensors"
    assert (
        _shown(entry, "6")
        == "saved generator reused.safetensors (checkpoint to resume from: reused.train.safetensors)"
    )
    first = {
        path: path.read_bytes()
        for path in (
            models / "conditions" / "reused_conditions.safetensors",
            generators / "reused.safetensors",
            generators / "checkpoints" / "reused.train.safetensors",
        )
    }

    # a new run under the same names (other settings, so ComfyUI runs the nodes again)
    entry = comfy_server.run(timeout=1800, graph=graph(seed=1, components=3))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    assert _shown(entry, "2") == "saved conditions reused_conditions_00001.safetensors"
    assert _shown(entry, "6") == (
        "saved generator reused_00001.safetensors (checkpoint to resume from: reused_00001.train.safetensors)"
    )
    assert "reused is taken by an earlier run: this run saves as reused_00001" in comfy_server.log_text()
    assert all(path.read_bytes() == data for path, data in first.items())
    assert read_header(generators / "checkpoints" / "reused_00001.train.safetensors")["step"] == 2

    # resuming the first run continues its own checkpoint; its finished generator is kept
    entry = comfy_server.run(
        timeout=1800, graph=graph(seed=0, resume_from="reused.train.safetensors", iterations=3)
    )
    assert entry["status"]["status_str"] == "success", error_message(entry)
    checkpoint = generators / "checkpoints" / "reused.train.safetensors"
    assert f"resuming training from {checkpoint} at step 2" in comfy_server.log_text()
    assert read_header(checkpoint)["step"] == 3
    assert _shown(entry, "6") == (
        "saved generator reused_00002.safetensors (checkpoint to resume from: reused.train.safetensors)"
    )
    assert (generators / "reused.safetensors").read_bytes() == first[generators / "reused.safetensors"]
