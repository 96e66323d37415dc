"""Distillation: turn a trained DiffSketch generator into a fast image-to-sketch network (docs/method.md §9).

The paper distils DiffSketch into a feed-forward network trained on 30k (image, sketch) pairs
that DiffSketch itself generated from purely random CDST conditions. This package does both halves:

- :func:`~.pairs.generate_pairs` (:mod:`.pairs`) samples images with a backend, runs the generator on their captured
  features and writes ``images/{i:06d}.png`` + ``sketches/{i:06d}.png`` (8-bit) and a
  ``manifest.json`` into a folder. Pair ``i`` depends only on ``(seed, i)`` and the settings, so
  generation can stop at any point (Cancel, crash, power cut) and continue in a later sitting;
  asking for more pairs later just adds the missing ones. :func:`~.pairs.write_pair` stores pairs from
  any other teacher in the same layout, and :class:`~.pairs.PairSet` reads either back.
- With your own photos (:mod:`.photos`), a share of the pairs is made from them instead: each
  photo is inverted and replayed with capture, and the generator sketches it.
- :func:`~.student.train_student` (:mod:`.student`) fits a student network (a :class:`~diffsketch.distill.extractor.SketchExtractor`
  by default, or any ``[B,3,H,W] -> [B,1,H,W]`` module) to the pairs with L1 + LPIPS on random
  crops with horizontal flips. Batch ``k`` is drawn from an RNG seeded by ``(seed, k)``, so a
  run resumed from a checkpoint after N steps ends bit-for-bit where an uninterrupted run ends.

:func:`distill` chains the two for the node and the command line. Saving the student is the
caller's: ``save_extractor(path, student, student.meta)``.

The network is :mod:`.extractor`; running it on images of any size is :mod:`.extract`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..capture.sampling import SamplingSettings
from ..distributed import Group
from ..errors import FileFormatError
from ..fileio import read_header
from ..train.loop import StepCallback, StopCallback
from .extractor import SketchExtractor
from .pairs import PairSet, generate_pairs, pair_paths, pair_settings, pair_settings_digest, write_pair
from .photos import DEFAULT_PHOTO_SHARE, Photo, check_photos, read_photo_folder
from .student import (
    DISTILL_CHECKPOINT_KIND,
    DistillConfig,
    build_student,
    make_batch,
    run_differences,
    student_run_key,
    train_student,
)

ProgressFn = Callable[[int, int], None]
STUDENT_CHECKPOINT_PREFIX = "student-"
# The one checkpoint name of pair folders started before checkpoints were named by their run.
LEGACY_STUDENT_CHECKPOINT = "student_checkpoint.safetensors"


def student_checkpoint_path(out_dir: str | os.PathLike, pairs, config: DistillConfig) -> Path:
    """Where :func:`distill` keeps the training checkpoint of the student for ``pairs`` and
    ``config``: one file per run (:func:`~.student.student_run_key`) in the pair folder."""
    return Path(out_dir) / f"{STUDENT_CHECKPOINT_PREFIX}{student_run_key(pairs, config)}.safetensors"


def _latest_other_run(out_dir: Path, checkpoint: Path) -> tuple[Path, dict] | None:
    """The most recently written other student checkpoint in ``out_dir`` and its meta."""
    others = [
        p
        for p in out_dir.glob(f"{STUDENT_CHECKPOINT_PREFIX}*.safetensors")
        if p != checkpoint and p.is_file()
    ]
    legacy = out_dir / LEGACY_STUDENT_CHECKPOINT
    if legacy.is_file():
        others.append(legacy)
    for path in sorted(others, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            header = read_header(path, DISTILL_CHECKPOINT_KIND)
        except (FileFormatError, OSError):
            continue
        if isinstance(header.get("meta"), dict):
            return path, header["meta"]
    return None


def _resuming(path: Path, n: int, total: int) -> str:
    step = read_header(path, DISTILL_CHECKPOINT_KIND).get("step")
    if isinstance(step, int) and step >= total:
        return (
            f"the student for these {n} pairs and settings already finished step {step} of {total} "
            f"({path.name}): nothing left to train (raise iterations to train it further)"
        )
    return f"resuming the student at step {step} of {total} on {n} pairs ({path.name})"


def _choose_run(out_dir: Path, checkpoint: Path, pairs, config: DistillConfig, resume: bool):
    """``(resume_from or None, what happens, in words)`` for the student of ``pairs`` and ``config``."""
    n = len(pairs)
    if not resume:
        return None, f"training a new student from step 0 on {n} pairs (not resuming)"
    if checkpoint.is_file():
        return checkpoint, _resuming(checkpoint, n, config.iterations)
    earlier = _latest_other_run(out_dir, checkpoint)
    if earlier is not None:
        path, meta = earlier
        diffs = run_differences(meta, pairs, config)
        if not diffs and path.name == LEGACY_STUDENT_CHECKPOINT:
            # A run started before checkpoints were named by their run: the same run, continued.
            return path, _resuming(path, n, config.iterations)
        if diffs:
            return None, (
                f"training a new student from step 0 on {n} pairs: {'; '.join(diffs)} since the last run, whose "
                f"checkpoint {path.name} is kept (its pairs and settings resume it)"
            )
    return None, f"training a new student from step 0 on {n} pairs"


def distill(
    backend,
    generator: nn.Module,
    conditions,
    out_dir: str | os.PathLike,
    pair_count: int,
    config: DistillConfig | None = None,
    sampling: SamplingSettings | None = None,
    *,
    lpips_model: nn.Module | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = True,
    progress: ProgressFn | None = None,
    on_step: StepCallback | None = None,
    should_stop: StopCallback | None = None,
    notice: Callable[[str], None] | None = None,
    device: str | torch.device = "cpu",
    group: Group | None = None,
    pairs_batch: int | None = None,
    photos=None,
    photo_share: float | None = None,
) -> SketchExtractor:
    """Generate pairs ``0 .. pair_count-1`` into ``out_dir`` with ``sampling`` (resuming any
    already there; its timesteps and schedule, where None, are the generator's), then train a
    student on exactly those pairs (see :func:`generate_pairs` and :func:`train_student`).

    An extractor is a function of its pairs and settings, and so is its training run: the
    checkpoint (default :func:`student_checkpoint_path`, one file per run in ``out_dir``) is
    named by the pairs and every setting but ``iterations`` and the checkpoint/preview cadence.
    Running again with the same pairs and settings resumes that run (more ``iterations`` train
    it further; a finished run is returned as it is). Anything else -- more or fewer pairs,
    another generator, batch size, crop, learning rate, seed -- trains a new student from step
    0, so the result equals a fresh run with those inputs; the earlier run's checkpoint stays,
    and asking for its pairs and settings again resumes it. ``resume=False`` always starts from
    step 0. ``notice(text)`` is told which of these happens (and why) before training starts;
    ``student.meta["started_at_step"]`` records it too.

    ``progress(done, total)`` reports pair generation, ``on_step`` training. Save the result with
    ``save_extractor(path, student, student.meta)``.

    ``group``: a torchrun / accelerate launch (:class:`~diffsketch.distributed.Group`): the
    processes share the pairs, then train the student with DistributedDataParallel.
    ``pairs_batch``: images sampled per call while generating pairs (None: what fits).

    ``photos`` / ``photo_share``: a share of the pairs made from your own photos (default half
    when photos are given; see :func:`generate_pairs` and :mod:`.photos`); ``notice`` is also told
    how many photos replayed poorly. ``student.meta["pair_sources"]`` records what the student was
    trained on (:meth:`PairSet.sources`: generated and photo pairs, the photo set and share).
    """
    config = config or DistillConfig()
    pairs = generate_pairs(
        backend,
        generator,
        conditions,
        out_dir,
        pair_count,
        sampling,
        progress=progress,
        should_stop=should_stop,
        group=group,
        batch_size=pairs_batch,
        photos=photos,
        photo_share=photo_share,
        notice=notice,
    )
    out_dir = Path(out_dir)
    if checkpoint_path is not None:
        checkpoint = Path(checkpoint_path)
        resume_from = checkpoint if resume and checkpoint.is_file() else None
        what = (
            f"resuming the student from {checkpoint.name}"
            if resume_from is not None
            else f"training a new student from step 0 on {len(pairs)} pairs"
        )
    else:
        checkpoint = student_checkpoint_path(out_dir, pairs, config)
        resume_from, what = _choose_run(out_dir, checkpoint, pairs, config, resume)
    if notice is not None:
        notice(what)
    student = train_student(
        pairs,
        config,
        lpips_model=lpips_model,
        checkpoint_path=checkpoint,
        resume_from=resume_from,
        on_step=on_step,
        should_stop=should_stop,
        device=device,
        group=group,
    )
    student.meta["generator"] = pairs.settings.get("generator")
    student.meta["pair_sources"] = pairs.sources()
    return student


__all__ = [
    "DEFAULT_PHOTO_SHARE",
    "DISTILL_CHECKPOINT_KIND",
    "DistillConfig",
    "PairSet",
    "Photo",
    "check_photos",
    "build_student",
    "distill",
    "generate_pairs",
    "make_batch",
    "pair_paths",
    "pair_settings",
    "pair_settings_digest",
    "read_photo_folder",
    "student_checkpoint_path",
    "train_student",
    "write_pair",
]
