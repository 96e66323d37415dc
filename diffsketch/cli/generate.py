"""``diffsketch generate``: sample new images and their sketches with a trained generator."""

from __future__ import annotations

from ..capture.timesteps import PAPER_STEPS
from ..images import save_png
from ..terminal import check_output_folder, pick_device, progress_bar
from .common import (
    DEFAULT_CFG,
    SIZE_STAND_IN,
    check_file_kind,
    check_model,
    load_backend,
    model_args,
    model_size,
    print_prompt_notice,
    sampling_args,
    sampling_cfg,
    sampling_steps,
    schedule_arg,
)


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="sample new images and their sketches with a trained generator")
    model_args(p)
    sampling_args(p)
    p.add_argument("--generator", required=True, help="generator .safetensors")
    p.add_argument("--prompt", required=True, help="what to draw")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--count", type=int, default=1, help="number of pairs (seeds seed..seed+count-1)")
    schedule_arg(p)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..capture.sampling import SamplingSettings
    from ..train.generator import GENERATOR_KIND, load_generator
    from ..train.inference import check_generator_fits, generate_pair, generator_guidance

    check_model(args)
    check_file_kind(args.generator, "--generator", GENERATOR_KIND)
    out = check_output_folder(args.out, "--out")
    sampling = SamplingSettings(
        steps=args.steps or PAPER_STEPS,  # the model's own once it is loaded
        cfg=DEFAULT_CFG if args.cfg is None else args.cfg,  # the generator's or model's once loaded
        width=args.width or SIZE_STAND_IN,
        height=args.height or SIZE_STAND_IN,
        schedule=args.schedule,
    )
    generator = load_generator(args.generator, device=pick_device(args.device))
    backend = load_backend(args, recorded_guidance=generator_guidance(generator))
    print_prompt_notice(backend, args.prompt)
    sampling = sampling.replace(
        steps=sampling_steps(args, backend),
        cfg=sampling_cfg(args, backend, generator),
        **model_size(args, backend),
    )
    for notice in check_generator_fits(backend, generator):
        print(notice)
    bar = progress_bar(args.count, "generating", unit="pair")
    try:
        for k in range(args.count):
            image, sketch = generate_pair(
                backend,
                generator,
                args.prompt,
                sampling.replace(seed=args.seed + k),
                progress=lambda done, total, k=k: bar(k * total + done, args.count * total),
            )
            save_png(image, out / f"{args.seed + k:06d}_image.png")
            save_png(sketch, out / f"{args.seed + k:06d}_sketch.png")
    finally:
        bar.close()
    print(f"{args.count} image/sketch pair(s) written to {out}")
    return 0
