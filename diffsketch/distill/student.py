"""Student training: fit a fast image-to-sketch network to a folder of (image, sketch) pairs.

:func:`train_student` fits a student network (a :class:`~diffsketch.distill.extractor.SketchExtractor`
by default, or any ``[B,3,H,W] -> [B,1,H,W]`` module) to the pairs with L1 + LPIPS on random
crops with horizontal flips. Batch ``k`` is drawn from an RNG seeded by ``(seed, k)``, so a
run resumed from a checkpoint after N steps ends bit-for-bit where an uninterrupted run ends.

With ``adversarial_weight`` / ``feature_matching_weight`` above 0 it adds Pix2PixHD's
adversarial terms (:mod:`.adversarial`): a multi-scale PatchGAN discriminator trained alongside
the student, LSGAN and discriminator feature matching.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import Group
from ..errors import FileFormatError, InvalidInputError
from ..fileio import read_header
from ..seeds import cpu_generator, derive_seed, seeded
from ..train.loop import StepCallback, StopCallback, TrainingLoop
from ..train.losses import perceptual_preprocess
from ..train.state import load_training_state, save_training_state
from .adversarial import AdversarialTerms
from .extractor import ExtractorConfig, SketchExtractor

logger = logging.getLogger(__name__)

DISTILL_CHECKPOINT_KIND = "distill_checkpoint"
DISTILL_CHECKPOINT_VERSION = 1


_SCHEDULES = ("cosine", "constant", "constant_then_linear")
#: Adam's beta1 for the discriminator, as Pix2PixHD (and most GANs) train it.
DISCRIMINATOR_BETA1 = 0.5


@dataclass(frozen=True)
class DistillConfig:
    """Settings of :func:`train_student`; stored as JSON in checkpoints and the student's meta.

    Optimiser: Adam (betas ``adam_beta1``, 0.999) at ``lr``, with a linear warm-up over
    ``warmup_iterations`` and then, with ``lr_schedule="cosine"``, a cosine decay to
    ``lr * min_lr_ratio`` at ``iterations`` (the warm-up keeps a fresh network's first steps
    small; ``"constant_then_linear"`` is Pix2PixHD's schedule: constant for the first half, then
    linearly down to 0). Each step draws ``batch_size`` pairs at random (with replacement), a
    random ``crop_size`` crop of each (pairs smaller than that are reflection-padded) and, with
    ``flip``, a random horizontal flip. Loss = ``l1_weight * L1 + lpips_weight * LPIPS
    + adversarial_weight * LSGAN + feature_matching_weight * FM``; the student's gradients are
    clipped to ``grad_clip_norm`` (0 = off).

    With either adversarial weight above 0, a ``discriminator_scales``-scale PatchGAN
    (:mod:`.adversarial`) is trained alongside, as Pix2PixHD does it: each step computes the
    student's and the discriminator's losses against the same discriminator, and both take
    their Adam step together (the discriminator's at ``lr * discriminator_lr_ratio`` with beta1
    0.5, unclipped).
    """

    iterations: int = 3000
    batch_size: int = 8
    crop_size: int = 256
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    warmup_iterations: int = 200
    min_lr_ratio: float = 0.02
    l1_weight: float = 1.0
    lpips_weight: float = 1.0
    flip: bool = True
    grad_clip_norm: float = 1.0
    checkpoint_every: int = 500
    preview_every: int = 100
    seed: int = 0
    adversarial_weight: float = 0.0
    feature_matching_weight: float = 0.0
    discriminator_scales: int = 2
    discriminator_lr_ratio: float = 0.1
    adam_beta1: float = 0.9
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)

    def __post_init__(self):
        if isinstance(self.extractor, dict):
            object.__setattr__(self, "extractor", ExtractorConfig.from_dict(self.extractor))
        if not isinstance(self.extractor, ExtractorConfig):
            raise InvalidInputError("DistillConfig.extractor must be an ExtractorConfig or its dict.")

        def positive_int(name, low=1):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InvalidInputError(f"DistillConfig.{name} must be an integer >= {low}, got {v!r}.")

        def number(name, low, high, low_open=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InvalidInputError(f"DistillConfig.{name} must be a finite number, got {v!r}.")
            if v < low or v > high or (low_open and v == low):
                bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
                raise InvalidInputError(f"DistillConfig.{name} must be in {bound}, got {v!r}.")
            object.__setattr__(self, name, float(v))

        for name in ("iterations", "batch_size", "crop_size", "checkpoint_every", "preview_every"):
            positive_int(name)
        positive_int("discriminator_scales")
        positive_int("warmup_iterations", 0)
        positive_int("seed", 0)
        number("lr", 0.0, 1.0, low_open=True)
        number("min_lr_ratio", 0.0, 1.0)
        number("l1_weight", 0.0, 1e6)
        number("lpips_weight", 0.0, 1e6)
        number("grad_clip_norm", 0.0, 1e6)
        number("adversarial_weight", 0.0, 1e6)
        number("feature_matching_weight", 0.0, 1e6)
        number("discriminator_lr_ratio", 0.0, 1e3, low_open=True)
        number("adam_beta1", 0.0, 0.999)
        if self.l1_weight == 0 and self.lpips_weight == 0 and not self.adversarial:
            raise InvalidInputError(
                "DistillConfig: l1_weight, lpips_weight, adversarial_weight and feature_matching_weight "
                "cannot all be 0."
            )
        if self.lr_schedule not in _SCHEDULES:
            raise InvalidInputError(
                f"DistillConfig.lr_schedule must be one of {_SCHEDULES}, got {self.lr_schedule!r}."
            )
        if not isinstance(self.flip, bool):
            raise InvalidInputError(f"DistillConfig.flip must be true or false, got {self.flip!r}.")

    @property
    def adversarial(self) -> bool:
        """Whether a discriminator is trained (either adversarial term is on)."""
        return self.adversarial_weight > 0 or self.feature_matching_weight > 0

    def lr_at(self, iteration: int) -> float:
        """Learning rate of step ``iteration`` (0-based): warm-up, then constant, cosine decay, or
        constant for the first half and linear decay to 0 over the second."""
        scale = 1.0
        if self.warmup_iterations and iteration < self.warmup_iterations:
            scale = (iteration + 1) / self.warmup_iterations
        if self.lr_schedule == "cosine":
            progress = min(iteration / max(self.iterations - 1, 1), 1.0)
            floor = self.min_lr_ratio
            scale *= floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        elif self.lr_schedule == "constant_then_linear":
            scale *= min(1.0, 2.0 * (1.0 - iteration / self.iterations))
        return self.lr * scale

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["extractor"] = self.extractor.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DistillConfig:
        if not isinstance(data, dict):
            raise InvalidInputError(f"a distill config must be a JSON object, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(f"unknown distill config keys {unknown}; known keys are {sorted(known)}.")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> DistillConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidInputError(f"distill config is not valid JSON: {e}") from e
        return cls.from_dict(data)


# Settings that may change when a run is resumed; every other one must match the checkpoint's,
# or the resumed run would not be the run that was started.
_RESUMABLE_CHANGES = ("iterations", "checkpoint_every", "preview_every")
# Settings added after runs were first named and checkpointed; a run that leaves them at their
# defaults keeps the name and the checkpoints it had before they existed.
_ADDED_SETTINGS = (
    "adversarial_weight",
    "feature_matching_weight",
    "discriminator_scales",
    "discriminator_lr_ratio",
    "adam_beta1",
)


_ADDED_DEFAULTS = {k: getattr(DistillConfig, k) for k in _ADDED_SETTINGS}


def _run_settings(config: dict) -> dict:
    """The settings that decide a run (see ``_RESUMABLE_CHANGES``), later ones at their defaults
    left out."""
    return {
        k: v
        for k, v in config.items()
        if k not in _RESUMABLE_CHANGES and not (k in _ADDED_DEFAULTS and v == _ADDED_DEFAULTS[k])
    }


def pair_set_identity(pairs) -> dict:
    """Which pairs a student trains on, as a checkpoint records it: the count, and for a
    :class:`~diffsketch.distill.pairs.PairSet` its fingerprint (settings, teacher and indices)."""
    fingerprint = getattr(pairs, "fingerprint", None)
    return {"pairs": len(pairs), "pair_set": fingerprint() if callable(fingerprint) else None}


def student_run_key(pairs, config: DistillConfig) -> str:
    """A short hash of what decides a student's training run: its pairs and every setting that
    must not change on resume (not ``iterations`` nor the checkpoint/preview cadence). Two runs
    with one key are one run, the second continuing the first."""
    settings = _run_settings(config.to_dict())
    blob = json.dumps({"pairs": pair_set_identity(pairs), "config": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_differences(meta: dict, pairs, config: DistillConfig) -> list[str]:
    """What differs between a checkpoint's run (its ``meta``) and a run on ``pairs`` with
    ``config``, as "name: was -> now" (empty: the same run; ``iterations`` may differ)."""
    saved = _run_settings(meta.get("config") if isinstance(meta.get("config"), dict) else {})
    wanted = _run_settings(config.to_dict())
    diffs = [
        f"{k}: {saved.get(k, _ADDED_DEFAULTS.get(k))!r} -> {wanted.get(k, _ADDED_DEFAULTS.get(k))!r}"
        for k in sorted(set(saved) | set(wanted))
        if saved.get(k) != wanted.get(k)
    ]
    mine = pair_set_identity(pairs)
    if meta.get("pairs") is not None and meta.get("pairs") != mine["pairs"]:
        diffs.insert(0, f"pairs: {meta.get('pairs')} -> {mine['pairs']}")
    elif meta.get("pair_set") not in (None, mine["pair_set"]) and mine["pair_set"] is not None:
        diffs.insert(0, "pairs: other pairs of the same count (another teacher or other pair settings)")
    return diffs


def build_student(config: DistillConfig) -> SketchExtractor:
    """The default student, initialised from ``config.seed`` without touching the global RNG."""
    return seeded(derive_seed("student-init", config.seed), lambda: SketchExtractor(config.extractor))


def _pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad [C,H,W] at the bottom/right to at least (height, width): reflection, or edge replication
    where the image is too small to reflect."""
    ph, pw = max(height - x.shape[-2], 0), max(width - x.shape[-1], 0)
    x = x[None]
    if pw:
        x = F.pad(x, (0, pw, 0, 0), mode="reflect" if pw < x.shape[-1] else "replicate")
    if ph:
        x = F.pad(x, (0, 0, 0, ph), mode="reflect" if ph < x.shape[-2] else "replicate")
    return x[0]


def _load_pair(pairs, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    item = pairs[k]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise InvalidInputError(f"pair {k} is not an (image, sketch) pair but {type(item).__name__}.")
    image, sketch = item
    ok = (
        isinstance(image, torch.Tensor)
        and isinstance(sketch, torch.Tensor)
        and image.dim() == 3
        and image.shape[0] == 3
        and sketch.dim() == 3
        and sketch.shape[0] == 1
        and image.shape[-2:] == sketch.shape[-2:]
    )
    if not ok:
        shapes = [
            tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in (image, sketch)
        ]
        raise InvalidInputError(
            f"pair {k} must be (image [3,H,W], sketch [1,H,W]) of one size; got {shapes[0]} and {shapes[1]}."
        )
    if not (torch.isfinite(image).all() and torch.isfinite(sketch).all()):
        raise InvalidInputError(f"pair {k} contains NaN or infinite values; fix or remove it.")
    return image.float(), sketch.float()


def make_batch(pairs, config: DistillConfig, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training batch of step ``iteration``: a pure function of (config.seed, iteration)."""
    g = cpu_generator(derive_seed("batch", config.seed, iteration))
    crop = config.crop_size
    n = len(pairs)
    choices = torch.randint(n, (config.batch_size,), generator=g).tolist()
    images, sketches = [], []
    for k in choices:
        image, sketch = _load_pair(pairs, k)
        image, sketch = _pad_to(image, crop, crop), _pad_to(sketch, crop, crop)
        h, w = image.shape[-2:]
        top = int(torch.randint(h - crop + 1, (1,), generator=g))
        left = int(torch.randint(w - crop + 1, (1,), generator=g))
        flip = bool(torch.rand((), generator=g) < 0.5)
        image = image[:, top : top + crop, left : left + crop]
        sketch = sketch[:, top : top + crop, left : left + crop]
        if config.flip and flip:
            image, sketch = image.flip(-1), sketch.flip(-1)
        images.append(image.clamp(0.0, 1.0))
        sketches.append(sketch.clamp(0.0, 1.0))
    return torch.stack(images), torch.stack(sketches)


def _preview(images: torch.Tensor, sketches: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """input | teacher | student of the batch's first crop, as a ComfyUI IMAGE [1, H, 3W, 3]."""
    parts = [
        images[0],
        sketches[0].expand(3, -1, -1),
        output[0].detach().float().clamp(0, 1).expand(3, -1, -1),
    ]
    return torch.cat([p.cpu() for p in parts], dim=-1).permute(1, 2, 0)[None].contiguous()


def _check_resume(meta: dict, config: DistillConfig, student: nn.Module, path, pairs) -> None:
    if not isinstance(meta.get("config"), dict):
        raise FileFormatError(
            f"{Path(path).name}: the checkpoint has no distill config; it cannot be resumed."
        )
    diffs = run_differences(meta, pairs, config)
    if diffs:
        raise InvalidInputError(
            f"{Path(path).name} was trained on other pairs or with other distill settings (checkpoint -> now: "
            f"{'; '.join(diffs)}). Resume with its pairs and settings (only {', '.join(_RESUMABLE_CHANGES)} may "
            "change), or train a new student: no resume_from, and another checkpoint_path."
        )
    if meta.get("student") not in (None, type(student).__name__):
        raise InvalidInputError(
            f"{Path(path).name} trained a {meta.get('student')}, not a {type(student).__name__}; resume with the "
            "same student network."
        )


def train_student(
    pairs,
    config: DistillConfig | None = None,
    *,
    lpips_model: nn.Module | None = None,
    student: nn.Module | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume_from: str | os.PathLike | None = None,
    on_step: StepCallback | None = None,
    should_stop: StopCallback | None = None,
    device: str | torch.device = "cpu",
    group: Group | None = None,
) -> nn.Module:
    """Train ``student`` (default: a new :class:`SketchExtractor` of ``config.extractor``) on ``pairs``.

    ``pairs``: a :class:`PairSet` or anything with ``len()`` and ``[k] -> (image [3,H,W], sketch
    [1,H,W])`` in [0, 1]. ``student``: any module mapping ``[B,3,H,W]`` in [0, 1] to ``[B,1,H,W]``
    in [0, 1] (1 = paper); ``config.crop_size`` must be a multiple of its ``multiple``.
    ``lpips_model``: from :func:`~diffsketch.train.losses.build_lpips`; None (or ``lpips_weight=0``)
    trains on L1 alone.

    ``checkpoint_path``: written every ``checkpoint_every`` steps, at the end, and on Cancel.
    ``resume_from``: a checkpoint of this run (the same pairs, the same settings but
    ``iterations`` and the checkpoint/preview frequencies; anything else is refused, naming what
    differs): training continues from its step and ends exactly where an uninterrupted run would. ``on_step(step, losses, preview)`` after every step; ``preview`` is
    None except every ``preview_every`` steps and at the last one, when it is a ComfyUI IMAGE
    ``[1, H, 3W, 3]`` (input | teacher | student). ``should_stop()`` before every step: True
    writes a checkpoint (with ``checkpoint_path``) and raises
    :class:`~diffsketch.errors.TrainingInterrupted`; any other exception (the host's interrupt
    raised from ``on_step``, Ctrl-C, out of memory) also writes one and is re-raised, so the run
    resumes. A non-finite loss, gradient or weight stops training without overwriting the last
    good checkpoint and raises ``TrainingDiverged`` saying so. The loop is
    :class:`~diffsketch.train.loop.TrainingLoop`, the generator trainer's.

    ``group``: the processes of a torchrun / accelerate launch
    (:class:`~diffsketch.distributed.Group`): the student is wrapped in DistributedDataParallel
    and each process takes its slice of the same batch (``batch_size`` must divide by the number
    of processes), so the run is the one-process run up to float rounding; losses are averaged
    over the processes and only rank 0 writes checkpoints.

    Returns the student in eval mode with ``student.meta`` (JSON) describing the run, ready for
    ``save_extractor(path, student, student.meta)``.
    """
    config = config or DistillConfig()
    if not isinstance(config, DistillConfig):
        raise InvalidInputError(f"config must be a DistillConfig, got {type(config).__name__}.")
    n_pairs = len(pairs)
    if n_pairs < 1:
        raise InvalidInputError("the pair set is empty; generate some pairs first.")
    device = torch.device(device)
    if group is not None and config.adversarial:
        raise InvalidInputError(
            "the adversarial terms (adversarial_weight, feature_matching_weight) are not supported in a "
            f"launch of several processes yet ({group.world_size} here): train the discriminator in one "
            "process (no torchrun / accelerate), or set both weights to 0."
        )
    if group is not None and config.batch_size % group.world_size:
        raise InvalidInputError(
            f"batch_size {config.batch_size} does not split evenly over {group.world_size} processes; use a "
            f"multiple of {group.world_size}."
        )
    if student is None:
        student = build_student(config)
    multiple = int(getattr(student, "multiple", 1))
    if config.crop_size % multiple:
        raise InvalidInputError(
            f"crop_size {config.crop_size} must be a multiple of {multiple} for a {type(student).__name__}; "
            f"use {max(multiple, config.crop_size // multiple * multiple)}."
        )
    use_lpips = lpips_model is not None and config.lpips_weight > 0
    if use_lpips:
        lpips_model = lpips_model.to(device).eval().requires_grad_(False)
    student = student.to(device).train()
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise InvalidInputError(f"the student {type(student).__name__} has no trainable parameters.")
    groups = [{"params": params}]
    adversarial = None
    trained: nn.Module = student  # what the checkpoints hold
    if config.adversarial:
        adversarial = seeded(
            derive_seed("discriminator-init", config.seed),
            lambda: AdversarialTerms(config.discriminator_scales),
        ).to(device)
        adversarial.train()
        groups.append(
            {
                "params": list(adversarial.parameters()),
                "lr_scale": config.discriminator_lr_ratio,
                "betas": (DISCRIMINATOR_BETA1, 0.999),
            }
        )
        trained = nn.ModuleDict({"student": student, "adversarial": adversarial})
    # one optimiser, a parameter group per network: one checkpoint format with or without a
    # discriminator, and one step that moves both
    optimizer = torch.optim.Adam(groups, lr=config.lr, betas=(config.adam_beta1, 0.999))
    model = student
    if group is not None:
        from torch.nn.parallel import DistributedDataParallel

        # gradients are averaged over the processes' equal slices: the gradient of the whole batch
        model = DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)
        per_process = config.batch_size // group.world_size
        batch_slice = slice(group.rank * per_process, (group.rank + 1) * per_process)

    start = 0
    if resume_from is not None:
        # the settings first: another run's weights (e.g. with a discriminator) would not load
        header = read_header(resume_from, DISTILL_CHECKPOINT_KIND, (DISTILL_CHECKPOINT_VERSION,))
        saved_meta = header.get("meta") if isinstance(header.get("meta"), dict) else {}
        _check_resume(saved_meta, config, student, resume_from, pairs)
        start, _, _ = load_training_state(
            resume_from,
            kind=DISTILL_CHECKPOINT_KIND,
            model=trained,
            optimizer=optimizer,
            device=device,
            versions=(DISTILL_CHECKPOINT_VERSION,),
        )
        logger.info("DiffSketch: resuming the student from %s at step %d", resume_from, start)

    losses: dict = {}

    def checkpoint_meta() -> dict:
        meta = {
            "config": config.to_dict(),
            "student": type(student).__name__,
            **pair_set_identity(pairs),
            "losses": losses,
        }
        if isinstance(student, SketchExtractor):
            meta["student_config"] = student.config.to_dict()
        return meta

    def save() -> Path:
        return save_training_state(
            checkpoint_path,
            kind=DISTILL_CHECKPOINT_KIND,
            model=trained,
            optimizer=optimizer,
            step=loop.step,
            meta=checkpoint_meta(),
            version=DISTILL_CHECKPOINT_VERSION,
        )

    loop = TrainingLoop(
        what="distillation",
        model=trained,
        iterations=config.iterations,
        save=save if checkpoint_path is not None else None,
        checkpoint_every=config.checkpoint_every,
        step=start,
        group=group,
        resume_hint="run distill again with the same settings (or pass it as resume_from) to continue",
        divergence_advice=(
            f"Lower lr (now {config.lr:g}) or raise warmup_iterations, then resume from the checkpoint or "
            "start again."
        ),
    )
    if resume_from is not None:
        loop.mark_saved(Path(resume_from), start)

    def compute(iteration: int):
        images, sketches = make_batch(pairs, config, iteration)
        if group is not None:
            images, sketches = images[batch_slice], sketches[batch_slice]
        images, sketches = images.to(device), sketches.to(device)
        lr = config.lr_at(iteration)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr * param_group.get("lr_scale", 1.0)
        output = model(images)
        if output.shape != sketches.shape:
            raise InvalidInputError(
                f"the student {type(student).__name__} returned {tuple(output.shape)} for input "
                f"{tuple(images.shape)}; it must return [B,1,H,W]."
            )
        output = output.float()
        l1 = (output - sketches).abs().mean()
        loss = config.l1_weight * l1
        step_losses = {"l1": float(l1.detach())}
        if use_lpips:
            size = config.crop_size  # no resampling: thin lines stay as they are
            lp = lpips_model(
                perceptual_preprocess(output, size), perceptual_preprocess(sketches, size)
            ).mean()
            loss = loss + config.lpips_weight * lp
            step_losses["lpips"] = float(lp.detach())
        discriminator_loss = None
        if adversarial is not None:
            # Pix2PixHD's order: both losses against the discriminator as it is before this step
            discriminator_loss = adversarial.discriminator_loss(images, output, sketches)
            gan, matching = adversarial.student_losses(images, output, sketches)
            loss = loss + config.adversarial_weight * gan + config.feature_matching_weight * matching
            step_losses.update(
                discriminator=float(discriminator_loss.detach()),
                adversarial=float(gan.detach()),
                feature_matching=float(matching.detach()),
            )
            if not math.isfinite(step_losses["discriminator"]):
                raise loop.diverged(
                    iteration + 1, "the discriminator's loss is not finite; the step was not applied"
                )
        if group is not None:
            # the mean over the processes is the whole batch's loss; a NaN anywhere reaches all
            names = sorted(step_losses)
            averaged = group.mean([float(loss.detach())] + [step_losses[k] for k in names])
            loss_value, step_losses = averaged[0], dict(zip(names, averaged[1:]))
        else:
            loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise loop.diverged(iteration + 1, "the loss is not finite; the step was not applied")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # the student's gradients (the discriminator is frozen in student_losses)
        if discriminator_loss is not None:
            discriminator_loss.backward()  # the discriminator's (the student's output is detached there)
        if config.grad_clip_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip_norm)
        else:
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None])
            )
        if not torch.isfinite(norm):
            raise loop.diverged(iteration + 1, "the gradients are not finite; the step was not applied")
        if adversarial is not None and not all(
            bool(torch.isfinite(p.grad).all()) for p in adversarial.parameters() if p.grad is not None
        ):
            raise loop.diverged(
                iteration + 1, "the discriminator's gradients are not finite; the step was not applied"
            )
        return images, sketches, output, {"loss": loss_value, **step_losses, "lr": lr}

    def report(step: int, result) -> None:
        nonlocal losses
        images, sketches, output, losses = result
        if on_step is not None:
            last = step == config.iterations
            preview = _preview(images, sketches, output) if step % config.preview_every == 0 or last else None
            on_step(step, losses, preview)

    loop.run(compute, lambda i, result: optimizer.step(), report, should_stop)

    student.eval()
    steps_done = max(start, config.iterations)
    student.meta = {
        "distill": config.to_dict(),
        "iterations_done": steps_done,
        "started_at_step": start,
        "pairs": n_pairs,
        "pair_settings": getattr(pairs, "settings", None),
        "final_losses": losses,
        "lpips": bool(use_lpips),
    }
    return student
