"""Tier 2 (in-process): width/height 0, the nodes' default, is the connected checkpoint's native size
(512 for SD 1.x, 1024 for SDXL), and a saved graph's explicit size is kept."""

from __future__ import annotations

import pytest
from comfy_harness import loaded_checkpoint

pytestmark = pytest.mark.comfyui


class _Asked(Exception):
    """Stops a node at its first sample, once the settings it asked for are recorded."""


def _settings_asked(nodes, monkeypatch, node, *inputs) -> list:
    asked = []

    def sample(self, conds, settings, **kwargs):
        asked.append((settings.width, settings.height))
        raise _Asked()

    monkeypatch.setattr(nodes.comfy_backend.ComfyBackend, "sample", sample)
    with pytest.raises(_Asked):
        node(*inputs)
    return asked


def test_size_0_samples_sd15_at_512(comfy_inprocess, loaded_checkpoint):
    model, clip, vae = loaded_checkpoint
    sample = comfy_inprocess.nodes.sample.DiffSketchSample
    out = sample.execute(model, clip, vae, "a horse", 1, 2, 5.0, 0, 0, timesteps=(1,))
    image, _, features = out.result
    assert tuple(image.shape) == (1, 512, 512, 3) and features.size == (512, 512)


def test_size_0_samples_sdxl_at_1024_and_saved_sizes_are_kept(comfy_inprocess, sdxl_checkpoint, monkeypatch):
    nodes = comfy_inprocess.nodes
    sample = nodes.sample.DiffSketchSample.execute
    with loaded_checkpoint(sdxl_checkpoint) as (model, clip, vae):
        assert nodes.comfy_backend.ComfyBackend(model, clip, vae).native_size == 1024
        for width, height, expected in [(0, 0, (1024, 1024)), (0, 768, (1024, 768)), (512, 512, (512, 512))]:
            asked = _settings_asked(
                nodes, monkeypatch, sample, model, clip, vae, "a horse", 1, 2, 5.0, width, height
            )
            assert asked == [expected]
