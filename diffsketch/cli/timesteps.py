"""``diffsketch timesteps``: representative-timestep analysis (PCA + k-means) with plots."""

from __future__ import annotations

from pathlib import Path

from ..capture.timesteps import PAPER_STEPS
from ..terminal import check_input_file, check_output_folder, progress_bar
from .common import (
    check_model,
    load_backend,
    model_args,
    model_size,
    sampling_args,
    sampling_cfg,
)


def add_parser(sub) -> None:
    p = sub.add_parser("timesteps", help="representative-timestep analysis (PCA + k-means) with plots")
    model_args(p)
    sampling_args(p, steps=PAPER_STEPS)  # every step is analysed: the fine grid whatever the model
    p.add_argument("--samples", type=int, default=8, help="images to sample (default 8)")
    p.add_argument("--k", type=int, default=0, help="number of timesteps; 0 = elbow method (default)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument(
        "--prompts", default=None, help="text file, one prompt per line (default: the built-in list)"
    )
    p.add_argument("--out", required=True, help="output folder for timesteps.json and the plots")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..capture.analysis import plots, run_timestep_analysis
    from ..fileio import atomic_write_bytes
    from ..train.conditions import load_default_prompts, parse_prompts

    check_model(args)
    if args.prompts:
        check_input_file(args.prompts, "--prompts")
    check_output_folder(args.out, "--out")
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
        cfg=sampling_cfg(args, backend),
        **model_size(args, backend),
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
