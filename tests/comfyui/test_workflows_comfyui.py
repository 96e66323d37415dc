"""Tier 2: the example workflows. The API twins match the UI files, and every workflow runs to
completion in a real ComfyUI (tiny random-weight SD1.5 checkpoint, tiny CLIP and AlexNet weight
files, small sizes and iteration counts overridden), producing files that load after a restart."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_harness import REPO, error_message, running_server, write_loss_weights
from PIL import Image

sys.path.insert(0, str(REPO / "tools"))
from make_workflows import template_files  # noqa: E402
from workflow_format import api_equal, ui_to_api  # noqa: E402

TEMPLATES = template_files()  # key -> file stem in workflows/

SMALL = {
    "DiffSketchSample": {"width": 64, "height": 64},
    "DiffSketchFitConditions": {
        "prompts": "a horse\na cat\na city at night\na bowl of fruit\na mountain lake",
        "components": 4,
    },
    "DiffSketchTrain": {"iterations": 3, "schedule": "fast", "checkpoint_every": 2},
    "DiffSketchGenerate": {"width": 64, "height": 64, "steps": 50},
    "DiffSketchDistill": {
        "pair_count": 2,
        "iterations": 3,
        "batch_size": 2,
        "crop_size": 64,
        "width": 64,
        "height": 64,
    },
    "DiffSketchLoadClipLoss": {"lpips_weights": "alexnet-owt-7be5be79.safetensors"},
}


def load_api(key: str, small: bool = True) -> dict:
    api = json.loads((REPO / "workflows" / "api" / f"{key}.json").read_text(encoding="utf-8"))
    if small:
        api = copy.deepcopy(api)
        for node in api.values():
            node["inputs"].update(SMALL.get(node["class_type"], {}))
    return api


@pytest.fixture(scope="module")
def workflow_env(comfy_server, tiny_checkpoint, sdxl_checkpoint):
    base = comfy_server.base
    ckpt = base / "models" / "checkpoints" / "v1-5-pruned-emaonly-fp16.safetensors"
    if not ckpt.exists():
        ckpt.symlink_to(tiny_checkpoint)
    sdxl = base / "models" / "checkpoints" / "sd_xl_base_1.0.safetensors"
    if not sdxl.exists():
        sdxl.symlink_to(sdxl_checkpoint)
    write_loss_weights(base / "models" / "diffsketch")
    inputs = base / "input"
    inputs.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(inputs / "example.png")
    return base


def test_every_template_has_twin_and_thumbnail_and_nothing_else_is_listed():
    folder = REPO / "workflows"
    assert sorted(p.stem for p in folder.glob("*.json")) == sorted(TEMPLATES.values())
    assert sorted(p.stem for p in (folder / "api").glob("*.json")) == sorted(TEMPLATES)
    for stem in TEMPLATES.values():
        assert (folder / f"{stem}.jpg").is_file(), stem


@pytest.mark.parametrize("key", list(TEMPLATES))
def test_api_twin_matches_ui_file(comfy_server, key):
    object_info = comfy_server.get("/object_info")
    ui = json.loads((REPO / "workflows" / f"{TEMPLATES[key]}.json").read_text(encoding="utf-8"))
    assert api_equal(ui_to_api(ui, object_info), load_api(key, small=False)) == []


def test_train_before_example_exists_names_the_missing_input(comfy_server, workflow_env):
    result = comfy_server.post_raw("/prompt", {"prompt": load_api("train_style")})
    body = json.loads(result["body"])
    # The sketch loader fails validation with the file name; the training branch is not run (the
    # conditions node, an output node of its own, may still run: ComfyUI runs the valid outputs).
    errors = body["node_errors"]
    assert errors["3"]["class_type"] == "LoadImage"
    assert "diffsketch_sketch.png" in json.dumps(errors["3"]["errors"])
    assert {"6", "7", "10"} <= set(errors["3"]["dependent_outputs"])
    if result["status"] == 200:
        comfy_server.wait(body["prompt_id"])


def test_workflows_run_end_to_end(comfy_server, workflow_env):
    from diffsketch.distill.extractor import load_extractor
    from diffsketch.train.generator import load_generator

    base = workflow_env
    runs = {}
    entry = comfy_server.run(load_api("make_example"))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    runs["1"] = entry
    example = (
        base
        / "output"
        / entry["outputs"]["3"]["images"][0]["subfolder"]
        / entry["outputs"]["3"]["images"][0]["filename"]
    )
    # "draw" over the example: here its XDoG sketch stands in for the user's drawing
    from diffsketch.styles.xdog import xdog

    img = torch.from_numpy(np.asarray(Image.open(example).convert("RGB"), dtype=np.float32) / 255).permute(
        2, 0, 1
    )
    sketch = (xdog(img[None])[0, 0].numpy() * 255).astype(np.uint8)
    Image.fromarray(sketch).save(base / "input" / "diffsketch_sketch.png")

    for key in ("train_style", "distill", "extract", "quick_start"):
        entry = comfy_server.run(load_api(key))
        assert entry["status"]["status_str"] == "success", f"{key}: {error_message(entry)}"
        runs[key] = entry
    models = base / "models" / "diffsketch"
    assert (models / "conditions" / "default_conditions.safetensors").is_file()
    load_generator(models / "generators" / "my_style.safetensors")
    load_extractor(models / "extractors" / "my_style_extractor.safetensors")
    load_generator(models / "generators" / "quick_style.safetensors")
    load_extractor(models / "extractors" / "quick_style_extractor.safetensors")
    assert runs["extract"]["outputs"]["4"]["images"]
    assert runs["quick_start"]["outputs"]["9"]["images"]

    # the files load again in a fresh server
    comfy_server.restart()
    entry = comfy_server.run(load_api("extract"))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    gens = comfy_server.get("/object_info/DiffSketchLoadGenerator")["DiffSketchLoadGenerator"]
    assert "my_style.safetensors" in gens["input"]["required"]["generator_name"][1]["options"]


def test_teach_from_your_own_drawing_runs_end_to_end(comfy_server, workflow_env):
    """Template 7 on a picture the checkpoint never made: Capture from Image (inversion + replay)
    -> Fit Conditions -> Train -> Distill -> Extract. The picture (100x70) is cropped to 64x64; the
    drawing, twice its size, is scaled and cropped the same way by Train."""
    from diffsketch.distill.extractor import load_extractor
    from diffsketch.styles.xdog import xdog
    from diffsketch.train.generator import load_generator

    rng = np.random.default_rng(7)
    inputs = workflow_env / "input"
    picture = rng.integers(0, 255, (70, 100, 3), dtype=np.uint8)
    Image.fromarray(picture).save(inputs / "diffsketch_picture.png")
    big = torch.from_numpy(picture.astype(np.float32) / 255).permute(2, 0, 1)[None]
    big = torch.nn.functional.interpolate(big, size=(140, 200), mode="bilinear", align_corners=False)
    drawing = (xdog(big)[0, 0].numpy() * 255).astype(np.uint8)
    Image.fromarray(drawing).save(inputs / "diffsketch_drawing.png")

    api = load_api("teach_from_drawing")
    (capture,) = [k for k, n in api.items() if n["class_type"] == "DiffSketchCaptureFromImage"]
    entry = comfy_server.run(api)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    models = workflow_env / "models" / "diffsketch"
    generator = load_generator(models / "generators" / "my_drawing_style.safetensors")
    assert generator.family == "sd1"
    example = generator.meta["example"]
    assert example["source"] == "picture" and (example["width"], example["height"]) == (64, 64)
    load_extractor(models / "extractors" / "my_drawing_style_extractor.safetensors")
    saved = [n for n in api if api[n]["class_type"] == "SaveImage"]
    (image,) = entry["outputs"][saved[0]]["images"]
    out = Image.open(workflow_env / "output" / image["subfolder"] / image["filename"])
    assert out.size == (100, 70)  # the extractor sketches the picture at its own size


def test_the_sdxl_quick_start_runs_end_to_end(comfy_server, workflow_env):
    """Sample & Capture -> XDoG -> Train -> Distill -> Extract on an SDXL checkpoint ComfyUI detects
    as SDXL (sdxl_checkpoint.py), at 64x64: the files it writes record the SDXL family."""
    from diffsketch.distill.extractor import load_extractor
    from diffsketch.train.generator import load_generator

    api = load_api("quick_start_sdxl")
    assert {n["inputs"].get("ckpt_name") for n in api.values()} >= {"sd_xl_base_1.0.safetensors"}
    # the template trains on 512-px windows of its 1024-px samples; at 64 px, 32-px windows (a window
    # as large as the samples is refused)
    (train,) = [n for n in api.values() if n["class_type"] == "DiffSketchTrain"]
    assert train["inputs"]["sample_crop"] == 512
    train["inputs"]["sample_crop"] = 32
    entry = comfy_server.run(api)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    models = workflow_env / "models" / "diffsketch"
    generator = load_generator(models / "generators" / "quick_sdxl_style.safetensors")
    assert generator.family == "sdxl" and len(generator.spec.unet) == 9 and generator.spec.pooled_dim == 1280
    load_extractor(models / "extractors" / "quick_sdxl_style_extractor.safetensors")
    assert entry["outputs"]["9"]["images"]


@pytest.fixture(scope="module")
def dit_server(
    tmp_path_factory,
    tiny_checkpoint,
    artifacts_dir,
    zimage_files,
    zimage_text_encoder,
    flux_files,
    t5_text_encoders,
    comfy_server,
):
    """A server of its own for the Z-Image and Flux.1 quick starts, with the templates' file names:
    its ComfyUI builds Qwen3-4B and T5-XXL at the test text encoders' shrunk sizes (the
    dit_server_node custom node, see qwen3_checkpoint.py and t5_checkpoint.py), which the shared
    server's must not; stopped when the module ends. The shared server lets go of the models it
    keeps first: this one holds the 1.24 G-parameter Z-Image in float32 (5 GB), and CI machines have
    24 GB."""
    comfy_server.post("/free", {"unload_models": True, "free_memory": True})
    base = tmp_path_factory.mktemp("dit_base")
    (base / "custom_nodes").mkdir()
    node = Path(__file__).with_name("dit_server_node")
    (base / "custom_nodes" / "dit_server_node").symlink_to(node, target_is_directory=True)
    zimage, vae = zimage_files
    flux_dev, _, _ = flux_files
    t5xxl, clip_l = t5_text_encoders
    for folder, name, target in (
        ("diffusion_models", "z_image_turbo_bf16.safetensors", zimage),
        ("diffusion_models", "flux1-dev.safetensors", flux_dev),
        ("text_encoders", "qwen_3_4b.safetensors", zimage_text_encoder),
        ("text_encoders", "clip_l.safetensors", clip_l),
        ("text_encoders", "t5xxl_fp16.safetensors", t5xxl),
        ("vae", "ae.safetensors", vae),
    ):
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
        (base / "models" / folder / name).symlink_to(target)
    write_loss_weights(base / "models" / "diffsketch")
    with running_server(base, tiny_checkpoint, artifacts_dir) as server:
        yield server


def check_no_hooks_left(server, api: dict) -> None:
    """The graph ``api`` ran in ``server`` left no hook on the model and VAE its loaders keep (the
    Test Hook Count node of dit_server_node, given those loaders' outputs from the cache)."""
    (loader,) = [k for k, n in api.items() if n["class_type"] == "UNETLoader"]
    (vae,) = [k for k, n in api.items() if n["class_type"] == "VAELoader"]
    count = {"model": [loader, 0], "vae": [vae, 0]}
    check = {k: api[k] for k in (loader, vae)} | {"count": {"class_type": "TestHookCount", "inputs": count}}
    entry = server.run(check)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    assert entry["outputs"]["count"]["hooks"] == [0]


def test_the_zimage_quick_start_runs_end_to_end(dit_server):
    """Template 8 as the user loads it (UNETLoader, CLIPLoader type lumina2 with the Qwen3 file,
    VAELoader, ModelSamplingAuraFlow): Sample & Capture at cfg 1 -> XDoG -> Fit Conditions ->
    Train -> Distill -> Extract at 64x64; the files record the Z-Image family and one branch, and
    the graph leaves no hook on the model and VAE the loaders keep for the next graph."""
    from diffsketch.distill.extractor import load_extractor
    from diffsketch.train.generator import load_generator

    api = load_api("quick_start_zimage")
    inputs = {n["class_type"]: n["inputs"] for n in api.values()}
    assert inputs["UNETLoader"]["unet_name"] == "z_image_turbo_bf16.safetensors"
    assert (inputs["CLIPLoader"]["clip_name"], inputs["CLIPLoader"]["type"]) == (
        "qwen_3_4b.safetensors",
        "lumina2",
    )
    assert inputs["VAELoader"]["vae_name"] == "ae.safetensors"
    assert inputs["DiffSketchSample"]["cfg"] == 1.0 and "DiffSketchFitConditions" in inputs
    # the template trains on 512-px windows of its 1024-px samples; at 64 px, 32-px windows
    assert inputs["DiffSketchTrain"]["sample_crop"] == 512
    inputs["DiffSketchTrain"]["sample_crop"] = 32
    # Qwen3 gives each prompt its own length and the conditions are fitted at the longest one's: the
    # few short prompts stand in for the built-in list, and the example's prompt (Train's pivot)
    # must not be longer than all of them
    inputs["DiffSketchFitConditions"]["prompts"] += "\n" + inputs["DiffSketchSample"]["prompt"]
    entry = dit_server.run(api)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    models = dit_server.base / "models" / "diffsketch"
    generator = load_generator(models / "generators" / "quick_zimage_style.safetensors")
    assert generator.family == "zimage" and generator.branches == 1
    assert {t.channels for t in generator.spec.unet} == {3840} and generator.spec.context_dim == 2560
    extractor = load_extractor(models / "extractors" / "quick_zimage_style_extractor.safetensors")
    # its pairs were sampled from the Z-Image model (the layout fingerprint includes the family)
    assert extractor.meta["pair_settings"]["model_layout"] == generator.spec.fingerprint()
    assert (models / "conditions" / "zimage_conditions.safetensors").is_file()
    (saved,) = [k for k, n in api.items() if n["class_type"] == "SaveImage"]
    assert entry["outputs"][saved]["images"]
    check_no_hooks_left(dit_server, api)


def test_the_flux_quick_start_runs_end_to_end(dit_server):
    """Template 9 as the user loads it (UNETLoader with Flux.1 dev, DualCLIPLoader type flux with
    CLIP-L and the shrunk T5-XXL, VAELoader): Sample & Capture at cfg 1 with the real prompt path ->
    XDoG -> Fit Conditions -> Train -> Distill -> Extract at 64x64; the files record the Flux.1
    family and one branch, and the graph leaves no hook on the model and VAE the loaders keep."""
    from diffsketch.distill.extractor import load_extractor
    from diffsketch.train.conditions import ConditionSampler
    from diffsketch.train.generator import load_generator

    dit_server.post("/free", {"unload_models": True, "free_memory": True})  # the Z-Image test's models
    api = load_api("quick_start_flux")
    inputs = {n["class_type"]: n["inputs"] for n in api.values()}
    assert inputs["UNETLoader"]["unet_name"] == "flux1-dev.safetensors"
    clips = inputs["DualCLIPLoader"]
    assert (clips["clip_name1"], clips["clip_name2"], clips["type"]) == (
        "clip_l.safetensors",
        "t5xxl_fp16.safetensors",
        "flux",
    )
    assert inputs["VAELoader"]["vae_name"] == "ae.safetensors"
    assert inputs["DiffSketchSample"]["cfg"] == 1.0 and inputs["DiffSketchSample"]["steps"] == 20
    # the template trains on 512-px windows of its 1024-px samples; at 64 px, 32-px windows
    assert inputs["DiffSketchTrain"]["sample_crop"] == 512
    inputs["DiffSketchTrain"]["sample_crop"] = 32
    # Flux's text alone is 256 tokens of 3072 channels, so every transformer call costs seconds on a
    # CPU: 4 steps with 2 captured timesteps (a Timesteps node the template leaves out: the Flux
    # default's 4 need 8 steps), one Train iteration, one Distill pair (10 calls in all)
    api["timesteps"] = {
        "class_type": "DiffSketchTimestepsPreset",
        "inputs": {"preset": "custom", "custom": "499, 749"},
    }
    inputs["DiffSketchSample"]["timesteps"] = ["timesteps", 0]
    inputs["DiffSketchSample"]["steps"] = inputs["DiffSketchDistill"]["steps"] = 4
    inputs["DiffSketchTrain"].update(iterations=1, checkpoint_every=1)
    inputs["DiffSketchDistill"].update(pair_count=1, iterations=2, batch_size=1)
    entry = dit_server.run(api)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    models = dit_server.base / "models" / "diffsketch"
    generator = load_generator(models / "generators" / "quick_flux_style.safetensors")
    assert generator.family == "flux" and generator.branches == 1 and generator.timesteps == (499, 749)
    assert {t.channels for t in generator.spec.unet} == {3072}
    assert (generator.spec.context_dim, generator.spec.pooled_dim) == (4096, 768)
    extractor = load_extractor(models / "extractors" / "quick_flux_style_extractor.safetensors")
    assert extractor.meta["pair_settings"]["model_layout"] == generator.spec.fingerprint()
    conditions = ConditionSampler.load(models / "conditions" / "flux_conditions.safetensors")
    assert conditions.family == "flux" and conditions.token_length == 256
    (saved,) = [k for k, n in api.items() if n["class_type"] == "SaveImage"]
    assert entry["outputs"][saved]["images"]
    check_no_hooks_left(dit_server, api)
