"""Tier 2: Cancel (``/interrupt``) during Distill's student training keeps the progress.

ComfyUI raises its interrupt from the progress callback, not through ``should_stop``; the student
loop must write a checkpoint before the exception leaves it, and running the node again must
continue from that checkpoint and end with the extractor an uninterrupted run makes.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from comfy_harness import error_message

pytestmark = pytest.mark.comfyui

ITERATIONS = 400
TIMESTEPS = (1, 501)


@pytest.fixture(scope="module")
def distill_env(comfy_server, comfy_inprocess, loaded_checkpoint):
    """A small random generator for the tiny checkpoint and a conditions file, in the server's folders."""
    from diffsketch.train.conditions import ConditionSampler
    from diffsketch.train.generator import GeneratorConfig, SketchGenerator, save_generator

    model, clip, vae = loaded_checkpoint
    backend = comfy_inprocess.nodes.comfy_backend.ComfyBackend(model, clip, vae)
    torch.manual_seed(0)
    config = GeneratorConfig.from_spec(
        backend.spec,
        len(TIMESTEPS),
        lower_dim=32,
        higher_dim=16,
        lower_groups=4,
        higher_groups=4,
        final_width=16,
    )
    models = comfy_server.base / "models" / "diffsketch"
    save_generator(
        models / "generators" / "interrupt_test.safetensors",
        SketchGenerator(backend.spec, config),
        {"timesteps": list(TIMESTEPS)},
    )
    embeddings = torch.randn(6, 77, backend.spec.context_dim, generator=torch.Generator().manual_seed(0))
    ConditionSampler.fit(embeddings, n_components=3).save(
        models / "conditions" / "interrupt_test.safetensors"
    )
    return models


def distill_graph(save_name: str) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {
            "class_type": "DiffSketchLoadGenerator",
            "inputs": {"generator_name": "interrupt_test.safetensors"},
        },
        "3": {
            "class_type": "DiffSketchLoadConditions",
            "inputs": {"conditions_name": "interrupt_test.safetensors"},
        },
        "4": {
            "class_type": "DiffSketchDistill",
            "inputs": {
                "generator": ["2", 0],
                "model": ["1", 0],
                "clip": ["1", 1],
                "vae": ["1", 2],
                "conditions": ["3", 0],
                "pair_count": 2,
                "iterations": ITERATIONS,
                "batch_size": 2,
                "crop_size": 64,
                "learning_rate": 0.001,
                "steps": 10,
                "width": 64,
                "height": 64,
                "seed": 0,
                "save_name": save_name,
            },
        },
    }


def _manifest_complete(folder) -> bool:
    for manifest in folder.glob("*/manifest.json"):
        try:
            if json.loads(manifest.read_text())["done"] == [[0, 1]]:
                return True
        except (OSError, ValueError, KeyError):
            pass  # being rewritten
    return False


def test_interrupt_during_student_training_resumes_to_the_same_extractor(comfy_server, distill_env):
    from diffsketch.distill import STUDENT_CHECKPOINT_PREFIX
    from diffsketch.distill.extractor import load_extractor
    from diffsketch.distill.student import DISTILL_CHECKPOINT_KIND
    from diffsketch.fileio import read_header

    pairs = distill_env / "pairs" / "interrupted"
    pid = comfy_server.post(
        "/prompt", {"prompt": distill_graph("interrupted"), "client_id": "interrupt-test"}
    )["prompt_id"]
    deadline = time.time() + 1800
    while not _manifest_complete(pairs):  # the pairs are written: student training starts now
        assert time.time() < deadline, "pair generation did not finish"
        time.sleep(0.2)
    time.sleep(1.0)
    comfy_server.post("/interrupt", {})
    entry = comfy_server.wait(pid)
    assert entry["status"]["status_str"] == "error"
    assert any(kind == "execution_interrupted" for kind, _ in entry["status"]["messages"]), error_message(
        entry
    )
    # one checkpoint per student run, named by its pairs and settings
    [checkpoint] = pairs.glob(f"*/{STUDENT_CHECKPOINT_PREFIX}*.safetensors")
    header = read_header(checkpoint, DISTILL_CHECKPOINT_KIND)
    cancelled_at = header["step"]
    assert 0 < cancelled_at < ITERATIONS, cancelled_at

    entry = comfy_server.run(distill_graph("interrupted"))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    log = comfy_server.log_text()
    assert f"resuming the student at step {cancelled_at} of {ITERATIONS} on" in log  # the node's notice
    assert f"resuming the student from {checkpoint} at step {cancelled_at}" in log
    assert read_header(checkpoint, DISTILL_CHECKPOINT_KIND)["step"] == ITERATIONS

    entry = comfy_server.run(distill_graph("uninterrupted"))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    resumed = load_extractor(distill_env / "extractors" / "interrupted.safetensors")
    one_go = load_extractor(distill_env / "extractors" / "uninterrupted.safetensors")
    for (name, a), b in zip(one_go.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_cancel_the_library_noticed_first_is_reported_as_interrupted(comfy_inprocess):
    """Train, Distill, Fit Conditions and Timesteps poll ``should_stop``; when that notices the Cancel
    before a progress callback does, the library raises TrainingInterrupted, which must reach ComfyUI
    as its InterruptProcessingException (shown as interrupted, not as a failed run)."""
    import comfy.model_management

    from diffsketch.errors import TrainingInterrupted

    cancel_as_interrupt = comfy_inprocess.nodes.common.cancel_as_interrupt
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        with cancel_as_interrupt():
            raise TrainingInterrupted("cancelled at step 3; checkpoint written")
    with pytest.raises(ValueError):  # anything else passes through unchanged
        with cancel_as_interrupt():
            raise ValueError("not a cancel")
