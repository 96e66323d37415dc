"""``diffsketch extract``: turn images or a video into sketches with a distilled extractor (resumable; --ray for a cluster)."""

from __future__ import annotations

import sys

from ..distill.extract import DTYPE_CHOICES
from ..errors import InvalidInputError
from ..terminal import check_input_file, check_output_folder, pick_device, progress_bar
from .common import (
    check_file_kind,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "extract",
        help="turn images or a video into sketches with a distilled extractor (resumable; --ray for a cluster)",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        help="image files, folders (recursive), globs, or .txt/.lst files listing one image path per line; "
        "or one video file (then --out is the video to write, e.g. sketch.mp4)",
    )
    p.add_argument(
        "--extractor",
        default=None,
        help="extractor .safetensors (from distill); default: the built-in one, distilled from real HED "
        "(HED's line style, not a DiffSketch style)",
    )
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
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="the network's precision: auto (default: bf16 on a CPU that computes it in hardware, else "
        "fp32; bf16, or fp16 where unsupported, on CUDA), fp32, bf16 or fp16 (GPU only). An output folder "
        "keeps the precision it was begun with",
    )
    p.add_argument(
        "--temporal",
        choices=("off", "stabilize"),
        default=None,
        help="video only: 'stabilize' (default) carries lines along the motion so they do not flicker "
        "(needs OpenCV: pip install opencv-python-headless); 'off' draws each frame on its own",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="video only: replace the output video if it exists"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from ..distill.extract_files import SketchOptions, extract_files, list_inputs
    from ..distill.extractor import EXTRACTOR_KIND, default_extractor_path
    from ..video import is_video_path

    video = len(args.inputs) == 1 and is_video_path(args.inputs[0])
    if not video and args.temporal is not None:
        raise InvalidInputError(
            "--temporal applies to a video input (one video file); these inputs are images."
        )
    if video and args.ray is not None:
        raise InvalidInputError(
            "--ray extracts images; a video is read and written as one stream, without it."
        )
    if args.extractor is None:
        extractor_file = default_extractor_path()
        print(
            f"using the built-in extractor ({extractor_file.name}): HED's line style, distilled from "
            "real HED -- not a DiffSketch style; pass --extractor for one you trained",
            file=sys.stderr,
        )
    else:
        extractor_file = check_file_kind(args.extractor, "--extractor", EXTRACTOR_KIND)
    if video:
        from ..distill.extract import resolve_dtype
        from ..distill.extractor import load_extractor
        from ..video import VideoReader, check_video_output, extract_video

        source = check_input_file(args.inputs[0], "input video")
        out = check_video_output(args.out, overwrite=args.overwrite)
        temporal = args.temporal or "stabilize"
        if temporal == "stabilize":
            from ..flow import DISFlow

            try:
                DISFlow()
            except ImportError as e:
                raise InvalidInputError(f"{e}; or pass --temporal off (each frame on its own)") from e
        with VideoReader(source) as reader:  # refuses a corrupt file before the model loads
            total = reader.info.frames
        device = pick_device(args.device)
        resolve_dtype(device, args.dtype)  # refuses fp16 on the CPU before the output video is begun
        model = load_extractor(extractor_file, device=device)
        bar = progress_bar(total or None, "extracting", unit="frame")
        try:
            written = extract_video(
                model,
                source,
                out,
                temporal=temporal,
                overwrite=args.overwrite,
                batch_size=args.batch_size,
                progress=bar,
                invert=args.invert,
                contrast=args.contrast,
                tile=args.tile,
                dtype=args.dtype,
            )
        finally:
            bar.close()
        print(f"{written} frames written to {out}")
        return 0
    out = check_output_folder(args.out, "--out")
    device = pick_device(args.device) if args.ray is None else None
    items, missing = list_inputs(args.inputs, exclude=out)
    for m in missing:
        print(f"warning: no image matches {m!r}", file=sys.stderr)
    if not items:
        raise InvalidInputError(
            "no input images found: give image files, folders, globs (e.g. 'photos/*.jpg') or a .txt list"
        )
    for item in items:
        if item.key.rpartition("/")[2] != item.path.stem:
            print(f"{item.path} -> {item.key}.png (another input is also named {item.path.stem!r})")
    options = SketchOptions(
        invert=args.invert,
        contrast=args.contrast,
        tile=args.tile,
        batch_size=args.batch_size,
        dtype=args.dtype,
    )
    bar = progress_bar(len(items), "extracting", unit="img")
    try:
        if args.ray is not None:
            from ..distill.extract_ray import extract_files_ray

            report = extract_files_ray(
                extractor_file,
                items,
                out,
                options,
                address=None if args.ray == "auto-or-local" else args.ray,
                actors=args.ray_actors,
                progress=bar,
            )
        else:
            from ..distill.extractor import load_extractor

            model = load_extractor(extractor_file, device=device)
            report = extract_files(model, items, out, options, workers=args.workers, progress=bar)
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
