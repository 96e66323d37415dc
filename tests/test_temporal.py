"""Flicker measure (warping error), synthetic clips with exact flow, and temporally stable extraction."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from diffsketch.distill.temporal import TemporalStabilizer, extract_stream, stabilize_batch
from diffsketch.errors import InvalidInputError
from diffsketch.eval.flicker import MOTIONS, synthetic_clip, warping_errors
from diffsketch.flow import visible_mask, warp

pytest.importorskip("cv2", reason="DIS flow is OpenCV's (the test extra installs opencv-python-headless)")


def smooth_photo(seed: int, size: int = 200, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """A photo-like RGB [3,size,size]: smooth random shapes with values in [low, high]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 12, 12, generator=g)
    photo = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0].clamp(0, 1)
    return low + (high - low) * photo


def per_frame_strength(frames: torch.Tensor, seed: int = 0, flicker: float = 0.08) -> torch.Tensor:
    """A stand-in for a per-frame extractor [T,H,W]: the frame's edges plus flicker of its own."""
    grey = frames.mean(1, keepdim=True)
    dx = F.pad(grey[..., :, 1:] - grey[..., :, :-1], (0, 1, 0, 0)).abs()
    dy = F.pad(grey[..., 1:, :] - grey[..., :-1, :], (0, 0, 0, 1)).abs()
    g = torch.Generator().manual_seed(seed)
    edges = (dx + dy)[:, 0] * 8
    return (edges + flicker * torch.rand(edges.shape, generator=g)).clamp(0, 1)


# ------------------------------------------------------------------------------ the measure


def test_an_output_that_is_exactly_the_warped_previous_output_has_no_warping_error():
    clip = synthetic_clip(smooth_photo(0), 5, 96, "mixed")
    first = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    outputs = [first]
    for flow in clip.flow_to_previous:
        outputs.append(warp(outputs[-1], flow[None]))
    errors = warping_errors(torch.cat(outputs), clip.flow_to_previous, clip.visible)
    assert errors.shape == (4,) and float(errors.abs().max()) < 1e-6
    # the same output NOT moved along: an error the measure does see
    still = torch.cat([first] * 5)
    assert float(warping_errors(still, clip.flow_to_previous, clip.visible).min()) > 0.01


def test_injected_flicker_gives_the_value_of_the_formula():
    """Still camera (zero flow), 3 frames of 2 channels; frame 1 has a 10x10 square brightened by
    0.4 in one channel only; the left 20 columns are marked not visible."""
    t, h, w = 3, 40, 40
    outputs = torch.full((t, 2, h, w), 0.5)
    outputs[1, 0, 5:15, 15:25] += 0.4
    flow = torch.zeros(t - 1, 2, h, w)
    visible = torch.ones(t - 1, h, w, dtype=torch.bool)
    visible[:, :, :20] = False
    errors = warping_errors(outputs, flow, visible)
    # square pixels counted: rows 5..14, columns 20..24 = 50 of the 40*20 = 800 visible pixels;
    # |difference| averaged over the 2 channels = 0.2; the same for pair (0,1) and pair (1,2)
    expected = 0.2 * 50 / 800
    assert torch.allclose(errors, torch.tensor([expected, expected]), atol=1e-7)


def test_the_measure_refuses_mismatched_inputs():
    with pytest.raises(InvalidInputError, match="at least 2 frames"):
        warping_errors(torch.zeros(1, 8, 8), torch.zeros(0, 2, 8, 8), torch.zeros(0, 8, 8, dtype=torch.bool))
    with pytest.raises(InvalidInputError, match="flow must be"):
        warping_errors(torch.zeros(3, 8, 8), torch.zeros(3, 2, 8, 8), torch.ones(3, 8, 8, dtype=torch.bool))


@pytest.mark.parametrize("motion", MOTIONS)
def test_the_clip_makers_flow_moves_each_frame_onto_the_next(motion):
    clip = synthetic_clip(smooth_photo(2), 6, 96, motion, noise=0.0, brightness_drift=0.0)
    assert clip.frames.shape == (6, 3, 96, 96) and float(clip.visible.float().mean()) > 0.9
    moved = warp(clip.clean[:-1], clip.flow_to_previous)
    for i in range(5):
        mask = clip.visible[i]
        error = float((moved[i] - clip.clean[i + 1]).abs().mean(0)[mask].mean())
        unmoved = float((clip.clean[i] - clip.clean[i + 1]).abs().mean(0)[mask].mean())
        assert error < 0.003, (i, error)  # bilinear interpolation twice, nothing more
        assert unmoved > 4 * error  # and the camera did move
    # and the other way round: frame t+1 moved by flow_to_next is frame t
    back = warp(clip.clean[1:], clip.flow_to_next)
    seen = visible_mask(clip.flow_to_next, clip.flow_to_previous)
    assert float(seen.float().mean()) > 0.9
    for i in range(5):
        assert float((back[i] - clip.clean[i]).abs().mean(0)[seen[i]].mean()) < 0.003


def test_the_clip_maker_refuses_a_photo_too_small_for_the_motion():
    with pytest.raises(InvalidInputError, match="needs a photo of at least"):
        synthetic_clip(smooth_photo(0, size=100), 30, 96, "pan")


# ------------------------------------------------------------------------------ stabilising


def test_stabilising_cuts_the_warping_error_and_keeps_the_lines_where_they_are():
    clip = synthetic_clip(smooth_photo(3), 10, 128, "mixed")
    strength = per_frame_strength(clip.frames)
    stable, cuts = stabilize_batch(clip.frames.permute(0, 2, 3, 1), strength)
    assert cuts == 1  # the first frame only
    before = float(warping_errors(strength, clip.flow_to_previous, clip.visible).mean())
    after = float(warping_errors(stable, clip.flow_to_previous, clip.visible).mean())
    assert after < 0.7 * before, (before, after)
    assert torch.equal(stable[0], strength[0])
    # closer than the per-frame lines to the lines of the noise-free frames: no ghosts, less noise
    truth = per_frame_strength(clip.clean, flicker=0.0) + 0.04
    assert float((stable - truth).abs().mean()) < 0.8 * float((strength - truth).abs().mean())


def test_a_cut_is_detected_and_nothing_after_it_depends_on_frames_before_it():
    """Two shots of different brightness that share a flat grey band (most of each frame), where
    the flow and the pictures agree across the cut: only the cut test keeps it from being blended."""
    dark, bright = smooth_photo(4, low=0.0, high=0.4), smooth_photo(5, low=0.6, high=1.0)
    dark[:, 80:], bright[:, 80:] = 0.5, 0.5
    first = synthetic_clip(dark, 5, 96, "pan", seed=1, noise=0.0)
    second = synthetic_clip(bright, 5, 96, "pan", seed=2, noise=0.0)
    frames = torch.cat([first.frames, second.frames]).permute(0, 2, 3, 1)
    strength = per_frame_strength(torch.cat([first.frames, second.frames]))
    stable, cuts = stabilize_batch(frames, strength)
    assert cuts == 2  # the first frame and the cut
    assert torch.equal(stable[5], strength[5])  # the first frame after the cut is its per-frame sketch
    alone, _ = stabilize_batch(frames[5:], strength[5:])
    assert torch.equal(stable[5:], alone)  # what came before the cut changes nothing after it
    assert not torch.equal(stable[6:], strength[6:])  # and the frames after it are stabilised


def test_unrelated_pictures_of_alike_brightness_are_cuts_too():
    """Every frame a different picture with the same value distribution: the histograms agree, the
    flow finds nothing to follow, so every frame keeps its per-frame sketch."""
    frames = torch.stack([smooth_photo(10 + i, size=96) for i in range(6)])
    strength = per_frame_strength(frames)
    stable, cuts = stabilize_batch(frames.permute(0, 2, 3, 1), strength)
    assert cuts == 6 and torch.equal(stable, strength)


def test_one_frame_and_frames_of_different_sizes_are_refused():
    with pytest.raises(InvalidInputError, match="at least 2 frames"):
        stabilize_batch(torch.rand(1, 32, 32, 3), torch.rand(1, 32, 32))
    stabilizer = TemporalStabilizer()
    stabilizer(torch.rand(32, 32, 3), torch.rand(32, 32))
    with pytest.raises(InvalidInputError, match="same size"):
        stabilizer(torch.rand(32, 40, 3), torch.rand(32, 40))

    class Identity(torch.nn.Module):
        multiple = 1

        def forward(self, x):
            return x[:, :1]

    frames = [torch.rand(64, 64, 3), torch.rand(64, 64, 3), torch.rand(64, 72, 3)]
    with pytest.raises(InvalidInputError, match="frame 2 is"):
        list(extract_stream(Identity(), frames, temporal="off", batch_size=8))


def test_without_opencv_the_temporal_mode_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
    with pytest.raises(ImportError, match=r"pip install opencv-python-headless.*diffsketch\[video\]"):
        TemporalStabilizer()


def test_frames_stream_through_at_most_one_batch_at_a_time():
    class Identity(torch.nn.Module):
        multiple = 1

        def forward(self, x):
            return x[:, :1]

    pulled = []

    def frames():
        for i in range(11):
            pulled.append(i)
            yield torch.full((64, 64, 3), 0.2 + 0.01 * i)

    ahead = []
    for done, (sketch, strength) in enumerate(extract_stream(Identity(), frames(), batch_size=4), start=1):
        ahead.append(len(pulled) - done)
        assert sketch.shape == (64, 64, 3) and strength.shape == (64, 64)
    assert len(ahead) == 11 and max(ahead) <= 3


def test_the_video_flicker_benchmark_runs_quick(tmp_path):
    """benchmarks/video_flicker.py --quick: every figure of the table is measured and written."""
    pytest.importorskip("skimage", reason="the clips move scikit-image's sample photos")
    import json
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "video_flicker.py"
    out = tmp_path / "figures.json"
    from fractions import Fraction

    from diffsketch.video import video_writer

    footage = [tmp_path / "footage.mp4"]  # a short clip through the estimated-flow (real footage) table
    photo = (torch.rand(3, 40, 60, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    with video_writer(footage[0], Fraction(12)) as write:
        for t in range(6):
            write(torch.roll(photo, shifts=2 * t, dims=2).permute(1, 2, 0).numpy())
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out), "--footage", *map(str, footage)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "warping error" in result.stdout and "4x the frames" in result.stdout
    figures = json.loads(out.read_text())
    assert figures["quick"] is True and len(figures["clips"]) == 2 and len(figures["memory"]) == 2
    for clip in figures["clips"]:
        assert (
            clip["error_stable"] < clip["error_per_frame"] and clip["fps_stable"] > 0 and clip["fps_bf16"] > 0
        )
    assert len(figures["footage"]) == len(footage)
    for clip in figures["footage"]:
        assert clip["frames"] == 6 and clip["size"] == "60x40" and 0 < clip["visible"] <= 1
        assert clip["error_per_frame"] > 0 and 0 < clip["ssim_min"] <= 1 and clip["fps_stable"] > 0
