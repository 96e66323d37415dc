"""The ``diffsketch`` command: the same stages as the ComfyUI nodes, on a diffusers folder or a
single-file checkpoint of SD 1.x, SD 2.x or SDXL.

    diffsketch sample     --model M --prompt P --seed S --out example.safetensors [--image example.png]
    diffsketch capture    --model M --picture photo.png [--caption C] --out example.safetensors
    diffsketch timesteps  --model M --samples 8 --out analysis/
    diffsketch fit-conditions --model M --out conditions.safetensors
    diffsketch train      --model M --example example.safetensors --sketch sketch.png --out style.safetensors ...
    diffsketch generate   --model M --generator style.safetensors --prompt P --out pairs/
    diffsketch distill    --model M --generator style.safetensors --out extractor.safetensors ...
    diffsketch extract    INPUTS... [--extractor extractor.safetensors] --out sketches/ [--ray [ADDRESS]]
    diffsketch extract    clip.mp4 --out sketch.mp4 [--temporal stabilize|off] [--overwrite]
    diffsketch eval       PHOTOS_DIR --extractor extractor.safetensors --style xdog --out report/ [--bsds-gt GT_DIR]

Files are the same .safetensors files the nodes read and write. Every option has a --help text.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from pathlib import Path

from .errors import Cancelled, DiffSketchError, InvalidInputError, TrainingInterrupted
from .images import read_image, save_png
from .terminal import check_input_file, check_output_file, check_output_folder, pick_device, progress_bar


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------
def load_backend(args, device: str | None = None):
    import torch

    from .backends.diffusers import DiffusersBackend

    device = device or pick_device(args.device)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    prediction = None if args.prediction_type == "auto" else args.prediction_type
    _quiet_model_loading()
    return DiffusersBackend.load(
        args.model, device=device, dtype=dtype, prediction_type=prediction, clip_skip=args.clip_skip
    )


def print_prompt_notice(backend, prompt: str) -> None:
    """Say how a prompt over CLIP's 75 tokens is encoded (in windows, as ComfyUI does)."""
    notice = backend.prompt_notice(prompt)
    if notice:
        print(f"note: {notice}", file=sys.stderr)


def _quiet_model_loading() -> None:
    """diffusers and transformers report every model they load (progress bars, dtype advice that
    does not apply here); the command shows its own progress, so only their errors are let
    through. Only this command's process is changed, never the library's users."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()


def check_model(args) -> None:
    """``--model`` and ``--device``: checked before anything is loaded."""
    check_input_file(args.model, "--model", folder_ok=True)
    pick_device(args.device)


#: The size the sampling options are checked at before the model is loaded (the default size, the
#: model's native one, is known only then).
SIZE_STAND_IN = 512


def model_size(args, backend) -> dict[str, int]:
    """``{"width", "height"}`` from --width/--height; one not given is the model's native side
    (``backend.native_size``: 1024 for SDXL)."""
    return {"width": args.width or backend.native_size, "height": args.height or backend.native_size}


def check_file_kind(path, option: str, kind: str) -> Path:
    """``path`` exists and is a DiffSketch file of ``kind`` (its header only is read)."""
    from .fileio import read_header

    path = check_input_file(path, option)
    read_header(path, kind)
    return path


def _resume_command(args) -> str:
    """The command line that was run, with ``--resume`` instead of any --resume/--restart."""
    kept, skip = [], False
    for item in args.argv:
        if skip:
            skip = False
            if not item.startswith("-"):
                continue
        if item == "--restart" or item.startswith("--resume="):
            continue
        if item == "--resume":
            skip = True
            continue
        kept.append(item)
    return "diffsketch " + shlex.join([*kept, "--resume"])


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------
def cmd_sample(args) -> int:
    from .capture.sampling import SamplingSettings
    from .capture.timesteps import parse_timesteps

    check_model(args)
    check_output_file(args.out, "--out")
    if args.image:
        check_output_file(args.image, "--image")
    sampling = SamplingSettings(
        seed=args.seed,
        steps=args.steps,
        cfg=args.cfg,
        width=args.width or SIZE_STAND_IN,
        height=args.height or SIZE_STAND_IN,
        timesteps=parse_timesteps(args.timesteps),
    )
    backend = load_backend(args)
    print_prompt_notice(backend, args.prompt)
    sampling = sampling.replace(**model_size(args, backend))
    bar = progress_bar(args.steps, "sampling")
    sample = backend.sample(args.prompt, sampling, progress=bar)
    bar.close()
    sample.save(args.out)
    image = Path(args.image) if args.image else Path(args.out).with_suffix(".png")
    save_png(sample.image, image)
    print(f"{sample.summary()}\nfeatures: {args.out}\nimage (draw your sketch over it): {image}")
    return 0


def cmd_capture(args) -> int:
    import torch

    from .backends.base import check_picture
    from .capture.picture import fit_size
    from .capture.sampling import FINEST_SIZE_MULTIPLE, SamplingSettings
    from .capture.timesteps import parse_timesteps

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
        steps=args.steps,
        cfg=args.cfg,
        width=SIZE_STAND_IN,
        height=SIZE_STAND_IN,
        timesteps=parse_timesteps(args.timesteps),
        schedule=args.schedule,
    )
    sampling.plan()
    picture = check_picture(pixels, what)
    width, height = int(picture.shape[-1]), int(picture.shape[-2])
    fit_size(width, height, FINEST_SIZE_MULTIPLE, None, args.max_side, what)
    backend = load_backend(args)
    # this model's own rule, before the progress bar starts
    fit_size(width, height, backend.spec.size_multiple, backend.spec.family, args.max_side, what)
    bar = progress_bar(2 * len(sampling.denoising_schedule(sampling.plan())), "inverting, then replaying")
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


def cmd_timesteps(args) -> int:
    from .capture.analysis import plots, run_timestep_analysis
    from .fileio import atomic_write_bytes
    from .train.conditions import load_default_prompts, parse_prompts

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
        cfg=args.cfg,
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


def cmd_fit_conditions(args) -> int:
    from .train.conditions import ConditionSampler, load_default_prompts, parse_prompts

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


def cmd_extract(args) -> int:
    from .distill.extract_files import SketchOptions, extract_files, list_inputs
    from .distill.extractor import EXTRACTOR_KIND, default_extractor_path
    from .video import is_video_path

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
        from .distill.extractor import load_extractor
        from .video import VideoReader, check_video_output, extract_video

        source = check_input_file(args.inputs[0], "input video")
        out = check_video_output(args.out, overwrite=args.overwrite)
        temporal = args.temporal or "stabilize"
        if temporal == "stabilize":
            from .flow import DISFlow

            try:
                DISFlow()
            except ImportError as e:
                raise InvalidInputError(f"{e}; or pass --temporal off (each frame on its own)") from e
        with VideoReader(source) as reader:  # refuses a corrupt file before the model loads
            total = reader.info.frames
        model = load_extractor(extractor_file, device=pick_device(args.device))
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
    )
    bar = progress_bar(len(items), "extracting", unit="img")
    try:
        if args.ray is not None:
            from .distill.extract_ray import extract_files_ray

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
            from .distill.extractor import load_extractor

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


def _loss_weights(args):
    from .train.losses import LossWeights

    return LossWeights(
        lpips=args.lpips_weight,
        l1=args.l1_weight,
        clip_sim=args.clip_weight,
        across=args.across_weight,
        within=args.within_weight,
    )


def _return_freed_memory_to_the_os() -> None:
    """On glibc, serve allocations of 1 MiB and more with mmap, so that freed feature maps go back
    to the OS instead of staying resident in malloc's heap: the SD 1.5 generator step with
    --low-memory then peaks at 3.9 GB instead of 8.3 GB on CPU (benchmarks/train_step.py). Only this command's own
    process is changed, and only where glibc is there; elsewhere nothing happens."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or not name:
        return
    try:
        libc = ctypes.CDLL(name)
        m_mmap_threshold = -3  # from glibc's malloc.h
        libc.mallopt(m_mmap_threshold, 1 << 20)
    except (OSError, AttributeError):
        pass  # not glibc (e.g. musl): its allocator already returns large blocks


def cmd_train(args) -> int:
    import torch

    from .capture.picture import PICTURE_FIT_KEY
    from .capture.sample import FEATURES_KIND, CapturedSample
    from .fileio import read_header
    from .train.conditions import CONDITIONS_KIND, ConditionSampler
    from .train.losses import DiffSketchLoss, build_lpips, load_clip_image_encoder
    from .train.trainer import CHECKPOINT_KIND, TrainConfig, Trainer, prepare_sketch

    # every path first, then the small models, the SD model last: a mistake costs no waiting
    check_model(args)
    check_file_kind(args.example, "--example", FEATURES_KIND)
    check_input_file(args.sketch, "--sketch")
    check_file_kind(args.conditions, "--conditions", CONDITIONS_KIND)
    check_input_file(args.clip, "--clip", folder_ok=True)
    if args.lpips is not None:
        check_input_file(args.lpips, "--lpips", folder_ok=True)
    out = check_output_file(args.out, "--out")
    checkpoint = check_output_file(args.checkpoint or out.with_suffix(".train.safetensors"), "--checkpoint")
    if args.resume is not None and args.restart:
        raise InvalidInputError(
            "--resume and --restart exclude each other: continue the run, or start it over."
        )
    resume_from = None
    if args.resume is not None:
        resume_from = check_file_kind(args.resume or checkpoint, "--resume", CHECKPOINT_KIND)
    elif checkpoint.exists() and not args.restart:
        step = read_header(checkpoint, CHECKPOINT_KIND).get("step")
        raise InvalidInputError(
            f"{checkpoint} holds a training run (step {step}): continue it with --resume, or start over with "
            "--restart (which overwrites it)."
        )

    device = pick_device(args.device)
    example = CapturedSample.load(args.example)
    try:
        sketch_img = torch.from_numpy(read_image(Path(args.sketch)))[None]
    except OSError as e:
        raise InvalidInputError(f"--sketch {args.sketch} cannot be read as an image ({e}).") from e
    sketch, notices = prepare_sketch(sketch_img, example.size, example.meta.get(PICTURE_FIT_KEY))
    for n in notices:
        print(n)
    conditions = ConditionSampler.load(args.conditions)
    weights = _loss_weights(args)
    clip = load_clip_image_encoder(args.clip, quick_gelu=not args.laion_clip, device=device)
    lpips_model = build_lpips(args.lpips, device=device) if weights.lpips > 0 else None
    loss = DiffSketchLoss(clip, lpips_model, weights).to(device)
    config = TrainConfig(
        iterations=args.iterations,
        lr=args.lr,
        h_iter=args.h_iter,
        loss_weights=weights,
        seed=args.seed,
        steps=example.plan.steps,
        cfg=float(example.meta.get("cfg", 5.0)),
        timestep_policy=args.timestep_policy,
        schedule=args.schedule,
        low_memory=args.low_memory,
        sample_crop=args.sample_crop,
        checkpoint_every=args.checkpoint_every,
        device=device,
    )
    backend = load_backend(args)
    if str(device) == "cpu":
        _return_freed_memory_to_the_os()
    trainer = Trainer(
        backend,
        example,
        sketch,
        conditions,
        loss,
        config,
        checkpoint_path=checkpoint,
        resume_from=resume_from,
    )
    for n in trainer.notices:
        print(n)
    if resume_from is not None:
        print(f"resumed at step {trainer.step} of {args.iterations} from {resume_from}")
    bar = progress_bar(args.iterations, "training")
    bar(trainer.step, args.iterations)
    try:
        trainer.run(on_step=lambda step, losses, preview: bar(step, args.iterations))
    except (KeyboardInterrupt, TrainingInterrupted):
        bar.close()
        saved = trainer.last_checkpoint
        print(f"diffsketch train: cancelled at step {trainer.step} of {args.iterations}", file=sys.stderr)
        if saved is None:
            print("no checkpoint was written before the cancel", file=sys.stderr)
        else:
            print(
                f"checkpoint (step {trainer.last_checkpoint_step}): {saved}\nto continue: {_resume_command(args)}",
                file=sys.stderr,
            )
        return 130
    finally:
        bar.close()
    trainer.save_generator(out)
    plot = out.with_suffix(".loss.png")
    trainer.loss_curve_image().save(plot)
    print(f"generator: {out}\nloss plot: {plot}\ncheckpoint (continue with --resume): {checkpoint}")
    return 0


def cmd_generate(args) -> int:
    from .capture.sampling import SamplingSettings
    from .train.generator import GENERATOR_KIND, load_generator
    from .train.inference import check_generator_fits, generate_pair

    check_model(args)
    check_file_kind(args.generator, "--generator", GENERATOR_KIND)
    out = check_output_folder(args.out, "--out")
    sampling = SamplingSettings(
        steps=args.steps,
        cfg=args.cfg,
        width=args.width or SIZE_STAND_IN,
        height=args.height or SIZE_STAND_IN,
        schedule=args.schedule,
    )
    generator = load_generator(args.generator, device=pick_device(args.device))
    backend = load_backend(args)
    print_prompt_notice(backend, args.prompt)
    sampling = sampling.replace(**model_size(args, backend))
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


def cmd_distill(args) -> int:
    from .train.conditions import CONDITIONS_KIND
    from .train.generator import GENERATOR_KIND

    check_model(args)
    check_file_kind(args.generator, "--generator", GENERATOR_KIND)
    check_file_kind(args.conditions, "--conditions", CONDITIONS_KIND)
    if args.lpips is not None and not args.no_lpips:
        check_input_file(args.lpips, "--lpips", folder_ok=True)
    check_output_folder(args.pairs_dir, "--pairs-dir")
    out = check_output_file(args.out, "--out")
    photos = _read_photos(args)

    from .distributed import Group, launch_device, launch_from_environment

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
    from .distill.photos import check_photo_share, read_photo_folder

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
    from .capture.sampling import SamplingSettings
    from .distill import DistillConfig, distill
    from .distill.extractor import save_extractor
    from .train.conditions import ConditionSampler
    from .train.generator import load_generator
    from .train.inference import check_generator_fits
    from .train.losses import build_lpips

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
    backend = load_backend(args, device)
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
                steps=args.steps,
                cfg=args.cfg,
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


# ---------------------------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------------------------
def _model_args(p):
    p.add_argument(
        "--model",
        required=True,
        help="SD 1.x, SD 2.x or SDXL model: a diffusers folder or a single-file .safetensors checkpoint",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--prediction-type",
        choices=["auto", "epsilon", "v_prediction"],
        default="auto",
        help="what the UNet predicts; auto reads it from the scheduler config or the checkpoint, as ComfyUI "
        "does (SD 2.x 768-v and v-pred SDXL fine-tunes are v_prediction)",
    )
    p.add_argument(
        "--clip-skip",
        type=int,
        default=None,
        help="text encoder layer prompts are read from, as ComfyUI's CLIPSetLastLayer -N: 1 = last, 2 = the one "
        "before (default: the model's own, 1 for SD 1.x, 2 for SD 2.x and SDXL; Pony, Illustrious and NoobAI "
        "prompts are written for 2)",
    )


def _sampling_args(p, steps=50):
    p.add_argument("--steps", type=int, default=steps, help=f"DDIM steps (default {steps})")
    p.add_argument("--cfg", type=float, default=5.0, help="classifier-free guidance scale (default 5.0)")
    for side in ("width", "height"):
        p.add_argument(
            f"--{side}",
            type=int,
            default=None,
            help=f"{side} in pixels, a multiple of 64 (default: the model's native size: 512 for SD 1.x and SD 2.x-base, "
            "768 for SD 2.x 768-v, 1024 for SDXL)",
        )


def _schedule_arg(p):
    p.add_argument(
        "--schedule",
        choices=["full", "fast"],
        default=None,
        help="sampling schedule (default: the one the generator was trained with)",
    )


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(
        prog="diffsketch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--version", action="version", version=f"diffsketch {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="sample an example image and capture its features")
    _model_args(p)
    _sampling_args(p)
    p.add_argument("--prompt", required=True, help="the example's prompt")
    p.add_argument("--seed", type=int, default=50, help="noise seed (default 50)")
    p.add_argument(
        "--timesteps", default=None, help="capture timesteps, e.g. '1,61,161' (default: the paper's 13)"
    )
    p.add_argument("--out", required=True, help="features file to write (.safetensors)")
    p.add_argument("--image", default=None, help="PNG of the example image (default: next to --out)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "capture",
        help="capture the features of your own picture (DDIM inversion, then a replay), for 'diffsketch train'",
    )
    _model_args(p)
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
        "--steps", type=int, default=50, help="DDIM steps of the inversion and the replay (default 50)"
    )
    p.add_argument(
        "--cfg",
        type=float,
        default=5.0,
        help="guidance 'diffsketch train' samples its own images with (default 5.0); the picture itself is "
        "inverted and replayed at guidance 1",
    )
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
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("timesteps", help="representative-timestep analysis (PCA + k-means) with plots")
    _model_args(p)
    _sampling_args(p)
    p.add_argument("--samples", type=int, default=8, help="images to sample (default 8)")
    p.add_argument("--k", type=int, default=0, help="number of timesteps; 0 = elbow method (default)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument(
        "--prompts", default=None, help="text file, one prompt per line (default: the built-in list)"
    )
    p.add_argument("--out", required=True, help="output folder for timesteps.json and the plots")
    p.set_defaults(func=cmd_timesteps)

    p = sub.add_parser("fit-conditions", help="fit the CDST condition distribution with the model's CLIP")
    _model_args(p)
    p.add_argument(
        "--prompts", default=None, help="text file, one prompt per line (default: the built-in list)"
    )
    p.add_argument("--components", type=int, default=512, help="PCA components (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--out", required=True, help="conditions file to write (.safetensors)")
    p.set_defaults(func=cmd_fit_conditions)

    p = sub.add_parser("train", help="train a DiffSketch generator from one example and its sketch")
    _model_args(p)
    p.add_argument("--example", required=True, help="features of the example (from 'diffsketch sample')")
    p.add_argument(
        "--sketch", required=True, help="your sketch of the example image (PNG; resized if needed)"
    )
    p.add_argument("--conditions", required=True, help="CDST conditions (from 'diffsketch fit-conditions')")
    p.add_argument("--clip", required=True, help="CLIP ViT-B/32 .safetensors (file or folder)")
    p.add_argument(
        "--laion-clip", action="store_true", help="the CLIP weights are LAION/open_clip ones (GELU)"
    )
    p.add_argument("--lpips", default=None, help="AlexNet weights for LPIPS (default: the torch hub cache)")
    p.add_argument("--iterations", type=int, default=1200, help="iterations (default 1200)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--h-iter", type=int, default=1000, help="CDST blend iterations (default 1000)")
    for name, default in (("lpips", 15.0), ("l1", 30.0), ("clip", 30.0), ("across", 1.0), ("within", 1.0)):
        p.add_argument(
            f"--{name}-weight", type=float, default=default, help=f"loss weight (default {default})"
        )
    p.add_argument(
        "--timestep-policy",
        choices=["fixed", "random13"],
        default="fixed",
        help="fixed: the example's timesteps (the paper); random13: the released code",
    )
    p.add_argument(
        "--schedule",
        choices=["full", "fast"],
        default="full",
        help="fast: sample only at the captured timesteps + the last step (~4x fewer UNet runs)",
    )
    p.add_argument(
        "--low-memory",
        action="store_true",
        help="gradient checkpointing in the generator: far less memory for ~1 more forward pass per step",
    )
    p.add_argument(
        "--sample-crop",
        type=int,
        default=0,
        help="train on a random N x N window of each new sample (0: whole; SDXL at 1024 on a small GPU: 512)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="checkpoint interval (default 100)")
    p.add_argument(
        "--checkpoint", default=None, help="checkpoint file (default: next to --out, <out>.train.safetensors)"
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="CHECKPOINT",
        help="continue the run in the checkpoint (default: --checkpoint's file); --iterations may be raised",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="start from step 0 although the checkpoint file holds a run (it is overwritten)",
    )
    p.add_argument(
        "--out", required=True, help="generator file to write (.safetensors); the loss plot goes beside it"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="sample new images and their sketches with a trained generator")
    _model_args(p)
    _sampling_args(p)
    p.add_argument("--generator", required=True, help="generator .safetensors")
    p.add_argument("--prompt", required=True, help="what to draw")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--count", type=int, default=1, help="number of pairs (seeds seed..seed+count-1)")
    _schedule_arg(p)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "distill",
        help="distill a generator into a fast extractor (torchrun/accelerate launch: on several GPUs/nodes)",
    )
    _model_args(p)
    _sampling_args(p)
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
    from .distill import DistillConfig

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
    _schedule_arg(p)
    p.add_argument("--out", required=True, help="extractor file to write (.safetensors)")
    p.set_defaults(func=cmd_distill)

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
        "--temporal",
        choices=("off", "stabilize"),
        default=None,
        help="video only: 'stabilize' (default) carries lines along the motion so they do not flicker "
        "(needs OpenCV: pip install opencv-python-headless); 'off' draws each frame on its own",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="video only: replace the output video if it exists"
    )
    p.set_defaults(func=cmd_extract)

    from .eval.cli import add_eval_parser

    add_eval_parser(sub)
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    # Python leaves SIGINT ignored when it starts ignored (a command run with & from a script), so
    # `kill -INT` would not cancel: install the Ctrl-C handler, so either way checkpoints and exits.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except DiffSketchError as e:
        print(f"diffsketch {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"diffsketch {args.command}: cancelled", file=sys.stderr)
        for note in getattr(e, "__notes__", []):
            print(note, file=sys.stderr)
        return 130
    finally:
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)


if __name__ == "__main__":
    sys.exit(main())
