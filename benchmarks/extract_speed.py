"""Sketch-extraction speed: the DiffSketch student vs. the networks users would otherwise run.

Measures images/s at SIZE x SIZE for, side by side in the same run (timings interleaved, so a
busy machine slows all of them alike):

- the DiffSketch student (:class:`diffsketch.distill.extractor.SketchExtractor`), network alone and
  end to end through :func:`diffsketch.distill.extract.extract` (conversion, padding, output);
- Pix2PixHD's global generator (the paper's distilled model: ngf 64, 4 downsamplings, 9 blocks);
- the Informative-Drawings generator (ComfyUI's "Realistic Lineart");
- HED (VGG16).

All with random weights (speed does not depend on the values). On CPU it then compares the two
precisions of :func:`~diffsketch.distill.extract.extract` on the built-in extractor (trained
weights, so the sketches are real ones) and scikit-image's photos: images/s in float32 and
bfloat16 autocast, their ratio, and the SSIM and largest per-pixel difference between the two
sketches (bfloat16 is the CPU default where the CPU computes it natively). Finally it extracts
one BIG x BIG image in a fresh subprocess and prints that process's peak resident memory.

    python benchmarks/extract_speed.py                              # CPU, fp32, 512x512
    python benchmarks/extract_speed.py --device cuda --dtype bf16   # GPU, batch 32
    python benchmarks/extract_speed.py --size 256 --repeats 1 --big 0 --skip pix2pix informative hed

``--json PATH`` writes the figures (images/s per network, the big image's peak) to a file
(tools/gpu_check.py reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffsketch.distill.extract import cpu_has_native_bf16, extract  # noqa: E402
from diffsketch.distill.extractor import (  # noqa: E402
    SketchExtractor,
    load_default_extractor,
    load_extractor,
)
from diffsketch.eval.baselines import Pix2PixHDGlobalGenerator, build_baseline  # noqa: E402
from diffsketch.fileio import atomic_write_bytes  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build_student(args) -> SketchExtractor:
    return load_extractor(args.extractor) if args.extractor else SketchExtractor()


def _params(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def measure_speed(args, device: torch.device) -> dict[str, float]:
    dtype = DTYPES[args.dtype]
    channels_last = args.channels_last
    student = _build_student(args)
    models = {
        "DiffSketch student": student,
        "Pix2PixHD global": Pix2PixHDGlobalGenerator(),
        "Informative-Drawings": build_baseline("informative_drawings"),
        "HED (VGG16)": build_baseline("hed"),
    }
    if args.skip:
        models = {k: v for k, v in models.items() if not any(s.lower() in k.lower() for s in args.skip)}
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    calls = {}
    for name, model in models.items():
        model = model.eval().to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)

        def call(model=model):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                return model(x)

        calls[name] = (call, _params(model))
    # End to end: ComfyUI-layout float images in, (sketch, mask) on the CPU out.
    images = torch.rand(args.batch, args.size, args.size, 3)
    calls["DiffSketch student, extract()"] = (
        lambda: extract(student, images, dtype=dtype, channels_last=channels_last, batch_size=args.batch),
        _params(student),
    )

    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for call, _ in calls.values():
                call()
            _sync(device)
        for _ in range(args.repeats):  # interleaved: each repeat times every model once
            for name, (call, _) in calls.items():
                _sync(device)
                start = time.perf_counter()
                call()
                _sync(device)
                times[name].append(time.perf_counter() - start)

    print(f"\n{'network':32s} {'params':>9s} {'s/call':>9s} {'images/s':>10s}")
    rates = {}
    for name, (_, params) in calls.items():
        seconds = statistics.median(times[name])
        rates[name] = args.batch / seconds
        print(f"{name:32s} {params:8.2f}M {seconds:9.4f} {rates[name]:10.2f}")
    student_rate = rates.get("DiffSketch student")
    if student_rate:
        print()
        for other, target in (
            ("Pix2PixHD global", 5.0),
            ("Informative-Drawings", 1.0),
            ("HED (VGG16)", None),
        ):
            if other in rates:
                ratio = student_rate / rates[other]
                verdict = (
                    ""
                    if target is None
                    else f"  (target >= {target:g}x: {'met' if ratio >= target else 'MISSED'})"
                )
                print(f"student / {other:22s} {ratio:7.2f}x{verdict}")
    return rates


PRECISION_PHOTOS = ("coffee", "chelsea", "camera", "astronaut")


def _precision_inputs(size: int) -> tuple[torch.Tensor, str]:
    """Photos resized to a ComfyUI IMAGE batch [N, size, size, 3], or random images without
    scikit-image (then the SSIM compares sketches of noise)."""
    try:
        import skimage  # noqa: F401
    except ImportError:
        return torch.rand(len(PRECISION_PHOTOS), size, size, 3), "random images (no scikit-image)"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from photo_pairs import load_photo
    finally:
        sys.path.remove(str(Path(__file__).resolve().parent))
    photos = [
        torch.nn.functional.interpolate(load_photo(name, 2 * size)[None], size=(size, size), mode="bilinear")
        for name in PRECISION_PHOTOS
    ]
    return torch.cat(photos).clamp(0, 1).permute(0, 2, 3, 1), "scikit-image photos " + ", ".join(
        PRECISION_PHOTOS
    )


def compare_precisions(args) -> dict:
    """CPU only: extract() on the built-in (or given) extractor in float32 and in bfloat16
    autocast, interleaved, one photo per call; speed and how far the bfloat16 sketches move."""
    from diffsketch.eval.metrics.ssim import ssim

    model = (load_extractor(args.extractor) if args.extractor else load_default_extractor()).eval()
    images, source = _precision_inputs(args.size)
    sketches: dict[str, torch.Tensor] = {}
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with torch.inference_mode():
        for dtype in times:  # warm-up: oneDNN builds its kernels on the first call
            extract(model, images[:1], dtype=dtype, channels_last=args.channels_last)
        for _ in range(args.repeats):
            for dtype in times:
                start = time.perf_counter()
                sketches[dtype] = torch.cat(
                    [
                        extract(model, image[None], dtype=dtype, channels_last=args.channels_last)[0]
                        for image in images
                    ]
                )
                times[dtype].append(time.perf_counter() - start)
    rates = {dtype: len(images) / statistics.median(seconds) for dtype, seconds in times.items()}
    grey = {dtype: s[..., :1].permute(0, 3, 1, 2) for dtype, s in sketches.items()}
    scores = ssim(grey["bf16"], grey["fp32"])
    figures = {
        "images_per_s": rates,
        "ratio": rates["bf16"] / rates["fp32"],
        "ssim_mean": float(scores.mean()),
        "ssim_min": float(scores.min()),
        "max_abs_diff": float((sketches["bf16"] - sketches["fp32"]).abs().max()),
        "default": "bf16" if cpu_has_native_bf16() else "fp32",
    }
    print(
        f"\nprecision of extract() on the CPU ({'given' if args.extractor else 'built-in'} extractor, "
        f"{source}, {args.size}x{args.size}, one image per call; default here: {figures['default']})"
    )
    print(
        f"{'fp32 images/s':>14s} {'bf16 images/s':>14s} {'bf16/fp32':>10s} {'SSIM mean':>10s} "
        f"{'SSIM min':>9s} {'max abs diff':>13s}"
    )
    print(
        f"{rates['fp32']:14.2f} {rates['bf16']:14.2f} {figures['ratio']:9.2f}x {figures['ssim_mean']:10.4f} "
        f"{figures['ssim_min']:9.4f} {figures['max_abs_diff']:13.4f}"
    )
    return figures


def _peak_rss_kib() -> int:
    """This process's peak resident memory in KiB.

    /proc's VmHWM belongs to the process's own address space, so it starts afresh at exec;
    ru_maxrss does not (Linux carries the parent's peak at fork through exec), hence the fallback
    only where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_child(size: int, tile: int, threads: int) -> None:
    """Runs in a fresh process: extract one size x size image on the CPU, print peak RSS as JSON."""
    torch.set_num_threads(threads)
    student = SketchExtractor().eval()
    before = _peak_rss_kib()
    image = torch.rand(1, size, size, 3)  # a ComfyUI IMAGE: float32, channels last
    start = time.perf_counter()
    sketch, mask = extract(student, image, tile=tile)
    seconds = time.perf_counter() - start
    peak_kib = _peak_rss_kib()
    assert sketch.shape == (1, size, size, 3) and mask.shape == (1, size, size)
    print(json.dumps({"peak_kib": peak_kib, "before_kib": before, "seconds": seconds}))


def measure_memory(args) -> dict | None:
    command = [sys.executable, __file__, "--_memory-child", str(args.big), "--tile", str(args.tile)]
    command += ["--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(f"\n{args.big}x{args.big} extraction failed:\n{result.stderr}")
        return None
    report = json.loads(result.stdout.strip().splitlines()[-1])
    peak_gib = report["peak_kib"] / 2**20
    print(
        f"\none {args.big}x{args.big} image on CPU (tile {args.tile}, fresh process): "
        f"{report['seconds']:.1f} s, peak RSS {peak_gib:.2f} GiB "
        f"(process after imports and model: {report['before_kib'] / 2**20:.2f} GiB; "
        f"target < 4 GB: {'met' if report['peak_kib'] * 1024 < 4e9 else 'MISSED'})"
    )
    return {"size": args.big, "tile": args.tile, "seconds": report["seconds"], "peak_gib": peak_gib}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="the networks' table: default fp32 on CPU, bf16 on CUDA",
    )
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--batch", type=int, default=None, help="images per call (default 1 on CPU, 32 on CUDA)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=_cores(), help="CPU threads (default: all cores)")
    parser.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="run every network NCHW (default: channels_last for all, as extract() does)",
    )
    parser.add_argument(
        "--extractor", default=None, help="a saved extractor .safetensors (default: random weights)"
    )
    parser.add_argument("--skip", nargs="*", default=[], help="skip networks whose name contains these words")
    parser.add_argument("--big", type=int, default=4096, help="side of the memory test image (0: skip)")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    parser.add_argument(
        "--_memory-child", dest="memory_child", type=int, default=None, help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.memory_child is not None:
        memory_child(args.memory_child, args.tile, args.threads)
        return
    device = torch.device(args.device)
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    args.batch = args.batch or (32 if device.type == "cuda" else 1)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        where = f"GPU {torch.cuda.get_device_name(device)}"
    else:
        where = f"CPU, {args.threads} threads"
    print(
        f"torch {torch.__version__}; {where}; {args.size}x{args.size}, batch {args.batch}, {args.dtype}, "
        f"{'channels_last' if args.channels_last else 'NCHW'}, "
        f"{args.warmup} warm-up + {args.repeats} timed calls each (median)"
    )
    big = None
    if args.big:  # first, while this process is still small (the child is forked from it)
        big = measure_memory(args)
    rates = measure_speed(args, device)
    precisions = compare_precisions(args) if device.type == "cpu" else None
    if args.json:
        figures = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
            "size": args.size,
            "batch": args.batch,
            "dtype": args.dtype,
            "channels_last": args.channels_last,
            "images_per_s": rates,
            "big_image_cpu": big,
            "cpu_precisions": precisions,
        }
        atomic_write_bytes(args.json, json.dumps(figures, indent=2).encode())


if __name__ == "__main__":
    main()
