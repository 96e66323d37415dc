"""Tier 2: extractor loader + extract nodes in a real ComfyUI server."""

from __future__ import annotations

import torch
from comfy_harness import error_message

from diffsketch.distill.extractor import SketchExtractor, save_extractor


def _messages(entry, kind):
    return [data for k, data in entry["status"]["messages"] if k == kind]


def extract_graph(name, contrast=1.0, batch=2):
    return {
        "1": {"class_type": "DiffSketchLoadExtractor", "inputs": {"extractor_name": name}},
        "2": {
            "class_type": "EmptyImage",
            "inputs": {"width": 96, "height": 80, "batch_size": batch, "color": 0x7F3F10},
        },
        "3": {
            "class_type": "DiffSketchExtract",
            "inputs": {
                "extractor": ["1", 0],
                "image": ["2", 0],
                "invert": False,
                "contrast": contrast,
                "tile": 1024,
            },
        },
        "4": {
            "class_type": "SaveImage",
            "inputs": {"images": ["3", 0], "filename_prefix": "diffsketch_extract"},
        },
        "5": {"class_type": "MaskToImage", "inputs": {"mask": ["3", 1]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }


def test_extract_batch_twice_without_reloading(comfy_server):
    folder = comfy_server.base / "models" / "diffsketch" / "extractors"
    torch.manual_seed(0)
    save_extractor(
        folder / "random_style.safetensors", SketchExtractor(), {"note": "random weights for tests"}
    )
    info = comfy_server.get("/object_info/DiffSketchLoadExtractor")["DiffSketchLoadExtractor"]
    assert "random_style.safetensors" in info["input"]["required"]["extractor_name"][1]["options"]

    first = comfy_server.run(extract_graph("random_style.safetensors", 1.0))
    assert first["status"]["status_str"] == "success", error_message(first)
    assert len(first["outputs"]["4"]["images"]) == 2
    second = comfy_server.run(extract_graph("random_style.safetensors", 2.0))
    assert second["status"]["status_str"] == "success", error_message(second)
    cached = [n for data in _messages(second, "execution_cached") for n in data["nodes"]]
    assert "1" in cached, "the loader must not run again: the loaded extractor is reused"
    assert "3" not in cached


def test_corrupt_extractor_file_is_a_clear_error(comfy_server):
    folder = comfy_server.base / "models" / "diffsketch" / "extractors"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    entry = comfy_server.run(extract_graph("broken.safetensors"))
    assert entry["status"]["status_str"] == "error"
    assert "broken.safetensors" in error_message(entry) and "corrupt" in error_message(entry)


def style_graph(style):
    return {
        "2": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0x808080},
        },
        "3": {"class_type": "DiffSketchStyleSketch", "inputs": {"image": ["2", 0], "style": style}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        "5": {
            "class_type": "DiffSketchXDoG",
            "inputs": {
                "image": ["2", 0],
                "sigma": 0.5,
                "k": 200.0,
                "gamma": 0.98,
                "epsilon": 0.1,
                "phi": 10.0,
            },
        },
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }


def test_style_sketch_nodes(comfy_server):
    from diffsketch.styles import build_style, save_style_weights

    entry = comfy_server.run(style_graph("informative_anime"))
    assert entry["status"]["status_str"] == "error"
    assert "informative_anime.safetensors" in error_message(entry)
    folder = comfy_server.base / "models" / "diffsketch" / "styles"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_style_weights(folder / "informative_anime.safetensors", build_style("informative_anime"))
    entry = comfy_server.run(style_graph("informative_anime"))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    assert entry["outputs"]["4"]["images"] and entry["outputs"]["6"]["images"]


def test_extract_runs_in_float32_under_comfyuis_force_fp32(comfy_inprocess, monkeypatch):
    """ComfyUI's --force-fp32 (comfy.cli_args.args.force_fp32) makes the Extract node run in float32;
    without it the node runs at the library's default (bfloat16 here, whatever this CPU is)."""
    import importlib

    import comfy.cli_args

    import diffsketch.distill.extract as extract_module
    from diffsketch.distill.extract import extract

    monkeypatch.setattr(extract_module, "cpu_has_native_bf16", lambda: True)
    nodes = importlib.import_module(f"{comfy_inprocess.__name__}.nodes.extract")
    torch.manual_seed(0)
    model = SketchExtractor().eval()
    image = torch.rand(1, 40, 56, 3, generator=torch.Generator().manual_seed(1))
    fp32, _ = extract(model, image, dtype="fp32")

    def node_sketch(force_fp32):
        monkeypatch.setattr(comfy.cli_args.args, "force_fp32", force_fp32)
        output = nodes.DiffSketchExtract.execute(nodes.wrap_extractor(model), image, False, 1.0, 1024)
        return output.result[0]

    assert torch.equal(node_sketch(True), fp32)
    assert not torch.equal(node_sketch(False), fp32)
