"""``diffsketch fit-conditions``: fit the CDST condition distribution with the model's CLIP."""

from __future__ import annotations

from pathlib import Path

from ..terminal import check_input_file, check_output_file, progress_bar
from .common import (
    check_model,
    load_backend,
    model_args,
)


def add_parser(sub) -> None:
    p = sub.add_parser("fit-conditions", help="fit the CDST condition distribution with the model's CLIP")
    model_args(p)
    p.add_argument(
        "--prompts", default=None, help="text file, one prompt per line (default: the built-in list)"
    )
    p.add_argument("--components", type=int, default=512, help="PCA components (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--out", required=True, help="conditions file to write (.safetensors)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train.conditions import ConditionSampler, load_default_prompts, parse_prompts

    check_model(args)
    if args.prompts:
        check_input_file(args.prompts, "--prompts")
    check_output_file(args.out, "--out")
    backend = load_backend(args)
    prompts = parse_prompts(Path(args.prompts).read_text()) if args.prompts else load_default_prompts()
    bar = progress_bar(len(prompts), "encoding prompts")
    sampler = ConditionSampler.fit_from_prompts(
        backend.encode_prompt,
        prompts,
        n_components=args.components,
        seed=args.seed,
        progress=bar,
        family=backend.spec.family,
    )
    bar.close()
    sampler.save(args.out)
    print(sampler.describe())
    if sampler.notice:
        print(sampler.notice)
    print(f"written: {args.out}")
    return 0
