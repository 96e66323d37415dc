"""``diffsketch sample``: sample an example image and capture its features."""

from __future__ import annotations

from pathlib import Path

from ..capture.timesteps import PAPER_STEPS
from ..images import save_png
from ..terminal import check_output_file, progress_bar
from .common import (
    DEFAULT_CFG,
    SIZE_STAND_IN,
    check_model,
    family_before_loading,
    load_backend,
    model_args,
    model_size,
    print_prompt_notice,
    sampling_args,
    sampling_cfg,
    sampling_steps,
)


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample an example image and capture its features")
    model_args(p)
    sampling_args(p)
    p.add_argument("--prompt", required=True, help="the example's prompt")
    p.add_argument("--seed", type=int, default=50, help="noise seed (default 50)")
    p.add_argument(
        "--timesteps", default=None, help="capture timesteps, e.g. '1,61,161' (default: the paper's 13)"
    )
    p.add_argument("--out", required=True, help="features file to write (.safetensors)")
    p.add_argument("--image", default=None, help="PNG of the example image (default: next to --out)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..capture.sampling import SamplingSettings
    from ..capture.timesteps import parse_timesteps

    check_model(args)
    check_output_file(args.out, "--out")
    if args.image:
        check_output_file(args.image, "--image")
    sampling = SamplingSettings(
        seed=args.seed,
        steps=args.steps or PAPER_STEPS,  # the model's own once it is loaded
        cfg=DEFAULT_CFG if args.cfg is None else args.cfg,  # the model's own once it is loaded
        width=args.width or SIZE_STAND_IN,
        height=args.height or SIZE_STAND_IN,
        timesteps=parse_timesteps(args.timesteps),
    )
    sampling.plan(family_before_loading(args.model))  # too few --steps costs no waiting for the model
    backend = load_backend(args)
    print_prompt_notice(backend, args.prompt)
    sampling = sampling.replace(
        steps=sampling_steps(args, backend), cfg=sampling_cfg(args, backend), **model_size(args, backend)
    )
    bar = progress_bar(sampling.steps, "sampling")
    sample = backend.sample(args.prompt, sampling, progress=bar)
    bar.close()
    sample.save(args.out)
    image = Path(args.image) if args.image else Path(args.out).with_suffix(".png")
    save_png(sample.image, image)
    print(f"{sample.summary()}\nfeatures: {args.out}\nimage (draw your sketch over it): {image}")
    return 0
