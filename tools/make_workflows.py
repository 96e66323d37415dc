"""Write the example workflows: UI format in workflows/ (the template browser lists them), their
API-format twins in workflows/api/ (used by the tests), and a thumbnail per workflow.

The node schemas come from a real ComfyUI's ``/object_info`` so widget order and socket types match
what the frontend expects:

    COMFYUI_PATH=/path/to/ComfyUI python tools/make_workflows.py          # starts a server to ask
    python tools/make_workflows.py --object-info object_info.json        # or reuse a saved answer
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from workflow_format import api_equal, build_ui, graph_to_api, ui_to_api

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
PROMPT = "a photo of a horse in mud"
SEED = 50


def _ckpt():
    return {"type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": CHECKPOINT}}


def _sample():
    return {
        "type": "DiffSketchSample",
        "inputs": {"model": [1, 0], "clip": [1, 1], "vae": [1, 2]},
        "widgets": {"prompt": PROMPT, "seed": SEED, "steps": 50, "cfg": 5.0, "width": 512, "height": 512},
    }


def _loss_models():
    return {"type": "DiffSketchLoadClipLoss", "widgets": {"clip_name": "clip_vit_b_32.safetensors"}}


def _train(sketch_src, save_name="my_style"):
    return {
        "type": "DiffSketchTrain",
        "inputs": {
            "model": [1, 0],
            "clip": [1, 1],
            "vae": [1, 2],
            "features": [2, 2],
            "sketch": sketch_src,
            "conditions": [4, 0],
            "loss_models": [5, 0],
        },
        "widgets": {"save_name": save_name},
    }


def _distill(generator_src, conditions_src, loss_src, save_name="my_style_extractor"):
    return {
        "type": "DiffSketchDistill",
        "inputs": {
            "generator": generator_src,
            "model": [1, 0],
            "clip": [1, 1],
            "vae": [1, 2],
            "conditions": conditions_src,
            "loss_models": loss_src,
        },
        "widgets": {"save_name": save_name},
    }


def _grid(graph: dict) -> dict:
    """Lay nodes out left to right in dependency order, several per column."""
    nodes = graph["nodes"]
    depth = {}

    def d(nid):
        if nid not in depth:
            srcs = [str(src) for src, _ in nodes[nid].get("inputs", {}).values()]
            depth[nid] = 1 + max((d(s) for s in srcs), default=-1)
        return depth[nid]

    rows: dict[int, int] = {}
    for nid in nodes:
        col = d(nid)
        row = rows.get(col, 0)
        rows[col] = row + 1
        nodes[nid].setdefault("pos", [40 + 400 * col, 60 + 420 * row])
    return graph


def workflows() -> dict[str, dict]:
    """The five example graphs, keyed by file stem."""
    g = {}
    g["diffsketch_1_make_example"] = {
        "title": "1. Make the example image",
        "nodes": {
            "1": _ckpt(),
            "2": _sample(),
            "3": {
                "type": "SaveImage",
                "inputs": {"images": [2, 0]},
                "widgets": {"filename_prefix": "diffsketch/example"},
            },
        },
    }
    g["diffsketch_2_train_style"] = {
        "title": "2. Train a style from your sketch",
        "nodes": {
            "1": _ckpt(),
            "2": _sample(),
            "3": {
                "type": "LoadImage",
                "widgets": {"image": "diffsketch_sketch.png"},
                "title": "Your sketch of the example",
            },
            "4": {
                "type": "DiffSketchFitConditions",
                "inputs": {"clip": [1, 1]},
                "widgets": {"save_name": "default_conditions"},
            },
            "5": _loss_models(),
            "6": _train([3, 0]),
            "7": {"type": "PreviewImage", "inputs": {"images": [6, 1]}},
            "8": {
                "type": "SaveImage",
                "inputs": {"images": [6, 2]},
                "widgets": {"filename_prefix": "diffsketch/loss"},
            },
            "9": {
                "type": "DiffSketchGenerate",
                "inputs": {"model": [1, 0], "clip": [1, 1], "vae": [1, 2], "generator": [6, 0]},
                "widgets": {"prompt": "a photo of a cat on a sofa", "seed": 1, "width": 512, "height": 512},
            },
            "10": {
                "type": "SaveImage",
                "inputs": {"images": [9, 1]},
                "widgets": {"filename_prefix": "diffsketch/sketch"},
            },
        },
    }
    g["diffsketch_3_distill"] = {
        "title": "3. Distill the style into an extractor",
        "nodes": {
            "1": _ckpt(),
            "2": {"type": "DiffSketchLoadGenerator", "widgets": {"generator_name": "my_style.safetensors"}},
            "4": {
                "type": "DiffSketchLoadConditions",
                "widgets": {"conditions_name": "default_conditions.safetensors"},
            },
            "5": _loss_models(),
            "6": _distill([2, 0], [4, 0], [5, 0]),
            "7": {"type": "PreviewImage", "inputs": {"images": [6, 1]}},
        },
    }
    g["diffsketch_4_extract"] = {
        "title": "4. Extract sketches from images",
        "nodes": {
            "1": {
                "type": "DiffSketchLoadExtractor",
                "widgets": {"extractor_name": "my_style_extractor.safetensors"},
            },
            "2": {"type": "LoadImage", "widgets": {"image": "example.png"}},
            "3": {"type": "DiffSketchExtract", "inputs": {"extractor": [1, 0], "image": [2, 0]}},
            "4": {
                "type": "SaveImage",
                "inputs": {"images": [3, 0]},
                "widgets": {"filename_prefix": "diffsketch/extracted"},
            },
            "5": {"type": "MaskToImage", "inputs": {"mask": [3, 1]}},
            "6": {"type": "PreviewImage", "inputs": {"images": [5, 0]}},
        },
    }
    g["diffsketch_5_quick_start"] = {
        "title": "5. Quick start: XDoG example -> train -> distill -> extract",
        "nodes": {
            "1": _ckpt(),
            "2": _sample(),
            "3": {"type": "DiffSketchXDoG", "inputs": {"image": [2, 0]}},
            "4": {
                "type": "DiffSketchFitConditions",
                "inputs": {"clip": [1, 1]},
                "widgets": {"save_name": "default_conditions"},
            },
            "5": _loss_models(),
            # Names of its own, so the quick start never overwrites the style of workflows 2-4.
            "6": _train([3, 0], save_name="quick_style"),
            "7": _distill([6, 0], [4, 0], [5, 0], save_name="quick_style_extractor"),
            "8": {"type": "DiffSketchExtract", "inputs": {"extractor": [7, 0], "image": [2, 0]}},
            "9": {
                "type": "SaveImage",
                "inputs": {"images": [8, 0]},
                "widgets": {"filename_prefix": "diffsketch/quick"},
            },
            "10": {"type": "PreviewImage", "inputs": {"images": [6, 2]}},
        },
    }
    for graph in g.values():
        graph["nodes"] = {str(k): v for k, v in graph["nodes"].items()}
        for node in graph["nodes"].values():
            node["inputs"] = {k: [str(s), o] for k, (s, o) in node.get("inputs", {}).items()}
        _grid(graph)
    return g


def thumbnail(title: str, ui: dict, object_info: dict, path: Path) -> None:
    """A small diagram of the graph (nodes as boxes, links as lines) for the template browser."""
    from PIL import Image, ImageDraw, ImageFont

    nodes = ui["nodes"]
    cols = {n["id"]: round((n["pos"][0] - 40) / 400) for n in nodes}
    rows = {n["id"]: round((n["pos"][1] - 60) / 420) for n in nodes}
    w, h = 640, 400
    ncol, nrow = max(cols.values()) + 1, max(rows.values()) + 1
    cell_w, cell_h = (w - 20) / ncol, min(90, (h - 50) / nrow)
    img = Image.new("RGB", (w, h), (250, 248, 242))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((12, 12), title, fill=(20, 20, 20), font=font)
    boxes = {}
    for n in nodes:
        bx, by = 10 + cols[n["id"]] * cell_w, 50 + rows[n["id"]] * cell_h
        boxes[n["id"]] = (bx + 4, by + 4, bx + cell_w - 8, by + cell_h - 14)
    for link in ui["links"]:
        a, b = boxes[link[1]], boxes[link[3]]
        draw.line([(a[2], (a[1] + a[3]) / 2), (b[0], (b[1] + b[3]) / 2)], fill=(120, 120, 120), width=2)
    chars = max(4, int((cell_w - 16) / 6))
    for n in nodes:
        box = boxes[n["id"]]
        ours = n["type"].startswith("DiffSketch")
        draw.rounded_rectangle(
            box, radius=6, fill=(40, 40, 40) if ours else (200, 200, 200), outline=(0, 0, 0)
        )
        label = object_info[n["type"]].get("display_name", n["type"]).replace("DiffSketch ", "")
        words, lines = label.split(), [""]
        for word in words:  # wrap into the box
            if len(lines[-1]) + len(word) + 1 > chars and lines[-1]:
                lines.append("")
            lines[-1] = (lines[-1] + " " + word).strip()
        for k, line in enumerate(lines[:3]):
            draw.text(
                (box[0] + 5, box[1] + 6 + 12 * k),
                line[:chars],
                fill=(255, 255, 255) if ours else (0, 0, 0),
                font=font,
            )
    img.save(path, quality=90)


def fetch_object_info() -> dict:
    sys.path.insert(0, str(REPO / "tests" / "comfyui"))
    import tempfile

    from comfy_harness import ComfyServer

    base = Path(tempfile.mkdtemp(prefix="diffsketch_objinfo_"))
    dummy = base / "none.safetensors"
    dummy.write_bytes(b"")
    server = ComfyServer(base, dummy, base).start()
    try:
        return server.get("/object_info")
    finally:
        server.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--object-info", help="a saved /object_info JSON (default: ask a server started from COMFYUI_PATH)"
    )
    ap.add_argument("--out", default=str(REPO / "workflows"))
    args = ap.parse_args()
    if args.object_info:
        object_info = json.loads(Path(args.object_info).read_text())
    elif os.environ.get("COMFYUI_PATH"):
        object_info = fetch_object_info()
    else:
        sys.exit("give --object-info FILE or set COMFYUI_PATH")
    out = Path(args.out)
    (out / "api").mkdir(parents=True, exist_ok=True)
    for stem, graph in workflows().items():
        ui = build_ui(graph, object_info)
        ui["extra"]["diffsketch_title"] = graph["title"]
        api = graph_to_api(graph, object_info)
        diffs = api_equal(ui_to_api(ui, object_info), api)
        if diffs:
            sys.exit(f"{stem}: the UI layout does not convert back to its graph: {diffs}")
        (out / f"{stem}.json").write_text(json.dumps(ui, indent=2) + "\n")
        (out / "api" / f"{stem}.json").write_text(json.dumps(api, indent=2) + "\n")
        thumbnail(graph["title"], ui, object_info, out / f"{stem}.jpg")
        print(f"wrote {stem}: {len(ui['nodes'])} nodes")


if __name__ == "__main__":
    main()
