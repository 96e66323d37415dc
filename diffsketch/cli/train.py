"""``diffsketch train``: train a DiffSketch generator from one example and its sketch."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..errors import InvalidInputError, TrainingInterrupted
from ..images import read_image
from ..terminal import check_input_file, check_output_file, pick_device, progress_bar
from .common import (
    check_file_kind,
    check_model,
    load_backend,
    model_args,
)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a DiffSketch generator from one example and its sketch")
    model_args(p)
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
    p.add_argument(
        "--sample-crop",
        type=int,
        default=0,
        help="train on a random N x N window of each new sample (0: whole; SDXL at 1024 on a small GPU: 512)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="checkpoint interval (default 100)")
    p.add_argument(
        "--checkpoint", default=None, help="checkpoint file (default: next to --out, <out>.train.safetensors)"
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="CHECKPOINT",
        help="continue the run in the checkpoint (default: --checkpoint's file); --iterations may be raised",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="start from step 0 although the checkpoint file holds a run (it is overwritten)",
    )
    p.add_argument(
        "--out", required=True, help="generator file to write (.safetensors); the loss plot goes beside it"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..capture.picture import PICTURE_FIT_KEY
    from ..capture.sample import FEATURES_KIND, CapturedSample
    from ..fileio import read_header
    from ..train.conditions import CONDITIONS_KIND, ConditionSampler
    from ..train.losses import DiffSketchLoss, build_lpips, load_clip_image_encoder
    from ..train.trainer import CHECKPOINT_KIND, TrainConfig, Trainer, prepare_sketch

    # every path first, then the small models, the SD model last: a mistake costs no waiting
    check_model(args)
    check_file_kind(args.example, "--example", FEATURES_KIND)
    check_input_file(args.sketch, "--sketch")
    check_file_kind(args.conditions, "--conditions", CONDITIONS_KIND)
    check_input_file(args.clip, "--clip", folder_ok=True)
    if args.lpips is not None:
        check_input_file(args.lpips, "--lpips", folder_ok=True)
    out = check_output_file(args.out, "--out")
    checkpoint = check_output_file(args.checkpoint or out.with_suffix(".train.safetensors"), "--checkpoint")
    if args.resume is not None and args.restart:
        raise InvalidInputError(
            "--resume and --restart exclude each other: continue the run, or start it over."
        )
    resume_from = None
    if args.resume is not None:
        resume_from = check_file_kind(args.resume or checkpoint, "--resume", CHECKPOINT_KIND)
    elif checkpoint.exists() and not args.restart:
        step = read_header(checkpoint, CHECKPOINT_KIND).get("step")
        raise InvalidInputError(
            f"{checkpoint} holds a training run (step {step}): continue it with --resume, or start over with "
            "--restart (which overwrites it)."
        )

    device = pick_device(args.device)
    example = CapturedSample.load(args.example)
    try:
        sketch_img = torch.from_numpy(read_image(Path(args.sketch)))[None]
    except OSError as e:
        raise InvalidInputError(f"--sketch {args.sketch} cannot be read as an image ({e}).") from e
    sketch, notices = prepare_sketch(sketch_img, example.size, example.meta.get(PICTURE_FIT_KEY))
    for n in notices:
        print(n)
    conditions = ConditionSampler.load(args.conditions)
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
        sample_crop=args.sample_crop,
        checkpoint_every=args.checkpoint_every,
        device=device,
    )
    # its own samples embed the example's guidance (Flux.1 dev)
    backend = load_backend(args, recorded_guidance=example.meta.get("guidance"))
    if str(device) == "cpu":
        _return_freed_memory_to_the_os()
    trainer = Trainer(
        backend,
        example,
        sketch,
        conditions,
        loss,
        config,
        checkpoint_path=checkpoint,
        resume_from=resume_from,
    )
    for n in trainer.notices:
        print(n)
    if resume_from is not None:
        print(f"resumed at step {trainer.step} of {args.iterations} from {resume_from}")
    bar = progress_bar(args.iterations, "training")
    bar(trainer.step, args.iterations)
    try:
        trainer.run(on_step=lambda step, losses, preview: bar(step, args.iterations))
    except (KeyboardInterrupt, TrainingInterrupted):
        bar.close()
        saved = trainer.last_checkpoint
        print(f"diffsketch train: cancelled at step {trainer.step} of {args.iterations}", file=sys.stderr)
        if saved is None:
            print("no checkpoint was written before the cancel", file=sys.stderr)
        else:
            print(
                f"checkpoint (step {trainer.last_checkpoint_step}): {saved}\nto continue: {_resume_command(args)}",
                file=sys.stderr,
            )
        return 130
    finally:
        bar.close()
    trainer.save_generator(out)
    plot = out.with_suffix(".loss.png")
    trainer.loss_curve_image().save(plot)
    print(f"generator: {out}\nloss plot: {plot}\ncheckpoint (continue with --resume): {checkpoint}")
    return 0


def _resume_command(args) -> str:
    """The command line that was run, with ``--resume`` instead of any --resume/--restart."""
    kept, skip = [], False
    for item in args.argv:
        if skip:
            skip = False
            if not item.startswith("-"):
                continue
        if item == "--restart" or item.startswith("--resume="):
            continue
        if item == "--resume":
            skip = True
            continue
        kept.append(item)
    return "diffsketch " + shlex.join([*kept, "--resume"])


def _loss_weights(args):
    from ..train.losses import LossWeights

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
