"""How long each stage of the templates takes with their settings (tools/make_workflows.py's QUICK
and STYLE), measured stage by stage on one machine with random-weight SD 1.5-architecture models.

Each stage runs the library code the nodes run, with the diffusers backend standing in for
ComfyUI's sampling (same UNet/VAE architecture and step counts): one 512x512 sample with capture
(Sample & Capture), the condition fit on the 2,400 default prompts (Fit Conditions), a few training
iterations on the fast schedule (Train; SDXL with the SDXL template's low-memory settings), a few
distillation pairs on the fast schedule and a few extractor steps (Distill), one extraction at the
sample size (Extract). Iterations, pairs and steps are uniform, so the per-unit medians times the
templates' counts give each stage's time; the table prints both.

    python benchmarks/template_times.py --device cuda --dtype fp16 --json sd15_times.json
    python benchmarks/template_times.py --arch sdxl --device cuda --dtype fp16 --json sdxl_times.json
    python benchmarks/template_times.py --tiny          # a CPU smoke run of the script (tiny model)

With --json the per-unit times go to a file. tools/gpu_check.py runs this script for both backbones
and keeps the figures in its JSON, which the templates' notes quote ("about N min on <device>" per
stage; tools/make_workflows.py reads it). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from capture_overhead import build  # noqa: E402  (random-weight backends of the published configs)
from make_workflows import QUICK, SDXL_TRAIN, STYLE, stage_minutes  # noqa: E402

from diffsketch.capture.sampling import SamplingSettings  # noqa: E402
from diffsketch.distill import DistillConfig, generate_pairs, train_student  # noqa: E402
from diffsketch.distill.extract import extract  # noqa: E402
from diffsketch.fileio import atomic_write_bytes  # noqa: E402
from diffsketch.train.conditions import ConditionSampler, load_default_prompts  # noqa: E402
from diffsketch.train.losses import TINY_CLIP_ARCHITECTURE, ClipImageEncoder, DiffSketchLoss, build_lpips  # noqa: E402
from diffsketch.train.trainer import TrainConfig, Trainer  # noqa: E402

#: The image size of each backbone's templates (the SD 1.x ones at 512, the SDXL quick start at 1024).
TEMPLATE_SIZE = {"sd15": 512, "sdxl": 1024}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _intervals(stamps: list[float]) -> list[float]:
    """Seconds between consecutive callback times, the first (warm-up) dropped."""
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return gaps[1:] if len(gaps) > 1 else gaps


def measure(args) -> dict:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    size = 64 if args.tiny else TEMPLATE_SIZE[args.arch]
    backend = build("tiny" if args.tiny else args.arch, str(device), dtype)
    seconds = {}

    # Sample & Capture: one image, 50 steps, the paper's 13 timesteps captured (run twice: warm-up)
    for _ in range(2):
        _sync(device)
        t0 = time.perf_counter()
        example = backend.sample(
            "a photo of a horse in mud", SamplingSettings(seed=50, steps=50, width=size, height=size)
        )
        _sync(device)
        seconds["sample"] = time.perf_counter() - t0

    # Fit Conditions: every default prompt encoded once, then the PCA fit
    prompts = load_default_prompts()[: args.prompts] if args.prompts else load_default_prompts()
    t0 = time.perf_counter()
    conditions = ConditionSampler.fit_from_prompts(
        backend.encode_prompt, prompts, n_components=min(512, len(prompts) - 1), family=backend.spec.family
    )
    _sync(device)
    seconds["fit_conditions"] = (time.perf_counter() - t0) * len(load_default_prompts()) / len(prompts)

    # Train: iterations on the fast schedule (each: a new sample, the generator step)
    tower = ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE if args.tiny else "ViT-B-32")
    loss = DiffSketchLoss(tower, build_lpips(random_weights=True)).to(device)
    stamps = []
    config = TrainConfig(
        iterations=args.train_iterations,
        schedule="fast",
        checkpoint_every=0,
        preview_every=0,
        device=str(device),
        **(SDXL_TRAIN if args.arch == "sdxl" and not args.tiny else {}),
    )
    sketch = example.image.mean(1, keepdim=True)
    trainer = Trainer(backend, example, sketch, conditions, loss, config)
    stamps.append(time.perf_counter())
    generator = trainer.run(on_step=lambda *a: (_sync(device), stamps.append(time.perf_counter())))
    seconds["train_iteration"] = statistics.median(_intervals(stamps))

    # Distill: pairs on the fast schedule, then extractor steps (batch 8, 256-px crops)
    with tempfile.TemporaryDirectory() as pairs_dir:
        stamps = [time.perf_counter()]
        pairs = generate_pairs(
            backend,
            generator,
            conditions,
            pairs_dir,
            args.pairs,
            SamplingSettings(width=size, height=size, schedule="fast"),
            progress=lambda done, total: (_sync(device), stamps.append(time.perf_counter())),
        )
        seconds["pair"] = statistics.median(_intervals(stamps))
        stamps = [time.perf_counter()]
        crop = min(256, size)
        student = train_student(
            pairs,
            DistillConfig(
                iterations=args.student_steps, crop_size=crop, checkpoint_every=10**6, preview_every=10**6
            ),
            lpips_model=build_lpips(random_weights=True).to(device),
            on_step=lambda *a: (_sync(device), stamps.append(time.perf_counter())),
            device=device,
        )
        seconds["student_step"] = statistics.median(_intervals(stamps))

    # Extract: one image at the sample size (after a warm-up)
    image = example.image.permute(0, 2, 3, 1).to(device)
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        extract(student.to(device), image)
        _sync(device)
        seconds["extract"] = time.perf_counter() - t0

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    arch = "tiny" if args.tiny else args.arch
    return {"device": name, "dtype": args.dtype, "arch": arch, "size": size, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--arch", default="sd15", choices=sorted(TEMPLATE_SIZE), help="the templates' backbone")
    ap.add_argument("--tiny", action="store_true", help="tiny random model at 64 px: checks the script runs")
    ap.add_argument("--train-iterations", type=int, default=6, help="training iterations measured")
    ap.add_argument("--pairs", type=int, default=4, help="distillation pairs measured")
    ap.add_argument("--student-steps", type=int, default=30, help="extractor steps measured")
    ap.add_argument("--prompts", type=int, default=0, help="encode only this many prompts and scale up")
    ap.add_argument("--json", help="write the per-unit seconds to this JSON file")
    args = ap.parse_args(argv)
    result = measure(args)
    s = result["seconds"]
    print(f"\n== per unit, {result['device']}, {result['dtype']}, {result['size']} px ==")
    for key, value in s.items():
        print(f"{key:16s} {value:9.3f} s")
    quick, style = stage_minutes(s, QUICK), stage_minutes(s, STYLE)
    print("\n== per stage, with the templates' settings ==")
    print(f"{'stage':18s} {'quick start':>12s} {'templates 2-5':>14s}")
    for stage in quick:
        print(f"{stage:18s} {quick[stage]:10.1f} min {style[stage]:12.1f} min")
    if args.json:
        atomic_write_bytes(args.json, json.dumps(result, indent=2).encode())
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
