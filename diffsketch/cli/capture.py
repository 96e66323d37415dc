"""``diffsketch capture``: capture the features of your own picture (DDIM inversion, then a replay), for 'diffsketch train'."""

from __future__ import annotations

from pathlib import Path

from ..capture.spec import DIT_NAMES_TEXT
from ..capture.timesteps import DEFAULT_STEPS_TEXT, PAPER_STEPS
from ..errors import InvalidInputError
from ..images import read_image, save_png
from ..terminal import check_input_file, check_output_file, progress_bar
from .common import (
    DEFAULT_CFG,
    SIZE_STAND_IN,
    check_model,
    family_before_loading,
    guidance_arg,
    load_backend,
    model_args,
    sampling_cfg,
    sampling_steps,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "capture",
        help="capture the features of your own picture (DDIM inversion, then a replay), for 'diffsketch train'",
    )
    model_args(p)
    p.add_argument(
        "--picture",
        required=True,
        help="your picture (PNG, JPEG, ...), used at its own size centre-cropped to multiples of 64 (32 for "
        "SDXL); when cropped or resized, the picture as used is written next to --out (.picture.png)",
    )
    p.add_argument(
        "--max-side",
        type=int,
        default=0,
        help="resize the picture (keeping its shape) so its longer side is at most this many pixels before "
        "cropping; 0 (default) keeps its own size. Far above the model's native size, capture and training "
        "are slow and need much memory",
    )
    p.add_argument(
        "--caption",
        default="",
        help="what the picture shows, e.g. 'a photo of a horse in mud' (default: none); a caption usually "
        "brings the replay closer to the picture, and train uses it as the example's prompt",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"steps of the inversion and the replay (DDIM; Euler for {DIT_NAMES_TEXT}; default "
        f"{DEFAULT_STEPS_TEXT})",
    )
    p.add_argument(
        "--cfg",
        type=float,
        default=None,
        help="guidance 'diffsketch train' samples its own images with (default 5.0; 1 for Z-Image Turbo and Flux.1, "
        "which are guidance-distilled); the picture itself is inverted and replayed at guidance 1",
    )
    guidance_arg(p)
    p.add_argument(
        "--timesteps", default=None, help="capture timesteps, e.g. '1,61,161' (default: the paper's 13)"
    )
    p.add_argument(
        "--schedule",
        choices=["full", "fast"],
        default=None,
        help="full (default): every step of the grid; fast: only the captured timesteps (quicker, further "
        "from the picture)",
    )
    p.add_argument("--out", required=True, help="features file to write (.safetensors)")
    p.add_argument(
        "--image",
        default=None,
        help="PNG of the replayed picture, to compare with yours (default: --out with .replay.png)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..backends.base import check_picture
    from ..capture.picture import fit_size
    from ..capture.sampling import FINEST_SIZE_MULTIPLE, SamplingSettings
    from ..capture.timesteps import parse_timesteps

    check_model(args)
    check_input_file(args.picture, "--picture")
    check_output_file(args.out, "--out")
    image = check_output_file(args.image or Path(args.out).with_suffix(".replay.png"), "--image")
    as_used = check_output_file(Path(args.out).with_suffix(".picture.png"), "--out")
    if image.resolve() == Path(args.picture).resolve():
        raise InvalidInputError(
            f"--image {image} is the picture itself; the replay would overwrite it. Give another --image path."
        )
    if as_used.resolve() == Path(args.picture).resolve():
        raise InvalidInputError(
            f"--out {args.out} would put the picture as used at {as_used}, the picture itself. Give another --out path."
        )
    what = f"--picture {args.picture}"
    try:
        pixels = torch.from_numpy(read_image(Path(args.picture)))
    except OSError as e:
        raise InvalidInputError(f"{what} cannot be read as an image ({e}).") from e
    # checked before the model loads: a picture no model takes costs no waiting
    sampling = SamplingSettings(
        steps=args.steps or PAPER_STEPS,  # the model's own once it is loaded
        cfg=DEFAULT_CFG if args.cfg is None else args.cfg,  # the model's own once it is loaded
        width=SIZE_STAND_IN,
        height=SIZE_STAND_IN,
        timesteps=parse_timesteps(args.timesteps),
        schedule=args.schedule,
    )
    sampling.plan(family_before_loading(args.model))  # on the model's own grid (DDIM, or the flow one)
    picture = check_picture(pixels, what)
    width, height = int(picture.shape[-1]), int(picture.shape[-2])
    fit_size(width, height, FINEST_SIZE_MULTIPLE, None, args.max_side, what)
    backend = load_backend(args)
    # this model's own rule, before the progress bar starts
    fit_size(width, height, backend.spec.size_multiple, backend.spec.family, args.max_side, what)
    sampling = sampling.replace(steps=sampling_steps(args, backend), cfg=sampling_cfg(args, backend))
    plan = sampling.plan(backend.spec.family)  # on this model's grid (DDIM, or the flow models')
    bar = progress_bar(2 * len(sampling.denoising_schedule(plan)), "inverting, then replaying")
    result = backend.capture_from_image(
        picture, sampling, caption=args.caption, max_side=args.max_side, what=what, progress=bar
    )
    bar.close()
    for notice in result.notices:
        print(notice)
    result.sample.save(args.out)
    save_png(result.sample.image, image)
    draw_over = str(args.picture)
    if result.sample.size != (width, height):
        save_png(result.picture, as_used)
        draw_over = (
            f"{args.picture} (train fits a drawing of its size or shape the same way) or over {as_used}"
        )
        print(f"the picture as used (cropped/resized): {as_used}")
    print(
        f"{result.sample.summary()}\nfeatures: {args.out}\nreplay of the picture (what the features describe): "
        f"{image}, PSNR {result.replay_psnr:.1f} dB against the picture as used\ndraw your sketch over {draw_over}"
    )
    if result.warning:
        print(f"warning: {result.warning}")
    return 0
