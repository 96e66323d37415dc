"""Video files in and out, frame by frame (PyAV, which ComfyUI requires): a clip of any length goes
through with one batch of frames in memory.

:func:`extract_video` reads a video, draws each frame's sketch (optionally stabilised over time,
:mod:`diffsketch.distill.temporal`) and writes a video of the sketches at the input's frame rate.
The output is written to a temporary file beside it and renamed at the end, so Cancel (Ctrl-C) or
an error leaves no half-written file: the output is complete or absent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import InvalidInputError
from .fileio import atomic_target

#: Output containers by file suffix -> (PyAV format, video codec).
WRITE_FORMATS = {
    ".mp4": ("mp4", "libx264"),
    ".m4v": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
}
#: Suffixes read as video by ``diffsketch extract`` (anything FFmpeg decodes works through the library).
VIDEO_SUFFIXES = (*WRITE_FORMATS, ".avi", ".gif", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")


def is_video_path(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _av():
    try:
        import av
    except ImportError as e:  # ComfyUI installs it; a bare `pip install diffsketch` may not
        raise ImportError(
            'video files need PyAV: pip install av (or the whole extra: pip install "diffsketch[video]")'
        ) from e
    return av


@dataclass
class VideoInfo:
    width: int
    height: int
    fps: Fraction
    frames: int  # as the container states it; 0 = not stated


class VideoReader:
    """Decodes the first video stream of ``path`` frame by frame as RGB uint8 [H,W,3] numpy arrays.

    Refused with :class:`InvalidInputError`, naming the file: a missing file, a file FFmpeg cannot
    read (corrupt, truncated, not a video), one without a video stream, one with no frame, and one
    that ends before the frame count its container states (truncated)."""

    def __init__(self, path):
        av = _av()
        self.path = Path(path)
        if not self.path.is_file():
            raise InvalidInputError(f"video {self.path}: no such file.")
        try:
            self._container = av.open(str(self.path), "r")
        except (av.FFmpegError, UnicodeDecodeError) as e:
            raise InvalidInputError(
                f"video {self.path} cannot be read ({e}): the file is corrupt, truncated or not a video."
            ) from e
        if not self._container.streams.video:
            self._container.close()
            raise InvalidInputError(
                f"video {self.path} has no video stream (audio only?); give a video file."
            )
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate or Fraction(25)
        self.info = VideoInfo(
            width=self._stream.codec_context.width,
            height=self._stream.codec_context.height,
            fps=Fraction(rate),
            frames=int(self._stream.frames or 0),
        )
        self.decoded = 0

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def __iter__(self) -> Iterator[np.ndarray]:
        av = _av()
        try:
            for frame in self._container.decode(self._stream):
                self.decoded += 1
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as e:
            raise InvalidInputError(
                f"video {self.path} is corrupt or truncated: decoding stopped after frame {self.decoded} ({e})."
            ) from e
        if self.decoded == 0:
            raise InvalidInputError(f"video {self.path} has no frames.")
        if self.info.frames and self.decoded < self.info.frames:
            raise InvalidInputError(
                f"video {self.path} is truncated: it ends after {self.decoded} of the {self.info.frames} "
                "frames its header lists."
            )


def check_video_output(path, *, overwrite: bool) -> Path:
    """An output video path: a suffix :data:`WRITE_FORMATS` knows, and no existing file unless
    ``overwrite``."""
    path = Path(path)
    if path.suffix.lower() not in WRITE_FORMATS:
        raise InvalidInputError(
            f"output video {path}: the suffix must be one of {', '.join(WRITE_FORMATS)} (it picks the format)."
        )
    if path.is_dir():
        raise InvalidInputError(f"output video {path} is a folder; give a file path.")
    if path.exists() and not overwrite:
        raise InvalidInputError(
            f"output video {path} exists; pass --overwrite to replace it, or choose another name."
        )
    return path


@contextmanager
def video_writer(path, fps: Fraction, *, overwrite: bool = False, crf: int = 18):
    """Yields ``write(frame)`` for RGB uint8 frames [H,W,3] of one size, encoded as they come.

    The file appears at ``path`` only when the block ends normally (written beside it under a
    temporary name, then renamed); on an error or Cancel nothing is left. Odd sizes are padded by
    one row/column (repeating the edge): the codecs' 4:2:0 colour needs even sides. Nothing
    written (no frame) is an error, not an empty file."""
    av = _av()
    path = check_video_output(path, overwrite=overwrite)
    container_format, codec = WRITE_FORMATS[path.suffix.lower()]
    with atomic_target(path) as tmp:
        container = av.open(tmp, "w", format=container_format)
        stream = None
        try:

            def write(frame: np.ndarray) -> None:
                nonlocal stream
                h, w = frame.shape[:2]
                frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                if stream is None:
                    stream = container.add_stream(codec, rate=fps)
                    stream.width, stream.height = frame.shape[1], frame.shape[0]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf)}
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)

            yield write
            if stream is None:
                raise InvalidInputError(f"no frame was written to {path}.")
            for packet in stream.encode(None):  # flush the encoder's delayed frames
                container.mux(packet)
        finally:
            container.close()


def extract_video(
    model: nn.Module,
    source,
    output,
    *,
    temporal: str = "stabilize",
    overwrite: bool = False,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
    **extract_options,
) -> int:
    """Sketch every frame of the video ``source`` into the video ``output`` (same frame rate and
    size), streaming: memory does not grow with the clip's length. ``temporal``: see
    :data:`~diffsketch.distill.temporal.TEMPORAL_MODES`; ``extract_options`` go to
    :func:`~diffsketch.distill.extract.extract`. ``progress(done, total)`` after each batch
    (``total`` 0 when the container does not state it). Returns the number of frames written."""
    from .distill.temporal import extract_stream

    output = check_video_output(output, overwrite=overwrite)
    if Path(source).resolve() == output.resolve():
        raise InvalidInputError(f"the output video {output} is the input; choose another name.")
    with VideoReader(source) as reader:
        total = reader.info.frames
        written = 0
        with video_writer(output, reader.info.fps, overwrite=overwrite) as write:
            report = None if progress is None else (lambda done: progress(done, max(total, done)))
            for sketch, _ in extract_stream(
                model, reader, temporal=temporal, batch_size=batch_size, progress=report, **extract_options
            ):
                write((sketch * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy())
                written += 1
    return written
