"""The ``diffsketch eval`` sub-command (registered by :mod:`diffsketch.cli`)."""

from __future__ import annotations

import sys

from ..errors import DiffSketchError
from ..styles import STYLES
from ..terminal import check_input_file, check_output_folder, pick_device, progress_bar
from .run import ALL_METRICS, evaluate


def add_eval_parser(subparsers):
    """Register ``diffsketch eval`` on an ``argparse`` subparsers object; returns the parser."""

    p = subparsers.add_parser(
        "eval",
        help="score an extractor against an automatic style (LPIPS, SSIM, L1, FID, CLIP; BSDS500 ODS/OIS/AP)",
        description=(
            "Ground-truth sketches come from --style applied to each photo; the extractor under test is "
            "scored against them. Writes results.md, results.csv and grid.png into --out. Metrics whose "
            "weights are missing are skipped with a note unless named in --metrics."
        ),
    )
    p.add_argument("photos", help="folder of photos (e.g. BSDS500 images/test or COCO val2017)")
    p.add_argument(
        "--style", default="xdog", choices=sorted(STYLES), help="ground-truth style (default xdog)"
    )
    p.add_argument(
        "--style-weights",
        default=None,
        help="converted .safetensors weights of a learned style (hed, informative_*), or their folder",
    )
    p.add_argument("--extractor", required=True, help="extractor .safetensors to evaluate (from distill)")
    p.add_argument("--out", required=True, help="output folder for results.md, results.csv, grid.png")
    p.add_argument(
        "--bsds-gt",
        default=None,
        help="BSDS500 groundTruth folder (.mat files) for the boundary benchmark (ODS/OIS/AP)",
    )
    p.add_argument(
        "--lpips-weights",
        default=None,
        help="torchvision AlexNet weights (alexnet-owt-7be5be79.pth/.safetensors) or folder (default: torch hub cache)",
    )
    p.add_argument(
        "--fid-weights", default=None, help="pytorch-fid Inception weights (.safetensors) or folder"
    )
    p.add_argument(
        "--clip-weights", default=None, help="CLIP ViT-B/32 image encoder (.safetensors) or folder"
    )
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N photos")
    p.add_argument("--size", type=int, default=None, help="resize photos so the shorter side is N px first")
    p.add_argument(
        "--metrics",
        default=None,
        help=f"comma-separated subset of {','.join(ALL_METRICS)}; named metrics are required (default: all available)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, ...")
    p.set_defaults(func=cmd_eval)
    return p


def _tqdm_progress():
    """One command-line progress bar per stage ("images", "boundaries")."""
    bars: dict[str, object] = {}

    def update(stage: str, done: int, total: int):
        if stage not in bars:
            bars[stage] = progress_bar(total, stage, unit="img")
        bars[stage](done, total)

    def close():
        for bar in bars.values():
            bar.close()

    update.close = close
    return update


def cmd_eval(args) -> int:
    """Run ``diffsketch eval``: 0 = done, 1 = done but files were skipped or unpaired, 2 = error."""
    bar = _tqdm_progress()
    try:
        check_input_file(args.photos, "photos folder", folder_ok=True)
        check_input_file(args.extractor, "--extractor")
        check_output_folder(args.out, "--out")
        report = evaluate(
            args.photos,
            args.out,
            style=args.style,
            style_weights=args.style_weights,
            extractor_path=args.extractor,
            metrics=args.metrics,
            lpips_weights=args.lpips_weights,
            fid_weights=args.fid_weights,
            clip_weights=args.clip_weights,
            bsds_gt_dir=args.bsds_gt,
            max_images=args.max_images,
            size=args.size,
            device=pick_device(args.device),
            progress=bar,
        )
    except (DiffSketchError, ImportError) as e:
        print(f"diffsketch eval: error: {e}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    print(report.summary_text())
    if report.has_problems:
        for path, reason in report.skipped_files:
            print(f"skipped {path}: {reason}", file=sys.stderr)
        if report.boundary_error:
            print(f"boundary benchmark not run: {report.boundary_error}", file=sys.stderr)
        if report.pairing is not None and not report.pairing.clean:
            print(report.pairing.summary(), file=sys.stderr)
        return 1
    return 0
