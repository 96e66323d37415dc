"""Extraction on a local Ray cluster (2 CPUs): a folder of 200 small images, a rerun that skips
them all, and an extraction actor killed mid-run that costs no image. Skipped where Ray Data is
not installed (the ``scale`` extra; CI installs it)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'diffsketch[scale]'")
pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'diffsketch[scale]'")

from diffsketch.distill.extract_files import MANIFEST_NAME, extract_files, list_inputs  # noqa: E402
from diffsketch.distill.extract_ray import extract_files_ray  # noqa: E402
from diffsketch.distill.extractor import (  # noqa: E402
    ExtractorConfig,
    SketchExtractor,
    load_extractor,
    save_extractor,
)

ROOT = Path(__file__).resolve().parents[1]
COUNT = 200


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module: starting Ray takes seconds on a small machine."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        log_to_driver=False,
        # the workers import the DiffSketch under test
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(COUNT):
        folder = root / f"part{i % 4}"
        folder.mkdir(exist_ok=True)
        size = (16, 24) if i % 5 else (20, 20)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    (root / "broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    torch.manual_seed(0)
    model = SketchExtractor(ExtractorConfig(channels=(8, 16), encoder_blocks=(1, 1), decoder_blocks=(1,)))
    return save_extractor(tmp_path_factory.mktemp("model") / "style.safetensors", model)


@pytest.fixture(scope="module")
def reference(photos, extractor, tmp_path_factory):
    """The same folder extracted in one process."""
    out = tmp_path_factory.mktemp("reference")
    items, _ = list_inputs([str(photos)])
    extract_files(load_extractor(extractor), items, out, workers=0)
    return out


def sketches(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def recorded(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()[1:]]


def test_ray_extracts_a_folder_and_a_rerun_skips_it(cluster, photos, extractor, reference, tmp_path):
    items, _ = list_inputs([str(photos)])
    out = tmp_path / "out"
    report = extract_files_ray(extractor, items, out)
    assert report.written == COUNT and len(report.failed) == 1 and "broken.png" in report.failed[0][0]
    assert sketches(out) == sketches(reference)  # byte for byte what one process writes
    keys = [r["key"] for r in recorded(out) if "error" not in r]
    assert sorted(keys) == sorted(i.key for i in items if i.key != "broken") and len(set(keys)) == COUNT

    again = extract_files_ray(extractor, items, out)
    assert again.written == 0 and again.already_done == COUNT and len(again.failed) == 1


def test_a_killed_actor_loses_no_image(cluster, photos, extractor, reference, tmp_path):
    """The first actor to reach its third network call kills its own process (SIGKILL, as the
    kernel's OOM killer or a lost node would); Ray restarts it and reruns the batch."""
    marker = tmp_path / "kill-once"
    marker.write_text("")
    marker_path = str(marker)
    extractor_path = str(extractor)

    def load_dying_model(device):
        inner = load_extractor(extractor_path, device=device)

        class DiesOnce(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner, self.multiple, self.calls = inner, inner.multiple, 0

            def forward(self, x):
                self.calls += 1
                if self.calls == 3:
                    try:
                        os.rename(marker_path, marker_path + ".taken")  # only one actor, only once
                    except FileNotFoundError:
                        pass
                    else:
                        os.kill(os.getpid(), signal.SIGKILL)
                return self.inner(x)

        return DiesOnce()

    items, _ = list_inputs([str(photos)])
    out = tmp_path / "out"
    report = extract_files_ray(extractor, items, out, load_model=load_dying_model)
    assert not marker.exists() and Path(marker_path + ".taken").exists()  # the actor did die
    assert report.written == COUNT
    assert sketches(out) == sketches(reference)
    keys = [r["key"] for r in recorded(out) if "error" not in r]
    assert len(keys) == len(set(keys)) == COUNT  # nothing recorded twice, nothing missing


def test_every_actor_runs_the_one_precision_the_folder_records(monkeypatch):
    import diffsketch.distill.extract as extract_module
    from diffsketch.distill.extract_ray import _actor_precision
    from diffsketch.errors import InvalidInputError

    monkeypatch.setattr(extract_module, "cpu_has_native_bf16", lambda: True)
    assert _actor_precision("auto", gpus=0) == "bfloat16"
    assert _actor_precision("fp32", gpus=0) == "float32"
    assert _actor_precision("fp16", gpus=2) == "float16"  # named, so this process needs no GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _actor_precision("auto", gpus=1) == "bfloat16"
    with pytest.raises(InvalidInputError, match="float16 is not supported on the CPU"):
        _actor_precision("fp16", gpus=0)
