"""``diffsketch distill``: distill a generator into a fast extractor (torchrun/accelerate launch: on several GPUs/nodes)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import Cancelled, InvalidInputError, TrainingInterrupted
from ..terminal import check_input_file, check_output_file, check_output_folder, pick_device, progress_bar
from .common import (
    check_file_kind,
    check_model,
    load_backend,
    model_args,
    model_size,
    sampling_args,
    sampling_cfg,
    sampling_steps,
    schedule_arg,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "distill",
        help="distill a generator into a fast extractor (torchrun/accelerate launch: on several GPUs/nodes)",
    )
    model_args(p)
    sampling_args(p)
    p.add_argument("--generator", required=True, help="generator .safetensors")
    p.add_argument("--conditions", required=True, help="CDST conditions .safetensors")
    p.add_argument(
        "--pairs", type=int, default=1000, help="pairs to generate (default 1000; the paper: 30000)"
    )
    p.add_argument("--pairs-dir", required=True, help="folder for the pairs (resumable)")
    p.add_argument(
        "--photos",
        default=None,
        metavar="DIR",
        help="folder of your own photos: a share of the pairs is made from them (each photo fitted to the "
        "pair size, inverted and replayed with the model: about 2x --steps UNet evaluations per photo pair; "
        "the generator sketches it), so the extractor also learns on the kind of image you use it on. Every "
        "image file directly in DIR, sorted; unreadable files and files sharing a name (a.png, a.jpg) are "
        "left out and listed",
    )
    p.add_argument(
        "--photo-share",
        type=float,
        default=None,
        metavar="R",
        help="fraction of --pairs made from --photos, 0..1 (default 0.5; rounded): pair folders with other "
        "photos or another share are not mixed (use another --pairs-dir)",
    )
    p.add_argument(
        "--pairs-batch",
        type=int,
        default=None,
        help="images sampled per call while making pairs (default: what fits; 1 on the CPU)",
    )
    from ..distill import DistillConfig

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
    schedule_arg(p)
    p.add_argument("--out", required=True, help="extractor file to write (.safetensors)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train.conditions import CONDITIONS_KIND
    from ..train.generator import GENERATOR_KIND

    check_model(args)
    check_file_kind(args.generator, "--generator", GENERATOR_KIND)
    check_file_kind(args.conditions, "--conditions", CONDITIONS_KIND)
    if args.lpips is not None and not args.no_lpips:
        check_input_file(args.lpips, "--lpips", folder_ok=True)
    check_output_folder(args.pairs_dir, "--pairs-dir")
    out = check_output_file(args.out, "--out")
    photos = _read_photos(args)

    from ..distributed import Group, launch_device, launch_from_environment

    # under torchrun / accelerate launch every process runs this command; they share the pairs
    # and train one student with DistributedDataParallel
    launch = launch_from_environment()
    device = launch_device(launch, pick_device(args.device))
    group = Group(launch, device) if launch is not None else None
    try:
        return _distill(args, out, device, group, photos)
    finally:
        if group is not None:
            group.close()


def _read_photos(args):
    """The photos of ``--photos`` (None without it), every file left out printed, or an error."""
    from ..distill.photos import check_photo_share, read_photo_folder

    if args.photos is None:
        if args.photo_share is not None:
            raise InvalidInputError("--photo-share needs --photos (a folder of your photos).")
        return None
    check_photo_share(args.photo_share, [])
    photos, skipped = read_photo_folder(args.photos)
    for line in skipped:
        print(f"--photos: left out {line}", file=sys.stderr)
    return photos


def _distill(args, out: Path, device: str, group, photos) -> int:
    from ..capture.sampling import SamplingSettings
    from ..distill import DistillConfig, distill
    from ..distill.extractor import save_extractor
    from ..train.conditions import ConditionSampler
    from ..train.generator import load_generator
    from ..train.inference import check_generator_fits, generator_guidance
    from ..train.losses import build_lpips

    config = DistillConfig(
        iterations=args.iterations,
        batch_size=args.batch_size,
        crop_size=args.crop_size,
        lr=args.lr,
        seed=args.seed,
        lpips_weight=0.0 if args.no_lpips else 1.0,
    )
    lpips_model = None if args.no_lpips else build_lpips(args.lpips, device=device)
    generator = load_generator(args.generator, device=device)
    conditions = ConditionSampler.load(args.conditions)
    backend = load_backend(args, device, recorded_guidance=generator_guidance(generator))
    if group is None or group.is_main:
        for notice in check_generator_fits(backend, generator):
            print(notice)
    # one bar at a time: the pairs' until the student's training starts; in a launch, rank 0's
    # (its pairs bar counts its own share)
    main = group is None or group.is_main
    label = "" if group is None else f" (rank 0 of {group.world_size})"
    bars = {"pairs": progress_bar(args.pairs, "pairs" + label, unit="pair")} if main else {}

    def notice(text: str) -> None:
        # notices come once the pairs are done (how the photos replayed, the training plan)
        if not main:
            return
        if "pairs" in bars:
            bars.pop("pairs").close()
        print(text)

    def training_bar():
        if "training" not in bars:
            bars["training"] = progress_bar(args.iterations, "training")
        return bars["training"]

    try:
        student = distill(
            backend,
            generator,
            conditions,
            args.pairs_dir,
            args.pairs,
            config,
            SamplingSettings(
                seed=args.seed,
                steps=sampling_steps(args, backend),
                cfg=sampling_cfg(args, backend, generator),
                schedule=args.schedule,
                **model_size(args, backend),
            ),
            lpips_model=lpips_model,
            progress=(lambda done, total: bars["pairs"](done, total)) if main else None,
            on_step=(lambda step, losses, preview: training_bar()(step, args.iterations)) if main else None,
            notice=notice,
            device=device,
            group=group,
            pairs_batch=args.pairs_batch,
            photos=photos,
            photo_share=args.photo_share,
        )
    except (KeyboardInterrupt, TrainingInterrupted, Cancelled):
        for bar in bars.values():
            bar.close()
        if not main:
            return 130
        print(
            f"diffsketch distill: cancelled; the pairs made so far and the student's checkpoint are kept in "
            f"{args.pairs_dir}: run the same command again to continue.",
            file=sys.stderr,
        )
        return 130
    if main:  # a finished run that was only loaded reports no steps
        training_bar()(student.meta["iterations_done"], args.iterations)
    for bar in bars.values():
        bar.close()
    if main:
        save_extractor(out, student.cpu(), student.meta)
        print(f"extractor: {out}")
    return 0
