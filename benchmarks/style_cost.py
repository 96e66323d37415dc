"""What one style costs end to end (train + pairs + student), counted per recipe and timed here.

1. Counts, per recipe, side by side: UNet evaluations (one evaluation = one UNet call on the CFG
   batch of uncond + cond), generator training steps, generator forwards (one per pair) and
   student steps. Recipes: the paper's (1,200 iterations x 50-step sampling, 30,000 pairs), our
   defaults (1,200 iterations, 1,000 pairs, 50 steps, full schedule) and fast settings (the same
   with ``schedule="fast"``: only the captured timesteps and the last step are sampled). The
   student's steps are our ``DistillConfig`` default for every recipe (the paper does not say
   how long its Pix2PixHD trained). Two more recipes are our defaults with half and all of the
   pairs made from your own photos (``photo_share`` 0.5 and 1.0). A photo pair costs twice the
   schedule's UNet calls: the DDIM inversion (its calls carry only the caption's branch, a batch
   of one, so each is about half a CFG-batch evaluation) and the replay with capture (the CFG
   batch, as when sampling); both are counted as whole evaluations here, plus one VAE encode.
2. Measured pair generation on this device: pairs/s through ``generate_pairs`` (sampling with
   capture, generator, PNG writing) for each batch size B, the time split into UNet evaluations,
   VAE decode and the rest, the peak GPU memory per B, the speed-up over B = 1 (target on a GPU:
   B = 8 at least 3x B = 1), and how far each B's pairs are from B = 1's (8-bit pixels that
   differ, largest difference): batched kernels are not bitwise batch-invariant.
3. Measured generator training step (forward on two captured samples, L1, backward, Adam; the
   CLIP and LPIPS losses are left out: benchmarks/train_step.py times them) and student step
   (batch 8, 256-px crops, L1); and photo pairs (``photo_share`` 1.0, one at a time): pairs/s
   and their cost against a generated pair at B = 1.
4. The style's estimated wall time on this machine for each recipe, from 1-3.

Random-weight models built from configs (SD 1.5 shapes with ``--arch sd15``); nothing is
downloaded. Default batch sizes: 1, 4, 8, 16 on a GPU, 1, 2, 4 on the CPU.

    python benchmarks/style_cost.py --quick               # CPU smoke run: tiny model, 64 px, 14 steps
    python benchmarks/style_cost.py                       # this CPU: tiny model at 128 px, B = 1, 2, 4
    python benchmarks/style_cost.py --device cuda         # GPU: SD 1.5 shapes at 512 px, fp16, B = 1, 4, 8, 16

``--json PATH`` writes the measured figures (2 and 3) to a file (tools/gpu_check.py reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from capture_overhead import build  # noqa: E402

from diffsketch.capture.sampling import SamplingSettings, fast_schedule  # noqa: E402
from diffsketch.capture.timesteps import PAPER_TIMESTEPS, plan_timesteps  # noqa: E402
from diffsketch.distill import DistillConfig, build_student, generate_pairs, pair_paths  # noqa: E402
from diffsketch.distill.photos import photo_pair_count  # noqa: E402
from diffsketch.fileio import atomic_write_bytes  # noqa: E402
from diffsketch.train.conditions import ConditionSampler  # noqa: E402
from diffsketch.train.generator import GeneratorConfig, SketchGenerator  # noqa: E402
from diffsketch.train.trainer import TrainConfig  # noqa: E402

# ------------------------------------------------------------------------------------ recipes


@dataclass(frozen=True)
class Recipe:
    name: str
    train_iterations: int
    steps: int
    schedule: str
    pairs: int
    student_steps: int
    photo_share: float = 0.0

    def photo_pairs(self) -> int:
        return photo_pair_count(self.pairs, self.photo_share)

    def evaluations_per_sample(self) -> int:
        plan = plan_timesteps(self.steps, PAPER_TIMESTEPS)
        return len(plan.grid) if self.schedule == "full" else len(fast_schedule(plan))


def recipes() -> list[Recipe]:
    train, student = TrainConfig(), DistillConfig()
    return [
        Recipe("paper", 1200, 50, "full", 30_000, student.iterations),
        Recipe("ours (defaults)", train.iterations, train.steps, train.schedule, 1000, student.iterations),
        Recipe("ours (fast)", train.iterations, train.steps, "fast", 1000, student.iterations),
        Recipe(
            "ours + photos 0.5", train.iterations, train.steps, train.schedule, 1000, student.iterations, 0.5
        ),
        Recipe(
            "ours + photos 1.0", train.iterations, train.steps, train.schedule, 1000, student.iterations, 1.0
        ),
    ]


def counts(recipe: Recipe) -> dict:
    per_sample = recipe.evaluations_per_sample()
    train_evals = per_sample * (recipe.train_iterations + 1)  # + the example's own sampling
    photo_pairs = recipe.photo_pairs()
    generated_evals = per_sample * (recipe.pairs - photo_pairs)
    photo_evals = 2 * per_sample * photo_pairs  # inversion + replay
    pair_evals = generated_evals + photo_evals
    return {
        "UNet evals/sample": per_sample,
        "UNet evals/photo": 2 * per_sample,
        "UNet evals train": train_evals,
        "generated pairs": recipe.pairs - photo_pairs,
        "photo pairs": photo_pairs,
        "UNet evals gen.": generated_evals,
        "UNet evals photos": photo_evals,
        "UNet evals pairs": pair_evals,
        "UNet evals total": train_evals + pair_evals,
        "generator steps": recipe.train_iterations,
        "generator forwards": recipe.pairs,
        "student steps": recipe.student_steps,
    }


def print_counts() -> None:
    rows = [(r.name, counts(r)) for r in recipes()]
    keys = list(rows[0][1])
    print(
        "\n1. Counts per style (one UNet evaluation = one call on the CFG batch uncond + cond; a photo pair's "
        "inversion calls, on the caption's branch alone, count as whole ones)"
    )
    print(f"{'':<20}" + "".join(f"{name:>18}" for name, _ in rows))
    for key in keys:
        print(f"{key:<20}" + "".join(f"{c[key]:>18,}" for _, c in rows))
    paper, ours = rows[0][1], rows[1][1]
    print(
        f"pairs are {paper['UNet evals pairs'] / paper['UNet evals total']:.0%} of the paper's UNet evaluations "
        f"({ours['UNet evals pairs'] / ours['UNet evals total']:.0%} with our defaults)"
    )


# ------------------------------------------------------------------------------------ timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageTimer:
    """Adds up the time a backend spends in its UNet loop and its VAE decode (the rest of a
    pair: conditions, generator, PNG encoding and writing)."""

    def __init__(self, backend, device):
        self.denoise = self.decode = 0.0
        for name in ("_denoise", "_decode"):
            original = getattr(backend, name)

            def timed(*args, _original=original, _name=name, **kwargs):
                sync(device)
                start = time.perf_counter()
                out = _original(*args, **kwargs)
                sync(device)
                setattr(self, _name[1:], getattr(self, _name[1:]) + time.perf_counter() - start)
                return out

            setattr(backend, name, timed)


@dataclass
class PairTiming:
    batch: int
    pairs_per_s: float
    eval_s: float  # one UNet evaluation at this batch
    decode_s: float  # one VAE decode of the batch
    rest_s: float  # the rest of one batch
    peak_gib: float | None

    def seconds_per_pair(self, evaluations: int) -> float:
        return (evaluations * self.eval_s + self.decode_s + self.rest_s) / self.batch


def measure_pairs(backend, timer, generator, conditions, folder, batch, count, sampling, device):
    """Pairs of ``count`` (a multiple of ``batch``) in batches; the first batch warms up."""
    marks = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def progress(done, total):
        marks.append((time.perf_counter(), timer.denoise, timer.decode, done))

    generate_pairs(
        backend, generator, conditions, folder, count, sampling, batch_size=batch, progress=progress
    )
    # marks[0] is the call before any batch, marks[1] the end of the warm-up batch
    (t0, den0, dec0, done0), (t1, den1, dec1, done1) = marks[1], marks[-1]
    batches = (done1 - done0) // batch
    evaluations = len(sampling.plan().grid)
    denoise, decode = (den1 - den0) / batches, (dec1 - dec0) / batches
    per_batch = (t1 - t0) / batches
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return PairTiming(
        batch, (done1 - done0) / (t1 - t0), denoise / evaluations, decode, per_batch - denoise - decode, peak
    )


def photo_pair_time(backend, generator, conditions, folder, count, sampling, size) -> float:
    """Seconds per photo pair (``photo_share`` 1.0: inversion, replay with capture, generator,
    PNGs) over ``count`` pairs of random photos, the first a warm-up."""
    g = torch.Generator().manual_seed(0)
    photos = [torch.rand(size + 16, size, 3, generator=g) for _ in range(count)]
    marks = []
    generate_pairs(
        backend, generator, conditions, folder, count, sampling, batch_size=1, photos=photos, photo_share=1.0,
        progress=lambda done, total: marks.append((time.perf_counter(), done)),
    )  # fmt: skip
    (t1, done1), (t2, done2) = marks[1], marks[-1]
    return (t2 - t1) / max(done2 - done1, 1)


def pixel_differences(folder_a, folder_b, indices) -> tuple[float, int]:
    from PIL import Image

    differing = total = largest = 0
    for i in indices:
        for a, b in zip(pair_paths(folder_a, i), pair_paths(folder_b, i), strict=True):
            x = np.asarray(Image.open(a), dtype=np.int16)
            y = np.asarray(Image.open(b), dtype=np.int16)
            differing += int((x != y).sum())
            total += x.size
            largest = max(largest, int(np.abs(x - y).max()))
    return differing / total, largest


def median_time(step, device, repeats) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def generator_step_time(backend, generator, sampling, device, repeats) -> float:
    sample = backend.sample(backend.encode_prompt("a house by a lake"), sampling.replace(seed=1))
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-4)
    target = torch.rand_like(sample.image[:, :1]).to(device)
    generator.train()

    def step():
        loss = (generator.forward_sample(sample) - target).abs().mean()
        loss = loss + (generator.forward_sample(sample) - target).abs().mean()  # example + new sample
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = median_time(step, device, repeats)
    generator.eval()
    return seconds


def student_step_time(device, repeats) -> float:
    config = DistillConfig()
    student = build_student(config).to(device).train()
    optimizer = torch.optim.Adam(student.parameters(), lr=config.lr)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(config.batch_size, 3, config.crop_size, config.crop_size, generator=g).to(device)
    sketches = torch.rand(config.batch_size, 1, config.crop_size, config.crop_size, generator=g).to(device)

    def step():
        loss = (student(images) - sketches).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return median_time(step, device, repeats)


def hms(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ap.add_argument(
        "--arch",
        choices=["sd15", "sd15-320", "tiny"],
        default=None,
        help="default: sd15 on a GPU, tiny on the CPU",
    )
    ap.add_argument(
        "--size", type=int, default=None, help="pair size in px (default: 512 on a GPU, 128 on the CPU)"
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=20,
        help="DDIM steps of the measured pairs (default 20); the recipes' own steps are counted, not sampled",
    )
    ap.add_argument(
        "--batches",
        default=None,
        help="batch sizes B to measure (default: 1,4,8,16 on a GPU, 1,2,4 on the CPU)",
    )
    ap.add_argument(
        "--repeats", type=int, default=2, help="timed batches per B after one warm-up batch (default 2)"
    )
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="CPU threads")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny model, 64 px, 14 steps, B = 1, 2")
    ap.add_argument("--json", default=None, help="write the measured figures to this JSON file")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    torch.set_num_threads(args.threads)
    arch = args.arch or ("tiny" if args.quick or not gpu else "sd15")
    size = args.size or (64 if args.quick else 512 if gpu else 128)
    steps = 14 if args.quick else args.steps  # 14: the fewest that keep the 13 timesteps apart
    batches = [
        int(b) for b in (args.batches or ("1,2" if args.quick else "1,4,8,16" if gpu else "1,2,4")).split(",")
    ]
    if batches[0] != 1:
        batches.insert(0, 1)  # the reference for speed-ups and pixel differences
    repeats = 1 if args.quick else args.repeats

    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"style_cost on {name}, torch {torch.__version__}; measured with arch {arch}, {size}x{size}, {steps} steps"
    )
    print_counts()

    dtype = torch.float16 if gpu else torch.float32
    backend = build(arch, device, dtype)
    plan = plan_timesteps(steps, PAPER_TIMESTEPS)
    sampling = SamplingSettings(
        seed=0, steps=steps, width=size, height=size, timesteps=tuple(plan.used), schedule="full", cfg=5.0
    )
    torch.manual_seed(0)
    generator = (
        SketchGenerator(backend.spec, GeneratorConfig.from_spec(backend.spec, len(plan.used)))
        .to(device)
        .eval()
    )
    context = backend.spec.context_dim
    conditions = ConditionSampler.fit(
        torch.randn(8, 77, context, generator=torch.Generator().manual_seed(0)), n_components=4
    )

    timer = StageTimer(backend, device)
    work = Path(tempfile.mkdtemp(prefix="style_cost_"))
    try:
        timings: dict[int, PairTiming] = {}
        rows = []
        print(
            f"\n2. Pair generation here ({len(plan.used)} timesteps captured, full {steps}-step schedule, PNGs written)"
        )
        print(
            f"{'B':>4} {'pairs/s':>9} {'vs B=1':>7} {'UNet eval':>10} {'decode/batch':>13} {'rest/batch':>11} {'peak GPU':>9} {'px != B=1':>10} {'max diff':>9}"
        )
        for batch in batches:
            count = batch * (1 + repeats) if batch > 1 else max(1 + repeats, max(batches))
            folder = work / f"b{batch}"
            t = measure_pairs(backend, timer, generator, conditions, folder, batch, count, sampling, device)
            timings[batch] = t
            if batch == 1:
                frac, largest = 0.0, 0
            else:
                frac, largest = pixel_differences(work / "b1", folder, range(batch))
            peak = f"{t.peak_gib:.1f} GiB" if t.peak_gib is not None else "-"
            rows.append(
                {
                    "batch": batch,
                    "pairs_per_s": t.pairs_per_s,
                    "speedup": t.pairs_per_s / timings[1].pairs_per_s,
                    "unet_eval_s": t.eval_s,
                    "decode_s": t.decode_s,
                    "rest_s": t.rest_s,
                    "peak_gib": t.peak_gib,
                    "pixels_differing": frac,
                    "largest_difference": largest,
                }
            )
            print(
                f"{batch:>4} {t.pairs_per_s:>9.3f} {t.pairs_per_s / timings[1].pairs_per_s:>6.2f}x {t.eval_s * 1e3:>8.1f}ms "
                f"{t.decode_s:>12.3f}s {t.rest_s:>10.3f}s {peak:>9} {frac:>9.4%} {largest:>9}"
            )
        if gpu and 8 in timings:
            ratio = timings[8].pairs_per_s / timings[1].pairs_per_s
            print(
                f"B = 8 vs B = 1: {ratio:.2f}x the pairs/s (target 3x): {'met' if ratio >= 3 else 'NOT met'}"
            )
        if gpu and 1 in timings and timings[1].peak_gib is not None:
            largest = max(timings)
            per_image = (timings[largest].peak_gib - timings[1].peak_gib) / max(largest - 1, 1)
            print(f"GPU memory per extra image in a batch: {per_image:.2f} GiB at {size}x{size}")

        repeat_steps = 1 if args.quick else 3
        gen_step = generator_step_time(backend, generator, sampling, device, repeat_steps)
        student_step = student_step_time(device, repeat_steps)
        photo_s = photo_pair_time(
            backend, generator, conditions, work / "photos", 1 + repeats, sampling, size
        )
        photo_ratio = photo_s * timings[1].pairs_per_s
        print(
            f"\n3. generator training step {gen_step:.3f} s (two forwards + backward + Adam; CLIP/LPIPS losses excluded)"
        )
        print(
            f"   student step {student_step:.3f} s (batch {DistillConfig().batch_size}, {DistillConfig().crop_size}-px crops, L1)"
        )
        print(
            f"   photo pair {photo_s:.3f} s = {1 / photo_s:.3f} pairs/s ({photo_ratio:.2f}x a generated pair at B = 1; "
            "inversion + replay with capture, one photo at a time)"
        )

        best = max(timings.values(), key=lambda t: t.pairs_per_s)
        one = timings[1]
        print(
            f"\n4. Estimated wall time per style here (pairs at B = {best.batch}, the fastest measured; arch {arch}, {size}x{size})"
        )
        print(f"{'recipe':<18} {'train':>10} {'pairs':>10} {'student':>10} {'total':>10}")
        for recipe in recipes():
            evals = recipe.evaluations_per_sample()
            per_iteration = evals * one.eval_s + one.decode_s + gen_step
            train = (evals * one.eval_s + one.decode_s) + recipe.train_iterations * per_iteration
            # photo pairs: a generated pair at B = 1 times the measured photo/generated ratio
            photos = recipe.photo_pairs()
            pairs = (recipe.pairs - photos) * best.seconds_per_pair(evals)
            pairs += photos * one.seconds_per_pair(evals) * photo_ratio
            student = recipe.student_steps * student_step
            total = train + pairs + student
            print(f"{recipe.name:<18} {hms(train):>10} {hms(pairs):>10} {hms(student):>10} {hms(total):>10}")
        if args.json:
            figures = {
                "device": name,
                "arch": arch,
                "size": size,
                "steps": steps,
                "dtype": str(dtype).removeprefix("torch."),
                "batches": rows,
                "generator_step_s": gen_step,
                "student_step_s": student_step,
                "photo_pair_s": photo_s,
            }
            atomic_write_bytes(args.json, json.dumps(figures, indent=2).encode())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
