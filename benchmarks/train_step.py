"""Where one DiffSketch training iteration spends its time, and its peak memory at real model shapes.

1. Tiny random-weight SD 1.x-shaped model (tests/tiny_models.py) at 64x64, the trainer's default
   generator for it: per-iteration time split into UNet sampling, VAE decode (with capture),
   generator forward, losses (forward + backward to the predictions) and generator backward +
   Adam, for the full and the fast schedule.
2. UNet evaluations per new sample, full vs fast schedule, for the paper's 13 timesteps on the
   50-step grid (target: >= 3.5x fewer).
3. Real shapes (``--arch``: SD 1.5 or SD 2.1 at 512x512, SDXL at 1024x1024; 9 SDXL taps, 12 for
   SD 1.x/2.x; the diffusion transformers Z-Image (``zimage``, hidden 3840, one branch as Turbo
   samples at cfg 1), SD 3.5 Medium (``sd35m``, 1536, two branches), Large (``sd35l``, 2432) and
   Flux.1 (``flux``, 3072, one branch) at 1024x1024, ``--dit-taps`` blocks at latent/2 with the 16-channel VAE's SD-layout taps) with
   random features (generator + losses only; no diffusion model):
   the :class:`~diffsketch.train.trainer.Trainer` loop itself on a stand-in backend that hands back a
   random 13-timestep capture, with random-weight full-size CLIP ViT-B/32 (open_clip, no
   pretrained weights) and random-weight LPIPS AlexNet, fp32 on the CPU. Each mode runs in a
   fresh process, whose peak resident memory (/proc/self/status VmHWM) is printed (targets, with
   ``low_memory``: under 4 GB at SD 1.5's 512x512, under 10 GB at SDXL's 1024x1024, under 16 GB
   for the DiTs at 1024x1024, what a 24 GB card leaves beside the model's weights), followed by
   the same time split as in 1. The peak includes the stored features of the example and of each
   new sample, which a GPU run keeps on the GPU too (the Trainer moves them to its device).

    python benchmarks/train_step.py --quick             # a few minutes on 2 cores (SD 1.5 part shrunk)
    python benchmarks/train_step.py --skip-sd15         # tiny model and evaluation counts only
    python benchmarks/train_step.py --skip-tiny --sd15-modes low_memory   # the 4 GB check: one SD 1.5
        # step at 512x512, 13 timesteps (about 15-25 min on 2 busy cores; seconds on a GPU box's CPU)
    python benchmarks/train_step.py --skip-tiny --arch sdxl --sd15-modes low_memory --sample-crop 512
        # the 10 GB check: SDXL at 1024x1024, each new sample trained through a 512x512 window
    python benchmarks/train_step.py --skip-tiny --arch sdxl --sd15-modes low_memory --sample-crop 512 \
        --device cuda --json train_step.json      # the same on a GPU: its peak GPU memory too
    python benchmarks/train_step.py --skip-tiny --arch zimage --sd15-modes low_memory --sample-crop 512
        # the 16 GB check: Z-Image at 1024x1024 (6 blocks, one branch); --arch sd35m for SD 3.5 Medium

With ``--device cuda`` part 3's generator and losses run on the GPU (the random captures are made on
the CPU, as a backend's are) and the GPU's peak allocated memory is printed with the host's.
``--json PATH`` writes part 3's figures per mode to a file (tools/gpu_check.py reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from diffsketch.backends.conditioning import Conditioning  # noqa: E402
from diffsketch.capture.sample import CapturedSample  # noqa: E402
from diffsketch.capture.sampling import SamplingSettings, fast_schedule  # noqa: E402
from diffsketch.capture.timesteps import PAPER_TIMESTEPS, plan_timesteps  # noqa: E402
from diffsketch.fileio import atomic_write_bytes  # noqa: E402
from diffsketch.train.conditions import ConditionSampler  # noqa: E402
from diffsketch.train.generator import GeneratorConfig, SketchGenerator, parameter_count  # noqa: E402
from diffsketch.train.losses import TINY_CLIP_ARCHITECTURE, ClipImageEncoder, DiffSketchLoss, build_lpips  # noqa: E402
from diffsketch.train.trainer import TrainConfig, Trainer  # noqa: E402

GB = 1e9
# Part 3: the spec (tests/helpers_spec.py), the image size the backbone is used at, the peak target.
ARCH_SPECS = {
    "sd15": "sd15_spec",
    "sd21": "sd2_spec",
    "sdxl": "sdxl_spec",
    "zimage": "zimage_spec",
    "sd35m": "sd35_medium_spec",
    "sd35l": "sd35_large_spec",
    "flux": "flux_spec",
}
ARCH_NAMES = {
    "sd15": "SD 1.5",
    "sd21": "SD 2.1",
    "sdxl": "SDXL",
    "zimage": "Z-Image (Turbo, cfg 1)",
    "sd35m": "SD 3.5 Medium",
    "sd35l": "SD 3.5 Large",
    "flux": "Flux.1 (dev or schnell, cfg 1)",
}
ARCH_SIZES = {
    "sd15": 512,
    "sd21": 512,
    "sdxl": 1024,
    "zimage": 1024,
    "sd35m": 1024,
    "sd35l": 1024,
    "flux": 1024,
}
ARCH_TARGETS_GB = {
    "sd15": 4.0,
    "sd21": 4.0,
    "sdxl": 10.0,
    "zimage": 16.0,
    "sd35m": 16.0,
    "sd35l": 16.0,
    "flux": 16.0,
}
#: The diffusion transformers: their specs take the number of tapped blocks (--dit-taps).
DIT_ARCHS = ("zimage", "sd35m", "sd35l", "flux")
#: Captured branches per sample: Z-Image Turbo and Flux.1 sample at cfg 1 (cond only), the rest with CFG.
ARCH_BRANCHES = {"zimage": 1, "flux": 1}


def _peak_rss_bytes() -> int:
    """Peak resident memory of this process: VmHWM starts afresh at exec (ru_maxrss may not)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed_step(generator, loss, optimizer, example: CapturedSample, sample: CapturedSample) -> dict:
    """One training step (single backward, as Trainer with low_memory=False), with a time split:
    generator forward (both predictions), losses (forward + backward to the predictions),
    generator backward + Adam step."""
    t0 = time.perf_counter()
    pred_example = generator(example.unet, example.vae, example.rgb)
    pred_sample = generator(sample.unet, sample.vae, sample.rgb)
    t1 = time.perf_counter()
    total, _ = loss(pred_example, pred_sample, sample.image)
    grads = torch.autograd.grad(total, [pred_example, pred_sample])
    t2 = time.perf_counter()
    torch.autograd.backward([pred_example, pred_sample], grads)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    return {"generator_forward": t1 - t0, "losses": t2 - t1, "generator_backward_adam": t3 - t2}


def _median(values):
    values = sorted(values)
    return values[len(values) // 2]


# ---------------------------------------------------------------------------------------------
# 1 + 2: tiny model
# ---------------------------------------------------------------------------------------------
def tiny_section(args) -> None:
    from tiny_models import tiny_backend

    backend = tiny_backend(0)
    size = 64
    example = backend.sample(
        "a photo of a horse in mud",
        SamplingSettings(seed=50, steps=50, cfg=5.0, width=size, height=size, schedule="fast"),
    )
    torch.manual_seed(0)
    generator = SketchGenerator(backend.spec, GeneratorConfig.from_spec(backend.spec, len(example.timesteps)))
    loss = DiffSketchLoss(ClipImageEncoder.random(TINY_CLIP_ARCHITECTURE), build_lpips(random_weights=True))
    loss.set_example(example.image, example.image.mean(1, keepdim=True))
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-4)
    print(
        f"\n== tiny SD 1.x-shaped model, {size}x{size}, 13 timesteps, 50-step grid, trainer's default generator "
        f"({parameter_count(generator) / 1e6:.2f} M parameters), {torch.get_num_threads()} thread(s) =="
    )
    evaluations = {}
    for schedule in ("full", "fast"):
        rows = []
        for k in range(args.warmup + args.repeats):
            t0 = time.perf_counter()
            partial = backend.sample(
                "a dog on a sofa",
                SamplingSettings(seed=100 + k, steps=50, width=size, height=size, schedule=schedule),
                decode=False,
            )
            t1 = time.perf_counter()
            image, rgb, vae = backend.decode_with_features(partial.latent)
            t2 = time.perf_counter()
            sample = replace(partial, image=image, rgb=rgb, vae=vae)
            row = {"sampling (UNet)": t1 - t0, "VAE decode": t2 - t1}
            row.update(timed_step(generator, loss, optimizer, example, sample))
            if k >= args.warmup:
                rows.append(row)
            evaluations[schedule] = partial.meta["unet_evaluations"]
        split = {name: _median([r[name] for r in rows]) for name in rows[0]}
        total = sum(split.values())
        parts = ", ".join(f"{name} {1000 * v:.0f} ms ({100 * v / total:.0f}%)" for name, v in split.items())
        print(
            f"{schedule:4s} schedule ({evaluations[schedule]} UNet evaluations): {1000 * total:.0f} ms/iteration = {parts}"
        )

    plan = plan_timesteps(50, PAPER_TIMESTEPS)
    full, fast = len(plan.grid), len(fast_schedule(plan))
    assert evaluations == {"full": full, "fast": fast}, evaluations
    ratio = full / fast
    print(
        f"\n== UNet evaluations per new sample, paper's 13 timesteps on the 50-step grid ==\n"
        f"full {full}, fast {fast}: {ratio:.2f}x fewer (target >= 3.5x: {'met' if ratio >= 3.5 else 'MISSED'})"
    )


# ---------------------------------------------------------------------------------------------
# 3: SD 1.5 shapes, in a fresh process per mode
# ---------------------------------------------------------------------------------------------
class RandomFeatureBackend:
    """Stands in for a backend of ``spec``: hands back a random capture made by ``make(call)``, a
    new one per sample (as a real backend does, so a cropped sample's full features are freed)."""

    def __init__(self, spec, make):
        self.spec = spec
        self.make = make
        self.calls = 0

    def check_conditioning(self, cond, name):
        return Conditioning.of(cond).map(lambda t: t.detach().float())

    def sample(self, cond, settings, **kwargs) -> CapturedSample:
        self.calls += 1
        return self.make(self.calls)


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def sd15_child(
    mode: str,
    size: int,
    n_timesteps: int,
    iterations: int,
    threads: int,
    arch: str,
    sample_crop: int,
    device: str = "cpu",
    dit_taps: int = 6,
) -> None:
    import helpers_spec
    from helpers_spec import random_features

    torch.set_num_threads(threads)
    make_spec = getattr(helpers_spec, ARCH_SPECS[arch])
    spec = make_spec(dit_taps) if arch in DIT_ARCHS else make_spec()
    plan = plan_timesteps(50, PAPER_TIMESTEPS[:n_timesteps])
    branches = ARCH_BRANCHES.get(arch, 2)

    def capture(seed):
        unet, vae, rgb = random_features(
            spec, size, size, plan.used, seed=seed, dtype=torch.float16, branches=branches
        )
        g = torch.Generator().manual_seed(seed + 1)
        lh, lw = spec.latent_size(size, size)
        return CapturedSample(
            spec,
            plan,
            image=torch.rand(1, 3, size, size, generator=g),
            latent=torch.randn(1, spec.latent_channels, lh, lw, generator=g),
            unet=unet,
            vae=vae,
            rgb=rgb,
        )

    example = capture(0)
    g = torch.Generator().manual_seed(2)
    embeddings = Conditioning(
        torch.randn(8, 77, spec.context_dim, generator=g),
        torch.randn(8, spec.pooled_dim, generator=g) if spec.pooled_dim else None,
    )
    conditions = ConditionSampler.fit(embeddings, n_components=4, family=spec.family)
    loss = DiffSketchLoss(ClipImageEncoder.random("ViT-B-32"), build_lpips(random_weights=True))
    config = TrainConfig(
        iterations=iterations,
        lr=1e-4,
        cfg=1.0 if branches == 1 else 5.0,  # the cfg that captures the example's branches
        checkpoint_every=0,
        preview_every=0,
        low_memory=mode == "low_memory",
        sample_crop=sample_crop,
        device=device,
    )
    trainer = Trainer(
        RandomFeatureBackend(spec, capture),
        example,
        example.image.mean(1, keepdim=True),
        conditions,
        loss,
        config,
        pivot=embeddings.map(lambda t: t[:1]),
    )
    example_gb = sample_gb = example.nbytes() / GB  # every capture has the example's shapes
    rss_before, hwm_before = _rss_bytes(), _peak_rss_bytes()
    gpu = torch.device(device).type == "cuda"
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    trainer.run()
    peak = _peak_rss_bytes()
    keys = ("generator_forward_s", "losses_s", "generator_backward_s")
    split = {k[:-2]: _median([h[k] for h in trainer.history]) for k in keys}
    report = {
        "peak_bytes": peak,
        "rss_before_bytes": rss_before,
        "hwm_before_bytes": hwm_before,
        "example_gb": example_gb,
        "sample_gb": sample_gb,
        "params_m": parameter_count(trainer.generator) / 1e6,
        "branches": trainer.generator.branches,
        "taps": len(spec.unet),
        "split": split,
        "peak_gpu_bytes": torch.cuda.max_memory_allocated(device) if gpu else None,
    }
    print(json.dumps(report))


def sd15_section(args) -> dict:
    size, n_t = args.sd15_size or ARCH_SIZES[args.arch], args.sd15_timesteps
    target_gb, full_size = ARCH_TARGETS_GB[args.arch], ARCH_SIZES[args.arch]
    env = dict(os.environ)
    allocator = "glibc malloc defaults"
    if args.malloc_mmap_threshold:
        # A fixed threshold stops glibc raising it (up to 32 MB) after each large free, which keeps
        # freed 1-32 MB activations in the heap and inflates the resident size.
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
        allocator = f"MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold}"
    taps = f", {args.dit_taps} transformer blocks" if args.arch in DIT_ARCHS else ""
    print(
        f"\n== {ARCH_NAMES[args.arch]} shapes{taps}, {size}x{size}, {n_t} timesteps, random features (fp16 storage), "
        f"{args.device} fp32, "
        f"{args.threads} thread(s), {allocator}; the Trainer loop (generator + CLIP ViT-B/32 + LPIPS AlexNet, "
        "random weights) in a fresh process per mode =="
    )
    if (size, n_t) != (full_size, 13):
        print(
            f"   (the < {target_gb:g} GB target is for {full_size}x{full_size} with 13 timesteps; this run is smaller)"
        )
    modes = {}
    for mode in args.sd15_modes.split(","):
        command = [sys.executable, os.path.abspath(__file__), "--_sd15-child", mode]
        command += ["--sd15-size", str(size), "--sd15-timesteps", str(n_t)]
        command += ["--sd15-iterations", str(args.sd15_iterations), "--threads", str(args.threads)]
        command += ["--sample-crop", str(args.sample_crop)]
        command += ["--arch", args.arch, "--device", args.device, "--dit-taps", str(args.dit_taps)]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        wall = time.perf_counter() - start
        name = f"{mode:10s}"
        if result.returncode != 0:
            print(f"{name}: failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
            continue
        r = json.loads(result.stdout.strip().splitlines()[-1])
        modes[mode] = {**r, "seconds_per_iteration": sum(r["split"].values()), "process_wall_s": wall}
        verdict = "met" if r["peak_bytes"] < target_gb * GB else "MISSED"
        crop = f", trained through a {args.sample_crop}x{args.sample_crop} window" if args.sample_crop else ""
        total = sum(r["split"].values())
        split = ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f}%)" for k, v in r["split"].items())
        print(
            f"{name}: peak RSS {r['peak_bytes'] / GB:.2f} GB (target < {target_gb:g} GB: {verdict}); resident before the first "
            f"step {r['rss_before_bytes'] / GB:.2f} GB, of which {r['example_gb']:.2f} GB example features; each new "
            f"sample {r['sample_gb']:.2f} GB{crop}; "
            f"generator {r['params_m']:.1f} M parameters ({r['taps']} taps, {r['branches']} branch(es))\n"
            f"    {total:.1f} s/iteration (median of {args.sd15_iterations}) = {split}; process wall {wall:.0f} s"
        )
        if r["peak_gpu_bytes"] is not None:
            gpu_verdict = "met" if r["peak_gpu_bytes"] < target_gb * GB else "MISSED"
            print(
                f"    peak GPU memory allocated {r['peak_gpu_bytes'] / GB:.2f} GB on {args.device} "
                f"(target < {target_gb:g} GB: {gpu_verdict})"
            )
    return {
        "arch": args.arch,
        "size": size,
        "timesteps": n_t,
        "sample_crop": args.sample_crop,
        "device": args.device,
        "dit_taps": args.dit_taps if args.arch in DIT_ARCHS else None,
        "modes": modes,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations per tiny-model schedule")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--skip-sd15", action="store_true")
    parser.add_argument("--arch", default="sd15", choices=sorted(ARCH_SPECS), help="shapes of part 3")
    parser.add_argument("--sd15-size", type=int, default=0, help="part 3's image size (default: the arch's)")
    parser.add_argument("--sd15-timesteps", type=int, default=13, choices=range(1, 14), metavar="1..13")
    parser.add_argument("--sd15-iterations", type=int, default=1, help="Trainer iterations per SD 1.5 mode")
    parser.add_argument(
        "--sample-crop", type=int, default=0, help="TrainConfig.sample_crop for part 3 (0: whole samples)"
    )
    parser.add_argument(
        "--sd15-modes", default="low_memory,plain", help="comma-separated: low_memory (checkpointed), plain"
    )
    parser.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        default=0,
        help="bytes; sets MALLOC_MMAP_THRESHOLD_ for the SD 1.5 runs",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 repeat; SD 1.5 part at 256x256 with 3 timesteps, low_memory only (a few minutes on 2 cores)",
    )
    parser.add_argument("--device", default="cpu", help="where part 3's generator and losses run (cpu, cuda)")
    parser.add_argument(
        "--dit-taps",
        type=int,
        default=6,
        help="tapped transformer blocks for --arch zimage/sd35m/sd35l/flux (default 6)",
    )
    parser.add_argument("--json", default=None, help="write part 3's figures per mode to this JSON file")
    parser.add_argument("--_sd15-child", dest="sd15_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sd15_child is not None:
        size = args.sd15_size or ARCH_SIZES[args.arch]
        sd15_child(
            args.sd15_child,
            size,
            args.sd15_timesteps,
            args.sd15_iterations,
            args.threads,
            args.arch,
            args.sample_crop,
            args.device,
            args.dit_taps,
        )
        return
    if args.quick:
        args.repeats, args.warmup = 1, 1
        args.sd15_size, args.sd15_timesteps, args.sd15_modes = ARCH_SIZES[args.arch] // 2, 3, "low_memory"
    bad = set(args.sd15_modes.split(",")) - {"low_memory", "plain"}
    if bad:
        parser.error(f"unknown --sd15-modes {sorted(bad)}")
    torch.set_num_threads(args.threads)
    if not args.skip_tiny:
        tiny_section(args)
    if not args.skip_sd15:
        figures = sd15_section(args)
        if args.json:
            atomic_write_bytes(args.json, json.dumps(figures, indent=2).encode())


if __name__ == "__main__":
    main()
