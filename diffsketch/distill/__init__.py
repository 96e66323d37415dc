"""Distillation: turn a trained DiffSketch generator into a fast image-to-sketch network (method.md §9).

The paper distils DiffSketch into a feed-forward network trained on 30k (image, sketch) pairs
that DiffSketch itself generated from purely random CDST conditions. This package does both halves:

- :func:`~.pairs.generate_pairs` (:mod:`.pairs`) samples images with a backend, runs the generator on their captured
  features and writes ``images/{i:06d}.png`` + ``sketches/{i:06d}.png`` (8-bit) and a
  ``manifest.json`` into a folder. Pair ``i`` depends only on ``(seed, i)`` and the settings, so
  generation can stop at any point (Cancel, crash, power cut) and continue in a later sitting;
  asking for more pairs later just adds the missing ones. :func:`~.pairs.write_pair` stores pairs from
  any other teacher in the same layout, and :class:`~.pairs.PairSet` reads either back.
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
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..distributed import Group
from .extractor import SketchExtractor
from .pairs import PairSet, generate_pairs, pair_paths, pair_settings, pair_settings_digest, write_pair
from .student import (
    DISTILL_CHECKPOINT_KIND,
    DistillConfig,
    StepFn,
    StopFn,
    build_student,
    make_batch,
    train_student,
)

ProgressFn = Callable[[int, int], None]


def distill(
    backend,
    generator: nn.Module,
    conditions,
    out_dir: str | os.PathLike,
    pair_count: int,
    config: DistillConfig | None = None,
    *,
    seed: int = 0,
    steps: int = 50,
    cfg: float = 5.0,
    width: int = 512,
    height: int = 512,
    timesteps: Sequence[int] | None = None,
    schedule: str | Sequence[int] = "full",
    lpips_model: nn.Module | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = True,
    progress: ProgressFn | None = None,
    on_step: StepFn | None = None,
    should_stop: StopFn | None = None,
    device: str | torch.device = "cpu",
    group: Group | None = None,
    pairs_batch: int | None = None,
) -> SketchExtractor:
    """Generate ``pair_count`` pairs into ``out_dir`` (resuming any already there), then train a
    student on them (see :func:`generate_pairs` and :func:`train_student`).

    The training checkpoint defaults to ``out_dir/student_checkpoint.safetensors``; with
    ``resume`` an existing one is continued. ``progress(done, total)`` reports pair generation,
    ``on_step`` training. Save the result with ``save_extractor(path, student, student.meta)``.
    ``group``: a torchrun / accelerate launch (:class:`~diffsketch.distributed.Group`): the
    processes share the pairs, then train the student with DistributedDataParallel.
    ``pairs_batch``: images sampled per call while generating pairs (None: what fits).
    """
    config = config or DistillConfig()
    pairs = generate_pairs(
        backend,
        generator,
        conditions,
        out_dir,
        pair_count,
        seed=seed,
        steps=steps,
        cfg=cfg,
        width=width,
        height=height,
        timesteps=timesteps,
        schedule=schedule,
        progress=progress,
        should_stop=should_stop,
        group=group,
        batch_size=pairs_batch,
    )
    checkpoint = (
        Path(checkpoint_path)
        if checkpoint_path is not None
        else Path(out_dir) / "student_checkpoint.safetensors"
    )
    resume_from = checkpoint if resume and checkpoint.is_file() else None
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
    return student


__all__ = [
    "DISTILL_CHECKPOINT_KIND",
    "DistillConfig",
    "PairSet",
    "build_student",
    "distill",
    "generate_pairs",
    "make_batch",
    "pair_paths",
    "pair_settings",
    "pair_settings_digest",
    "train_student",
    "write_pair",
]
