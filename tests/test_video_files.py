"""Video files through ``diffsketch extract``: streamed in and out, bad files refused clearly,
an existing output kept unless --overwrite, and Cancel leaving a playable file or none."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from diffsketch.cli import main
from diffsketch.errors import InvalidInputError
from diffsketch.video import VideoReader, extract_video, video_writer

av = pytest.importorskip("av", reason="video files need PyAV (ComfyUI installs it)")


class Edges(torch.nn.Module):
    """A tiny deterministic stand-in extractor: grey = 1 - local contrast."""

    multiple = 1

    def forward(self, x):
        grey = x.mean(1, keepdim=True)
        blur = torch.nn.functional.avg_pool2d(grey, 3, stride=1, padding=1, count_include_pad=False)
        return (1.0 - 6.0 * (grey - blur).abs()).clamp(0, 1)


def moving_frames(count: int, height: int = 64, width: int = 80) -> np.ndarray:
    """A bright square moving right over a gradient, uint8 [T,H,W,3]."""
    frames = np.zeros((count, height, width, 3), np.uint8)
    frames[:] = np.linspace(30, 120, width, dtype=np.uint8)[None, None, :, None]
    for t in range(count):
        frames[t, 20:40, 5 + 2 * t : 25 + 2 * t] = 230
    return frames


def write_clip(path, frames, fps=12):
    with video_writer(path, Fraction(fps), overwrite=True) as write:
        for frame in frames:
            write(frame)
    return path


@pytest.fixture
def clip(tmp_path):
    return write_clip(tmp_path / "clip.mp4", moving_frames(10))


def frame_count(path) -> int:
    with VideoReader(path) as reader:
        return sum(1 for _ in reader)


def test_a_video_becomes_a_video_of_sketches_of_the_same_length_size_and_rate(clip, tmp_path):
    out = tmp_path / "sketch.mp4"
    calls = []
    written = extract_video(
        Edges(), clip, out, temporal="off", batch_size=3, progress=lambda d, t: calls.append((d, t))
    )
    assert written == 10 and calls[-1] == (10, 10) and len(calls) == 4  # batches of 3, 3, 3, 1
    with VideoReader(out) as reader:
        frames = list(reader)
        assert reader.info.fps == 12 and (reader.info.width, reader.info.height) == (80, 64)
    assert len(frames) == 10
    # the square's left edge is drawn where the square is in that frame (dark lines on white)
    left = 5 + 2 * 4
    assert frames[4][30, left - 1 : left + 1].mean() < 128 and frames[4][30, 5].mean() > 200
    assert frames[0][30, 4:6].mean() < 128


def test_the_cli_extracts_a_video_with_the_built_in_extractor_and_refuses_to_overwrite(
    clip, tmp_path, capsys
):
    pytest.importorskip("cv2", reason="the temporal mode needs OpenCV (the test extra installs it)")
    out = tmp_path / "sketch.mp4"
    assert main(["extract", str(clip), "--out", str(out), "--device", "cpu"]) == 0
    assert frame_count(out) == 10
    before = out.read_bytes()
    assert main(["extract", str(clip), "--out", str(out), "--device", "cpu", "--temporal", "off"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["extract", str(clip), "--out", str(out), "--temporal", "off", "--overwrite"]) == 0
    assert out.read_bytes() != before and frame_count(out) == 10  # replaced, by the per-frame version


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"\x00\x01 not a video at all " * 50), "cannot be read"),
        (lambda p: p.write_bytes(b""), "cannot be read"),
    ],
    ids=["garbage", "empty"],
)
def test_corrupt_files_are_refused_naming_the_file(tmp_path, make, message):
    bad = tmp_path / "bad.mp4"
    make(bad)
    with pytest.raises(InvalidInputError, match=message) as error:
        extract_video(Edges(), bad, tmp_path / "out.mp4", temporal="off")
    assert "bad.mp4" in str(error.value)
    assert not (tmp_path / "out.mp4").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4"]


def test_a_truncated_file_is_refused_and_leaves_no_output(clip, tmp_path):
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InvalidInputError, match="cut.mp4"):
        extract_video(Edges(), cut, tmp_path / "out.mp4", temporal="off")
    assert not (tmp_path / "out.mp4").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.mp4")]  # no temporary file left


def test_a_file_without_a_video_stream_is_refused(tmp_path):
    sound = tmp_path / "sound.mkv"
    with av.open(str(sound), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with pytest.raises(InvalidInputError, match="no video stream"):
        extract_video(Edges(), sound, tmp_path / "out.mp4", temporal="off")


def test_a_video_stream_without_frames_is_refused(tmp_path):
    empty = tmp_path / "empty.mkv"
    with av.open(str(empty), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    with pytest.raises(InvalidInputError, match="empty.mkv"):
        extract_video(Edges(), empty, tmp_path / "out.mp4", temporal="off")
    assert not (tmp_path / "out.mp4").exists()


def test_an_output_that_exists_is_refused_unless_overwrite(clip, tmp_path):
    out = tmp_path / "taken.mp4"
    out.write_bytes(b"precious")
    with pytest.raises(InvalidInputError, match="exists; pass --overwrite"):
        extract_video(Edges(), clip, out, temporal="off")
    assert out.read_bytes() == b"precious"
    with pytest.raises(InvalidInputError, match="suffix must be one of"):
        extract_video(Edges(), clip, tmp_path / "out.txt", temporal="off")


def test_cancel_mid_clip_leaves_no_file_and_keeps_an_older_one(clip, tmp_path):
    out = tmp_path / "sketch.mp4"

    def cancel_after_the_first_batch(done, total):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_video(Edges(), clip, out, temporal="off", batch_size=4, progress=cancel_after_the_first_batch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # nothing half-written
    extract_video(Edges(), clip, out, temporal="off")
    complete = out.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        extract_video(
            Edges(),
            clip,
            out,
            temporal="off",
            overwrite=True,
            batch_size=4,
            progress=cancel_after_the_first_batch,
        )
    assert out.read_bytes() == complete and frame_count(out) == 10  # the older file is still whole


def test_the_cli_reports_cancel_and_leaves_nothing(clip, tmp_path, monkeypatch, capsys):
    import diffsketch.video as video

    real = video.extract_video

    def cancelling(*args, progress=None, **kwargs):
        def stop(done, total):
            raise KeyboardInterrupt

        return real(*args, progress=stop, **kwargs)

    monkeypatch.setattr(video, "extract_video", cancelling)
    out = tmp_path / "sketch.mp4"
    assert main(["extract", str(clip), "--out", str(out), "--temporal", "off"]) == 130
    assert "cancelled" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_temporal_applies_to_videos_only(tmp_path, capsys):
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(moving_frames(1)[0]).save(image)
    assert main(["extract", str(image), "--out", str(tmp_path / "out"), "--temporal", "stabilize"]) == 2
    assert "--temporal applies to a video" in capsys.readouterr().err


def test_the_cli_dtype_switch_reaches_video_extraction(clip, tmp_path, monkeypatch, capsys):
    import diffsketch.distill.extract as extract_module
    from diffsketch.distill.extractor import load_default_extractor

    # the default is bfloat16 here whatever this machine's CPU is, so fp32 must be asked for
    monkeypatch.setattr(extract_module, "cpu_has_native_bf16", lambda: True)
    model = load_default_extractor(device="cpu")

    def frames(path):
        with VideoReader(path) as reader:
            return np.stack(list(reader))

    library = {}
    for dtype in ("fp32", "bf16"):
        extract_video(model, clip, tmp_path / f"{dtype}.mp4", temporal="off", dtype=dtype)
        library[dtype] = frames(tmp_path / f"{dtype}.mp4")
    assert not np.array_equal(library["fp32"], library["bf16"])  # the precision shows in the pixels

    def nearer(path):
        """The library run the video at ``path`` is nearer to (encoding may move a pixel a level)."""
        distance = {k: np.abs(frames(path).astype(int) - v).mean() for k, v in library.items()}
        return min(distance, key=distance.get)

    out = tmp_path / "cli.mp4"
    args = ["extract", str(clip), "--out", str(out), "--device", "cpu", "--temporal", "off"]
    assert main([*args, "--dtype", "fp32"]) == 0
    assert nearer(out) == "fp32"
    assert main([*args, "--overwrite"]) == 0  # the default: bfloat16 here
    assert nearer(out) == "bf16"
    # float16 is refused before the output is begun
    assert main([*args[:3], str(tmp_path / "fp16.mp4"), *args[4:], "--dtype", "fp16"]) == 2
    assert "float16 is not supported on the CPU" in capsys.readouterr().err
    assert not (tmp_path / "fp16.mp4").exists()
