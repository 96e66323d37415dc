"""A long clip through ``diffsketch extract``: memory stays flat, progress shows, Cancel leaves no file.

Writes a synthetic clip (a camera panning back and forth over a scikit-image photo, with noise),
then runs the command a user runs on it, ``diffsketch extract CLIP --out SKETCH.mp4`` (stabilised,
the video default), in a child process whose resident memory is sampled every 0.2 s. Prints the
frames written, frames/s, the command's last progress line and the peak memory over the first
fifth of the run against the peak over the whole run (flat: close to 1). Then runs it again and
sends Ctrl-C (SIGINT) halfway: the command must stop and leave neither the output nor a temporary
file beside it.

    python benchmarks/video_stream.py                        # 2,000 frames of 512x512
    python benchmarks/video_stream.py --frames 60 --size 128 # a short check
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from video_flicker import clip_photo  # noqa: E402

from diffsketch.video import VideoReader, video_writer  # noqa: E402


def write_clip(path: Path, frames: int, size: int, fps: int = 24) -> None:
    """A ``frames``-frame clip: a ``size`` px view sliding back and forth over a 2x-size photo."""
    photo = clip_photo("astronaut", size)  # [3, 2*size, 2*size]
    travel = photo.shape[-1] - size
    g = torch.Generator().manual_seed(0)
    with video_writer(path, Fraction(fps), overwrite=True) as write:
        for t in range(frames):
            phase = (t * 3) % (2 * travel)
            x0 = phase if phase < travel else 2 * travel - phase  # bounce at the edges
            y0 = travel // 2
            view = photo[:, y0 : y0 + size, x0 : x0 + size]
            view = (view + 0.02 * torch.randn(view.shape, generator=g)).clamp(0, 1)
            write((view.permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy())


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def run_extract(clip: Path, out: Path, interrupt_after: float | None = None) -> dict:
    """Run ``diffsketch extract clip --out out`` sampling its memory; SIGINT after
    ``interrupt_after`` seconds if given."""
    command = [sys.executable, "-m", "diffsketch", "extract", str(clip), "--out", str(out), "--overwrite"]
    start = time.perf_counter()
    samples: list[tuple[float, int]] = []
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, text=True)
        interrupted = False
        while child.poll() is None:
            now = time.perf_counter() - start
            samples.append((now, _rss_kib(child.pid)))
            if interrupt_after is not None and not interrupted and now >= interrupt_after:
                child.send_signal(signal.SIGINT)
                interrupted = True
            time.sleep(0.2)
        wall = time.perf_counter() - start
        err.seek(0)
        stderr = err.read()
    lines = [x.strip() for x in stderr.replace("\r", "\n").splitlines() if x.strip()]
    return {"returncode": child.returncode, "wall": wall, "samples": samples, "stderr_lines": lines}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000, help="frames in the clip (default 2000)")
    parser.add_argument("--size", type=int, default=512, help="frame side (default 512)")
    parser.add_argument("--no-cancel", action="store_true", help="skip the Ctrl-C run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="diffsketch-video-stream-") as folder:
        folder = Path(folder)
        clip, out = folder / "clip.mp4", folder / "sketch.mp4"
        began = time.perf_counter()
        write_clip(clip, args.frames, args.size)
        print(
            f"clip: {args.frames} frames of {args.size}x{args.size} ({clip.stat().st_size / 2**20:.1f} MiB, "
            f"written in {time.perf_counter() - began:.0f} s)"
        )
        result = run_extract(clip, out)
        if result["returncode"] != 0:
            print("\n".join(result["stderr_lines"][-20:]))
            sys.exit(f"diffsketch extract failed with exit code {result['returncode']}")
        with VideoReader(out) as reader:
            written = sum(1 for _ in reader)
        samples = result["samples"]
        wall = result["wall"]
        early = max((kib for t, kib in samples if t <= wall / 5), default=0)
        peak = max((kib for _, kib in samples), default=0)
        progress = [x for x in result["stderr_lines"] if "extracting" in x]
        print(f"diffsketch extract clip.mp4 --out sketch.mp4: {written} frames written in {wall:.0f} s")
        print(f"  {written / wall:.1f} frames/s including start-up and video encoding")
        print(f"  last progress line: {progress[-1] if progress else '(none)'}")
        print(f"  peak RSS over the first fifth of the run: {early / 1024:7.1f} MiB")
        print(
            f"  peak RSS over the whole run:              {peak / 1024:7.1f} MiB ({peak / max(early, 1):.2f}x)"
        )
        if written != args.frames:
            sys.exit(f"the sketch video has {written} frames, the clip {args.frames}")
        if args.no_cancel:
            return
        out.unlink()
        cancelled = run_extract(clip, out, interrupt_after=wall / 2)
        leftovers = sorted(p.name for p in folder.iterdir() if p.name != clip.name)
        print(
            f"Ctrl-C after {wall / 2:.0f} s: exit code {cancelled['returncode']}, "
            f"stopped after {cancelled['wall']:.0f} s; files left beside the clip: {leftovers or 'none'}"
        )
        if cancelled["stderr_lines"]:
            print(f"  its last words: {cancelled['stderr_lines'][-1]}")
        if leftovers:
            sys.exit("Cancel left files behind")


if __name__ == "__main__":
    main()
