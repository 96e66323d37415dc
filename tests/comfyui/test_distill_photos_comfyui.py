"""Tier 2: DiffSketch Distill with a photos batch in a real ComfyUI, on the random-weight
checkpoint: photo pairs are made, the manifest records their sources, the extractor's header says
what it was trained on and the node shows how the photos replayed."""

from __future__ import annotations

import json

import pytest
from comfy_harness import error_message
from test_distill_interrupt_comfyui import distill_env, distill_graph  # noqa: F401 (distill_env: a fixture)

pytestmark = pytest.mark.comfyui


def test_distill_with_photos_makes_photo_pairs_and_says_so(comfy_server, distill_env):  # noqa: F811
    from diffsketch.distill.extractor import load_extractor

    graph = distill_graph("with_photos")
    graph["5"] = {  # two 96x80 photos: fitted (resized to cover, centre-cropped) to the 64x64 pairs
        "class_type": "EmptyImage",
        "inputs": {"width": 96, "height": 80, "batch_size": 2, "color": 0x7F3F10},
    }
    graph["4"]["inputs"].update(pair_count=3, iterations=2, photos=["5", 0], photo_share=0.5)
    entry = comfy_server.run(graph)
    assert entry["status"]["status_str"] == "success", error_message(entry)

    [manifest_path] = (distill_env / "pairs" / "with_photos").glob("*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["done"] == [[0, 2]] and manifest["settings"]["photo_share"] == 0.5
    # 3 pairs at share 0.5: pairs 0 and 2 from the photos, pair 1 generated
    records = manifest["photo_pairs"]
    assert sorted(records) == ["0", "2"]
    assert [records[k]["photo"] for k in ("0", "2")] == ["photos[0]", "photos[1]"]
    assert all(isinstance(r["replay_psnr"], float) and r["variant"] == 0 for r in records.values())

    sources = load_extractor(distill_env / "extractors" / "with_photos.safetensors").meta["pair_sources"]
    assert sources == {
        "generated": 1,
        "photos": 2,
        "photo_set": manifest["settings"]["photo_set"],
        "photo_share": 0.5,
    }
    shown = entry["outputs"]["4"]["text"]
    assert any("2 of 3 pairs come from 2 photo(s)" in text for text in shown), shown
    assert shown[-1] == "saved extractor with_photos.safetensors"
