"""The ``diffsketch`` command: the same stages as the ComfyUI nodes, on a diffusers or single-file SD 1.x model.

    diffsketch sample     --model M --prompt P --seed S --out example.safetensors [--image example.png]
    diffsketch timesteps  --model M --samples 8 --out analysis/
    diffsketch fit-conditions --model M --out conditions.safetensors
    diffsketch train      --model M --example example.safetensors --sketch sketch.png --out style.safetensors ...
    diffsketch generate   --model M --generator style.safetensors --prompt P --out pairs/
    diffsketch distill    --model M --generator style.safetensors --out extractor.safetensors ...
    diffsketch extract    INPUTS... --extractor extractor.safetensors --out sketches/ [--ray [ADDRESS]]
    diffsketch eval       PHOTOS_DIR --extractor extractor.safetensors --style xdog --out report/ [--bsds-gt GT_DIR]

Files are the same .safetensors files the nodes read and write. Every option has a --help text.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import DiffSketchError, InvalidInputError
from .images import read_image, save_png
from .terminal import pick_device, progress_bar


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------
def load_backend(args, device: str | None = None):
    import torch

    from .backends.diffusers import DiffusersBackend

    device = device or pick_device(args.device)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    return DiffusersBackend.load(args.model, device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------
def cmd_sample(args) -> int:
    from .capture.timesteps import parse_timesteps

    backend = load_backend(args)
    bar = progress_bar(args.steps, "sampling")
    sample = backend.sample(
        args.prompt,
        seed=args.seed,
        steps=args.steps,
        cfg=args.cfg,
        width=args.width,
        height=args.height,
        timesteps=parse_timesteps(args.timesteps),
        progress=bar,
    )
    bar.close()
    sample.save(args.out)
    image = Path(args.image) if args.image else Path(args.out).with_suffix(".png")
    save_png(sample.image, image)
    print(f"{sample.summary()}\nfeatures: {args.out}\nimage (draw your sketch over it): {image}")
    return 0


def cmd_timesteps(args) -> int:
    from .capture.analysis import plots, run_timestep_analysis
    from .fileio import atomic_write_bytes
    from .train.conditions import load_default_prompts, parse_prompts

    backend = load_backend(args)
    prompts = parse_prompts(Path(args.prompts).read_text()) if args.prompts else load_default_prompts()
    bar = progress_bar(args.samples, "images")
    result = run_timestep_analysis(
        backend,
        prompts,
        args.samples,
        args.steps,
        k=args.k or None,
        seed=args.seed,
        width=args.width,
        height=args.height,
        cfg=args.cfg,
        progress=bar,
    )
    bar.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "timesteps.json", result.to_json().encode())
    for name, img in plots(result).items():
        img.save(out / f"{name}.png")
    print(result.summary())
    print(
        f"chosen timesteps: {result.chosen_text()}  (pass to --timesteps)\nwritten: {out}/timesteps.json, "
        f"pca.png, elbow.png, schedule.png"
    )
    return 0


def cmd_fit_conditions(args) -> int:
    from .train.conditions import ConditionSampler, load_default_prompts, parse_prompts

    backend = load_backend(args)
    prompts = parse_prompts(Path(args.prompts).read_text()) if args.prompts else load_default_prompts()
    bar = progress_bar(len(prompts), "encoding prompts")
    sampler = ConditionSampler.fit_from_prompts(
        backend.encode_prompt, prompts, n_components=args.components, seed=args.seed, progress=bar
    )
    bar.close()
    sampler.save(args.out)
    print(sampler.describe())
    if sampler.notice:
        print(sampler.notice)
    print(f"written: {args.out}")
    return 0


def cmd_extract(args) -> int:
    from .distill.extract_files import SketchOptions, extract_files, list_inputs

    items, missing = list_inputs(args.inputs, exclude=args.out)
    for m in missing:
        print(f"warning: no image matches {m!r}", file=sys.stderr)
    if not items:
        raise InvalidInputError(
            "no input images found: give image files, folders, globs (e.g. 'photos/*.jpg') or a .txt list"
        )
    options = SketchOptions(
        invert=args.invert,
        contrast=args.contrast,
        tile=args.tile,
        batch_size=args.batch_size,
    )
    bar = progress_bar(len(items), "extracting", unit="img")
    try:
        if args.ray is not None:
            from .distill.extract_ray import extract_files_ray

            report = extract_files_ray(
                args.extractor,
                items,
                args.out,
                options,
                address=None if args.ray == "auto-or-local" else args.ray,
                actors=args.ray_actors,
                progress=bar,
            )
        else:
            from .distill.extractor import load_extractor

            model = load_extractor(args.extractor, device=pick_device(args.device))
            report = extract_files(model, items, args.out, options, workers=args.workers, progress=bar)
    finally:
        bar.close()
    print(
        f"{report.written} sketches written to {report.out}"
        + (f" ({report.already_done} already there)" if report.already_done else "")
    )
    if report.failed:
        print(f"{len(report.failed)} unreadable file(s) skipped (listed in the manifest):", file=sys.stderr)
        for path, reason in report.failed[:20]:
            print(f"  {path}: {reason}", file=sys.stderr)
        if len(report.failed) > 20:
            print(f"  ... and {len(report.failed) - 20} more", file=sys.stderr)
        return 1
    return 0


def _loss_weights(args):
    from .train.losses import LossWeights

    return LossWeights(
        lpips=args.lpips_weight,
        l1=args.l1_weight,
        clip_sim=args.clip_weight,
        across=args.across_weight,
        within=args.within_weight,
    )


def _return_freed_memory_to_the_os() -> None:
    """On glibc, serve allocations of 1 MiB and more with mmap, so that freed feature maps go back
    to the OS instead of staying resident in malloc's heap: the SD 1.5 generator step with
    --low-memory then peaks at 3.9 GB instead of 8.3 GB on CPU (benchmarks/train_step.py). Only this command's own
    process is changed, and only where glibc is there; elsewhere nothing happens."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or not name:
        return
    try:
        libc = ctypes.CDLL(name)
        m_mmap_threshold = -3  # from glibc's malloc.h
        libc.mallopt(m_mmap_threshold, 1 << 20)
    except (OSError, AttributeError):
        pass  # not glibc (e.g. musl): its allocator already returns large blocks


def cmd_train(args) -> int:
    import torch

    from .capture.sample import CapturedSample
    from .train.conditions import ConditionSampler
    from .train.losses import DiffSketchLoss, build_lpips, load_clip_image_encoder
    from .train.trainer import TrainConfig, Trainer, prepare_sketch

    backend = load_backend(args)
    device = pick_device(args.device)
    example = CapturedSample.load(args.example)
    sketch_img = torch.from_numpy(read_image(Path(args.sketch)))[None]
    sketch, notices = prepare_sketch(sketch_img, example.size)
    for n in notices:
        print(n)
    weights = _loss_weights(args)
    clip = load_clip_image_encoder(args.clip, quick_gelu=not args.laion_clip, device=device)
    lpips_model = build_lpips(args.lpips, device=device) if weights.lpips > 0 else None
    loss = DiffSketchLoss(clip, lpips_model, weights).to(device)
    config = TrainConfig(
        iterations=args.iterations,
        lr=args.lr,
        h_iter=args.h_iter,
        loss_weights=weights,
        seed=args.seed,
        steps=example.plan.steps,
        cfg=float(example.meta.get("cfg", 5.0)),
        timestep_policy=args.timestep_policy,
        schedule=args.schedule,
        low_memory=args.low_memory,
        checkpoint_every=args.checkpoint_every,
        device=device,
    )
    if str(device) == "cpu":
        _return_freed_memory_to_the_os()
    checkpoint = args.checkpoint or str(Path(args.out).with_suffix(".train.safetensors"))
    trainer = Trainer(
        backend,
        example,
        sketch,
        ConditionSampler.load(args.conditions),
        loss,
        config,
        checkpoint_path=checkpoint,
        resume_from=args.resume,
    )
    bar = progress_bar(args.iterations, "training")
    try:
        trainer.run(on_step=lambda step, losses, preview: bar(step, args.iterations))
    finally:
        bar.close()
    trainer.save_generator(args.out)
    trainer.loss_curve_image().save(Path(args.out).with_suffix(".loss.png"))
    print(f"generator: {args.out}\ncheckpoint (resume with --resume): {checkpoint}")
    return 0


def cmd_generate(args) -> int:
    from .train.generator import load_generator
    from .train.inference import generate_pair

    backend = load_backend(args)
    generator = load_generator(args.generator, device=pick_device(args.device))
    out = Path(args.out)
    for k in range(args.count):
        image, sketch = generate_pair(
            backend,
            generator,
            args.prompt,
            seed=args.seed + k,
            steps=args.steps,
            cfg=args.cfg,
            width=args.width,
            height=args.height,
        )
        save_png(image, out / f"{args.seed + k:06d}_image.png")
        save_png(sketch, out / f"{args.seed + k:06d}_sketch.png")
    print(f"{args.count} image/sketch pair(s) written to {out}")
    return 0


def cmd_distill(args) -> int:
    from .distributed import Group, launch_device, launch_from_environment

    # under torchrun / accelerate launch every process runs this command; they share the pairs
    # and train one student with DistributedDataParallel
    launch = launch_from_environment()
    device = launch_device(launch, args.device)
    group = Group(launch, device) if launch is not None else None
    try:
        return _distill(args, device, group)
    finally:
        if group is not None:
            group.close()


def _distill(args, device, group) -> int:
    from .distill import DistillConfig, distill
    from .distill.extractor import save_extractor
    from .train.conditions import ConditionSampler
    from .train.generator import load_generator
    from .train.losses import build_lpips

    backend = load_backend(args, device)
    config = DistillConfig(
        iterations=args.iterations,
        batch_size=args.batch_size,
        crop_size=args.crop_size,
        lr=args.lr,
        seed=args.seed,
        lpips_weight=0.0 if args.no_lpips else 1.0,
    )
    lpips_model = None if args.no_lpips else build_lpips(args.lpips, device=device)
    main = group is None or group.is_main
    label = "" if group is None else f" (rank 0 of {group.world_size})"
    pairs_bar = progress_bar(args.pairs, "pairs" + label) if main else None
    train_bar = progress_bar(args.iterations, "training") if main else None
    try:
        student = distill(
            backend,
            load_generator(args.generator, device=device),
            ConditionSampler.load(args.conditions),
            args.pairs_dir,
            args.pairs,
            config,
            seed=args.seed,
            steps=args.steps,
            cfg=args.cfg,
            width=args.width,
            height=args.height,
            schedule=args.schedule,
            lpips_model=lpips_model,
            progress=pairs_bar,
            on_step=(lambda step, losses, preview: train_bar(step, args.iterations)) if main else None,
            device=device,
            group=group,
            pairs_batch=args.pairs_batch,
        )
    finally:
        for bar in (pairs_bar, train_bar):
            if bar is not None:
                bar.close()
    if main:
        save_extractor(args.out, student.cpu(), student.meta)
        print(f"extractor: {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------------------------
def _model_args(p):
    p.add_argument(
        "--model",
        required=True,
        help="SD 1.x model: a diffusers folder or a single-file .safetensors checkpoint",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")


def _sampling_args(p, steps=50):
    p.add_argument("--steps", type=int, default=steps, help=f"DDIM steps (default {steps})")
    p.add_argument("--cfg", type=float, default=5.0, help="classifier-free guidance scale (default 5.0)")
    p.add_argument("--width", type=int, default=512, help="width in pixels, a multiple of 64 (default 512)")
    p.add_argument("--height", type=int, default=512, help="height in pixels, a multiple of 64 (default 512)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(
        prog="diffsketch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--version", action="version", version=f"diffsketch {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="sample an example image and capture its features")
    _model_args(p)
    _sampling_args(p)
    p.add_argument("--prompt", required=True, help="the example's prompt")
    p.add_argument("--seed", type=int, default=50, help="noise seed (default 50)")
    p.add_argument(
        "--timesteps", default=None, help="capture timesteps, e.g. '1,61,161' (default: the paper's 13)"
    )
    p.add_argument("--out", required=True, help="features file to write (.safetensors)")
    p.add_argument("--image", default=None, help="PNG of the example image (default: next to --out)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("timesteps", help="representative-timestep analysis (PCA + k-means) with plots")
    _model_args(p)
    _sampling_args(p)
    p.add_argument("--samples", type=int, default=8, help="images to sample (default 8)")
    p.add_argument("--k", type=int, default=0, help="number of timesteps; 0 = elbow method (default)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument(
        "--prompts", default=None, help="text file, one prompt per line (default: the built-in list)"
    )
    p.add_argument("--out", required=True, help="output folder for timesteps.json and the plots")
    p.set_defaults(func=cmd_timesteps)

    p = sub.add_parser("fit-conditions", help="fit the CDST condition distribution with the model's CLIP")
    _model_args(p)
    p.add_argument(
        "--prompts", default=None, help="text file, one prompt per line (default: the built-in list)"
    )
    p.add_argument("--components", type=int, default=512, help="PCA components (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--out", required=True, help="conditions file to write (.safetensors)")
    p.set_defaults(func=cmd_fit_conditions)

    p = sub.add_parser("train", help="train a DiffSketch generator from one example and its sketch")
    _model_args(p)
    p.add_argument("--example", required=True, help="features of the example (from 'diffsketch sample')")
    p.add_argument(
        "--sketch", required=True, help="your sketch of the example image (PNG; resized if needed)"
    )
    p.add_argument("--conditions", required=True, help="CDST conditions (from 'diffsketch fit-conditions')")
    p.add_argument("--clip", required=True, help="CLIP ViT-B/32 .safetensors (file or folder)")
    p.add_argument(
        "--laion-clip", action="store_true", help="the CLIP weights are LAION/open_clip ones (GELU)"
    )
    p.add_argument("--lpips", default=None, help="AlexNet weights for LPIPS (default: the torch hub cache)")
    p.add_argument("--iterations", type=int, default=1200, help="iterations (default 1200)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--h-iter", type=int, default=1000, help="CDST blend iterations (default 1000)")
    for name, default in (("lpips", 15.0), ("l1", 30.0), ("clip", 30.0), ("across", 1.0), ("within", 1.0)):
        p.add_argument(
            f"--{name}-weight", type=float, default=default, help=f"loss weight (default {default})"
        )
    p.add_argument(
        "--timestep-policy",
        choices=["fixed", "random13"],
        default="fixed",
        help="fixed: the example's timesteps (the paper); random13: the released code",
    )
    p.add_argument(
        "--schedule",
        choices=["full", "fast"],
        default="full",
        help="fast: sample only at the captured timesteps + the last step (~4x fewer UNet runs)",
    )
    p.add_argument(
        "--low-memory",
        action="store_true",
        help="gradient checkpointing in the generator: far less memory for ~1 more forward pass per step",
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="checkpoint interval (default 100)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: next to --out)")
    p.add_argument("--resume", default=None, help="continue from this checkpoint")
    p.add_argument("--out", required=True, help="generator file to write (.safetensors)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="sample new images and their sketches with a trained generator")
    _model_args(p)
    _sampling_args(p)
    p.add_argument("--generator", required=True, help="generator .safetensors")
    p.add_argument("--prompt", required=True, help="what to draw")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--count", type=int, default=1, help="number of pairs (seeds seed..seed+count-1)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "distill",
        help="distill a generator into a fast extractor (torchrun/accelerate launch: on several GPUs/nodes)",
    )
    _model_args(p)
    _sampling_args(p)
    p.add_argument("--generator", required=True, help="generator .safetensors")
    p.add_argument("--conditions", required=True, help="CDST conditions .safetensors")
    p.add_argument(
        "--pairs", type=int, default=1000, help="pairs to generate (default 1000; the paper: 30000)"
    )
    p.add_argument("--pairs-dir", required=True, help="folder for the pairs (resumable)")
    p.add_argument(
        "--pairs-batch",
        type=int,
        default=None,
        help="images sampled per call while making pairs (default: what fits; 1 on the CPU)",
    )
    p.add_argument(
        "--schedule",
        choices=["full", "fast"],
        default="full",
        help="pair sampling: full grid, or fast (only the captured timesteps + the last step)",
    )
    from .distill import DistillConfig

    defaults = DistillConfig()
    p.add_argument(
        "--iterations",
        type=int,
        default=defaults.iterations,
        help=f"training steps (default {defaults.iterations})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help=f"batch size (default {defaults.batch_size})",
    )
    p.add_argument(
        "--crop-size",
        type=int,
        default=defaults.crop_size,
        help=f"training crop (default {defaults.crop_size})",
    )
    p.add_argument("--lr", type=float, default=defaults.lr, help=f"learning rate (default {defaults.lr:g})")
    p.add_argument("--lpips", default=None, help="AlexNet weights for LPIPS (default: the torch hub cache)")
    p.add_argument("--no-lpips", action="store_true", help="train on L1 only")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--out", required=True, help="extractor file to write (.safetensors)")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser(
        "extract",
        help="turn images into sketches with a distilled extractor (resumable; --ray for a cluster)",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        help="image files, folders (recursive), globs, or .txt/.lst files listing one image path per line",
    )
    p.add_argument("--extractor", required=True, help="extractor .safetensors (from distill)")
    p.add_argument(
        "--out",
        required=True,
        help="output folder: <key>.png per input (subfolders mirrored) and manifest.jsonl; a rerun skips "
        "what is done",
    )
    p.add_argument("--invert", action="store_true", help="white lines on black (ControlNet convention)")
    p.add_argument("--contrast", type=float, default=1.0, help="line contrast (>1 darkens faint strokes)")
    p.add_argument("--tile", type=int, default=1024, help="tile size for large images (default 1024)")
    p.add_argument(
        "--batch-size", type=int, default=4, help="images (of one size) per network call (default 4)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decoding processes (default: one per core but one, at most 8; 0 = none)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="auto-or-local",
        default=None,
        metavar="ADDRESS",
        help="run on a Ray cluster (pip install 'diffsketch[scale]'): at ADDRESS, else RAY_ADDRESS's or a "
        "new local one. Put it after the inputs or write --ray=ADDRESS",
    )
    p.add_argument(
        "--ray-actors",
        type=int,
        default=None,
        help="extraction actors on the cluster (default: one per GPU, else one per two CPUs)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (without --ray)")
    p.set_defaults(func=cmd_extract)

    from .eval.cli import add_eval_parser

    add_eval_parser(sub)
    return ap


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DiffSketchError as e:
        print(f"diffsketch {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffsketch {args.command}: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
